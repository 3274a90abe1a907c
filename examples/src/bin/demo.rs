//! Scenario: the whole ladder at a glance. Runs four workers under warden at the same time, waits
//! until each is really working, cancels each with its token, and prints who stopped the work:
//!
//! - `cooperative-worker` checks its token between slices: `cancelled` at stage 1 (cooperative);
//!   the same process then completes a second job, showing that it was kept and reused;
//! - `stubborn-worker --default-sigterm` never checks its token and leaves SIGTERM at its
//!   default: `terminated` at stage 2 (the polite signal) once `grace` has passed;
//! - `stubborn-worker` never checks its token and its SDK turns SIGTERM into a token trip that
//!   nobody reads: `killed` at stage 3 (SIGKILL) after `grace` + `kill_after`;
//! - `ignore-term` is a plain program (no SDK) ignoring SIGTERM: its ladder starts at the signal,
//!   so `killed` at stage 3 after `kill_after`.
//!
//! Readiness: the SDK workers are "working" once their first progress report arrives; the plain
//! program writes `ready` to a FIFO after it has set SIGTERM to SIG_IGN.
//!
//! Run with `cargo run --release -p warden-examples --bin demo` (`RUST_LOG=warden=info` shows the
//! supervisor's log). The workers are this executable started in a worker role
//! (`warden_examples::workers`, the same code as the standalone worker binaries): `cargo run
//! --bin demo` builds only this binary, so a sibling worker binary could be missing or stale.
//! Every worker is shut down and reaped before the demo exits, and the demo checks that each
//! worker's process group is empty.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use warden::{
    CancellationToken, Command, Deadlines, ExitStatus, JobOptions, JobReport, Outcome, Stage,
    Worker, WorkerConfig,
};
use warden_examples::{BoxError, Table, WorkSpec, ms, within, workers};

/// Deadlines short enough for the demo to end in about a second.
const DEADLINES: Deadlines = Deadlines {
    grace: Duration::from_millis(500),
    kill_after: Duration::from_millis(500),
    reap_timeout: Duration::from_secs(1),
};

/// Bound on every wait for a worker to start, become ready or report.
const WAIT: Duration = Duration::from_secs(10);

/// One row of the table, and what is needed to check the worker is gone afterwards.
struct Row {
    worker: String,
    pid: u32,
    report: JobReport,
    /// Caller's view: from `token.cancel()` to the report in hand.
    cancel_to_report: Duration,
    /// How the process ended (after the job, or after shutdown for a reused worker).
    final_status: Option<ExitStatus>,
    note: Option<String>,
}

/// Starts `job`, waits until `ready` resolves (polling the job meanwhile so it is handed to the
/// worker first), cancels it and returns the report and the caller-side latency.
async fn cancel_when_ready(
    name: &str,
    job: impl Future<Output = Result<JobReport, warden::RunError>>,
    ready: impl Future<Output = Result<(), BoxError>>,
    token: &CancellationToken,
) -> Result<(JobReport, Duration), BoxError> {
    tokio::pin!(job);
    tokio::select! {
        biased;
        ended = &mut job => {
            return Err(format!("{name}: the job ended before it was ready: {ended:?}").into());
        }
        ready = ready => ready?,
    }
    // `run` only queued the job for the worker's actor task, and warden reports a token
    // cancelled before the actor picks the job up as "cancelled before start" without touching
    // the process. An SDK worker's progress proves its job started; a plain program's readiness
    // does not. On this current-thread runtime, yielding once lets the actor (already woken by
    // the queued job) take it before the cancel; the `started` check below catches any change.
    tokio::task::yield_now().await;
    let cancelled_at = Instant::now();
    token.cancel();
    let report = within(WAIT, &format!("{name}'s report"), job).await??;
    if !report.started {
        return Err(format!("{name}: the cancel reached warden before the job was started").into());
    }
    Ok((report, cancelled_at.elapsed()))
}

