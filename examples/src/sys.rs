//! The one call that needs `unsafe`: setting a signal's disposition.

use nix::sys::signal::{SigHandler, Signal, signal};

/// Sets SIGTERM to SIG_IGN for the whole process. Call it before starting threads.
pub(crate) fn ignore_sigterm() -> nix::Result<()> {
    // SAFETY: SIG_IGN installs no handler code, so there is no async-signal-safety contract to
    // uphold, and replacing the previous disposition cannot invalidate a handler in use.
    unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) }.map(drop)
}
