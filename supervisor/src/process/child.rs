//! One spawned process: signalled through its pidfd (or its unreaped pid), watched for exit
//! without being reaped, reaped exactly once.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Instant;

use tokio::io::unix::AsyncFd;

use super::{ExitStatus, pidfd, unix};

/// How exit is observed.
enum Watch {
    /// A pidfd: readable once the process has exited.
    Pidfd(AsyncFd<OwnedFd>),
    /// No pidfd: a SIGCHLD listener (created on first wait) and `waitid` polling.
    Sigchld(Option<tokio::signal::unix::Signal>),
}

/// A child process that we alone reap.
///
/// # Invariants
/// - Signals go out only while the child is unreaped, so neither its pid nor its process group
///   id (the same number: it leads its group) can belong to anyone else.
/// - Dropping an unreaped child SIGKILLs its process group and reaps it (on a background thread
///   if it does not die at once), so no zombie and no stray group member is left behind.
pub(crate) struct Child {
    pid: libc::pid_t,
    watch: Watch,
    group_via_pidfd: bool,
    exited: Option<ExitStatus>,
    reaped: bool,
    created: Instant,
}

impl Child {
    /// Wraps a freshly spawned child, created at `created` (just before its clone). Must be
    /// called inside a tokio runtime.
    pub(crate) fn new(
        pid: libc::pid_t,
        pidfd: Option<OwnedFd>,
        created: Instant,
    ) -> io::Result<Self> {
        let (watch, group_via_pidfd) = match pidfd {
            Some(fd) => {
                let group = pidfd::group_signal_supported(&fd);
                (Watch::Pidfd(pidfd::register(fd)?), group)
            }
            None => (Watch::Sigchld(None), false),
        };
        Ok(Child {
            pid,
            watch,
            group_via_pidfd,
            exited: None,
            reaped: false,
            created,
        })
    }

    /// When the process was created: taken just before its clone.
    pub(crate) fn created(&self) -> Instant {
        self.created
    }

    /// A copy of the child's pidfd, and whether it can signal the child's whole process group
    /// (`PIDFD_SIGNAL_PROCESS_GROUP`); `None` without a pidfd or once reaped.
    pub(crate) fn pidfd_copy(&self) -> Option<(OwnedFd, bool)> {
        match &self.watch {
            Watch::Pidfd(fd) if !self.reaped => {
                Some((fd.get_ref().try_clone().ok()?, self.group_via_pidfd))
            }
            _ => None,
        }
    }

    /// The child's pid (also its process group id).
    pub(crate) fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Sends `sig` to the child's whole process group. A no-op once reaped.
    pub(crate) fn signal_group(&self, sig: libc::c_int) -> io::Result<()> {
        if self.reaped {
            return Ok(());
        }
        let result = match &self.watch {
            Watch::Pidfd(fd) if self.group_via_pidfd => pidfd::send_signal(fd.get_ref(), sig, true),
            // The leader is unreaped, so its pgid cannot have been reused.
            _ => unix::kill_group(self.pid, sig),
        };
        match result {
            // The group is already empty: nothing left to signal.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other,
        }
    }

    /// Sends `sig` to the child only. A no-op once reaped.
    pub(crate) fn signal(&self, sig: libc::c_int) -> io::Result<()> {
        if self.reaped {
            return Ok(());
        }
        let result = match &self.watch {
            Watch::Pidfd(fd) => pidfd::send_signal(fd.get_ref(), sig, false),
            Watch::Sigchld(_) => unix::kill_pid(self.pid, sig),
        };
        match result {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other,
        }
    }

    /// The exit status, if exit has been observed.
    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        self.exited
    }

    /// Waits until the child has exited, without reaping it: its pid and process group stay
    /// reserved, so the rest of the group can still be signalled safely.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future loses nothing; call again to keep waiting.
    pub(crate) async fn wait_exit(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        loop {
            match &mut self.watch {
                Watch::Pidfd(fd) => {
                    let mut guard = fd.readable().await?;
                    match unix::peek_exit(self.pid)? {
                        Some(status) => {
                            self.exited = Some(status);
                            return Ok(status);
                        }
                        None => guard.clear_ready(),
                    }
                }
                Watch::Sigchld(listener) => {
                    if listener.is_none() {
                        // Register before the first check so an exit in between is not missed.
                        *listener = Some(tokio::signal::unix::signal(
                            tokio::signal::unix::SignalKind::child(),
                        )?);
                    }
                    if let Some(status) = unix::peek_exit(self.pid)? {
                        self.exited = Some(status);
                        return Ok(status);
                    }
                    if let Some(listener) = listener {
                        listener.recv().await;
                    }
                }
            }
        }
    }

    /// Reaps the child after its exit was observed. After this no signal is ever sent.
    pub(crate) fn reap(&mut self) -> io::Result<ExitStatus> {
        debug_assert!(self.exited.is_some(), "reap only after exit was observed");
        if !self.reaped {
            let status = super::sweep::reap_owned(self.pid, true)?;
            self.reaped = true;
            if self.exited.is_none() {
                self.exited = status;
            }
        }
        self.exited
            .ok_or_else(|| io::Error::other("reaped child had no exit status"))
    }
}

impl Child {
    /// True once reaped.
    pub(crate) fn is_reaped(&self) -> bool {
        self.reaped
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let _ = self.signal_group(libc::SIGKILL);
        let _ = self.signal(libc::SIGKILL);
        let pid = self.pid;
        match super::sweep::reap_owned(pid, false) {
            Ok(Some(_)) => {}
            // Not dead yet (SIGKILL is asynchronous; a D-state process may take long): reap it
            // on its own thread rather than block whoever dropped us.
            Ok(None) => {
                let spawned = std::thread::Builder::new()
                    .name("warden-reap".into())
                    .spawn(move || {
                        let _ = super::sweep::reap_owned(pid, true);
                    });
                if spawned.is_err() {
                    tracing::warn!(
                        pid,
                        "could not start a reaping thread; the child may stay a zombie"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(pid, error = %e, "reaping a dropped child failed");
            }
        }
    }
}
