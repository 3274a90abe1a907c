//! The cancel token: what a handler watches to learn that it should stop.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, ThreadId};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use warden_protocol::CancelReason;

/// Why a job's token tripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CancelCause {
    /// The supervisor sent `Cancel` for this job, with its reason.
    Message(CancelReason),
    /// The process received the polite signal (SIGTERM).
    Signal,
    /// The channel to the supervisor closed (or the SDK stopped serving after an error): nobody
    /// will read this job's result.
    ChannelClosed,
}

impl fmt::Display for CancelCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CancelCause::Message(reason) => write!(f, "cancel requested ({reason})"),
            CancelCause::Signal => f.write_str("polite signal received"),
            CancelCause::ChannelClosed => f.write_str("channel to the supervisor closed"),
        }
    }
}

/// The error [`CancelToken::check`] returns once the token has tripped. Propagate it with `?`:
/// it converts into [`JobError::Cancelled`](crate::JobError::Cancelled).
///
/// It does not implement [`std::error::Error`], so that `JobError` can convert from every type
/// that does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cancelled;

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("job was cancelled")
    }
}

type Callback = Box<dyn FnOnce() + Send>;

struct Inner {
    /// The fast path: set once, never cleared. Everything else is published before it.
    cancelled: AtomicBool,
    cause: OnceLock<CancelCause>,
    notify: Notify,
    linked: CancellationToken,
    callbacks: Mutex<Callbacks>,
    /// Signalled when a callback finishes running, for guards dropped meanwhile.
    callback_done: Condvar,
}

#[derive(Default)]
struct Callbacks {
    /// Mirrors `cancelled` under the lock, so registration and tripping agree.
    tripped: bool,
    next_key: u64,
    pending: Vec<(u64, Callback)>,
    /// The callback being run by `trip`, and on which thread.
    running: Option<(u64, ThreadId)>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Callbacks> {
        // Callbacks run outside the lock, so a poisoned lock only means a panic in our own short
        // critical sections; the data is still consistent.
        self.callbacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Observes whether a job should stop. Cheap to clone; all clones see the same state.
///
/// A handler cannot trip its own token: only the [`CancelSource`] can (the SDK holds the one for
/// each job).
///
/// # Invariants
/// - [`is_cancelled`](Self::is_cancelled) is one atomic load (no lock), so it can be polled in a
///   hot loop.
/// - Once tripped, the token stays tripped, and [`cause`](Self::cause) never changes.
#[derive(Clone)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

/// Trips a [`CancelToken`]. The SDK owns one per job; create your own to test handlers or to
/// drive code written against [`CancelToken`].
#[derive(Clone)]
pub struct CancelSource {
    inner: Arc<Inner>,
}

impl Default for CancelSource {
    fn default() -> Self {
        CancelSource::new()
    }
}

impl fmt::Debug for CancelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelSource")
            .field("cause", &self.inner.cause.get())
            .finish()
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cause", &self.cause())
            .finish()
    }
}

impl CancelSource {
    /// A source whose token has not tripped.
    pub fn new() -> CancelSource {
        CancelSource {
            inner: Arc::new(Inner {
                cancelled: AtomicBool::new(false),
                cause: OnceLock::new(),
                notify: Notify::new(),
                linked: CancellationToken::new(),
                callbacks: Mutex::new(Callbacks::default()),
                callback_done: Condvar::new(),
            }),
        }
    }

