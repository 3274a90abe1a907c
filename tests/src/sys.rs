//! The fixture's few unsafe operations (Unix), each behind a safe function.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SigHandler, Signal, signal};

/// A pidfd of `pid` (Linux 5.3+): it names that process alone, even once its pid is reused.
#[cfg(target_os = "linux")]
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the descriptor was just returned to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets `sig` to be ignored (`SIG_IGN`).
pub fn ignore_signal(sig: Signal) -> io::Result<()> {
    // SAFETY: SIG_IGN runs no code of ours in signal context, so there is no handler whose
    // async-signal safety could be violated.
    unsafe { signal(sig, SigHandler::SigIgn) }?;
    Ok(())
}

/// Puts `sig` back to its default disposition (`SIG_DFL`).
pub fn default_signal(sig: Signal) -> io::Result<()> {
    // SAFETY: as above: SIG_DFL installs no handler of ours.
    unsafe { signal(sig, SigHandler::SigDfl) }?;
    Ok(())
}

/// Ends the process at once with `code`: no destructors, no atexit handlers, no flushing.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

static CHANNEL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes the channel the supervisor handed this process: the descriptor named by `WARDEN_FD`.
/// For the raw-protocol modes, which do not use the SDK. Succeeds at most once per process.
pub fn channel_from_env() -> io::Result<UnixStream> {
    let value = std::env::var("WARDEN_FD")
        .map_err(|_| io::Error::new(io::ErrorKind::NotFound, "WARDEN_FD is not set"))?;
    let fd: RawFd = value
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "WARDEN_FD is not a number"))?;
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_GETFD only inspects the descriptor table entry for an integer; an unknown
    // number gives EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::last_os_error());
    }
    if CHANNEL_TAKEN.swap(true, Ordering::AcqRel) {
        return Err(io::Error::other("the channel was already taken"));
    }
    // SAFETY: the descriptor is open (checked above); the supervisor handed it to this process
    // alone, the raw modes never start the SDK, and the flag above makes this the only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(UnixStream::from(fd))
}
