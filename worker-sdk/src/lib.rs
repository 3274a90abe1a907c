//! The worker side of warden: serve jobs for a warden supervisor, observe cancellation, report
//! progress and results.
//!
//! A worker is an ordinary program that calls one of the serve functions from `main`. The
//! supervisor starts it, hands it a socket, sends it jobs (run one at a time) and may ask it to
//! stop; this crate speaks the protocol so the program only writes a handler.
//!
//! ```no_run
//! use warden_worker::{Job, JobError};
//!
//! fn main() -> Result<(), warden_worker::ServeError> {
//!     warden_worker::serve_blocking(|job: Job| -> Result<Vec<u8>, JobError> {
//!         let mut sum = 0u64;
//!         for (i, byte) in job.payload().iter().enumerate() {
//!             job.check()?; // stop here once the job is cancelled
//!             sum += u64::from(*byte);
//!             job.progress().set_fraction(i as f32 / job.payload().len() as f32);
//!         }
//!         Ok(sum.to_le_bytes().to_vec())
//!     })
//! }
//! ```
//!
//! An async handler is the same with [`serve`] and an `async` block. Programs that already run a
//! tokio runtime use [`serve_async`]; [`Worker`] holds the settings.
//!
//! # How a worker works
//!
//! 1. **Bootstrap.** The supervisor puts one end of a socketpair in the worker and names its
//!    descriptor in `WARDEN_FD`. [`Channel::from_env`] checks that the descriptor is open and a
//!    Unix stream socket before taking it over, then makes it close-on-exec so the worker's own
//!    children never inherit it. A program started by hand fails with
//!    [`BootstrapError::NotStartedByWarden`].
//! 2. **Handshake.** The worker sends its hello (the newest protocol version it speaks, pid,
//!    SDK version) and waits, at most 10 s by default, for the supervisor's hello, which fixes
//!    the protocol version both speak (2, or 1 for a supervisor that predates queued jobs), the
//!    frame limit and the heartbeat interval, or its refusal ([`ConnectError::Refused`]). The
//!    settled version is logged with the `connected` event.
//! 3. **Jobs.** Each `StartJob` becomes a [`Job`] for the handler: its payload, id, deadline, a
//!    [`CancelToken`] of its own and a [`Progress`] reporter. One job runs at a time. An async
//!    handler's future runs as a spawned task; a blocking handler runs on one dedicated thread,
//!    so the SDK keeps reading and cancelling while it works. In protocol version 2 the
//!    supervisor may send jobs while one runs: they wait in the SDK and run in the order they
//!    arrived, each the moment the one before it has ended (a blocking one on the same thread,
//!    with no hop through the SDK's task), and each job's deadline counts from its start. In
//!    version 1 a second `StartJob` while one runs is the supervisor's violation (see
//!    **Stopping**).
//! 4. **Outcome.** What the handler returns decides the single terminal message:
//!
//!    | handler returns                                  | supervisor is told                  |
//!    |--------------------------------------------------|-------------------------------------|
//!    | `Ok(output)` (even after a cancel)               | `Completed`                         |
//!    | `Err(JobError::Cancelled)` after the token tripped | `Cancelled`                       |
//!    | `Err(JobError::Cancelled)`, token never tripped  | `Failed` ("handler returned cancelled without a cancel request") |
//!    | `Err(JobError::Failed { .. })`                   | `Failed` with the message           |
//!    | a panic                                          | `Failed` ("handler panicked: ..."); the worker keeps serving |
//!    | output larger than the supervisor's frame limit  | `Failed` saying so                  |
//!
//! 5. **Cancellation.** The token trips, once, for one of three causes ([`CancelCause`]): the
//!    supervisor's `Cancel` for the running job (a `Cancel` for a job still waiting removes it
//!    and answers `Cancelled` at once, its handler never called; a `Cancel` for any other job
//!    crossed with its result and is ignored), the polite signal, or the channel closing.
//!    Handlers poll [`CancelToken::is_cancelled`] (one atomic load) or [`CancelToken::check`]
//!    with `?`, await [`CancelToken::cancelled`], hand [`CancelToken::to_cancellation_token`] to
//!    async libraries, or bridge to code with its own stop API with [`CancelToken::on_cancel`].
//! 6. **Progress** never blocks the handler: reports coalesce into the latest value and are sent
//!    when the channel is free, always before the job's terminal message and never after it.
//! 7. **Heartbeats** go out every interval the supervisor asked for in its hello (none if it
//!    asked for 0), from the `warden-writer` thread, which keeps the protocol's timers (the serve
//!    task writes the other frames itself when the socket takes them at once; one frame at a
//!    time and whole, so nothing interleaves). A handler cannot starve it,
//!    not even an async handler that never yields on a current-thread runtime. It ends, joined,
//!    before the serve call returns; a supervisor that is gone gives it `EPIPE`, never `SIGPIPE`.
//! 8. **Stopping.**
//!    - `Shutdown`: the running job and every job waiting behind it finish, their results are
//!      written, and the serve call returns `Ok(())`; the process exits 0 when `main` returns.
//!    - The polite signal (SIGTERM): the running job's token trips and the jobs waiting behind
//!      it are dropped unanswered (they never started); once its result is written (at once if
//!      idle) the serve call returns `Ok(())`. [`Worker::handle_sigterm`]`(false)` leaves
//!      SIGTERM at its default disposition instead.
//!    - The channel closing (the supervisor is gone): the token trips and waiting jobs are
//!      dropped; if the handler has not returned within the orphan grace (1 s by default,
//!      [`Worker::orphan_grace`]) the SDK calls `std::process::exit(`[`ORPHAN_EXIT_CODE`]`)`,
//!      because a blocking thread cannot be stopped any other way. If it returns in time, the serve call returns
//!      [`ServeError::Disconnected`]. The grace is timed by the writer thread, so it holds even
//!      when the handler starves the serve task (which then learns of the close only when a
//!      heartbeat fails to go out).
//!    - A protocol violation by the supervisor (a second hello, a `StartJob` while a job runs in
//!      version 1, for a job already running or waiting, or after `Shutdown`, an undecodable
//!      frame): the serve call returns [`ServeError::Protocol`] at once, nothing more is sent,
//!      the running job's token trips ([`CancelCause::ChannelClosed`]) and waiting jobs are
//!      dropped. The supervisor kills such a worker anyway.
//!    - A `Cancel` for a job that is not running (it crossed the job's result) is ignored.
//!
//! These decisions are made by a sans-IO state machine (`machine`, hidden from the docs but
//! public so a test harness can drive it on a virtual clock); the serve task and the writer
//! thread only feed it events and carry out what it decides.
//!
//! Logs go through `tracing`, in a `warden_worker` span for the connection and a `job` span for
//! each job.
//!
//! # Cancellation without a supervisor
//!
//! The token API works on its own, which is also how handlers can be unit-tested:
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use warden_worker::{CancelCause, CancelReason, CancelSource, CancelToken, JobError};
//!
//! fn work(token: &CancelToken) -> Result<Vec<u8>, JobError> {
//!     token.check()?;
//!     Ok(b"done".to_vec())
//! }
//!
//! let source = CancelSource::new();
//! let token = source.token();
//! assert_eq!(work(&token), Ok(b"done".to_vec()));
//!
//! // Bridge to an API with its own stop switch; the guard keeps the callback registered.
//! let stopped = Arc::new(AtomicBool::new(false));
//! let guard = token.on_cancel({
//!     let stopped = Arc::clone(&stopped);
//!     move || stopped.store(true, Ordering::SeqCst)
//! });
//!
//! assert!(source.cancel(CancelCause::Message(CancelReason::Timeout)));
//! assert!(token.is_cancelled());
//! assert!(stopped.load(Ordering::SeqCst));
//! assert_eq!(token.cause(), Some(CancelCause::Message(CancelReason::Timeout)));
//! assert_eq!(work(&token), Err(JobError::Cancelled));
//! drop(guard);
//! ```
//!
//! [`Channel::from_std`] shows a whole conversation with an in-process supervisor.

#![warn(missing_docs)]

mod bootstrap;
mod connection;
mod error;
mod job;
#[doc(hidden)]
pub mod machine;
mod progress;
mod serve;
mod sys;
mod token;
mod writer;

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
