//! The restart policy as a sans-IO tracker: feed it each loss with its `now`, get the delay
//! before the replacement may start, or the verdict that the intensity limit is passed.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use super::config::RestartPolicy;

/// Counts restarts within the policy's period and computes the backoff.
#[derive(Debug)]
pub(crate) struct Restarts {
    policy: RestartPolicy,
    /// When each restart within the last period was decided, oldest first.
    recent: VecDeque<Instant>,
    /// Restarts since the last job a worker completed: the backoff's exponent.
    in_a_row: u32,
    rng: u64,
}

/// The intensity limit is passed: the pool must fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LimitPassed;

impl Restarts {
    pub(crate) fn new(policy: RestartPolicy) -> Self {
        // A per-process random seed without a dependency: the standard hasher's random keys.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(u64::from(std::process::id()));
        Restarts {
            policy,
            recent: VecDeque::new(),
            in_a_row: 0,
            rng: h.finish() | 1,
        }
    }

    /// A worker was lost at `now`: the delay before its replacement may start, or
    /// [`LimitPassed`] when this restart would be one more than the policy allows within its
    /// period.
    pub(crate) fn handle_loss(&mut self, now: Instant) -> Result<Duration, LimitPassed> {
        while let Some(&first) = self.recent.front() {
            if now.saturating_duration_since(first) >= self.policy.period {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= self.policy.max_restarts as usize {
            return Err(LimitPassed);
        }
        self.recent.push_back(now);
        let exponent = self.in_a_row.min(30);
        self.in_a_row = self.in_a_row.saturating_add(1);
        let full = self
            .policy
            .backoff_initial
            .saturating_mul(1u32 << exponent)
            .min(self.policy.backoff_max);
        Ok(self.jitter(full))
    }

    /// A worker completed a job: the next loss starts the backoff again from its first delay
    /// (the intensity window is not reset: only time does that).
    pub(crate) fn handle_success(&mut self) {
        self.in_a_row = 0;
    }

    /// Restarts counted within the current window.
    #[cfg(test)]
    pub(crate) fn in_window(&self) -> usize {
        self.recent.len()
    }

    /// "Equal jitter": half the delay, plus a random part of the other half, so that workers
    /// lost together do not restart together.
    fn jitter(&mut self, delay: Duration) -> Duration {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = delay / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let extra = if nanos == 0 {
            0
        } else {
            self.rng % (nanos + 1)
        };
        half + Duration::from_nanos(extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy(max: u32, period: Duration) -> RestartPolicy {
        RestartPolicy::new(max, period).backoff(ms(10), ms(1000))
    }

    #[test]
    fn more_than_max_restarts_within_the_period_pass_the_limit() {
        let t0 = Instant::now();
        let mut r = Restarts::new(policy(3, ms(1000)));
        for i in 0..3 {
            assert!(r.handle_loss(t0 + ms(i * 10)).is_ok());
        }
        assert_eq!(r.handle_loss(t0 + ms(100)), Err(LimitPassed));
    }

    #[test]
    fn restarts_older_than_the_period_no_longer_count() {
        let t0 = Instant::now();
        let mut r = Restarts::new(policy(2, ms(1000)));
        assert!(r.handle_loss(t0).is_ok());
        assert!(r.handle_loss(t0 + ms(500)).is_ok());
        // The first one left the window exactly at its end.
        assert!(r.handle_loss(t0 + ms(1000)).is_ok());
        assert_eq!(r.in_window(), 2);
        assert_eq!(r.handle_loss(t0 + ms(1400)), Err(LimitPassed));
    }

    #[test]
    fn zero_restarts_fail_at_the_first_loss() {
        let mut r = Restarts::new(policy(0, ms(1000)));
        assert_eq!(r.handle_loss(Instant::now()), Err(LimitPassed));
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let t0 = Instant::now();
        let mut r = Restarts::new(policy(100, Duration::from_secs(3600)));
        let mut full = ms(10);
        for i in 0..12 {
            let delay = r.handle_loss(t0 + ms(i)).expect("within the limit");
            assert!(delay >= full / 2 && delay <= full, "{delay:?} for {full:?}");
            full = (full * 2).min(ms(1000));
        }
    }

    #[test]
    fn a_success_restarts_the_backoff() {
        let t0 = Instant::now();
        let mut r = Restarts::new(policy(100, Duration::from_secs(3600)));
        for i in 0..5 {
            r.handle_loss(t0 + ms(i)).expect("within the limit");
        }
        r.handle_success();
        let delay = r.handle_loss(t0 + ms(10)).expect("within the limit");
        assert!(delay <= ms(10), "{delay:?}");
    }
}
