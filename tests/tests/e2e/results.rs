//! Results and crossings: a result written just before death, deaths without a result, a
//! result that crosses a cancel, cancels before the start, and many jobs on one worker.

use nix::sys::signal::Signal;
use warden::{
    CancelReason, CancellationToken, ExitStatus, Failure, JobId, JobOptions, Outcome, RunError,
    Stage, WorkerConfig,
};
use warden_tests::{ECHO_PROGRESS, LATE_OUTPUT, RESULT_OUTPUT, mode};

use crate::support::*;

/// A raw worker writes `Completed` and dies at once, by `how` ("exit" or "kill").
async fn result_then_death(t: Ctx, how: &str, expected_exit: ExitStatus) {
    let config = WorkerConfig::protocol().deadlines(patient());
    let worker = t.spawn(&[mode::RESULT_THEN_EXIT, how], config).await;
    let report = run_job(&worker, b"x".to_vec(), JobOptions::new()).await;

    assert_eq!(
        report.outcome,
        Outcome::Completed(RESULT_OUTPUT.to_vec()),
        "{report:#?}"
    );
    assert_eq!(report.reason, None);
    assert_eq!(report.stage, None);
    assert_eq!(report.violation, None);
    assert!(report.trace.result_received.is_some());
    // Whether the exit was seen before the report depends on which the supervisor read
    // first; when it was, it must be the real one.
    if let Some(exit) = report.exit {
        assert_eq!(exit, expected_exit);
    }
    assert_eq!(shutdown(worker).await, Some(expected_exit));
}

#[test]
fn result_then_immediate_exit_is_completed() {
    e2e("result_then_immediate_exit_is_completed", |t| async move {
        result_then_death(t, "exit", ExitStatus::Code(0)).await;
    });
}

#[test]
fn result_then_sigkill_to_itself_is_completed() {
    e2e(
        "result_then_sigkill_to_itself_is_completed",
        |t| async move {
            result_then_death(t, "kill", by_signal(Signal::SIGKILL)).await;
        },
    );
}

#[test]
fn exit_zero_without_a_result_is_failed() {
    e2e("exit_zero_without_a_result_is_failed", |t| async move {
        let config = WorkerConfig::protocol().deadlines(patient());
        let worker = t.spawn(&[mode::EXIT_WITHOUT_RESULT], config).await;
        let report = run_job(&worker, b"x".to_vec(), JobOptions::new()).await;

        assert_eq!(
            report.outcome,
            Outcome::Failed(Failure::ExitedWithoutResult),
            "{report:#?}"
        );
        assert_eq!(report.exit, Some(ExitStatus::Code(0)));
        assert_eq!(report.reason, None);
        assert_eq!(report.stage, None);
        assert_eq!(report.trace.result_received, None);
        assert!(report.trace.exited.is_some());
        assert!(report.trace.reaped.is_some());

        assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
    });
}

#[test]
fn nonzero_exit_mid_job_is_crashed_with_its_code() {
    e2e(
        "nonzero_exit_mid_job_is_crashed_with_its_code",
        |t| async move {
            let config = WorkerConfig::protocol().deadlines(patient());
            let worker = t.spawn(&[mode::EXIT_CODE, "3"], config).await;
            let report = run_job(&worker, b"x".to_vec(), JobOptions::new()).await;

            assert_eq!(
                report.outcome,
                Outcome::Crashed(ExitStatus::Code(3)),
                "{report:#?}"
            );
            assert_eq!(report.exit, Some(ExitStatus::Code(3)));
            assert_eq!(report.stage, None);
            assert_eq!(report.reason, None);
            assert!(report.trace.exited.is_some());

            // The worker is gone: the next job cannot run, and says how the worker ended.
            let next = within(
                LIMIT,
                "a run on a dead worker",
                worker.run(Vec::new(), JobOptions::new()),
            )
            .await;
            assert!(
                matches!(
                    next,
                    Err(RunError::WorkerGone {
                        status: Some(ExitStatus::Code(3)),
                        violation: None,
                    })
                ),
                "{next:?}"
            );
            assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(3)));
        },
    );
}

