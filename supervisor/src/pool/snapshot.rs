//! What a pool looks like at one moment.

use super::handle::PoolJobId;
use crate::error::PoolFailure;

/// The state of one worker of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerState {
    /// Being spawned, or in its handshake.
    Starting,
    /// Waiting for a job.
    Idle,
    /// Running this attempt of this job.
    Busy {
        /// The job.
        job: PoolJobId,
        /// Its attempt (1 for the first).
        attempt: u32,
    },
    /// Shutting down (recycled, replaced, or the pool stops); it takes no job.
    Stopping,
}

impl WorkerState {
    /// `starting`, `idle`, `busy` or `stopping`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Idle => "idle",
            WorkerState::Busy { .. } => "busy",
            WorkerState::Stopping => "stopping",
        }
    }
}

/// One worker in a [`PoolSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerSnapshot {
    /// Its pid, once spawned.
    pub pid: Option<u32>,
    /// What it does.
    pub state: WorkerState,
    /// Jobs it has run.
    pub jobs: u32,
}

/// A pool at one moment ([`Pool::snapshot`](crate::Pool::snapshot)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolSnapshot {
    /// Every worker the pool holds, stopping ones included.
    pub workers: Vec<WorkerSnapshot>,
    /// Jobs waiting for a worker.
    pub queued: usize,
    /// Jobs running on a worker.
    pub in_flight: usize,
    /// Workers restarted after a loss the restart policy counts (a crash, a violation, a
    /// silence, a failed spawn).
    pub restarts: u64,
    /// Workers replaced because a job's cancel had to signal or kill them.
    pub replacements: u64,
    /// Workers recycled ([`RecycleReason`](crate::RecycleReason)).
    pub recycles: u64,
    /// Attempts run again after their worker was lost under them.
    pub retries: u64,
    /// Jobs that ended with a report (whatever the outcome).
    pub completed: u64,
    /// Spawns that failed for want of file descriptors and were retried later.
    pub spawn_deferrals: u64,
    /// The pool's failure, once it failed.
    pub failure: Option<PoolFailure>,
    /// Shutting down or shut down: no more jobs are taken.
    pub closed: bool,
}
