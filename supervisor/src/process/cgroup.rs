//! cgroup v2 leaves: one per tree, killed with `cgroup.kill`, empty when `cgroup.events` says
//! `populated 0`. Used when warden can create cgroups (root, or a delegated subtree).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where new leaves go: a `warden-<pid>` directory under our own cgroup, if we may create it.
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
    let base = own.join(format!("warden-{}", std::process::id()));
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
    Ok(base)
}

/// One leaf cgroup holding one tree.
#[derive(Debug)]
pub(crate) struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// Creates a fresh leaf, or `None` when cgroups are not usable here.
    pub(crate) fn create() -> Option<Cgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let base = base()?;
        let dir = base.join(format!("tree-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        // The base is removed when the last leaf goes; recreate it if needed.
        let _ = std::fs::create_dir(base);
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                LIVE.fetch_add(1, Ordering::AcqRel);
                Some(Cgroup { dir })
            }
            Err(e) => {
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
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|s| s.lines().any(|l| l.trim() == "populated 1"))
            .unwrap_or(false)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.populated() {
            let _ = self.kill();
        }
        // Fails while zombies are still being released; the base is cleaned at exit otherwise.
        if std::fs::remove_dir(&self.dir).is_err() {
            tracing::warn!(dir = %self.dir.display(), "cgroup leaf could not be removed");
        }
        if LIVE.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(base) = base()
        {
            let _ = std::fs::remove_dir(base);
        }
    }
}

/// Leaves alive now; the base directory is removed when this drops to zero.
static LIVE: AtomicU64 = AtomicU64::new(0);
