//! Supervisor protocol violations stop the SDK with a typed error.

use tokio::sync::mpsc;
use warden_protocol::{DEFAULT_MAX_FRAME_LEN, DecodeError, JobId, SupervisorMessage};
use warden_worker::{CancelCause, JobError, ProtocolError, ServeError};

use crate::support::*;

async fn violation(frames: &[&[u8]]) -> ServeError {
    let (mut sup, channel) = pair();
    let serving = spawn_async(channel, |_job| async { Ok(Vec::new()) });
    sup.accept(0, 4096).await;
    for frame in frames {
        sup.send_raw(frame).await;
    }
    finished(serving).await.unwrap_err()
}

fn frame(msg: &SupervisorMessage) -> Vec<u8> {
    warden_protocol::encode_frame(msg, u32::MAX).expect("encode")
}

#[tokio::test]
async fn second_hello_is_rejected() {
    let err = violation(&[&frame(&hello(0, DEFAULT_MAX_FRAME_LEN))]).await;
    assert!(
        matches!(
            err,
            ServeError::Protocol(ProtocolError::Unexpected { kind: "hello" })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn refuse_after_the_handshake_is_rejected() {
    let err = violation(&[&frame(&SupervisorMessage::Refuse {
        reason: "late".into(),
    })])
    .await;
    assert!(
        matches!(
            err,
            ServeError::Protocol(ProtocolError::Unexpected { kind: "refuse" })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_tag_is_rejected() {
    // Which DecodeError variant an unknown tag maps to is the protocol crate's business.
    let err = violation(&[&[1, 0, 0, 0, 9]]).await;
    assert!(
        matches!(err, ServeError::Protocol(ProtocolError::Decode(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn trailing_bytes_are_rejected() {
    let err = violation(&[&[2, 0, 0, 0, 3, 0]]).await;
    assert!(
        matches!(
            err,
            ServeError::Protocol(ProtocolError::Decode(DecodeError::TrailingBytes {
                extra: 1
            }))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn frame_over_the_negotiated_limit_is_rejected() {
    // The limit from the hello (4096) applies, not the default.
    let err = violation(&[&5000u32.to_le_bytes()]).await;
    assert!(
        matches!(
            err,
            ServeError::Protocol(ProtocolError::Decode(DecodeError::Oversized {
                len: 5000,
                max: 4096
            }))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn start_while_running_is_rejected_and_trips_the_token() {
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
    sup.send(&start(2, b"")).await;
    let err = finished(serving).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServeError::Protocol(ProtocolError::StartWhileRunning {
                running: JobId(1),
                started: JobId(2)
            })
        ),
        "{err:?}"
    );
    assert_eq!(
        within("cause", cause_rx.recv()).await,
        Some(Some(CancelCause::ChannelClosed))
    );
}
