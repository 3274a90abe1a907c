//! The worker's side of the protocol as a sans-IO state machine: every decision the serve loop
//! makes, with no sockets, tasks, threads or clock reads.
//!
//! The drivers (the serve task and the writer thread, in `serve.rs`; a test harness elsewhere)
//! feed it inputs through `handle_*` and act on what `poll_*` gives back:
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
//! | [`Machine::poll_exit`]               | stops serving (or exits the process)         |
//! | [`Machine::poll_timeout`]            | calls `handle_timeout` then, at the latest   |
//! | [`Machine::wants_progress`]          | takes the handler's latest progress report   |
//!
//! # Decisions
//!
//! - One job at a time. A `StartJob` while one runs, or after `Shutdown`, is the supervisor's
//!   violation: the running job's token trips ([`CancelCause::ChannelClosed`]: nobody will read
//!   its result), nothing more is sent, and the exit is [`Exit::Protocol`]. A `StartJob` after
//!   the polite signal crossed it and is dropped unanswered: the worker is about to exit.
//! - A `Cancel` trips the running job's token once; a `Cancel` for any other job (one that
//!   finished, its result crossing the cancel on the wire) is ignored.
//! - Exactly one terminal message per job, queued behind the job's last progress report; no
//!   progress after it. A result that does not fit in a frame becomes a `Failed` that does.
//! - `Shutdown` and the polite signal end serving once no job runs and every queued frame is
//!   written ([`Exit::Stopped`]); the signal also trips the running job's token.
//! - The channel closing (EOF, a read or write error) trips the running job's token and starts
//!   the orphan grace: the handler returning in time gives [`Exit::Disconnected`], the grace
//!   running out [`Exit::Orphaned`]. Idle, the exit is [`Exit::Disconnected`] at once. Nothing
//!   is written after the channel closed.
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
        /// When the supervisor stops waiting for it: `deadline_ms` after it was received.
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

#[derive(Debug)]
enum Outgoing {
    Heartbeat,
    Frame(Vec<u8>),
}

/// The worker's protocol state. See the [module docs](self).
#[derive(Debug)]
pub struct Machine {
    config: Config,
    job: Option<Running>,
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
            } => self.start(now, job, payload, deadline_ms),
            SupervisorMessage::Cancel { job, reason } => match &mut self.job {
                Some(running) if running.id == job => {
                    if !running.tripped {
                        running.tripped = true;
                        info!(%job, %reason, "cancel requested");
                        self.actions.push_back(Action::Trip {
                            job,
                            cause: CancelCause::Message(reason),
                        });
                    }
                }
                // It crossed with the job's result.
                _ => debug!(%job, %reason, "ignoring cancel for a job that is not running"),
            },
            SupervisorMessage::Shutdown => {
                info!(running = self.job.is_some(), "shutdown requested");
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

    /// The handler for `job` ended. Queues the job's single terminal message (ignored for a job
    /// that is not running, so a second call for the same job sends nothing).
    pub fn handle_finished(&mut self, job: JobId, outcome: HandlerOutcome) {
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
        self.check_stopped();
    }

    /// The polite signal arrived: trip the running job's token, stop once it has finished.
    pub fn handle_signal(&mut self) {
        if self.ended || self.closed || self.stopping == Some(Stop::Signal) {
            return;
        }
        self.stopping = Some(Stop::Signal);
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

    /// The next action for the driver, in the order decided.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
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

    fn start(&mut self, now: Instant, job: JobId, payload: Vec<u8>, deadline_ms: Option<u64>) {
        if let Some(running) = &self.job {
            let running = running.id;
            return self.violation(ProtocolError::StartWhileRunning {
                running,
                started: job,
            });
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
        let deadline = deadline_ms.and_then(|ms| now.checked_add(Duration::from_millis(ms)));
        self.job = Some(Running {
            id: job,
            tripped: false,
        });
        self.actions.push_back(Action::StartJob {
            job,
            payload,
            deadline,
            deadline_ms,
        });
    }

    /// The supervisor broke the rules: stop at once. The running job's result has nowhere to go.
    fn violation(&mut self, error: ProtocolError) {
        warn!(%error, "protocol violation by the supervisor");
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
        if self.ended || self.closed || self.job.is_some() || self.in_flight {
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
