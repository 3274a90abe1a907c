//! The messages. Variant order is the wire tag: append new variants, never reorder.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

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
}

impl CancelReason {
    /// Lower-case name used in reports and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Requested => "requested",
            CancelReason::Timeout => "timeout",
            CancelReason::Shutdown => "shutdown",
            CancelReason::Unresponsive => "unresponsive",
        }
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    /// Tag 1. Run a job. At most one job runs on a connection at a time.
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
