//! What `warden timeout` does when its timer fires or a signal arrives: GNU `timeout` 9.1's
//! `cleanup()` as a sans-IO state machine, plus warden's own second and third stop signals.
//!
//! Time comes in as `now`, steps come out; the caller performs them on the process tree and
//! sleeps until [`GnuLadder::poll_timeout`]. Unit-tested here without any process.
//!
//! # GNU's rules, kept exactly
//! - When a timer fires (or `SIGALRM` arrives from outside), the command has *timed out* and
//!   gets the `--signal` signal. Any other handled signal is forwarded as itself.
//! - The first of these events arms the `--kill-after` timer and turns the signal to send on a
//!   later timeout into `SIGKILL`. GNU creates a new timer without deleting the first one, so
//!   both stay armed: whichever fires first sends `SIGKILL`.
//! - Each event signals the command, then (unless `--foreground`) its whole tree; then, unless
//!   the signal was `KILL` or `CONT`, `SIGCONT` the same way, so that a stopped command can act.
//! - A signal sent to the tree is ignored from then on when it arrives from outside (GNU sends
//!   it to its own process group, and sets it to `SIG_IGN` first to avoid a loop).
//!
//! # warden's additions
//! `SIGINT` and `SIGTERM` also count toward warden's own ladder: the first is handled as GNU
//! does; the second SIGKILLs the whole tree at once (the run then ends as if `--kill-after`
//! had fired: status 137); the third makes warden exit at once with 128 + the signal.
//!
//! # Upstream, not 9.1: every terminating signal is handled
//! As coreutils 9.10 does ("handle all terminating signals"), every signal whose default
//! action ends a process (GNU's `term_sig` list and the real-time signals) is handled like
//! `SIGINT` above: forwarded to the tree, and warden waits for the command, so a command that
//! traps it runs its trap, and warden then ends the way the command did. GNU 9.1 left `SIGPIPE`,
//! `SIGUSR1`, `SIGUSR2` and the rest at their default, so they killed `timeout` and left the
//! command running. [`handled_signals`] says which; a signal that was ignored when warden
//! started is not handled (a background job's ignored `SIGINT` stays ignored), except `SIGALRM`
//! and the `--signal`.
//!
//! # Job control
//! While warden and its tree are stopped (Ctrl-Z), the command is not running, so the stop must
//! not count against its DURATION or `--kill-after`: [`GnuLadder::pause`] stops the ladder's
//! clock, [`GnuLadder::resume`] starts it again with every timer moved later by the stopped
//! time. While paused no timer is due, and a signal handled then arms its `--kill-after` timer
//! from the moment of the pause (so it too counts only running time).

use std::time::Instant;

use libc::c_int;

use super::duration::Interval;
use super::exit_status::{RunResult, Termination, exit_status_for};

/// One thing to do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// With `--verbose`, print "sending signal NAME to command 'CMD'".
    Announce(c_int),
    /// Signal the command itself.
    SignalCommand(c_int),
    /// Signal the command's whole tree (for `SIGKILL`: kill the tree).
    SignalTree(c_int),
}

/// How warden reacts to a signal it received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reaction {
    /// Perform these steps (possibly none).
    Steps(Vec<Step>),
    /// Exit at once with this status (third stop signal).
    ExitNow(u8),
}

/// GNU's `term_sig` list (`src/term-sig.h`): what `timeout` handles besides the real-time
/// signals, less the four it cannot handle safely in a Rust process: `SIGILL`, `SIGFPE`,
/// `SIGSEGV` and `SIGBUS` are the signals of warden's own faults (a handler that returns would
/// fault again forever, and std uses SEGV/BUS for its stack-overflow guard), so an external
/// one of those still kills warden as it would have killed GNU 9.1.
const TERMINATING: [c_int; 17] = [
    libc::SIGALRM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGTERM,
    libc::SIGPIPE,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGSYS,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGPOLL,
    libc::SIGPWR,
];

