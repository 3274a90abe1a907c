//! A process tree under containment: the program, everything it starts, and nothing else.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::limits::{LimitEntry, LimitKind, LimitReport, Limits, Mechanism, Sandbox, SandboxEntry};
use super::spawner::{SpawnOptions, spawn};
use super::{Child, Command, ExitStatus, pidfd, sweep};
use crate::error::{ParseNameError, SpawnError};

#[cfg(target_os = "linux")]
use super::cgroup::Cgroup;
#[cfg(target_os = "linux")]
use super::cgroup_v1::{Controller, V1Cgroup};
#[cfg(not(target_os = "linux"))]
use super::no_cgroup::Cgroup;

/// Which containment to use for a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Containment {
    /// The strongest available: a cgroup v2 leaf, else (once the host called
    /// [`claim_all_children`](crate::claim_all_children)) child subreaper, else process group.
    #[default]
    Auto,
    /// A cgroup v2 leaf; spawning fails if none can be created.
    Cgroup,
    /// Child subreaper, process group, and a /proc sweep of descendants (Linux). Makes this
    /// whole process a child subreaper whose orphan reaper takes every zombie child that warden
    /// does not own: it implies [`claim_all_children`](crate::claim_all_children).
    Subreaper,
    /// The process group only: descendants that call setsid or setpgid escape.
    ProcessGroup,
}

/// The containment a tree actually got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContainmentMode {
    /// A cgroup v2 leaf: every descendant, however it detaches, is killed with `cgroup.kill`.
    Cgroup,
    /// warden is a child subreaper: orphaned descendants are re-parented to it, found through
    /// /proc (by ancestry or by the tree's environment tag) and killed with the process group.
    /// A descendant that both detaches and scrubs its environment can escape.
    Subreaper,
    /// Process group only: descendants that leave the group escape.
    ProcessGroup,
}

impl ContainmentMode {
    /// Every mode, from the strongest.
    pub const ALL: [ContainmentMode; 3] = [
        ContainmentMode::Cgroup,
        ContainmentMode::Subreaper,
        ContainmentMode::ProcessGroup,
    ];

    /// The name used in reports: `cgroup`, `subreaper`, `process_group`. [`FromStr`] takes it
    /// back.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainmentMode::Cgroup => "cgroup",
            ContainmentMode::Subreaper => "subreaper",
            ContainmentMode::ProcessGroup => "process_group",
        }
    }
}

impl fmt::Display for ContainmentMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ContainmentMode {
    type Err = ParseNameError;

    /// The mode [`ContainmentMode::as_str`] names (exactly: lower case, `process_group`).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        ContainmentMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == name)
            .ok_or_else(|| ParseNameError::new("containment mode", name))
    }
}

/// How to start a tree.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TreeOptions {
    /// Which containment to use (default: the strongest available).
    pub containment: Containment,
    /// Start the program in a process group of its own (default). `false` keeps it in the
    /// supervisor's group, as GNU timeout's `--foreground` does: then only the program itself
    /// is ever signalled, and its descendants are left alone while it runs.
    pub new_process_group: bool,
    /// Signal the program if the supervisor dies (`PR_SET_PDEATHSIG` from the exec shim, with
    /// [`death_signal`](Self::death_signal); needs [`crate::shim::run_if_shim`] in `main`).
    /// Default true.
    pub die_with_supervisor: bool,
    /// The signal the program gets when the supervisor dies (default SIGKILL). Only the
    /// program gets it, not what it started: for the rest of the tree see
    /// [`orphan_ladder`](Self::orphan_ladder). A number the kernel rejects makes spawning fail
    /// with [`SpawnError::Setup`].
    pub death_signal: i32,
    /// Signals the program starts with ignored (SIG_IGN); every other signal starts at its
    /// default and the signal mask is empty. With the exec shim the shim sets them just before
    /// exec, whatever the supervisor's own dispositions. **Without a shim** (a host that did
    /// not call [`crate::shim::run_if_shim`]) they are only left out of the reset to default,
    /// so the program inherits the supervisor's disposition of them: ignored only if the
    /// supervisor ignores them. SIGKILL, SIGSTOP or a number that is no signal make spawning
    /// fail with [`SpawnError::InvalidSignal`]. Default: none.
    pub ignored_signals: Vec<i32>,
    /// What the cgroup guard does with this tree if the supervisor dies (even SIGKILLed):
    /// `None` (default) kills it at once; a ladder sends its signal (and SIGCONT) to every
    /// member, waits up to its delay for the tree to empty, then kills what is left. Only
    /// with cgroup containment (the guard watches cgroups); ignored otherwise. The program
    /// itself also gets [`death_signal`](Self::death_signal) at once: set both to the same
    /// signal for a polite end.
    pub orphan_ladder: Option<OrphanLadder>,
    /// Resource limits (default: none). See [`Limits`] for the mechanisms; a limit this host
    /// cannot enforce fails the spawn unless [`Limits::best_effort`].
    pub limits: Limits,
    /// The sandbox (default: none). Needs the exec shim; a feature this kernel lacks fails
    /// the spawn unless [`Sandbox::best_effort`].
    pub sandbox: Option<Sandbox>,
}

/// The cgroup guard's ladder for a tree whose supervisor died: `signal` and SIGCONT to every
/// member, at most `delay` for them to exit, then SIGKILL (`cgroup.kill`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OrphanLadder {
    /// The polite signal.
    pub signal: i32,
    /// How long the tree gets to exit after it.
    pub delay: Duration,
}

