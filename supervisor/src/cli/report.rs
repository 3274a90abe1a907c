//! What `warden run` reports: its exit status and the JSON report, from the facts of one run.
//!
//! Pure functions over [`RunFacts`], so every rule is unit-tested without a process. The report
//! of a job that ran is the library's [`JobReport`] serialised (its timings measured from
//! warden's start through [`JobReport::since`]), with the CLI's own keys added; only a run
//! that never got a report (a spawn failure, a refused run) is written here key by key.
//!
//! # Exit status
//! In order, the first that applies:
//! 1. warden itself was signalled (SIGINT, SIGTERM, SIGHUP or a `--stop-signal`): 128 + the
//!    first such signal;
//! 2. the program could not be started: 127 not found, 126 not runnable, 125 anything else;
//! 3. the kill stage was reached (SIGKILL sent): 137;
//! 4. the program completed: 0 (a plain program: it exited 0);
//! 5. `--timeout` cancelled it (cancelled, terminated): 124;
//! 6. it failed: a plain program's own exit status; a protocol worker's failure: 1;
//! 7. it crashed, or a limit killed it (the OOM killer, `SIGXCPU`): its exit status, or
//!    128 + the signal that killed it;
//! 8. anything else is warden's failure: 125. So is an outcome (or failure) of a kind this
//!    build does not know, whatever else happened (the library's enums are non-exhaustive):
//!    it is reported under the library's name with an `error` saying so, never as a guess.
//!
//! # Report
//! One JSON object; the keys `outcome`, `reason`, `stage`, `exit_code`, `signal`,
//! `containment`, `escaped` and `timings_ms` (`started`, `cancel_requested`, `signal_sent`,
//! `kill_sent`, `ended`, plus `exited` and `reaped`) are always present, `null` when they do not
//! apply. Extra keys: `exit_status` (warden's), `program`, `pid`, `protocol`, `warden_signal`,
//! `stop_signal` (the name of the first stop signal warden received: `TERM`, `USR1`, ...; the
//! number is `warden_signal`), `core_dumped`, `error`, `violation`, and the library's `job`,
//! `job_started`, `timings_us`
//! (microseconds) and `timings_ms.{kill_pending,result_received}`; `limits`: one object per
//! requested limit, by name (`memory`, `cpu_time`, `open_files`, `processes`), with its
//! `value` (bytes, milliseconds, descriptors, processes), `mechanism` (`cgroup_v2`,
//! `cgroup_v1`, `rlimit`, `none`), `hit` (from the kernel's counters; `null` where none tells),
//! `peak` and `oom_kills`; `sandbox`, by feature name, `true` where it was applied; and
//! `limit`, the limit that ended the run; `output_tail` (with `--capture-output`, else `null`):
//! `stdout` and `stderr`, each with the job's last `lines`, its `bytes`, the bytes the
//! `--output-cap` left out (`truncated`) and `cut` (the stream was still held open, by a process
//! outside the tree, once the tree was gone). Timings are whole milliseconds since warden started.
//!
//! Every name in it (outcome, reason, stage, containment) is the library's own `as_str`, which
//! its `FromStr` parses back; only `spawn_failed` is the CLI's, as a spawn error is no outcome.

use std::time::{Duration, Instant};

use libc::c_int;
use serde_json::{Value, json};
use warden::{
    CancelReason, ExitStatus, Failure, JobReport, LimitKind, Outcome, OutcomeKind, Stage,
};

use super::exit_status::{EXIT_CANCELED, EXIT_TIMED_OUT};
use super::signals::signal_name;

/// The report's `outcome` when the program could not be started: a spawn error, not one of the
/// library's outcomes.
const SPAWN_FAILED: &str = "spawn_failed";

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
    /// The library decided an outcome (or a failure) this build does not know how to report:
    /// warden's failure (125), named by the library's kind, never mapped to a plausible label.
    Unrecognised {
        /// The library's kind of the outcome.
        kind: OutcomeKind,
    },
}