    /// The token this source trips.
    pub fn token(&self) -> CancelToken {
        CancelToken {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Whether the token has tripped.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// Trips the token with `cause`. Returns `false` (and changes nothing) if it had already
    /// tripped.
    ///
    /// Registered [`on_cancel`](CancelToken::on_cancel) callbacks run on this thread before this
    /// returns; a panicking callback is caught and does not stop the others.
    pub fn cancel(&self, cause: CancelCause) -> bool {
        let inner = &*self.inner;
        {
            let mut state = inner.lock();
            if state.tripped {
                return false;
            }
            state.tripped = true;
            // The cause is published before the flag, so a reader that sees the flag sees it.
            let _ = inner.cause.set(cause);
            inner.cancelled.store(true, Ordering::Release);
        }
        inner.notify.notify_waiters();
        inner.linked.cancel();
        let me = thread::current().id();
        // One callback at a time, each taken under the lock together with marking it running, so
        // a guard dropped meanwhile either removes its callback first or waits for it to finish.
        loop {
            let (key, callback) = {
                let mut state = inner.lock();
                let Some((key, callback)) = state.pending.pop() else {
                    break;
                };
                state.running = Some((key, me));
                (key, callback)
            };
            if catch_unwind(AssertUnwindSafe(callback)).is_err() {
                tracing::warn!(callback = key, "an on_cancel callback panicked");
            }
            inner.lock().running = None;
            inner.callback_done.notify_all();
        }
        true
    }
}

impl CancelToken {
    /// Whether the token has tripped. One atomic load: never blocks, never takes a lock.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// `Err(Cancelled)` once the token has tripped, for propagation with `?` (the twin of .NET's
    /// `ThrowIfCancellationRequested`). As cheap as [`is_cancelled`](Self::is_cancelled).
    #[inline]
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// Why the token tripped, `None` while it has not.
    pub fn cause(&self) -> Option<CancelCause> {
        if self.is_cancelled() {
            self.inner.cause.get().copied()
        } else {
            None
        }
    }

    /// Completes when the token trips (at once if it already has).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future loses nothing.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.inner.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before checking the flag so a trip in between is not missed.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    /// Like [`cancelled`](Self::cancelled), but the future owns a clone of the token, so it can
    /// be moved into a spawned task.
    pub fn cancelled_owned(&self) -> impl Future<Output = ()> + Send + 'static {
        let token = self.clone();
        async move { token.cancelled().await }
    }

    /// A `tokio_util` [`CancellationToken`] that is cancelled when this token trips, for async
    /// libraries that take one. Cancelling the returned token does not trip this one.
    pub fn to_cancellation_token(&self) -> CancellationToken {
        self.inner.linked.child_token()
    }

    /// Runs `callback` once when the token trips: on the thread that trips it, or right here if
    /// it already has. This bridges to code with its own stop API (kill a child process, abort a
    /// query).
    ///
    /// The callback should be quick and must not block: the SDK trips tokens on its I/O thread.
    /// A panic in it is caught and logged.
    ///
    /// Dropping the returned guard unregisters the callback. If the callback is running on
    /// another thread at that moment, the drop waits for it to finish, so once the guard is gone
    /// the callback is neither running nor will it run. Use [`OnCancelGuard::detach`] to keep it
    /// registered without holding the guard.
    pub fn on_cancel<F>(&self, callback: F) -> OnCancelGuard
    where
        F: FnOnce() + Send + 'static,
    {
        let key = {
            let mut state = self.inner.lock();
            if !state.tripped {
                let key = state.next_key;
                state.next_key += 1;
                state.pending.push((key, Box::new(callback)));
                Some(key)
            } else {
                drop(state);
                if catch_unwind(AssertUnwindSafe(callback)).is_err() {
                    tracing::warn!("an on_cancel callback panicked");
                }
                None
            }
        };
        OnCancelGuard {
            inner: key.map(|key| (Arc::clone(&self.inner), key)),
        }
    }
}

/// Keeps an [`on_cancel`](CancelToken::on_cancel) callback registered; dropping it unregisters
/// the callback (waiting for it if it is running on another thread).
#[must_use = "dropping the guard unregisters the callback at once"]
pub struct OnCancelGuard {
    inner: Option<(Arc<Inner>, u64)>,
}

impl fmt::Debug for OnCancelGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnCancelGuard")
            .field("key", &self.inner.as_ref().map(|(_, k)| *k))
            .finish()
    }
}

impl OnCancelGuard {
    /// Leaves the callback registered for the life of the token.
    pub fn detach(mut self) {
        self.inner = None;
    }
}

