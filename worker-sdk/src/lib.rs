//! stub
#![warn(missing_docs)]
mod bootstrap;
mod connection;
mod error;
mod job;
mod progress;
mod serve;
mod sys;
mod token;

pub use bootstrap::{Channel, FD_ENV_VAR};
pub use error::{BootstrapError, ConnectError, JobError, ProtocolError, ServeError};
pub use job::Job;
pub use progress::Progress;
pub use serve::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_ORPHAN_GRACE, ORPHAN_EXIT_CODE, Worker, serve, serve_async,
    serve_blocking,
};
pub use token::{CancelCause, CancelSource, CancelToken, Cancelled, OnCancelGuard};
pub use warden_protocol::{CancelReason, JobId, MAX_PROGRESS_TEXT};
