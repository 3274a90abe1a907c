//! `warden batch`: plain jobs (`{}` substituted or appended) and SDK jobs on warm workers,
//! their JSON Lines, the exit statuses (0, a count, 101), retries, a job that ignores SIGTERM,
//! warden's own first stop signal, and bad input and a report that cannot be written.
//!
//! Every run goes through [`Proc`], so no process any job started survives a test (the mark).
//! Readiness comes from the jobs' own stdout lines (warden's stdout), never from sleeping.

use std::collections::BTreeSet;
use std::process::Stdio;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::fixture::ROLE_VAR;
use crate::support::{Ended, Finished, Proc, TempDir, WARDEN, command, fixture_argv, new_mark};

/// Keys every line has.
const KEYS: [&str; 10] = [
    "input",
    "outcome",
    "reason",
    "stage",
    "exit_code",
    "signal",
    "worker_pid",
    "attempt",
    "timings_ms",
    "output",
];

/// A started `warden batch` run, and where its report goes.
struct Batch {
    proc: Proc,
    report: String,
    _dir: TempDir,
}

/// Starts `warden batch --report FILE OPTIONS -- PROGRAM...` with `input` as stdin; PROGRAM
/// `fixture:ROLE` is an SDK worker role of this test binary.
fn start(options: &[&str], program: &[&str], input: &[u8]) -> Batch {
    let dir = TempDir::new();
    let report = dir.0.join("report.jsonl").to_string_lossy().into_owned();
    let input_path = dir.0.join("input");
    std::fs::write(&input_path, input).expect("write the input");
    let mut args = vec!["batch", "--report", &report];
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
    cmd.stdin(Stdio::from(
        std::fs::File::open(&input_path).expect("open the input"),
    ));
    let proc = Proc::start(&format!("batch {options:?} {program:?}"), cmd, &mark);
    Batch {
        proc,
        report,
        _dir: dir,
    }
}

impl Batch {
    /// Waits for the end (nothing may survive); returns how it ended and the report's lines.
    fn finish(self) -> (Finished, Vec<Value>) {
        let done = self.proc.finish();
        let text = std::fs::read_to_string(&self.report)
            .unwrap_or_else(|e| panic!("no report ({e}); stderr: {}", done.stderr));
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect();
        for line in &lines {
            for key in KEYS {
                assert!(line.get(key).is_some(), "missing {key}: {line}");
            }
        }
        (done, lines)
    }
}

/// Runs a batch to its end.
fn batch(options: &[&str], program: &[&str], input: &[u8]) -> (Finished, Vec<Value>) {
    start(options, program, input).finish()
}

/// The line whose input is `input`.
fn by_input<'a>(lines: &'a [Value], input: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["input"] == input)
        .unwrap_or_else(|| panic!("no line for input {input:?}: {lines:#?}"))
}

fn stdout_lines(done: &Finished) -> BTreeSet<String> {
    done.stdout.lines().map(str::to_owned).collect()
}

