//! The fixture worker: one program whose behaviour is chosen by its first argument (see
//! `warden_tests::mode` for the list). Three families:
//!
//! - **SDK workers** serve jobs with `warden-worker` and misbehave inside the handler
//!   (ignore the token, exit, crash, start children...).
//! - **Raw-protocol workers** speak the protocol by hand on the `WARDEN_FD` descriptor, to send
//!   what the SDK never would (junk, oversized or stalled frames, results for other jobs,
//!   a result followed by an instant death).
//! - **Plain programs** use no channel at all.
//!
//! A fixture that reaches the state a test waits for says so (a `ready` progress report, or a
//! line in a FIFO for plain programs), so tests never sleep. "Blocks forever" always means
//! reading a pipe nobody writes to: no busy loop.

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{getpid, setsid};
use warden_protocol::{
    FrameDecoder, JobId, PROTOCOL_VERSION, SupervisorMessage, WorkerMessage, encode_frame,
};
use warden_tests::{
    BAD_VERSION, ECHO, ECHO_PROGRESS, FAIL, FLOOD_LAST, FLOOD_TEXT_LEN, GARBAGE_FRAME, LATE_OUTPUT,
    PARTIAL_FRAME, POOL_CRASH, POOL_GROW, POOL_IGNORE, POOL_STOP, READY, RESULT_OUTPUT,
    TRICKLE_FRAME_LEN, cancelled_text, mode, ready_text, sys,
};
use warden_worker::{CancelCause, FD_ENV_VAR, Job, JobError, Worker};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

fn main() {
    // This binary is also warden's exec shim for the tests (shim::use_external).
    warden::shim::run_if_shim();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or_default();
    let arg = args.get(1).map(String::as_str);
    if let Err(e) = run(mode, arg) {
        eprintln!("fixture-worker {mode}: {e}");
        std::process::exit(101);
    }
}

