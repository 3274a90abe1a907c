//! End to end: this test binary started as a worker child, with the channel inherited through
//! `WARDEN_FD`. Covers what cannot run in-process: bootstrap from the environment, the polite
//! signal, and the orphan exit.

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use warden_protocol::{CancelReason, JobId, SupervisorMessage, WorkerMessage};
use warden_worker::{
    BootstrapError, CancelCause, Channel, FD_ENV_VAR, Job, JobError, ORPHAN_EXIT_CODE, ServeError,
    Worker,
};

use crate::support::*;

/// Selects the child's behaviour; unset in the parent.
const MODE_VAR: &str = "WARDEN_SDK_TEST_CHILD";

/// Marks every child (and anything it starts) with a value unique to one spawn, so a test can
/// prove that nothing it started is still alive.
const MARK_VAR: &str = "WARDEN_SDK_TEST_MARK";

/// The test name the child runs.
const ENTRY: &str = "process::child_entry";

// Exit codes of the child entry point.
const EXIT_DISCONNECTED: i32 = 3;
const EXIT_OTHER_ERROR: i32 = 4;
const EXIT_NOT_STARTED: i32 = 5;
const EXIT_PROBE_NOT_OPEN: i32 = 6;
const EXIT_PROBE_OTHER: i32 = 7;
pub(crate) const EXIT_WRITER_LEFT: i32 = 8;

/// Spawns that make the channel inheritable are serialised, so no other child of this test
/// binary inherits a channel meant for one worker.
static SPAWN: Mutex<()> = Mutex::new(());

/// Not a test of its own: the entry point of the worker children. Does nothing in the parent.
#[test]
fn child_entry() {
    let Ok(mode) = std::env::var(MODE_VAR) else {
        return;
    };
    let code = match run_child(&mode) {
        Ok(()) => 0,
        Err(ServeError::Disconnected) => EXIT_DISCONNECTED,
        Err(ServeError::Bootstrap(BootstrapError::NotStartedByWarden)) => EXIT_NOT_STARTED,
        Err(e) => {
            eprintln!("child {mode}: {e:?}");
            EXIT_OTHER_ERROR
        }
    };
    std::process::exit(code);
}

fn run_child(mode: &str) -> Result<(), ServeError> {
    match mode {
        "echo" => Worker::new().serve(|job| async move { Ok(job.payload().to_vec()) }),
        "wait-cancel" => Worker::new().serve_blocking(wait_for_cancel),
        "default-sigterm" => Worker::new()
            .handle_sigterm(false)
            .serve_blocking(wait_for_cancel),
        "ignore-cancel" => {
            Worker::new()
                .orphan_grace(Duration::from_millis(100))
                .serve_blocking(|job| {
                    job.progress().set_text("started");
                    // Ignores the token; only the orphan exit ends this.
                    let (_keep, never) = std_mpsc::channel::<()>();
                    let _ = never.recv_timeout(LIMIT * 6);
                    Ok(Vec::new())
                })
        }
        "spawn-probe" => Worker::new().serve_blocking(|_job| {
            // A grandchild inherits WARDEN_FD but must not inherit the channel.
            let status = std::process::Command::new(std::env::current_exe()?)
                .args(["--exact", ENTRY, "--nocapture", "--test-threads=1"])
                .env(MODE_VAR, "probe")
                .stdout(Stdio::null())
                .status()?;
            Ok(vec![status.code().map_or(255, |c| c as u8)])
        }),
        // A handler that never yields, on a current-thread runtime: it starves the serve task.
        "spin-async" => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ServeError::Runtime)?;
            runtime.block_on(
                Worker::new()
                    .orphan_grace(Duration::from_millis(100))
                    .serve_async(|job| async move { spin(&job) }),
            )
        }
        "spin-blocking" => Worker::new()
            .orphan_grace(Duration::from_millis(100))
            .serve_blocking(|job| spin(&job)),
        "writer-ends" => {
            Worker::new().serve(|job| async move { Ok(job.payload().to_vec()) })?;
            // Serving returned: the writer thread must be gone with it.
            if thread_names().iter().any(|name| name == "warden-writer") {
                std::process::exit(EXIT_WRITER_LEFT);
            }
            Ok(())
        }
        "probe" => {
            let code = match Channel::from_env() {
                Err(BootstrapError::NotOpen { .. }) => EXIT_PROBE_NOT_OPEN,
                _ => EXIT_PROBE_OTHER,
            };
            std::process::exit(code);
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// Reports "started", waits (bounded) for the token, answers Cancelled for the polite signal
/// and fails naming any other cause.
fn wait_for_cancel(job: Job) -> Result<Vec<u8>, JobError> {
    let (tripped, wait) = std_mpsc::channel();
    let _guard = job.on_cancel(move || {
        let _ = tripped.send(());
    });
    job.progress().set_text("started");
    wait.recv_timeout(LIMIT)
        .map_err(|_| JobError::msg("token never tripped"))?;
    match job.cancel_cause() {
        Some(CancelCause::Signal) => Err(JobError::Cancelled),
        cause => Err(JobError::msg(format!("tripped by {cause:?}"))),
    }
}

/// Spins the CPU without yielding or blocking for the number of milliseconds in the payload
/// (a little-endian `u64`), or until the token trips.
fn spin(job: &Job) -> Result<Vec<u8>, JobError> {
    let ms = job
        .payload()
        .try_into()
        .map(u64::from_le_bytes)
        .map_err(|_| JobError::msg("payload is not a u64"))?;
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        job.check()?;
        std::hint::spin_loop();
    }
    Ok(b"spun".to_vec())
}

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

