//! cgroup v2 leaves: one per tree, killed with `cgroup.kill`, empty when `cgroup.events` says
//! `populated 0`. Used when warden can create cgroups (root, or a delegated subtree).
//!
//! A supervisor that is SIGKILLed cannot clean up, and `PR_SET_PDEATHSIG` reaches only each
//! tree's first process: whatever that process started would live on in its leaf. So the first
//! time a base directory is made, a guard process is started (this binary again, through the
//! exec shim's entry point): its stdin is one end of a socketpair whose other end only the
//! supervisor holds, and when it reaches EOF (the supervisor has exited, however) the guard
//! ends every leaf and removes them. The guard has a process group of its own and ignores stop
//! signals, so a Ctrl-C or a SIGTERM to the supervisor does not take it first.
//!
//! **Orphan ladders.** A tree may ask for a polite end instead (`TreeOptions::orphan_ladder`):
//! when its leaf is created the supervisor sends the guard one line, `ladder tree-N SIG MS`.
//! At EOF the guard first kills (`cgroup.kill`) every leaf without a ladder; then, for each
//! leaf with one, freezes it (`cgroup.freeze`, waiting boundedly for `frozen 1`), reads its
//! members, sends each SIG and SIGCONT through a pidfd (frozen members cannot exit, so no pid
//! is recycled in between), and thaws it; it waits for each such leaf to empty (`populated 0`
//! in `cgroup.events`, watched with poll) until MS after its signal, kills what is left, and
//! finally kills and removes everything under the base, as without a ladder.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// The cgroup2 mount point: one of the usual two (unified, or hybrid's `unified`) when
/// `statfs` says it is cgroup2, else the first cgroup2 mount in /proc/self/mountinfo (it is
/// not always under /sys/fs/cgroup). The shortcut spares a `warden timeout` the text of every
/// mount.
fn cgroup2_mount() -> io::Result<PathBuf> {
    use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
    for usual in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if statfs(usual).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC) {
            return Ok(PathBuf::from(usual));
        }
    }
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

/// Our end of the guard's socketpair (its EOF is our death; orphan ladders are sent on it).
static GUARD: OnceLock<std::os::fd::OwnedFd> = OnceLock::new();

/// Up to this resident size a single-threaded supervisor forks its guard rather than exec it.
const FORK_GUARD_MAX_RSS: u64 = 32 << 20;

/// Starts the guard that kills and removes `base` once this process is gone (see the module
/// docs): forked where that is sound, else exec'd. A threaded supervisor without an exec shim
/// has no binary to exec: then a SIGKILLed supervisor's leaves are only killed by the next
/// supervisor's stale sweep.
fn start_guard(base: &Path) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    if GUARD.get().is_some() {
        return;
    }
    // A socketpair rather than a pipe: sends use MSG_NOSIGNAL, so a guard that died can never
    // SIGPIPE a host that did not ignore it. Both ends are close-on-exec: no tree inherits ours.
    let (ours, theirs) = match super::unix::socketpair() {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %e, "could not create the cgroup guard's socket");
            return;
        }
    };
    // A small single-threaded supervisor (the CLI's) forks its guard: no exec, no dynamic
    // loading, no start-up of a 27 MB binary, whose millisecond of CPU on a small machine
    // would be spent right when the command starts. Anything else execs it, since a fork of
    // a threaded process may not run Rust code, and a large one's page tables take long to copy.
    if super::unix::single_threaded_and_small(FORK_GUARD_MAX_RSS) {
        let base_owned = base.to_path_buf();
        match super::unix::fork_helper(&theirs, super::shim::GUARD_NAME, move || {
            super::shim::guard_serve(&base_owned)
        }) {
            Ok(_guard) => {
                let _ = GUARD.set(ours);
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not fork the cgroup guard; starting it by exec")
            }
        }
    }
    if !super::shim::available() {
        tracing::debug!("no exec shim: no guard for the cgroups of a supervisor that is killed");
        return;
    }
    let exe = super::shim::executable();
    // The command (holding the guard's end) is dropped at the end of the statement, so our
    // process keeps no copy of it.
    let started = std::process::Command::new(std::ffi::OsStr::from_bytes(exe.as_bytes()))
        .arg(super::shim::GUARD_ARG)
        .arg(base)
        .stdin(Stdio::from(theirs))
        // Nothing of the caller's is held open by the guard (a shell reading our output
        // must not wait for it).
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match started {
        // The guard is never waited for: it outlives us by design (and as a zombie, if it
        // ended first, it is reaped by the orphan reaper or by whoever inherits it).
        Ok(_guard) => {
            let _ = GUARD.set(ours);
        }
        Err(e) => tracing::warn!(error = %e, "could not start the cgroup guard"),
    }
}

