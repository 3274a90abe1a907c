//! Scenario: a plugin host that does not trust its plugins. It runs every attack of
//! `hostile-worker` (`warden_examples::hostile::Attack`), each in a worker of its own, under
//! warden's limits and sandbox, and prints one row per attack (`Attack::describe` says what
//! each tries): how the job ended, what blocked it and how (the limit and the mechanism that enforced it, the
//! sandbox feature, or the protocol violation, all from warden's `JobReport`), the plugin's
//! own view of its attempt, and the verdict.
//!
//! Every worker gets the same treatment, as a host would give any plugin:
//!
//! - limits: memory 64 MiB, CPU time 1 s, 32 open files, 8 processes (the process limit only
//!   where warden can make it a tree limit or for the fork attack: see [`limits_for`]), best
//!   effort, so that a host lacking a mechanism still runs and the row says so;
//! - the sandbox: the filesystem read-only but for one scratch directory (also the plugin's
//!   working directory), no TCP, no abstract sockets or signals outside its tree, the seccomp
//!   deny-list, fds 0, 1, 2 and the channel only, best effort too;
//! - an environment of exactly the `--env K=V` given to the host (and what warden adds);
//! - stdout to `/dev/null` (this example does not capture output), a 300 ms frame timeout,
//!   and a 20 s job timeout as a backstop, so that an attack nothing stopped still ends.
//!
//! Usage: `plugin-host [--env K=V]... [--unconfined] [ATTACK]...` (no attack: all of them;
//! `--list` names them and what each tries;
//! `--unconfined` drops the limits and the sandbox, to see what the attacks do without them:
//! every one that got through is then not contained). Exit status 0
//! when every attack was contained, or not enforceable on this host (said in its row); 1
//! naming the attacks that were not contained, or if a worker's process group or a cgroup leaf
//! outlived its worker; 2 for bad arguments.
//!
//! Run with `cargo run -p warden-examples --bin plugin-host` (as root for cgroup limits). The
//! plugins are this executable started in the `hostile-worker` role (`warden_examples::
//! workers`): `cargo run --bin plugin-host` builds only this binary.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warden::{
    Deadlines, JobOptions, JobReport, LimitKind, Limits, Mechanism, Outcome, Sandbox,
    SandboxFeature, Stdio, TreeOptions, Violation, Worker, WorkerConfig,
};
use warden_examples::hostile::Attack;
use warden_examples::{BoxError, Table, cgroups, within, workers};
use warden_protocol::DecodeError;

/// Memory for each plugin's tree.
const MEMORY: u64 = 64 << 20;
/// CPU time for each plugin process.
const CPU_TIME: Duration = Duration::from_secs(1);
/// Open descriptors for each plugin process.
const OPEN_FILES: u64 = 32;
/// Processes (and threads) in each plugin's tree.
const PROCESSES: u64 = 8;
/// How long part of a frame may wait for the rest.
const FRAME_TIMEOUT: Duration = Duration::from_millis(300);
/// The job timeout: only an attack that nothing else stopped reaches it.
const BACKSTOP: Duration = Duration::from_secs(20);
/// Short deadlines: a plugin that ignores its cancel gets SIGKILL soon.
const DEADLINES: Deadlines = Deadlines {
    grace: Duration::from_millis(200),
    kill_after: Duration::from_millis(200),
    reap_timeout: Duration::from_secs(5),
};
/// Bound on what the kernel and warden's cleanup still do after a worker was reaped.
const SETTLE: Duration = Duration::from_secs(5);
/// Bound on a spawn, a job (beyond its backstop) and a shutdown.
const WAIT: Duration = Duration::from_secs(40);

