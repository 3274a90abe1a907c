//! The exec shim: setup that must happen in the child between spawn and exec, without giving up
//! the posix_spawn path (a `pre_exec` closure would force a fork of the whole supervisor).
//!
//! A binary that spawns trees calls [`run_if_shim`] first thing in `main`. Spawning then starts
//! `/proc/self/exe __warden_shim ...`; that process sets `PR_SET_PDEATHSIG` (the tree's chosen
//! signal, SIGKILL by default, when the spawning thread, which lives as long as the
//! supervisor, goes away), checks its parent is still there, joins the worker's cgroup (so not
//! even its first fork can escape), restores SIGPIPE (Rust's runtime ignores it, and an ignored
//! signal would survive exec) unless the tree asks for it ignored, and glibc's internal
//! signals 32 and 33 (its posix_spawn child leaves them ignored), sets the signals the tree
//! asks for to SIG_IGN, applies the tree's limits and sandbox (its cgroup v1 limit cgroups
//! joined with its leaf; then rlimits, closing stray descriptors, `no_new_privs`, Landlock,
//! seccomp last: see [`Limits`](crate::Limits) and [`Sandbox`](crate::Sandbox)), and execs the real program (with execvp's `/bin/sh` fallback for a
//! file without `#!`). Binaries that never call [`run_if_shim`] are spawned directly: the
//! cgroup is then joined from the supervisor right after spawn, and PDEATHSIG is not available.
//!
//! **Failure report.** The spawner gives the shim the write end of a close-on-exec pipe at
//! fd 4 (the channel, if any, is at fd 3); the shim marks it close-on-exec. If a step fails
//! (the cgroup join, the exec: a missing `#!` interpreter, ETXTBSY, EACCES...), the shim writes
//! one fixed-size record (the step and the errno) and exits; a successful exec closes the pipe,
//! so EOF with no bytes means the program is running. The spawner reads it from the async
//! runtime (never on its thread), and on a record kills and reaps the shim and returns a typed
//! [`SpawnError`](crate::SpawnError), as std's `Command` does with its own exec pipe.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicBool, Ordering};

/// argv[1] that marks a shim invocation.
pub(crate) const SHIM_ARG: &str = "__warden_shim";
/// argv[1] that marks the cgroup guard (see [`super::cgroup`]): `__warden_guard BASE_DIR`.
pub(crate) const GUARD_ARG: &str = "__warden_guard";

static SHIM_CAPABLE: AtomicBool = AtomicBool::new(false);
static EXTERNAL: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Whether a shim is available: this binary called [`run_if_shim`], or [`use_external`] named
/// another binary that does (such as `warden` itself).
pub(crate) fn available() -> bool {
    cfg!(target_os = "linux") && (SHIM_CAPABLE.load(Ordering::Relaxed) || EXTERNAL.get().is_some())
}

/// Uses `binary` (which must call [`run_if_shim`] first in its `main`, as the `warden` CLI
/// does) as the exec shim, for hosts whose own `main` cannot (test harnesses, for one).
/// The first call wins; later calls are ignored.
pub fn use_external(binary: impl Into<std::path::PathBuf>) {
    let _ = EXTERNAL.set(binary.into());
}

/// The shim executable: this binary if it can serve, else the external one.
pub(crate) fn executable() -> CString {
    if !SHIM_CAPABLE.load(Ordering::Relaxed)
        && let Some(path) = EXTERNAL.get()
        && let Ok(c) = CString::new(path.clone().into_os_string().into_vec())
    {
        return c;
    }
    c"/proc/self/exe".to_owned()
}

/// What the shim must do before exec.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShimPlan {
    /// `PR_SET_PDEATHSIG` with this signal (the spawning thread's death means the
    /// supervisor's); `None`: no death signal.
    pub death_signal: Option<libc::c_int>,
    /// Write our pid to this `cgroup.procs` before exec.
    pub cgroup_procs: Option<std::path::PathBuf>,
    /// Signals the program starts with ignored (every other one is at its default).
    pub ignored: Vec<libc::c_int>,
    /// Limits and sandbox, applied after the cgroup join.
    pub setup: Setup,
}

