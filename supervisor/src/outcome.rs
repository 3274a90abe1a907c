//! How a job ended. Kept apart from errors: being killed at the deadline is a result.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use thiserror::Error;
use warden_protocol::{CancelReason, DecodeError, JobId};

use crate::error::ParseNameError;
use crate::escalation::Stage;
use crate::{ContainmentMode, ExitStatus, LimitKind, LimitReport, OutputTail};

#[cfg(feature = "serde")]
mod serde_impl;
#[cfg(feature = "serde")]
pub use serde_impl::ReportSince;

/// How a job ended. The variants are never blurred: each says who stopped the work.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The worker finished and returned this output (no cancel was requested). For a plain
    /// program: it exited with status 0 (the output is empty).
    Completed(Vec<u8>),
    /// The worker finished and returned this output although a cancel had been requested: the
    /// cancel came too late.
    CompletedDespiteCancel(Vec<u8>),
    /// The worker acknowledged the cancel and stopped.
    Cancelled,
    /// The job failed on its own.
    Failed(Failure),
    /// The polite signal (SIGTERM by default) ended the worker.
    Terminated,
    /// The supervisor killed the worker with SIGKILL (the deadline passed, or the worker broke
    /// the protocol: see [`JobReport::violation`]).
    Killed,
    /// The worker died without being asked to: a signal nobody here sent, or a non-zero exit of
    /// a protocol worker. Also a protocol worker that answered a cancel nobody here asked for
    /// (a signal from outside warden reached it) and then exited on its own: the report names
    /// [`Violation::UnrequestedCancel`].
    Crashed(ExitStatus),
}

impl Outcome {
    /// Which kind of outcome this is, without its data.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Completed(_) | Outcome::CompletedDespiteCancel(_) => OutcomeKind::Completed,
            Outcome::Cancelled => OutcomeKind::Cancelled,
            Outcome::Failed(_) => OutcomeKind::Failed,
            Outcome::Terminated => OutcomeKind::Terminated,
            Outcome::Killed => OutcomeKind::Killed,
            Outcome::Crashed(_) => OutcomeKind::Crashed,
        }
    }

    /// Lower-case name used in reports: completed, cancelled, failed, terminated, killed, crashed
    /// (its [`OutcomeKind::as_str`]).
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// The kinds of [`Outcome`], without their data: what reports and logs name.
/// [`Outcome::CompletedDespiteCancel`] is of kind `Completed` (the reason says a cancel came).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutcomeKind {
    /// [`Outcome::Completed`] or [`Outcome::CompletedDespiteCancel`].
    Completed,
    /// [`Outcome::Cancelled`].
    Cancelled,
    /// [`Outcome::Failed`].
    Failed,
    /// [`Outcome::Terminated`].
    Terminated,
    /// [`Outcome::Killed`].
    Killed,
    /// [`Outcome::Crashed`].
    Crashed,
}

impl OutcomeKind {
    /// Every kind, in the order of [`Outcome`]'s variants.
    pub const ALL: [OutcomeKind; 6] = [
        OutcomeKind::Completed,
        OutcomeKind::Cancelled,
        OutcomeKind::Failed,
        OutcomeKind::Terminated,
        OutcomeKind::Killed,
        OutcomeKind::Crashed,
    ];

    /// Lower-case name used in reports and logs: `completed`, `cancelled`, `failed`,
    /// `terminated`, `killed`, `crashed`. [`FromStr`] takes it back.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Completed => "completed",
            OutcomeKind::Cancelled => "cancelled",
            OutcomeKind::Failed => "failed",
            OutcomeKind::Terminated => "terminated",
            OutcomeKind::Killed => "killed",
            OutcomeKind::Crashed => "crashed",
        }
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutcomeKind {
    type Err = ParseNameError;

    /// The kind [`OutcomeKind::as_str`] names (exactly: lower case).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        OutcomeKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| ParseNameError::new("outcome", name))
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The worker reported this error.
    Worker(String),
    /// A protocol worker exited with status 0 without sending a result.
    ExitedWithoutResult,
    /// A plain program exited with this non-zero status.
    ExitCode(i32),
    /// A plain program exited with status 0, but this limit refused its tree something on
    /// the way (a fork refused by `pids.max`, a process the OOM killer killed): it did not
    /// get to do all it tried, so it is not completed.
    LimitReached(LimitKind),
}

