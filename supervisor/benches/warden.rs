//! warden's benchmark: every figure a ratio against a raw floor measured in the same run.
//!
//! `cargo bench -p warden` (or `cargo bench -p warden --bench warden -- --quick`, under a minute) prints one table and
//! writes the same rows as JSON to `target/warden-bench.json`:
//! `[{name, unit, median, p99, floor_name, floor_median, ratio, target, met}]`.
//!
//! The machine this runs on may be a noisy VM, so nothing here is a pass/fail gate: `.ci/run`
//! runs `--quick` to keep the bench from rotting, and the README shows a full run's table. Rows
//! that need what this machine lacks (python3 with `pebble`, a pool) say they were skipped.
//!
//! Every worker and floor program is this executable started in a role
//! (`WARDEN_BENCH_ROLE`), so a floor and the worker it is compared with pay for the same
//! binary's exec and start-up.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden::{
    CancellationToken, Containment, Deadlines, JobOptions, Outcome, Progress, Tree, TreeOptions,
    Worker, WorkerConfig,
};

const ROLE: &str = "WARDEN_BENCH_ROLE";
/// The inherited socket of the raw floors' children.
const RAW_FD: &str = "WARDEN_BENCH_FD";
/// Bound on every wait for a worker, a report or a child.
const WAIT: Duration = Duration::from_secs(20);
/// Rounds of the rows that take seconds each (7 and 8) in a full run, their floors interleaved.
const ROUNDS: usize = 5;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    warden::shim::run_if_shim();
    if let Ok(role) = std::env::var(ROLE) {
        std::process::exit(roles::run(&role));
    }
    let quick = std::env::args().any(|a| a == "--quick");
    raise_nofile();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let rows = runtime.block_on(run_all(quick));
    print_table(&rows);
    let path = json_path();
    match std::fs::write(&path, to_json(&rows)) {
        Ok(()) => println!("\nwritten: {}", path.display()),
        Err(e) => {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}

/// One result row.
struct Row {
    name: String,
    unit: &'static str,
    median: f64,
    p99: f64,
    floor_name: String,
    floor_median: Option<f64>,
    target: String,
    /// Whether the target is met, decided by the row.
    met: Option<bool>,
    /// Why the row was not measured, if it was not.
    skipped: Option<String>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        let floor = self.floor_median?;
        (floor > 0.0 && self.skipped.is_none()).then(|| self.median / floor)
    }

    /// The same row, shown for what its ratio says and judged against no target.
    fn informative(self) -> Row {
        Row {
            target: "informative".into(),
            met: None,
            ..self
        }
    }

    /// An informative throughput row: the median of the rounds' rates against one floor rate
    /// (the p99 column holds the slowest round).
    fn rate(name: String, rates: &mut [f64], floor_name: &str, floor: f64) -> Row {
        let (median, slowest) = rate_stats(rates);
        Row {
            name,
            unit: "jobs/s",
            median,
            p99: slowest,
            floor_name: floor_name.into(),
            floor_median: Some(floor),
            target: String::new(),
            met: None,
            skipped: None,
        }
        .informative()
    }

    fn skipped(name: &str, target: &str, why: impl Into<String>) -> Row {
        Row {
            name: name.into(),
            unit: "",
            median: 0.0,
            p99: 0.0,
            floor_name: String::new(),
            floor_median: None,
            target: target.into(),
            met: None,
            skipped: Some(why.into()),
        }
    }
}

/// A row whose target is "at most `max_ratio` times the floor".
fn ratio_row(
    name: &str,
    samples: &mut [f64],
    floor_name: &str,
    floor: &mut [f64],
    max_ratio: f64,
) -> Row {
    let (median, p99) = stats(samples);
    let (floor_median, _) = stats(floor);
    Row {
        name: name.into(),
        unit: "ms",
        median,
        p99,
        floor_name: floor_name.into(),
        floor_median: Some(floor_median),
        target: format!("<= {max_ratio}x"),
        met: Some(floor_median > 0.0 && median / floor_median <= max_ratio),
        skipped: None,
    }
}