/// Writes `text` to stdout, ignoring errors: a closed pipe must not kill the host.
fn out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Writes `text` and a newline to stderr, ignoring errors.
fn err(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// What the host prepared for the attacks: the scratch directory, the targets the attacks aim
/// at (which would work without the sandbox), and the plugin's environment.
struct Setup {
    /// Removed, with everything in it, when dropped.
    scratch: PathBuf,
    /// The one directory a plugin may write (and its working directory).
    writable: PathBuf,
    /// A path outside it, which the write attack aims at.
    outside: PathBuf,
    tcp: TcpListener,
    abstract_socket: Option<(UnixListener, String)>,
    /// `--env` variables, passed to every plugin; the only environment it gets.
    env: Vec<(String, String)>,
    root: bool,
    /// `--unconfined`: no limits, no sandbox.
    unconfined: bool,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

impl Setup {
    fn new(env: Vec<(String, String)>, unconfined: bool) -> Result<Setup, BoxError> {
        let scratch =
            std::env::temp_dir().join(format!("warden-plugin-host-{}", std::process::id()));
        std::fs::create_dir(&scratch)?;
        let writable = scratch.join("writable");
        let outside = scratch.join("outside.txt");
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        // Non-blocking, so that the host can look for a connection without waiting.
        tcp.set_nonblocking(true)?;
        let mut setup = Setup {
            scratch,
            writable,
            outside,
            tcp,
            abstract_socket: None,
            env,
            root: warden_examples::running_as_root(),
            unconfined,
        };
        std::fs::create_dir(&setup.writable)?;
        setup.abstract_socket = abstract_listener()?;
        Ok(setup)
    }

    /// Whether a plugin got a connection in (the listener has one waiting), taking it.
    fn tcp_connected(&self) -> bool {
        self.tcp.accept().is_ok()
    }

    fn abstract_connected(&self) -> bool {
        self.abstract_socket
            .as_ref()
            .is_some_and(|(l, _)| l.accept().is_ok())
    }
}

#[cfg(target_os = "linux")]
fn abstract_listener() -> Result<Option<(UnixListener, String)>, BoxError> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("warden-plugin-host-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name)?;
    let listener = UnixListener::bind_addr(&addr)?;
    listener.set_nonblocking(true)?;
    Ok(Some((listener, name)))
}

#[cfg(not(target_os = "linux"))]
fn abstract_listener() -> Result<Option<(UnixListener, String)>, BoxError> {
    Ok(None)
}

/// The limits of the plugin running `attack`. The process limit needs a cgroup to bind root
/// and is `RLIMIT_NPROC` otherwise, which counts *every* process of the user: a plugin of a
/// non-root host with more than 8 processes could not even start its threads. So it is asked
/// for everywhere as root, and only for the fork attack otherwise.
fn limits_for(attack: Attack, root: bool) -> Limits {
    let limits = Limits::new()
        .memory(MEMORY)
        .cpu_time(CPU_TIME)
        .open_files(OPEN_FILES)
        .best_effort(true);
    if root || attack == Attack::Fork {
        limits.processes(PROCESSES)
    } else {
        limits
    }
}

fn sandbox(setup: &Setup) -> Sandbox {
    Sandbox::new()
        .allow_write(&setup.writable)
        .no_network(true)
        .best_effort(true)
}

/// The attack's arguments: the targets it aims at.
fn attack_args(attack: Attack, setup: &Setup) -> Vec<String> {
    match attack {
        Attack::WriteOutside => vec![
            setup.writable.join("inside.txt").display().to_string(),
            setup.outside.display().to_string(),
        ],
        Attack::TcpConnect => vec![
            setup
                .tcp
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string()),
        ],
        Attack::AbstractSocket => vec![
            setup
                .abstract_socket
                .as_ref()
                .map_or("none".to_owned(), |(_, name)| name.clone()),
        ],
        Attack::SignalHost => vec![std::process::id().to_string()],
        _ => Vec::new(),
    }
}

/// What the host saw of one attack.
struct Seen {
    report: JobReport,
    /// Progress reports delivered, and the latest text: a killed plugin's last words.
    progress: (u64, Option<String>),
    /// This process's resident set growth across the job, in KiB.
    rss_growth_kib: i64,
}

/// How an attack went.
enum Verdict {
    /// Stopped, refused or absorbed as expected.
    Contained,
    /// What would stop it (named) is not available on this host (best effort): said, never
    /// silent.
    NotEnforced(String),
    /// It got through, or ended in an unexpected way.
    NotContained(String),
}

impl Verdict {
    fn text(&self) -> String {
        match self {
            Verdict::Contained => "contained".into(),
            Verdict::NotEnforced(what) => {
                format!("not enforced here ({what} unavailable; best effort)")
            }
            Verdict::NotContained(why) => format!("NOT CONTAINED: {why}"),
        }
    }
}

struct Row {
    attack: Attack,
    outcome: String,
    blocked: String,
    says: String,
    verdict: Verdict,
    /// The worker's pid (its process group), once spawned.
    pid: Option<u32>,
}

/// Runs `attack` in a worker of its own and judges it.
async fn run_attack(attack: Attack, setup: &Setup) -> Row {
    let failed = |outcome: String, why: String| Row {
        attack,
        outcome,
        blocked: "-".into(),
        says: "-".into(),
        verdict: Verdict::NotContained(why),
        pid: None,
    };
    let mut cmd = match workers::command("hostile-worker") {
        Ok(cmd) => cmd,
        Err(e) => return failed("not started".into(), e.to_string()),
    };
    cmd.arg(attack.name()).args(attack_args(attack, setup));
    cmd.env_clear();
    for (k, v) in &setup.env {
        cmd.env(k, v);
    }
    cmd.current_dir(&setup.writable).stdout(Stdio::Null);

    // Unconfined: no limits and no sandbox (the environment is still cleared), to show what
    // the attacks do without them.
    let tree = if setup.unconfined {
        TreeOptions::new()
    } else {
        TreeOptions::new()
            .limits(limits_for(attack, setup.root))
            .sandbox(sandbox(setup))
    };
    let mut config = WorkerConfig::protocol().deadlines(DEADLINES).tree(tree);
    config.frame_timeout = FRAME_TIMEOUT;
    let worker = match within(WAIT, "the plugin's spawn", Worker::spawn(&cmd, config)).await {
        Ok(Ok(worker)) => worker,
        Ok(Err(e)) => return failed("spawn failed".into(), e.to_string()),
        Err(e) => return failed("spawn failed".into(), e.to_string()),
    };
    let pid = worker.pid();

    let progress = Arc::new(Mutex::new((0u64, None::<String>)));
    let options = {
        let progress = Arc::clone(&progress);
        JobOptions::new().timeout(BACKSTOP).on_progress(move |p| {
            let mut seen = progress.lock().unwrap_or_else(|e| e.into_inner());
            seen.0 += 1;
            if p.text.is_some() {
                seen.1 = p.text;
            }
        })
    };
    let before = rss_kib();
    let result = within(WAIT, "the plugin's report", worker.run(Vec::new(), options)).await;
    let rss_growth_kib = rss_kib() - before;
    // Shut down (bounded) whatever happened: the tree is killed and reaped.
    let _ = within(WAIT, "the plugin's shutdown", worker.shutdown()).await;
    let report = match result {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            return Row {
                pid: Some(pid),
                ..failed("run failed".into(), e.to_string())
            };
        }
        Err(e) => {
            return Row {
                pid: Some(pid),
                ..failed("no report".into(), e.to_string())
            };
        }
    };
    let progress = progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let seen = Seen {
        report,
        progress,
        rss_growth_kib,
    };
    let (blocked, mut verdict) = judge(attack, &seen, setup);
    if let (true, Verdict::NotEnforced(what)) = (setup.unconfined, &verdict) {
        // Not the host's lack: this run chose to enforce nothing.
        verdict = Verdict::NotContained(format!("unconfined run, no {what}"));
    }
    Row {
        attack,
        outcome: outcome_text(&seen.report),
        blocked,
        says: says(attack, &seen),
        verdict,
        pid: Some(pid),
    }
}

