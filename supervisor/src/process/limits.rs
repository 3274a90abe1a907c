//! Resource limits and the sandbox for untrusted programs: what a caller asks for
//! ([`Limits`], [`Sandbox`] on [`TreeOptions`](super::TreeOptions)), how warden enforces each
//! piece (chosen per host at spawn, before the program runs), and what it found afterwards
//! ([`LimitReport`]).
//!
//! **Mechanisms, strongest first.** A memory or process limit goes to the tree's cgroup v2
//! leaf (`memory.max`, `pids.max`) where warden's v2 subtree has that controller; else to a
//! cgroup v1 `memory` / `pids` hierarchy (a fresh cgroup per tree, under a warden-owned parent,
//! as on hybrid hosts); else to an rlimit of the program (`RLIMIT_AS`; `RLIMIT_NPROC`, which
//! counts every process of the user and binds nobody running as root, so it is no process
//! limit for root). CPU time (`RLIMIT_CPU`) and open files (`RLIMIT_NOFILE`) are always
//! rlimits: per process, inherited by every child. Every piece is applied by the exec shim
//! before exec, in this order: join the cgroups, set the rlimits, close stray descriptors,
//! `no_new_privs`, Landlock, seccomp.
//!
//! **Nothing is silent.** A limit or sandbox feature that this host cannot enforce fails the
//! spawn ([`SpawnError::LimitUnavailable`](crate::SpawnError::LimitUnavailable),
//! [`SpawnError::SandboxUnavailable`](crate::SpawnError::SandboxUnavailable)), unless the
//! caller asked for best effort: then the report lists it with mechanism `none`
//! (or `enforced: false`).
//!
//! **Counters.** After the tree has ended, and before its cgroups are removed, warden reads
//! the kernel's own counters (`memory.peak` / `memory.max_usage_in_bytes`, `memory.events` /
//! `memory.oom_control`'s `oom_kill`, `pids.events`' `max`, `pids.peak`), so `hit` is exact
//! where a cgroup enforced the limit. An rlimit has no counter: `hit` is then known only
//! where the way the program died says so (`SIGXCPU` for CPU time), else `None`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Resource limits for a tree (see [`TreeOptions::limits`](crate::TreeOptions::limits) and the README for the mechanisms). Every limit
/// is off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Memory for the whole tree, in bytes (a cgroup), or for each process's address space
    /// (`RLIMIT_AS`, where no cgroup memory controller is usable).
    pub memory: Option<u64>,
    /// CPU time for each process (`RLIMIT_CPU`, whole seconds, rounded up): `SIGXCPU` when it
    /// is used up, SIGKILL one second later.
    pub cpu_time: Option<Duration>,
    /// Open file descriptors for each process (`RLIMIT_NOFILE`): the lowest unusable number.
    pub open_files: Option<u64>,
    /// Processes (and threads) in the whole tree (a cgroup), or for the user (`RLIMIT_NPROC`,
    /// not for root).
    pub processes: Option<u64>,
    /// A limit that cannot be enforced here is reported as not enforced instead of failing
    /// the spawn.
    pub best_effort: bool,
}

impl Limits {
    /// No limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits the tree's memory to `bytes`.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.memory = Some(bytes);
        self
    }

    /// Limits each process's CPU time.
    pub fn cpu_time(mut self, time: Duration) -> Self {
        self.cpu_time = Some(time);
        self
    }

    /// Limits each process's open descriptors to `n`.
    pub fn open_files(mut self, n: u64) -> Self {
        self.open_files = Some(n);
        self
    }

    /// Limits the tree to `n` processes.
    pub fn processes(mut self, n: u64) -> Self {
        self.processes = Some(n);
        self
    }

    /// Reports a limit that cannot be enforced instead of failing the spawn.
    pub fn best_effort(mut self, yes: bool) -> Self {
        self.best_effort = yes;
        self
    }

    /// Whether any limit is asked for.
    pub fn is_empty(&self) -> bool {
        self.memory.is_none()
            && self.cpu_time.is_none()
            && self.open_files.is_none()
            && self.processes.is_none()
    }

    /// The limits asked for, with their values in the report's units (bytes, milliseconds,
    /// descriptors, processes).
    pub(crate) fn requested(&self) -> Vec<(LimitKind, u64)> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        [
            (LimitKind::Memory, self.memory),
            (LimitKind::CpuTime, self.cpu_time.map(ms)),
            (LimitKind::OpenFiles, self.open_files),
            (LimitKind::Processes, self.processes),
        ]
        .into_iter()
        .filter_map(|(kind, value)| Some((kind, value?)))
        .collect()
    }
}

