//! Protocol violations: a worker that sends what the protocol forbids is SIGKILLed at once and
//! the report says why.

use nix::sys::signal::Signal;
use warden::{JobId, JobOptions, JobReport, Outcome, RunError, Stage, Violation, WorkerConfig};
use warden_protocol::{DEFAULT_MAX_FRAME_LEN, DecodeError};
use warden_tests::mode;

use crate::support::*;

/// Runs one job on a raw worker started with `args` (its mode first) and checks the common
/// shape of a violation: SIGKILLed at once, no cancel, no signal, no result; then shuts it down.
pub(crate) async fn violation(t: &Ctx, args: &[&str], config: WorkerConfig) -> JobReport {
    // Patient deadlines: a violation must not need the ladder's timers.
    let worker = t.spawn(args, config.deadlines(patient())).await;
    let report = run_job(&worker, b"x".to_vec(), JobOptions::new()).await;

    assert_eq!(report.outcome, Outcome::Killed, "{report:#?}");
    assert!(report.violation.is_some(), "{report:#?}");
    assert_eq!(report.stage, Some(Stage::Kill));
    assert_eq!(report.reason, None, "a violation is not a cancel");
    assert_eq!(report.exit, Some(by_signal(Signal::SIGKILL)));
    assert_eq!(report.job, JobId(1));
    let trace = &report.trace;
    assert!(trace.kill_sent.is_some(), "{trace:?}");
    assert_eq!(trace.cancel_requested, None);
    assert_eq!(trace.signal_sent, None);
    assert_eq!(trace.result_received, None);
    assert!(
        trace.exited.is_some() && trace.reaped.is_some(),
        "{trace:?}"
    );

    assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGKILL)));
    report
}

#[test]
fn garbage_frame_during_a_job_is_killed() {
    e2e("garbage_frame_during_a_job_is_killed", |t| async move {
        let report = violation(&t, &[mode::GARBAGE], WorkerConfig::protocol()).await;
        assert_eq!(
            report.violation,
            Some(Violation::Frame(DecodeError::UnknownTag))
        );
    });
}

#[test]
fn oversized_frame_is_killed() {
    e2e("oversized_frame_is_killed", |t| async move {
        let report = violation(&t, &[mode::OVERSIZED], WorkerConfig::protocol()).await;
        assert_eq!(
            report.violation,
            Some(Violation::Frame(DecodeError::Oversized {
                len: DEFAULT_MAX_FRAME_LEN + 1,
                max: DEFAULT_MAX_FRAME_LEN,
            }))
        );
    });
}

#[test]
fn oversized_frame_against_a_configured_limit_is_killed() {
    e2e(
        "oversized_frame_against_a_configured_limit_is_killed",
        |t| async move {
            let config = WorkerConfig::protocol().max_frame_len(1024);
            let report = violation(&t, &[mode::OVERSIZED], config).await;
            assert_eq!(
                report.violation,
                Some(Violation::Frame(DecodeError::Oversized {
                    len: 1025,
                    max: 1024
                }))
            );
        },
    );
}

#[test]
fn result_for_an_unknown_job_is_killed() {
    e2e("result_for_an_unknown_job_is_killed", |t| async move {
        let report = violation(&t, &[mode::UNKNOWN_JOB], WorkerConfig::protocol()).await;
        assert_eq!(
            report.violation,
            Some(Violation::NotRunning {
                kind: "completed",
                job: JobId(1001),
            })
        );
    });
}

#[test]
fn stalled_partial_frame_is_killed() {
    e2e("stalled_partial_frame_is_killed", |t| async move {
        let mut config = WorkerConfig::protocol();
        config.frame_timeout = ms(200);
        let report = violation(&t, &[mode::STALL], config).await;
        assert_eq!(
            report.violation,
            Some(Violation::StalledFrame { timeout: ms(200) })
        );
        // Not before the frame timeout: measured from the job's start, which precedes the
        // first byte of the partial frame.
        assert!(
            report.trace.kill_sent.expect("kill_sent") >= ms(200),
            "{:?}",
            report.trace
        );
    });
}

#[test]
fn second_hello_is_killed() {
    e2e("second_hello_is_killed", |t| async move {
        let report = violation(&t, &[mode::SECOND_HELLO], WorkerConfig::protocol()).await;
        assert_eq!(report.violation, Some(Violation::RepeatedHello));
    });
}

/// A raw worker in `worker_mode` breaks the protocol while idle: it just disappears (killed
/// and reaped by its actor), and a later job cannot run on it.
async fn idle_violation(
    t: &Ctx,
    worker_mode: &str,
    mut config: WorkerConfig,
    expected: fn(&Violation) -> bool,
) {
    config.frame_timeout = ms(200);
    let worker = t.spawn(&[worker_mode], config.deadlines(patient())).await;
    let pid = worker.pid();
    t.wait_reaped(pid, "the idle worker that broke the protocol")
        .await;
    let next = within(
        LIMIT,
        "a run on the dead worker",
        worker.run(Vec::new(), JobOptions::new()),
    )
    .await;
    let killed = by_signal(Signal::SIGKILL);
    assert!(
        matches!(
            &next,
            Err(RunError::WorkerGone { status: Some(s), violation: Some(v) })
                if *s == killed && expected(v)
        ),
        "{next:?}"
    );
    assert_eq!(shutdown(worker).await, Some(killed));
}

#[test]
fn garbage_while_idle_kills_the_worker() {
    e2e("garbage_while_idle_kills_the_worker", |t| async move {
        idle_violation(&t, mode::GARBAGE_IDLE, WorkerConfig::protocol(), |v| {
            matches!(v, Violation::Frame(_))
        })
        .await;
    });
}

#[test]
fn stalled_frame_while_idle_kills_the_worker() {
    e2e(
        "stalled_frame_while_idle_kills_the_worker",
        |t| async move {
            idle_violation(&t, mode::STALL_IDLE, WorkerConfig::protocol(), |v| {
                matches!(v, Violation::StalledFrame { .. })
            })
            .await;
        },
    );
}

#[test]
fn channel_closed_mid_job_is_killed_after_the_drain_timeout() {
    e2e(
        "channel_closed_mid_job_is_killed_after_the_drain_timeout",
        |t| async move {
            let mut config = WorkerConfig::protocol().deadlines(patient());
            config.drain_timeout = ms(200);
            let worker = t.spawn(&[mode::HANGUP], config).await;
            // No timeout and no cancel: only the hang-up itself may end the job.
            let report = run_job(&worker, b"x".to_vec(), JobOptions::new()).await;

            assert_eq!(report.outcome, Outcome::Killed, "{report:#?}");
            assert_eq!(report.stage, Some(Stage::Kill));
            assert_eq!(report.reason, None);
            assert_eq!(report.violation, None);
            assert_eq!(report.exit, Some(by_signal(Signal::SIGKILL)));
            assert!(
                report.trace.kill_sent.expect("kill_sent") >= ms(200),
                "{:?}",
                report.trace
            );

            assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGKILL)));
        },
    );
}
