//! What a kubelet does to a container's PID 1, by simulation: `warden run` as PID 1 of a PID
//! namespace (`unshare --pid --fork --mount-proc`), sent SIGTERM, then after a
//! `terminationGracePeriodSeconds`-like bound the namespace's PID 1 is SIGKILLed (which kills
//! everything in the namespace). warden must have finished its ladder, written a complete
//! report and exited before that bound: its handlers are installed (PID 1 ignores signals it
//! does not handle), and orphans re-parented to it are reaped.
//!
//! The numbers are the README's Kubernetes example scaled down: a bound of 10 s (the pod's
//! grace) against `--grace 3 --kill-after 2` (5 s, inside it with room to spare).
//!
//! A SIGTERM that comes before warden listens (it reads `--input` first) stays pending: as PID 1
//! warden blocks its stop signals until then, since the kernel discards a signal that PID 1
//! has no handler for.
//!
//! Skipped loudly (on the real stderr) where `unshare` cannot make a PID namespace.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use serde_json::Value;

use crate::fixture::ROLE_VAR;
use crate::support::{Ended, Proc, TempDir, WARDEN, command, fixture_argv, new_mark};

/// The pod's terminationGracePeriodSeconds in this simulation.
const POD_GRACE: Duration = Duration::from_secs(10);

/// Whether `unshare` can make a PID namespace here; says so loudly when it cannot.
fn unshare_available() -> bool {
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = writeln!(
            std::io::stderr(),
            "\nSKIPPED: the PID-1 (Kubernetes) simulation: `unshare --pid --fork --mount-proc` does not work here\n"
        );
    }
    ok
}

/// The one child of `unshare` (PID 1 of the new namespace), by its pid outside.
fn namespace_init(unshare: i32) -> i32 {
    let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
        .expect("unshare's children");
    let pids: Vec<i32> = children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(pids.len(), 1, "unshare --fork has one child: {children:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).expect("status");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid line");
    assert!(
        nspid.split_whitespace().last() == Some("1"),
        "warden is not PID 1 of its namespace: {nspid}"
    );
    pids[0]
}

/// Zombie children of `pid` (observed in /proc).
fn zombie_children(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|s| {
                s.rfind(')').is_some_and(|end| {
                    let mut rest = s[end + 2..].split(' ');
                    rest.next() == Some("Z")
                        && rest.next().and_then(|p| p.parse::<i32>().ok()) == Some(pid)
                })
            })
        })
        .collect()
}

/// Sends SIGTERM to the namespace's PID 1 (as the kubelet does) and waits up to the pod's
/// grace for `unshare` to end (it ends with its child); at the bound, SIGKILLs PID 1, which
/// ends the namespace. Returns whether warden had exited on its own by then.
/// `after_term` runs right after the SIGTERM.
fn terminate_pod(proc: &Proc, init: i32, after_term: impl FnOnce()) -> bool {
    kill(Pid::from_raw(init), Signal::SIGTERM).expect("SIGTERM to PID 1");
    after_term();
    let unshare = proc.pid();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(waitid(
            Id::Pid(Pid::from_raw(unshare)),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        ));
    });
    let on_time = rx.recv_timeout(POD_GRACE).is_ok();
    if !on_time {
        // The end of terminationGracePeriodSeconds. unshare is not reaped yet, so its child's
        // pid cannot have been reused by anyone.
        let _ = kill(Pid::from_raw(init), Signal::SIGKILL);
    }
    on_time
}

fn read_report(path: &str) -> Value {
    let text = std::fs::read_to_string(path).expect("the report was written before the SIGKILL");
    serde_json::from_str(&text).expect("the report is complete JSON")
}

#[test]
fn pid1_plain_program_ignoring_sigterm_with_a_child_and_an_orphan() {
    if !unshare_available() {
        return;
    }
    let dir = TempDir::new();
    let report = dir.0.join("r.json").to_string_lossy().into_owned();
    // It ignores SIGTERM, leaves an orphan that dies at once (its zombie is re-parented to
    // PID 1: warden must reap it), and has a TERM-ignoring child.
    let program = r#"trap '' TERM
sh -c 'true & exit 0'
sh -c 'trap "" TERM; exec sleep 60' &
echo ready
wait"#;
    let mark = new_mark();
    let cmd = command(
        "unshare",
        &[
            "--pid",
            "--fork",
            "--mount-proc",
            WARDEN,
            "run",
            "--grace",
            "3",
            "--kill-after",
            "2",
            "--report",
            &report,
            "--",
            "sh",
            "-c",
            program,
        ],
        &mark,
    );
    let mut proc = Proc::start("warden as PID 1, plain", cmd, &mark);
    proc.wait_line("ready", |l| l == "ready");
    let init = namespace_init(proc.pid());
    // The orphan's zombie is warden's to reap (its orphan reaper polls, so this is observed
    // with a bound, not waited for).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !zombie_children(init).is_empty() {
        assert!(
            Instant::now() < deadline,
            "PID 1 warden left zombies: {:?}",
            zombie_children(init)
        );
        thread::sleep(Duration::from_millis(20));
    }
    let on_time = terminate_pod(&proc, init, || ());
    let done = proc.finish();
    assert!(
        on_time,
        "warden had not exited when the pod's grace ended: {}",
        done.stderr
    );
    assert_eq!(done.ended, Ended::Code(143), "{}", done.stderr);
    let r = read_report(&report);
    assert_eq!(r["outcome"], "killed", "{r}");
    assert_eq!(r["stage"], "kill", "{r}");
    assert_eq!(r["reason"], "shutdown", "{r}");
    assert_eq!(r["stop_signal"], "TERM", "{r}");
}

