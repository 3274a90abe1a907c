//! The signals warden itself listens to, as one stream.
//!
//! Each set has a pipe; warden's handler ([`super::unix::deliver_to`]) writes one byte per
//! delivery, the signal's number, which [`SignalSet::recv`] reads through the runtime. Not
//! tokio's listeners: each of those is a registration in signal-hook's copy-on-write table,
//! and `warden timeout` listens to 48 signals, which cost it 0.29 ms of its start-up. Each
//! delivery is seen (tokio folds those that come before the listener runs into one), so a
//! second Ctrl-C sent at once after the first is a second one.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};

use libc::c_int;
use tokio::io::unix::AsyncFd;

/// Listeners for a set of signals. Registering a listener replaces the signal's disposition
/// (an inherited `SIG_IGN` included) for the rest of the process's life; a signal listened to
/// by a later set is that set's from then on.
pub(crate) struct SignalSet {
    /// The pipe's read end; `None` when nothing is listened to (or the pipe could not be made).
    pipe: Option<AsyncFd<OwnedFd>>,
    /// Signals read from the pipe, not yet returned.
    pending: VecDeque<c_int>,
}

impl SignalSet {
    /// Listens to each of `signals` that can be caught. Signals that cannot (`KILL`, `STOP`, 0,
    /// and the faults `ILL`, `FPE`, `SEGV`) are skipped. Must be called within a tokio runtime.
    pub(crate) fn listen(signals: &[c_int]) -> SignalSet {
        let quiet = SignalSet {
            pipe: None,
            pending: VecDeque::new(),
        };
        if signals.is_empty() {
            return quiet;
        }
        let (read, write) = match super::unix::signal_pipe() {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen to signals: no pipe");
                return quiet;
            }
        };
        let read = match super::unix::register_readable(read) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen to signals: the runtime refused the pipe");
                return quiet;
            }
        };
        for &sig in signals {
            if let Err(e) = super::unix::deliver_to(sig, write.as_raw_fd()) {
                tracing::debug!(sig, error = %e, "cannot listen to signal");
            }
        }
        // A handler may write to it at any moment from now on, for the rest of the process:
        // never closed, so its number is never another file's.
        std::mem::forget(write);
        SignalSet {
            pipe: Some(read),
            pending: VecDeque::new(),
        }
    }

    /// The next signal received, in the order they came. Never resolves if nothing is
    /// listened to.
    ///
    /// # Cancel safety
    /// Cancel-safe: a signal is consumed only when it is returned.
    pub(crate) async fn recv(&mut self) -> c_int {
        loop {
            if let Some(sig) = self.pending.pop_front() {
                return sig;
            }
            let Some(pipe) = &self.pipe else {
                return std::future::pending().await;
            };
            let Ok(mut ready) = pipe.readable().await else {
                return std::future::pending().await;
            };
            let mut buf = [0u8; 64];
            match ready.try_io(|fd| {
                nix::unistd::read(fd.get_ref(), &mut buf).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) if n > 0 => self
                    .pending
                    .extend(buf[..n].iter().map(|&b| c_int::from(b))),
                // EOF cannot happen (the write end is never closed); an error other than
                // EAGAIN would repeat: listen no more rather than spin.
                Ok(Ok(_)) | Ok(Err(_)) => self.pipe = None,
                Err(_would_block) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SignalSet;
    use nix::sys::signal::{Signal, raise};
    use std::time::Duration;

    /// Two deliveries of one signal are two, in order with another's. WINCH and URG are
    /// ignored by default, so nothing else in this test binary minds their new handler.
    #[test]
    fn each_delivery_is_returned_in_order() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut set = SignalSet::listen(&[libc::SIGWINCH, libc::SIGURG]);
            for sig in [Signal::SIGWINCH, Signal::SIGWINCH, Signal::SIGURG] {
                raise(sig).expect("raise");
            }
            let got = tokio::time::timeout(Duration::from_secs(10), async {
                [set.recv().await, set.recv().await, set.recv().await]
            })
            .await
            .expect("three signals within 10 s");
            assert_eq!(got, [libc::SIGWINCH, libc::SIGWINCH, libc::SIGURG]);
        });
    }

    /// What cannot be caught is skipped: nothing is listened to, and nothing is changed.
    #[test]
    fn uncatchable_signals_are_skipped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            for sig in [0, libc::SIGKILL, libc::SIGSTOP, libc::SIGSEGV] {
                assert!(super::super::unix::deliver_to(sig, -1).is_err(), "{sig}");
            }
            let _quiet = SignalSet::listen(&[]);
        });
    }
}
