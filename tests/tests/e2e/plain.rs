//! Plain programs: no channel, one "job" that is the program's whole run, a ladder that starts
//! at the polite signal.

use nix::sys::signal::Signal;
use warden::{
    CancelReason, CancellationToken, ExitStatus, Failure, JobOptions, Outcome, RunError, Stage,
    WorkerConfig,
};
use warden_tests::{READY, mode};

use crate::support::*;

#[cfg(target_os = "linux")]
/// Blocks this thread until the process behind `pidfd` has exited (true) or `limit` passed.
fn wait_pidfd_blocking(pidfd: &std::os::fd::OwnedFd, limit: std::time::Duration) -> bool {
    use std::os::fd::AsFd;
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    matches!(nix::poll::poll(&mut fds, ms), Ok(n) if n > 0)
}

#[test]
fn plain_program_exiting_zero_is_completed() {
    e2e("plain_program_exiting_zero_is_completed", |t| async move {
        let config = WorkerConfig::plain().deadlines(patient());
        let worker = t.spawn(&[mode::PLAIN_EXIT, "0"], config).await;
        assert_eq!(worker.info().protocol_version, None);
        assert_eq!(worker.info().sdk_version, None);
        let report = run_job(&worker, Vec::new(), JobOptions::new()).await;

        assert_eq!(
            report.outcome,
            Outcome::Completed(Vec::new()),
            "{report:#?}"
        );
        assert_eq!(report.exit, Some(ExitStatus::Code(0)));
        assert_eq!(report.reason, None);
        assert_eq!(report.stage, None);
        assert!(report.trace.exited.is_some() && report.trace.reaped.is_some());

        // Its one run is over.
        let next = within(
            LIMIT,
            "a second run",
            worker.run(Vec::new(), JobOptions::new()),
        )
        .await;
        assert!(
            matches!(
                next,
                Err(RunError::WorkerGone {
                    status: Some(ExitStatus::Code(0)),
                    violation: None,
                })
            ),
            "{next:?}"
        );
        assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
    });
}

#[test]
fn plain_program_exiting_nonzero_is_failed_with_its_code() {
    e2e(
        "plain_program_exiting_nonzero_is_failed_with_its_code",
        |t| async move {
            let config = WorkerConfig::plain().deadlines(patient());
            let worker = t.spawn(&[mode::PLAIN_EXIT, "3"], config).await;
            let report = run_job(&worker, Vec::new(), JobOptions::new()).await;

            assert_eq!(
                report.outcome,
                Outcome::Failed(Failure::ExitCode(3)),
                "{report:#?}"
            );
            assert_eq!(report.exit, Some(ExitStatus::Code(3)));
            assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(3)));
        },
    );
}

// A plain program cannot say when its job started, and a token cancelled before the
// supervisor starts the job is a cancel before the start (`started == false`): so these tests
// stop running programs with the job's timeout, which counts from the start.

#[test]
fn plain_program_timeout_is_terminated_at_the_signal_stage() {
    e2e(
        "plain_program_timeout_is_terminated_at_the_signal_stage",
        |t| async move {
            // Every signal is at its default from the start: no readiness needed.
            let config = WorkerConfig::plain().deadlines(patient());
            let worker = t.spawn(&[mode::PLAIN_WAIT], config).await;
            let timeout = ms(200);
            let report = run_job(&worker, Vec::new(), JobOptions::new().timeout(timeout)).await;

            assert_eq!(report.outcome, Outcome::Terminated, "{report:#?}");
            assert_eq!(report.stage, Some(Stage::Signal));
            assert_eq!(report.reason, Some(CancelReason::Timeout));
            assert_eq!(report.exit, Some(by_signal(Signal::SIGTERM)));
            let trace = &report.trace;
            let cancel = trace.cancel_requested.expect("cancel_requested");
            assert!(cancel >= timeout, "{trace:?}");
            assert_eq!(
                trace.signal_sent,
                Some(cancel),
                "a plain program's ladder starts with the signal"
            );
            assert_eq!(trace.kill_sent, None);
            assert!(
                trace.exited.is_some() && trace.reaped.is_some(),
                "{trace:?}"
            );

            assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGTERM)));
        },
    );
}

