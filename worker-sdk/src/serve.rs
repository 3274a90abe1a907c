//! The serve loop: one task reads the channel, starts jobs and trips their tokens, feeding the
//! protocol machine (`machine.rs`) and writing what it queues as far as the socket takes it;
//! the writer thread (`writer.rs`) writes the rest and heartbeats, and keeps the machine's
//! clock.
//!
//! One job runs at a time; in protocol version 2 more may wait in the machine, each started
//! the moment the one before it ends. An async job is ended, and the next started, by the serve
//! task (the task's end wakes it anyway). A blocking job is ended by the `warden-job` thread
//! itself (`JobEnd`), which in the same critical section takes the next job's start from the
//! machine and runs it: queued blocking jobs run back to back with no thread hop. Whoever starts
//! a job registers its token and progress in the machine's lock (`JobSlot`), so the serve task
//! trips the right token whichever thread started the job.

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
use tokio::sync::Notify;
use tracing::{Instrument, Span, info, info_span};
use warden_protocol::{FrameDecoder, JobId, queues_jobs};

use crate::bootstrap::Channel;
use crate::connection::handshake;
use crate::error::{BootstrapError, JobError, ServeError};
use crate::job::Job;
use crate::machine::{self, Action, Exit, HandlerOutcome, Machine};
use crate::progress::{self, Progress};
use crate::token::{CancelCause, CancelSource, CancelToken};
use crate::writer::{self, State, Writer};

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
            let queued_jobs = queues_jobs(session.protocol_version);
            info!(
                protocol_version = session.protocol_version,
                queued_jobs,
                max_frame_len = session.max_frame_len,
                heartbeat_ms = session.heartbeat_interval.map(|d| d.as_millis()),
                "connected"
            );
            let machine = Machine::new(
                machine::Config {
                    max_frame_len: session.max_frame_len,
                    heartbeat_interval: session.heartbeat_interval,
                    orphan_grace,
                    queued_jobs,
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
            let jobs = Arc::new(Jobs {
                shared: Arc::clone(writer.shared()),
                socket: job_socket,
                progress_ready: Arc::new(Notify::new()),
                span: Span::current(),
            });
            let serve = Serve {
                decoder: FrameDecoder::new(session.max_frame_len),
                rd,
                runner,
                awaited: None,
                read_closed: false,
                signalled: false,
                jobs: ServeEnd(jobs),
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

/// Starts handler calls. Returns the future the serve task awaits for the outcome, or `None`
/// when the runner ends the job itself through its [`JobEnd`].
trait Runner {
    fn start(&mut self, job: Job, span: Span, end: JobEnd) -> Option<JobFuture>;
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

/// The serve side's view of the running job, kept under the machine's lock
/// ([`State::slot`]), whichever thread starts the job.
///
/// # Invariants
/// - `current` is the last job started whose end has not been reported to the machine yet (the
///   machine's running job, or one it let go of on a violation while its handler still runs),
///   or nothing. A job is registered in the critical section that took its start from the
///   machine, so a trip the machine decides for a job finds that job's token, and never
///   another job's (a trip names its job, and ids are unique on a connection).
#[derive(Default)]
pub(crate) struct JobSlot {
    current: Option<Current>,
    /// Whether the serve task, when it last looked, waited for progress reports (the machine
    /// wanted progress then). If not, whoever frees the writer for the running job's progress
    /// wakes it; if so, the job's first report does (every job's reports announce themselves
    /// on one `Notify`).
    progress_armed: bool,
    /// Serving returned: no job starts any more.
    over: bool,
}

impl JobSlot {
    /// `job`'s end was reported to the machine: let go of it.
    fn finished(&mut self, job: JobId) {
        if self
            .current
            .as_ref()
            .is_some_and(|current| current.id == job)
        {
            self.current = None;
        }
    }
}

/// What the serve task needs of the running job: its token to trip, its progress to take.
struct Current {
    id: JobId,
    source: CancelSource,
    progress: Arc<progress::Shared>,
    /// Set once the handler returned; until then the end of serving trips the token.
    returned: Arc<AtomicBool>,
}

/// What every job of a connection shares: whoever starts a job (the serve task, or the job
/// thread starting the next queued job itself) makes it from this.
struct Jobs {
    shared: Arc<writer::Shared>,
    socket: Arc<JobSocket>,
    /// Every job's progress reports announce themselves here.
    progress_ready: Arc<Notify>,
    /// The connection's span, the parent of every job's (the job thread starts jobs inside the
    /// span of the one before).
    span: Span,
}

/// A job the machine started and [`Jobs::register`] registered; its handler is not called yet.
struct Started {
    id: JobId,
    payload: Vec<u8>,
    deadline: Option<Instant>,
    deadline_ms: Option<u64>,
    token: CancelToken,
    progress: Arc<progress::Shared>,
    returned: Arc<AtomicBool>,
}

impl Jobs {
    /// Registers the job that `start` (an [`Action::StartJob`]) starts as the running one, with
    /// a token of its own. Call it under the machine's lock, in the critical section that took
    /// the action from the machine (see [`JobSlot`]). `None` once serving is over.
    fn register(&self, state: &mut State, start: Action) -> Option<Started> {
        let Action::StartJob {
            job,
            payload,
            deadline,
            deadline_ms,
        } = start
        else {
            return None;
        };
        if state.slot.over {
            return None;
        }
        let source = CancelSource::new();
        let token = source.token();
        let progress = Arc::new(progress::Shared::new(Arc::clone(&self.progress_ready)));
        let returned = Arc::new(AtomicBool::new(false));
        state.slot.current = Some(Current {
            id: job,
            source,
            progress: Arc::clone(&progress),
            returned: Arc::clone(&returned),
        });
        Some(Started {
            id: job,
            payload,
            deadline,
            deadline_ms,
            token,
            progress,
            returned,
        })
    }
}

impl Started {
    /// The handler's job, its span and what ends it (outside the machine's lock).
    fn into_work(self, jobs: &Arc<Jobs>) -> Work {
        let span = info_span!(parent: &jobs.span, "job", job = %self.id);
        span.in_scope(|| {
            info!(
                payload_len = self.payload.len(),
                deadline_ms = self.deadline_ms,
                "job started"
            );
        });
        let job = Job::new(
            self.id,
            self.payload,
            self.deadline,
            self.token,
            Progress::new(Arc::clone(&self.progress)),
        );
        let end = JobEnd {
            id: self.id,
            jobs: Arc::clone(jobs),
            progress: self.progress,
            returned: self.returned,
        };
        (job, span, end)
    }
}

/// What the job thread needs to end its job itself, so that a blocking job's end wakes no other
/// thread: the handler's outcome goes into the machine, and its frame onto the socket as far
/// as the socket takes it without blocking ([`writer::Shared::flush`]; the writer thread writes
/// the rest). If the machine then starts the next queued job, this thread takes its start in
/// the same critical section and runs it next: queued jobs run back to back with no hop
/// through the serve task. The serve task is woken only if the machine then has something for
/// it (an action, the exit) or a report of the running job's progress it would not wait for.
struct JobEnd {
    id: JobId,
    jobs: Arc<Jobs>,
    progress: Arc<progress::Shared>,
    /// Set once the handler returned: the end of serving then no longer trips its token.
    returned: Arc<AtomicBool>,
}

impl JobEnd {
    /// Ends the job with `outcome`; returns the next job if the machine started one (this
    /// thread runs it). Nothing in it panics (the locks ignore poisoning).
    fn finish(self, outcome: HandlerOutcome) -> Option<Work> {
        self.returned.store(true, Ordering::Release);
        let last = self.progress.close();
        let jobs = &*self.jobs;
        let now = Instant::now();
        let next = {
            let mut state = jobs.shared.lock();
            if let Some(update) = last {
                state.handle_progress(self.id, update.fraction, update.text);
            }
            state.handle_finished(now, self.id, outcome);
            state.slot.finished(self.id);
            match state.poll_start() {
                Some(start) => jobs.register(&mut state, start),
                None => None,
            }
        };
        let transmitted = {
            let socket = jobs.socket.lock();
            socket
                .as_ref()
                .is_some_and(|socket| jobs.shared.flush(socket.as_fd()))
        };
        // The serve task decides what to wait for when it wakes. It may have woken (for a
        // start, a cancel) while this thread was writing, seen the writer busy, and so not
        // waited for the running job's progress: it is woken now that the writer is free.
        let wake = {
            let state = jobs.shared.lock();
            state.wants_serve()
                || (transmitted && !state.slot.progress_armed && state.wants_progress().is_some())
        };
        if wake {
            jobs.shared.wake_serve.notify_one();
        }
        next.map(|started| started.into_work(&self.jobs))
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
    fn start(&mut self, job: Job, span: Span, _end: JobEnd) -> Option<JobFuture> {
        // The serve task ends an async job (the task's end wakes it on its own runtime anyway)
        // and starts the next queued one.
        let handler = &mut self.handler;
        // The synchronous part of the handler runs here; a panic in it fails only this job.
        let future = match span.in_scope(|| catch_unwind(AssertUnwindSafe(|| handler(job)))) {
            Ok(future) => future,
            Err(panic) => {
                return Some(Box::pin(std::future::ready(HandlerOutcome::Crashed(
                    panic_failure(&*panic),
                ))));
            }
        };
        let task = tokio::spawn(future.instrument(span));
        Some(Box::pin(async move {
            match task.await {
                Ok(result) => HandlerOutcome::Returned(result),
                Err(e) if e.is_panic() => HandlerOutcome::Crashed(panic_failure(&*e.into_panic())),
                Err(_) => {
                    HandlerOutcome::Crashed("the job's task was cancelled by the runtime".into())
                }
            }
        }))
    }
}

type Work = (Job, Span, JobEnd);

/// Runs a blocking handler on one dedicated thread, job after job; that thread also ends each
/// job and starts the next queued one (`JobEnd`). The serve task hands it only a job that
/// starts while none runs.
struct BlockingRunner {
    jobs: mpsc::Sender<Work>,
}

impl BlockingRunner {
    fn start<F>(mut handler: F) -> io::Result<BlockingRunner>
    where
        F: FnMut(Job) -> Result<Vec<u8>, JobError> + Send + 'static,
    {
        let (jobs, queue) = mpsc::channel::<Work>();
        // The thread ends when the runner (the only sender) is dropped, after its current job
        // (serving is over then, so no queued job follows it).
        std::thread::Builder::new()
            .name("warden-job".into())
            .spawn(move || {
                while let Ok(work) = queue.recv() {
                    let mut next = Some(work);
                    while let Some((job, span, end)) = next {
                        let outcome =
                            span.in_scope(|| catch_unwind(AssertUnwindSafe(|| handler(job))));
                        let outcome = match outcome {
                            Ok(result) => HandlerOutcome::Returned(result),
                            Err(panic) => HandlerOutcome::Crashed(panic_failure(&*panic)),
                        };
                        // The serve loop may be gone (orphaned): the machine then ends serving.
                        next = span.in_scope(|| end.finish(outcome));
                    }
                }
            })?;
        Ok(BlockingRunner { jobs })
    }
}

impl Runner for BlockingRunner {
    fn start(&mut self, job: Job, span: Span, end: JobEnd) -> Option<JobFuture> {
        if self.jobs.send((job, span, end)).is_err() {
            // Cannot happen while the thread loop catches panics; fail the job, not the worker.
            return Some(Box::pin(std::future::ready(HandlerOutcome::Crashed(
                "the job thread is gone".into(),
            ))));
        }
        // The job thread ends the job itself.
        None
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

/// A job whose outcome the serve task awaits (an async one).
struct Awaited {
    id: JobId,
    result: JobFuture,
    progress: Arc<progress::Shared>,
    returned: Arc<AtomicBool>,
    span: Span,
}

/// Ends serving for the other threads when the serve task ends: no job starts any more, the
/// running job's token trips if its handler has not returned (serving stopped with an error,
/// or the serve future was dropped: its result has nowhere to go), and the job thread's copy
/// of the channel is closed.
struct ServeEnd(Arc<Jobs>);

impl Drop for ServeEnd {
    fn drop(&mut self) {
        let current = {
            let mut state = self.0.shared.lock();
            state.slot.over = true;
            state.slot.current.take()
        };
        // Outside the lock: the token's callbacks are the handler's code.
        if let Some(current) = current
            && !current.returned.load(Ordering::Acquire)
        {
            current.source.cancel(CancelCause::ChannelClosed);
        }
        self.0.socket.lock().take();
    }
}

/// What the serve task does with an action, decided under the machine's lock and done outside.
enum Todo {
    Start(Started),
    Trip(CancelSource, CancelCause),
}

enum Event {
    Read(io::Result<usize>),
    Signal,
    Finished(HandlerOutcome),
    Progress,
    /// Another thread changed the machine.
    Woken,
}

/// The serve task: reads and decodes, starts handlers (a blocking runner's thread starts the
/// queued ones itself), trips tokens and feeds the machine; the writer thread writes what the
/// machine queues.
struct Serve<R> {
    /// Registered for readability only: the serve task never waits to write.
    rd: AsyncFd<UnixStream>,
    decoder: FrameDecoder,
    runner: R,
    /// The async job's outcome (a blocking job ends itself).
    awaited: Option<Awaited>,
    /// EOF or a read error was seen; the read branch is off.
    read_closed: bool,
    signalled: bool,
    /// What every job shares; dropped before the writer.
    jobs: ServeEnd,
    /// Dropped last: joins the writer thread, so its copy of the socket is closed on return.
    writer: Writer,
}

impl<R: Runner> Serve<R> {
    async fn run(mut self, mut sigterm: Option<Signal>) -> Result<(), ServeError> {
        let shared = Arc::clone(self.writer.shared());
        let jobs = Arc::clone(&self.jobs.0);
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            // Whatever the last event queued goes out (written here as far as the socket takes
            // it), and new timers are taken into account; then what it decided is done.
            // It looks at the machine right after; nobody else needs waking for what it wrote.
            shared.flush(self.rd.get_ref().as_fd());
            let (todo, exit, progress_wanted) = {
                let mut state = shared.lock();
                let mut todo = Vec::new();
                while let Some(action) = state.poll_action() {
                    match action {
                        Action::Trip { job, cause } => {
                            // A trip for a job that has ended since is moot.
                            if let Some(current) =
                                state.slot.current.as_ref().filter(|c| c.id == job)
                            {
                                todo.push(Todo::Trip(current.source.clone(), cause));
                            }
                        }
                        start @ Action::StartJob { .. } => {
                            if let Some(started) = jobs.register(&mut state, start) {
                                todo.push(Todo::Start(started));
                            }
                        }
                    }
                }
                let progress_wanted = state.wants_progress().is_some();
                state.slot.progress_armed = progress_wanted;
                (todo, state.poll_exit(), progress_wanted)
            };
            for todo in todo {
                self.perform(todo);
            }
            if let Some(exit) = exit {
                return exit_result(exit);
            }
            let event = tokio::select! {
                biased;
                r = read_some(&self.rd, &mut buf), if !self.read_closed => Event::Read(r),
                () = recv_signal(&mut sigterm), if !self.signalled => Event::Signal,
                outcome = job_result(self.awaited.as_mut()) => Event::Finished(outcome),
                () = jobs.progress_ready.notified(), if progress_wanted => Event::Progress,
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
                    if let Some(done) = self.awaited.take() {
                        done.returned.store(true, Ordering::Release);
                        let _enter = done.span.enter();
                        let last = done.progress.close();
                        let mut state = shared.lock();
                        if let Some(update) = last {
                            state.handle_progress(done.id, update.fraction, update.text);
                        }
                        // The next queued job, if any, is started at the top of the loop.
                        state.handle_finished(now, done.id, outcome);
                        state.slot.finished(done.id);
                    }
                }
                Event::Progress => {
                    let mut state = shared.lock();
                    let update = state.slot.current.as_ref().and_then(|current| {
                        current.progress.take().map(|update| (current.id, update))
                    });
                    if let Some((job, update)) = update {
                        state.handle_progress(job, update.fraction, update.text);
                    }
                }
                Event::Woken => {}
            }
        }
    }

    fn perform(&mut self, todo: Todo) {
        match todo {
            Todo::Start(started) => {
                let id = started.id;
                let progress = Arc::clone(&started.progress);
                let returned = Arc::clone(&started.returned);
                let (job, span, end) = started.into_work(&self.jobs.0);
                if let Some(result) = self.runner.start(job, span.clone(), end) {
                    self.awaited = Some(Awaited {
                        id,
                        result,
                        progress,
                        returned,
                        span,
                    });
                }
            }
            Todo::Trip(source, cause) => {
                source.cancel(cause);
            }
        }
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

async fn job_result(job: Option<&mut Awaited>) -> HandlerOutcome {
    match job {
        Some(job) => (&mut job.result).await,
        None => pending().await,
    }
}
