//! Finding the channel: the socket the supervisor handed this process.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::BootstrapError;
use crate::sys::{self, ClaimError};

/// The environment variable that names the channel's descriptor (a decimal number).
pub const FD_ENV_VAR: &str = "WARDEN_FD";

/// Set once `from_env` has taken the inherited descriptor: two owners of one fd would close it
/// twice.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The connected socket to the supervisor, before serving starts.
///
/// Whatever the constructor, the descriptor is close-on-exec, so processes the worker starts
/// itself never inherit the channel.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
}

impl Channel {
    /// Takes the channel the supervisor handed this process: the descriptor named by
    /// [`FD_ENV_VAR`] (`WARDEN_FD`).
    ///
    /// The descriptor must be open and a Unix stream socket before it is taken over; it is then
    /// made close-on-exec. This can succeed once per process; later calls return
    /// [`BootstrapError::AlreadyTaken`].
    ///
    /// The variable stays set: a program that starts other programs that link this SDK should
    /// remove it from their environment (`Command::env_remove`).
    pub fn from_env() -> Result<Channel, BootstrapError> {
        let value = std::env::var_os(FD_ENV_VAR);
        let fd = parse_fd(value.as_deref())?;
        if TAKEN
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(BootstrapError::AlreadyTaken);
        }
        let channel = Channel::claim(fd);
        if channel.is_err() {
            TAKEN.store(false, Ordering::Release);
        }
        channel
    }

    /// Wraps an already-connected socket (for example one end of `UnixStream::pair()`, to serve
    /// in-process in tests).
    ///
    /// A whole conversation, with a hand-written supervisor on the other end:
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::os::unix::net::UnixStream;
    /// use std::time::Duration;
    /// use warden_protocol::{
    ///     DEFAULT_MAX_FRAME_LEN, FrameDecoder, JobId, PROTOCOL_VERSION, SupervisorMessage,
    ///     WorkerMessage, encode_frame,
    /// };
    /// use warden_worker::{Channel, Worker};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (mut supervisor, worker_end) = UnixStream::pair()?;
    /// supervisor.set_read_timeout(Some(Duration::from_secs(10)))?;
    /// let worker = std::thread::spawn(move || {
    ///     Worker::new()
    ///         .channel(Channel::from_std(worker_end)?)
    ///         .handle_sigterm(false)
    ///         .serve_blocking(|job| Ok(job.payload().to_ascii_uppercase()))
    /// });
    ///
    /// let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    /// let mut reader = supervisor.try_clone()?;
    /// let mut recv = move || -> Result<WorkerMessage, Box<dyn std::error::Error>> {
    ///     loop {
    ///         if let Some(msg) = decoder.next()? {
    ///             return Ok(msg);
    ///         }
    ///         let mut buf = [0; 4096];
    ///         let n = reader.read(&mut buf)?;
    ///         decoder.push(&buf[..n]);
    ///     }
    /// };
    /// let mut send = |msg: SupervisorMessage| -> Result<(), Box<dyn std::error::Error>> {
    ///     Ok(supervisor.write_all(&encode_frame(&msg, u32::MAX)?)?)
    /// };
    ///
    /// assert!(matches!(recv()?, WorkerMessage::Hello { .. }));
    /// send(SupervisorMessage::Hello {
    ///     protocol_version: PROTOCOL_VERSION,
    ///     supervisor_version: "doc".into(),
    ///     max_frame_len: DEFAULT_MAX_FRAME_LEN,
    ///     heartbeat_interval_ms: 0,
    /// })?;
    /// send(SupervisorMessage::StartJob { job: JobId(1), payload: b"abc".to_vec(), deadline_ms: None })?;
    /// assert_eq!(recv()?, WorkerMessage::Completed { job: JobId(1), output: b"ABC".to_vec() });
    /// send(SupervisorMessage::Shutdown)?;
    /// worker.join().expect("worker thread")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_std(stream: UnixStream) -> Result<Channel, BootstrapError> {
        sys::set_cloexec(&stream).map_err(BootstrapError::Configure)?;
        Ok(Channel { stream })
    }

    /// Wraps an owned descriptor after checking that it is a Unix stream socket.
    pub fn from_owned_fd(fd: OwnedFd) -> Result<Channel, BootstrapError> {
        let raw = fd.as_raw_fd();
        match nix::sys::stat::fstat(&fd) {
            Ok(st) if (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK => {}
            Ok(_) => return Err(BootstrapError::NotSocket { fd: raw }),
            Err(e) => {
                return Err(BootstrapError::NotOpen {
                    fd: raw,
                    source: e.into(),
                });
            }
        }
        match nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType) {
            Ok(nix::sys::socket::SockType::Stream) => {}
            _ => return Err(BootstrapError::WrongSocketKind { fd: raw }),
        }
        Channel::from_std(UnixStream::from(fd))
    }

    /// Validates and takes over the descriptor number `fd`.
    pub(crate) fn claim(fd: RawFd) -> Result<Channel, BootstrapError> {
        let owned = sys::claim_inherited_socket(fd).map_err(|e| match e {
            ClaimError::NotOpen(source) => BootstrapError::NotOpen { fd, source },
            ClaimError::NotSocket => BootstrapError::NotSocket { fd },
            ClaimError::WrongSocketKind => BootstrapError::WrongSocketKind { fd },
        })?;
        Channel::from_std(UnixStream::from(owned))
    }

    /// The socket, still close-on-exec.
    pub(crate) fn into_std(self) -> UnixStream {
        self.stream
    }
}

