//! Heartbeats come from a thread of the SDK's own, so a handler that hogs the CPU cannot stop
//! them: real worker processes (this binary, see `process`) whose handler spins without ever
//! yielding. Gaps are measured as a ratio of the interval, with a wide bound.

use std::time::{Duration, Instant};

use warden_protocol::{
    CancelReason, DEFAULT_MAX_FRAME_LEN, JobId, SupervisorMessage, WorkerMessage,
};
use warden_worker::ORPHAN_EXIT_CODE;

use crate::process::{Child, EXIT_WRITER_LEFT, spawn};
use crate::support::*;

const INTERVAL_MS: u32 = 50;
/// The largest gap allowed between two heartbeats, in intervals. Generous: the machine has two
/// cores and other builds run beside the tests; a starved serve task would show gaps as long as
/// the whole spin (30 intervals and more).
const MAX_GAP_RATIO: f64 = 5.0;

fn interval() -> Duration {
    Duration::from_millis(u64::from(INTERVAL_MS))
}

/// A start whose handler spins for `ms` (or until cancelled).
fn spin_for(ms: u64) -> SupervisorMessage {
    start(1, &ms.to_le_bytes())
}

/// Receives heartbeats until `done` says a message ends the wait; returns that message and the
/// arrival times: `since`, each heartbeat, and that last message.
async fn heartbeats_until(
    child: &mut Child,
    since: Instant,
    what: &str,
    mut done: impl FnMut(&WorkerMessage, usize) -> bool,
) -> (WorkerMessage, Vec<Instant>) {
    let mut arrivals = vec![since];
    loop {
        let msg = child.sup.recv_any(what).await;
        if done(&msg, arrivals.len() - 1) {
            // The last gap ends with this message, whatever it is.
            arrivals.push(Instant::now());
            return (msg, arrivals);
        }
        match msg {
            WorkerMessage::Heartbeat => arrivals.push(Instant::now()),
            WorkerMessage::Progress { .. } => {}
            other => panic!("unexpected {other:?} while waiting for {what}"),
        }
    }
}

/// The largest gap between consecutive arrivals, in intervals.
fn max_gap_ratio(arrivals: &[Instant]) -> f64 {
    arrivals
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() / interval().as_secs_f64())
        .fold(0.0, f64::max)
}

async fn shutdown_and_exit_zero(mut child: Child) {
    child.sup.send(&SupervisorMessage::Shutdown).await;
    let status = child.exit_status("worker exit after shutdown").await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn heartbeats_flow_while_an_async_handler_never_yields() {
    // The handler spins on a current-thread runtime: the serve task cannot run until it ends.
    const SPIN_MS: u64 = 1_500;
    let mut child = spawn("spin-async", true);
    child.sup.accept(INTERVAL_MS, DEFAULT_MAX_FRAME_LEN).await;
    child.sup.send(&spin_for(SPIN_MS)).await;
    let started = Instant::now();
    let (result, arrivals) = heartbeats_until(
        &mut child,
        started,
        "heartbeats, then the spinning job's result",
        |msg, _| {
            matches!(
                msg,
                WorkerMessage::Completed { .. } | WorkerMessage::Failed { .. }
            )
        },
    )
    .await;
    let spun = started.elapsed();
    assert_eq!(
        result,
        WorkerMessage::Completed {
            job: JobId(1),
            output: b"spun".to_vec()
        }
    );
    assert!(
        spun >= Duration::from_millis(SPIN_MS),
        "the handler spun {spun:?}"
    );
    let ratio = max_gap_ratio(&arrivals);
    let beats = arrivals.len() - 2;
    eprintln!("async spin: {beats} heartbeats in {spun:?}, max gap {ratio:.2} intervals");
    assert!(
        ratio < MAX_GAP_RATIO,
        "max gap {ratio:.2} intervals (bound {MAX_GAP_RATIO}) over {beats} heartbeats"
    );
    // Half the heartbeats due during the spin, at least.
    let due = SPIN_MS / u64::from(INTERVAL_MS);
    assert!(beats as u64 >= due / 2, "{beats} heartbeats, {due} due");
    shutdown_and_exit_zero(child).await;
}

#[tokio::test]
async fn heartbeats_flow_while_a_blocking_handler_spins() {
    const BEATS: usize = 20;
    let mut child = spawn("spin-blocking", true);
    child.sup.accept(INTERVAL_MS, DEFAULT_MAX_FRAME_LEN).await;
    // Spins until cancelled; the bound is only a safety net.
    child
        .sup
        .send(&spin_for(LIMIT.as_millis() as u64 * 3))
        .await;
    let started = Instant::now();
    let (_, arrivals) = heartbeats_until(
        &mut child,
        started,
        "heartbeats while the blocking handler spins",
        |msg, beats| *msg == WorkerMessage::Heartbeat && beats + 1 == BEATS,
    )
    .await;
    let ratio = max_gap_ratio(&arrivals);
    eprintln!(
        "blocking spin: {} heartbeats in {:?}, max gap {ratio:.2} intervals",
        arrivals.len() - 1,
        started.elapsed()
    );
    assert!(
        ratio < MAX_GAP_RATIO,
        "max gap {ratio:.2} intervals (bound {MAX_GAP_RATIO})"
    );
    // The serve task is not starved here: the cancel reaches the spinning handler.
    child
        .sup
        .send(&SupervisorMessage::Cancel {
            job: JobId(1),
            reason: CancelReason::Unresponsive,
        })
        .await;
    assert_eq!(
        child.sup.recv("the cancelled result").await,
        WorkerMessage::Cancelled { job: JobId(1) }
    );
    shutdown_and_exit_zero(child).await;
}

#[tokio::test]
async fn starved_worker_still_exits_when_the_supervisor_goes_away() {
    // The serve task never sees EOF while the handler spins; the writer thread's next heartbeat
    // meets EPIPE (not SIGPIPE), trips the orphan grace (100 ms in this mode), and exits.
    let mut child = spawn("spin-async", true);
    child.sup.accept(INTERVAL_MS, DEFAULT_MAX_FRAME_LEN).await;
    child
        .sup
        .send(&spin_for(LIMIT.as_millis() as u64 * 3))
        .await;
    assert_eq!(
        child.sup.recv_any("a heartbeat during the spin").await,
        WorkerMessage::Heartbeat
    );
    let status = child
        .close_and_exit_status("orphan exit of a starved worker")
        .await;
    assert_eq!(status.code(), Some(ORPHAN_EXIT_CODE), "{status:?}");
}

#[tokio::test]
async fn writer_thread_ends_when_serving_returns() {
    let mut child = spawn("writer-ends", true);
    child.sup.accept(INTERVAL_MS, DEFAULT_MAX_FRAME_LEN).await;
    assert_eq!(
        child.sup.recv_any("a heartbeat").await,
        WorkerMessage::Heartbeat
    );
    child.sup.send(&SupervisorMessage::Shutdown).await;
    child.sup.expect_eof("worker to close after shutdown").await;
    let status = child.exit_status("worker exit after shutdown").await;
    assert_ne!(
        status.code(),
        Some(EXIT_WRITER_LEFT),
        "the writer thread outlived serve"
    );
    assert_eq!(status.code(), Some(0), "{status:?}");
}
