//! Every deadline of one worker connection, in one table (quinn-proto's `TimerTable`).

use std::time::{Duration, Instant};

/// The connection's timers. The ladder's stages are not here: they live in the job's
/// [`Escalation`](crate::escalation::Escalation), and [`Connection::poll_timeout`]
/// (super::Connection::poll_timeout) takes the earlier of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Timer {
    /// The running job's timeout: cancel it with reason `timeout`.
    JobTimeout,
    /// The running job sent no progress for its bound: cancel it with reason `no_progress`.
    NoProgress,
    /// A partial frame's stall bound (`frame_timeout`): a violation.
    Frame,
    /// Nothing heard from the worker for `unresponsive_after`.
    Liveness,
    /// The worker closed its channel but has not exited (`drain_timeout`): kill it.
    Hangup,
    /// The worker exited but the channel has not reached EOF (`drain_timeout`): reap anyway.
    Drain,
    /// The running job answered `Cancelled` before anyone here asked (`drain_timeout`): a
    /// cancel from here before it fires is what that answer acknowledges; after it, the
    /// answer is a violation.
    Stray,
}

impl Timer {
    const ALL: [Timer; 7] = [
        Timer::JobTimeout,
        Timer::NoProgress,
        Timer::Frame,
        Timer::Liveness,
        Timer::Hangup,
        Timer::Drain,
        Timer::Stray,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// When each [`Timer`] fires; `None`: not armed (or too far away to represent: never).
///
/// While paused (the tree is suspended) nothing is due; a timer armed then counts from the
/// moment of the pause, and the resume moves every armed timer later by the time paused.
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerTable {
    at: [Option<Instant>; Timer::ALL.len()],
    paused_at: Option<Instant>,
}

impl TimerTable {
    /// Arms `timer` to fire `after` from `now` (from the pause, while paused).
    pub(crate) fn arm(&mut self, timer: Timer, now: Instant, after: Duration) {
        self.at[timer.index()] = self.base(now).checked_add(after);
    }

    /// Arms `timer` unless it is armed already.
    pub(crate) fn arm_once(&mut self, timer: Timer, now: Instant, after: Duration) {
        if !self.is_armed(timer) {
            self.arm(timer, now, after);
        }
    }

    /// Arms `timer` to fire at `at` (an instant on the table's clock: while paused, one
    /// that the resume will move like the others).
    pub(crate) fn arm_at(&mut self, timer: Timer, at: Instant) {
        self.at[timer.index()] = Some(at);
    }

    /// When `timer` fires, if armed.
    pub(crate) fn deadline(&self, timer: Timer) -> Option<Instant> {
        self.at[timer.index()]
    }

    /// The instant a timer armed at `now` counts from: `now`, or the pause's start.
    pub(crate) fn base(&self, now: Instant) -> Instant {
        self.paused_at.map_or(now, |at| at.min(now))
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.at[timer.index()] = None;
    }

    pub(crate) fn is_armed(&self, timer: Timer) -> bool {
        self.at[timer.index()].is_some()
    }

    /// The earliest armed deadline; `None` while paused.
    pub(crate) fn next(&self) -> Option<Instant> {
        if self.paused_at.is_some() {
            return None;
        }
        self.at.iter().flatten().min().copied()
    }

    /// Takes the first timer due at `now` (disarming it); `None` if none is, or while paused.
    pub(crate) fn expired(&mut self, now: Instant) -> Option<Timer> {
        if self.paused_at.is_some() {
            return None;
        }
        let timer = Timer::ALL
            .into_iter()
            .filter(|t| self.at[t.index()].is_some_and(|at| at <= now))
            .min_by_key(|t| self.at[t.index()])?;
        self.stop(timer);
        Some(timer)
    }

    pub(crate) fn pause(&mut self, now: Instant) {
        self.paused_at.get_or_insert(now);
    }

    /// Ends a pause at `now`: every armed timer moves later by the time paused.
    pub(crate) fn resume(&mut self, now: Instant) {
        let Some(since) = self.paused_at.take() else {
            return;
        };
        let stopped = now.saturating_duration_since(since);
        for at in &mut self.at {
            *at = at.and_then(|t| t.checked_add(stopped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_nothing_early() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = TimerTable::default();
        t.arm(Timer::Drain, t0, ms(30));
        t.arm(Timer::Frame, t0, ms(10));
        assert_eq!(t.next(), Some(t0 + ms(10)));
        assert_eq!(t.expired(t0 + ms(9)), None);
        assert_eq!(t.expired(t0 + ms(40)), Some(Timer::Frame));
        assert_eq!(t.expired(t0 + ms(40)), Some(Timer::Drain));
        assert_eq!(t.expired(t0 + ms(40)), None);
        t.arm(Timer::Liveness, t0, Duration::MAX);
        assert_eq!(t.next(), None, "an unrepresentable deadline never fires");
    }

    #[test]
    fn a_pause_moves_every_timer() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = TimerTable::default();
        t.arm(Timer::JobTimeout, t0, ms(100));
        t.pause(t0 + ms(50));
        assert_eq!(t.next(), None);
        assert_eq!(t.expired(t0 + ms(500)), None);
        // Armed while paused: counts from the pause.
        t.arm(Timer::Hangup, t0 + ms(70), ms(10));
        t.resume(t0 + ms(1050));
        assert_eq!(t.next(), Some(t0 + ms(1060)));
        assert_eq!(t.expired(t0 + ms(1099)), Some(Timer::Hangup));
        assert_eq!(t.expired(t0 + ms(1099)), None);
        assert_eq!(t.expired(t0 + ms(1100)), Some(Timer::JobTimeout));
    }
}