#[test]
fn plain_jobs_get_the_line_in_place_of_braces() {
    let (done, lines) = batch(
        &["-j", "2"],
        &["sh", "-c", r#"echo "got <$1>""#, "sh", "x{}y"],
        b"a\nb c\n",
    );
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    assert_eq!(
        stdout_lines(&done),
        BTreeSet::from(["got <xay>".to_owned(), "got <xb cy>".to_owned()])
    );
    assert_eq!(lines.len(), 2);
    for input in ["a", "b c"] {
        let line = by_input(&lines, input);
        assert_eq!(line["outcome"], "completed");
        assert_eq!(line["exit_code"], 0);
        assert_eq!(line["attempt"], 1);
        assert!(line["worker_pid"].is_u64(), "{line}");
        assert_eq!(line["output"], Value::Null);
    }
    assert_ne!(lines[0]["worker_pid"], lines[1]["worker_pid"]);
}

#[test]
fn plain_jobs_get_the_line_appended_without_braces() {
    let (done, lines) = batch(&["-j", "1"], &["echo", "arg:"], b"one\ntwo\n");
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    // -j 1: one at a time, in input order.
    assert_eq!(done.stdout, "arg: one\narg: two\n");
    let inputs: Vec<&Value> = lines.iter().map(|l| &l["input"]).collect();
    assert_eq!(inputs, ["one", "two"]);
}

#[test]
fn the_status_counts_the_jobs_that_did_not_complete() {
    let (done, lines) = batch(
        &["-j", "3"],
        &["sh", "-c", "exit $1", "sh"],
        b"0\n3\n0\n5\n",
    );
    assert_eq!(done.ended, Ended::Code(2), "{}", done.stderr);
    assert_eq!(lines.len(), 4);
    assert_eq!(by_input(&lines, "3")["outcome"], "failed");
    assert_eq!(by_input(&lines, "3")["exit_code"], 3);
    assert_eq!(by_input(&lines, "5")["exit_code"], 5);
}

#[test]
fn more_than_100_failures_exit_101() {
    let input: String = (0..105).map(|i| format!("{i}\n")).collect();
    let (done, lines) = batch(&["-j", "8"], &["false"], input.as_bytes());
    assert_eq!(done.ended, Ended::Code(101), "{}", done.stderr);
    assert_eq!(lines.len(), 105);
    assert!(lines.iter().all(|l| l["outcome"] == "failed"));
}

#[test]
fn empty_lines_are_skipped_and_bytes_are_reported_in_base64() {
    let (done, lines) = batch(
        &["-j", "2"],
        &["sh", "-c", "exit 0", "sh"],
        b"a\n\n\xff\xfe\nlast-without-newline",
    );
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let bytes = lines
        .iter()
        .find(|l| l["input"].is_null())
        .expect("the non-UTF-8 line");
    assert_eq!(bytes["input_base64"], "//4=");
    by_input(&lines, "a");
    by_input(&lines, "last-without-newline");
}

#[test]
fn a_job_that_ignores_sigterm_is_killed_by_the_ladder() {
    let (done, lines) = batch(
        &["-j", "2", "--timeout", "0.2", "--kill-after", "0.2"],
        &["sh", "-c", r#"trap "" TERM; exec sleep 60"#, "sh"],
        b"stubborn\n",
    );
    assert_eq!(done.ended, Ended::Code(1), "{}", done.stderr);
    let line = &lines[0];
    assert_eq!(line["outcome"], "killed", "{line}");
    assert_eq!(line["reason"], "timeout");
    assert_eq!(line["stage"], "kill");
    assert_eq!(line["signal"], libc::SIGKILL);
}

#[test]
fn a_crashed_job_is_retried_and_its_attempts_counted() {
    let dir = TempDir::new();
    // Crashes (SIGSEGV from itself) the first time, completes the second.
    let script = r#"if [ -e "$1" ]; then exit 0; fi; : > "$1"; kill -SEGV $$"#;
    let flag = dir.0.join("tried").to_string_lossy().into_owned();
    let (done, lines) = batch(
        &["--retries", "2"],
        &["sh", "-c", script, "sh"],
        format!("{flag}\n").as_bytes(),
    );
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    assert_eq!(lines.len(), 1, "only the last attempt is reported");
    assert_eq!(lines[0]["outcome"], "completed");
    assert_eq!(lines[0]["attempt"], 2);

    // Without retries the crash is the job's end.
    std::fs::remove_file(&flag).expect("remove the flag");
    let (done, lines) = batch(
        &[],
        &["sh", "-c", script, "sh"],
        format!("{flag}\n").as_bytes(),
    );
    assert_eq!(done.ended, Ended::Code(1), "{}", done.stderr);
    assert_eq!(lines[0]["outcome"], "crashed");
    assert_eq!(lines[0]["signal"], libc::SIGSEGV);
    assert_eq!(lines[0]["attempt"], 1);
}

#[test]
fn the_first_stop_signal_runs_every_running_jobs_ladder() {
    // -j 2 and three lines: two run, the third is never started once warden is asked to stop.
    let mut run = start(
        &["-j", "2", "--kill-after", "60"],
        &[
            "sh",
            "-c",
            r#"trap "exit 0" TERM; echo "ready $1"; sleep 60 & wait"#,
            "sh",
        ],
        b"1\n2\n3\n",
    );
    run.proc.wait_line("ready 1", |l| l == "ready 1");
    run.proc.wait_line("ready 2", |l| l == "ready 2");
    run.proc.signal(Signal::SIGINT);
    let (done, lines) = run.finish();
    assert_eq!(done.ended, Ended::Code(130), "{}", done.stderr);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for input in ["1", "2"] {
        let line = by_input(&lines, input);
        assert_eq!(line["outcome"], "terminated", "{line}");
        assert_eq!(line["reason"], "shutdown");
        assert_eq!(line["stage"], "signal");
        assert_eq!(line["warden_signal"], libc::SIGINT);
    }
    assert!(!done.stdout.contains("ready 3"));
}

#[test]
fn protocol_jobs_run_on_warm_workers_with_their_results() {
    let (done, lines) = batch(
        &["-j", "1", "--protocol"],
        &["fixture:worker:echo"],
        b"abc\ndef\n\xff\x00\n",
    );
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    assert_eq!(lines.len(), 3);
    assert_eq!(by_input(&lines, "abc")["output"], "cba");
    assert_eq!(by_input(&lines, "def")["output"], "fed");
    let bytes = lines.iter().find(|l| l["input"].is_null()).expect("bytes");
    assert_eq!(bytes["input_base64"], "/wA=");
    assert_eq!(bytes["output"], Value::Null);
    assert_eq!(bytes["output_base64"], "AP8=");
    // The results on stdout too, a newline after each.
    assert!(done.stdout.contains("cba\n") && done.stdout.contains("fed\n"));
    // -j 1: one worker ran all three.
    let pids: BTreeSet<u64> = lines
        .iter()
        .map(|l| l["worker_pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 1, "{lines:#?}");
}

#[test]
fn protocol_workers_are_replaced_after_max_jobs() {
    let (done, lines) = batch(
        &["-j", "1", "--protocol", "--max-jobs-per-worker", "1"],
        &["fixture:worker:echo"],
        b"a\nb\nc\n",
    );
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    let pids: BTreeSet<u64> = lines
        .iter()
        .map(|l| l["worker_pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{lines:#?}");
}

#[test]
fn protocol_failures_are_counted() {
    let (done, lines) = batch(
        &["-j", "2", "--protocol"],
        &["fixture:worker:fail"],
        b"a\nb\n",
    );
    assert_eq!(done.ended, Ended::Code(2), "{}", done.stderr);
    for line in &lines {
        assert_eq!(line["outcome"], "failed");
        assert_eq!(line["error"], "boom");
    }
}

#[test]
fn the_first_stop_signal_cancels_protocol_jobs_cooperatively() {
    let mut run = start(
        &[
            "-j",
            "2",
            "--protocol",
            "--grace",
            "60",
            "--kill-after",
            "60",
        ],
        &["fixture:worker:announce-wait-cancel"],
        b"a\nb\n",
    );
    run.proc.wait_line("started a", |l| l == "started a");
    run.proc.wait_line("started b", |l| l == "started b");
    run.proc.signal(Signal::SIGTERM);
    let (done, lines) = run.finish();
    assert_eq!(done.ended, Ended::Code(143), "{}", done.stderr);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for line in &lines {
        assert_eq!(line["outcome"], "cancelled", "{line}");
        assert_eq!(line["reason"], "shutdown");
        assert_eq!(line["stage"], "cooperative");
    }
}

#[test]
fn a_report_that_cannot_be_written_is_wardens_error() {
    let mark = new_mark();
    let mut cmd = command(
        WARDEN,
        &["batch", "--report", "/dev/full", "--", "true"],
        &mark,
    );
    let dir = TempDir::new();
    let input = dir.0.join("input");
    std::fs::write(&input, b"a\nb\n").expect("write the input");
    cmd.stdin(Stdio::from(std::fs::File::open(&input).expect("open")));
    let done = Proc::start("batch --report /dev/full", cmd, &mark).finish();
    assert_eq!(done.ended, Ended::Code(125), "{}", done.stderr);
    assert!(
        done.stderr.contains("cannot write the report"),
        "{}",
        done.stderr
    );
    assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
}

#[test]
fn a_line_over_the_limit_stops_the_reading() {
    let mut input = b"short\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', (1 << 20) + 1));
    input.extend_from_slice(b"\nnever\n");
    let (done, lines) = batch(&["-j", "1"], &["true"], &input);
    assert_eq!(done.ended, Ended::Code(125), "{}", done.stderr);
    assert!(done.stderr.contains("longer than"), "{}", done.stderr);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["input"], "short");
}

#[test]
fn the_second_stop_signal_kills_every_tree() {
    let mut run = start(
        &["-v", "-j", "2", "--kill-after", "60"],
        &[
            "sh",
            "-c",
            r#"trap "" TERM; echo "ready $1"; exec sleep 60"#,
            "sh",
        ],
        b"1\n2\n",
    );
    run.proc.wait_line("ready 1", |l| l == "ready 1");
    run.proc.wait_line("ready 2", |l| l == "ready 2");
    run.proc.signal(Signal::SIGINT);
    run.proc.wait_stderr("polite signal sent");
    run.proc.signal(Signal::SIGINT);
    let (done, lines) = run.finish();
    assert_eq!(done.ended, Ended::Code(130), "{}", done.stderr);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for line in &lines {
        assert_eq!(line["outcome"], "killed", "{line}");
        assert_eq!(line["reason"], "shutdown");
        assert_eq!(line["stage"], "kill");
    }
}

#[test]
fn a_protocol_worker_that_dies_mid_job_is_replaced_and_the_job_retried() {
    let dir = TempDir::new();
    let flag = dir.0.join("crashed").to_string_lossy().into_owned();
    let input = format!("{flag}\n");
    let (done, lines) = batch(
        &["-j", "1", "--protocol", "--retries", "1"],
        &["fixture:worker:crash-first"],
        input.as_bytes(),
    );
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["outcome"], "completed");
    assert_eq!(lines[0]["attempt"], 2);
    assert_eq!(lines[0]["output"], "second");

    // Without retries: the crash is the job's outcome, and the next job gets a new worker.
    std::fs::remove_file(&flag).expect("remove the flag");
    let (done, lines) = batch(
        &["-j", "1", "--protocol"],
        &["fixture:worker:crash-first"],
        format!("{flag}\n{flag}\n").as_bytes(),
    );
    assert_eq!(done.ended, Ended::Code(1), "{}", done.stderr);
    assert_eq!(lines[0]["outcome"], "crashed", "{lines:#?}");
    assert_eq!(lines[0]["signal"], libc::SIGKILL);
    assert_eq!(lines[1]["outcome"], "completed");
    assert_ne!(lines[0]["worker_pid"], lines[1]["worker_pid"]);
}

#[test]
fn a_protocol_worker_that_never_starts_fails_the_pool_and_the_batch_exits_125() {
    // `false` exits before its hello: every start fails, the pool restarts it with backoff
    // until its restart limit (10 in 10 s; about 5 s of backoff), then fails, and so does the
    // batch: warden's own error, never a job's outcome.
    let (done, lines) = batch(&["-j", "1", "--protocol"], &["false"], b"a\nb\n");
    assert_eq!(done.ended, Ended::Code(125), "{}", done.stderr);
    assert!(
        done.stderr.contains("more than 10 worker restarts"),
        "{}",
        done.stderr
    );
    assert!(!lines.is_empty(), "the job that waited is reported");
    for line in &lines {
        assert_eq!(line["outcome"], "spawn_failed", "{line}");
        assert_eq!(line["worker_pid"], Value::Null);
    }
}
