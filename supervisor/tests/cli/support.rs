//! Running `warden` (and GNU `timeout`) as a user would, with bounded waits, readiness lines
//! and a survivor scan.
//!
//! Every process a test starts carries [`MARK_VAR`] with a value unique to that run in its
//! environment, and so does everything it starts in turn (unless it scrubs its environment,
//! which no fixture here does). After the run, [`Proc::finish`] scans `/proc/*/environ` for the
//! mark: a live process that carries it is a survivor, which fails the test after being
//! killed by PID.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

/// The binary under test.
pub const WARDEN: &str = env!("CARGO_BIN_EXE_warden");
/// GNU coreutils timeout, the reference.
pub const GNU_TIMEOUT: &str = "/usr/bin/timeout";
/// The environment variable that marks every process of one run.
pub const MARK_VAR: &str = "WARDEN_CLI_TEST_MARK";
/// Far longer than any run here should take: only a hang reaches it.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Whether GNU timeout is installed; prints why a comparison is skipped when it is not.
pub fn gnu_available() -> bool {
    let found = std::path::Path::new(GNU_TIMEOUT).exists();
    if !found {
        eprintln!("skipping the GNU side: {GNU_TIMEOUT} is not installed");
    }
    found
}

/// A mark no other run uses. Also puts back, once, the default disposition of every signal
/// this test binary inherited as ignored (see [`default_inherited_ignores`]).
pub fn new_mark() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    default_inherited_ignores();
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

/// What a finished run produced.
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub ended: Ended,
    /// Everything written to stdout (readiness lines included).
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
    /// How long it ran, from spawn to exit.
    pub elapsed: Duration,
    /// Its peak resident set size in KiB (`ru_maxrss` of `wait4`: the process itself and the
    /// children it reaped, whichever was largest).
    pub max_rss_kib: u64,
}

/// A started process whose stdout is read line by line.
pub struct Proc {
    what: String,
    child: Child,
    mark: String,
    started: Instant,
    lines: Receiver<String>,
    stdout_all: Receiver<String>,
    stderr_all: Receiver<String>,
    stderr_lines: Receiver<String>,
    seen: Vec<String>,
    seen_err: Vec<String>,
    reaped: bool,
}

/// Sets every signal this process inherited as ignored back to its default, once, so that
/// the commands the tests start see the state a shell gives them. Under `nohup cargo test`
/// SIGHUP arrives ignored; `warden timeout`, as GNU's, leaves a signal ignored at start
/// ignored in COMMAND and does not act on it, which the tests that send SIGHUP or read the
/// child's `SigIgn` would take for a bug. SIGPIPE is left alone: the test harness ignores it
/// on purpose, and `Command` resets it in every child.
pub fn default_inherited_ignores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for sig in 1..libc::SIGRTMIN() {
            if [libc::SIGKILL, libc::SIGSTOP, libc::SIGPIPE].contains(&sig) {
                continue;
            }
            // SAFETY: a query (null new action) into a zeroed, owned struct.
            let ignored = unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                    && old.sa_sigaction == libc::SIG_IGN
            };
            if ignored {
                // SAFETY: installs SIG_DFL for a signal that was ignored, which runs no code
                // and replaces no handler of ours.
                unsafe { libc::signal(sig, libc::SIG_DFL) };
            }
        }
    });
}

/// Builds a command with the mark, a null stdin and piped output.
pub fn command(program: &str, args: &[&str], mark: &str) -> Command {
    default_inherited_ignores();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env(MARK_VAR, mark)
        .env("LC_ALL", "C")
        .env_remove("WARDEN_CONTAINMENT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn read_lines(stream: impl Read + Send + 'static) -> (Receiver<String>, Receiver<String>) {
    let (line_tx, lines) = mpsc::channel();
    let (all_tx, all) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        while let Ok(n) = reader.read_until(b'\n', &mut line) {
            if n == 0 {
                break;
            }
            let decoded = String::from_utf8_lossy(&line).into_owned();
            text.push_str(&decoded);
            let _ = line_tx.send(decoded.trim_end_matches('\n').to_owned());
            line.clear();
        }
        let _ = all_tx.send(text);
    });
    (lines, all)
}

