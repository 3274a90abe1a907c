//! `warden run --stop-signal SIG`: such a signal starts the ladder as the first SIGTERM does
//! (an SDK worker is cancelled cooperatively) and the report names it; it counts with the
//! other stop signals (a SIGTERM after it kills every tree now); without the option the
//! signal keeps its default action, as before.
//!
//! Each signal is sent only once the worker said it is in its job (so warden's handlers are
//! installed), and a second one only once warden logged the first (signals that arrive
//! together may be merged).

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::fixture::ROLE_VAR;
use std::os::fd::OwnedFd;

use crate::support::{
    Ended, Proc, TempDir, WARDEN, command, fixture_argv, new_mark, pidfd_open, wait_pidfd,
};

/// `warden run -v --protocol --report FILE OPTIONS -- <fixture role>`, started, once the
/// worker said it is in its job (so warden's handlers are installed).
fn start_in_job(dir: &TempDir, options: &[&str], role: &str) -> (Proc, String) {
    let report = dir.0.join("r.json").to_string_lossy().into_owned();
    let (exe, fixture_args) = fixture_argv();
    let mut args = vec!["run", "-v", "--protocol", "--report", &report];
    args.extend_from_slice(options);
    args.push("--");
    args.push(&exe);
    args.extend(fixture_args);
    let mark = new_mark();
    let mut cmd = command(WARDEN, &args, &mark);
    cmd.env(ROLE_VAR, role);
    let mut proc = Proc::start(&format!("run {options:?} {role}"), cmd, &mark);
    proc.wait_stderr("in job");
    (proc, report)
}

fn read_report(path: &str, stderr: &str) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no report ({e}); stderr: {stderr}"));
    serde_json::from_str(&text).expect("report is JSON")
}

#[test]
fn a_stop_signal_cancels_cooperatively_and_is_named() {
    let dir = TempDir::new();
    let (proc, report) = start_in_job(
        &dir,
        &[
            "--stop-signal",
            "USR1",
            "--stop-signal",
            "usr2",
            "--grace",
            "60",
        ],
        "worker:announce-stderr-wait-cancel",
    );
    proc.signal(Signal::SIGUSR1);
    let done = proc.finish();
    let status = 128 + libc::SIGUSR1;
    assert_eq!(done.ended, Ended::Code(status), "{}", done.stderr);
    let r = read_report(&report, &done.stderr);
    assert_eq!(r["outcome"], "cancelled", "{r}");
    assert_eq!(r["reason"], "shutdown", "{r}");
    assert_eq!(r["stage"], "cooperative", "{r}");
    assert_eq!(r["stop_signal"], "USR1", "{r}");
    assert_eq!(r["warden_signal"], libc::SIGUSR1, "{r}");
    assert_eq!(r["exit_status"], status, "{r}");
    assert!(r["timings_ms"]["signal_sent"].is_null(), "{r}");
}

#[test]
fn sigterm_after_a_stop_signal_is_the_second_and_kills_now() {
    let dir = TempDir::new();
    let (mut proc, report) = start_in_job(
        &dir,
        &[
            "--stop-signal",
            "USR1",
            "--grace",
            "60",
            "--kill-after",
            "60",
        ],
        "worker:announce-ignore-all",
    );
    proc.signal(Signal::SIGUSR1);
    proc.wait_stderr("running the ladder");
    proc.signal(Signal::SIGTERM);
    let done = proc.finish();
    assert_eq!(
        done.ended,
        Ended::Code(128 + libc::SIGUSR1),
        "{}",
        done.stderr
    );
    assert!(
        done.elapsed < Duration::from_secs(30),
        "waited for --grace: {:?}",
        done.elapsed
    );
    let r = read_report(&report, &done.stderr);
    assert_eq!(r["outcome"], "killed", "{r}");
    assert_eq!(r["stage"], "kill", "{r}");
    assert_eq!(r["stop_signal"], "USR1", "{r}");
}

#[test]
fn sigterm_is_named_too() {
    let dir = TempDir::new();
    let (proc, report) = start_in_job(
        &dir,
        &["--grace", "60"],
        "worker:announce-stderr-wait-cancel",
    );
    proc.signal(Signal::SIGTERM);
    let done = proc.finish();
    assert_eq!(done.ended, Ended::Code(143), "{}", done.stderr);
    let r = read_report(&report, &done.stderr);
    assert_eq!(r["outcome"], "cancelled", "{r}");
    assert_eq!(r["stop_signal"], "TERM", "{r}");
}

