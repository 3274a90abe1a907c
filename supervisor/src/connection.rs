//! One worker connection as a sans-IO state machine: the job it runs, every deadline it has,
//! and the decisions the crossing, EOF, liveness and shutdown rules depend on.
//!
//! [`Connection`] is to the worker's actor what quinn-proto's `Connection` is to quinn's
//! endpoint driver. It reads no clock and does no I/O: facts come in through `handle_*` calls
//! with the `now` they were observed at (a decoded message, a partial frame, EOF, the
//! process's exit and reap, a caller's cancel or kill, a shutdown, a pause), and what to do
//! comes out of [`Connection::poll_action`] (a frame to send, a signal, a reap, progress for
//! the caller, the job's report). [`Connection::poll_timeout`] is the one deadline the actor
//! sleeps until; [`Connection::handle_timeout`] fires what is due.
//!
//! # Timers
//!
//! One [`TimerTable`] holds the job's timeout, the partial frame's stall bound
//! (`frame_timeout`), liveness (`unresponsive_after`), the hang-up bound (the worker closed
//! its channel but did not exit) and the drain bound (it exited but the channel has not reached
//! EOF); the ladder's stages live in the job's [`Escalation`]. `poll_timeout` is the earlier
//! of the two. A pause (the tree is suspended) stops both; the resume moves every deadline by
//! the time paused. A deadline too far away to represent never fires.
//!
//! # Decisions
//!
//! - **Outcome.** A result (terminal message) before any signal ends the job and the worker
//!   is reused: the outcome is decided then, without waiting for an exit that will not come.
//!   Otherwise the outcome is decided once the process has exited, the channel is drained to
//!   EOF (or `drain_timeout` passed) and the process is reaped, so a result written just
//!   before an exit counts. A kill that is still pending `reap_timeout` after SIGKILL reports
//!   at once (`killed`, no exit status) and keeps reaping.
//! - **Violations.** An undecodable frame, a partial frame stalled past `frame_timeout`, a
//!   second hello, a message for a job that is not running, and a `Cancelled` the supervisor
//!   never asked for (no `Cancel` sent, no polite signal) get the worker SIGKILLed at once
//!   and named in the report (idle: in [`RunError::WorkerGone`]).
//! - **Liveness.** With `unresponsive_after`, any complete frame from the worker is a sign
//!   of life. Nothing for that long: a running job is cancelled with reason `unresponsive`
//!   and the ladder runs from there; an idle worker is killed
//!   ([`Violation::Unresponsive`]).
//! - **Before start.** A job whose caller already cancelled (its token, the shutdown token, a
//!   dropped `run` future, a zero timeout) is never sent to the worker.
//! - **Queued jobs** (protocol version 2, [`Settings::queue_depth`] above 1). While a job runs
//!   that nothing has doomed or asked to stop, more jobs go on the wire behind it, up to the
//!   depth; each has its own [`Action::Reply`]. None of a queued job's deadlines runs: it
//!   becomes the running job, with its timeout, progress bound and ladder armed, in the turn
//!   that answers the job before it (the worker starts it at the same point of the stream).
//!   Its caller's cancel sends its `Cancel` at once ([`Connection::handle_cancel_queued`]):
//!   the worker answers `Cancelled` before its turn (`cancelled`, not started), or, if it had
//!   started, the ladder runs from its turn without a second `Cancel`. A message naming a
//!   queued job otherwise is a violation. Once the worker is doomed (signalled, killed, exited,
//!   hung up, in violation) the queued jobs are answered at once: not started, `cancelled` if
//!   their cancel had been asked for, else [`RunError::WorkerGone`].

mod timer;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use warden_protocol::{
    CancelReason, DecodeError, JobId, MAX_PROGRESS_TEXT, SupervisorMessage, WorkerMessage,
    truncate_str,
};

use crate::error::RunError;
use crate::escalation::{self, Deadlines, Escalation, Stage};
use crate::outcome::{Facts, JobReport, Trace, Violation, WorkerResult, classify, deciding_limit};
use crate::process::{ContainmentMode, ExitStatus, LimitReport};
use crate::worker::{Progress, TimeoutExtension};
pub(crate) use timer::{Timer, TimerTable};

/// The settings a connection decides with (from the worker's configuration).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The worker speaks the protocol (else: a plain program, one job, no channel).
    pub(crate) protocol: bool,
    /// The ladder's deadlines for jobs that do not override them, and for shutdown.
    pub(crate) deadlines: Deadlines,
    /// How long a partial frame may wait for the rest.
    pub(crate) frame_timeout: Duration,
    /// The hang-up and drain bound.
    pub(crate) drain_timeout: Duration,
    /// How long the worker may stay silent; `None`: not checked.
    pub(crate) unresponsive_after: Option<Duration>,
    /// How the tree is contained, for reports.
    pub(crate) containment: ContainmentMode,
    /// How many jobs may be on the wire at once: the running one and those queued behind it
    /// (protocol version 2, PROTOCOL.md section 5, "Queued jobs"). 1: none is queued.
    pub(crate) queue_depth: usize,
}

/// A job to start.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobStart {
    pub(crate) payload: Vec<u8>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) deadlines: Option<Deadlines>,
    /// Cancel with reason `no_progress` after this long without a `Progress`.
    pub(crate) no_progress: Option<Duration>,
    /// Progress extends the timeout.
    pub(crate) extension: Option<TimeoutExtension>,
    /// Why the job is cancelled already (its token, the shutdown token, a caller that went
    /// away while it waited), if it is: a protocol job is then never sent.
    pub(crate) cancelled: Option<CancelReason>,
    /// The caller wants progress ([`Action::Progress`]).
    pub(crate) wants_progress: bool,
}

