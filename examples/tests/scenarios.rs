//! The README's first command must keep working: run `demo` and a short `ladder-bench` and check
//! what they report. Each host proves its own workers are gone (the demo checks every worker's
//! process group is empty); these tests prove the host itself exited.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `program` with `args`, waiting at most `limit`; returns its exit success and stdout.
fn run(program: &str, args: &[&str], limit: Duration) -> (bool, String) {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the example");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => {
            let output = output.expect("wait for the example");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            (output.status.success(), stdout)
        }
        Err(_) => {
            // Still our unreaped child (the waiting thread holds it), so the pid is its own.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{program} {args:?} did not finish within {limit:?}");
        }
    }
}

fn row<'a>(stdout: &'a str, worker: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(worker) && l[worker.len()..].starts_with("  "))
        .unwrap_or_else(|| panic!("no row for {worker} in:\n{stdout}"))
}

#[test]
fn demo_shows_every_stage_and_leaves_nothing_behind() {
    let (ok, stdout) = run(env!("CARGO_BIN_EXE_demo"), &[], Duration::from_secs(60));
    assert!(ok, "demo failed:\n{stdout}");
    for (worker, outcome, stage, exit) in [
        ("cooperative-worker", "cancelled", "1 cooperative", "-"),
        (
            "stubborn-worker --default-sigterm",
            "terminated",
            "2 signal",
            "SIGTERM",
        ),
        ("stubborn-worker", "killed", "3 kill", "SIGKILL"),
        ("ignore-term (plain)", "killed", "3 kill", "SIGKILL"),
    ] {
        let cells: Vec<&str> = row(&stdout, worker)[worker.len()..]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            cells[..4],
            [outcome, stage, "requested", exit],
            "row of {worker} in:\n{stdout}"
        );
    }
    assert!(stdout.contains("kept running after its cancel and completed a second job"));
    assert_eq!(
        stdout.matches("process group empty").count(),
        4,
        "every worker reaped and its group empty:\n{stdout}"
    );
}

#[test]
fn ladder_bench_runs_short() {
    let (ok, stdout) = run(
        env!("CARGO_BIN_EXE_ladder-bench"),
        &["--n", "3"],
        Duration::from_secs(60),
    );
    assert!(ok, "ladder-bench failed:\n{stdout}");
    assert!(
        stdout.contains("outcomes: cooperative 3 cancelled; stage 3 3 killed; kill pending 0"),
        "{stdout}"
    );
}