async fn crash(t: Ctx, how: &str, signal: Signal) {
    let config = WorkerConfig::protocol().deadlines(patient());
    let worker = t.spawn(&[mode::CRASH, how], config).await;
    let report = run_job(&worker, b"x".to_vec(), JobOptions::new()).await;

    assert_eq!(
        report.outcome,
        Outcome::Crashed(by_signal(signal)),
        "{report:#?}"
    );
    assert_eq!(report.exit, Some(by_signal(signal)));
    assert_eq!(report.stage, None);
    assert_eq!(report.reason, None);
    assert_eq!(report.trace.signal_sent, None);
    assert_eq!(report.trace.kill_sent, None);
    assert!(report.trace.exited.is_some());

    assert_eq!(shutdown(worker).await, Some(by_signal(signal)));
}

#[test]
fn segfault_mid_job_is_crashed_with_sigsegv() {
    e2e("segfault_mid_job_is_crashed_with_sigsegv", |t| async move {
        crash(t, "segv", Signal::SIGSEGV).await;
    });
}

#[test]
fn abort_mid_job_is_crashed_with_sigabrt() {
    e2e("abort_mid_job_is_crashed_with_sigabrt", |t| async move {
        crash(t, "abort", Signal::SIGABRT).await;
    });
}

#[test]
fn cancel_before_the_start_never_reaches_the_worker() {
    e2e(
        "cancel_before_the_start_never_reaches_the_worker",
        |t| async move {
            let config = WorkerConfig::protocol().deadlines(patient());
            let worker = t.spawn(&[mode::COOPERATIVE], config).await;
            let token = CancellationToken::new();
            token.cancel();
            let (options, mut progress) = watch(JobOptions::new().token(token));
            let report = run_job(&worker, WAIT, options).await;

            assert_eq!(report.outcome, Outcome::Cancelled, "{report:#?}");
            assert!(!report.started);
            assert_eq!(report.reason, Some(CancelReason::Requested));
            assert_eq!(report.stage, None);
            assert_eq!(report.exit, None);
            assert!(report.trace.cancel_requested.is_some());
            assert_eq!(report.trace.result_received, None);
            assert_eq!(report.trace.signal_sent, None);
            assert!(progress.drain().is_empty(), "the worker never saw the job");

            // The worker is untouched and runs the next job.
            let report = run_job(&worker, echo(b"next"), JobOptions::new()).await;
            assert_eq!(
                report.outcome,
                Outcome::Completed(b"next".to_vec()),
                "{report:#?}"
            );
            assert!(report.started);

            assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
        },
    );
}

#[test]
fn result_after_the_cancel_is_completed_despite_cancel() {
    e2e(
        "result_after_the_cancel_is_completed_despite_cancel",
        |t| async move {
            let config = WorkerConfig::protocol().deadlines(patient());
            let worker = t.spawn(&[mode::LATE_RESULT], config).await;
            let report = cancel_when_ready(&worker, JobOptions::new()).await;

            assert_eq!(
                report.outcome,
                Outcome::CompletedDespiteCancel(LATE_OUTPUT.to_vec()),
                "{report:#?}"
            );
            assert_eq!(report.reason, Some(CancelReason::Requested));
            assert_eq!(report.stage, Some(Stage::Cooperative));
            assert_eq!(report.exit, None);
            let trace = &report.trace;
            assert!(
                trace.result_received.expect("result") >= trace.cancel_requested.expect("cancel")
            );
            assert_eq!(trace.signal_sent, None);

            assert_eq!(report.job, JobId(1));

            // A worker that finished is still usable.
            let report = cancel_when_ready(&worker, JobOptions::new()).await;
            assert_eq!(report.job, JobId(2));
            assert_eq!(
                report.outcome,
                Outcome::CompletedDespiteCancel(LATE_OUTPUT.to_vec()),
                "{report:#?}"
            );

            assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
        },
    );
}

