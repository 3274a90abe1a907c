//! The task that owns a worker process and its channel and runs the ladder for each job.
//!
//! It is a thin loop around [`Escalation`]: turn events (exit, messages, tokens, timers) into
//! `handle_*` calls, perform the actions the machine emits, and decide the outcome once the
//! facts are in (a result for a reusable worker; otherwise exit observed AND channel drained).
//!
//! Job control ([`Control`], on a channel of its own so that it is heard during a job too):
//! a suspension stops the tree and pauses every timer of the loop that runs at the time (the
//! job's timeout, the ladder, the drain and hang-up waits, a partial frame's stall timer);
//! the resume continues the tree and moves those timers by the time suspended.

use std::future::pending;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::Span;
use warden_protocol::{
    CancelReason, EncodeError, JobId, MAX_PROGRESS_TEXT, SupervisorMessage, WorkerMessage,
    truncate_str,
};

use super::config::{JobOptions, Progress, WorkerConfig};
use crate::error::{JobControlError, RunError};
use crate::escalation::{Action, Escalation};
use crate::ipc::{Channel, Event};
use crate::outcome::{
    Facts, JobReport, Outcome, Trace, Violation, WorkerResult, classify, deciding_limit,
};
use crate::process::{ExitStatus, Tree};

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
}

/// What a control request did, for the loop that owns the timers.
enum Pause {
    /// Suspended at this instant: pause the ladder.
    Began(Instant),
    /// Resumed at `at` after `stopped`: resume the ladder, move the other timers.
    Ended { at: Instant, stopped: Duration },
}

/// Moves an armed timer later by `by` (an unrepresentable one never fires).
fn defer(timer: &mut Option<Instant>, by: Duration) {
    *timer = timer.and_then(|t| t.checked_add(by));
}

/// Sleeps until `at`, or forever when there is no deadline. Sleeps at most a day at a time:
/// tokio's timer saturates near two years and would wake a far deadline early.
pub(crate) async fn sleep_until(at: Option<Instant>) {
    const STEP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
    let Some(at) = at else { return pending().await };
    loop {
        let now = Instant::now();
        if now >= at {
            return;
        }
        tokio::time::sleep(at.saturating_duration_since(now).min(STEP)).await;
    }
}

/// `now + d`, or `None` (never) when that is beyond what an `Instant` can hold.
pub(crate) fn deadline_after(now: Instant, d: std::time::Duration) -> Option<Instant> {
    now.checked_add(d)
}

/// The violation a message the worker should not have sent amounts to: a second hello, or a
/// job message for a job that is not running.
fn unexpected(msg: &WorkerMessage) -> Violation {
    match msg {
        WorkerMessage::Hello { .. } => Violation::RepeatedHello,
        _ => Violation::NotRunning {
            kind: msg.kind(),
            job: msg.job().unwrap_or(JobId(0)),
        },
    }
}

async fn next_event(channel: &mut Option<Channel>) -> Event {
    match channel {
        Some(c) if !c.is_eof() => c.next_event().await,
        _ => pending().await,
    }
}

async fn reply_closed(reply: &mut Option<Reply>) {
    match reply {
        Some(r) => r.closed().await,
        None => pending().await,
    }
}

pub(crate) struct Actor {
    tree: Tree,
    channel: Option<Channel>,
    control: mpsc::UnboundedReceiver<Control>,
    /// False once every handle is gone (the control channel is closed).
    control_open: bool,
    /// When the tree was suspended, while it is.
    suspended_at: Option<Instant>,
    /// The polite signal went out while suspended: its SIGCONT is sent on the resume.
    cont_owed: bool,
    config: WorkerConfig,
    next_job: u64,
    /// Set once the process is reaped (with its status) or given up on after SIGKILL.
    gone: Option<Option<ExitStatus>>,
    /// A plain program's one job (its whole run) has been handed out.
    plain_run_taken: bool,
    /// The kill token SIGKILLed the tree while no job ran.
    killed_idle: bool,
    /// The protocol violation that got the worker killed while no job ran.
    idle_violation: Option<Violation>,
    span: Span,
}