/// Sends `line` to the guard without blocking and without SIGPIPE.
pub(super) fn tell_guard(line: &str) -> io::Result<()> {
    use nix::sys::socket::{MsgFlags, send};
    use std::os::fd::AsRawFd;
    let fd = GUARD
        .get()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no cgroup guard"))?;
    let sent = send(
        fd.as_raw_fd(),
        line.as_bytes(),
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
    )?;
    if sent == line.len() {
        Ok(())
    } else {
        Err(io::Error::from(io::ErrorKind::WriteZero))
    }
}

/// The orphan ladders a guard was told about, by leaf name.
#[derive(Debug, Default)]
pub(crate) struct GuardOrders {
    ladders: std::collections::HashMap<String, (libc::c_int, Duration)>,
    /// cgroup v1 bases (limits on hybrid hosts) to empty and remove too.
    v1_bases: std::collections::BTreeSet<PathBuf>,
    partial: Vec<u8>,
    prune_at: usize,
}

impl GuardOrders {
    /// Takes bytes read from the supervisor; complete lines are parsed, malformed ones ignored.
    pub(crate) fn feed(&mut self, bytes: &[u8], base: &Path) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let Ok(line) = std::str::from_utf8(&line) else {
                continue;
            };
            if let Some((leaf, ladder)) = parse_order(line) {
                self.ladders.insert(leaf, ladder);
            } else if let Some(v1) = parse_v1_base(line) {
                self.v1_bases.insert(v1);
            }
        }
        if self.partial.len() > 4096 {
            // No order is that long: whatever this is, it is not ours.
            self.partial.clear();
        }
        // One line per tree ever made: forget the trees already removed, so a long-lived
        // supervisor's guard stays small.
        if self.ladders.len() >= self.prune_at.max(1024) {
            self.ladders.retain(|leaf, _| base.join(leaf).exists());
            self.prune_at = self.ladders.len() * 2;
        }
    }
}

/// `v1base PATH`: an absolute path whose last part is a `warden-...` base.
fn parse_v1_base(line: &str) -> Option<PathBuf> {
    let path = Path::new(line.strip_prefix("v1base ")?.trim_end_matches('\n'));
    let name = path.file_name()?.to_str()?;
    (path.is_absolute() && Identity::parse(name).is_some() && !line.contains("/../"))
        .then(|| path.to_owned())
}

/// `ladder tree-N SIG MS`.
fn parse_order(line: &str) -> Option<(String, (libc::c_int, Duration))> {
    let mut words = line.split_whitespace();
    if words.next()? != "ladder" {
        return None;
    }
    let leaf = words.next()?;
    let signal = words.next()?.parse().ok()?;
    let delay = Duration::from_millis(words.next()?.parse().ok()?);
    let valid = leaf.starts_with("tree-") && !leaf.contains('/') && words.next().is_none();
    valid.then(|| (leaf.to_owned(), (signal, delay)))
}

/// How long the guard waits for a freeze to take, and for a killed cgroup to empty.
const GUARD_WAIT: Duration = Duration::from_secs(5);