fn stats(samples: &mut [f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CLOCK_MONOTONIC in nanoseconds: the one clock every process on the machine shares.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Lifts the soft open-file limit to the hard one (the 1,000-worker row needs ~2,000 fds).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn exe() -> std::path::PathBuf {
    std::env::current_exe().expect("the bench executable")
}

/// The bench started as `role`, for warden.
fn warden_cmd(role: &str) -> warden::Command {
    let mut cmd = warden::Command::new(exe());
    cmd.env(ROLE, role);
    cmd
}

/// The bench started as `role` by std, with `theirs` at fd 3 (named by `WARDEN_BENCH_FD`).
fn raw_child(role: &str, theirs: &UnixStream) -> std::io::Result<std::process::Child> {
    let fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new(exe());
    cmd.env(ROLE, role)
        .env(RAW_FD, "3")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it runs in the forked child before exec. (The floor
    // may use a pre_exec closure: it is what a careful hand-written spawn does.)
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn sdk_config() -> WorkerConfig {
    WorkerConfig::protocol()
}

async fn run_all(quick: bool) -> Vec<Row> {
    let n = if quick { 20 } else { 200 };
    let mut rows = Vec::new();
    // `WARDEN_BENCH_ONLY=5c` runs only the rows whose name contains it.
    let only = std::env::var("WARDEN_BENCH_ONLY").ok();
    macro_rules! row {
        ($name:expr, $fut:expr) => {{
            if only.as_deref().is_some_and(|o| !$name.contains(o)) {
                eprintln!("{}: not selected", $name);
            } else {
                eprint!("{} ... ", $name);
                let row = match $fut.await {
                    Ok(row) => row,
                    Err(e) => Row::skipped($name, "", format!("failed: {e}")),
                };
                eprintln!("done");
                rows.push(row);
            }
        }};
    }
    row!("1 spawn -> handshake", spawn_handshake(n));
    row!("2 spawn after a tree was killed", spawn_after_kill(n / 2));
    row!("3 cancel() -> token flips", cancel_flip(n));
    row!("3d cancel() from a runtime task", cancel_flip_in_task(n));
    row!("4 cancel() -> cooperative outcome", cancel_outcome(n));
    if only
        .as_deref()
        .is_none_or(|o| "3b 4b cancel through tokio parts".contains(o))
    {
        eprint!("3b 4b cancel through tokio parts ... ");
        match cancel_tokio_shape(n).await {
            Ok(r) => rows.extend(r),
            Err(e) => rows.push(Row::skipped("3b 4b", "", format!("failed: {e}"))),
        }
        eprintln!("done");
    }
    if only.as_deref().is_none_or(|o| "5a 5b stage-3".contains(o)) {
        for r in stage3(if quick { 10 } else { 100 }).await {
            rows.push(r);
        }
    }
    row!(
        "5c stage-3 lateness beside N busy pool workers",
        stage3_under_load(
            if quick { 10 } else { 50 },
            if quick { 100 } else { 1000 },
            false
        )
    );
    row!(
        "5d stage-3 lateness beside N workers each running a job",
        stage3_under_load(
            if quick { 10 } else { 50 },
            if quick { 100 } else { 1000 },
            true
        )
    );
    row!(
        "6 tree of 100 killed -> all reaped",
        tree_kill(if quick { 3 } else { 10 })
    );
    if only
        .as_deref()
        .is_none_or(|o| "7 empty jobs, pool of 2".contains(o))
    {
        eprint!("7 empty jobs, pool of 2 ... ");
        match pool_throughput(
            if quick { 2_000 } else { 20_000 },
            if quick { 1 } else { ROUNDS },
        )
        .await
        {
            Ok(r) => rows.extend(r),
            Err(e) => rows.push(Row::skipped("7 empty jobs", "", format!("failed: {e}"))),
        }
        eprintln!("done");
    }
    if only.as_deref().is_none_or(|o| "8 N workers".contains(o)) {
        eprint!("8 N workers: spawn, cancel all, reaped ... ");
        match many_workers(
            if quick { 100 } else { 1000 },
            if quick { 1 } else { ROUNDS },
        )
        .await
        {
            Ok(r) => rows.extend(r),
            Err(e) => rows.push(Row::skipped("8 N workers", "", format!("failed: {e}"))),
        }
        eprintln!("done");
    }
    row!(
        "9 supervisor RSS per idle worker",
        rss_per_worker(if quick { 100 } else { 500 })
    );
    row!("10 idle SDK worker PSS", worker_pss());
    row!("11a warden timeout 10 true", timeout_true(n / 2));
    row!(
        "11b warden timeout 0.1 sleep 10",
        timeout_sleep(if quick { 5 } else { 20 })
    );
    row!("12 is_cancelled() hot loop", hot_loop());
    row!(
        "12b is_cancelled() against a shared flag",
        hot_loop_shared()
    );
    rows
}

// Row 1 and 2 -------------------------------------------------------------------------------

/// std spawn of the bench as a raw worker that writes one hello frame on an inherited
/// socketpair; the time until the frame is read.
fn raw_hello_once() -> Result<Duration, BoxError> {
    let (mut ours, theirs) = UnixStream::pair()?;
    ours.set_read_timeout(Some(WAIT))?;
    let start = Instant::now();
    let mut child = raw_child("raw-hello", &theirs)?;
    drop(theirs);
    let mut header = [0u8; 4];
    ours.read_exact(&mut header)?;
    let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
    ours.read_exact(&mut body)?;
    let took = start.elapsed();
    drop(ours);
    child.wait()?;
    Ok(took)
}

async fn raw_hello_floor(n: usize) -> Result<Vec<f64>, BoxError> {
    tokio::task::spawn_blocking(move || (0..n).map(|_| raw_hello_once().map(ms)).collect()).await?
}

async fn spawn_handshake(n: usize) -> Result<Row, BoxError> {
    let mut floor = raw_hello_floor(n).await?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let worker = Worker::spawn(&warden_cmd("sdk"), sdk_config()).await?;
        samples.push(ms(start.elapsed()));
        worker.shutdown().await;
    }
    Ok(ratio_row(
        "1 spawn -> handshake",
        &mut samples,
        "std spawn, one hello frame on a socketpair",
        &mut floor,
        1.5,
    ))
}

async fn spawn_after_kill(n: usize) -> Result<Row, BoxError> {
    let mut floor = raw_hello_floor(n).await?;
    let mut samples = Vec::with_capacity(n);
    let config = || {
        sdk_config()
            .deadlines(Deadlines {
                grace: Duration::ZERO,
                kill_after: Duration::ZERO,
                reap_timeout: WAIT,
            })
            .tree(TreeOptions::new().containment(Containment::Auto))
    };
    for _ in 0..n {
        let victim = Worker::spawn(&warden_cmd("sdk"), config()).await?;
        // A spinning job cancelled with zero deadlines: its tree is killed.
        let (report, _, _) = cancel_when_ready(&victim, b"spin").await?;
        if report.outcome != Outcome::Killed {
            return Err(format!("the victim was not killed: {:?}", report.outcome).into());
        }
        let _ = victim.shutdown().await;
        let start = Instant::now();
        let worker = Worker::spawn(&warden_cmd("sdk"), config()).await?;
        samples.push(ms(start.elapsed()));
        worker.shutdown().await;
    }
    Ok(ratio_row(
        "2 spawn after a tree was killed",
        &mut samples,
        "std spawn, one hello frame on a socketpair",
        &mut floor,
        1.5,
    ))
}

// Rows 3 and 4 ------------------------------------------------------------------------------

/// The raw floors: a child reads a byte on the inherited socket and (3) reports when, or (4)
/// acks it. Returns (one-way, round trip) in ms.
fn raw_ipc(n: usize) -> Result<(Vec<f64>, Vec<f64>), BoxError> {
    let (mut ours, theirs) = UnixStream::pair()?;
    ours.set_read_timeout(Some(WAIT))?;
    let mut child = raw_child("raw-echo", &theirs)?;
    drop(theirs);
    let (mut one_way, mut round) = (Vec::new(), Vec::new());
    let mut ack = [0u8; 8];
    for _ in 0..n {
        let t0 = mono_ns();
        ours.write_all(b"p")?;
        ours.read_exact(&mut ack)?;
        let t2 = mono_ns();
        let t1 = u64::from_le_bytes(ack);
        one_way.push(t1.saturating_sub(t0) as f64 / 1e6);
        round.push(t2.saturating_sub(t0) as f64 / 1e6);
    }
    drop(ours);
    child.wait()?;
    Ok((one_way, round))
}

/// Runs `payload` on `worker` with a token that is cancelled once the job reports `ready`.
/// Returns the report and the CLOCK_MONOTONIC instants (ns) of the cancel and of the outcome.
async fn cancel_when_ready(
    worker: &Worker,
    payload: &[u8],
) -> Result<(warden::JobReport, u64, u64), BoxError> {
    let token = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let options = JobOptions::new()
        .token(token.clone())
        .on_progress(move |p: Progress| {
            if let Some(text) = p.text {
                let _ = tx.send(text);
            }
        });
    let run = worker.run(payload.to_vec(), options);
    tokio::pin!(run);
    let ready = tokio::select! {
        r = &mut run => return Err(format!("the job ended before it was ready: {r:?}").into()),
        text = tokio::time::timeout(WAIT, rx.recv()) => text?,
    };
    if ready.as_deref() != Some("ready") {
        return Err(format!("expected ready, got {ready:?}").into());
    }
    let t0 = mono_ns();
    token.cancel();
    let report = tokio::time::timeout(WAIT, &mut run).await??;
    Ok((report, t0, mono_ns()))
}

/// `n` cancels of a "flip" job (it answers with the instant its token flipped, so its outcome
/// is `completed` despite the cancel): cancel -> token flipped in the worker, in ms.
async fn flips(n: usize) -> Result<Vec<f64>, BoxError> {
    let worker = Worker::spawn(&warden_cmd("sdk"), sdk_config()).await?;
    let mut out = Vec::new();
    for _ in 0..n {
        let (report, t0, _) = cancel_when_ready(&worker, b"flip").await?;
        let Outcome::CompletedDespiteCancel(bytes) = &report.outcome else {
            return Err(format!("flip job: {:?}", report.outcome).into());
        };
        let t1 = u64::from_le_bytes(bytes.as_slice().try_into()?);
        out.push(t1.saturating_sub(t0) as f64 / 1e6);
    }
    worker.shutdown().await;
    Ok(out)
}

/// `n` cooperative cancels of a "wait" job: cancel -> `Cancelled` at the caller, in ms.
async fn cooperative(n: usize) -> Result<Vec<f64>, BoxError> {
    let worker = Worker::spawn(&warden_cmd("sdk"), sdk_config()).await?;
    let mut out = Vec::new();
    for _ in 0..n {
        let (report, t0, t2) = cancel_when_ready(&worker, b"wait").await?;
        if report.outcome != Outcome::Cancelled {
            return Err(format!("wait job: {:?}", report.outcome).into());
        }
        out.push(t2.saturating_sub(t0) as f64 / 1e6);
    }
    worker.shutdown().await;
    Ok(out)
}

async fn cancel_flip(n: usize) -> Result<Row, BoxError> {
    let (mut floor, _) = tokio::task::spawn_blocking(move || raw_ipc(n * 5)).await??;
    let mut flip = flips(n).await?;
    Ok(ratio_row(
        "3 cancel() -> token flips",
        &mut flip,
        "socketpair one-way write to a reader process",
        &mut floor,
        2.0,
    ))
}

/// Row 3 with the caller in a task on one of the runtime's threads rather than on the
/// `block_on` thread: the token's wake-up of the worker's actor then lands in that thread's
/// own run queue instead of unparking another thread, so the ratio against row 3 is what
/// that cross-thread wake-up costs (the runtime's, not warden's).
async fn cancel_flip_in_task(n: usize) -> Result<Row, BoxError> {
    let (mut floor, _) = tokio::task::spawn_blocking(move || raw_ipc(n * 5)).await??;
    let mut flip = tokio::spawn(flips(n)).await??;
    Ok(ratio_row(
        "3d cancel() from a runtime task -> token flips",
        &mut flip,
        "socketpair one-way write to a reader process",
        &mut floor,
        2.0,
    )
    .informative())
}

async fn cancel_outcome(n: usize) -> Result<Row, BoxError> {
    let (_, mut floor) = tokio::task::spawn_blocking(move || raw_ipc(n * 5)).await??;
    let mut outcome = cooperative(n).await?;
    Ok(ratio_row(
        "4 cancel() -> cooperative outcome",
        &mut outcome,
        "socketpair round trip with an ack",
        &mut floor,
        2.0,
    ))
}

/// Rows 3b and 4b: warden's cancel path built from the same parts with no warden code in it.
/// The caller (here, on the `block_on` thread, as in rows 3 and 4) trips a token; a task on a
/// runtime thread wakes and writes one byte through tokio; the child, a current-thread runtime,
/// reads it through its reactor and stamps it (3b); for the ack (4b) it hands the byte to a
/// thread of its own that writes 8 bytes back, which the task reads and sends to the caller
/// through a oneshot. So each row's ratio to these is what warden's own code costs on top.
/// Row 3c writes the byte from the caller's thread itself, interleaved with 3b: what is left
/// of row 3 once the sending side has no hop at all (the child's reactor, the wake-up of an
/// event loop rather than of a thread blocked in `read`).
async fn cancel_tokio_shape(n: usize) -> Result<Vec<Row>, BoxError> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut child = raw_child("raw-tokio-echo", &theirs)?;
    drop(theirs);
    ours.set_nonblocking(true)?;
    let mut ours = tokio::net::UnixStream::from_std(ours)?;
    let (mut one_way, mut round, mut direct) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n * 5 {
        let token = CancellationToken::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<u64, std::io::Error>>();
        let waiting = token.clone();
        let task = tokio::spawn(async move {
            waiting.cancelled().await;
            let mut ack = [0u8; 8];
            let sent = async {
                ours.write_all(b"p").await?;
                ours.read_exact(&mut ack).await?;
                Ok(u64::from_le_bytes(ack))
            }
            .await;
            let _ = done_tx.send(sent);
            ours
        });
        // Give the task a turn to park on the token before the clock starts, as warden's actor
        // is parked (a yield lets it run; it does not prove it did).
        tokio::task::yield_now().await;
        let t0 = mono_ns();
        token.cancel();
        let t1 = tokio::time::timeout(WAIT, done_rx).await???;
        let t2 = mono_ns();
        ours = task.await?;
        one_way.push(t1.saturating_sub(t0) as f64 / 1e6);
        round.push(t2.saturating_sub(t0) as f64 / 1e6);
        // 3c, interleaved: the same byte written by this thread itself (no task, no hop on
        // the sending side), so only the child's reactor lies between the write and the stamp.
        let t0 = mono_ns();
        if ours.try_write(b"p")? != 1 {
            return Err("the socket took nothing".into());
        }
        let mut ack = [0u8; 8];
        tokio::time::timeout(WAIT, ours.read_exact(&mut ack)).await??;
        direct.push(u64::from_le_bytes(ack).saturating_sub(t0) as f64 / 1e6);
    }
    drop(ours);
    tokio::task::spawn_blocking(move || child.wait()).await??;
    let mut flip = flips(n).await?;
    let mut outcome = cooperative(n).await?;
    Ok(vec![
        ratio_row(
            "3b cancel() -> token flips, against tokio parts",
            &mut flip,
            "token -> task on a runtime thread -> tokio write -> current-thread reader (stamp)",
            &mut one_way,
            2.0,
        )
        .informative(),
        ratio_row(
            "3c cancel() -> token flips, against a reactor written directly",
            &mut flip,
            "the same reader, written from the caller's own thread (no hop on the sending side)",
            &mut direct,
            2.0,
        )
        .informative(),
        ratio_row(
            "4b cancel() -> cooperative outcome, against tokio parts",
            &mut outcome,
            "the same, the reader's thread acks, the task reads it and answers a oneshot",
            &mut round,
            2.0,
        )
        .informative(),
    ])
}

// Row 5 -------------------------------------------------------------------------------------

const KILL_AFTER: Duration = Duration::from_millis(20);

async fn stage3(n: usize) -> Vec<Row> {
    match stage3_measure(n).await {
        Ok(rows) => rows,
        Err(e) => vec![Row::skipped(
            "5 stage-3 deadline -> SIGKILL",
            "p50 <= 0.5 ms, p99 <= 2 ms late",
            format!("failed: {e}"),
        )],
    }
}

async fn stage3_measure(n: usize) -> Result<Vec<Row>, BoxError> {
    eprint!("5 stage-3 deadline ... ");
    // Floors: how late a tokio sleep of KILL_AFTER fires; raw SIGKILL of a child -> waitid.
    let mut timer = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        tokio::time::sleep(KILL_AFTER).await;
        timer.push(ms(start.elapsed().saturating_sub(KILL_AFTER)));
    }
    let mut raw_reap = tokio::task::spawn_blocking(move || -> Result<Vec<f64>, BoxError> {
        let mut out = Vec::new();
        for _ in 0..n {
            let (ours, theirs) = UnixStream::pair()?;
            let mut child = raw_child("raw-hello", &theirs)?;
            drop(theirs);
            let mut ours = ours;
            let mut b = [0u8; 4];
            ours.read_exact(&mut b)?; // it is up
            let start = Instant::now();
            child.kill()?;
            child.wait()?;
            out.push(ms(start.elapsed()));
        }
        Ok(out)
    })
    .await??;
    let (mut late, mut reaped) = (Vec::new(), Vec::new());
    let config = sdk_config().deadlines(Deadlines {
        grace: Duration::ZERO,
        kill_after: KILL_AFTER,
        reap_timeout: WAIT,
    });
    for _ in 0..n {
        // A worker whose handler spins and whose SDK turns SIGTERM into a token nobody reads:
        // only SIGKILL ends it.
        let worker = Worker::spawn(&warden_cmd("sdk"), config.clone()).await?;
        let (report, _, _) = cancel_when_ready(&worker, b"spin").await?;
        let _ = worker.shutdown().await;
        let t = &report.trace;
        let (Some(signal), Some(kill), Some(reap)) = (t.signal_sent, t.kill_sent, t.reaped) else {
            return Err(format!("stage 3 not reached: {:?}", report.outcome).into());
        };
        let due = signal + KILL_AFTER;
        late.push(ms(kill.saturating_sub(due)));
        reaped.push(ms(reap.saturating_sub(due)));
    }
    eprintln!("done");
    let (lp50, lp99) = stats(&mut late);
    let (rp50, rp99) = stats(&mut reaped);
    let (tp50, _) = stats(&mut timer);
    let (kp50, _) = stats(&mut raw_reap);
    Ok(vec![
        Row {
            name: "5a stage-3 deadline -> SIGKILL sent (late)".into(),
            unit: "ms",
            median: lp50,
            p99: lp99,
            floor_name: format!("tokio sleep({} ms) lateness", KILL_AFTER.as_millis()),
            floor_median: Some(tp50),
            target: "p50 <= 0.5 ms, p99 <= 2 ms".into(),
            met: Some(lp50 <= 0.5 && lp99 <= 2.0),
            skipped: None,
        },
        Row {
            name: "5b stage-3 deadline -> reaped".into(),
            unit: "ms",
            median: rp50,
            p99: rp99,
            floor_name: "raw SIGKILL -> waitid".into(),
            floor_median: Some(kp50),
            target: "informative".into(),
            met: None,
            skipped: None,
        },
    ])
}

/// Row 5a again while a pool of `busy` workers runs empty jobs flat out on the same runtime:
/// deadline timers must stay accurate under that load (issue 9's scale criterion).
async fn stage3_under_load(n: usize, busy: usize, holding: bool) -> Result<Row, BoxError> {
    let pool = std::sync::Arc::new(warden::Pool::start(
        &warden_cmd("sdk"),
        sdk_config(),
        warden::PoolConfig::new(busy).queue_capacity(busy * 2),
    )?);
    let _ = pool.wait_ready().await;
    let stop = CancellationToken::new();
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..busy {
        let (pool, stop) = (pool.clone(), stop.clone());
        load.spawn(async move {
            while !stop.is_cancelled() {
                // Holding: each worker runs one job that waits for its cancel (1,000 concurrent
                // jobs, as in the scale criterion); else empty jobs back to back (the CPU is
                // saturated).
                let payload = if holding {
                    b"wait".to_vec()
                } else {
                    Vec::new()
                };
                let options = JobOptions::new().token(stop.clone());
                match pool.submit(payload, options).await {
                    Ok(handle) => {
                        let _ = handle.await;
                    }
                    Err(_) => break,
                }
            }
        });
    }
    let config = sdk_config().deadlines(Deadlines {
        grace: Duration::ZERO,
        kill_after: KILL_AFTER,
        reap_timeout: WAIT,
    });
    let mut late = Vec::new();
    let mut timer = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        tokio::time::sleep(KILL_AFTER).await;
        timer.push(ms(start.elapsed().saturating_sub(KILL_AFTER)));
        let worker = Worker::spawn(&warden_cmd("sdk"), config.clone()).await?;
        let (report, _, _) = cancel_when_ready(&worker, b"spin").await?;
        let _ = worker.shutdown().await;
        let t = &report.trace;
        let (Some(signal), Some(kill)) = (t.signal_sent, t.kill_sent) else {
            return Err(format!("stage 3 not reached: {:?}", report.outcome).into());
        };
        late.push(ms(kill.saturating_sub(signal + KILL_AFTER)));
    }
    stop.cancel();
    while load.join_next().await.is_some() {}
    pool.shutdown(warden::ShutdownMode::Drain, WAIT).await;
    let (p50, p99) = stats(&mut late);
    let (tp50, _) = stats(&mut timer);
    Ok(Row {
        name: if holding {
            format!("5d stage-3 SIGKILL late, {busy} workers running a job")
        } else {
            format!("5c stage-3 SIGKILL late, {busy} pool workers busy")
        },
        unit: "ms",
        median: p50,
        p99,
        floor_name: format!(
            "tokio sleep({} ms) lateness, same load",
            KILL_AFTER.as_millis()
        ),
        floor_median: Some(tp50),
        target: "p50 <= 0.5 ms, p99 <= 2 ms".into(),
        met: Some(p50 <= 0.5 && p99 <= 2.0),
        skipped: None,
    })
}