impl OrphanLadder {
    /// `signal`, then SIGKILL after `delay`.
    pub fn new(signal: i32, delay: Duration) -> Self {
        OrphanLadder { signal, delay }
    }
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions {
            containment: Containment::Auto,
            new_process_group: true,
            die_with_supervisor: true,
            death_signal: libc::SIGKILL,
            ignored_signals: Vec::new(),
            orphan_ladder: None,
            limits: Limits::default(),
            sandbox: None,
        }
    }
}

impl TreeOptions {
    /// The defaults: strongest containment, own process group, die with the supervisor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the containment.
    pub fn containment(mut self, containment: Containment) -> Self {
        self.containment = containment;
        self
    }

    /// Starts the program in a process group of its own (`true`, default) or in ours.
    pub fn new_process_group(mut self, yes: bool) -> Self {
        self.new_process_group = yes;
        self
    }

    /// Signals the program when the supervisor dies (needs the exec shim).
    pub fn die_with_supervisor(mut self, yes: bool) -> Self {
        self.die_with_supervisor = yes;
        self
    }

    /// The signal the program gets when the supervisor dies (default SIGKILL; see
    /// [`death_signal`](Self::death_signal) the field). Implies `die_with_supervisor(true)`.
    pub fn death_signal(mut self, signal: i32) -> Self {
        self.die_with_supervisor = true;
        self.death_signal = signal;
        self
    }

    /// Signals the program starts with ignored (see the field
    /// [`ignored_signals`](Self::ignored_signals), and what happens without a shim).
    pub fn ignored_signals(mut self, signals: impl IntoIterator<Item = i32>) -> Self {
        self.ignored_signals = signals.into_iter().collect();
        self
    }

    /// If the supervisor dies, the cgroup guard sends `signal` and SIGCONT to every member of
    /// this tree and kills what is left after `delay` (cgroup containment only; see the field
    /// [`orphan_ladder`](Self::orphan_ladder)).
    pub fn orphan_ladder(mut self, signal: i32, delay: Duration) -> Self {
        self.orphan_ladder = Some(OrphanLadder::new(signal, delay));
        self
    }

    /// Resource limits for the tree (see the field [`limits`](Self::limits)).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Runs the program in `sandbox` (see the field [`sandbox`](Self::sandbox)).
    pub fn sandbox(mut self, sandbox: Sandbox) -> Self {
        self.sandbox = Some(sandbox);
        self
    }
}

/// What [`Tree::finish`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TreeReport {
    /// How the program (the tree's root) ended; `None` if it could not be reaped in time.
    pub status: Option<ExitStatus>,
    /// The containment the tree had.
    pub containment: ContainmentMode,
    /// Descendants found outside the program's process group (setsid, setpgid, daemons) and
    /// signalled or killed, by pid.
    pub escaped: Vec<u32>,
    /// Each requested limit (its mechanism, and whether the tree reached it) and sandbox
    /// feature.
    pub limits: LimitReport,
}

/// Environment variable tagging every process of a tree (used to find adopted orphans).
pub(crate) const TREE_TAG_ENV: &str = "WARDEN_TREE";

/// A program and all its descendants, held so that signals reach the whole tree and nothing
/// outside it.
#[derive(Debug)]
pub struct Tree {
    child: Child,
    mode: ContainmentMode,
    cgroup: Option<Cgroup>,
    new_group: bool,
    tag: String,
    escaped: BTreeSet<u32>,
    suspended: Option<Suspension>,
    enforcement: Enforcement,
    /// The limit report read once the tree was gone, before its cgroups are removed.
    final_limits: Option<LimitReport>,
}

/// How a tree's limits and sandbox are enforced, decided before it starts.
#[derive(Debug, Default)]
struct Enforcement {
    limits: Vec<(LimitKind, u64, Mechanism)>,
    /// The tree's cgroup v1 limit cgroups (removed when the tree is dropped).
    #[cfg(target_os = "linux")]
    v1: Vec<V1Cgroup>,
    setup: super::shim::Setup,
    sandbox: Vec<SandboxEntry>,
}

/// How a suspended tree was stopped, so that it is continued the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suspension {
    /// Its cgroup was frozen (`cgroup.freeze`).
    Frozen,
    /// SIGSTOP went to its process group and to the members that left it.
    Signalled,
}

impl std::fmt::Debug for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Child").field("pid", &self.pid()).finish()
    }
}

fn become_subreaper() -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| match nix::sys::prctl::set_child_subreaper(true) {
            Ok(()) => {
                sweep::start_orphan_reaper();
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot become a child subreaper");
                false
            }
        })
    }
    #[cfg(not(target_os = "linux"))]
    false
}

