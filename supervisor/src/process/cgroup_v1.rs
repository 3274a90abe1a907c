//! cgroup v1 `memory` and `pids` cgroups, for limits on hybrid hosts (cgroup2 mounted, but
//! those controllers bound to v1 hierarchies). One fresh cgroup per tree and controller,
//! `warden-<pidns>-<pid>-<start>/tree-<n>` under warden's own cgroup of that hierarchy, joined
//! by the exec shim before exec; so no counter carries over from an earlier tree.
//!
//! They only limit and count: v1 has no `cgroup.kill`, so the tree is killed through its
//! containment (its v2 leaf, when it has one). Once the tree is gone the cgroup is empty and
//! removed, and so is the base once no tree uses it. If the supervisor dies, the cgroup guard
//! (told of every v1 base, `v1base PATH`) kills what is still listed (through pidfds, membership
//! checked again after each is opened) and removes them; a next supervisor also sweeps the
//! bases of dead ones, as for v2.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::cgroup::{Identity, tell_guard};

/// A v1 controller warden puts limits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Controller {
    Memory,
    Pids,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
        }
    }
}

fn base(controller: Controller) -> Option<&'static Path> {
    static MEMORY: OnceLock<Option<PathBuf>> = OnceLock::new();
    static PIDS: OnceLock<Option<PathBuf>> = OnceLock::new();
    let cell = match controller {
        Controller::Memory => &MEMORY,
        Controller::Pids => &PIDS,
    };
    cell.get_or_init(|| match probe(controller) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::debug!(error = %e, controller = controller.name(), "cgroup v1 limits unavailable");
            None
        }
    })
    .as_deref()
}

/// The mount point of the v1 hierarchy that has `controller`, from `mountinfo` text.
fn find_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split_whitespace();
        if right.next()? != "cgroup" {
            return None;
        }
        let options = right.nth(1)?;
        let mount = left.split_whitespace().nth(4)?;
        options
            .split(',')
            .any(|o| o == controller)
            .then(|| PathBuf::from(mount.replace("\\040", " ")))
    })
}

/// Our cgroup in the v1 hierarchy that has `controller`, from `/proc/self/cgroup` text.
fn find_own(cgroups: &str, controller: &str) -> Option<PathBuf> {
    cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| PathBuf::from(path.trim_start_matches('/')))
    })
}

fn probe(controller: Controller) -> io::Result<PathBuf> {
    let name = controller.name();
    let unavailable = |what: &str| io::Error::new(io::ErrorKind::NotFound, what.to_owned());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mount = find_mount(&mountinfo, name).ok_or_else(|| unavailable("no v1 hierarchy"))?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")?;
    let own = mount.join(find_own(&cgroups, name).ok_or_else(|| unavailable("not in it"))?);
    let me = Identity::of_self()?;
    sweep_stale(&own, &me);
    let base = own.join(me.dir_name());
    make_base(&base)?;
    Ok(base)
}

