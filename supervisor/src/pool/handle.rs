//! The pool handle callers hold, and the handle of one submitted job.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::config::{PoolConfig, ShutdownMode};
use super::dispatch::{Cmd, Dispatcher, NewJob};
use super::driver::Shared;
use super::recycle::Recycling;
use super::snapshot::PoolSnapshot;
use crate::error::{JobError, PoolConfigError, PoolFailure, SubmitError};
use crate::outcome::JobReport;
use crate::process::Command;
use crate::worker::{JobOptions, WorkerConfig};

/// A job's id in its pool (unique for the pool's life; not the worker connection's
/// [`JobId`](crate::JobId), which is in the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolJobId(pub u64);

impl fmt::Display for PoolJobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pool-job-{}", self.0)
    }
}

/// How a pool job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolReport {
    /// The job.
    pub job: PoolJobId,
    /// The attempt this report is of: 1 for the first, more after retries
    /// ([`PoolConfig::retries`]); 0 for a job cancelled before any attempt started.
    pub attempt: u32,
    /// The worker that ran the attempt; `None` if none did.
    pub worker_pid: Option<u32>,
    /// The attempt's report. A job cancelled in the queue (its token, its dropped handle, a
    /// cancel-mode shutdown) is `cancelled` with `started: false`, as [`Worker::run`]
    /// reports a job cancelled before it was sent.
    ///
    /// [`Worker::run`]: crate::Worker::run
    pub report: JobReport,
}

/// What [`Pool::shutdown`] saw.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// The overall deadline passed, and every worker left was SIGKILLed.
    pub deadline_passed: bool,
    /// Workers still not reaped `reap_timeout` after SIGKILL (a process in uninterruptible
    /// sleep); they are reaped in the background once they die.
    pub not_reaped: usize,
    /// The pool's failure, if it failed before.
    pub failure: Option<PoolFailure>,
}

/// A pool of warm protocol workers running one [`Command`] with one [`WorkerConfig`].
///
/// [`submit`](Self::submit) a payload and get a [`JobHandle`], a future of the job's
/// [`PoolReport`]. Jobs wait in a bounded queue ([`PoolConfig::queue_capacity`]): `submit`
/// waits for room, [`try_submit`](Self::try_submit) fails fast with
/// [`SubmitError::QueueFull`]. No worker idles while a job waits; each worker runs one job at
/// a time, so a job's cancel (its token, [`JobHandle::cancel`], [`Pool::cancel`]) reaches only
/// that job: a queued job is removed without starting, a running one goes through its ladder.
///
/// Workers are replaced when they die (`crashed`), break the protocol or go silent (with the
/// restart policy's backoff and intensity limit), when a job's ladder had to signal or kill
/// them (at once), and when recycled ([`PoolConfig::max_jobs_per_worker`],
/// [`PoolConfig::max_memory`]). Running out of file descriptors while spawning is
/// backpressure: the pool runs with the workers it has and starts the others once descriptors
/// are free.
///
/// # Drop
/// Dropping the pool shuts it down in the background as
/// [`shutdown`](Self::shutdown)`(ShutdownMode::Cancel, config.drop_deadline)` does. Every
/// [`JobHandle`] still resolves.
#[derive(Debug)]
pub struct Pool {
    cmds: mpsc::UnboundedSender<Cmd>,
    queue_room: Arc<Semaphore>,
    failure: Arc<Mutex<Option<PoolFailure>>>,
    next_id: AtomicU64,
}

