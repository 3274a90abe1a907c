//! `warden timeout`: GNU `timeout` on a contained process tree.
//!
//! The arguments are parsed by [`super::timeout`], the reactions to timers and signals come from
//! [`GnuLadder`]; this module starts the tree, performs the steps, and ends the way GNU does
//! (exit status, or the command's own fatal signal re-raised). Unlike GNU, the signals reach
//! the whole tree (descendants that left the process group included), and once the command has
//! ended nothing of its tree is left running, except with `--foreground`, which keeps GNU's
//! meaning: only the command is ever signalled, and its children are left alone.
//!
//! Job control: on `SIGTSTP` (Ctrl-Z) warden stops the whole tree, then itself; when continued
//! (`fg`, `bg`) it continues the tree. The time stopped does not count against DURATION or
//! `-k` ([`GnuLadder::pause`]). With `--foreground` the command, in warden's process group,
//! got the terminal's `SIGTSTP` itself: warden only pauses its timers and stops itself.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use libc::c_int;
use warden::time::Wakeup;
use warden::{Command, Containment, ExitStatus, SpawnError, Stdio, Tree, TreeOptions};

use super::c_locale::quote;
use super::containment::{CONTAINMENT_ENV, ContainmentArg};
use super::duration::Interval;
use super::exit_status::{EXIT_CANCELED, RunResult, Termination, exec_failure, exit_status_for};
use super::gnu_ladder::{Ending, GnuLadder, Reaction, Step, handled_signals, kept_ignored};
use super::out::{say, stderr_bytes, stdout_all};
use super::signal_set::SignalSet;
use super::timeout::{Invocation, Parsed, help_text, parse, program_name, version_text};
use super::unix;

/// The guard's delay before SIGKILL for an orphaned tree when no `-k` was given.
const ORPHAN_KILL_AFTER: Duration = Duration::from_secs(2);

/// How long leftovers of the tree get to die after SIGKILL once the command has ended.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `warden timeout` with the arguments after the subcommand; returns the exit status
/// (or does not return, when warden re-raises the command's fatal signal).
pub(crate) fn main(args: &[OsString]) -> u8 {
    let program = program_name();
    let invocation = match parse(args) {
        Ok(Parsed::Run(invocation)) => invocation,
        Ok(Parsed::Help) => return print_stdout(&help_text()),
        Ok(Parsed::Version) => return print_stdout(&version_text()),
        Err(error) => {
            stderr_bytes(&error.render(program));
            return error.exit_status();
        }
    };
    let containment = if invocation.foreground {
        // Only the command is ever signalled, and its children outlive it, as with GNU: a
        // cgroup or a subreaper sweep would kill them at the end.
        Containment::ProcessGroup
    } else {
        match ContainmentArg::from_env() {
            Ok(choice) => choice.unwrap_or_default().to_containment(),
            Err(text) => {
                say!(
                    "{program}: invalid {CONTAINMENT_ENV} {}: expected auto, cgroup, subreaper or process-group",
                    quote(text.as_bytes())
                );
                return EXIT_CANCELED;
            }
        }
    };
    unix::ignore_tty_stop_signals();
    let Some(runtime) = super::start_runtime(program) else {
        return EXIT_CANCELED;
    };
    let ending = runtime.block_on(supervise(&invocation, containment));
    // Dropping the runtime drops what is left of the tree (its cgroup is removed).
    drop(runtime);
    match ending {
        Ending::Exit(status) => status,
        Ending::Reraise { signal, fallback } => {
            let _ = std::io::stdout().flush();
            unix::reraise(signal);
            fallback
        }
    }
}

/// `--help` and `--version`: 0, or 125 if the text could not be written (as GNU's
/// `close_stdout` does).
pub(crate) fn print_stdout(text: &str) -> u8 {
    match stdout_all(text.as_bytes()) {
        Ok(()) => 0,
        Err(_) => EXIT_CANCELED,
    }
}