#[test]
fn cancel_crossing_the_result_gives_exactly_one_outcome() {
    // The echo worker writes its progress and `Completed` together; the progress callback
    // cancels the token, so the actor next sees a cancelled token and a buffered `Completed`
    // at the same moment and may take either first. Cancel first: a `Cancel` goes out that
    // crosses the result (the worker must ignore it) and the job is completed despite cancel.
    // Result first: completed, and the cancel is moot. Anything else (a second terminal
    // message, a violation, a stale cancel hitting the next job) fails below.
    e2e(
        "cancel_crossing_the_result_gives_exactly_one_outcome",
        |t| async move {
            const JOBS: u64 = 40;
            let config = WorkerConfig::protocol().deadlines(patient());
            let worker = t.spawn(&[mode::COOPERATIVE], config).await;
            let pid = worker.pid();
            let mut despite = 0;
            for i in 1..=JOBS {
                let token = CancellationToken::new();
                let cancel = token.clone();
                let options = JobOptions::new()
                    .token(token)
                    .on_progress(move |_| cancel.cancel());
                let data = format!("crossing {i}").into_bytes();
                let report = run_job(&worker, echo(&data), options).await;
                assert_eq!(report.job, JobId(i));
                assert_eq!(report.exit, None, "{report:#?}");
                assert_eq!(report.violation, None, "{report:#?}");
                assert!(report.trace.result_received.is_some(), "{report:#?}");
                assert_eq!(report.trace.signal_sent, None, "{report:#?}");
                match &report.outcome {
                    Outcome::Completed(out) => {
                        assert_eq!(*out, data);
                        assert_eq!(report.reason, None, "{report:#?}");
                        assert_eq!(report.stage, None, "{report:#?}");
                    }
                    Outcome::CompletedDespiteCancel(out) => {
                        despite += 1;
                        assert_eq!(*out, data);
                        assert_eq!(report.reason, Some(CancelReason::Requested));
                        assert_eq!(report.stage, Some(Stage::Cooperative));
                    }
                    other => panic!("job {i}: {other:?}\n{report:#?}"),
                }
            }
            eprintln!("{despite} of {JOBS} jobs saw the cancel cross their result");

            // The stale cancels were ignored: the worker still serves, and a job that waits for
            // its own cancel gets only that one.
            let report = cancel_when_ready(&worker, JobOptions::new()).await;
            assert_eq!(report.outcome, Outcome::Cancelled, "{report:#?}");
            assert_eq!(report.job, JobId(JOBS + 1));
            assert_eq!(worker.pid(), pid);
            // Exit 0 on Shutdown: the worker was never killed for a violation.
            assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
        },
    );
}

#[test]
fn second_job_after_a_cooperative_cancel_runs() {
    e2e(
        "second_job_after_a_cooperative_cancel_runs",
        |t| async move {
            let config = WorkerConfig::protocol().deadlines(patient());
            let worker = t.spawn(&[mode::COOPERATIVE], config).await;
            let pid = worker.pid();
            let first = cancel_when_ready(&worker, JobOptions::new()).await;
            assert_eq!(first.outcome, Outcome::Cancelled, "{first:#?}");

            let second = run_job(&worker, echo(b"second"), JobOptions::new()).await;
            assert_eq!(
                second.outcome,
                Outcome::Completed(b"second".to_vec()),
                "{second:#?}"
            );
            assert_eq!(second.job, JobId(2));
            assert_eq!(second.reason, None);
            assert_eq!(second.stage, None);
            assert_eq!(worker.pid(), pid);
            assert!(t.is_running(pid));

            assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
        },
    );
}

#[test]
fn progress_reaches_the_callback() {
    e2e("progress_reaches_the_callback", |t| async move {
        let config = WorkerConfig::protocol().deadlines(patient());
        let worker = t.spawn(&[mode::COOPERATIVE], config).await;
        let (options, mut progress) = watch(JobOptions::new());
        let report = run_job(&worker, echo(b"p"), options).await;
        assert_eq!(
            report.outcome,
            Outcome::Completed(b"p".to_vec()),
            "{report:#?}"
        );

        // Reported just before the result; delivered off the worker's actor (a callback never
        // holds up the ladder), so possibly just after the report.
        let got = progress.next("the echo's progress report").await;
        let (fraction, text) = ECHO_PROGRESS;
        assert_eq!(got.job, report.job);
        assert_eq!(got.fraction, Some(fraction));
        assert_eq!(got.text.as_deref(), Some(text));
        assert!(progress.drain().is_empty(), "one report only");

        assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
    });
}

