//! The hello exchange.

use std::time::Duration;

use warden_protocol::{
    DEFAULT_MAX_FRAME_LEN, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, SupervisorMessage, WorkerMessage,
};
use warden_worker::{ConnectError, ServeError};

use crate::support::*;

#[tokio::test]
async fn hello_then_shutdown_returns_ok() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |_job| async { Ok(Vec::new()) });
    match sup.recv_any("worker hello").await {
        WorkerMessage::Hello {
            protocol_version,
            pid,
            sdk_version,
        } => {
            assert_eq!(protocol_version, PROTOCOL_VERSION);
            assert_eq!(pid, std::process::id());
            assert_eq!(
                sdk_version,
                concat!("warden-worker ", env!("CARGO_PKG_VERSION"))
            );
        }
        other => panic!("expected hello, got {other:?}"),
    }
    sup.send(&hello(0, DEFAULT_MAX_FRAME_LEN)).await;
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving)
        .await
        .expect("serve returns Ok after shutdown");
    sup.expect_eof("worker to close after shutdown").await;
}

#[tokio::test]
async fn version_mismatch_is_a_typed_error() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |_job| async { Ok(Vec::new()) });
    let _ = sup.recv_any("worker hello").await;
    sup.send(&SupervisorMessage::Hello {
        protocol_version: PROTOCOL_VERSION + 1,
        supervisor_version: "future".into(),
        max_frame_len: DEFAULT_MAX_FRAME_LEN,
        heartbeat_interval_ms: 0,
    })
    .await;
    let err = finished(serving).await.unwrap_err();
    match err {
        ServeError::Connect(ConnectError::Version(e)) => {
            assert_eq!(e.peer, PROTOCOL_VERSION + 1);
            assert_eq!(e.ours, PROTOCOL_VERSION);
        }
        other => panic!("expected a version error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_version_the_sdk_no_longer_speaks_is_a_typed_error() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |_job| async { Ok(Vec::new()) });
    sup.accept_version(MIN_PROTOCOL_VERSION - 1, 0, DEFAULT_MAX_FRAME_LEN)
        .await;
    match finished(serving).await.unwrap_err() {
        ServeError::Connect(ConnectError::Version(e)) => {
            assert_eq!(e.peer, MIN_PROTOCOL_VERSION - 1);
        }
        other => panic!("expected a version error, got {other:?}"),
    }
}

/// An older supervisor answers the worker's hello with version 1: the SDK speaks it (jobs one
/// by one, as `queued.rs` checks for a second start).
#[tokio::test]
async fn a_version_1_supervisor_is_served() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |job| async move { Ok(job.payload().to_vec()) });
    sup.accept_v1().await;
    for job in 1..=2 {
        sup.send(&start(job, b"v1")).await;
        assert_eq!(
            sup.recv("result").await,
            WorkerMessage::Completed {
                job: warden_protocol::JobId(job),
                output: b"v1".to_vec()
            }
        );
    }
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}

#[tokio::test]
async fn refuse_carries_the_reason() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |_job| async { Ok(Vec::new()) });
    let _ = sup.recv_any("worker hello").await;
    sup.send(&SupervisorMessage::Refuse {
        reason: "too old".into(),
    })
    .await;
    sup.close();
    match finished(serving).await.unwrap_err() {
        ServeError::Connect(ConnectError::Refused { reason }) => assert_eq!(reason, "too old"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn silent_supervisor_times_out() {
    let (mut sup, channel) = pair();
    let serving = tokio::spawn(
        worker(channel)
            .handshake_timeout(Duration::from_millis(50))
            .serve_async(|_job| async { Ok(Vec::new()) }),
    );
    let _ = sup.recv_any("worker hello").await;
    match finished(serving).await.unwrap_err() {
        ServeError::Connect(ConnectError::Timeout { timeout }) => {
            assert_eq!(timeout, Duration::from_millis(50));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn close_during_handshake_is_a_typed_error() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |_job| async { Ok(Vec::new()) });
    let _ = sup.recv_any("worker hello").await;
    sup.close();
    let err = finished(serving).await.unwrap_err();
    assert!(
        matches!(err, ServeError::Connect(ConnectError::Closed)),
        "{err:?}"
    );
}

#[tokio::test]
async fn message_other_than_hello_is_rejected() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |_job| async { Ok(Vec::new()) });
    let _ = sup.recv_any("worker hello").await;
    sup.send(&start(1, b"")).await;
    let err = finished(serving).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServeError::Connect(ConnectError::Unexpected { kind: "start-job" })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn oversized_hello_frame_is_rejected_before_buffering() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |_job| async { Ok(Vec::new()) });
    let _ = sup.recv_any("worker hello").await;
    sup.send_raw(&u32::MAX.to_le_bytes()).await;
    let err = finished(serving).await.unwrap_err();
    assert!(
        matches!(err, ServeError::Connect(ConnectError::Decode(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn tiny_frame_limit_is_rejected() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |_job| async { Ok(Vec::new()) });
    sup.accept(0, 8).await;
    let err = finished(serving).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServeError::Connect(ConnectError::FrameLimitTooSmall { max: 8, .. })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn start_job_in_the_same_write_as_hello_is_served() {
    // The handshake must not swallow bytes that follow the supervisor's hello.
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |job| async move { Ok(job.payload().to_vec()) });
    let _ = sup.recv_any("worker hello").await;
    let mut bytes = warden_protocol::encode_frame(&hello(0, 4096), u32::MAX).expect("encode");
    bytes.extend(warden_protocol::encode_frame(&start(1, b"x"), u32::MAX).expect("encode"));
    bytes.extend(
        warden_protocol::encode_frame(&SupervisorMessage::Shutdown, u32::MAX).expect("encode"),
    );
    sup.send_raw(&bytes).await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Completed {
            job: warden_protocol::JobId(1),
            output: b"x".to_vec()
        }
    );
    finished(serving).await.expect("ok after shutdown");
}

#[tokio::test]
async fn hello_claiming_a_2_pow_50_byte_version_string_is_truncated() {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |_job| async { Ok(Vec::new()) });
    let _ = sup.recv_any("worker hello").await;
    // Hello (tag 0), protocol version 1, then a supervisor_version length of 2^50.
    let body = [0, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02, b'w'];
    let len = u32::try_from(body.len()).expect("short");
    sup.send_raw(&[&len.to_le_bytes()[..], &body].concat())
        .await;
    let err = finished(serving).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServeError::Connect(ConnectError::Decode(
                warden_protocol::DecodeError::Truncated
            ))
        ),
        "{err:?}"
    );
}
