//! The cases, each an `async fn(Ctx, Sdk)`; `main.rs` runs every one against every SDK. The
//! rule each checks is in its doc comment, with its section of PROTOCOL.md.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use warden::{
    CancelReason, CancellationToken, ExitStatus, Failure, JobOptions, Outcome, Stage, Worker,
    WorkerConfig,
};
use warden_protocol::{DEFAULT_MAX_FRAME_LEN, JobId, SupervisorMessage, WorkerMessage};

use crate::peer::{Peer, start};
use crate::sdks::Sdk;
use crate::support::{Ctx, LIMIT, ms, patient, run_job, shutdown, watch, within};

// ---------------------------------------------------------------------------------------------
// Under the real supervisor
// ---------------------------------------------------------------------------------------------

async fn spawn(t: &Ctx, sdk: &Sdk, config: WorkerConfig) -> Worker {
    let what = format!("{}: spawn and handshake", sdk.name);
    within(LIMIT, &what, Worker::spawn(&sdk.command(t), config))
        .await
        .unwrap_or_else(|e| panic!("{}: spawning failed: {e:?}", sdk.name))
}

/// Waits (bounded) for a progress report for which `want` holds. Progress reaches the callback
/// from a thread of the job's own, coalesced (latest wins), so it may follow the job's report;
/// a job's last report is always delivered.
async fn until(
    progress: &mut crate::support::Watch,
    what: &str,
    want: impl Fn(&warden::Progress) -> bool,
) -> warden::Progress {
    loop {
        let report = progress.next(what).await;
        if want(&report) {
            return report;
        }
    }
}

/// Shuts the worker down: it exits with status 0 (§5 rule 7).
async fn shutdown_exits_zero(sdk: &Sdk, worker: Worker) {
    assert_eq!(
        shutdown(worker).await,
        Some(ExitStatus::Code(0)),
        "{}: exit status after Shutdown",
        sdk.name
    );
}

/// Handshake, a job, its progress and its result (§4, §5); the worker runs a second job.
pub async fn echo_completes(t: Ctx, sdk: Sdk) {
    let worker = spawn(&t, &sdk, WorkerConfig::protocol().deadlines(patient())).await;
    for data in [&b"hi"[..], b"again"] {
        let (options, mut progress) = watch(JobOptions::new());
        let report = run_job(&worker, [&b"echo:"[..], data].concat(), options).await;
        assert_eq!(
            report.outcome,
            Outcome::Completed(data.to_vec()),
            "{}",
            sdk.name
        );
        assert_eq!(report.reason, None);
        until(
            &mut progress,
            &format!("{}: the job's progress report", sdk.name),
            |p| p.fraction == Some(0.5) && p.text.as_deref() == Some("echoing"),
        )
        .await;
    }
    shutdown_exits_zero(&sdk, worker).await;
}

/// A handler's own error answers `Failed` with its message; the worker lives on (§4).
pub async fn failed_carries_the_message(t: Ctx, sdk: Sdk) {
    let worker = spawn(&t, &sdk, WorkerConfig::protocol().deadlines(patient())).await;
    let report = run_job(&worker, b"fail:it broke".to_vec(), JobOptions::new()).await;
    assert_eq!(
        report.outcome,
        Outcome::Failed(Failure::Worker("it broke".into())),
        "{}",
        sdk.name
    );
    let report = run_job(&worker, b"echo:ok".to_vec(), JobOptions::new()).await;
    assert_eq!(
        report.outcome,
        Outcome::Completed(b"ok".to_vec()),
        "{}",
        sdk.name
    );
    shutdown_exits_zero(&sdk, worker).await;
}

