//! The serve loop: one task owns the channel, runs one job at a time and never blocks on it.

use std::any::Any;
use std::future::{Future, pending};
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::oneshot;
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{Instrument, Span, debug, error, info, info_span, warn};
use warden_protocol::{
    EncodeError, FrameDecoder, JobId, SupervisorMessage, WorkerMessage, encode_frame_into,
};

use crate::bootstrap::Channel;
use crate::connection::{Session, handshake};
use crate::error::{BootstrapError, JobError, ProtocolError, ServeError};
use crate::job::Job;
use crate::progress::{self, Progress};
use crate::token::{CancelCause, CancelSource};

/// How long the SDK waits for the supervisor's hello by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a handler may keep running after the channel closed, by default, before the SDK
/// exits the process.
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(1);

/// The status the process exits with when its handler outlives the channel by more than the
/// orphan grace (`EX_SOFTWARE`).
pub const ORPHAN_EXIT_CODE: i32 = 70;

/// Bytes read from the channel per syscall.
const READ_CHUNK: usize = 64 * 1024;

/// Encoded size of a `Failed` message without its error text, at most: tag (1) + job id varint
/// (10) + text length varint (5).
const FAILED_OVERHEAD: usize = 16;

/// Settings for serving jobs, and the entry points that use them.
///
/// ```no_run
/// use std::time::Duration;
/// use warden_worker::{Job, JobError, Worker};
///
/// fn main() -> Result<(), warden_worker::ServeError> {
///     Worker::new()
///         .orphan_grace(Duration::from_secs(2))
///         .serve_blocking(|job: Job| -> Result<Vec<u8>, JobError> {
///             job.check()?;
///             Ok(job.payload().to_vec())
///         })
/// }
/// ```
#[derive(Debug)]
pub struct Worker {
    channel: Option<Channel>,
    handshake_timeout: Duration,
    orphan_grace: Duration,
    handle_sigterm: bool,
}

impl Default for Worker {
    fn default() -> Self {
        Worker::new()
    }
}

impl Worker {
    /// Default settings; the channel is taken from `WARDEN_FD` when serving starts.
    pub fn new() -> Worker {
        Worker {
            channel: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            orphan_grace: DEFAULT_ORPHAN_GRACE,
            handle_sigterm: true,
        }
    }

    /// Serves over `channel` instead of the one named by `WARDEN_FD` (for example one end of a
    /// socketpair, to test a handler in-process).
    pub fn channel(mut self, channel: Channel) -> Worker {
        self.channel = Some(channel);
        self
    }

    /// How long to wait for the supervisor's answer to the worker's hello (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Worker {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a running handler may take to return after the channel closed (default 1 s).
    /// After that the SDK calls `std::process::exit(ORPHAN_EXIT_CODE)`: a blocking handler thread
    /// cannot be stopped any other way, and nobody would read its result.
    pub fn orphan_grace(mut self, grace: Duration) -> Worker {
        self.orphan_grace = grace;
        self
    }

    /// Whether SIGTERM trips the running job's token and then ends serving (default `true`).
    ///
    /// With `false` the SDK installs no handler and SIGTERM keeps its disposition (by default it
    /// kills the process). With `true` the handler is installed before the worker's hello and
    /// stays installed for the life of the process (tokio cannot remove it).
    pub fn handle_sigterm(mut self, handle: bool) -> Worker {
        self.handle_sigterm = handle;
        self
    }