fn run(mode: &str, arg: Option<&str>) -> Result<()> {
    match mode {
        // SDK workers.
        mode::COOPERATIVE => Worker::new().serve(cooperative)?,
        mode::IGNORE_CANCEL => Worker::new()
            .handle_sigterm(false)
            .serve_blocking(|job| ready_then_block(&job))?,
        mode::IGNORE_TERM => Worker::new()
            .handle_sigterm(true)
            .serve_blocking(|job| ready_then_block(&job))?,
        mode::LATE_RESULT => Worker::new().serve(|job: Job| async move {
            job.progress().set_text(READY);
            job.cancelled().await;
            Ok(LATE_OUTPUT.to_vec())
        })?,
        mode::EXIT_WITHOUT_RESULT => Worker::new().serve_blocking(|_job| std::process::exit(0))?,
        mode::EXIT_CODE => {
            let code = number(arg)?;
            Worker::new().serve_blocking(move |_job| std::process::exit(code))?
        }
        mode::CRASH => {
            let how = arg.unwrap_or("segv").to_owned();
            Worker::new().serve_blocking(move |_job| crash(&how))?
        }
        mode::FORK_TREE => {
            let n = usize::try_from(number(arg)?)?;
            Worker::new()
                .handle_sigterm(false)
                .serve_blocking(move |job| children_then_block(&job, mode::SLEEPER, n))?
        }
        mode::SETSID_ESCAPE => Worker::new()
            .handle_sigterm(false)
            .serve_blocking(|job| children_then_block(&job, mode::ESCAPEE, 1))?,
        mode::SLEEPER => sleeper(false)?,
        mode::ESCAPEE => sleeper(true)?,

        // Raw-protocol workers.
        mode::HANG_HANDSHAKE => block_forever(),
        mode::HEARTBEAT_BEFORE_HELLO => {
            let mut raw = Raw::new()?;
            raw.send(&WorkerMessage::Heartbeat)?;
            block_forever()
        }
        mode::BAD_VERSION => {
            let mut raw = Raw::new()?;
            raw.send(&hello(BAD_VERSION))?;
            block_forever()
        }
        mode::GARBAGE_IDLE => {
            let mut raw = Raw::connect()?;
            raw.send_bytes(&GARBAGE_FRAME)?;
            block_forever()
        }
        mode::GARBAGE => {
            let mut raw = Raw::connect()?;
            raw.start_job()?;
            raw.send_bytes(&GARBAGE_FRAME)?;
            block_forever()
        }
        mode::UNKNOWN_JOB => {
            let mut raw = Raw::connect()?;
            let job = raw.start_job()?;
            raw.send(&WorkerMessage::Completed {
                job: JobId(job.0 + 1000),
                output: Vec::new(),
            })?;
            block_forever()
        }
        mode::OVERSIZED => {
            let mut raw = Raw::connect()?;
            raw.start_job()?;
            let header = (raw.max_frame_len + 1).to_le_bytes();
            raw.send_bytes(&header)?;
            block_forever()
        }
        mode::HUGE_LENGTH => {
            let mut raw = Raw::connect()?;
            raw.start_job()?;
            raw.send_bytes(&u32::MAX.to_le_bytes())?;
            let body = vec![0u8; 64 * 1024];
            for _ in 0..number(arg)? * 16 {
                // The supervisor stops reading at the header: this fails or blocks until the
                // kill, which is the point.
                if raw.send_bytes(&body).is_err() {
                    break;
                }
            }
            block_forever()
        }
        mode::HUGE_CLAIM => {
            let mut raw = Raw::connect()?;
            let job = raw.start_job()?;
            let job = u8::try_from(job.0).map_err(|_| "job id over one varint byte")?;
            // Tag 3 (Completed), the job, then an output length of 2^50 as LEB128 (seven zero
            // groups, then 2^1), then 5 of those bytes.
            let body = [
                3, job, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02, 1, 2, 3, 4, 5,
            ];
            let mut frame = u32::try_from(body.len())?.to_le_bytes().to_vec();
            frame.extend_from_slice(&body);
            raw.send_bytes(&frame)?;
            block_forever()
        }
        mode::TRAILING_BYTES => {
            let mut raw = Raw::connect()?;
            let job = raw.start_job()?;
            let mut frame = encode_frame(
                &WorkerMessage::Completed {
                    job,
                    output: b"looks fine".to_vec(),
                },
                raw.max_frame_len,
            )?;
            frame.push(0);
            let len = u32::try_from(frame.len() - 4)?;
            frame[..4].copy_from_slice(&len.to_le_bytes());
            raw.send_bytes(&frame)?;
            block_forever()
        }
        mode::TRICKLE => {
            let interval = std::time::Duration::from_millis(u64::try_from(number(arg)?)?);
            let mut raw = Raw::connect()?;
            raw.start_job()?;
            raw.send_bytes(&TRICKLE_FRAME_LEN.to_le_bytes())?;
            // Tag 3 (Completed) first, so the body is a plausible start of a result.
            raw.send_bytes(&[3])?;
            loop {
                // The worker's own pace, not a test's synchronisation.
                std::thread::sleep(interval);
                raw.send_bytes(&[0])?;
            }
        }
        mode::PROGRESS_FLOOD => {
            let mut raw = Raw::connect()?;
            let job = raw.start_job()?;
            let total = u64::try_from(number(arg)?)? << 20;
            let text = "p".repeat(FLOOD_TEXT_LEN);
            let mut sent = 0u64;
            let mut reports = 0u64;
            let mut batch = Vec::new();
            while sent < total {
                let fraction = sent as f32 / total as f32;
                let report = WorkerMessage::Progress {
                    job,
                    fraction: Some(fraction),
                    text: Some(text.clone()),
                };
                let before = batch.len();
                warden_protocol::encode_frame_into(&report, raw.max_frame_len, &mut batch)?;
                sent += u64::try_from(batch.len() - before)?;
                reports += 1;
                if batch.len() >= 64 * 1024 {
                    raw.send_bytes(&batch)?;
                    batch.clear();
                }
            }
            raw.send_bytes(&batch)?;
            raw.send(&WorkerMessage::Progress {
                job,
                fraction: Some(1.0),
                text: Some(FLOOD_LAST.into()),
            })?;
            reports += 1;
            raw.send(&WorkerMessage::Completed {
                job,
                output: reports.to_string().into_bytes(),
            })?;
            raw.serve_until_shutdown();
        }
        mode::HEARTBEAT_FLOOD => {
            let mut raw = Raw::connect()?;
            let job = raw.start_job()?;
            let one = encode_frame(&WorkerMessage::Heartbeat, raw.max_frame_len)?;
            let per_batch = 64 * 1024 / one.len();
            let batch = one.repeat(per_batch);
            let batches = (u64::try_from(number(arg)?)? << 20) / u64::try_from(batch.len())?;
            for _ in 0..batches {
                raw.send_bytes(&batch)?;
            }
            let beats = batches * u64::try_from(per_batch)?;
            raw.send(&WorkerMessage::Completed {
                job,
                output: beats.to_string().into_bytes(),
            })?;
            raw.serve_until_shutdown();
        }
        mode::STALL => {
            let mut raw = Raw::connect()?;
            raw.start_job()?;
            raw.send_bytes(&PARTIAL_FRAME)?;
            block_forever()
        }
        mode::LIST_FDS => {
            let fds = open_fds()?;
            let mut raw = Raw::connect()?;
            let job = raw.start_job()?;
            raw.send(&WorkerMessage::Completed {
                job,
                output: fds.into_bytes(),
            })?;
            raw.serve_until_shutdown();
        }
        mode::HANGUP => {
            let mut raw = Raw::connect()?;
            raw.start_job()?;
            raw.stream.shutdown(std::net::Shutdown::Both)?;
            block_forever()
        }
        mode::STALL_IDLE => {
            let mut raw = Raw::connect()?;
            raw.send_bytes(&PARTIAL_FRAME)?;
            block_forever()
        }
        mode::STALL_BEFORE_HELLO => {
            let mut raw = Raw::new()?;
            raw.send_bytes(&PARTIAL_FRAME)?;
            block_forever()
        }
        mode::SECOND_HELLO => {
            let mut raw = Raw::connect()?;
            raw.start_job()?;
            raw.send(&hello(PROTOCOL_VERSION))?;
            block_forever()
        }
        mode::RESULT_THEN_EXIT => {
            let mut raw = Raw::connect()?;
            let job = raw.start_job()?;
            raw.send(&WorkerMessage::Completed {
                job,
                output: RESULT_OUTPUT.to_vec(),
            })?;
            match arg {
                Some("kill") => {
                    kill(getpid(), Signal::SIGKILL)?;
                    block_forever()
                }
                _ => sys::exit_now(0),
            }
        }
        mode::NEVER_HEARTBEATS => {
            let mut raw = Raw::connect()?;
            raw.start_job()?;
            block_forever()
        }
        mode::SIGSTOP_SELF => Worker::new().handle_sigterm(false).serve_blocking(|_job| {
            let _ = kill(getpid(), Signal::SIGSTOP);
            block_forever()
        })?,

        // Pools.
        mode::POOL => Worker::new().handle_sigterm(false).serve(pool_job)?,
        mode::POOL_HOST => pool_host(&std::env::args().skip(2).collect::<Vec<_>>())?,

        // Plain programs.
        mode::PLAIN_EXIT => std::process::exit(number(arg)?),
        mode::PLAIN_WAIT => block_forever(),
        mode::HOST => host(usize::try_from(number(arg)?)?)?,
        mode::CATCH_TERM => catch_term()?,
        mode::ORPHAN_HOST => orphan_host(arg.ok_or("orphan-host needs a file")?)?,
        mode::PLAIN_TELL_TERM => {
            let fifo = arg.ok_or("plain-tell-term needs a FIFO path")?;
            let mut term = nix::sys::signal::SigSet::empty();
            term.add(Signal::SIGTERM);
            term.thread_block()?;
            let mut fifo = OpenOptions::new().write(true).open(fifo)?;
            fifo.write_all(format!("{READY}\n").as_bytes())?;
            term.wait()?;
            fifo.write_all(b"term\n")?;
            drop(fifo);
            block_forever()
        }
        mode::PLAIN_IGNORE_TERM => {
            let fifo = arg.ok_or("plain-ignore-term needs a FIFO path")?;
            sys::ignore_signal(Signal::SIGTERM)?;
            let mut fifo = OpenOptions::new().write(true).open(fifo)?;
            fifo.write_all(format!("{READY}\n").as_bytes())?;
            drop(fifo);
            block_forever()
        }

        // Limits (issue 8's untrusted plugins).
        mode::ALLOC => {
            let mib = usize::try_from(number(arg)?)?;
            Worker::new().serve_blocking(move |_job| {
                let mut held: Vec<Vec<u8>> = Vec::new();
                for _ in 0..mib / 8 {
                    // Non-zero, so every page is written (and charged).
                    held.push(vec![1u8; 8 << 20]);
                }
                Ok(format!("allocated {}", held.len() * 8).into_bytes())
            })?
        }
        mode::PLAIN_PROCS => {
            let n = number(arg)?;
            let mut started = 0;
            while started < n {
                let child = Command::new(std::env::current_exe()?)
                    .arg(mode::PLAIN_WAIT)
                    .stdin(Stdio::null())
                    .spawn();
                match child {
                    // Left running: the tree's end kills them.
                    Ok(child) => drop(child),
                    Err(_) => break,
                }
                started += 1;
            }
            std::process::exit(started)
        }

        // Captured output.
        mode::PLAIN_PRINT => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            let text = |i: usize| unescape(args.get(i).map_or("", String::as_str));
            std::io::stdout().write_all(&text(0)?)?;
            std::io::stdout().flush()?;
            std::io::stderr().write_all(&text(1)?)?;
            if let Some(fifo) = args.get(2) {
                let mut fifo = OpenOptions::new().write(true).open(fifo)?;
                fifo.write_all(format!("{READY}\n").as_bytes())?;
                drop(fifo);
                block_forever()
            }
        }
        mode::PLAIN_ESCAPE_STDERR => {
            let mut child = Command::new(std::env::current_exe()?)
                .arg(mode::ESCAPEE)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
            if line.trim_end() != READY {
                return Err(format!("the escapee said {line:?}").into());
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "escaped {}", child.id())?;
            out.flush()?;
        }
        mode::SAY => Worker::new().serve_blocking(|job| {
            let payload = String::from_utf8_lossy(job.payload()).into_owned();
            let mut out = std::io::stdout().lock();
            writeln!(out, "out:{payload}").map_err(JobError::msg)?;
            out.flush().map_err(JobError::msg)?;
            writeln!(std::io::stderr(), "err:{payload}").map_err(JobError::msg)?;
            Ok(job.payload().to_vec())
        })?,

        other => return Err(format!("unknown mode {other:?}").into()),
    }
    Ok(())
}