/// The guard's work once its supervisor is gone: kill every leaf under `base` without an
/// orphan ladder, run the ladders of the others, then kill everything left, wait (bounded)
/// until it is empty, and remove the leaves and the base.
pub(crate) fn kill_and_remove_base(base: &Path, orders: &GuardOrders) {
    if !base.exists() {
        for v1 in &orders.v1_bases {
            super::cgroup_v1::kill_and_remove_base(v1);
        }
        return;
    }
    let leaves: Vec<(String, PathBuf)> = std::fs::read_dir(base)
        .map(|d| {
            d.flatten()
                .filter(|l| l.path().is_dir())
                .filter_map(|l| Some((l.file_name().into_string().ok()?, l.path())))
                .collect()
        })
        .unwrap_or_default();
    // Those without a ladder first: they must not wait for anyone's delay.
    for (name, dir) in &leaves {
        if !orders.ladders.contains_key(name) {
            let _ = std::fs::write(dir.join("cgroup.kill"), b"1\n");
        }
    }
    let mut pending: Vec<(&Path, Instant)> = Vec::new();
    for (name, dir) in &leaves {
        if let Some(&(signal, delay)) = orders.ladders.get(name)
            && populated(dir)
        {
            signal_members(dir, signal);
            pending.push((dir, Instant::now() + delay));
        }
    }
    pending.sort_by_key(|&(_, deadline)| deadline);
    for (dir, deadline) in pending {
        wait_events(dir, "populated 0", deadline);
        let _ = std::fs::write(dir.join("cgroup.kill"), b"1\n");
    }
    // cgroup.kill on a parent kills every process in all its descendants.
    let _ = std::fs::write(base.join("cgroup.kill"), b"1\n");
    wait_events(base, "populated 0", Instant::now() + GUARD_WAIT);
    for (_, dir) in &leaves {
        let _ = std::fs::remove_dir(dir);
    }
    let _ = std::fs::remove_dir(base);
    // The trees' v1 cgroups hold the same processes, now dead: only their removal is left.
    for v1 in &orders.v1_bases {
        super::cgroup_v1::kill_and_remove_base(v1);
    }
}

/// Sends `signal` and SIGCONT to every member of the cgroup at `dir`, frozen meanwhile so
/// that none can exit (and have its pid recycled) between the listing and the signal. Each
/// member is held by a pidfd opened while frozen, and only those still listed afterwards
/// are signalled, so even a freeze that did not take in time hits no stranger.
fn signal_members(dir: &Path, signal: libc::c_int) {
    let frozen =
        set_frozen(dir, true).is_ok() && wait_events(dir, "frozen 1", Instant::now() + GUARD_WAIT);
    let read_pids = || -> Vec<libc::pid_t> {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    };
    let held: Vec<(libc::pid_t, std::os::fd::OwnedFd)> = read_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, super::pidfd::open(pid).ok()??)))
        .collect();
    let still = read_pids();
    for (_, fd) in held.iter().filter(|(pid, _)| still.contains(pid)) {
        let _ = super::pidfd::send_signal(fd, signal, false);
        let _ = super::pidfd::send_signal(fd, libc::SIGCONT, false);
    }
    if frozen || dir.exists() {
        let _ = set_frozen(dir, false);
    }
}

/// Waits until `cgroup.events` of `dir` has the line `want` (`populated 0`, `frozen 1`) or
/// `deadline` passes; returns whether it did. Woken by the kernel's change notification on the
/// file (poll, POLLPRI), with a short poll interval as a fallback. A cgroup that is gone counts
/// as empty.
pub(super) fn wait_events(dir: &Path, want: &str, deadline: Instant) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::io::{Read, Seek};
    use std::os::fd::AsFd;
    let Ok(mut file) = std::fs::File::open(dir.join("cgroup.events")) else {
        return want == "populated 0";
    };
    let mut text = String::new();
    loop {
        text.clear();
        if file
            .rewind()
            .and_then(|()| file.read_to_string(&mut text))
            .is_err()
        {
            return want == "populated 0" && !dir.exists();
        }
        if text.lines().any(|l| l.trim() == want) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let wait = left.min(Duration::from_millis(50));
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::ZERO);
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLPRI)];
        let _ = poll(&mut fds, timeout);
    }
}

