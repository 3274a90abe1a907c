//! How `warden batch` runs one attempt of a job: the two executors behind one small enum (a
//! job in, an [`Attempt`] out).
//!
//! - [`Executor::Plain`]: a fresh process per job (the line substituted into the arguments),
//!   with the same ladder and containment as `warden run`.
//! - [`Executor::Protocol`]: the line is the payload of a job on a [`warden::Pool`] of `-j`
//!   warm SDK workers: the pool replaces a worker that died or was signalled, recycles one
//!   after `--max-jobs-per-worker`, and restarts crashed ones with backoff under its restart
//!   limit; past it the pool fails, and so does the batch (125). The pool's own retries are off:
//!   `--retries` is the batch loop's, for both modes.
//!
//! Both report through the same [`Attempt`], and neither decides retries or writes anything:
//! the batch loop does.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::Duration;

use warden::{
    Command, ExitStatus, JobOptions, JobReport, RunError, SpawnError, Worker, WorkerConfig,
};

/// One job of the batch: its input line and which attempt this is (1 for the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    /// The line, without its newline.
    pub(crate) input: Vec<u8>,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub(crate) attempt: u32,
}

/// Why an attempt has no report.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// The process (or the worker) could not be started.
    Spawn(SpawnError),
    /// The worker could not run the job.
    Run(RunError),
    /// The pool failed (its restart limit: a crash loop) or is gone: warden's own failure.
    Pool(String),
}

/// How one attempt went.
#[derive(Debug)]
pub(crate) struct Attempt {
    /// The job, as it was attempted.
    pub(crate) job: Job,
    /// The process (worker) that ran it, once started.
    pub(crate) pid: Option<u32>,
    /// The job's report, or why there is none.
    pub(crate) result: Result<JobReport, AttemptError>,
    /// How the process ended after the job, when the report does not say (a plain program's
    /// shutdown, a worker that was shut down after its job).
    pub(crate) exit_after: Option<ExitStatus>,
}

/// What every attempt of a batch shares.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    /// PROGRAM.
    pub(crate) program: OsString,
    /// ARG..., with `{}` where the line goes.
    pub(crate) args: Vec<OsString>,
    /// The worker settings (ladder, tokens, containment), cloned for each worker.
    pub(crate) config: WorkerConfig,
    /// The job's `--timeout`.
    pub(crate) timeout: Option<Duration>,
    /// Where each process's stdout goes.
    pub(crate) stdout: warden::Stdio,
}

impl Setup {
    fn options(&self) -> JobOptions {
        match self.timeout {
            Some(timeout) => JobOptions::new().timeout(timeout),
            None => JobOptions::new(),
        }
    }
}