/// The sandbox for a tree: `no_new_privs`, a Landlock ruleset (the whole filesystem
/// read-only and executable, [`allow_write`](Self::allow_write) directories writable,
/// optionally no TCP bind or connect, and no connecting to abstract sockets or signalling
/// processes outside the tree), a seccomp deny-list of what a plugin never needs, and only
/// fds 0, 1, 2 (and an SDK worker's channel) open at exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sandbox {
    /// Directories (and everything below them) the program may write.
    pub allow_write: Vec<PathBuf>,
    /// Refuse TCP bind and connect (Landlock ABI 4).
    pub no_network: bool,
    /// A feature this kernel lacks is reported as not enforced instead of failing the spawn.
    pub best_effort: bool,
}

impl Sandbox {
    /// The sandbox with the filesystem read-only and the network allowed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets the program write below `dir` (repeatable).
    pub fn allow_write(mut self, dir: impl Into<PathBuf>) -> Self {
        self.allow_write.push(dir.into());
        self
    }

    /// Refuses TCP bind and connect.
    pub fn no_network(mut self, yes: bool) -> Self {
        self.no_network = yes;
        self
    }

    /// Reports a feature this kernel lacks instead of failing the spawn.
    pub fn best_effort(mut self, yes: bool) -> Self {
        self.best_effort = yes;
        self
    }

    /// The features this sandbox asks for, in the order the shim applies them.
    pub(crate) fn features(&self) -> Vec<SandboxFeature> {
        let mut out = vec![
            SandboxFeature::CloseFds,
            SandboxFeature::NoNewPrivs,
            SandboxFeature::LandlockFs,
        ];
        if self.no_network {
            out.push(SandboxFeature::LandlockNet);
        }
        out.extend([
            SandboxFeature::ScopeAbstractSockets,
            SandboxFeature::ScopeSignals,
            SandboxFeature::Seccomp,
        ]);
        out
    }
}

/// A resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitKind {
    /// [`Limits::memory`].
    Memory,
    /// [`Limits::cpu_time`].
    CpuTime,
    /// [`Limits::open_files`].
    OpenFiles,
    /// [`Limits::processes`].
    Processes,
}