impl Proc {
    /// Starts `cmd` (built by [`command`], so it carries `mark`).
    pub fn start(what: &str, mut cmd: Command, mark: &str) -> Proc {
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
        let (lines, stdout_all) = read_lines(child.stdout.take().expect("piped stdout"));
        let (stderr_lines, stderr_all) = read_lines(child.stderr.take().expect("piped stderr"));
        Proc {
            what: what.to_owned(),
            child,
            mark: mark.to_owned(),
            started: Instant::now(),
            lines,
            stdout_all,
            stderr_all,
            stderr_lines,
            seen: Vec::new(),
            seen_err: Vec::new(),
            reaped: false,
        }
    }

    /// The process id (the process is never reaped before [`finish`](Self::finish), so the
    /// pid cannot be reused while this exists).
    /// The marker every process it starts carries.
    pub fn mark(&self) -> &str {
        &self.mark
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Waits (bounded) for a stdout line for which `want` holds; returns it.
    pub fn wait_line(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|l| want(l)) {
            return line.clone();
        }
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(e) => {
                    self.kill_now();
                    panic!(
                        "{}: no stdout line {what} ({e:?}); saw {:?}",
                        self.what, self.seen
                    )
                }
            }
        }
    }

    /// Waits (bounded) for a stderr line containing `text`.
    pub fn wait_stderr(&mut self, text: &str) -> String {
        if let Some(line) = self.seen_err.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen_err.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(e) => {
                    self.kill_now();
                    panic!(
                        "{}: no stderr line with {text:?} ({e:?}); saw {:?}",
                        self.what, self.seen_err
                    )
                }
            }
        }
    }

    /// Sends `sig` to the process (still unreaped, so the pid is ours).
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig)
            .unwrap_or_else(|e| panic!("{}: cannot send {sig}: {e}", self.what));
    }

    /// Waits (bounded) until the process has exited, without reaping it or looking at what
    /// it left behind ([`finish`](Self::finish) does that).
    pub fn wait_exited(&mut self) {
        let pid = self.pid();
        let (exited_tx, exited) = mpsc::channel();
        thread::spawn(move || {
            let _ = exited_tx.send(waitid(
                Id::Pid(Pid::from_raw(pid)),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
            ));
        });
        if let Err(e) = exited.recv_timeout(LIMIT) {
            self.kill_now();
            panic!("{}: did not exit within {LIMIT:?} ({e:?})", self.what);
        }
    }

    fn kill_now(&self) {
        if self.reaped {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGKILL);
        kill_marked(&self.mark);
    }

    /// Waits (bounded) for the process to exit, reaps it, collects its output (the pipes must
    /// reach EOF: nothing may still hold them) and proves that no process of the run survives.
    pub fn finish(self) -> Finished {
        self.finish_allowing(|_| false).0
    }

    /// Like [`finish`](Self::finish), but survivors for which `expected` holds are returned
    /// (after being killed by PID) instead of failing the test.
    pub fn finish_allowing(
        mut self,
        expected: impl Fn(&Survivor) -> bool,
    ) -> (Finished, Vec<Survivor>) {
        self.wait_exited();
        let elapsed = self.started.elapsed();
        let (status, max_rss_kib) = reap_with_rusage(self.pid());
        self.reaped = true;
        let ended = if libc::WIFEXITED(status) {
            Ended::Code(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Ended::Signal(libc::WTERMSIG(status))
        } else {
            panic!("{}: odd status {status:#x}", self.what)
        };
        let survivors = settle_survivors(&self.mark);
        let (allowed, unexpected): (Vec<Survivor>, Vec<Survivor>) =
            survivors.into_iter().partition(|s| expected(s));
        kill_all(&allowed);
        kill_all(&unexpected);
        assert!(
            unexpected.is_empty(),
            "{}: processes survived: {unexpected:#?}",
            self.what
        );
        let collect = |rx: &Receiver<String>, which: &str| match rx.recv_timeout(LIMIT) {
            Ok(text) => text,
            Err(RecvTimeoutError::Timeout) => panic!("{}: {which} still held open", self.what),
            Err(RecvTimeoutError::Disconnected) => String::new(),
        };
        let stdout = collect(&self.stdout_all, "stdout");
        let stderr = collect(&self.stderr_all, "stderr");
        (
            Finished {
                ended,
                stdout,
                stderr,
                elapsed,
                max_rss_kib,
            },
            allowed,
        )
    }
}

