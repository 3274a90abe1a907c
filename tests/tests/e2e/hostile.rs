//! A hostile channel (issue 8): every case of a worker abusing its channel, each checked for the
//! four things that matter when the worker is an untrusted plugin:
//!
//! 1. that worker is SIGKILLed at once, or, for a flood, the flood is absorbed;
//! 2. the reason is in its report (`JobReport::violation`, or the spawn error for the
//!    handshake);
//! 3. another worker of the same host, running a job at the same time, is unaffected: its job
//!    answers a cancel cooperatively and its next job completes;
//! 4. the supervisor's memory stays flat: this process's resident set grows by less than
//!    [`RSS_SLACK_KIB`] across the case, whatever the worker sends (200 MiB of progress or of
//!    a frame's body, 6.7 million heartbeats).
//!
//! Floods are not violations. Heartbeats and progress reports for the running job that have
//! already arrived are coalesced by the channel (the latest report wins, as in the SDK), and a
//! worker writing faster than the supervisor reads is held back by the socket buffer: nothing
//! is queued on its behalf, and it cannot starve other workers.
//!
//! Memory is measured one case at a time ([`MEASURE`]); other tests of the binary may run
//! meanwhile, which is what the slack absorbs.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use warden::{
    CancelReason, CancellationToken, ExitStatus, JobId, JobOptions, Outcome, Progress, SpawnError,
    Stage, Violation, WorkerConfig,
};
use warden_protocol::{DEFAULT_MAX_FRAME_LEN, DecodeError};
use warden_tests::{FLOOD_LAST, cancelled_text, mode};

use crate::protocol::violation;
use crate::support::*;

/// How much this process's resident set may grow during one case: a few MiB against floods of
/// 200 MiB, so a supervisor that buffered what it was sent would fail by two orders of magnitude.
const RSS_SLACK_KIB: i64 = 8 * 1024;

/// MiB sent by the progress flood and after a 4 GiB header.
const FLOOD_MIB: &str = "200";

/// MiB of heartbeats: 5 bytes each, so 6.7 million of them, which a supervisor that kept them
/// would need hundreds of MiB for. (200 MiB would be 42 million decodes: 15 s in a debug build
/// on this machine, too close to a wait's bound.)
const HEARTBEAT_FLOOD_MIB: &str = "32";

/// One memory measurement at a time: the resident set is the whole test process's.
static MEASURE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// This process's resident set, in KiB.
fn vm_rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line in /proc/self/status")
}

/// Runs `attack` (which spawns the hostile worker and checks its outcome) while a cooperative
/// bystander of the same host is in a job; then checks the bystander was unaffected and that
/// this process's resident set grew by less than [`RSS_SLACK_KIB`] over the attack.
async fn beside_a_bystander<T>(t: &Ctx, attack: impl Future<Output = T>) -> T {
    let _one_at_a_time = MEASURE.lock().await;
    let bystander = t
        .spawn(
            &[mode::COOPERATIVE],
            WorkerConfig::protocol().deadlines(patient()),
        )
        .await;
    let token = CancellationToken::new();
    let (options, mut progress) = watch(JobOptions::new().token(token.clone()));
    let (report, (value, before, after)) =
        tokio::join!(run_job(&bystander, WAIT, options), async {
            progress.ready().await;
            let before = vm_rss_kib();
            let value = attack.await;
            let after = vm_rss_kib();
            // The bystander's job was running all along; only now is it asked to stop.
            token.cancel();
            (value, before, after)
        });

    assert_eq!(report.outcome, Outcome::Cancelled, "{report:#?}");
    assert_eq!(report.reason, Some(CancelReason::Requested));
    assert_eq!(
        report.stage,
        Some(Stage::Cooperative),
        "the bystander answered the cancel message itself"
    );
    assert_eq!(report.violation, None);
    // Delivered off the worker's actor, so possibly just after the report.
    let cancelled = progress.next("the bystander's cancel report").await;
    assert_eq!(cancelled.text, Some(cancelled_text("requested")));
    assert!(progress.drain().is_empty(), "one report after ready");
    let next = run_job(&bystander, echo(b"unaffected"), JobOptions::new()).await;
    assert_eq!(next.outcome, Outcome::Completed(b"unaffected".to_vec()));
    assert_eq!(shutdown(bystander).await, Some(ExitStatus::Code(0)));

    let growth = after - before;
    eprintln!("resident set {before} KiB before the case, {after} KiB after");
    assert!(
        growth < RSS_SLACK_KIB,
        "resident set grew by {growth} KiB (from {before} to {after} KiB), limit {RSS_SLACK_KIB}"
    );
    value
}