/// This process's resident set, in KiB (0 where it cannot be read).
fn rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn outcome_text(report: &JobReport) -> String {
    let signal = report
        .exit
        .and_then(|e| e.signal())
        .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
        .map(|s| format!(" ({})", s.as_str()));
    let reason = report.reason.map(|r| format!(" [{r}]"));
    format!(
        "{}{}{}",
        report.outcome.name(),
        signal.unwrap_or_default(),
        reason.unwrap_or_default()
    )
}

/// The plugin's own words: its result or error, else its last progress report.
fn says(attack: Attack, seen: &Seen) -> String {
    if attack.is_channel_attack() && attack != Attack::ProgressFlood {
        return "- (speaks only frames)".into();
    }
    match &seen.report.outcome {
        Outcome::Completed(output) | Outcome::CompletedDespiteCancel(output) => {
            String::from_utf8_lossy(output).into_owned()
        }
        Outcome::Failed(failure) => format!("error: {failure}"),
        _ => match &seen.progress.1 {
            Some(text) => format!("last words: {text}"),
            None => "-".into(),
        },
    }
}

fn result_text(report: &JobReport) -> Option<String> {
    match &report.outcome {
        Outcome::Completed(output) => Some(String::from_utf8_lossy(output).into_owned()),
        _ => None,
    }
}