/// The limits and sandbox steps of the shim, in the order it applies them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Setup {
    /// More `cgroup.procs` files to join (the tree's cgroup v1 limit cgroups).
    pub cgroups: Vec<std::path::PathBuf>,
    /// `setrlimit(resource, soft, hard)`.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// Close every descriptor above the channel and the report pipe.
    pub close_fds: bool,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// A Landlock ruleset.
    pub landlock: Option<LandlockPlan>,
    /// The seccomp deny-list.
    pub seccomp: bool,
}

/// What the shim's Landlock ruleset handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LandlockPlan {
    /// The filesystem rights of this ABI are handled (1 to 3).
    pub fs_abi: i32,
    /// Directories with every filesystem right.
    pub writable: Vec<std::path::PathBuf>,
    /// TCP bind and connect are handled (denied).
    pub net: bool,
    /// Abstract-socket and signal scoping.
    pub scopes: bool,
}

impl Setup {
    /// One argv word per step (each its own word, so paths need no quoting).
    fn words(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for cg in &self.cgroups {
            let mut w = b"cg=".to_vec();
            w.extend_from_slice(cg.as_os_str().as_encoded_bytes());
            out.push(w);
        }
        for (res, soft, hard) in &self.rlimits {
            out.push(format!("rl={res},{soft},{hard}").into_bytes());
        }
        if self.close_fds {
            out.push(b"closefds".to_vec());
        }
        if self.no_new_privs {
            out.push(b"nnp".to_vec());
        }
        if let Some(ll) = &self.landlock {
            out.push(
                format!(
                    "ll={},{},{}",
                    ll.fs_abi,
                    u8::from(ll.net),
                    u8::from(ll.scopes)
                )
                .into_bytes(),
            );
            for dir in &ll.writable {
                let mut w = b"llw=".to_vec();
                w.extend_from_slice(dir.as_os_str().as_encoded_bytes());
                out.push(w);
            }
        }
        if self.seccomp {
            out.push(b"seccomp".to_vec());
        }
        out
    }

    /// Reads the words back; `None` for one this build never writes.
    fn parse(words: Vec<OsString>) -> Option<Setup> {
        let mut setup = Setup::default();
        for word in words {
            let bytes = word.into_vec();
            let (key, value) = match bytes.iter().position(|&b| b == b'=') {
                Some(i) => (&bytes[..i], &bytes[i + 1..]),
                None => (&bytes[..], &[][..]),
            };
            let path = || std::path::PathBuf::from(OsString::from_vec(value.to_vec()));
            let numbers = || -> Option<Vec<u64>> {
                std::str::from_utf8(value)
                    .ok()?
                    .split(',')
                    .map(|n| n.parse().ok())
                    .collect()
            };
            match key {
                b"cg" => setup.cgroups.push(path()),
                b"rl" => match numbers()?[..] {
                    [res, soft, hard] => setup.rlimits.push((u32::try_from(res).ok()?, soft, hard)),
                    _ => return None,
                },
                b"closefds" => setup.close_fds = true,
                b"nnp" => setup.no_new_privs = true,
                b"ll" => match numbers()?[..] {
                    [abi, net, scopes] => {
                        setup.landlock = Some(LandlockPlan {
                            fs_abi: i32::try_from(abi).ok()?,
                            writable: Vec::new(),
                            net: net == 1,
                            scopes: scopes == 1,
                        })
                    }
                    _ => return None,
                },
                b"llw" => setup.landlock.as_mut()?.writable.push(path()),
                b"seccomp" => setup.seccomp = true,
                _ => return None,
            }
        }
        Some(setup)
    }
}

impl ShimPlan {
    /// The shim's argv: `[exe, SHIM_ARG, ppid, death signal|0, cgroup.procs|-, ignored|-,
    /// N, N setup words, program path, argv...]`, `ignored` as comma-separated numbers, each
    /// setup word one step (see [`Setup`]).
    pub(crate) fn argv(&self, path: &CString, argv: &[CString]) -> Vec<CString> {
        let number = |n: i64| CString::new(n.to_string()).unwrap_or_default();
        let mut out = Vec::with_capacity(argv.len() + 7);
        out.push(c"warden-shim".to_owned());
        out.push(CString::new(SHIM_ARG).unwrap_or_default());
        out.push(number(i64::from(std::process::id())));
        out.push(number(self.death_signal.map_or(0, i64::from)));
        out.push(match &self.cgroup_procs {
            Some(p) => CString::new(p.clone().into_os_string().into_vec())
                .unwrap_or_else(|_| c"-".to_owned()),
            None => c"-".to_owned(),
        });
        out.push(if self.ignored.is_empty() {
            c"-".to_owned()
        } else {
            let list: Vec<String> = self.ignored.iter().map(ToString::to_string).collect();
            CString::new(list.join(",")).unwrap_or_default()
        });
        let words = self.setup.words();
        out.push(number(i64::try_from(words.len()).unwrap_or(0)));
        out.extend(
            words
                .into_iter()
                .map(|w| CString::new(w).unwrap_or_default()),
        );
        out.push(path.clone());
        out.extend(argv.iter().cloned());
        out
    }
}

