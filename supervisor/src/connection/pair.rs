//! Both ends of one connection on one virtual clock: the supervisor's [`Connection`] and the
//! SDK's protocol [`Machine`] driven against each other (quinn-proto's `tests/util.rs` `Pair`).
//!
//! The [`Pair`] owns the two machines, a byte pipe in each direction carrying frames encoded
//! with `warden_protocol`'s codec, and plays every other part: the actor (it performs the
//! connection's actions), the SDK's drivers (serve task and writer thread), a scripted handler
//! (it finishes with a result, an error or `cancelled` when the test says, or on its token
//! tripping if told to), the worker process (it exits when told, or when SIGKILLed, or when
//! the SDK stops serving) and time ([`Pair::advance`] fires each machine's `handle_timeout` at
//! its `poll_timeout`, in order, never early).
//!
//! Delivery is the test's: bytes written sit in their pipe until delivered. [`Pair::settle`]
//! (called after every step) delivers both directions unless one is [held](Pair::hold), so a
//! `Cancel` can cross a result in flight; [`Pair::deliver_to_worker`] and
//! [`Pair::deliver_to_supervisor`] deliver one direction even while it is held.

use std::time::{Duration, Instant};

use warden_protocol::{
    CancelReason, FrameDecoder, JobId, SupervisorMessage, WorkerMessage, encode_frame_into,
};
use warden_worker::machine::{Config, Exit, HandlerOutcome, Machine};
use warden_worker::{CancelCause, JobError, ORPHAN_EXIT_CODE};

use super::{Action, Connection, JobStart, Settings};
use crate::error::RunError;
use crate::escalation::Deadlines;
use crate::outcome::JobReport;
use crate::process::{ContainmentMode, ExitStatus, LimitReport};

mod tests;

const MAX_FRAME: u32 = 64 * 1024;

pub(super) const KILLED: ExitStatus = ExitStatus::Signal {
    signal: libc::SIGKILL,
    core_dumped: false,
};

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The SDK's orphan grace in the pair.
pub(super) const GRACE: Duration = Duration::from_millis(400);

/// Supervisor settings for a pair: protocol, a 100 ms ladder, 30 ms drain bound.
pub(super) fn settings() -> Settings {
    Settings {
        protocol: true,
        deadlines: Deadlines {
            grace: ms(100),
            kill_after: ms(100),
            reap_timeout: ms(100),
        },
        frame_timeout: ms(50),
        drain_timeout: ms(30),
        unresponsive_after: None,
        containment: ContainmentMode::Cgroup,
        queue_depth: 1,
    }
}

/// A direction of the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    ToWorker,
    ToSupervisor,
}

/// How the scripted handler ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Finish {
    Result(Vec<u8>),
    Error(String),
    Cancelled,
}

impl Finish {
    fn outcome(self) -> HandlerOutcome {
        HandlerOutcome::Returned(match self {
            Finish::Result(out) => Ok(out),
            Finish::Error(message) => Err(JobError::Failed { message }),
            Finish::Cancelled => Err(JobError::Cancelled),
        })
    }
}

/// Which machine a timer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Supervisor,
    Worker,
}

/// One `handle_timeout` call: whose, its `poll_timeout` then, and the `now` it was given.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fire {
    pub(super) side: Side,
    pub(super) deadline: Instant,
    pub(super) at: Instant,
}

/// The pair. Fields are the record the tests assert on.
#[derive(Debug)]
pub(super) struct Pair {
    pub(super) t0: Instant,
    pub(super) now: Instant,
    pub(super) conn: Connection,
    /// The SDK's machine; `None` once the worker process is gone.
    pub(super) sdk: Option<Machine>,
    to_worker: Vec<u8>,
    to_supervisor: Vec<u8>,
    held: [bool; 2],
    worker_rx: FrameDecoder,
    sup_rx: FrameDecoder,
    /// The supervisor's end is closed (`Action::Close`, or severed): the worker reads EOF
    /// after what is in the pipe.
    sup_closed: bool,
    worker_saw_eof: bool,
    /// The worker's end is closed (it exited, or closed its channel).
    worker_closed: bool,
    sup_saw_eof: bool,
    sup_rx_broken: bool,
    /// The running handler: its job, and the cause its token tripped with.
    pub(super) handler: Option<(JobId, Option<CancelCause>)>,
    /// The handler returns this as soon as its token trips (`None`: it ignores the token).
    pub(super) on_trip: Option<Finish>,
    pub(super) exit: Option<ExitStatus>,
    /// The connection was told of the exit (`handle_exit`).
    exit_observed: bool,
    /// The exit is observed only at [`Pair::observe_exit`] or the next [`Pair::advance`]
    /// (else at once), as a pidfd's readiness may lag the death.
    pub(super) late_exit: bool,
    pub(super) reaped: bool,
    pub(super) sdk_exit: Option<Exit>,
    pub(super) sdk_exit_at: Option<Instant>,
    // ---- the record ----
    pub(super) replies: Vec<Result<JobReport, RunError>>,
    pub(super) shutdowns: Vec<Option<ExitStatus>>,
    /// When the connection asked for SIGKILL before it had seen the exit (the kill of an
    /// exited tree's leftovers is not counted).
    pub(super) kills: Vec<Instant>,
    pub(super) signals: Vec<Instant>,
    /// Actions the connection asked for after the reap that it must not (send, signal, kill).
    pub(super) after_reap: Vec<String>,
    pub(super) handler_starts: Vec<JobId>,
    pub(super) trips: Vec<(JobId, CancelCause)>,
    /// Every frame the worker decoded, and every one the supervisor decoded.
    pub(super) worker_got: Vec<SupervisorMessage>,
    pub(super) sup_got: Vec<WorkerMessage>,
    pub(super) fires: Vec<Fire>,
}

