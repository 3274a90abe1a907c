//! The `hostile-worker` plugin: one program that tries, chosen by its first argument, each
//! attack an untrusted plugin might make on its host ([`Attack`]). `plugin-host` runs every
//! attack under warden's limits and sandbox and prints what stopped it.
//!
//! Two families:
//!
//! - **SDK attacks** serve one job with `warden-worker` and make the attempt in the handler.
//!   The job's result is the plugin's own view of what the attempt returned (`open #29:
//!   EMFILE`, `connect 127.0.0.1:41234: EACCES`), so the host can print it beside what warden
//!   reported. One that is ended by a limit says what it got to do in progress reports, which
//!   are then its last words.
//! - **Channel attacks** speak the protocol by hand on the descriptor named by `WARDEN_FD`
//!   (warden-protocol's encoder, no SDK), to send what the SDK never would: a frame that
//!   cannot be decoded, one over the limit, a header claiming 4 GiB, a frame trickled a byte at
//!   a time, a flood of progress, a result for another job.
//!
//! Every attack is bounded, so that an unconfined run (no warden, or a host that lacks a
//! feature) cannot take the machine down: 1 GiB of memory, 64 children that sleep, 200
//! descriptors, 1 GiB to stdout. The spin and the trickle are the exceptions: they go on until
//! something stops them, which the host bounds with a job timeout.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use warden_protocol::{
    FrameDecoder, JobId, PROTOCOL_VERSION, SupervisorMessage, WorkerMessage, encode_frame,
    encode_frame_into,
};
use warden_worker::{Job, JobError, Worker};

/// Memory the `alloc` attack tries to hold, in MiB.
pub const ALLOC_MIB: usize = 1024;
/// Descriptors the `files` attack tries to open.
pub const OPEN_FILES: usize = 200;
/// Children the `fork` attack tries to start (each sleeps until killed).
pub const MAX_CHILDREN: usize = 64;
/// MiB the `stdout-flood` attack writes.
pub const STDOUT_FLOOD_MIB: usize = 1024;
/// MiB of progress reports the `progress-flood` attack sends (each with
/// [`PROGRESS_TEXT_LEN`] bytes of text).
pub const PROGRESS_FLOOD_MIB: u64 = 16;
/// Bytes of text in each report of the progress flood.
pub const PROGRESS_TEXT_LEN: usize = 4096;
/// Milliseconds between two bytes of the trickled frame.
pub const TRICKLE_INTERVAL_MS: u64 = 20;
/// The body length the trickled frame declares: at one byte per interval, 200 s.
pub const TRICKLE_FRAME_LEN: u32 = 10_000;
/// The signal the `signal-host` attack sends its host: ignored by default, so an unconfined
/// run does no harm.
pub const HOST_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGWINCH;

/// The argument that starts a `fork` attack's child: it blocks until killed.
const CHILD_ARG: &str = "fork-child";

/// One attack. [`Attack::name`] is the `hostile-worker` argument that makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attack {
    /// Allocate and touch [`ALLOC_MIB`] MiB, 8 MiB at a time.
    Alloc,
    /// Spin on the CPU forever.
    Spin,
    /// Open `/dev/null` [`OPEN_FILES`] times, keeping each.
    Files,
    /// Start up to [`MAX_CHILDREN`] children that sleep until killed.
    Fork,
    /// Write a file in its writable directory, then one outside it (argv: both paths).
    WriteOutside,
    /// TCP connect to a listener of the host (argv: the address).
    TcpConnect,
    /// Connect to an abstract unix socket of the host (argv: its name).
    AbstractSocket,
    /// Send [`HOST_SIGNAL`] to the host (argv: its pid).
    SignalHost,
    /// Call ptrace, mount, bpf, keyctl and unshare.
    Syscalls,
    /// List its open descriptors and its environment's names.
    FdsEnv,
    /// Write [`STDOUT_FLOOD_MIB`] MiB to stdout.
    StdoutFlood,
    /// Channel: a whole frame whose body is an unknown message tag.
    GarbageFrame,
    /// Channel: a frame header one byte over the limit the supervisor announced.
    OversizedFrame,
    /// Channel: a frame header claiming `u32::MAX` bytes (4 GiB), then body bytes.
    HugeHeader,
    /// Channel: a frame header, then one body byte every [`TRICKLE_INTERVAL_MS`] ms.
    Trickle,
    /// Channel: [`PROGRESS_FLOOD_MIB`] MiB of progress reports, then a result with their count.
    ProgressFlood,
    /// Channel: a result for a job that is not running.
    ForeignResult,
}

