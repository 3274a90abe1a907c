//! The escalation ladder with real processes: which stage ends which worker, and why it was
//! asked to stop (caller, linked token, timeout, shutdown).

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use warden::{
    CancelReason, CancellationToken, Deadlines, ExitStatus, JobId, JobOptions, Outcome, Stage,
    WorkerConfig,
};
use warden_tests::{cancelled_text, mode};

use crate::support::*;

#[test]
fn cooperative_worker_cancelled_at_the_cooperative_stage() {
    e2e(
        "cooperative_worker_cancelled_at_the_cooperative_stage",
        |t| async move {
            let config = WorkerConfig::protocol().deadlines(patient());
            let worker = t.spawn(&[mode::COOPERATIVE], config).await;
            let token = CancellationToken::new();
            let (options, mut progress) = watch(JobOptions::new().token(token.clone()));
            let (report, ()) = tokio::join!(run_job(&worker, WAIT, options), async {
                progress.ready().await;
                token.cancel();
            });

            assert_eq!(report.outcome, Outcome::Cancelled, "{report:#?}");
            assert_eq!(report.stage, Some(Stage::Cooperative));
            assert_eq!(report.reason, Some(CancelReason::Requested));
            assert_eq!(report.job, JobId(1));
            assert!(report.started);
            assert_eq!(report.exit, None, "the worker lives on");
            assert_eq!(report.violation, None);
            let trace = &report.trace;
            let cancel = trace.cancel_requested.expect("cancel_requested");
            let result = trace.result_received.expect("result_received");
            assert!(result >= cancel, "{trace:?}");
            assert!(trace.ended >= result, "{trace:?}");
            assert_eq!(trace.signal_sent, None);
            assert_eq!(trace.kill_sent, None);
            assert_eq!(trace.kill_pending, None);
            assert_eq!(trace.exited, None);
            assert_eq!(trace.reaped, None);
            let text = progress
                .next("the worker's cancel acknowledgement")
                .await
                .text;
            assert_eq!(text.as_deref(), Some(&*cancelled_text("requested")));

            assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
        },
    );
}

#[test]
fn worker_ignoring_its_token_is_terminated_at_the_signal_stage() {
    e2e(
        "worker_ignoring_its_token_is_terminated_at_the_signal_stage",
        |t| async move {
            // It dies of SIGTERM at once, so only the grace is short.
            let deadlines = short(ms(200), ms(60_000));
            let config = WorkerConfig::protocol().deadlines(deadlines);
            let worker = t.spawn(&[mode::IGNORE_CANCEL], config).await;
            let report = cancel_when_ready(&worker, JobOptions::new()).await;

            assert_eq!(report.outcome, Outcome::Terminated, "{report:#?}");
            assert_eq!(report.stage, Some(Stage::Signal));
            assert_eq!(report.reason, Some(CancelReason::Requested));
            assert_eq!(report.exit, Some(by_signal(Signal::SIGTERM)));
            let trace = &report.trace;
            let cancel = trace.cancel_requested.expect("cancel_requested");
            let signal = trace.signal_sent.expect("signal_sent");
            assert!(
                signal >= cancel + deadlines.grace,
                "signalled before the grace ended: {trace:?}"
            );
            assert!(signal <= cancel + deadlines.grace + SLACK, "{trace:?}");
            assert_eq!(trace.kill_sent, None);
            assert_eq!(trace.result_received, None);
            let exited = trace.exited.expect("exited");
            let reaped = trace.reaped.expect("reaped");
            assert!(
                signal <= exited && exited <= reaped && reaped <= trace.ended,
                "{trace:?}"
            );

            assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGTERM)));
        },
    );
}

