//! What `warden run` reports: its exit status and the JSON report, from the facts of one run.
//!
//! Pure functions over [`RunFacts`], so every rule is unit-tested without a process.
//!
//! # Exit status
//! In order, the first that applies:
//! 1. warden itself was signalled (SIGINT, SIGTERM, SIGHUP): 128 + the first such signal;
//! 2. the program could not be started: 127 not found, 126 not runnable, 125 anything else;
//! 3. the kill stage was reached (SIGKILL sent): 137;
//! 4. the program completed: 0 (a plain program: it exited 0);
//! 5. `--timeout` cancelled it (cancelled, terminated): 124;
//! 6. it failed: a plain program's own exit status; a protocol worker's failure: 1;
//! 7. it crashed: its exit status, or 128 + the signal that killed it;
//! 8. anything else is warden's failure: 125.
//!
//! # Report
//! One JSON object; the keys `outcome`, `reason`, `stage`, `exit_code`, `signal`,
//! `containment`, `escaped` and `timings_ms` (`started`, `cancel_requested`, `signal_sent`,
//! `kill_sent`, `ended`, plus `exited` and `reaped`) are always present, `null` when they do not
//! apply. Extra keys: `exit_status` (warden's), `program`, `pid`, `protocol`, `warden_signal`,
//! `core_dumped`, `error`, `violation`. Timings are whole milliseconds since warden started.

use std::time::Duration;

use libc::c_int;
use serde_json::{Value, json};
use warden::{ExitStatus, Stage};

use super::exit_status::EXIT_TIMED_OUT;

/// How the run ended, as the report names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The program finished (even if a cancel came too late).
    Completed,
    /// A protocol worker acknowledged the cancel.
    Cancelled,
    /// The polite signal ended it.
    Terminated,
    /// SIGKILL ended it.
    Killed,
    /// It failed on its own: a plain program's non-zero exit (`exit_code`) or a worker's error.
    Failed {
        /// A plain program's exit status, `None` for a protocol worker's failure.
        exit_code: Option<i32>,
    },
    /// It died on its own, without being asked to stop.
    Crashed,
    /// It could not be started; warden exits with `status` (125, 126 or 127).
    SpawnFailed {
        /// The exit status for this failure.
        status: u8,
    },
}

impl Ending {
    /// The report's `outcome` value.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Ending::Completed => "completed",
            Ending::Cancelled => "cancelled",
            Ending::Terminated => "terminated",
            Ending::Killed => "killed",
            Ending::Failed { .. } => "failed",
            Ending::Crashed => "crashed",
            Ending::SpawnFailed { .. } => "spawn_failed",
        }
    }
}

/// When each step happened, measured from warden's start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Timings {
    /// The job started (after spawn and handshake).
    pub(crate) started: Option<Duration>,
    /// A cancel was requested (timeout or shutdown).
    pub(crate) cancel_requested: Option<Duration>,
    /// The polite signal was sent.
    pub(crate) signal_sent: Option<Duration>,
    /// SIGKILL was sent.
    pub(crate) kill_sent: Option<Duration>,
    /// The program exited.
    pub(crate) exited: Option<Duration>,
    /// The program was reaped.
    pub(crate) reaped: Option<Duration>,
    /// The outcome was decided.
    pub(crate) ended: Option<Duration>,
}

/// Everything the exit status and the report are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunFacts {
    /// The program as given.
    pub(crate) program: String,
    /// Whether it was run as an SDK worker.
    pub(crate) protocol: bool,
    /// Its pid, once started.
    pub(crate) pid: Option<u32>,
    /// How the run ended.
    pub(crate) ending: Ending,
    /// Why a cancel was requested (`requested`, `timeout`, `shutdown`, `unresponsive`).
    pub(crate) reason: Option<&'static str>,
    /// The highest stage of the ladder reached.
    pub(crate) stage: Option<Stage>,
    /// How the process ended, if it did.
    pub(crate) exit: Option<ExitStatus>,
    /// `cgroup`, `subreaper` or `process_group`; `None` if the program never started.
    pub(crate) containment: Option<&'static str>,
    /// Descendants found outside the process group and killed.
    pub(crate) escaped: Vec<u32>,
    /// Timings.
    pub(crate) timings: Timings,
    /// The first stop signal warden itself received.
    pub(crate) warden_signal: Option<c_int>,
    /// A spawn error, a worker's failure message, or a warden error, as text.
    pub(crate) error: Option<String>,
    /// The protocol violation that got the worker killed.
    pub(crate) violation: Option<String>,
}