/// The step of the shim that failed, as carried in its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The shim's own arguments made no sense (a version mismatch between supervisor and shim).
    Invocation,
    /// `PR_SET_PDEATHSIG`.
    DeathSignal,
    /// Writing `cgroup.procs`.
    JoinCgroup,
    /// Restoring SIGPIPE's default.
    ResetSignals,
    /// Setting a signal the program must start with to SIG_IGN.
    IgnoreSignals,
    /// `execve` of the program (after the `/bin/sh` fallback for ENOEXEC).
    Exec,
    /// `setrlimit`.
    SetRlimit,
    /// Closing stray descriptors.
    CloseFds,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// The Landlock ruleset.
    Landlock,
    /// The seccomp filter.
    Seccomp,
}

impl Step {
    const ALL: [Step; 11] = [
        Step::Invocation,
        Step::DeathSignal,
        Step::JoinCgroup,
        Step::ResetSignals,
        Step::IgnoreSignals,
        Step::Exec,
        Step::SetRlimit,
        Step::CloseFds,
        Step::NoNewPrivs,
        Step::Landlock,
        Step::Seccomp,
    ];

    /// The step a report's number names.
    pub(crate) fn from_code(code: u32) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The step's number in a report (never 0).
    pub(crate) fn code(self) -> u32 {
        match self {
            Step::Invocation => 1,
            Step::DeathSignal => 2,
            Step::JoinCgroup => 3,
            Step::ResetSignals => 4,
            Step::IgnoreSignals => 5,
            Step::Exec => 6,
            Step::SetRlimit => 7,
            Step::CloseFds => 8,
            Step::NoNewPrivs => 9,
            Step::Landlock => 10,
            Step::Seccomp => 11,
        }
    }
}

/// Size of the shim's failure report: the step (u32) and the errno (i32), native-endian (the
/// shim is the same build on the same machine).
pub(crate) const REPORT_LEN: usize = 8;

/// The record the shim writes on its report pipe when a step fails.
pub(crate) fn encode(step: Step, errno: i32) -> [u8; REPORT_LEN] {
    let mut out = [0u8; REPORT_LEN];
    out[..4].copy_from_slice(&step.code().to_ne_bytes());
    out[4..].copy_from_slice(&errno.to_ne_bytes());
    out
}

/// Reads a report back; `None` for bytes no shim of this build writes.
pub(crate) fn decode(bytes: &[u8]) -> Option<(Step, i32)> {
    if bytes.len() != REPORT_LEN {
        return None;
    }
    let step: [u8; 4] = bytes[..4].try_into().ok()?;
    let errno: [u8; 4] = bytes[4..].try_into().ok()?;
    let code = u32::from_ne_bytes(step);
    let step = Step::from_code(code)?;
    Some((step, i32::from_ne_bytes(errno)))
}

/// Call first thing in `main` of a binary that spawns workers or trees. When the process was
/// started as warden's exec shim it does the shim's work and execs the target program (it never
/// returns); otherwise it returns at once and records that this binary can serve as its own
/// shim, which enables PDEATHSIG and race-free cgroup placement for the trees it spawns.
///
/// The same binary also serves as warden's cgroup guard (started once per supervisor that
/// uses cgroup containment), which kills and removes the supervisor's cgroups when it dies.
pub fn run_if_shim() {
    let mut args = std::env::args_os();
    let role = args.nth(1);
    #[cfg(target_os = "linux")]
    if role.as_deref() == Some(std::ffi::OsStr::new(GUARD_ARG)) {
        let code = match args.next() {
            Some(base) => guard_main(std::path::Path::new(&base)),
            None => 125,
        };
        std::process::exit(code);
    }
    if role.as_deref() != Some(std::ffi::OsStr::new(SHIM_ARG)) {
        SHIM_CAPABLE.store(true, Ordering::Relaxed);
        return;
    }
    let rest: Vec<OsString> = args.collect();
    let code = shim_main(rest);
    std::process::exit(code);
}