#[test]
fn worker_ignoring_sigterm_is_killed_at_the_kill_stage() {
    e2e(
        "worker_ignoring_sigterm_is_killed_at_the_kill_stage",
        |t| async move {
            let deadlines = short(ms(100), ms(200));
            let config = WorkerConfig::protocol().deadlines(deadlines);
            let worker = t.spawn(&[mode::IGNORE_TERM], config).await;
            let report = cancel_when_ready(&worker, JobOptions::new()).await;

            assert_eq!(report.outcome, Outcome::Killed, "{report:#?}");
            assert_eq!(report.stage, Some(Stage::Kill));
            assert_eq!(report.reason, Some(CancelReason::Requested));
            assert_eq!(report.exit, Some(by_signal(Signal::SIGKILL)));
            assert_eq!(report.violation, None);
            let trace = &report.trace;
            let cancel = trace.cancel_requested.expect("cancel_requested");
            let signal = trace.signal_sent.expect("signal_sent");
            let killed = trace.kill_sent.expect("kill_sent");
            assert!(signal >= cancel + deadlines.grace, "{trace:?}");
            assert!(
                killed >= signal + deadlines.kill_after,
                "killed too early: {trace:?}"
            );
            assert!(
                killed <= cancel + deadlines.grace + deadlines.kill_after + SLACK,
                "{trace:?}"
            );
            assert_eq!(trace.kill_pending, None);
            assert_eq!(trace.result_received, None);
            assert!(trace.exited.expect("exited") >= killed, "{trace:?}");
            assert!(trace.reaped.is_some(), "{trace:?}");

            assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGKILL)));
        },
    );
}

#[test]
fn stopped_worker_is_woken_and_ended_in_time() {
    e2e(
        "stopped_worker_is_woken_and_ended_in_time",
        |t| async move {
            let deadlines = short(ms(100), ms(300));
            let config = WorkerConfig::protocol().deadlines(deadlines);
            let worker = t.spawn(&[mode::IGNORE_CANCEL], config).await;
            let pid = worker.pid();
            let token = CancellationToken::new();
            let (options, mut progress) = watch(JobOptions::new().token(token.clone()));
            let (report, ()) = tokio::join!(run_job(&worker, WAIT, options), async {
                progress.ready().await;
                // Our own unreaped child: the pid cannot have been recycled.
                kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).expect("SIGSTOP the worker");
                wait_stopped(pid).await;
                token.cancel();
            });

            assert!(
                matches!(report.outcome, Outcome::Terminated | Outcome::Killed),
                "{report:#?}"
            );
            assert!(report.stage >= Some(Stage::Signal), "{report:#?}");
            assert_eq!(report.reason, Some(CancelReason::Requested));
            let expected_exit = match report.outcome {
                Outcome::Terminated => by_signal(Signal::SIGTERM),
                _ => by_signal(Signal::SIGKILL),
            };
            assert_eq!(report.exit, Some(expected_exit));
            let trace = &report.trace;
            let cancel = trace.cancel_requested.expect("cancel_requested");
            assert!(trace.signal_sent.expect("signal_sent") >= cancel + deadlines.grace);
            let bound = deadlines.grace + deadlines.kill_after + SLACK;
            assert!(
                trace.cancel_to_end().expect("cancel_to_end") <= bound,
                "{trace:?}"
            );

            assert_eq!(shutdown(worker).await, Some(expected_exit));
        },
    );
}

