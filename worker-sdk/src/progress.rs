//! Progress reports: the handler sets the latest state; the SDK sends it when the channel can
//! take it.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use warden_protocol::{MAX_PROGRESS_TEXT, truncate_str};

/// One coalesced progress update, ready for the wire.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Update {
    pub(crate) fraction: Option<f32>,
    pub(crate) text: Option<String>,
}

#[derive(Default)]
struct State {
    pending: Option<Update>,
    /// Set when the job's terminal message is queued; later reports are dropped.
    closed: bool,
}

/// One job's reports, shared between the handler's [`Progress`] handles and the SDK.
#[derive(Default)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Holds a permit when an update may be pending, so the serve task never misses one. One
    /// for every job of a connection: the serve task waits on it for whichever job runs,
    /// including one that the job thread started without waking it.
    ready: Arc<Notify>,
}

impl Shared {
    /// A job's reports, announced on `ready` (the connection's).
    pub(crate) fn new(ready: Arc<Notify>) -> Shared {
        Shared {
            state: Mutex::default(),
            ready,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the pending update, if any.
    pub(crate) fn take(&self) -> Option<Update> {
        self.lock().pending.take()
    }

    /// Takes the pending update and refuses every later one.
    pub(crate) fn close(&self) -> Option<Update> {
        let mut state = self.lock();
        state.closed = true;
        state.pending.take()
    }
}

/// Reports a job's progress to the supervisor. Cheap to clone and `Send + Sync`.
///
/// Reports never block on the channel and coalesce: only the latest value of each field that has
/// not been sent yet is kept, and the SDK sends it when the channel can take it. Reports made
/// after the job's result has been queued are dropped.
#[derive(Clone)]
pub struct Progress {
    shared: Arc<Shared>,
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress").finish_non_exhaustive()
    }
}

impl Progress {
    pub(crate) fn new(shared: Arc<Shared>) -> Progress {
        Progress { shared }
    }

    /// Reports the fraction done and/or a short status text. A field left `None` keeps whatever
    /// was reported for it before.
    ///
    /// The fraction is clamped to `0.0..=1.0`; NaN is dropped. The text is cut to
    /// [`MAX_PROGRESS_TEXT`] bytes at a character boundary.
    pub fn report(&self, fraction: Option<f32>, text: Option<&str>) {
        let fraction = fraction.and_then(clamp_fraction);
        if fraction.is_none() && text.is_none() {
            return;
        }
        let text = text.map(|t| truncate_str(t, MAX_PROGRESS_TEXT).to_owned());
        {
            let mut state = self.shared.lock();
            if state.closed {
                return;
            }
            let pending = state.pending.get_or_insert_with(Update::default);
            if fraction.is_some() {
                pending.fraction = fraction;
            }
            if text.is_some() {
                pending.text = text;
            }
        }
        self.shared.ready.notify_one();
    }

    /// Reports the fraction done (clamped to `0.0..=1.0`; NaN is dropped).
    pub fn set_fraction(&self, fraction: f32) {
        self.report(Some(fraction), None);
    }

    /// Reports a short status text (cut to [`MAX_PROGRESS_TEXT`] bytes).
    pub fn set_text(&self, text: &str) {
        self.report(None, Some(text));
    }
}

fn clamp_fraction(fraction: f32) -> Option<f32> {
    if fraction.is_nan() {
        None
    } else {
        Some(fraction.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress() -> (Progress, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        (Progress::new(Arc::clone(&shared)), shared)
    }

    #[test]
    fn reports_coalesce_field_by_field() {
        let (p, shared) = progress();
        p.set_fraction(0.1);
        p.set_text("a");
        p.set_fraction(0.5);
        assert_eq!(
            shared.take(),
            Some(Update {
                fraction: Some(0.5),
                text: Some("a".into())
            })
        );
        assert_eq!(shared.take(), None);
        p.set_text("b");
        assert_eq!(
            shared.take(),
            Some(Update {
                fraction: None,
                text: Some("b".into())
            })
        );
    }

    #[test]
    fn fractions_are_clamped_and_nan_dropped() {
        let (p, shared) = progress();
        p.set_fraction(f32::NAN);
        assert_eq!(shared.take(), None);
        p.set_fraction(7.0);
        assert_eq!(shared.take().and_then(|u| u.fraction), Some(1.0));
        p.set_fraction(-0.5);
        assert_eq!(shared.take().and_then(|u| u.fraction), Some(0.0));
        p.set_fraction(f32::NEG_INFINITY);
        assert_eq!(shared.take().and_then(|u| u.fraction), Some(0.0));
    }

    #[test]
    fn text_is_cut_at_a_char_boundary() {
        let long = "ü".repeat(MAX_PROGRESS_TEXT);
        let (p, shared) = progress();
        p.set_text(&long);
        let text = shared.take().and_then(|u| u.text).unwrap_or_default();
        assert_eq!(text.len(), MAX_PROGRESS_TEXT);
        assert!(long.starts_with(&text));
    }

    #[test]
    fn no_report_after_close() {
        let (p, shared) = progress();
        p.set_fraction(0.3);
        assert!(shared.close().is_some());
        p.set_fraction(0.4);
        assert_eq!(shared.take(), None);
    }
}