/// The report's name for a stage.
pub(crate) fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Cooperative => "cooperative",
        Stage::Signal => "signal",
        Stage::Kill => "kill",
        _ => "unknown",
    }
}

fn shell_status(status: ExitStatus) -> u8 {
    u8::try_from(status.shell_status().rem_euclid(256)).unwrap_or(125)
}

/// warden's exit status for a run; see the module docs for the rules.
pub(crate) fn exit_status(facts: &RunFacts) -> u8 {
    if let Some(sig) = facts.warden_signal {
        return u8::try_from((128 + sig).rem_euclid(256)).unwrap_or(125);
    }
    if let Ending::SpawnFailed { status } = facts.ending {
        return status;
    }
    // SIGKILL was needed: the kill stage, or a polite signal that was KILL (as `timeout -s KILL`).
    let killed_politely = facts.ending == Ending::Terminated
        && matches!(facts.exit, Some(ExitStatus::Signal { signal, .. }) if signal == libc::SIGKILL);
    if facts.stage == Some(Stage::Kill) || killed_politely {
        return 137;
    }
    if facts.ending == Ending::Completed {
        return 0;
    }
    if facts.reason == Some("timeout") {
        return EXIT_TIMED_OUT;
    }
    match (&facts.ending, facts.exit) {
        (
            Ending::Failed {
                exit_code: Some(code),
            },
            _,
        ) => u8::try_from(code & 0xff).unwrap_or(1),
        (Ending::Failed { exit_code: None }, _) => 1,
        (Ending::Crashed, Some(status)) => shell_status(status),
        _ => 125,
    }
}

