//! The worker's side of the protocol as a sans-IO state machine: every decision the serve loop
//! makes, with no sockets, tasks, threads or clock reads.
//!
//! The drivers (the serve task, the writer thread and the job thread, in `serve.rs` and
//! `writer.rs`; a test harness elsewhere) feed it inputs through `handle_*` and act on what
//! `poll_*` gives back:
//!
//! | input                                | from                                         |
//! |--------------------------------------|----------------------------------------------|
//! | [`Machine::handle_message`]          | a decoded supervisor message                 |
//! | [`Machine::handle_decode_error`]     | bytes that do not decode                     |
//! | [`Machine::handle_progress`]         | a coalesced progress report of the handler   |
//! | [`Machine::handle_finished`]         | the handler returned, failed or panicked     |
//! | [`Machine::handle_signal`]           | the polite signal (SIGTERM)                  |
//! | [`Machine::handle_channel_closed`]   | EOF, or a read or write error                |
//! | [`Machine::handle_transmitted`]      | the frame last taken is written              |
//! | [`Machine::handle_timeout`]          | `now` reached [`Machine::poll_timeout`]      |
//!
//! | output                               | what the driver does                         |
//! |--------------------------------------|----------------------------------------------|
//! | [`Machine::poll_transmit`]           | writes one whole frame                       |
//! | [`Machine::poll_action`]             | starts a handler, trips a token              |
//! | [`Machine::poll_start`]              | starts the next handler (the job thread)     |
//! | [`Machine::poll_exit`]               | stops serving (or exits the process)         |
//! | [`Machine::poll_timeout`]            | calls `handle_timeout` then, at the latest   |
//! | [`Machine::wants_progress`]          | takes the handler's latest progress report   |
//!
//! # Decisions
//!
//! - One job runs at a time: the running job is the oldest one without a terminal message.
//! - Protocol version 1 ([`Config::queued_jobs`] off): a `StartJob` while a job runs is the
//!   supervisor's violation: the running job's token trips ([`CancelCause::ChannelClosed`]:
//!   nobody will read its result), nothing more is sent, and the exit is [`Exit::Protocol`].
//! - Protocol version 2 ([`Config::queued_jobs`] on): a `StartJob` while a job runs is queued;
//!   queued jobs start one at a time, in the order they arrived, each in the call that queued
//!   the terminal message of the one before it ([`Machine::handle_finished`]), and its deadline
//!   counts from then. A `StartJob` whose id is the running or a queued job's is a violation
//!   ([`ProtocolError::DuplicateJob`]).
//! - A `StartJob` after `Shutdown` is a violation, in either version. A `StartJob` after the
//!   polite signal crossed it and is dropped unanswered: the worker is about to exit.
//! - A `Cancel` trips the running job's token once. A `Cancel` for a queued job removes it and
//!   answers `Cancelled` at once, without starting it (this terminal message may overtake the
//!   running job's). A `Cancel` for any other job (one that finished, its result crossing the
//!   cancel on the wire) is ignored.
//! - Exactly one terminal message per job, queued behind the job's last progress report; no
//!   progress after it. A result that does not fit in a frame becomes a `Failed` that does.
//! - `Shutdown` ends serving once no job runs or waits and every queued frame is written
//!   ([`Exit::Stopped`]): the queued jobs run first. The polite signal ends it once the
//!   running job's result is written; it also trips the running job's token, and drops the
//!   queued jobs unanswered (they never started).
//! - The channel closing (EOF, a read or write error) trips the running job's token, drops the
//!   queued jobs unanswered, and starts the orphan grace: the handler returning in time gives
//!   [`Exit::Disconnected`], the grace running out [`Exit::Orphaned`]. Idle, the exit is
//!   [`Exit::Disconnected`] at once. Nothing is written after the channel closed. A violation
//!   (undecodable bytes among them) drops the queued jobs the same way.
//! - Heartbeats, if the supervisor asked for them, are due every interval from the moment the
//!   machine was made, idle or busy, until the exit is decided; at most one waits in the queue.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};
use warden_protocol::{
    DecodeError, EncodeError, JobId, SupervisorMessage, WorkerMessage, encode_frame_into,
};

use crate::error::{JobError, ProtocolError};
use crate::token::CancelCause;

/// Encoded size of a `Failed` message without its error text, at most: tag (1) + job id varint
/// (10) + text length varint (5).
const FAILED_OVERHEAD: usize = 16;

/// What the handshake settled, and the SDK's own settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest frame body the supervisor accepts.
    pub max_frame_len: u32,
    /// How often to send a heartbeat; `None` when the supervisor asked for none.
    pub heartbeat_interval: Option<Duration>,
    /// How long a handler may keep running after the channel closed.
    pub orphan_grace: Duration,
    /// Whether the supervisor may send `StartJob` while a job runs, to be queued behind it: the
    /// negotiated protocol version has queued jobs ([`warden_protocol::queues_jobs`]).
    pub queued_jobs: bool,
}

/// How a handler call ended.
#[derive(Debug)]
pub enum HandlerOutcome {
    /// It returned.
    Returned(Result<Vec<u8>, JobError>),
    /// It panicked or its task was lost; the text is the failure reported to the supervisor.
    Crashed(String),
}

/// Something the driver must do besides writing frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the handler for a job.
    StartJob {
        /// The job's id.
        job: JobId,
        /// Its input.
        payload: Vec<u8>,
        /// When the supervisor stops waiting for it: `deadline_ms` after it started (on
        /// receipt, or for a queued job when the job before it ended).
        deadline: Option<Instant>,
        /// The deadline as sent, for logs.
        deadline_ms: Option<u64>,
    },
    /// Trip the running job's token (at most once per job).
    Trip {
        /// The running job.
        job: JobId,
        /// Why.
        cause: CancelCause,
    },
}

/// How serving ends.
#[derive(Debug)]
pub enum Exit {
    /// `Shutdown` or the polite signal, no job running and every frame written.
    Stopped,
    /// The channel closed (with the read or write error, if any) and no handler is running.
    Disconnected(Option<io::Error>),
    /// The supervisor broke the protocol.
    Protocol(ProtocolError),
    /// The handler outlived the channel by more than the orphan grace: exit the process.
    Orphaned,
}

/// Why serving is ending without the supervisor having closed the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The supervisor sent `Shutdown`.
    Shutdown,
    /// The polite signal arrived.
    Signal,
}

#[derive(Debug)]
struct Running {
    id: JobId,
    tripped: bool,
}

/// A job received while another runs (protocol version 2); it has not started.
#[derive(Debug)]
struct Queued {
    id: JobId,
    payload: Vec<u8>,
    deadline_ms: Option<u64>,
}

#[derive(Debug)]
enum Outgoing {
    Heartbeat,
    Frame(Vec<u8>),
}

/// The worker's protocol state. See the [module docs](self).
///
/// # Invariants
/// - Jobs wait only behind a running one: `waiting` is empty whenever `job` is `None`.
#[derive(Debug)]
pub struct Machine {
    config: Config,
    job: Option<Running>,
    /// Jobs received while `job` runs, oldest first (protocol version 2 only).
    waiting: VecDeque<Queued>,
    stopping: Option<Stop>,
    /// The channel is gone; nothing more is written.
    closed: bool,
    close_error: Option<io::Error>,
    orphan_deadline: Option<Instant>,
    next_heartbeat: Option<Instant>,
    queue: VecDeque<Outgoing>,
    /// A frame was taken by `poll_transmit` and not yet reported written.
    in_flight: bool,
    actions: VecDeque<Action>,
    exit: Option<Exit>,
    /// Set once an exit is decided (it may have been taken already).
    ended: bool,
}

