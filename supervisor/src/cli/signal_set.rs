//! The signals warden itself listens to, as one stream.

use std::task::Poll;

use libc::c_int;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Listeners for a set of signals. Registering a listener replaces the signal's disposition
/// (an inherited `SIG_IGN` included) for the rest of the process's life.
pub(crate) struct SignalSet {
    listeners: Vec<(c_int, Signal)>,
    next: usize,
}

impl SignalSet {
    /// Listens to each of `signals` that can be caught. Signals that cannot (`KILL`, `STOP`, 0,
    /// and those tokio refuses: `ILL`, `FPE`, `SEGV`) are skipped, as are repeats.
    /// Must be called within a tokio runtime.
    pub(crate) fn listen(signals: &[c_int]) -> SignalSet {
        let mut listeners: Vec<(c_int, Signal)> = Vec::new();
        for &sig in signals {
            if sig <= 0 || listeners.iter().any(|(s, _)| *s == sig) {
                continue;
            }
            match signal(SignalKind::from_raw(sig)) {
                Ok(listener) => listeners.push((sig, listener)),
                Err(e) => tracing::debug!(sig, error = %e, "cannot listen to signal"),
            }
        }
        SignalSet { listeners, next: 0 }
    }

    /// The next signal received (round robin among those pending). Never resolves if nothing
    /// is listened to.
    ///
    /// # Cancel safety
    /// Cancel-safe: a signal is consumed only when it is returned.
    pub(crate) async fn recv(&mut self) -> c_int {
        std::future::poll_fn(|cx| {
            let count = self.listeners.len();
            for i in 0..count {
                let index = (self.next + i) % count;
                let (sig, listener) = &mut self.listeners[index];
                if let Poll::Ready(Some(())) = listener.poll_recv(cx) {
                    self.next = (index + 1) % count;
                    return Poll::Ready(*sig);
                }
            }
            Poll::Pending
        })
        .await
    }
}