impl Attack {
    /// Every attack, in the order `plugin-host` runs them.
    pub const ALL: [Attack; 17] = [
        Attack::Alloc,
        Attack::Spin,
        Attack::Files,
        Attack::Fork,
        Attack::WriteOutside,
        Attack::TcpConnect,
        Attack::AbstractSocket,
        Attack::SignalHost,
        Attack::Syscalls,
        Attack::FdsEnv,
        Attack::StdoutFlood,
        Attack::GarbageFrame,
        Attack::OversizedFrame,
        Attack::HugeHeader,
        Attack::Trickle,
        Attack::ProgressFlood,
        Attack::ForeignResult,
    ];

    /// The argument that selects it.
    pub fn name(self) -> &'static str {
        match self {
            Attack::Alloc => "alloc",
            Attack::Spin => "spin",
            Attack::Files => "files",
            Attack::Fork => "fork",
            Attack::WriteOutside => "write-outside",
            Attack::TcpConnect => "tcp-connect",
            Attack::AbstractSocket => "abstract-socket",
            Attack::SignalHost => "signal-host",
            Attack::Syscalls => "syscalls",
            Attack::FdsEnv => "fds-env",
            Attack::StdoutFlood => "stdout-flood",
            Attack::GarbageFrame => "garbage-frame",
            Attack::OversizedFrame => "oversized-frame",
            Attack::HugeHeader => "huge-header",
            Attack::Trickle => "trickle",
            Attack::ProgressFlood => "progress-flood",
            Attack::ForeignResult => "foreign-result",
        }
    }

    /// What it tries, in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            Attack::Alloc => "allocate and touch 1 GiB",
            Attack::Spin => "spin on the CPU forever",
            Attack::Files => "open 200 files",
            Attack::Fork => "fork 64 sleeping children",
            Attack::WriteOutside => "write outside its writable directory",
            Attack::TcpConnect => "TCP connect to the host's listener on 127.0.0.1",
            Attack::AbstractSocket => "connect to the host's abstract unix socket",
            Attack::SignalHost => "send SIGWINCH to the host",
            Attack::Syscalls => "call ptrace, mount, bpf, keyctl, unshare",
            Attack::FdsEnv => "look for inherited descriptors and environment",
            Attack::StdoutFlood => "write 1 GiB to stdout",
            Attack::GarbageFrame => "send a frame with an unknown message tag",
            Attack::OversizedFrame => "send a frame header 1 byte over the limit",
            Attack::HugeHeader => "send a header claiming 4 GiB, then body bytes",
            Attack::Trickle => "trickle a frame, one byte every 20 ms",
            Attack::ProgressFlood => "flood 16 MiB of progress reports",
            Attack::ForeignResult => "send a result for a job that is not running",
        }
    }

    /// The attack named `name`.
    pub fn from_name(name: &str) -> Option<Attack> {
        Attack::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether it speaks the protocol by hand (no SDK, no result text of its own).
    pub fn is_channel_attack(self) -> bool {
        matches!(
            self,
            Attack::GarbageFrame
                | Attack::OversizedFrame
                | Attack::HugeHeader
                | Attack::Trickle
                | Attack::ProgressFlood
                | Attack::ForeignResult
        )
    }
}

