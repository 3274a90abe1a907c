//! The actor's bugs found in review, with real processes: a `run` dropped while it waits never
//! starts, and a progress callback that blocks never delays the ladder.

use std::sync::Mutex;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use warden::{CancelReason, JobId, JobOptions, Outcome, Stage, WorkerConfig};
use warden_tests::mode;

use crate::support::*;

#[test]
fn a_run_dropped_while_it_waits_never_starts() {
    e2e(
        "a_run_dropped_while_it_waits_never_starts",
        |t| async move {
            let config = WorkerConfig::protocol().deadlines(patient());
            let worker = t.spawn(&[mode::COOPERATIVE], config).await;
            let (second_options, mut second) = watch(JobOptions::new());
            let first_token = warden::CancellationToken::new();
            {
                let (first_options, mut first) =
                    watch(JobOptions::new().token(first_token.clone()));
                let first_job = worker.run(WAIT.to_vec(), first_options);
                tokio::pin!(first_job);
                // Polled once: its request goes to the actor, which runs it on its own.
                tokio::select! {
                    biased;
                    _ = &mut first_job => panic!("the first job ended at once"),
                    () = std::future::ready(()) => {}
                }
                // Polled once: its request is queued, then it waits behind the first job.
                {
                    let second_job = worker.run(WAIT.to_vec(), second_options);
                    tokio::pin!(second_job);
                    tokio::select! {
                        biased;
                        _ = &mut second_job => panic!("the second job ran before the first"),
                        _ = first.ready() => {}
                    }
                } // dropped while it waits
                first_token.cancel();
                let report = within(LIMIT, "the first job's report", &mut first_job)
                    .await
                    .expect("run");
                assert_eq!(report.outcome, Outcome::Cancelled);
            }
            // The next job is the third: the second was decided (never started) in between.
            let report = run_job(&worker, echo(b"x"), JobOptions::new()).await;
            assert_eq!(report.job, JobId(3));
            assert_eq!(report.outcome, Outcome::Completed(b"x".to_vec()));
            assert!(
                second.drain().is_empty(),
                "the second job reported progress: it was started"
            );
            shutdown(worker).await;
        },
    );
}

#[test]
fn a_blocking_progress_callback_never_delays_the_kill() {
    e2e(
        "a_blocking_progress_callback_never_delays_the_kill",
        |t| async move {
            let config = WorkerConfig::protocol().deadlines(short(ms(100), ms(100)));
            let worker = t.spawn(&[mode::IGNORE_TERM], config).await;
            let (entered_tx, entered) = tokio::sync::oneshot::channel();
            let entered_tx = Mutex::new(Some(entered_tx));
            // Blocks until the test ends (the sender is dropped then), bounded in any case.
            let (release, released) = std_mpsc::channel::<()>();
            let released = Mutex::new(released);
            let options = JobOptions::new()
                .timeout(ms(100))
                .on_progress(move |_progress| {
                    if let Some(tx) = entered_tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    let _ = released
                        .lock()
                        .unwrap()
                        .recv_timeout(Duration::from_secs(60));
                });
            let job = worker.run(WAIT.to_vec(), options);
            let report = within(LIMIT, "the report while the callback blocks", job)
                .await
                .expect("run");
            within(LIMIT, "the callback to run", entered).await.ok();
            assert_eq!(report.reason, Some(CancelReason::Timeout));
            assert_eq!(report.stage, Some(Stage::Kill), "{report:#?}");
            assert_eq!(report.outcome, Outcome::Killed);
            drop(release);
            shutdown(worker).await;
        },
    );
}

#[test]
fn pipelined_runs_wait_in_the_worker_and_a_cancel_there_is_answered_before_their_turn() {
    e2e("pipelined_runs_wait_in_the_worker", |t| async move {
        let config = WorkerConfig::protocol().deadlines(patient()).pipeline(3);
        let worker = t.spawn(&[mode::COOPERATIVE], config).await;
        assert_eq!(
            worker.info().protocol_version,
            Some(warden_protocol::PROTOCOL_VERSION),
            "the Rust SDK speaks version 2"
        );
        {
            let first_token = warden::CancellationToken::new();
            let (first_options, mut first) = watch(JobOptions::new().token(first_token.clone()));
            let second_token = warden::CancellationToken::new();
            let (second_options, mut second) = watch(JobOptions::new().token(second_token.clone()));
            let (third_options, mut third) = watch(JobOptions::new());
            let first_job = worker.run(WAIT.to_vec(), first_options);
            let second_job = worker.run(WAIT.to_vec(), second_options);
            let third_job = worker.run(echo(b"three"), third_options);
            tokio::pin!(first_job, second_job, third_job);
            // All three go out now: the first runs, the others wait in the worker.
            tokio::select! {
                biased;
                _ = &mut first_job => panic!("the first job ended at once"),
                _ = &mut second_job => panic!("the second job ended at once"),
                _ = &mut third_job => panic!("the third job ended at once"),
                _ = first.ready() => {}
            }
            // The second is cancelled while it waits: the worker answers before its turn.
            second_token.cancel();
            let report = within(LIMIT, "the second job's report", &mut second_job)
                .await
                .expect("run");
            assert_eq!(report.outcome, Outcome::Cancelled, "{report:#?}");
            assert!(!report.started, "{report:#?}");
            assert_eq!(report.reason, Some(CancelReason::Requested));
            assert_eq!(report.stage, None, "no ladder for a job that never ran");
            assert!(second.drain().is_empty(), "the second job never ran");
            first_token.cancel();
            let report = within(LIMIT, "the first job's report", &mut first_job)
                .await
                .expect("run");
            assert_eq!(report.outcome, Outcome::Cancelled);
            assert_eq!(report.stage, Some(Stage::Cooperative));
            let report = within(LIMIT, "the third job's report", &mut third_job)
                .await
                .expect("run");
            assert_eq!(report.outcome, Outcome::Completed(b"three".to_vec()));
            assert_eq!(report.job, JobId(3));
            third.drain();
        }
        shutdown(worker).await;
    });
}