impl fmt::Display for Failure {
    /// The worker's own message, or what happened in words.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Worker(message) => f.write_str(message),
            Failure::ExitedWithoutResult => f.write_str("the worker exited without a result"),
            Failure::ExitCode(code) => write!(f, "exited with status {code}"),
            Failure::LimitReached(limit) => write!(f, "the tree reached its {limit} limit"),
        }
    }
}

/// A worker broke the protocol; it is killed at once.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Violation {
    /// A frame could not be decoded (oversized, truncated, unknown tag, trailing bytes...).
    #[error("undecodable frame")]
    Frame(#[source] DecodeError),
    /// A message arrived before the worker's hello.
    #[error("{kind} message before hello")]
    BeforeHello {
        /// The message kind.
        kind: &'static str,
    },
    /// A second hello.
    #[error("unexpected second hello")]
    RepeatedHello,
    /// A job message for a job that is not running (unknown, finished, or already answered).
    #[error("{kind} message for {job}, which is not running")]
    NotRunning {
        /// The message kind.
        kind: &'static str,
        /// The job it named.
        job: warden_protocol::JobId,
    },
    /// Part of a frame arrived and the rest did not come in time.
    #[error("partial frame stalled for more than {timeout:?}")]
    StalledFrame {
        /// The frame timeout.
        timeout: Duration,
    },
    /// A `Cancelled` for the running job, which the supervisor never asked to cancel (no
    /// `Cancel` sent, no polite signal), nor did within the drain bound after it came: it
    /// acknowledges a cancel that was never sent. A cancel from here within that bound is what
    /// it acknowledges instead (a stop signal that reached the worker before warden's own
    /// cancel): the job is then cancelled. A worker still running when the bound ends is
    /// killed; one that had exited on its own is [`Outcome::Crashed`].
    #[error("cancelled message for {job}, which was never asked to cancel")]
    UnrequestedCancel {
        /// The job it named.
        job: warden_protocol::JobId,
    },
    /// Nothing (not even a heartbeat) came from the idle worker for this long
    /// ([`WorkerConfig::unresponsive_after`](crate::WorkerConfig::unresponsive_after)). A
    /// running job is cancelled with reason `unresponsive` instead.
    #[error("the worker sent nothing for {after:?} (unresponsive)")]
    Unresponsive {
        /// The liveness bound.
        after: Duration,
    },
}

/// When each step of a job happened, measured from the job's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// When the job started (the instant the others are measured from).
    pub started: Instant,
    /// Cancel requested (by the caller, the timeout or shutdown).
    pub cancel_requested: Option<Duration>,
    /// The polite signal was sent to the worker's process group.
    pub signal_sent: Option<Duration>,
    /// SIGKILL was sent to the worker's process group.
    pub kill_sent: Option<Duration>,
    /// The worker still lived `reap_timeout` after SIGKILL.
    pub kill_pending: Option<Duration>,
    /// The worker's terminal message arrived.
    pub result_received: Option<Duration>,
    /// The worker process exited.
    pub exited: Option<Duration>,
    /// The worker process was reaped.
    pub reaped: Option<Duration>,
    /// The outcome was decided.
    pub ended: Duration,
    /// The job's effective timeout, as last set (progress may have extended it: see
    /// [`JobOptions::extend_timeout`](crate::JobOptions::extend_timeout)); `None` without one.
    pub deadline: Option<Duration>,
}

impl Trace {
    /// Time from the cancel request to the end of the job, if a cancel was requested.
    pub fn cancel_to_end(&self) -> Option<Duration> {
        self.cancel_requested.map(|c| self.ended.saturating_sub(c))
    }
}