#[test]
fn pid1_sdk_worker_is_cancelled_cooperatively() {
    if !unshare_available() {
        return;
    }
    let dir = TempDir::new();
    let report = dir.0.join("r.json").to_string_lossy().into_owned();
    let (exe, fixture_args) = fixture_argv();
    let mut args = vec![
        "--pid",
        "--fork",
        "--mount-proc",
        WARDEN,
        "run",
        "--protocol",
        "--grace",
        "3",
        "--kill-after",
        "2",
        "--report",
        &report,
        "--",
        &exe,
    ];
    args.extend(fixture_args);
    let mark = new_mark();
    let mut cmd = command("unshare", &args, &mark);
    cmd.env(ROLE_VAR, "worker:announce-stderr-wait-cancel");
    let mut proc = Proc::start("warden as PID 1, SDK worker", cmd, &mark);
    proc.wait_stderr("in job");
    let init = namespace_init(proc.pid());
    let on_time = terminate_pod(&proc, init, || ());
    let done = proc.finish();
    assert!(
        on_time,
        "warden had not exited when the pod's grace ended: {}",
        done.stderr
    );
    assert_eq!(done.ended, Ended::Code(143), "{}", done.stderr);
    let r = read_report(&report);
    assert_eq!(r["outcome"], "cancelled", "{r}");
    assert_eq!(r["stage"], "cooperative", "{r}");
    assert_eq!(r["stop_signal"], "TERM", "{r}");
}

/// Whether `pid`'s blocked mask (`SigBlk` in /proc/PID/status) holds `sig`.
fn blocks(pid: i32, sig: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let mask = s
                .lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&mask, 16).ok()
        })
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

#[test]
fn pid1_keeps_a_sigterm_that_comes_before_it_listens() {
    // As PID 1, a signal without a handler is discarded by the kernel. warden reads its
    // `--input` (here a FIFO nobody writes yet) before it listens: a kubelet's SIGTERM then
    // must stay pending, not be lost (it was: the job then ran until the namespace's SIGKILL).
    if !unshare_available() {
        return;
    }
    let dir = TempDir::new();
    let report = dir.0.join("r.json").to_string_lossy().into_owned();
    let input = dir.0.join("input.fifo");
    nix::unistd::mkfifo(&input, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let input_arg = input.to_string_lossy().into_owned();
    let (exe, fixture_args) = fixture_argv();
    let mut args = vec![
        "--pid",
        "--fork",
        "--mount-proc",
        WARDEN,
        "run",
        "--protocol",
        "--input",
        &input_arg,
        "--grace",
        "3",
        "--kill-after",
        "2",
        "--report",
        &report,
        "--",
        &exe,
    ];
    args.extend(fixture_args);
    let mark = new_mark();
    let mut cmd = command("unshare", &args, &mark);
    cmd.env(ROLE_VAR, "worker:announce-stderr-wait-cancel");
    let proc = Proc::start("warden as PID 1, early SIGTERM", cmd, &mark);
    // Observed, not waited for: unshare forks, its child execs warden, which blocks its stop
    // signals before it opens the input.
    let deadline = Instant::now() + Duration::from_secs(10);
    let init = loop {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", proc.pid()))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .find_map(|p| p.parse::<i32>().ok())
            && std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe == std::path::Path::new(WARDEN))
            && blocks(pid, libc::SIGTERM)
        {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "warden never blocked SIGTERM as PID 1"
        );
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(namespace_init(proc.pid()), init);
    // warden is in (or before) its open of the FIFO: it does not listen yet.
    let on_time = terminate_pod(&proc, init, || {
        std::fs::write(&input, b"hold").expect("write the input");
    });
    let done = proc.finish();
    assert!(
        on_time,
        "the SIGTERM sent before warden listened was lost: {}",
        done.stderr
    );
    assert_eq!(done.ended, Ended::Code(143), "{}", done.stderr);
    let r = read_report(&report);
    assert_eq!(r["reason"], "shutdown", "{r}");
    assert_eq!(r["stop_signal"], "TERM", "{r}");
}