/// An SDK worker: ready at its first progress report.
async fn sdk_worker(name: &str, cmd: Command, payload: Vec<u8>) -> Result<Row, BoxError> {
    let config = WorkerConfig::protocol().deadlines(DEADLINES);
    let worker = within(
        WAIT,
        &format!("{name} to start"),
        Worker::spawn(&cmd, config),
    )
    .await??;
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
    let token = CancellationToken::new();
    let options = JobOptions::new()
        .token(token.clone())
        .on_progress(move |p| {
            let _ = progress_tx.send(p);
        });
    let ready = async {
        within(
            WAIT,
            &format!("{name}'s first progress"),
            progress_rx.recv(),
        )
        .await?
        .ok_or_else(|| BoxError::from(format!("{name} never reported progress")))?;
        Ok(())
    };
    let (report, cancel_to_report) =
        cancel_when_ready(name, worker.run(payload, options), ready, &token).await?;

    let mut note = None;
    if matches!(report.outcome, Outcome::Cancelled) {
        // A cooperative cancel leaves the process alive: prove it takes the next job.
        let small = WorkSpec {
            chunks: 3,
            chunk: Duration::from_millis(1),
        };
        let again = within(
            WAIT,
            &format!("{name}'s second job"),
            worker.run(small.encode(), JobOptions::new()),
        )
        .await??;
        note = Some(format!(
            "{name} (pid {}) kept running after its cancel and {} a second job",
            worker.pid(),
            again.outcome.name()
        ));
    }
    let pid = worker.pid();
    let final_status = within(WAIT, &format!("{name} to shut down"), worker.shutdown()).await?;
    Ok(Row {
        worker: name.into(),
        pid,
        report,
        cancel_to_report,
        final_status,
        note,
    })
}

/// The plain program: ready when it writes `ready` to a FIFO.
async fn plain_worker(name: &str, mut cmd: Command, fifo: &Path) -> Result<Row, BoxError> {
    nix::unistd::mkfifo(
        fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )?;
    // Read-write, so the read end never sees EOF before the program opens the FIFO.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fifo)?;
    let mut lines = BufReader::new(tokio::net::unix::pipe::Receiver::from_file(file)?).lines();

    cmd.arg(fifo);
    let config = WorkerConfig::plain().deadlines(DEADLINES);
    let worker = within(
        WAIT,
        &format!("{name} to start"),
        Worker::spawn(&cmd, config),
    )
    .await??;
    let token = CancellationToken::new();
    let ready = async {
        match within(WAIT, &format!("{name}'s ready line"), lines.next_line()).await?? {
            Some(line) if line == "ready" => Ok(()),
            other => Err(format!("{name} said {other:?} instead of ready").into()),
        }
    };
    let job = worker.run(Vec::new(), JobOptions::new().token(token.clone()));
    let (report, cancel_to_report) = cancel_when_ready(name, job, ready, &token).await?;
    let pid = worker.pid();
    let final_status = within(WAIT, &format!("{name} to shut down"), worker.shutdown()).await?;
    Ok(Row {
        worker: name.into(),
        pid,
        report,
        cancel_to_report,
        final_status,
        note: None,
    })
}

fn stage_text(stage: Option<Stage>) -> String {
    match stage {
        None => "-".into(),
        Some(Stage::Cooperative) => "1 cooperative".into(),
        Some(Stage::Signal) => "2 signal".into(),
        Some(Stage::Kill) => "3 kill".into(),
        Some(other) => format!("{other:?}"),
    }
}

fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::CompletedDespiteCancel(_) => "completed (despite cancel)".into(),
        Outcome::Failed(f) => format!("failed ({f:?})"),
        Outcome::Crashed(status) => format!("crashed ({})", exit_text(Some(*status))),
        other => other.name().into(),
    }
}

fn exit_text(status: Option<ExitStatus>) -> String {
    match status {
        None => "-".into(),
        Some(ExitStatus::Code(c)) => format!("exit {c}"),
        Some(status) => match status.signal() {
            Some(sig) => nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| format!("signal {sig}")),
            None => status.to_string(),
        },
    }
}

