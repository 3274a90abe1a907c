//! cgroup v2 leaves: one per tree, killed with `cgroup.kill`, empty when `cgroup.events` says
//! `populated 0`. Used when warden can create cgroups (root, or a delegated subtree).
//!
//! A supervisor that is SIGKILLed cannot clean up, and `PR_SET_PDEATHSIG` reaches only each
//! tree's first process: whatever that process started would live on in its leaf. So the first
//! time a base directory is made, a guard process is started (this binary again, through the
//! exec shim's entry point): it holds the read end of a pipe whose write end only the
//! supervisor holds, and when that pipe reaches EOF (the supervisor has exited, however) it
//! writes `cgroup.kill` on the base, which kills every leaf, and removes them. The guard has a
//! process group of its own and ignores stop signals, so a Ctrl-C or a SIGTERM to the
//! supervisor does not take it first.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where new leaves go: a `warden-<pidns>-<pid>-<starttime>` directory under our own cgroup, if we may create it.
fn base() -> Option<&'static Path> {
    static BASE: OnceLock<Option<PathBuf>> = OnceLock::new();
    BASE.get_or_init(|| match probe() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::debug!(error = %e, "cgroup v2 containment unavailable");
            None
        }
    })
    .as_deref()
}

/// The cgroup2 mount point, from /proc/self/mountinfo (it is not always /sys/fs/cgroup).
fn cgroup2_mount() -> io::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in info.lines() {
        // ... mount-point ... - fstype source options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2")
            && let Some(mount) = left.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(unescape(mount)));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no cgroup2 filesystem is mounted",
    ))
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn own_cgroup() -> io::Result<PathBuf> {
    let cg = std::fs::read_to_string("/proc/self/cgroup")?;
    cg.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim_start_matches('/')))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in a cgroup v2 hierarchy"))
}

fn probe() -> io::Result<PathBuf> {
    let mount = cgroup2_mount()?;
    let own = mount.join(own_cgroup()?);
    let me = Identity::of_self()?;
    sweep_stale(&own, &me);
    let base = own.join(me.dir_name());
    match std::fs::create_dir(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if !base.join("cgroup.kill").exists() {
        let _ = std::fs::remove_dir(&base);
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "cgroup.kill needs Linux 5.14",
        ));
    }
    start_guard(&base);
    Ok(base)
}

/// Starts the guard that kills and removes `base` once this process is gone (see the module
/// docs). Without an exec shim there is no binary to run it: then a SIGKILLed supervisor's
/// leaves are only killed by the next supervisor's stale sweep.
fn start_guard(base: &Path) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    static GUARD: OnceLock<std::process::ChildStdin> = OnceLock::new();
    if GUARD.get().is_some() {
        return;
    }
    if !super::shim::available() {
        tracing::debug!("no exec shim: no guard for the cgroups of a supervisor that is killed");
        return;
    }
    let exe = super::shim::executable();
    let started = std::process::Command::new(std::ffi::OsStr::from_bytes(exe.as_bytes()))
        .arg(super::shim::GUARD_ARG)
        .arg(base)
        // The pipe's write end is close-on-exec and stays here: no tree inherits it.
        .stdin(Stdio::piped())
        // Nothing of the caller's is held open by the guard (a shell reading our output
        // must not wait for it).
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match started {
        // The guard is never waited for: it outlives us by design (and as a zombie, if it
        // ended first, it is reaped by the orphan reaper or by whoever inherits it).
        Ok(mut guard) => {
            if let Some(pipe) = guard.stdin.take() {
                let _ = GUARD.set(pipe);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not start the cgroup guard"),
    }
}

/// The guard's work once its supervisor is gone: kill everything under `base`, wait (bounded)
/// until it is empty, remove the leaves and the base.
pub(crate) fn kill_and_remove_base(base: &Path) {
    if !base.exists() {
        return;
    }
    // cgroup.kill on a parent kills every process in all its descendants.
    let _ = std::fs::write(base.join("cgroup.kill"), b"1\n");
    for _ in 0..250 {
        if !populated(base) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if let Ok(leaves) = std::fs::read_dir(base) {
        for leaf in leaves.flatten().filter(|l| l.path().is_dir()) {
            let _ = std::fs::remove_dir(leaf.path());
        }
    }
    let _ = std::fs::remove_dir(base);
}

/// Who owns a base directory: the pid namespace (cgroup directories are shared across pid
/// namespaces, and pids repeat between them), the pid, and the process start time (pids are
/// recycled).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    pidns: u64,
    pid: u32,
    start: u64,
}

impl Identity {
    fn of_self() -> io::Result<Identity> {
        use std::os::unix::fs::MetadataExt;
        let pidns = std::fs::metadata("/proc/self/ns/pid")?.ino();
        let pid = std::process::id();
        let start = start_time(pid).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "no start time in /proc/self/stat")
        })?;
        Ok(Identity { pidns, pid, start })
    }

    fn dir_name(&self) -> String {
        format!("warden-{}-{}-{}", self.pidns, self.pid, self.start)
    }

    fn parse(name: &str) -> Option<Identity> {
        let mut it = name.strip_prefix("warden-")?.split('-');
        let id = Identity {
            pidns: it.next()?.parse().ok()?,
            pid: it.next()?.parse().ok()?,
            start: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(id)
    }
}