impl Pair {
    /// A pair whose handshake completed at `t0`; the SDK sends heartbeats every
    /// `heartbeat` if given.
    pub(super) fn new(settings: Settings, heartbeat: Option<Duration>) -> Pair {
        let t0 = Instant::now();
        let config = Config {
            max_frame_len: MAX_FRAME,
            heartbeat_interval: heartbeat,
            orphan_grace: GRACE,
            queued_jobs: settings.queue_depth > 1,
        };
        Pair {
            t0,
            now: t0,
            conn: Connection::new(t0, settings),
            sdk: Some(Machine::new(config, t0)),
            to_worker: Vec::new(),
            to_supervisor: Vec::new(),
            held: [false; 2],
            worker_rx: FrameDecoder::new(MAX_FRAME),
            sup_rx: FrameDecoder::new(MAX_FRAME),
            sup_closed: false,
            worker_saw_eof: false,
            worker_closed: false,
            sup_saw_eof: false,
            sup_rx_broken: false,
            handler: None,
            on_trip: None,
            exit: None,
            exit_observed: false,
            late_exit: false,
            reaped: false,
            sdk_exit: None,
            sdk_exit_at: None,
            replies: Vec::new(),
            shutdowns: Vec::new(),
            kills: Vec::new(),
            signals: Vec::new(),
            after_reap: Vec::new(),
            handler_starts: Vec::new(),
            trips: Vec::new(),
            worker_got: Vec::new(),
            sup_got: Vec::new(),
            fires: Vec::new(),
        }
    }

    /// `t0 + n ms`.
    pub(super) fn at(&self, n: u64) -> Instant {
        self.t0 + ms(n)
    }

    // ---- the caller's part ----

    /// `Worker::run`: starts a job (only when the connection takes requests).
    pub(super) fn start(&mut self, start: JobStart) {
        assert!(self.conn.takes_requests(), "start while busy");
        self.conn.handle_start(self.now, start);
        self.settle();
    }

    /// `Worker::run` with pipelining: starts a job, queued behind the running one if one runs
    /// (only when the connection takes jobs).
    pub(super) fn start_queued(&mut self, start: JobStart) -> JobId {
        assert!(self.conn.takes_jobs(), "start while full");
        let id = self.conn.handle_start(self.now, start);
        self.settle();
        id
    }

    /// The caller's token cancels a queued job.
    pub(super) fn cancel_queued(&mut self, id: JobId, reason: CancelReason) {
        self.conn.handle_cancel_queued(self.now, id, reason);
        self.settle();
    }

    /// The caller's token (or the shutdown token) cancels the running job.
    pub(super) fn cancel(&mut self, reason: CancelReason) {
        self.conn.handle_cancel(self.now, reason);
        self.settle();
    }

    /// The kill token.
    pub(super) fn kill(&mut self) {
        self.conn.handle_kill(self.now);
        self.settle();
    }

    /// `Worker::shutdown` (only when the connection takes requests).
    pub(super) fn shutdown(&mut self) {
        assert!(self.conn.takes_requests(), "shutdown while busy");
        self.conn.handle_shutdown(self.now);
        self.settle();
    }

    // ---- the handler's and the process's part ----

    /// The running handler returns (nothing if none runs).
    pub(super) fn finish(&mut self, how: Finish) {
        if let Some((job, _)) = self.handler.take()
            && let Some(sdk) = &mut self.sdk
        {
            sdk.handle_finished(self.now, job, how.outcome());
        }
        self.settle();
    }

    /// A polite signal from outside the supervisor reaches the worker (a batch system that
    /// signals every process of its job): the SDK turns it into a cancel of its own.
    pub(super) fn outside_signal(&mut self) {
        if let Some(sdk) = &mut self.sdk {
            sdk.handle_signal();
        }
        self.settle();
    }

