//! Stand-in for platforms without pidfds: every call reports "unavailable", so callers use the
//! pid while the child is unreaped (which pins the pid and the pgid).

use std::io;
use std::os::fd::OwnedFd;

/// Always `None`: no pidfds here.
pub(crate) fn open(_pid: libc::pid_t) -> io::Result<Option<OwnedFd>> {
    Ok(None)
}

/// Unreachable in practice: there is never a pidfd to signal through.
pub(crate) fn send_signal(_fd: &OwnedFd, _sig: libc::c_int, _group: bool) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Always false.
pub(crate) fn group_signal_supported(_fd: &OwnedFd) -> bool {
    false
}

/// Unreachable in practice: there is never a pidfd to register.
pub(crate) fn register(_fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}