impl Drop for OnCancelGuard {
    fn drop(&mut self) {
        let Some((inner, key)) = self.inner.take() else {
            return;
        };
        let mut state = inner.lock();
        if let Some(at) = state.pending.iter().position(|(k, _)| *k == key) {
            let callback = state.pending.swap_remove(at);
            drop(state);
            // Dropped outside the lock: the closure's captures may have their own drop logic.
            drop(callback);
            return;
        }
        let me = thread::current().id();
        while matches!(state.running, Some((k, t)) if k == key && t != me) {
            state = inner
                .callback_done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn is_cancelled_takes_no_lock() {
        let source = CancelSource::new();
        let token = source.token();
        // Hold the token's lock; a locking is_cancelled would deadlock on this thread.
        let held = source.inner.lock();
        let (tx, rx) = mpsc::channel();
        let probe = token.clone();
        let _ = thread::spawn(move || {
            let _ = tx.send((probe.is_cancelled(), probe.check()));
        });
        let answer = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("is_cancelled answered while the lock was held");
        assert_eq!(answer, (false, Ok(())));
        drop(held);
    }

    #[test]
    fn cancel_trips_once_and_keeps_the_first_cause() {
        let source = CancelSource::new();
        let token = source.token();
        assert!(!token.is_cancelled());
        assert_eq!(token.cause(), None);
        assert!(source.cancel(CancelCause::Message(CancelReason::Timeout)));
        assert!(!source.cancel(CancelCause::Signal));
        assert!(token.is_cancelled());
        assert_eq!(token.check(), Err(Cancelled));
        assert_eq!(
            token.cause(),
            Some(CancelCause::Message(CancelReason::Timeout))
        );
    }

    #[test]
    fn on_cancel_runs_once() {
        let source = CancelSource::new();
        let token = source.token();
        let count = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&count);
        let guard = token.on_cancel(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(count.load(Ordering::SeqCst), 0);
        source.cancel(CancelCause::Signal);
        source.cancel(CancelCause::ChannelClosed);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        drop(guard);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn on_cancel_after_trip_runs_immediately() {
        let source = CancelSource::new();
        source.cancel(CancelCause::Signal);
        let count = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&count);
        let _guard = source.token().on_cancel(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn dropped_guard_unregisters() {
        let source = CancelSource::new();
        let count = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&count);
        let guard = source.token().on_cancel(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        drop(guard);
        source.cancel(CancelCause::Signal);
        assert_eq!(count.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn detached_callback_stays_registered() {
        let source = CancelSource::new();
        let count = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&count);
        source
            .token()
            .on_cancel(move || {
                c.fetch_add(1, Ordering::SeqCst);
            })
            .detach();
        source.cancel(CancelCause::Signal);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn panicking_callback_does_not_stop_the_others() {
        let source = CancelSource::new();
        let token = source.token();
        let count = Arc::new(AtomicUsize::new(0));
        let _a = token.on_cancel(|| panic!("callback panic (expected by the test)"));
        let c = Arc::clone(&count);
        let _b = token.on_cancel(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        assert!(source.cancel(CancelCause::Signal));
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn guard_drop_waits_for_a_running_callback() {
        let source = CancelSource::new();
        let token = source.token();
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&finished);
        let guard = token.on_cancel(move || {
            let _ = entered_tx.send(());
            let _ = release_rx.recv_timeout(Duration::from_secs(10));
            f.store(true, Ordering::SeqCst);
        });
        let tripper = thread::spawn(move || source.cancel(CancelCause::Signal));
        entered_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("callback started");
        let (dropped_tx, dropped_rx) = mpsc::channel();
        let dropper = thread::spawn(move || {
            drop(guard);
            let _ = dropped_tx.send(());
        });
        // The drop must not finish while the callback runs.
        assert!(dropped_rx.recv_timeout(Duration::from_millis(50)).is_err());
        release_tx.send(()).expect("callback waiting");
        dropped_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("guard drop finished");
        assert!(
            finished.load(Ordering::SeqCst),
            "drop returned before the callback finished"
        );
        assert!(tripper.join().expect("tripper thread"));
        dropper.join().expect("dropper thread");
    }

    #[test]
    fn callback_may_drop_its_own_guard() {
        let source = CancelSource::new();
        let token = source.token();
        let slot: Arc<Mutex<Option<OnCancelGuard>>> = Arc::default();
        let s = Arc::clone(&slot);
        let guard = token.on_cancel(move || {
            // Dropping our own guard from inside the callback must not wait for ourselves.
            drop(s.lock().unwrap_or_else(PoisonError::into_inner).take());
        });
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(guard);
        assert!(source.cancel(CancelCause::Signal));
    }

    #[tokio::test]
    async fn cancelled_future_and_linked_token() {
        let source = CancelSource::new();
        let token = source.token();
        let linked = token.to_cancellation_token();
        let waiter = tokio::spawn(token.cancelled_owned());
        let linked_waiter = tokio::spawn(async move { linked.cancelled().await });
        tokio::task::yield_now().await;
        source.cancel(CancelCause::Message(CancelReason::Requested));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("cancelled() woke")
            .expect("task");
        tokio::time::timeout(Duration::from_secs(5), linked_waiter)
            .await
            .expect("linked token cancelled")
            .expect("task");
        // Already tripped: completes at once.
        token.cancelled().await;
    }

    #[test]
    fn cancelling_the_linked_token_does_not_trip_ours() {
        let source = CancelSource::new();
        let token = source.token();
        token.to_cancellation_token().cancel();
        assert!(!token.is_cancelled());
    }
}