// Row 6 -------------------------------------------------------------------------------------

const TREE_SCRIPT: &str = "for i in $(seq 100); do sleep 1000 & done; echo up; wait";

/// Waits until `pid` has `n` children (bounded).
fn wait_children(pid: u32, n: usize) -> Result<Vec<u32>, BoxError> {
    let deadline = Instant::now() + WAIT;
    loop {
        let path = format!("/proc/{pid}/task/{pid}/children");
        let children: Vec<u32> = std::fs::read_to_string(&path)?
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        if children.len() >= n {
            return Ok(children);
        }
        if Instant::now() > deadline {
            return Err(format!("{pid} has {} of {n} children", children.len()).into());
        }
        std::thread::yield_now();
    }
}

fn pidfd(pid: u32) -> Result<OwnedFd, BoxError> {
    // SAFETY: pidfd_open takes a pid and flags; the returned descriptor is ours alone.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: fd is a fresh descriptor returned to us by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Polls every pidfd until all are readable (the processes exited), bounded.
fn wait_all_gone(fds: &[OwnedFd]) -> Result<(), BoxError> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    while !polls.is_empty() {
        // SAFETY: polls is a live array of pollfd of the length given.
        let rc = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 1000) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        polls.retain(|p| p.revents == 0);
        if Instant::now() > deadline {
            return Err(format!("{} processes still alive", polls.len()).into());
        }
    }
    Ok(())
}

