//! What a job's report means for its worker and for the job: the pool's only reading of a
//! [`JobReport`], kept pure so it is tested without processes.

use std::io;
use std::time::Duration;

use warden_protocol::CancelReason;

use crate::error::{RunError, SpawnError, WorkerLoss};
use crate::outcome::{JobReport, Outcome};

/// What happens to the worker after a job.
#[derive(Debug, Clone)]
pub(crate) enum WorkerEnd {
    /// It is fine and takes the next job.
    Survived,
    /// The job's own cancel (requested, timeout, shutdown) had to signal or kill it: it is
    /// replaced, at once and without counting against the restart policy.
    Replace,
    /// It died, broke the protocol or went silent on its own: the restart policy counts it.
    Lost(WorkerLoss),
}

/// Reads a report (of a job that `pid` ran, under the liveness bound `liveness`).
pub(crate) fn worker_end(report: &JobReport, pid: u32, liveness: Duration) -> WorkerEnd {
    if report.worker_survived() {
        return WorkerEnd::Survived;
    }
    let ours = matches!(
        report.reason,
        Some(CancelReason::Requested | CancelReason::Timeout | CancelReason::Shutdown)
    );
    if ours && report.violation.is_none() {
        return WorkerEnd::Replace;
    }
    let violation = report.violation.clone().or_else(|| {
        (report.reason == Some(CancelReason::Unresponsive))
            .then_some(crate::outcome::Violation::Unresponsive { after: liveness })
    });
    WorkerEnd::Lost(WorkerLoss::Died {
        pid,
        status: report.exit,
        violation,
    })
}

/// The loss of a worker that refused a job because it was already gone.
pub(crate) fn gone(error: &RunError, pid: u32) -> Option<WorkerLoss> {
    match error {
        RunError::WorkerGone { status, violation } => Some(WorkerLoss::Died {
            pid,
            status: *status,
            violation: violation.clone(),
        }),
        _ => None,
    }
}

/// Whether a job whose worker was lost under it runs again (if it has attempts left): the
/// worker gave no answer of its own (no result, no acknowledged cancel, no error of the job's
/// own), nobody asked it to stop, and no process of the last attempt may still be alive (a
/// kill still pending), so two attempts never run at once.
pub(crate) fn retryable(report: &JobReport, lost: bool) -> bool {
    if !lost || report.trace.kill_pending.is_some() {
        return false;
    }
    let answered = report.trace.result_received.is_some()
        || matches!(
            report.outcome,
            Outcome::Completed(_) | Outcome::CompletedDespiteCancel(_) | Outcome::Cancelled
        );
    let asked = matches!(
        report.reason,
        Some(CancelReason::Requested | CancelReason::Timeout | CancelReason::Shutdown)
    );
    !answered && !asked
}