/// Starts the command and sees it through; returns how warden should end.
async fn supervise(invocation: &Invocation, containment: Containment) -> Ending {
    let program = program_name();
    let verbose = invocation.verbose;
    // Quoted only where a message names it: the quoting loads the locale, which costs more
    // than the rest of a `warden timeout 10 true` start-up.
    let command_name = || quote(invocation.command.as_bytes());
    // Listen before spawning, as GNU installs its handlers before fork: a signal sent once the
    // command is running is never missed.
    let mut signals =
        SignalSet::listen(&handled_signals(invocation.signal, unix::ignored_at_start));
    // GNU leaves SIGTSTP at its default, which would stop warden alone: the tree, in a group of
    // its own, would run on unsupervised. A `-s TSTP` keeps GNU's meaning (forwarded), and a
    // SIGTSTP ignored at start stays ignored (no job control was wanted).
    let job_control = invocation.signal != libc::SIGTSTP && !unix::ignored_at_start(libc::SIGTSTP);
    let mut job_stops = SignalSet::listen(if job_control { &[libc::SIGTSTP] } else { &[] });
    let mut command = Command::new(&invocation.command);
    command.args(&invocation.args).stdin(Stdio::Inherit);
    let mut options = TreeOptions::new()
        .containment(containment)
        .new_process_group(!invocation.foreground)
        .ignored_signals(kept_ignored(
            invocation.signal,
            unix::all_ignored_at_start(),
        ))
        // If warden is SIGKILLed: COMMAND gets the `-s` signal at once (upstream's
        // PR_SET_PDEATHSIG), and the guard gives the rest of a cgroup tree the same ladder.
        .death_signal(invocation.signal);
    if !invocation.foreground {
        options = options.orphan_ladder(invocation.signal, orphan_kill_after(invocation));
    }
    let mut tree = match Tree::spawn(&command, options).await {
        Ok(tree) => tree,
        Err(error) => return Ending::Exit(report_spawn_error(&error, command_name)),
    };
    tracing::debug!(
        pid = tree.pid(),
        containment = tree.containment().as_str(),
        "command started"
    );
    // DURATION counts from the command's creation, as GNU's counts from its fork: the exec
    // (which a vfork-style spawn waits for) is the command's time.
    let mut ladder = GnuLadder::new(
        invocation.duration,
        invocation.kill_after,
        invocation.signal,
        invocation.foreground,
        tree.started_at(),
    );
    let mut wakeup = Wakeup::new();
    let status = loop {
        wakeup.set(ladder.poll_timeout());
        let steps = tokio::select! {
            status = tree.wait() => break status,
            () = wakeup.fired() => ladder.handle_timeout(Instant::now()),
            sig = signals.recv() => match ladder.handle_signal(sig, Instant::now()) {
                Reaction::Steps(steps) => steps,
                Reaction::ExitNow(status) => {
                    // Third stop signal: go now. The tree already had SIGKILL (second signal);
                    // whatever is left dies with us (PDEATHSIG) or is reaped by init.
                    let _ = tree.kill_tree();
                    return Ending::Exit(status);
                }
            },
            _ = job_stops.recv() => {
                stop_job(&mut tree, &mut ladder, invocation.foreground).await;
                Vec::new()
            }
        };
        for step in steps {
            perform(&mut tree, step, verbose, command_name);
        }
    };
    let report = tree.finish(REAP_TIMEOUT).await;
    if !report.escaped.is_empty() {
        tracing::debug!(escaped = ?report.escaped, "killed descendants outside the process group");
    }
    let status = match status.ok().or(report.status) {
        Some(status) => status,
        None => {
            say!("{program}: error waiting for child");
            return Ending::Exit(EXIT_CANCELED);
        }
    };
    let termination = match status {
        ExitStatus::Code(code) => Termination::Exited(u8::try_from(code & 0xff).unwrap_or(255)),
        ExitStatus::Signal {
            signal,
            core_dumped,
        } => {
            if core_dumped {
                say!("{program}: the monitored command dumped core");
            }
            Termination::Signaled(signal)
        }
        // ExitStatus is non-exhaustive; a status this build cannot read is warden's failure,
        // said in the library's words rather than guessed at.
        other => {
            say!("{program}: cannot interpret how the command ended: {other}");
            return Ending::Exit(EXIT_CANCELED);
        }
    };
    ladder.ending(termination, invocation.preserve_status)
}

