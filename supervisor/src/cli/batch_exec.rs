//! How `warden batch` runs one attempt of a job: the two executors behind one small enum (a
//! job in, an [`Attempt`] out).
//!
//! - [`Executor::Plain`]: a fresh process per job (the line substituted into the arguments),
//!   with the same ladder and containment as `warden run`.
//! - [`Executor::Protocol`]: the line is the payload of a job on a warm SDK worker. For now
//!   this is a simple bounded set of plain [`Worker`]s: the batch loop never has more than `-j`
//!   attempts in flight, each takes an idle worker (or starts one), and a worker that died, was
//!   signalled or reached `--max-jobs-per-worker` is shut down instead of going back. It is
//!   kept small and isolated so that the pool library can replace it.
//!
//! Both report through the same [`Attempt`], and neither decides retries or writes anything:
//! the batch loop does.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Mutex;
use std::time::Duration;

use warden::{
    Command, ExitStatus, JobOptions, JobReport, RunError, SpawnError, Stage, Worker, WorkerConfig,
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

/// A warm worker and how many jobs it ran.
#[derive(Debug)]
struct Warm {
    worker: Worker,
    jobs: u64,
}

/// The protocol executor's workers (see the module docs).
#[derive(Debug)]
pub(crate) struct Warmed {
    setup: Setup,
    /// Recycle a worker after this many jobs.
    max_jobs: Option<u64>,
    idle: Mutex<Vec<Warm>>,
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

    /// A protocol executor whose workers run at most `max_jobs` jobs each.
    pub(crate) fn protocol(setup: Setup, max_jobs: Option<u64>) -> Executor {
        Executor::Protocol(Warmed {
            setup,
            max_jobs,
            idle: Mutex::new(Vec::new()),
        })
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

    /// Shuts down every idle worker (the protocol executor's), each through its ladder, and
    /// waits until they are reaped.
    pub(crate) async fn close(&self) {
        if let Executor::Protocol(warmed) = self {
            let idle = std::mem::take(&mut *lock(&warmed.idle));
            let mut shutdowns = tokio::task::JoinSet::new();
            for warm in idle {
                shutdowns.spawn(warm.worker.shutdown());
            }
            while shutdowns.join_next().await.is_some() {}
        }
    }
}

fn lock(idle: &Mutex<Vec<Warm>>) -> std::sync::MutexGuard<'_, Vec<Warm>> {
    // Nothing panics while holding it; a poisoned list is still a list of workers.
    idle.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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

/// Whether a worker that ran a job with this report can take another: it answered before any
/// signal, is still running and broke no rule (a wrong guess only costs a `WorkerGone`, which
/// [`Warmed::run`] answers with a fresh worker).
fn reusable(report: &JobReport) -> bool {
    report.exit.is_none()
        && report.violation.is_none()
        && matches!(report.stage, None | Some(Stage::Cooperative))
        && (report.trace.result_received.is_some() || !report.started)
}

impl Warmed {
    async fn run(&self, job: Job) -> Attempt {
        let shutdown = self.setup.config.shutdown.clone();
        loop {
            let taken = lock(&self.idle).pop();
            let fresh = taken.is_none();
            let mut warm = match taken {
                Some(warm) => warm,
                None => {
                    let mut command = Command::new(&self.setup.program);
                    command
                        .args(&self.setup.args)
                        .stdin(warden::Stdio::Null)
                        .stdout(self.setup.stdout);
                    match Worker::spawn(&command, self.setup.config.clone()).await {
                        Ok(worker) => Warm { worker, jobs: 0 },
                        Err(error) => {
                            return Attempt {
                                job,
                                pid: None,
                                result: Err(AttemptError::Spawn(error)),
                                exit_after: None,
                            };
                        }
                    }
                }
            };
            let pid = Some(warm.worker.pid());
            match warm
                .worker
                .run(job.input.clone(), self.setup.options())
                .await
            {
                // An idle worker that died (or broke the rules) while it waited: not this
                // job's fault, and the job never started. A fresh worker takes it.
                Err(RunError::WorkerGone { .. }) if !fresh => {
                    warm.worker.shutdown().await;
                    continue;
                }
                Err(error) => {
                    let exit_after = warm.worker.shutdown().await;
                    return Attempt {
                        job,
                        pid,
                        result: Err(AttemptError::Run(error)),
                        exit_after,
                    };
                }
                Ok(report) => {
                    warm.jobs += 1;
                    let recycle = self.max_jobs.is_some_and(|max| warm.jobs >= max);
                    let mut exit_after = None;
                    if reusable(&report) && !recycle && !shutdown.is_cancelled() {
                        lock(&self.idle).push(warm);
                    } else {
                        exit_after = warm.worker.shutdown().await;
                    }
                    return Attempt {
                        job,
                        pid,
                        result: Ok(report),
                        exit_after,
                    };
                }
            }
        }
    }
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
