//! Jobs and their outcomes, with an async handler.

use std::time::Duration;

use tokio::sync::mpsc;
use warden_protocol::{CancelReason, JobId, SupervisorMessage, WorkerMessage};
use warden_worker::{CancelCause, JobError};

use crate::support::*;

fn started(job: u64) -> WorkerMessage {
    WorkerMessage::Progress {
        job: JobId(job),
        fraction: None,
        text: Some("started".into()),
    }
}

#[tokio::test]
async fn job_completes_with_its_output() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |job| {
        let mut out = job.payload().to_vec();
        out.reverse();
        let id = job.id();
        async move {
            assert_eq!(id, JobId(7));
            Ok(out)
        }
    });
    sup.accept_default().await;
    sup.send(&start(7, b"abc")).await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Completed {
            job: JobId(7),
            output: b"cba".to_vec()
        }
    );
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}

#[tokio::test]
async fn deadline_is_computed_at_receipt() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |job| {
        let answer = match (job.deadline(), job.remaining()) {
            (None, None) => "none".to_owned(),
            (Some(_), Some(left)) if left > Duration::ZERO && left <= Duration::from_secs(60) => {
                "within".to_owned()
            }
            other => format!("unexpected {other:?}"),
        };
        async move { Ok(answer.into_bytes()) }
    });
    sup.accept_default().await;
    sup.send(&SupervisorMessage::StartJob {
        job: JobId(1),
        payload: Vec::new(),
        deadline_ms: Some(60_000),
    })
    .await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Completed {
            job: JobId(1),
            output: b"within".to_vec()
        }
    );
    sup.send(&start(2, b"")).await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Completed {
            job: JobId(2),
            output: b"none".to_vec()
        }
    );
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}

#[tokio::test]
async fn cancel_trips_the_token_with_its_reason() {
    let (mut sup, channel) = pair();
    let (causes, mut cause_rx) = mpsc::unbounded_channel();
    let serving = spawn_async(channel, move |job| {
        let causes = causes.clone();
        async move {
            job.progress().set_text("started");
            job.cancelled().await;
            let _ = causes.send(job.cancel_cause());
            job.check()?;
            Ok(b"not reached".to_vec())
        }
    });
    sup.accept_default().await;
    sup.send(&start(1, b"")).await;
    assert_eq!(sup.recv("progress").await, started(1));
    sup.send(&SupervisorMessage::Cancel {
        job: JobId(1),
        reason: CancelReason::Timeout,
    })
    .await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Cancelled { job: JobId(1) }
    );
    assert_eq!(
        within("cause", cause_rx.recv()).await,
        Some(Some(CancelCause::Message(CancelReason::Timeout)))
    );
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}

#[tokio::test]
async fn result_after_a_cancel_is_completed() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |job| async move {
        job.progress().set_text("started");
        // Finish anyway once the cancel is known to have arrived.
        job.cancelled().await;
        Ok(b"done anyway".to_vec())
    });
    sup.accept_default().await;
    sup.send(&start(1, b"")).await;
    assert_eq!(sup.recv("progress").await, started(1));
    sup.send(&SupervisorMessage::Cancel {
        job: JobId(1),
        reason: CancelReason::Requested,
    })
    .await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Completed {
            job: JobId(1),
            output: b"done anyway".to_vec()
        }
    );
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}

#[tokio::test]
async fn cancel_for_another_job_is_ignored() {
    let (mut sup, channel) = pair();
    let (causes, mut cause_rx) = mpsc::unbounded_channel();
    let serving = spawn_async(channel, move |job| {
        let causes = causes.clone();
        async move {
            job.progress().set_text("started");
            job.cancelled().await;
            let _ = causes.send(job.cancel_cause());
            Err(JobError::Cancelled)
        }
    });
    sup.accept_default().await;
    // While idle.
    sup.send(&SupervisorMessage::Cancel {
        job: JobId(99),
        reason: CancelReason::Shutdown,
    })
    .await;
    sup.send(&start(2, b"")).await;
    assert_eq!(sup.recv("progress").await, started(2));
    // While another job runs: a cancel that crossed with job 1's result. The token keeps the first
    // cause, so the cause job 2 sees proves which cancel tripped it.
    sup.send(&SupervisorMessage::Cancel {
        job: JobId(1),
        reason: CancelReason::Timeout,
    })
    .await;
    sup.send(&SupervisorMessage::Cancel {
        job: JobId(2),
        reason: CancelReason::Requested,
    })
    .await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Cancelled { job: JobId(2) }
    );
    assert_eq!(
        within("cause", cause_rx.recv()).await,
        Some(Some(CancelCause::Message(CancelReason::Requested)))
    );
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}

#[tokio::test]
async fn cancelled_without_a_request_is_failed() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |_job| async { Err(JobError::Cancelled) });
    sup.accept_default().await;
    sup.send(&start(1, b"")).await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Failed {
            job: JobId(1),
            error: "handler returned cancelled without a cancel request".into()
        }
    );
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}

