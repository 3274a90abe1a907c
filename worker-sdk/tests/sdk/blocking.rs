//! The blocking variant: the handler runs on its own thread.

use std::sync::mpsc as std_mpsc;
use std::thread;

use warden_protocol::{CancelReason, JobId, SupervisorMessage, WorkerMessage};
use warden_worker::{CancelCause, JobError};

use crate::support::*;

#[tokio::test]
async fn handler_blocks_while_heartbeats_continue_and_cancel_trips_it() {
    let (mut sup, channel) = pair();
    let (threads, thread_rx) = std_mpsc::channel();
    let serving = spawn_blocking(channel, move |job| {
        let _ = threads.send((
            thread::current().id(),
            thread::current().name().map(str::to_owned),
        ));
        if job.payload() == b"quick" {
            return Ok(Vec::new());
        }
        let (tripped, wait) = std_mpsc::channel();
        let _guard = job.on_cancel(move || {
            let _ = tripped.send(());
        });
        job.progress().set_text("started");
        // Blocks this thread (not the SDK's) until the token trips.
        wait.recv_timeout(LIMIT)
            .map_err(|_| JobError::msg("cancel never arrived"))?;
        assert_eq!(
            job.cancel_cause(),
            Some(CancelCause::Message(CancelReason::Requested))
        );
        job.check()?;
        Ok(b"not reached".to_vec())
    });
    sup.accept(10, 4096).await;
    sup.send(&start(1, b"")).await;
    assert_eq!(
        sup.recv("progress").await,
        WorkerMessage::Progress {
            job: JobId(1),
            fraction: None,
            text: Some("started".into())
        }
    );
    // The handler is blocked; the SDK must still be alive.
    for _ in 0..2 {
        assert_eq!(
            sup.recv_any("heartbeat while the handler blocks").await,
            WorkerMessage::Heartbeat
        );
    }
    sup.send(&SupervisorMessage::Cancel {
        job: JobId(1),
        reason: CancelReason::Requested,
    })
    .await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Cancelled { job: JobId(1) }
    );

    sup.send(&start(2, b"quick")).await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Completed {
            job: JobId(2),
            output: vec![]
        }
    );
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");

    let first = thread_rx.recv_timeout(LIMIT).expect("first job's thread");
    let second = thread_rx.recv_timeout(LIMIT).expect("second job's thread");
    assert_eq!(first.0, second.0, "one thread is reused for every job");
    assert_ne!(first.0, thread::current().id());
    assert_eq!(first.1.as_deref(), Some("warden-job"));
}

#[tokio::test]
async fn blocking_panic_fails_the_job_and_the_next_one_runs() {
    let (mut sup, channel) = pair();
    let serving = spawn_blocking(channel, |job| {
        if job.payload() == b"boom" {
            panic!("boom (expected by the test)");
        }
        Ok(job.payload().to_vec())
    });
    sup.accept_default().await;
    sup.send(&start(1, b"boom")).await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Failed {
            job: JobId(1),
            error: "handler panicked: boom (expected by the test)".into()
        }
    );
    sup.send(&start(2, b"ok")).await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Completed {
            job: JobId(2),
            output: b"ok".to_vec()
        }
    );
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}

#[test]
fn serve_blocking_builds_its_own_runtime() {
    // The fake supervisor runs on a runtime of its own; serve_blocking on this thread.
    let (ours, channel) = pair_std();
    let supervisor = thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let mut sup = FakeSupervisor::new(ours);
            sup.accept_default().await;
            sup.send(&start(1, b"hi")).await;
            let result = sup.recv("result").await;
            sup.send(&SupervisorMessage::Shutdown).await;
            sup.expect_eof("worker to close").await;
            result
        })
    });
    worker(channel)
        .serve_blocking(|job| Ok(job.payload().to_vec()))
        .expect("ok");
    let result = supervisor.join().expect("supervisor thread");
    assert_eq!(
        result,
        WorkerMessage::Completed {
            job: JobId(1),
            output: b"hi".to_vec()
        }
    );
}

/// A blocking job's end is written by its own thread, and the supervisor may start the next job
/// while that thread is still inside the write. The serve task, woken by the start, then sees
/// the writer busy and must still be woken for the new job's progress when the write is done
/// (it once was not: with no heartbeats to wake it, the progress waited for the next event).
/// A race, so many jobs back to back; each progress report is awaited, bounded.
#[tokio::test]
async fn progress_of_a_job_started_while_the_last_result_is_written_is_sent() {
    const JOBS: u64 = 2_000;
    let (mut sup, channel) = pair();
    let serving = spawn_blocking(channel, |job| {
        job.progress().set_text("started");
        while !job.is_cancelled() {
            // Bounded by the test's own waits: the supervisor cancels once it saw the progress.
            std::thread::yield_now();
        }
        job.check()?;
        Ok(Vec::new())
    });
    sup.accept_default().await;
    for id in 1..=JOBS {
        sup.send(&start(id, b"")).await;
        assert_eq!(
            sup.recv("progress").await,
            WorkerMessage::Progress {
                job: JobId(id),
                fraction: None,
                text: Some("started".into())
            },
            "job {id}"
        );
        sup.send(&SupervisorMessage::Cancel {
            job: JobId(id),
            reason: CancelReason::Requested,
        })
        .await;
        assert_eq!(
            sup.recv("result").await,
            WorkerMessage::Cancelled { job: JobId(id) },
            "job {id}"
        );
    }
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}
