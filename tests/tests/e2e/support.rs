//! What every test uses: bounded waits, the per-test marker and the survivor check, fixture
//! commands, readiness over progress reports, FIFOs for plain programs, process inspection.
//!
//! Every test is `e2e(name, |t| async move { .. })`. It gives the body a [`Ctx`] whose marker
//! (`WARDEN_TEST_MARKER=<unique>`) is set on every process the test spawns and inherited by
//! their descendants; after the body, [`e2e`] scans `/proc/*/environ` for it, kills what it
//! finds by pid, and fails the test if it found anything. A test therefore ends with its
//! workers shut down (or already gone): a worker handle dropped at the end of the body is still
//! being shut down in the background when the check runs, and counts as a survivor.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use warden::{
    CancellationToken, Command, Deadlines, ExitStatus, JobOptions, JobReport, Progress, SpawnError,
    Worker, WorkerConfig,
};
use warden_tests::{MARKER_VAR, READY, parse_ready};

/// The fixture worker binary.
pub const FIXTURE: &str = env!("CARGO_BIN_EXE_fixture-worker");

/// Bound on any single wait (a report, a readiness message, a process vanishing).
pub const LIMIT: Duration = Duration::from_secs(20);

/// Bound on a whole test body.
pub const TEST_LIMIT: Duration = Duration::from_secs(120);

/// Added to the deadlines when a test checks that something happened "in time": the lower
/// bounds are exact, the upper ones only need to catch a ladder that does not move.
pub const SLACK: Duration = Duration::from_secs(10);

/// A payload a cooperative worker never finishes on its own.
pub const WAIT: &[u8] = b"wait";

/// Milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Deadlines for a worker that stops at once when asked: no stage may ever time out, so the
/// outcome cannot depend on how fast the machine is.
pub fn patient() -> Deadlines {
    Deadlines {
        grace: Duration::from_secs(60),
        kill_after: Duration::from_secs(60),
        reap_timeout: Duration::from_secs(60),
    }
}

/// Deadlines for a worker that ignores the stages before the one a test expects to end it:
/// short for those, and 60 s after SIGKILL (which always works here).
pub fn short(grace: Duration, kill_after: Duration) -> Deadlines {
    Deadlines {
        grace,
        kill_after,
        reap_timeout: Duration::from_secs(60),
    }
}

/// A payload that makes a cooperative worker echo `data`.
pub fn echo(data: &[u8]) -> Vec<u8> {
    [warden_tests::ECHO, data].concat()
}

/// An exit by signal, as the supervisor reports it (no core: the fixtures never dump one).
pub fn by_signal(signal: Signal) -> ExitStatus {
    ExitStatus::Signal {
        signal: signal as i32,
        core_dumped: false,
    }
}

/// Awaits `fut`, failing the test with `what` if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Runs a test body on a runtime of its own, bounded by [`TEST_LIMIT`], then the survivor check.
pub fn e2e<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // The fixture calls run_if_shim first: with it as the exec shim, trees get cgroups (where
    // this machine allows) and PDEATHSIG, as under the warden CLI.
    warden::shim::use_external(env!("CARGO_BIN_EXE_fixture-worker"));
    let ctx = Ctx::new(name);
    let marker = ctx.marker.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime");
    let body = body(ctx);
    let outcome = runtime.block_on(async {
        let task = tokio::spawn(body);
        let abort = task.abort_handle();
        match tokio::time::timeout(TEST_LIMIT, task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.is_panic() => Err(e.into_panic()),
            Ok(Err(e)) => Err(Box::new(format!("{name}: the test task failed: {e}")) as _),
            Err(_) => {
                abort.abort();
                Err(Box::new(format!(
                    "{name}: the test did not finish within {TEST_LIMIT:?}"
                )) as _)
            }
        }
    });
    // Checked while the runtime still runs: the library's own drop-time cleanup must not hide
    // a worker the test forgot, or one the supervisor failed to stop.
    let survivors = reap_survivors(&marker);
    drop(runtime);
    let after_runtime = reap_survivors(&marker);
    if let Err(panic) = outcome {
        if !survivors.is_empty() || !after_runtime.is_empty() {
            eprintln!(
                "{name}: also, processes of this test outlived it (killed now): {survivors:?}; \
                 after the runtime was dropped: {after_runtime:?}"
            );
        }
        std::panic::resume_unwind(panic);
    }
    assert!(
        survivors.is_empty() && after_runtime.is_empty(),
        "{name}: processes of this test outlived it (killed now): {survivors:?}; \
         after the runtime was dropped: {after_runtime:?}"
    );
}