/// Who owns a base directory: the pid namespace (cgroup directories are shared across pid
/// namespaces, and pids repeat between them), the pid, and the process start time (pids are
/// recycled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Identity {
    pub(super) pidns: u64,
    pub(super) pid: u32,
    pub(super) start: u64,
}

impl Identity {
    pub(super) fn of_self() -> io::Result<Identity> {
        use std::os::unix::fs::MetadataExt;
        let pidns = std::fs::metadata("/proc/self/ns/pid")?.ino();
        let pid = std::process::id();
        let start = start_time(pid).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "no start time in /proc/self/stat")
        })?;
        Ok(Identity { pidns, pid, start })
    }

    pub(super) fn dir_name(&self) -> String {
        format!("warden-{}-{}-{}", self.pidns, self.pid, self.start)
    }

    pub(super) fn parse(name: &str) -> Option<Identity> {
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
pub(super) fn start_time(pid: u32) -> Option<u64> {
    super::sweep::with_stat(pid as i32, |rest| rest.split(' ').nth(19)?.parse().ok())
}

/// Removes the base directories of supervisors of our pid namespace that no longer run
/// (SIGKILLed, or ended while a leaf was still emptying). What is still inside a stale leaf is
/// what is left of a dead supervisor's tree: it is killed, and the leaf is removed now or by a
/// later probe. Directories of other pid namespaces are never touched: their owners cannot be
/// seen from here.
fn sweep_stale(own: &Path, me: &Identity) {
    for_each_stale_base(own, me, |dir| {
        if let Ok(leaves) = std::fs::read_dir(dir) {
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
        let _ = std::fs::remove_dir(dir);
    });
}

/// Calls `remove` on each base directory under `own` whose owner (named by the directory, see
/// [`Identity`]) is of our pid namespace, is not us, and no longer runs (its start time
/// differs: the pid was recycled or is free). The one walk the v2 and v1 sweeps share.
pub(super) fn for_each_stale_base(own: &Path, me: &Identity, mut remove: impl FnMut(&Path)) {
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
        remove(&entry.path());
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

    /// Tells the guard to run an orphan ladder on this leaf should the supervisor die (see the
    /// module docs). Without a guard, or if it cannot be told, the leaf is killed at once then.
    pub(crate) fn set_orphan_ladder(&self, signal: libc::c_int, delay: Duration) {
        let Some(name) = self.dir.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        if let Err(e) = tell_guard(&format!("ladder {name} {signal} {ms}\n")) {
            tracing::warn!(error = %e, leaf = name, "could not give the cgroup guard an orphan ladder");
        }
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

    /// `cgroup.kill`, opened for writing: one `write` of `1` kills the leaf from any thread.
    pub(crate) fn open_kill(&self) -> io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.kill"))
    }

    /// True while any process is in the leaf.
    pub(crate) fn populated(&self) -> bool {
        populated(&self.dir)
    }

    /// Opens a watch on the leaf's `cgroup.events`, which the kernel flags (POLLPRI) whenever
    /// it changes, so emptiness is awaited rather than polled. `None` where the file cannot be
    /// registered with the reactor (the caller then polls).
    pub(crate) fn watch_events(&self) -> Option<EventsWatch> {
        let file = std::fs::File::open(self.dir.join("cgroup.events")).ok()?;
        super::unix::register(file, tokio::io::Interest::PRIORITY)
            .ok()
            .map(|fd| EventsWatch { fd })
    }

    /// Freezes (`true`) or thaws the leaf; see [`set_frozen`].
    pub(crate) fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        set_frozen(&self.dir, frozen)
    }

    /// Whether the leaf has the v2 `controller` (`memory`, `pids`): enabled in the base's
    /// `cgroup.subtree_control` (done here, once, where warden's own cgroup offers it).
    pub(crate) fn has_controller(&self, controller: &str) -> bool {
        let listed = |dir: &Path| {
            std::fs::read_to_string(dir.join("cgroup.controllers"))
                .is_ok_and(|s| s.split_whitespace().any(|c| c == controller))
        };
        if listed(&self.dir) {
            return true;
        }
        let Some(base) = self.dir.parent() else {
            return false;
        };
        listed(base)
            && std::fs::write(
                base.join("cgroup.subtree_control"),
                format!("+{controller}\n"),
            )
            .is_ok()
            && listed(&self.dir)
    }

    /// Writes `value` to the leaf's control file `file` (`memory.max`, `pids.max`).
    pub(crate) fn set(&self, file: &str, value: &str) -> io::Result<()> {
        std::fs::write(self.dir.join(file), value)
    }

    /// Reads the leaf's control file `file`.
    pub(crate) fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(file)).ok()
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
        let counted = self.counted;
        if counted {
            LIVE.fetch_sub(1, Ordering::AcqRel);
        }
        // An empty leaf (the usual case) is removed at once; a populated one refuses (EBUSY)
        // and is killed first.
        if std::fs::remove_dir(&self.dir).is_ok() {
            remove_base_if_idle(counted);
            return;
        }
        if self.populated() {
            let _ = self.kill();
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

/// A leaf's `cgroup.events`, registered with tokio's reactor for POLLPRI (see
/// [`Cgroup::watch_events`]).
pub(crate) struct EventsWatch {
    fd: tokio::io::unix::AsyncFd<std::fs::File>,
}

impl EventsWatch {
    /// Whether the file, read through this watch's own descriptor (which re-arms the kernel's
    /// notification for it), says `populated 1`. A read error (the leaf is gone) is empty.
    fn populated(&self) -> bool {
        use std::io::{Read, Seek};
        let mut file = self.fd.get_ref();
        let mut text = String::new();
        file.rewind()
            .and_then(|_| file.read_to_string(&mut text))
            .is_ok_and(|_| text.lines().any(|l| l.trim() == "populated 1"))
    }

    /// Waits until the leaf is empty, or until `until`, whichever is first; returns whether
    /// it is empty. Woken by the kernel's notification, not by a timer.
    ///
    /// # Cancel safety
    /// Cancel-safe: it holds nothing but the watch.
    pub(crate) async fn wait_empty(&self, until: tokio::time::Instant) -> bool {
        loop {
            // Read after every wake-up (and before the first wait): an edge that fired before
            // the registration is not lost.
            if !self.populated() {
                return true;
            }
            match tokio::time::timeout_at(until, self.fd.ready(tokio::io::Interest::PRIORITY)).await
            {
                Ok(Ok(mut guard)) => guard.clear_ready(),
                Ok(Err(_)) | Err(_) => return !self.populated(),
            }
        }
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
    fn guard_orders_parse_lines_across_reads_and_ignore_garbage() {
        let base = Path::new("/nonexistent-warden-base");
        let mut orders = GuardOrders::default();
        orders.feed(b"ladder tree-1 15 2", base);
        assert!(
            orders.ladders.is_empty(),
            "a partial line waits for its end"
        );
        orders.feed(
            b"500\nladder ../x 15 1\nnonsense\nladder tree-2 x 1\n",
            base,
        );
        orders.feed(b"ladder tree-3 1 0 extra\nladder tree-4 10 0\n", base);
        let mut got: Vec<_> = orders
            .ladders
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("tree-1".to_owned(), (15, Duration::from_millis(2500))),
                ("tree-4".to_owned(), (10, Duration::ZERO)),
            ]
        );
    }

    #[test]
    fn guard_orders_take_v1_bases_of_warden_only() {
        let mut orders = GuardOrders::default();
        orders.feed(
            b"v1base /sys/fs/cgroup/pids/warden-1-2-3\nv1base relative/warden-1-2-3\n\
              v1base /sys/fs/cgroup/pids\nv1base /x/../warden-1-2-3\n",
            Path::new("/nonexistent-warden-base"),
        );
        assert_eq!(
            orders.v1_bases.into_iter().collect::<Vec<_>>(),
            [PathBuf::from("/sys/fs/cgroup/pids/warden-1-2-3")]
        );
    }

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
