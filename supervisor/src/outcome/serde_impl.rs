//! `JobReport` serialised (the `serde` feature): what `warden run --report` writes.
//!
//! One object; names are the library's `as_str`. Timings come from the report's one
//! [`Trace`]: `timings_ms` in whole milliseconds and `timings_us` in microseconds, both
//! measured from an epoch: the job's start for `JobReport` itself, any earlier instant through
//! [`JobReport::since`] (the CLI uses its own start). `limits` has one object per requested
//! limit, by name (`value`, `mechanism`, `hit`, `peak`, `oom_kills`), and `sandbox`, by
//! feature name, `true` where it was applied; `limit` names the limit that ended the job.
//! `output_tail` (`null` without capture): `stdout` and `stderr`, each with `lines` (the
//! job's last lines, lossy UTF-8), `bytes` (written during the job), `truncated` (left out by
//! the cap) and `cut` (closed by warden before EOF).

use std::time::{Duration, Instant};

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::{Failure, JobReport, Outcome, Trace};
use crate::output::{OutputTail, StreamTail};
use crate::process::LimitReport;

/// A [`JobReport`] serialised with its timings measured from an epoch (see
/// [`JobReport::since`]).
#[derive(Debug, Clone, Copy)]
pub struct ReportSince<'a> {
    report: &'a JobReport,
    epoch: Instant,
}

impl JobReport {
    /// This report, serialised with its timings measured from `epoch` instead of the job's
    /// start (an `epoch` after the start counts as the start).
    pub fn since(&self, epoch: Instant) -> ReportSince<'_> {
        ReportSince {
            report: self,
            epoch,
        }
    }
}

impl Serialize for JobReport {
    /// As [`JobReport::since`] the job's own start.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.since(self.trace.started).serialize(serializer)
    }
}

/// The trace's timings from an epoch, in one unit.
struct Timings<'a> {
    trace: &'a Trace,
    base: Duration,
    unit: fn(Duration) -> u64,
}

impl Serialize for Timings<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let t = self.trace;
        let at = |d: Option<Duration>| d.map(|d| (self.unit)(self.base.saturating_add(d)));
        let mut map = serializer.serialize_map(Some(10))?;
        map.serialize_entry("started", &(self.unit)(self.base))?;
        map.serialize_entry("cancel_requested", &at(t.cancel_requested))?;
        map.serialize_entry("signal_sent", &at(t.signal_sent))?;
        map.serialize_entry("kill_sent", &at(t.kill_sent))?;
        map.serialize_entry("kill_pending", &at(t.kill_pending))?;
        map.serialize_entry("result_received", &at(t.result_received))?;
        map.serialize_entry("exited", &at(t.exited))?;
        map.serialize_entry("reaped", &at(t.reaped))?;
        map.serialize_entry("ended", &at(Some(t.ended)))?;
        map.serialize_entry("deadline", &at(t.deadline))?;
        map.end()
    }
}

/// The `limits` object: each requested limit by name, then `sandbox` by feature.
struct Limits<'a>(&'a LimitReport);

impl Serialize for Limits<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.limits.len() + 1))?;
        for e in &self.0.limits {
            map.serialize_entry(e.kind.as_str(), &LimitEntry(e))?;
        }
        map.serialize_entry("sandbox", &Sandbox(self.0))?;
        map.end()
    }
}

struct LimitEntry<'a>(&'a crate::process::LimitEntry);

impl Serialize for LimitEntry<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("value", &e.value)?;
        map.serialize_entry("mechanism", e.mechanism.as_str())?;
        map.serialize_entry("hit", &e.hit)?;
        map.serialize_entry("peak", &e.peak)?;
        map.serialize_entry("oom_kills", &e.oom_kills)?;
        map.end()
    }
}

struct Sandbox<'a>(&'a LimitReport);

impl Serialize for Sandbox<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.sandbox.len()))?;
        for e in &self.0.sandbox {
            map.serialize_entry(e.feature.as_str(), &e.enforced)?;
        }
        map.end()
    }
}

/// The `output_tail` object: `stdout` and `stderr`.
struct Tail<'a>(&'a OutputTail);

impl Serialize for Tail<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("stdout", &Stream(&self.0.stdout))?;
        map.serialize_entry("stderr", &Stream(&self.0.stderr))?;
        map.end()
    }
}

struct Stream<'a>(&'a StreamTail);

impl Serialize for Stream<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("lines", &t.lines)?;
        map.serialize_entry("bytes", &t.bytes)?;
        map.serialize_entry("truncated", &t.truncated)?;
        map.serialize_entry("cut", &t.cut)?;
        map.end()
    }
}

