//! Process trees: what a worker started dies with it.

use nix::sys::signal::Signal;
use warden::{
    CancelReason, CancellationToken, Containment, ContainmentMode, JobOptions, Outcome, Stage,
    TreeOptions, WorkerConfig,
};
use warden_tests::mode;

use crate::support::*;

/// Runs a tree-making worker, cancels it once its children are up (it dies of SIGTERM; its
/// children ignore SIGTERM), and returns the children's pids after checking the report.
async fn cancel_tree(t: &Ctx, args: &[&str]) -> Vec<u32> {
    cancel_tree_in(t, args, Containment::Auto).await.0
}

/// As [`cancel_tree`], under the given containment; also returns the report's containment and
/// escaped pids.
async fn cancel_tree_in(
    t: &Ctx,
    args: &[&str],
    containment: Containment,
) -> (Vec<u32>, ContainmentMode, Vec<u32>) {
    let config = WorkerConfig::protocol()
        .deadlines(short(ms(100), ms(60_000)))
        .tree(TreeOptions::new().containment(containment));
    let worker = t.spawn(args, config).await;
    let token = CancellationToken::new();
    let (options, mut progress) = watch(JobOptions::new().token(token.clone()));
    let (report, children) = tokio::join!(run_job(&worker, WAIT, options), async {
        let children = progress.ready().await;
        token.cancel();
        children
    });

    assert_eq!(report.outcome, Outcome::Terminated, "{report:#?}");
    assert_eq!(report.stage, Some(Stage::Signal));
    assert_eq!(report.reason, Some(CancelReason::Requested));
    assert_eq!(report.exit, Some(by_signal(Signal::SIGTERM)));
    assert_eq!(
        report.trace.kill_sent, None,
        "the ladder itself never reached SIGKILL"
    );
    assert!(!children.is_empty());
    assert_eq!(shutdown(worker).await, Some(by_signal(Signal::SIGTERM)));
    (children, report.containment, report.escaped)
}

/// The setsid escapee under each containment mode this machine supports.
async fn setsid_escapee_under(t: &Ctx, containment: Containment, expect: ContainmentMode) {
    let (children, mode, escaped) = cancel_tree_in(t, &[mode::SETSID_ESCAPE], containment).await;
    assert_eq!(mode, expect);
    assert_eq!(children.len(), 1);
    if expect == ContainmentMode::ProcessGroup {
        // The documented limit of a bare process group: the escapee is still running. Prove
        // it, then clean up by pid.
        assert!(
            t.is_running(children[0]),
            "a process group cannot hold a setsid child"
        );
        let pid = nix::unistd::Pid::from_raw(children[0] as i32);
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    } else {
        assert_eq!(escaped, children, "the report names the escapee");
    }
    t.wait_gone(children[0], "the setsid escapee").await;
}

#[test]
fn setsid_escapee_is_killed_in_a_cgroup() {
    if !cgroup_available() {
        eprintln!("skipped: cannot create cgroup v2 leaves here");
        return;
    }
    e2e("setsid_escapee_is_killed_in_a_cgroup", |t| async move {
        setsid_escapee_under(&t, Containment::Cgroup, ContainmentMode::Cgroup).await;
    });
}

#[test]
fn setsid_escapee_is_killed_as_subreaper() {
    // Subreaper containment makes the whole process a subreaper whose orphan reaper takes
    // every zombie child warden does not own, which here would include this harness's own
    // children (a host process, `cargo tree`): it runs in a test process of its own.
    run_in_own_process("tree::setsid_escapee_is_killed_as_subreaper_in_this_process");
}

#[test]
#[ignore = "run in a process of its own by setsid_escapee_is_killed_as_subreaper"]
fn setsid_escapee_is_killed_as_subreaper_in_this_process() {
    e2e("setsid_escapee_is_killed_as_subreaper", |t| async move {
        setsid_escapee_under(&t, Containment::Subreaper, ContainmentMode::Subreaper).await;
    });
}