/// Everything known about how a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobReport {
    /// The job's id on its worker's connection.
    pub job: JobId,
    /// How it ended.
    pub outcome: Outcome,
    /// Why a cancel was requested, if one was.
    pub reason: Option<CancelReason>,
    /// The highest stage of the ladder that was reached.
    pub stage: Option<Stage>,
    /// How the worker process ended, if it ended during this job.
    pub exit: Option<ExitStatus>,
    /// The protocol violation the worker committed, if any. It got the worker killed, except
    /// a [`Violation::UnrequestedCancel`] from a worker that had exited on its own
    /// ([`Outcome::Crashed`]).
    pub violation: Option<Violation>,
    /// False when the job was cancelled before it was handed to the worker.
    pub started: bool,
    /// How the worker's process tree was contained.
    pub containment: ContainmentMode,
    /// Descendants found outside the worker's process group and signalled (by pid).
    pub escaped: Vec<u32>,
    /// Each limit and sandbox feature of the worker's tree: how it was enforced, and whether
    /// the tree reached it (see [`LimitReport`]).
    pub limits: LimitReport,
    /// The limit that ended the job, if one did: the OOM killer under a memory limit, or
    /// `SIGXCPU` under a CPU-time limit (the outcome is then [`Outcome::Killed`]), or a limit a
    /// plain program reached before it exited 0 ([`Failure::LimitReached`]).
    pub limit: Option<LimitKind>,
    /// The job's last words on stdout and stderr, when the worker's output is captured
    /// ([`WorkerConfig::capture_output`](crate::WorkerConfig::capture_output)): what it wrote
    /// during this job (see [`OutputTail`]).
    pub output_tail: Option<OutputTail>,
    /// Timings.
    pub trace: Trace,
}

impl JobReport {
    /// The report of a job cancelled before it was handed to a worker (`started: false`):
    /// what `Worker::run` gives for a job whose caller cancelled it while it waited, and what a
    /// pool gives for a job cancelled in its queue.
    pub(crate) fn not_started(
        job: JobId,
        reason: CancelReason,
        containment: ContainmentMode,
        limits: LimitReport,
        now: Instant,
    ) -> JobReport {
        JobReport {
            job,
            outcome: Outcome::Cancelled,
            reason: Some(reason),
            stage: None,
            exit: None,
            violation: None,
            started: false,
            containment,
            escaped: Vec::new(),
            limits,
            limit: None,
            output_tail: None,
            trace: Trace {
                started: now,
                cancel_requested: Some(Duration::ZERO),
                signal_sent: None,
                kill_sent: None,
                kill_pending: None,
                result_received: None,
                exited: None,
                reaped: None,
                ended: Duration::ZERO,
                deadline: None,
            },
        }
    }

    /// The worker that ran the job takes the next one: the job was never started, or its
    /// result came before any signal and the process neither exited nor broke the protocol
    /// (the connection reuses a worker exactly then; every other report comes after the exit
    /// and the reap, or with the kill pending).
    pub(crate) fn worker_survived(&self) -> bool {
        if !self.started {
            return true;
        }
        let t = &self.trace;
        self.exit.is_none()
            && self.violation.is_none()
            && t.signal_sent.is_none()
            && t.kill_sent.is_none()
            && t.kill_pending.is_none()
            && t.exited.is_none()
            && t.reaped.is_none()
            && t.result_received.is_some()
    }
}

/// What the worker said about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WorkerResult {
    Completed(Vec<u8>),
    Cancelled,
    Failed(String),
}

/// Facts from which the outcome is decided.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    pub protocol: bool,
    pub result: Option<WorkerResult>,
    pub cancelled: bool,
    pub violation: bool,
    /// The violation was a `Cancelled` nobody here asked for, and the process had exited on
    /// its own before the bound: a signal from outside warden ended it.
    pub stray_exit: bool,
    pub signal_sent: bool,
    pub kill_sent: bool,
    pub exit: Option<ExitStatus>,
    /// The limit whose enforcement killed the program ([`LimitReport::ended`]).
    pub limit_ended: Option<LimitKind>,
    /// A limit that refused the tree something ([`LimitReport::first_refusal`]).
    pub limit_hit: Option<LimitKind>,
}

impl Facts {
    /// The limit facts of `limits` for a program that ended with `exit`.
    pub(crate) fn limits(
        limits: &LimitReport,
        exit: Option<ExitStatus>,
    ) -> (Option<LimitKind>, Option<LimitKind>) {
        (limits.ended(exit), limits.first_refusal())
    }
}

/// The limit that decided `outcome`, for [`JobReport::limit`].
pub(crate) fn deciding_limit(facts: &Facts, outcome: &Outcome) -> Option<LimitKind> {
    match outcome {
        Outcome::Killed => facts.limit_ended,
        Outcome::Failed(Failure::LimitReached(limit)) => Some(*limit),
        _ => None,
    }
}