    /// The worker process exits on its own with `status`.
    pub(super) fn exit_process(&mut self, status: ExitStatus) {
        self.process_exit(status);
        self.settle();
    }

    /// The worker closes its end of the channel without exiting.
    pub(super) fn close_worker_end(&mut self) {
        self.worker_closed = true;
        self.settle();
    }

    /// The supervisor's end goes away under the connection (the supervisor died): the worker
    /// reads EOF after what is in the pipe.
    pub(super) fn sever_supervisor_end(&mut self) {
        self.sup_closed = true;
        self.settle();
    }

    /// A frame a buggy worker writes, behind whatever it wrote before.
    pub(super) fn inject_to_supervisor(&mut self, msg: &WorkerMessage) {
        if !self.worker_closed {
            encode_frame_into(msg, MAX_FRAME, &mut self.to_supervisor).expect("frame fits");
        }
        self.settle();
    }

    /// The connection observes the worker's exit, if it died and that was not observed yet.
    pub(super) fn observe_exit(&mut self) {
        if let Some(status) = self.exit
            && !std::mem::replace(&mut self.exit_observed, true)
        {
            self.conn.handle_exit(self.now, Some(status));
        }
        self.settle();
    }

    // ---- delivery ----

    /// Stops automatic delivery in `dir`: bytes written stay in the pipe.
    pub(super) fn hold(&mut self, dir: Dir) {
        self.held[dir as usize] = true;
    }

    /// Resumes automatic delivery in `dir` and delivers what waits.
    pub(super) fn release(&mut self, dir: Dir) {
        self.held[dir as usize] = false;
        self.settle();
    }

    /// Delivers what is in the pipe to the worker now (even if held).
    pub(super) fn deliver_to_worker(&mut self) {
        self.pump_to_worker();
        self.settle();
    }

    /// Delivers what is in the pipe to the supervisor now (even if held).
    pub(super) fn deliver_to_supervisor(&mut self) {
        self.pump_to_supervisor();
        self.settle();
    }

    /// Bytes waiting in `dir`.
    pub(super) fn in_flight(&self, dir: Dir) -> usize {
        match dir {
            Dir::ToWorker => self.to_worker.len(),
            Dir::ToSupervisor => self.to_supervisor.len(),
        }
    }

    // ---- time ----