impl Tree {
    /// Starts `cmd` under containment. Returns once the program runs: with the exec shim,
    /// after its `execve` succeeded (a failure before or at exec is an error, and the process
    /// is reaped by then).
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`SpawnError::NotFound`] / [`SpawnError::NotExecutable`] when `execve` fails (with the
    /// errno), [`SpawnError::Setup`] when a step of the exec shim does,
    /// [`SpawnError::ContainmentUnavailable`], [`SpawnError::InvalidSignal`],
    /// [`SpawnError::InvalidCommand`], [`SpawnError::Launch`];
    /// [`SpawnError::LimitUnavailable`] / [`SpawnError::SandboxUnavailable`] for a limit or
    /// sandbox feature this host cannot enforce (unless best effort), [`SpawnError::Limit`]
    /// when configuring a limit's cgroup fails.
    ///
    /// # Cancel safety
    /// Dropping the future kills and reaps whatever was started.
    pub async fn spawn(cmd: &Command, options: TreeOptions) -> Result<Tree, SpawnError> {
        Self::spawn_with(cmd, &options, None, None).await
    }

    pub(crate) async fn spawn_with(
        cmd: &Command,
        options: &TreeOptions,
        channel: Option<OwnedFd>,
        captured: Option<[OwnedFd; 2]>,
    ) -> Result<Tree, SpawnError> {
        if let Some(&signal) = options
            .ignored_signals
            .iter()
            .find(|&&sig| !super::unix::can_be_ignored(sig))
        {
            return Err(SpawnError::InvalidSignal { signal });
        }
        let (mode, cgroup) = match options.containment {
            // Without the exec shim a cgroup can only be joined after exec, when the program
            // may already have forked: then the subreaper is the stronger choice.
            Containment::Auto => match super::shim::available().then(Cgroup::create).flatten() {
                Some(cg) => (ContainmentMode::Cgroup, Some(cg)),
                None if sweep::children_claimed() && become_subreaper() => {
                    (ContainmentMode::Subreaper, None)
                }
                None => (ContainmentMode::ProcessGroup, None),
            },
            Containment::Cgroup => match Cgroup::create() {
                Some(cg) => (ContainmentMode::Cgroup, Some(cg)),
                None => {
                    return Err(SpawnError::ContainmentUnavailable {
                        requested: "cgroup",
                    });
                }
            },
            Containment::Subreaper if become_subreaper() => (ContainmentMode::Subreaper, None),
            Containment::Subreaper => {
                return Err(SpawnError::ContainmentUnavailable {
                    requested: "subreaper",
                });
            }
            Containment::ProcessGroup => (ContainmentMode::ProcessGroup, None),
        };
        if let (Some(cg), Some(ladder)) = (&cgroup, options.orphan_ladder) {
            // Told before the program starts: a supervisor killed right after the spawn still
            // has its guard run the ladder.
            cg.set_orphan_ladder(ladder.signal, ladder.delay);
        }
        let tag = next_tag();
        let use_shim = super::shim::available();
        let mut enforcement = plan(options, cgroup.as_ref(), use_shim)?;
        let shim = use_shim.then(|| super::shim::ShimPlan {
            death_signal: options.die_with_supervisor.then_some(options.death_signal),
            cgroup_procs: cgroup.as_ref().map(Cgroup::procs_file),
            ignored: options.ignored_signals.clone(),
            setup: std::mem::take(&mut enforcement.setup),
        });
        let opts = SpawnOptions {
            channel,
            same_group: !options.new_process_group,
            shim,
            extra_env: vec![(TREE_TAG_ENV.into(), tag.clone().into())],
            keep_inherited: if use_shim {
                Vec::new()
            } else {
                options.ignored_signals.clone()
            },
            captured,
        };
        let child = spawn(cmd, opts).await?;
        if !use_shim
            && let Some(cg) = &cgroup
            && let Err(e) = cg.add(child.pid())
        {
            // Too late for a clean placement: fall back to what still holds.
            tracing::warn!(error = %e, "could not move the program into its cgroup");
        }
        #[cfg(target_os = "linux")]
        if !use_shim {
            for v1 in &enforcement.v1 {
                if let Err(e) = v1.add(child.pid()) {
                    tracing::warn!(error = %e, "could not move the program into its v1 cgroup");
                }
            }
        }
        Ok(Tree {
            child,
            mode,
            cgroup,
            new_group: options.new_process_group,
            tag,
            escaped: BTreeSet::new(),
            suspended: None,
            enforcement,
            final_limits: None,
        })
    }

    /// Each requested limit and sandbox feature: how it is enforced and, from the kernel's
    /// counters, whether the tree reached it. Final once the tree has ended
    /// ([`finish`](Self::finish)); read live before that.
    pub fn limits(&self) -> LimitReport {
        match &self.final_limits {
            Some(report) => report.clone(),
            None => self.read_limits(),
        }
    }

    fn read_limits(&self) -> LimitReport {
        let status = self.child.exit_status();
        let limits = self
            .enforcement
            .limits
            .iter()
            .map(|&(kind, value, mechanism)| {
                let mut entry = LimitEntry {
                    kind,
                    value,
                    mechanism,
                    hit: None,
                    peak: None,
                    oom_kills: None,
                };
                self.read_counters(&mut entry, status);
                entry
            })
            .collect();
        LimitReport {
            limits,
            sandbox: self.enforcement.sandbox.clone(),
        }
    }

    /// Fills `hit`, `peak` and `oom_kills` from the kernel's counters.
    fn read_counters(&self, entry: &mut LimitEntry, status: Option<ExitStatus>) {
        #[cfg(target_os = "linux")]
        {
            use super::cgroup_v1::keyed;
            let v1 = |c: Controller| self.enforcement.v1.iter().find(|g| g.controller() == c);
            let number = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok());
            match (entry.kind, entry.mechanism) {
                (LimitKind::Memory, Mechanism::CgroupV2) => {
                    let Some(cg) = &self.cgroup else { return };
                    entry.peak = number(cg.read("memory.peak"));
                    let events = cg.read("memory.events").unwrap_or_default();
                    entry.oom_kills = keyed(&events, "oom_kill");
                    entry.hit = keyed(&events, "max").map(|n| n > 0 || entry.oom_kills > Some(0));
                }
                (LimitKind::Memory, Mechanism::CgroupV1) => {
                    let Some(cg) = v1(Controller::Memory) else {
                        return;
                    };
                    entry.peak = number(cg.read("memory.max_usage_in_bytes"));
                    entry.oom_kills = keyed(
                        &cg.read("memory.oom_control").unwrap_or_default(),
                        "oom_kill",
                    );
                    entry.hit = number(cg.read("memory.failcnt"))
                        .map(|n| n > 0 || entry.oom_kills > Some(0));
                }
                (LimitKind::Processes, Mechanism::CgroupV2) => {
                    let Some(cg) = &self.cgroup else { return };
                    entry.peak = number(cg.read("pids.peak"));
                    entry.hit =
                        keyed(&cg.read("pids.events").unwrap_or_default(), "max").map(|n| n > 0);
                }
                (LimitKind::Processes, Mechanism::CgroupV1) => {
                    let Some(cg) = v1(Controller::Pids) else {
                        return;
                    };
                    entry.peak = number(cg.read("pids.peak"));
                    entry.hit =
                        keyed(&cg.read("pids.events").unwrap_or_default(), "max").map(|n| n > 0);
                }
                (LimitKind::CpuTime, Mechanism::Rlimit) => {
                    entry.hit = status.map(|s| s.signal() == Some(libc::SIGXCPU));
                }
                _ => {}
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (entry, status);
    }

    /// The tree's memory in use now, in bytes: its cgroup's `memory.current` (v2) or
    /// `memory.usage_in_bytes` (its v1 memory cgroup) when it has one, else the program's
    /// resident set (`/proc/PID/statm`). Not a peak: what a pool recycles on. `None` once the
    /// program has exited (its pid is not read after that) or where nothing tells.
    pub(crate) fn memory_current(&self) -> Option<u64> {
        if self.child.is_reaped() || self.child.exit_status().is_some() {
            return None;
        }
        let number = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok());
        #[cfg(target_os = "linux")]
        {
            if let Some(bytes) = self
                .cgroup
                .as_ref()
                .and_then(|cg| number(cg.read("memory.current")))
            {
                return Some(bytes);
            }
            if let Some(bytes) = self
                .enforcement
                .v1
                .iter()
                .find(|g| g.controller() == Controller::Memory)
                .and_then(|g| number(g.read("memory.usage_in_bytes")))
            {
                return Some(bytes);
            }
        }
        // The pid is unreaped (checked above, and only this tree's owner reaps it), so it is
        // still the program's.
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.pid())).ok()?;
        let pages = number(statm.split_whitespace().nth(1).map(str::to_owned))?;
        Some(pages.saturating_mul(super::unix::page_size()))
    }

    /// The program's pid (also its process group id unless started without a new group).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// When the program's process was created: taken just before its clone, so a vfork-style
    /// spawn's wait for the exec is not in it. A deadline for the program counts from here,
    /// as GNU `timeout`'s counts from its `fork`.
    pub fn started_at(&self) -> Instant {
        self.child.created()
    }

    /// The containment this tree got.
    pub fn containment(&self) -> ContainmentMode {
        self.mode
    }

    /// Signals the program only.
    pub fn signal_leader(&self, sig: i32) -> io::Result<()> {
        self.child.signal(sig)
    }

    /// Signals every process of the tree: the program's process group, plus descendants that
    /// left it (found through the cgroup or, as a subreaper, through /proc). Without a process
    /// group of its own (`new_process_group: false`) only the program is signalled. Members
    /// outside the group that another warden tree started (a nested supervisor's, whose
    /// environment names its own tree) get only SIGKILL, SIGSTOP and SIGCONT: any other
    /// signal is the nested supervisor's to pass on, as GNU `timeout` leaves a nested one's
    /// process group alone.
    pub fn signal_tree(&mut self, sig: i32) -> io::Result<()> {
        if !self.new_group {
            return self.child.signal(sig);
        }
        let result = self.child.signal_group(sig);
        // A member that another warden tree started (a nested `warden timeout`: its
        // environment names that tree) is that supervisor's to stop politely, as a nested
        // cgroup keeps it out of this tree's `cgroup.procs`; SIGKILL and job control reach it.
        let spare_nested = !matches!(sig, libc::SIGKILL | libc::SIGSTOP | libc::SIGCONT);
        for pid in self.outside_group(None) {
            if spare_nested && self.in_nested_tree(pid) {
                continue;
            }
            if signal_member(pid, sig, |p| self.is_member(p)) {
                self.escaped.insert(pid as u32);
            }
        }
        result
    }

    /// What can SIGKILL this tree from any thread, without the `Tree`: its cgroup's
    /// `cgroup.kill`, or a pidfd that signals its whole process group. `None` where neither
    /// is available (then only [`kill_tree`](Self::kill_tree) can). The switch is pid-reuse
    /// safe (a pidfd names one process; a leaf is ours until it is removed). It does less than
    /// `kill_tree` (no sweep for members outside the group), which is still to be called.
    pub(crate) fn kill_switch(&self) -> Option<KillSwitch> {
        let (leader, group) = self.child.pidfd_copy()?;
        let cgroup_kill = self.cgroup.as_ref().and_then(|cg| cg.open_kill().ok());
        let group = group && self.new_group;
        if cgroup_kill.is_none() && !group {
            return None;
        }
        Some(KillSwitch {
            cgroup_kill,
            leader,
            group,
        })
    }

    /// SIGKILLs the whole tree (atomically with `cgroup.kill` when in a cgroup).
    pub fn kill_tree(&mut self) -> io::Result<()> {
        if let Some(cg) = &self.cgroup {
            // cgroup.kill leaves nothing to find afterwards: note who left the group first
            // (membership in our leaf is proof enough), so the report names them.
            if self.new_group {
                let outside = self.outside_group(None);
                self.escaped.extend(outside.into_iter().map(|p| p as u32));
            }
            let _ = cg.kill();
        }
        self.signal_tree(libc::SIGKILL)
    }

    /// Stops every process of the tree, for job control (a shell's Ctrl-Z): freezes its cgroup
    /// (`cgroup.freeze`) where it has one, else SIGSTOPs its process group and the members that
    /// left it, as [`signal_tree`](Self::signal_tree) reaches them (pid-reuse safe). Returns at
    /// once: [`wait_suspended`](Self::wait_suspended) waits until it took effect. A no-op while
    /// already suspended. The tree can still be killed while suspended.
    ///
    /// # Errors
    /// The SIGSTOP to the process group failed (a freeze that fails falls back to SIGSTOP).
    pub fn suspend(&mut self) -> io::Result<()> {
        if self.suspended.is_some() {
            return Ok(());
        }
        if let Some(cg) = &self.cgroup {
            match cg.set_frozen(true) {
                Ok(()) => {
                    self.suspended = Some(Suspension::Frozen);
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot freeze the cgroup; stopping the tree with SIGSTOP")
                }
            }
        }
        self.suspended = Some(Suspension::Signalled);
        self.signal_tree(libc::SIGSTOP)
    }

    /// Waits, up to `timeout`, until a [`suspend`](Self::suspend) took effect: the cgroup says
    /// `frozen 1`, or every live member of the process group and every member found outside
    /// it is stopped. Returns whether it did (`true` also when nothing is left to stop, and
    /// `false` when the tree is not suspended). A process in uninterruptible sleep (state `D`)
    /// stops only once it leaves it, so the wait can time out.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only looks.
    pub async fn wait_suspended(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut pause = Duration::from_millis(1);
        loop {
            let done = match self.suspended {
                None => return false,
                Some(Suspension::Frozen) => self.cgroup.as_ref().is_some_and(Cgroup::frozen),
                Some(Suspension::Signalled) => self.all_stopped(),
            };
            if done {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Continues a suspended tree the way it was stopped: thaws its cgroup, or SIGCONTs its
    /// process group and the members outside it. A no-op if it is not suspended.
    ///
    /// # Errors
    /// The thaw or the SIGCONT to the process group failed; the tree counts as continued
    /// either way (a second call does nothing).
    pub fn resume(&mut self) -> io::Result<()> {
        match self.suspended.take() {
            None => Ok(()),
            Some(Suspension::Frozen) => match &self.cgroup {
                Some(cg) => cg.set_frozen(false),
                None => Ok(()),
            },
            Some(Suspension::Signalled) => self.signal_tree(libc::SIGCONT),
        }
    }

    /// Whether the tree is suspended ([`suspend`](Self::suspend) without a
    /// [`resume`](Self::resume) since).
    pub fn is_suspended(&self) -> bool {
        self.suspended.is_some()
    }

    /// Whether every live member that SIGSTOP reached is stopped.
    fn all_stopped(&self) -> bool {
        if self.child.is_reaped() {
            return true;
        }
        let leader = self.child.pid() as i32;
        let snapshot = sweep::Snapshot::take();
        let mut members = if self.new_group {
            snapshot.group_members(leader)
        } else {
            vec![leader]
        };
        if self.new_group {
            members.extend(self.outside_group(Some(&snapshot)));
        }
        members
            .iter()
            .all(|&p| snapshot.stat(p).is_none_or(|st| st.stopped))
    }

    /// Waits until the program exits (without reaping it, so its group can still be signalled).
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait_exit().await
    }

    /// The program's exit status, if its exit was observed.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child.exit_status()
    }

    /// Ends the tree: SIGKILLs whatever is left of it, reaps the program, waits (up to
    /// `reap_timeout`) until every other member is gone, reaps adopted orphans and removes the
    /// cgroup. Call it after [`wait`](Self::wait) to clean up after a program that exited, or
    /// at any time to end everything.
    pub async fn finish(mut self, reap_timeout: Duration) -> TreeReport {
        let status = self.settle(reap_timeout).await;
        TreeReport {
            status,
            containment: self.mode,
            escaped: self.escaped(),
            limits: self.limits(),
        }
    }

    /// [`finish`](Self::finish) without giving up the tree (the worker actor keeps it).
    pub(crate) async fn settle(&mut self, reap_timeout: Duration) -> Option<ExitStatus> {
        if self.child.is_reaped() {
            return self.child.exit_status();
        }
        let status = self.settle_tree(reap_timeout).await;
        if status.is_some() {
            // Everything is gone; the cgroups are still there until the tree is dropped.
            self.final_limits = Some(self.read_limits());
        }
        status
    }

    async fn settle_tree(&mut self, reap_timeout: Duration) -> Option<ExitStatus> {
        /// While awaiting a killed cgroup's emptiness, how often the kill is repeated.
        const RE_KILL_EVERY: Duration = Duration::from_millis(50);
        // The program has exited and its cgroup is empty (a process leaves its cgroup when it
        // exits, not when it is reaped): nothing is left that could fork, so nothing to kill,
        // note or wait for. Spares every `warden timeout` a kill and four cgroupfs reads.
        if self.child.exit_status().is_some()
            && self.cgroup.as_ref().is_some_and(|cg| !cg.populated())
        {
            return self.child.reap().ok();
        }
        let _ = self.kill_tree();
        let deadline = Instant::now().checked_add(reap_timeout);
        let status = match tokio::time::timeout(reap_timeout, self.child.wait_exit()).await {
            Ok(Ok(_)) => {
                // Members die while the exited, unreaped leader still pins the group id.
                if let Some(watch) = self.cgroup.as_ref().and_then(|cg| cg.watch_events()) {
                    // A cgroup says when it empties: wait for that, not for a timer. The kill
                    // is repeated now and then for a kernel without `cgroup.kill`, where a
                    // member forked during the first kill survives it.
                    loop {
                        let now = tokio::time::Instant::now();
                        let mut until = now + RE_KILL_EVERY;
                        if let Some(d) = deadline {
                            until = until.min(tokio::time::Instant::from_std(d));
                        }
                        if watch.wait_empty(until).await
                            || deadline.is_some_and(|d| Instant::now() >= d)
                        {
                            break;
                        }
                        let _ = self.kill_tree();
                    }
                }
                let mut pause = Duration::from_millis(1);
                // The tree was SIGKILLed above: usually nothing is left to find.
                while self.has_members() && deadline.is_none_or(|d| Instant::now() < d) {
                    let _ = self.kill_tree();
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                self.child.reap().ok()
            }
            _ => None,
        };
        if self.mode == ContainmentMode::Subreaper {
            sweep::reap_orphans();
        }
        status
    }

    /// Pids of descendants found outside the process group and signalled so far.
    pub fn escaped(&self) -> Vec<u32> {
        self.escaped.iter().copied().collect()
    }

    pub(crate) fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Whether any member other than the (exited) program is still alive.
    fn has_members(&self) -> bool {
        if let Some(cg) = &self.cgroup {
            return cg.populated();
        }
        // One read of /proc answers both questions.
        let any = |snapshot: &sweep::Snapshot| {
            !self.outside_group(Some(snapshot)).is_empty()
                || (self.new_group
                    && !self.child.is_reaped()
                    && snapshot.group_has_members(self.child.pid() as i32))
        };
        // As our subreaper's, every member descends from us: the walk down from us finds them
        // without reading every process. It can miss one that moves to us while it runs (its
        // parent exiting, as a killed tree's do), so only the full read may say "none".
        if self.mode == ContainmentMode::Subreaper
            && sweep::Snapshot::take_under(std::process::id() as i32).is_some_and(|s| any(&s))
        {
            return true;
        }
        any(&sweep::Snapshot::take())
    }

    /// Whether `pid` was started in another warden tree (nested in this one).
    fn in_nested_tree(&self, pid: i32) -> bool {
        sweep::env_value(pid, TREE_TAG_ENV).is_some_and(|tag| tag != self.tag.as_bytes())
    }

    fn is_member(&self, pid: i32) -> bool {
        match &self.cgroup {
            Some(cg) => cg.pids().contains(&(pid as u32)),
            None => {
                sweep::descends_from(pid, self.child.pid() as i32)
                    || sweep::has_env(pid, &format!("{TREE_TAG_ENV}={}", self.tag))
            }
        }
    }

    /// Live members outside the program's process group. `snapshot` is a fresh read of /proc
    /// in subreaper mode (taken here if `None`); the other modes need none.
    fn outside_group(&self, snapshot: Option<&sweep::Snapshot>) -> Vec<i32> {
        let leader = self.child.pid() as i32;
        let outside = |p: i32, st: Option<sweep::Stat>| {
            p != leader && st.is_some_and(|s| !s.zombie && s.pgrp != leader)
        };
        if let Some(cg) = &self.cgroup {
            return cg
                .pids()
                .into_iter()
                .map(|p| p as i32)
                .filter(|&p| outside(p, sweep::stat(p)))
                .collect();
        }
        if self.mode != ContainmentMode::Subreaper {
            return Vec::new();
        }
        let taken;
        let snapshot = match snapshot {
            Some(s) => s,
            None => {
                // To signal members, the walk down from us is enough (every member descends
                // from us): one it misses is found by the next sweep, and `has_members`
                // confirms "none" with a full read before the tree counts as empty.
                let me = std::process::id() as i32;
                taken = sweep::Snapshot::take_under(me).unwrap_or_else(sweep::Snapshot::take);
                &taken
            }
        };
        // The leader is our child, so its subtree is inside ours; orphans re-parented to us
        // are ours if they carry the tree's tag.
        let under_leader: HashSet<i32> = snapshot.descendants(leader).into_iter().collect();
        let tag = format!("{TREE_TAG_ENV}={}", self.tag);
        snapshot
            .descendants(std::process::id() as i32)
            .into_iter()
            .filter(|&p| outside(p, snapshot.stat(p)))
            .filter(|p| under_leader.contains(p) || sweep::has_env(*p, &tag))
            .collect()
    }
}

/// See [`Tree::kill_switch`].
pub(crate) struct KillSwitch {
    cgroup_kill: Option<std::fs::File>,
    /// A pidfd of the program (the group leader).
    leader: std::os::fd::OwnedFd,
    /// Whether `leader` signals its whole process group.
    group: bool,
}

impl KillSwitch {
    /// SIGKILLs the tree; returns whether anything was sent. Two short system calls at most (a
    /// write to `cgroup.kill`, a pidfd signal), none that waits: it runs on the timer thread,
    /// under its lock.
    ///
    /// Sends nothing once the program has exited (its pidfd is readable): how it ended is for
    /// the supervisor to read, not to overwrite with a kill.
    pub(crate) fn fire(&self) -> bool {
        use std::io::Write;
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            self.leader.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if !matches!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
            Ok(0)
        ) {
            return false;
        }
        let mut sent = false;
        if let Some(mut file) = self.cgroup_kill.as_ref() {
            sent |= file.write_all(b"1\n").is_ok();
        }
        if self.group {
            sent |= super::pidfd::send_signal(&self.leader, libc::SIGKILL, true).is_ok();
        }
        sent
    }
}