/// The cgroup guard: reads orphan ladders from stdin (a socket whose only other end the
/// supervisor holds) until EOF, which means the supervisor is gone, however it ended; then
/// ends everything left under the supervisor's cgroup base (a ladder where one was asked for)
/// and removes it. Stop signals are ignored: a Ctrl-C or a
/// SIGTERM meant for the supervisor must not take its guard first.
#[cfg(target_os = "linux")]
fn guard_main(base: &std::path::Path) -> i32 {
    // The guard is started with std's `Command`, which passes on every descriptor the host
    // had not marked close-on-exec at that moment: one end of a pipe or socket the host meant
    // for a child of its own would be held open for the supervisor's whole life, and whoever
    // waits for its EOF would wait as long. The guard needs only 0 (its order socket), 1, 2.
    if let Err(e) = super::unix::close_from(3) {
        super::unix::close_listed_from(3, e);
    }
    // The name a forked guard has too: `ps` and tests find either by it.
    super::unix::set_thread_name(GUARD_NAME);
    guard_serve(base)
}

/// The name (/proc/PID/comm) of every cgroup guard, exec'd or forked.
#[cfg(target_os = "linux")]
pub(crate) const GUARD_NAME: &std::ffi::CStr = c"warden-guard";

/// The guard's life once its descriptors are 0 (the order socket), 1 and 2: ignore the stop
/// signals, read orders until EOF, then end and remove what is left. Returns its exit status.
#[cfg(target_os = "linux")]
pub(crate) fn guard_serve(base: &std::path::Path) -> i32 {
    use std::io::Read;
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGPIPE,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
    ] {
        let _ = super::unix::set_ignored(sig);
    }
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 4096];
    let mut orders = super::cgroup::GuardOrders::default();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => orders.feed(&buf[..n], base),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    super::cgroup::kill_and_remove_base(base, &orders);
    0
}

/// The shim's report pipe, inherited at [`REPORT_FD`](super::unix::REPORT_FD): written once
/// if a step fails, closed by a successful exec (it is made close-on-exec first), so the
/// spawner reads either one record or EOF.
struct Report {
    open: bool,
}

impl Report {
    fn inherited() -> Report {
        Report {
            open: super::unix::set_cloexec_raw(super::unix::REPORT_FD).is_ok(),
        }
    }

    /// Reports `step` failing with `err` and returns the shim's exit status. Without a pipe
    /// (a spawner that did not give one) the failure is told on stderr instead.
    fn fail(&self, step: Step, err: &std::io::Error, what: &std::ffi::OsStr) -> i32 {
        let errno = err.raw_os_error().unwrap_or(libc::EIO);
        let sent = self.open
            && super::unix::write_raw(super::unix::REPORT_FD, &encode(step, errno)).is_ok();
        if !sent {
            shim_say(format_args!(
                "warden: {}: {step:?}: {err}",
                what.to_string_lossy()
            ));
        }
        match (step, errno) {
            (Step::Exec, libc::ENOENT) => 127,
            (Step::Exec, _) => 126,
            _ => 125,
        }
    }
}