/// The signals `warden timeout` handles, GNU's `install_cleanup`: every terminating signal
/// and real-time signal that was not ignored when warden started (`ignored_at_start`), plus
/// `SIGALRM` and `term_signal` (the `--signal`) whatever their state. With `-s CHLD`,
/// `-s TTIN` or `-s TTOU`, GNU's later `SIGCHLD` handler and `SIG_IGN` for the tty signals
/// replace the cleanup handler, so those listen to nothing extra.
pub(crate) fn handled_signals(
    term_signal: c_int,
    ignored_at_start: impl Fn(c_int) -> bool,
) -> Vec<c_int> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let realtime = libc::SIGRTMIN()..=libc::SIGRTMAX();
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let realtime = 1..=0;
    let mut handled: Vec<c_int> = TERMINATING
        .into_iter()
        .chain(realtime)
        .filter(|&sig| sig == libc::SIGALRM || sig == term_signal || !ignored_at_start(sig))
        .collect();
    if !matches!(term_signal, libc::SIGCHLD | libc::SIGTTIN | libc::SIGTTOU)
        && term_signal > 0
        && !handled.contains(&term_signal)
    {
        handled.push(term_signal);
    }
    handled
}

/// The signals COMMAND starts with ignored, GNU's rule: a signal that was ignored when
/// `timeout` started stays ignored across its `execvp`, unless `timeout` handled it (a handler
/// is reset to the default by exec): `SIGALRM` and `term_signal` always get a handler, `SIGCHLD`
/// gets GNU's `chld` handler, and the child puts `SIGTTIN`/`SIGTTOU` back to the default
/// explicitly. (The terminating signals warden handles are, by [`handled_signals`], only
/// those that were not ignored.) Everything else starts at its default.
pub(crate) fn kept_ignored(term_signal: c_int, ignored_at_start: &[c_int]) -> Vec<c_int> {
    ignored_at_start
        .iter()
        .copied()
        .filter(|&sig| {
            !matches!(
                sig,
                libc::SIGALRM | libc::SIGCHLD | libc::SIGTTIN | libc::SIGTTOU
            ) && sig != term_signal
        })
        .collect()
}

/// How `warden timeout` ends once the command has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Exit with this status.
    Exit(u8),
    /// Die of this signal as the command did (GNU re-raises it); exit with `fallback` if the
    /// process survives that.
    Reraise {
        /// The command's fatal signal.
        signal: c_int,
        /// 128 + signal.
        fallback: u8,
    },
}

/// The state of one `warden timeout` run; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct GnuLadder {
    term_signal: c_int,
    kill_after: Interval,
    foreground: bool,
    timed_out: bool,
    forced_kill: bool,
    ignored: Vec<c_int>,
    timers: Vec<Instant>,
    stop_signals: u32,
    /// When the ladder's clock was stopped ([`GnuLadder::pause`]), while it is.
    paused_at: Option<Instant>,
}

fn deadline(now: Instant, interval: Interval) -> Option<Instant> {
    match interval {
        Interval::After(d) => now.checked_add(d),
        Interval::Disabled | Interval::Never => None,
    }
}

impl GnuLadder {
    /// A run that started at `now`: the DURATION timer is armed (unless 0 or too long to fire).
    pub(crate) fn new(
        duration: Interval,
        kill_after: Interval,
        signal: c_int,
        foreground: bool,
        now: Instant,
    ) -> Self {
        GnuLadder {
            term_signal: signal,
            kill_after,
            foreground,
            timed_out: false,
            forced_kill: false,
            ignored: Vec::new(),
            timers: deadline(now, duration).into_iter().collect(),
            stop_signals: 0,
            paused_at: None,
        }
    }

