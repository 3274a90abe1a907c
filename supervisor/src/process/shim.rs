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
//! asks for to SIG_IGN, and execs the real program (with execvp's `/bin/sh` fallback for a
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
}

impl ShimPlan {
    /// The shim's argv: `[exe, SHIM_ARG, ppid, death signal|0, cgroup.procs|-, ignored|-,
    /// program path, argv...]`, `ignored` as comma-separated numbers.
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
}

impl Step {
    const ALL: [Step; 6] = [
        Step::Invocation,
        Step::DeathSignal,
        Step::JoinCgroup,
        Step::ResetSignals,
        Step::IgnoreSignals,
        Step::Exec,
    ];

    fn code(self) -> u32 {
        match self {
            Step::Invocation => 1,
            Step::DeathSignal => 2,
            Step::JoinCgroup => 3,
            Step::ResetSignals => 4,
            Step::IgnoreSignals => 5,
            Step::Exec => 6,
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
    let step = Step::ALL.into_iter().find(|s| s.code() == code)?;
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
    // [ppid, death signal|0, cgroup.procs|-, ignored|-, path, argv0, args...]
    if args.len() < 6 {
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
    let Some(path) = it.next() else {
        return report.fail(Step::Invocation, &invalid(), std::ffi::OsStr::new("shim"));
    };
    let (Some(ppid), Some(death_signal), Some(ignored)) = (ppid, death_signal, ignored) else {
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
    let err = super::unix::exec(&path, &argv);
    report.fail(Step::Exec, &err, &path)
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
        };
        let argv = plan.argv(&c"/bin/true".to_owned(), &[c"true".to_owned()]);
        let words: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(words[1], SHIM_ARG);
        assert_eq!(words[3..], ["15", "-", "13,1", "/bin/true", "true"]);
    }
}
