//! Errors: one type per operation.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use thiserror::Error;
use warden_protocol::{DecodeError, EncodeError, JobId};

use crate::token::Cancelled;

/// The worker could not find or take its channel to the supervisor.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// `WARDEN_FD` is not set.
    #[error("WARDEN_FD is not set: this program was not started by a warden supervisor")]
    NotStartedByWarden,
    /// `WARDEN_FD` does not hold a decimal descriptor number.
    #[error("WARDEN_FD={value:?} is not a file descriptor number")]
    InvalidFd {
        /// The variable's value (lossily converted to UTF-8).
        value: String,
    },
    /// The descriptor number is not open in this process.
    #[error("file descriptor {fd} is not open")]
    NotOpen {
        /// The descriptor number.
        fd: RawFd,
        /// What `fstat` reported.
        #[source]
        source: io::Error,
    },
    /// The descriptor is open but is not a socket.
    #[error("file descriptor {fd} is not a socket")]
    NotSocket {
        /// The descriptor number.
        fd: RawFd,
    },
    /// The descriptor is a socket, but not a Unix-domain stream socket.
    #[error("file descriptor {fd} is not a unix stream socket")]
    WrongSocketKind {
        /// The descriptor number.
        fd: RawFd,
    },
    /// The channel named by `WARDEN_FD` was already taken by this process.
    #[error("the warden channel was already taken by this process")]
    AlreadyTaken,
    /// The descriptor could not be made close-on-exec or non-blocking.
    #[error("could not configure the channel descriptor")]
    Configure(#[source] io::Error),
}

/// The handshake with the supervisor did not succeed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The supervisor refused the connection.
    #[error("the supervisor refused the connection: {reason}")]
    Refused {
        /// The supervisor's reason, for humans.
        reason: String,
    },
    /// The supervisor speaks an incompatible protocol version.
    #[error("the supervisor speaks an incompatible protocol")]
    Version(#[source] warden_protocol::HandshakeError),
    /// The supervisor's frame limit is too small to carry the SDK's messages.
    #[error("the supervisor's frame limit of {max} bytes is below the minimum of {min} bytes")]
    FrameLimitTooSmall {
        /// The limit the supervisor announced.
        max: u32,
        /// The smallest limit the SDK accepts.
        min: u32,
    },
    /// No answer to the worker's hello in time.
    #[error("no hello from the supervisor within {timeout:?}")]
    Timeout {
        /// The handshake timeout.
        timeout: Duration,
    },
    /// The supervisor closed the channel before answering.
    #[error("the supervisor closed the channel during the handshake")]
    Closed,
    /// The supervisor answered with something other than `Hello` or `Refuse`.
    #[error("unexpected {kind} message during the handshake")]
    Unexpected {
        /// The message kind.
        kind: &'static str,
    },
    /// The supervisor's answer could not be decoded.
    #[error("undecodable frame during the handshake")]
    Decode(#[source] DecodeError),
    /// The worker's hello could not be encoded.
    #[error("could not encode the worker hello")]
    Encode(#[source] EncodeError),
    /// Reading or writing the channel failed.
    #[error("channel i/o failed during the handshake")]
    Io(#[source] io::Error),
}

/// The supervisor broke the conversation rules; the SDK stops serving.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame could not be decoded (over the limit, truncated, unknown tag, ...).
    #[error("undecodable frame from the supervisor")]
    Decode(#[source] DecodeError),
    /// A `StartJob` arrived while another job was running, on a connection whose protocol
    /// version does not queue jobs (version 1).
    #[error("start of {started} while {running} is running")]
    StartWhileRunning {
        /// The job that is running.
        running: JobId,
        /// The job the supervisor tried to start.
        started: JobId,
    },
    /// A `StartJob` named a job that is running or queued (protocol version 2, where jobs may
    /// queue; ids are unique on a connection).
    #[error("start of {job}, which is already running or queued")]
    DuplicateJob {
        /// The job id the supervisor used twice.
        job: JobId,
    },
    /// A `StartJob` arrived after `Shutdown`.
    #[error("start of {started} after shutdown")]
    StartAfterShutdown {
        /// The job the supervisor tried to start.
        started: JobId,
    },
    /// A message that is only valid during the handshake (`Hello`, `Refuse`) arrived later.
    #[error("unexpected {kind} message after the handshake")]
    Unexpected {
        /// The message kind.
        kind: &'static str,
    },
}

/// Serving jobs stopped with an error. A clean stop (`Shutdown`, or the polite signal) is `Ok`.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The channel could not be found or taken.
    #[error("could not take the warden channel")]
    Bootstrap(#[from] BootstrapError),
    /// The handshake failed.
    #[error("handshake with the supervisor failed")]
    Connect(#[from] ConnectError),
    /// The supervisor broke the protocol.
    #[error("protocol violation by the supervisor")]
    Protocol(#[from] ProtocolError),
    /// The supervisor closed the channel without asking the worker to shut down.
    #[error("the supervisor closed the channel")]
    Disconnected,
    /// Reading or writing the channel failed.
    #[error("channel i/o failed")]
    Io(#[source] io::Error),
    /// The async runtime could not be built.
    #[error("could not build the async runtime")]
    Runtime(#[source] io::Error),
    /// The polite-signal handler could not be installed.
    #[error("could not install the SIGTERM handler")]
    Signal(#[source] io::Error),
    /// The thread that runs blocking handlers could not be started.
    #[error("could not start the job thread")]
    JobThread(#[source] io::Error),
    /// The thread that writes frames and heartbeats could not be started.
    #[error("could not start the writer thread")]
    WriterThread(#[source] io::Error),
}

/// How a job handler reports that it did not produce an output.
///
/// Build it with `?` from [`Cancelled`] (so [`CancelToken::check`](crate::CancelToken::check)
/// propagates), from any [`std::error::Error`] (its source chain is kept in the message), or with
/// [`JobError::msg`] from anything printable.
///
/// `JobError` deliberately does not implement [`std::error::Error`] itself: that keeps the blanket
/// `From<E: Error>` coherent, as with `anyhow::Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobError {
    /// The handler stopped because its token tripped. The supervisor is told `Cancelled` if a
    /// cancel was requested, and `Failed` otherwise.
    Cancelled,
    /// The handler failed; the supervisor is told `Failed` with this message.
    Failed {
        /// The error, for humans.
        message: String,
    },
}

impl JobError {
    /// A failure described by `message`.
    pub fn msg(message: impl fmt::Display) -> JobError {
        JobError::Failed {
            message: message.to_string(),
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Cancelled => f.write_str("job was cancelled"),
            JobError::Failed { message } => f.write_str(message),
        }
    }
}

impl From<Cancelled> for JobError {
    fn from(_: Cancelled) -> JobError {
        JobError::Cancelled
    }
}

impl<E: std::error::Error> From<E> for JobError {
    fn from(error: E) -> JobError {
        use std::fmt::Write as _;
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let _ = write!(message, ": {cause}");
            source = cause.source();
        }
        JobError::Failed { message }
    }
}
