//! The crate's one time helper: sleeping until an `Instant`, however far away.
//!
//! tokio's timer saturates at about two years: a sleep until a later instant wakes at the
//! saturation point, which would fire a huge deadline (a `frame_timeout` of a century, say)
//! early. Every timer in warden goes through [`Wakeup`] (or [`sleep_until`], built on it),
//! which sleeps at most [`STEP`] at a time and goes back to sleep until the deadline is really
//! due. A deadline too far away to represent is `None`: never.
//!
//! Deadlines are kept to the microsecond: tokio's timer wheel has millisecond slots (a stage-3
//! SIGKILL landed ~1.4 ms after its deadline at p50), so a [`Wakeup`] is woken by one
//! process-wide `warden-timer` thread that sleeps on a condition variable until the earliest
//! armed deadline (a futex wait: tens of microseconds late) and wakes that task; a deadline
//! far off waits on tokio's timer first and reaches that thread 20 ms before it is
//! due. If the thread cannot be started, tokio's timer is used instead.
//!
//! Public only for the `warden` binary (the same package, another crate); not part of the API.

use std::future::pending;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// The longest single sleep: far below tokio's saturation point.
pub const STEP: Duration = Duration::from_secs(24 * 3600);

/// `now + d`, or `None` (never) when that is beyond what an `Instant` can hold.
pub fn deadline_after(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

/// Where to sleep to next on the way to `at`: `at` itself if it is within [`STEP`], else
/// [`STEP`] from `now`.
pub fn next_wake(now: Instant, at: Instant) -> Instant {
    now + at.saturating_duration_since(now).min(STEP)
}

/// A deadline further off than this waits on tokio's timer first and moves to the
/// `warden-timer` thread only this long before it is due: one re-armed or disarmed long before
/// it is due (a partial frame's stall bound, re-armed by each read that ends mid-frame, or
/// liveness, re-armed by each frame) then never wakes that thread. tokio's timer is at most a
/// few milliseconds late, well within the lead.
const COARSE_LEAD: Duration = Duration::from_millis(20);

/// One re-armable sleep: the single timer of a loop driven by a sans-IO machine's
/// `poll_timeout()`. [`Wakeup::set`] re-arms it (cheap: no allocation), [`Wakeup::fired`]
/// resolves once the deadline has passed, never before.
#[derive(Debug)]
pub struct Wakeup {
    /// The fallback, where the timer thread could not be started; with it, the wait until
    /// `coarse_until`.
    sleep: Pin<Box<Sleep>>,
    at: Option<Instant>,
    /// With the timer thread: `sleep` runs until this instant ([`COARSE_LEAD`] before `at`),
    /// and only then is the deadline handed to the thread.
    coarse_until: Option<Instant>,
    /// This timer's key with the timer thread, while it is registered there.
    id: u64,
    registered: Option<Instant>,
}

impl Wakeup {
    /// An unarmed timer.
    ///
    /// # Panics
    /// Outside a tokio runtime with time enabled.
    pub fn new() -> Self {
        Wakeup {
            sleep: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            at: None,
            coarse_until: None,
            id: precise::next_id(),
            registered: None,
        }
    }

    /// Arms the timer for `at` (`None`: disarms it). A no-op if it is already armed for `at`.
    pub fn set(&mut self, at: Option<Instant>) {
        if self.at == at {
            return;
        }
        self.at = at;
        self.unregister();
        self.coarse_until = None;
        if let Some(at) = at {
            let now = Instant::now();
            let mut wake = next_wake(now, at);
            if precise::available() && at.saturating_duration_since(now) > 2 * COARSE_LEAD {
                wake = next_wake(now, at - COARSE_LEAD);
                self.coarse_until = Some(at - COARSE_LEAD);
            }
            self.sleep.as_mut().reset(wake.into());
        }
    }

    fn unregister(&mut self) {
        if let Some(at) = self.registered.take() {
            precise::remove(at, self.id);
        }
    }

    /// Resolves once the armed deadline has passed; never while unarmed.
    ///
    /// # Cancel safety
    /// Cancel-safe: the state lives in `self`; a dropped call loses nothing.
    pub async fn fired(&mut self) {
        let Some(at) = self.at else {
            return pending().await;
        };
        if precise::available() {
            // Far off: tokio's timer first (see `COARSE_LEAD`), in steps as below.
            while let Some(until) = self.coarse_until {
                self.sleep.as_mut().await;
                let now = Instant::now();
                if now >= until {
                    self.coarse_until = None;
                } else {
                    self.sleep.as_mut().reset(next_wake(now, until).into());
                }
            }
            std::future::poll_fn(|cx| {
                if Instant::now() >= at {
                    self.unregister();
                    return std::task::Poll::Ready(());
                }
                // (Re-)registered on every poll: the task's waker may have changed.
                self.registered = Some(at);
                precise::insert(at, self.id, cx.waker());
                std::task::Poll::Pending
            })
            .await;
            return;
        }
        loop {
            self.sleep.as_mut().await;
            let now = Instant::now();
            if now >= at {
                return;
            }
            self.sleep.as_mut().reset(next_wake(now, at).into());
        }
    }
}

impl Drop for Wakeup {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// The timer thread's scheduling: real-time where allowed (see [`realtime::request`]).
mod realtime {
    /// Asks for `SCHED_FIFO` at the lowest real-time priority for the calling thread (the
    /// `warden-timer` thread), where the process may (root, `CAP_SYS_NICE`, or an
    /// `RLIMIT_RTPRIO` above 0): its deadlines, the ladder's SIGKILL among them, then wait for
    /// no ordinary thread, even with every CPU busy. The thread only sleeps on a futex and runs
    /// a few system calls per deadline, and the kernel's real-time throttling bounds it anyway.
    /// Elsewhere it stays an ordinary thread, as it was; `WARDEN_TIMER_RT=0` keeps it so.
    pub(super) fn request() {
        if std::env::var_os("WARDEN_TIMER_RT").is_some_and(|v| v == "0") {
            return;
        }
        if let Err(error) = crate::process::set_realtime_thread() {
            tracing::debug!(%error, "the warden-timer thread stays an ordinary thread");
        }
    }
}

/// The `warden-timer` thread: armed deadlines in order, each with the waker of the task that
/// awaits it.
mod precise {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
    use std::task::Waker;
    use std::time::Instant;

    use super::STEP;

    /// What is due at a deadline.
    pub(super) enum Entry {
        /// Wake the task that awaits it.
        Wake(Waker),
        /// Run an [`Alarm`](super::Alarm)'s action (on this thread, under the lock), and record
        /// when it ran if it returned `true`.
        Run(
            Box<dyn FnOnce() -> bool + Send>,
            Arc<Mutex<Option<Instant>>>,
        ),
    }

    type Timers = BTreeMap<(Instant, u64), Entry>;

    struct Shared {
        timers: Mutex<Timers>,
        changed: Condvar,
    }

    /// `None` once starting the thread failed.
    static SHARED: OnceLock<Option<&'static Shared>> = OnceLock::new();
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);

    pub(super) fn next_id() -> u64 {
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    }

    fn shared() -> Option<&'static Shared> {
        *SHARED.get_or_init(|| {
            let shared: &'static Shared = Box::leak(Box::new(Shared {
                timers: Mutex::new(BTreeMap::new()),
                changed: Condvar::new(),
            }));
            match std::thread::Builder::new()
                .name("warden-timer".into())
                .spawn(move || {
                    super::realtime::request();
                    run(shared)
                })
            {
                Ok(_) => Some(shared),
                Err(e) => {
                    tracing::warn!(error = %e, "no warden-timer thread: deadlines use tokio's millisecond timer");
                    None
                }
            }
        })
    }

    pub(super) fn available() -> bool {
        shared().is_some()
    }

    fn lock(shared: &Shared) -> MutexGuard<'_, Timers> {
        // A waker that panicked in `wake` cannot leave the map inconsistent.
        shared.timers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn insert(at: Instant, id: u64, waker: &Waker) {
        let Some(shared) = shared() else { return };
        let mut timers = lock(shared);
        let earliest = timers.keys().next().is_none_or(|&(first, _)| at < first);
        match timers.get_mut(&(at, id)) {
            Some(Entry::Wake(w)) if w.will_wake(waker) => return,
            Some(Entry::Wake(w)) => w.clone_from(waker),
            Some(Entry::Run(..)) => return,
            None => {
                timers.insert((at, id), Entry::Wake(waker.clone()));
            }
        }
        if earliest {
            shared.changed.notify_one();
        }
    }

    /// Arms an alarm's action; `false` (and nothing armed) without a timer thread.
    pub(super) fn insert_action(at: Instant, id: u64, entry: Entry) -> bool {
        let Some(shared) = shared() else { return false };
        let mut timers = lock(shared);
        let earliest = timers.keys().next().is_none_or(|&(first, _)| at < first);
        timers.insert((at, id), entry);
        if earliest {
            shared.changed.notify_one();
        }
        true
    }

    /// Removes a timer or an alarm. Once this returns, an alarm's action is not running (it
    /// runs under the same lock) and never will.
    pub(super) fn remove(at: Instant, id: u64) {
        if let Some(shared) = shared() {
            lock(shared).remove(&(at, id));
        }
    }

    fn run(shared: &'static Shared) {
        let mut due = Vec::new();
        let mut timers = lock(shared);
        loop {
            let now = Instant::now();
            while let Some(entry) = timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                match entry.remove() {
                    Entry::Wake(waker) => due.push(waker),
                    // Under the lock, so a disarm that returned has kept it from running. An
                    // action is a few system calls (a poll, a write, a pidfd signal).
                    Entry::Run(action, fired) => {
                        if action() {
                            *fired.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
                        }
                    }
                }
            }
            if !due.is_empty() {
                // Woken without the lock: a wake may take other locks of the runtime.
                drop(timers);
                due.drain(..).for_each(Waker::wake);
                timers = lock(shared);
                continue;
            }
            timers = match timers.keys().next() {
                None => shared
                    .changed
                    .wait(timers)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(&(at, _)) => {
                    let wait = at.saturating_duration_since(now).min(STEP);
                    shared
                        .changed
                        .wait_timeout(timers, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}

/// An action the `warden-timer` thread runs at a deadline itself, on no runtime: what must
/// happen on time even while every runtime thread is busy (the ladder's SIGKILL beside
/// hundreds of busy workers). The action runs under the timer thread's lock, so it must be
/// short and must not block; it returns whether it did its work, and [`fired_at`] says when.
///
/// [`fired_at`]: Alarm::fired_at
pub(crate) struct Alarm {
    id: u64,
    armed: Option<Instant>,
    fired: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Alarm {
    /// An unarmed alarm.
    pub(crate) fn new() -> Alarm {
        Alarm {
            id: precise::next_id(),
            armed: None,
            fired: Default::default(),
        }
    }

    /// When the alarm is armed for, if it is (and has not run).
    pub(crate) fn armed(&self) -> Option<Instant> {
        self.armed
    }

    /// Arms the alarm to run `action` at `at`, replacing what was armed. Returns `false`, and
    /// arms nothing, where the timer thread could not be started.
    pub(crate) fn arm(
        &mut self,
        at: Instant,
        action: impl FnOnce() -> bool + Send + 'static,
    ) -> bool {
        self.disarm();
        let entry = precise::Entry::Run(Box::new(action), std::sync::Arc::clone(&self.fired));
        if precise::insert_action(at, self.id, entry) {
            self.armed = Some(at);
            true
        } else {
            false
        }
    }

    /// Disarms the alarm and forgets that it fired: once this returns, its action is not
    /// running and never will.
    pub(crate) fn disarm(&mut self) {
        if let Some(at) = self.armed.take() {
            precise::remove(at, self.id);
        }
        *self.fired.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// When the action ran and did its work (since it was last armed; `None` once disarmed).
    pub(crate) fn fired_at(&self) -> Option<Instant> {
        *self.fired.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        self.disarm();
    }
}

impl Default for Wakeup {
    fn default() -> Self {
        Self::new()
    }
}

/// Sleeps until `at`, or forever when there is no deadline, never waking early.
///
/// # Cancel safety
/// Cancel-safe (it holds no state worth keeping).
pub async fn sleep_until(at: Option<Instant>) {
    let mut wakeup = Wakeup::new();
    wakeup.set(at);
    wakeup.fired().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_wakeup_never_fires_early_and_rearming_moves_it() {
        runtime().block_on(async {
            let mut wakeup = Wakeup::new();
            for ms in [0u64, 1, 3, 7] {
                let at = Instant::now() + Duration::from_millis(ms);
                wakeup.set(Some(at));
                wakeup.fired().await;
                assert!(Instant::now() >= at, "fired before its deadline");
            }
            // Armed far away, then brought forward while another task awaits an earlier one.
            wakeup.set(Some(Instant::now() + STEP));
            let soon = Instant::now() + Duration::from_millis(2);
            let other = tokio::spawn(async move {
                let mut w = Wakeup::new();
                w.set(Some(soon));
                w.fired().await;
                Instant::now()
            });
            let at = Instant::now() + Duration::from_millis(4);
            wakeup.set(Some(at));
            wakeup.fired().await;
            assert!(Instant::now() >= at);
            assert!(other.await.expect("task") >= soon);
        });
    }

    #[test]
    fn many_wakeups_each_fire_once_their_deadline_passed() {
        runtime().block_on(async {
            let start = Instant::now();
            let tasks: Vec<_> = (0..200u64)
                .map(|i| {
                    tokio::spawn(async move {
                        let at = start + Duration::from_micros(i * 37 % 5_000);
                        let mut w = Wakeup::new();
                        w.set(Some(at));
                        w.fired().await;
                        Instant::now() >= at
                    })
                })
                .collect();
            for t in tasks {
                assert!(t.await.expect("task"), "a wakeup fired before its deadline");
            }
        });
    }

    #[test]
    fn an_alarm_runs_its_action_once_at_its_deadline_on_no_runtime() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut alarm = Alarm::new();
        let at = Instant::now() + Duration::from_millis(2);
        assert!(alarm.arm(at, move || tx.send(Instant::now()).is_ok()));
        // No runtime exists here: the timer thread runs it.
        let ran = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the alarm ran");
        assert!(ran >= at, "ran before its deadline");
        let fired = alarm.fired_at().expect("recorded");
        assert!(fired >= at);
    }

    #[test]
    fn a_disarmed_or_dropped_alarm_never_runs_and_a_refusing_action_is_not_recorded() {
        let (tx, rx) = std::sync::mpsc::channel::<&str>();
        let mut disarmed = Alarm::new();
        let tx1 = tx.clone();
        assert!(
            disarmed.arm(Instant::now() + Duration::from_millis(5), move || tx1
                .send("disarmed")
                .is_ok())
        );
        disarmed.disarm();
        let dropped = {
            let mut a = Alarm::new();
            let tx2 = tx.clone();
            a.arm(Instant::now() + Duration::from_millis(5), move || {
                tx2.send("dropped").is_ok()
            });
            a
        };
        drop(dropped);
        // Re-arming replaces: only the second action runs.
        let mut rearmed = Alarm::new();
        let tx3 = tx.clone();
        rearmed.arm(Instant::now() + Duration::from_secs(3600), move || {
            tx3.send("first").is_ok()
        });
        let tx4 = tx.clone();
        rearmed.arm(Instant::now() + Duration::from_millis(5), move || {
            let _ = tx4.send("second");
            false
        });
        // A later marker orders the check: everything armed earlier has had its turn by then.
        let mut marker = Alarm::new();
        marker.arm(Instant::now() + Duration::from_millis(30), move || {
            tx.send("marker").is_ok()
        });
        let mut seen = Vec::new();
        while let Ok(what) = rx.recv_timeout(Duration::from_secs(10)) {
            seen.push(what);
            if what == "marker" {
                break;
            }
        }
        assert_eq!(seen, ["second", "marker"]);
        assert_eq!(
            rearmed.fired_at(),
            None,
            "an action that did nothing is not recorded"
        );
    }

    #[test]
    fn long_sleeps_go_a_step_at_a_time() {
        let now = Instant::now();
        assert_eq!(next_wake(now, now + 5 * STEP), now + STEP);
        let soon = now + Duration::from_secs(3);
        assert_eq!(next_wake(now, soon), soon);
        // A deadline already passed: wake now.
        assert_eq!(next_wake(now + STEP, now), now + STEP);
    }
}