/// What the actor must do, in order.
#[derive(Debug)]
pub(crate) enum Action {
    /// Write this frame to the worker.
    Send(SupervisorMessage),
    /// The polite signal to the tree.
    Signal,
    /// SIGCONT to the tree (after the polite signal; deferred while suspended).
    Continue,
    /// SIGKILL the tree.
    Kill,
    /// Stop reading and drop the channel: the worker sees EOF.
    Close,
    /// The process exited and the channel is drained: kill what is left of the tree, reap,
    /// then call [`Connection::handle_reaped`] with the tree's final limit report.
    Reap,
    /// Progress for the running job's caller (never blocks the actor: see the actor).
    Progress(Progress),
    /// The answer to the [`Connection::handle_start`] that returned this job id: exactly one
    /// per call, not necessarily in the order of the calls (a queued job cancelled before its
    /// turn is answered before the job it waited behind).
    Reply(JobId, Box<Result<JobReport, RunError>>),
    /// The answer to [`Connection::handle_shutdown`]: how the worker ended (`None`: not
    /// reaped, the kill is pending).
    ShutdownDone(Option<ExitStatus>),
}

/// A message for nobody: a second hello, or a job message for a job that is not running.
fn unexpected(msg: &WorkerMessage) -> Violation {
    match msg {
        WorkerMessage::Hello { .. } => Violation::RepeatedHello,
        _ => Violation::NotRunning {
            kind: msg.kind(),
            job: msg.job().unwrap_or(JobId(0)),
        },
    }
}

/// The running job.
#[derive(Debug)]
struct Job {
    id: JobId,
    started: Instant,
    esc: Escalation,
    result: Option<WorkerResult>,
    violation: Option<Violation>,
    /// The `Cancel` frame was handed out: a `Cancelled` acknowledges it.
    cancel_sent: bool,
    /// That `Cancel` went out while the job was queued: the ladder must not send another.
    cancel_on_wire: bool,
    reaped_at: Option<Instant>,
    /// The report went out (kill pending): the job still waits for the reap.
    replied: bool,
    wants_progress: bool,
    /// The no-progress bound, re-armed by each `Progress`.
    no_progress: Option<Duration>,
    /// How far each `Progress` extends the timeout, and the instant it never passes (moved
    /// by a pause like the timers).
    extension: Option<(Duration, Instant)>,
    /// The job timeout's instant as last armed or extended (moved by a pause like the timers).
    deadline: Option<Instant>,
    /// When a `Cancelled` came that nobody here had asked for yet ([`Timer::Stray`]).
    stray_at: Option<Instant>,
    /// The cancel from here that such a `Cancelled` was taken to acknowledge, and when.
    attributed: Option<(CancelReason, Instant)>,
    /// Nobody here asked in time, and the process had exited on its own: it ended itself.
    stray_exit: bool,
}

impl Job {
    /// A `Cancelled` nobody here asked for waits for its attribution ([`Timer::Stray`]).
    fn held(&self) -> bool {
        self.stray_at.is_some() && self.result.is_none() && self.violation.is_none()
    }
}

/// A job sent behind the running one (protocol version 2). None of its deadlines runs yet:
/// they start when it becomes the running job, as the job before it ends.
#[derive(Debug)]
struct Queued {
    id: JobId,
    /// Its settings (the payload is on the wire already).
    start: JobStart,
    /// The `Cancel` sent for it, if any, and when it was asked for.
    cancel: Option<(CancelReason, Instant)>,
}

#[derive(Debug)]
enum Phase {
    /// No job: the worker waits for one (or is gone, see `gone`).
    Idle,
    Job(Box<Job>),
    /// `Shutdown` sent (or the polite signal), the ladder runs.
    Stopping(Box<Escalation>),
    /// The shutdown answered; only the reap may still come.
    Stopped,
}

/// One worker connection: feed it facts and time, take actions out.
#[derive(Debug)]
pub(crate) struct Connection {
    settings: Settings,
    timers: TimerTable,
    actions: VecDeque<Action>,
    phase: Phase,
    /// Jobs on the wire behind the running one, oldest first (never with `Phase::Idle`).
    queued: VecDeque<Queued>,
    next_job: u64,
    /// The channel exists (protocol, not closed by us).
    channel: bool,
    /// The worker closed its end (or the stream broke).
    eof: bool,
    exited: Option<Instant>,
    exit: Option<ExitStatus>,
    reap_asked: bool,
    /// Reaped, with the status (`Some(None)`: status unknown).
    gone: Option<Option<ExitStatus>>,
    paused_at: Option<Instant>,
    /// The polite signal went out while suspended: SIGCONT on the resume.
    cont_owed: bool,
    kill_seen: bool,
    /// SIGKILL went to the live tree.
    kill_sent: bool,
    killed_idle: bool,
    idle_violation: Option<Violation>,
    plain_run_taken: bool,
    /// The tree's limit report as read at the reap (empty before): an exit's limit facts
    /// (an OOM kill, `SIGXCPU`) are decided from it. The actor replaces a report's `limits`
    /// with the tree's reading at reply time, which after the reap is this same snapshot.
    limits: LimitReport,
}

impl Connection {
    /// A connection whose handshake completed at `now` (a plain program: spawned at `now`).
    pub(crate) fn new(now: Instant, settings: Settings) -> Self {
        let mut timers = TimerTable::default();
        if settings.protocol
            && let Some(after) = settings.unresponsive_after
        {
            timers.arm(Timer::Liveness, now, after);
        }
        Connection {
            channel: settings.protocol,
            settings,
            timers,
            actions: VecDeque::new(),
            phase: Phase::Idle,
            queued: VecDeque::new(),
            next_job: 1,
            eof: false,
            exited: None,
            exit: None,
            reap_asked: false,
            gone: None,
            paused_at: None,
            cont_owed: false,
            kill_seen: false,
            kill_sent: false,
            killed_idle: false,
            idle_violation: None,
            plain_run_taken: false,
            limits: LimitReport::default(),
        }
    }

    // ---- queries the actor's loop is built from ----

