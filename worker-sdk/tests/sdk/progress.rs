//! Progress reports on the wire.

use tokio::sync::mpsc;
use warden_protocol::{JobId, MAX_PROGRESS_TEXT, SupervisorMessage, WorkerMessage};
use warden_worker::Progress;

use crate::support::*;

#[tokio::test]
async fn reports_coalesce_and_text_is_truncated() {
    let (mut sup, channel) = pair();
    // On this single-threaded runtime the handler runs to completion before the serve loop polls
    // again, so every report made here is pending at once and must arrive as one message, ahead
    // of the result.
    let serving = spawn_async(channel, |job| async move {
        for i in 0..=100u8 {
            job.progress().set_fraction(f32::from(i) / 100.0);
        }
        job.progress().set_fraction(f32::NAN);
        job.progress().set_text(&"é".repeat(MAX_PROGRESS_TEXT));
        Ok(b"done".to_vec())
    });
    sup.accept_default().await;
    sup.send(&start(1, b"")).await;
    assert_eq!(
        sup.recv("coalesced progress").await,
        WorkerMessage::Progress {
            job: JobId(1),
            fraction: Some(1.0),
            text: Some("é".repeat(MAX_PROGRESS_TEXT / 2)),
        }
    );
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Completed {
            job: JobId(1),
            output: b"done".to_vec()
        }
    );
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}

#[tokio::test]
async fn no_progress_after_the_result() {
    let (mut sup, channel) = pair();
    let (keep, mut kept) = mpsc::unbounded_channel::<Progress>();
    let serving = spawn_async(channel, move |job| {
        let _ = keep.send(job.progress().clone());
        async { Ok(Vec::new()) }
    });
    sup.accept_default().await;
    sup.send(&start(1, b"")).await;
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Completed {
            job: JobId(1),
            output: vec![]
        }
    );
    let late = within("the kept progress handle", kept.recv())
        .await
        .expect("handle");
    late.set_text("too late");
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
    // Nothing but heartbeats may come before EOF.
    sup.expect_eof("worker to close").await;
}

#[tokio::test]
async fn progress_flows_while_the_job_runs() {
    let (mut sup, channel) = pair();
    let (go, go_rx) = mpsc::unbounded_channel::<()>();
    let go_rx = std::sync::Arc::new(tokio::sync::Mutex::new(go_rx));
    let serving = spawn_async(channel, move |job| {
        let go_rx = std::sync::Arc::clone(&go_rx);
        async move {
            let mut go_rx = go_rx.lock().await;
            for step in 1..=3u8 {
                job.progress()
                    .report(Some(f32::from(step) / 4.0), Some(&format!("step {step}")));
                go_rx.recv().await;
            }
            Ok(Vec::new())
        }
    });
    sup.accept_default().await;
    sup.send(&start(1, b"")).await;
    for step in 1..=3u8 {
        assert_eq!(
            sup.recv("progress").await,
            WorkerMessage::Progress {
                job: JobId(1),
                fraction: Some(f32::from(step) / 4.0),
                text: Some(format!("step {step}")),
            }
        );
        go.send(()).expect("handler waiting");
    }
    assert_eq!(
        sup.recv("result").await,
        WorkerMessage::Completed {
            job: JobId(1),
            output: vec![]
        }
    );
    sup.send(&SupervisorMessage::Shutdown).await;
    finished(serving).await.expect("ok");
}
