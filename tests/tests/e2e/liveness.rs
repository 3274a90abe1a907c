//! Liveness (`WorkerConfig::unresponsive_after`): a worker that stops itself mid-job, and one
//! that never sends heartbeats, are cancelled `unresponsive` and the ladder ends them.
//!
//! One-sided timing: neither worker can ever answer, so only the deadlines decide, and each
//! test only bounds how late the end may come.

use nix::sys::signal::Signal;
use warden::{CancelReason, JobOptions, Outcome, Stage, WorkerConfig};
use warden_tests::mode;

use crate::support::*;

/// A worker that can never answer, run under liveness `after` with a short ladder: reported
/// `unresponsive`, ended by the polite signal (both fixtures leave SIGTERM at its default).
async fn unresponsive_mid_job(t: Ctx, fixture: &str) {
    let after = ms(300);
    let config = WorkerConfig::protocol()
        .deadlines(short(ms(100), ms(60_000)))
        .unresponsive_after(after);
    let spawning = std::time::Instant::now();
    let worker = t.spawn(&[fixture], config).await;
    let report = run_job(&worker, b"x".to_vec(), JobOptions::new()).await;
    let returned = std::time::Instant::now();
    assert_eq!(
        report.reason,
        Some(CancelReason::Unresponsive),
        "{report:#?}"
    );
    assert_eq!(report.outcome, Outcome::Terminated, "{report:#?}");
    assert_eq!(report.stage, Some(Stage::Signal));
    assert_eq!(report.exit, Some(by_signal(Signal::SIGTERM)));
    // The bound counts from the worker's last frame, its hello, which came before the job
    // started (the trace's zero): the cancel may come that much before `after` into the job.
    // The hello came after `spawning`, and the job started at the latest `ended` before
    // `returned`.
    let cancel = report.trace.cancel_requested.expect("a cancel");
    let lead = (returned - report.trace.ended).saturating_duration_since(spawning);
    assert!(
        cancel + lead >= after,
        "cancelled {cancel:?} into the job, at most {lead:?} after the hello: before {after:?}"
    );
    assert!(report.trace.signal_sent.expect("the signal") >= cancel + ms(100));
    shutdown(worker).await;
}

#[test]
fn a_worker_that_never_heartbeats_is_unresponsive() {
    e2e(
        "a_worker_that_never_heartbeats_is_unresponsive",
        |t| async move {
            unresponsive_mid_job(t, mode::NEVER_HEARTBEATS).await;
        },
    );
}

#[test]
fn a_worker_that_stops_itself_mid_job_is_unresponsive() {
    // SIGCONT follows the polite signal, so the stopped worker dies of it.
    e2e(
        "a_worker_that_stops_itself_mid_job_is_unresponsive",
        |t| async move {
            unresponsive_mid_job(t, mode::SIGSTOP_SELF).await;
        },
    );
}

#[test]
fn heartbeats_keep_a_busy_sdk_worker_alive() {
    // The cooperative worker answers only the cancel, at the job's timeout; its heartbeats
    // (every 250 ms, a quarter of the bound) keep it from being called unresponsive before.
    e2e("heartbeats_keep_a_busy_sdk_worker_alive", |t| async move {
        let config = WorkerConfig::protocol()
            .deadlines(patient())
            .unresponsive_after(ms(1000));
        let worker = t.spawn(&[mode::COOPERATIVE], config).await;
        let options = JobOptions::new().timeout(ms(3000));
        let report = run_job(&worker, WAIT.to_vec(), options).await;
        assert_eq!(report.reason, Some(CancelReason::Timeout), "{report:#?}");
        assert_eq!(report.outcome, Outcome::Cancelled);
        shutdown(worker).await;
    });
}
