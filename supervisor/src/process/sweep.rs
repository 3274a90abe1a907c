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
    with_stat(pid, |rest| {
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
    })
}

/// Calls `f` with /proc/<pid>/stat from its third field on (the command name may hold spaces
/// and parentheses: the fields start after the last `)`).
///
/// One `open` and one `read` into a buffer on the stack: `read_to_string` costs a `statx` and
/// several reads more per file, and a scan of /proc reads one file per process. A stat line
/// is a few hundred bytes; a longer one is cut at the buffer's end, far past the 22nd field
/// (the start time), which is the last one read here.
pub(crate) fn with_stat<R>(pid: i32, f: impl FnOnce(&str) -> Option<R>) -> Option<R> {
    let mut buf = [0u8; 1024];
    let n = read_once(&format!("/proc/{pid}/stat"), &mut buf)?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    f(line.get(line.rfind(')')? + 2..)?)
}

/// One `read` of a /proc file into `buf`: how many bytes it gave.
fn read_once(path: &str, buf: &mut [u8]) -> Option<usize> {
    use std::io::Read;
    std::fs::File::open(path).ok()?.read(buf).ok()
}

/// Whether this kernel lists each task's children in /proc/<pid>/task/<tid>/children
/// (`CONFIG_PROC_CHILDREN`, which most distributions' kernels set).
fn has_children_files() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    // `thread-self` is Linux 3.17; an older kernel reads every process, as one without
    // `children` files does.
    *HAS.get_or_init(|| std::fs::metadata("/proc/thread-self/children").is_ok())
}

