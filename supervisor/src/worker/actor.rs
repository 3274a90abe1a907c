//! The task that owns a worker process and its channel: a thin loop around [`Connection`].
//!
//! It decides nothing. Each turn it performs the actions the machine emitted, arms its one
//! timer from [`Connection::poll_timeout`], and waits for the next fact: a request, a
//! channel event, the process's exit, a token, the timer, a control request. Each fact goes
//! to the machine with the `now` it was seen at.
//!
//! Caller code never runs here: progress goes through a [`ProgressSink`] (a slot and a thread
//! of the job's own), and replies are oneshot sends.

use std::collections::VecDeque;
use std::future::{Future, pending, poll_fn};
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::Span;
use warden_protocol::{CancelReason, EncodeError, JobId, SupervisorMessage};

use super::config::{JobOptions, WorkerConfig};
use super::progress::ProgressSink;
use crate::connection::{Action, Connection, JobStart, Settings};
use crate::error::{JobControlError, RunError};
use crate::ipc::{Channel, Event, UnreadProbe};
use crate::outcome::JobReport;
use crate::output::Output;
use crate::process::{ExitStatus, Tree};
use crate::time::{Alarm, Wakeup};

type Reply = oneshot::Sender<Result<JobReport, RunError>>;

pub(crate) enum Request {
    Run {
        payload: Vec<u8>,
        options: JobOptions,
        reply: Reply,
    },
    Shutdown {
        reply: oneshot::Sender<Option<ExitStatus>>,
    },
}

type ControlReply = oneshot::Sender<Result<(), JobControlError>>;

/// Job control requests, heard in every state of the actor.
pub(crate) enum Control {
    /// Stop the tree and pause the timers; reply once the tree is stopped (or `timeout`).
    Suspend {
        timeout: Duration,
        reply: ControlReply,
    },
    /// Continue the tree and the timers.
    Resume { reply: ControlReply },
    /// The tree's memory in use now (see `Tree::memory_current`).
    Memory { reply: oneshot::Sender<Option<u64>> },
}

/// A request that came while the worker was busy: it waits for its turn, in order. `None`:
/// every handle was dropped (the shutdown that follows waits its turn too).
struct Waiting {
    request: Option<Request>,
    /// A waiting job's token, watched (with its caller's reply) so that a job cancelled while
    /// it waits is answered at once, not at its turn.
    cancelled: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl Waiting {
    fn new(request: Option<Request>) -> Waiting {
        let cancelled = match &request {
            Some(Request::Run { options, .. }) => {
                Some(Box::pin(options.token.clone().cancelled_owned()))
            }
            _ => None,
        };
        Waiting { request, cancelled }
    }
}

/// The position of the first waiting job whose caller cancelled it or went away.
fn withdrawn(waiting: &mut VecDeque<Waiting>) -> impl Future<Output = usize> + '_ {
    poll_fn(move |cx| {
        for (i, w) in waiting.iter_mut().enumerate() {
            if let Some(Request::Run { reply, .. }) = &mut w.request {
                if reply.poll_closed(cx).is_ready() {
                    return Poll::Ready(i);
                }
                if let Some(cancelled) = &mut w.cancelled
                    && cancelled.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(i);
                }
            }
        }
        Poll::Pending
    })
}

/// The caller's side of a job on the wire (the running one, or one queued behind it).
struct Current {
    id: JobId,
    reply: Option<Reply>,
    token: CancellationToken,
    /// The token's cancellation, watched while the job is on the wire (kept across polls so
    /// that its wake-up is registered).
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    progress: Option<ProgressSink>,
}

/// The first job whose caller cancelled it or went away, among those whose cancel matters now:
/// the running job's while it accepts one (`cancellable`), each queued job's until its
/// `Cancel` went out.
fn job_cancelled<'a>(
    jobs: &'a mut [Current],
    conn: &'a Connection,
    cancellable: bool,
) -> impl Future<Output = JobId> + 'a {
    let running = conn.running_job();
    poll_fn(move |cx| {
        let watched = |id: JobId| {
            if Some(id) == running {
                cancellable
            } else {
                conn.accepts_cancel_queued(id)
            }
        };
        for job in jobs.iter_mut().filter(|j| watched(j.id)) {
            if job.cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(job.id);
            }
            if let Some(reply) = &mut job.reply
                && reply.poll_closed(cx).is_ready()
            {
                return Poll::Ready(job.id);
            }
        }
        Poll::Pending
    })
}