    /// Moves the clock `d` on, firing each machine's `handle_timeout` exactly at its
    /// `poll_timeout` as each comes due, in order.
    pub(super) fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        self.observe_exit();
        for _ in 0..10_000 {
            let sup = self.conn.poll_timeout();
            let worker = self.sdk.as_ref().and_then(Machine::poll_timeout);
            let next = match (sup, worker) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => break,
            };
            if next > target {
                break;
            }
            self.now = self.now.max(next);
            if let Some(deadline) = sup.filter(|d| *d <= self.now) {
                self.fires.push(Fire {
                    side: Side::Supervisor,
                    deadline,
                    at: self.now,
                });
                self.conn.handle_timeout(self.now);
            }
            if let Some(deadline) = worker.filter(|d| *d <= self.now)
                && let Some(sdk) = &mut self.sdk
            {
                self.fires.push(Fire {
                    side: Side::Worker,
                    deadline,
                    at: self.now,
                });
                sdk.handle_timeout(self.now);
            }
            self.settle();
        }
        self.now = target;
        self.settle();
    }

    // ---- the drivers ----

    /// Runs both machines until neither has anything to do: the connection's actions, the
    /// SDK's actions, frames and exit, and delivery in each direction not held.
    pub(super) fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut busy = false;
            while let Some(action) = self.conn.poll_action() {
                busy = true;
                self.supervisor_action(action);
            }
            busy |= self.drive_sdk();
            if !self.held[Dir::ToWorker as usize] {
                busy |= self.pump_to_worker();
            }
            if !self.held[Dir::ToSupervisor as usize] {
                busy |= self.pump_to_supervisor();
            }
            if !busy {
                return;
            }
        }
        panic!("the pair did not settle");
    }

    fn drive_sdk(&mut self) -> bool {
        let Some(sdk) = &mut self.sdk else {
            return false;
        };
        let mut busy = false;
        let actions: Vec<_> = std::iter::from_fn(|| sdk.poll_action()).collect();
        while let Some(frame) = sdk.poll_transmit() {
            busy = true;
            if !self.worker_closed && !self.sup_closed {
                self.to_supervisor.extend_from_slice(&frame);
            }
            sdk.handle_transmitted();
        }
        let exit = sdk.poll_exit();
        for action in actions {
            busy = true;
            match action {
                warden_worker::machine::Action::StartJob { job, .. } => {
                    self.handler_starts.push(job);
                    self.handler = Some((job, None));
                }
                warden_worker::machine::Action::Trip { job, cause } => {
                    self.trips.push((job, cause));
                    if let Some((running, tripped)) = &mut self.handler
                        && *running == job
                    {
                        *tripped = Some(cause);
                        if let Some(how) = self.on_trip.clone() {
                            self.handler = None;
                            if let Some(sdk) = &mut self.sdk {
                                sdk.handle_finished(self.now, job, how.outcome());
                            }
                        }
                    }
                }
            }
        }
        if let Some(exit) = exit {
            busy = true;
            // What a worker's `main` does when serving ends.
            let status = ExitStatus::Code(match &exit {
                Exit::Stopped => 0,
                Exit::Orphaned => ORPHAN_EXIT_CODE,
                Exit::Disconnected(_) | Exit::Protocol(_) => 1,
            });
            self.sdk_exit = Some(exit);
            self.sdk_exit_at = Some(self.now);
            self.process_exit(status);
        }
        busy
    }

    fn process_exit(&mut self, status: ExitStatus) {
        if self.exit.is_some() {
            return;
        }
        self.exit = Some(status);
        self.sdk = None;
        self.handler = None;
        self.worker_closed = true;
        if !self.late_exit {
            self.exit_observed = true;
            self.conn.handle_exit(self.now, Some(status));
        }
    }

    fn supervisor_action(&mut self, action: Action) {
        if self.reaped
            && matches!(
                action,
                Action::Send(_) | Action::Signal | Action::Continue | Action::Kill | Action::Reap
            )
        {
            self.after_reap.push(format!("{action:?}"));
        }
        match action {
            Action::Send(msg) => {
                if !self.sup_closed {
                    encode_frame_into(&msg, MAX_FRAME, &mut self.to_worker).expect("frame fits");
                }
            }
            Action::Signal => {
                self.signals.push(self.now);
                if let Some(sdk) = &mut self.sdk {
                    sdk.handle_signal();
                }
            }
            Action::Continue | Action::Progress(_) => {}
            Action::Kill => {
                if !self.exit_observed {
                    self.kills.push(self.now);
                }
                if self.exit.is_none() {
                    self.process_exit(KILLED);
                }
            }
            Action::Close => {
                self.sup_closed = true;
                self.to_supervisor.clear();
            }
            Action::Reap => {
                assert!(self.exit_observed, "reap asked before the exit");
                self.reaped = true;
                self.conn
                    .handle_reaped(self.now, self.exit, LimitReport::default());
            }
            Action::Reply(_, reply) => self.replies.push(*reply),
            Action::ShutdownDone(status) => self.shutdowns.push(status),
        }
    }

    /// The SDK's serve task reads: messages, then EOF once the supervisor's end is closed and
    /// the pipe is empty.
    fn pump_to_worker(&mut self) -> bool {
        let mut busy = false;
        if !self.to_worker.is_empty() {
            busy = true;
            let bytes = std::mem::take(&mut self.to_worker);
            if let Some(sdk) = &mut self.sdk {
                self.worker_rx.push(&bytes);
                loop {
                    match self.worker_rx.next::<SupervisorMessage>() {
                        Ok(Some(msg)) => {
                            self.worker_got.push(msg.clone());
                            sdk.handle_message(self.now, msg);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            sdk.handle_decode_error(e);
                            break;
                        }
                    }
                }
            }
        }
        if self.sup_closed
            && !self.worker_saw_eof
            && let Some(sdk) = &mut self.sdk
        {
            busy = true;
            self.worker_saw_eof = true;
            sdk.handle_channel_closed(self.now, None);
        }
        busy
    }

    /// The actor reads: messages (or a decode error), the partial-frame state, then EOF once
    /// the worker's end is closed and the pipe is empty.
    fn pump_to_supervisor(&mut self) -> bool {
        let mut busy = false;
        if !self.to_supervisor.is_empty() {
            busy = true;
            let bytes = std::mem::take(&mut self.to_supervisor);
            if self.conn.is_reading() && !self.sup_rx_broken {
                self.sup_rx.push(&bytes);
                loop {
                    match self.sup_rx.next::<WorkerMessage>() {
                        Ok(Some(msg)) => {
                            self.sup_got.push(msg.clone());
                            self.conn.handle_message(self.now, msg);
                            if !self.conn.is_reading() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            self.sup_rx_broken = true;
                            self.conn.handle_invalid(self.now, e);
                            break;
                        }
                    }
                }
                self.conn
                    .handle_partial(self.now, self.sup_rx.is_mid_frame());
            }
        }
        if self.worker_closed && !self.sup_saw_eof && self.conn.is_reading() {
            busy = true;
            self.sup_saw_eof = true;
            self.conn.handle_eof(self.now);
        }
        busy
    }
}