    /// When the next timer fires, if one is armed; `None` while paused.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.paused_at.is_some() {
            return None;
        }
        self.timers.iter().min().copied()
    }

    /// Stops the ladder's clock at `now` (warden and its tree are being stopped). A no-op
    /// while already paused.
    pub(crate) fn pause(&mut self, now: Instant) {
        self.paused_at.get_or_insert(now);
    }

    /// Starts the clock again at `now`: every armed timer moves later by the time spent
    /// paused (one that cannot be represented any more never fires). A no-op unless paused.
    pub(crate) fn resume(&mut self, now: Instant) {
        if let Some(at) = self.paused_at.take() {
            let stopped = now.saturating_duration_since(at);
            self.timers = self
                .timers
                .iter()
                .filter_map(|t| t.checked_add(stopped))
                .collect();
        }
    }

    /// The ladder's time: `now`, or the moment of the pause while paused.
    fn clock(&self, now: Instant) -> Instant {
        self.paused_at.map_or(now, |at| at.min(now))
    }

    /// Whether the command has timed out (a timer fired or `SIGALRM` arrived).
    #[cfg(test)]
    pub(crate) fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// Fires every timer due at `now`; each is a `SIGALRM` to GNU.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Vec<Step> {
        let now = self.clock(now);
        let mut steps = Vec::new();
        while let Some(pos) = self.timers.iter().position(|&t| t <= now) {
            self.timers.swap_remove(pos);
            steps.extend(self.alarm(now));
        }
        steps
    }

    /// A signal warden received from outside.
    pub(crate) fn handle_signal(&mut self, sig: c_int, now: Instant) -> Reaction {
        let now = self.clock(now);
        if sig == libc::SIGINT || sig == libc::SIGTERM {
            self.stop_signals += 1;
            match self.stop_signals {
                1 => {}
                2 => return Reaction::Steps(self.kill_now()),
                _ => return Reaction::ExitNow(u8::try_from(128 + sig).unwrap_or(255)),
            }
        }
        if sig == libc::SIGALRM {
            return Reaction::Steps(self.alarm(now));
        }
        if self.ignored.contains(&sig) {
            return Reaction::Steps(Vec::new());
        }
        Reaction::Steps(self.cleanup(sig, now))
    }

    fn alarm(&mut self, now: Instant) -> Vec<Step> {
        if self.ignored.contains(&libc::SIGALRM) {
            return Vec::new();
        }
        self.timed_out = true;
        self.cleanup(self.term_signal, now)
    }

    /// GNU's `cleanup(sig)` once the signal to send is known.
    fn cleanup(&mut self, sig: c_int, now: Instant) -> Vec<Step> {
        if self.kill_after != Interval::Disabled {
            self.term_signal = libc::SIGKILL;
            self.timers.extend(deadline(now, self.kill_after));
            self.kill_after = Interval::Disabled;
        }
        let mut steps = vec![Step::Announce(sig), Step::SignalCommand(sig)];
        if !self.foreground {
            steps.push(Step::SignalTree(sig));
            self.ignored.push(sig);
            if sig != libc::SIGKILL && sig != libc::SIGCONT {
                steps.push(Step::SignalCommand(libc::SIGCONT));
                steps.push(Step::SignalTree(libc::SIGCONT));
                self.ignored.push(libc::SIGCONT);
            }
        }
        steps
    }

    /// warden's second stop signal: SIGKILL now, nothing more on a timer.
    fn kill_now(&mut self) -> Vec<Step> {
        self.forced_kill = true;
        self.timers.clear();
        self.kill_after = Interval::Disabled;
        let mut steps = vec![
            Step::Announce(libc::SIGKILL),
            Step::SignalCommand(libc::SIGKILL),
        ];
        if !self.foreground {
            steps.push(Step::SignalTree(libc::SIGKILL));
        }
        steps
    }

    /// How warden ends, given how the command ended (GNU's rules; see
    /// [`exit_status_for`]).
    pub(crate) fn ending(&self, termination: Termination, preserve_status: bool) -> Ending {
        let forced = self.forced_kill && termination == Termination::Signaled(libc::SIGKILL);
        let timed_out = self.timed_out || forced;
        let status = exit_status_for(
            RunResult::Finished {
                termination,
                timed_out,
            },
            preserve_status,
        );
        match termination {
            Termination::Signaled(signal) if !timed_out => Ending::Reraise {
                signal,
                fallback: status,
            },
            _ => Ending::Exit(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Step::{Announce, SignalCommand, SignalTree};
    use libc::{SIGALRM, SIGCONT, SIGHUP, SIGINT, SIGKILL, SIGTERM, SIGUSR1};
    use std::time::Duration;

    fn secs(n: u64) -> Interval {
        Interval::After(Duration::from_secs(n))
    }

    fn term_then_cont(sig: c_int) -> Vec<Step> {
        vec![
            Announce(sig),
            SignalCommand(sig),
            SignalTree(sig),
            SignalCommand(SIGCONT),
            SignalTree(SIGCONT),
        ]
    }

    #[test]
    fn timeout_sends_the_signal_then_sigcont_to_command_and_tree() {
        let t0 = Instant::now();
        let mut l = GnuLadder::new(secs(10), Interval::Disabled, SIGTERM, false, t0);
        assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        assert!(l.handle_timeout(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(
            l.handle_timeout(t0 + Duration::from_secs(10)),
            term_then_cont(SIGTERM)
        );
        assert!(l.timed_out());
        assert_eq!(l.poll_timeout(), None);
        // TERM was sent to the tree: GNU ignores it from now on (but it still counts).
        assert_eq!(
            l.handle_signal(SIGTERM, t0 + Duration::from_secs(11)),
            Reaction::Steps(vec![])
        );
    }

    #[test]
    fn kill_after_arms_a_second_timer_and_switches_to_kill() {
        let t0 = Instant::now();
        let mut l = GnuLadder::new(secs(1), secs(2), SIGTERM, false, t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.handle_timeout(t1), term_then_cont(SIGTERM));
        assert_eq!(l.poll_timeout(), Some(t1 + Duration::from_secs(2)));
        assert_eq!(
            l.handle_timeout(t1 + Duration::from_secs(2)),
            vec![
                Announce(SIGKILL),
                SignalCommand(SIGKILL),
                SignalTree(SIGKILL)
            ]
        );
        assert_eq!(l.poll_timeout(), None);
        assert_eq!(
            l.ending(Termination::Signaled(SIGKILL), false),
            Ending::Exit(137)
        );
    }

    #[test]
    fn kill_signal_gets_no_sigcont() {
        let t0 = Instant::now();
        let mut l = GnuLadder::new(secs(1), Interval::Disabled, SIGKILL, false, t0);
        assert_eq!(
            l.handle_timeout(t0 + Duration::from_secs(1)),
            vec![
                Announce(SIGKILL),
                SignalCommand(SIGKILL),
                SignalTree(SIGKILL)
            ]
        );
    }

    #[test]
    fn foreground_signals_only_the_command_and_sends_no_sigcont() {
        let t0 = Instant::now();
        let mut l = GnuLadder::new(secs(1), secs(1), SIGTERM, true, t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            l.handle_timeout(t1),
            vec![Announce(SIGTERM), SignalCommand(SIGTERM)]
        );
        assert_eq!(
            l.handle_timeout(t1 + Duration::from_secs(1)),
            vec![Announce(SIGKILL), SignalCommand(SIGKILL)]
        );
        // Nothing was sent to a group, so nothing is ignored.
        assert_eq!(
            l.handle_signal(SIGHUP, t1),
            Reaction::Steps(vec![Announce(SIGHUP), SignalCommand(SIGHUP)])
        );
    }

    #[test]
    fn forwarded_signal_keeps_the_duration_timer_and_does_not_time_out() {
        let t0 = Instant::now();
        let mut l = GnuLadder::new(secs(10), Interval::Disabled, SIGTERM, false, t0);
        assert_eq!(
            l.handle_signal(SIGHUP, t0),
            Reaction::Steps(term_then_cont(SIGHUP))
        );
        assert!(!l.timed_out());
        assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        // The command died of the forwarded signal: warden dies of it too.
        assert_eq!(
            l.ending(Termination::Signaled(SIGHUP), false),
            Ending::Reraise {
                signal: SIGHUP,
                fallback: 129
            }
        );
        // A second HUP is ignored, as GNU ignores a signal it sent to its group.
        assert_eq!(l.handle_signal(SIGHUP, t0), Reaction::Steps(vec![]));
    }

    #[test]
    fn both_gnu_timers_stay_armed_after_a_forwarded_signal() {
        let t0 = Instant::now();
        let mut l = GnuLadder::new(secs(10), secs(20), SIGTERM, false, t0);
        assert_eq!(
            l.handle_signal(libc::SIGQUIT, t0),
            Reaction::Steps(term_then_cont(libc::SIGQUIT))
        );
        // The DURATION timer fires first and now sends KILL.
        assert_eq!(
            l.handle_timeout(t0 + Duration::from_secs(10)),
            vec![
                Announce(SIGKILL),
                SignalCommand(SIGKILL),
                SignalTree(SIGKILL)
            ]
        );
        assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_secs(20)));
    }

    #[test]
    fn sigalrm_from_outside_is_a_timeout() {
        let t0 = Instant::now();
        let mut l = GnuLadder::new(Interval::Disabled, Interval::Disabled, SIGTERM, false, t0);
        assert_eq!(l.poll_timeout(), None);
        assert_eq!(
            l.handle_signal(SIGALRM, t0),
            Reaction::Steps(term_then_cont(SIGTERM))
        );
        assert!(l.timed_out());
        assert_eq!(
            l.ending(Termination::Signaled(SIGTERM), false),
            Ending::Exit(124)
        );
        assert_eq!(
            l.ending(Termination::Signaled(SIGTERM), true),
            Ending::Exit(143)
        );
    }

    #[test]
    fn signal_zero_announces_exit_and_still_times_out() {
        let t0 = Instant::now();
        let mut l = GnuLadder::new(secs(1), Interval::Disabled, 0, false, t0);
        assert_eq!(
            l.handle_timeout(t0 + Duration::from_secs(1)),
            term_then_cont(0)
        );
        assert_eq!(l.ending(Termination::Exited(0), false), Ending::Exit(124));
    }

    #[test]
    fn never_and_disabled_arm_nothing() {
        let t0 = Instant::now();
        let mut l = GnuLadder::new(Interval::Never, Interval::Never, SIGTERM, false, t0);
        assert_eq!(l.poll_timeout(), None);
        // -k inf is consumed by the first signal: later timeouts send KILL, none is armed.
        assert_eq!(
            l.handle_signal(SIGHUP, t0),
            Reaction::Steps(term_then_cont(SIGHUP))
        );
        assert_eq!(l.poll_timeout(), None);
        assert_eq!(
            l.handle_signal(SIGALRM, t0),
            Reaction::Steps(vec![
                Announce(SIGKILL),
                SignalCommand(SIGKILL),
                SignalTree(SIGKILL)
            ])
        );
    }

    #[test]
    fn stop_signal_ladder() {
        let t0 = Instant::now();
        let mut l = GnuLadder::new(secs(10), secs(5), SIGTERM, false, t0);
        assert_eq!(
            l.handle_signal(SIGINT, t0),
            Reaction::Steps(term_then_cont(SIGINT))
        );
        assert_eq!(
            l.handle_signal(SIGTERM, t0),
            Reaction::Steps(vec![
                Announce(SIGKILL),
                SignalCommand(SIGKILL),
                SignalTree(SIGKILL)
            ])
        );
        assert_eq!(l.poll_timeout(), None);
        assert_eq!(l.handle_signal(SIGINT, t0), Reaction::ExitNow(130));
        // Killed by warden's own escalation: 137, no re-raise.
        assert_eq!(
            l.ending(Termination::Signaled(SIGKILL), false),
            Ending::Exit(137)
        );
        // Had it died of the first signal, warden would die of it too.
        assert_eq!(
            l.ending(Termination::Signaled(SIGINT), false),
            Ending::Reraise {
                signal: SIGINT,
                fallback: 130
            }
        );
    }

    #[test]
    fn usr1_is_forwarded_like_any_terminating_signal() {
        let t0 = Instant::now();
        let mut l = GnuLadder::new(secs(10), Interval::Disabled, SIGTERM, false, t0);
        assert_eq!(
            l.handle_signal(SIGUSR1, t0),
            Reaction::Steps(term_then_cont(SIGUSR1))
        );
        assert!(!l.timed_out());
        assert_eq!(
            l.handle_signal(libc::SIGPIPE, t0),
            Reaction::Steps(term_then_cont(libc::SIGPIPE))
        );
        // The command died of it: warden dies of it too, as upstream does.
        assert_eq!(
            l.ending(Termination::Signaled(SIGUSR1), false),
            Ending::Reraise {
                signal: SIGUSR1,
                fallback: 138
            }
        );
    }

    #[test]
    fn ignored_signals_stay_ignored_unless_gnu_handles_them() {
        let at_start = [
            libc::SIGPIPE,
            SIGINT,
            SIGALRM,
            SIGHUP,
            libc::SIGCHLD,
            libc::SIGTTOU,
        ];
        assert_eq!(kept_ignored(SIGHUP, &at_start), vec![libc::SIGPIPE, SIGINT]);
        assert_eq!(kept_ignored(SIGTERM, &[]), Vec::<c_int>::new());
    }

    #[test]
    fn handled_signals_follow_install_cleanup() {
        let none = |_| false;
        let handled = handled_signals(SIGTERM, none);
        for sig in [
            SIGALRM,
            SIGINT,
            libc::SIGPIPE,
            SIGUSR1,
            libc::SIGUSR2,
            libc::SIGXCPU,
        ] {
            assert!(handled.contains(&sig), "{sig}");
        }
        assert!(handled.contains(&libc::SIGRTMIN()) && handled.contains(&libc::SIGRTMAX()));
        for sig in [
            SIGKILL,
            libc::SIGSTOP,
            libc::SIGSEGV,
            libc::SIGCHLD,
            SIGCONT,
        ] {
            assert!(!handled.contains(&sig), "{sig}");
        }
        // Ignored at start: not handled (a background job's SIGINT), but ALRM and the
        // --signal always are.
        let all_ignored = |_| true;
        let handled = handled_signals(SIGHUP, all_ignored);
        assert_eq!(handled, vec![SIGALRM, SIGHUP]);
        // -s USR1 while USR1 was ignored, and a signal outside GNU's list.
        assert!(handled_signals(libc::SIGWINCH, all_ignored).contains(&libc::SIGWINCH));
        assert_eq!(handled_signals(libc::SIGCHLD, all_ignored), vec![SIGALRM]);
    }

    #[test]
    fn normal_exits_pass_through() {
        let l = GnuLadder::new(secs(10), Interval::Disabled, SIGTERM, false, Instant::now());
        assert_eq!(l.ending(Termination::Exited(3), false), Ending::Exit(3));
        assert_eq!(l.ending(Termination::Exited(0), true), Ending::Exit(0));
    }

    #[test]
    fn a_stop_does_not_count_against_the_duration() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut l = GnuLadder::new(secs(10), Interval::Disabled, SIGTERM, false, t0);
        l.pause(at(4_000));
        assert_eq!(l.poll_timeout(), None, "no timer is due while stopped");
        // The DURATION has passed on the wall clock, not in running time.
        assert!(l.handle_timeout(at(12_000)).is_empty());
        l.resume(at(34_000));
        // 4 s ran before the stop, 30 s stopped: 6 s of running time are left.
        assert_eq!(l.poll_timeout(), Some(at(40_000)));
        assert!(l.handle_timeout(at(39_999)).is_empty());
        assert_eq!(l.handle_timeout(at(40_000)), term_then_cont(SIGTERM));
        assert!(l.timed_out());
    }

    #[test]
    fn every_timer_moves_by_each_stop() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut l = GnuLadder::new(secs(1), secs(2), SIGTERM, false, t0);
        assert_eq!(l.handle_timeout(at(1_000)), term_then_cont(SIGTERM));
        // The first -k timer is due at 3 s; GNU's second (from DURATION's timer, re-armed by
        // the signal) is the same here. Two stops of 500 ms and 1.5 s move it to 5 s.
        l.pause(at(1_500));
        l.resume(at(2_000));
        l.pause(at(2_500));
        l.pause(at(2_900)); // a repeated pause keeps the first moment
        l.resume(at(4_000));
        l.resume(at(9_000)); // a resume without a pause changes nothing
        assert_eq!(l.poll_timeout(), Some(at(5_000)));
        assert_eq!(
            l.handle_timeout(at(5_000)),
            vec![
                Announce(SIGKILL),
                SignalCommand(SIGKILL),
                SignalTree(SIGKILL)
            ]
        );
    }

    #[test]
    fn a_signal_while_paused_arms_kill_after_from_the_pause() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut l = GnuLadder::new(secs(60), secs(2), SIGTERM, false, t0);
        l.pause(at(1_000));
        assert_eq!(
            l.handle_signal(SIGHUP, at(5_000)),
            Reaction::Steps(term_then_cont(SIGHUP))
        );
        assert_eq!(l.poll_timeout(), None);
        l.resume(at(10_000));
        // -k counts from the pause (1 s) plus the 9 s stopped: due at 12 s, and DURATION at
        // 60 + 9 s.
        assert_eq!(l.poll_timeout(), Some(at(12_000)));
        assert_eq!(
            l.handle_timeout(at(12_000)).first(),
            Some(&Announce(SIGKILL))
        );
        assert_eq!(l.poll_timeout(), Some(at(69_000)));
    }

    #[test]
    fn odd_clocks_neither_panic_nor_fire_early() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // A resume "before" the pause shifts by nothing.
        let mut l = GnuLadder::new(secs(10), Interval::Disabled, SIGTERM, false, t0);
        l.pause(at(5_000));
        l.resume(at(1_000));
        assert_eq!(l.poll_timeout(), Some(at(10_000)));
        // A shift too large to represent drops the timer: it never fires.
        let huge = Duration::from_secs(u64::MAX / 3);
        let mut l = GnuLadder::new(
            Interval::After(huge),
            Interval::Disabled,
            SIGTERM,
            false,
            t0,
        );
        let armed = l.poll_timeout();
        l.pause(t0);
        if let Some(late) = t0.checked_add(huge) {
            l.resume(late);
            assert_eq!(
                l.poll_timeout(),
                armed.and_then(|t| t.checked_add(huge)),
                "moved by the stop, or dropped"
            );
        }
    }
}