/// A limit as the report has it: `memory 64 MiB by cgroup_v1: hit, 1 OOM kill, peak 64 MiB`;
/// and whether anything enforced it.
fn limit_text(report: &JobReport, kind: LimitKind) -> (String, bool) {
    let Some(e) = report.limits.get(kind) else {
        return (format!("{kind}: not asked for"), false);
    };
    let mib = |b: u64| format!("{} MiB", b >> 20);
    let value = match kind {
        LimitKind::Memory => mib(e.value),
        LimitKind::CpuTime => format!("{} ms", e.value),
        _ => e.value.to_string(),
    };
    let mut text = format!("{kind} {value} by {}", e.mechanism);
    if e.mechanism == Mechanism::None {
        return (text, false);
    }
    let mut facts = Vec::new();
    match e.hit {
        Some(true) => facts.push("hit".to_owned()),
        Some(false) => facts.push("not hit".to_owned()),
        None => {}
    }
    if let Some(n) = e.oom_kills.filter(|n| *n > 0) {
        facts.push(format!("{n} OOM kill{}", if n == 1 { "" } else { "s" }));
    }
    if let Some(peak) = e.peak {
        facts.push(match kind {
            LimitKind::Memory => format!("peak {}", mib(peak)),
            _ => format!("peak {peak}"),
        });
    }
    if !facts.is_empty() {
        text.push_str(": ");
        text.push_str(&facts.join(", "));
    }
    (text, true)
}

/// A sandbox feature as the report has it, and whether it was applied.
fn feature_text(report: &JobReport, feature: SandboxFeature) -> (String, bool) {
    match report.limits.sandbox.iter().find(|e| e.feature == feature) {
        Some(e) if e.enforced => (format!("sandbox {feature}"), true),
        Some(_) => (format!("sandbox {feature}: not available"), false),
        None => (format!("sandbox {feature}: not asked for"), false),
    }
}

fn violation_text(v: &Violation) -> String {
    match std::error::Error::source(v) {
        Some(source) => format!("violation: {v}: {source}"),
        None => format!("violation: {v}"),
    }
}