/// A raw worker started with `args` breaks the protocol in a job, beside a bystander; returns
/// the violation its report names.
async fn violation_beside_a_bystander(t: &Ctx, args: &[&str], config: WorkerConfig) -> Violation {
    let report = beside_a_bystander(t, violation(t, args, config)).await;
    report.violation.expect("checked by `violation`")
}

#[test]
fn frame_over_the_limit() {
    e2e("hostile_frame_over_the_limit", |t| async move {
        let v =
            violation_beside_a_bystander(&t, &[mode::OVERSIZED], WorkerConfig::protocol()).await;
        assert_eq!(
            v,
            Violation::Frame(DecodeError::Oversized {
                len: DEFAULT_MAX_FRAME_LEN + 1,
                max: DEFAULT_MAX_FRAME_LEN,
            })
        );
    });
}

#[test]
fn header_claiming_4_gib_then_200_mib_of_body() {
    e2e(
        "hostile_header_claiming_4_gib_then_200_mib_of_body",
        |t| async move {
            let args = [mode::HUGE_LENGTH, FLOOD_MIB];
            let v = violation_beside_a_bystander(&t, &args, WorkerConfig::protocol()).await;
            assert_eq!(
                v,
                Violation::Frame(DecodeError::Oversized {
                    len: u32::MAX,
                    max: DEFAULT_MAX_FRAME_LEN,
                })
            );
        },
    );
}

#[test]
fn body_claiming_2_pow_50_bytes() {
    e2e("hostile_body_claiming_2_pow_50_bytes", |t| async move {
        let v =
            violation_beside_a_bystander(&t, &[mode::HUGE_CLAIM], WorkerConfig::protocol()).await;
        assert_eq!(v, Violation::Frame(DecodeError::Truncated));
    });
}

#[test]
fn trailing_bytes_after_a_result() {
    e2e("hostile_trailing_bytes_after_a_result", |t| async move {
        // A well-formed `Completed` for the job plus one byte: killed, never completed.
        let v = violation_beside_a_bystander(&t, &[mode::TRAILING_BYTES], WorkerConfig::protocol())
            .await;
        assert_eq!(v, Violation::Frame(DecodeError::TrailingBytes { extra: 1 }));
    });
}

#[test]
fn invalid_message_tag() {
    e2e("hostile_invalid_message_tag", |t| async move {
        let v = violation_beside_a_bystander(&t, &[mode::GARBAGE], WorkerConfig::protocol()).await;
        assert_eq!(v, Violation::Frame(DecodeError::UnknownTag));
    });
}

#[test]
fn trickling_a_frame_does_not_extend_the_frame_timeout() {
    e2e(
        "hostile_trickling_a_frame_does_not_extend_the_frame_timeout",
        |t| async move {
            // A byte every 20 ms: the 10,000-byte frame would take 200 s. Each byte arrives
            // well within the 300 ms frame timeout, which still counts from the first one.
            let mut config = WorkerConfig::protocol();
            config.frame_timeout = ms(300);
            let report =
                beside_a_bystander(&t, violation(&t, &[mode::TRICKLE, "20"], config)).await;
            assert_eq!(
                report.violation,
                Some(Violation::StalledFrame { timeout: ms(300) })
            );
            let kill = report.trace.kill_sent.expect("kill_sent");
            assert!(
                kill >= ms(300) && kill < ms(300) + SLACK,
                "{:?}",
                report.trace
            );
        },
    );
}

