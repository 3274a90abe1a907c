//! Lifecycle: dropping handles and job futures, shutdown, queued jobs.

use warden::{CancellationToken, ExitStatus, JobId, JobOptions, Outcome, WorkerConfig};
use warden_tests::{cancelled_text, mode};

use crate::support::*;

#[test]
fn dropping_the_handle_stops_an_idle_worker() {
    e2e("dropping_the_handle_stops_an_idle_worker", |t| async move {
        let config = WorkerConfig::protocol().deadlines(patient());
        let worker = t.spawn(&[mode::COOPERATIVE], config).await;
        let pid = worker.pid();
        assert!(t.is_running(pid));
        drop(worker);
        // The actor sends Shutdown, the worker exits at once, the actor reaps it.
        t.wait_reaped(pid, "the dropped worker").await;
    });
}

#[test]
fn dropping_the_handle_of_a_plain_program_stops_it() {
    e2e(
        "dropping_the_handle_of_a_plain_program_stops_it",
        |t| async move {
            let config = WorkerConfig::plain().deadlines(patient());
            let worker = t.spawn(&[mode::PLAIN_WAIT], config).await;
            let pid = worker.pid();
            drop(worker);
            // The polite signal ends it at once.
            t.wait_reaped(pid, "the dropped plain program").await;
        },
    );
}

#[test]
fn shutdown_returns_the_exit_status() {
    e2e("shutdown_returns_the_exit_status", |t| async move {
        let config = WorkerConfig::protocol().deadlines(patient());
        let worker = t.spawn(&[mode::COOPERATIVE], config).await;
        let pid = worker.pid();
        assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
        assert!(!t.is_unreaped(pid), "shutdown returned before the reap");

        // A worker that ignores SIGTERM while idle still goes: the SDK handles Shutdown.
        let config = WorkerConfig::protocol().deadlines(short(ms(100), ms(200)));
        let worker = t.spawn(&[mode::IGNORE_TERM], config).await;
        assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
    });
}

#[test]
fn dropping_the_run_future_cancels_the_job() {
    e2e("dropping_the_run_future_cancels_the_job", |t| async move {
        let config = WorkerConfig::protocol().deadlines(patient());
        let worker = t.spawn(&[mode::COOPERATIVE], config).await;
        let (options, mut progress) = watch(JobOptions::new());
        {
            let job = worker.run(WAIT.to_vec(), options);
            tokio::pin!(job);
            tokio::select! {
                report = &mut job => panic!("the job ended on its own: {report:?}"),
                _ = progress.ready() => {}
            }
        } // The run future is dropped here, mid-job.

        // The worker was told why (the callback outlives the dropped future)...
        let text = progress
            .next("the worker's cancel acknowledgement")
            .await
            .text;
        assert_eq!(text.as_deref(), Some(&*cancelled_text("requested")));
        // ...and the next job runs once the first has ended.
        let report = run_job(&worker, echo(b"after"), JobOptions::new()).await;
        assert_eq!(
            report.outcome,
            Outcome::Completed(b"after".to_vec()),
            "{report:#?}"
        );
        assert_eq!(report.job, JobId(2));

        assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
    });
}

#[test]
fn concurrent_runs_wait_their_turn() {
    e2e("concurrent_runs_wait_their_turn", |t| async move {
        let config = WorkerConfig::protocol().deadlines(patient());
        let worker = t.spawn(&[mode::COOPERATIVE], config).await;
        let (a, b, c) = tokio::join!(
            run_job(&worker, echo(b"a"), JobOptions::new()),
            run_job(&worker, echo(b"b"), JobOptions::new()),
            run_job(&worker, echo(b"c"), JobOptions::new()),
        );
        let mut jobs = Vec::new();
        for (report, data) in [(a, b"a"), (b, b"b"), (c, b"c")] {
            assert_eq!(
                report.outcome,
                Outcome::Completed(data.to_vec()),
                "{report:#?}"
            );
            jobs.push(report.job);
        }
        jobs.sort();
        assert_eq!(jobs, [JobId(1), JobId(2), JobId(3)]);

        assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
    });
}

#[test]
fn a_job_cancelled_while_it_waits_its_turn_is_answered_at_once() {
    e2e(
        "a_job_cancelled_while_it_waits_its_turn_is_answered_at_once",
        |t| async move {
            let config = WorkerConfig::protocol().deadlines(patient());
            let worker = t.spawn(&[mode::COOPERATIVE], config).await;
            {
                let first_token = CancellationToken::new();
                let (options, mut progress) = watch(JobOptions::new().token(first_token.clone()));
                let first = worker.run(WAIT.to_vec(), options);
                tokio::pin!(first);
                let second_token = CancellationToken::new();
                let second = worker.run(echo(b"b"), JobOptions::new().token(second_token.clone()));
                tokio::pin!(second);
                // Biased: the first is polled (and so asked for) before the second, so the
                // second is the one that waits.
                tokio::select! {
                    biased;
                    report = &mut first => panic!("the first job ended on its own: {report:?}"),
                    report = &mut second => panic!("the second job ended before its turn: {report:?}"),
                    _ = progress.ready() => {}
                }
                // The first still runs: the second is answered by its cancel alone.
                second_token.cancel();
                let report = tokio::select! {
                    report = &mut first => panic!("the first job ended on its own: {report:?}"),
                    report = within(LIMIT, "the waiting job's report", &mut second) => {
                        report.expect("the second job's report")
                    }
                };
                assert_eq!(report.outcome, Outcome::Cancelled, "{report:#?}");
                assert_eq!(report.reason, Some(warden::CancelReason::Requested));
                assert!(!report.started, "{report:#?}");

                first_token.cancel();
                let report = within(LIMIT, "the first job's report", first)
                    .await
                    .expect("the first job's report");
                assert_eq!(report.outcome, Outcome::Cancelled, "{report:#?}");
                assert!(report.started, "{report:#?}");
            }
            // The worker goes on with the next job.
            let report = run_job(&worker, echo(b"c"), JobOptions::new()).await;
            assert_eq!(
                report.outcome,
                Outcome::Completed(b"c".to_vec()),
                "{report:#?}"
            );
            assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
        },
    );
}