    /// The next action; `None` when there is nothing to do now.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next (`None`: nothing pending,
    /// or paused).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let ladder = match &self.phase {
            Phase::Job(job) => job.esc.poll_timeout(),
            Phase::Stopping(esc) => esc.poll_timeout(),
            Phase::Idle | Phase::Stopped => None,
        };
        match (self.timers.next(), ladder) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the ladder's SIGKILL is due, if the driver may send it from a timer thread of its
    /// own (see [`Escalation::kill_deadline`](crate::escalation::Escalation::kill_deadline)).
    pub(crate) fn kill_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Job(job) => job.esc.kill_deadline(),
            Phase::Stopping(esc) => esc.kill_deadline(),
            Phase::Idle | Phase::Stopped => None,
        }
    }

    /// The SIGKILL of the last [`Action::Kill`] was in fact sent at `at`, by the driver's
    /// timer thread: the report's trace says so.
    pub(crate) fn kill_sent_at(&mut self, at: Instant) {
        match &mut self.phase {
            Phase::Job(job) => job.esc.kill_sent_at(at),
            Phase::Stopping(esc) => esc.kill_sent_at(at),
            Phase::Idle | Phase::Stopped => {}
        }
    }

    /// The channel should be read.
    pub(crate) fn is_reading(&self) -> bool {
        self.channel && !self.eof
    }

    /// The process's exit has not been observed yet.
    pub(crate) fn awaits_exit(&self) -> bool {
        self.exited.is_none() && self.gone.is_none()
    }

    /// The actor may take the next request (`run` or `shutdown`): no job or shutdown runs.
    pub(crate) fn takes_requests(&self) -> bool {
        matches!(self.phase, Phase::Idle | Phase::Stopped)
    }

    /// The actor may start the next job: nothing runs, or (queueing) one runs that nothing
    /// has doomed yet and the queue behind it has room. A job whose cancel is under way gets
    /// nothing queued behind it: its ladder may end the worker.
    pub(crate) fn takes_jobs(&self) -> bool {
        let healthy = match &self.phase {
            Phase::Job(job) => {
                !job.held()
                    && job.result.is_none()
                    && job.esc.reason().is_none()
                    && job.esc.stage().is_none()
                    && job.violation.is_none()
            }
            _ => false,
        };
        self.takes_requests()
            || (healthy
                && self.settings.protocol
                && self.queued.len() + 1 < self.settings.queue_depth
                && !self.doomed())
    }

    /// Job `id` waits behind the running one and no cancel was sent for it yet.
    pub(crate) fn accepts_cancel_queued(&self, id: JobId) -> bool {
        self.queued.iter().any(|q| q.id == id && q.cancel.is_none())
    }

    /// The running job can still be cancelled (so its caller's token matters).
    pub(crate) fn accepts_cancel(&self) -> bool {
        match &self.phase {
            Phase::Job(job) => {
                job.held()
                    || (job.esc.reason().is_none()
                        && job.esc.stage().is_none()
                        && !job.esc.is_finished()
                        && job.violation.is_none())
            }
            _ => false,
        }
    }

    /// The running job, if one runs.
    pub(crate) fn running_job(&self) -> Option<JobId> {
        match &self.phase {
            Phase::Job(job) => Some(job.id),
            _ => None,
        }
    }

    /// The kill token was heard (it matters only once).
    pub(crate) fn kill_seen(&self) -> bool {
        self.kill_seen
    }

    /// The shutdown was answered.
    pub(crate) fn is_stopped(&self) -> bool {
        matches!(self.phase, Phase::Stopped)
    }

    // ---- inputs ----

    /// Starts a job (the actor calls it only when [`takes_jobs`](Self::takes_jobs)): it runs
    /// now, or, while another runs, is queued behind it on the wire. Exactly one
    /// [`Action::Reply`] with the returned id follows, now or when the job ends.
    pub(crate) fn handle_start(&mut self, now: Instant, mut start: JobStart) -> JobId {
        let id = JobId(self.next_job);
        self.next_job += 1;
        let protocol = self.settings.protocol;
        if !protocol && !start.payload.is_empty() {
            self.reply(id, Err(RunError::PayloadForPlainProgram));
            return id;
        }
        if protocol && matches!(self.phase, Phase::Job(_)) {
            self.enqueue(now, id, start);
            return id;
        }
        let payload = std::mem::take(&mut start.payload);
        if self.refuses(now, id, &start) {
            return id;
        }
        if protocol {
            self.send_start(id, &start, payload);
        } else {
            self.plain_run_taken = true;
        }
        self.begin(now, id, start, None);
        self.pump(now);
        id
    }

    /// A job behind the running one: on the wire now, its deadlines armed at its turn.
    fn enqueue(&mut self, now: Instant, id: JobId, mut start: JobStart) {
        let payload = std::mem::take(&mut start.payload);
        if self.refuses(now, id, &start) {
            return;
        }
        self.send_start(id, &start, payload);
        self.queued.push_back(Queued {
            id,
            start,
            cancel: None,
        });
    }

    fn send_start(&mut self, id: JobId, start: &JobStart, payload: Vec<u8>) {
        self.actions
            .push_back(Action::Send(SupervisorMessage::StartJob {
                job: id,
                deadline_ms: start
                    .timeout
                    .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                payload,
            }));
    }

    /// Answers a job that must not start (the worker is gone, or its caller cancelled it
    /// already); `false` if it may.
    fn refuses(&mut self, now: Instant, id: JobId, start: &JobStart) -> bool {
        let protocol = self.settings.protocol;
        if !protocol && !self.plain_run_taken && self.gone.is_some() {
            // A plain program's run is its job: one that ended before the caller asked for
            // it still has its report to give.
            self.plain_run_taken = true;
            let mut job = self.new_job(id, start, now);
            if self.killed_idle {
                job.esc.handle_kill(now);
                while job.esc.poll_action().is_some() {}
            }
            job.esc.handle_exit(now);
            job.reaped_at = Some(now);
            let report = self.report(&job, now);
            self.reply(id, Ok(report));
            return true;
        }
        if self.gone.is_some()
            || (protocol && !self.is_reading())
            || (!protocol && self.plain_run_taken)
            || matches!(self.phase, Phase::Stopped)
        {
            // The worker broke the protocol, hung up, or is gone: it will never answer a job,
            // and starting one would report its death as the job's outcome.
            let error = self.gone_error();
            self.reply(id, Err(error));
            return true;
        }
        let early = start.cancelled.or_else(|| {
            start
                .timeout
                .is_some_and(|t| t.is_zero())
                .then_some(CancelReason::Timeout)
        });
        if protocol && let Some(reason) = early {
            let mut report = JobReport::not_started(
                id,
                reason,
                self.settings.containment,
                self.limits.clone(),
                now,
            );
            report.trace.deadline = start.timeout;
            self.reply(id, Ok(report));
            return true;
        }
        false
    }

    /// A job record, started at `now`, with no deadline armed yet.
    fn new_job(&self, id: JobId, start: &JobStart, now: Instant) -> Job {
        let protocol = self.settings.protocol;
        let deadlines = start.deadlines.unwrap_or(self.settings.deadlines);
        let mut esc = Escalation::new(deadlines, protocol);
        if let Some(at) = self.paused_at {
            esc.pause(at);
        }
        Job {
            id,
            started: now,
            esc,
            result: None,
            violation: None,
            cancel_sent: false,
            cancel_on_wire: false,
            reaped_at: None,
            replied: false,
            wants_progress: start.wants_progress,
            no_progress: start.no_progress.filter(|_| protocol),
            extension: None,
            deadline: None,
            stray_at: None,
            attributed: None,
            stray_exit: false,
        }
    }

    /// Makes `id` the running job at `now` and arms its deadlines; `cancel`: the `Cancel` that
    /// went out for it while it was queued (its ladder runs from here, without a second one).
    fn begin(
        &mut self,
        now: Instant,
        id: JobId,
        start: JobStart,
        cancel: Option<(CancelReason, Instant)>,
    ) {
        let mut job = self.new_job(id, &start, now);
        if let Some(timeout) = start.timeout {
            self.timers.arm(Timer::JobTimeout, now, timeout);
            job.deadline = self.timers.deadline(Timer::JobTimeout);
            if let Some(ext) = start.extension {
                job.extension = self
                    .timers
                    .base(now)
                    .checked_add(ext.cap)
                    .map(|cap| (ext.by, cap));
            }
        }
        if let Some(after) = job.no_progress {
            self.timers.arm(Timer::NoProgress, now, after);
        }
        if let Some((reason, _)) = cancel {
            job.cancel_on_wire = true;
            job.cancel_sent = true;
            job.esc.handle_cancel(now, reason);
        }
        if self.kill_seen {
            job.esc.handle_kill(now);
        }
        if self.exited.is_some() {
            // A plain program that exited but is not reaped yet: its run is over.
            job.esc.handle_exit(now);
        }
        self.phase = Phase::Job(Box::new(job));
    }

    /// A job that waited behind another and was cancelled before its turn: it never starts.
    /// Returns its report (it gets a job id of its own, as if it had been started).
    pub(crate) fn not_started(&mut self, now: Instant, reason: CancelReason) -> JobReport {
        let id = JobId(self.next_job);
        self.next_job += 1;
        JobReport::not_started(
            id,
            reason,
            self.settings.containment,
            self.limits.clone(),
            now,
        )
    }

    /// The `StartJob` frame of job `id` could not be encoded (too large): the job never
    /// started.
    pub(crate) fn handle_start_rejected(&mut self, id: JobId, len: usize, max: u32) {
        let error = RunError::PayloadTooLarge { len, max };
        if let Some(i) = self.queued.iter().position(|q| q.id == id) {
            self.queued.remove(i);
            self.reply(id, Err(error));
            return;
        }
        if matches!(&self.phase, Phase::Job(job) if job.id == id) {
            self.phase = Phase::Idle;
            self.timers.stop(Timer::JobTimeout);
            self.timers.stop(Timer::NoProgress);
            self.actions.clear();
            self.reply(id, Err(error));
        }
    }

    /// A whole message arrived (any frame is a sign of life).
    pub(crate) fn handle_message(&mut self, now: Instant, msg: WorkerMessage) {
        // Progress moves the job's own deadlines only while a cancel can still come of them.
        let accepting = self.accepts_cancel();
        // A frame completed: bytes after it belong to a new frame (`handle_partial`).
        self.timers.stop(Timer::Frame);
        if let Some(after) = self.settings.unresponsive_after
            && self.timers.is_armed(Timer::Liveness)
        {
            self.timers.arm(Timer::Liveness, now, after);
        }
        if let WorkerMessage::Cancelled { job: id } = &msg
            && let Some(i) = self
                .queued
                .iter()
                .position(|q| q.id == *id && q.cancel.is_some())
        {
            // A queued job's cancel, answered before its turn: it never ran.
            if let Some(q) = self.queued.remove(i) {
                self.reply_queued(now, q);
            }
            self.pump(now);
            return;
        }
        match &mut self.phase {
            Phase::Stopping(_) | Phase::Stopped => {} // what an exiting worker says no longer matters
            Phase::Idle => match msg {
                WorkerMessage::Heartbeat => {}
                other => self.violation(now, unexpected(&other)),
            },
            Phase::Job(job) => {
                let running =
                    job.result.is_none() && job.violation.is_none() && job.stray_at.is_none();
                let ours = msg.job() == Some(job.id) && running;
                match msg {
                    WorkerMessage::Heartbeat => {}
                    WorkerMessage::Progress {
                        job: id,
                        fraction,
                        text,
                    } if ours => {
                        if let Some(after) = job.no_progress
                            && accepting
                        {
                            self.timers.arm(Timer::NoProgress, now, after);
                        }
                        if let Some((by, cap)) = job.extension
                            && accepting
                            && let Some(current) = self.timers.deadline(Timer::JobTimeout)
                        {
                            // At least `by` from now, never past the cap, never earlier.
                            let wanted = self.timers.base(now).checked_add(by).unwrap_or(cap);
                            let at = current.max(wanted.min(cap));
                            self.timers.arm_at(Timer::JobTimeout, at);
                            job.deadline = Some(at);
                        }
                        if job.wants_progress {
                            let fraction = fraction
                                .filter(|f| f.is_finite())
                                .map(|f| f.clamp(0.0, 1.0));
                            let text = text.map(|t| truncate_str(&t, MAX_PROGRESS_TEXT).to_owned());
                            self.actions.push_back(Action::Progress(Progress {
                                job: id,
                                fraction,
                                text,
                            }));
                        }
                    }
                    WorkerMessage::Completed { output, .. } if ours => {
                        self.result(now, WorkerResult::Completed(output));
                    }
                    WorkerMessage::Failed { error, .. } if ours => {
                        self.result(now, WorkerResult::Failed(error));
                    }
                    // It acknowledges a cancel: only one that was asked for (a `Cancel`, or
                    // the polite signal the SDK turns into one) is an acknowledgement.
                    WorkerMessage::Cancelled { .. }
                        if ours && (job.cancel_sent || job.esc.trace().signal_sent.is_some()) =>
                    {
                        self.result(now, WorkerResult::Cancelled);
                    }
                    // Nobody here asked, yet. A stop signal that reaches the worker and warden
                    // at once (a batch system signals every process of its job) can have the
                    // worker's answer arrive before warden's own cancel: a cancel from here
                    // within the drain bound is what it acknowledges (`cancel_running`).
                    // Nothing more may come for the job meanwhile.
                    WorkerMessage::Cancelled { .. } if ours => {
                        job.stray_at = Some(now);
                        self.timers
                            .arm(Timer::Stray, now, self.settings.drain_timeout);
                    }
                    other => self.violation(now, unexpected(&other)),
                }
            }
        }
        self.pump(now);
    }

    /// Whether the channel holds part of a frame, after a read or a message: the first byte
    /// of a frame arms the stall bound, a completed frame stops it.
    pub(crate) fn handle_partial(&mut self, now: Instant, mid_frame: bool) {
        if mid_frame && self.is_reading() {
            self.timers
                .arm_once(Timer::Frame, now, self.settings.frame_timeout);
        } else {
            self.timers.stop(Timer::Frame);
        }
    }

    /// Bytes that are not a valid frame.
    pub(crate) fn handle_invalid(&mut self, now: Instant, error: DecodeError) {
        self.violation(now, Violation::Frame(error));
        self.pump(now);
    }

    /// The worker closed its end of the channel.
    pub(crate) fn handle_eof(&mut self, now: Instant) {
        if self.eof {
            return;
        }
        self.eof = true;
        self.timers.stop(Timer::Frame);
        self.timers.stop(Timer::Liveness);
        if self.exited.is_some() {
            self.timers.stop(Timer::Drain);
            self.ask_reap();
        } else if matches!(self.phase, Phase::Idle | Phase::Job(_)) {
            // An exiting worker closes its channel too; the bound matters only if it stays.
            self.timers
                .arm(Timer::Hangup, now, self.settings.drain_timeout);
        }
        self.pump(now);
    }

    /// The process exited (observed, not reaped); `status` if known.
    pub(crate) fn handle_exit(&mut self, now: Instant, status: Option<ExitStatus>) {
        if self.exited.is_some() || self.gone.is_some() {
            return;
        }
        self.exited = Some(now);
        self.exit = status;
        self.timers.stop(Timer::Hangup);
        self.timers.stop(Timer::Liveness);
        self.timers.stop(Timer::Frame);
        match &mut self.phase {
            Phase::Job(job) => {
                job.esc.handle_exit(now);
                // Leftovers die now, while the exited leader still pins the group id; this
                // also closes any copy of the channel they hold.
                self.actions.push_back(Action::Kill);
                if self.is_reading() {
                    // A result written just before the exit may still be in the channel.
                    self.timers
                        .arm(Timer::Drain, now, self.settings.drain_timeout);
                } else {
                    self.ask_reap();
                }
            }
            Phase::Stopping(esc) => {
                esc.handle_exit(now);
                self.ask_reap();
            }
            Phase::Idle | Phase::Stopped => self.ask_reap(),
        }
        self.pump(now);
    }

    /// The process is reaped (after [`Action::Reap`]), with its status if known and its
    /// tree's limit report as read then: the report decides with it (an OOM kill or `SIGXCPU`
    /// under a limit is `killed` with the limit named).
    pub(crate) fn handle_reaped(
        &mut self,
        now: Instant,
        status: Option<ExitStatus>,
        limits: LimitReport,
    ) {
        if self.gone.is_some() {
            return;
        }
        self.limits = limits;
        let status = status.or(self.exit);
        self.exit = status;
        self.gone = Some(status);
        self.exited.get_or_insert(now);
        // Nothing is sent to a reaped process: its pid may be anyone's now.
        self.cont_owed = false;
        if self.channel {
            self.channel = false;
            self.actions.push_back(Action::Close);
        }
        for timer in [Timer::Drain, Timer::Hangup, Timer::Frame, Timer::Liveness] {
            self.timers.stop(timer);
        }
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Job(mut job) => {
                self.timers.stop(Timer::JobTimeout);
                self.timers.stop(Timer::NoProgress);
                job.reaped_at = Some(now);
                if job.held() {
                    // The report waits for the attribution (`Timer::Stray`).
                    self.phase = Phase::Job(job);
                } else if !job.replied {
                    let report = self.report(&job, now);
                    self.reply(job.id, Ok(report));
                }
            }
            Phase::Stopping(_) => {
                self.phase = Phase::Stopped;
                self.actions.push_back(Action::ShutdownDone(status));
            }
            Phase::Stopped => self.phase = Phase::Stopped,
            Phase::Idle => {}
        }
        self.settle_queue(now);
    }

    /// The caller cancelled the running job (its token, its dropped future), or the shutdown
    /// token did. Ignored unless [`accepts_cancel`](Self::accepts_cancel).
    pub(crate) fn handle_cancel(&mut self, now: Instant, reason: CancelReason) {
        self.cancel_running(now, reason);
        self.pump(now);
    }

    /// The caller cancelled job `id`, which waits behind the running one: its `Cancel` goes
    /// out now, and the worker answers it before its turn (or, if it started meanwhile, as a
    /// running job). Ignored unless [`accepts_cancel_queued`](Self::accepts_cancel_queued).
    pub(crate) fn handle_cancel_queued(&mut self, now: Instant, id: JobId, reason: CancelReason) {
        let channel = self.channel;
        let Some(q) = self
            .queued
            .iter_mut()
            .find(|q| q.id == id && q.cancel.is_none())
        else {
            return;
        };
        q.cancel = Some((reason, now));
        if channel {
            self.actions
                .push_back(Action::Send(SupervisorMessage::Cancel {
                    job: id,
                    reason: reason.on_wire_v1(),
                }));
        }
    }

    /// Some job queued behind the running one has no cancel sent for it yet.
    pub(crate) fn has_uncancelled_queued(&self) -> bool {
        self.queued.iter().any(|q| q.cancel.is_none())
    }

    /// Every job queued behind the running one that no cancel was sent for yet (the shutdown
    /// token cancels them all).
    pub(crate) fn queued_uncancelled(&self) -> Vec<JobId> {
        self.queued
            .iter()
            .filter(|q| q.cancel.is_none())
            .map(|q| q.id)
            .collect()
    }

    /// SIGKILL now, job or no job (the kill token).
    pub(crate) fn handle_kill(&mut self, now: Instant) {
        if std::mem::replace(&mut self.kill_seen, true) {
            return;
        }
        match &mut self.phase {
            Phase::Job(job) => job.esc.handle_kill(now),
            Phase::Stopping(esc) => esc.handle_kill(now),
            Phase::Idle | Phase::Stopped => {
                if self.gone.is_none() {
                    self.killed_idle = true;
                    self.kill_idle();
                }
            }
        }
        self.pump(now);
    }

    /// Stops the worker (called only when [`takes_requests`](Self::takes_requests)): a
    /// `Shutdown` frame (or the polite signal, without a live channel), then the ladder. One
    /// [`Action::ShutdownDone`] follows.
    pub(crate) fn handle_shutdown(&mut self, now: Instant) {
        if let Some(status) = self.gone {
            self.phase = Phase::Stopped;
            self.actions.push_back(Action::ShutdownDone(status));
            return;
        }
        if matches!(self.phase, Phase::Stopped) {
            self.actions.push_back(Action::ShutdownDone(None));
            return;
        }
        let mut esc = Escalation::new(self.settings.deadlines, self.is_reading());
        if let Some(at) = self.paused_at {
            esc.pause(at);
        }
        esc.handle_cancel(now, CancelReason::Shutdown);
        if self.kill_seen {
            esc.handle_kill(now);
        }
        for timer in [Timer::Liveness, Timer::Hangup, Timer::Frame] {
            self.timers.stop(timer);
        }
        self.phase = Phase::Stopping(Box::new(esc));
        self.pump(now);
    }

    /// The tree was suspended at `now`: every deadline stops.
    pub(crate) fn handle_pause(&mut self, now: Instant) {
        if self.paused_at.is_some() {
            return;
        }
        self.paused_at = Some(now);
        self.timers.pause(now);
        match &mut self.phase {
            Phase::Job(job) => job.esc.pause(now),
            Phase::Stopping(esc) => esc.pause(now),
            Phase::Idle | Phase::Stopped => {}
        }
    }

    /// The tree was continued at `now`: every deadline moves by the time suspended, and the
    /// SIGCONT a polite signal owes goes out.
    pub(crate) fn handle_resume(&mut self, now: Instant) {
        let Some(since) = self.paused_at.take() else {
            return;
        };
        self.timers.resume(now);
        let stopped = now.saturating_duration_since(since);
        match &mut self.phase {
            Phase::Job(job) => {
                job.esc.resume(now);
                // The cap and the reported deadline move as the timers did.
                if let Some((_, cap)) = &mut job.extension {
                    *cap = cap.checked_add(stopped).unwrap_or(*cap);
                }
                job.deadline = job.deadline.and_then(|d| d.checked_add(stopped));
            }
            Phase::Stopping(esc) => esc.resume(now),
            Phase::Idle | Phase::Stopped => {}
        }
        if std::mem::take(&mut self.cont_owed) {
            self.actions.push_back(Action::Continue);
        }
        self.handle_timeout(now);
    }

    /// Fires everything due at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.expired(now) {
            match timer {
                Timer::JobTimeout => self.cancel_running(now, CancelReason::Timeout),
                Timer::NoProgress => self.cancel_running(now, CancelReason::NoProgress),
                Timer::Frame => {
                    let timeout = self.settings.frame_timeout;
                    self.violation(now, Violation::StalledFrame { timeout });
                }
                Timer::Liveness => self.unresponsive(now),
                Timer::Hangup => match &mut self.phase {
                    // It closed its channel mid-job and did not exit.
                    Phase::Job(job) => job.esc.handle_kill(now),
                    Phase::Idle => self.push_kill(),
                    Phase::Stopping(_) | Phase::Stopped => {}
                },
                Timer::Drain => self.ask_reap(),
                Timer::Stray => self.stray_unanswered(now),
            }
            self.pump(now);
        }
        match &mut self.phase {
            Phase::Job(job) => job.esc.handle_timeout(now),
            Phase::Stopping(esc) => esc.handle_timeout(now),
            Phase::Idle | Phase::Stopped => {}
        }
        self.pump(now);
    }

    // ---- internals ----

    fn reply(&mut self, id: JobId, result: Result<JobReport, RunError>) {
        self.actions.push_back(Action::Reply(id, Box::new(result)));
    }

    /// The report of a queued job that never ran: cancelled before its turn (acknowledged by
    /// the worker, or with the worker gone) is `cancelled`, not started; otherwise the worker
    /// is gone without having started it.
    fn reply_queued(&mut self, now: Instant, q: Queued) {
        let result = match q.cancel {
            Some((reason, at)) => {
                let mut report = JobReport::not_started(
                    q.id,
                    reason,
                    self.settings.containment,
                    self.limits.clone(),
                    at,
                );
                report.trace.ended = now.saturating_duration_since(at);
                report.trace.deadline = q.start.timeout;
                Ok(report)
            }
            None => Err(self.gone_error()),
        };
        self.reply(q.id, result);
    }

    /// The worker will run nothing more it was sent: it exited, hung up, broke the protocol,
    /// or is being signalled or killed.
    fn doomed(&self) -> bool {
        let head = match &self.phase {
            Phase::Job(job) => {
                job.violation.is_some()
                    || matches!(job.esc.stage(), Some(Stage::Signal | Stage::Kill))
                    || (job.esc.is_finished() && !job.esc.worker_reusable())
            }
            Phase::Idle => false,
            Phase::Stopping(_) | Phase::Stopped => true,
        };
        head || self.gone.is_some()
            || self.exited.is_some()
            || self.eof
            || !self.channel
            || self.kill_seen
            || self.kill_sent
    }

    /// Answers the queued jobs once the worker will not run them.
    fn settle_queue(&mut self, now: Instant) {
        if self.queued.is_empty() || !self.doomed() {
            return;
        }
        while let Some(q) = self.queued.pop_front() {
            self.reply_queued(now, q);
        }
    }

    fn gone_error(&self) -> RunError {
        RunError::WorkerGone {
            status: self.gone.flatten().or(self.exit),
            violation: self.idle_violation.clone(),
        }
    }

    fn ask_reap(&mut self) {
        if !std::mem::replace(&mut self.reap_asked, true) {
            self.actions.push_back(Action::Reap);
        }
    }

    /// SIGKILLs an idle worker's tree, then closes the channel, in that order: an SDK worker
    /// that saw EOF first could exit on its own before the kill. No job starts on it after
    /// this.
    fn kill_idle(&mut self) {
        self.push_kill();
        self.close();
    }

    /// SIGKILL for the live tree, at most once (leftovers after the exit are another matter).
    fn push_kill(&mut self) {
        if !std::mem::replace(&mut self.kill_sent, true) {
            self.actions.push_back(Action::Kill);
        }
    }

    fn close(&mut self) {
        if self.channel {
            self.channel = false;
            self.actions.push_back(Action::Close);
        }
        self.timers.stop(Timer::Frame);
        self.timers.stop(Timer::Liveness);
    }

    fn violation(&mut self, now: Instant, violation: Violation) {
        match &mut self.phase {
            Phase::Job(job) => {
                if job.violation.is_none() {
                    // A held `Cancelled` is answered by this: no attribution is waited for.
                    self.timers.stop(Timer::Stray);
                    job.violation = Some(violation);
                    job.esc.handle_kill(now);
                    // Nothing more it says can be trusted.
                    self.close();
                }
            }
            Phase::Idle => {
                if self.idle_violation.is_none() && self.gone.is_none() {
                    self.idle_violation = Some(violation);
                    self.kill_idle();
                }
            }
            Phase::Stopping(_) | Phase::Stopped => {}
        }
    }

    fn unresponsive(&mut self, now: Instant) {
        let Some(after) = self.settings.unresponsive_after else {
            return;
        };
        match &mut self.phase {
            Phase::Job(_) => self.cancel_running(now, CancelReason::Unresponsive),
            Phase::Idle => self.violation(now, Violation::Unresponsive { after }),
            Phase::Stopping(_) | Phase::Stopped => {}
        }
    }

    /// A cancel from here (the caller, the job's own deadlines, liveness) for the running job.
    /// A `Cancelled` that came first and waits for its attribution acknowledges it: the job
    /// is cancelled (the `Cancel` the ladder sends for it, if the worker still runs, is stale
    /// and ignored, PROTOCOL.md section 5).
    fn cancel_running(&mut self, now: Instant, reason: CancelReason) {
        let accepts = self.accepts_cancel();
        let Phase::Job(job) = &mut self.phase else {
            return;
        };
        if !job.held() {
            if accepts {
                job.esc.handle_cancel(now, reason);
            }
            return;
        }
        self.timers.stop(Timer::Stray);
        job.attributed = Some((reason, now));
        job.esc.handle_cancel(now, reason);
        self.result(now, WorkerResult::Cancelled);
        self.reply_reaped(now);
    }

    /// Nobody here asked for the `Cancelled` within the bound. A worker still running broke
    /// the protocol (killed, the violation named). One that had exited stopped on a signal
    /// from outside warden and ended on its own: crashed, with the violation named.
    fn stray_unanswered(&mut self, now: Instant) {
        let exited = self.exited.is_some() || self.gone.is_some();
        let Phase::Job(job) = &mut self.phase else {
            return;
        };
        if !job.held() {
            return;
        }
        let violation = Violation::UnrequestedCancel { job: job.id };
        if exited {
            job.violation = Some(violation);
            job.stray_exit = true;
            self.reply_reaped(now);
        } else {
            self.violation(now, violation);
        }
    }

    /// The report of a job whose process was reaped while it waited for its attribution.
    fn reply_reaped(&mut self, now: Instant) {
        if let Phase::Job(job) = &self.phase
            && job.reaped_at.is_some()
            && !job.held()
            && let Phase::Job(job) = std::mem::replace(&mut self.phase, Phase::Idle)
            && !job.replied
        {
            let report = self.report(&job, now);
            self.reply(job.id, Ok(report));
        }
    }

    fn result(&mut self, now: Instant, result: WorkerResult) {
        if let Phase::Job(job) = &mut self.phase {
            job.result = Some(result);
            job.esc.handle_result(now);
        }
    }

    /// Turns the ladder's decisions into actions, and ends the job when its facts are in.
    fn pump(&mut self, now: Instant) {
        // A queued job that became the running one has its ladder's first actions to give.
        while self.pump_phase(now) {}
        self.settle_queue(now);
    }

    /// [`pump`](Self::pump) for the running job or the shutdown; `true` when the job ended,
    /// the worker is reused and the next queued job became the running one.
    fn pump_phase(&mut self, now: Instant) -> bool {
        let (esc, mut job) = match &mut self.phase {
            Phase::Job(job) => (
                &mut job.esc,
                Some((job.id, &mut job.cancel_sent, &mut job.cancel_on_wire)),
            ),
            Phase::Stopping(esc) => (&mut **esc, None),
            Phase::Idle | Phase::Stopped => return false,
        };
        let mut pending = false;
        let mut cancel_sent = false;
        while let Some(action) = esc.poll_action() {
            match action {
                escalation::Action::SendCancel(reason) => {
                    cancel_sent = true;
                    // Sent while the job was queued: once per job.
                    let on_wire = job
                        .as_mut()
                        .is_some_and(|(_, _, on_wire)| std::mem::take(*on_wire));
                    if self.channel && !on_wire {
                        let msg = match &job {
                            Some((id, _, _)) => SupervisorMessage::Cancel {
                                job: *id,
                                reason: reason.on_wire_v1(),
                            },
                            None => SupervisorMessage::Shutdown,
                        };
                        self.actions.push_back(Action::Send(msg));
                    }
                }
                escalation::Action::SignalGroup => {
                    self.actions.push_back(Action::Signal);
                    // A stopped worker must wake to see it; a suspended one gets its SIGCONT
                    // with the resume.
                    if self.paused_at.is_some() {
                        self.cont_owed = true;
                    } else {
                        self.actions.push_back(Action::Continue);
                    }
                }
                escalation::Action::KillGroup => {
                    if !std::mem::replace(&mut self.kill_sent, true) {
                        self.actions.push_back(Action::Kill);
                    }
                }
                escalation::Action::KillPending => pending = true,
            }
        }
        if let Some((_, sent, _)) = job {
            *sent |= cancel_sent;
        }
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Stopping(_) if pending => {
                self.phase = Phase::Stopped;
                self.actions.push_back(Action::ShutdownDone(None));
            }
            Phase::Job(mut job) if pending && !job.replied => {
                // Report now rather than hang the caller; the reap goes on.
                job.replied = true;
                let report = self.report(&job, now);
                self.reply(job.id, Ok(report));
                self.phase = Phase::Job(job);
            }
            Phase::Job(job) if job.result.is_some() && job.esc.worker_reusable() => {
                self.timers.stop(Timer::JobTimeout);
                self.timers.stop(Timer::NoProgress);
                let report = self.report(&job, now);
                self.reply(job.id, Ok(report));
                if let Some(after) = self.settings.unresponsive_after
                    && self.is_reading()
                {
                    self.timers.arm(Timer::Liveness, now, after);
                }
                // The worker starts the next queued job as it sends this one's result: so
                // does its clock here.
                if let Some(q) = self.queued.pop_front() {
                    self.begin(now, q.id, q.start, q.cancel);
                    return true;
                }
            }
            other => self.phase = other,
        }
        false
    }

    /// The job's report from the facts in now: the one place the outcome is decided and the
    /// trace is turned into durations.
    fn report(&self, job: &Job, now: Instant) -> JobReport {
        let ladder = job.esc.trace();
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(job.started));
        let exit = if ladder.exited.is_some() {
            self.exit
        } else {
            None
        };
        let (limit_ended, limit_hit) = Facts::limits(&self.limits, exit);
        let facts = Facts {
            protocol: self.settings.protocol,
            result: job.result.clone(),
            cancelled: job.esc.reason().is_some() || job.attributed.is_some(),
            violation: job.violation.is_some(),
            stray_exit: job.stray_exit,
            signal_sent: ladder.signal_sent.is_some(),
            kill_sent: ladder.kill_sent.is_some(),
            exit,
            limit_ended,
            limit_hit,
        };
        let outcome = classify(facts.clone());
        let limit = deciding_limit(&facts, &outcome);
        JobReport {
            job: job.id,
            outcome,
            reason: job
                .esc
                .reason()
                .or(job.attributed.map(|(reason, _)| reason)),
            stage: job.esc.stage(),
            exit,
            violation: job.violation.clone(),
            started: true,
            containment: self.settings.containment,
            escaped: Vec::new(),
            limits: self.limits.clone(),
            limit,
            output_tail: None,
            trace: Trace {
                started: job.started,
                cancel_requested: since(
                    ladder.cancel_requested.or(job.attributed.map(|(_, at)| at)),
                ),
                signal_sent: since(ladder.signal_sent),
                kill_sent: since(ladder.kill_sent),
                kill_pending: since(ladder.kill_pending),
                result_received: since(job.stray_at.or(ladder.result)),
                exited: since(ladder.exited),
                reaped: since(job.reaped_at),
                ended: now.saturating_duration_since(job.started),
                deadline: since(job.deadline),
            },
        }
    }
}

#[cfg(test)]
mod pair;
#[cfg(test)]
mod tests;
