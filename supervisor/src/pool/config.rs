//! How a pool runs: its size, queue, retries, recycling, restart policy and spawn concurrency.

use std::time::Duration;

use crate::error::PoolConfigError;

/// The restart policy: a worker that crashed (or could not be started) is restarted after an
/// exponential backoff with jitter, and at most `max_restarts` restarts may happen within
/// `period` (the intensity limit of an OTP supervisor). One more and the pool fails
/// ([`PoolFailure`](crate::PoolFailure)) instead of looping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestartPolicy {
    /// Restarts allowed within `period` (default 10; 0: the first loss fails the pool).
    pub max_restarts: u32,
    /// The window the restarts are counted in (default 10 s).
    pub period: Duration,
    /// The first restart's delay (default 10 ms); each restart in a row doubles it.
    pub backoff_initial: Duration,
    /// The longest delay (default 2 s).
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 10,
            period: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(2),
        }
    }
}

impl RestartPolicy {
    /// At most `max_restarts` restarts within `period`, with the default backoff.
    pub fn new(max_restarts: u32, period: Duration) -> Self {
        RestartPolicy {
            max_restarts,
            period,
            ..Self::default()
        }
    }

    /// Sets the backoff: `initial` for the first restart in a row, doubling up to `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }
}

/// How [`Pool::shutdown`](crate::Pool::shutdown) ends the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownMode {
    /// Take no more jobs; finish every queued and running job, then stop the workers.
    Drain,
    /// Take no more jobs; queued jobs are cancelled without starting (`cancelled`,
    /// `started: false`, reason `shutdown`), running ones through their ladders (reason
    /// `shutdown`), then the workers stop.
    Cancel,
}

/// A pool's settings. The workers' own ([`WorkerConfig`](crate::WorkerConfig): deadlines,
/// liveness, containment, limits) are given beside it and apply to every worker.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolConfig {
    /// How many workers run at once.
    pub workers: usize,
    /// How many jobs may wait for a worker (default: 2 per worker, at least 16). Jobs that run
    /// do not count.
    pub queue_capacity: usize,
    /// Replace a worker after it ran this many jobs (`None`, the default: never).
    pub max_jobs_per_worker: Option<u32>,
    /// Replace a worker whose memory in use *after* a job exceeds this many bytes (its
    /// cgroup's current usage, else its resident set; never its peak, so a fresh worker is not
    /// recycled for what its predecessor did). `None` (default): not checked.
    pub max_memory: Option<u64>,
    /// How many more times a job runs when its worker died under it on its own (crashed,
    /// broke the protocol, went unresponsive) before giving a result (default 0). The
    /// report's `attempt` counts them; attempts of a job never overlap.
    pub retries: u32,
    /// The restart policy.
    pub restart: RestartPolicy,
    /// How many workers may be starting (spawn and handshake) at once (default 32).
    pub spawn_concurrency: usize,
    /// The overall deadline of the shutdown a dropped pool runs in the background (default
    /// 30 s; [`ShutdownMode::Cancel`]).
    pub drop_deadline: Duration,
    /// How many jobs each busy worker is handed beyond the one it runs, before that one ends
    /// (default 0: none). A worker that speaks protocol version 2 (the Rust SDK) has them
    /// queued on its channel ([`WorkerConfig::pipeline`](crate::WorkerConfig::pipeline) is
    /// set to `1 + prefetch`), so it starts each the moment the one before ends, with no
    /// round trip through the pool or the channel, which is what an empty job's throughput is
    /// made of; a version 1 worker gets each in the same turn as the answer to the one before.
    /// The price is Celery's prefetch: a job handed early waits behind the ones before it on
    /// its worker, even if another worker becomes idle meanwhile, so leave it at 0 for jobs of
    /// very different lengths. A job handed early and cancelled while it waits is answered at
    /// once (`started: false`), and its deadlines start only at its turn; it is taken out of
    /// the queue, so the queue holds up to `prefetch` more jobs per worker. Workers that are
    /// recycled on memory or run a plain program are handed nothing early, and none is handed
    /// so many that it would pass `max_jobs_per_worker`.
    pub prefetch: usize,
}

impl PoolConfig {
    /// A pool of `workers` workers with the defaults.
    pub fn new(workers: usize) -> Self {
        PoolConfig {
            workers,
            queue_capacity: workers.saturating_mul(2).max(16),
            max_jobs_per_worker: None,
            max_memory: None,
            retries: 0,
            restart: RestartPolicy::default(),
            spawn_concurrency: 32,
            drop_deadline: Duration::from_secs(30),
            prefetch: 0,
        }
    }

    /// Sets the queue's capacity.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// Recycles a worker after `jobs` jobs.
    pub fn max_jobs_per_worker(mut self, jobs: u32) -> Self {
        self.max_jobs_per_worker = Some(jobs);
        self
    }

    /// Recycles a worker whose memory in use after a job exceeds `bytes`.
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.max_memory = Some(bytes);
        self
    }

    /// Runs a job up to `retries` more times when its worker dies under it on its own.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Sets the restart policy.
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Sets how many workers may be starting at once (at least 1).
    pub fn spawn_concurrency(mut self, n: usize) -> Self {
        self.spawn_concurrency = n.max(1);
        self
    }

    /// Hands each busy worker up to `jobs` jobs early (see [`prefetch`](Self::prefetch)).
    pub fn prefetch(mut self, jobs: usize) -> Self {
        self.prefetch = jobs;
        self
    }

    /// Sets the deadline of a dropped pool's background shutdown.
    pub fn drop_deadline(mut self, deadline: Duration) -> Self {
        self.drop_deadline = deadline;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), PoolConfigError> {
        if self.workers == 0 {
            return Err(PoolConfigError::NoWorkers);
        }
        if self.queue_capacity == 0 {
            return Err(PoolConfigError::NoQueue);
        }
        Ok(())
    }
}