async fn tree_kill(n: usize) -> Result<Row, BoxError> {
    let mut floor = tokio::task::spawn_blocking(move || -> Result<Vec<f64>, BoxError> {
        let mut out = Vec::new();
        for _ in 0..n {
            let mut leader = std::process::Command::new("/bin/sh")
                .args(["-c", TREE_SCRIPT])
                .stdout(Stdio::null())
                .process_group(0)
                .spawn()?;
            let children = wait_children(leader.id(), 100)?;
            let fds = children
                .iter()
                .map(|&c| pidfd(c))
                .collect::<Result<Vec<_>, _>>()?;
            let start = Instant::now();
            // SAFETY: killpg of the group our unreaped child leads.
            unsafe { libc::killpg(leader.id() as libc::pid_t, libc::SIGKILL) };
            leader.wait()?;
            wait_all_gone(&fds)?;
            out.push(ms(start.elapsed()));
        }
        Ok(out)
    })
    .await??;
    let mut samples = Vec::new();
    for _ in 0..n {
        let mut cmd = warden::Command::new("/bin/sh");
        cmd.args(["-c", TREE_SCRIPT]);
        let mut tree = Tree::spawn(&cmd, TreeOptions::new()).await?;
        let pid = tree.pid();
        tokio::task::spawn_blocking(move || wait_children(pid, 100)).await??;
        let start = Instant::now();
        tree.kill_tree()?;
        let _ = tree.finish(WAIT).await;
        samples.push(ms(start.elapsed()));
    }
    Ok(ratio_row(
        "6 tree of 100 killed -> all reaped",
        &mut samples,
        "raw killpg of 100 + reap (pidfds)",
        &mut floor,
        1.5,
    ))
}