/// The children (live and zombies) of every thread of `pid`, from its `children` files: a
/// child is listed under the thread that forked it, and an adopted orphan under whichever
/// thread adopted it. Empty if `pid` is gone; `None` without [`has_children_files`].
///
/// The kernel documents a race: a child that moves between parents while the files are read
/// (re-parented when its parent exits) can be missed. Callers treat a missed child as a
/// delay, never as an answer that the child is gone.
fn children_of(pid: i32) -> Option<Vec<i32>> {
    use std::io::Read;
    if !has_children_files() {
        return None;
    }
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Some(out);
    };
    let mut buf = Vec::new();
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        // A thread that ended meanwhile has no file: it has no children either.
        let Ok(mut file) = std::fs::File::open(format!("/proc/{pid}/task/{tid}/children")) else {
            continue;
        };
        buf.clear();
        if file.read_to_end(&mut buf).is_err() {
            continue;
        }
        out.extend(
            buf.split(|b| b.is_ascii_whitespace())
                .filter_map(|p| std::str::from_utf8(p).ok()?.parse::<i32>().ok()),
        );
    }
    Some(out)
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

    /// The live descendants of `root` (and nothing else), read by walking the `children` files
    /// down from it: O(the subtree), where [`take`](Self::take) reads every process on the
    /// machine. `None` without `children` files.
    ///
    /// A member that moves to a new parent during the walk can be missed (see
    /// [`children_of`]): a snapshot with members is good enough to signal them, but one
    /// without must be confirmed by [`take`](Self::take) before it is believed.
    pub(crate) fn take_under(root: i32) -> Option<Snapshot> {
        let mut stats = HashMap::new();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        let mut stack = vec![root];
        while let Some(parent) = stack.pop() {
            for pid in children_of(parent)? {
                // Bounded by the pids that exist: a pid seen twice (recycled while the walk ran)
                // is walked once.
                if stats.contains_key(&pid) {
                    continue;
                }
                if let Some(st) = stat(pid)
                    && !st.zombie
                {
                    children.entry(parent).or_default().push(pid);
                    stats.insert(pid, st);
                    stack.push(pid);
                }
            }
        }
        Some(Snapshot { stats, children })
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

/// The value of `key` in /proc/<pid>/environ (the environment it was started with), if any.
pub(crate) fn env_value(pid: i32, key: &str) -> Option<Vec<u8>> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|e| {
        e.strip_prefix(key.as_bytes())?
            .strip_prefix(b"=")
            .map(<[u8]>::to_vec)
    })
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
    // The common case, nothing to reap, costs one system call.
    if !super::unix::any_zombie_child() {
        return 0;
    }
    let me = std::process::id() as i32;
    // The scan reads every /proc/<pid>/stat: do it without the lock, which the spawner holds
    // across posix_spawn (a scan under it delayed every spawn by a scan). A zombie child of ours
    // stays ours until someone reaps it, and a pid is registered as owned before its process
    // can exit, so checking ownership under the lock just before the reap is enough.
    // Our own `children` files list our children only (a missed one waits for the next
    // sweep); without them, every process is read.
    let candidates = children_of(me).unwrap_or_else(all_pids);
    let zombies: Vec<i32> = candidates
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    #[test]
    fn a_stat_line_parses_past_a_command_name_with_parentheses_and_spaces() {
        let me = std::process::id() as i32;
        let parent = stat(me).expect("our own stat");
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        // The thread's name is its comm: the stat line's second field.
        let thread = std::thread::Builder::new()
            .name("a) 1 2 (b".into())
            .spawn(move || {
                let _ = tx.send(nix::unistd::gettid().as_raw());
                let _ = done_rx.recv_timeout(std::time::Duration::from_secs(30));
            })
            .expect("thread");
        let tid = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("tid");
        let st = stat(tid).expect("the thread's stat");
        assert_eq!((st.ppid, st.pgrp), (parent.ppid, parent.pgrp));
        assert!(!st.zombie && !st.stopped);
        // The 22nd field, the start time, is within the one read too.
        assert!(with_stat(tid, |rest| rest.split(' ').nth(19)?.parse::<u64>().ok()).is_some());
        drop(done_tx);
        thread.join().expect("join");
    }

    #[test]
    fn the_walk_down_from_us_finds_what_a_full_read_finds() {
        assert!(
            has_children_files(),
            "this kernel lists children (CONFIG_PROC_CHILDREN)"
        );
        let me = std::process::id() as i32;
        // A child that forks a grandchild and says its pid: both are ours to find.
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the grandchild's pid");
        let grandchild: i32 = line.trim().parse().expect("a pid");
        let pid = child.id() as i32;
        // Whatever the asserts do, both are killed by pid (sh reaps the grandchild).
        struct Kill(i32, i32);
        impl Drop for Kill {
            fn drop(&mut self) {
                for p in [self.0, self.1] {
                    let _ = super::super::unix::kill_pid(p, libc::SIGKILL);
                }
            }
        }
        let kill = Kill(grandchild, pid);
        let walked = Snapshot::take_under(me).expect("children files");
        let full = Snapshot::take();
        let found = walked.descendants(me);
        assert!(
            found.contains(&pid) && found.contains(&grandchild),
            "{found:?}"
        );
        assert_eq!(walked.descendants(pid), [grandchild]);
        assert_eq!(walked.stat(grandchild).map(|s| s.ppid), Some(pid));
        for p in [pid, grandchild] {
            assert!(full.descendants(me).contains(&p));
        }
        // Nothing outside our subtree is in the walk.
        assert!(walked.stat(1).is_none());
        // The grandchild is killed and reaped by sh's `wait`, then sh exits: once sh is reaped,
        // neither survives.
        super::super::unix::kill_pid(grandchild, libc::SIGKILL).expect("kill the grandchild");
        let status = child.wait().expect("reap sh");
        std::mem::forget(kill);
        assert!(status.success(), "sh waited for its job: {status:?}");
        assert!(stat(grandchild).is_none_or(|s| s.ppid != pid));
        assert!(
            Snapshot::take_under(me)
                .expect("children files")
                .stat(pid)
                .is_none()
        );
    }
}
