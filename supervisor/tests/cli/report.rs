//! `warden run`: exit statuses and the JSON report, for plain programs and SDK workers.

use std::time::Duration;

use serde_json::Value;

use crate::fixture::ROLE_VAR;
use crate::support::{
    Ended, ExecFailures, Finished, Proc, TempDir, WARDEN, command, fixture_argv, new_mark,
};

const REQUIRED: [&str; 8] = [
    "outcome",
    "reason",
    "stage",
    "exit_code",
    "signal",
    "containment",
    "escaped",
    "timings_ms",
];
const TIMINGS: [&str; 5] = [
    "started",
    "cancel_requested",
    "signal_sent",
    "kill_sent",
    "ended",
];

/// Runs `warden run --report FILE OPTIONS -- PROGRAM...` (PROGRAM `fixture:ROLE` is an SDK
/// worker role of this binary); returns how it ended and the report.
fn run_reported(options: &[&str], program: &[&str]) -> (Finished, Value) {
    let dir = TempDir::new();
    let report_path = dir.0.join("report.json").to_string_lossy().into_owned();
    let mut args = vec!["run", "--report", &report_path];
    args.extend_from_slice(options);
    args.push("--");
    let (exe, fixture_args) = fixture_argv();
    let role = program.first().and_then(|p| p.strip_prefix("fixture:"));
    if role.is_some() {
        args.push(&exe);
        args.extend(fixture_args);
    } else {
        args.extend_from_slice(program);
    }
    let mark = new_mark();
    let mut cmd = command(WARDEN, &args, &mark);
    if let Some(role) = role {
        cmd.env(ROLE_VAR, role);
    }
    let done = Proc::start(&format!("run {options:?} {program:?}"), cmd, &mark).finish();
    let text = std::fs::read_to_string(&report_path)
        .unwrap_or_else(|e| panic!("no report ({e}); stderr: {}", done.stderr));
    let report: Value = serde_json::from_str(&text).expect("report is JSON");
    check_shape(&report);
    (done, report)
}

fn check_shape(report: &Value) {
    for key in REQUIRED {
        assert!(report.get(key).is_some(), "missing {key}: {report}");
    }
    for key in TIMINGS {
        let t = &report["timings_ms"][key];
        assert!(t.is_null() || t.is_u64(), "timings_ms.{key} = {t}");
    }
    assert!(report["escaped"].is_array());
    let ended = report["timings_ms"]["ended"]
        .as_u64()
        .expect("ended is set");
    for key in TIMINGS {
        if let Some(t) = report["timings_ms"][key].as_u64() {
            assert!(t <= ended, "timings_ms.{key} after ended: {report}");
        }
    }
}

fn ms(report: &Value, key: &str) -> u64 {
    report["timings_ms"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("timings_ms.{key} is null: {report}"))
}

#[test]
fn completed_plain_program() {
    let (done, r) = run_reported(&[], &["sh", "-c", "exit 0"]);
    assert_eq!(done.ended, Ended::Code(0));
    assert_eq!(r["outcome"], "completed");
    assert_eq!(r["reason"], Value::Null);
    assert_eq!(r["stage"], Value::Null);
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["signal"], Value::Null);
    assert_eq!(r["escaped"], serde_json::json!([]));
    // auto takes the strongest containment available.
    assert!(
        ["cgroup", "subreaper", "process_group"].contains(&r["containment"].as_str().unwrap_or("")),
        "{r}"
    );
    for key in ["cancel_requested", "signal_sent", "kill_sent"] {
        assert_eq!(r["timings_ms"][key], Value::Null);
    }
    eprintln!("auto containment on this machine: {}", r["containment"]);
}

#[test]
fn failed_plain_program_exits_with_its_status() {
    let (done, r) = run_reported(&[], &["sh", "-c", "exit 3"]);
    assert_eq!(done.ended, Ended::Code(3));
    assert_eq!(r["outcome"], "failed");
    assert_eq!(r["exit_code"], 3);
}

#[test]
fn crashed_plain_program() {
    let (done, r) = run_reported(&[], &["sh", "-c", "kill -USR1 $$"]);
    assert_eq!(done.ended, Ended::Code(128 + libc::SIGUSR1));
    assert_eq!(r["outcome"], "crashed");
    assert_eq!(r["signal"], libc::SIGUSR1);
}

#[test]
fn timeout_terminates_with_124() {
    let (done, r) = run_reported(&["--timeout", "0.2"], &["sleep", "60"]);
    assert_eq!(done.ended, Ended::Code(124));
    assert_eq!(r["outcome"], "terminated");
    assert_eq!(r["reason"], "timeout");
    assert_eq!(r["stage"], "signal");
    assert_eq!(r["signal"], libc::SIGTERM);
    assert!(ms(&r, "cancel_requested") >= ms(&r, "started") + 200, "{r}");
    assert!(ms(&r, "signal_sent") >= ms(&r, "cancel_requested"));
    assert_eq!(r["timings_ms"]["kill_sent"], Value::Null);
}

#[test]
fn custom_polite_signal() {
    let (done, r) = run_reported(&["--timeout", "0.1", "--signal", "hup"], &["sleep", "60"]);
    assert_eq!(done.ended, Ended::Code(124));
    assert_eq!(r["signal"], libc::SIGHUP);
}