fn make_base(base: &Path) -> io::Result<()> {
    match std::fs::create_dir(base) {
        Ok(()) => {
            // The guard removes it if we die; told at every creation (it ignores repeats).
            if let Err(e) = tell_guard(&format!("v1base {}\n", base.display())) {
                tracing::debug!(error = %e, "the cgroup guard was not told of a v1 base");
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the v1 bases of supervisors of our pid namespace that no longer run, killing what
/// is left in them.
fn sweep_stale(own: &Path, me: &Identity) {
    super::cgroup::for_each_stale_base(own, me, kill_and_remove_base);
}

/// Kills every process still in a cgroup under `base` (held by pidfds, membership checked
/// again after each is opened, so no recycled pid is hit), waits (bounded) until each is
/// empty, and removes them and `base`. The guard's work for v1, and the stale sweep's.
pub(crate) fn kill_and_remove_base(base: &Path) {
    let leaves: Vec<PathBuf> = std::fs::read_dir(base)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    for leaf in &leaves {
        kill_members(leaf, Instant::now() + Duration::from_secs(5));
        let _ = std::fs::remove_dir(leaf);
    }
    let _ = std::fs::remove_dir(base);
}

fn read_pids(dir: &Path) -> Vec<libc::pid_t> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// SIGKILLs the members of the cgroup at `dir` until it is empty or `deadline` passes.
fn kill_members(dir: &Path, deadline: Instant) -> bool {
    loop {
        let pids = read_pids(dir);
        if pids.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        let held: Vec<_> = pids
            .into_iter()
            .filter_map(|pid| Some((pid, super::pidfd::open(pid).ok()??)))
            .collect();
        let still = read_pids(dir);
        for (_, fd) in held.iter().filter(|(pid, _)| still.contains(pid)) {
            let _ = super::pidfd::send_signal(fd, libc::SIGKILL, false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One tree's cgroup in one v1 hierarchy.
#[derive(Debug)]
pub(crate) struct V1Cgroup {
    controller: Controller,
    dir: PathBuf,
}

impl V1Cgroup {
    /// A fresh cgroup for one tree, or why there is none.
    pub(crate) fn create(controller: Controller) -> io::Result<V1Cgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let base = base(controller).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "no usable cgroup v1 hierarchy")
        })?;
        let dir = base.join(format!("tree-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        let mut result = Err(io::Error::from(io::ErrorKind::NotFound));
        // A finishing tree may have just removed an idle base: make it again.
        for _ in 0..3 {
            make_base(base)?;
            result = std::fs::create_dir(&dir);
            if !matches!(&result, Err(e) if e.kind() == io::ErrorKind::NotFound) {
                break;
            }
        }
        result?;
        Ok(V1Cgroup { controller, dir })
    }

    pub(crate) fn controller(&self) -> Controller {
        self.controller
    }

    pub(crate) fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Writes `value` to the control file `file`.
    pub(crate) fn set(&self, file: &str, value: &str) -> io::Result<()> {
        std::fs::write(self.dir.join(file), value)
    }

    /// Whether the control file `file` exists.
    pub(crate) fn has(&self, file: &str) -> bool {
        self.dir.join(file).exists()
    }

    /// Reads the control file `file`.
    pub(crate) fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(file)).ok()
    }

    /// Moves `pid` in (the no-shim path).
    pub(crate) fn add(&self, pid: u32) -> io::Result<()> {
        std::fs::write(self.procs_file(), format!("{pid}\n"))
    }
}

impl Drop for V1Cgroup {
    fn drop(&mut self) {
        // The tree is gone by now (its containment killed it); what is still listed is killed
        // here so the cgroup can go.
        let remove = |dir: &Path| {
            let emptied = kill_members(dir, Instant::now() + Duration::from_secs(2));
            if std::fs::remove_dir(dir).is_err() || !emptied {
                tracing::warn!(dir = %dir.display(), "cgroup v1 cgroup could not be removed");
            }
            if let Some(base) = dir.parent() {
                // Fails harmlessly while another tree still uses it.
                let _ = std::fs::remove_dir(base);
            }
        };
        if read_pids(&self.dir).is_empty() {
            remove(&self.dir);
            return;
        }
        let dir = std::mem::take(&mut self.dir);
        let cleanup = std::thread::Builder::new()
            .name("warden-cgroup".into())
            .spawn(move || remove(&dir));
        if cleanup.is_err() {
            tracing::warn!("could not start a cgroup cleanup thread");
        }
    }
}

/// `KEY N` from a flat-keyed control file (`memory.events`, `pids.events`,
/// `memory.oom_control`).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_hierarchies_and_our_place_in_them() {
        let info = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
            39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_mount(info, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(find_mount(info, "freezer"), None);
        let own = "8:pids:/\n4:memory:/a/b\n1:cpu,cpuacct:/\n0::/\n";
        assert_eq!(find_own(own, "memory"), Some(PathBuf::from("a/b")));
        assert_eq!(find_own(own, "pids"), Some(PathBuf::from("")));
        assert_eq!(find_own(own, "cpuacct"), Some(PathBuf::from("")));
        assert_eq!(
            keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"),
            Some(3)
        );
        assert_eq!(keyed("max 0\n", "max"), Some(0));
        assert_eq!(keyed("max 0\n", "oom_kill"), None);
    }
}
