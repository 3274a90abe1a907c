//! Heartbeats, shutdown and the channel closing.

use tokio::sync::{mpsc, oneshot};
use warden_protocol::{CancelReason, JobId, SupervisorMessage, WorkerMessage};
use warden_worker::{CancelCause, JobError, ServeError};

use crate::support::*;

#[tokio::test]
async fn heartbeats_arrive_at_the_interval() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |_job| async { Ok(Vec::new()) });
    sup.accept(10, 4096).await;
    for _ in 0..3 {
        assert_eq!(sup.recv_any("heartbeat").await, WorkerMessage::Heartbeat);
    }
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}

#[tokio::test]
async fn shutdown_while_running_finishes_the_job_first() {
    let (mut sup, channel) = pair();
    let (release, released) = oneshot::channel::<()>();
    let released = std::sync::Mutex::new(Some(released));
    let serving = spawn_async(channel, move |job| {
        let released = released.lock().expect("lock").take();
        async move {
            job.progress().set_text("started");
            if let Some(released) = released {
                let _ = released.await;
            }
            // Shutdown is not a cancel.
            assert!(!job.is_cancelled());
            Ok(b"last".to_vec())
        }
    });
    sup.accept_default().await;
    sup.send(&start(1, b"")).await;
    let _ = sup.recv("progress").await;
    sup.send(&SupervisorMessage::Shutdown).await;
    // Serving must not end while the job runs.
    let mut serving = serving;
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(20), &mut serving)
            .await
            .is_err(),
        "serve returned before the job finished"
    );
    release.send(()).expect("handler waiting");
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Completed {
            job: JobId(1),
            output: b"last".to_vec()
        }
    );
    finished(serving).await.expect("ok after the result");
    sup.expect_eof("worker to close").await;
}

#[tokio::test]
async fn shutdown_then_start_is_a_protocol_error() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |_job| async { Ok(Vec::new()) });
    sup.accept_default().await;
    let mut bytes = Vec::new();
    for msg in [SupervisorMessage::Shutdown, start(1, b"")] {
        bytes.extend(warden_protocol::encode_frame(&msg, u32::MAX).expect("encode"));
    }
    sup.send_raw(&bytes).await;
    let err = finished(serving).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServeError::Protocol(warden_worker::ProtocolError::StartAfterShutdown {
                started: JobId(1)
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn eof_trips_the_running_token() {
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
    sup.send(&start(1, b"")).await;
    let _ = sup.recv("progress").await;
    sup.close();
    assert_eq!(
        within("cause", cause_rx.recv()).await,
        Some(Some(CancelCause::ChannelClosed))
    );
    let err = finished(serving).await.unwrap_err();
    assert!(matches!(err, ServeError::Disconnected), "{err:?}");
}

#[tokio::test]
async fn eof_while_idle_is_disconnected() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |_job| async { Ok(Vec::new()) });
    sup.accept_default().await;
    sup.close();
    let err = finished(serving).await.unwrap_err();
    assert!(matches!(err, ServeError::Disconnected), "{err:?}");
}

#[tokio::test]
async fn dropping_serve_trips_the_running_token() {
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
    sup.send(&start(1, b"")).await;
    let _ = sup.recv("progress").await;
    serving.abort();
    assert_eq!(
        within("cause", cause_rx.recv()).await,
        Some(Some(CancelCause::ChannelClosed))
    );
}

#[tokio::test]
async fn cancel_then_shutdown_answers_cancelled_then_stops() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |job| async move {
        job.progress().set_text("started");
        job.cancelled().await;
        Err(JobError::Cancelled)
    });
    sup.accept_default().await;
    sup.send(&start(4, b"")).await;
    let _ = sup.recv("progress").await;
    let mut bytes = Vec::new();
    for msg in [
        SupervisorMessage::Cancel {
            job: JobId(4),
            reason: CancelReason::Shutdown,
        },
        SupervisorMessage::Shutdown,
    ] {
        bytes.extend(warden_protocol::encode_frame(&msg, u32::MAX).expect("encode"));
    }
    sup.send_raw(&bytes).await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Cancelled { job: JobId(4) }
    );
    finished(serving).await.expect("ok");
    sup.expect_eof("worker to close").await;
}