impl LimitKind {
    /// The name used in reports: `memory`, `cpu_time`, `open_files`, `processes`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Memory => "memory",
            LimitKind::CpuTime => "cpu_time",
            LimitKind::OpenFiles => "open_files",
            LimitKind::Processes => "processes",
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What enforced a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mechanism {
    /// The tree's cgroup v2 leaf (`memory.max`, `pids.max`).
    CgroupV2,
    /// A cgroup v1 hierarchy's cgroup made for the tree (`memory.limit_in_bytes`, `pids.max`).
    CgroupV1,
    /// An rlimit of the program, inherited by its children.
    Rlimit,
    /// Nothing: it could not be enforced here (best effort only).
    None,
}

impl Mechanism {
    /// The name used in reports: `cgroup_v2`, `cgroup_v1`, `rlimit`, `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::CgroupV2 => "cgroup_v2",
            Mechanism::CgroupV1 => "cgroup_v1",
            Mechanism::Rlimit => "rlimit",
            Mechanism::None => "none",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A piece of the [`Sandbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SandboxFeature {
    /// Every descriptor above 2 closed at exec, but an SDK worker's channel.
    CloseFds,
    /// `PR_SET_NO_NEW_PRIVS`: no setuid or file capability gains privileges.
    NoNewPrivs,
    /// Landlock: the filesystem read-only but for the writable directories.
    LandlockFs,
    /// Landlock: no TCP bind or connect (ABI 4).
    LandlockNet,
    /// Landlock: no connecting to abstract unix sockets made outside the tree (ABI 6).
    ScopeAbstractSockets,
    /// Landlock: no signals to processes outside the tree, warden included (ABI 6).
    ScopeSignals,
    /// seccomp: a deny-list (ptrace, mount, kexec, bpf, keyctl, module loading, ...) that
    /// fails with EPERM.
    Seccomp,
}

impl SandboxFeature {
    /// The name used in reports: `close_fds`, `no_new_privs`, `landlock_fs`, `landlock_net`,
    /// `scope_abstract_sockets`, `scope_signals`, `seccomp`.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxFeature::CloseFds => "close_fds",
            SandboxFeature::NoNewPrivs => "no_new_privs",
            SandboxFeature::LandlockFs => "landlock_fs",
            SandboxFeature::LandlockNet => "landlock_net",
            SandboxFeature::ScopeAbstractSockets => "scope_abstract_sockets",
            SandboxFeature::ScopeSignals => "scope_signals",
            SandboxFeature::Seccomp => "seccomp",
        }
    }

    /// The Landlock ABI the feature needs, if it is a Landlock one.
    pub(crate) fn landlock_abi(self) -> Option<i32> {
        match self {
            SandboxFeature::LandlockFs => Some(1),
            SandboxFeature::LandlockNet => Some(4),
            SandboxFeature::ScopeAbstractSockets | SandboxFeature::ScopeSignals => Some(6),
            _ => None,
        }
    }
}

impl fmt::Display for SandboxFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One requested limit, as enforced and as found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitEntry {
    /// Which limit.
    pub kind: LimitKind,
    /// Its value: bytes, milliseconds of CPU time, descriptors, processes.
    pub value: u64,
    /// What enforced it.
    pub mechanism: Mechanism,
    /// Whether the tree reached it, from the kernel's counters (a cgroup's) or from how the
    /// program died (`SIGXCPU`); `None` where nothing can tell (most rlimits, or no mechanism).
    pub hit: Option<bool>,
    /// The highest usage the kernel recorded (bytes of memory, processes), where it keeps one.
    pub peak: Option<u64>,
    /// How many processes the kernel's OOM killer killed in the tree (memory in a cgroup).
    pub oom_kills: Option<u64>,
}

/// One requested sandbox feature, and whether it was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SandboxEntry {
    /// Which feature.
    pub feature: SandboxFeature,
    /// Applied before exec (`false` only under best effort, where this kernel lacks it).
    pub enforced: bool,
}

/// The limits and sandbox of a tree: each requested limit (in the order memory, CPU time,
/// open files, processes) and each sandbox feature. Empty when none was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitReport {
    /// The limits.
    pub limits: Vec<LimitEntry>,
    /// The sandbox features.
    pub sandbox: Vec<SandboxEntry>,
}

impl LimitReport {
    /// The entry for `kind`, if that limit was asked for.
    pub fn get(&self, kind: LimitKind) -> Option<&LimitEntry> {
        self.limits.iter().find(|e| e.kind == kind)
    }

    /// Whether nothing was asked for.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty() && self.sandbox.is_empty()
    }

    /// The limit that ended a program that exited with `status` (when warden sent no
    /// SIGKILL): the OOM killer's SIGKILL of a tree whose memory cgroup counted an OOM kill,
    /// or `SIGXCPU` (or the SIGKILL that follows it) under a CPU-time limit.
    pub(crate) fn ended(&self, status: Option<super::ExitStatus>) -> Option<LimitKind> {
        let signal = status?.signal()?;
        let oom = self
            .get(LimitKind::Memory)
            .is_some_and(|e| e.oom_kills.is_some_and(|n| n > 0));
        let cpu = self
            .get(LimitKind::CpuTime)
            .is_some_and(|e| e.mechanism == Mechanism::Rlimit);
        if signal == libc::SIGKILL && oom {
            Some(LimitKind::Memory)
        } else if signal == libc::SIGXCPU && cpu {
            Some(LimitKind::CpuTime)
        } else {
            None
        }
    }

    /// The first limit that refused the tree something: a fork (`pids.max` reached) or a
    /// process (the OOM killer). Memory merely reached (the kernel reclaimed page cache at
    /// the limit) refuses nothing, so it does not count.
    pub(crate) fn first_refusal(&self) -> Option<LimitKind> {
        self.limits
            .iter()
            .find(|e| match e.kind {
                LimitKind::Processes => e.hit == Some(true),
                LimitKind::Memory => e.oom_kills.is_some_and(|n| n > 0),
                _ => false,
            })
            .map(|e| e.kind)
    }
}

/// The seccomp deny-list: what a plugin never needs. Each fails with EPERM.
#[cfg(target_os = "linux")]
pub(crate) const DENIED_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_adjtimex,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_chroot,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExitStatus;

    fn entry(kind: LimitKind, mechanism: Mechanism, oom_kills: Option<u64>) -> LimitEntry {
        LimitEntry {
            kind,
            value: 1,
            mechanism,
            hit: None,
            peak: None,
            oom_kills,
        }
    }

    const KILLED: ExitStatus = ExitStatus::Signal {
        signal: libc::SIGKILL,
        core_dumped: false,
    };

    #[test]
    fn a_limit_ended_the_program_only_when_the_kernel_says_so() {
        let oom = LimitReport {
            limits: vec![entry(LimitKind::Memory, Mechanism::CgroupV1, Some(1))],
            sandbox: Vec::new(),
        };
        assert_eq!(oom.ended(Some(KILLED)), Some(LimitKind::Memory));
        assert_eq!(oom.ended(Some(ExitStatus::Code(0))), None);
        let no_oom = LimitReport {
            limits: vec![entry(LimitKind::Memory, Mechanism::CgroupV1, Some(0))],
            sandbox: Vec::new(),
        };
        assert_eq!(no_oom.ended(Some(KILLED)), None);
        let cpu = LimitReport {
            limits: vec![entry(LimitKind::CpuTime, Mechanism::Rlimit, None)],
            sandbox: Vec::new(),
        };
        let xcpu = ExitStatus::Signal {
            signal: libc::SIGXCPU,
            core_dumped: true,
        };
        assert_eq!(cpu.ended(Some(xcpu)), Some(LimitKind::CpuTime));
        assert_eq!(LimitReport::default().ended(Some(xcpu)), None);
    }

    #[test]
    fn memory_reclaimed_at_the_limit_refuses_nothing() {
        let mut reclaimed = entry(LimitKind::Memory, Mechanism::CgroupV1, Some(0));
        reclaimed.hit = Some(true);
        let mut forks = entry(LimitKind::Processes, Mechanism::CgroupV1, None);
        forks.hit = Some(true);
        let report = LimitReport {
            limits: vec![reclaimed.clone()],
            sandbox: Vec::new(),
        };
        assert_eq!(report.first_refusal(), None);
        let report = LimitReport {
            limits: vec![reclaimed, forks],
            sandbox: Vec::new(),
        };
        assert_eq!(report.first_refusal(), Some(LimitKind::Processes));
    }

    #[test]
    fn names() {
        assert_eq!(Mechanism::CgroupV1.to_string(), "cgroup_v1");
        assert_eq!(LimitKind::CpuTime.as_str(), "cpu_time");
        assert_eq!(
            Sandbox::new().no_network(true).features().len(),
            7,
            "every feature once"
        );
        assert_eq!(
            Limits::new().memory(5).processes(8).requested(),
            [(LimitKind::Memory, 5), (LimitKind::Processes, 8)]
        );
    }
}