/// The caller's cancel reaches the job's token; it answers `Cancelled` at the cooperative stage
/// and the worker runs the next job (§5 rule 5).
pub async fn cancelled_at_stage_one(t: Ctx, sdk: Sdk) {
    let worker = spawn(&t, &sdk, WorkerConfig::protocol().deadlines(patient())).await;
    let token = CancellationToken::new();
    let (options, mut progress) = watch(JobOptions::new().token(token.clone()));
    let (report, ()) = tokio::join!(run_job(&worker, b"wait".to_vec(), options), async {
        progress.ready().await;
        token.cancel();
    });
    assert_eq!(
        report.outcome,
        Outcome::Cancelled,
        "{}: {report:#?}",
        sdk.name
    );
    assert_eq!(report.stage, Some(Stage::Cooperative));
    assert_eq!(report.reason, Some(CancelReason::Requested));
    assert_eq!(report.exit, None, "{}: the worker lives on", sdk.name);
    until(
        &mut progress,
        &format!("{}: the job saw the reason", sdk.name),
        |p| p.text.as_deref() == Some("cancelled:requested"),
    )
    .await;
    let report = run_job(&worker, b"echo:next".to_vec(), JobOptions::new()).await;
    assert_eq!(report.outcome, Outcome::Completed(b"next".to_vec()));
    shutdown_exits_zero(&sdk, worker).await;
}

/// The job's timeout is a `Cancel { reason: Timeout }` (§4).
pub async fn timeout_cancels_cooperatively(t: Ctx, sdk: Sdk) {
    let worker = spawn(&t, &sdk, WorkerConfig::protocol().deadlines(patient())).await;
    let (options, mut progress) = watch(JobOptions::new().timeout(ms(300)));
    let report = run_job(&worker, b"wait".to_vec(), options).await;
    assert_eq!(
        report.outcome,
        Outcome::Cancelled,
        "{}: {report:#?}",
        sdk.name
    );
    assert_eq!(report.reason, Some(CancelReason::Timeout));
    assert_eq!(report.stage, Some(Stage::Cooperative));
    until(
        &mut progress,
        &format!("{}: the job saw the reason", sdk.name),
        |p| p.text.as_deref() == Some("cancelled:timeout"),
    )
    .await;
    shutdown_exits_zero(&sdk, worker).await;
}

/// `deadline_ms` becomes the job's deadline: at most the timeout, and not much less (§4).
pub async fn deadline_reaches_the_job(t: Ctx, sdk: Sdk) {
    let worker = spawn(&t, &sdk, WorkerConfig::protocol().deadlines(patient())).await;
    let timeout = Duration::from_secs(60);
    let report = run_job(
        &worker,
        b"deadline".to_vec(),
        JobOptions::new().timeout(timeout),
    )
    .await;
    let Outcome::Completed(out) = &report.outcome else {
        panic!("{}: {report:#?}", sdk.name);
    };
    let left: u64 = String::from_utf8_lossy(out).parse().expect("milliseconds");
    assert!(
        left <= 60_000 && left > 60_000 - LIMIT.as_millis() as u64,
        "{}: {left} ms left of 60 s",
        sdk.name
    );
    let report = run_job(&worker, b"deadline".to_vec(), JobOptions::new()).await;
    assert_eq!(
        report.outcome,
        Outcome::Completed(b"none".to_vec()),
        "{}",
        sdk.name
    );
    shutdown_exits_zero(&sdk, worker).await;
}

/// A handler that returns after its cancel answers `Completed`: the cancel came too late, and
/// the supervisor reports exactly that (§5, crossing cases).
pub async fn crossing_cancel_completes_despite_cancel(t: Ctx, sdk: Sdk) {
    let worker = spawn(&t, &sdk, WorkerConfig::protocol().deadlines(patient())).await;
    let token = CancellationToken::new();
    let (options, mut progress) = watch(JobOptions::new().token(token.clone()));
    let (report, ()) = tokio::join!(run_job(&worker, b"late".to_vec(), options), async {
        progress.ready().await;
        token.cancel();
    });
    assert_eq!(
        report.outcome,
        Outcome::CompletedDespiteCancel(b"late but done".to_vec()),
        "{}: {report:#?}",
        sdk.name
    );
    assert_eq!(report.reason, Some(CancelReason::Requested));
    shutdown_exits_zero(&sdk, worker).await;
}