/// One test's context: its name and marker.
#[derive(Debug, Clone)]
pub struct Ctx {
    name: String,
    marker: String,
}

impl Ctx {
    fn new(name: &str) -> Ctx {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Ctx {
            name: name.to_owned(),
            marker: format!("{name}.{}.{n}.{nanos}", std::process::id()),
        }
    }

    /// The value of [`MARKER_VAR`] in this test's processes.
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// The fixture worker with `args`, carrying this test's marker.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(FIXTURE);
        cmd.args(args).env(MARKER_VAR, &self.marker);
        cmd
    }

    /// Spawns the fixture with `args` (bounded), failing the test if it cannot.
    pub async fn spawn(&self, args: &[&str], config: WorkerConfig) -> Worker {
        match self.try_spawn(args, config).await {
            Ok(worker) => worker,
            Err(e) => panic!("{}: spawning {args:?} failed: {e:?}", self.name),
        }
    }

    /// Spawns the fixture with `args` (bounded).
    pub async fn try_spawn(
        &self,
        args: &[&str],
        config: WorkerConfig,
    ) -> Result<Worker, SpawnError> {
        let what = format!("spawn and handshake of {args:?}");
        within(LIMIT, &what, Worker::spawn(&self.command(args), config)).await
    }

    /// A FIFO unique to this test, removed when dropped.
    pub fn fifo(&self) -> Fifo {
        let path = std::env::temp_dir().join(format!("warden-e2e-{}.fifo", self.marker));
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        Fifo { path }
    }

    /// Waits until `pid` no longer runs as one of this test's processes.
    pub async fn wait_gone(&self, pid: u32, what: &str) {
        let what = format!("{what} (pid {pid}) to be gone");
        within(LIMIT, &what, async {
            while is_alive(pid, &self.marker) {
                tokio::time::sleep(ms(5)).await;
            }
        })
        .await;
    }

    /// Waits until our child `pid` is reaped: no process has that pid any more (or, should it
    /// have been recycled already, the one that has it is not ours).
    pub async fn wait_reaped(&self, pid: u32, what: &str) {
        let what = format!("{what} (pid {pid}) to be reaped");
        within(LIMIT, &what, async {
            while self.is_unreaped(pid) {
                tokio::time::sleep(ms(5)).await;
            }
        })
        .await;
    }

    /// Waits (bounded) until some process carries this test's marker and returns its pid.
    pub async fn find_marked(&self, what: &str) -> u32 {
        within(LIMIT, what, async {
            loop {
                if let Some(&pid) = marked(&self.marker).first() {
                    return pid;
                }
                tokio::time::sleep(ms(1)).await;
            }
        })
        .await
    }

    /// Waits (bounded) until no process carries this test's marker any more (processes that
    /// are not our children, such as a dead host's cgroup guard, can only be watched).
    pub async fn wait_none_marked(&self, what: &str) {
        within(LIMIT, what, async {
            while !marked(&self.marker).is_empty() {
                tokio::time::sleep(ms(5)).await;
            }
        })
        .await;
    }

    /// A file of this test in the temp directory with `contents` and permission `mode`,
    /// removed when dropped.
    pub fn file(&self, name: &str, contents: &str, mode: u32) -> TempFile {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("warden-e2e-{}-{name}", self.marker));
        std::fs::write(&path, contents).expect("write a temp file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        TempFile { path }
    }

    /// Whether `pid` is one of this test's processes, alive, exiting or a zombie. The
    /// environment of an exiting process or a zombie cannot be read, so any process with that
    /// pid that is exiting or a zombie counts.
    pub fn is_unreaped(&self, pid: u32) -> bool {
        proc_state(pid)
            .is_some_and(|s| matches!(s, 'Z' | 'X') || dying(pid) || has_marker(pid, &self.marker))
    }

    /// Whether our own child `pid` (a worker whose handle we hold, so unreaped and pinned) runs
    /// and is not a zombie. Unlike `wait_gone` it does not read the
    /// environment, which is briefly empty while a freshly spawned program is still in `execve`.
    pub fn is_running(&self, pid: u32) -> bool {
        !matches!(proc_state(pid), None | Some('Z' | 'X'))
    }
}