/// This process's open descriptors, ascending and comma-separated, without the one used to list
/// them.
fn open_fds() -> Result<String> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let listing = target.starts_with("/proc") && target.ends_with("fd");
        if let (Ok(fd), false) = (entry.file_name().to_string_lossy().parse::<u32>(), listing) {
            fds.push(fd);
        }
    }
    fds.sort_unstable();
    let fds: Vec<String> = fds.iter().map(u32::to_string).collect();
    Ok(fds.join(","))
}

/// `text` with `\n` and `\xHH` decoded.
fn unescape(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                out.push(u8::from_str_radix(std::str::from_utf8(&hex)?, 16)?);
            }
            Some(b'\\') => out.push(b'\\'),
            other => return Err(format!("bad escape {other:?} in {text:?}").into()),
        }
    }
    Ok(out)
}

fn number(arg: Option<&str>) -> Result<i32> {
    Ok(arg.ok_or("this mode needs a number")?.parse()?)
}

/// Blocks the calling thread forever without using the CPU: reads a pipe whose write end it
/// keeps open and never writes to.
fn block_forever() -> ! {
    let pipe = nix::unistd::pipe();
    let Ok((read, _write)) = pipe else {
        // Cannot happen short of running out of descriptors; still never spin.
        loop {
            std::thread::park();
        }
    };
    let mut read = File::from(read);
    let mut byte = [0u8; 1];
    loop {
        // Only EINTR can end a read here; go back to waiting.
        let _ = read.read(&mut byte);
    }
}