/// Reads the descriptor number from the variable's value.
pub(crate) fn parse_fd(value: Option<&OsStr>) -> Result<RawFd, BootstrapError> {
    let value = value.ok_or(BootstrapError::NotStartedByWarden)?;
    let invalid = || BootstrapError::InvalidFd {
        value: value.to_string_lossy().into_owned(),
    };
    let text = value.to_str().ok_or_else(invalid)?;
    // Decimal digits only: no sign, no whitespace, no "0x".
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    text.parse::<RawFd>().map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::fd::IntoRawFd;

    #[test]
    fn missing_variable_says_not_started_by_warden() {
        let err = parse_fd(None).unwrap_err();
        assert!(matches!(err, BootstrapError::NotStartedByWarden));
        assert!(
            err.to_string()
                .contains("not started by a warden supervisor"),
            "{err}"
        );
    }

    #[test]
    fn non_numeric_values_are_rejected() {
        for value in ["", "three", "3 ", " 3", "-1", "+3", "0x3", "99999999999"] {
            let err = parse_fd(Some(OsStr::new(value))).unwrap_err();
            assert!(
                matches!(err, BootstrapError::InvalidFd { .. }),
                "{value:?}: {err}"
            );
        }
        assert_eq!(parse_fd(Some(OsStr::new("3"))).ok(), Some(3));
    }

    #[test]
    fn non_utf8_value_is_rejected() {
        use std::os::unix::ffi::OsStringExt;
        let value = OsString::from_vec(vec![b'3', 0xff]);
        assert!(matches!(
            parse_fd(Some(&value)),
            Err(BootstrapError::InvalidFd { .. })
        ));
    }

    #[test]
    fn closed_fd_is_rejected() {
        // Far above any descriptor limit, so never open (a number freed by closing a descriptor
        // could be reused by a test running in parallel).
        let fd = RawFd::MAX;
        let err = Channel::claim(fd).unwrap_err();
        assert!(matches!(err, BootstrapError::NotOpen { .. }), "{err}");
    }

    #[test]
    fn pipe_fd_is_rejected_and_left_open() {
        let (read, _write) = nix::unistd::pipe().expect("pipe");
        let err = Channel::claim(read.as_raw_fd()).unwrap_err();
        assert!(matches!(err, BootstrapError::NotSocket { .. }), "{err}");
        // Not taken over: the test still owns it, and it is still open.
        assert!(nix::sys::stat::fstat(&read).is_ok());
    }

    #[test]
    fn datagram_socket_is_rejected() {
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().expect("pair");
        let err = Channel::claim(a.as_raw_fd()).unwrap_err();
        assert!(
            matches!(err, BootstrapError::WrongSocketKind { .. }),
            "{err}"
        );
        let err = Channel::from_owned_fd(OwnedFd::from(a)).unwrap_err();
        assert!(
            matches!(err, BootstrapError::WrongSocketKind { .. }),
            "{err}"
        );
    }

    #[test]
    fn stream_socket_is_taken_and_made_cloexec() {
        let (a, _b) = UnixStream::pair().expect("pair");
        // Clear close-on-exec to prove the SDK sets it again.
        nix::fcntl::fcntl(
            &a,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .expect("clear cloexec");
        let fd = a.into_raw_fd();
        let channel = Channel::claim(fd).expect("claim a stream socket");
        let flags =
            nix::fcntl::fcntl(&channel.stream, nix::fcntl::FcntlArg::F_GETFD).expect("F_GETFD");
        assert!(
            nix::fcntl::FdFlag::from_bits_retain(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
        );
    }

    #[test]
    fn pipe_is_rejected_by_from_owned_fd() {
        let (read, _write) = nix::unistd::pipe().expect("pipe");
        let err = Channel::from_owned_fd(read).unwrap_err();
        assert!(matches!(err, BootstrapError::NotSocket { .. }), "{err}");
    }
}