#[test]
fn dropping_the_job_and_the_handle_still_stops_a_stubborn_worker() {
    e2e(
        "dropping_the_job_and_the_handle_still_stops_a_stubborn_worker",
        |t| async move {
            let config = WorkerConfig::protocol().deadlines(short(ms(100), ms(100)));
            let worker = t.spawn(&[mode::IGNORE_TERM], config).await;
            let pid = worker.pid();
            let (options, mut progress) = watch(JobOptions::new());
            {
                let job = worker.run(WAIT.to_vec(), options);
                tokio::pin!(job);
                tokio::select! {
                    report = &mut job => panic!("the job ended on its own: {report:?}"),
                    _ = progress.ready() => {}
                }
            }
            drop(worker);
            // The ladder runs on in the background: cancel, SIGTERM (ignored), SIGKILL.
            t.wait_reaped(pid, "the stubborn worker").await;
        },
    );
}

#[test]
fn dropping_the_runtime_kills_the_worker_and_its_group() {
    e2e(
        "dropping_the_runtime_kills_the_worker_and_its_group",
        |t| async move {
            let cmd = t.command(&[mode::FORK_TREE, "2"]);
            // A runtime of its own, on a thread of its own, dropped mid-job.
            let (done, dropped) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("inner runtime");
                let pids = runtime.block_on(async {
                    let config = WorkerConfig::protocol().deadlines(patient());
                    let worker = within(LIMIT, "spawn", warden::Worker::spawn(&cmd, config))
                        .await
                        .expect("spawn");
                    let (options, mut progress) = watch(JobOptions::new());
                    let job = worker.run(WAIT.to_vec(), options);
                    tokio::pin!(job);
                    let children = tokio::select! {
                        report = &mut job => panic!("the job ended on its own: {report:?}"),
                        children = progress.ready() => children,
                    };
                    (worker.pid(), children)
                });
                drop(runtime);
                let _ = done.send(pids);
            });
            let (pid, children) = within(LIMIT, "the inner runtime to be dropped", dropped)
                .await
                .expect("the inner runtime's thread panicked");
            assert_eq!(children.len(), 2);
            t.wait_reaped(pid, "the worker of the dropped runtime")
                .await;
            for child in children {
                t.wait_gone(child, "a child of the worker of the dropped runtime")
                    .await;
            }
        },
    );
}

#[test]
fn worker_sees_only_stdio_and_its_channel() {
    e2e("worker_sees_only_stdio_and_its_channel", |t| async move {
        let config = WorkerConfig::protocol().deadlines(patient());
        let worker = t.spawn(&[mode::LIST_FDS], config).await;
        let report = run_job(&worker, b"x".to_vec(), JobOptions::new()).await;
        let Outcome::Completed(fds) = &report.outcome else {
            panic!("{report:#?}");
        };
        assert_eq!(String::from_utf8_lossy(fds), "0,1,2,3");
        assert_eq!(shutdown(worker).await, Some(ExitStatus::Code(0)));
    });
}

#[test]
fn kill_token_kills_an_idle_worker() {
    e2e("kill_token_kills_an_idle_worker", |t| async move {
        let kill = warden::CancellationToken::new();
        let config = WorkerConfig::protocol()
            .deadlines(patient())
            .kill_token(kill.clone());
        let worker = t.spawn(&[mode::COOPERATIVE], config).await;
        let pid = worker.pid();
        // Idle: no job runs, so only the actor's idle loop can act on the token.
        kill.cancel();
        t.wait_reaped(pid, "the idle worker after its kill token")
            .await;
        let next = within(
            LIMIT,
            "a run on the killed worker",
            worker.run(echo(b"late"), JobOptions::new()),
        )
        .await;
        assert!(
            matches!(next, Err(warden::RunError::WorkerGone { .. })),
            "{next:?}"
        );
        assert_eq!(
            shutdown(worker).await,
            Some(by_signal(nix::sys::signal::Signal::SIGKILL))
        );
    });
}

#[test]
fn kill_token_before_the_run_of_a_plain_program_reports_killed() {
    e2e(
        "kill_token_before_the_run_of_a_plain_program_reports_killed",
        |t| async move {
            let kill = warden::CancellationToken::new();
            let config = WorkerConfig::plain()
                .deadlines(patient())
                .kill_token(kill.clone());
            let worker = t.spawn(&[mode::PLAIN_WAIT], config).await;
            let pid = worker.pid();
            kill.cancel();
            t.wait_reaped(pid, "the plain program after its kill token")
                .await;
            // Its run (the whole life of the program) was ended by warden's SIGKILL.
            let report = run_job(&worker, Vec::new(), JobOptions::new()).await;
            let sigkill = by_signal(nix::sys::signal::Signal::SIGKILL);
            assert_eq!(report.outcome, Outcome::Killed, "{report:#?}");
            assert_eq!(report.stage, Some(warden::Stage::Kill), "{report:#?}");
            assert_eq!(report.exit, Some(sigkill));
            assert!(report.trace.kill_sent.is_some(), "{report:#?}");
            assert_eq!(shutdown(worker).await, Some(sigkill));
        },
    );
}