/// A result over the announced frame limit is never sent as an oversized frame: it degrades to
/// `Failed`, and the connection survives (§2).
pub async fn output_over_the_frame_limit_fails(t: Ctx, sdk: Sdk) {
    let config = WorkerConfig::protocol()
        .deadlines(patient())
        .max_frame_len(1024);
    let worker = spawn(&t, &sdk, config).await;
    let report = run_job(&worker, b"output:2000".to_vec(), JobOptions::new()).await;
    assert_eq!(report.violation, None, "{}: {report:#?}", sdk.name);
    assert!(
        matches!(&report.outcome, Outcome::Failed(Failure::Worker(m)) if m.contains("2000")),
        "{}: {report:#?}",
        sdk.name
    );
    let report = run_job(&worker, b"output:1000".to_vec(), JobOptions::new()).await;
    assert_eq!(
        report.outcome,
        Outcome::Completed(vec![b'x'; 1000]),
        "{}",
        sdk.name
    );
    shutdown_exits_zero(&sdk, worker).await;
}

/// Issue 7's liveness check keeps a worker whose handler spins without looking at its job: the
/// heartbeats come from a thread of their own (§6).
pub async fn stays_live_under_unresponsive_after_while_spinning(t: Ctx, sdk: Sdk) {
    let config = WorkerConfig::protocol()
        .deadlines(patient())
        .unresponsive_after(ms(400));
    let worker = spawn(&t, &sdk, config).await;
    let report = run_job(&worker, b"spin:2000".to_vec(), JobOptions::new()).await;
    assert_eq!(
        report.outcome,
        Outcome::Completed(b"spun".to_vec()),
        "{}: {report:#?}",
        sdk.name
    );
    assert_eq!(report.reason, None);
    shutdown_exits_zero(&sdk, worker).await;
}

// ---------------------------------------------------------------------------------------------
// Under the hand-written supervisor
// ---------------------------------------------------------------------------------------------

/// Runs a synchronous case body off the runtime's threads.
async fn raw<F>(t: Ctx, sdk: Sdk, body: F)
where
    F: FnOnce(&Ctx, &Sdk) + Send + 'static,
{
    let task = tokio::task::spawn_blocking(move || body(&t, &sdk));
    if let Err(e) = task.await {
        std::panic::resume_unwind(e.into_panic());
    }
}

fn assert_exit_code(peer: &mut Peer, code: i32, what: &str) {
    let status = peer.wait_exit(what);
    assert_eq!(
        status.code(),
        Some(code),
        "{}: {what}: {status:?}",
        peer.sdk
    );
}

fn assert_exit_failure(peer: &mut Peer, what: &str) -> ExitStatusCode {
    let status = peer.wait_exit(what);
    assert!(
        status.code().is_some_and(|c| c != 0),
        "{}: {what}: expected a non-zero exit, got {status:?}",
        peer.sdk
    );
    ExitStatusCode(status.code().unwrap_or_default())
}

/// A non-zero exit status.
struct ExitStatusCode(i32);

/// The worker reads `WARDEN_FD` (not necessarily 3) and the stream is a byte stream: a hello
/// and a job delivered one byte at a time work (§1, §2).
pub async fn handshake_over_a_split_stream(t: Ctx, sdk: Sdk) {
    raw(t, sdk, |t, sdk| {
        let mut peer = Peer::spawn(t, sdk);
        peer.expect_hello();
        let mut bytes = warden_protocol::encode_frame(
            &SupervisorMessage::Hello {
                protocol_version: 1,
                supervisor_version: "split".into(),
                max_frame_len: DEFAULT_MAX_FRAME_LEN,
                heartbeat_interval_ms: 0,
            },
            u32::MAX,
        )
        .expect("encode");
        bytes.extend(
            warden_protocol::encode_frame(&start(7, b"echo:split"), u32::MAX).expect("encode"),
        );
        for byte in bytes {
            peer.send_bytes(&[byte]);
        }
        let (terminal, _) = peer.expect_terminal(7);
        assert_eq!(
            terminal,
            WorkerMessage::Completed {
                job: JobId(7),
                output: b"split".to_vec()
            },
            "{}",
            sdk.name
        );
        peer.send(&SupervisorMessage::Shutdown);
        peer.expect_eof("the end after Shutdown");
        assert_exit_code(&mut peer, 0, "after Shutdown");
    })
    .await;
}

/// A `Refuse` ends the worker with a non-zero status and nothing more sent (§5 rule 2).
pub async fn refusal_exits_non_zero(t: Ctx, sdk: Sdk) {
    raw(t, sdk, |t, sdk| {
        let mut peer = Peer::spawn(t, sdk);
        peer.expect_hello();
        peer.send(&SupervisorMessage::Refuse {
            reason: "conformance says no".into(),
        });
        // The channel stays open here: the refusal alone must end the worker.
        peer.expect_eof("the end after Refuse");
        assert_exit_failure(&mut peer, "after Refuse");
    })
    .await;
}