fn shim_main(args: Vec<OsString>) -> i32 {
    let report = Report::inherited();
    let invalid = || std::io::Error::from_raw_os_error(libc::EINVAL);
    // [ppid, death signal|0, cgroup.procs|-, ignored|-, N, N words, path, argv0, args...]
    if args.len() < 7 {
        return report.fail(Step::Invocation, &invalid(), std::ffi::OsStr::new("shim"));
    }
    let mut it = args.into_iter();
    let number = |s: Option<OsString>| -> Option<i32> { s?.to_str()?.parse().ok() };
    let ppid = number(it.next());
    let death_signal = number(it.next());
    let cgroup = it.next().filter(|s| s != "-");
    let ignored: Option<Vec<i32>> = it.next().and_then(|s| {
        if s == "-" {
            return Some(Vec::new());
        }
        s.to_str()?.split(',').map(|n| n.parse().ok()).collect()
    });
    let count = number(it.next()).and_then(|n| usize::try_from(n).ok());
    let setup = count.and_then(|n| Setup::parse(it.by_ref().take(n).collect()));
    let Some(path) = it.next() else {
        return report.fail(Step::Invocation, &invalid(), std::ffi::OsStr::new("shim"));
    };
    let (Some(ppid), Some(death_signal), Some(ignored), Some(setup)) =
        (ppid, death_signal, ignored, setup)
    else {
        return report.fail(Step::Invocation, &invalid(), &path);
    };
    let argv: Vec<OsString> = it.collect();

    #[cfg(target_os = "linux")]
    if death_signal != 0 {
        if let Err(e) = super::unix::set_parent_death_signal(death_signal) {
            return report.fail(Step::DeathSignal, &e, &path);
        }
        // The supervisor may have died before the line above: then nobody would signal us.
        // Nobody reads a report either.
        if nix::unistd::getppid().as_raw() != ppid {
            return 137;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (death_signal, ppid);
    if let Some(procs) = cgroup
        && let Err(e) = std::fs::write(&procs, b"0\n")
    {
        return report.fail(Step::JoinCgroup, &e, &path);
    }
    for procs in &setup.cgroups {
        if let Err(e) = std::fs::write(procs, b"0\n") {
            return report.fail(Step::JoinCgroup, &e, &path);
        }
    }
    // Rust's runtime ignores SIGPIPE in the shim, and an ignored signal survives exec: put it
    // back unless the program must start with it ignored; so for glibc's internal signals,
    // which its posix_spawn left ignored. Everything else is at its default already
    // (posix_spawn's SETSIGDEF); handlers never survive exec.
    if let Err(e) = super::unix::reset_internal_signals() {
        return report.fail(Step::ResetSignals, &e, &path);
    }
    if !ignored.contains(&libc::SIGPIPE)
        && let Err(e) = super::unix::reset_signal_default(libc::SIGPIPE)
    {
        return report.fail(Step::ResetSignals, &e, &path);
    }
    for &sig in &ignored {
        if let Err(e) = super::unix::set_ignored(sig) {
            return report.fail(Step::IgnoreSignals, &e, &path);
        }
    }
    #[cfg(target_os = "linux")]
    if let Err((step, e)) = confine(&setup) {
        return report.fail(step, &e, &path);
    }
    #[cfg(not(target_os = "linux"))]
    if setup != Setup::default() {
        return report.fail(
            Step::SetRlimit,
            &std::io::Error::from(std::io::ErrorKind::Unsupported),
            &path,
        );
    }
    let err = super::unix::exec(&path, &argv);
    report.fail(Step::Exec, &err, &path)
}

/// The limits and the sandbox, in order: rlimits, stray descriptors, no_new_privs, Landlock,
/// seccomp (last: it could refuse what the steps before need).
#[cfg(target_os = "linux")]
fn confine(setup: &Setup) -> Result<(), (Step, std::io::Error)> {
    for &(resource, soft, hard) in &setup.rlimits {
        super::unix::set_rlimit(resource, soft, hard).map_err(|e| (Step::SetRlimit, e))?;
    }
    if setup.close_fds {
        // fd 3 is the channel (or closed already), fd 4 the report pipe (close-on-exec).
        super::unix::close_from(super::unix::REPORT_FD + 1).map_err(|e| (Step::CloseFds, e))?;
    }
    if setup.no_new_privs {
        super::unix::set_no_new_privs().map_err(|e| (Step::NoNewPrivs, e))?;
    }
    if let Some(plan) = &setup.landlock {
        landlock(plan).map_err(|e| (Step::Landlock, e))?;
    }
    if setup.seccomp {
        seccomp().map_err(|e| (Step::Seccomp, e))?;
    }
    Ok(())
}

/// The first OS error in `err`'s chain, else `fallback`.
#[cfg(target_os = "linux")]
fn os_error(err: &(dyn std::error::Error + 'static), fallback: i32) -> std::io::Error {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return std::io::Error::from_raw_os_error(code);
        }
        next = e.source();
    }
    std::io::Error::from_raw_os_error(fallback)
}

/// Landlock, every requested piece a hard requirement (the supervisor asks only for what the
/// kernel's ABI has, or fails the spawn): the whole filesystem readable and executable,
/// `/dev/null` writable, the writable directories with every right; TCP bind and connect
/// handled with no rule (refused); abstract sockets and signals scoped to the tree.
#[cfg(target_os = "linux")]
fn landlock(plan: &LandlockPlan) -> std::io::Result<()> {
    use landlock::{
        ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
        RulesetAttr, RulesetCreatedAttr, Scope, path_beneath_rules,
    };
    let abi = match plan.fs_abi {
        1 => ABI::V1,
        2 => ABI::V2,
        _ => ABI::V3,
    };
    let ll = |e: landlock::RulesetError| os_error(&e, libc::EOPNOTSUPP);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .map_err(ll)?;
    if plan.net {
        ruleset = ruleset
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(ll)?;
    }
    if plan.scopes {
        ruleset = ruleset
            .scope(Scope::AbstractUnixSocket | Scope::Signal)
            .map_err(ll)?;
    }
    let mut created = ruleset
        .create()
        .map_err(ll)?
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi)))
        .map_err(ll)?
        .add_rules(path_beneath_rules(
            ["/dev/null"],
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))
        .map_err(ll)?;
    for dir in &plan.writable {
        let fd = PathFd::new(dir).map_err(|e| os_error(&e, libc::ENOENT))?;
        created = created
            .add_rule(PathBeneath::new(fd, AccessFs::from_all(abi)))
            .map_err(ll)?;
    }
    created.restrict_self().map_err(ll)?;
    Ok(())
}