fn ms(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| {
        Value::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

/// The JSON report of a run.
pub(crate) fn to_json(facts: &RunFacts) -> Value {
    let t = &facts.timings;
    json!({
        "outcome": facts.ending.name(),
        "reason": facts.reason,
        "stage": facts.stage.map(stage_name),
        "exit_code": facts.exit.and_then(ExitStatus::code),
        "signal": facts.exit.and_then(ExitStatus::signal),
        "containment": facts.containment,
        "escaped": facts.escaped,
        "timings_ms": {
            "started": ms(t.started),
            "cancel_requested": ms(t.cancel_requested),
            "signal_sent": ms(t.signal_sent),
            "kill_sent": ms(t.kill_sent),
            "exited": ms(t.exited),
            "reaped": ms(t.reaped),
            "ended": ms(t.ended),
        },
        "exit_status": exit_status(facts),
        "program": facts.program,
        "pid": facts.pid,
        "protocol": facts.protocol,
        "warden_signal": facts.warden_signal,
        "core_dumped": matches!(facts.exit, Some(ExitStatus::Signal { core_dumped: true, .. })),
        "error": facts.error,
        "violation": facts.violation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(ending: Ending) -> RunFacts {
        RunFacts {
            program: "prog".into(),
            protocol: false,
            pid: Some(42),
            ending,
            reason: None,
            stage: None,
            exit: Some(ExitStatus::Code(0)),
            containment: Some("cgroup"),
            escaped: Vec::new(),
            timings: Timings {
                started: Some(Duration::from_millis(3)),
                ended: Some(Duration::from_millis(10)),
                ..Timings::default()
            },
            warden_signal: None,
            error: None,
            violation: None,
        }
    }

    const TERMED: ExitStatus = ExitStatus::Signal {
        signal: libc::SIGTERM,
        core_dumped: false,
    };
    const KILLED: ExitStatus = ExitStatus::Signal {
        signal: libc::SIGKILL,
        core_dumped: false,
    };

    #[test]
    fn completed_and_failed_programs_give_their_own_status() {
        assert_eq!(exit_status(&facts(Ending::Completed)), 0);
        let failed = RunFacts {
            exit: Some(ExitStatus::Code(3)),
            ..facts(Ending::Failed { exit_code: Some(3) })
        };
        assert_eq!(exit_status(&failed), 3);
        assert_eq!(exit_status(&facts(Ending::Failed { exit_code: None })), 1);
        let crashed = RunFacts {
            exit: Some(ExitStatus::Signal {
                signal: libc::SIGSEGV,
                core_dumped: true,
            }),
            ..facts(Ending::Crashed)
        };
        assert_eq!(exit_status(&crashed), 128 + 11);
        assert_eq!(to_json(&crashed)["core_dumped"], true);
    }

    #[test]
    fn timeout_gives_124_unless_the_kill_stage_was_reached() {
        let terminated = RunFacts {
            reason: Some("timeout"),
            stage: Some(Stage::Signal),
            exit: Some(TERMED),
            ..facts(Ending::Terminated)
        };
        assert_eq!(exit_status(&terminated), 124);
        let cancelled = RunFacts {
            reason: Some("timeout"),
            stage: Some(Stage::Cooperative),
            ..facts(Ending::Cancelled)
        };
        assert_eq!(exit_status(&cancelled), 124);
        let killed = RunFacts {
            reason: Some("timeout"),
            stage: Some(Stage::Kill),
            exit: Some(KILLED),
            ..facts(Ending::Killed)
        };
        assert_eq!(exit_status(&killed), 137);
        let killed_by_the_polite_signal = RunFacts {
            reason: Some("timeout"),
            stage: Some(Stage::Signal),
            exit: Some(KILLED),
            ..facts(Ending::Terminated)
        };
        assert_eq!(exit_status(&killed_by_the_polite_signal), 137);
        // A result that beat the cancel is the program's own.
        let late = RunFacts {
            reason: Some("timeout"),
            stage: Some(Stage::Cooperative),
            ..facts(Ending::Completed)
        };
        assert_eq!(exit_status(&late), 0);
    }

    #[test]
    fn a_signalled_warden_exits_128_plus_the_signal() {
        let shut_down = RunFacts {
            reason: Some("shutdown"),
            stage: Some(Stage::Kill),
            warden_signal: Some(libc::SIGTERM),
            ..facts(Ending::Killed)
        };
        assert_eq!(exit_status(&shut_down), 143);
        let interrupted = RunFacts {
            warden_signal: Some(libc::SIGINT),
            ..facts(Ending::Completed)
        };
        assert_eq!(exit_status(&interrupted), 130);
    }

    #[test]
    fn spawn_failures() {
        for status in [125, 126, 127] {
            let f = RunFacts {
                pid: None,
                exit: None,
                containment: None,
                ..facts(Ending::SpawnFailed { status })
            };
            assert_eq!(exit_status(&f), status);
            assert_eq!(to_json(&f)["outcome"], "spawn_failed");
            assert_eq!(to_json(&f)["containment"], Value::Null);
        }
    }

    #[test]
    fn report_has_every_required_key() {
        let f = RunFacts {
            reason: Some("timeout"),
            stage: Some(Stage::Kill),
            exit: Some(KILLED),
            escaped: vec![7, 9],
            timings: Timings {
                started: Some(Duration::from_millis(2)),
                cancel_requested: Some(Duration::from_millis(102)),
                signal_sent: Some(Duration::from_micros(102_400)),
                kill_sent: Some(Duration::from_millis(202)),
                exited: Some(Duration::from_millis(203)),
                reaped: Some(Duration::from_millis(204)),
                ended: Some(Duration::from_millis(205)),
            },
            ..facts(Ending::Killed)
        };
        let report = to_json(&f);
        assert_eq!(
            report,
            json!({
                "outcome": "killed",
                "reason": "timeout",
                "stage": "kill",
                "exit_code": null,
                "signal": 9,
                "containment": "cgroup",
                "escaped": [7, 9],
                "timings_ms": {
                    "started": 2, "cancel_requested": 102, "signal_sent": 102, "kill_sent": 202,
                    "exited": 203, "reaped": 204, "ended": 205
                },
                "exit_status": 137,
                "program": "prog",
                "pid": 42,
                "protocol": false,
                "warden_signal": null,
                "core_dumped": false,
                "error": null,
                "violation": null,
            })
        );
        let plain = to_json(&facts(Ending::Completed));
        assert_eq!(plain["timings_ms"]["kill_sent"], Value::Null);
        assert_eq!(plain["exit_code"], 0);
        assert_eq!(plain["stage"], Value::Null);
    }
}