// Row 7 -------------------------------------------------------------------------------------

/// The Python peers: jobs/s of `multiprocessing.Pool(2)` and, if installed, `pebble`'s
/// `ProcessPool(max_workers=2)`, each mapping `n` empty jobs with chunksize 1. Skipped (with
/// the reason) where python3 is missing; the bench installs nothing.
const PY_PEERS: &str = r#"
import sys, time, multiprocessing as mp
def f(x):
    return b""
n = int(sys.argv[1])
out = []
if __name__ == "__main__":
    with mp.Pool(2) as p:
        p.map(f, range(100), chunksize=1)
        t = time.monotonic(); p.map(f, range(n), chunksize=1); dt = time.monotonic() - t
    out.append("multiprocessing.Pool(2) %f" % (n / dt))
    try:
        import pebble
        with pebble.ProcessPool(max_workers=2) as p:
            list(p.map(f, range(100), chunksize=1).result())
            t = time.monotonic(); list(p.map(f, range(n), chunksize=1).result()); dt = time.monotonic() - t
        out.append("pebble.ProcessPool(2) %f" % (n / dt))
    except ImportError:
        out.append("pebble skipped")
    print("\n".join(out))
"#;

/// Jobs/s of two raw children driven from one thread, one job in flight each: a one-byte job
/// out, an eight-byte answer back (the protocol's shape, with nothing else).
fn raw_pool_floor(n: usize) -> Result<f64, BoxError> {
    let mut pairs = Vec::new();
    for _ in 0..2 {
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_read_timeout(Some(WAIT))?;
        let child = raw_child("raw-echo", &theirs)?;
        drop(theirs);
        pairs.push((ours, child));
    }
    let mut ack = [0u8; 8];
    let start = Instant::now();
    for _ in 0..n / 2 {
        for (ours, _) in &mut pairs {
            ours.write_all(b"j")?;
        }
        for (ours, _) in &mut pairs {
            ours.read_exact(&mut ack)?;
        }
    }
    let rate = (n / 2 * 2) as f64 / start.elapsed().as_secs_f64();
    for (ours, mut child) in pairs {
        drop(ours);
        child.wait()?;
    }
    Ok(rate)
}

/// The jobs row 7's pool hands each busy worker early: queued on its channel (protocol
/// version 2), as Celery's prefetch multiplier keeps tasks at its workers.
const PREFETCH: usize = 16;

