//! warden's own stop signals, shared by every subcommand that runs a ladder (`warden run`, and
//! `warden batch` through the same [`StopSignalArgs`] and [`Stop`]).
//!
//! SIGINT, SIGTERM and SIGHUP always stop warden; `--stop-signal SIG` (repeatable) adds more,
//! such as the USR1 that Slurm's `--signal=B:USR1@N` sends N seconds before a job's time
//! limit. All of them count together: the first (whichever it is) runs the ladder, the second
//! SIGKILLs every tree, the third exits at once with 128 + that signal. Which one came first is
//! kept, for the exit status (128 + it) and the report (`warden_signal`, `stop_signal`).

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use libc::c_int;
use warden::CancellationToken;

use super::out::say;
use super::signal_set::SignalSet;
use super::signals::{parse_signal, signal_name};

/// The signals that always stop warden.
pub(crate) const DEFAULT_STOP_SIGNALS: [c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// `--stop-signal`, for `#[command(flatten)]` into a subcommand's arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub(crate) struct StopSignalArgs {
    /// Also treat SIGNAL (a name or a number, as --signal) as a stop signal: the first stop
    /// signal of any kind runs the ladder, as the first SIGTERM does (repeatable). For
    /// Slurm's --signal=B:USR1@N, say --stop-signal USR1.
    #[arg(long = "stop-signal", value_name = "SIGNAL", allow_hyphen_values = true, value_parser = stop_signal_arg)]
    pub(crate) stop_signal: Vec<c_int>,
}

impl StopSignalArgs {
    /// Every signal that stops warden: the defaults, then the extra ones, without repeats.
    pub(crate) fn all(&self) -> Vec<c_int> {
        let mut all = DEFAULT_STOP_SIGNALS.to_vec();
        for &sig in &self.stop_signal {
            if !all.contains(&sig) {
                all.push(sig);
            }
        }
        all
    }
}

/// A `--stop-signal` operand: any signal warden can catch and that means nothing else to it.
///
/// Refused: 0, `KILL` and `STOP` (they cannot be caught), `ILL`, `FPE`, `SEGV` (faults; tokio
/// refuses them), `TSTP`, `TTIN`, `TTOU`, `CONT` (job control, which warden handles itself)
/// and `CHLD` (every child's exit).
pub(crate) fn stop_signal_arg(text: &str) -> Result<c_int, String> {
    let sig = parse_signal(OsStr::new(text)).map_err(|e| e.to_string())?;
    let refused = match sig {
        0 => Some("signal 0 is never delivered"),
        libc::SIGKILL | libc::SIGSTOP => Some("it cannot be caught"),
        libc::SIGILL | libc::SIGFPE | libc::SIGSEGV => Some("it reports a fault"),
        libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU | libc::SIGCONT => {
            Some("warden uses it for job control")
        }
        libc::SIGCHLD => Some("every child's exit sends it"),
        _ => None,
    };
    match refused {
        Some(why) => Err(format!(
            "{} cannot be a stop signal: {why}",
            signal_name(sig)
        )),
        None => Ok(sig),
    }
}

/// The tokens warden's own signals drive, and the first signal received.
pub(crate) struct Stop {
    /// Cancelled by the first stop signal: run the ladder.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled by the second: SIGKILL every tree.
    pub(crate) kill: CancellationToken,
    first: Arc<AtomicI32>,
}

impl Stop {
    /// Listens to `signals` (see [`StopSignalArgs::all`]): first → shutdown (the ladder),
    /// second → kill, third → exit at once with 128 + the signal. `program` names warden's
    /// subcommand in the message of the third. Unblocks `signals` in the calling thread once
    /// they are listened to (warden as PID 1 blocks them until then).
    ///
    /// # Panics
    /// Outside a tokio runtime (it spawns the listening task).
    pub(crate) fn listen(program: &'static str, signals: &[c_int]) -> Stop {
        let stop = Stop {
            shutdown: CancellationToken::new(),
            kill: CancellationToken::new(),
            first: Arc::new(AtomicI32::new(0)),
        };
        let mut listeners = SignalSet::listen(signals);
        // Blocked until now if warden is PID 1 (see `unix::block_signals`): one that came
        // early is delivered here, to this thread, and heard by the listeners.
        super::unix::unblock_signals(signals);
        let (shutdown, kill, first) =
            (stop.shutdown.clone(), stop.kill.clone(), stop.first.clone());
        tokio::spawn(async move {
            let mut count = 0;
            loop {
                let sig = listeners.recv().await;
                count += 1;
                match count {
                    1 => {
                        first.store(sig, Ordering::SeqCst);
                        tracing::info!(
                            signal = %signal_name(sig),
                            "stopping: running the ladder (again to kill now)"
                        );
                        shutdown.cancel();
                    }
                    2 => {
                        tracing::info!(signal = %signal_name(sig), "killing every process tree now");
                        kill.cancel();
                    }
                    _ => {
                        say!("{program}: third stop signal, exiting now");
                        std::process::exit(128 + sig);
                    }
                }
            }
        });
        stop
    }

    /// The first stop signal received, if any.
    pub(crate) fn signal(&self) -> Option<c_int> {
        match self.first.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(sig),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Host {
        #[command(flatten)]
        stop: StopSignalArgs,
    }

    fn parse(list: &[&str]) -> Result<Host, clap::Error> {
        Host::try_parse_from(std::iter::once("host").chain(list.iter().copied()))
    }

    #[test]
    fn names_and_numbers_as_signal_accepts() {
        let host = parse(&["--stop-signal", "usr1", "--stop-signal", "SIGUSR2"]).unwrap();
        assert_eq!(host.stop.stop_signal, [libc::SIGUSR1, libc::SIGUSR2]);
        let host = parse(&["--stop-signal", &libc::SIGUSR1.to_string()]).unwrap();
        assert_eq!(host.stop.stop_signal, [libc::SIGUSR1]);
        assert_eq!(parse(&[]).unwrap().stop, StopSignalArgs::default());
        #[cfg(target_os = "linux")]
        assert_eq!(stop_signal_arg("rtmin+1"), Ok(libc::SIGRTMIN() + 1));
    }

    #[test]
    fn signals_warden_cannot_or_must_not_take_are_refused() {
        for bad in [
            "0", "KILL", "STOP", "SEGV", "ILL", "FPE", "TSTP", "TTIN", "TTOU", "CONT", "CHLD",
            "BOGUS", "",
        ] {
            assert!(parse(&["--stop-signal", bad]).is_err(), "{bad}");
        }
        assert_eq!(
            stop_signal_arg("kill").unwrap_err(),
            "KILL cannot be a stop signal: it cannot be caught"
        );
    }

    #[test]
    fn the_defaults_stay_and_repeats_go() {
        let host = parse(&[
            "--stop-signal",
            "USR1",
            "--stop-signal",
            "TERM",
            "--stop-signal",
            "usr1",
        ])
        .unwrap();
        assert_eq!(
            host.stop.all(),
            [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1]
        );
        assert_eq!(StopSignalArgs::default().all(), DEFAULT_STOP_SIGNALS);
    }
}
