//! Finding a tree's processes through /proc, and reaping orphans we adopted as a subreaper.
//!
//! # Invariants
//! - One reaper per pid: the owned set ([`owned`]) holds every pid a [`Child`](super::Child)
//!   will reap; the orphan sweeper reaps only zombies among our children that are not in it,
//!   and holds the same lock the spawner holds from `posix_spawn` until the new pid is
//!   registered. An owned
//!   pid is reaped and unregistered in one step under that lock ([`reap_owned`]), so a pid
//!   recycled to a new child is never unregistered by its previous owner.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Pids whose reaping belongs to a `Child`.
pub(crate) fn owned() -> MutexGuard<'static, HashSet<i32>> {
    static OWNED: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    OWNED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Reaps an owned child and drops it from [`owned`] in one step under the lock: a pid freed by
/// the reap can be given at once to a new child, which the spawner registers under the same
/// lock, and removing the old entry after that would unregister the new child (and the orphan
/// sweeper would then reap it). With `block`, waits for the exit first, without the lock.
pub(crate) fn reap_owned(pid: i32, block: bool) -> std::io::Result<Option<super::ExitStatus>> {
    if block && let Err(e) = super::unix::wait_exit_unreaped(pid) {
        // Not ours to wait for (ECHILD): nobody will reap it through us.
        owned().remove(&pid);
        return Err(e);
    }
    let mut owned = owned();
    let reaped = super::unix::reap(pid, false);
    if !matches!(reaped, Ok(None)) {
        owned.remove(&pid);
    }
    reaped
}

/// What /proc/<pid>/stat says about a process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stat {
    pub ppid: i32,
    pub pgrp: i32,
    pub zombie: bool,
    /// Stopped by a signal (`T`) or by a tracer (`t`).
    pub stopped: bool,
}

pub(crate) fn stat(pid: i32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some(Stat {
        ppid,
        pgrp,
        zombie: state == "Z" || state == "X",
        stopped: state == "T" || state == "t",
    })
}

fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// One read of /proc (live processes only), for any number of subtree and group queries.
pub(crate) struct Snapshot {
    stats: HashMap<i32, Stat>,
    children: HashMap<i32, Vec<i32>>,
}

impl Snapshot {
    /// Reads /proc once.
    pub(crate) fn take() -> Snapshot {
        let mut stats = HashMap::new();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for pid in all_pids() {
            if let Some(st) = stat(pid)
                && !st.zombie
            {
                children.entry(st.ppid).or_default().push(pid);
                stats.insert(pid, st);
            }
        }
        Snapshot { stats, children }
    }

    /// What the snapshot saw of `pid` (`None`: gone or a zombie by then).
    pub(crate) fn stat(&self, pid: i32) -> Option<Stat> {
        self.stats.get(&pid).copied()
    }

    /// Live descendants of `root` (not `root` itself).
    pub(crate) fn descendants(&self, root: i32) -> Vec<i32> {
        let mut out = Vec::new();
        let mut stack = vec![root];
        let mut seen = HashSet::new();
        while let Some(p) = stack.pop() {
            for &c in self.children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
                if seen.insert(c) {
                    out.push(c);
                    stack.push(c);
                }
            }
        }
        out
    }

    /// Live processes in process group `pgid` (its leader included, if alive).
    pub(crate) fn group_members(&self, pgid: i32) -> Vec<i32> {
        self.stats
            .iter()
            .filter(|(_, st)| st.pgrp == pgid)
            .map(|(&pid, _)| pid)
            .collect()
    }

    /// Whether any live process other than `pgid` itself is in process group `pgid`.
    pub(crate) fn group_has_members(&self, pgid: i32) -> bool {
        self.stats
            .iter()
            .any(|(&pid, st)| pid != pgid && st.pgrp == pgid)
    }
}

/// Whether `pid` descends from `root` now, by walking its parent chain (a few reads of
/// /proc/<pid>/stat, not a scan of /proc).
pub(crate) fn descends_from(pid: i32, root: i32) -> bool {
    let mut p = pid;
    // Bounded: a parent chain never loops, but /proc can change under the walk.
    for _ in 0..1024 {
        match stat(p) {
            Some(st) if st.ppid == root => return true,
            Some(st) if st.ppid > 1 => p = st.ppid,
            _ => return false,
        }
    }
    false
}

/// Whether /proc/<pid>/environ holds `entry` (`KEY=VALUE`).
pub(crate) fn has_env(pid: i32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|e| e == entry.as_bytes()))
        .unwrap_or(false)
}

/// Reaps zombies among our children that no `Child` owns (orphans adopted while we are a
/// child subreaper, or PID 1). Returns how many were reaped.
pub(crate) fn reap_orphans() -> usize {
    let me = std::process::id() as i32;
    // The scan reads every /proc/<pid>/stat: do it without the lock, which the spawner holds
    // across posix_spawn (a scan under it delayed every spawn by a scan). A zombie child of ours
    // stays ours until someone reaps it, and a pid is registered as owned before its process
    // can exit, so checking ownership under the lock just before the reap is enough.
    let zombies: Vec<i32> = all_pids()
        .into_iter()
        .filter(|&pid| stat(pid).is_some_and(|st| st.ppid == me && st.zombie))
        .collect();
    if zombies.is_empty() {
        return 0;
    }
    let owned = owned();
    zombies
        .into_iter()
        .filter(|pid| !owned.contains(pid) && matches!(super::unix::reap(*pid, false), Ok(Some(_))))
        .count()
}

static CHILDREN_CLAIMED: AtomicBool = AtomicBool::new(false);

/// Declares that every child of this process is started through warden (a command-line
/// supervisor, PID 1 in a container), so warden may make it a child subreaper and reap every
/// zombie child that no warden [`Tree`](crate::Tree) or worker owns.
///
/// With it, [`Containment::Auto`](crate::Containment::Auto) falls back to the subreaper when
/// no cgroup can be made; without it, to the process group: orphans re-parented to a subreaper
/// are zombies until someone reaps them, and a reaper cannot tell them from children the host
/// started itself (`std::process`, `tokio::process`), whose exit statuses it would steal. The
/// `warden` CLI calls this; a library host that starts processes of its own must not.
/// Asking for [`Containment::Subreaper`](crate::Containment::Subreaper) explicitly implies it.
pub fn claim_all_children() {
    CHILDREN_CLAIMED.store(true, Ordering::Relaxed);
}

/// Whether [`claim_all_children`] was called.
pub(crate) fn children_claimed() -> bool {
    CHILDREN_CLAIMED.load(Ordering::Relaxed)
}

/// [`claim_all_children`], and starts (once) a thread that reaps, every 100 ms, zombies among
/// this process's children that no warden child owns: orphans adopted as a child subreaper
/// (started automatically then) or as PID 1 in a container, where every orphan of the
/// namespace is ours to reap (tini's duty). A library cannot own SIGCHLD delivery (tokio and
/// the caller may use it), so this polls; a zombie lingers at most one period.
pub fn start_orphan_reaper() {
    claim_all_children();
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let started = std::thread::Builder::new()
            .name("warden-orphans".into())
            .spawn(|| {
                loop {
                    reap_orphans();
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "could not start the orphan reaper");
        }
    });
}