/// Runs a job and waits (bounded) for its report, failing on `Err`.
pub async fn run_job(
    worker: &Worker,
    payload: impl Into<Vec<u8>>,
    options: JobOptions,
) -> JobReport {
    within(
        LIMIT,
        "the job's report",
        worker.run(payload.into(), options),
    )
    .await
    .expect("run returned an error")
}

/// Shuts `worker` down and waits (bounded) until it is reaped.
pub async fn shutdown(worker: Worker) -> Option<ExitStatus> {
    within(LIMIT, "the worker's shutdown", worker.shutdown()).await
}

/// Progress reports of one job, forwarded from the callback.
pub struct Watch {
    rx: mpsc::UnboundedReceiver<Progress>,
}

/// Runs a job that waits to be cancelled ([`WAIT`]) with `options`, cancels its token once the
/// worker reports that it is ready, and returns the report.
pub async fn cancel_when_ready(worker: &Worker, options: JobOptions) -> JobReport {
    let token = CancellationToken::new();
    let (options, mut progress) = watch(options.token(token.clone()));
    let (report, ()) = tokio::join!(run_job(worker, WAIT, options), async {
        progress.ready().await;
        token.cancel();
    });
    report
}

/// Adds a progress callback to `options` that forwards every report to the returned [`Watch`].
pub fn watch(options: JobOptions) -> (JobOptions, Watch) {
    let (tx, rx) = mpsc::unbounded_channel();
    let options = options.on_progress(move |p| {
        let _ = tx.send(p);
    });
    (options, Watch { rx })
}

impl Watch {
    /// The next report (bounded).
    pub async fn next(&mut self, what: &str) -> Progress {
        within(LIMIT, what, self.rx.recv())
            .await
            .unwrap_or_else(|| panic!("the progress callback was dropped while waiting for {what}"))
    }

    /// Waits for the worker's readiness report and returns the pids it names.
    pub async fn ready(&mut self) -> Vec<u32> {
        let progress = self.next("the worker's ready report").await;
        let text = progress.text.unwrap_or_default();
        parse_ready(&text).unwrap_or_else(|| panic!("expected {READY:?}, got {text:?}"))
    }

    /// Everything reported so far and not yet taken.
    pub fn drain(&mut self) -> Vec<Progress> {
        std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
    }
}

/// A file in the temp directory, removed when dropped.
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A FIFO in the temp directory: how a plain program tells a test it is ready.
pub struct Fifo {
    path: PathBuf,
}

impl Fifo {
    /// The path as a string argument.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("temp dir path is UTF-8")
    }

    /// Waits (bounded) for one line written to the FIFO.
    pub async fn line(&self, what: &str) -> String {
        // Opened read-write so that it never reports EOF before the writer shows up.
        let receiver = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&self.path)
            .expect("open the FIFO");
        let mut line = String::new();
        within(LIMIT, what, BufReader::new(receiver).read_line(&mut line))
            .await
            .expect("read the FIFO");
        line.trim_end().to_owned()
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The state letter of `pid` from `/proc/<pid>/stat` (R, S, D, T, Z...).
pub fn proc_state(pid: u32) -> Option<char> {
    stat_fields(pid).and_then(|f| f.first().and_then(|s| s.chars().next()))
}

/// Waits (bounded) until `pid` is stopped (state T).
pub async fn wait_stopped(pid: u32) {
    within(LIMIT, "the worker to be stopped", async {
        while proc_state(pid) != Some('T') {
            tokio::time::sleep(ms(1)).await;
        }
    })
    .await;
}

/// The fields of `/proc/<pid>/stat` after the command name: state is the first.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    Some(after_comm.split_whitespace().map(str::to_owned).collect())
}