fn whole_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn whole_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Serialize for ReportSince<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.report;
        let base = r.trace.started.saturating_duration_since(self.epoch);
        // The worker's own words for a failure, or the limit it reached; an exit code is in
        // `exit_code` already.
        let error = match &r.outcome {
            Outcome::Failed(
                failure @ (Failure::Worker(_)
                | Failure::ExitedWithoutResult
                | Failure::LimitReached(_)),
            ) => Some(failure.to_string()),
            _ => None,
        };
        let core_dumped = matches!(
            r.exit,
            Some(crate::ExitStatus::Signal {
                core_dumped: true,
                ..
            })
        );
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("job", &r.job.0)?;
        map.serialize_entry("outcome", r.outcome.name())?;
        map.serialize_entry("reason", &r.reason.map(|x| x.as_str()))?;
        map.serialize_entry("stage", &r.stage.map(|x| x.as_str()))?;
        map.serialize_entry("exit_code", &r.exit.and_then(|x| x.code()))?;
        map.serialize_entry("signal", &r.exit.and_then(|x| x.signal()))?;
        map.serialize_entry("core_dumped", &core_dumped)?;
        map.serialize_entry("violation", &r.violation.as_ref().map(ToString::to_string))?;
        map.serialize_entry("error", &error)?;
        map.serialize_entry("job_started", &r.started)?;
        map.serialize_entry("containment", r.containment.as_str())?;
        map.serialize_entry("escaped", &r.escaped)?;
        map.serialize_entry("limits", &Limits(&r.limits))?;
        map.serialize_entry("limit", &r.limit.map(|x| x.as_str()))?;
        map.serialize_entry("output_tail", &r.output_tail.as_ref().map(Tail))?;
        let timings = |unit| Timings {
            trace: &r.trace,
            base,
            unit,
        };
        map.serialize_entry("timings_ms", &timings(whole_ms))?;
        map.serialize_entry("timings_us", &timings(whole_us))?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use warden_protocol::{CancelReason, JobId};

    use super::*;
    use crate::escalation::Stage;
    use crate::{
        ContainmentMode, ExitStatus, LimitKind, Mechanism, SandboxEntry, SandboxFeature, Violation,
    };

    fn report(outcome: Outcome) -> JobReport {
        let t0 = Instant::now();
        JobReport {
            job: JobId(3),
            outcome,
            reason: Some(CancelReason::Unresponsive),
            stage: Some(Stage::Kill),
            exit: Some(ExitStatus::Signal {
                signal: 9,
                core_dumped: false,
            }),
            violation: Some(Violation::UnrequestedCancel { job: JobId(3) }),
            started: true,
            containment: ContainmentMode::Subreaper,
            escaped: vec![7],
            limits: LimitReport {
                limits: vec![crate::process::LimitEntry {
                    kind: LimitKind::Memory,
                    value: 64 << 20,
                    mechanism: Mechanism::CgroupV2,
                    hit: Some(true),
                    peak: Some(1 << 20),
                    oom_kills: Some(1),
                }],
                sandbox: vec![SandboxEntry {
                    feature: SandboxFeature::Seccomp,
                    enforced: true,
                }],
            },
            limit: Some(LimitKind::Memory),
            output_tail: None,
            trace: Trace {
                started: t0,
                cancel_requested: Some(Duration::from_micros(1_500)),
                signal_sent: None,
                kill_sent: Some(Duration::from_millis(20)),
                kill_pending: None,
                result_received: None,
                exited: Some(Duration::from_millis(21)),
                reaped: Some(Duration::from_millis(22)),
                ended: Duration::from_millis(23),
                deadline: Some(Duration::from_millis(30)),
            },
        }
    }

    #[test]
    fn a_report_serialises_with_the_librarys_names_and_one_trace() {
        let r = report(Outcome::Killed);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["job"], 3);
        assert_eq!(v["outcome"], "killed");
        assert_eq!(v["reason"], "unresponsive");
        assert_eq!(v["stage"], "kill");
        assert_eq!(v["exit_code"], Value::Null);
        assert_eq!(v["signal"], 9);
        assert_eq!(v["containment"], "subreaper");
        assert_eq!(v["escaped"], json!([7]));
        assert_eq!(
            v["limits"],
            json!({"memory": {"value": 64 << 20, "mechanism": "cgroup_v2", "hit": true,
                              "peak": 1 << 20, "oom_kills": 1},
                   "sandbox": {"seccomp": true}})
        );
        assert_eq!(v["limit"], "memory");
        assert_eq!(v["output_tail"], Value::Null);
        assert_eq!(
            v["violation"],
            Violation::UnrequestedCancel { job: JobId(3) }.to_string()
        );
        assert_eq!(
            v["timings_ms"],
            json!({"started": 0, "cancel_requested": 1, "signal_sent": null, "kill_sent": 20,
                   "kill_pending": null, "result_received": null, "exited": 21, "reaped": 22,
                   "ended": 23, "deadline": 30})
        );
        assert_eq!(v["timings_us"]["cancel_requested"], 1_500);
        // From an earlier epoch: every timing moves by the same amount.
        let epoch = r.trace.started - Duration::from_millis(100);
        let v = serde_json::to_value(r.since(epoch)).unwrap();
        assert_eq!(v["timings_ms"]["started"], 100);
        assert_eq!(v["timings_ms"]["ended"], 123);
        assert_eq!(v["timings_us"]["cancel_requested"], 101_500);
    }

    #[test]
    fn the_output_tail_has_both_streams() {
        let mut r = report(Outcome::Killed);
        let mut tail = OutputTail::default();
        tail.stdout.lines = vec!["last \u{fffd} words".into()];
        tail.stdout.bytes = 1 << 30;
        tail.stdout.truncated = 1000;
        tail.stderr.cut = true;
        r.output_tail = Some(tail);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["output_tail"],
            json!({"stdout": {"lines": ["last \u{fffd} words"], "bytes": 1u64 << 30,
                              "truncated": 1000, "cut": false},
                   "stderr": {"lines": [], "bytes": 0, "truncated": 0, "cut": true}})
        );
    }

    #[test]
    fn a_failure_carries_the_workers_words() {
        let v =
            serde_json::to_value(report(Outcome::Failed(Failure::Worker("boom".into())))).unwrap();
        assert_eq!(v["outcome"], "failed");
        assert_eq!(v["error"], "boom");
        let v = serde_json::to_value(report(Outcome::Failed(Failure::ExitCode(3)))).unwrap();
        assert_eq!(v["error"], Value::Null);
    }
}