/// The verdict on `attack` from what the host saw, and what blocked it.
fn judge(attack: Attack, seen: &Seen, setup: &Setup) -> (String, Verdict) {
    let report = &seen.report;
    let result = result_text(report);
    let text = result.as_deref().unwrap_or_default();
    // The common shape: `enforced` says whether the host had what blocks the attack, `ok`
    // whether the attack was stopped; `why` what happened instead.
    let verdict = |enforced: bool, ok: bool, what: &str, why: &str| {
        if ok {
            Verdict::Contained
        } else if !enforced {
            Verdict::NotEnforced(what.to_owned())
        } else {
            Verdict::NotContained(why.to_owned())
        }
    };
    let unexpected = format!("ended {}", outcome_text(report));
    match attack {
        Attack::Alloc => {
            let (blocked, enforced) = limit_text(report, LimitKind::Memory);
            let killed =
                report.outcome == Outcome::Killed && report.limit == Some(LimitKind::Memory);
            let refused = text.starts_with("allocation #");
            (
                blocked,
                verdict(enforced, killed || refused, "memory limit", &unexpected),
            )
        }
        Attack::Spin => {
            let (blocked, enforced) = limit_text(report, LimitKind::CpuTime);
            let ok = report.outcome == Outcome::Killed && report.limit == Some(LimitKind::CpuTime);
            let why = if report.reason == Some(warden::CancelReason::Timeout) {
                "only the host's job timeout stopped it".to_owned()
            } else {
                unexpected
            };
            (blocked, verdict(enforced, ok, "CPU-time limit", &why))
        }
        Attack::Files => {
            let (blocked, enforced) = limit_text(report, LimitKind::OpenFiles);
            let ok = text.starts_with("open #") && text.ends_with("EMFILE");
            (
                blocked,
                verdict(
                    enforced,
                    ok,
                    "open-files limit",
                    &format!("{unexpected}: {text}"),
                ),
            )
        }
        Attack::Fork => {
            let (blocked, enforced) = limit_text(report, LimitKind::Processes);
            let ok = text.starts_with("fork #");
            (
                blocked,
                verdict(
                    enforced,
                    ok,
                    "process limit",
                    &format!("{unexpected}: {text}"),
                ),
            )
        }
        Attack::WriteOutside => {
            let (blocked, enforced) = feature_text(report, SandboxFeature::LandlockFs);
            let written = setup.outside.exists();
            let ok = text.starts_with("inside: written;")
                && !text.ends_with("outside: written")
                && !written;
            (
                blocked,
                verdict(enforced, ok, "Landlock", &format!("{unexpected}: {text}")),
            )
        }
        Attack::TcpConnect => {
            let (blocked, enforced) = feature_text(report, SandboxFeature::LandlockNet);
            let connected = setup.tcp_connected();
            let ok = result.is_some() && !text.ends_with(": connected") && !connected;
            (
                blocked,
                verdict(
                    enforced,
                    ok,
                    "Landlock ABI 4",
                    &format!("{unexpected}: {text}"),
                ),
            )
        }
        Attack::AbstractSocket => {
            let (blocked, enforced) = feature_text(report, SandboxFeature::ScopeAbstractSockets);
            let connected = setup.abstract_connected();
            let ok = result.is_some() && !text.ends_with(": connected") && !connected;
            (
                blocked,
                verdict(
                    enforced,
                    ok,
                    "Landlock ABI 6",
                    &format!("{unexpected}: {text}"),
                ),
            )
        }
        Attack::SignalHost => {
            let (blocked, enforced) = feature_text(report, SandboxFeature::ScopeSignals);
            let ok = result.is_some() && !text.ends_with(": delivered");
            (
                blocked,
                verdict(
                    enforced,
                    ok,
                    "Landlock ABI 6",
                    &format!("{unexpected}: {text}"),
                ),
            )
        }
        Attack::Syscalls => {
            let (blocked, enforced) = feature_text(report, SandboxFeature::Seccomp);
            let ok = !text.is_empty() && text.split(", ").all(|call| call.ends_with(": EPERM"));
            (
                blocked,
                verdict(enforced, ok, "seccomp", &format!("{unexpected}: {text}")),
            )
        }
        Attack::FdsEnv => {
            let (fds, enforced) = feature_text(report, SandboxFeature::CloseFds);
            let blocked = format!("{fds}; environment cleared (Command::env_clear)");
            // Exactly what the host gave, and what warden adds.
            let allowed: BTreeSet<&str> = setup
                .env
                .iter()
                .map(|(k, _)| k.as_str())
                .chain(["WARDEN_FD", "WARDEN_TREE"])
                .collect();
            let (seen_fds, seen_env) = text
                .strip_prefix("fds ")
                .and_then(|rest| rest.split_once("; env "))
                .unwrap_or(("?", "?"));
            let env_ok = seen_env
                .split(',')
                .filter(|n| !n.is_empty())
                .all(|n| allowed.contains(n));
            let ok = seen_fds == "0,1,2,3" && env_ok;
            (
                blocked,
                verdict(enforced, ok, "fd closing", &format!("{unexpected}: {text}")),
            )
        }
        Attack::StdoutFlood => {
            let blocked = format!(
                "nothing needed: stdout is /dev/null (no capture here); host RSS {:+} KiB",
                seen.rss_growth_kib
            );
            let ok = text.starts_with("wrote ");
            (blocked, verdict(true, ok, "", &unexpected))
        }
        Attack::ProgressFlood => {
            let sent: Option<u64> = text
                .strip_prefix("sent ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok());
            let delivered = seen.progress.0;
            let blocked = format!(
                "coalesced: {delivered} of {} reports delivered; host RSS {:+} KiB",
                sent.map_or("?".into(), |n| n.to_string()),
                seen.rss_growth_kib
            );
            let ok = report.violation.is_none() && sent.is_some_and(|n| delivered <= n);
            (blocked, verdict(true, ok, "", &unexpected))
        }
        Attack::GarbageFrame
        | Attack::OversizedFrame
        | Attack::HugeHeader
        | Attack::Trickle
        | Attack::ForeignResult => {
            let expected = matches!(
                (attack, &report.violation),
                (
                    Attack::GarbageFrame,
                    Some(Violation::Frame(DecodeError::UnknownTag))
                ) | (
                    Attack::OversizedFrame,
                    Some(Violation::Frame(DecodeError::Oversized { .. }))
                ) | (
                    Attack::HugeHeader,
                    Some(Violation::Frame(DecodeError::Oversized {
                        len: u32::MAX,
                        ..
                    })),
                ) | (Attack::Trickle, Some(Violation::StalledFrame { .. }))
                    | (Attack::ForeignResult, Some(Violation::NotRunning { .. }))
            );
            let blocked = match &report.violation {
                Some(v) => format!(
                    "{}; host RSS {:+} KiB",
                    violation_text(v),
                    seen.rss_growth_kib
                ),
                None => "no violation reported".into(),
            };
            let ok = expected && report.outcome == Outcome::Killed;
            (blocked, verdict(true, ok, "", &unexpected))
        }
    }
}

/// Polls `leftovers` until it finds nothing or `limit` has passed; what it found last.
async fn gone_within<T>(limit: Duration, leftovers: impl Fn() -> Vec<T>) -> Vec<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let found = leftovers();
        if found.is_empty() || tokio::time::Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `kill(-pgid, 0)`: ESRCH once nothing is left in the worker's process group (the fork
/// attack's children included: they stay in it).
fn group_is_empty(pgid: u32) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else {
        return true;
    };
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None)
        == Err(nix::errno::Errno::ESRCH)
}

