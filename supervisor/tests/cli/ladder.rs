//! warden's own signals: the first stop signal runs the ladder, the second SIGKILLs every tree
//! now, the third exits at once; and a warden started with SIGTERM blocked and SIGCHLD ignored
//! still works, while its children start with nothing blocked or ignored.
//!
//! Each signal is sent only once the previous one was seen to be handled (`-v` lines), since
//! signals that arrive together may be merged.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::fixture::ROLE_VAR;
use crate::support::{Ended, Proc, TempDir, WARDEN, command, fixture_argv, new_mark};

fn read_report(path: &str) -> Value {
    let text = std::fs::read_to_string(path).expect("report written");
    serde_json::from_str(&text).expect("report is JSON")
}

#[test]
fn first_stop_signal_runs_the_ladder() {
    let dir = TempDir::new();
    let report = dir.0.join("r.json").to_string_lossy().into_owned();
    let mark = new_mark();
    let cmd = command(
        WARDEN,
        &[
            "run",
            "--report",
            &report,
            "--kill-after",
            "60",
            "--",
            "sh",
            "-c",
            r#"trap "exit 0" TERM; echo ready; sleep 60 & wait"#,
        ],
        &mark,
    );
    let mut proc = Proc::start("run, first SIGTERM", cmd, &mark);
    proc.wait_line("ready", |l| l == "ready");
    proc.signal(Signal::SIGTERM);
    let done = proc.finish();
    assert_eq!(done.ended, Ended::Code(143), "{}", done.stderr);
    let report = read_report(&report);
    assert_eq!(report["outcome"], "terminated", "{report}");
    assert_eq!(report["reason"], "shutdown");
    assert_eq!(report["stage"], "signal");
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["warden_signal"], libc::SIGTERM);
}

#[test]
fn second_stop_signal_kills_now() {
    let dir = TempDir::new();
    let report = dir.0.join("r.json").to_string_lossy().into_owned();
    let mark = new_mark();
    let cmd = command(
        WARDEN,
        &[
            "run",
            "-v",
            "--report",
            &report,
            "--kill-after",
            "60",
            "--",
            "sh",
            "-c",
            r#"trap "" TERM; echo ready; exec sleep 60"#,
        ],
        &mark,
    );
    let mut proc = Proc::start("run, two SIGINTs", cmd, &mark);
    proc.wait_line("ready", |l| l == "ready");
    proc.signal(Signal::SIGINT);
    proc.wait_stderr("polite signal sent");
    proc.signal(Signal::SIGINT);
    let done = proc.finish();
    assert_eq!(done.ended, Ended::Code(130), "{}", done.stderr);
    assert!(
        done.elapsed < Duration::from_secs(30),
        "waited for --kill-after"
    );
    let report = read_report(&report);
    assert_eq!(report["outcome"], "killed", "{report}");
    assert_eq!(report["reason"], "shutdown");
    assert_eq!(report["stage"], "kill");
    assert_eq!(report["signal"], libc::SIGKILL);
}

#[test]
fn third_stop_signal_exits_at_once() {
    // A worker that never completes its handshake: neither the ladder nor the kill token can
    // reach it before the 5 s handshake timeout, so only the third signal ends warden early.
    // Subreaper containment: an abrupt exit leaves no cgroup behind to clean; the worker dies
    // with warden (PDEATHSIG), which the survivor scan checks.
    let (exe, fixture_args) = fixture_argv();
    let mut args = vec![
        "run",
        "-v",
        "--protocol",
        "--containment",
        "subreaper",
        "--",
    ];
    args.push(&exe);
    args.extend(fixture_args);
    let mark = new_mark();
    let mut cmd = command(WARDEN, &args, &mark);
    cmd.env(ROLE_VAR, "hang-handshake");
    let mut proc = Proc::start("run, three SIGTERMs", cmd, &mark);
    proc.wait_line("ready", |l| l == "ready");
    proc.signal(Signal::SIGTERM);
    proc.wait_stderr("running the ladder");
    proc.signal(Signal::SIGTERM);
    proc.wait_stderr("killing every process tree now");
    proc.signal(Signal::SIGTERM);
    let done = proc.finish();
    assert_eq!(done.ended, Ended::Code(143), "{}", done.stderr);
    assert!(
        done.elapsed < Duration::from_secs(4),
        "took {:?}: waited for the handshake timeout",
        done.elapsed
    );
    assert!(done.stderr.contains("third stop signal"), "{}", done.stderr);
}