fn has_marker(pid: u32, marker: &str) -> bool {
    let needle = format!("{MARKER_VAR}={marker}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
}

/// Alive and ours: carries the marker and is not a zombie. A pid recycled by an unrelated
/// process does not count.
fn is_alive(pid: u32, marker: &str) -> bool {
    !matches!(proc_state(pid), None | Some('Z' | 'X')) && has_marker(pid, marker)
}

/// Every process whose environment holds the marker (zombies have no readable environment).
fn marked(marker: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| has_marker(pid, marker))
        .collect()
}

/// Already on its way out: exiting (PF_EXITING) or with a SIGKILL pending.
fn dying(pid: u32) -> bool {
    const PF_EXITING: u64 = 0x4;
    // flags is field 9 of stat, the 7th after the command name.
    let exiting = stat_fields(pid)
        .and_then(|f| f.get(6)?.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_EXITING != 0);
    let sigkill = 1u64 << (Signal::SIGKILL as u32 - 1);
    let kill_pending = std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .filter_map(|l| {
                l.strip_prefix("SigPnd:")
                    .or_else(|| l.strip_prefix("ShdPnd:"))
            })
            .filter_map(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .any(|mask| mask & sigkill != 0)
    });
    exiting || kill_pending
}

fn describe(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .trim_end()
                .to_owned()
        })
        .unwrap_or_default();
    format!("pid {pid} ({cmdline}) state {:?}", proc_state(pid))
}

/// Finds the processes carrying `marker`, kills the survivors by pid and describes them.
///
/// A process already dying (SIGKILL pending, or exiting) gets up to 5 s to finish; any other
/// gets 250 ms (a SIGKILL being delivered can be missed by one look at `/proc`) and is then a
/// survivor.
fn reap_survivors(marker: &str) -> Vec<String> {
    let start = Instant::now();
    let mut first_seen: HashMap<u32, Instant> = HashMap::new();
    let mut killed: HashSet<u32> = HashSet::new();
    let mut survivors = Vec::new();
    loop {
        let found = marked(marker);
        if found.is_empty() {
            return survivors;
        }
        let now = Instant::now();
        for pid in found {
            let seen = *first_seen.entry(pid).or_insert(now);
            let patience = if dying(pid) { ms(5000) } else { ms(250) };
            if now.duration_since(seen) >= patience && killed.insert(pid) {
                survivors.push(describe(pid));
                // Checked again just before the kill: only a process that still carries the
                // marker is signalled, never a recycled pid.
                if has_marker(pid, marker) {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            survivors.push(format!("still present after SIGKILL: {:?}", marked(marker)));
            return survivors;
        }
        std::thread::sleep(ms(5));
    }
}

/// A cgroup v1 freezer group of its own: a frozen process does not act on SIGKILL until it is
/// thawed, which is how a test makes a worker outlive SIGKILL. Thawed and removed when dropped.
pub struct Freezer {
    dir: PathBuf,
}

impl Freezer {
    /// Creates the group; `None` (with the reason) where there is no writable v1 freezer.
    pub fn new(t: &Ctx) -> Result<Freezer, String> {
        let root = Path::new("/sys/fs/cgroup/freezer");
        if !root.join("cgroup.procs").exists() {
            return Err(format!("no cgroup v1 freezer at {}", root.display()));
        }
        let dir = root.join(format!("warden-e2e-{}", t.marker()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Freezer { dir })
    }

    /// Moves `pid` into the group.
    pub fn adopt(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .expect("move into the freezer");
    }

    /// Freezes the group and waits (bounded) until the kernel says it is frozen.
    pub async fn freeze(&self) {
        self.set("FROZEN");
        within(LIMIT, "the freezer group to be frozen", async {
            while self.state() != "FROZEN" {
                tokio::time::sleep(ms(1)).await;
            }
        })
        .await;
    }

    /// Thaws the group.
    pub fn thaw(&self) {
        self.set("THAWED");
    }

    fn set(&self, state: &str) {
        std::fs::write(self.dir.join("freezer.state"), state).expect("write freezer.state");
    }

    fn state(&self) -> String {
        std::fs::read_to_string(self.dir.join("freezer.state"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("freezer.state"), "THAWED");
        // The tests reap their process before dropping this, but the kernel lets go of a
        // reaped task's cgroup a moment later (EBUSY until then; 4 directories were left in a
        // dozen runs): bounded retries.
        let deadline = Instant::now() + LIMIT;
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(ms(5));
        }
    }
}