/// Decides how each requested limit and sandbox feature is enforced (strongest mechanism
/// first; see [`super::limits`]), creates and configures the tree's v1 cgroups, and fills the
/// shim's setup. A piece that cannot be enforced is an error unless best effort was asked.
fn plan(
    options: &TreeOptions,
    cgroup: Option<&Cgroup>,
    use_shim: bool,
) -> Result<Enforcement, SpawnError> {
    let mut out = Enforcement::default();
    let limits = &options.limits;
    for (kind, value) in limits.requested() {
        let mechanism = match limit_mechanism(kind, value, cgroup, use_shim, &mut out) {
            Ok(mechanism) => mechanism,
            Err(Unenforced::Missing(why)) if limits.best_effort => {
                tracing::warn!(limit = %kind, why, "limit not enforced (best effort)");
                Mechanism::None
            }
            Err(Unenforced::Missing(why)) => {
                return Err(SpawnError::LimitUnavailable { limit: kind, why });
            }
            // A cgroup that exists but refuses its limit is a broken environment, not a
            // missing feature: best effort does not cover it.
            Err(Unenforced::Failed(source)) => {
                return Err(SpawnError::Limit {
                    limit: kind,
                    source,
                });
            }
        };
        out.limits.push((kind, value, mechanism));
    }
    if let Some(sandbox) = &options.sandbox {
        plan_sandbox(sandbox, use_shim, &mut out)?;
    }
    Ok(out)
}

