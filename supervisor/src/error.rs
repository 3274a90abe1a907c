//! Errors: `Err` means the supervisor itself could not do what was asked. A worker that was
//! cancelled, killed or crashed is an [`Outcome`](crate::Outcome), not an error.

use std::ffi::OsString;
use std::io;
use std::time::Duration;

use thiserror::Error;
use warden_protocol::HandshakeError;

use crate::{ExitStatus, Violation};

/// A worker could not be started.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// No such program (the shell's 127): nothing of that name in `PATH`, or `execve` said
    /// ENOENT (the file, or the interpreter its `#!` line names, does not exist).
    #[error("program not found: {program:?}")]
    NotFound {
        /// The program as given.
        program: OsString,
    },
    /// The program exists but cannot be executed (the shell's 126): `execve` failed with
    /// `source` (EACCES, ETXTBSY, ELOOP, ENAMETOOLONG, ENOTDIR, E2BIG, ...; ENOEXEC only if the
    /// `/bin/sh` fallback failed too).
    #[error("program is not executable: {program:?}")]
    NotExecutable {
        /// The program as given.
        program: OsString,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// A step of the exec shim between spawn and exec failed (see [`SetupStep`]); the
    /// process was killed and reaped, the program never ran.
    #[error("could not prepare {program:?} to run: {step} failed")]
    Setup {
        /// The program as given.
        program: OsString,
        /// Which step.
        step: SetupStep,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// A signal named in [`TreeOptions::ignored_signals`](crate::TreeOptions) cannot be
    /// ignored (SIGKILL, SIGSTOP, or a number that is no signal).
    #[error("signal {signal} cannot be ignored")]
    InvalidSignal {
        /// The number given.
        signal: i32,
    },
    /// The program could not be started for another reason.
    #[error("could not start {program:?}")]
    Launch {
        /// The program as given.
        program: OsString,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// The command holds a string no process can receive.
    #[error("invalid {what}: it contains a NUL byte or an '=' in a variable name")]
    InvalidCommand {
        /// Which part of the command.
        what: &'static str,
    },
    /// The requested containment is not available on this machine.
    #[error("{requested} containment is not available here")]
    ContainmentUnavailable {
        /// The containment asked for.
        requested: &'static str,
    },
    /// A requested limit cannot be enforced on this host (no cgroup controller and no rlimit
    /// that binds, or no exec shim to set it); ask for best effort to run without it.
    #[error("the {limit} limit cannot be enforced here: {why}")]
    LimitUnavailable {
        /// Which limit.
        limit: crate::LimitKind,
        /// Why not, in words.
        why: &'static str,
    },
    /// A requested sandbox feature is missing from this kernel (or there is no exec shim to
    /// apply it); ask for best effort to run without it.
    #[error("the sandbox feature {feature} is not available here: {why}")]
    SandboxUnavailable {
        /// Which feature.
        feature: crate::SandboxFeature,
        /// Why not, in words.
        why: &'static str,
    },
    /// Setting up a limit's cgroup failed (creating it, or writing its limit).
    #[error("could not set up the {limit} limit")]
    Limit {
        /// Which limit.
        limit: crate::LimitKind,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// The socketpair for the worker's channel could not be created.
    #[error("could not create the worker's channel")]
    Channel(#[source] io::Error),
    /// The pipes for the worker's captured output could not be created or watched.
    #[error("could not capture the worker's output")]
    Output(#[source] io::Error),
    /// The worker did not send its hello in time; it has been killed.
    #[error("worker {pid} did not complete the handshake within {timeout:?}")]
    HandshakeTimeout {
        /// The worker's pid (now reaped).
        pid: u32,
        /// The handshake timeout.
        timeout: Duration,
    },
    /// The worker exited before completing the handshake.
    #[error("worker {pid} exited during the handshake with {status}")]
    ExitedDuringHandshake {
        /// The worker's pid (now reaped).
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// The worker speaks another protocol version; it was refused and killed.
    #[error("worker {pid} speaks an incompatible protocol")]
    IncompatibleVersion {
        /// The worker's pid (now reaped).
        pid: u32,
        /// The versions.
        #[source]
        source: HandshakeError,
    },
    /// The worker broke the protocol during the handshake; it has been killed.
    #[error("worker {pid} broke the protocol during the handshake")]
    Protocol {
        /// The worker's pid (now reaped).
        pid: u32,
        /// What it did.
        #[source]
        violation: Violation,
    },
}

/// A worker could not be suspended or resumed ([`Worker::suspend`](crate::Worker::suspend),
/// [`Worker::resume`](crate::Worker::resume)).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum JobControlError {
    /// The worker's actor has ended (the worker was shut down): there is nothing to stop.
    #[error("the worker is gone")]
    WorkerGone,
    /// Stopping or continuing the tree failed (the freezer write, or the signal to the
    /// process group). The worker counts as suspended (or resumed) anyway.
    #[error("could not stop or continue the worker's process tree")]
    Tree(#[source] io::Error),
    /// The tree did not stop within the timeout (a process in uninterruptible sleep stops only
    /// once it leaves it). The worker counts as suspended: resume it.
    #[error("the worker's process tree did not stop within {timeout:?}")]
    NotStopped {
        /// The timeout given to `suspend`.
        timeout: Duration,
    },
}

/// A step the exec shim performs before exec (see [`SpawnError::Setup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SetupStep {
    /// Asking for the death signal (`PR_SET_PDEATHSIG`), e.g. with a number that is no signal.
    DeathSignal,
    /// Joining the tree's cgroup (writing its `cgroup.procs`).
    JoinCgroup,
    /// Restoring SIGPIPE's default disposition.
    ResetSignals,
    /// Setting the signals the program must start with to SIG_IGN.
    IgnoreSignals,
    /// Setting an rlimit (a [`Limits`](crate::Limits) value the kernel refuses).
    SetRlimit,
    /// Closing the descriptors a sandboxed program must not inherit.
    CloseFds,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// Applying the Landlock ruleset (for one, a writable directory that does not exist).
    Landlock,
    /// Installing the seccomp filter.
    Seccomp,
}

impl SetupStep {
    /// A short name: `death_signal`, `join_cgroup`, `reset_signals`, `ignore_signals`,
    /// `set_rlimit`, `close_fds`, `no_new_privs`, `landlock`, `seccomp`.
    pub fn as_str(self) -> &'static str {
        match self {
            SetupStep::DeathSignal => "death_signal",
            SetupStep::JoinCgroup => "join_cgroup",
            SetupStep::ResetSignals => "reset_signals",
            SetupStep::IgnoreSignals => "ignore_signals",
            SetupStep::SetRlimit => "set_rlimit",
            SetupStep::CloseFds => "close_fds",
            SetupStep::NoNewPrivs => "no_new_privs",
            SetupStep::Landlock => "landlock",
            SetupStep::Seccomp => "seccomp",
        }
    }
}

impl std::fmt::Display for SetupStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job could not be run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RunError {
    /// The worker process is gone (it exited, was killed, or was shut down).
    #[error("the worker is gone")]
    WorkerGone {
        /// How it ended, when known.
        status: Option<ExitStatus>,
        /// Why warden killed it while it ran no job, if it broke the protocol then (a job's
        /// violation is in its [`JobReport`](crate::JobReport) instead).
        violation: Option<crate::Violation>,
    },
    /// The payload does not fit in one frame.
    #[error("payload of {len} bytes exceeds the frame limit of {max} bytes")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// The frame limit.
        max: u32,
    },
    /// A plain program (no protocol) cannot receive a payload.
    #[error("a plain program takes no payload")]
    PayloadForPlainProgram,
}

/// A name that none of a warden enum's values has: what [`FromStr`](std::str::FromStr) on
/// [`Stage`](crate::Stage), [`ContainmentMode`](crate::ContainmentMode) or
/// [`OutcomeKind`](crate::OutcomeKind) returns for text their `as_str` never gives.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown {kind} name {name:?}")]
#[non_exhaustive]
pub struct ParseNameError {
    /// What was being parsed: `stage`, `containment mode` or `outcome`.
    pub kind: &'static str,
    /// The text that names none of them.
    pub name: String,
}

impl ParseNameError {
    pub(crate) fn new(kind: &'static str, name: &str) -> Self {
        ParseNameError {
            kind,
            name: name.to_owned(),
        }
    }
}

/// A [`Pool`](crate::Pool) could not be started with this configuration.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PoolConfigError {
    /// A pool needs at least one worker.
    #[error("a pool needs at least one worker")]
    NoWorkers,
    /// A queue of capacity 0 would refuse every job.
    #[error("a pool's queue needs room for at least one job")]
    NoQueue,
    /// A pool runs protocol workers: a plain program runs one job in its whole life, so there
    /// is nothing to keep warm (run it with [`Worker`](crate::Worker) or [`Tree`](crate::Tree)).
    #[error("a pool runs protocol workers, not plain programs")]
    PlainProgram,
}

/// What ended a pool worker that the restart policy counts: it could not be started, or it
/// died, broke the protocol or went silent on its own (a worker ended by a cancel's ladder is
/// replaced without counting).
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum WorkerLoss {
    /// Starting the worker failed.
    #[error("a worker could not be started")]
    Spawn(#[source] std::sync::Arc<SpawnError>),
    /// The worker ended without being asked to.
    #[error("worker {pid} ended on its own ({})", describe_end(*status, violation.as_ref()))]
    Died {
        /// Its pid (reaped).
        pid: u32,
        /// How it ended, when known.
        status: Option<ExitStatus>,
        /// The protocol violation it was killed for, if any (liveness included).
        violation: Option<Violation>,
    },
}

fn describe_end(status: Option<ExitStatus>, violation: Option<&Violation>) -> String {
    match (violation, status) {
        (Some(v), _) => v.to_string(),
        (None, Some(status)) => status.to_string(),
        (None, None) => "status unknown".to_owned(),
    }
}

/// The pool gave up: more worker restarts than its
/// [`RestartPolicy`](crate::RestartPolicy) allows within its period. Every job still queued
/// then resolves with this error; jobs already running are cancelled through their ladders and
/// report how they ended.
#[derive(Debug, Clone, Error)]
#[error("the pool failed: more than {max_restarts} worker restarts within {period:?}")]
#[non_exhaustive]
pub struct PoolFailure {
    /// The restarts the policy allows within `period`.
    pub max_restarts: u32,
    /// The policy's period.
    pub period: Duration,
    /// The last loss, the one past the limit.
    #[source]
    pub cause: WorkerLoss,
}

/// A job could not be submitted to a pool.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The queue is full ([`Pool::try_submit`](crate::Pool::try_submit) only;
    /// [`Pool::submit`](crate::Pool::submit) waits for room).
    #[error("the pool's queue is full")]
    QueueFull,
    /// The pool is shutting down or was shut down: it takes no more jobs.
    #[error("the pool is shut down")]
    ShutDown,
    /// The pool failed on its restart limit.
    #[error("the pool has failed")]
    Failed(#[source] PoolFailure),
}

/// A pool job ended without a report.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum JobError {
    /// The pool failed on its restart limit before the job could run (or run again).
    #[error("the pool failed before the job ran")]
    PoolFailed(#[source] PoolFailure),
    /// The worker refused the job (its payload does not fit in a frame).
    #[error("the job was refused")]
    Run(#[source] RunError),
    /// The pool's task ended before the job was decided (its runtime shut down).
    #[error("the pool is gone")]
    PoolGone,
}
