//! Linux pidfds: a handle on a process that cannot be confused with a later holder of its pid.
//!
//! Contract: [`open`] gives a close-on-exec pidfd or `None` when the kernel lacks pidfd_open
//! (before 5.3) or forbids it; [`send_signal`] signals the process, or with `group` its whole
//! process group (`PIDFD_SIGNAL_PROCESS_GROUP`, Linux 6.9), which stays race-free while the leader
//! is unreaped; [`group_signal_supported`] probes that flag once per process.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};

/// `PIDFD_SIGNAL_PROCESS_GROUP` from linux/pidfd.h (not exported by every libc version).
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;

/// Opens a pidfd for our unreaped child `pid`. `Ok(None)`: pidfds are unavailable here.
pub(crate) fn open(pid: libc::pid_t) -> io::Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no pointers involved.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EINVAL) => Ok(None),
            _ => Err(err),
        };
    }
    // SAFETY: the kernel returned a fresh descriptor (opened with O_CLOEXEC) owned by nobody else.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }))
}

fn raw_send(fd: &OwnedFd, sig: libc::c_int, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid pidfd, a null siginfo (the kernel fills it as kill
    // would) and flags; no memory is shared with the kernel.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Signals the process behind `fd`, or its whole process group when `group` is set (callers
/// check [`group_signal_supported`] first).
pub(crate) fn send_signal(fd: &OwnedFd, sig: libc::c_int, group: bool) -> io::Result<()> {
    raw_send(fd, sig, if group { PIDFD_SIGNAL_PROCESS_GROUP } else { 0 })
}

const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;
static GROUP_SIGNAL: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Whether this kernel accepts `PIDFD_SIGNAL_PROCESS_GROUP`, probed once with signal 0 on a live
/// child's pidfd and then cached.
pub(crate) fn group_signal_supported(fd: &OwnedFd) -> bool {
    match GROUP_SIGNAL.load(Ordering::Relaxed) {
        YES => true,
        NO => false,
        _ => {
            let ok = match raw_send(fd, 0, PIDFD_SIGNAL_PROCESS_GROUP) {
                Ok(()) => true,
                // EINVAL: the flag is unknown (kernel < 6.9). ESRCH etc. say nothing: do not cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => false,
                Err(_) => return false,
            };
            GROUP_SIGNAL.store(if ok { YES } else { NO }, Ordering::Relaxed);
            ok
        }
    }
}

/// Registers a pidfd with tokio's reactor (readable once the process exits).
pub(crate) fn register(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` owns an open descriptor and always returns the same number from
    // `as_raw_fd`; the AsyncFd takes ownership, so it stays open for the AsyncFd's lifetime.
    Ok(unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }?)
}