async fn cooperative(job: Job) -> Result<Vec<u8>, JobError> {
    if let Some(data) = job.payload().strip_prefix(ECHO) {
        let (fraction, text) = ECHO_PROGRESS;
        job.progress().report(Some(fraction), Some(text));
        return Ok(data.to_vec());
    }
    if let Some(message) = job.payload().strip_prefix(FAIL) {
        return Err(JobError::msg(String::from_utf8_lossy(message)));
    }
    job.progress().set_text(READY);
    job.cancelled().await;
    let cause = match job.cancel_cause() {
        Some(CancelCause::Message(reason)) => reason.as_str(),
        Some(CancelCause::Signal) => "signal",
        Some(CancelCause::ChannelClosed) => "closed",
        _ => "unknown",
    };
    job.progress().set_text(&cancelled_text(cause));
    job.check()?;
    Err(JobError::msg("the token tripped but check() passed"))
}

/// Memory a [`mode::POOL`] worker grew by, kept until it exits.
static GROWN: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

async fn pool_job(job: Job) -> Result<Vec<u8>, JobError> {
    let payload = job.payload();
    if payload == POOL_CRASH {
        crash("segv");
    }
    if payload == POOL_STOP {
        let _ = kill(getpid(), Signal::SIGSTOP);
        block_forever();
    }
    if payload == POOL_IGNORE {
        ready_then_block(&job);
    }
    if let Some(mib) = payload.strip_prefix(POOL_GROW) {
        let mib: usize = String::from_utf8_lossy(mib)
            .parse()
            .map_err(JobError::msg)?;
        // Non-zero, so every page is written (and resident).
        let block = vec![1u8; mib << 20];
        GROWN
            .lock()
            .map_err(|_| JobError::msg("poisoned"))?
            .push(block);
        return Ok(format!("grew {mib}").into_bytes());
    }
    cooperative(job).await
}

