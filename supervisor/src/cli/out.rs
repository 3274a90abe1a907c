//! warden's own output: every write the CLI makes goes through here, and none of them can end
//! warden. A message that cannot be written (the reader closed the pipe, the device is full,
//! the descriptor is closed) is dropped; the ladder, the tree's death and the exit status are
//! decided elsewhere and do not depend on it. Only `--help` and `--version` care whether their
//! text arrived (GNU exits 125 when it did not), so [`stdout_all`] reports it.
//!
//! `println!`/`eprintln!` panic on a failed write: the CLI never uses them.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// One diagnostic line on stderr (the newline is added), written in one `write` where the
/// line fits, so lines from concurrent writers do not interleave. Errors are dropped.
pub(crate) fn stderr_line(args: std::fmt::Arguments<'_>) {
    let mut line = args.to_string();
    line.push('\n');
    stderr_bytes(line.as_bytes());
}

/// Set once a write to stderr failed with EPIPE: later messages are dropped without a write.
/// (Writes block SIGPIPE around themselves: warden handles SIGPIPE, and its own failed write
/// must not read as a SIGPIPE sent to it.)
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

/// Raw bytes on stderr; errors are dropped.
pub(crate) fn stderr_bytes(bytes: &[u8]) {
    if STDERR_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut err = std::io::stderr().lock();
    if let Err(e) = super::unix::without_sigpipe(|| err.write_all(bytes))
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        STDERR_GONE.store(true, Ordering::Relaxed);
    }
}

/// Bytes on stdout, flushed; `Err` if they could not all be written.
///
/// # Errors
/// The write's or the flush's error (EPIPE, ENOSPC, EBADF, ...).
pub(crate) fn stdout_all(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    super::unix::without_sigpipe(|| out.write_all(bytes).and_then(|()| out.flush()))
}

/// `eprintln!` that never panics: one line on stderr, dropped if it cannot be written.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::out::stderr_line(format_args!($($arg)*))
    };
}
pub(crate) use say;
