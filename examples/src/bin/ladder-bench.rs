//! Scenario: how fast is the ladder, against what the machine can do at all? A timing run for
//! reports and issue notes, measured as distributions, with raw baselines from the same run:
//!
//! - baselines: a one-byte ping-pong over a socketpair between this process and a child
//!   process (the transport of a cooperative cancel); `spawn` + `wait` of `/bin/true` with the
//!   standard library; how late a 50 ms tokio timer fires (what every ladder deadline rides on),
//!   and warden's own spawn + handshake of an SDK worker;
//! - cooperative: one `cooperative-worker` takes N jobs; each is cancelled once it has reported
//!   progress, and the time from `token.cancel()` to the `Cancelled` report is measured (the
//!   worker checks its token every `--chunk-us` of work, so half of that is expected on top);
//! - stage 3: N `stubborn-worker`s, each cancelled with `grace = 0` and `kill_after = 50 ms`:
//!   how late SIGKILL was decided after its deadline (`kill_sent - (signal_sent + kill_after)`),
//!   and how long after that deadline the exit was seen and the process reaped.
//!
//! Each measurement's median is also given as a ratio to the median of the baseline it rides on
//! (cooperative cancels: the round trip; spawn: std's spawn+wait; stage-3 lateness: the timer's
//! lateness), so a run on another machine compares like with like.
//!
//! The workers are this executable started in a worker role (`warden_examples::workers`, the
//! same code as the standalone worker binaries).
//!
//! Usage: `ladder-bench [--n N] [--chunk-us US] [--kill-after-ms MS]` (defaults 200, 100, 50).
//! The default run takes about 15 s on two cores. Run it in release mode:
//! `cargo run --release -p warden-examples --bin ladder-bench`.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use warden::{
    CancellationToken, Containment, Deadlines, JobOptions, JobReport, Outcome, TreeOptions, Worker,
    WorkerConfig,
};
use warden_examples::{BoxError, Table, WorkSpec, distribution, ms, within, workers};

/// Bound on every wait for a worker to start, become ready or report.
const WAIT: Duration = Duration::from_secs(10);

/// Round trips in the socketpair baseline.
const PING_PONGS: usize = 10_000;

/// The timer baseline sleeps this long, like the default stage-3 `kill_after`.
const TIMER: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
struct Options {
    n: usize,
    chunk: Duration,
    kill_after: Duration,
}

fn parse_args() -> Result<Option<Options>, BoxError> {
    let mut options = Options {
        n: 200,
        chunk: Duration::from_micros(100),
        kill_after: Duration::from_millis(50),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| -> Result<u64, BoxError> {
            let v = args.next().ok_or_else(|| format!("{name} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{name}: not a number: {v:?}").into())
        };
        match flag.as_str() {
            "--n" => options.n = usize::try_from(value("--n")?.max(1))?,
            "--chunk-us" => options.chunk = Duration::from_micros(value("--chunk-us")?.max(1)),
            "--kill-after-ms" => {
                options.kill_after = Duration::from_millis(value("--kill-after-ms")?)
            }
            "-h" | "--help" => {
                println!("usage: ladder-bench [--n N] [--chunk-us US] [--kill-after-ms MS]");
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    Ok(Some(options))
}

/// The child side of the ping-pong baseline: echo every byte on stdin (a socket) back to it.
fn echo() -> ExitCode {
    let socket = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(_) => return ExitCode::FAILURE,
    };
    let mut byte = [0u8; 1];
    let mut socket = &socket;
    while let Ok(1) = socket.read(&mut byte) {
        if socket.write_all(&byte).is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// One-byte round trips over a socketpair to a child process.
fn ping_pong(rounds: usize) -> Result<Vec<Duration>, BoxError> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--echo")
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            theirs,
        )))
        .spawn()?;
    let mut samples = Vec::with_capacity(rounds);
    let mut socket = &ours;
    let mut byte = [0u8; 1];
    let result = (|| -> Result<(), BoxError> {
        for i in 0..rounds + 100 {
            let t = Instant::now();
            socket.write_all(&[7])?;
            socket.read_exact(&mut byte)?;
            // The first hundred warm up caches and the scheduler.
            if i >= 100 {
                samples.push(t.elapsed());
            }
        }
        Ok(())
    })();
    drop(ours); // EOF: the echo child exits.
    let status = child.wait()?;
    result?;
    if !status.success() {
        return Err(format!("the echo child ended with {status}").into());
    }
    Ok(samples)
}

/// `spawn` + `wait` of `/bin/true` with the standard library.
fn spawn_true(n: usize) -> Result<Vec<Duration>, BoxError> {
    let program = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("true");
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let status = std::process::Command::new(program).status()?;
            let elapsed = t.elapsed();
            if status.success() {
                Ok(elapsed)
            } else {
                Err(format!("{program} ended with {status}").into())
            }
        })
        .collect()
}

