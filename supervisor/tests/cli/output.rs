//! `warden run --capture-output`: a 1 GiB flood costs bounded memory (to a file, and capped to
//! warden's own stdout, byte for byte), and a closed stdout of warden's own is drained and
//! discarded, never a panic or a changed status.
//!
//! The floods come from `head -c` (and `yes`), not the fixture: the fixture is this test
//! binary, whose libtest banner would be part of the output.

use serde_json::Value;

use crate::support::{Ended, Finished, Proc, TempDir, WARDEN, command, new_mark};

/// 1 GiB.
const GIB: u64 = 1 << 30;

/// The generous bound on warden's peak RSS while it forwards a 1 GiB flood (its floor, running
/// `true`, is a few MiB; the capture adds a 64 KiB buffer per stream and the cap's tail).
const RSS_BOUND_KIB: u64 = 64 << 10;

/// Runs `warden run --report FILE OPTIONS -- PROGRAM...`; returns how it ended and the report.
fn run(options: &[&str], program: &[&str]) -> (Finished, Value) {
    let dir = TempDir::new();
    let report_path = dir.0.join("report.json").to_string_lossy().into_owned();
    let mark = new_mark();
    let mut args = vec!["run", "--report", &report_path];
    args.extend_from_slice(options);
    args.push("--");
    args.extend_from_slice(program);
    let what = format!("run {options:?} {program:?}");
    let done = Proc::start(&what, command(WARDEN, &args, &mark), &mark).finish();
    let text = std::fs::read_to_string(&report_path)
        .unwrap_or_else(|e| panic!("{what}: no report ({e}); stderr: {}", done.stderr));
    (done, serde_json::from_str(&text).expect("report is JSON"))
}

/// Prints the figures of a flood and checks the generous memory bound.
fn check_flood(what: &str, done: &Finished, floor_kib: u64) {
    let secs = done.elapsed.as_secs_f64();
    eprintln!(
        "{what}: warden peak RSS {} KiB (floor {floor_kib} KiB), 1 GiB in {secs:.2} s ({:.0} MiB/s)",
        done.max_rss_kib,
        1024.0 / secs
    );
    // `ru_maxrss` of a process started by a vfork-style spawn (std's, here) starts at its
    // spawner's peak: the kernel takes the shared address space's high-water mark at exec.
    // When this test binary's own peak is above the bound, that is all both runs show.
    let bound = RSS_BOUND_KIB.max(floor_kib + (16 << 10));
    assert!(
        done.max_rss_kib < bound,
        "{what}: warden's peak RSS {} KiB is over the generous bound of {bound} KiB",
        done.max_rss_kib
    );
}

/// warden's own peak RSS for a program that writes nothing, in this run.
fn floor_kib() -> u64 {
    let (done, _) = run(&["--capture-output"], &["true"]);
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    done.max_rss_kib
}

#[test]
fn a_gib_to_dev_null_costs_bounded_memory() {
    let floor = floor_kib();
    let (done, report) = run(
        &["--capture-output", "--stdout", "/dev/null"],
        &["head", "-c", &GIB.to_string(), "/dev/zero"],
    );
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    assert_eq!(report["outcome"], "completed");
    let stdout = &report["output_tail"]["stdout"];
    assert_eq!(stdout["bytes"], GIB, "every byte was drained: {stdout}");
    assert_eq!(stdout["truncated"], 0);
    assert_eq!(stdout["cut"], false);
    check_flood("1 GiB to /dev/null", &done, floor);
}

#[test]
fn a_capped_gib_to_wardens_stdout_keeps_head_and_tail_exactly() {
    let floor = floor_kib();
    let (done, report) = run(
        &["--output-cap", "64K"],
        &["sh", "-c", &format!("yes abcdefghijklmno | head -c {GIB}")],
    );
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    let half = "abcdefghijklmno\n".repeat(2048);
    let want = format!(
        "{half}[warden: {} bytes of stdout truncated]\n{half}",
        GIB - (64 << 10)
    );
    assert!(
        done.stdout == want,
        "forwarded {} bytes, not head + marker + tail (first 100: {:?})",
        done.stdout.len(),
        &done.stdout[..done.stdout.len().min(100)]
    );
    let stdout = &report["output_tail"]["stdout"];
    assert_eq!(stdout["bytes"], GIB);
    assert_eq!(stdout["truncated"], GIB - (64 << 10));
    let lines = stdout["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 20);
    assert!(lines.iter().all(|l| l == "abcdefghijklmno"), "{lines:?}");
    check_flood("1 GiB capped at 64K to a pipe", &done, floor);
}

#[test]
fn a_closed_stdout_of_wardens_is_drained_and_discarded() {
    // warden's stdout is a pipe whose reader (`:`) is gone: the forward meets EPIPE, the rest
    // is read and dropped, the plugin completes, and warden neither panics nor changes its
    // status.
    let dir = TempDir::new();
    let report_path = dir.0.join("report.json").to_string_lossy().into_owned();
    let mark = new_mark();
    let script = r#"{ { "$W" run --capture-output --report "$R" -- sh -c 'head -c 67108864 /dev/zero; echo done >&2'; echo "status $?" >&3; } | :; } 3>&1"#;
    let mut cmd = command("/bin/sh", &["-c", script], &mark);
    cmd.env("W", WARDEN).env("R", &report_path);
    let done = Proc::start(script, cmd, &mark).finish();
    assert_eq!(done.stdout, "status 0\n", "{}", done.stderr);
    assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
    assert!(
        done.stderr.contains("done"),
        "stderr still forwarded: {}",
        done.stderr
    );
    let text = std::fs::read_to_string(&report_path).expect("a report");
    let report: Value = serde_json::from_str(&text).expect("report is JSON");
    assert_eq!(report["outcome"], "completed");
    assert_eq!(report["output_tail"]["stdout"]["bytes"], 64u64 << 20);
    assert_eq!(report["output_tail"]["stderr"]["lines"][0], "done");
}

#[test]
fn without_capture_the_report_has_no_output_tail() {
    let (done, report) = run(&[], &["true"]);
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    assert_eq!(report["output_tail"], Value::Null);
}