#[test]
fn plain_program_ignoring_sigterm_is_killed_at_the_kill_stage() {
    e2e(
        "plain_program_ignoring_sigterm_is_killed_at_the_kill_stage",
        |t| async move {
            let deadlines = short(ms(100), ms(200));
            let config = WorkerConfig::plain().deadlines(deadlines);
            let fifo = t.fifo();
            let worker = t
                .spawn(&[mode::PLAIN_IGNORE_TERM, fifo.arg()], config)
                .await;
            // SIGTERM is ignored from here on.
            assert_eq!(fifo.line("the plain program's ready line").await, READY);
            let options = JobOptions::new().timeout(ms(100));
            let report = run_job(&worker, Vec::new(), options).await;

            assert_eq!(report.outcome, Outcome::Killed, "{report:#?}");
            assert_eq!(report.stage, Some(Stage::Kill));
            assert_eq!(report.reason, Some(CancelReason::Timeout));
            assert_eq!(report.exit, Some(by_signal(Signal::SIGKILL)));
            let trace = &report.trace;
            let signal = trace.signal_sent.expect("signal_sent");
            let killed = trace.kill_sent.expect("kill_sent");
            assert!(killed >= signal + deadlines.kill_after, "{trace:?}");
            assert!(killed <= signal + deadlines.kill_after + SLACK, "{trace:?}");

            assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGKILL)));
        },
    );
}

#[test]
fn plain_program_cancelled_before_its_job_goes_through_the_ladder() {
    // A plain program's job is its whole run, which began at spawn: a token cancelled before
    // run() must stop the program, not report "cancelled" and leave it running.
    e2e(
        "plain_program_cancelled_before_its_job_goes_through_the_ladder",
        |t| async move {
            let config = WorkerConfig::plain().deadlines(patient());
            let worker = t.spawn(&[mode::PLAIN_WAIT], config).await;
            let token = CancellationToken::new();
            token.cancel();
            let report = run_job(&worker, Vec::new(), JobOptions::new().token(token)).await;

            assert_eq!(report.outcome, Outcome::Terminated, "{report:#?}");
            assert!(report.started);
            assert_eq!(report.reason, Some(CancelReason::Requested));
            assert_eq!(report.stage, Some(Stage::Signal));
            assert!(report.trace.signal_sent.is_some());
            assert_eq!(report.exit, Some(by_signal(Signal::SIGTERM)));

            assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGTERM)));
        },
    );
}

#[test]
fn plain_program_with_a_payload_is_refused() {
    e2e("plain_program_with_a_payload_is_refused", |t| async move {
        let config = WorkerConfig::plain().deadlines(patient());
        let worker = t.spawn(&[mode::PLAIN_WAIT], config).await;
        let result = within(
            LIMIT,
            "the refused run",
            worker.run(b"data".to_vec(), JobOptions::new()),
        )
        .await;
        assert!(
            matches!(result, Err(RunError::PayloadForPlainProgram)),
            "{result:?}"
        );
        assert!(
            t.is_running(worker.pid()),
            "a refused job does not touch the program"
        );

        assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGTERM)));
    });
}

#[test]
fn plain_program_ignoring_sigterm_is_killed_on_shutdown() {
    e2e(
        "plain_program_ignoring_sigterm_is_killed_on_shutdown",
        |t| async move {
            let config = WorkerConfig::plain().deadlines(short(ms(100), ms(200)));
            let fifo = t.fifo();
            let worker = t
                .spawn(&[mode::PLAIN_IGNORE_TERM, fifo.arg()], config)
                .await;
            assert_eq!(fifo.line("the plain program's ready line").await, READY);
            assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGKILL)));
        },
    );
}

#[test]
fn polite_signal_is_configurable() {
    e2e("polite_signal_is_configurable", |t| async move {
        let config = WorkerConfig::plain()
            .deadlines(patient())
            .polite_signal(Signal::SIGINT as i32);
        let worker = t.spawn(&[mode::PLAIN_WAIT], config).await;
        let report = run_job(&worker, Vec::new(), JobOptions::new().timeout(ms(100))).await;

        assert_eq!(report.outcome, Outcome::Terminated, "{report:#?}");
        assert_eq!(report.exit, Some(by_signal(Signal::SIGINT)));
        assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGINT)));
    });
}