/// Row 7 against the Python peers, and 7b: against [`raw_pool_floor`].
async fn pool_throughput(n: usize, rounds: usize) -> Result<Vec<Row>, BoxError> {
    // Rounds interleave the peers, the pool and the raw floor, so that the VM's drift over
    // the run reaches every column alike; each column is the median of its rounds.
    let mut ours = Vec::with_capacity(rounds);
    let mut plain = Vec::with_capacity(rounds);
    let mut raws = Vec::with_capacity(rounds);
    let mut bests = Vec::with_capacity(rounds);
    // Each peer's rates over the rounds, in the order the peers first answered.
    let mut peer_rates: Vec<(String, Vec<f64>)> = Vec::new();
    let mut peer_notes: Vec<String> = Vec::new();
    for _ in 0..rounds {
        let peers = tokio::task::spawn_blocking(move || {
            std::process::Command::new("python3")
                .args(["-c", PY_PEERS, &n.to_string()])
                .stdin(Stdio::null())
                .output()
        })
        .await?;
        let mut best: Option<f64> = None;
        let mut notes = Vec::new();
        match peers {
            Ok(out) if out.status.success() => {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    match line.rsplit_once(' ').map(|(k, v)| (k, v.parse::<f64>())) {
                        Some((name, Ok(rate))) => {
                            match peer_rates.iter_mut().find(|(k, _)| k == name) {
                                Some((_, v)) => v.push(rate),
                                None => peer_rates.push((name.to_string(), vec![rate])),
                            }
                            best = Some(best.map_or(rate, |b: f64| b.max(rate)));
                        }
                        _ => notes.push(line.to_string()),
                    }
                }
            }
            Ok(out) => notes.push(format!(
                "python peers failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )),
            Err(e) => notes.push(format!("python peers skipped: python3: {e}")),
        }
        // What a peer said instead of a rate ("pebble skipped"), once however many rounds.
        for note in notes {
            if !peer_notes.contains(&note) {
                peer_notes.push(note);
            }
        }
        bests.extend(best);
        ours.push(pool_rate(n, PREFETCH).await?);
        plain.push(pool_rate(n, 0).await?);
        raws.push(tokio::task::spawn_blocking(move || raw_pool_floor(n)).await??);
    }
    let mut floor_name: Vec<String> = peer_rates
        .iter_mut()
        .map(|(name, rates)| format!("{name} {:.0}/s", stats(rates).0))
        .collect();
    floor_name.extend(peer_notes);
    let best = (!bests.is_empty()).then(|| stats(&mut bests).0);
    let (rate, slowest) = rate_stats(&mut ours);
    let raw_row = Row::rate(
        format!("7b {n} empty jobs, pool of 2, against raw children"),
        &mut ours.clone(),
        "2 raw children, one job in flight each, driven from one thread",
        stats(&mut raws).0,
    );
    let default_row = Row::rate(
        format!("7c {n} empty jobs, pool of 2, without prefetch"),
        &mut plain,
        "row 7 (with prefetch, queued in the workers), same run",
        rate,
    );
    Ok(vec![
        Row {
            name: format!("7 {n} empty jobs, pool of 2 (prefetch {PREFETCH})"),
            unit: "jobs/s",
            median: rate,
            p99: slowest,
            floor_name: floor_name.join("; "),
            floor_median: best,
            target: ">= 2x the best peer".into(),
            met: best.map(|b| rate >= 2.0 * b),
            skipped: None,
        },
        raw_row,
        default_row,
    ])
}

/// A rate row's median over its rounds, and its slowest round: for a rate, the tail that
/// matters is the low one, and the table's p99 column shows it.
fn rate_stats(rates: &mut [f64]) -> (f64, f64) {
    let median = stats(rates).0;
    let slowest = rates.iter().copied().fold(f64::INFINITY, f64::min);
    (median, slowest)
}

/// `n` empty jobs through a warm pool of 2 (`prefetch` as given), submitted at once and
/// collected in order, as `Pool.map` does; jobs per second.
async fn pool_rate(n: usize, prefetch: usize) -> Result<f64, BoxError> {
    let pool = warden::Pool::start(
        &warden_cmd("sdk"),
        sdk_config(),
        warden::PoolConfig::new(2)
            .queue_capacity(n + 100)
            .prefetch(prefetch),
    )?;
    // Warm: both workers up and through a job each.
    let _ = pool.wait_ready().await;
    let warm: Vec<_> =
        futures_join_all((0..100).map(|_| pool.submit(Vec::new(), JobOptions::new())))
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
    for r in futures_join_all(warm).await {
        r?;
    }
    let start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        handles.push(pool.submit(Vec::new(), JobOptions::new()).await?);
    }
    // In order, as `Pool.map` collects: polling every pending handle on each wake-up (as
    // `futures_join_all` does) would cost the bench, not the pool, O(n^2).
    for handle in handles {
        handle.await?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    pool.shutdown(warden::ShutdownMode::Drain, WAIT).await;
    Ok(rate)
}

// Row 8 and 9 -------------------------------------------------------------------------------

/// `n` raw-hello children at once (the same binary): spawn all, read each one's hello frame,
/// close our ends (each exits on EOF), reap all. Row 8 with the handshake and none of the rest.
fn raw_hello_many(n: usize) -> Result<f64, BoxError> {
    let start = Instant::now();
    let mut children = Vec::with_capacity(n);
    for _ in 0..n {
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_read_timeout(Some(WAIT))?;
        // Inherited as it is (no pre_exec, so std spawns on the vfork path, as warden does).
        let fd = theirs.as_raw_fd();
        // SAFETY: clears FD_CLOEXEC on a descriptor we own; no memory is involved.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let child = std::process::Command::new(exe())
            .env(ROLE, "raw-hello")
            .env(RAW_FD, fd.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        drop(theirs);
        children.push((ours, child));
    }
    for (ours, _) in &mut children {
        let mut header = [0u8; 4];
        ours.read_exact(&mut header)?;
        let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
        ours.read_exact(&mut body)?;
    }
    for (ours, mut child) in children {
        drop(ours);
        child.wait()?;
    }
    Ok(ms(start.elapsed()))
}

/// Row 8 against the issue's floor (bare sleepers), and 8b: the same run against children that
/// also complete a handshake (what a worker does before it can be given a job). Each of the
/// `rounds` measures both floors and then warden, so the VM's drift reaches all three alike.
async fn many_workers(n: usize, rounds: usize) -> Result<Vec<Row>, BoxError> {
    let mut hello_floor = Vec::with_capacity(rounds);
    let mut floor = Vec::with_capacity(rounds);
    let mut took = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        hello_floor.push(tokio::task::spawn_blocking(move || raw_hello_many(n)).await??);
        floor.push(tokio::task::spawn_blocking(move || raw_sleepers(n)).await??);
        took.push(many_workers_once(n).await?);
    }
    let with_hello = ratio_row(
        &format!("8b {n} workers against raw children with a handshake"),
        &mut took.clone(),
        &format!("raw spawn (vfork path) of {n} children, read each hello frame, EOF, reap"),
        &mut hello_floor,
        1.5,
    )
    .informative();
    Ok(vec![
        ratio_row(
            &format!("8 {n} workers: spawn, cancel all, reaped"),
            &mut took,
            &format!("raw spawn + killpg of {n} sleepers"),
            &mut floor,
            1.5,
        ),
        with_hello,
    ])
}

/// Row 8's floor: std spawn of `n` raw sleepers (each its own group), killpg each, reap all;
/// in milliseconds.
fn raw_sleepers(n: usize) -> Result<f64, BoxError> {
    let start = Instant::now();
    let mut children = Vec::new();
    let mut failed = None;
    for _ in 0..n {
        match std::process::Command::new(exe())
            .env(ROLE, "sleeper")
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
        {
            Ok(c) => children.push(c),
            // The ones already started are still killed and reaped below.
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    for c in &children {
        // SAFETY: killpg of a group our unreaped child leads.
        unsafe { libc::killpg(c.id() as libc::pid_t, libc::SIGKILL) };
    }
    for mut c in children {
        c.wait()?;
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(ms(start.elapsed())),
    }
}

/// One round of row 8: `n` SDK workers spawned, each given a job, all cancelled at once when
/// every job is running, all shut down; in milliseconds.
async fn many_workers_once(n: usize) -> Result<f64, BoxError> {
    let start = Instant::now();
    let spawns = (0..n).map(|_| async { Worker::spawn(&warden_cmd("sdk"), sdk_config()).await });
    let workers = join_bounded(spawns, 64).await?;
    let token = CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let jobs = workers.iter().map(|w| {
        let tx = tx.clone();
        let options = JobOptions::new()
            .token(token.clone())
            .on_progress(move |_| {
                let _ = tx.send(());
            });
        async move { w.run(b"wait".to_vec(), options).await }
    });
    let canceller = async {
        // Every job is running in its worker: then cancel them all at once.
        for _ in 0..n {
            if tokio::time::timeout(WAIT, rx.recv())
                .await
                .ok()
                .flatten()
                .is_none()
            {
                break;
            }
        }
        token.cancel();
    };
    let (reports, ()) = tokio::join!(futures_join_all(jobs), canceller);
    for r in reports {
        if r?.outcome != Outcome::Cancelled {
            return Err("a job of the N-worker row was not cancelled cooperatively".into());
        }
    }
    let shutdowns = workers
        .into_iter()
        .map(|w| async move { w.shutdown().await });
    futures_join_all(shutdowns).await;
    Ok(ms(start.elapsed()))
}

/// Runs the futures with at most `limit` at once, in order, failing on the first error.
async fn join_bounded<T, F>(futs: impl Iterator<Item = F>, limit: usize) -> Result<Vec<T>, BoxError>
where
    F: std::future::Future<Output = Result<T, warden::SpawnError>>,
{
    let mut out = Vec::new();
    let mut futs = futs.peekable();
    while futs.peek().is_some() {
        let batch: Vec<F> = futs.by_ref().take(limit).collect();
        for r in futures_join_all(batch).await {
            out.push(r?);
        }
    }
    Ok(out)
}

/// A minimal join_all (no futures crate): polls every future to completion.
async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let handles: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out = Vec::with_capacity(handles.len());
    let mut pending: Vec<(usize, std::pin::Pin<Box<F>>)> =
        handles.into_iter().enumerate().collect();
    let mut done: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => {
                done[*i] = Some(v);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(done.into_iter().flatten());
    out
}

fn status_kib(pid: &str, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Row 9 runs in a fresh process of its own (this executable as `rss-host`): in the bench's
/// own process the earlier rows leave freed heap that the new workers' state reuses without
/// touching a page, which read as a fraction of a KiB per worker.
async fn rss_per_worker(n: usize) -> Result<Row, BoxError> {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe())
            .env(ROLE, "rss-host")
            .env("WARDEN_BENCH_N", n.to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
    })
    .await??;
    if !out.status.success() {
        return Err(format!("the rss-host exited with {}", out.status).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [before, after, fds] = nums[..] else {
        return Err(format!("the rss-host printed {text:?}").into());
    };
    let per = (after - before) / n as f64;
    let fds_per = fds / n as f64;
    Ok(Row {
        name: format!("9 supervisor RSS per idle worker ({n} workers, {fds_per:.1} fds each)"),
        unit: "KiB",
        median: per,
        p99: per,
        floor_name: "-".into(),
        floor_median: None,
        target: "<= 16 KiB".into(),
        met: Some(per <= 16.0),
        skipped: None,
    })
}

/// The `rss-host` role: a supervisor on the bench's runtime shape that warms up on a few
/// workers, then prints its VmRSS before and after `n` idle workers (each through one job),
/// and the fds they hold.
fn rss_host() -> Result<(), BoxError> {
    let n: usize = std::env::var("WARDEN_BENCH_N")?.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let start_idle = |count: usize| async move {
            let spawns =
                (0..count).map(|_| async { Worker::spawn(&warden_cmd("sdk"), sdk_config()).await });
            let workers = join_bounded(spawns, 64).await?;
            let jobs = workers.iter().map(|w| w.run(Vec::new(), JobOptions::new()));
            for r in futures_join_all(jobs).await {
                r?;
            }
            Ok::<_, BoxError>(workers)
        };
        // The one-time costs (the runtime's, the spawner's, tracing's) are paid before `before`.
        let warm = start_idle(16).await?;
        futures_join_all(warm.into_iter().map(|w| w.shutdown())).await;
        let fds_before = std::fs::read_dir("/proc/self/fd")?.count();
        let before = status_kib("self", "VmRSS:").ok_or("no VmRSS")?;
        let workers = start_idle(n).await?;
        let after = status_kib("self", "VmRSS:").ok_or("no VmRSS")?;
        let fds = std::fs::read_dir("/proc/self/fd")?.count() - fds_before;
        futures_join_all(workers.into_iter().map(|w| w.shutdown())).await;
        println!("{before} {after} {fds}");
        Ok(())
    })
}

// Row 10 ------------------------------------------------------------------------------------

fn pss_kib(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn worker_pss() -> Result<Row, BoxError> {
    let floor = tokio::task::spawn_blocking(|| -> Result<f64, BoxError> {
        let mut child = std::process::Command::new(exe())
            .env(ROLE, "tokio-idle")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = [0u8; 3];
        child
            .stdout
            .as_mut()
            .ok_or("no stdout")?
            .read_exact(&mut line)?;
        let pss = pss_kib(child.id()).ok_or("no smaps_rollup");
        child.kill()?;
        child.wait()?;
        Ok(pss?)
    })
    .await??;
    let worker = Worker::spawn(&warden_cmd("sdk"), sdk_config()).await?;
    worker.run(Vec::new(), JobOptions::new()).await?;
    let pss = pss_kib(worker.pid()).ok_or("no smaps_rollup for the worker")?;
    worker.shutdown().await;
    Ok(Row {
        name: "10 idle SDK worker PSS".into(),
        unit: "KiB",
        median: pss,
        p99: pss,
        floor_name: "idle current-thread tokio runtime (same binary)".into(),
        floor_median: Some(floor),
        target: "<= 1.5x".into(),
        met: Some(pss / floor <= 1.5),
        skipped: None,
    })
}

// Row 11 ------------------------------------------------------------------------------------

fn wall(program: &str, args: &[&str]) -> Result<f64, BoxError> {
    let start = Instant::now();
    let status = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .status()?;
    let took = ms(start.elapsed());
    if status.code().is_none() {
        return Err(format!("{program} {args:?}: {status}").into());
    }
    Ok(took)
}

fn gnu_timeout() -> Option<&'static str> {
    ["/usr/bin/timeout", "/bin/timeout"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

async fn timeout_true(n: usize) -> Result<Row, BoxError> {
    let Some(gnu) = gnu_timeout() else {
        return Ok(Row::skipped(
            "11a warden timeout 10 true",
            "<= 1.5x",
            "no GNU timeout",
        ));
    };
    tokio::task::spawn_blocking(move || -> Result<Row, BoxError> {
        let warden = env!("CARGO_BIN_EXE_warden");
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        for _ in 0..n {
            floor.push(wall(gnu, &["10", "true"])?);
            ours.push(wall(warden, &["timeout", "10", "true"])?);
        }
        Ok(ratio_row(
            "11a warden timeout 10 true",
            &mut ours,
            "GNU timeout 10 true",
            &mut floor,
            1.5,
        ))
    })
    .await?
}

async fn timeout_sleep(n: usize) -> Result<Row, BoxError> {
    let Some(gnu) = gnu_timeout() else {
        return Ok(Row::skipped(
            "11b warden timeout 0.1 sleep 10",
            "<= GNU + 2 ms",
            "no GNU timeout",
        ));
    };
    tokio::task::spawn_blocking(move || -> Result<Row, BoxError> {
        let warden = env!("CARGO_BIN_EXE_warden");
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        for _ in 0..n {
            floor.push(wall(gnu, &["0.1", "sleep", "10"])?);
            ours.push(wall(warden, &["timeout", "0.1", "sleep", "10"])?);
        }
        let (median, p99) = stats(&mut ours);
        let (floor_median, _) = stats(&mut floor);
        Ok(Row {
            name: "11b warden timeout 0.1 sleep 10".into(),
            unit: "ms",
            median,
            p99,
            floor_name: "GNU timeout 0.1 sleep 10".into(),
            floor_median: Some(floor_median),
            target: "<= GNU + 2 ms".into(),
            met: Some(median <= floor_median + 2.0),
            skipped: None,
        })
    })
    .await?
}

// Row 12 ------------------------------------------------------------------------------------

/// ns per evaluation of `$load` (a `bool`), over `$iters` iterations.
macro_rules! ns_per_iter {
    ($iters:expr, $load:expr) => {{
        let start = Instant::now();
        let mut n = 0u64;
        for _ in 0..$iters {
            n += u64::from($load);
        }
        std::hint::black_box(n);
        start.elapsed().as_secs_f64() * 1e9 / $iters as f64
    }};
}

/// An async fn for one row: `is_cancelled()` against `$flag.load(Acquire)`, five interleaved
/// rounds of each. A macro rather than a closure or a generic: each floor's loop must be
/// exactly its own load (a closure moved row 12's floor from 0.39 to 0.66 ns).
macro_rules! hot_loop_fn {
    ($(#[$doc:meta])* $fn:ident, $name:expr, $floor_name:expr, $flag:expr) => {
        $(#[$doc])*
        async fn $fn() -> Result<Row, BoxError> {
            tokio::task::spawn_blocking(|| {
                let token = warden_worker::CancelSource::new().token();
                let flag = $flag;
                let (mut ours, mut floor) = (Vec::new(), Vec::new());
                for _ in 0..5 {
                    floor.push(ns_per_iter!(
                        HOT_ITERS,
                        std::hint::black_box(&flag).load(Ordering::Acquire)
                    ));
                    ours.push(ns_per_iter!(
                        HOT_ITERS,
                        std::hint::black_box(&token).is_cancelled()
                    ));
                }
                let mut row = ratio_row($name, &mut ours, $floor_name, &mut floor, 1.1);
                row.unit = "ns/iter";
                row.target = "indistinguishable (<= 1.1x)".into();
                Ok(row)
            })
            .await?
        }
    };
}

hot_loop_fn!(
    /// Row 12: the token against a bare `AtomicBool`.
    hot_loop,
    "12 is_cancelled() hot loop",
    "bare AtomicBool load (Acquire)",
    AtomicBool::new(false)
);

hot_loop_fn!(
    /// 12b: the token against a flag shared the way any token across threads must be
    /// (behind an `Arc`, reached through the handle each time): row 12's floor saves that
    /// one dependent load.
    hot_loop_shared,
    "12b is_cancelled() against a shared flag",
    "Arc<AtomicBool> load (Acquire) through its handle",
    std::sync::Arc::new(AtomicBool::new(false))
);

const HOT_ITERS: u64 = 200_000_000;

// Output ------------------------------------------------------------------------------------

fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<52} {:>9} {:>9} {:>8} {:>7}  {:<28} {:<5} floor",
        "measure", "median", "p99", "floor", "ratio", "target", "met"
    );
    for r in rows {
        if let Some(why) = &r.skipped {
            println!("{:<52} {why}", r.name);
            continue;
        }
        println!(
            "{:<52} {:>9} {:>9} {:>8} {:>7}  {:<28} {:<5} {} ({})",
            r.name,
            fmt_num(r.median),
            fmt_num(r.p99),
            r.floor_median.map_or("-".into(), fmt_num),
            r.ratio().map_or("-".into(), |x| format!("{x:.2}x")),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            },
            r.floor_name,
            r.unit,
        );
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

fn to_json(rows: &[Row]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "  {{\"name\": {}, \"unit\": {}, \"median\": {}, \"p99\": {}, \"floor_name\": {}, \
                 \"floor_median\": {}, \"ratio\": {}, \"target\": {}, \"met\": {}, \"skipped\": {}}}",
                json_str(&r.name),
                json_str(r.unit),
                if r.skipped.is_some() { "null".into() } else { json_num(r.median) },
                if r.skipped.is_some() { "null".into() } else { json_num(r.p99) },
                json_str(&r.floor_name),
                r.floor_median.map_or("null".into(), json_num),
                r.ratio().map_or("null".into(), json_num),
                json_str(&r.target),
                r.met.map_or("null".into(), |m| m.to_string()),
                r.skipped.as_deref().map_or("null".into(), json_str),
            )
        })
        .collect();
    format!("[\n{}\n]\n", items.join(",\n"))
}

/// `target/warden-bench.json`: the target directory is three levels above the bench binary
/// (`target/<profile>/deps/warden-<hash>`), unless `CARGO_TARGET_DIR` says otherwise.
fn json_path() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return std::path::PathBuf::from(dir).join("warden-bench.json");
    }
    let exe = exe();
    exe.ancestors().nth(3).map_or_else(
        || "warden-bench.json".into(),
        |t| t.join("warden-bench.json"),
    )
}