    /// Serves jobs with an async handler on a runtime of its own (multi-threaded, so a handler
    /// that hogs a thread does not stop heartbeats). Returns `Ok(())` after `Shutdown` or the
    /// polite signal, once the last job's result is written.
    pub fn serve<F, Fut>(self, handler: F) -> Result<(), ServeError>
    where
        F: FnMut(Job) -> Fut,
        Fut: Future<Output = Result<Vec<u8>, JobError>> + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("warden-worker")
            .build()
            .map_err(ServeError::Runtime)?;
        let result = runtime.block_on(self.serve_async(handler));
        // Serving is over and no job is running; do not wait for the caller's stray tasks.
        runtime.shutdown_background();
        result
    }

    /// Like [`serve`](Self::serve), on the caller's tokio runtime (which needs the I/O, time and
    /// signal drivers: `enable_all`). Each job's future is spawned as a task.
    pub async fn serve_async<F, Fut>(self, handler: F) -> Result<(), ServeError>
    where
        F: FnMut(Job) -> Fut,
        Fut: Future<Output = Result<Vec<u8>, JobError>> + Send + 'static,
    {
        self.run(AsyncRunner { handler }).await
    }

    /// Serves jobs with a blocking handler. Each job runs on one dedicated thread (reused from
    /// job to job) while the SDK keeps the channel, heartbeats and cancellation going on a
    /// runtime of its own.
    pub fn serve_blocking<F>(self, handler: F) -> Result<(), ServeError>
    where
        F: FnMut(Job) -> Result<Vec<u8>, JobError> + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServeError::Runtime)?;
        let result = runtime.block_on(self.serve_blocking_async(handler));
        runtime.shutdown_background();
        result
    }

    /// Like [`serve_blocking`](Self::serve_blocking), on the caller's tokio runtime.
    pub async fn serve_blocking_async<F>(self, handler: F) -> Result<(), ServeError>
    where
        F: FnMut(Job) -> Result<Vec<u8>, JobError> + Send + 'static,
    {
        let runner = BlockingRunner::start(handler).map_err(ServeError::JobThread)?;
        self.run(runner).await
    }

    async fn run<R: Runner>(self, runner: R) -> Result<(), ServeError> {
        let Worker {
            channel,
            handshake_timeout,
            orphan_grace,
            handle_sigterm,
        } = self;
        let channel = match channel {
            Some(channel) => channel,
            None => Channel::from_env()?,
        };
        // Installed before the hello, so a supervisor that got the hello can rely on it.
        let mut sigterm = if handle_sigterm {
            Some(signal(SignalKind::terminate()).map_err(ServeError::Signal)?)
        } else {
            None
        };
        let stream = channel
            .into_tokio()
            .map_err(|e| ServeError::Bootstrap(BootstrapError::Configure(e)))?;
        let (mut rd, mut wr) = stream.into_split();
        let span = info_span!(
            "warden_worker",
            pid = std::process::id(),
            supervisor = tracing::field::Empty
        );
        async move {
            let session = tokio::select! {
                session = handshake(&mut rd, &mut wr, handshake_timeout) => session?,
                () = recv_signal(&mut sigterm) => {
                    info!("polite signal during the handshake; stopping");
                    return Ok(());
                }
            };
            Span::current().record("supervisor", session.supervisor_version.as_str());
            info!(
                max_frame_len = session.max_frame_len,
                heartbeat_ms = session.heartbeat_interval.map(|d| d.as_millis()),
                "connected"
            );
            let serve = Serve {
                decoder: FrameDecoder::new(session.max_frame_len),
                rd,
                wr,
                session,
                out: Vec::new(),
                runner,
                job: None,
                stopping: None,
                orphan_grace,
            };
            serve.run(sigterm).await
        }
        .instrument(span)
        .await
    }
}

/// Serves jobs with an async handler, taking the channel from `WARDEN_FD` and default settings.
/// See [`Worker::serve`].
pub fn serve<F, Fut>(handler: F) -> Result<(), ServeError>
where
    F: FnMut(Job) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, JobError>> + Send + 'static,
{
    Worker::new().serve(handler)
}

/// Like [`serve`], on the caller's tokio runtime. See [`Worker::serve_async`].
pub async fn serve_async<F, Fut>(handler: F) -> Result<(), ServeError>
where
    F: FnMut(Job) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, JobError>> + Send + 'static,
{
    Worker::new().serve_async(handler).await
}

/// Serves jobs with a blocking handler, taking the channel from `WARDEN_FD` and default
/// settings. See [`Worker::serve_blocking`].
pub fn serve_blocking<F>(handler: F) -> Result<(), ServeError>
where
    F: FnMut(Job) -> Result<Vec<u8>, JobError> + Send + 'static,
{
    Worker::new().serve_blocking(handler)
}

/// How a handler call ended.
enum HandlerOutcome {
    /// It returned.
    Returned(Result<Vec<u8>, JobError>),
    /// It panicked or its task was lost; the text is the failure reported to the supervisor.
    Crashed(String),
}

type JobFuture = Pin<Box<dyn Future<Output = HandlerOutcome> + Send>>;

/// Starts handler calls; the serve loop awaits the returned future for the result.
trait Runner {
    fn start(&mut self, job: Job, span: Span) -> JobFuture;
}

struct AsyncRunner<F> {
    handler: F,
}

