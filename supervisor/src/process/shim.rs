//! The exec shim: setup that must happen in the child between spawn and exec, without giving up
//! the posix_spawn path (a `pre_exec` closure would force a fork of the whole supervisor).
//!
//! A binary that spawns trees calls [`run_if_shim`] first thing in `main`. Spawning then starts
//! `/proc/self/exe __warden_shim ...`; that process sets `PR_SET_PDEATHSIG` (SIGKILL when the
//! spawning thread, which lives as long as the supervisor, goes away), checks its parent is
//! still there, joins the worker's cgroup (so not even its first fork can escape), restores
//! SIGPIPE (Rust's runtime ignores it, and an ignored signal would survive exec), and execs the
//! real program. Binaries that never call [`run_if_shim`] are spawned directly: the cgroup is
//! then joined from the supervisor right after spawn, and PDEATHSIG is not available.

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
    /// Ask for SIGKILL when the spawning thread dies.
    pub pdeathsig: bool,
    /// Write our pid to this `cgroup.procs` before exec.
    pub cgroup_procs: Option<std::path::PathBuf>,
}

impl ShimPlan {
    /// The shim's argv: `[exe, SHIM_ARG, ppid, pdeathsig, cgroup.procs|-, program path, argv...]`.
    pub(crate) fn argv(&self, path: &CString, argv: &[CString]) -> Vec<CString> {
        let mut out = Vec::with_capacity(argv.len() + 6);
        out.push(c"warden-shim".to_owned());
        out.push(CString::new(SHIM_ARG).unwrap_or_default());
        out.push(CString::new(std::process::id().to_string()).unwrap_or_default());
        out.push(if self.pdeathsig {
            c"1".to_owned()
        } else {
            c"0".to_owned()
        });
        out.push(match &self.cgroup_procs {
            Some(p) => CString::new(p.clone().into_os_string().into_vec())
                .unwrap_or_else(|_| c"-".to_owned()),
            None => c"-".to_owned(),
        });
        out.push(path.clone());
        out.extend(argv.iter().cloned());
        out
    }
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

/// The cgroup guard: waits for EOF on stdin (a pipe whose only write end the supervisor
/// holds, so EOF means the supervisor is gone, however it ended), then kills everything left
/// under the supervisor's cgroup base and removes it. Stop signals are ignored: a Ctrl-C or a
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
        super::unix::ignore_signal(sig);
    }
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    super::cgroup::kill_and_remove_base(base);
    0
}

fn shim_main(args: Vec<OsString>) -> i32 {
    // [ppid, pdeathsig, cgroup.procs|-, path, argv0, args...]
    if args.len() < 5 {
        shim_say(format_args!("warden: malformed shim invocation"));
        return 125;
    }
    let mut it = args.into_iter();
    let ppid: i32 = it
        .next()
        .and_then(|s| s.to_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    let pdeathsig = it.next().is_some_and(|s| s == "1");
    let cgroup = it.next().filter(|s| s != "-");
    let Some(path) = it.next() else { return 125 };
    let argv: Vec<OsString> = it.collect();

    #[cfg(target_os = "linux")]
    if pdeathsig {
        let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
        // The supervisor may have died before the line above: then nobody would kill us.
        if nix::unistd::getppid().as_raw() != ppid {
            return 137;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (pdeathsig, ppid);
    if let Some(procs) = cgroup
        && let Err(e) = std::fs::write(&procs, b"0\n")
    {
        shim_say(format_args!(
            "warden: cannot join cgroup {}: {e}",
            procs.to_string_lossy()
        ));
        return 125;
    }
    super::unix::reset_signal_default(libc::SIGPIPE);
    let err = super::unix::exec(&path, &argv);
    shim_say(format_args!("warden: {}: {err}", path.to_string_lossy()));
    match err.raw_os_error() {
        Some(libc::ENOENT) => 127,
        _ => 126,
    }
}

/// One line on the shim's stderr (the program's), dropped if it cannot be written: `eprintln!`
/// would panic on a closed pipe and turn a clear exit status into 101.
fn shim_say(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}