impl Ending {
    /// The library's kind of this ending; `None` for a spawn failure, which is no outcome.
    pub(crate) fn kind(&self) -> Option<OutcomeKind> {
        match self {
            Ending::Completed => Some(OutcomeKind::Completed),
            Ending::Cancelled => Some(OutcomeKind::Cancelled),
            Ending::Terminated => Some(OutcomeKind::Terminated),
            Ending::Killed => Some(OutcomeKind::Killed),
            Ending::Failed { .. } => Some(OutcomeKind::Failed),
            Ending::Crashed => Some(OutcomeKind::Crashed),
            Ending::Unrecognised { kind } => Some(*kind),
            Ending::SpawnFailed { .. } => None,
        }
    }

    /// The report's `outcome` value: the library's name for the kind, or `spawn_failed`.
    pub(crate) fn name(&self) -> &'static str {
        self.kind().map_or(SPAWN_FAILED, OutcomeKind::as_str)
    }

    /// How a job's outcome ends the run, and the `error` text it carries: a worker's failure
    /// in the library's words, or why warden cannot report the outcome.
    pub(crate) fn of(outcome: &Outcome) -> (Ending, Option<String>) {
        match outcome {
            Outcome::Completed(_) | Outcome::CompletedDespiteCancel(_) => (Ending::Completed, None),
            Outcome::Cancelled => (Ending::Cancelled, None),
            Outcome::Terminated => (Ending::Terminated, None),
            Outcome::Killed => (Ending::Killed, None),
            Outcome::Crashed(_) => (Ending::Crashed, None),
            Outcome::Failed(Failure::ExitCode(code)) => (
                Ending::Failed {
                    exit_code: Some(*code),
                },
                None,
            ),
            Outcome::Failed(
                failure @ (Failure::Worker(_)
                | Failure::ExitedWithoutResult
                | Failure::LimitReached(_)),
            ) => (
                Ending::Failed { exit_code: None },
                Some(failure.to_string()),
            ),
            // `Failure` and `Outcome` are non-exhaustive, so these arms must exist; what they
            // catch was added to the library after this code, and is reported as such.
            Outcome::Failed(failure) => (
                Ending::Unrecognised {
                    kind: OutcomeKind::Failed,
                },
                Some(format!(
                    "cannot report this kind of failure ({failure}): warden run does not know it"
                )),
            ),
            other => (
                Ending::Unrecognised { kind: other.kind() },
                Some(format!(
                    "cannot report an outcome of kind '{}' (the library's name for it): warden run does not know it",
                    other.kind()
                )),
            ),
        }
    }
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
    /// Why a cancel was requested (the report's).
    pub(crate) reason: Option<CancelReason>,
    /// The highest stage of the ladder reached (the report's).
    pub(crate) stage: Option<Stage>,
    /// How the process ended, if it did: the report's, else what the shutdown after the job
    /// saw (a reused worker's exit comes after its report).
    pub(crate) exit: Option<ExitStatus>,
    /// The job's report, if the job ran; the rest of the report is made of it.
    pub(crate) report: Option<JobReport>,
    /// warden's start, from which the report's timings are measured.
    pub(crate) epoch: Instant,
    /// When the run ended, for a run without a report.
    pub(crate) ended: Duration,
    /// The first stop signal warden itself received.
    pub(crate) warden_signal: Option<c_int>,
    /// A spawn error or a warden error, as text (the worker's own failure message is the
    /// report's).
    pub(crate) error: Option<String>,
    /// The limit that ended the run (the report's).
    pub(crate) limit: Option<LimitKind>,
}

fn shell_status(status: ExitStatus) -> u8 {
    u8::try_from(status.shell_status().rem_euclid(256)).unwrap_or(EXIT_CANCELED)
}