pub(crate) struct Child {
    pub(crate) sup: FakeSupervisor,
    process: tokio::process::Child,
    mark: String,
}

/// Starts this binary in `mode` with a fresh channel at `WARDEN_FD` (unless `with_channel` is
/// false). The child is killed if the test fails before it exits.
pub(crate) fn spawn(mode: &str, with_channel: bool) -> Child {
    static SPAWNED: AtomicU32 = AtomicU32::new(0);
    let mark = format!(
        "{}-{}",
        std::process::id(),
        SPAWNED.fetch_add(1, Ordering::Relaxed)
    );
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let mut command = tokio::process::Command::new(std::env::current_exe().expect("current exe"));
    command
        .args(["--exact", ENTRY, "--nocapture", "--test-threads=1"])
        .env(MODE_VAR, mode)
        .env(MARK_VAR, &mark)
        .env_remove(FD_ENV_VAR)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    let process = {
        let _serial = SPAWN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if with_channel {
            // Inheritable for this one spawn; our copy is closed right after.
            nix::fcntl::fcntl(
                &theirs,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .expect("clear close-on-exec");
            command.env(FD_ENV_VAR, theirs.as_raw_fd().to_string());
        }
        let process = command.spawn().expect("spawn the worker child");
        drop(theirs);
        process
    };
    Child {
        sup: FakeSupervisor::new(ours),
        process,
        mark,
    }
}

/// Live (not zombie) processes whose environment holds `MARK_VAR=mark`.
fn marked(mark: &str) -> Vec<i32> {
    let entry = format!("{MARK_VAR}={mark}");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|p| p.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| Some(stat.rsplit_once(')')?.1.trim_start().starts_with('Z')))
                .unwrap_or(true);
            !zombie
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == entry.as_bytes()))
        })
        .collect()
}