/// Decides the outcome. A result that arrived wins over anything that happened to the process
/// afterwards; without one, the exit status and what we sent decide.
pub(crate) fn classify(f: Facts) -> Outcome {
    if let Some(result) = f.result {
        return match result {
            WorkerResult::Completed(out) if f.cancelled => Outcome::CompletedDespiteCancel(out),
            WorkerResult::Completed(out) => Outcome::Completed(out),
            WorkerResult::Cancelled => Outcome::Cancelled,
            WorkerResult::Failed(e) => Outcome::Failed(Failure::Worker(e)),
        };
    }
    if f.violation {
        return match f.exit {
            Some(status) if f.stray_exit => Outcome::Crashed(status),
            _ => Outcome::Killed,
        };
    }
    let Some(status) = f.exit else {
        // Still not reaped after SIGKILL (kill pending).
        return Outcome::Killed;
    };
    if f.kill_sent && status.signal() == Some(libc::SIGKILL) {
        return Outcome::Killed;
    }
    // The kernel enforced a limit (the OOM killer, SIGXCPU): the limit killed it.
    if f.limit_ended.is_some() {
        return Outcome::Killed;
    }
    if f.signal_sent {
        return Outcome::Terminated;
    }
    match status {
        ExitStatus::Signal { .. } => Outcome::Crashed(status),
        ExitStatus::Code(0) if f.protocol => Outcome::Failed(Failure::ExitedWithoutResult),
        ExitStatus::Code(_) if f.protocol => Outcome::Crashed(status),
        ExitStatus::Code(0) => match f.limit_hit {
            Some(limit) => Outcome::Failed(Failure::LimitReached(limit)),
            None => Outcome::Completed(Vec::new()),
        },
        ExitStatus::Code(c) => Outcome::Failed(Failure::ExitCode(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_kind_name_round_trips() {
        // Exhaustive: a new kind does not compile here until it is in `ALL`, in order.
        let rank = |kind: OutcomeKind| match kind {
            OutcomeKind::Completed => 0,
            OutcomeKind::Cancelled => 1,
            OutcomeKind::Failed => 2,
            OutcomeKind::Terminated => 3,
            OutcomeKind::Killed => 4,
            OutcomeKind::Crashed => 5,
        };
        for (i, kind) in OutcomeKind::ALL.into_iter().enumerate() {
            assert_eq!(rank(kind), i);
            assert_eq!(kind.as_str().parse(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(
            "spawn_failed".parse::<OutcomeKind>(),
            Err(ParseNameError::new("outcome", "spawn_failed"))
        );
    }

    #[test]
    fn an_outcome_is_named_by_its_kind() {
        let status = ExitStatus::Code(3);
        for (outcome, kind) in [
            (Outcome::Completed(b"x".to_vec()), OutcomeKind::Completed),
            (
                Outcome::CompletedDespiteCancel(vec![]),
                OutcomeKind::Completed,
            ),
            (Outcome::Cancelled, OutcomeKind::Cancelled),
            (Outcome::Failed(Failure::ExitCode(3)), OutcomeKind::Failed),
            (Outcome::Terminated, OutcomeKind::Terminated),
            (Outcome::Killed, OutcomeKind::Killed),
            (Outcome::Crashed(status), OutcomeKind::Crashed),
        ] {
            assert_eq!(outcome.kind(), kind);
            assert_eq!(outcome.name(), kind.as_str());
        }
    }

    fn facts() -> Facts {
        Facts {
            protocol: true,
            result: None,
            cancelled: false,
            violation: false,
            stray_exit: false,
            signal_sent: false,
            kill_sent: false,
            exit: None,
            limit_ended: None,
            limit_hit: None,
        }
    }
    const KILLED: ExitStatus = ExitStatus::Signal {
        signal: libc::SIGKILL,
        core_dumped: false,
    };
    const TERMED: ExitStatus = ExitStatus::Signal {
        signal: libc::SIGTERM,
        core_dumped: false,
    };

    #[test]
    fn a_result_wins_over_a_later_kill() {
        let f = Facts {
            result: Some(WorkerResult::Completed(b"x".to_vec())),
            kill_sent: true,
            signal_sent: true,
            exit: Some(KILLED),
            ..facts()
        };
        assert_eq!(classify(f), Outcome::Completed(b"x".to_vec()));
    }

    #[test]
    fn late_cancel_is_completed_despite_cancel() {
        let f = Facts {
            result: Some(WorkerResult::Completed(vec![])),
            cancelled: true,
            ..facts()
        };
        assert_eq!(classify(f), Outcome::CompletedDespiteCancel(vec![]));
    }

    #[test]
    fn acknowledged_and_failed() {
        let f = Facts {
            result: Some(WorkerResult::Cancelled),
            cancelled: true,
            ..facts()
        };
        assert_eq!(classify(f), Outcome::Cancelled);
        let f = Facts {
            result: Some(WorkerResult::Failed("e".into())),
            ..facts()
        };
        assert_eq!(classify(f), Outcome::Failed(Failure::Worker("e".into())));
    }

    #[test]
    fn exit_without_result() {
        assert_eq!(
            classify(Facts {
                exit: Some(ExitStatus::Code(0)),
                ..facts()
            }),
            Outcome::Failed(Failure::ExitedWithoutResult)
        );
        assert_eq!(
            classify(Facts {
                exit: Some(ExitStatus::Code(3)),
                ..facts()
            }),
            Outcome::Crashed(ExitStatus::Code(3))
        );
        let segv = ExitStatus::Signal {
            signal: libc::SIGSEGV,
            core_dumped: true,
        };
        assert_eq!(
            classify(Facts {
                exit: Some(segv),
                ..facts()
            }),
            Outcome::Crashed(segv)
        );
    }

    #[test]
    fn escalation_outcomes() {
        let f = Facts {
            cancelled: true,
            signal_sent: true,
            exit: Some(TERMED),
            ..facts()
        };
        assert_eq!(classify(f), Outcome::Terminated);
        let f = Facts {
            cancelled: true,
            signal_sent: true,
            kill_sent: true,
            exit: Some(KILLED),
            ..facts()
        };
        assert_eq!(classify(f), Outcome::Killed);
        // Died of the polite signal just as the kill went out: the signal did it.
        let f = Facts {
            cancelled: true,
            signal_sent: true,
            kill_sent: true,
            exit: Some(TERMED),
            ..facts()
        };
        assert_eq!(classify(f), Outcome::Terminated);
        let f = Facts {
            kill_sent: true,
            exit: None,
            ..facts()
        };
        assert_eq!(classify(f), Outcome::Killed);
        let f = Facts {
            violation: true,
            kill_sent: true,
            exit: Some(KILLED),
            ..facts()
        };
        assert_eq!(classify(f), Outcome::Killed);
        // A `Cancelled` nobody here asked for, from a worker that then exited by itself: an
        // outside signal ended it, not warden.
        let f = Facts {
            violation: true,
            stray_exit: true,
            exit: Some(ExitStatus::Code(0)),
            ..facts()
        };
        assert_eq!(classify(f), Outcome::Crashed(ExitStatus::Code(0)));
    }

    #[test]
    fn a_limit_that_ended_the_program_is_never_completed() {
        let oom = Facts {
            protocol: false,
            exit: Some(KILLED),
            limit_ended: Some(LimitKind::Memory),
            limit_hit: Some(LimitKind::Memory),
            ..facts()
        };
        assert_eq!(classify(oom.clone()), Outcome::Killed);
        assert_eq!(
            deciding_limit(&oom, &Outcome::Killed),
            Some(LimitKind::Memory)
        );
        let reached = Facts {
            protocol: false,
            exit: Some(ExitStatus::Code(0)),
            limit_hit: Some(LimitKind::Processes),
            ..facts()
        };
        let outcome = classify(reached.clone());
        assert_eq!(
            outcome,
            Outcome::Failed(Failure::LimitReached(LimitKind::Processes))
        );
        assert_eq!(
            deciding_limit(&reached, &outcome),
            Some(LimitKind::Processes)
        );
        // A result the worker sent still wins.
        let result = Facts {
            result: Some(WorkerResult::Completed(vec![])),
            ..oom
        };
        assert_eq!(classify(result), Outcome::Completed(vec![]));
    }

    #[test]
    fn plain_programs() {
        let plain = Facts {
            protocol: false,
            ..facts()
        };
        assert_eq!(
            classify(Facts {
                exit: Some(ExitStatus::Code(0)),
                ..plain.clone()
            }),
            Outcome::Completed(vec![])
        );
        assert_eq!(
            classify(Facts {
                exit: Some(ExitStatus::Code(2)),
                ..plain.clone()
            }),
            Outcome::Failed(Failure::ExitCode(2))
        );
        assert_eq!(
            classify(Facts {
                exit: Some(ExitStatus::Code(0)),
                signal_sent: true,
                cancelled: true,
                ..plain
            }),
            Outcome::Terminated
        );
    }
}