async fn next_event(channel: &mut Option<Channel>) -> Event {
    match channel {
        Some(c) if !c.is_eof() => c.next_event().await,
        _ => pending().await,
    }
}

pub(crate) struct Actor {
    tree: Tree,
    channel: Option<Channel>,
    /// The captured stdout and stderr (none unless `config.output`).
    output: Output,
    control: mpsc::UnboundedReceiver<Control>,
    /// False once every handle is gone (the control channel is closed).
    control_open: bool,
    suspended: bool,
    config: WorkerConfig,
    conn: Connection,
    /// The jobs on the wire, in the order they were started (the running one among them).
    jobs: Vec<Current>,
    shutdown_reply: Option<oneshot::Sender<Option<ExitStatus>>>,
    /// What came while the worker was busy, in order.
    waiting: VecDeque<Waiting>,
    /// The ladder's SIGKILL, sent by the timer thread at its deadline whatever the runtime's
    /// load (see [`arm_alarm`](Self::arm_alarm)).
    alarm: Alarm,
    span: Span,
}

impl Actor {
    pub(crate) fn new(
        tree: Tree,
        channel: Option<Channel>,
        output: Output,
        control: mpsc::UnboundedReceiver<Control>,
        config: WorkerConfig,
        queue_depth: usize,
        span: Span,
    ) -> Self {
        let settings = Settings {
            protocol: config.protocol,
            deadlines: config.deadlines,
            frame_timeout: config.frame_timeout,
            drain_timeout: config.drain_timeout,
            unresponsive_after: config.unresponsive_after,
            containment: tree.containment(),
            queue_depth,
        };
        Actor {
            conn: Connection::new(Instant::now(), settings),
            tree,
            channel,
            output,
            control,
            control_open: true,
            suspended: false,
            config,
            jobs: Vec::new(),
            shutdown_reply: None,
            waiting: VecDeque::new(),
            alarm: Alarm::new(),
            span,
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut wakeup = Wakeup::new();
        let mut requests_open = true;
        loop {
            self.perform_all().await;
            if !requests_open && self.waiting.is_empty() && self.conn.is_stopped() {
                return;
            }
            if self.waiting.front().is_some_and(|w| self.takes(&w.request))
                && let Some(next) = self.waiting.pop_front()
            {
                // Its turn: the job before it was answered in this same turn (or, pipelined,
                // it queues behind the running one), so it is on the wire without waiting for
                // anyone.
                self.on_request(next.request).await;
                continue;
            }
            self.arm_alarm();
            wakeup.set(self.conn.poll_timeout());
            let reading = self.conn.is_reading();
            let cancellable = self.conn.accepts_cancel();
            let running = self.conn.running_job();
            let queued_open = self.conn.has_uncancelled_queued();
            let withdraws = self.config.protocol && !self.waiting.is_empty();
            // Every branch first learns whether the timer thread SIGKILLed the tree meanwhile
            // (`sync_alarm`): what woke it came later, and is judged after the kill.
            tokio::select! {
                request = rx.recv(), if requests_open => {
                    self.sync_alarm();
                    requests_open = request.is_some();
                    if self.waiting.is_empty() && self.takes(&request) {
                        self.on_request(request).await;
                    } else {
                        // Received now rather than left in the channel, so that its token
                        // is watched while it waits.
                        self.waiting.push_back(Waiting::new(request));
                    }
                }
                i = withdrawn(&mut self.waiting), if withdraws => {
                    self.sync_alarm();
                    self.withdraw(i);
                }
                event = next_event(&mut self.channel), if reading => {
                    self.sync_alarm();
                    self.on_event(event);
                }
                status = self.tree.wait(), if self.conn.awaits_exit() => {
                    self.sync_alarm();
                    if let Err(e) = &status {
                        // Cannot happen while we are the only reaper; never spin on it.
                        tracing::error!(parent: &self.span, error = %e, "lost track of the worker process");
                    }
                    tracing::info!(parent: &self.span, status = ?status.as_ref().ok(), "worker exited");
                    self.conn.handle_exit(Instant::now(), status.ok());
                }
                id = job_cancelled(&mut self.jobs, &self.conn, cancellable), if !self.jobs.is_empty() => {
                    self.sync_alarm();
                    let now = Instant::now();
                    if Some(id) == running {
                        self.conn.handle_cancel(now, CancelReason::Requested);
                    } else {
                        self.conn.handle_cancel_queued(now, id, CancelReason::Requested);
                    }
                }
                () = self.config.shutdown.cancelled(), if cancellable || queued_open => {
                    self.sync_alarm();
                    let now = Instant::now();
                    self.conn.handle_cancel(now, CancelReason::Shutdown);
                    for id in self.conn.queued_uncancelled() {
                        self.conn.handle_cancel_queued(now, id, CancelReason::Shutdown);
                    }
                }
                () = self.config.kill.cancelled(), if !self.conn.kill_seen() => {
                    self.sync_alarm();
                    tracing::warn!(parent: &self.span, "kill requested");
                    let now = Instant::now();
                    // A cancel that is already asked for (a shutdown before the kill, as a
                    // second stop signal follows the first) but whose branch lost the race
                    // to this one is the kill's reason: the kill is an escalation of it.
                    if cancellable {
                        if let Some(reason) = self.pending_cancel() {
                            self.conn.handle_cancel(now, reason);
                        }
                    }
                    self.conn.handle_kill(now);
                }
                () = wakeup.fired() => {
                    self.sync_alarm();
                    self.conn.handle_timeout(Instant::now());
                }
                control = self.control.recv(), if self.control_open => {
                    self.sync_alarm();
                    self.on_control(control).await;
                }
            }
        }
    }

    /// Whether `request` may be taken now: a job when the connection takes jobs (nothing
    /// runs, or it queues behind the running one), a shutdown once nothing runs.
    fn takes(&self, request: &Option<Request>) -> bool {
        match request {
            Some(Request::Run { .. }) => self.conn.takes_jobs(),
            _ => self.conn.takes_requests(),
        }
    }

    async fn on_request(&mut self, request: Option<Request>) {
        match request {
            Some(Request::Run {
                payload,
                options,
                reply,
            }) => self.start(payload, options, reply).await,
            Some(Request::Shutdown { reply }) => {
                self.shutdown_reply = Some(reply);
                self.conn.handle_shutdown(Instant::now());
            }
            None => self.conn.handle_shutdown(Instant::now()),
        }
    }

    /// A job cancelled (or whose caller went away) while it waited behind another: it never
    /// starts, and its caller has its report now.
    fn withdraw(&mut self, i: usize) {
        let Some(Waiting {
            request: Some(Request::Run { reply, .. }),
            ..
        }) = self.waiting.remove(i)
        else {
            return;
        };
        let report = self
            .conn
            .not_started(Instant::now(), CancelReason::Requested);
        tracing::info!(parent: &self.span, job = %report.job, "job cancelled before its turn");
        let _ = reply.send(Ok(report));
    }

    /// The cancel the running job was asked for but this task has not handled yet, if any.
    fn pending_cancel(&self) -> Option<CancelReason> {
        let running = self.conn.running_job()?;
        let current = self.jobs.iter().find(|j| j.id == running)?;
        if current.token.is_cancelled() || current.reply.as_ref().is_some_and(Reply::is_closed) {
            Some(CancelReason::Requested)
        } else if self.config.shutdown.is_cancelled() {
            Some(CancelReason::Shutdown)
        } else {
            None
        }
    }

    /// Arms the alarm for the ladder's SIGKILL deadline (disarms it when there is none): at
    /// that instant the timer thread kills the tree itself, however busy the runtime is, unless
    /// the worker has sent something not read yet (it could be the `Cancelled` that answers in
    /// time: then this task decides, as it does everywhere without an alarm).
    fn arm_alarm(&mut self) {
        let due = self.conn.kill_deadline();
        if due == self.alarm.armed() {
            return;
        }
        let Some(at) = due else {
            self.alarm.disarm();
            return;
        };
        let Some(switch) = self.tree.kill_switch() else {
            self.alarm.disarm();
            return;
        };
        let probe = match &self.channel {
            Some(channel) => match channel.unread_probe() {
                Some(probe) => Some(probe),
                // Whether the answer came could not be asked from elsewhere: no alarm.
                None => {
                    self.alarm.disarm();
                    return;
                }
            },
            None => None,
        };
        self.alarm.arm(at, move || {
            if probe.as_ref().is_some_and(UnreadProbe::has_unread) {
                return false;
            }
            switch.fire()
        });
    }

    /// If the alarm has SIGKILLed the tree and the connection does not know it yet, tells it
    /// now, before whatever woke this task: the deadline passed first.
    fn sync_alarm(&mut self) {
        if self.alarm.fired_at().is_some() && self.conn.kill_deadline().is_some() {
            self.conn.handle_timeout(Instant::now());
        }
    }

    async fn start(&mut self, payload: Vec<u8>, options: JobOptions, reply: Reply) {
        // What a reused worker wrote before this job is not this job's. A plain program's one
        // job is its whole life: what it wrote before `run` was called is its.
        if self.config.protocol && self.output.is_capturing() {
            self.output.start_job(self.config.drain_timeout).await;
        }
        // A caller that went away while its job waited behind another: the job never starts.
        let cancelled = if reply.is_closed() || options.token.is_cancelled() {
            Some(CancelReason::Requested)
        } else if self.config.shutdown.is_cancelled() {
            Some(CancelReason::Shutdown)
        } else {
            None
        };
        let start = JobStart {
            payload,
            timeout: options.timeout,
            deadlines: options.deadlines,
            no_progress: options.no_progress_timeout,
            extension: options.timeout_extension,
            cancelled,
            wants_progress: options.on_progress.is_some(),
        };
        let id = self.conn.handle_start(Instant::now(), start);
        self.jobs.push(Current {
            id,
            reply: Some(reply),
            cancelled: Box::pin(options.token.clone().cancelled_owned()),
            token: options.token,
            progress: options.on_progress.map(ProgressSink::new),
        });
    }

    fn on_event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Message(msg) => {
                self.conn.handle_message(now, msg);
                let mid_frame = self.channel.as_ref().is_some_and(Channel::is_mid_frame);
                self.conn.handle_partial(now, mid_frame);
            }
            Event::Partial => self.conn.handle_partial(now, true),
            Event::Invalid(e) => self.conn.handle_invalid(now, e),
            Event::Eof => self.conn.handle_eof(now),
        }
    }

    /// Performs every action the machine has queued, in order.
    async fn perform_all(&mut self) {
        while let Some(action) = self.conn.poll_action() {
            self.perform(action).await;
        }
    }

    async fn perform(&mut self, action: Action) {
        let span = &self.span;
        match action {
            Action::Send(msg) => {
                let Some(channel) = &mut self.channel else {
                    return;
                };
                match channel.send(&msg) {
                    Ok(()) => tracing::debug!(parent: span, kind = msg.kind(), "sent"),
                    Err(e) if let SupervisorMessage::StartJob { job, .. } = msg => {
                        let (len, max) = match e {
                            EncodeError::TooLarge { len, max } => (len, max),
                            _ => (0, self.config.max_frame_len),
                        };
                        self.conn.handle_start_rejected(job, len, max);
                    }
                    Err(e) => tracing::warn!(parent: span, error = %e, "cannot encode a message"),
                }
            }
            Action::Signal => {
                if let Err(e) = self.tree.signal_tree(self.config.polite_signal) {
                    tracing::warn!(parent: span, error = %e, "polite signal failed");
                }
                tracing::info!(parent: span, signal = self.config.polite_signal, "polite signal sent");
            }
            Action::Continue => {
                let _ = self.tree.signal_tree(libc::SIGCONT);
            }
            Action::Kill => {
                // Also after the alarm's SIGKILL: this one sweeps for members that left the
                // process group, which the alarm does not.
                if let Err(e) = self.tree.kill_tree() {
                    tracing::warn!(parent: span, error = %e, "SIGKILL to the tree failed");
                }
                match self.alarm.fired_at() {
                    Some(at) => {
                        tracing::info!(parent: span, "SIGKILL sent by the timer thread at its deadline");
                        self.conn.kill_sent_at(at);
                    }
                    None => tracing::info!(parent: span, "SIGKILL sent"),
                }
                self.alarm.disarm();
            }
            Action::Close => self.channel = None,
            Action::Reap => {
                self.alarm.disarm();
                let status = self.tree.settle(self.config.deadlines.reap_timeout).await;
                tracing::debug!(parent: span, ?status, "worker reaped");
                // The tree is gone: what it wrote is read to EOF, bounded (a descendant that
                // escaped it may hold the pipes open).
                if self.output.is_capturing() {
                    self.output.finish(self.config.drain_timeout).await;
                }
                // Read after the reap: the final counters (OOM kills, pids reached).
                let limits = self.tree.limits();
                self.conn.handle_reaped(Instant::now(), status, limits);
            }
            Action::Progress(progress) => {
                if let Some(sink) = self
                    .jobs
                    .iter_mut()
                    .find(|j| j.id == progress.job)
                    .and_then(|c| c.progress.as_mut())
                {
                    sink.push(progress);
                }
            }
            Action::Reply(id, result) => {
                let mut result = *result;
                match &mut result {
                    Ok(report) => {
                        report.escaped = self.tree.escaped();
                        // Fresh counters for a job that ended without a reap; after one, the
                        // same final report the connection decided with.
                        report.limits = self.tree.limits();
                        // Read after what the worker wrote before its result.
                        report.output_tail = self.output.tail(self.config.drain_timeout).await;
                        tracing::info!(parent: span, job = %report.job, outcome = report.outcome.name(), stage = ?report.stage, reason = ?report.reason, violation = ?report.violation, "job ended");
                    }
                    Err(e) => tracing::info!(parent: span, error = %e, "job refused"),
                }
                // The job is over for its caller: its progress thread ends too.
                if let Some(i) = self.jobs.iter().position(|j| j.id == id)
                    && let Some(reply) = self.jobs.remove(i).reply
                {
                    let _ = reply.send(result);
                }
            }
            Action::ShutdownDone(status) => {
                if status.is_none() {
                    tracing::warn!(parent: span, "worker still alive after SIGKILL (kill pending)");
                }
                if let Some(reply) = self.shutdown_reply.take() {
                    let _ = reply.send(status);
                }
            }
        }
    }

    /// Performs a control request; `None` (every handle dropped) resumes a suspended tree,
    /// since nobody is left to do it.
    async fn on_control(&mut self, control: Option<Control>) {
        match control {
            None => {
                self.control_open = false;
                let _ = self.resume_tree();
            }
            Some(Control::Suspend { timeout, reply }) => {
                if self.suspended {
                    let _ = reply.send(Ok(()));
                    return;
                }
                self.suspended = true;
                self.conn.handle_pause(Instant::now());
                // The ladder's clock stands still from here: so does its SIGKILL.
                self.alarm.disarm();
                let result = match self.tree.suspend() {
                    Err(e) => Err(JobControlError::Tree(e)),
                    Ok(()) if self.tree.wait_suspended(timeout).await => Ok(()),
                    Ok(()) => Err(JobControlError::NotStopped { timeout }),
                };
                tracing::info!(parent: &self.span, ok = result.is_ok(), "worker suspended");
                let _ = reply.send(result);
            }
            Some(Control::Resume { reply }) => {
                let result = self.resume_tree();
                let _ = reply.send(result);
            }
            Some(Control::Memory { reply }) => {
                let _ = reply.send(self.tree.memory_current());
            }
        }
    }

    /// Continues a suspended tree and the machine's clock. Nothing to do unless suspended.
    fn resume_tree(&mut self) -> Result<(), JobControlError> {
        if !std::mem::take(&mut self.suspended) {
            return Ok(());
        }
        let result = self.tree.resume().map_err(JobControlError::Tree);
        self.conn.handle_resume(Instant::now());
        tracing::info!(parent: &self.span, "worker resumed");
        result
    }
}
