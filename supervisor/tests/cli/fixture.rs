//! Fixture processes: this test binary, started (through warden) with `WARDEN_CLI_FIXTURE`.
//!
//! Roles:
//! - `tree:THEN:SHAPE,...` the command: starts one child per shape, forwards each child's
//!   `up SHAPE PID` line once that child is in its escaped state, prints `ready PID`, then
//!   hangs (`THEN` = `hang`, bounded) or exits 0 (`exit`).
//! - shapes: `bg` (a plain child), `setsid` (a new session), `setpgid` (a new process group),
//!   `daemon` (double fork: an intermediate that exits at once, and an orphan that calls
//!   setsid), `ignore-term` (a shell with SIGTERM ignored that execs `sleep`), `stopped` (a
//!   child that stops itself; the root waits until it is stopped). Each announces itself, then
//!   points its stdout and stderr at /dev/null so that no pipe of the test is held, and sleeps
//!   (bounded: a leak heals itself eventually, though the tests kill survivors at once).
//! - SDK workers: `worker:echo` (returns the payload reversed), `worker:fail`,
//!   `worker:wait-cancel` (answers Cancelled once cancelled), `worker:announce-wait-cancel`
//!   (the same, after printing `started PAYLOAD` on stdout), `worker:crash-first` (its payload
//!   is a path: SIGKILLs itself the first time, creating the file, then returns `second`), `worker:ignore-all` (ignores the
//!   cancel and blocks past the polite signal), `worker:sigstop-self` (stops its whole process
//!   with SIGSTOP once a job started; SIGTERM at its default), `hang-handshake` (prints `ready`
//!   and never speaks the protocol). `worker:announce-wait-cancel` and `worker:announce-ignore-all`
//!   are `wait-cancel` and `ignore-all` that first print `in job` on stderr once a job runs
//!   (warden's stop signals are listened to by then).
//! - `raw:never-heartbeats`: speaks the protocol by hand on its stdin (started as
//!   `sh -c 'exec <&3 ...'`), completes the handshake, takes a job, then sends nothing, ever
//!   (as an SDK without heartbeats would); SIGTERM at its default.
//! - plugins, for the limits and the sandbox (each prints one result line and exits):
//!   `plugin:alloc:MIB` allocates and touches MIB MiB in 8 MiB steps; `plugin:spin` burns
//!   CPU (60 s of wall time at most); `plugin:files:N` opens /dev/null N times
//!   (`opened K`, exit 3 if K < N); `plugin:procs:N` starts N children that wait on a pipe
//!   (`started K`, then ends them, exit 0); `plugin:write:PATH` (`wrote` or `write: ERR`, exit
//!   3), `plugin:connect:ADDR` (TCP; `connected` or `connect: ERR`, exit 3),
//!   `plugin:abstract:NAME` (connect to an abstract unix socket), `plugin:signal-parent`
//!   (signal 0 to its parent, warden), `plugin:ptrace` (PTRACE_TRACEME),
//!   `plugin:fds` (`fds 0,1,2...`), `plugin:env` (`env K=V` per variable), `plugin:status`
//!   (its NoNewPrivs and Seccomp lines); `plugin:hang` starts two children, prints `ready`
//!   and hangs (bounded).
//! - `exec:blocked` blocks SIGTERM in its mask and execs `WARDEN_CLI_EXEC` with the
//!   arguments in `WARDEN_CLI_EXEC_ARGS` (separated by newlines).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal, raise};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use crate::support::fixture_argv;

/// Selects the role; unset in the test run itself.
pub const ROLE_VAR: &str = "WARDEN_CLI_FIXTURE";
/// How long a hanging fixture waits before it gives up on its own.
const HANG: Duration = Duration::from_secs(60);