/// See [`mode::POOL_HOST`].
fn pool_host(args: &[String]) -> Result<()> {
    use warden::{JobOptions, Outcome, Pool, PoolConfig, ShutdownMode, WorkerConfig};
    let [nofile, workers, jobs] = args else {
        return Err("pool-host NOFILE WORKERS JOBS".into());
    };
    let nofile: u64 = nofile.parse()?;
    let workers: usize = workers.parse()?;
    let jobs: usize = jobs.parse()?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, nofile, nofile)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut cmd = warden::Command::new(std::env::current_exe()?);
        cmd.arg(mode::POOL);
        let pool = Pool::start(
            &cmd,
            WorkerConfig::protocol(),
            PoolConfig::new(workers).queue_capacity(jobs),
        )?;
        // The pool goes on spawning towards its size whatever the jobs do; wait (bounded) until
        // that has hit the descriptor limit, so that the jobs below run under it even when
        // they are quick enough for the first few workers to do them all.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while pool
            .snapshot()
            .await
            .is_some_and(|s| s.spawn_deferrals == 0)
        {
            if std::time::Instant::now() > deadline {
                return Err("the pool never hit EMFILE".into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let mut handles = Vec::with_capacity(jobs);
        for i in 0..jobs {
            let payload = [ECHO, i.to_string().as_bytes()].concat();
            handles.push(pool.submit(payload, JobOptions::new()).await?);
        }
        let mut completed = 0;
        let mut most = 0;
        for (i, handle) in handles.into_iter().enumerate() {
            let report = handle.await?;
            if report.report.outcome == Outcome::Completed(i.to_string().into_bytes()) {
                completed += 1;
            }
            if i % 50 == 0
                && let Some(snapshot) = pool.snapshot().await
            {
                most = most.max(snapshot.workers.iter().filter(|w| w.pid.is_some()).count());
            }
        }
        let deferrals = pool.snapshot().await.map_or(0, |s| s.spawn_deferrals);
        pool.shutdown(ShutdownMode::Drain, std::time::Duration::from_secs(30))
            .await;
        let mut out = std::io::stdout();
        writeln!(
            out,
            "completed {completed} deferrals {deferrals} workers {most}"
        )?;
        out.flush()?;
        Ok::<(), Box<dyn Error>>(())
    })
}