impl<F, Fut> Runner for AsyncRunner<F>
where
    F: FnMut(Job) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, JobError>> + Send + 'static,
{
    fn start(&mut self, job: Job, span: Span) -> JobFuture {
        let handler = &mut self.handler;
        // The synchronous part of the handler runs here; a panic in it fails only this job.
        let future = match span.in_scope(|| catch_unwind(AssertUnwindSafe(|| handler(job)))) {
            Ok(future) => future,
            Err(panic) => {
                return Box::pin(std::future::ready(HandlerOutcome::Crashed(panic_failure(
                    &*panic,
                ))));
            }
        };
        let task = tokio::spawn(future.instrument(span));
        Box::pin(async move {
            match task.await {
                Ok(result) => HandlerOutcome::Returned(result),
                Err(e) if e.is_panic() => HandlerOutcome::Crashed(panic_failure(&*e.into_panic())),
                Err(_) => {
                    HandlerOutcome::Crashed("the job's task was cancelled by the runtime".into())
                }
            }
        })
    }
}

type Work = (Job, Span, oneshot::Sender<HandlerOutcome>);

/// Runs a blocking handler on one dedicated thread, job after job.
struct BlockingRunner {
    jobs: mpsc::Sender<Work>,
}

impl BlockingRunner {
    fn start<F>(mut handler: F) -> io::Result<BlockingRunner>
    where
        F: FnMut(Job) -> Result<Vec<u8>, JobError> + Send + 'static,
    {
        let (jobs, queue) = mpsc::channel::<Work>();
        // The thread ends when the runner (the only sender) is dropped, after its current job.
        std::thread::Builder::new()
            .name("warden-job".into())
            .spawn(move || {
                while let Ok((job, span, reply)) = queue.recv() {
                    let outcome = span.in_scope(|| catch_unwind(AssertUnwindSafe(|| handler(job))));
                    let outcome = match outcome {
                        Ok(result) => HandlerOutcome::Returned(result),
                        Err(panic) => HandlerOutcome::Crashed(panic_failure(&*panic)),
                    };
                    // The serve loop may be gone (orphaned); nobody to tell then.
                    let _ = reply.send(outcome);
                }
            })?;
        Ok(BlockingRunner { jobs })
    }
}

impl Runner for BlockingRunner {
    fn start(&mut self, job: Job, span: Span) -> JobFuture {
        let (reply, result) = oneshot::channel();
        if self.jobs.send((job, span, reply)).is_err() {
            // Cannot happen while the thread loop catches panics; fail the job, not the worker.
            return Box::pin(std::future::ready(HandlerOutcome::Crashed(
                "the job thread is gone".into(),
            )));
        }
        Box::pin(async move {
            result.await.unwrap_or_else(|_| {
                HandlerOutcome::Crashed("the job thread stopped without a result".into())
            })
        })
    }
}

fn panic_failure(panic: &(dyn Any + Send)) -> String {
    let message = if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.as_str()
    } else {
        "(non-string panic payload)"
    };
    format!("handler panicked: {message}")
}

/// The job being run.
struct RunningJob {
    id: JobId,
    source: CancelSource,
    progress: Arc<progress::Shared>,
    result: JobFuture,
    span: Span,
    /// Set once the handler returned; otherwise dropping trips the token.
    returned: bool,
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        // Serving stopped with the handler still running (error, or the serve future dropped):
        // its result has nowhere to go.
        if !self.returned {
            self.source.cancel(CancelCause::ChannelClosed);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The supervisor sent `Shutdown`.
    Shutdown,
    /// The polite signal arrived.
    Signal,
}

enum Event {
    Wrote(io::Result<usize>),
    Read(io::Result<usize>),
    Signal,
    Finished(HandlerOutcome),
    Progress,
    Heartbeat,
}

struct Serve<R> {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    session: Session,
    decoder: FrameDecoder,
    /// Encoded frames not yet written; several frames go out in one write.
    ///
    /// Bounded: progress and heartbeats are only queued when it is empty, and a job adds one
    /// terminal message.
    out: Vec<u8>,
    runner: R,
    job: Option<RunningJob>,
    stopping: Option<Stop>,
    orphan_grace: Duration,
}

impl<R: Runner> Serve<R> {
    async fn run(mut self, mut sigterm: Option<Signal>) -> Result<(), ServeError> {
        let mut heartbeat = self.session.heartbeat_interval.map(|period| {
            let mut interval =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        });
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            if self.job.is_none() && self.out.is_empty() {
                if let Some(stop) = self.stopping {
                    info!(?stop, "stopping");
                    return Ok(());
                }
            }
            let progress = self.job.as_ref().map(|job| Arc::clone(&job.progress));
            let idle_writer = self.out.is_empty();
            let event = tokio::select! {
                biased;
                r = self.wr.write(&self.out), if !idle_writer => Event::Wrote(r),
                r = self.rd.read(&mut buf) => Event::Read(r),
                () = recv_signal(&mut sigterm), if self.stopping != Some(Stop::Signal) => Event::Signal,
                outcome = job_result(self.job.as_mut()) => Event::Finished(outcome),
                () = progress_ready(progress.as_deref()), if idle_writer => Event::Progress,
                () = tick(heartbeat.as_mut()), if idle_writer => Event::Heartbeat,
            };
            match event {
                Event::Wrote(Ok(0)) => {
                    return Err(self
                        .disconnected(Some(io::ErrorKind::WriteZero.into()))
                        .await);
                }
                Event::Wrote(Ok(n)) => {
                    self.out.drain(..n);
                }
                Event::Wrote(Err(e)) => return Err(self.disconnected(Some(e)).await),
                Event::Read(Ok(0)) => return Err(self.disconnected(None).await),
                Event::Read(Ok(n)) => {
                    self.decoder.push(&buf[..n]);
                    while let Some(msg) = self.decoder.next().map_err(ProtocolError::Decode)? {
                        self.handle_message(msg)?;
                    }
                }
                Event::Read(Err(e)) => return Err(self.disconnected(Some(e)).await),
                Event::Signal => {
                    self.stopping = Some(Stop::Signal);
                    match &self.job {
                        Some(job) => {
                            let _enter = job.span.enter();
                            info!("polite signal: cancelling the running job");
                            job.source.cancel(CancelCause::Signal);
                        }
                        None => info!("polite signal while idle"),
                    }
                }
                Event::Finished(outcome) => self.finish(outcome),
                Event::Progress => {
                    if let Some(job) = &self.job {
                        if let Some(update) = job.progress.take() {
                            let id = job.id;
                            self.queue_progress(id, update);
                        }
                    }
                }
                Event::Heartbeat => {
                    self.queue(&WorkerMessage::Heartbeat).unwrap_or_else(|e| {
                        warn!(error = %e, "heartbeat does not fit in a frame");
                    });
                }
            }
        }
    }