/// The seccomp deny-list ([`DENIED_SYSCALLS`](super::limits::DENIED_SYSCALLS)): each fails
/// with EPERM, everything else is allowed.
#[cfg(target_os = "linux")]
fn seccomp() -> std::io::Result<()> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let unsupported = |_| std::io::Error::from_raw_os_error(libc::EINVAL);
    #[cfg_attr(
        target_pointer_width = "64",
        expect(clippy::useless_conversion, reason = "c_long is i32 on 32-bit targets")
    )]
    let rules = super::limits::DENIED_SYSCALLS
        .iter()
        .map(|&n| (i64::from(n), Vec::new()))
        .collect();
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(unsupported)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(unsupported)?;
    let program: BpfProgram = filter.try_into().map_err(unsupported)?;
    seccompiler::apply_filter(&program).map_err(|e| os_error(&e, libc::EINVAL))
}

/// One line on the shim's stderr (the program's), dropped if it cannot be written: `eprintln!`
/// would panic on a closed pipe and turn a clear exit status into 101.
fn shim_say(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_garbage_is_refused() {
        for step in Step::ALL {
            assert_eq!(
                decode(&encode(step, libc::ETXTBSY)),
                Some((step, libc::ETXTBSY))
            );
        }
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&encode(Step::Exec, 2)[..7]), None);
        assert_eq!(decode(&[0xff; REPORT_LEN]), None);
    }

    #[test]
    fn argv_carries_the_plan() {
        let plan = ShimPlan {
            death_signal: Some(libc::SIGTERM),
            cgroup_procs: None,
            ignored: vec![libc::SIGPIPE, libc::SIGHUP],
            setup: Setup::default(),
        };
        let argv = plan.argv(&c"/bin/true".to_owned(), &[c"true".to_owned()]);
        let words: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(words[1], SHIM_ARG);
        assert_eq!(words[3..], ["15", "-", "13,1", "0", "/bin/true", "true"]);
    }

    #[test]
    fn setup_words_round_trip() {
        let setup = Setup {
            cgroups: vec!["/sys/fs/cgroup/memory/a b/cgroup.procs".into()],
            rlimits: vec![(7, 32, 32), (0, 1, 2)],
            close_fds: true,
            no_new_privs: true,
            landlock: Some(LandlockPlan {
                fs_abi: 3,
                writable: vec!["/tmp/x,y".into()],
                net: true,
                scopes: false,
            }),
            seccomp: true,
        };
        let words = setup.words().into_iter().map(OsString::from_vec).collect();
        assert_eq!(Setup::parse(words), Some(setup));
        assert_eq!(Setup::parse(vec!["bogus".into()]), None);
        assert_eq!(Setup::parse(vec!["rl=1,2".into()]), None);
    }
}