/// The arguments of one plain job: every `{}` in an argument replaced by `line`; `line`
/// appended as the last argument when no argument has a `{}`.
pub(crate) fn substitute(args: &[OsString], line: &[u8]) -> Vec<OsString> {
    let has_slot = args.iter().any(|a| find(a.as_bytes(), b"{}").is_some());
    if !has_slot {
        let mut out = args.to_vec();
        out.push(OsString::from_vec(line.to_vec()));
        return out;
    }
    args.iter()
        .map(|arg| {
            let mut rest = arg.as_bytes();
            let mut out = Vec::with_capacity(rest.len());
            while let Some(at) = find(rest, b"{}") {
                out.extend_from_slice(&rest[..at]);
                out.extend_from_slice(line);
                rest = &rest[at + 2..];
            }
            out.extend_from_slice(rest);
            OsString::from_vec(out)
        })
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The protocol executor: a [`warden::Pool`] of `-j` warm SDK workers (replacement,
/// recycling after `--max-jobs-per-worker`, the restart policy: a crash loop fails the pool).
#[derive(Debug)]
pub(crate) struct Warmed {
    setup: Setup,
    pool: warden::Pool,
}

/// Runs attempts; see the module docs.
#[derive(Debug)]
pub(crate) enum Executor {
    /// One process per job.
    Plain(Setup),
    /// Warm SDK workers.
    Protocol(Warmed),
}

impl Executor {
    /// A plain executor.
    pub(crate) fn plain(setup: Setup) -> Executor {
        Executor::Plain(setup)
    }

    /// A protocol executor: a pool of `workers` whose workers run at most `max_jobs` jobs
    /// each. Must be called within the tokio runtime.
    pub(crate) fn protocol(
        setup: Setup,
        workers: usize,
        max_jobs: Option<u64>,
    ) -> Result<Executor, warden::PoolConfigError> {
        let mut command = Command::new(&setup.program);
        command
            .args(&setup.args)
            .stdin(warden::Stdio::Null)
            .stdout(setup.stdout);
        // The batch loop keeps at most `workers` jobs running, so the queue never holds more.
        let mut config = warden::PoolConfig::new(workers).queue_capacity(workers.max(1));
        if let Some(max) = max_jobs {
            config = config.max_jobs_per_worker(u32::try_from(max).unwrap_or(u32::MAX));
        }
        let pool = warden::Pool::start(&command, setup.config.clone(), config)?;
        Ok(Executor::Protocol(Warmed { setup, pool }))
    }

    /// Runs one attempt of `job` to its end (the ladder included).
    ///
    /// # Cancel safety
    /// Dropping the future cancels the job (reason `requested`) and the worker shuts down in
    /// the background; the batch loop never does.
    pub(crate) async fn run(&self, job: Job) -> Attempt {
        match self {
            Executor::Plain(setup) => run_plain(setup, job).await,
            Executor::Protocol(warmed) => warmed.run(job).await,
        }
    }

    /// Shuts the protocol executor's pool down (every job has ended by now: drain), each
    /// worker through its ladder, and waits until they are reaped.
    pub(crate) async fn close(&self) {
        if let Executor::Protocol(warmed) = self {
            let deadline = warmed.setup.config.deadlines.grace
                + warmed.setup.config.deadlines.kill_after
                + warmed.setup.config.deadlines.reap_timeout;
            warmed
                .pool
                .shutdown(warden::ShutdownMode::Drain, deadline)
                .await;
        }
    }
}

async fn run_plain(setup: &Setup, job: Job) -> Attempt {
    let mut command = Command::new(&setup.program);
    command
        .args(substitute(&setup.args, &job.input))
        .stdin(warden::Stdio::Null)
        .stdout(setup.stdout);
    let worker = match Worker::spawn(&command, setup.config.clone()).await {
        Ok(worker) => worker,
        Err(error) => {
            return Attempt {
                job,
                pid: None,
                result: Err(AttemptError::Spawn(error)),
                exit_after: None,
            };
        }
    };
    let pid = Some(worker.pid());
    let result = worker.run(Vec::new(), setup.options()).await;
    let exit_after = worker.shutdown().await;
    Attempt {
        job,
        pid,
        result: result.map_err(AttemptError::Run),
        exit_after,
    }
}

impl Warmed {
    async fn run(&self, job: Job) -> Attempt {
        let handle = match self
            .pool
            .submit(job.input.clone(), self.setup.options())
            .await
        {
            Ok(handle) => handle,
            Err(error) => {
                return Attempt {
                    job,
                    pid: None,
                    result: Err(AttemptError::Pool(error.to_string())),
                    exit_after: None,
                };
            }
        };
        match handle.await {
            Ok(report) => Attempt {
                job,
                pid: report.worker_pid,
                result: Ok(report.report),
                exit_after: None,
            },
            Err(warden::JobError::Run(error)) => Attempt {
                job,
                pid: None,
                result: Err(AttemptError::Run(error)),
                exit_after: None,
            },
            Err(error) => Attempt {
                job,
                pid: None,
                result: Err(AttemptError::Pool(error_chain_of(&error))),
                exit_after: None,
            },
        }
    }
}

/// `error` and its sources, `: `-separated.
fn error_chain_of(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_line_replaces_every_slot_or_is_appended() {
        assert_eq!(substitute(&os(&["-n"]), b"x y"), os(&["-n", "x y"]));
        assert_eq!(substitute(&[], b"x"), os(&["x"]));
        assert_eq!(
            substitute(&os(&["a{}b", "{}{}", "c"]), b"L"),
            os(&["aLb", "LL", "c"])
        );
        // Only the exact pair is a slot; a line holding one is not substituted again.
        assert_eq!(
            substitute(&os(&["{", "}", "{x}", "{}"]), b"{}"),
            os(&["{", "}", "{x}", "{}"])
        );
        let bytes = substitute(&os(&["{}"]), b"\xff\xfe");
        assert_eq!(bytes[0].as_bytes(), b"\xff\xfe");
    }
}