impl Machine {
    /// A machine for a connection whose handshake just completed at `now`.
    pub fn new(config: Config, now: Instant) -> Machine {
        let next_heartbeat = config
            .heartbeat_interval
            .and_then(|interval| now.checked_add(interval));
        Machine {
            config,
            job: None,
            waiting: VecDeque::new(),
            stopping: None,
            closed: false,
            close_error: None,
            orphan_deadline: None,
            next_heartbeat,
            queue: VecDeque::new(),
            in_flight: false,
            actions: VecDeque::new(),
            exit: None,
            ended: false,
        }
    }

    /// A message from the supervisor, decoded.
    ///
    /// Messages after the exit is decided are ignored, except that a violation still replaces
    /// an [`Exit::Stopped`] not yet taken (a `StartJob` right behind `Shutdown` is reported).
    pub fn handle_message(&mut self, now: Instant, msg: SupervisorMessage) {
        if self.closed || (self.ended && !self.stop_pending()) {
            return;
        }
        match msg {
            SupervisorMessage::StartJob {
                job,
                payload,
                deadline_ms,
            } => self.receive(now, job, payload, deadline_ms),
            SupervisorMessage::Cancel { job, reason } => {
                if let Some(running) = self.job.as_mut().filter(|r| r.id == job) {
                    if !running.tripped {
                        running.tripped = true;
                        info!(%job, %reason, "cancel requested");
                        self.actions.push_back(Action::Trip {
                            job,
                            cause: CancelCause::Message(reason),
                        });
                    }
                } else if let Some(at) = self.waiting.iter().position(|q| q.id == job) {
                    self.waiting.remove(at);
                    info!(%job, %reason, "cancel for a queued job: answered without running it");
                    self.queue_terminal(WorkerMessage::Cancelled { job });
                } else {
                    // It crossed with the job's result.
                    debug!(%job, %reason, "ignoring cancel for a job that is not running");
                }
            }
            SupervisorMessage::Shutdown => {
                info!(
                    running = self.job.is_some(),
                    queued = self.waiting.len(),
                    "shutdown requested"
                );
                self.stopping.get_or_insert(Stop::Shutdown);
                self.check_stopped();
            }
            other => self.violation(ProtocolError::Unexpected { kind: other.kind() }),
        }
    }

    /// The supervisor's bytes do not decode: the stream is lost.
    pub fn handle_decode_error(&mut self, error: DecodeError) {
        if self.closed || (self.ended && !self.stop_pending()) {
            return;
        }
        self.violation(ProtocolError::Decode(error));
    }

    /// The handler's latest progress for `job` (ignored unless that job is running).
    pub fn handle_progress(&mut self, job: JobId, fraction: Option<f32>, text: Option<String>) {
        if self.ended || self.closed || self.job.as_ref().is_none_or(|r| r.id != job) {
            return;
        }
        let msg = WorkerMessage::Progress {
            job,
            fraction,
            text,
        };
        if let Err(e) = self.queue_message(&msg) {
            debug!(error = %e, "dropping a progress report that does not fit in a frame");
        }
    }

    /// The handler for `job` ended at `now`. Queues the job's single terminal message (ignored
    /// for a job that is not running, so a second call for the same job sends nothing), then
    /// starts the next queued job, if any: its [`Action::StartJob`] is queued (a driver that
    /// starts it on the thread that called this takes it with [`poll_start`](Self::poll_start))
    /// and its deadline counts from `now`.
    pub fn handle_finished(&mut self, now: Instant, job: JobId, outcome: HandlerOutcome) {
        let Some(running) = self.job.take_if(|r| r.id == job) else {
            return;
        };
        if self.ended {
            return;
        }
        if self.closed {
            info!(%job, "handler returned after the channel closed");
            self.orphan_deadline = None;
            let error = self.close_error.take();
            self.end(Exit::Disconnected(error));
            return;
        }
        let max = self.config.max_frame_len;
        let msg = match outcome {
            HandlerOutcome::Returned(Ok(output)) if output.len() > max as usize => {
                WorkerMessage::Failed {
                    job,
                    error: output_too_large(output.len(), max),
                }
            }
            HandlerOutcome::Returned(Ok(output)) => WorkerMessage::Completed { job, output },
            HandlerOutcome::Returned(Err(JobError::Cancelled)) if running.tripped => {
                WorkerMessage::Cancelled { job }
            }
            HandlerOutcome::Returned(Err(JobError::Cancelled)) => WorkerMessage::Failed {
                job,
                error: "handler returned cancelled without a cancel request".into(),
            },
            HandlerOutcome::Returned(Err(JobError::Failed { message })) => WorkerMessage::Failed {
                job,
                error: message,
            },
            HandlerOutcome::Crashed(error) => WorkerMessage::Failed { job, error },
        };
        self.queue_terminal(msg);
        if let Some(next) = self.waiting.pop_front() {
            self.start(now, next);
        }
        self.check_stopped();
    }

    /// The polite signal arrived: trip the running job's token, drop the queued ones, stop once
    /// it has finished.
    pub fn handle_signal(&mut self) {
        if self.ended || self.closed || self.stopping == Some(Stop::Signal) {
            return;
        }
        self.stopping = Some(Stop::Signal);
        self.drop_waiting("polite signal");
        match &mut self.job {
            Some(running) => {
                info!(job = %running.id, "polite signal: cancelling the running job");
                if !running.tripped {
                    running.tripped = true;
                    self.actions.push_back(Action::Trip {
                        job: running.id,
                        cause: CancelCause::Signal,
                    });
                }
            }
            None => info!("polite signal while idle"),
        }
        self.check_stopped();
    }

    /// The channel is gone: EOF (`None`), or a read or write error.
    pub fn handle_channel_closed(&mut self, now: Instant, error: Option<io::Error>) {
        if self.ended || self.closed {
            return;
        }
        self.closed = true;
        self.queue.clear();
        self.in_flight = false;
        self.next_heartbeat = None;
        self.drop_waiting("channel closed");
        match &mut self.job {
            Some(running) => {
                info!(job = %running.id, "channel closed: cancelling the running job");
                if !running.tripped {
                    running.tripped = true;
                    self.actions.push_back(Action::Trip {
                        job: running.id,
                        cause: CancelCause::ChannelClosed,
                    });
                }
                self.close_error = error;
                // A grace too long to represent never runs out.
                self.orphan_deadline = now.checked_add(self.config.orphan_grace);
            }
            None => self.end(Exit::Disconnected(error)),
        }
    }

    /// The frame last returned by [`poll_transmit`](Self::poll_transmit) is written.
    pub fn handle_transmitted(&mut self) {
        self.in_flight = false;
        self.check_stopped();
    }

