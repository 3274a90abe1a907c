//! Processes: spawn on the posix_spawn path from one long-lived thread, hold each child as a pidfd
//! where the kernel has them, signal its process group without pid-reuse races, and reap it
//! exactly once.
//!
//! Platform contract: `unix.rs` provides spawning, group signalling by pgid and `waitid`-based
//! exit peeking and reaping for every Unix; `linux.rs` adds pidfds (`pidfd_open`,
//! `pidfd_send_signal` with `PIDFD_SIGNAL_PROCESS_GROUP`) and reports at runtime whether the
//! kernel supports them. Elsewhere `pidfd.rs` stands in and always reports "unsupported".

mod child;
mod command;
mod exit;
mod spawner;
mod unix;

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod pidfd;
#[cfg(not(target_os = "linux"))]
#[path = "no_pidfd.rs"]
mod pidfd;

pub(crate) use child::Child;
pub use command::{Command, Stdio};
pub use exit::ExitStatus;
pub(crate) use spawner::spawn;
pub(crate) use unix::socketpair;
