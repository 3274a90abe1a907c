//! The handler's view of one job.

use std::future::Future;
use std::time::{Duration, Instant};

use warden_protocol::JobId;

use crate::progress::Progress;
use crate::token::{CancelCause, CancelToken, Cancelled, OnCancelGuard};

/// One job, as handed to the handler: its input, its cancel token, its deadline and a progress
/// reporter.
#[derive(Debug)]
pub struct Job {
    id: JobId,
    payload: Vec<u8>,
    deadline: Option<Instant>,
    token: CancelToken,
    progress: Progress,
}

impl Job {
    pub(crate) fn new(
        id: JobId,
        payload: Vec<u8>,
        deadline: Option<Instant>,
        token: CancelToken,
        progress: Progress,
    ) -> Job {
        Job {
            id,
            payload,
            deadline,
            token,
            progress,
        }
    }

    /// The job's id, unique on this connection.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The job's input, as the supervisor sent it.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Takes the input out of the job, leaving it empty (avoids a copy).
    pub fn take_payload(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.payload)
    }

    /// The job's cancel token.
    pub fn token(&self) -> &CancelToken {
        &self.token
    }

    /// Whether the job should stop. One atomic load.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// `Err(Cancelled)` once the job should stop; propagate it with `?`.
    pub fn check(&self) -> Result<(), Cancelled> {
        self.token.check()
    }

    /// Completes when the job should stop.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + '_ {
        self.token.cancelled()
    }

    /// Why the token tripped: the supervisor's `Cancel` (with its reason), the polite signal, or
    /// the channel closing. `None` while it has not.
    pub fn cancel_cause(&self) -> Option<CancelCause> {
        self.token.cause()
    }

    /// Runs `callback` once when the job's token trips (at once if it already has); dropping the
    /// guard unregisters it. See [`CancelToken::on_cancel`].
    pub fn on_cancel<F>(&self, callback: F) -> OnCancelGuard
    where
        F: FnOnce() + Send + 'static,
    {
        self.token.on_cancel(callback)
    }

    /// When the supervisor will stop waiting for this job, computed from the `deadline_ms` it
    /// sent, counted from the job's start: when it was received, or, for a job that waited
    /// behind others (protocol version 2), when the job before it ended. `None` when the job has
    /// no deadline (or one too far away to represent).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left until the [`deadline`](Self::deadline), zero once it has passed.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The job's progress reporter. Clone it to report from other threads or tasks.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }
}
