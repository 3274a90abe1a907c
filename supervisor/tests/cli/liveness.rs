//! `warden run --protocol --unresponsive-after`: a worker that stops itself mid-job, and one
//! that never sends heartbeats, are reported `unresponsive` within a few seconds, with the
//! exit status of the stage reached.
//!
//! One-sided: neither worker can ever answer, so only the deadlines decide; the tests bound
//! how late the end may come.

use std::time::Duration;

use serde_json::Value;

use crate::fixture::ROLE_VAR;
use crate::support::{Ended, Proc, TempDir, WARDEN, command, fixture_argv, new_mark};

/// Runs `warden run --protocol --report FILE --unresponsive-after 1s OPTIONS -- PROGRAM` with
/// the fixture `role` as PROGRAM (through `sh -c 'exec <&3 ...'` for a raw role, whose
/// channel is its stdin); returns how it ended and the report.
fn run_unresponsive(options: &[&str], role: &str) -> (Ended, Duration, Value, String) {
    let dir = TempDir::new();
    let report_path = dir.0.join("report.json").to_string_lossy().into_owned();
    let (exe, fixture_args) = fixture_argv();
    let mut args = vec![
        "run",
        "--protocol",
        "--report",
        &report_path,
        "--unresponsive-after",
        "1s",
    ];
    args.extend_from_slice(options);
    args.push("--");
    if role.starts_with("raw:") {
        args.extend(["sh", "-c", "exec <&3 \"$0\" \"$@\""]);
    }
    args.push(&exe);
    args.extend(fixture_args);
    let mark = new_mark();
    let mut cmd = command(WARDEN, &args, &mark);
    cmd.env(ROLE_VAR, role);
    let done = Proc::start(&format!("run {options:?} {role}"), cmd, &mark).finish();
    let text = std::fs::read_to_string(&report_path)
        .unwrap_or_else(|e| panic!("no report ({e}); stderr: {}", done.stderr));
    let report: Value = serde_json::from_str(&text).expect("report is JSON");
    (done.ended, done.elapsed, report, done.stderr)
}

fn check(role: &str, options: &[&str], outcome: &str, stage: &str, status: i32) {
    let (ended, elapsed, r, stderr) = run_unresponsive(options, role);
    assert_eq!(ended, Ended::Code(status), "{role}: {r} {stderr}");
    assert_eq!(r["reason"], "unresponsive", "{role}: {r}");
    assert_eq!(r["outcome"], outcome, "{role}: {r}");
    assert_eq!(r["stage"], stage, "{role}: {r}");
    let cancel = r["timings_us"]["cancel_requested"]
        .as_u64()
        .expect("a cancel");
    let started = r["timings_us"]["started"].as_u64().expect("started");
    // The bound counts from the worker's last frame, which may be its hello, a moment before
    // the job started (the handshake precedes the start): never before 1 s from then.
    assert!(cancel >= 1_000_000, "cancelled before the bound: {r}");
    assert!(
        cancel + 50_000 >= started + 1_000_000,
        "cancelled well before the bound: {r}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "{role}: took {elapsed:?}"
    );
}

#[test]
fn a_worker_that_never_heartbeats_is_unresponsive() {
    // It never answers the cancel; the polite signal ends it.
    check(
        "raw:never-heartbeats",
        &["--grace", "0.2"],
        "terminated",
        "signal",
        124,
    );
}

#[test]
fn a_worker_that_stops_itself_is_unresponsive_and_sigcont_follows_the_signal() {
    check(
        "worker:sigstop-self",
        &["--grace", "0.2"],
        "terminated",
        "signal",
        124,
    );
}

#[test]
fn an_unresponsive_worker_that_outlives_the_signal_is_killed_with_137() {
    // A polite signal that does not end it (SIGTSTP: the SIGCONT after it cancels the stop,
    // and it ignores the cancel) leaves it to SIGKILL.
    check(
        "worker:sigstop-self",
        &["--grace", "0.1", "--signal", "TSTP", "--kill-after", "0.2"],
        "killed",
        "kill",
        137,
    );
}