#[test]
fn flood_of_200_mib_of_progress_is_coalesced() {
    e2e(
        "hostile_flood_of_200_mib_of_progress_is_coalesced",
        |t| async move {
            let calls = Arc::new(AtomicU64::new(0));
            let (last_tx, mut last) = tokio::sync::watch::channel(None::<Progress>);
            let options = {
                let calls = Arc::clone(&calls);
                // Counts and keeps the latest: a callback that queued would measure itself.
                JobOptions::new().on_progress(move |p| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    last_tx.send_replace(Some(p));
                })
            };
            let config = WorkerConfig::protocol().deadlines(patient());
            let (report, status) = beside_a_bystander(&t, async {
                let worker = t.spawn(&[mode::PROGRESS_FLOOD, FLOOD_MIB], config).await;
                let report = run_job(&worker, b"x".to_vec(), options).await;
                (report, shutdown(worker).await)
            })
            .await;

            // Absorbed, not a violation: the result arrives and the worker leaves when asked.
            let Outcome::Completed(output) = &report.outcome else {
                panic!("{report:#?}");
            };
            assert_eq!(report.violation, None);
            assert_eq!(report.stage, None);
            assert_eq!(status, Some(ExitStatus::Code(0)));
            let sent: u64 = String::from_utf8_lossy(output).parse().expect("a count");
            assert!(sent > 50_000, "{sent} reports make 200 MiB");
            // The latest report always gets through, on the job's progress thread: possibly
            // just after the report.
            let last = within(
                LIMIT,
                "the flood's last report",
                last.wait_for(|p| p.as_ref().and_then(|p| p.text.as_deref()) == Some(FLOOD_LAST)),
            )
            .await
            .expect("the progress callback is alive")
            .clone()
            .expect("a report");
            let calls = calls.load(Ordering::Relaxed);
            eprintln!(
                "{sent} reports sent in {:?}, {calls} delivered to the callback",
                report.trace.ended
            );
            assert!(
                (1..=sent).contains(&calls),
                "{calls} calls for {sent} reports"
            );
            assert_eq!(last.job, JobId(1));
            assert_eq!(last.fraction, Some(1.0));
            assert_eq!(last.text.as_deref(), Some(FLOOD_LAST));
        },
    );
}

#[test]
fn flood_of_heartbeats_is_absorbed() {
    e2e("hostile_flood_of_heartbeats_is_absorbed", |t| async move {
        let config = WorkerConfig::protocol().deadlines(patient());
        let (report, status) = beside_a_bystander(&t, async {
            let worker = t
                .spawn(&[mode::HEARTBEAT_FLOOD, HEARTBEAT_FLOOD_MIB], config)
                .await;
            let report = run_job(&worker, b"x".to_vec(), JobOptions::new()).await;
            (report, shutdown(worker).await)
        })
        .await;
        let Outcome::Completed(output) = &report.outcome else {
            panic!("{report:#?}");
        };
        let beats: u64 = String::from_utf8_lossy(output).parse().expect("a count");
        eprintln!("{beats} heartbeats in {:?}", report.trace.ended);
        assert!(beats > 6_000_000, "{beats} heartbeats make 32 MiB");
        assert_eq!(report.violation, None);
        assert_eq!(status, Some(ExitStatus::Code(0)));
    });
}

#[test]
fn result_for_another_job() {
    e2e("hostile_result_for_another_job", |t| async move {
        let v =
            violation_beside_a_bystander(&t, &[mode::UNKNOWN_JOB], WorkerConfig::protocol()).await;
        assert_eq!(
            v,
            Violation::NotRunning {
                kind: "completed",
                job: JobId(1001),
            }
        );
    });
}

#[test]
fn message_before_the_handshake() {
    e2e("hostile_message_before_the_handshake", |t| async move {
        let pid = beside_a_bystander(&t, async {
            let result = t
                .try_spawn(&[mode::HEARTBEAT_BEFORE_HELLO], WorkerConfig::protocol())
                .await;
            match result {
                Err(SpawnError::Protocol {
                    pid,
                    violation: Violation::BeforeHello { kind: "heartbeat" },
                }) => pid,
                other => panic!("expected a protocol error, got {other:?}"),
            }
        })
        .await;
        assert!(
            !t.is_unreaped(pid),
            "killed and reaped before spawn returned"
        );
    });
}

#[test]
fn second_handshake() {
    e2e("hostile_second_handshake", |t| async move {
        let v =
            violation_beside_a_bystander(&t, &[mode::SECOND_HELLO], WorkerConfig::protocol()).await;
        assert_eq!(v, Violation::RepeatedHello);
    });
}