/// Whether a spawn failed for want of file descriptors (ours or the system's): backpressure,
/// not a crash, while another worker runs.
pub(crate) fn out_of_fds(error: &SpawnError) -> bool {
    let source: Option<&io::Error> = match error {
        SpawnError::Channel(e) => Some(e),
        SpawnError::Launch { source, .. } | SpawnError::Setup { source, .. } => Some(source),
        SpawnError::Limit { source, .. } => Some(source),
        _ => None,
    };
    source
        .and_then(io::Error::raw_os_error)
        .is_some_and(|errno| errno == libc::EMFILE || errno == libc::ENFILE)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::outcome::Violation;
    use crate::process::{ContainmentMode, ExitStatus, LimitReport};
    use warden_protocol::JobId;

    fn started(outcome: Outcome) -> JobReport {
        let mut r = JobReport::not_started(
            JobId(1),
            CancelReason::Requested,
            ContainmentMode::ProcessGroup,
            LimitReport::default(),
            Instant::now(),
        );
        r.started = true;
        r.reason = None;
        r.trace.cancel_requested = None;
        r.outcome = outcome;
        r
    }

    fn crashed() -> JobReport {
        let status = ExitStatus::Signal {
            signal: libc::SIGSEGV,
            core_dumped: false,
        };
        let mut r = started(Outcome::Crashed(status));
        r.exit = Some(status);
        r.trace.exited = Some(Duration::from_millis(1));
        r.trace.reaped = Some(Duration::from_millis(2));
        r
    }

    #[test]
    fn a_result_before_any_signal_keeps_the_worker() {
        let mut r = started(Outcome::Completed(b"x".to_vec()));
        r.trace.result_received = Some(Duration::from_millis(1));
        assert!(matches!(
            worker_end(&r, 7, Duration::from_secs(1)),
            WorkerEnd::Survived
        ));
        // A cancel acknowledged before any signal keeps it too.
        let mut r = started(Outcome::Cancelled);
        r.reason = Some(CancelReason::Requested);
        r.trace.result_received = Some(Duration::from_millis(1));
        assert!(matches!(
            worker_end(&r, 7, Duration::from_secs(1)),
            WorkerEnd::Survived
        ));
    }

    #[test]
    fn a_job_cancelled_in_the_queue_leaves_the_worker_alone() {
        let r = JobReport::not_started(
            JobId(0),
            CancelReason::Shutdown,
            ContainmentMode::ProcessGroup,
            LimitReport::default(),
            Instant::now(),
        );
        assert!(matches!(
            worker_end(&r, 7, Duration::from_secs(1)),
            WorkerEnd::Survived
        ));
    }

    #[test]
    fn a_crash_is_a_loss_and_retryable() {
        let r = crashed();
        let end = worker_end(&r, 7, Duration::from_secs(1));
        assert!(
            matches!(
                &end,
                WorkerEnd::Lost(WorkerLoss::Died {
                    pid: 7,
                    status: Some(_),
                    violation: None
                })
            ),
            "{end:?}"
        );
        assert!(retryable(&r, matches!(end, WorkerEnd::Lost(_))));
    }

    #[test]
    fn a_ladder_we_ran_replaces_without_a_loss() {
        let mut r = started(Outcome::Killed);
        r.reason = Some(CancelReason::Timeout);
        r.trace.kill_sent = Some(Duration::from_millis(1));
        r.trace.exited = Some(Duration::from_millis(2));
        let end = worker_end(&r, 7, Duration::from_secs(1));
        assert!(matches!(end, WorkerEnd::Replace));
        assert!(!retryable(&r, matches!(end, WorkerEnd::Lost(_))));
    }

    #[test]
    fn unresponsive_and_violations_are_losses() {
        let mut r = started(Outcome::Terminated);
        r.reason = Some(CancelReason::Unresponsive);
        r.trace.signal_sent = Some(Duration::from_millis(1));
        let end = worker_end(&r, 7, Duration::from_secs(1));
        assert!(matches!(
            end,
            WorkerEnd::Lost(WorkerLoss::Died {
                violation: Some(Violation::Unresponsive { .. }),
                ..
            })
        ));
        assert!(retryable(&r, matches!(end, WorkerEnd::Lost(_))));
        let mut r = started(Outcome::Killed);
        r.violation = Some(Violation::RepeatedHello);
        assert!(matches!(
            worker_end(&r, 7, Duration::from_secs(1)),
            WorkerEnd::Lost(_)
        ));
    }

    #[test]
    fn a_result_then_a_death_is_not_run_again() {
        let mut r = crashed();
        r.outcome = Outcome::Completed(b"x".to_vec());
        r.trace.result_received = Some(Duration::from_millis(1));
        let end = worker_end(&r, 7, Duration::from_secs(1));
        assert!(matches!(end, WorkerEnd::Lost(_)));
        assert!(!retryable(&r, matches!(end, WorkerEnd::Lost(_))));
    }

    #[test]
    fn a_pending_kill_is_never_retried() {
        let mut r = crashed();
        r.trace.kill_pending = Some(Duration::from_millis(3));
        let end = worker_end(&r, 7, Duration::from_secs(1));
        assert!(!retryable(&r, matches!(end, WorkerEnd::Lost(_))));
    }

    #[test]
    fn emfile_and_enfile_are_out_of_fds() {
        let e = SpawnError::Channel(io::Error::from_raw_os_error(libc::EMFILE));
        assert!(out_of_fds(&e));
        let e = SpawnError::Launch {
            program: "x".into(),
            source: io::Error::from_raw_os_error(libc::ENFILE),
        };
        assert!(out_of_fds(&e));
        let e = SpawnError::NotFound {
            program: "x".into(),
        };
        assert!(!out_of_fds(&e));
    }
}