pub fn main() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let code = match run(&role) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fixture {role}: {e}");
            98
        }
    };
    std::process::exit(code);
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn run(role: &str) -> Result<i32> {
    if let Some(spec) = role.strip_prefix("tree:") {
        return tree(spec);
    }
    if let Some(spec) = role.strip_prefix("plugin:") {
        return plugin(spec);
    }
    match role {
        "shape:bg" => escapee("bg", || Ok(()), false),
        "shape:setsid" => escapee("setsid", || Ok(nix::unistd::setsid().map(drop)?), false),
        "shape:setpgid" => escapee(
            "setpgid",
            || Ok(nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?),
            false,
        ),
        "shape:daemon" => {
            // The intermediate of a double fork: start the daemon and exit at once, leaving
            // it an orphan.
            let (exe, args) = fixture_argv();
            Command::new(exe)
                .args(args)
                .env(ROLE_VAR, "shape:daemon-inner")
                .stdin(Stdio::null())
                .spawn()?;
            Ok(0)
        }
        "shape:daemon-inner" => escapee("daemon", || Ok(nix::unistd::setsid().map(drop)?), false),
        "shape:stopped" => escapee("stopped", || Ok(()), true),
        "worker:echo" => serve(|payload| Ok(payload.iter().rev().copied().collect())),
        "worker:fail" => serve(|_| Err(warden_worker::JobError::msg("boom"))),
        "worker:wait-cancel" => {
            warden_worker::Worker::new().serve(|job| async move {
                job.cancelled().await;
                Err(warden_worker::JobError::Cancelled)
            })?;
            Ok(0)
        }
        "worker:announce-stderr-wait-cancel" => {
            warden_worker::Worker::new().serve(|job| async move {
                announce_stderr("in job")
                    .map_err(|e| warden_worker::JobError::msg(e.to_string()))?;
                job.cancelled().await;
                Err(warden_worker::JobError::Cancelled)
            })?;
            Ok(0)
        }
        "worker:announce-wait-cancel" => {
            warden_worker::Worker::new().serve(|job| async move {
                announce(&format!(
                    "started {}",
                    String::from_utf8_lossy(job.payload())
                ))
                .map_err(|e| warden_worker::JobError::msg(e.to_string()))?;
                job.cancelled().await;
                Err(warden_worker::JobError::Cancelled)
            })?;
            Ok(0)
        }
        "worker:crash-first" => serve(|payload| {
            let flag = std::path::Path::new(std::ffi::OsStr::from_bytes(payload));
            if flag.exists() {
                return Ok(b"second".to_vec());
            }
            std::fs::write(flag, b"").map_err(|e| warden_worker::JobError::msg(e.to_string()))?;
            // SIGKILL from itself: a crash that leaves no core file.
            let _ = raise(Signal::SIGKILL);
            Err(warden_worker::JobError::msg("survived SIGKILL"))
        }),
        "worker:announce-ignore-all" => {
            warden_worker::Worker::new().serve_blocking(|_job| {
                announce_stderr("in job")
                    .map_err(|e| warden_worker::JobError::msg(e.to_string()))?;
                std::thread::sleep(HANG);
                Ok(Vec::new())
            })?;
            Ok(0)
        }
        "worker:ignore-all" => {
            warden_worker::Worker::new().serve_blocking(|_job| {
                std::thread::sleep(HANG);
                Ok(Vec::new())
            })?;
            Ok(0)
        }
        "worker:sigstop-self" => {
            warden_worker::Worker::new()
                .handle_sigterm(false)
                .serve_blocking(|_job| {
                    raise(Signal::SIGSTOP)?;
                    std::thread::sleep(HANG);
                    Ok(Vec::new())
                })?;
            Ok(0)
        }
        "raw:never-heartbeats" => never_heartbeats(),
        "hang-handshake" => {
            announce("ready")?;
            std::thread::sleep(HANG);
            Ok(0)
        }
        "exec:blocked" => exec_blocked(),
        other => Err(format!("unknown role {other}").into()),
    }
}

fn serve(
    handler: impl Fn(&[u8]) -> std::result::Result<Vec<u8>, warden_worker::JobError>
    + Send
    + Sync
    + Clone
    + 'static,
) -> Result<i32> {
    warden_worker::Worker::new().serve(move |job| {
        let handler = handler.clone();
        async move { handler(job.payload()) }
    })?;
    Ok(0)
}