/// Fails the test if a process of this spawn is still alive, after killing it by PID.
fn assert_no_survivors(mark: &str) {
    let survivors = marked(mark);
    for &pid in &survivors {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    assert!(survivors.is_empty(), "survivors of {mark}: {survivors:?}");
}

impl Child {
    /// Waits for the child to exit (on timeout the drop of `process` kills it), then proves
    /// nothing it started survives.
    pub(crate) async fn exit_status(mut self, what: &str) -> ExitStatus {
        let status = within(what, self.process.wait())
            .await
            .expect("wait for the child");
        assert_no_survivors(&self.mark);
        status
    }

    /// Closes the supervisor's end, then waits for the child to exit.
    pub(crate) async fn close_and_exit_status(self, what: &str) -> ExitStatus {
        let Child {
            sup,
            mut process,
            mark,
        } = self;
        sup.close();
        let status = within(what, process.wait())
            .await
            .expect("wait for the child");
        assert_no_survivors(&mark);
        status
    }

    fn signal(&self, signal: Signal) {
        // Not reaped yet (nobody waited), so the pid is still this child's.
        let pid = self.process.id().expect("child not yet reaped");
        kill(Pid::from_raw(pid as i32), signal).expect("signal the child");
    }

    async fn start_and_wait_started(&mut self) {
        self.sup.accept_default().await;
        self.sup.send(&start(1, b"")).await;
        assert_eq!(
            self.sup.recv("progress").await,
            WorkerMessage::Progress {
                job: JobId(1),
                fraction: None,
                text: Some("started".into())
            }
        );
    }
}

#[tokio::test]
async fn bootstrap_from_env_serves_and_exits_zero_after_shutdown() {
    let mut child = spawn("echo", true);
    child.sup.accept_default().await;
    child.sup.send(&start(1, b"ping")).await;
    assert_eq!(
        child.sup.recv("result").await,
        WorkerMessage::Completed {
            job: JobId(1),
            output: b"ping".to_vec()
        }
    );
    child.sup.send(&SupervisorMessage::Shutdown).await;
    child.sup.expect_eof("worker to close after shutdown").await;
    let status = child.exit_status("worker exit after shutdown").await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn missing_variable_fails_with_not_started_by_warden() {
    let child = spawn("echo", false);
    let status = child.exit_status("worker exit without a channel").await;
    assert_eq!(status.code(), Some(EXIT_NOT_STARTED), "{status:?}");
}

#[tokio::test]
async fn polite_signal_cancels_the_job_then_the_worker_exits() {
    let mut child = spawn("wait-cancel", true);
    child.start_and_wait_started().await;
    child.signal(Signal::SIGTERM);
    assert_eq!(
        child.sup.recv("result").await,
        WorkerMessage::Cancelled { job: JobId(1) }
    );
    child
        .sup
        .expect_eof("worker to close after the signal")
        .await;
    let status = child.exit_status("worker exit after the signal").await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn polite_signal_while_idle_exits_at_once() {
    let mut child = spawn("wait-cancel", true);
    child.sup.accept_default().await;
    child.signal(Signal::SIGTERM);
    child
        .sup
        .expect_eof("worker to close after the signal")
        .await;
    let status = child.exit_status("worker exit after the signal").await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn sigterm_left_at_default_kills_the_worker() {
    let mut child = spawn("default-sigterm", true);
    child.start_and_wait_started().await;
    child.signal(Signal::SIGTERM);
    let status = child.exit_status("worker death by SIGTERM").await;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
}

#[tokio::test]
async fn handler_outliving_the_channel_exits_the_process() {
    let mut child = spawn("ignore-cancel", true);
    child.start_and_wait_started().await;
    let status = child.close_and_exit_status("orphan exit").await;
    assert_eq!(status.code(), Some(ORPHAN_EXIT_CODE), "{status:?}");
}

#[tokio::test]
async fn cooperative_handler_after_eof_ends_with_disconnected() {
    let mut child = spawn("wait-cancel", true);
    child.start_and_wait_started().await;
    let status = child.close_and_exit_status("worker exit after EOF").await;
    assert_eq!(status.code(), Some(EXIT_DISCONNECTED), "{status:?}");
}

#[tokio::test]
async fn workers_own_children_do_not_inherit_the_channel() {
    let mut child = spawn("spawn-probe", true);
    child.sup.accept_default().await;
    child.sup.send(&start(1, b"")).await;
    assert_eq!(
        child.sup.recv("probe result").await,
        WorkerMessage::Completed {
            job: JobId(1),
            output: vec![EXIT_PROBE_NOT_OPEN as u8]
        }
    );
    child.sup.send(&SupervisorMessage::Shutdown).await;
    let status = child.exit_status("worker exit after shutdown").await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn cancel_message_still_works_out_of_process() {
    let mut child = spawn("wait-cancel", true);
    child.start_and_wait_started().await;
    child
        .sup
        .send(&SupervisorMessage::Cancel {
            job: JobId(1),
            reason: CancelReason::Timeout,
        })
        .await;
    // wait_for_cancel fails naming any cause but the signal.
    assert_eq!(
        child.sup.recv("result").await,
        WorkerMessage::Failed {
            job: JobId(1),
            error: "tripped by Some(Message(Timeout))".into()
        }
    );
    child.sup.send(&SupervisorMessage::Shutdown).await;
    let status = child.exit_status("worker exit after shutdown").await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}