#[derive(Debug, thiserror::Error)]
#[error("could not frob")]
struct Outer(#[source] std::io::Error);

#[tokio::test]
async fn handler_errors_are_failed_with_their_source_chain() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |job| async move {
        if job.payload() == b"msg" {
            return Err(JobError::msg(format_args!("bad input {}", 3)));
        }
        Err(Outer(std::io::Error::other("disk on fire")))?
    });
    sup.accept_default().await;
    sup.send(&start(1, b"chain")).await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Failed {
            job: JobId(1),
            error: "could not frob: disk on fire".into()
        }
    );
    sup.send(&start(2, b"msg")).await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Failed {
            job: JobId(2),
            error: "bad input 3".into()
        }
    );
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}

#[tokio::test]
async fn panic_fails_the_job_and_the_worker_keeps_serving() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |job| {
        if job.payload() == b"sync" {
            panic!("sync part (expected by the test)");
        }
        async move {
            if job.payload() == b"async" {
                panic!("async part (expected by the test)");
            }
            Ok(b"fine".to_vec())
        }
    });
    sup.accept_default().await;
    sup.send(&start(1, b"async")).await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Failed {
            job: JobId(1),
            error: "handler panicked: async part (expected by the test)".into()
        }
    );
    sup.send(&start(2, b"sync")).await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Failed {
            job: JobId(2),
            error: "handler panicked: sync part (expected by the test)".into()
        }
    );
    sup.send(&start(3, b"")).await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Completed {
            job: JobId(3),
            output: b"fine".to_vec()
        }
    );
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}

#[tokio::test]
async fn output_over_the_frame_limit_is_failed() {
    const LIMIT: u32 = 1024;
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |job| {
        let len = usize::from(job.payload()[0]) * 256 + usize::from(job.payload()[1]);
        async move { Ok(vec![b'x'; len]) }
    });
    sup.accept(0, LIMIT).await;
    for (job, len) in [(1u64, 2000usize), (2, 1023)] {
        // 1023 bytes fit the limit, but not with the message's own encoding around them.
        sup.send(&start(job, &[(len / 256) as u8, (len % 256) as u8]))
            .await;
        assert_eq!(
            sup.recv("result").await,
            WorkerMessage::Failed {
                job: JobId(job),
                error: format!(
                    "output of {len} bytes exceeds the supervisor's frame limit of {LIMIT} bytes"
                ),
            }
        );
    }
    sup.send(&start(3, &[0, 10])).await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Completed {
            job: JobId(3),
            output: vec![b'x'; 10]
        }
    );
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}

#[tokio::test]
async fn long_error_is_cut_to_fit_the_frame_limit() {
    const LIMIT: u32 = 64;
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |_job| async {
        Err(JobError::msg("é".repeat(1000)))
    });
    sup.accept(0, LIMIT).await;
    sup.send(&start(1, b"")).await;
    match sup.recv("result").await {
        WorkerMessage::Failed { job, error } => {
            assert_eq!(job, JobId(1));
            assert!(
                !error.is_empty() && error.len() <= LIMIT as usize,
                "{} bytes",
                error.len()
            );
            assert!(error.chars().all(|c| c == 'é'));
        }
        other => panic!("expected failed, got {other:?}"),
    }
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}

/// A result bigger than the socket buffer: the serve task writes what the socket takes and the
/// writer thread the rest, with heartbeats queued meanwhile (a frame cut by another would not
/// decode). The next job's result follows it whole.
#[tokio::test]
async fn a_result_larger_than_the_socket_buffer_arrives_whole_between_heartbeats() {
    const BIG: usize = 900 * 1024;
    let (mut sup, channel) = pair();
    let (returning, mut returned) = mpsc::unbounded_channel::<()>();
    let serving = spawn_async(channel, move |job| {
        let returning = returning.clone();
        let size = if job.payload() == b"big" { BIG } else { 3 };
        async move {
            let _ = returning.send(());
            Ok(vec![0xa5; size])
        }
    });
    sup.accept(10, warden_protocol::DEFAULT_MAX_FRAME_LEN).await;
    sup.send(&start(1, b"big")).await;
    // Nothing is read until the handler has returned, so its result meets a full socket.
    within("the handler's return", returned.recv())
        .await
        .expect("returned");
    assert_eq!(
        sup.recv("the big result").await,
        WorkerMessage::Completed {
            job: JobId(1),
            output: vec![0xa5; BIG]
        }
    );
    sup.send(&start(2, b"small")).await;
    assert_eq!(
        sup.recv("the small result").await,
        WorkerMessage::Completed {
            job: JobId(2),
            output: vec![0xa5; 3]
        }
    );
    assert_eq!(sup.recv_any("a heartbeat").await, WorkerMessage::Heartbeat);
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}