/// See `raw:never-heartbeats`.
fn never_heartbeats() -> Result<i32> {
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use warden_protocol::{
        DEFAULT_MAX_FRAME_LEN, FrameDecoder, PROTOCOL_VERSION, SupervisorMessage, WorkerMessage,
        encode_frame,
    };
    let mut stream = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let hello = WorkerMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        pid: std::process::id(),
        sdk_version: "cli fixture, no heartbeats".into(),
    };
    stream.write_all(&encode_frame(&hello, DEFAULT_MAX_FRAME_LEN)?)?;
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let mut buf = [0u8; 4096];
    loop {
        match decoder.next::<SupervisorMessage>()? {
            Some(SupervisorMessage::StartJob { .. }) => break,
            Some(_) => continue,
            None => {}
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err("the supervisor closed the channel".into());
        }
        decoder.push(&buf[..n]);
    }
    std::thread::sleep(HANG);
    Ok(0)
}

fn announce(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// One line on stderr (the worker's stdout is warden's output).
fn announce_stderr(line: &str) -> Result<()> {
    let mut err = std::io::stderr().lock();
    writeln!(err, "{line}")?;
    err.flush()?;
    Ok(())
}

/// Detaches as asked, announces itself, lets go of the test's pipes, then (optionally stops
/// itself and) sleeps.
fn escapee(name: &str, detach: impl Fn() -> Result<()>, stop: bool) -> Result<i32> {
    detach()?;
    announce(&format!("up {name} {}", std::process::id()))?;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    if stop {
        raise(Signal::SIGSTOP)?;
    }
    std::thread::sleep(HANG);
    Ok(0)
}

fn tree(spec: &str) -> Result<i32> {
    let (then, shapes) = spec.split_once(':').ok_or("tree:THEN:SHAPES")?;
    for shape in shapes.split(',').filter(|s| !s.is_empty()) {
        let mut cmd = if shape == "ignore-term" {
            let mut sh = Command::new("/bin/sh");
            sh.args([
                "-c",
                r#"trap "" TERM; echo "up ignore-term $$"; exec sleep 60 >/dev/null 2>&1"#,
            ]);
            sh
        } else {
            let (exe, args) = fixture_argv();
            let mut own = Command::new(exe);
            own.args(args).env(ROLE_VAR, format!("shape:{shape}"));
            own
        };
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().ok_or("piped stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = loop {
            match lines.next() {
                Some(line) => {
                    let line = line?;
                    if line.starts_with("up ") {
                        break line;
                    }
                }
                None => return Err(format!("shape {shape} ended before it was up").into()),
            }
        };
        if shape == "stopped" {
            waitid(
                Id::Pid(Pid::from_raw(i32::try_from(child.id())?)),
                WaitPidFlag::WSTOPPED | WaitPidFlag::WNOWAIT,
            )?;
        }
        if shape == "daemon" {
            // Reap the intermediate: the daemon is an orphan from here on.
            child.wait()?;
        }
        announce(&line)?;
    }
    announce(&format!("ready {}", std::process::id()))?;
    match then {
        "exit" => Ok(0),
        "hang" => {
            std::thread::sleep(HANG);
            Ok(0)
        }
        other => Err(format!("unknown THEN {other}").into()),
    }
}

/// Blocks SIGTERM (in this thread, which is the one that execs, so the new program starts with
/// it blocked) and execs the program named in the environment.
fn exec_blocked() -> Result<i32> {
    let program = std::env::var("WARDEN_CLI_EXEC")?;
    let args = std::env::var("WARDEN_CLI_EXEC_ARGS")?;
    let mut argv = vec![std::ffi::CString::new(program.clone())?];
    for arg in args.split('\n') {
        argv.push(std::ffi::CString::new(arg)?);
    }
    let mut blocked = SigSet::empty();
    blocked.add(Signal::SIGTERM);
    blocked.thread_block()?;
    // Rust's runtime ignores SIGPIPE, and exec would pass that on: warden is to start as a
    // shell would start it, with only what the test's shell set (`trap '' CHLD`).
    // SAFETY: SIG_DFL runs no code of ours; this process is single-threaded here and execs next.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) }?;
    let program = std::ffi::CString::new(program)?;
    let error = nix::unistd::execv(&program, &argv).unwrap_err();
    Err(format!("exec failed: {error}").into())
}

// Plugins for the limits and sandbox tests (`supervisor/tests/cli/limits.rs`).

/// One line of a plugin's result, then its exit status.
fn outcome(ok: bool, line: &str) -> Result<i32> {
    announce(line)?;
    Ok(if ok { 0 } else { 3 })
}

fn plugin(spec: &str) -> Result<i32> {
    let (name, arg) = spec.split_once(':').unwrap_or((spec, ""));
    match name {
        "alloc" => {
            let mib: usize = arg.parse()?;
            let mut held: Vec<Vec<u8>> = Vec::new();
            for _ in 0..mib / 8 {
                // Non-zero, so every page is written (and charged).
                held.push(vec![1u8; 8 << 20]);
            }
            outcome(true, &format!("allocated {}", held.len() * 8))
        }
        "spin" => {
            let start = std::time::Instant::now();
            let mut x = 0u64;
            while start.elapsed() < HANG {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            outcome(false, &format!("spun {x}"))
        }
        "files" => {
            let n: usize = arg.parse()?;
            let mut files = Vec::new();
            let mut error = None;
            for _ in 0..n {
                match std::fs::File::open("/dev/null") {
                    Ok(f) => files.push(f),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            let line = match &error {
                None => format!("opened {}", files.len()),
                Some(e) => format!("opened {} ({e})", files.len()),
            };
            outcome(files.len() == n, &line)
        }
        "procs" => {
            let n: usize = arg.parse()?;
            let mut children = Vec::new();
            for _ in 0..n {
                match Command::new("/bin/sh")
                    .args(["-c", "read x"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()
                {
                    Ok(child) => children.push(child),
                    Err(_) => break,
                }
            }
            announce(&format!("started {}", children.len()))?;
            for mut child in children {
                drop(child.stdin.take());
                child.wait()?;
            }
            Ok(0)
        }
        "write" => match std::fs::write(arg, b"plugin was here\n") {
            Ok(()) => outcome(true, "wrote"),
            Err(e) => outcome(false, &format!("write: {e}")),
        },
        "connect" => match std::net::TcpStream::connect(arg) {
            Ok(_) => outcome(true, "connected"),
            Err(e) => outcome(false, &format!("connect: {e}")),
        },
        "abstract" => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(arg.as_bytes())?;
            match std::os::unix::net::UnixStream::connect_addr(&addr) {
                Ok(_) => outcome(true, "connected"),
                Err(e) => outcome(false, &format!("connect: {e}")),
            }
        }
        "signal-parent" => match nix::sys::signal::kill(nix::unistd::getppid(), None) {
            Ok(()) => outcome(true, "signalled"),
            Err(e) => outcome(false, &format!("signal: {e}")),
        },
        "ptrace" => match nix::sys::ptrace::traceme() {
            Ok(()) => outcome(true, "traced"),
            Err(e) => outcome(false, &format!("ptrace: {e}")),
        },
        "fds" => {
            let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect();
            fds.sort_unstable();
            // The last one is read_dir's own.
            fds.pop();
            let list: Vec<String> = fds.iter().map(ToString::to_string).collect();
            outcome(true, &format!("fds {}", list.join(",")))
        }
        "env" => {
            for (k, v) in std::env::vars_os() {
                announce(&format!(
                    "env {}={}",
                    k.to_string_lossy(),
                    v.to_string_lossy()
                ))?;
            }
            Ok(0)
        }
        "status" => {
            let status = std::fs::read_to_string("/proc/self/status")?;
            for line in status.lines() {
                if line.starts_with("NoNewPrivs:") || line.starts_with("Seccomp:") {
                    announce(&line.split_whitespace().collect::<Vec<_>>().join(" "))?;
                }
            }
            Ok(0)
        }
        "hang" => {
            let mut children = Vec::new();
            for _ in 0..2 {
                children.push(
                    Command::new("/bin/sh")
                        .args(["-c", "read x"])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::null())
                        .spawn()?,
                );
            }
            announce("ready")?;
            std::thread::sleep(HANG);
            Ok(0)
        }
        other => Err(format!("unknown plugin {other}").into()),
    }
}