/// How long the guard gives an orphaned tree between the `-s` signal and SIGKILL when warden
/// itself was SIGKILLed: `-k`, or [`ORPHAN_KILL_AFTER`] without one (`-k 0`, `-k inf` included:
/// nobody is left to wait for ever).
fn orphan_kill_after(invocation: &Invocation) -> Duration {
    match invocation.kill_after {
        Interval::After(d) => d,
        Interval::Disabled | Interval::Never => ORPHAN_KILL_AFTER,
    }
}

/// Ctrl-Z: stops the tree (unless `--foreground`: the command got the terminal's `SIGTSTP`
/// itself), then warden; once warden is continued, continues the tree. The ladder's clock
/// stands still from the first step to the last.
async fn stop_job(tree: &mut Tree, ladder: &mut GnuLadder, foreground: bool) {
    ladder.pause(Instant::now());
    if !foreground {
        if let Err(error) = tree.suspend() {
            tracing::debug!(%error, "stopping the tree failed");
        }
        if !tree.wait_suspended(super::SUSPEND_TIMEOUT).await {
            tracing::debug!("the tree did not stop in time; stopping warden anyway");
        }
    }
    unix::stop_self();
    if !foreground && let Err(error) = tree.resume() {
        tracing::debug!(%error, "continuing the tree failed");
    }
    ladder.resume(Instant::now());
}

fn perform(tree: &mut Tree, step: Step, verbose: bool, command_name: impl Fn() -> String) {
    let program = program_name();
    // Like GNU, a failure to signal (the process is already gone) is not an error.
    match step {
        Step::Announce(sig) => {
            if verbose {
                say!(
                    "{program}: sending signal {} to command {}",
                    announced_name(sig),
                    command_name()
                );
            }
        }
        Step::SignalCommand(sig) => {
            let _ = tree.signal_leader(sig);
        }
        Step::SignalTree(libc::SIGKILL) => {
            let _ = tree.kill_tree();
        }
        Step::SignalTree(sig) => {
            let _ = tree.signal_tree(sig);
        }
    }
}

/// How `-v` names a signal: its name, but 0 as `0` (upstream 9.10; 9.1 printed `EXIT`, the
/// name `kill -l` gives 0).
fn announced_name(sig: c_int) -> String {
    if sig == 0 {
        "0".to_owned()
    } else {
        super::signals::signal_name(sig)
    }
}

/// Prints GNU's "failed to run command" diagnostic and returns the status for it.
fn report_spawn_error(error: &SpawnError, command_name: impl Fn() -> String) -> u8 {
    let program = program_name();
    let Some(errno) = exec_errno(error) else {
        say!("{program}: {}", error_chain(error));
        return exit_status_for(RunResult::WardenFailed, false);
    };
    say!(
        "{program}: failed to run command {}: {}",
        command_name(),
        errno_text(errno)
    );
    exit_status_for(
        exec_failure(&std::io::Error::from_raw_os_error(errno)),
        false,
    )
}

/// The error `execvp` would have ended with, for a spawn that failed to find or run the
/// program: the library's typed error carries it (from its PATH search, or from `execve`
/// itself as the exec shim reported it).
pub(crate) fn exec_errno(error: &SpawnError) -> Option<c_int> {
    match error {
        SpawnError::NotFound { .. } => Some(libc::ENOENT),
        SpawnError::NotExecutable { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

/// `strerror` text, as GNU's diagnostics print it. std's message is glibc's `strerror_r`
/// (nix's own table words some differently: ELOOP is "Too many symbolic links encountered"
/// there, "Too many levels of symbolic links" in GNU's messages).
pub(crate) fn errno_text(errno: c_int) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.strip_suffix(&format!(" (os error {errno})")) {
        Some(message) => message.to_owned(),
        None => text,
    }
}

/// An error and its causes on one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