    fn handle_message(&mut self, msg: SupervisorMessage) -> Result<(), ProtocolError> {
        match msg {
            SupervisorMessage::StartJob {
                job: id,
                payload,
                deadline_ms,
            } => {
                if let Some(running) = &self.job {
                    return Err(ProtocolError::StartWhileRunning {
                        running: running.id,
                        started: id,
                    });
                }
                match self.stopping {
                    Some(Stop::Shutdown) => {
                        return Err(ProtocolError::StartAfterShutdown { started: id });
                    }
                    // The start crossed with the signal; the process is about to exit.
                    Some(Stop::Signal) => {
                        warn!(job = %id, "not starting a job after the polite signal");
                        return Ok(());
                    }
                    None => {}
                }
                let deadline = deadline_ms
                    .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));
                self.start_job(id, payload, deadline, deadline_ms);
            }
            SupervisorMessage::Cancel { job: id, reason } => match &self.job {
                Some(job) if job.id == id => {
                    let _enter = job.span.enter();
                    if job.source.cancel(CancelCause::Message(reason)) {
                        info!(%reason, "cancel requested");
                    }
                }
                // It crossed with the job's result.
                _ => debug!(job = %id, %reason, "ignoring cancel for a job that is not running"),
            },
            SupervisorMessage::Shutdown => {
                info!(running = self.job.is_some(), "shutdown requested");
                self.stopping.get_or_insert(Stop::Shutdown);
            }
            other => return Err(ProtocolError::Unexpected { kind: other.kind() }),
        }
        Ok(())
    }

    fn start_job(
        &mut self,
        id: JobId,
        payload: Vec<u8>,
        deadline: Option<Instant>,
        deadline_ms: Option<u64>,
    ) {
        let source = CancelSource::new();
        let shared = Arc::new(progress::Shared::default());
        let span = info_span!("job", job = %id);
        span.in_scope(|| info!(payload_len = payload.len(), deadline_ms, "job started"));
        let job = Job::new(
            id,
            payload,
            deadline,
            source.token(),
            Progress::new(Arc::clone(&shared)),
        );
        let result = self.runner.start(job, span.clone());
        self.job = Some(RunningJob {
            id,
            source,
            progress: shared,
            result,
            span,
            returned: false,
        });
    }

    /// Queues the job's last progress and its terminal message, in one batch.
    fn finish(&mut self, outcome: HandlerOutcome) {
        let Some(mut job) = self.job.take() else {
            return;
        };
        job.returned = true;
        let _enter = job.span.enter();
        if let Some(update) = job.progress.close() {
            self.queue_progress(job.id, update);
        }
        let max = self.session.max_frame_len;
        let id = job.id;
        let msg = match outcome {
            HandlerOutcome::Returned(Ok(output)) if output.len() > max as usize => {
                WorkerMessage::Failed {
                    job: id,
                    error: output_too_large(output.len(), max),
                }
            }
            HandlerOutcome::Returned(Ok(output)) => WorkerMessage::Completed { job: id, output },
            HandlerOutcome::Returned(Err(JobError::Cancelled)) if job.source.is_cancelled() => {
                WorkerMessage::Cancelled { job: id }
            }
            HandlerOutcome::Returned(Err(JobError::Cancelled)) => WorkerMessage::Failed {
                job: id,
                error: "handler returned cancelled without a cancel request".into(),
            },
            HandlerOutcome::Returned(Err(JobError::Failed { message })) => WorkerMessage::Failed {
                job: id,
                error: message,
            },
            HandlerOutcome::Crashed(error) => WorkerMessage::Failed { job: id, error },
        };
        self.queue_terminal(msg);
    }

    /// Queues a terminal message; one that does not fit in a frame degrades to a `Failed` that
    /// does, so an oversized result never costs the connection.
    fn queue_terminal(&mut self, msg: WorkerMessage) {
        let max = self.session.max_frame_len;
        let kind = msg.kind();
        let msg = match self.queue(&msg) {
            Ok(()) => {
                info!(outcome = kind, "job finished");
                return;
            }
            Err(e) => {
                warn!(error = %e, outcome = kind, "terminal message does not fit in a frame");
                match msg {
                    WorkerMessage::Completed { job, output } => WorkerMessage::Failed {
                        job,
                        error: output_too_large(output.len(), max),
                    },
                    WorkerMessage::Failed { job, error } => WorkerMessage::Failed { job, error },
                    other => other,
                }
            }
        };
        let WorkerMessage::Failed { job, mut error } = msg else {
            error!(outcome = kind, "could not send the job's terminal message");
            return;
        };
        truncate_string(&mut error, (max as usize).saturating_sub(FAILED_OVERHEAD));
        let failed = WorkerMessage::Failed { job, error };
        match self.queue(&failed) {
            Ok(()) => info!(outcome = "failed", "job finished"),
            Err(e) => error!(error = %e, "could not send the job's terminal message"),
        }
    }

    fn queue_progress(&mut self, job: JobId, update: progress::Update) {
        let msg = WorkerMessage::Progress {
            job,
            fraction: update.fraction,
            text: update.text,
        };
        if let Err(e) = self.queue(&msg) {
            debug!(error = %e, "dropping a progress report that does not fit in a frame");
        }
    }

    fn queue(&mut self, msg: &WorkerMessage) -> Result<(), EncodeError> {
        encode_frame_into(msg, self.session.max_frame_len, &mut self.out)
    }

    /// The channel is gone: trips the running job's token and gives its handler the orphan
    /// grace to return, then exits the process if it has not.
    async fn disconnected(&mut self, error: Option<io::Error>) -> ServeError {
        if let Some(mut job) = self.job.take() {
            let span = job.span.clone();
            async {
                info!("channel closed: cancelling the running job");
                job.source.cancel(CancelCause::ChannelClosed);
                if tokio::time::timeout(self.orphan_grace, &mut job.result)
                    .await
                    .is_ok()
                {
                    job.returned = true;
                    info!("handler returned after the channel closed");
                } else {
                    error!(
                        grace = ?self.orphan_grace,
                        "handler still running after the channel closed; exiting"
                    );
                    std::process::exit(ORPHAN_EXIT_CODE);
                }
            }
            .instrument(span)
            .await;
        }
        match error {
            None => ServeError::Disconnected,
            Some(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                ServeError::Disconnected
            }
            Some(e) => ServeError::Io(e),
        }
    }
}

fn output_too_large(len: usize, max: u32) -> String {
    format!("output of {len} bytes exceeds the supervisor's frame limit of {max} bytes")
}

/// Cuts `text` to at most `max` bytes at a character boundary.
fn truncate_string(text: &mut String, max: usize) {
    let end = warden_protocol::truncate_str(text, max).len();
    text.truncate(end);
}

async fn recv_signal(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            if signal.recv().await.is_none() {
                pending::<()>().await;
            }
        }
        None => pending().await,
    }
}

async fn job_result(job: Option<&mut RunningJob>) -> HandlerOutcome {
    match job {
        Some(job) => (&mut job.result).await,
        None => pending().await,
    }
}

async fn progress_ready(progress: Option<&progress::Shared>) {
    match progress {
        Some(progress) => progress.ready().await,
        None => pending().await,
    }
}

async fn tick(interval: Option<&mut Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => pending().await,
    }
}