#[test]
fn script_without_a_shebang_runs_under_sh() {
    e2e("script_without_a_shebang_runs_under_sh", |t| async move {
        let script = t.file("script", "exit 4\n", 0o755);
        let mut cmd = warden::Command::new(script.path());
        cmd.env(warden_tests::MARKER_VAR, t.marker());
        let config = WorkerConfig::plain().deadlines(patient());
        let worker = within(LIMIT, "spawn", warden::Worker::spawn(&cmd, config))
            .await
            .expect("spawn the script");
        let report = run_job(&worker, Vec::new(), JobOptions::new()).await;
        assert_eq!(
            report.outcome,
            Outcome::Failed(Failure::ExitCode(4)),
            "{report:#?}"
        );
        assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(4)));
    });
}

/// The ladder's SIGKILL does not wait for the runtime: with both of the test runtime's threads
/// blocked (on purpose, until the program is gone), the `warden-timer` thread kills the tree
/// at its deadline, and the report, read once the threads are free, says `killed` with the
/// SIGKILL's real time.
#[test]
#[cfg(target_os = "linux")]
fn the_kill_lands_while_every_runtime_thread_is_busy() {
    e2e(
        "the_kill_lands_while_every_runtime_thread_is_busy",
        |t| async move {
            let deadlines = short(ms(100), ms(500));
            let config = WorkerConfig::plain().deadlines(deadlines);
            let fifo = t.fifo();
            let worker = t.spawn(&[mode::PLAIN_TELL_TERM, fifo.arg()], config).await;
            assert_eq!(fifo.line("the plain program's ready line").await, READY);
            let pidfd = std::sync::Arc::new(
                warden_tests::sys::pidfd_open(worker.pid()).expect("pidfd_open"),
            );
            let token = CancellationToken::new();
            let options = JobOptions::new().token(token.clone());
            let (report, (a, b)) = tokio::join!(run_job(&worker, Vec::new(), options), async {
                token.cancel();
                // SIGTERM delivered: the actor has sent it and, before it awaits anything
                // again, armed the SIGKILL for 500 ms from then.
                assert_eq!(fifo.line("the program's SIGTERM line").await, "term");
                // Two tasks that hold both runtime threads (neither lets go until the other
                // holds one too, so no runtime thread is left for the worker's actor), each
                // until the program is gone, bounded.
                let holding = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let hold = |pidfd: std::sync::Arc<std::os::fd::OwnedFd>| {
                    let holding = std::sync::Arc::clone(&holding);
                    tokio::spawn(async move {
                        holding.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let bound = std::time::Instant::now() + LIMIT;
                        while holding.load(std::sync::atomic::Ordering::SeqCst) < 2 {
                            if std::time::Instant::now() > bound {
                                return (false, false);
                            }
                            std::thread::yield_now();
                        }
                        (true, wait_pidfd_blocking(&pidfd, LIMIT))
                    })
                };
                let (a, b) = (hold(pidfd.clone()), hold(pidfd.clone()));
                (a.await.expect("holder"), b.await.expect("holder"))
            });
            assert!(
                a.0 && b.0,
                "the two holders never held both runtime threads at once"
            );
            assert!(
                a.1 && b.1,
                "the program outlived its SIGKILL deadline while the runtime was held"
            );
            assert_eq!(report.outcome, Outcome::Killed, "{report:#?}");
            assert_eq!(report.stage, Some(Stage::Kill));
            assert_eq!(report.exit, Some(by_signal(Signal::SIGKILL)));
            let trace = &report.trace;
            let signal = trace.signal_sent.expect("signal_sent");
            let killed = trace.kill_sent.expect("kill_sent");
            assert!(
                killed >= signal + deadlines.kill_after,
                "killed too early: {trace:?}"
            );
            assert!(trace.exited.expect("exited") >= killed, "{trace:?}");

            assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGKILL)));
        },
    );
}
