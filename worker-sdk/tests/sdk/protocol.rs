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

/// Protocol version 1: the supervisor queues nothing, so a second start is its violation (in
/// version 2 it is queued: `queued.rs`).
#[tokio::test]
async fn start_while_running_is_rejected_and_trips_the_token_in_version_1() {
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
    sup.accept_v1().await;
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

/// 2^50 as LEB128: seven zero groups with the continuation bit, then 2^1.
const TWO_POW_50: [u8; 8] = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02];

/// A frame around `body`, its header counting it.
fn raw_frame(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("a short body");
    [&len.to_le_bytes()[..], body].concat()
}

#[tokio::test]
async fn header_claiming_4_gib_is_rejected_on_the_header_alone() {
    // No body follows: the limit is checked before anything is buffered for it.
    let err = violation(&[&u32::MAX.to_le_bytes()]).await;
    assert!(
        matches!(
            err,
            ServeError::Protocol(ProtocolError::Decode(DecodeError::Oversized {
                len: u32::MAX,
                max: 4096
            }))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn payload_claiming_2_pow_50_bytes_is_truncated_without_allocating_it() {
    // StartJob (tag 1), job 1, then a payload length of 2^50 in a 15-byte body. Allocating by
    // the claim would abort this test binary.
    let body = [&[1, 1][..], &TWO_POW_50, &[1, 2, 3, 4, 5]].concat();
    assert_eq!(body.len(), 15);
    let err = violation(&[&raw_frame(&body)]).await;
    assert!(
        matches!(
            err,
            ServeError::Protocol(ProtocolError::Decode(DecodeError::Truncated))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn empty_frame_is_rejected() {
    let err = violation(&[&[0, 0, 0, 0]]).await;
    assert!(
        matches!(
            err,
            ServeError::Protocol(ProtocolError::Decode(DecodeError::Empty))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_cancel_reason_is_rejected() {
    // Cancel (tag 2) for job 1 with reason tag 9.
    let err = violation(&[&raw_frame(&[2, 1, 9])]).await;
    assert!(
        matches!(
            err,
            ServeError::Protocol(ProtocolError::Decode(DecodeError::UnknownTag))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_option_tag_is_malformed() {
    // StartJob for job 1, empty payload, then a deadline whose option tag is 2.
    let err = violation(&[&raw_frame(&[1, 1, 0, 2])]).await;
    assert!(
        matches!(
            err,
            ServeError::Protocol(ProtocolError::Decode(DecodeError::Malformed(_)))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_valid_start_behind_which_trails_a_byte_starts_nothing() {
    // The whole frame is rejected: the handler must never see a job from a frame that is not
    // exactly one message.
    let (mut sup, channel) = pair();
    let (started, mut started_rx) = mpsc::unbounded_channel();
    let serving = spawn_async(channel, move |job| {
        let _ = started.send(job.id());
        async { Ok(Vec::new()) }
    });
    sup.accept(0, 4096).await;
    let mut frame = frame(&start(1, b"payload"));
    frame.push(0);
    let len = u32::try_from(frame.len() - 4).expect("short");
    frame[..4].copy_from_slice(&len.to_le_bytes());
    sup.send_raw(&frame).await;
    let err = finished(serving).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServeError::Protocol(ProtocolError::Decode(DecodeError::TrailingBytes {
                extra: 1
            }))
        ),
        "{err:?}"
    );
    assert_eq!(started_rx.try_recv().ok(), None, "no job was started");
}
