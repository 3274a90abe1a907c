//! Settings for workers and jobs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warden_protocol::JobId;

use crate::escalation::Deadlines;
use crate::output::OutputCapture;
use crate::process::TreeOptions;

/// How a worker is run and stopped.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The program speaks warden's protocol (links the worker SDK). A plain program gets no
    /// channel, runs exactly one job (its whole life), and its ladder starts at the signal stage.
    pub protocol: bool,
    /// How long the worker has to complete the handshake (default 5 s).
    pub handshake_timeout: Duration,
    /// The ladder's deadlines for every job (a job may override them).
    pub deadlines: Deadlines,
    /// The polite signal (default SIGTERM). SIGCONT always follows it.
    pub polite_signal: i32,
    /// Largest frame body in either direction (default 1 MiB).
    pub max_frame_len: u32,
    /// How often the worker should send heartbeats; `None` (default) asks for none, unless
    /// [`unresponsive_after`](Self::unresponsive_after) is set (then a quarter of it).
    pub heartbeat_interval: Option<Duration>,
    /// Liveness: when nothing (no frame at all; heartbeats are what an idle worker sends)
    /// arrives from the worker for this long, a running job is cancelled with reason
    /// `unresponsive` and the ladder runs from there (a stopped or wedged worker gets the
    /// polite signal and SIGCONT, then SIGKILL); an idle worker is killed
    /// ([`Violation::Unresponsive`](crate::Violation::Unresponsive)). `None` (default): not
    /// checked. A worker that sends no heartbeats (an SDK without them) is then killed.
    pub unresponsive_after: Option<Duration>,
    /// How long part of a frame may wait for the rest before the worker is killed (default 5 s).
    pub frame_timeout: Duration,
    /// After the worker exits, how long to wait for the channel to reach EOF so that a result
    /// written just before exit is read (default 1 s). A descendant holding the channel open
    /// cannot stall the job longer than this. The other way round too: a worker that closes its
    /// channel (idle or mid-job) gets this long to exit before it is killed.
    pub drain_timeout: Duration,
    /// Cancelled when the supervisor shuts down: every job on this worker is cancelled with
    /// reason `shutdown`.
    pub shutdown: CancellationToken,
    /// Cancelled to SIGKILL the worker's tree at once, skipping whatever stages of the ladder
    /// are left (a supervisor's second Ctrl-C). The running job's outcome is then `killed`; an
    /// idle worker is killed too, and a protocol worker then takes no more jobs
    /// ([`RunError::WorkerGone`](crate::RunError::WorkerGone)).
    pub kill: CancellationToken,
    /// How the worker's process tree is contained (default: the strongest available).
    pub tree: TreeOptions,
    /// Capture the worker's stdout and stderr through pipes warden drains (default `None`:
    /// they are the [`Command`](crate::Command)'s). See [`crate::output`]; every
    /// [`JobReport`](crate::JobReport) then has an `output_tail`.
    pub output: Option<OutputCapture>,
    /// Pipelining: how many jobs [`Worker::run`](crate::Worker::run) calls may have on the
    /// wire at once, the running one included (default 1: one at a time, the next sent once
    /// the one before is answered). Above 1, jobs are queued in the worker behind the one it
    /// runs (PROTOCOL.md section 5, "Queued jobs"), so a stream of short jobs pays no round
    /// trip per job. A queued job's deadlines start at its turn; a cancel before its turn is
    /// answered by the worker at once (`cancelled`, never started); a queued job whose worker
    /// is lost gets [`RunError::WorkerGone`](crate::RunError::WorkerGone) and never ran.
    /// Only a worker that speaks protocol version 2 (the Rust SDK) queues: a version 1 worker
    /// (the Python SDK), a plain program, or a worker whose output is captured (one job's
    /// output could not be told from the next one's) runs one at a time whatever this says.
    pub pipeline: usize,
}

impl WorkerConfig {
    /// Settings for a program that links the worker SDK.
    pub fn protocol() -> Self {
        WorkerConfig {
            protocol: true,
            handshake_timeout: Duration::from_secs(5),
            deadlines: Deadlines::default(),
            polite_signal: libc::SIGTERM,
            max_frame_len: warden_protocol::DEFAULT_MAX_FRAME_LEN,
            heartbeat_interval: None,
            unresponsive_after: None,
            frame_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(1),
            shutdown: CancellationToken::new(),
            kill: CancellationToken::new(),
            tree: TreeOptions::default(),
            output: None,
            pipeline: 1,
        }
    }

    /// Settings for a plain program: no channel, the ladder starts with the polite signal.
    pub fn plain() -> Self {
        WorkerConfig {
            protocol: false,
            ..Self::protocol()
        }
    }