#[test]
fn stopped_cooperative_worker_is_resumed_by_the_sigcont_after_the_polite_signal() {
    e2e(
        "stopped_cooperative_worker_is_resumed_by_the_sigcont_after_the_polite_signal",
        |t| async move {
            // Stopped, it cannot read the cancel; once SIGCONT resumes it, it answers at once.
            // Only SIGCONT can resume it before the (one-minute) SIGKILL.
            let deadlines = short(ms(100), ms(60_000));
            let config = WorkerConfig::protocol().deadlines(deadlines);
            let worker = t.spawn(&[mode::COOPERATIVE], config).await;
            let pid = worker.pid();
            let token = CancellationToken::new();
            let (options, mut progress) = watch(JobOptions::new().token(token.clone()));
            let (report, ()) = tokio::join!(run_job(&worker, WAIT, options), async {
                progress.ready().await;
                kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).expect("SIGSTOP the worker");
                wait_stopped(pid).await;
                token.cancel();
            });

            // It acknowledged, but only after the signal stage was reached.
            assert_eq!(report.outcome, Outcome::Cancelled, "{report:#?}");
            assert_eq!(report.stage, Some(Stage::Signal));
            assert_eq!(report.reason, Some(CancelReason::Requested));
            let trace = &report.trace;
            let signal = trace.signal_sent.expect("signal_sent");
            assert!(signal >= trace.cancel_requested.expect("cancel") + deadlines.grace);
            assert!(
                trace.result_received.expect("result_received") >= signal,
                "{trace:?}"
            );
            assert_eq!(trace.kill_sent, None);
            // After the polite signal the SDK exits once its result is written.
            assert_eq!(report.exit, Some(ExitStatus::Code(0)));

            assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
        },
    );
}

#[test]
fn timeout_through_a_linked_token_is_reason_timeout() {
    e2e(
        "timeout_through_a_linked_token_is_reason_timeout",
        |t| async move {
            let config = WorkerConfig::protocol().deadlines(patient());
            let worker = t.spawn(&[mode::COOPERATIVE], config).await;
            // Nobody cancels the parent: only the timeout can end the job.
            let parent = CancellationToken::new();
            let timeout = ms(200);
            let options = JobOptions::new()
                .token(parent.child_token())
                .timeout(timeout);
            let (options, mut progress) = watch(options);
            let report = run_job(&worker, WAIT, options).await;

            assert_eq!(report.outcome, Outcome::Cancelled, "{report:#?}");
            assert_eq!(report.reason, Some(CancelReason::Timeout));
            assert_eq!(report.stage, Some(Stage::Cooperative));
            let cancel = report.trace.cancel_requested.expect("cancel_requested");
            assert!(
                cancel >= timeout,
                "cancelled before the timeout: {:?}",
                report.trace
            );
            assert!(cancel <= timeout + SLACK, "{:?}", report.trace);
            assert_eq!(report.trace.signal_sent, None);
            assert!(!parent.is_cancelled());
            assert_eq!(progress.ready().await, Vec::<u32>::new());
            let text = progress
                .next("the worker's cancel acknowledgement")
                .await
                .text;
            assert_eq!(text.as_deref(), Some(&*cancelled_text("timeout")));

            assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
        },
    );
}

#[test]
fn cancelling_a_parent_token_cancels_the_job_through_its_child() {
    e2e(
        "cancelling_a_parent_token_cancels_the_job_through_its_child",
        |t| async move {
            let config = WorkerConfig::protocol().deadlines(patient());
            let worker = t.spawn(&[mode::COOPERATIVE], config).await;
            let parent = CancellationToken::new();
            let (options, mut progress) = watch(JobOptions::new().token(parent.child_token()));
            let (report, ()) = tokio::join!(run_job(&worker, WAIT, options), async {
                progress.ready().await;
                parent.cancel();
            });

            assert_eq!(report.outcome, Outcome::Cancelled, "{report:#?}");
            assert_eq!(report.reason, Some(CancelReason::Requested));
            assert_eq!(report.stage, Some(Stage::Cooperative));
            assert!(report.trace.cancel_requested.is_some());
            assert_eq!(report.trace.signal_sent, None);

            assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
        },
    );
}