/// Runs the attack named by `args[0]` with the rest of `args` as its arguments; the exit code
/// of the process. An error is written to stderr (exit 101).
///
/// `role` is what this executable needs before those arguments to run as the hostile worker
/// (empty for the `hostile-worker` binary, the worker flag and name for a host that runs
/// itself as the plugin: [`crate::workers`]); the fork attack starts its children with it.
pub fn main_with(role: &[&str], args: &[String]) -> ExitCode {
    let name = args.first().map(String::as_str).unwrap_or_default();
    if name == CHILD_ARG {
        block_forever();
    }
    let Some(attack) = Attack::from_name(name) else {
        let names: Vec<&str> = Attack::ALL.iter().map(|a| a.name()).collect();
        eprintln!("hostile-worker: unknown attack {name:?}; expected one of {names:?}");
        return ExitCode::from(2);
    };
    let rest = args[1..].to_vec();
    let role: Vec<String> = role.iter().map(|s| (*s).to_owned()).collect();
    match run(attack, role, rest) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostile-worker {name}: {e}");
            ExitCode::from(101)
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn run(attack: Attack, role: Vec<String>, args: Vec<String>) -> Result<(), BoxError> {
    if attack.is_channel_attack() {
        return channel_attack(attack);
    }
    // What this process was given, listed before the SDK opens descriptors of its own.
    let inherited = Inherited {
        fds: open_fds()?,
        role,
    };
    // One job; its result is the attempt in the plugin's words. A failure to even try is the
    // job's error.
    let handler = move |job: Job| -> Result<Vec<u8>, JobError> {
        sdk_attack(attack, &inherited, &args, &job)
            .map(String::into_bytes)
            .map_err(JobError::msg)
    };
    Worker::new().serve_blocking(handler)?;
    Ok(())
}

/// The arguments an attack needs, by position.
fn arg<'a>(args: &'a [String], i: usize, what: &str) -> Result<&'a str, String> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| format!("missing argument {}: {what}", i + 1))
}

/// An I/O error as the plugin sees it: the errno's name (`EACCES`), else the message.
fn errno(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
        None => e.to_string(),
    }
}

/// What the SDK attacks learn before the SDK starts.
struct Inherited {
    /// The open descriptors at start ([`open_fds`]).
    fds: String,
    /// See [`main_with`].
    role: Vec<String>,
}

fn sdk_attack(
    attack: Attack,
    inherited: &Inherited,
    args: &[String],
    job: &Job,
) -> Result<String, String> {
    match attack {
        Attack::Alloc => {
            let mut held: Vec<Vec<u8>> = Vec::new();
            for step in 0..ALLOC_MIB / 8 {
                let mut block = Vec::new();
                // try_reserve: where memory is an address-space rlimit, the allocation fails
                // (and the plugin can say so) instead of aborting the process.
                if let Err(e) = block.try_reserve_exact(8 << 20) {
                    return Ok(format!(
                        "allocation #{} refused after {} MiB: {e}",
                        step + 1,
                        step * 8
                    ));
                }
                // Non-zero, so every page is written and charged to the tree.
                block.resize(8 << 20, 1u8);
                held.push(block);
                job.progress()
                    .set_text(&format!("holding {} MiB", held.len() * 8));
            }
            Ok(format!("holding {} MiB", held.len() * 8))
        }
        Attack::Spin => {
            job.progress()
                .set_text("spinning; never checking the token");
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        }
        Attack::Files => {
            let mut held = Vec::new();
            for n in 1..=OPEN_FILES {
                match std::fs::File::open("/dev/null") {
                    Ok(f) => held.push(f),
                    Err(e) => return Ok(format!("open #{n}: {}", errno(&e))),
                }
            }
            Ok(format!("opened all {OPEN_FILES}"))
        }
        Attack::Fork => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let mut started = 0;
            for n in 1..=MAX_CHILDREN {
                let child = std::process::Command::new(&exe)
                    .args(&inherited.role)
                    .arg(CHILD_ARG)
                    .env_remove(warden_worker::FD_ENV_VAR)
                    .stdin(std::process::Stdio::null())
                    .spawn();
                match child {
                    // Left running (never waited for): the end of the tree kills them.
                    Ok(child) => drop(child),
                    Err(e) => return Ok(format!("fork #{n}: {} ({started} started)", errno(&e))),
                }
                started += 1;
            }
            Ok(format!("started all {started}"))
        }
        Attack::WriteOutside => {
            let inside = arg(args, 0, "a path in the writable directory")?;
            let outside = arg(args, 1, "a path outside it")?;
            let attempt = |path: &str| match std::fs::write(path, b"hostile\n") {
                Ok(()) => "written".to_owned(),
                Err(e) => errno(&e),
            };
            Ok(format!(
                "inside: {}; outside: {}",
                attempt(inside),
                attempt(outside)
            ))
        }
        Attack::TcpConnect => {
            let addr = arg(args, 0, "the host's TCP address")?;
            Ok(match std::net::TcpStream::connect(addr) {
                Ok(_) => format!("connect {addr}: connected"),
                Err(e) => format!("connect {addr}: {}", errno(&e)),
            })
        }
        Attack::AbstractSocket => {
            let name = arg(args, 0, "the host's abstract socket name")?;
            Ok(format!("connect @{name}: {}", connect_abstract(name)))
        }
        Attack::SignalHost => {
            let pid: i32 = arg(args, 0, "the host's pid")?
                .parse()
                .map_err(|e| format!("not a pid: {e}"))?;
            let sent = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), HOST_SIGNAL);
            Ok(match sent {
                Ok(()) => format!("kill({pid}, {}): delivered", HOST_SIGNAL.as_str()),
                Err(e) => format!("kill({pid}, {}): {e:?}", HOST_SIGNAL.as_str()),
            })
        }
        Attack::Syscalls => Ok(denied_calls()),
        Attack::FdsEnv => {
            let fds = &inherited.fds;
            let mut names: Vec<String> = std::env::vars_os()
                .map(|(k, _)| k.to_string_lossy().into_owned())
                .collect();
            names.sort();
            Ok(format!("fds {fds}; env {}", names.join(",")))
        }
        Attack::StdoutFlood => {
            let chunk = vec![b'y'; 64 << 10];
            let mut out = std::io::stdout().lock();
            let mut written = 0usize;
            while written < STDOUT_FLOOD_MIB << 20 {
                if let Err(e) = out.write_all(&chunk) {
                    return Ok(format!("write after {} MiB: {}", written >> 20, errno(&e)));
                }
                written += chunk.len();
            }
            Ok(format!("wrote {} MiB to stdout", written >> 20))
        }
        _ => Err(format!("{} is a channel attack", attack.name())),
    }
}