impl Pool {
    /// Starts a pool: its dispatcher task, and `config.workers` workers, spawned
    /// concurrently (at most `config.spawn_concurrency` at a time) in the background. Jobs may
    /// be submitted at once; [`wait_ready`](Self::wait_ready) waits for every worker.
    ///
    /// The worker's `shutdown` and `kill` tokens keep their meaning for the whole pool
    /// (cancelling `kill` SIGKILLs every worker).
    ///
    /// # Errors
    /// [`PoolConfigError`] for a pool of no workers, a queue of no room, or a plain program.
    ///
    /// # Panics
    /// Outside a tokio runtime (with time and I/O enabled).
    pub fn start(
        cmd: &Command,
        worker: WorkerConfig,
        config: PoolConfig,
    ) -> Result<Pool, PoolConfigError> {
        config.validate()?;
        if !worker.protocol {
            return Err(PoolConfigError::PlainProgram);
        }
        let shutdown = worker.shutdown.child_token();
        let kill = worker.kill.child_token();
        // Jobs handed early go on the wire behind the running one (protocol version 2).
        let worker = worker
            .shutdown_token(shutdown.clone())
            .kill_token(kill.clone())
            .pipeline(config.prefetch.saturating_add(1));
        let (events_tx, events) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            cmd: cmd.clone(),
            config: worker,
            spawns: Arc::new(Semaphore::new(config.spawn_concurrency.max(1))),
            recycling: Recycling {
                max_jobs: config.max_jobs_per_worker,
                max_memory: config.max_memory,
            },
            events: events_tx,
            kill,
        });
        let queue_room = Arc::new(Semaphore::new(config.queue_capacity));
        let failure = Arc::new(Mutex::new(None));
        let span =
            tracing::info_span!("pool", program = ?cmd.get_program(), workers = config.workers);
        let dispatcher = Dispatcher::new(
            config,
            shared,
            events,
            queue_room.clone(),
            failure.clone(),
            shutdown,
            span.clone(),
        );
        let (cmds, cmds_rx) = mpsc::unbounded_channel();
        tokio::spawn(dispatcher.run(cmds_rx).instrument(span));
        Ok(Pool {
            cmds,
            queue_room,
            failure,
            next_id: AtomicU64::new(1),
        })
    }

    /// Submits a job, waiting for room in the queue.
    ///
    /// # Errors
    /// [`SubmitError::ShutDown`] once the pool is shutting down, [`SubmitError::Failed`]
    /// once it failed.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropped while it waits for room, nothing was submitted.
    pub async fn submit(
        &self,
        payload: Vec<u8>,
        options: JobOptions,
    ) -> Result<JobHandle, SubmitError> {
        let permit = self
            .queue_room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.closed_error())?;
        self.enqueue(permit, payload, options)
    }

    /// Submits a job if the queue has room.
    ///
    /// # Errors
    /// [`SubmitError::QueueFull`] when it has none; otherwise as [`submit`](Self::submit).
    pub fn try_submit(
        &self,
        payload: Vec<u8>,
        options: JobOptions,
    ) -> Result<JobHandle, SubmitError> {
        let permit = match self.queue_room.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => return Err(SubmitError::QueueFull),
            Err(TryAcquireError::Closed) => return Err(self.closed_error()),
        };
        self.enqueue(permit, payload, options)
    }

    /// Cancels a job: removed from the queue without starting if it waits, through its ladder
    /// if it runs (and not run again); nothing if it has ended. Never touches another job.
    /// Never blocks.
    pub fn cancel(&self, job: PoolJobId) {
        let _ = self.cmds.send(Cmd::Cancel(job));
    }

    /// The pool as it is now.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn snapshot(&self) -> Option<PoolSnapshot> {
        let (reply, rx) = oneshot::channel();
        self.cmds.send(Cmd::Snapshot(reply)).ok()?;
        rx.await.ok()
    }

    /// Waits until every one of the pool's workers has been spawned and has completed its
    /// handshake (it may run a job already).
    ///
    /// # Errors
    /// `Err(Some(failure))` if the pool fails first (every start failing, for one);
    /// `Err(None)` if it was shut down first.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn wait_ready(&self) -> Result<(), Option<PoolFailure>> {
        let (reply, rx) = oneshot::channel();
        if self.cmds.send(Cmd::WhenReady(reply)).is_err() {
            return Err(self.failure());
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => Err(Some(failure)),
            Err(_) => Err(self.failure()),
        }
    }

    /// Shuts the pool down: no more jobs are taken; with [`ShutdownMode::Drain`] the queued
    /// and running jobs finish, with [`ShutdownMode::Cancel`] the queued ones are cancelled
    /// without starting and the running ones through their ladders (reason `shutdown`). Past
    /// `deadline` (from this call), every worker is SIGKILLed and jobs still queued are
    /// cancelled. Returns once every worker is gone (reaped, or its kill pending: see
    /// [`ShutdownReport::not_reaped`]) and every job's handle has its answer. Calling it again
    /// (or with the other mode: `Cancel` after `Drain` cancels what is left) is allowed; the
    /// earliest deadline holds.
    ///
    /// # Cancel safety
    /// Once polled, the shutdown goes on if the future is dropped.
    pub async fn shutdown(&self, mode: ShutdownMode, deadline: Duration) -> ShutdownReport {
        let (reply, rx) = oneshot::channel();
        let gone = || ShutdownReport {
            deadline_passed: false,
            not_reaped: 0,
            failure: self.failure(),
        };
        if self
            .cmds
            .send(Cmd::Shutdown {
                mode,
                deadline,
                reply,
            })
            .is_err()
        {
            return gone();
        }
        rx.await.unwrap_or_else(|_| gone())
    }

    fn failure(&self) -> Option<PoolFailure> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    fn closed_error(&self) -> SubmitError {
        match self.failure() {
            Some(failure) => SubmitError::Failed(failure),
            None => SubmitError::ShutDown,
        }
    }

    fn enqueue(
        &self,
        permit: OwnedSemaphorePermit,
        payload: Vec<u8>,
        options: JobOptions,
    ) -> Result<JobHandle, SubmitError> {
        let id = PoolJobId(self.next_id.fetch_add(1, Ordering::Relaxed));
        // The job's own token: cancelling it (or dropping the handle) never cancels the
        // caller's, which may be shared by other jobs.
        let token = options.token.child_token();
        let options = options.token(token.clone());
        let (reply, rx) = oneshot::channel();
        let job = NewJob {
            id,
            payload,
            options,
            reply,
            permit,
        };
        self.cmds
            .send(Cmd::Submit(Box::new(job)))
            .map_err(|_| self.closed_error())?;
        Ok(JobHandle {
            id,
            rx,
            token,
            armed: true,
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // The dispatcher sees its command channel close and shuts down in the background.
        self.queue_room.close();
    }
}

/// A submitted job: a future of its [`PoolReport`].
///
/// # Drop
/// Dropping the handle before it resolved cancels the job (as dropping a
/// [`Worker::run`](crate::Worker::run) future does): removed from the queue, or through its
/// ladder. [`detach`](Self::detach) lets it run on unobserved.
#[derive(Debug)]
#[must_use = "dropping a job handle cancels the job"]
pub struct JobHandle {
    id: PoolJobId,
    rx: oneshot::Receiver<Result<PoolReport, JobError>>,
    token: CancellationToken,
    armed: bool,
}

impl JobHandle {
    /// The job's id.
    pub fn id(&self) -> PoolJobId {
        self.id
    }

    /// Cancels the job (never blocks): see [`Pool::cancel`].
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Lets the job run to its end without anyone awaiting it.
    pub fn detach(mut self) {
        self.armed = false;
    }
}

impl Future for JobHandle {
    type Output = Result<PoolReport, JobError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match Pin::new(&mut this.rx).poll(cx) {
            Poll::Ready(result) => {
                this.armed = false;
                Poll::Ready(result.unwrap_or(Err(JobError::PoolGone)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        if self.armed {
            self.token.cancel();
        }
    }
}