/// Per-job facts gathered while the job runs.
struct JobState {
    id: JobId,
    started: Instant,
    result: Option<WorkerResult>,
    result_at: Option<Instant>,
    violation: Option<Violation>,
    drain_deadline: Option<Instant>,
    /// The worker closed its channel while still running: it can never answer, so it gets the
    /// drain timeout to exit before it is killed.
    hangup_deadline: Option<Instant>,
    reaped_at: Option<Instant>,
    reply: Option<Reply>,
}

impl Actor {
    pub(crate) fn new(
        tree: Tree,
        channel: Option<Channel>,
        control: mpsc::UnboundedReceiver<Control>,
        config: WorkerConfig,
        span: Span,
    ) -> Self {
        Actor {
            tree,
            channel,
            control,
            control_open: true,
            suspended_at: None,
            cont_owed: false,
            config,
            next_job: 1,
            gone: None,
            plain_run_taken: false,
            killed_idle: false,
            idle_violation: None,
            span,
        }
    }

    fn channel_live(&self) -> bool {
        self.channel.as_ref().is_some_and(|c| !c.is_eof())
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut idle_eof_deadline: Option<Instant> = None;
        loop {
            if let Some(status) = self.gone {
                let request = tokio::select! {
                    request = rx.recv() => request,
                    control = self.control.recv(), if self.control_open => {
                        self.on_control(control).await;
                        continue;
                    }
                };
                match request {
                    // A plain program's run is its job: one that ended before the caller asked
                    // for it still has its report to give.
                    Some(Request::Run {
                        payload,
                        options,
                        reply,
                    }) if !self.config.protocol && !self.plain_run_taken => {
                        self.job(payload, options, reply).await;
                    }
                    Some(Request::Run { reply, .. }) => {
                        let _ = reply.send(Err(self.gone_error(status)));
                    }
                    Some(Request::Shutdown { reply }) => {
                        let _ = reply.send(status);
                    }
                    None => return,
                }
                continue;
            }
            let live = self.channel_live();
            tokio::select! {
                request = rx.recv() => match request {
                    // The worker broke the protocol or hung up: it is leaving (or being killed)
                    // and will never answer a job. Starting one would report its death as the
                    // job's outcome.
                    Some(Request::Run { reply, .. }) if self.config.protocol && !live => {
                        let status = self.tree.exit_status();
                        let _ = reply.send(Err(self.gone_error(status)));
                    }
                    Some(Request::Run { payload, options, reply }) => self.job(payload, options, reply).await,
                    Some(Request::Shutdown { reply }) => {
                        let status = self.shutdown().await;
                        let _ = reply.send(status);
                    }
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                event = next_event(&mut self.channel), if live => match event {
                    Event::Message(WorkerMessage::Heartbeat) => {}
                    Event::Message(m) => self.idle_violation(unexpected(&m)),
                    Event::Invalid(e) => self.idle_violation(Violation::Frame(e)),
                    Event::Stalled => self.idle_violation(self.stalled()),
                    // The worker hung up while idle: it is leaving. Give it the drain time to
                    // exit on its own, then make sure.
                    Event::Eof => idle_eof_deadline = deadline_after(Instant::now(), self.config.drain_timeout),
                },
                status = self.tree.wait() => self.finish_process(status.ok()).await,
                // The kill token means "SIGKILL now", job or no job.
                () = self.config.kill.cancelled(), if !self.killed_idle => {
                    self.killed_idle = true;
                    tracing::warn!(parent: &self.span, "kill requested while idle; killing the worker");
                    self.kill_idle();
                }
                () = sleep_until(idle_eof_deadline), if self.suspended_at.is_none() => {
                    idle_eof_deadline = None;
                    let _ = self.tree.kill_tree();
                }
                control = self.control.recv(), if self.control_open => {
                    if let Some(Pause::Ended { stopped, .. }) = self.on_control(control).await {
                        defer(&mut idle_eof_deadline, stopped);
                    }
                }
            }
        }
    }

    /// Performs a control request; `None` (every handle dropped) resumes a suspended tree,
    /// since nobody is left to do it.
    async fn on_control(&mut self, control: Option<Control>) -> Option<Pause> {
        match control {
            None => {
                self.control_open = false;
                self.resume_tree().1
            }
            Some(Control::Suspend { timeout, reply }) => {
                if self.suspended_at.is_some() {
                    let _ = reply.send(Ok(()));
                    return None;
                }
                let at = Instant::now();
                self.suspended_at = Some(at);
                let result = match self.tree.suspend() {
                    Err(e) => Err(JobControlError::Tree(e)),
                    Ok(()) if self.tree.wait_suspended(timeout).await => Ok(()),
                    Ok(()) => Err(JobControlError::NotStopped { timeout }),
                };
                tracing::info!(parent: &self.span, ok = result.is_ok(), "worker suspended");
                let _ = reply.send(result);
                Some(Pause::Began(at))
            }
            Some(Control::Resume { reply }) => {
                let (result, pause) = self.resume_tree();
                let _ = reply.send(result);
                pause
            }
        }
    }

    /// Continues a suspended tree (and sends the SIGCONT a polite signal owes); moves the
    /// channel's stall timer. Nothing to do unless suspended.
    fn resume_tree(&mut self) -> (Result<(), JobControlError>, Option<Pause>) {
        let Some(since) = self.suspended_at.take() else {
            return (Ok(()), None);
        };
        let result = self.tree.resume().map_err(JobControlError::Tree);
        if std::mem::take(&mut self.cont_owed) {
            let _ = self.tree.signal_tree(libc::SIGCONT);
        }
        let at = Instant::now();
        let stopped = at.saturating_duration_since(since);
        if let Some(channel) = &mut self.channel {
            channel.defer_stall(stopped);
        }
        tracing::info!(parent: &self.span, ?stopped, "worker resumed");
        (result, Some(Pause::Ended { at, stopped }))
    }

    fn stalled(&self) -> Violation {
        Violation::StalledFrame {
            timeout: self.config.frame_timeout,
        }
    }

    fn idle_violation(&mut self, violation: Violation) {
        tracing::warn!(parent: &self.span, %violation, "worker broke the protocol while idle; killing it");
        self.kill_idle();
        self.idle_violation = Some(violation);
    }

    /// SIGKILLs an idle worker's tree, then closes the channel, in that order: an SDK worker
    /// that saw EOF first could exit on its own before the kill. No job may start on it after
    /// this: a protocol worker's run gets `WorkerGone`.
    fn kill_idle(&mut self) {
        let _ = self.tree.kill_tree();
        self.channel = None;
    }

    /// What a run on a worker that can take no more jobs gets.
    fn gone_error(&self, status: Option<ExitStatus>) -> RunError {
        RunError::WorkerGone {
            status,
            violation: self.idle_violation.clone(),
        }
    }

    /// The process has exited: kill what is left of its tree (nothing of a finished worker may
    /// linger), then reap it.
    async fn finish_process(&mut self, status: Option<ExitStatus>) {
        let reaped = self
            .tree
            .settle(self.config.deadlines.reap_timeout)
            .await
            .or(status);
        tracing::debug!(parent: &self.span, status = ?reaped, "worker reaped");
        self.channel = None;
        self.gone = Some(reaped);
    }

    fn perform(&mut self, action: Action, job: Option<JobId>) {
        match action {
            Action::SendCancel(reason) => {
                if let Some(channel) = &mut self.channel {
                    let msg = match job {
                        Some(job) => SupervisorMessage::Cancel { job, reason },
                        None => SupervisorMessage::Shutdown,
                    };
                    let _ = channel.send(&msg);
                }
                tracing::info!(parent: &self.span, ?job, %reason, "cancel sent");
            }
            Action::SignalGroup => {
                if let Err(e) = self.tree.signal_tree(self.config.polite_signal) {
                    tracing::warn!(parent: &self.span, error = %e, "polite signal failed");
                }
                // A stopped worker must wake to see the polite signal; a suspended one gets its
                // SIGCONT with the resume.
                if self.suspended_at.is_some() {
                    self.cont_owed = true;
                } else {
                    let _ = self.tree.signal_tree(libc::SIGCONT);
                }
                tracing::info!(parent: &self.span, signal = self.config.polite_signal, "polite signal sent");
            }
            Action::KillGroup => {
                if let Err(e) = self.tree.kill_tree() {
                    tracing::warn!(parent: &self.span, error = %e, "SIGKILL to the tree failed");
                }
                tracing::info!(parent: &self.span, "SIGKILL sent");
            }
            Action::KillPending => {
                tracing::warn!(parent: &self.span, "worker still alive after SIGKILL (kill pending)");
            }
        }
    }

    async fn job(&mut self, payload: Vec<u8>, options: JobOptions, reply: Reply) {
        let id = JobId(self.next_job);
        self.next_job += 1;
        let span = tracing::info_span!(parent: &self.span, "job", job = %id);
        let started = Instant::now();
        if !self.config.protocol && !payload.is_empty() {
            let _ = reply.send(Err(RunError::PayloadForPlainProgram));
            return;
        }
        let deadlines = options.deadlines.unwrap_or(self.config.deadlines);
        let mut esc = Escalation::new(deadlines, self.config.protocol);
        if let Some(at) = self.suspended_at {
            // The job starts on a suspended worker: its clock starts with the resume.
            esc.pause(at.max(started));
        }
        let mut timeout_at = options.timeout.and_then(|t| deadline_after(started, t));
        // A plain program that already ended: its run is over whatever the caller's token says,
        // and its exit decides the outcome.
        let ended_before_start = !self.config.protocol && self.tree.exit_status().is_some();
        if ended_before_start {
            if self.killed_idle {
                // Its run was ended by our SIGKILL, not on its own: the ladder says so.
                esc.handle_kill(started);
                while esc.poll_action().is_some() {}
            }
            esc.handle_exit(started);
        }

        // A protocol job not yet handed over can be cancelled outright. A plain program's job
        // is its whole run, which began at spawn: its cancel must go through the ladder.
        let early = if !self.config.protocol {
            None
        } else if options.token.is_cancelled() {
            Some(CancelReason::Requested)
        } else if self.config.shutdown.is_cancelled() {
            Some(CancelReason::Shutdown)
        } else if options.timeout.is_some_and(|t| t.is_zero()) {
            Some(CancelReason::Timeout)
        } else {
            None
        };
        if let Some(reason) = early {
            tracing::info!(parent: &span, %reason, "cancelled before start");
            let _ = reply.send(Ok(JobReport {
                job: id,
                outcome: Outcome::Cancelled,
                reason: Some(reason),
                stage: None,
                exit: None,
                violation: None,
                started: false,
                containment: self.tree.containment(),
                escaped: Vec::new(),
                limits: self.tree.limits(),
                limit: None,
                trace: Trace {
                    started,
                    cancel_requested: Some(started.elapsed()),
                    signal_sent: None,
                    kill_sent: None,
                    kill_pending: None,
                    result_received: None,
                    exited: None,
                    reaped: None,
                    ended: started.elapsed(),
                },
            }));
            return;
        }
        if !self.config.protocol {
            self.plain_run_taken = true;
        }
        if let Some(channel) = &mut self.channel {
            let start = SupervisorMessage::StartJob {
                job: id,
                deadline_ms: options
                    .timeout
                    .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                payload,
            };
            if let Err(e) = channel.send(&start) {
                let (len, max) = match e {
                    EncodeError::TooLarge { len, max } => (len, max),
                    _ => (0, self.config.max_frame_len),
                };
                let _ = reply.send(Err(RunError::PayloadTooLarge { len, max }));
                return;
            }
        }
        tracing::info!(parent: &span, "job started");

        let mut st = JobState {
            id,
            started,
            result: None,
            result_at: None,
            violation: None,
            drain_deadline: None,
            hangup_deadline: None,
            reaped_at: None,
            reply: Some(reply),
        };
        let mut kill_requested = false;
        loop {
            if st.result.is_some() && esc.worker_reusable() {
                break;
            }
            let exited = self.tree.exit_status().is_some();
            if exited
                && (!self.channel_live() || st.drain_deadline.is_some_and(|d| Instant::now() >= d))
            {
                let status = self.tree.exit_status();
                self.finish_process(status).await;
                st.reaped_at = Some(Instant::now());
                break;
            }
            let live = self.channel_live() && st.violation.is_none();
            let open = esc.reason().is_none() && !esc.is_finished() && st.violation.is_none();
            let running = self.suspended_at.is_none();
            let drain = if exited && running {
                st.drain_deadline
            } else {
                None
            };
            let hangup = if exited || !running {
                None
            } else {
                st.hangup_deadline
            };
            let esc_deadline = esc.poll_timeout();
            let waiting_timeout = if open && running { timeout_at } else { None };
            tokio::select! {
                status = self.tree.wait(), if !exited => {
                    if let Err(e) = &status {
                        // Cannot happen while we are the only reaper; never spin on it.
                        tracing::error!(parent: &span, error = %e, "lost track of the worker process");
                        let _ = self.tree.kill_tree();
                        self.gone = Some(None);
                        self.channel = None;
                        break;
                    }
                    let now = Instant::now();
                    esc.handle_exit(now);
                    st.drain_deadline = deadline_after(now, self.config.drain_timeout);
                    // Leftovers in the worker's tree die now, while the exited leader still
                    // pins the group id; this also closes any copy of the channel they hold.
                    let _ = self.tree.kill_tree();
                    tracing::info!(parent: &span, status = ?status.ok(), "worker exited");
                }
                event = next_event(&mut self.channel), if live => {
                    self.job_event(event, &mut st, &mut esc, &options, &span);
                }
                () = options.token.cancelled(), if open => esc.handle_cancel(Instant::now(), CancelReason::Requested),
                () = self.config.shutdown.cancelled(), if open => esc.handle_cancel(Instant::now(), CancelReason::Shutdown),
                () = self.config.kill.cancelled(), if !kill_requested => {
                    kill_requested = true;
                    esc.handle_kill(Instant::now());
                }
                () = sleep_until(waiting_timeout) => esc.handle_cancel(Instant::now(), CancelReason::Timeout),
                () = reply_closed(&mut st.reply), if open => esc.handle_cancel(Instant::now(), CancelReason::Requested),
                () = sleep_until(esc_deadline) => esc.handle_timeout(Instant::now()),
                () = sleep_until(drain) => {}
                () = sleep_until(hangup) => {
                    st.hangup_deadline = None;
                    tracing::warn!(parent: &span, "worker closed its channel mid-job and did not exit; killing it");
                    esc.handle_kill(Instant::now());
                }
                control = self.control.recv(), if self.control_open => {
                    match self.on_control(control).await {
                        Some(Pause::Began(at)) => esc.pause(at),
                        Some(Pause::Ended { at, stopped }) => {
                            esc.resume(at);
                            // A suspension older than the job counts from the job's start.
                            let stopped = stopped.min(at.saturating_duration_since(started));
                            for timer in [&mut timeout_at, &mut st.drain_deadline, &mut st.hangup_deadline] {
                                defer(timer, stopped);
                            }
                        }
                        None => {}
                    }
                }
            }
            while let Some(action) = esc.poll_action() {
                self.perform(action, Some(id));
                if action == Action::KillPending {
                    // Report now rather than hang the caller; reaping goes on in this loop.
                    let report = self.report(&st, &esc);
                    if let Some(reply) = st.reply.take() {
                        let _ = reply.send(Ok(report));
                    }
                }
            }
        }
        let report = self.report(&st, &esc);
        tracing::info!(parent: &span, outcome = report.outcome.name(), stage = ?report.stage, reason = ?report.reason, "job ended");
        if let Some(reply) = st.reply.take() {
            let _ = reply.send(Ok(report));
        }
    }

    fn violation(&mut self, st: &mut JobState, esc: &mut Escalation, v: Violation, span: &Span) {
        if st.violation.is_none() {
            tracing::warn!(parent: span, violation = %v, "worker broke the protocol; killing it");
            st.violation = Some(v);
            esc.handle_kill(Instant::now());
            // Stop reading: nothing more it says can be trusted; it sees EOF.
            self.channel = None;
        }
    }

    fn job_event(
        &mut self,
        event: Event,
        st: &mut JobState,
        esc: &mut Escalation,
        options: &JobOptions,
        span: &Span,
    ) {
        let msg = match event {
            Event::Message(m) => m,
            // An exiting worker closes its channel too; the deadline only matters if it does
            // not exit.
            Event::Eof => {
                st.hangup_deadline = deadline_after(Instant::now(), self.config.drain_timeout);
                return;
            }
            Event::Invalid(e) => return self.violation(st, esc, Violation::Frame(e), span),
            Event::Stalled => return self.violation(st, esc, self.stalled(), span),
        };
        let running = st.result.is_none();
        match msg {
            WorkerMessage::Heartbeat => {}
            WorkerMessage::Progress {
                job,
                fraction,
                text,
            } if job == st.id && running => {
                if let Some(f) = &options.on_progress {
                    let fraction = fraction
                        .filter(|f| f.is_finite())
                        .map(|f| f.clamp(0.0, 1.0));
                    let text = text.map(|t| truncate_str(&t, MAX_PROGRESS_TEXT).to_owned());
                    f(Progress {
                        job,
                        fraction,
                        text,
                    });
                }
            }
            WorkerMessage::Completed { job, output } if job == st.id && running => {
                self.result(st, esc, WorkerResult::Completed(output));
            }
            WorkerMessage::Cancelled { job } if job == st.id && running => {
                self.result(st, esc, WorkerResult::Cancelled);
            }
            WorkerMessage::Failed { job, error } if job == st.id && running => {
                self.result(st, esc, WorkerResult::Failed(error));
            }
            other => self.violation(st, esc, unexpected(&other), span),
        }
    }

    fn result(&self, st: &mut JobState, esc: &mut Escalation, result: WorkerResult) {
        let now = Instant::now();
        st.result = Some(result);
        st.result_at = Some(now);
        esc.handle_result(now);
    }

    fn report(&self, st: &JobState, esc: &Escalation) -> JobReport {
        let trace = esc.trace();
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(st.started));
        let exit = self.tree.exit_status();
        let limits = self.tree.limits();
        let (limit_ended, limit_hit) = Facts::limits(&limits, exit);
        let facts = Facts {
            protocol: self.config.protocol,
            result: st.result.clone(),
            cancelled: esc.reason().is_some(),
            violation: st.violation.is_some(),
            signal_sent: trace.signal_sent.is_some(),
            kill_sent: trace.kill_sent.is_some(),
            exit,
            limit_ended,
            limit_hit,
        };
        let limit = deciding_limit(&facts, &classify(facts.clone()));
        let outcome = classify(facts);
        JobReport {
            job: st.id,
            outcome,
            reason: esc.reason(),
            stage: esc.stage(),
            exit,
            violation: st.violation.clone(),
            started: true,
            containment: self.tree.containment(),
            escaped: self.tree.escaped(),
            limits,
            limit,
            trace: Trace {
                started: st.started,
                cancel_requested: since(trace.cancel_requested),
                signal_sent: since(trace.signal_sent),
                kill_sent: since(trace.kill_sent),
                kill_pending: since(trace.kill_pending),
                result_received: since(st.result_at),
                exited: since(trace.exited),
                reaped: since(st.reaped_at),
                ended: st.started.elapsed(),
            },
        }
    }