/// Why a limit has no mechanism.
#[derive(Debug)]
enum Unenforced {
    /// Nothing here can enforce it.
    Missing(&'static str),
    /// Its cgroup refused the limit.
    Failed(io::Error),
}

impl From<&'static str> for Unenforced {
    fn from(why: &'static str) -> Self {
        Unenforced::Missing(why)
    }
}

/// The mechanism for one limit, set up; `Err` says why there is none.
#[cfg_attr(
    not(target_os = "linux"),
    expect(unused_variables, reason = "only rlimits elsewhere")
)]
fn limit_mechanism(
    kind: LimitKind,
    value: u64,
    cgroup: Option<&Cgroup>,
    use_shim: bool,
    out: &mut Enforcement,
) -> Result<Mechanism, Unenforced> {
    let rlimit = |out: &mut Enforcement,
                  resource: libc::c_int,
                  soft: u64,
                  hard: u64|
     -> Result<Mechanism, Unenforced> {
        #[cfg(target_os = "linux")]
        if use_shim {
            out.setup.rlimits.push((resource as u32, soft, hard));
            return Ok(Mechanism::Rlimit);
        }
        let _ = (out, resource, soft, hard);
        Err(
            "there is no exec shim to set an rlimit (call warden::shim::run_if_shim in main)"
                .into(),
        )
    };
    match kind {
        LimitKind::CpuTime => {
            // Whole seconds, rounded up: SIGXCPU at the limit, SIGKILL a second later.
            let secs = value.div_ceil(1000).max(1);
            let mechanism = rlimit(out, libc::RLIMIT_CPU as libc::c_int, secs, secs + 1)?;
            // SIGXCPU dumps core by default: a plugin stopped by its CPU limit must not leave
            // a core file of its memory in its working directory (as nsjail's default).
            rlimit(out, libc::RLIMIT_CORE as libc::c_int, 0, 0)?;
            Ok(mechanism)
        }
        LimitKind::OpenFiles => rlimit(out, libc::RLIMIT_NOFILE as libc::c_int, value, value),
        LimitKind::Memory | LimitKind::Processes => {
            #[cfg(target_os = "linux")]
            {
                let (v2_controller, v2_file, controller) = match kind {
                    LimitKind::Memory => ("memory", "memory.max", Controller::Memory),
                    _ => ("pids", "pids.max", Controller::Pids),
                };
                let failed = Unenforced::Failed;
                if let Some(cg) = cgroup
                    && cg.has_controller(v2_controller)
                {
                    cg.set(v2_file, &value.to_string()).map_err(failed)?;
                    if kind == LimitKind::Memory {
                        // Swap would let the tree grow past its limit.
                        let _ = cg.set("memory.swap.max", "0");
                    }
                    return Ok(Mechanism::CgroupV2);
                }
                match V1Cgroup::create(controller) {
                    Ok(v1) => {
                        match kind {
                            LimitKind::Memory => {
                                v1.set("memory.limit_in_bytes", &value.to_string())
                                    .map_err(failed)?;
                                if v1.has("memory.memsw.limit_in_bytes") {
                                    v1.set("memory.memsw.limit_in_bytes", &value.to_string())
                                        .map_err(failed)?;
                                }
                            }
                            _ => v1.set("pids.max", &value.to_string()).map_err(failed)?,
                        }
                        out.setup.cgroups.push(v1.procs_file());
                        out.v1.push(v1);
                        return Ok(Mechanism::CgroupV1);
                    }
                    Err(e) => tracing::debug!(error = %e, "no cgroup v1 {v2_controller} cgroup"),
                }
            }
            match kind {
                LimitKind::Memory => rlimit(out, libc::RLIMIT_AS as libc::c_int, value, value),
                _ if super::unix::is_root() => Err(
                    "no cgroup pids controller is usable, and RLIMIT_NPROC does not bind root"
                        .into(),
                ),
                _ => rlimit(out, libc::RLIMIT_NPROC as libc::c_int, value, value),
            }
        }
    }
}

