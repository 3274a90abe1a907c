//! The messages. Variant order is the wire tag: append new variants, never reorder.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Identifies one job on one connection. Chosen by the supervisor, unique per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

/// Why the supervisor asks a job to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CancelReason {
    /// The caller asked (its cancellation token was cancelled).
    Requested,
    /// The job's timeout elapsed.
    Timeout,
    /// The supervisor is shutting down.
    Shutdown,
    /// The worker stopped answering (missed heartbeats). Wire tag 3.
    Unresponsive,
    /// The job reported no progress for its no-progress bound. Wire tag 4, which a version 1
    /// supervisor does not send (a version 1 worker may not know it): on the wire the job's
    /// `Cancel` says [`Timeout`](Self::Timeout), and only the supervisor's report says this.
    NoProgress,
}

impl CancelReason {
    /// Every reason, in wire-tag order.
    pub const ALL: [CancelReason; 5] = [
        CancelReason::Requested,
        CancelReason::Timeout,
        CancelReason::Shutdown,
        CancelReason::Unresponsive,
        CancelReason::NoProgress,
    ];

    /// Lower-case name used in reports and logs: `requested`, `timeout`, `shutdown`,
    /// `unresponsive`, `no_progress`. [`FromStr`] takes it back.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Requested => "requested",
            CancelReason::Timeout => "timeout",
            CancelReason::Shutdown => "shutdown",
            CancelReason::Unresponsive => "unresponsive",
            CancelReason::NoProgress => "no_progress",
        }
    }

    /// The reason a version 1 `Cancel` carries for this one: itself, except
    /// [`NoProgress`](Self::NoProgress), which goes as [`Timeout`](Self::Timeout) (a deadline
    /// of the job's passed; a version 1 worker may not know tag 4).
    pub fn on_wire_v1(self) -> CancelReason {
        match self {
            CancelReason::NoProgress => CancelReason::Timeout,
            other => other,
        }
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`CancelReason::as_str`]'s.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown cancel reason {name:?}")]
pub struct ParseCancelReasonError {
    /// The text that names no reason.
    pub name: String,
}

impl FromStr for CancelReason {
    type Err = ParseCancelReasonError;

    /// The reason [`CancelReason::as_str`] names (exactly: lower case).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        CancelReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == name)
            .ok_or_else(|| ParseCancelReasonError {
                name: name.to_string(),
            })
    }
}

/// Messages the supervisor sends to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SupervisorMessage {
    /// Tag 0. Reply to the worker's [`WorkerMessage::Hello`]: the connection is accepted.
    Hello {
        /// The protocol version both sides will speak.
        protocol_version: u16,
        /// The supervisor's crate version, for diagnostics.
        supervisor_version: String,
        /// Largest frame body the supervisor accepts; the worker must not send larger frames.
        max_frame_len: u32,
        /// How often the worker should send [`WorkerMessage::Heartbeat`], in milliseconds;
        /// 0 means never.
        heartbeat_interval_ms: u32,
    },
    /// Tag 1. Run a job. At most one job runs on a connection at a time; from protocol version
    /// 2 ([`crate::QUEUED_JOBS_VERSION`]) more may wait behind it, run in the order sent.
    StartJob {
        /// The job's id; every later message about the job carries it.
        job: JobId,
        /// Opaque input for the job's handler.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        /// Time left until the job's deadline when the message was sent, in milliseconds;
        /// `None` when the job has no deadline.
        deadline_ms: Option<u64>,
    },
    /// Tag 2. Ask a job to stop cooperatively.
    Cancel {
        /// The job to stop.
        job: JobId,
        /// Why.
        reason: CancelReason,
    },
    /// Tag 3. No more jobs will come: finish and exit.
    Shutdown,
    /// Tag 4. The handshake is refused (incompatible version); the supervisor closes the
    /// connection after sending it.
    Refuse {
        /// Why, for humans.
        reason: String,
    },
}

/// Messages a worker sends to the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WorkerMessage {
    /// Tag 0. First message on every connection.
    Hello {
        /// The protocol version the worker speaks.
        protocol_version: u16,
        /// The worker's process id as it sees it.
        pid: u32,
        /// The worker SDK's version (or another implementation's name and version).
        sdk_version: String,
    },
    /// Tag 1. The worker is alive.
    Heartbeat,
    /// Tag 2. Progress of a running job.
    Progress {
        /// The job.
        job: JobId,
        /// Fraction done, 0.0 to 1.0.
        fraction: Option<f32>,
        /// A short human-readable status (at most [`crate::MAX_PROGRESS_TEXT`] bytes).
        text: Option<String>,
    },
    /// Tag 3. The job finished with a result, whether or not a cancel arrived.
    Completed {
        /// The job.
        job: JobId,
        /// Opaque output.
        #[serde(with = "serde_bytes")]
        output: Vec<u8>,
    },
    /// Tag 4. The job stopped because it was cancelled (it acknowledges the cancel).
    Cancelled {
        /// The job.
        job: JobId,
    },
    /// Tag 5. The job failed with its own error.
    Failed {
        /// The job.
        job: JobId,
        /// The error, for humans.
        error: String,
    },
}

impl WorkerMessage {
    /// The job a message is about, if any.
    pub fn job(&self) -> Option<JobId> {
        match self {
            WorkerMessage::Progress { job, .. }
            | WorkerMessage::Completed { job, .. }
            | WorkerMessage::Cancelled { job }
            | WorkerMessage::Failed { job, .. } => Some(*job),
            WorkerMessage::Hello { .. } | WorkerMessage::Heartbeat => None,
        }
    }

    /// Short name of the message kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            WorkerMessage::Hello { .. } => "hello",
            WorkerMessage::Heartbeat => "heartbeat",
            WorkerMessage::Progress { .. } => "progress",
            WorkerMessage::Completed { .. } => "completed",
            WorkerMessage::Cancelled { .. } => "cancelled",
            WorkerMessage::Failed { .. } => "failed",
        }
    }
}

impl SupervisorMessage {
    /// Short name of the message kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            SupervisorMessage::Hello { .. } => "hello",
            SupervisorMessage::StartJob { .. } => "start-job",
            SupervisorMessage::Cancel { .. } => "cancel",
            SupervisorMessage::Shutdown => "shutdown",
            SupervisorMessage::Refuse { .. } => "refuse",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cancel_reason_name_round_trips() {
        // Exhaustive: a new reason does not compile here until it is in `ALL` at its wire tag.
        let tag = |reason: CancelReason| match reason {
            CancelReason::Requested => 0,
            CancelReason::Timeout => 1,
            CancelReason::Shutdown => 2,
            CancelReason::Unresponsive => 3,
            CancelReason::NoProgress => 4,
        };
        for (i, reason) in CancelReason::ALL.into_iter().enumerate() {
            assert_eq!(tag(reason), i);
            assert_eq!(reason.as_str().parse(), Ok(reason));
            assert_eq!(reason.to_string(), reason.as_str());
        }
        for bad in ["", "Timeout", "time out", "timeout "] {
            assert_eq!(
                bad.parse::<CancelReason>(),
                Err(ParseCancelReasonError { name: bad.into() })
            );
        }
    }
}