/// warden's exit status for a run; see the module docs for the rules.
pub(crate) fn exit_status(facts: &RunFacts) -> u8 {
    if let Some(sig) = facts.warden_signal {
        return u8::try_from((128 + sig).rem_euclid(256)).unwrap_or(EXIT_CANCELED);
    }
    // SIGKILL was needed: the kill stage, or a polite signal that was KILL (as `timeout -s KILL`).
    let killed_politely = facts.ending == Ending::Terminated
        && matches!(facts.exit, Some(ExitStatus::Signal { signal, .. }) if signal == libc::SIGKILL);
    match facts.ending {
        Ending::SpawnFailed { status } => status,
        Ending::Unrecognised { .. } => EXIT_CANCELED,
        _ if facts.stage == Some(Stage::Kill) || killed_politely => 137,
        Ending::Completed => 0,
        _ if facts.reason == Some(CancelReason::Timeout) => EXIT_TIMED_OUT,
        Ending::Failed {
            exit_code: Some(code),
        } => u8::try_from(code & 0xff).unwrap_or(1),
        Ending::Failed { exit_code: None } => 1,
        // Exit status 0 and crashed: an SDK worker that answered a cancel nobody here asked for
        // (a signal from outside) and exited. Never 0: the work did not complete.
        Ending::Crashed if facts.exit == Some(ExitStatus::Code(0)) => 1,
        Ending::Crashed => facts.exit.map_or(EXIT_CANCELED, shell_status),
        Ending::Killed if facts.limit.is_some() => facts.exit.map_or(137, shell_status),
        // Liveness (--unresponsive-after) stopped it: a timeout of another kind.
        _ if facts.reason == Some(CancelReason::Unresponsive) => EXIT_TIMED_OUT,
        // Stopped, but neither by a timeout nor by warden's own signal: nothing in the CLI asks
        // for that, so it is warden's failure.
        Ending::Cancelled | Ending::Terminated | Ending::Killed => EXIT_CANCELED,
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The JSON report of a run: the library's report with the CLI's keys, or (no job ran) the
/// same keys, `null` where nothing happened.
pub(crate) fn to_json(facts: &RunFacts) -> Value {
    let serialised = facts
        .report
        .as_ref()
        .and_then(|report| serde_json::to_value(report.since(facts.epoch)).ok());
    let mut report = serialised.unwrap_or_else(|| {
        json!({
            "reason": facts.reason.map(CancelReason::as_str),
            "stage": facts.stage.map(Stage::as_str),
            "containment": null,
            "escaped": [],
            "timings_ms": {
                "started": null, "cancel_requested": null, "signal_sent": null,
                "kill_sent": null, "exited": null, "reaped": null, "ended": ms(facts.ended),
            },
            "error": null,
            "violation": null,
            "limits": {"sandbox": {}},
            "limit": facts.limit.map(LimitKind::as_str),
            "output_tail": null,
        })
    });
    let Value::Object(map) = &mut report else {
        return report;
    };
    let mut set = |key: &str, value: Value| {
        map.insert(key.to_owned(), value);
    };
    set("outcome", facts.ending.name().into());
    set("exit_code", facts.exit.and_then(ExitStatus::code).into());
    set("signal", facts.exit.and_then(ExitStatus::signal).into());
    set(
        "core_dumped",
        matches!(
            facts.exit,
            Some(ExitStatus::Signal {
                core_dumped: true,
                ..
            })
        )
        .into(),
    );
    set("exit_status", exit_status(facts).into());
    set("program", facts.program.clone().into());
    set("pid", facts.pid.into());
    set("protocol", facts.protocol.into());
    set("warden_signal", facts.warden_signal.into());
    set("stop_signal", facts.warden_signal.map(signal_name).into());
    if let Some(error) = &facts.error {
        set("error", error.clone().into());
    }
    report
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
            report: None,
            epoch: Instant::now(),
            ended: Duration::from_millis(10),
            warden_signal: None,
            error: None,
            limit: None,
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
            reason: Some(CancelReason::Timeout),
            stage: Some(Stage::Signal),
            exit: Some(TERMED),
            ..facts(Ending::Terminated)
        };
        assert_eq!(exit_status(&terminated), 124);
        let cancelled = RunFacts {
            reason: Some(CancelReason::Timeout),
            stage: Some(Stage::Cooperative),
            ..facts(Ending::Cancelled)
        };
        assert_eq!(exit_status(&cancelled), 124);
        let killed = RunFacts {
            reason: Some(CancelReason::Timeout),
            stage: Some(Stage::Kill),
            exit: Some(KILLED),
            ..facts(Ending::Killed)
        };
        assert_eq!(exit_status(&killed), 137);
        let killed_by_the_polite_signal = RunFacts {
            reason: Some(CancelReason::Timeout),
            stage: Some(Stage::Signal),
            exit: Some(KILLED),
            ..facts(Ending::Terminated)
        };
        assert_eq!(exit_status(&killed_by_the_polite_signal), 137);
        // A result that beat the cancel is the program's own.
        let late = RunFacts {
            reason: Some(CancelReason::Timeout),
            stage: Some(Stage::Cooperative),
            ..facts(Ending::Completed)
        };
        assert_eq!(exit_status(&late), 0);
    }

    #[test]
    fn a_signalled_warden_exits_128_plus_the_signal() {
        let shut_down = RunFacts {
            reason: Some(CancelReason::Shutdown),
            stage: Some(Stage::Kill),
            warden_signal: Some(libc::SIGTERM),
            ..facts(Ending::Killed)
        };
        assert_eq!(exit_status(&shut_down), 143);
        assert_eq!(to_json(&shut_down)["stop_signal"], "TERM");
        assert_eq!(to_json(&shut_down)["warden_signal"], libc::SIGTERM);
        let early_warning = RunFacts {
            reason: Some(CancelReason::Shutdown),
            stage: Some(Stage::Cooperative),
            warden_signal: Some(libc::SIGUSR1),
            ..facts(Ending::Cancelled)
        };
        assert_eq!(
            exit_status(&early_warning),
            u8::try_from(128 + libc::SIGUSR1).unwrap()
        );
        assert_eq!(to_json(&early_warning)["stop_signal"], "USR1");
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
                ..facts(Ending::SpawnFailed { status })
            };
            assert_eq!(exit_status(&f), status);
            assert_eq!(to_json(&f)["outcome"], "spawn_failed");
            assert_eq!(to_json(&f)["containment"], Value::Null);
        }
    }

    /// One outcome of every kind the library has (checked against [`OutcomeKind::ALL`]).
    fn one_of_each_kind() -> Vec<Outcome> {
        vec![
            Outcome::Completed(b"out".to_vec()),
            Outcome::CompletedDespiteCancel(Vec::new()),
            Outcome::Cancelled,
            Outcome::Failed(Failure::ExitCode(3)),
            Outcome::Failed(Failure::Worker("boom".into())),
            Outcome::Failed(Failure::ExitedWithoutResult),
            Outcome::Terminated,
            Outcome::Killed,
            Outcome::Crashed(TERMED),
        ]
    }

    #[test]
    fn the_reports_names_are_the_librarys() {
        let outcomes = one_of_each_kind();
        for kind in OutcomeKind::ALL {
            assert!(
                outcomes.iter().any(|o| o.kind() == kind),
                "no sample outcome of kind {kind}"
            );
        }
        for outcome in &outcomes {
            let (ending, _) = Ending::of(outcome);
            let report = to_json(&facts(ending));
            assert_eq!(report["outcome"], outcome.name(), "{outcome:?}");
            assert_eq!(
                report["outcome"].as_str().unwrap().parse(),
                Ok(outcome.kind())
            );
        }
        for stage in Stage::ALL {
            let report = to_json(&RunFacts {
                stage: Some(stage),
                ..facts(Ending::Killed)
            });
            assert_eq!(report["stage"], stage.as_str());
            assert_eq!(report["stage"].as_str().unwrap().parse(), Ok(stage));
        }
        for reason in CancelReason::ALL {
            let report = to_json(&RunFacts {
                reason: Some(reason),
                ..facts(Ending::Cancelled)
            });
            assert_eq!(report["reason"], reason.as_str());
            assert_eq!(report["reason"].as_str().unwrap().parse(), Ok(reason));
        }
        // The one name of the CLI's own: no library outcome is called that.
        let spawn_failed = facts(Ending::SpawnFailed { status: 127 });
        assert_eq!(to_json(&spawn_failed)["outcome"], SPAWN_FAILED);
        assert!(SPAWN_FAILED.parse::<OutcomeKind>().is_err());
    }

    #[test]
    fn outcomes_map_to_endings_with_the_librarys_words() {
        assert_eq!(
            Ending::of(&Outcome::CompletedDespiteCancel(b"x".to_vec())),
            (Ending::Completed, None)
        );
        assert_eq!(
            Ending::of(&Outcome::Failed(Failure::ExitCode(3))),
            (Ending::Failed { exit_code: Some(3) }, None)
        );
        assert_eq!(
            Ending::of(&Outcome::Failed(Failure::Worker("boom".into()))),
            (Ending::Failed { exit_code: None }, Some("boom".into()))
        );
        assert_eq!(
            Ending::of(&Outcome::Failed(Failure::ExitedWithoutResult)),
            (
                Ending::Failed { exit_code: None },
                Some(Failure::ExitedWithoutResult.to_string())
            )
        );
        assert_eq!(
            Ending::of(&Outcome::Crashed(TERMED)),
            (Ending::Crashed, None)
        );
    }

    #[test]
    fn an_unrecognised_outcome_is_wardens_failure_whatever_else_happened() {
        // What `Ending::of` gives for a variant added to the library after this code (no such
        // variant exists to construct today).
        for kind in OutcomeKind::ALL {
            let f = RunFacts {
                reason: Some(CancelReason::Timeout),
                stage: Some(Stage::Kill),
                exit: Some(KILLED),
                error: Some("cannot report ...".into()),
                ..facts(Ending::Unrecognised { kind })
            };
            assert_eq!(exit_status(&f), EXIT_CANCELED, "{kind}");
            let report = to_json(&f);
            assert_eq!(report["outcome"], kind.as_str());
            assert_eq!(report["exit_status"], EXIT_CANCELED);
            assert_eq!(report["error"], "cannot report ...");
        }
    }

    #[test]
    fn unresponsive_follows_the_stage_reached() {
        for (ending, stage, status) in [
            (Ending::Cancelled, Stage::Cooperative, 124),
            (Ending::Terminated, Stage::Signal, 124),
            (Ending::Killed, Stage::Kill, 137),
        ] {
            let f = RunFacts {
                reason: Some(CancelReason::Unresponsive),
                stage: Some(stage),
                ..facts(ending.clone())
            };
            assert_eq!(exit_status(&f), status, "{ending:?}");
        }
    }

    #[test]
    fn a_limit_that_killed_the_program_gives_its_signal_status() {
        let oom = RunFacts {
            exit: Some(KILLED),
            limit: Some(LimitKind::Memory),
            ..facts(Ending::Killed)
        };
        assert_eq!(exit_status(&oom), 137);
        assert_eq!(to_json(&oom)["limit"], "memory");
        let (ending, error) = Ending::of(&Outcome::Failed(Failure::LimitReached(
            LimitKind::Processes,
        )));
        assert_eq!(ending, Ending::Failed { exit_code: None });
        assert!(error.unwrap().contains("processes"));
    }

    #[test]
    fn a_stop_nobody_asked_for_is_wardens_failure() {
        for ending in [Ending::Cancelled, Ending::Terminated, Ending::Killed] {
            let f = RunFacts {
                reason: Some(CancelReason::Requested),
                stage: Some(Stage::Signal),
                exit: Some(TERMED),
                ..facts(ending.clone())
            };
            assert_eq!(exit_status(&f), EXIT_CANCELED, "{ending:?}");
        }
        let crashed_after_an_outside_cancel = RunFacts {
            exit: Some(ExitStatus::Code(0)),
            ..facts(Ending::Crashed)
        };
        assert_eq!(exit_status(&crashed_after_an_outside_cancel), 1);
        let crashed_without_status = RunFacts {
            exit: None,
            ..facts(Ending::Crashed)
        };
        assert_eq!(exit_status(&crashed_without_status), EXIT_CANCELED);
    }

    #[test]
    fn a_run_without_a_report_has_every_required_key() {
        let f = RunFacts {
            pid: None,
            exit: None,
            error: Some("program not found".into()),
            ..facts(Ending::SpawnFailed { status: 127 })
        };
        let report = to_json(&f);
        assert_eq!(
            report,
            json!({
                "outcome": "spawn_failed",
                "reason": null,
                "stage": null,
                "exit_code": null,
                "signal": null,
                "containment": null,
                "escaped": [],
                "timings_ms": {
                    "started": null, "cancel_requested": null, "signal_sent": null,
                    "kill_sent": null, "exited": null, "reaped": null, "ended": 10
                },
                "exit_status": 127,
                "program": "prog",
                "pid": null,
                "protocol": false,
                "warden_signal": null,
                "stop_signal": null,
                "core_dumped": false,
                "error": "program not found",
                "violation": null,
                "limits": {"sandbox": {}},
                "limit": null,
                "output_tail": null,
            })
        );
    }
}