#[test]
fn timeout_second_stop_signal_kills_the_tree() {
    let mark = new_mark();
    let cmd = command(
        WARDEN,
        &[
            "timeout",
            "-v",
            "30",
            "sh",
            "-c",
            r#"trap "" TERM; echo ready; exec sleep 60"#,
        ],
        &mark,
    );
    let mut proc = Proc::start("timeout, two SIGTERMs", cmd, &mark);
    proc.wait_line("ready", |l| l == "ready");
    proc.signal(Signal::SIGTERM);
    proc.wait_stderr("sending signal TERM");
    proc.signal(Signal::SIGTERM);
    let done = proc.finish();
    assert_eq!(done.ended, Ended::Code(137), "{}", done.stderr);
    assert_eq!(
        done.stderr,
        "warden timeout: sending signal TERM to command 'sh'\n\
         warden timeout: sending signal KILL to command 'sh'\n"
    );
}

/// A cgroup v1 freezer group holding one process: its SIGKILL stays pending until it thaws,
/// which is how a tree outlives warden's second stop signal. Thawed and removed on drop.
struct Freezer(std::path::PathBuf);

impl Freezer {
    fn new(mark: &str) -> Option<Freezer> {
        let root = std::path::Path::new("/sys/fs/cgroup/freezer");
        let dir = root.join(format!("warden-cli-{mark}"));
        (root.join("cgroup.procs").exists() && std::fs::create_dir(&dir).is_ok())
            .then_some(Freezer(dir))
    }