#[test]
fn without_the_option_usr1_keeps_its_default_action() {
    // Today's behaviour: SIGUSR1's default action ends warden at once; its worker goes with it
    // (channel EOF and PDEATHSIG), which the survivor scan in `finish` checks.
    let dir = TempDir::new();
    let (proc, report) = start_in_job(
        &dir,
        &["--grace", "60"],
        "worker:announce-stderr-wait-cancel",
    );
    proc.signal(Signal::SIGUSR1);
    let done = proc.finish();
    assert_eq!(done.ended, Ended::Signal(libc::SIGUSR1), "{}", done.stderr);
    assert!(
        std::fs::metadata(&report).is_err(),
        "a report was written by a warden that SIGUSR1 ended"
    );
}

#[test]
fn bad_stop_signals_are_usage_errors() {
    for bad in ["KILL", "STOP", "TSTP", "CHLD", "0", "BOGUS"] {
        let mark = new_mark();
        let cmd = command(WARDEN, &["run", "--stop-signal", bad, "--", "true"], &mark);
        let done = Proc::start(&format!("--stop-signal {bad}"), cmd, &mark).finish();
        assert_eq!(done.ended, Ended::Code(125), "{bad}: {}", done.stderr);
        assert!(
            done.stderr.starts_with("warden run: ") && done.stderr.lines().count() == 1,
            "{bad}: {}",
            done.stderr
        );
    }
}

/// The SDK worker under `warden run` (not warden, not a shim or guard), found by its marker.
fn worker_pid(proc: &Proc, mark: &str, exe: &str) -> i32 {
    let workers: Vec<i32> = crate::support::marked(mark)
        .into_iter()
        .filter(|s| s.pid != proc.pid() && s.cmdline.starts_with(exe))
        .map(|s| s.pid)
        .collect();
    match workers[..] {
        [pid] => pid,
        _ => panic!("expected one worker, found {workers:?}"),
    }
}

/// `warden run --protocol` of a worker in its job, whose worker (not warden) got SIGTERM:
/// the directory, warden, the report's path and a pidfd of the worker.
fn worker_signalled_in_its_job() -> (TempDir, Proc, String, OwnedFd) {
    let dir = TempDir::new();
    let (proc, report) = start_in_job(
        &dir,
        &["--grace", "60"],
        "worker:announce-stderr-wait-cancel",
    );
    let (exe, _) = fixture_argv();
    let worker = worker_pid(&proc, proc.mark(), &exe);
    // Opened while it runs: warden may reap it as soon as it exits.
    let exited = pidfd_open(worker);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGTERM)
        .expect("signal the worker");
    (dir, proc, report, exited)
}

/// A stop signal that reaches the worker before warden (Slurm's plain `scancel` signals every
/// process of a job): the SDK worker cancels on it, answers `Cancelled` and exits before
/// warden has even heard of the stop. warden's own stop, a moment later, is what that answer
/// acknowledged: `cancelled`, no violation, nothing killed.
#[test]
fn a_workers_answer_to_the_stop_signal_before_wardens_own_cancel_is_cancelled() {
    let (_dir, proc, report, worker) = worker_signalled_in_its_job();
    wait_pidfd(&worker, 10_000, "the signalled worker's exit");
    proc.signal(Signal::SIGTERM);
    let done = proc.finish();
    assert_eq!(done.ended, Ended::Code(143), "{}", done.stderr);
    let r = read_report(&report, &done.stderr);
    assert_eq!(r["outcome"], "cancelled", "{r}");
    assert_eq!(r["reason"], "shutdown", "{r}");
    assert_eq!(r["violation"], Value::Null, "{r}");
    assert_eq!(r["stop_signal"], "TERM", "{r}");
    assert!(r["timings_ms"]["kill_sent"].is_null(), "{r}");
}

/// The same answer with no stop for warden after it: someone outside signalled the worker
/// alone. It ended on its own: `crashed`, the unrequested cancel named, nothing killed.
#[test]
fn a_workers_answer_to_an_outside_signal_nobody_here_follows_is_crashed() {
    let (_dir, proc, report, _) = worker_signalled_in_its_job();
    let done = proc.finish();
    let r = read_report(&report, &done.stderr);
    assert_eq!(r["outcome"], "crashed", "{r}\n{}", done.stderr);
    assert_eq!(r["reason"], Value::Null, "{r}");
    assert!(
        r["violation"]
            .as_str()
            .is_some_and(|v| v.contains("never asked")),
        "{r}"
    );
    assert!(r["timings_ms"]["kill_sent"].is_null(), "{r}");
    assert_eq!(done.ended, Ended::Code(1), "{}", done.stderr);
}