/// A supervisor of `n` cooperative workers that reports their pids and then never exits.
fn host(n: usize) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let exe = std::env::current_exe()?;
        let mut workers = Vec::with_capacity(n);
        for _ in 0..n {
            let mut cmd = warden::Command::new(&exe);
            cmd.arg(mode::COOPERATIVE);
            workers.push(warden::Worker::spawn(&cmd, warden::WorkerConfig::protocol()).await?);
        }
        let pids: Vec<String> = workers.iter().map(|w| w.pid().to_string()).collect();
        let mut out = std::io::stdout();
        writeln!(out, "pids:{}", pids.join(","))?;
        out.flush()?;
        std::future::pending::<()>().await;
        Ok::<(), Box<dyn Error>>(())
    })
}

/// See [`mode::CATCH_TERM`].
fn catch_term() -> Result<()> {
    use nix::sys::signal::SigSet;
    let args: Vec<String> = std::env::args().skip(2).collect();
    let [file, tag, then, children] = args.as_slice() else {
        return Err("catch-term FILE TAG exit|stay N".into());
    };
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    term.thread_block()?;
    for _ in 0..children.parse::<usize>()? {
        Command::new(std::env::current_exe()?)
            .args([mode::CATCH_TERM, file, tag, then, "0"])
            .stdin(Stdio::null())
            .spawn()?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "member {tag} {}", std::process::id())?;
        out.flush()?;
    }
    let null = OpenOptions::new().write(true).open("/dev/null")?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    term.wait()?;
    // One write with O_APPEND: lines of several members never interleave.
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(file)?
        .write_all(format!("{tag} {}\n", std::process::id()).as_bytes())?;
    if then == "stay" {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
    Ok(())
}

/// See [`mode::ORPHAN_HOST`]: the trees, by tag, are
/// - `a`: cgroup, death signal SIGTERM, orphan ladder SIGTERM / 60 s; two members that exit on
///   SIGTERM (the guard must not wait for the delay);
/// - `b`: cgroup, death signal SIGTERM, orphan ladder SIGTERM / 300 ms; one member that takes
///   SIGTERM and stays (the guard kills it after the delay);
/// - `c`: process group, death signal SIGTERM; one member that exits on SIGTERM (only
///   PDEATHSIG can tell it);
/// - `d`: cgroup, the defaults (SIGKILL, no ladder); one member that would record SIGTERM.
fn orphan_host(file: &str) -> Result<()> {
    use std::time::Duration;
    use warden::{Containment, Tree, TreeOptions};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let exe = std::env::current_exe()?;
        let term = Signal::SIGTERM as i32;
        let cgroup = TreeOptions::new().containment(Containment::Cgroup);
        let trees = [
            (
                "a",
                "exit",
                "1",
                cgroup
                    .clone()
                    .death_signal(term)
                    .orphan_ladder(term, Duration::from_secs(60)),
            ),
            (
                "b",
                "stay",
                "0",
                cgroup
                    .clone()
                    .death_signal(term)
                    .orphan_ladder(term, Duration::from_millis(300)),
            ),
            (
                "c",
                "exit",
                "0",
                TreeOptions::new()
                    .containment(Containment::ProcessGroup)
                    .death_signal(term),
            ),
            ("d", "exit", "0", cgroup),
        ];
        let mut held = Vec::new();
        for (tag, then, children, options) in trees {
            let mut cmd = warden::Command::new(&exe);
            cmd.args([mode::CATCH_TERM, file, tag, then, children]);
            held.push(Tree::spawn(&cmd, options).await?);
        }
        let mut out = std::io::stdout();
        writeln!(out, "host {}", std::process::id())?;
        out.flush()?;
        std::future::pending::<()>().await;
        Ok::<(), Box<dyn Error>>(())
    })
}

fn ready_then_block(job: &Job) -> ! {
    job.progress().set_text(READY);
    block_forever()
}