struct Args {
    env: Vec<(String, String)>,
    unconfined: bool,
    attacks: Vec<Attack>,
}

fn parse_args() -> Result<Args, String> {
    let mut env = Vec::new();
    let mut attacks = Vec::new();
    let mut unconfined = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--env" {
            let kv = args.next().ok_or("--env needs K=V")?;
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--env {kv:?}: expected K=V"))?;
            env.push((k.to_owned(), v.to_owned()));
        } else if arg == "--list" {
            for attack in Attack::ALL {
                out(&format!("{:<16} {}\n", attack.name(), attack.describe()));
            }
            std::process::exit(0);
        } else if arg == "--unconfined" {
            unconfined = true;
        } else if let Some(attack) = Attack::from_name(&arg) {
            attacks.push(attack);
        } else {
            let names: Vec<&str> = Attack::ALL.iter().map(|a| a.name()).collect();
            return Err(format!(
                "unknown argument {arg:?}; expected --env K=V, --unconfined, --list or attacks of {names:?}"
            ));
        }
    }
    if attacks.is_empty() {
        attacks = Attack::ALL.to_vec();
    }
    Ok(Args {
        env,
        unconfined,
        attacks,
    })
}

async fn run(args: Args) -> Result<bool, BoxError> {
    let setup = Setup::new(args.env, args.unconfined)?;
    if setup.unconfined {
        out(
            "plugin-host: UNCONFINED run: no limits, no sandbox (the environment is still cleared)\n\n",
        );
    } else {
        out(&format!(
            "plugin-host: {} attacks, each in its own worker under: memory {} MiB, CPU time {} s, {} open files, {} ({}), best effort;\n",
            args.attacks.len(),
            MEMORY >> 20,
            CPU_TIME.as_secs(),
            OPEN_FILES,
            format_args!("{PROCESSES} processes"),
            if setup.root {
                "every attack"
            } else {
                "the fork attack only: RLIMIT_NPROC counts all of the user's processes"
            },
        ));
        out(&format!(
            "sandbox: writable {} only, no TCP, scoped, seccomp, fds 0-3, environment {:?}\n\n",
            setup.writable.display(),
            setup
                .env
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
        ));
    }

    let mut rows = Vec::new();
    for &attack in &args.attacks {
        rows.push(run_attack(attack, &setup).await);
    }

    let mut table = Table::new(["attack", "outcome", "blocked by", "plugin says", "verdict"]);
    for row in &rows {
        table.row([
            row.attack.name().to_owned(),
            row.outcome.clone(),
            row.blocked.clone(),
            row.says.clone(),
            row.verdict.text(),
        ]);
    }
    out(&table.to_string());
    out("\n");

    // Each worker's shutdown returned once it was reaped, its tree killed; what the kernel
    // still holds (a killed member's exit, a cgroup removed by warden's cleanup thread once
    // its members have left) goes within moments. Bounded.
    let pids: Vec<u32> = rows.iter().filter_map(|r| r.pid).collect();
    let leftover = gone_within(SETTLE, || {
        pids.iter()
            .copied()
            .filter(|&p| !group_is_empty(p))
            .collect::<Vec<_>>()
    })
    .await;
    let mut clean = true;
    if leftover.is_empty() {
        out(&format!(
            "processes: {} workers shut down, every process group empty\n",
            pids.len()
        ));
    } else {
        err(&format!(
            "plugin-host: process groups not empty {SETTLE:?} after shutdown: {leftover:?}"
        ));
        clean = false;
    }
    let leaves = gone_within(SETTLE, || cgroups::tree_leaves(std::process::id())).await;
    if leaves.is_empty() {
        out(
            "cgroups: no tree cgroup left (v2, v1 memory and pids; warden's guard removes the base at exit)\n",
        );
    } else {
        err(&format!(
            "plugin-host: cgroups left behind after {SETTLE:?}: {leaves:?}"
        ));
        clean = false;
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::NotContained(_)))
        .map(|r| r.attack.name())
        .collect();
    if !failed.is_empty() {
        err(&format!(
            "plugin-host: not contained: {}",
            failed.join(", ")
        ));
    }
    Ok(clean && failed.is_empty())
}

fn main() -> ExitCode {
    // This binary is warden's exec shim (limits, sandbox, cgroups, PDEATHSIG) and the plugin.
    warden::shim::run_if_shim();
    if let Some(code) = workers::run_if_worker() {
        return code;
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            err(&format!("plugin-host: {e}"));
            return ExitCode::from(2);
        }
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BoxError::from)
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            err(&format!("plugin-host: {e}"));
            ExitCode::FAILURE
        }
    }
}