#[cfg(target_os = "linux")]
fn connect_abstract(name: &str) -> String {
    use std::os::linux::net::SocketAddrExt;
    let addr = match std::os::unix::net::SocketAddr::from_abstract_name(name) {
        Ok(addr) => addr,
        Err(e) => return format!("bad name: {e}"),
    };
    match UnixStream::connect_addr(&addr) {
        Ok(_) => "connected".into(),
        Err(e) => errno(&e),
    }
}

#[cfg(not(target_os = "linux"))]
fn connect_abstract(_name: &str) -> String {
    "no abstract sockets on this platform".into()
}

#[cfg(target_os = "linux")]
fn denied_calls() -> String {
    let results: Vec<String> = crate::sys::DeniedCall::ALL
        .iter()
        .map(|call| match call.attempt() {
            Ok(()) => format!("{}: allowed", call.name()),
            Err(e) => format!("{}: {e:?}", call.name()),
        })
        .collect();
    results.join(", ")
}

#[cfg(not(target_os = "linux"))]
fn denied_calls() -> String {
    "no seccomp on this platform".into()
}

/// This process's open descriptors, ascending and comma-separated, without the one that lists
/// them.
fn open_fds() -> std::io::Result<String> {
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

/// Blocks forever without using the CPU: reads a pipe whose write end it keeps and never
/// writes to.
fn block_forever() -> ! {
    let Ok((read, _write)) = nix::unistd::pipe() else {
        // Only without descriptors to spare; still never spin.
        loop {
            std::thread::park();
        }
    };
    let mut read = std::fs::File::from(read);
    let mut byte = [0u8; 1];
    loop {
        // Only EINTR can end this read; go back to waiting.
        let _ = read.read(&mut byte);
    }
}

fn channel_attack(attack: Attack) -> Result<(), BoxError> {
    let mut raw = Raw::connect()?;
    let job = raw.start_job()?;
    match attack {
        Attack::GarbageFrame => raw.send_bytes(&[1, 0, 0, 0, 99])?,
        Attack::OversizedFrame => raw.send_bytes(&(raw.max_frame_len + 1).to_le_bytes())?,
        Attack::HugeHeader => {
            raw.send_bytes(&u32::MAX.to_le_bytes())?;
            let body = vec![0u8; 64 << 10];
            // 64 MiB at most: the supervisor stops reading at the header, so this fails or
            // blocks on a full socket until the kill, which is the point.
            for _ in 0..1024 {
                if raw.send_bytes(&body).is_err() {
                    break;
                }
            }
        }
        Attack::Trickle => {
            raw.send_bytes(&TRICKLE_FRAME_LEN.to_le_bytes())?;
            // Tag 3 (Completed) first: a plausible start of a result.
            raw.send_bytes(&[3])?;
            loop {
                // The attacker's own pace (each byte well inside a frame timeout).
                std::thread::sleep(Duration::from_millis(TRICKLE_INTERVAL_MS));
                raw.send_bytes(&[0])?;
            }
        }
        Attack::ProgressFlood => {
            let total = PROGRESS_FLOOD_MIB << 20;
            let text = "p".repeat(PROGRESS_TEXT_LEN);
            let (mut sent, mut reports) = (0u64, 0u64);
            let mut batch = Vec::new();
            while sent < total {
                let report = WorkerMessage::Progress {
                    job,
                    fraction: Some(sent as f32 / total as f32),
                    text: Some(text.clone()),
                };
                let before = batch.len();
                encode_frame_into(&report, raw.max_frame_len, &mut batch)?;
                sent += (batch.len() - before) as u64;
                reports += 1;
                if batch.len() >= 64 << 10 {
                    raw.send_bytes(&batch)?;
                    batch.clear();
                }
            }
            raw.send_bytes(&batch)?;
            raw.send(&WorkerMessage::Completed {
                job,
                output: format!("sent {reports} progress reports ({PROGRESS_FLOOD_MIB} MiB)")
                    .into_bytes(),
            })?;
            raw.serve_until_shutdown();
            return Ok(());
        }
        Attack::ForeignResult => raw.send(&WorkerMessage::Completed {
            job: JobId(job.0 + 1000),
            output: b"a result for someone else".to_vec(),
        })?,
        _ => return Err(format!("{} is not a channel attack", attack.name()).into()),
    }
    block_forever()
}

/// A hand-written protocol peer on the inherited channel, with blocking I/O.
struct Raw {
    stream: UnixStream,
    decoder: FrameDecoder,
    max_frame_len: u32,
}

impl Raw {
    /// Takes the channel and completes the handshake.
    fn connect() -> Result<Raw, BoxError> {
        let max = warden_protocol::DEFAULT_MAX_FRAME_LEN;
        let mut raw = Raw {
            stream: crate::sys::channel_from_env()?,
            decoder: FrameDecoder::new(max),
            max_frame_len: max,
        };
        raw.send(&WorkerMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            pid: std::process::id(),
            sdk_version: "warden-examples hostile-worker".into(),
        })?;
        match raw.recv()? {
            SupervisorMessage::Hello { max_frame_len, .. } => raw.max_frame_len = max_frame_len,
            other => return Err(format!("expected the supervisor's hello, got {other:?}").into()),
        }
        Ok(raw)
    }

    fn send(&mut self, msg: &WorkerMessage) -> Result<(), BoxError> {
        let frame = encode_frame(msg, self.max_frame_len)?;
        self.send_bytes(&frame)
    }

    fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), BoxError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    fn recv(&mut self) -> Result<SupervisorMessage, BoxError> {
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

    /// Waits for a job and returns its id.
    fn start_job(&mut self) -> Result<JobId, BoxError> {
        loop {
            match self.recv()? {
                SupervisorMessage::StartJob { job, .. } => return Ok(job),
                SupervisorMessage::Shutdown => return Err("shut down before any job".into()),
                _ => {}
            }
        }
    }

    /// Idle now: leaves when told to, or when the supervisor hangs up.
    fn serve_until_shutdown(&mut self) {
        while !matches!(self.recv(), Ok(SupervisorMessage::Shutdown) | Err(_)) {}
    }
}
