//! Delivering progress to a job's caller without ever blocking the worker's actor.
//!
//! One slot per job, latest wins (bounded and coalescing, like the SDK's reporter), drained by
//! a thread of the job's own that calls the caller's callback. The actor only swaps the slot's
//! content; a callback that blocks holds up nothing but later progress of its own job.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use super::config::{Progress, ProgressFn};

#[derive(Default)]
struct State {
    latest: Option<Progress>,
    closed: bool,
}

#[derive(Default)]
struct Slot {
    state: Mutex<State>,
    ready: Condvar,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Only the slot's own code holds the lock, and it does not panic while holding it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The actor's end: [`ProgressSink::push`] never blocks (beyond a lock held for a swap).
pub(crate) struct ProgressSink {
    callback: ProgressFn,
    slot: Option<Arc<Slot>>,
}

impl ProgressSink {
    pub(crate) fn new(callback: ProgressFn) -> Self {
        ProgressSink {
            callback,
            slot: None,
        }
    }

    /// Queues `progress`, replacing a report not yet delivered. The delivering thread starts
    /// with the first report; if it cannot start, progress is dropped (it is advisory).
    pub(crate) fn push(&mut self, progress: Progress) {
        if self.slot.is_none() {
            let slot = Arc::new(Slot::default());
            let theirs = slot.clone();
            let callback = self.callback.clone();
            let spawned = std::thread::Builder::new()
                .name("warden-progress".into())
                .spawn(move || deliver(&theirs, &*callback));
            if spawned.is_err() {
                tracing::warn!("cannot start the progress thread; dropping progress");
                return;
            }
            self.slot = Some(slot);
        }
        if let Some(slot) = &self.slot {
            slot.lock().latest = Some(progress);
            slot.ready.notify_one();
        }
    }
}

impl Drop for ProgressSink {
    /// The job ended: the thread delivers what is left, then exits.
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.lock().closed = true;
            slot.ready.notify_one();
        }
    }
}

fn deliver(slot: &Slot, callback: &(dyn Fn(Progress) + Send + Sync)) {
    loop {
        let next = {
            let mut state = slot.lock();
            loop {
                if let Some(progress) = state.latest.take() {
                    break progress;
                }
                if state.closed {
                    return;
                }
                state = slot
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        callback(next);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use warden_protocol::JobId;

    fn progress(n: u32) -> Progress {
        Progress {
            job: JobId(1),
            fraction: None,
            text: Some(n.to_string()),
        }
    }

    #[test]
    fn a_blocked_callback_never_blocks_push_and_sees_the_latest() {
        let (entered_tx, entered) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let released = Mutex::new(released);
        let (seen_tx, seen) = mpsc::channel();
        let mut sink = ProgressSink::new(Arc::new(move |p: Progress| {
            let first = p.text.as_deref() == Some("0");
            seen_tx.send(p.text).ok();
            if first {
                entered_tx.send(()).ok();
                // Blocks until the test has pushed everything.
                released.lock().unwrap().recv().ok();
            }
        }));
        sink.push(progress(0));
        entered
            .recv_timeout(Duration::from_secs(5))
            .expect("the callback ran within 5 s");
        // The callback is blocked: pushes still return at once and coalesce.
        for n in 1..=1000 {
            sink.push(progress(n));
        }
        release.send(()).unwrap();
        drop(sink);
        let wait = |what: &str| {
            seen.recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("{what} within 5 s"))
        };
        assert_eq!(wait("the first report"), Some("0".into()));
        assert_eq!(wait("the latest report"), Some("1000".into()));
        assert!(
            seen.recv_timeout(Duration::from_secs(5)).is_err(),
            "nothing after the latest, and the thread ends"
        );
    }
}
