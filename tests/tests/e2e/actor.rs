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
