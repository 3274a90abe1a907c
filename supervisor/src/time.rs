//! The crate's one time helper: sleeping until an `Instant`, however far away.
//!
//! tokio's timer saturates at about two years: a sleep until a later instant wakes at the
//! saturation point, which would fire a huge deadline (a `frame_timeout` of a century, say)
//! early. Every timer in warden goes through [`Wakeup`] (or [`sleep_until`], built on it),
//! which sleeps at most [`STEP`] at a time and goes back to sleep until the deadline is really
//! due. A deadline too far away to represent is `None`: never.
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

/// One re-armable sleep: the single timer of a loop driven by a sans-IO machine's
/// `poll_timeout()`. [`Wakeup::set`] re-arms it (cheap: no allocation), [`Wakeup::fired`]
/// resolves once the deadline has passed, never before.
#[derive(Debug)]
pub struct Wakeup {
    sleep: Pin<Box<Sleep>>,
    at: Option<Instant>,
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
        }
    }

    /// Arms the timer for `at` (`None`: disarms it). A no-op if it is already armed for `at`.
    pub fn set(&mut self, at: Option<Instant>) {
        if self.at == at {
            return;
        }
        self.at = at;
        if let Some(at) = at {
            let wake = next_wake(Instant::now(), at);
            self.sleep.as_mut().reset(wake.into());
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