/// Which sandbox features this kernel has; fills the shim's setup with those.
fn plan_sandbox(
    sandbox: &Sandbox,
    use_shim: bool,
    out: &mut Enforcement,
) -> Result<(), SpawnError> {
    use super::limits::SandboxFeature;
    if sandbox
        .allow_write
        .iter()
        .any(|d| d.as_os_str().as_encoded_bytes().contains(&0))
    {
        return Err(SpawnError::InvalidCommand {
            what: "writable directory",
        });
    }
    #[cfg(target_os = "linux")]
    let (abi, seccomp) = (
        super::unix::landlock_abi(),
        super::unix::seccomp_available(),
    );
    #[cfg(not(target_os = "linux"))]
    let (abi, seccomp) = (0, false);
    for feature in sandbox.features() {
        let why = if !use_shim {
            Some("there is no exec shim to apply it (call warden::shim::run_if_shim in main)")
        } else if let Some(needed) = feature.landlock_abi() {
            match abi {
                0 => Some("this kernel has no Landlock (not built in, or not enabled at boot)"),
                abi if abi < needed => Some("this kernel's Landlock ABI is too old for it"),
                _ => None,
            }
        } else if feature == SandboxFeature::Seccomp && !seccomp {
            Some("this kernel has no seccomp filters")
        } else {
            None
        };
        if let Some(why) = why {
            if !sandbox.best_effort {
                return Err(SpawnError::SandboxUnavailable { feature, why });
            }
            tracing::warn!(%feature, why, "sandbox feature not applied (best effort)");
        }
        out.sandbox.push(SandboxEntry {
            feature,
            enforced: why.is_none(),
        });
    }
    let on = |f: SandboxFeature| out.sandbox.iter().any(|e| e.feature == f && e.enforced);
    let setup = super::shim::Setup {
        close_fds: on(SandboxFeature::CloseFds),
        no_new_privs: on(SandboxFeature::NoNewPrivs),
        landlock: on(SandboxFeature::LandlockFs).then(|| super::shim::LandlockPlan {
            fs_abi: abi.min(3),
            writable: sandbox.allow_write.clone(),
            net: on(SandboxFeature::LandlockNet),
            scopes: on(SandboxFeature::ScopeAbstractSockets),
        }),
        seccomp: on(SandboxFeature::Seccomp),
        ..std::mem::take(&mut out.setup)
    };
    out.setup = setup;
    Ok(())
}