    /// Time passed: `now` is at or after [`poll_timeout`](Self::poll_timeout) (earlier calls do
    /// nothing harmful).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        if self.orphan_deadline.is_some_and(|d| d <= now) {
            error!(
                grace = ?self.config.orphan_grace,
                "handler still running after the channel closed; exiting"
            );
            self.orphan_deadline = None;
            self.end(Exit::Orphaned);
            return;
        }
        if let (Some(due), Some(interval)) = (self.next_heartbeat, self.config.heartbeat_interval) {
            if due <= now {
                if !self.queue.iter().any(|o| matches!(o, Outgoing::Heartbeat)) {
                    self.queue.push_back(Outgoing::Heartbeat);
                }
                // Keep the rhythm; after a stall, count from now rather than bursting.
                let next = due.checked_add(interval).filter(|next| *next > now);
                self.next_heartbeat = next.or_else(|| now.checked_add(interval));
            }
        }
    }

    /// The next whole frame to write, if any. Until it is reported with
    /// [`handle_transmitted`](Self::handle_transmitted) the machine counts the writer as busy.
    /// Nothing once the channel closed or the exit is decided.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.closed || self.ended {
            return None;
        }
        let frame = match self.queue.pop_front()? {
            Outgoing::Heartbeat => {
                let mut frame = Vec::new();
                // Five bytes; the frame limit is at least 16 (checked at the handshake).
                if let Err(e) = encode_frame_into(
                    &WorkerMessage::Heartbeat,
                    self.config.max_frame_len,
                    &mut frame,
                ) {
                    warn!(error = %e, "heartbeat does not fit in a frame");
                    return None;
                }
                frame
            }
            Outgoing::Frame(frame) => frame,
        };
        self.in_flight = true;
        Some(frame)
    }

    /// Whether the frame last returned by [`poll_transmit`](Self::poll_transmit) is still being
    /// written: a driver with more than one writer takes no new frame until it is reported.
    pub fn is_writing(&self) -> bool {
        self.in_flight
    }

    /// The next action for the driver, in the order decided.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Takes the first [`Action::StartJob`] out of the actions, if one waits there, and leaves
    /// the others in order.
    ///
    /// For a driver whose job thread starts the next queued job itself: called in the same
    /// critical section as the [`handle_finished`](Self::handle_finished) that started it, it
    /// hands that thread the start before anyone else can see the new job (so the driver can
    /// register the job's token before a trip for it is decided). Only an
    /// [`Action::StartJob`] is returned.
    pub fn poll_start(&mut self) -> Option<Action> {
        let at = self
            .actions
            .iter()
            .position(|action| matches!(action, Action::StartJob { .. }))?;
        self.actions.remove(at)
    }

    /// Whether the serve task has something to do: an action to perform or the exit to take.
    /// Whoever changes the machine from another thread wakes it when this holds.
    pub fn wants_serve(&self) -> bool {
        !self.actions.is_empty() || self.exit.is_some()
    }

    /// How serving ends, once decided (returned once).
    pub fn poll_exit(&mut self) -> Option<Exit> {
        self.exit.take()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next: the next heartbeat or the end
    /// of the orphan grace. `None`: no timer (no heartbeats, or the exit is decided).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        match (self.next_heartbeat, self.orphan_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The running job, when the writer is idle: the time to send its latest progress report.
    /// Progress coalesces in the handler's reporter while frames wait, so the queue stays short.
    pub fn wants_progress(&self) -> Option<JobId> {
        if self.ended || self.closed || self.in_flight || !self.queue.is_empty() {
            return None;
        }
        self.job.as_ref().map(|r| r.id)
    }

    /// The job whose handler is running, if any.
    pub fn running(&self) -> Option<JobId> {
        self.job.as_ref().map(|r| r.id)
    }

    /// The jobs queued behind the running one, oldest first (protocol version 2).
    pub fn queued(&self) -> impl Iterator<Item = JobId> + '_ {
        self.waiting.iter().map(|q| q.id)
    }

    /// Whether the exit is decided (even if already taken).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether the decided exit is [`Exit::Orphaned`] and not yet taken.
    pub fn is_orphaned(&self) -> bool {
        matches!(self.exit, Some(Exit::Orphaned))
    }

    fn stop_pending(&self) -> bool {
        matches!(self.exit, Some(Exit::Stopped))
    }

    /// A `StartJob` arrived: start it, queue it behind the running job, or judge it.
    fn receive(&mut self, now: Instant, job: JobId, payload: Vec<u8>, deadline_ms: Option<u64>) {
        if !self.config.queued_jobs {
            if let Some(running) = &self.job {
                let running = running.id;
                return self.violation(ProtocolError::StartWhileRunning {
                    running,
                    started: job,
                });
            }
        } else if self.running() == Some(job) || self.waiting.iter().any(|q| q.id == job) {
            return self.violation(ProtocolError::DuplicateJob { job });
        }
        match self.stopping {
            Some(Stop::Shutdown) => {
                return self.violation(ProtocolError::StartAfterShutdown { started: job });
            }
            // The start crossed with the signal; the process is about to exit.
            Some(Stop::Signal) => {
                warn!(%job, "not starting a job after the polite signal");
                return;
            }
            None => {}
        }
        let queued = Queued {
            id: job,
            payload,
            deadline_ms,
        };
        if self.job.is_some() {
            // Only with queued jobs: without, a start while one runs was judged above.
            debug!(%job, ahead = self.waiting.len() + 1, "job queued");
            self.waiting.push_back(queued);
        } else {
            self.start(now, queued);
        }
    }

    /// Starts `job` at `now`: it is the running job from here, and its deadline counts from now.
    fn start(&mut self, now: Instant, job: Queued) {
        let Queued {
            id,
            payload,
            deadline_ms,
        } = job;
        let deadline = deadline_ms.and_then(|ms| now.checked_add(Duration::from_millis(ms)));
        self.job = Some(Running { id, tripped: false });
        self.actions.push_back(Action::StartJob {
            job: id,
            payload,
            deadline,
            deadline_ms,
        });
    }

    /// Forgets the queued jobs without an answer: they never started, and the supervisor knows
    /// which they are (every job behind the running one).
    fn drop_waiting(&mut self, why: &str) {
        if !self.waiting.is_empty() {
            let dropped: Vec<JobId> = self.queued().collect();
            info!(?dropped, "{why}: dropping the queued jobs unanswered");
            self.waiting.clear();
        }
    }

    /// The supervisor broke the rules: stop at once. The running job's result has nowhere to go.
    fn violation(&mut self, error: ProtocolError) {
        warn!(%error, "protocol violation by the supervisor");
        self.drop_waiting("protocol violation");
        if let Some(running) = self.job.take() {
            if !running.tripped {
                self.actions.push_back(Action::Trip {
                    job: running.id,
                    cause: CancelCause::ChannelClosed,
                });
            }
        }
        self.queue.clear();
        self.end(Exit::Protocol(error));
    }

    fn check_stopped(&mut self) {
        if self.ended
            || self.closed
            || self.job.is_some()
            || !self.waiting.is_empty()
            || self.in_flight
        {
            return;
        }
        // Heartbeats alone do not hold up a stop.
        if self.queue.iter().any(|o| matches!(o, Outgoing::Frame(_))) {
            return;
        }
        if let Some(stop) = self.stopping {
            info!(?stop, "stopping");
            self.queue.clear();
            self.end(Exit::Stopped);
        }
    }

    fn end(&mut self, exit: Exit) {
        self.ended = true;
        self.next_heartbeat = None;
        self.exit = Some(exit);
    }

    fn queue_message(&mut self, msg: &WorkerMessage) -> Result<(), EncodeError> {
        let mut frame = Vec::new();
        encode_frame_into(msg, self.config.max_frame_len, &mut frame)?;
        self.queue.push_back(Outgoing::Frame(frame));
        Ok(())
    }

    /// Queues a terminal message; one that does not fit in a frame degrades to a `Failed` that
    /// does, so an oversized result never costs the connection.
    fn queue_terminal(&mut self, msg: WorkerMessage) {
        let max = self.config.max_frame_len;
        let kind = msg.kind();
        let msg = match self.queue_message(&msg) {
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
                    other => other,
                }
            }
        };
        let WorkerMessage::Failed { job, mut error } = msg else {
            error!(outcome = kind, "could not send the job's terminal message");
            return;
        };
        truncate_string(&mut error, (max as usize).saturating_sub(FAILED_OVERHEAD));
        match self.queue_message(&WorkerMessage::Failed { job, error }) {
            Ok(()) => info!(outcome = "failed", "job finished"),
            Err(e) => error!(error = %e, "could not send the job's terminal message"),
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

#[cfg(test)]
mod tests {
    //! The machine on a virtual clock: `t0` is read once, every later instant is `t0 + n ms`.

    use super::*;
    use warden_protocol::{CancelReason, FrameDecoder};

    const GRACE: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A machine for a protocol version 1 connection (no queued jobs).
    fn machine(heartbeat_ms: Option<u64>) -> (Machine, Instant) {
        machine_with(heartbeat_ms, false)
    }

    /// A machine for a protocol version 2 connection (queued jobs).
    fn machine_v2(heartbeat_ms: Option<u64>) -> (Machine, Instant) {
        machine_with(heartbeat_ms, true)
    }

    fn machine_with(heartbeat_ms: Option<u64>, queued_jobs: bool) -> (Machine, Instant) {
        let t0 = Instant::now();
        let config = Config {
            max_frame_len: 4096,
            heartbeat_interval: heartbeat_ms.map(ms),
            orphan_grace: GRACE,
            queued_jobs,
        };
        (Machine::new(config, t0), t0)
    }

    fn start(job: u64) -> SupervisorMessage {
        SupervisorMessage::StartJob {
            job: JobId(job),
            payload: vec![1, 2],
            deadline_ms: Some(500),
        }
    }

    fn cancel(job: u64) -> SupervisorMessage {
        SupervisorMessage::Cancel {
            job: JobId(job),
            reason: CancelReason::Timeout,
        }
    }

    fn ok(output: &[u8]) -> HandlerOutcome {
        HandlerOutcome::Returned(Ok(output.to_vec()))
    }

    fn decode(frame: &[u8]) -> WorkerMessage {
        let mut decoder = FrameDecoder::new(u32::MAX);
        decoder.push(frame);
        let msg = decoder.next().expect("valid frame").expect("a whole frame");
        assert_eq!(decoder.buffered(), 0, "one frame per transmit");
        msg
    }

    /// Writes everything queued, as the writer thread would, and returns what went out.
    fn sent(m: &mut Machine) -> Vec<WorkerMessage> {
        let mut out = Vec::new();
        while let Some(frame) = m.poll_transmit() {
            out.push(decode(&frame));
            m.handle_transmitted();
        }
        out
    }

    fn actions(m: &mut Machine) -> Vec<Action> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    fn trip(job: u64, cause: CancelCause) -> Action {
        Action::Trip {
            job: JobId(job),
            cause,
        }
    }

    #[test]
    fn start_job_computes_the_deadline_at_receipt() {
        let (mut m, t0) = machine(None);
        m.handle_message(t0 + ms(7), start(1));
        assert_eq!(
            actions(&mut m),
            [Action::StartJob {
                job: JobId(1),
                payload: vec![1, 2],
                deadline: Some(t0 + ms(507)),
                deadline_ms: Some(500),
            }]
        );
        assert_eq!(m.running(), Some(JobId(1)));
    }

    #[test]
    fn heartbeats_are_due_every_interval_idle_or_busy() {
        let (mut m, t0) = machine(Some(50));
        assert_eq!(m.poll_timeout(), Some(t0 + ms(50)));
        m.handle_timeout(t0 + ms(49));
        assert_eq!(sent(&mut m), []);
        m.handle_timeout(t0 + ms(50));
        assert_eq!(sent(&mut m), [WorkerMessage::Heartbeat]);
        assert_eq!(m.poll_timeout(), Some(t0 + ms(100)));
        m.handle_message(t0 + ms(60), start(1));
        m.handle_timeout(t0 + ms(100));
        assert_eq!(sent(&mut m), [WorkerMessage::Heartbeat]);
    }

    #[test]
    fn a_stalled_writer_gets_one_heartbeat_not_a_burst() {
        let (mut m, t0) = machine(Some(50));
        for n in 1..=10 {
            m.handle_timeout(t0 + ms(50 * n));
        }
        assert_eq!(sent(&mut m), [WorkerMessage::Heartbeat]);
        // After a late wake-up the rhythm restarts from then.
        m.handle_timeout(t0 + ms(1_000));
        m.handle_timeout(t0 + ms(1_234));
        assert_eq!(m.poll_timeout(), Some(t0 + ms(1_284)));
    }

    #[test]
    fn no_heartbeats_when_the_supervisor_asked_for_none() {
        let (mut m, t0) = machine(None);
        assert_eq!(m.poll_timeout(), None);
        m.handle_timeout(t0 + Duration::from_secs(3600));
        assert_eq!(sent(&mut m), []);
        m.handle_message(t0, start(1));
        assert_eq!(m.poll_timeout(), None, "a running job adds no timer");
    }

    #[test]
    fn stale_cancel_is_ignored() {
        let (mut m, t0) = machine(None);
        // Idle: a cancel for a job that never ran here.
        m.handle_message(t0, cancel(9));
        assert_eq!(actions(&mut m), []);
        assert_eq!(sent(&mut m), []);
        // Running job 1: a cancel naming another job does not touch it.
        m.handle_message(t0, start(1));
        let _ = actions(&mut m);
        m.handle_message(t0, cancel(9));
        assert_eq!(actions(&mut m), []);
        m.handle_finished(
            t0,
            JobId(1),
            HandlerOutcome::Returned(Err(JobError::Cancelled)),
        );
        assert_eq!(
            sent(&mut m),
            [WorkerMessage::Failed {
                job: JobId(1),
                error: "handler returned cancelled without a cancel request".into()
            }]
        );
    }

    #[test]
    fn cancel_trips_once_and_is_acknowledged() {
        let (mut m, t0) = machine(None);
        m.handle_message(t0, start(1));
        let _ = actions(&mut m);
        m.handle_message(t0, cancel(1));
        m.handle_message(t0, cancel(1));
        assert_eq!(
            actions(&mut m),
            [trip(1, CancelCause::Message(CancelReason::Timeout))]
        );
        m.handle_finished(
            t0,
            JobId(1),
            HandlerOutcome::Returned(Err(JobError::Cancelled)),
        );
        assert_eq!(sent(&mut m), [WorkerMessage::Cancelled { job: JobId(1) }]);
    }

    #[test]
    fn cancel_after_the_result_was_sent_is_ignored() {
        let (mut m, t0) = machine(None);
        m.handle_message(t0, start(1));
        m.handle_finished(t0, JobId(1), ok(b"out"));
        assert_eq!(
            sent(&mut m),
            [WorkerMessage::Completed {
                job: JobId(1),
                output: b"out".to_vec()
            }]
        );
        let _ = actions(&mut m);
        // The supervisor's cancel crossed the result on the wire.
        m.handle_message(t0 + ms(1), cancel(1));
        assert_eq!(actions(&mut m), []);
        assert_eq!(sent(&mut m), []);
        assert!(m.poll_exit().is_none(), "not a violation");
        // And it does not leak into the next job.
        m.handle_message(t0 + ms(2), start(2));
        m.handle_finished(
            t0,
            JobId(2),
            HandlerOutcome::Returned(Err(JobError::Cancelled)),
        );
        assert!(matches!(
            sent(&mut m).as_slice(),
            [WorkerMessage::Failed { job: JobId(2), .. }]
        ));
    }

    #[test]
    fn result_after_a_cancel_is_completed() {
        let (mut m, t0) = machine(None);
        m.handle_message(t0, start(1));
        m.handle_message(t0, cancel(1));
        m.handle_finished(t0, JobId(1), ok(b"anyway"));
        assert_eq!(
            sent(&mut m),
            [WorkerMessage::Completed {
                job: JobId(1),
                output: b"anyway".to_vec()
            }]
        );
    }

    #[test]
    fn terminal_message_exactly_once() {
        let (mut m, t0) = machine(None);
        m.handle_message(t0, start(1));
        m.handle_finished(t0, JobId(1), ok(b"a"));
        m.handle_finished(t0, JobId(1), ok(b"b"));
        m.handle_finished(t0, JobId(2), ok(b"c"));
        assert_eq!(
            sent(&mut m),
            [WorkerMessage::Completed {
                job: JobId(1),
                output: b"a".to_vec()
            }]
        );
    }

    #[test]
    fn progress_goes_before_the_terminal_message_and_never_after() {
        let (mut m, t0) = machine(None);
        assert_eq!(m.wants_progress(), None, "idle");
        m.handle_message(t0, start(1));
        assert_eq!(m.wants_progress(), Some(JobId(1)));
        m.handle_progress(JobId(1), Some(0.5), None);
        assert_eq!(m.wants_progress(), None, "a frame is waiting");
        m.handle_finished(t0, JobId(1), ok(b""));
        m.handle_progress(JobId(1), Some(0.9), None);
        assert_eq!(
            sent(&mut m),
            [
                WorkerMessage::Progress {
                    job: JobId(1),
                    fraction: Some(0.5),
                    text: None
                },
                WorkerMessage::Completed {
                    job: JobId(1),
                    output: vec![]
                }
            ]
        );
    }

    #[test]
    fn output_over_the_frame_limit_is_failed() {
        let (mut m, t0) = machine(None);
        m.handle_message(t0, start(1));
        m.handle_finished(t0, JobId(1), HandlerOutcome::Returned(Ok(vec![0; 5000])));
        assert_eq!(
            sent(&mut m),
            [WorkerMessage::Failed {
                job: JobId(1),
                error: "output of 5000 bytes exceeds the supervisor's frame limit of 4096 bytes"
                    .into()
            }]
        );
    }

    #[test]
    fn second_start_while_running_is_a_violation_that_trips_the_token() {
        // Protocol version 1: the supervisor queues nothing.
        let (mut m, t0) = machine(Some(50));
        m.handle_message(t0, start(1));
        let _ = actions(&mut m);
        m.handle_message(t0, start(2));
        assert_eq!(actions(&mut m), [trip(1, CancelCause::ChannelClosed)]);
        assert!(matches!(
            m.poll_exit(),
            Some(Exit::Protocol(ProtocolError::StartWhileRunning {
                running: JobId(1),
                started: JobId(2)
            }))
        ));
        // Job 1's result has nowhere to go; nothing more is sent, no timer is left.
        m.handle_finished(t0, JobId(1), ok(b""));
        m.handle_timeout(t0 + ms(50));
        assert_eq!(sent(&mut m), []);
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn shutdown_while_idle_stops_at_once() {
        let (mut m, t0) = machine(Some(50));
        m.handle_message(t0, SupervisorMessage::Shutdown);
        assert!(matches!(m.poll_exit(), Some(Exit::Stopped)));
        assert_eq!(m.poll_timeout(), None, "no heartbeat after the stop");
    }

    #[test]
    fn shutdown_while_running_stops_once_the_result_is_written() {
        let (mut m, t0) = machine(None);
        m.handle_message(t0, start(1));
        let _ = actions(&mut m);
        m.handle_message(t0, SupervisorMessage::Shutdown);
        assert!(m.poll_exit().is_none(), "the job runs on");
        assert_eq!(actions(&mut m), [], "shutdown is not a cancel");
        m.handle_finished(t0, JobId(1), ok(b"last"));
        let frame = m.poll_transmit().expect("the result");
        assert!(m.poll_exit().is_none(), "not before the result is written");
        m.handle_transmitted();
        assert!(matches!(m.poll_exit(), Some(Exit::Stopped)));
        assert!(matches!(decode(&frame), WorkerMessage::Completed { .. }));
    }

    #[test]
    fn start_right_behind_shutdown_is_a_violation() {
        let (mut m, t0) = machine(None);
        m.handle_message(t0, SupervisorMessage::Shutdown);
        m.handle_message(t0, start(1));
        assert!(matches!(
            m.poll_exit(),
            Some(Exit::Protocol(ProtocolError::StartAfterShutdown {
                started: JobId(1)
            }))
        ));
        assert_eq!(actions(&mut m), []);
    }

    #[test]
    fn signal_trips_the_running_job_and_stops_after_its_result() {
        let (mut m, t0) = machine(None);
        m.handle_message(t0, start(1));
        let _ = actions(&mut m);
        m.handle_signal();
        assert_eq!(actions(&mut m), [trip(1, CancelCause::Signal)]);
        assert!(m.poll_exit().is_none());
        m.handle_finished(
            t0,
            JobId(1),
            HandlerOutcome::Returned(Err(JobError::Cancelled)),
        );
        assert_eq!(sent(&mut m), [WorkerMessage::Cancelled { job: JobId(1) }]);
        // The next start crossed the signal: dropped, not a violation.
        m.handle_message(t0, start(2));
        assert_eq!(actions(&mut m), []);
        assert!(matches!(m.poll_exit(), Some(Exit::Stopped)));
    }

    #[test]
    fn eof_while_idle_disconnects_at_once() {
        let (mut m, t0) = machine(Some(50));
        m.handle_channel_closed(t0, None);
        assert!(matches!(m.poll_exit(), Some(Exit::Disconnected(None))));
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn eof_while_running_trips_and_the_orphan_grace_bounds_the_exit() {
        let (mut m, t0) = machine(Some(50));
        m.handle_message(t0, start(1));
        let _ = actions(&mut m);
        m.handle_progress(JobId(1), Some(0.1), None);
        m.handle_channel_closed(t0 + ms(10), None);
        assert_eq!(actions(&mut m), [trip(1, CancelCause::ChannelClosed)]);
        assert_eq!(
            sent(&mut m),
            [],
            "nothing is written after the channel closed"
        );
        // No more heartbeats: the only timer left is the grace.
        assert_eq!(m.poll_timeout(), Some(t0 + ms(10) + GRACE));
        m.handle_timeout(t0 + ms(10) + GRACE - ms(1));
        assert!(m.poll_exit().is_none());
        assert!(!m.is_orphaned());
        m.handle_timeout(t0 + ms(10) + GRACE);
        assert!(m.is_orphaned());
        assert!(matches!(m.poll_exit(), Some(Exit::Orphaned)));
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn handler_returning_within_the_grace_disconnects_with_the_error() {
        let (mut m, t0) = machine(None);
        m.handle_message(t0, start(1));
        let _ = actions(&mut m);
        m.handle_message(t0, cancel(1));
        m.handle_channel_closed(t0, Some(io::ErrorKind::BrokenPipe.into()));
        assert_eq!(
            actions(&mut m),
            [trip(1, CancelCause::Message(CancelReason::Timeout))],
            "the token trips once, for the first cause"
        );
        m.handle_finished(
            t0,
            JobId(1),
            HandlerOutcome::Returned(Err(JobError::Cancelled)),
        );
        assert_eq!(sent(&mut m), []);
        match m.poll_exit() {
            Some(Exit::Disconnected(Some(e))) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
            other => panic!("expected a disconnect with the error, got {other:?}"),
        }
        m.handle_timeout(t0 + GRACE);
        assert!(
            m.poll_exit().is_none(),
            "no orphan exit after the handler returned"
        );
    }

    #[test]
    fn frame_in_flight_when_the_channel_closes_is_dropped() {
        let (mut m, t0) = machine(Some(50));
        m.handle_timeout(t0 + ms(50));
        assert!(m.poll_transmit().is_some());
        // The writer's send failed: EPIPE.
        m.handle_channel_closed(t0 + ms(51), Some(io::ErrorKind::BrokenPipe.into()));
        m.handle_transmitted();
        assert!(matches!(m.poll_exit(), Some(Exit::Disconnected(Some(_)))));
        assert!(m.poll_transmit().is_none());
    }

    #[test]
    fn decode_error_is_a_violation() {
        let (mut m, t0) = machine(None);
        m.handle_message(t0, start(1));
        let _ = actions(&mut m);
        m.handle_decode_error(DecodeError::Truncated);
        assert_eq!(actions(&mut m), [trip(1, CancelCause::ChannelClosed)]);
        assert!(matches!(
            m.poll_exit(),
            Some(Exit::Protocol(ProtocolError::Decode(_)))
        ));
    }

    #[test]
    fn hello_after_the_handshake_is_a_violation() {
        let (mut m, t0) = machine(None);
        m.handle_message(
            t0,
            SupervisorMessage::Refuse {
                reason: "late".into(),
            },
        );
        assert!(matches!(
            m.poll_exit(),
            Some(Exit::Protocol(ProtocolError::Unexpected { kind: "refuse" }))
        ));
    }

    // ---- protocol version 2: queued jobs ----

    fn start_at(m: &mut Machine, now: Instant, job: u64) {
        m.handle_message(now, start(job));
    }

    fn started(job: u64, deadline: Instant) -> Action {
        Action::StartJob {
            job: JobId(job),
            payload: vec![1, 2],
            deadline: Some(deadline),
            deadline_ms: Some(500),
        }
    }

    fn completed(job: u64, output: &[u8]) -> WorkerMessage {
        WorkerMessage::Completed {
            job: JobId(job),
            output: output.to_vec(),
        }
    }

    #[test]
    fn queued_jobs_run_one_at_a_time_in_arrival_order() {
        let (mut m, t0) = machine_v2(None);
        for job in 1..=3 {
            start_at(&mut m, t0, job);
        }
        assert_eq!(actions(&mut m), [started(1, t0 + ms(500))]);
        assert_eq!(m.running(), Some(JobId(1)));
        assert_eq!(m.queued().collect::<Vec<_>>(), [JobId(2), JobId(3)]);
        assert!(m.poll_exit().is_none(), "not a violation in version 2");
        assert_eq!(sent(&mut m), []);

        m.handle_finished(t0 + ms(10), JobId(1), ok(b"one"));
        assert_eq!(actions(&mut m), [started(2, t0 + ms(510))]);
        assert_eq!(m.running(), Some(JobId(2)));
        m.handle_finished(t0 + ms(30), JobId(2), ok(b"two"));
        assert_eq!(actions(&mut m), [started(3, t0 + ms(530))]);
        m.handle_finished(t0 + ms(40), JobId(3), ok(b"three"));
        assert_eq!(actions(&mut m), []);
        assert_eq!(m.running(), None);
        assert_eq!(
            sent(&mut m),
            [
                completed(1, b"one"),
                completed(2, b"two"),
                completed(3, b"three")
            ]
        );
    }

    #[test]
    fn a_queued_jobs_deadline_counts_from_its_start_not_its_receipt() {
        let (mut m, t0) = machine_v2(None);
        start_at(&mut m, t0, 1);
        start_at(&mut m, t0 + ms(1), 2);
        let _ = actions(&mut m);
        m.handle_finished(t0 + ms(200), JobId(1), ok(b""));
        assert_eq!(actions(&mut m), [started(2, t0 + ms(700))]);
    }

    #[test]
    fn the_next_job_starts_once_the_terminal_message_before_it_is_queued() {
        let (mut m, t0) = machine_v2(None);
        start_at(&mut m, t0, 1);
        start_at(&mut m, t0, 2);
        let _ = actions(&mut m);
        // Job 2's progress is not job 1's to send, nor anything before job 2 started.
        m.handle_progress(JobId(2), Some(0.5), None);
        assert_eq!(m.wants_progress(), Some(JobId(1)));
        m.handle_finished(t0, JobId(1), ok(b"one"));
        assert_eq!(
            m.wants_progress(),
            None,
            "job 1's result waits to be written"
        );
        m.handle_progress(JobId(2), Some(0.25), None);
        assert_eq!(
            sent(&mut m),
            [
                completed(1, b"one"),
                WorkerMessage::Progress {
                    job: JobId(2),
                    fraction: Some(0.25),
                    text: None
                }
            ]
        );
        assert_eq!(m.wants_progress(), Some(JobId(2)));
    }

    #[test]
    fn cancel_for_a_queued_job_is_answered_at_once_and_it_never_starts() {
        let (mut m, t0) = machine_v2(None);
        for job in 1..=3 {
            start_at(&mut m, t0, job);
        }
        let _ = actions(&mut m);
        m.handle_message(t0, cancel(3));
        // Overtakes the running job's result; no token trips (job 3 has none yet).
        assert_eq!(sent(&mut m), [WorkerMessage::Cancelled { job: JobId(3) }]);
        assert_eq!(actions(&mut m), []);
        assert_eq!(m.queued().collect::<Vec<_>>(), [JobId(2)]);
        m.handle_finished(t0, JobId(1), ok(b""));
        assert_eq!(actions(&mut m), [started(2, t0 + ms(500))]);
        m.handle_finished(t0, JobId(2), ok(b""));
        assert_eq!(actions(&mut m), [], "job 3 never starts");
        // A second cancel for it is stale: ignored, no second terminal message.
        m.handle_message(t0, cancel(3));
        assert_eq!(
            sent(&mut m),
            [completed(1, b""), completed(2, b"")],
            "one terminal message each"
        );
        assert!(m.poll_exit().is_none());
    }

    #[test]
    fn cancel_for_the_running_job_trips_only_its_token() {
        let (mut m, t0) = machine_v2(None);
        start_at(&mut m, t0, 1);
        start_at(&mut m, t0, 2);
        let _ = actions(&mut m);
        m.handle_message(t0, cancel(1));
        assert_eq!(
            actions(&mut m),
            [trip(1, CancelCause::Message(CancelReason::Timeout))]
        );
        m.handle_finished(
            t0,
            JobId(1),
            HandlerOutcome::Returned(Err(JobError::Cancelled)),
        );
        assert_eq!(actions(&mut m), [started(2, t0 + ms(500))]);
        // Job 2 was never cancelled: a cancelled return is its own failure.
        m.handle_finished(
            t0,
            JobId(2),
            HandlerOutcome::Returned(Err(JobError::Cancelled)),
        );
        assert_eq!(
            sent(&mut m),
            [
                WorkerMessage::Cancelled { job: JobId(1) },
                WorkerMessage::Failed {
                    job: JobId(2),
                    error: "handler returned cancelled without a cancel request".into()
                }
            ]
        );
    }

    #[test]
    fn poll_start_takes_the_next_start_and_leaves_the_trips() {
        let (mut m, t0) = machine_v2(None);
        start_at(&mut m, t0, 1);
        start_at(&mut m, t0, 2);
        assert_eq!(m.poll_start(), Some(started(1, t0 + ms(500))));
        m.handle_message(t0, cancel(1));
        m.handle_finished(t0 + ms(5), JobId(1), ok(b""));
        assert_eq!(m.poll_start(), Some(started(2, t0 + ms(505))));
        assert_eq!(m.poll_start(), None);
        assert_eq!(
            actions(&mut m),
            [trip(1, CancelCause::Message(CancelReason::Timeout))]
        );
        assert!(!m.wants_serve());
    }

    #[test]
    fn shutdown_runs_every_queued_job_then_stops() {
        let (mut m, t0) = machine_v2(Some(50));
        for job in 1..=3 {
            start_at(&mut m, t0, job);
        }
        let _ = actions(&mut m);
        m.handle_message(t0, SupervisorMessage::Shutdown);
        assert_eq!(actions(&mut m), [], "shutdown is not a cancel");
        for job in 1..=3 {
            assert!(m.poll_exit().is_none(), "job {job} still to run");
            assert_eq!(m.running(), Some(JobId(job)));
            m.handle_finished(t0, JobId(job), ok(b""));
            if job < 3 {
                assert_eq!(actions(&mut m), [started(job + 1, t0 + ms(500))]);
            }
        }
        assert_eq!(actions(&mut m), []);
        let frames = sent(&mut m);
        assert_eq!(
            frames,
            [completed(1, b""), completed(2, b""), completed(3, b"")]
        );
        assert!(matches!(m.poll_exit(), Some(Exit::Stopped)));
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn start_after_shutdown_with_jobs_queued_is_a_violation() {
        let (mut m, t0) = machine_v2(None);
        start_at(&mut m, t0, 1);
        start_at(&mut m, t0, 2);
        let _ = actions(&mut m);
        m.handle_message(t0, SupervisorMessage::Shutdown);
        start_at(&mut m, t0, 3);
        assert_eq!(actions(&mut m), [trip(1, CancelCause::ChannelClosed)]);
        assert!(matches!(
            m.poll_exit(),
            Some(Exit::Protocol(ProtocolError::StartAfterShutdown {
                started: JobId(3)
            }))
        ));
        m.handle_finished(t0, JobId(1), ok(b""));
        assert_eq!(actions(&mut m), [], "the queued job is dropped");
        assert_eq!(sent(&mut m), []);
    }

    #[test]
    fn signal_drops_the_queued_jobs_unanswered() {
        let (mut m, t0) = machine_v2(None);
        for job in 1..=3 {
            start_at(&mut m, t0, job);
        }
        let _ = actions(&mut m);
        m.handle_signal();
        assert_eq!(actions(&mut m), [trip(1, CancelCause::Signal)]);
        assert_eq!(m.queued().count(), 0);
        // A cancel for a dropped job is for a job this worker does not know any more.
        m.handle_message(t0, cancel(2));
        // A start that crossed the signal is dropped too, not a violation.
        start_at(&mut m, t0, 4);
        m.handle_finished(
            t0,
            JobId(1),
            HandlerOutcome::Returned(Err(JobError::Cancelled)),
        );
        assert_eq!(actions(&mut m), [], "no queued job starts");
        assert_eq!(sent(&mut m), [WorkerMessage::Cancelled { job: JobId(1) }]);
        assert!(matches!(m.poll_exit(), Some(Exit::Stopped)));
    }

    #[test]
    fn eof_drops_the_queued_jobs_unanswered() {
        let (mut m, t0) = machine_v2(None);
        for job in 1..=3 {
            start_at(&mut m, t0, job);
        }
        let _ = actions(&mut m);
        m.handle_channel_closed(t0, None);
        assert_eq!(actions(&mut m), [trip(1, CancelCause::ChannelClosed)]);
        assert_eq!(m.queued().count(), 0);
        m.handle_finished(
            t0,
            JobId(1),
            HandlerOutcome::Returned(Err(JobError::Cancelled)),
        );
        assert_eq!(actions(&mut m), [], "no queued job starts");
        assert_eq!(sent(&mut m), []);
        assert!(matches!(m.poll_exit(), Some(Exit::Disconnected(None))));
    }

    #[test]
    fn undecodable_bytes_drop_the_queued_jobs_unanswered() {
        let (mut m, t0) = machine_v2(None);
        start_at(&mut m, t0, 1);
        start_at(&mut m, t0, 2);
        let _ = actions(&mut m);
        m.handle_decode_error(DecodeError::Truncated);
        assert_eq!(actions(&mut m), [trip(1, CancelCause::ChannelClosed)]);
        assert!(matches!(
            m.poll_exit(),
            Some(Exit::Protocol(ProtocolError::Decode(_)))
        ));
        m.handle_finished(t0, JobId(1), ok(b""));
        assert_eq!(actions(&mut m), []);
        assert_eq!(sent(&mut m), []);
    }

    #[test]
    fn a_start_naming_a_running_or_queued_job_is_a_violation() {
        for (dup, what) in [(1, "running"), (2, "queued")] {
            let (mut m, t0) = machine_v2(None);
            start_at(&mut m, t0, 1);
            start_at(&mut m, t0, 2);
            let _ = actions(&mut m);
            start_at(&mut m, t0, dup);
            assert_eq!(
                actions(&mut m),
                [trip(1, CancelCause::ChannelClosed)],
                "{what}"
            );
            match m.poll_exit() {
                Some(Exit::Protocol(ProtocolError::DuplicateJob { job })) => {
                    assert_eq!(job, JobId(dup), "{what}");
                }
                other => panic!("{what}: expected a duplicate-job violation, got {other:?}"),
            }
            m.handle_finished(t0, JobId(1), ok(b""));
            assert_eq!(actions(&mut m), [], "{what}: nothing starts after it");
            assert_eq!(sent(&mut m), [], "{what}");
        }
    }

    #[test]
    fn an_id_may_come_again_once_its_job_ended() {
        // Unique per connection is the supervisor's rule; the worker judges only what it holds.
        let (mut m, t0) = machine_v2(None);
        start_at(&mut m, t0, 1);
        m.handle_finished(t0, JobId(1), ok(b""));
        let _ = actions(&mut m);
        start_at(&mut m, t0, 1);
        assert_eq!(actions(&mut m), [started(1, t0 + ms(500))]);
        assert!(m.poll_exit().is_none());
    }

    mod prop {
        //! Whatever the order of events: one terminal message per job, only for a job that was
        //! started, none after the channel closed; a token trips at most once; nothing comes
        //! out after the exit is decided.

        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        #[derive(Debug, Clone)]
        enum Input {
            Start(u64),
            Cancel(u64),
            Shutdown,
            Signal,
            Finish(u64, bool),
            Progress(u64),
            Closed,
            Advance(u64),
            Write,
        }

        fn input() -> impl Strategy<Value = Input> {
            prop_oneof![
                (0u64..4).prop_map(Input::Start),
                (0u64..4).prop_map(Input::Cancel),
                Just(Input::Shutdown),
                Just(Input::Signal),
                ((0u64..4), any::<bool>()).prop_map(|(j, ok)| Input::Finish(j, ok)),
                (0u64..4).prop_map(Input::Progress),
                Just(Input::Closed),
                (0u64..1500).prop_map(Input::Advance),
                Just(Input::Write),
            ]
        }

        proptest! {
            #[test]
            fn invariants_hold(inputs in proptest::collection::vec(input(), 0..60)) {
                let (mut m, t0) = machine(Some(50));
                let mut now = t0;
                let mut started: Vec<JobId> = Vec::new();
                let mut terminals: HashMap<JobId, usize> = HashMap::new();
                let mut decided: Vec<JobId> = Vec::new();
                let mut trips: HashMap<JobId, usize> = HashMap::new();
                let mut closed = false;
                let mut exited = false;
                let mut in_flight: Option<Vec<u8>> = None;
                for input in inputs {
                    match input {
                        Input::Start(j) => m.handle_message(now, start(j)),
                        Input::Cancel(j) => m.handle_message(now, cancel(j)),
                        Input::Shutdown => m.handle_message(now, SupervisorMessage::Shutdown),
                        Input::Signal => m.handle_signal(),
                        Input::Finish(j, ok_result) => {
                            // Its terminal is decided now (queued behind any frame in flight),
                            // so the supervisor may reuse the id from here on.
                            if m.running() == Some(JobId(j)) {
                                decided.push(JobId(j));
                            }
                            let outcome = if ok_result {
                                ok(b"x")
                            } else {
                                HandlerOutcome::Returned(Err(JobError::Cancelled))
                            };
                            m.handle_finished(now, JobId(j), outcome);
                        }
                        Input::Progress(j) => m.handle_progress(JobId(j), Some(0.5), None),
                        Input::Closed => {
                            closed = true;
                            m.handle_channel_closed(now, None);
                        }
                        Input::Advance(n) => {
                            now += ms(n);
                            m.handle_timeout(now);
                        }
                        Input::Write => {
                            if in_flight.take().is_some() {
                                m.handle_transmitted();
                            }
                        }
                    }
                    while let Some(action) = m.poll_action() {
                        prop_assert!(!exited, "action after the exit: {action:?}");
                        match action {
                            Action::StartJob { job, .. } => {
                                prop_assert!(
                                    !started.contains(&job)
                                        || decided.contains(&job)
                                        || terminals.contains_key(&job)
                                );
                                started.push(job);
                            }
                            Action::Trip { job, .. } => *trips.entry(job).or_default() += 1,
                        }
                    }
                    if in_flight.is_none() {
                        if let Some(frame) = m.poll_transmit() {
                            prop_assert!(!closed, "write after the channel closed");
                            prop_assert!(!exited, "write after the exit");
                            if let Some(job) = decode(&frame).job() {
                                prop_assert!(started.contains(&job), "message for a job never started");
                                let msg = decode(&frame);
                                if !matches!(msg, WorkerMessage::Progress { .. }) {
                                    *terminals.entry(job).or_default() += 1;
                                } else {
                                    prop_assert!(!terminals.contains_key(&job), "progress after the result");
                                }
                            }
                            in_flight = Some(frame);
                        }
                    }
                    if m.poll_exit().is_some() {
                        prop_assert!(!exited, "two exits");
                        exited = true;
                    }
                }
                // Job ids repeat across runs in this generator; count per start.
                for (job, n) in terminals {
                    let starts = started.iter().filter(|j| **j == job).count();
                    prop_assert!(n <= starts, "{n} terminal messages for {starts} starts of {job}");
                }
                for (job, n) in trips {
                    let starts = started.iter().filter(|j| **j == job).count();
                    prop_assert!(n <= starts, "{n} trips for {starts} starts of {job}");
                }
            }
        }
    }

    mod prop_v2 {
        //! Protocol version 2, whatever the order of events: one handler at a time, started in
        //! the order the jobs arrived, each with its deadline counted from its start; at most
        //! one terminal message per job, and for a job that never started only the `Cancelled`
        //! its cancel asked for; progress only for a started job and never after its result; a
        //! trip only for the running handler, at most once; nothing after the exit.

        use super::*;
        use proptest::prelude::*;
        use std::collections::{HashMap, HashSet};

        #[derive(Debug, Clone)]
        enum Input {
            /// A job with a fresh id.
            Start,
            /// A start naming a running or queued job's id again.
            Again(usize),
            /// A cancel for the `n`-th most recent id.
            Cancel(usize),
            Shutdown,
            Signal,
            /// The running handler returns (`true`: its output; `false`: cancelled).
            Finish(bool),
            Progress,
            Closed,
            Garbage,
            Advance(u64),
            Write,
        }

        fn input() -> impl Strategy<Value = Input> {
            prop_oneof![
                6 => Just(Input::Start),
                1 => (0usize..4).prop_map(Input::Again),
                3 => (0usize..4).prop_map(Input::Cancel),
                1 => Just(Input::Shutdown),
                1 => Just(Input::Signal),
                6 => any::<bool>().prop_map(Input::Finish),
                2 => Just(Input::Progress),
                1 => Just(Input::Closed),
                1 => Just(Input::Garbage),
                2 => (0u64..1500).prop_map(Input::Advance),
                4 => Just(Input::Write),
            ]
        }

        proptest! {
            #[test]
            fn invariants_hold(inputs in proptest::collection::vec(input(), 0..80)) {
                let (mut m, t0) = machine_v2(Some(50));
                let mut now = t0;
                let mut next_id = 0u64;
                // Every id sent in a start, in order.
                let mut received: Vec<JobId> = Vec::new();
                let mut started: Vec<JobId> = Vec::new();
                let mut handler: Option<JobId> = None;
                let mut cancelled: HashSet<JobId> = HashSet::new();
                let mut terminals: HashMap<JobId, usize> = HashMap::new();
                let mut trips: HashMap<JobId, usize> = HashMap::new();
                let mut exited = false;
                let mut in_flight = false;
                // Jobs whose terminal message was queued (a frame taken or not).
                let mut answered: HashSet<JobId> = HashSet::new();
                // The signal, EOF or undecodable bytes came: nothing queued may start.
                let mut dropping = false;
                let recent = |received: &Vec<JobId>, n: usize| {
                    received.iter().rev().nth(n).copied().unwrap_or(JobId(u64::MAX))
                };
                for input in inputs {
                    match input {
                        Input::Start => {
                            next_id += 1;
                            received.push(JobId(next_id));
                            m.handle_message(now, start(next_id));
                        }
                        Input::Again(n) => {
                            // Only an id the worker holds: one that ended may not come again
                            // either, but the worker cannot tell.
                            let held: Vec<JobId> = m.running().into_iter().chain(m.queued()).collect();
                            if let Some(job) = held.get(n % held.len().max(1)) {
                                m.handle_message(now, start(job.0));
                            }
                        }
                        Input::Cancel(n) => {
                            let job = recent(&received, n);
                            cancelled.insert(job);
                            if m.queued().any(|j| j == job) {
                                answered.insert(job);
                            }
                            m.handle_message(now, cancel(job.0));
                        }
                        Input::Shutdown => m.handle_message(now, SupervisorMessage::Shutdown),
                        Input::Signal => {
                            dropping = true;
                            m.handle_signal();
                        }
                        Input::Finish(ok_result) => {
                            if let Some(job) = handler.take() {
                                let outcome = if ok_result {
                                    ok(b"x")
                                } else {
                                    HandlerOutcome::Returned(Err(JobError::Cancelled))
                                };
                                answered.insert(job);
                                m.handle_finished(now, job, outcome);
                            }
                        }
                        Input::Progress => {
                            for job in received.iter().rev().take(3) {
                                m.handle_progress(*job, Some(0.5), None);
                            }
                        }
                        Input::Closed => {
                            dropping = true;
                            m.handle_channel_closed(now, None);
                        }
                        Input::Garbage => {
                            dropping = true;
                            m.handle_decode_error(DecodeError::Truncated);
                        }
                        Input::Advance(n) => {
                            now += ms(n);
                            m.handle_timeout(now);
                        }
                        Input::Write => {
                            if in_flight {
                                in_flight = false;
                                m.handle_transmitted();
                            }
                        }
                    }
                    while let Some(action) = m.poll_action() {
                        prop_assert!(!exited, "action after the exit: {action:?}");
                        match action {
                            Action::StartJob { job, deadline, .. } => {
                                prop_assert!(handler.is_none(), "{job} started while {handler:?} runs");
                                prop_assert!(!started.contains(&job), "{job} started twice");
                                prop_assert!(!answered.contains(&job), "{job} started after its answer");
                                prop_assert!(!dropping, "{job} started after the signal, EOF or garbage");
                                let at = received.iter().position(|j| *j == job);
                                prop_assert!(at.is_some(), "{job} never received");
                                if let Some(last) = started.last() {
                                    let last_at = received.iter().position(|j| j == last);
                                    prop_assert!(at > last_at, "{job} overtook {last}");
                                }
                                prop_assert_eq!(deadline, Some(now + ms(500)), "deadline from the start");
                                started.push(job);
                                handler = Some(job);
                            }
                            Action::Trip { job, .. } => {
                                prop_assert_eq!(Some(job), handler, "trip for a job not running");
                                *trips.entry(job).or_default() += 1;
                                prop_assert!(trips[&job] == 1, "{job} tripped twice");
                            }
                        }
                    }
                    if !in_flight {
                        if let Some(frame) = m.poll_transmit() {
                            prop_assert!(!exited, "write after the exit");
                            in_flight = true;
                            let msg = decode(&frame);
                            if let Some(job) = msg.job() {
                                prop_assert!(received.contains(&job), "message for {job}, never received");
                                prop_assert!(!terminals.contains_key(&job), "{msg:?} after the result");
                                match msg {
                                    WorkerMessage::Progress { .. } => {
                                        prop_assert!(started.contains(&job), "progress for {job}, never started");
                                    }
                                    WorkerMessage::Cancelled { .. } if !started.contains(&job) => {
                                        prop_assert!(cancelled.contains(&job), "{job} answered unasked");
                                        *terminals.entry(job).or_default() += 1;
                                    }
                                    _ => {
                                        prop_assert!(started.contains(&job), "{msg:?}, never started");
                                        *terminals.entry(job).or_default() += 1;
                                    }
                                }
                            }
                        }
                    }
                    if m.poll_exit().is_some() {
                        prop_assert!(!exited, "two exits");
                        exited = true;
                    }
                }
            }
        }
    }
}
