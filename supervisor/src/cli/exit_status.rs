//! Exit statuses of `warden timeout`, the same numbers as GNU `timeout`.
//!
//! Pure functions: the caller reports what happened, these say which status
//! warden exits with.

use std::io;

use libc::c_int;

/// The command timed out (and `--preserve-status` was not given).
pub(crate) const EXIT_TIMED_OUT: u8 = 124;
/// warden itself failed: bad usage, or it could not fork, wait or signal.
pub(crate) const EXIT_CANCELED: u8 = 125;
/// The command was found but could not be run (permission, bad format...).
pub(crate) const EXIT_CANNOT_INVOKE: u8 = 126;
/// The command was not found.
pub(crate) const EXIT_NOT_FOUND: u8 = 127;

/// How the monitored command ended, as `waitpid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Termination {
    /// It called `exit` with this status.
    Exited(u8),
    /// A signal killed it.
    Signaled(c_int),
}

/// What one `warden timeout` run came to, as far as the exit status goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunResult {
    /// warden itself failed (usage error, fork or wait failure).
    WardenFailed,
    /// The command was not found (exec failed with `ENOENT`).
    NotFound,
    /// The command was found but exec failed otherwise (`EACCES`,
    /// `ENOEXEC`...).
    CannotInvoke,
    /// The command ran and ended.
    Finished {
        /// How it ended.
        termination: Termination,
        /// Whether the timeout fired (the first signal was sent) before it
        /// ended, even if it then exited on its own with status 0.
        timed_out: bool,
    },
}

/// Classifies an error from the *exec* step like GNU `timeout` (and `sh`):
/// `ENOENT` means not found, anything else means found but not runnable.
///
/// With a `PATH` search, exec reports the last interesting error: a command
/// that exists only without execute permission gives `EACCES`, hence 126.
/// Errors from before the exec step (fork, pipes) are [`RunResult::WardenFailed`].
pub(crate) fn exec_failure(error: &io::Error) -> RunResult {
    if error.raw_os_error() == Some(libc::ENOENT) {
        RunResult::NotFound
    } else {
        RunResult::CannotInvoke
    }
}

/// The status `warden timeout` exits with, GNU `timeout`'s rules:
///
/// - 125 if warden failed, 127 if the command was not found, 126 if it could
///   not be run;
/// - if the timeout fired and the command died of `SIGKILL` (the
///   `--kill-after` escalation, or `-s KILL`): 137, with or without
///   `--preserve-status`, so a caller can tell a forced kill apart;
/// - else if the timeout fired: 124 even if the command then exited 0, unless
///   `--preserve-status`;
/// - otherwise, and with `--preserve-status`, the command's own status: its
///   exit status, or 128 + N if signal N killed it (what `sh` reports).
///
/// # Re-raising the command's signal (for the caller; implemented later)
/// When the command was killed by signal N *and the timeout did not fire*,
/// GNU `timeout` does not simply exit 128 + N: it prints "the monitored
/// command dumped core" if it did, disables its own core dumps
/// (`PR_SET_DUMPABLE` 0), resets N to `SIG_DFL`, unblocks it and raises it on
/// itself, so that its parent sees the same death by signal (and a shell
/// prints the same message, and stops a loop on SIGINT). Only if it survives
/// that (N's default action is to ignore, as for `SIGCHLD`, `SIGURG`,
/// `SIGWINCH`, `SIGCONT`, or core dumps could not be disabled) does it exit
/// with the 128 + N returned here. warden must do the same before exiting.
pub(crate) fn exit_status_for(result: RunResult, preserve_status: bool) -> u8 {
    let (termination, timed_out) = match result {
        RunResult::WardenFailed => return EXIT_CANCELED,
        RunResult::NotFound => return EXIT_NOT_FOUND,
        RunResult::CannotInvoke => return EXIT_CANNOT_INVOKE,
        RunResult::Finished {
            termination,
            timed_out,
        } => (termination, timed_out),
    };
    let killed = termination == Termination::Signaled(libc::SIGKILL);
    if timed_out && !preserve_status && !killed {
        return EXIT_TIMED_OUT;
    }
    match termination {
        Termination::Exited(status) => status,
        Termination::Signaled(signal) => shell_status_for_signal(signal),
    }
}