/// A hello with a protocol version the worker does not speak (one newer than it announced) ends
/// the worker, non-zero, with nothing sent (§7).
pub async fn other_version_exits_non_zero(t: Ctx, sdk: Sdk) {
    raw(t, sdk, |t, sdk| {
        let mut peer = Peer::spawn(t, sdk);
        peer.expect_hello();
        peer.send(&SupervisorMessage::Hello {
            protocol_version: peer.announced + 1,
            supervisor_version: "from the future".into(),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            heartbeat_interval_ms: 0,
        });
        peer.expect_eof("the end after a hello from a newer version");
        assert_exit_failure(&mut peer, "after a hello from a newer version");
    })
    .await;
}

/// A `Cancel` right behind its `StartJob` (one write) gets exactly one terminal message,
/// `Cancelled` (§5, cancel before start).
pub async fn cancel_before_start_answers_once(t: Ctx, sdk: Sdk) {
    raw(t, sdk, |t, sdk| {
        let mut peer = Peer::spawn(t, sdk);
        peer.handshake(DEFAULT_MAX_FRAME_LEN, 0);
        let mut both = warden_protocol::encode_frame(&start(1, b"wait"), u32::MAX).expect("encode");
        both.extend(
            warden_protocol::encode_frame(
                &SupervisorMessage::Cancel {
                    job: JobId(1),
                    reason: CancelReason::Requested,
                },
                u32::MAX,
            )
            .expect("encode"),
        );
        peer.send_bytes(&both);
        let (terminal, _) = peer.expect_terminal(1);
        assert_eq!(
            terminal,
            WorkerMessage::Cancelled { job: JobId(1) },
            "{}",
            sdk.name
        );
        peer.send(&SupervisorMessage::Shutdown);
        peer.expect_eof("the end after Shutdown (no second terminal message)");
        assert_exit_code(&mut peer, 0, "after Shutdown");
    })
    .await;
}

/// Version 2 (§5, "Queued jobs"): jobs sent while one runs wait and run in order; a `Cancel`
/// for a waiting job is answered `Cancelled` at once, ahead of the running job's result, and
/// the job never runs; `Shutdown` behind queued jobs runs them all first. An SDK that announces
/// version 1 is never sent a queued job: the case checks that it announced 1 and ends there.
pub async fn queued_jobs_run_in_order(t: Ctx, sdk: Sdk) {
    raw(t, sdk, |t, sdk| {
        let mut peer = Peer::spawn(t, sdk);
        peer.handshake(DEFAULT_MAX_FRAME_LEN, 0);
        if !warden_protocol::queues_jobs(peer.announced) {
            assert_eq!(peer.announced, 1, "{}", sdk.name);
            peer.send(&SupervisorMessage::Shutdown);
            peer.expect_eof("the end after Shutdown");
            assert_exit_code(&mut peer, 0, "after Shutdown");
            return;
        }
        let frame =
            |msg: &SupervisorMessage| warden_protocol::encode_frame(msg, u32::MAX).expect("encode");
        // One write: a job that waits for its cancel, then three behind it.
        let mut bytes = frame(&start(1, b"wait"));
        for (job, payload) in [(2, &b"echo:two"[..]), (3, b"echo:three"), (4, b"echo:four")] {
            bytes.extend(frame(&start(job, payload)));
        }
        peer.send_bytes(&bytes);
        peer.expect_ready(1);
        // Job 3 waits behind 1 and 2: its cancel is answered now, while 1 still runs.
        peer.send(&SupervisorMessage::Cancel {
            job: JobId(3),
            reason: CancelReason::Requested,
        });
        let (terminal, progress) = peer.expect_terminal(3);
        assert_eq!(
            terminal,
            WorkerMessage::Cancelled { job: JobId(3) },
            "{}",
            sdk.name
        );
        assert!(
            progress.is_empty(),
            "{}: job 3 never ran: {progress:?}",
            sdk.name
        );
        peer.send(&SupervisorMessage::Cancel {
            job: JobId(1),
            reason: CancelReason::Requested,
        });
        let (terminal, _) = peer.expect_terminal(1);
        assert_eq!(
            terminal,
            WorkerMessage::Cancelled { job: JobId(1) },
            "{}",
            sdk.name
        );
        let (terminal, _) = peer.expect_terminal(2);
        assert_eq!(
            terminal,
            WorkerMessage::Completed {
                job: JobId(2),
                output: b"two".to_vec()
            },
            "{}",
            sdk.name
        );
        // A stale cancel for job 3 (answered already) is ignored; Shutdown right behind job 5
        // runs 4 and 5 first.
        let mut bytes = frame(&SupervisorMessage::Cancel {
            job: JobId(3),
            reason: CancelReason::Timeout,
        });
        bytes.extend(frame(&start(5, b"echo:five")));
        bytes.extend(frame(&SupervisorMessage::Shutdown));
        peer.send_bytes(&bytes);
        for (job, output) in [(4, &b"four"[..]), (5, b"five")] {
            let (terminal, _) = peer.expect_terminal(job);
            assert_eq!(
                terminal,
                WorkerMessage::Completed {
                    job: JobId(job),
                    output: output.to_vec()
                },
                "{}",
                sdk.name
            );
        }
        peer.expect_eof("the end after Shutdown");
        assert_exit_code(&mut peer, 0, "after Shutdown");
    })
    .await;
}

