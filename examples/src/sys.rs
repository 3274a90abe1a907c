//! The calls that need `unsafe`: a signal's disposition, taking the channel's descriptor by
//! hand (the hostile worker's channel attacks), and raw system calls the seccomp deny-list
//! refuses (its syscall attack). Each is behind a safe function.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::signal::{SigHandler, Signal, signal};

/// Sets SIGTERM to SIG_IGN for the whole process. Call it before starting threads.
pub(crate) fn ignore_sigterm() -> nix::Result<()> {
    // SAFETY: SIG_IGN installs no handler code, so there is no async-signal-safety contract to
    // uphold, and replacing the previous disposition cannot invalidate a handler in use.
    unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) }.map(drop)
}

/// Takes the channel named by `WARDEN_FD` without the SDK. Call it at most once per process,
/// and never in a process that also serves with the SDK (each would own the descriptor).
pub(crate) fn channel_from_env() -> io::Result<UnixStream> {
    let value = std::env::var(warden_worker::FD_ENV_VAR)
        .map_err(|_| io::Error::new(io::ErrorKind::NotFound, "WARDEN_FD is not set"))?;
    let fd: RawFd = value
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "WARDEN_FD is not a number"))?;
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_GETFD only reads the descriptor table entry of an integer; an unknown number
    // gives EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above); the supervisor handed it to this process
    // alone, and the one caller (`hostile::Raw::connect`, once per process, in attacks that
    // never start the SDK) becomes its only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(UnixStream::from(fd))
}

/// One attempt at a system call the sandbox's seccomp deny-list refuses, with harmless
/// arguments: each fails on its own even unsandboxed (or, for `unshare(0)`, does nothing), so
/// an unconfined run shows a different errno (or success) instead of doing damage.
#[cfg(target_os = "linux")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeniedCall {
    /// `ptrace(PTRACE_PEEKDATA, 1, 0, 0)`: reading init's memory without being attached
    /// (ESRCH unsandboxed).
    Ptrace,
    /// `mount("none", "/nonexistent-warden-mountpoint", "tmpfs", 0, NULL)` (ENOENT unsandboxed).
    Mount,
    /// `bpf(-1, NULL, 0)`: no such command (EINVAL unsandboxed).
    Bpf,
    /// `keyctl(-1, 0, 0, 0, 0)`: no such operation (EOPNOTSUPP unsandboxed).
    Keyctl,
    /// `unshare(0)`: a no-op unsandboxed.
    Unshare,
}

#[cfg(target_os = "linux")]
impl DeniedCall {
    /// Every call, in the order the attack makes them.
    pub(crate) const ALL: [DeniedCall; 5] = [
        DeniedCall::Ptrace,
        DeniedCall::Mount,
        DeniedCall::Bpf,
        DeniedCall::Keyctl,
        DeniedCall::Unshare,
    ];

    /// The system call's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            DeniedCall::Ptrace => "ptrace",
            DeniedCall::Mount => "mount",
            DeniedCall::Bpf => "bpf",
            DeniedCall::Keyctl => "keyctl",
            DeniedCall::Unshare => "unshare",
        }
    }

    /// Makes the call: `Ok` if the kernel let it through, else its errno.
    pub(crate) fn attempt(self) -> Result<(), nix::errno::Errno> {
        let ret = match self {
            // SAFETY: PEEKDATA at address 0 of pid 1 without being its tracer: the kernel
            // refuses it (ESRCH) before touching any memory; nothing of ours is passed.
            DeniedCall::Ptrace => unsafe {
                libc::syscall(libc::SYS_ptrace, libc::PTRACE_PEEKDATA, 1, 0, 0)
            },
            // SAFETY: every pointer is a NUL-terminated static string (or NULL for the data),
            // valid for the whole call; the target does not exist, so nothing is mounted.
            DeniedCall::Mount => unsafe {
                libc::syscall(
                    libc::SYS_mount,
                    c"none".as_ptr(),
                    c"/nonexistent-warden-mountpoint".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null::<libc::c_void>(),
                )
            },
            // SAFETY: an unknown command with a NULL attribute of size 0: rejected before the
            // kernel reads anything.
            DeniedCall::Bpf => unsafe {
                libc::syscall(libc::SYS_bpf, -1, std::ptr::null::<libc::c_void>(), 0)
            },
            // SAFETY: an unknown operation with integer arguments only.
            DeniedCall::Keyctl => unsafe { libc::syscall(libc::SYS_keyctl, -1, 0, 0, 0, 0) },
            // SAFETY: unshare with no flags changes nothing and takes no pointers.
            DeniedCall::Unshare => unsafe { libc::syscall(libc::SYS_unshare, 0) },
        };
        if ret == -1 {
            Err(nix::errno::Errno::last())
        } else {
            Ok(())
        }
    }
}