/// Field 22 of /proc/<pid>/stat: start time in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split(' ')
        .nth(19)?
        .parse()
        .ok()
}

/// Removes the base directories of supervisors of our pid namespace that no longer run
/// (SIGKILLed, or ended while a leaf was still emptying). What is still inside a stale leaf is
/// what is left of a dead supervisor's tree: it is killed, and the leaf is removed now or by a
/// later probe. Directories of other pid namespaces are never touched: their owners cannot be
/// seen from here.
fn sweep_stale(own: &Path, me: &Identity) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(owner) = entry.file_name().to_str().and_then(Identity::parse) else {
            continue;
        };
        if owner.pidns != me.pidns || owner == *me || start_time(owner.pid) == Some(owner.start) {
            continue;
        }
        let dir = entry.path();
        if let Ok(leaves) = std::fs::read_dir(&dir) {
            for leaf in leaves.flatten().filter(|l| l.path().is_dir()) {
                let leaf = Cgroup {
                    dir: leaf.path(),
                    counted: false,
                };
                if leaf.populated() {
                    tracing::warn!(dir = %leaf.dir.display(), "killing what is left of a dead supervisor's tree");
                }
                drop(leaf);
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

/// One leaf cgroup holding one tree.
#[derive(Debug)]
pub(crate) struct Cgroup {
    dir: PathBuf,
    /// Counted in [`LIVE`] (leaves of this process, not stale ones being swept).
    counted: bool,
}

impl Cgroup {
    /// Creates a fresh leaf, or `None` when cgroups are not usable here.
    pub(crate) fn create() -> Option<Cgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let base = base()?;
        let dir = base.join(format!("tree-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        // Counted before anything is created, so a finishing leaf's cleanup never removes the
        // base under us; if one had already decided to, the base is made again and we retry.
        LIVE.fetch_add(1, Ordering::AcqRel);
        let mut result = Err(io::Error::from(io::ErrorKind::NotFound));
        for _ in 0..3 {
            let _ = std::fs::create_dir(base);
            result = std::fs::create_dir(&dir);
            if !matches!(&result, Err(e) if e.kind() == io::ErrorKind::NotFound) {
                break;
            }
        }
        match result {
            Ok(()) => Some(Cgroup { dir, counted: true }),
            Err(e) => {
                LIVE.fetch_sub(1, Ordering::AcqRel);
                tracing::debug!(error = %e, dir = %dir.display(), "cannot create a cgroup leaf");
                None
            }
        }
    }

    pub(crate) fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Moves `pid` into the leaf (the no-shim path).
    pub(crate) fn add(&self, pid: u32) -> io::Result<()> {
        std::fs::write(self.procs_file(), format!("{pid}\n"))
    }

    /// The pids in the leaf now.
    pub(crate) fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.procs_file())
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process in the leaf, atomically with respect to forks.
    pub(crate) fn kill(&self) -> io::Result<()> {
        std::fs::write(self.dir.join("cgroup.kill"), b"1\n")
    }

    /// True while any process is in the leaf.
    pub(crate) fn populated(&self) -> bool {
        populated(&self.dir)
    }

    /// Freezes (`true`) or thaws the leaf; see [`set_frozen`].
    pub(crate) fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        set_frozen(&self.dir, frozen)
    }

    /// True once every process in the leaf is frozen (`frozen 1` in `cgroup.events`).
    pub(crate) fn frozen(&self) -> bool {
        events_say(&self.dir, "frozen 1")
    }
}

/// Writes `cgroup.freeze` of the cgroup at `dir`: `1` freezes every process in it and below
/// it (they stop running, and new children are frozen too), `0` thaws them. Freezing is
/// asynchronous: the kernel says `frozen 1` in `cgroup.events` once it is complete. A frozen
/// process still dies of SIGKILL (and of `cgroup.kill`), and a process that had stopped
/// itself before the freeze stays stopped after the thaw.
///
/// # Errors
/// The write's error: `ENOENT` where the kernel has no cgroup v2 freezer (before 5.2) or the
/// cgroup is gone, `EACCES` without write access to it.
pub(crate) fn set_frozen(dir: &Path, frozen: bool) -> io::Result<()> {
    std::fs::write(
        dir.join("cgroup.freeze"),
        if frozen { b"1\n" } else { b"0\n" },
    )
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.populated() {
            let _ = self.kill();
        }
        let counted = self.counted;
        if counted {
            LIVE.fetch_sub(1, Ordering::AcqRel);
        }
        if std::fs::remove_dir(&self.dir).is_ok() {
            remove_base_if_idle(counted);
            return;
        }
        // Killed processes take a moment to leave; remove the leaf once they have, off the
        // dropping thread (bounded: a stale leaf is also swept by the next supervisor).
        let dir = std::mem::take(&mut self.dir);
        let cleanup = std::thread::Builder::new()
            .name("warden-cgroup".into())
            .spawn(move || {
                let leaf = Cgroup {
                    dir,
                    counted: false,
                };
                for _ in 0..100 {
                    if !leaf.populated() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                if std::fs::remove_dir(&leaf.dir).is_err() {
                    tracing::warn!(dir = %leaf.dir.display(), "cgroup leaf could not be removed");
                }
                remove_base_if_idle(counted);
                // Nothing left to do in this value's own drop.
                std::mem::forget(leaf);
            });
        if cleanup.is_err() {
            tracing::warn!("could not start a cgroup cleanup thread");
        }
    }
}

fn remove_base_if_idle(counted: bool) {
    if counted
        && LIVE.load(Ordering::Acquire) == 0
        && let Some(base) = base()
    {
        // Fails harmlessly while another leaf is still being removed.
        let _ = std::fs::remove_dir(base);
    }
}

/// True while any process is in the cgroup at `dir` or below it.
fn populated(dir: &Path) -> bool {
    events_say(dir, "populated 1")
}

/// Whether `cgroup.events` of the cgroup at `dir` holds the line `line`.
fn events_say(dir: &Path, line: &str) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l.trim() == line))
        .unwrap_or(false)
}

/// Leaves alive now; the base directory is removed when this drops to zero.
static LIVE: AtomicU64 = AtomicU64::new(0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names_round_trip_and_reject_other_shapes() {
        let me = Identity::of_self().expect("identity");
        assert_eq!(Identity::parse(&me.dir_name()), Some(me.clone()));
        assert_eq!(
            start_time(me.pid),
            Some(me.start),
            "we are alive by our own test"
        );
        for other in [
            "warden-123",
            "warden-1-2",
            "warden-1-2-3-4",
            "warden-a-2-3",
            "tree-1",
        ] {
            assert_eq!(Identity::parse(other), None, "{other}");
        }
    }
}