/// Reaps our exited child `pid` with `wait4`: its raw status and its `ru_maxrss` (KiB).
fn reap_with_rusage(pid: i32) -> (i32, u64) {
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to `status` and `usage` for the call; `pid` is our child,
        // exited (waited for with WNOWAIT) and not reaped by anyone else.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            return (status, u64::try_from(usage.ru_maxrss).unwrap_or(0));
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::Interrupted,
            "wait4({pid}): {err}"
        );
    }
}

impl Drop for Proc {
    /// A test that fails before [`Proc::finish`] still leaves nothing behind.
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_now();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

/// A live process that carries a run's mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Survivor {
    /// Its pid.
    pub pid: i32,
    /// Its command line, NULs as spaces.
    pub cmdline: String,
    /// Its name (/proc/PID/comm): `warden-guard` for a cgroup guard, forked or exec'd.
    pub comm: String,
    /// Its fixture role (`WARDEN_CLI_FIXTURE`), if any.
    pub role: Option<String>,
    /// State, parent and signal lines of /proc/PID/status, for diagnosis.
    pub status: String,
}

fn proc_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            Some(rest.starts_with('Z') || rest.starts_with('X'))
        })
        .unwrap_or(true)
}

/// Live processes whose environment holds `MARK_VAR=mark`.
pub fn marked(mark: &str) -> Vec<Survivor> {
    let entry = format!("{MARK_VAR}={mark}");
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for pid in proc_pids() {
        if pid == me {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
        if !vars.contains(&entry.as_bytes()) || is_zombie(pid) {
            continue;
        }
        let role = vars.iter().find_map(|v| {
            v.strip_prefix(b"WARDEN_CLI_FIXTURE=")
                .map(|r| String::from_utf8_lossy(r).into_owned())
        });
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| {
                s.lines()
                    .filter(|l| {
                        [
                            "State", "PPid", "SigBlk", "SigIgn", "SigCgt", "SigPnd", "ShdPnd",
                        ]
                        .iter()
                        .any(|k| l.starts_with(k))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        out.push(Survivor {
            pid,
            cmdline,
            comm,
            role,
            status,
        });
    }
    out
}

/// Marked processes still alive once those already dying (SIGKILLed just before the scan,
/// whose exit the kernel is still completing) have had a bounded moment to go.
fn settle_survivors(mark: &str) -> Vec<Survivor> {
    // Cleanup of processes that are not our children: they cannot be waited for, only
    // observed. Bounded, and only ever long when something really survives.
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut looked_again = false;
    loop {
        let found = marked(mark);
        if found.is_empty() && !looked_again && blank_environ_pids().next().is_some() {
            // A process in the middle of an exec reads an empty environ, so the scan cannot
            // see its marker: look once more after it had time to finish. (Some processes have
            // an empty environment for good; they cost this one extra look.)
            looked_again = true;
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Live processes other than kernel threads whose environ reads empty.
fn blank_environ_pids() -> impl Iterator<Item = i32> {
    proc_pids().into_iter().filter(|&pid| {
        let kernel = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let ppid: i32 = s[s.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()?;
                Some(pid == 2 || ppid == 2)
            })
            .unwrap_or(true);
        !kernel
            && std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|e| e.is_empty())
            && !is_zombie(pid)
    })
}

/// SIGKILLs each survivor by PID and waits (bounded) until none is alive.
pub fn kill_all(survivors: &[Survivor]) {
    for s in survivors {
        let _ = kill(Pid::from_raw(s.pid), Signal::SIGKILL);
    }
    let pids: BTreeSet<i32> = survivors.iter().map(|s| s.pid).collect();
    let deadline = Instant::now() + LIMIT;
    while pids
        .iter()
        .any(|&p| std::path::Path::new(&format!("/proc/{p}")).exists() && !is_zombie(p))
    {
        assert!(
            Instant::now() < deadline,
            "killed survivors {pids:?} did not die"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Proves that no process carrying `mark` is alive (after a bounded moment for those already
/// dying); survivors are killed by PID, then fail the test. For runs not started through
/// [`Proc`] (a shell in a terminal, say).
pub fn assert_no_survivors(mark: &str, what: &str) {
    let survivors = settle_survivors(mark);
    kill_all(&survivors);
    assert!(
        survivors.is_empty(),
        "{what}: processes survived: {survivors:#?}"
    );
}

/// Kills every marked process (a failing test's clean-up).
pub fn kill_marked(mark: &str) {
    kill_all(&marked(mark));
}

/// Runs `program args` to completion (bounded) with a fresh mark and no readiness step.
pub fn run(program: &str, args: &[&str]) -> Finished {
    let mark = new_mark();
    let what = format!("{program} {args:?}");
    Proc::start(&what, command(program, args, &mark), &mark).finish()
}

/// The fixture entry in this test binary: argv that makes it run `role` (see `fixture`).
pub fn fixture_argv() -> (String, Vec<&'static str>) {
    let exe = std::env::current_exe()
        .expect("current exe")
        .to_string_lossy()
        .into_owned();
    (
        exe,
        vec![
            "--exact",
            "fixture",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ],
    )
}

/// A temporary directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A fresh, empty directory.
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("warden-cli-test-{}", new_mark()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// A file in it with `contents` and `mode`; returns its path.
    ///
    /// Written by a child shell, not by this process: a write descriptor of ours could be
    /// inherited by a process another test forks at that moment, and exec of the file would
    /// then fail with ETXTBSY.
    pub fn file(&self, name: &str, contents: &str, mode: u32) -> String {
        let path = self.0.join(name).to_string_lossy().into_owned();
        let mode = format!("{mode:o}");
        let status = Command::new("/bin/sh")
            .args(["-c", r#"printf %s "$1" > "$2" && chmod "$3" "$2""#, "sh"])
            .args([contents, path.as_str(), mode.as_str()])
            .status()
            .expect("run sh to write a file");
        assert!(status.success(), "writing {path} failed");
        path
    }
}

/// Programs only `execve` can refuse, in `dir`: a script whose `#!` names a missing
/// interpreter (ENOENT), and one held open for writing by the returned file (ETXTBSY while the
/// file lives; close-on-exec, so no child keeps it).
pub struct ExecFailures {
    /// The script with a missing interpreter.
    pub missing_interpreter: String,
    /// The script open for writing.
    pub busy: String,
    /// Keeps `busy` busy.
    _writer: std::fs::File,
}

impl ExecFailures {
    /// Writes both scripts into `dir`.
    pub fn new(dir: &TempDir) -> ExecFailures {
        let missing_interpreter = dir.file(
            "missing-interpreter",
            "#!/nonexistent/warden-interpreter\n",
            0o755,
        );
        let busy = dir.file("busy", "#!/bin/sh\nexit 0\n", 0o755);
        let writer = std::fs::OpenOptions::new()
            .append(true)
            .open(&busy)
            .expect("open the script for writing");
        ExecFailures {
            missing_interpreter,
            busy,
            _writer: writer,
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pidfd for `pid` (a process of this test's run, alive now), so its exit can be awaited
/// without racing pid reuse or its parent's reap.
pub fn pidfd_open(pid: i32) -> std::os::fd::OwnedFd {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory
    // is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(
        fd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    let fd = i32::try_from(fd).expect("fd fits in i32");
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

/// Waits at most `bound_ms` for the process behind `pidfd` to exit (bounded; `what` names it
/// in the failure).
pub fn wait_pidfd(pidfd: &std::os::fd::OwnedFd, bound_ms: u16, what: &str) {
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(pidfd),
        nix::poll::PollFlags::POLLIN,
    )];
    let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(bound_ms))
        .unwrap_or_else(|e| panic!("poll for {what}: {e}"));
    assert_eq!(ready, 1, "{what} did not come within {bound_ms} ms");
}