    /// Sets the ladder's deadlines.
    pub fn deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = deadlines;
        self
    }

    /// Sets the handshake timeout.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the polite signal.
    pub fn polite_signal(mut self, signal: i32) -> Self {
        self.polite_signal = signal;
        self
    }

    /// Links the worker's jobs to a shutdown token.
    pub fn shutdown_token(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// Links the worker to a kill token: cancelling it SIGKILLs the worker's tree at once.
    pub fn kill_token(mut self, token: CancellationToken) -> Self {
        self.kill = token;
        self
    }

    /// Sets how the worker's process tree is contained.
    pub fn tree(mut self, tree: TreeOptions) -> Self {
        self.tree = tree;
        self
    }

    /// Captures the worker's stdout and stderr (see [`WorkerConfig::output`] and
    /// [`crate::output`]).
    pub fn capture_output(mut self, capture: OutputCapture) -> Self {
        self.output = Some(capture);
        self
    }

    /// Keeps up to `jobs` jobs on the wire at once (see [`WorkerConfig::pipeline`]; 0 counts
    /// as 1).
    pub fn pipeline(mut self, jobs: usize) -> Self {
        self.pipeline = jobs.max(1);
        self
    }

    /// The jobs on the wire at once with a worker that speaks protocol `version`.
    pub(crate) fn queue_depth(&self, version: Option<u16>) -> usize {
        match version {
            Some(version)
                if self.protocol
                    && self.output.is_none()
                    && warden_protocol::queues_jobs(version) =>
            {
                self.pipeline.max(1)
            }
            _ => 1,
        }
    }

    /// Checks liveness: see [`WorkerConfig::unresponsive_after`]. Asks the worker for
    /// heartbeats every quarter of `after` (unless a heartbeat interval is set), so that a
    /// few late or lost ones do not count against a live worker.
    pub fn unresponsive_after(mut self, after: Duration) -> Self {
        self.unresponsive_after = Some(after);
        self
    }

    /// Asks the worker for a heartbeat every `interval`.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }

    /// The heartbeat interval the handshake asks for: the one set, else a quarter of
    /// `unresponsive_after`, else none.
    pub(crate) fn requested_heartbeat(&self) -> Option<Duration> {
        self.heartbeat_interval
            .or_else(|| self.unresponsive_after.map(|after| after / 4))
    }

    /// Sets the frame limit.
    pub fn max_frame_len(mut self, len: u32) -> Self {
        self.max_frame_len = len;
        self
    }
}

/// Progress a worker reported for a job.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// The job.
    pub job: JobId,
    /// Fraction done, 0.0 to 1.0.
    pub fraction: Option<f32>,
    /// A short status text.
    pub text: Option<String>,
}

pub(crate) type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// How progress extends a job's timeout, as systemd's `EXTEND_TIMEOUT_USEC`: each `Progress`
/// from the running job moves its timeout to at least `by` from then, never past `cap` from
/// the job's start (nor earlier than it was). See [`JobOptions::extend_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutExtension {
    /// Each progress report moves the timeout to at least this long from then.
    pub by: Duration,
    /// The timeout never moves past this long from the job's start.
    pub cap: Duration,
}

/// Per-job settings: the caller's token, a timeout, deadlines and a progress callback.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct JobOptions {
    /// Cancelling it cancels the job with reason `requested`.
    pub token: CancellationToken,
    /// After this long the job is cancelled with reason `timeout`.
    pub timeout: Option<Duration>,
    /// Overrides the worker's deadlines for this job.
    pub deadlines: Option<Deadlines>,
    /// When the running job sends no `Progress` for this long (counted from its start, then
    /// from each report), it is cancelled with reason `no_progress` and the ladder runs from
    /// there. Distinct from liveness (any frame, heartbeats included, counts there) and from
    /// the timeout. A protocol worker only: a plain program sends no progress.
    pub no_progress_timeout: Option<Duration>,
    /// Progress extends [`timeout`](Self::timeout) (see [`TimeoutExtension`]); nothing to
    /// extend without one.
    pub timeout_extension: Option<TimeoutExtension>,
    pub(crate) on_progress: Option<ProgressFn>,
}

impl fmt::Debug for JobOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobOptions")
            .field("token", &self.token)
            .field("timeout", &self.timeout)
            .field("deadlines", &self.deadlines)
            .field("no_progress_timeout", &self.no_progress_timeout)
            .field("timeout_extension", &self.timeout_extension)
            .field("on_progress", &self.on_progress.is_some())
            .finish()
    }
}

impl JobOptions {
    /// Defaults: a fresh token, no timeout, the worker's deadlines, no progress callback.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses the caller's token (link it to others with `child_token` as with .NET linked
    /// token sources).
    pub fn token(mut self, token: CancellationToken) -> Self {
        self.token = token;
        self
    }

    /// Cancels the job with reason `timeout` after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Overrides the ladder's deadlines.
    pub fn deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = Some(deadlines);
        self
    }

    /// Cancels the job with reason `no_progress` when it sends no progress for `after`: see
    /// [`JobOptions::no_progress_timeout`].
    pub fn no_progress_timeout(mut self, after: Duration) -> Self {
        self.no_progress_timeout = Some(after);
        self
    }

    /// Lets progress extend the timeout, as systemd's `EXTEND_TIMEOUT_USEC`: each `Progress`
    /// moves the job's timeout to at least `by` from then, never past `cap` from the job's
    /// start (and never earlier than it already was). The report's
    /// [`Trace::deadline`](crate::Trace::deadline) says where it ended up. Without a
    /// [`timeout`](Self::timeout) there is nothing to extend.
    pub fn extend_timeout(mut self, by: Duration, cap: Duration) -> Self {
        self.timeout_extension = Some(TimeoutExtension { by, cap });
        self
    }

    /// Calls `f` with the worker's progress reports, on a thread of the job's own, never on
    /// the worker's actor: a callback that blocks delays only later progress, never the
    /// ladder (SIGKILL included). Delivery is bounded and coalescing: reports read together
    /// from the worker become one, and while `f` runs, newer reports replace older ones not
    /// yet delivered, so `f` sees the latest, not every one; the last report before the result
    /// is always delivered. Reports may still be delivered after
    /// [`Worker::run`](crate::Worker::run) returned.
    pub fn on_progress(mut self, f: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_asks_for_a_heartbeat_every_quarter_of_the_bound() {
        let config = WorkerConfig::protocol();
        assert_eq!(config.requested_heartbeat(), None);
        let config = config.unresponsive_after(Duration::from_secs(1));
        assert_eq!(
            config.requested_heartbeat(),
            Some(Duration::from_millis(250))
        );
        let config = config.heartbeat_interval(Duration::from_millis(100));
        assert_eq!(
            config.requested_heartbeat(),
            Some(Duration::from_millis(100))
        );
    }
}