    /// Stops an idle worker: `Shutdown` message (protocol) or the polite signal (plain), then
    /// the rest of the ladder. Returns how it ended, `None` if it outlived the kill.
    async fn shutdown(&mut self) -> Option<ExitStatus> {
        if let Some(gone) = self.gone {
            return gone;
        }
        let mut esc = Escalation::new(self.config.deadlines, self.channel_live());
        if let Some(at) = self.suspended_at {
            esc.pause(at);
        }
        esc.handle_cancel(Instant::now(), CancelReason::Shutdown);
        let mut kill_requested = false;
        loop {
            while let Some(action) = esc.poll_action() {
                if action == Action::KillPending {
                    return None;
                }
                self.perform(action, None);
            }
            let live = self.channel_live();
            tokio::select! {
                status = self.tree.wait() => {
                    esc.handle_exit(Instant::now());
                    self.finish_process(status.ok()).await;
                    return self.gone.flatten();
                }
                // Whatever an exiting worker still says no longer matters.
                _ = next_event(&mut self.channel), if live => {}
                () = sleep_until(esc.poll_timeout()) => esc.handle_timeout(Instant::now()),
                () = self.config.kill.cancelled(), if !kill_requested => {
                    kill_requested = true;
                    esc.handle_kill(Instant::now());
                }
                control = self.control.recv(), if self.control_open => {
                    match self.on_control(control).await {
                        Some(Pause::Began(at)) => esc.pause(at),
                        Some(Pause::Ended { at, .. }) => esc.resume(at),
                        None => {}
                    }
                }
            }
        }
    }
}