// The roles this executable plays ------------------------------------------------------------

mod roles {
    use super::*;

    pub(super) fn run(role: &str) -> i32 {
        match role {
            "sdk" => sdk(),
            "rss-host" => match rss_host() {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("rss-host: {e}");
                    1
                }
            },
            "raw-hello" => raw(|mut s| {
                let hello = warden_protocol::WorkerMessage::Hello {
                    protocol_version: warden_protocol::PROTOCOL_VERSION,
                    pid: std::process::id(),
                    sdk_version: "bench".into(),
                };
                let frame = warden_protocol::encode_frame(&hello, u32::MAX).expect("encode");
                s.write_all(&frame)?;
                // Until the bench closes its end.
                let mut b = [0u8; 1];
                let _ = s.read(&mut b);
                Ok(())
            }),
            "raw-echo" => raw(|mut s| {
                let mut b = [0u8; 1];
                while s.read(&mut b)? == 1 {
                    let t1 = mono_ns();
                    s.write_all(&t1.to_le_bytes())?;
                }
                Ok(())
            }),
            "raw-tokio-echo" => raw(|stream| {
                // Rows 3b/4b: the SDK's shape without the SDK. A current-thread runtime reads
                // each byte through its reactor and stamps it; a thread of its own (the job
                // thread's place) writes the stamp back.
                let writer = stream.try_clone()?;
                let (tx, rx) = std::sync::mpsc::channel::<u64>();
                let acks = std::thread::spawn(move || -> std::io::Result<()> {
                    let writer = &writer;
                    for t1 in rx {
                        let bytes = t1.to_le_bytes();
                        let mut sent = 0;
                        while sent < bytes.len() {
                            match (&*writer).write(&bytes[sent..]) {
                                Ok(n) => sent += n,
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                    std::thread::yield_now();
                                }
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    Ok(())
                });
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    stream.set_nonblocking(true)?;
                    let mut stream = tokio::net::UnixStream::from_std(stream)?;
                    let mut b = [0u8; 1];
                    while stream.read(&mut b).await? == 1 {
                        if tx.send(mono_ns()).is_err() {
                            break;
                        }
                    }
                    Ok::<(), std::io::Error>(())
                })?;
                drop(runtime);
                acks.join()
                    .map_err(|_| std::io::Error::other("ack thread panicked"))?
            }),
            "sleeper" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            "tokio-idle" => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let _ = std::io::stdout().write_all(b"up\n");
                    let _ = std::io::stdout().flush();
                    std::future::pending::<()>().await;
                });
                0
            }
            other => {
                eprintln!("unknown bench role {other:?}");
                2
            }
        }
    }

    fn raw(body: impl FnOnce(UnixStream) -> std::io::Result<()>) -> i32 {
        // The bench names the inherited socket's number (3 after a dup2, or whatever number
        // it left inheritable for a spawn without pre_exec).
        let fd = std::env::var(RAW_FD)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        // SAFETY: the bench put this descriptor there for us, open and not close-on-exec, and
        // nothing else in this process owns it; we take it once.
        let stream = unsafe { UnixStream::from_raw_fd(fd) };
        match body(stream) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("bench role: {e}");
                1
            }
        }
    }

    fn sdk() -> i32 {
        use warden_worker::{Job, JobError};
        fn handle(job: Job) -> Result<Vec<u8>, JobError> {
            match job.payload() {
                b"flip" => {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let _guard = job.on_cancel(move || {
                        let _ = tx.send(mono_ns());
                    });
                    job.progress().report(None, Some("ready"));
                    let flipped = rx.recv_timeout(WAIT).map_err(JobError::msg)?;
                    Ok(flipped.to_le_bytes().to_vec())
                }
                b"wait" => {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let _guard = job.on_cancel(move || {
                        let _ = tx.send(());
                    });
                    job.progress().report(None, Some("ready"));
                    let _ = rx.recv();
                    job.check()?;
                    Ok(Vec::new())
                }
                b"spin" => {
                    job.progress().report(None, Some("ready"));
                    let mut x: u64 = 1;
                    loop {
                        x = std::hint::black_box(
                            x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1),
                        );
                    }
                }
                _ => Ok(Vec::new()),
            }
        }
        match warden_worker::serve_blocking(handle) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("bench worker: {e}");
                1
            }
        }
    }
}