    fn freeze(&self, pid: i32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("join the freezer");
        std::fs::write(self.0.join("freezer.state"), "FROZEN").expect("freeze");
        // The kernel says when it is done; observed, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(self.0.join("freezer.state"))
            .is_ok_and(|s| s.trim() != "FROZEN")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the freezer never froze"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn thaw(&self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        self.thaw();
        // Empty once its process died of its pending SIGKILL; bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.0).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn timeout_third_stop_signal_exits_at_once() {
    let mark = new_mark();
    let Some(freezer) = Freezer::new(&mark) else {
        eprintln!("skipped: no writable cgroup v1 freezer to hold a tree past SIGKILL");
        return;
    };
    let cmd = command(
        WARDEN,
        &[
            "timeout",
            "-v",
            "30",
            "sh",
            "-c",
            r#"echo "ready $$"; exec sleep 60"#,
        ],
        &mark,
    );
    let mut proc = Proc::start("timeout, three SIGTERMs", cmd, &mark);
    let line = proc.wait_line("ready", |l| l.starts_with("ready "));
    let command_pid: i32 = line["ready ".len()..].parse().expect("pid");
    // Frozen, the command cannot die of TERM or KILL: warden's own ladder cannot end it.
    freezer.freeze(command_pid);
    proc.signal(Signal::SIGTERM);
    proc.wait_stderr("sending signal TERM");
    proc.signal(Signal::SIGTERM);
    proc.wait_stderr("sending signal KILL");
    proc.signal(Signal::SIGTERM);
    // warden is gone while its command still lives (frozen, its SIGKILL pending)...
    proc.wait_exited();
    assert!(
        std::path::Path::new(&format!("/proc/{command_pid}")).exists(),
        "the command died before warden exited: nothing was left to wait for"
    );
    // ...which then dies as soon as it thaws; the survivor scan proves it.
    freezer.thaw();
    let done = proc.finish();
    assert_eq!(done.ended, Ended::Code(143), "{}", done.stderr);
}

/// Scenario 16: started under `trap '' CHLD` with SIGTERM blocked, warden still collects exit
/// statuses and handles SIGTERM, and its children start with nothing blocked or ignored.
fn inherited_state(sub: &[&str], expect: Ended) {
    let (exe, fixture_args) = fixture_argv();
    let mut warden_args: Vec<&str> = sub.to_vec();
    warden_args.extend(["sh", "-c", r#"echo "ready $$"; exec sleep 60"#]);
    let mut args = vec!["-c", r#"trap "" CHLD; exec "$@""#, "sh", &exe];
    args.extend(fixture_args);
    let mark = new_mark();
    let mut cmd = command("/bin/sh", &args, &mark);
    cmd.env(ROLE_VAR, "exec:blocked")
        .env("WARDEN_CLI_EXEC", crate::support::WARDEN)
        .env("WARDEN_CLI_EXEC_ARGS", warden_args.join("\n"));
    let mut proc = Proc::start("warden with SIGTERM blocked, SIGCHLD ignored", cmd, &mark);
    let line = proc.wait_line("ready", |l| l.starts_with("ready "));
    let child: i32 = line["ready ".len()..].parse().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{child}/status")).expect("child status");
    for field in ["SigBlk", "SigIgn"] {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .expect("field")
            .trim();
        let mask = u64::from_str_radix(value, 16).expect("hex mask");
        // Nothing blocked, nothing ignored: not the inherited SIGCHLD, nor glibc's internal
        // signals 32 and 33 (posix_spawn leaves them ignored; the exec shim resets them).
        assert_eq!(mask, 0, "child {field} = {value}: inherited");
    }
    wait_until_nothing_blocked(proc.pid());
    proc.signal(Signal::SIGTERM);
    let done = proc.finish();
    assert_eq!(done.ended, expect, "{}", done.stderr);
}

/// Waits (bounded) until warden's main thread blocks nothing. Not a single read: the spawn
/// blocks every signal in the spawning thread from just before its vfork-style clone until the
/// clone returns, and on a loaded machine the command can print its "ready" inside that window
/// (CI saw `SigBlk: fffffffffffbfeff` once). What must hold is that the inherited mask is gone
/// once warden has settled, which no event announces; so this polls `/proc`, bounded.
fn wait_until_nothing_blocked(pid: i32) {
    let start = std::time::Instant::now();
    loop {
        let own = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        if own.contains("SigBlk:\t0000000000000000") {
            return;
        }
        assert!(
            start.elapsed() < crate::support::LIMIT,
            "warden still blocks: {own}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn run_resets_inherited_signal_state() {
    inherited_state(&["run", "--"], Ended::Code(143));
}

#[test]
fn timeout_resets_inherited_signal_state() {
    inherited_state(&["timeout", "30"], Ended::Signal(libc::SIGTERM));
}

/// As PID 1 of a PID namespace (a container's entrypoint), warden reaps the orphans that are
/// re-parented to it, whatever containment its trees got. The command leaves an orphan that
/// exits at once, then watches (bounded) for zombies in the namespace.
fn pid1_reaps_orphaned_zombies(sub: &[&str]) {
    let probe = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipping: cannot create a PID namespace here (unshare --pid)");
        return;
    }
    // The reaper polls every 100 ms: look for up to 5 s.
    let script = r#"
        [ "$PPID" = 1 ] || { echo "warden is not PID 1"; exit 2; }
        (sh -c 'exit 0' &)
        i=0
        while [ $i -lt 100 ]; do
            z=0
            for s in /proc/[0-9]*/status; do
                grep -q '^State:.Z' "$s" 2>/dev/null && z=$((z + 1))
            done
            [ $z -eq 0 ] && { echo "zombies 0"; exit 0; }
            sleep 0.05
            i=$((i + 1))
        done
        echo "zombies $z"
        exit 1
    "#;
    let mark = new_mark();
    let mut args = vec!["--pid", "--fork", "--mount-proc", WARDEN];
    args.extend_from_slice(sub);
    args.extend(["sh", "-c", script]);
    let what = format!("warden {sub:?} as PID 1");
    let done = Proc::start(&what, command("unshare", &args, &mark), &mark).finish();
    assert_eq!(
        done.ended,
        Ended::Code(0),
        "{what}: {}{}",
        done.stdout,
        done.stderr
    );
    assert!(done.stdout.contains("zombies 0"), "{what}: {}", done.stdout);
}

#[test]
fn run_as_pid1_reaps_orphaned_zombies() {
    pid1_reaps_orphaned_zombies(&["run", "--"]);
}

#[test]
fn timeout_as_pid1_reaps_orphaned_zombies() {
    pid1_reaps_orphaned_zombies(&["timeout", "30"]);
}