/// A `Cancel` that crossed its job's result, one for a job never started, and a second one for
/// the running job are all ignored: one terminal message per job (§5 rule 5).
pub async fn stale_cancels_are_ignored(t: Ctx, sdk: Sdk) {
    raw(t, sdk, |t, sdk| {
        let mut peer = Peer::spawn(t, sdk);
        peer.handshake(DEFAULT_MAX_FRAME_LEN, 0);
        peer.start(1, b"echo:one");
        let (terminal, _) = peer.expect_terminal(1);
        assert_eq!(
            terminal,
            WorkerMessage::Completed {
                job: JobId(1),
                output: b"one".to_vec()
            }
        );
        let cancel = |job, reason| SupervisorMessage::Cancel {
            job: JobId(job),
            reason,
        };
        peer.send(&cancel(1, CancelReason::Timeout));
        peer.send(&cancel(99, CancelReason::Requested));
        peer.start(2, b"wait");
        peer.expect_ready(2);
        peer.send(&cancel(2, CancelReason::Shutdown));
        peer.send(&cancel(2, CancelReason::Requested));
        let (terminal, progress) = peer.expect_terminal(2);
        assert_eq!(
            terminal,
            WorkerMessage::Cancelled { job: JobId(2) },
            "{}",
            sdk.name
        );
        let texts: Vec<_> = progress
            .iter()
            .filter_map(|p| match p {
                WorkerMessage::Progress { text, .. } => text.clone(),
                _ => None,
            })
            .collect();
        assert_eq!(
            texts,
            ["cancelled:shutdown"],
            "{}: the first cancel's reason",
            sdk.name
        );
        peer.start(3, b"echo:three");
        let (terminal, _) = peer.expect_terminal(3);
        assert_eq!(
            terminal,
            WorkerMessage::Completed {
                job: JobId(3),
                output: b"three".to_vec()
            }
        );
        peer.send(&SupervisorMessage::Shutdown);
        peer.expect_eof("the end after Shutdown");
        assert_exit_code(&mut peer, 0, "after Shutdown");
    })
    .await;
}

