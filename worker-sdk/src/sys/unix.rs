//! Unix implementation of the descriptor checks.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};

/// Why a descriptor number could not be claimed. Nothing was taken over in any case.
#[derive(Debug)]
pub(crate) enum ClaimError {
    /// `fstat` failed: the number is not an open descriptor (or cannot be inspected).
    NotOpen(io::Error),
    /// The descriptor is open but not a socket.
    NotSocket,
    /// The descriptor is a socket, but not a Unix-domain stream socket.
    WrongSocketKind,
}

/// Checks `fd` and takes ownership of it.
///
/// The caller promises that nothing else in this process owns `fd` (for an inherited channel this
/// is the supervisor's contract: it hands the descriptor to this process only, and the crate
/// claims it at most once).
pub(crate) fn claim_inherited_socket(fd: RawFd) -> Result<OwnedFd, ClaimError> {
    if fd < 0 {
        return Err(ClaimError::NotOpen(io::Error::from_raw_os_error(
            libc::EBADF,
        )));
    }
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat only reads the descriptor table entry for an integer (an unknown number gives
    // EBADF) and writes a `stat` into the pointer, which points to writable memory of that size.
    let rc = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    if rc != 0 {
        return Err(ClaimError::NotOpen(io::Error::last_os_error()));
    }
    // SAFETY: fstat returned 0, so it initialised the whole struct.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(ClaimError::NotSocket);
    }

    let mut kind: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt on an integer descriptor is memory-safe; `kind` and `len` are valid,
    // writable and `len` holds the size of `kind`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut kind).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 || kind != libc::SOCK_STREAM {
        return Err(ClaimError::WrongSocketKind);
    }

    let mut addr = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `addr`, which is that large and
    // writable; the descriptor is only read.
    let rc = unsafe { libc::getsockname(fd, addr.as_mut_ptr().cast::<libc::sockaddr>(), &mut len) };
    // SAFETY: the storage was zero-initialised, so reading the family is defined even if the call
    // wrote fewer bytes.
    let family = unsafe { addr.assume_init_ref() }.ss_family;
    if rc != 0 || libc::c_int::from(family) != libc::AF_UNIX {
        return Err(ClaimError::WrongSocketKind);
    }

    // SAFETY: `fd` is open (fstat succeeded) and is a Unix stream socket; the caller guarantees
    // nothing else in the process owns it, so this `OwnedFd` is its single owner from now on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets `FD_CLOEXEC` on `fd`, keeping its other descriptor flags.
pub(crate) fn set_cloexec(fd: impl AsFd) -> io::Result<()> {
    let fd = fd.as_fd();
    let flags = fcntl(fd, FcntlArg::F_GETFD).map_err(io::Error::from)?;
    let flags = FdFlag::from_bits_retain(flags) | FdFlag::FD_CLOEXEC;
    fcntl(fd, FcntlArg::F_SETFD(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// Registers `stream` with the current runtime's reactor for readability alone. tokio's own
/// `UnixStream` registers for writability too, and a unix socket registered for writability
/// wakes its reactor's thread each time the peer reads, which is after every frame.
///
/// # Errors
/// The registration's (`epoll_ctl`); `stream` is closed then.
///
/// # Panics
/// Outside a tokio runtime with I/O enabled.
pub(crate) fn register_readable(
    stream: std::os::unix::net::UnixStream,
) -> io::Result<tokio::io::unix::AsyncFd<std::os::unix::net::UnixStream>> {
    // SAFETY: a UnixStream owns its descriptor, which stays open and the same for as long as
    // it lives; the AsyncFd owns the stream from here until it is dropped.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(stream, tokio::io::Interest::READABLE)
    }
    .map_err(io::Error::from)
}