fn crash(how: &str) -> ! {
    // No core file: a crash test must not litter the disk or wait for a dump.
    let _ = nix::sys::prctl::set_dumpable(false);
    if how == "abort" {
        std::process::abort();
    }
    // The Rust runtime's SIGSEGV handler (stack overflow detection) would swallow a raised
    // SIGSEGV; take the default back first.
    let _ = sys::default_signal(Signal::SIGSEGV);
    let _ = nix::sys::signal::raise(Signal::SIGSEGV);
    std::process::abort()
}

/// Starts `n` children running `child_mode` in this process's group, waits until each says it
/// is ready, reports their pids, then blocks forever.
fn children_then_block(job: &Job, child_mode: &str, n: usize) -> Result<Vec<u8>, JobError> {
    let exe = std::env::current_exe().map_err(JobError::msg)?;
    let mut pids = Vec::with_capacity(n);
    for _ in 0..n {
        let mut child = Command::new(&exe)
            .arg(child_mode)
            // The channel itself is close-on-exec; the variable would only mislead.
            .env_remove(FD_ENV_VAR)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(JobError::msg)?;
        let stdout = child
            .stdout
            .take()
            .ok_or("no stdout")
            .map_err(JobError::msg)?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(JobError::msg)?;
        if line.trim_end() != READY {
            return Err(JobError::msg(format!("child said {line:?}")));
        }
        pids.push(child.id());
    }
    job.progress().set_text(&ready_text(&pids));
    block_forever()
}

/// A child of a fork-tree worker: survives the polite signal, so only a SIGKILL of its group
/// (or, for an escapee, of itself) ends it.
fn sleeper(escape: bool) -> Result<()> {
    if escape {
        setsid()?;
    }
    sys::ignore_signal(Signal::SIGTERM)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY}")?;
    out.flush()?;
    drop(out);
    block_forever()
}

fn hello(protocol_version: u16) -> WorkerMessage {
    WorkerMessage::Hello {
        protocol_version,
        pid: std::process::id(),
        sdk_version: "warden-tests fixture".into(),
    }
}

/// A hand-written protocol peer on the inherited channel, with blocking I/O.
struct Raw {
    stream: UnixStream,
    decoder: FrameDecoder,
    max_frame_len: u32,
}

impl Raw {
    /// Takes the channel without saying anything.
    fn new() -> Result<Raw> {
        Ok(Raw {
            stream: sys::channel_from_env()?,
            decoder: FrameDecoder::new(warden_protocol::DEFAULT_MAX_FRAME_LEN),
            max_frame_len: warden_protocol::DEFAULT_MAX_FRAME_LEN,
        })
    }

    /// Takes the channel and completes the handshake.
    fn connect() -> Result<Raw> {
        let mut raw = Raw::new()?;
        raw.send(&hello(PROTOCOL_VERSION))?;
        match raw.recv()? {
            SupervisorMessage::Hello { max_frame_len, .. } => raw.max_frame_len = max_frame_len,
            other => return Err(format!("expected the supervisor's hello, got {other:?}").into()),
        }
        Ok(raw)
    }

    fn send(&mut self, msg: &WorkerMessage) -> Result<()> {
        let frame = encode_frame(msg, self.max_frame_len)?;
        self.send_bytes(&frame)
    }

    fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    fn recv(&mut self) -> Result<SupervisorMessage> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(msg) = self.decoder.next()? {
                return Ok(msg);
            }
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err("the supervisor closed the channel".into());
            }
            self.decoder.push(&buf[..n]);
        }
    }

    /// Idle now: leaves when told to (or when the supervisor hangs up).
    fn serve_until_shutdown(&mut self) {
        while !matches!(self.recv(), Ok(SupervisorMessage::Shutdown) | Err(_)) {}
    }

    /// Waits for a job to start and returns its id.
    fn start_job(&mut self) -> Result<JobId> {
        loop {
            match self.recv()? {
                SupervisorMessage::StartJob { job, .. } => return Ok(job),
                SupervisorMessage::Shutdown => return Err("shut down before any job".into()),
                _ => {}
            }
        }
    }
}