/// `kill(-pgid, 0)`: ESRCH once nothing is left in the worker's process group.
fn group_is_empty(pgid: u32) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else {
        return true;
    };
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None)
        == Err(nix::errno::Errno::ESRCH)
}

/// Runs every scenario; `Ok(false)` if a worker's process group is not empty at the end.
async fn run(scratch: &Path) -> Result<bool, BoxError> {
    println!("warden demo: four workers, each cancelled once it is really working");
    println!(
        "deadlines: grace {} ms (cancel message -> SIGTERM+SIGCONT), kill_after {} ms (-> SIGKILL), reap_timeout {} ms",
        DEADLINES.grace.as_millis(),
        DEADLINES.kill_after.as_millis(),
        DEADLINES.reap_timeout.as_millis()
    );
    println!();

    let mut stubborn_term = workers::command("stubborn-worker")?;
    stubborn_term.arg("--default-sigterm");
    let fifo = scratch.join("ready");
    let started = Instant::now();
    let (a, b, c, d) = tokio::join!(
        sdk_worker(
            "cooperative-worker",
            workers::command("cooperative-worker")?,
            WorkSpec::default().encode()
        ),
        sdk_worker(
            "stubborn-worker --default-sigterm",
            stubborn_term,
            Vec::new()
        ),
        sdk_worker(
            "stubborn-worker",
            workers::command("stubborn-worker")?,
            Vec::new()
        ),
        plain_worker(
            "ignore-term (plain)",
            workers::command("ignore-term")?,
            &fifo
        ),
    );
    let rows = [a?, b?, c?, d?];

    let mut table = Table::new([
        "worker",
        "outcome",
        "stage reached",
        "reason",
        "exit",
        "cancel->outcome ms",
        "cancel->reaped ms",
    ]);
    for row in &rows {
        let r = &row.report;
        let reaped = match (r.trace.reaped, r.trace.cancel_requested) {
            (Some(reaped), Some(cancel)) => ms(reaped.saturating_sub(cancel)),
            _ => "- (alive, reused)".into(),
        };
        table.row([
            row.worker.clone(),
            outcome_text(&r.outcome),
            stage_text(r.stage),
            r.reason.map_or("-".into(), |reason| reason.to_string()),
            exit_text(r.exit),
            ms(row.cancel_to_report),
            reaped,
        ]);
    }
    print!("{table}");
    println!();
    println!("cancel->outcome: from token.cancel() to the JobReport in the caller's hands.");
    println!("cancel->reaped: from the cancel seen by the worker's actor to the process reaped.");
    for note in rows.iter().filter_map(|r| r.note.as_deref()) {
        println!("{note}.");
    }

    let mut clean = true;
    for row in &rows {
        let status = exit_text(row.final_status);
        if group_is_empty(row.pid) {
            println!(
                "{} (pid {}): reaped ({status}), process group empty",
                row.worker, row.pid
            );
        } else {
            println!(
                "{} (pid {}): PROCESS GROUP NOT EMPTY ({status})",
                row.worker, row.pid
            );
            clean = false;
        }
    }
    println!("total {} ms", started.elapsed().as_millis());
    Ok(clean)
}

/// A private scratch directory for the FIFO, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> ExitCode {
    // Lets this binary serve as warden's exec shim: cgroup placement before exec, PDEATHSIG.
    warden::shim::run_if_shim();
    if let Some(code) = workers::run_if_worker() {
        return code;
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let dir = std::env::temp_dir().join(format!("warden-demo-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&dir) {
        eprintln!("demo: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let scratch = Scratch(dir);
    // One thread is plenty for the supervisor side, and it orders the actor's start of the
    // plain program's job before the cancel (see `cancel_when_ready`).
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BoxError::from)
        .and_then(|runtime| runtime.block_on(run(&scratch.0)));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
