//! The worker scenarios, callable from any binary: the standalone worker binaries call them from
//! `main`, and `demo` and `ladder-bench` start themselves in a worker role with [`command`].
//!
//! A host that runs itself as its workers cannot pick up a missing or stale worker binary:
//! `cargo run --bin demo` builds only `demo`, not the other binaries of the package.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use thiserror::Error;
use warden_worker::{Job, JobError, Worker};

use crate::{WorkSpec, spin_for};

/// The first argument that makes [`run_if_worker`] take over: `<exe> --warden-example-worker NAME
/// [ARGS...]`.
pub const WORKER_FLAG: &str = "--warden-example-worker";

/// Names accepted by [`command`] and [`run_if_worker`] (the same as the standalone binaries).
pub const NAMES: [&str; 4] = [
    "cooperative-worker",
    "stubborn-worker",
    "ignore-term",
    "hostile-worker",
];

/// The running executable could not be located to start it as a worker.
#[derive(Debug, Error)]
#[error("cannot locate the running executable")]
pub struct WorkerCommandError(#[source] io::Error);

/// A command that starts the running executable as the worker `name` (one of [`NAMES`]); the
/// host's `main` must call [`run_if_worker`] first. Add the worker's own arguments with `arg`.
pub fn command(name: &str) -> Result<warden::Command, WorkerCommandError> {
    let exe = std::env::current_exe().map_err(WorkerCommandError)?;
    let mut cmd = warden::Command::new(exe);
    cmd.arg(WORKER_FLAG).arg(name);
    Ok(cmd)
}

/// If this process was started by [`command`], runs the worker and returns its exit code;
/// otherwise `None`. Call it first thing in `main`, before any thread or runtime starts.
pub fn run_if_worker() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != WORKER_FLAG {
        return None;
    }
    let name = args.next().unwrap_or_default();
    let rest: Vec<OsString> = args.collect();
    Some(match name.to_str() {
        Some("cooperative-worker") => cooperative(),
        Some("stubborn-worker") => stubborn(rest.iter().any(|a| a == "--default-sigterm")),
        Some("ignore-term") => ignore_term(rest.first().map(Path::new)),
        Some("hostile-worker") => {
            let args: Vec<String> = rest
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            crate::hostile::main_with(&[WORKER_FLAG, "hostile-worker"], &args)
        }
        _ => {
            eprintln!("unknown worker {name:?}; expected one of {NAMES:?}");
            ExitCode::from(2)
        }
    })
}

fn served(name: &str, result: Result<(), warden_worker::ServeError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cooperative-worker`: each job is a [`WorkSpec`] of CPU-bound slices; the token is checked
/// (`job.check()?`) and progress reported between slices, so a cancel is answered within one
/// slice and the process lives on for the next job. Output: the slices' result, 8 bytes LE.
pub fn cooperative() -> ExitCode {
    fn work(job: Job) -> Result<Vec<u8>, JobError> {
        let spec = WorkSpec::parse(job.payload()).map_err(JobError::msg)?;
        let mut acc = 0u64;
        for done in 0..spec.chunks {
            // The only place this job can stop: between two slices.
            job.check()?;
            acc = acc.wrapping_add(spin_for(spec.chunk));
            job.progress()
                .set_fraction((done as f32 + 1.0) / spec.chunks as f32);
        }
        Ok(acc.to_le_bytes().to_vec())
    }
    served("cooperative-worker", warden_worker::serve_blocking(work))
}

/// `stubborn-worker`: reports progress once, then spins on the CPU forever without looking at
/// its token. With `default_sigterm` the SDK leaves SIGTERM at its default disposition
/// (`handle_sigterm(false)`), so the polite signal ends the process; otherwise the SDK turns
/// SIGTERM into a token trip nobody reads and only SIGKILL stops it.
pub fn stubborn(default_sigterm: bool) -> ExitCode {
    fn spin(job: Job) -> Result<Vec<u8>, JobError> {
        job.progress()
            .report(Some(0.0), Some("spinning; not checking the token"));
        let mut x: u64 = 1;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
    let result = Worker::new()
        .handle_sigterm(!default_sigterm)
        .serve_blocking(spin);
    served("stubborn-worker", result)
}

/// `ignore-term`: a plain program (no SDK). Sets SIGTERM to SIG_IGN, writes `ready` and a newline
/// to `ready` (a FIFO the host reads) if given, then sleeps in `pause()` until it is killed,
/// using no CPU.
pub fn ignore_term(ready: Option<&Path>) -> ExitCode {
    if let Err(e) = crate::sys::ignore_sigterm() {
        eprintln!("ignore-term: cannot ignore SIGTERM: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(path) = ready {
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(b"ready\n"));
        if let Err(e) = written {
            eprintln!(
                "ignore-term: cannot report readiness to {}: {e}",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    loop {
        // Returns only when a signal handler ran; there is none, so this sleeps until SIGKILL.
        nix::unistd::pause();
    }
}