/// How late `n` concurrent tokio sleeps of [`TIMER`] wake (offsets spread over 10 ms).
async fn timer_lateness(n: usize) -> Result<Vec<Duration>, BoxError> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(async move {
                let offset = Duration::from_micros((i as u64 * 10_000) / n as u64);
                tokio::time::sleep(offset).await;
                let deadline = Instant::now() + TIMER;
                tokio::time::sleep_until(deadline.into()).await;
                Instant::now().saturating_duration_since(deadline)
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(n);
    for task in tasks {
        samples.push(task.await?);
    }
    Ok(samples)
}

/// Runs `payload` on `worker`, cancels it at its first progress report and returns the report
/// and the time from `token.cancel()` to the report.
async fn cancel_at_progress(
    worker: &Worker,
    payload: Vec<u8>,
    deadlines: Option<Deadlines>,
) -> Result<(JobReport, Duration), BoxError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let token = CancellationToken::new();
    let mut options = JobOptions::new()
        .token(token.clone())
        .on_progress(move |p| {
            let _ = tx.send(p);
        });
    if let Some(d) = deadlines {
        options = options.deadlines(d);
    }
    let job = worker.run(payload, options);
    tokio::pin!(job);
    tokio::select! {
        biased;
        ended = &mut job => return Err(format!("the job ended before reporting progress: {ended:?}").into()),
        p = within(WAIT, "the first progress report", rx.recv()) => {
            p?.ok_or("the worker never reported progress")?;
        }
    }
    let t = Instant::now();
    token.cancel();
    let report = within(WAIT, "the job's report", job).await??;
    Ok((report, t.elapsed()))
}

