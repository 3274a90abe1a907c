//! The serve loop: one task reads the channel and runs one job at a time, feeding the protocol
//! machine (`machine.rs`) and writing what it queues as far as the socket takes it; the writer
//! thread (`writer.rs`) writes the rest and heartbeats, and keeps the machine's clock.

use std::any::Any;
use std::future::{Future, pending};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{Instrument, Span, info, info_span};
use warden_protocol::{FrameDecoder, JobId};

use crate::bootstrap::Channel;
use crate::connection::handshake;
use crate::error::{BootstrapError, JobError, ServeError};
use crate::job::Job;
use crate::machine::{self, Action, Exit, HandlerOutcome, Machine};
use crate::progress::{self, Progress};
use crate::token::{CancelCause, CancelSource};
use crate::writer::{self, Writer};

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
    /// that hogs a thread does not stop cancels and progress; heartbeats come from a thread of
    /// their own whatever the handler does). Returns `Ok(())` after `Shutdown` or the polite
    /// signal, once the last job's result is written.
    ///
    /// # Errors
    /// [`ServeError`]: no channel, a failed handshake, a protocol violation, the channel closing
    /// ([`ServeError::Disconnected`]), or a runtime or thread that could not be started.
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
    /// signal drivers: `enable_all`). Each job's future is spawned as a task. A current-thread
    /// runtime works too: a handler that never yields then delays cancels and progress, but not
    /// heartbeats or the orphan exit.
    ///
    /// Returning (or dropping the future) stops and joins the writer thread, which can take up
    /// to 50 ms if the supervisor stopped reading with a frame half written.
    ///
    /// # Errors
    /// As for [`serve`](Self::serve).
    ///
    /// # Cancel safety
    /// Dropping the future stops serving: the running job's token trips and its result is lost.
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
        let configure = |e| ServeError::Bootstrap(BootstrapError::Configure(e));
        let stream = channel.into_std();
        // The writer thread's copy: the same socket, written only by that thread.
        let writer_socket = stream.try_clone().map_err(configure)?;
        // The job thread's copy, to write a job's result itself (closed when serving returns).
        let job_socket = JobSocket::new(stream.try_clone().map_err(configure)?);
        stream.set_nonblocking(true).map_err(configure)?;
        let mut stream = tokio::net::UnixStream::from_std(stream).map_err(configure)?;
        let span = info_span!(
            "warden_worker",
            pid = std::process::id(),
            supervisor = tracing::field::Empty
        );
        async move {
            let session = tokio::select! {
                session = handshake(&mut stream, handshake_timeout) => session?,
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
            let machine = Machine::new(
                machine::Config {
                    max_frame_len: session.max_frame_len,
                    heartbeat_interval: session.heartbeat_interval,
                    orphan_grace,
                },
                Instant::now(),
            );
            let writer = Writer::start(machine, writer_socket, Span::current())
                .map_err(ServeError::WriterThread)?;
            // From here the serve task only reads (frames go out by `send` with MSG_DONTWAIT,
            // or from the writer thread), so the socket is registered for readability alone:
            // registered for writability too, it would wake this thread each time the
            // supervisor reads a frame.
            let rd = stream
                .into_std()
                .and_then(crate::sys::register_readable)
                .map_err(configure)?;
            let serve = Serve {
                decoder: FrameDecoder::new(session.max_frame_len),
                rd,
                runner,
                job: None,
                read_closed: false,
                signalled: false,
                job_socket: JobSocketGuard(job_socket),
                writer,
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

type JobFuture = Pin<Box<dyn Future<Output = HandlerOutcome> + Send>>;

/// Starts handler calls; the serve loop awaits the returned future for the result, unless the
/// runner ends the job itself through its [`JobEnd`] (then the future never resolves).
trait Runner {
    fn start(&mut self, job: Job, span: Span, end: JobEnd) -> JobFuture;
}

/// A copy of the channel for the job thread, taken away when serving returns (so nothing is
/// written after that, and the copy is closed with the others).
struct JobSocket(Mutex<Option<UnixStream>>);

impl JobSocket {
    fn new(socket: UnixStream) -> Arc<JobSocket> {
        Arc::new(JobSocket(Mutex::new(Some(socket))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<UnixStream>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Closes the job thread's copy of the channel when the serve task ends.
struct JobSocketGuard(Arc<JobSocket>);

impl Drop for JobSocketGuard {
    fn drop(&mut self) {
        self.0.lock().take();
    }
}

/// What the job thread needs to end its job itself, so that a blocking job's end wakes no other
/// thread: the handler's outcome goes into the machine, and its frame onto the socket as far
/// as the socket takes it without blocking ([`writer::Shared::flush`]; the writer thread writes
/// the rest). The serve task is woken only if the machine then has something for it (an action,
/// the exit); it learns that the job ended from the machine when the next job starts.
struct JobEnd {
    id: JobId,
    shared: Arc<writer::Shared>,
    socket: Arc<JobSocket>,
    progress: Arc<progress::Shared>,
    /// Set once the handler returned: the serve task then no longer trips its token when it
    /// lets go of the job.
    returned: Arc<AtomicBool>,
}

impl JobEnd {
    /// Ends the job with `outcome`. Nothing in it panics (the locks ignore poisoning).
    fn finish(self, outcome: HandlerOutcome) {
        self.returned.store(true, Ordering::Release);
        let last = self.progress.close();
        {
            let mut machine = self.shared.lock();
            if let Some(update) = last {
                machine.handle_progress(self.id, update.fraction, update.text);
            }
            machine.handle_finished(self.id, outcome);
        }
        let transmitted = {
            let socket = self.socket.lock();
            socket
                .as_ref()
                .is_some_and(|socket| self.shared.flush(socket.as_fd()))
        };
        // The serve task decides what to wait for when it wakes. It may have woken for the next
        // job's start while this thread was writing, seen the writer busy, and so not waited
        // for that job's progress: it is woken now that the writer is free.
        let wake = {
            let machine = self.shared.lock();
            machine.wants_serve() || (transmitted && machine.wants_progress().is_some())
        };
        if wake {
            self.shared.wake_serve.notify_one();
        }
    }
}

struct AsyncRunner<F> {
    handler: F,
}

impl<F, Fut> Runner for AsyncRunner<F>
where
    F: FnMut(Job) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, JobError>> + Send + 'static,
{
    fn start(&mut self, job: Job, span: Span, _end: JobEnd) -> JobFuture {
        // The serve task ends an async job: the task's end wakes it on its own runtime anyway.
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

type Work = (Job, Span, JobEnd);

/// Runs a blocking handler on one dedicated thread, job after job; that thread also ends each
/// job (`JobEnd`).
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
                while let Ok((job, span, end)) = queue.recv() {
                    let outcome = span.in_scope(|| catch_unwind(AssertUnwindSafe(|| handler(job))));
                    let outcome = match outcome {
                        Ok(result) => HandlerOutcome::Returned(result),
                        Err(panic) => HandlerOutcome::Crashed(panic_failure(&*panic)),
                    };
                    // The serve loop may be gone (orphaned): the machine then ends serving.
                    span.in_scope(|| end.finish(outcome));
                }
            })?;
        Ok(BlockingRunner { jobs })
    }
}

impl Runner for BlockingRunner {
    fn start(&mut self, job: Job, span: Span, end: JobEnd) -> JobFuture {
        if self.jobs.send((job, span, end)).is_err() {
            // Cannot happen while the thread loop catches panics; fail the job, not the worker.
            return Box::pin(std::future::ready(HandlerOutcome::Crashed(
                "the job thread is gone".into(),
            )));
        }
        // The job thread ends the job itself.
        Box::pin(pending())
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
    /// Set once the handler returned (by the serve task, or by the job thread that ended the
    /// job itself); otherwise dropping trips the token.
    returned: Arc<AtomicBool>,
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        // Serving stopped with the handler still running (error, or the serve future dropped):
        // its result has nowhere to go.
        if !self.returned.load(Ordering::Acquire) {
            self.source.cancel(CancelCause::ChannelClosed);
        }
    }
}

enum Event {
    Read(io::Result<usize>),
    Signal,
    Finished(HandlerOutcome),
    Progress,
    /// The writer thread changed the machine.
    Woken,
}

/// The serve task: reads and decodes, runs handlers, and feeds the machine; the writer thread
/// writes what the machine queues.
struct Serve<R> {
    /// Registered for readability only: the serve task never waits to write.
    rd: AsyncFd<UnixStream>,
    decoder: FrameDecoder,
    runner: R,
    job: Option<RunningJob>,
    /// EOF or a read error was seen; the read branch is off.
    read_closed: bool,
    signalled: bool,
    /// The job thread's copy of the channel, closed when the serve task ends.
    job_socket: JobSocketGuard,
    /// Dropped last: joins the writer thread, so its copy of the socket is closed on return.
    writer: Writer,
}

impl<R: Runner> Serve<R> {
    async fn run(mut self, mut sigterm: Option<Signal>) -> Result<(), ServeError> {
        let shared = Arc::clone(self.writer.shared());
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            // Whatever the last event queued goes out (written here as far as the socket takes
            // it), and new timers are taken into account; then what it decided is done.
            // It looks at the machine right after; nobody else needs waking for what it wrote.
            shared.flush(self.rd.get_ref().as_fd());
            let (actions, exit, progress_for) = {
                let mut machine = shared.lock();
                let actions: Vec<Action> = std::iter::from_fn(|| machine.poll_action()).collect();
                (actions, machine.poll_exit(), machine.wants_progress())
            };
            for action in actions {
                self.perform(action);
            }
            if let Some(exit) = exit {
                return exit_result(exit);
            }
            let progress = self
                .job
                .as_ref()
                .filter(|job| Some(job.id) == progress_for)
                .map(|job| Arc::clone(&job.progress));
            let event = tokio::select! {
                biased;
                r = read_some(&self.rd, &mut buf), if !self.read_closed => Event::Read(r),
                () = recv_signal(&mut sigterm), if !self.signalled => Event::Signal,
                outcome = job_result(self.job.as_mut()) => Event::Finished(outcome),
                () = progress_ready(progress.as_deref()) => Event::Progress,
                () = shared.wake_serve.notified() => Event::Woken,
            };
            let now = Instant::now();
            match event {
                Event::Read(Ok(0)) => {
                    self.read_closed = true;
                    shared.lock().handle_channel_closed(now, None);
                }
                Event::Read(Ok(n)) => {
                    self.decoder.push(buf.get(..n).unwrap_or_default());
                    // Everything this read brought is decoded, even after the machine decided
                    // to stop: a violation right behind `Shutdown` is still reported.
                    let mut machine = shared.lock();
                    loop {
                        match self.decoder.next() {
                            Ok(Some(msg)) => machine.handle_message(now, msg),
                            Ok(None) => break,
                            Err(e) => {
                                machine.handle_decode_error(e);
                                break;
                            }
                        }
                    }
                }
                Event::Read(Err(e)) => {
                    self.read_closed = true;
                    shared.lock().handle_channel_closed(now, Some(e));
                }
                Event::Signal => {
                    self.signalled = true;
                    shared.lock().handle_signal();
                }
                Event::Finished(outcome) => {
                    if let Some(job) = self.job.take() {
                        job.returned.store(true, Ordering::Release);
                        let _enter = job.span.enter();
                        let last = job.progress.close();
                        let mut machine = shared.lock();
                        if let Some(update) = last {
                            machine.handle_progress(job.id, update.fraction, update.text);
                        }
                        machine.handle_finished(job.id, outcome);
                    }
                }
                Event::Progress => {
                    if let Some(job) = &self.job {
                        if let Some(update) = job.progress.take() {
                            shared
                                .lock()
                                .handle_progress(job.id, update.fraction, update.text);
                        }
                    }
                }
                Event::Woken => {}
            }
        }
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::StartJob {
                job,
                payload,
                deadline,
                deadline_ms,
            } => self.start_job(job, payload, deadline, deadline_ms),
            Action::Trip { job, cause } => {
                if let Some(running) = self.job.as_ref().filter(|running| running.id == job) {
                    running.source.cancel(cause);
                }
            }
        }
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
        // The last job's handler has returned (the machine started this one): let go of it
        // before the job thread can take the next.
        self.job = None;
        let returned = Arc::new(AtomicBool::new(false));
        let end = JobEnd {
            id,
            shared: Arc::clone(self.writer.shared()),
            socket: Arc::clone(&self.job_socket.0),
            progress: Arc::clone(&shared),
            returned: Arc::clone(&returned),
        };
        let result = self.runner.start(job, span.clone(), end);
        self.job = Some(RunningJob {
            id,
            source,
            progress: shared,
            result,
            span,
            returned,
        });
    }
}

/// What the serve call returns for the machine's exit.
fn exit_result(exit: Exit) -> Result<(), ServeError> {
    match exit {
        Exit::Stopped => Ok(()),
        Exit::Disconnected(None) => Err(ServeError::Disconnected),
        Exit::Disconnected(Some(e))
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            Err(ServeError::Disconnected)
        }
        Exit::Disconnected(Some(e)) => Err(ServeError::Io(e)),
        Exit::Protocol(e) => Err(ServeError::Protocol(e)),
        // The writer thread exits too when it sees this first; whichever is first wins.
        Exit::Orphaned => std::process::exit(ORPHAN_EXIT_CODE),
    }
}

/// One read of what the socket holds, once the reactor says it is readable.
///
/// # Cancel safety
/// Cancel-safe: the read happens inside a single poll, so a dropped call has read nothing.
async fn read_some(rd: &AsyncFd<UnixStream>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut ready = rd.readable().await?;
        match ready.try_io(|socket| socket.get_ref().read(buf)) {
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(result) => return result,
            // Spurious readiness: cleared by `try_io`; wait for the next.
            Err(_would_block) => {}
        }
    }
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
