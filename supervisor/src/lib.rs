//! warden: an out-of-process supervisor for work that cannot be trusted to stop when asked.
//!
//! # Theory of operation
//!
//! A [`Worker`] is a child process in its own process group. A worker that links the
//! `warden-worker` SDK speaks warden's protocol over one end of a socketpair inherited at fd 3
//! (nothing another process could connect to); a *plain* program gets no channel.
//!
//! **Lifecycle.** [`Worker::spawn`] starts the program from one long-lived spawning thread on
//! the `posix_spawn` path (no fork of the supervisor's address space), holds it as a pidfd where
//! the kernel has them, and completes the handshake within a timeout (or kills and reaps the
//! child and returns a [`SpawnError`]). A per-worker actor task then owns the process and the
//! channel; the handle talks to it over a queue.
//!
//! **Jobs and the ladder.** [`Worker::run`] hands a payload to the worker and resolves to a
//! [`JobReport`]. The caller's `CancellationToken`, the job's timeout and the worker's shutdown
//! token each start the same ladder, with the reason recorded (`requested`, `timeout`,
//! `shutdown`): (1) *cooperative*: a cancel message, then `grace`; (2) *signal*: the polite
//! signal (SIGTERM) and SIGCONT to the process group, then `kill_after`; (3) *kill*: SIGKILL to
//! the group. A plain program starts at stage 2. The ladder is the sans-IO state machine
//! [`Escalation`], held with every other deadline of the worker (job timeout, frame stall,
//! liveness, drain) by a per-worker sans-IO connection machine; the actor only feeds it facts
//! and performs its actions, so cancelling never blocks the caller, caller code (progress
//! callbacks) never runs on the actor, and one stuck worker never blocks another.
//!
//! **Liveness.** With [`WorkerConfig::unresponsive_after`], a worker that sends nothing (not
//! even a heartbeat) for that long has its job cancelled with reason `unresponsive`, and the
//! ladder runs from there; an idle one is killed.
//!
//! **Pools.** A [`Pool`] keeps N workers of one command warm: a bounded queue, one dispatcher
//! task that hands each job to one idle worker over that worker's own channel and knows what
//! each holds, replacement of workers that died (restart policy: backoff with jitter under an
//! intensity limit, past which the pool fails with [`PoolFailure`]) or that a job's ladder
//! signalled, recycling after K jobs or on current memory, opt-in retries, and a drain or
//! cancel shutdown under a deadline. Every [`JobHandle`] resolves.
//!
//! **Outcomes.** [`Outcome`] says who stopped the work and is never blurred: `Completed` (even
//! if a cancel came too late: `CompletedDespiteCancel`), `Cancelled` (the worker acknowledged),
//! `Failed` (its own error, or exit 0 without a result), `Terminated` (the polite signal),
//! `Killed` (SIGKILL, or a protocol violation: see [`JobReport::violation`]), `Crashed` (it died
//! on its own). The outcome is decided only when the facts are in: a result for a worker that is
//! still usable, or the process's exit *and* the channel drained to EOF (bounded), so a result
//! written just before exiting is never lost and a result that crosses a cancel gives exactly
//! one outcome.
//!
//! **Ordering and safety.** Signals are sent through the pidfd (the process group through
//! `PIDFD_SIGNAL_PROCESS_GROUP` where the kernel has it) or by pid/pgid while the child is not
//! yet reaped, which pins both numbers: a recycled pid is never signalled. Exit is observed
//! without reaping; what is left of the worker's process group is SIGKILLed; only then is the
//! child reaped, by its own actor and nobody else.
//!
//! **Drop.** Dropping a [`Worker`] shuts it down in the background (shutdown message, then the
//! ladder). Dropping a job's future cancels the job. If the runtime goes away, every unreaped
//! child's process group is SIGKILLed and reaped.
//!
//! # Example
//! A plain program (no SDK) that would sleep for a minute, cancelled through its token: its
//! ladder starts at the polite signal, which ends it.
//! ```
//! use std::time::Duration;
//! use warden::{CancellationToken, Command, Deadlines, JobOptions, Outcome, Stage, Worker, WorkerConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! warden::shim::run_if_shim(); // first in main: lets this binary be its own exec shim
//! let mut sleep = Command::new("sleep");
//! sleep.arg("60");
//! let config = WorkerConfig::plain().deadlines(Deadlines {
//!     grace: Duration::from_secs(5),
//!     kill_after: Duration::from_secs(5),
//!     reap_timeout: Duration::from_secs(5),
//! });
//! let worker = Worker::spawn(&sleep, config).await?;
//! let token = CancellationToken::new();
//! token.cancel(); // never blocks; the worker's actor runs the ladder
//! let report = worker.run(Vec::new(), JobOptions::new().token(token)).await?;
//! assert_eq!(report.outcome, Outcome::Terminated);
//! assert_eq!(report.stage, Some(Stage::Signal));
//! println!("{} after {:?}, contained by {}", report.outcome.name(), report.trace.cancel_to_end(), report.containment.as_str());
//! # Ok(()) }
//! ```
//! A worker that links the `warden-worker` SDK is spawned with [`WorkerConfig::protocol`]; its
//! ladder starts with a cancel message that trips the token inside the worker.
//! `examples/src/bin/demo.rs` runs all kinds side by side.
//!
//! # Features
//! - `cli` (default): builds the `warden` binary (`warden timeout`, `warden run`) and pulls in
//!   what only it needs (clap, serde_json, tracing-subscriber). The library's API is the same
//!   without it; a host that embeds warden depends on it with `default-features = false`.
//! - `serde` (enabled by `cli`): [`JobReport`] implements `serde::Serialize` (see
//!   `JobReport::since` for timings from an epoch of your own).
#![warn(missing_docs)]

mod connection;
mod error;
pub mod escalation;
mod ipc;
mod outcome;
pub mod output;
mod pool;
mod process;
#[doc(hidden)]
pub mod time;
mod worker;

pub use error::{
    JobControlError, JobError, ParseNameError, PoolConfigError, PoolFailure, RunError, SetupStep,
    SpawnError, SubmitError, WorkerLoss,
};
pub use escalation::{Action, Deadlines, Escalation, Stage};
#[cfg(feature = "serde")]
pub use outcome::ReportSince;
pub use outcome::{Failure, JobReport, Outcome, OutcomeKind, Trace, Violation};
pub use output::{OutputCapture, OutputSink, OutputTail, StreamTail};
pub use pool::{
    JobHandle, Pool, PoolConfig, PoolJobId, PoolReport, PoolSnapshot, RecycleReason, RestartPolicy,
    ShutdownMode, ShutdownReport, WorkerSnapshot, WorkerState,
};
pub use process::shim;
/// For the `warden` binary (the same package, another crate); not part of the API.
#[doc(hidden)]
pub use process::without_sigpipe;
pub use process::{
    Command, Containment, ContainmentMode, ExitStatus, LimitEntry, LimitKind, LimitReport, Limits,
    Mechanism, OrphanLadder, Sandbox, SandboxEntry, SandboxFeature, Stdio, Tree, TreeOptions,
    TreeReport, claim_all_children, start_orphan_reaper,
};
pub use tokio_util::sync::CancellationToken;
pub use warden_protocol::{CancelReason, JobId, ParseCancelReasonError};
pub use worker::{JobOptions, Progress, TimeoutExtension, Worker, WorkerConfig, WorkerInfo};