fn next_tag() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Signals `pid` through a pidfd opened first and membership checked after, so a pid recycled
/// between the scan and the signal is never hit. Returns whether it was signalled.
fn signal_member(pid: i32, sig: i32, is_member: impl Fn(i32) -> bool) -> bool {
    let Ok(Some(fd)) = pidfd::open(pid) else {
        return false;
    };
    if !is_member(pid) {
        return false;
    }
    pidfd::send_signal(&fd, sig, false).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_cannot_be_enforced_fails_unless_best_effort() {
        // No exec shim: nothing can set an rlimit or a sandbox before exec.
        let strict = TreeOptions::new().limits(Limits::new().cpu_time(Duration::from_secs(1)));
        assert!(matches!(
            plan(&strict, None, false),
            Err(SpawnError::LimitUnavailable {
                limit: LimitKind::CpuTime,
                ..
            })
        ));
        let lenient = TreeOptions::new()
            .limits(
                Limits::new()
                    .cpu_time(Duration::from_secs(1))
                    .best_effort(true),
            )
            .sandbox(Sandbox::new().best_effort(true));
        let planned = plan(&lenient, None, false).expect("best effort");
        assert_eq!(
            planned.limits,
            [(LimitKind::CpuTime, 1000, Mechanism::None)]
        );
        assert!(!planned.sandbox.is_empty());
        assert!(planned.sandbox.iter().all(|e| !e.enforced));
        assert_eq!(planned.setup, super::super::shim::Setup::default());
        let strict = TreeOptions::new().sandbox(Sandbox::new());
        assert!(matches!(
            plan(&strict, None, false),
            Err(SpawnError::SandboxUnavailable { .. })
        ));
        // With a shim, CPU time and open files are rlimits (the shim sets them on Linux).
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let rl = TreeOptions::new().limits(
                Limits::new()
                    .cpu_time(Duration::from_millis(1500))
                    .open_files(32),
            );
            assert_eq!(
                plan(&rl, None, true).expect("rlimits").setup.rlimits,
                [
                    (libc::RLIMIT_CPU, 2, 3),
                    (libc::RLIMIT_CORE, 0, 0),
                    (libc::RLIMIT_NOFILE, 32, 32)
                ]
            );
        }
    }

    #[test]
    fn every_containment_mode_name_round_trips() {
        // Exhaustive: a new mode does not compile here until it is in `ALL`, in order.
        let rank = |mode: ContainmentMode| match mode {
            ContainmentMode::Cgroup => 0,
            ContainmentMode::Subreaper => 1,
            ContainmentMode::ProcessGroup => 2,
        };
        for (i, mode) in ContainmentMode::ALL.into_iter().enumerate() {
            assert_eq!(rank(mode), i);
            assert_eq!(mode.as_str().parse(), Ok(mode));
            assert_eq!(mode.to_string(), mode.as_str());
        }
        assert_eq!(
            "process-group".parse::<ContainmentMode>(),
            Err(ParseNameError::new("containment mode", "process-group"))
        );
    }
}