#[derive(Default)]
struct Counts(std::collections::BTreeMap<&'static str, usize>);

impl Counts {
    fn add(&mut self, outcome: &Outcome) {
        *self.0.entry(outcome.name()).or_default() += 1;
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{v} {k}")).collect();
        f.write_str(&parts.join(", "))
    }
}

async fn bench(o: Options) -> Result<(), BoxError> {
    let cooperative = workers::command("cooperative-worker")?;
    let stubborn = workers::command("stubborn-worker")?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |s| s.trim().to_owned());
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "ladder-bench: N={}, {cpus} CPUs, kernel {kernel}, {build} build",
        o.n
    );
    println!(
        "cooperative: one worker, N jobs of {} us slices, token checked between slices",
        o.chunk.as_micros()
    );
    let stage3 = Deadlines {
        grace: Duration::ZERO,
        kill_after: o.kill_after,
        reap_timeout: Duration::from_secs(1),
    };
    println!(
        "stage 3: N stubborn workers, one at a time, grace=0 kill_after={} ms reap_timeout=1 s",
        o.kill_after.as_millis()
    );
    let started = Instant::now();
    // Each measurement names the baseline row its median is compared with (the report's ratio).
    let mut rows: Vec<(String, Vec<Duration>, Option<usize>)> = Vec::new();
    const ROUND_TRIP: Option<usize> = Some(0);
    const STD_SPAWN: Option<usize> = Some(1);
    const TIMER_LATE: Option<usize> = Some(2);

    // Baselines first, while nothing else is running.
    rows.push((
        "baseline: socketpair 1-byte round trip, 2 processes".into(),
        ping_pong(PING_PONGS)?,
        None,
    ));
    rows.push((
        "baseline: std spawn+wait /bin/true".into(),
        spawn_true(o.n)?,
        None,
    ));
    rows.push((
        format!("baseline: tokio sleep({} ms) lateness", TIMER.as_millis()),
        timer_lateness(o.n).await?,
        None,
    ));

    // Spawn + handshake in each containment this host can give, and what SIGKILL costs on top.
    for containment in [Containment::Cgroup, Containment::ProcessGroup] {
        let config = WorkerConfig::protocol().tree(TreeOptions::new().containment(containment));
        let mut spawns = Vec::with_capacity(o.n);
        for _ in 0..o.n {
            let t = Instant::now();
            let Ok(worker) = within(
                WAIT,
                "cooperative-worker to start",
                Worker::spawn(&cooperative, config.clone()),
            )
            .await?
            else {
                break; // This containment is not available here.
            };
            spawns.push(t.elapsed());
            within(WAIT, "cooperative-worker to shut down", worker.shutdown()).await?;
        }
        rows.push((
            format!("warden: spawn + handshake, {containment:?}"),
            spawns,
            STD_SPAWN,
        ));
    }

    // Cooperative cancels, all on one reused worker.
    let worker = within(
        WAIT,
        "cooperative-worker to start",
        Worker::spawn(&cooperative, WorkerConfig::protocol()),
    )
    .await??;
    let spec = WorkSpec {
        chunks: u32::MAX,
        chunk: o.chunk,
    };
    let mut coop_counts = Counts::default();
    let mut caller = Vec::with_capacity(o.n);
    let mut actor = Vec::with_capacity(o.n);
    for _ in 0..o.n {
        let (report, elapsed) = cancel_at_progress(&worker, spec.encode(), None).await?;
        coop_counts.add(&report.outcome);
        if matches!(report.outcome, Outcome::Cancelled) {
            caller.push(elapsed);
            if let (Some(c), Some(r)) =
                (report.trace.cancel_requested, report.trace.result_received)
            {
                actor.push(r.saturating_sub(c));
            }
        }
    }
    within(WAIT, "cooperative-worker to shut down", worker.shutdown()).await?;
    rows.push((
        "cooperative: token.cancel() -> Cancelled report".into(),
        caller,
        ROUND_TRIP,
    ));
    rows.push((
        "cooperative: actor saw cancel -> Cancelled read".into(),
        actor,
        ROUND_TRIP,
    ));

    // Stage 3: a fresh stubborn worker per sample.
    let mut kill_counts = Counts::default();
    let mut spawns = Vec::with_capacity(o.n);
    let mut kill_late = Vec::with_capacity(o.n);
    let mut exit_late = Vec::with_capacity(o.n);
    let mut reap_late = Vec::with_capacity(o.n);
    let mut caller = Vec::with_capacity(o.n);
    let mut pending = 0;
    for _ in 0..o.n {
        let t = Instant::now();
        let worker = within(
            WAIT,
            "stubborn-worker to start",
            Worker::spawn(&stubborn, WorkerConfig::protocol()),
        )
        .await??;
        spawns.push(t.elapsed());
        let (report, elapsed) = cancel_at_progress(&worker, Vec::new(), Some(stage3)).await?;
        kill_counts.add(&report.outcome);
        caller.push(elapsed);
        let tr = &report.trace;
        if tr.kill_pending.is_some() {
            pending += 1;
        }
        if let (Some(signal), Some(kill)) = (tr.signal_sent, tr.kill_sent) {
            let deadline = signal + o.kill_after;
            kill_late.push(kill.saturating_sub(deadline));
            if let Some(exited) = tr.exited {
                exit_late.push(exited.saturating_sub(deadline));
            }
            if let Some(reaped) = tr.reaped {
                reap_late.push(reaped.saturating_sub(deadline));
            }
        }
        // Already reaped: returns at once with the exit status.
        within(WAIT, "stubborn-worker to shut down", worker.shutdown()).await?;
    }
    rows.push((
        "warden: spawn + handshake (stubborn-worker)".into(),
        spawns,
        STD_SPAWN,
    ));
    rows.push((
        "stage 3: SIGKILL sent - deadline".into(),
        kill_late,
        TIMER_LATE,
    ));
    rows.push((
        "stage 3: exit seen - deadline".into(),
        exit_late,
        TIMER_LATE,
    ));
    rows.push(("stage 3: reaped - deadline".into(), reap_late, TIMER_LATE));
    rows.push((
        format!(
            "stage 3: token.cancel() -> Killed report (>= {} ms)",
            o.kill_after.as_millis()
        ),
        caller,
        None,
    ));

    println!();
    let mut table = Table::new([
        "measurement (ms)",
        "n",
        "best",
        "median",
        "p90",
        "worst",
        "median/baseline",
    ]);
    let mut medians: Vec<Option<Duration>> = Vec::with_capacity(rows.len());
    for (name, mut samples, baseline) in rows {
        let d = distribution(&mut samples);
        medians.push(d.as_ref().map(|d| d.median));
        let Some(d) = d else {
            table.row([name, "0".into()]);
            continue;
        };
        let ratio = match baseline.and_then(|b| Some((b, medians.get(b).copied().flatten()?))) {
            Some((b, base)) if !base.is_zero() => format!(
                "{:.1}x row {}",
                d.median.as_secs_f64() / base.as_secs_f64(),
                b + 1
            ),
            _ => String::new(),
        };
        table.row([
            name,
            d.n.to_string(),
            ms(d.best),
            ms(d.median),
            ms(d.p90),
            ms(d.worst),
            ratio,
        ]);
    }
    print!("{table}");
    println!("median/baseline: this median over the median of the named baseline row (rows 1-3).");
    println!();
    println!("outcomes: cooperative {coop_counts}; stage 3 {kill_counts}; kill pending {pending}");
    println!(
        "deadline = when the polite signal was sent + kill_after; total {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    // Lets this binary serve as warden's exec shim: cgroup placement before exec, PDEATHSIG.
    warden::shim::run_if_shim();
    if let Some(code) = workers::run_if_worker() {
        return code;
    }
    if std::env::args().nth(1).as_deref() == Some("--echo") {
        return echo();
    }
    let options = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ladder-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ladder-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ladder-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