#[test]
fn shutdown_token_cancels_with_reason_shutdown() {
    e2e(
        "shutdown_token_cancels_with_reason_shutdown",
        |t| async move {
            let stop = CancellationToken::new();
            let config = WorkerConfig::protocol()
                .deadlines(patient())
                .shutdown_token(stop.clone());
            let worker = t.spawn(&[mode::COOPERATIVE], config).await;
            let (options, mut progress) = watch(JobOptions::new());
            let (report, ()) = tokio::join!(run_job(&worker, WAIT, options), async {
                progress.ready().await;
                stop.cancel();
            });

            assert_eq!(report.outcome, Outcome::Cancelled, "{report:#?}");
            assert_eq!(report.reason, Some(CancelReason::Shutdown));
            assert_eq!(report.stage, Some(Stage::Cooperative));
            let text = progress
                .next("the worker's cancel acknowledgement")
                .await
                .text;
            assert_eq!(text.as_deref(), Some(&*cancelled_text("shutdown")));

            // Once shutting down, a new job is cancelled before it reaches the worker.
            let report = run_job(&worker, echo(b"too late"), JobOptions::new()).await;
            assert_eq!(report.outcome, Outcome::Cancelled, "{report:#?}");
            assert_eq!(report.reason, Some(CancelReason::Shutdown));
            assert!(!report.started);
            assert_eq!(report.stage, None);

            assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
        },
    );
}

#[test]
fn per_job_deadlines_override_the_workers() {
    e2e("per_job_deadlines_override_the_workers", |t| async move {
        // The worker's own deadlines would wait a minute at each stage.
        let config = WorkerConfig::protocol().deadlines(patient());
        let worker = t.spawn(&[mode::IGNORE_TERM], config).await;
        let deadlines = short(ms(100), ms(100));
        let token = CancellationToken::new();
        let options = JobOptions::new().token(token.clone()).deadlines(deadlines);
        let (options, mut progress) = watch(options);
        let (report, ()) = tokio::join!(run_job(&worker, WAIT, options), async {
            progress.ready().await;
            token.cancel();
        });

        assert_eq!(report.outcome, Outcome::Killed, "{report:#?}");
        assert_eq!(report.stage, Some(Stage::Kill));
        let trace = &report.trace;
        let cancel = trace.cancel_requested.expect("cancel_requested");
        assert!(
            trace.kill_sent.expect("kill_sent") <= cancel + ms(200) + SLACK,
            "{trace:?}"
        );

        assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGKILL)));
    });
}

#[test]
fn heartbeats_are_accepted_during_a_job() {
    e2e("heartbeats_are_accepted_during_a_job", |t| async move {
        let mut config = WorkerConfig::protocol().deadlines(patient());
        config.heartbeat_interval = Some(ms(5));
        let worker = t.spawn(&[mode::COOPERATIVE], config).await;
        // A 300 ms job sees dozens of heartbeats before its timeout cancels it.
        let report = run_job(&worker, WAIT, JobOptions::new().timeout(ms(300))).await;
        assert_eq!(report.outcome, Outcome::Cancelled, "{report:#?}");
        assert_eq!(report.reason, Some(CancelReason::Timeout));
        assert_eq!(report.violation, None);

        let report = run_job(&worker, echo(b"still here"), JobOptions::new()).await;
        assert_eq!(
            report.outcome,
            Outcome::Completed(b"still here".to_vec()),
            "{report:#?}"
        );
        assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
    });
}