/// 128 + `signal`, truncated to 8 bits as an exit status is.
fn shell_status_for_signal(signal: c_int) -> u8 {
    u8::try_from((128 + i64::from(signal)).rem_euclid(256)).unwrap_or(EXIT_CANCELED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(termination: Termination, timed_out: bool) -> RunResult {
        RunResult::Finished {
            termination,
            timed_out,
        }
    }

    const TERM: Termination = Termination::Signaled(libc::SIGTERM);
    const KILL: Termination = Termination::Signaled(libc::SIGKILL);

    #[test]
    fn warden_and_exec_failures() {
        for preserve in [false, true] {
            assert_eq!(exit_status_for(RunResult::WardenFailed, preserve), 125);
            assert_eq!(exit_status_for(RunResult::NotFound, preserve), 127);
            assert_eq!(exit_status_for(RunResult::CannotInvoke, preserve), 126);
        }
    }

    #[test]
    fn exec_errors_map_like_sh() {
        let enoent = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(exec_failure(&enoent), RunResult::NotFound);
        for errno in [libc::EACCES, libc::ENOEXEC, libc::E2BIG, libc::ENOTDIR] {
            let error = io::Error::from_raw_os_error(errno);
            assert_eq!(exec_failure(&error), RunResult::CannotInvoke, "{errno}");
        }
        let synthetic = io::Error::other("no errno");
        assert_eq!(exec_failure(&synthetic), RunResult::CannotInvoke);
    }

    #[test]
    fn no_timeout_passes_the_command_status_through() {
        for preserve in [false, true] {
            let exited = |code| finished(Termination::Exited(code), false);
            assert_eq!(exit_status_for(exited(0), preserve), 0);
            assert_eq!(exit_status_for(exited(3), preserve), 3);
            assert_eq!(exit_status_for(exited(124), preserve), 124);
            assert_eq!(exit_status_for(exited(255), preserve), 255);
            assert_eq!(exit_status_for(finished(TERM, false), preserve), 143);
            assert_eq!(exit_status_for(finished(KILL, false), preserve), 137);
        }
    }

    #[test]
    fn timeout_gives_124_even_after_a_clean_exit() {
        assert_eq!(
            exit_status_for(finished(Termination::Exited(0), true), false),
            124
        );
        assert_eq!(
            exit_status_for(finished(Termination::Exited(7), true), false),
            124
        );
        assert_eq!(exit_status_for(finished(TERM, true), false), 124);
        let hup = Termination::Signaled(libc::SIGHUP);
        assert_eq!(exit_status_for(finished(hup, true), false), 124);
    }

    #[test]
    fn needing_kill_gives_137_with_or_without_preserve_status() {
        assert_eq!(exit_status_for(finished(KILL, true), false), 137);
        assert_eq!(exit_status_for(finished(KILL, true), true), 137);
    }

    #[test]
    fn preserve_status_reports_the_command_after_a_timeout() {
        assert_eq!(
            exit_status_for(finished(Termination::Exited(0), true), true),
            0
        );
        assert_eq!(
            exit_status_for(finished(Termination::Exited(9), true), true),
            9
        );
        assert_eq!(exit_status_for(finished(TERM, true), true), 143);
        let usr1 = Termination::Signaled(libc::SIGUSR1);
        let expected = u8::try_from(128 + libc::SIGUSR1).unwrap();
        assert_eq!(exit_status_for(finished(usr1, true), true), expected);
    }

    #[test]
    fn signal_statuses_wrap_like_an_exit_status() {
        assert_eq!(shell_status_for_signal(1), 129);
        assert_eq!(shell_status_for_signal(64), 192);
        assert_eq!(shell_status_for_signal(128), 0);
        assert_eq!(shell_status_for_signal(c_int::MAX), 127);
        assert_eq!(shell_status_for_signal(c_int::MIN), 128);
    }
}