/// Runs the ignored test `name` of this binary in a child process, bounded by [`LIMIT`], and
/// fails if it does.
fn run_in_own_process(name: &str) {
    let exe = std::env::current_exe().expect("the test binary");
    let child = std::process::Command::new(exe)
        .args([
            "--exact",
            name,
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the test binary");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(LIMIT) {
        Ok(output) => output.expect("wait for the test process"),
        Err(_) => {
            // Its own harness kills what it started; this is the test process itself.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("{name} did not finish within {LIMIT:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn setsid_escapee_leaks_from_a_bare_process_group() {
    e2e(
        "setsid_escapee_leaks_from_a_bare_process_group",
        |t| async move {
            setsid_escapee_under(&t, Containment::ProcessGroup, ContainmentMode::ProcessGroup)
                .await;
        },
    );
}

/// Whether this machine lets us create cgroup v2 leaves (root or a delegated subtree).
pub(crate) fn cgroup_available() -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Some(mount) = info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4))?
    }) else {
        return false;
    };
    let probe = std::path::Path::new(mount).join(format!("warden-probe-{}", std::process::id()));
    let ok = std::fs::create_dir(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    ok
}

#[test]
fn workers_die_with_a_sigkilled_supervisor() {
    // RELIABILITY #10: a supervisor that links warden (here the fixture in host mode, its own
    // exec shim) is SIGKILLed; PDEATHSIG and the channel's EOF take its workers down.
    e2e("workers_die_with_a_sigkilled_supervisor", |t| async move {
        let mut host = std::process::Command::new(env!("CARGO_BIN_EXE_fixture-worker"))
            .arg(mode::HOST)
            .arg("5")
            .env(warden_tests::MARKER_VAR, t.marker())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("host");
        let stdout = host.stdout.take().expect("stdout");
        let line = within(
            LIMIT,
            "the host's pid line",
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                let _ =
                    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
                line
            }),
        )
        .await
        .expect("reader");
        let pids: Vec<u32> = line
            .trim()
            .strip_prefix("pids:")
            .expect("a pids: line")
            .split(',')
            .map(|p| p.parse().expect("pid"))
            .collect();
        assert_eq!(pids.len(), 5);
        host.kill().expect("SIGKILL the host");
        host.wait().expect("reap the host");
        for pid in pids {
            t.wait_gone(pid, "a worker of the SIGKILLed supervisor")
                .await;
        }
    });
}

#[test]
fn fork_tree_is_gone_after_the_job() {
    e2e("fork_tree_is_gone_after_the_job", |t| async move {
        let children = cancel_tree(&t, &[mode::FORK_TREE, "3"]).await;
        assert_eq!(children.len(), 3);
        // They survived the polite signal; the group SIGKILL after the leader's exit ends them.
        for pid in children {
            t.wait_gone(pid, "a child in the worker's process group")
                .await;
        }
    });
}

#[test]
fn setsid_escapee_is_gone_after_the_job() {
    e2e("setsid_escapee_is_gone_after_the_job", |t| async move {
        let children = cancel_tree(&t, &[mode::SETSID_ESCAPE]).await;
        assert_eq!(children.len(), 1);
        for pid in children {
            t.wait_gone(pid, "a child that left the worker's session")
                .await;
        }
    });
}

#[test]
fn the_cgroup_guard_holds_no_descriptor_of_the_host() {
    if !cgroup_available() {
        eprintln!("skipped: cannot create cgroup v2 leaves here");
        return;
    }
    // The guard is started once per process, with the first cgroup: in a process of its own,
    // this test's tree is that first one.
    run_in_own_process("tree::the_cgroup_guard_holds_no_descriptor_of_the_host_in_this_process");
}

#[test]
#[ignore = "run in a process of its own by the_cgroup_guard_holds_no_descriptor_of_the_host"]
fn the_cgroup_guard_holds_no_descriptor_of_the_host_in_this_process() {
    use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    e2e(
        "the_cgroup_guard_holds_no_descriptor_of_the_host",
        |t| async move {
            // A pipe whose write end the host has made inheritable, as a host does for a
            // child of its own, at the moment warden starts its guard (a regression: the guard
            // kept it, and the host's reader never saw EOF while the supervisor lived).
            let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe");
            fcntl(&write, FcntlArg::F_SETFD(FdFlag::empty())).expect("make it inheritable");
            let config =
                WorkerConfig::protocol().tree(TreeOptions::new().containment(Containment::Cgroup));
            let worker = t.spawn(&[mode::COOPERATIVE], config).await;
            drop(write);
            let eof = tokio::task::spawn_blocking(move || {
                let mut fds = [PollFd::new(read.as_fd(), PollFlags::POLLIN)];
                let ready = poll(&mut fds, PollTimeout::from(5_000u16)).expect("poll");
                let mut byte = [0u8; 1];
                ready == 1 && nix::unistd::read(&read, &mut byte).expect("read") == 0
            })
            .await
            .expect("the poll task");
            assert!(
                eof,
                "a copy of the host's pipe outlived its last close by the host"
            );
            shutdown(worker).await;
        },
    );
}