#[test]
fn twenty_jobs_in_a_row_on_one_worker() {
    e2e("twenty_jobs_in_a_row_on_one_worker", |t| async move {
        let config = WorkerConfig::protocol().deadlines(patient());
        let worker = t.spawn(&[mode::COOPERATIVE], config).await;
        let pid = worker.pid();
        for i in 1..=20u64 {
            let data = format!("job {i}").into_bytes();
            let report = run_job(&worker, echo(&data), JobOptions::new()).await;
            assert_eq!(report.outcome, Outcome::Completed(data), "{report:#?}");
            assert_eq!(report.job, JobId(i));
            assert!(report.started);
            assert_eq!(report.exit, None);
            assert_eq!(report.stage, None);
        }
        assert_eq!(worker.pid(), pid);

        assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
    });
}

#[test]
fn worker_error_is_failed_with_its_message() {
    e2e("worker_error_is_failed_with_its_message", |t| async move {
        let config = WorkerConfig::protocol().deadlines(patient());
        let worker = t.spawn(&[mode::COOPERATIVE], config).await;
        let payload = [warden_tests::FAIL, b"disk on fire"].concat();
        let report = run_job(&worker, payload, JobOptions::new()).await;

        assert_eq!(
            report.outcome,
            Outcome::Failed(Failure::Worker("disk on fire".into())),
            "{report:#?}"
        );
        assert_eq!(report.reason, None);
        assert_eq!(report.stage, None);
        assert_eq!(report.exit, None, "a failed job leaves the worker running");
        assert!(report.trace.result_received.is_some());

        let report = run_job(&worker, echo(b"fine"), JobOptions::new()).await;
        assert_eq!(
            report.outcome,
            Outcome::Completed(b"fine".to_vec()),
            "{report:#?}"
        );
        assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
    });
}

#[test]
fn payload_over_the_frame_limit_is_refused_and_the_worker_lives_on() {
    e2e(
        "payload_over_the_frame_limit_is_refused_and_the_worker_lives_on",
        |t| async move {
            let config = WorkerConfig::protocol()
                .deadlines(patient())
                .max_frame_len(1024);
            let worker = t.spawn(&[mode::COOPERATIVE], config).await;
            let result = within(
                LIMIT,
                "the refused run",
                worker.run(echo(&[7u8; 2048]), JobOptions::new()),
            )
            .await;
            assert!(
                matches!(result, Err(RunError::PayloadTooLarge { len, max: 1024 }) if len > 2048),
                "{result:?}"
            );

            let report = run_job(&worker, echo(b"small"), JobOptions::new()).await;
            assert_eq!(
                report.outcome,
                Outcome::Completed(b"small".to_vec()),
                "{report:#?}"
            );
            assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
        },
    );
}

#[test]
fn unbounded_timeouts_and_deadlines_mean_never() {
    // Duration::MAX is "no limit", not an overflow: no panic in the supervisor, no early fire.
    e2e(
        "unbounded_timeouts_and_deadlines_mean_never",
        |t| async move {
            let forever = warden::Deadlines {
                grace: std::time::Duration::MAX,
                kill_after: std::time::Duration::MAX,
                reap_timeout: std::time::Duration::MAX,
            };
            let mut config = WorkerConfig::protocol()
                .deadlines(forever)
                .handshake_timeout(std::time::Duration::MAX);
            config.drain_timeout = std::time::Duration::MAX;
            let worker = t.spawn(&[mode::COOPERATIVE], config).await;
            let options = JobOptions::new().timeout(std::time::Duration::MAX);
            let report = run_job(&worker, echo(b"still here"), options).await;
            assert_eq!(
                report.outcome,
                Outcome::Completed(b"still here".to_vec()),
                "{report:#?}"
            );
            assert_eq!(report.reason, None);

            // A cancel still works: the cooperative worker acknowledges at once.
            let token = CancellationToken::new();
            let (options, mut progress) = watch(
                JobOptions::new()
                    .token(token.clone())
                    .timeout(std::time::Duration::MAX),
            );
            let (report, ()) = tokio::join!(run_job(&worker, WAIT, options), async {
                progress.ready().await;
                token.cancel();
            });
            assert_eq!(report.outcome, Outcome::Cancelled, "{report:#?}");
            assert_eq!(report.reason, Some(CancelReason::Requested));
            let _ = shutdown(worker).await;
        },
    );
}