#[test]
fn kill_stage_gives_137() {
    let (done, r) = run_reported(
        &["--timeout", "0.1", "--kill-after", "0.2"],
        &["sh", "-c", r#"trap "" TERM; exec sleep 60"#],
    );
    assert_eq!(done.ended, Ended::Code(137));
    assert_eq!(r["outcome"], "killed");
    assert_eq!(r["reason"], "timeout");
    assert_eq!(r["stage"], "kill");
    assert_eq!(r["signal"], libc::SIGKILL);
    assert!(ms(&r, "kill_sent") >= ms(&r, "signal_sent") + 200, "{r}");
}

#[test]
fn spawn_failures() {
    let dir = TempDir::new();
    let not_executable = dir.file("data", "x\n", 0o644);
    let directory = dir.0.to_string_lossy().into_owned();
    for (program, status) in [
        ("warden-no-such-program", 127),
        (not_executable.as_str(), 126),
        (directory.as_str(), 126),
    ] {
        let (done, r) = run_reported(&[], &[program]);
        assert_eq!(
            done.ended,
            Ended::Code(status),
            "{program}: {}",
            done.stderr
        );
        assert_eq!(r["outcome"], "spawn_failed", "{program}");
        assert_eq!(r["containment"], Value::Null);
        assert_eq!(r["timings_ms"]["started"], Value::Null);
        assert!(r["error"].is_string());
        assert_eq!(done.stderr.lines().count(), 1, "one line: {}", done.stderr);
    }
}

/// Failures only `execve` sees, for a plain program and a protocol worker alike: typed by the
/// library (no exit status to decode), GNU's wording, 127 / 126.
#[test]
fn exec_time_failures() {
    let dir = TempDir::new();
    let scripts = ExecFailures::new(&dir);
    let (missing, busy) = (&scripts.missing_interpreter, &scripts.busy);
    for protocol in [false, true] {
        for (program, status, text) in [
            (missing.as_str(), 127, "No such file or directory"),
            (busy.as_str(), 126, "Text file busy"),
        ] {
            let options: &[&str] = if protocol { &["--protocol"] } else { &[] };
            let (done, r) = run_reported(options, &[program]);
            let what = format!("{program} (protocol: {protocol})");
            assert_eq!(done.ended, Ended::Code(status), "{what}: {}", done.stderr);
            assert_eq!(
                done.stderr,
                format!("warden run: cannot run '{program}': {text}\n"),
                "{what}"
            );
            assert_eq!(r["outcome"], "spawn_failed", "{what}");
            assert_eq!(r["exit_code"], Value::Null, "{what}: the program never ran");
        }
    }
    drop(scripts);
}

#[test]
fn protocol_worker_completes_with_its_output() {
    let dir = TempDir::new();
    let input = dir.file("in", "payload", 0o644);
    let output = dir.0.join("out").to_string_lossy().into_owned();
    let (done, r) = run_reported(
        &["--protocol", "--input", &input, "--output", &output],
        &["fixture:worker:echo"],
    );
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    assert_eq!(r["outcome"], "completed");
    assert_eq!(r["protocol"], true);
    assert_eq!(std::fs::read(&output).expect("output"), b"daolyap");
}

#[test]
fn protocol_worker_reads_stdin_payload() {
    let dir = TempDir::new();
    let input = dir.file("in", "abc", 0o644);
    let output = dir.0.join("out").to_string_lossy().into_owned();
    let (exe, fixture_args) = fixture_argv();
    let mut args = vec![
        "run",
        "--protocol",
        "--input",
        "-",
        "--output",
        &output,
        "--",
    ];
    args.push(&exe);
    args.extend(fixture_args);
    let mark = new_mark();
    let mut cmd = command(WARDEN, &args, &mark);
    cmd.env(ROLE_VAR, "worker:echo")
        .stdin(std::fs::File::open(&input).expect("open input"));
    let done = Proc::start("run --input -", cmd, &mark).finish();
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    assert_eq!(std::fs::read(&output).expect("output"), b"cba");
}

#[test]
fn protocol_worker_failure_exits_1() {
    let (done, r) = run_reported(&["--protocol"], &["fixture:worker:fail"]);
    assert_eq!(done.ended, Ended::Code(1));
    assert_eq!(r["outcome"], "failed");
    assert_eq!(r["error"], "boom");
}

#[test]
fn protocol_worker_cancelled_by_timeout() {
    let (done, r) = run_reported(
        &["--protocol", "--timeout", "0.2", "--grace", "60"],
        &["fixture:worker:wait-cancel"],
    );
    assert_eq!(done.ended, Ended::Code(124));
    assert_eq!(r["outcome"], "cancelled");
    assert_eq!(r["reason"], "timeout");
    assert_eq!(r["stage"], "cooperative");
    assert!(done.elapsed < Duration::from_secs(30), "waited for --grace");
}

#[test]
fn protocol_worker_that_ignores_everything_is_killed() {
    let (done, r) = run_reported(
        &[
            "--protocol",
            "--timeout",
            "0.1",
            "--grace",
            "0.1",
            "--kill-after",
            "0.1",
        ],
        &["fixture:worker:ignore-all"],
    );
    assert_eq!(done.ended, Ended::Code(137), "{}", done.stderr);
    assert_eq!(r["outcome"], "killed");
    assert_eq!(r["stage"], "kill");
    for key in ["cancel_requested", "signal_sent", "kill_sent"] {
        ms(&r, key);
    }
}