/// Progress coalesces: a handler that reports 20,000 times in a loop gets far fewer frames
/// sent, in order, the last value always among them, all before the result (§4, §5 rule 4).
pub async fn progress_coalesces(t: Ctx, sdk: Sdk) {
    const N: usize = 20_000;
    raw(t, sdk, |t, sdk| {
        let mut peer = Peer::spawn(t, sdk);
        peer.handshake(DEFAULT_MAX_FRAME_LEN, 0);
        peer.start(1, format!("progress:{N}").as_bytes());
        let (terminal, progress) = peer.expect_terminal(1);
        assert_eq!(
            terminal,
            WorkerMessage::Completed {
                job: JobId(1),
                output: N.to_string().into_bytes()
            }
        );
        let reports: Vec<(Option<f32>, Option<String>)> = progress
            .into_iter()
            .map(|p| match p {
                WorkerMessage::Progress { fraction, text, .. } => (fraction, text),
                _ => unreachable!(),
            })
            .collect();
        assert!(
            reports.len() < N / 2,
            "{}: {} of {N} reports were sent: they do not coalesce",
            sdk.name,
            reports.len()
        );
        assert_eq!(
            reports.last(),
            Some(&(Some(1.0), Some("done".to_owned()))),
            "{}: the latest report is sent before the result",
            sdk.name
        );
        let fractions: Vec<f32> = reports.iter().filter_map(|r| r.0).collect();
        assert!(
            fractions.windows(2).all(|w| w[0] <= w[1]),
            "{}: in order",
            sdk.name
        );
        peer.send(&SupervisorMessage::Shutdown);
        peer.expect_eof("the end after Shutdown (no progress after the result)");
        assert_exit_code(&mut peer, 0, "after Shutdown");
    })
    .await;
}

/// Heartbeats keep coming while a handler spins without looking at its job, and none come
/// when the interval is 0 (§6).
pub async fn heartbeats_flow_while_the_handler_spins(t: Ctx, sdk: Sdk) {
    raw(t, sdk, |t, sdk| {
        for (interval_ms, spin_ms) in [(50u32, 1000u64), (0, 300)] {
            let mut peer = Peer::spawn(t, sdk);
            peer.handshake(DEFAULT_MAX_FRAME_LEN, interval_ms);
            peer.start(1, format!("spin:{spin_ms}").as_bytes());
            let started = Instant::now();
            let mut beats = 0u64;
            loop {
                match peer.recv_any("heartbeats and the spin's result") {
                    Some(WorkerMessage::Heartbeat) => beats += 1,
                    Some(WorkerMessage::Completed { output, .. }) => {
                        assert_eq!(output, b"spun");
                        break;
                    }
                    Some(WorkerMessage::Progress { .. }) => {}
                    other => panic!("{}: during the spin: {other:?}", sdk.name),
                }
            }
            let spun = started.elapsed();
            if interval_ms == 0 {
                assert_eq!(beats, 0, "{}: heartbeats with an interval of 0", sdk.name);
            } else {
                // 20 are due in a second; a quarter of them shows the thread was not starved.
                let due = spun.as_millis() as u64 / u64::from(interval_ms);
                assert!(
                    beats * 4 >= due && beats >= 4,
                    "{}: {beats} heartbeats in {spun:?} at a {interval_ms} ms interval",
                    sdk.name
                );
            }
            peer.send(&SupervisorMessage::Shutdown);
            peer.expect_eof("the end after Shutdown");
            assert_exit_code(&mut peer, 0, "after Shutdown");
        }
    })
    .await;
}

fn sigterm(peer: &Peer) {
    let pid = Pid::from_raw(i32::try_from(peer.pid()).expect("pid"));
    // Our own unreaped child: the pid is still its.
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
}

/// SIGTERM trips the running job's token (reason: the signal); once the job answered, the
/// worker exits 0 (§5 rule 10).
pub async fn sigterm_cancels_then_exits_zero(t: Ctx, sdk: Sdk) {
    raw(t, sdk, |t, sdk| {
        let mut peer = Peer::spawn(t, sdk);
        peer.handshake(DEFAULT_MAX_FRAME_LEN, 0);
        peer.start(1, b"wait");
        peer.expect_ready(1);
        sigterm(&peer);
        let (terminal, progress) = peer.expect_terminal(1);
        assert_eq!(
            terminal,
            WorkerMessage::Cancelled { job: JobId(1) },
            "{}",
            sdk.name
        );
        assert!(
            progress.iter().any(|p| matches!(p,
                WorkerMessage::Progress { text: Some(t), .. } if t == "cancelled:signal")),
            "{}: {progress:?}",
            sdk.name
        );
        peer.expect_eof("the end after the signal");
        assert_exit_code(&mut peer, 0, "after SIGTERM");
    })
    .await;
}