#[test]
fn worker_frozen_past_sigkill_is_reported_kill_pending_and_reaped_after_thaw() {
    e2e(
        "worker_frozen_past_sigkill_is_reported_kill_pending_and_reaped_after_thaw",
        |t| async move {
            let freezer = match Freezer::new(&t) {
                Ok(freezer) => freezer,
                Err(why) => {
                    eprintln!("skipped: {why}");
                    return;
                }
            };
            let deadlines = Deadlines {
                grace: ms(100),
                kill_after: ms(100),
                reap_timeout: ms(200),
            };
            let config = WorkerConfig::protocol().deadlines(deadlines);
            let worker = t.spawn(&[mode::IGNORE_TERM], config).await;
            let pid = worker.pid();
            let token = CancellationToken::new();
            let (options, mut progress) = watch(JobOptions::new().token(token.clone()));
            let (report, ()) = tokio::join!(run_job(&worker, WAIT, options), async {
                progress.ready().await;
                freezer.adopt(pid);
                freezer.freeze().await;
                token.cancel();
            });

            // The report comes at the reap timeout, while the worker still exists.
            assert_eq!(report.outcome, Outcome::Killed, "{report:#?}");
            assert_eq!(report.stage, Some(Stage::Kill));
            assert_eq!(report.exit, None);
            let trace = &report.trace;
            let killed = trace.kill_sent.expect("kill_sent");
            let pending = trace.kill_pending.expect("kill_pending");
            assert!(pending >= killed + deadlines.reap_timeout, "{trace:?}");
            assert_eq!(trace.exited, None);
            assert_eq!(trace.reaped, None);
            assert!(t.is_unreaped(pid), "the frozen worker cannot have died");

            // Another worker is not held up meanwhile.
            let other = t
                .spawn(
                    &[mode::COOPERATIVE],
                    WorkerConfig::protocol().deadlines(patient()),
                )
                .await;
            let report = run_job(&other, echo(b"unaffected"), JobOptions::new()).await;
            assert_eq!(
                report.outcome,
                Outcome::Completed(b"unaffected".to_vec()),
                "{report:#?}"
            );
            assert_eq!(shutdown(other).await, Some(ExitStatus::Code(0)));

            // Thawed, it dies of the pending SIGKILL and its actor reaps it.
            freezer.thaw();
            t.wait_reaped(pid, "the thawed worker").await;
            assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGKILL)));
            drop(freezer);
        },
    );
}

#[test]
fn shutdown_of_a_frozen_worker_gives_up_and_the_worker_is_reaped_after_thaw() {
    e2e(
        "shutdown_of_a_frozen_worker_gives_up_and_the_worker_is_reaped_after_thaw",
        |t| async move {
            let freezer = match Freezer::new(&t) {
                Ok(freezer) => freezer,
                Err(why) => {
                    eprintln!("skipped: {why}");
                    return;
                }
            };
            let deadlines = Deadlines {
                grace: ms(100),
                kill_after: ms(100),
                reap_timeout: ms(200),
            };
            let config = WorkerConfig::protocol().deadlines(deadlines);
            let worker = t.spawn(&[mode::COOPERATIVE], config).await;
            let pid = worker.pid();
            freezer.adopt(pid);
            freezer.freeze().await;

            // Shutdown message, SIGTERM, SIGKILL: none can act on a frozen process.
            assert_eq!(shutdown(worker).await, None);
            assert!(t.is_unreaped(pid));

            freezer.thaw();
            t.wait_reaped(pid, "the thawed worker").await;
            drop(freezer);
        },
    );
}

/// A kill right after a shutdown (as `warden batch` does on its second stop signal) escalates
/// that shutdown: the report names it, whichever of the two the actor sees first. Several
/// rounds, since the actor's choice between two ready tokens is random.
#[test]
fn a_kill_right_after_a_shutdown_is_killed_for_the_shutdown() {
    e2e(
        "a_kill_right_after_a_shutdown_is_killed_for_the_shutdown",
        |t| async move {
            for round in 0..8 {
                let shutdown_token = CancellationToken::new();
                let kill = CancellationToken::new();
                let config = WorkerConfig::protocol()
                    .deadlines(patient())
                    .shutdown_token(shutdown_token.clone())
                    .kill_token(kill.clone());
                let worker = t.spawn(&[mode::IGNORE_CANCEL], config).await;
                let (options, mut progress) = watch(JobOptions::new());
                let (report, ()) = tokio::join!(run_job(&worker, WAIT, options), async {
                    progress.ready().await;
                    shutdown_token.cancel();
                    kill.cancel();
                });
                assert_eq!(
                    report.outcome,
                    Outcome::Killed,
                    "round {round}: {report:#?}"
                );
                assert_eq!(
                    report.stage,
                    Some(Stage::Kill),
                    "round {round}: {report:#?}"
                );
                assert_eq!(
                    report.reason,
                    Some(CancelReason::Shutdown),
                    "round {round}: {report:#?}"
                );
                assert_eq!(report.exit, Some(by_signal(Signal::SIGKILL)));
                assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGKILL)));
            }
        },
    );
}
