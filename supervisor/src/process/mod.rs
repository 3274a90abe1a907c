//! Processes: spawn on the posix_spawn path from one long-lived thread, hold each child as a pidfd
//! where the kernel has them, signal its process group without pid-reuse races, reap it exactly
//! once, and contain whole trees (cgroup v2 leaf, else child subreaper, else process group).
//!
//! Platform contract: `unix.rs` provides spawning, group signalling by pgid, `waitid`-based exit
//! peeking and reaping, and exec for every Unix; `linux.rs` adds pidfds (`pidfd_open`,
//! `pidfd_send_signal` with `PIDFD_SIGNAL_PROCESS_GROUP`) and reports at runtime whether the
//! kernel supports them; `cgroup.rs` manages cgroup v2 leaves; `direct.rs` (Linux on x86_64 and
//! aarch64) spawns with the exec shim's setup done in a vfork-style child, one exec instead of
//! two. Elsewhere `no_pidfd.rs`, `no_cgroup.rs` and `no_direct.rs` stand in and always report
//! "unsupported" (the shim then does the setup).

mod child;
mod command;
mod exit;
mod limits;
pub mod shim;
mod spawner;
mod sweep;
mod tree;
mod unix;

#[cfg(target_os = "linux")]
mod cgroup;
#[cfg(target_os = "linux")]
mod cgroup_v1;
#[cfg(not(target_os = "linux"))]
mod no_cgroup;

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod direct;
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
#[path = "no_direct.rs"]
mod direct;

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod pidfd;
#[cfg(not(target_os = "linux"))]
#[path = "no_pidfd.rs"]
mod pidfd;

pub(crate) use child::Child;
pub use command::{Command, Stdio};
pub use exit::ExitStatus;
pub use limits::{
    LimitEntry, LimitKind, LimitReport, Limits, Mechanism, Sandbox, SandboxEntry, SandboxFeature,
};
pub use sweep::{claim_all_children, start_orphan_reaper};
pub use tree::{Containment, ContainmentMode, OrphanLadder, Tree, TreeOptions, TreeReport};
pub use unix::without_sigpipe;
pub(crate) use unix::{child_pipe, register, set_realtime_thread, socketpair};