/// SIGTERM while idle: the worker exits 0 at once (§5 rule 10).
pub async fn sigterm_while_idle_exits_zero(t: Ctx, sdk: Sdk) {
    raw(t, sdk, |t, sdk| {
        let mut peer = Peer::spawn(t, sdk);
        peer.handshake(DEFAULT_MAX_FRAME_LEN, 0);
        sigterm(&peer);
        peer.expect_eof("the end after the signal");
        assert_exit_code(&mut peer, 0, "after SIGTERM while idle");
    })
    .await;
}

/// End-of-file from the supervisor while idle: the worker exits (§5 rule 8).
pub async fn eof_while_idle_exits(t: Ctx, sdk: Sdk) {
    raw(t, sdk, |t, sdk| {
        let mut peer = Peer::spawn(t, sdk);
        peer.handshake(DEFAULT_MAX_FRAME_LEN, 0);
        peer.close();
        let status = peer.wait_exit("exit after end-of-file while idle");
        assert!(status.code().is_some(), "{}: {status:?}", sdk.name);
    })
    .await;
}

/// End-of-file while a handler spins without looking at its job: the worker exits on its own
/// within a bounded time, whether or not the handler returns (§5 rule 8; both SDKs here allow
/// 1 s and exit with status 70).
pub async fn eof_with_a_busy_handler_exits_within_the_grace(t: Ctx, sdk: Sdk) {
    raw(t, sdk, |t, sdk| {
        let mut peer = Peer::spawn(t, sdk);
        peer.handshake(DEFAULT_MAX_FRAME_LEN, 50);
        peer.start(1, b"spin:600000");
        let closed = Instant::now();
        peer.close();
        let code = assert_exit_failure(&mut peer, "the orphan exit");
        assert_eq!(code.0, 70, "{}: the orphan exit status", sdk.name);
        let took = closed.elapsed();
        assert!(
            took >= ms(900) && took < LIMIT,
            "{}: exited {took:?} after end-of-file, the grace is 1 s",
            sdk.name
        );
    })
    .await;
}

/// A frame over the announced limit ends serving from its header alone: nothing more is sent
/// (not even a terminal message for the running job) and the worker exits non-zero (§2, §8).
pub async fn oversized_frames_from_the_supervisor_end_serving(t: Ctx, sdk: Sdk) {
    raw(t, sdk, |t, sdk| {
        for busy in [true, false] {
            let mut peer = Peer::spawn(t, sdk);
            peer.handshake(1024, 0);
            if busy {
                peer.start(1, b"wait");
                peer.expect_ready(1);
            }
            // A header and no body: only the limit check before reading the body can react.
            let declared: u32 = if busy { 1025 } else { u32::MAX };
            peer.send_bytes(&declared.to_le_bytes());
            peer.expect_eof("the end after an oversized header");
            assert_exit_failure(&mut peer, "after an oversized header");
        }
    })
    .await;
}

/// Every frame of `protocol/tests/golden.json`'s `invalid` list that a supervisor could send,
/// during a job: the worker sends nothing more and exits non-zero (§8).
pub async fn garbage_from_the_supervisor_ends_serving(t: Ctx, sdk: Sdk) {
    raw(t, sdk, |t, sdk| {
        let golden: serde_json::Value =
            serde_json::from_str(include_str!("../../../protocol/tests/golden.json"))
                .expect("golden.json");
        let cases: Vec<(String, Vec<u8>, u32)> = golden["invalid"]
            .as_array()
            .expect("invalid cases")
            .iter()
            .filter(|c| c["direction"] == "supervisor")
            .map(|c| {
                let hex = c["frame"].as_str().expect("frame");
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                    .collect();
                let limit =
                    u32::try_from(c["max_frame_len"].as_u64().expect("limit")).expect("u32");
                (c["name"].as_str().expect("name").to_owned(), bytes, limit)
            })
            .collect();
        assert!(cases.len() >= 10, "golden.json has its invalid cases");
        for (name, frame, limit) in cases {
            let mut peer = Peer::spawn(t, sdk);
            peer.handshake(limit.max(16), 0);
            peer.start(1, b"wait");
            peer.expect_ready(1);
            peer.send_bytes(&frame);
            peer.expect_eof(&format!("the end after {name}"));
            assert_exit_failure(&mut peer, &format!("after {name}"));
        }
    })
    .await;
}
