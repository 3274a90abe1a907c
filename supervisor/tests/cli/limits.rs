//! `warden run`'s limits and sandbox, on plugins that misbehave (the `plugin:*` roles of the
//! fixture): each is stopped or denied, the report names the mechanism and whether the limit
//! was hit, and neither a process nor a cgroup (v1 memory/pids included) is left behind.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::fixture::ROLE_VAR;
use crate::support::{
    Ended, Finished, LIMIT, MARK_VAR, Proc, TempDir, WARDEN, command, fixture_argv, new_mark,
};

/// Runs `warden run --report FILE OPTIONS -- <fixture plugin:ROLE>`; returns how it ended and
/// the report, after proving that nothing of the run is left: no process carrying its mark
/// (`finish`), and no cgroup of that warden in any hierarchy.
fn run_plugin(options: &[&str], role: &str) -> (Finished, Value) {
    let dir = TempDir::new();
    let report_path = dir.0.join("report.json").to_string_lossy().into_owned();
    let mark = new_mark();
    let role_env = format!("{ROLE_VAR}=plugin:{role}");
    let mark_env = format!("{MARK_VAR}={mark}");
    let mut args = vec!["run", "--report", &report_path];
    args.extend_from_slice(options);
    if options.contains(&"--clear-env") {
        // The role and the mark must survive the cleared environment.
        args.extend(["--env", &role_env, "--env", &mark_env]);
    }
    args.push("--");
    let (exe, fixture_args) = fixture_argv();
    args.push(&exe);
    args.extend(fixture_args);
    let mut cmd = command(WARDEN, &args, &mark);
    cmd.env(ROLE_VAR, format!("plugin:{role}"));
    let proc = Proc::start(&format!("run {options:?} plugin:{role}"), cmd, &mark);
    let warden_pid = proc.pid();
    let done = proc.finish();
    assert_no_cgroups(warden_pid);
    let text = std::fs::read_to_string(&report_path)
        .unwrap_or_else(|e| panic!("no report ({e}); stderr: {}", done.stderr));
    (done, serde_json::from_str(&text).expect("report is JSON"))
}

/// Every cgroup directory warden `pid` made (`warden-<pidns>-<pid>-<start>`) is gone, in the
/// cgroup2 hierarchy and in the v1 memory and pids ones.
fn assert_no_cgroups(pid: i32) {
    let left = cgroups_of(pid);
    assert!(
        left.is_empty(),
        "cgroups of warden {pid} left behind: {left:?}"
    );
}

/// The cgroup directories of warden `pid` (`warden-<pidns>-<pid>-<start>`) in the cgroup2
/// hierarchy and the v1 memory and pids ones, wherever this test process sits in them (warden
/// inherited its place).
fn cgroups_of(pid: i32) -> Vec<PathBuf> {
    let mut left = Vec::new();
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let place = |controller: &str| {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            let found = if controller.is_empty() {
                list.is_empty()
            } else {
                list.split(',').any(|c| c == controller)
            };
            found.then(|| path.trim_start_matches('/').to_owned())
        })
    };
    for (mount, controller) in [
        ("/sys/fs/cgroup/memory", "memory"),
        ("/sys/fs/cgroup/pids", "pids"),
        ("/sys/fs/cgroup/unified", ""),
        ("/sys/fs/cgroup", ""),
    ] {
        let Some(path) = place(controller) else {
            continue;
        };
        let dir = Path::new(mount).join(path);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        left.extend(
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let fields: Vec<&str> = name.split('-').collect();
                    fields.len() == 4 && fields[0] == "warden" && fields[2] == pid.to_string()
                })
                .map(|e| e.path()),
        );
    }
    left
}

fn limit<'a>(report: &'a Value, name: &str) -> &'a Value {
    let entry = &report["limits"][name];
    assert!(entry.is_object(), "no {name} in the limits: {report}");
    entry
}

fn is_cgroup(mechanism: &Value) -> bool {
    mechanism == "cgroup_v2" || mechanism == "cgroup_v1"
}

#[test]
fn a_plugin_allocating_1_gib_under_64_mib_is_killed_by_the_oom_killer_and_the_limit_named() {
    let (done, report) = run_plugin(&["--memory", "64M"], "alloc:1024");
    let memory = limit(&report, "memory");
    assert_eq!(memory["value"], 64 << 20);
    assert!(is_cgroup(&memory["mechanism"]), "{report}");
    assert_eq!(memory["hit"], true, "{report}");
    assert!(memory["oom_kills"].as_u64() >= Some(1), "{report}");
    assert!(memory["peak"].as_u64() <= Some(64 << 20), "{report}");
    assert_eq!(report["outcome"], "killed", "{report}");
    assert_eq!(report["limit"], "memory");
    assert_eq!(report["signal"], 9);
    assert_eq!(
        report["stage"],
        Value::Null,
        "warden sent nothing: {report}"
    );
    assert_eq!(done.ended, Ended::Code(137));
    assert!(!done.stdout.contains("allocated"), "{}", done.stdout);
}

#[test]
fn a_busy_loop_under_one_cpu_second_dies_of_sigxcpu() {
    let (done, report) = run_plugin(&["--cpu-time", "1"], "spin");
    let cpu = limit(&report, "cpu_time");
    assert_eq!(cpu["mechanism"], "rlimit");
    assert_eq!(cpu["value"], 1000);
    assert_eq!(cpu["hit"], true, "{report}");
    assert_eq!(report["outcome"], "killed", "{report}");
    assert_eq!(report["limit"], "cpu_time");
    assert_eq!(report["signal"], libc::SIGXCPU);
    assert_eq!(done.ended, Ended::Code(128 + libc::SIGXCPU));
    // One CPU-second, not the fixture's own 60 s bound (the machine may be busy: generous).
    assert!(done.elapsed.as_secs() < 15, "{:?}", done.elapsed);
}

#[test]
fn two_hundred_files_under_a_limit_of_32_fail_with_emfile() {
    let (done, report) = run_plugin(&["--max-files", "32"], "files:200");
    let files = limit(&report, "open_files");
    assert_eq!(files["mechanism"], "rlimit");
    assert_eq!(files["hit"], Value::Null, "an rlimit has no counter");
    let opened: usize = done
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("opened "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no result line: {}", done.stdout));
    assert!(opened < 32, "{}", done.stdout);
    assert!(
        done.stdout.contains("Too many open files"),
        "{}",
        done.stdout
    );
    assert_eq!(done.ended, Ended::Code(3));
    assert_eq!(report["outcome"], "failed");
}

#[test]
fn a_bounded_fork_bomb_under_max_procs_8_peaks_at_8_and_leaves_nothing() {
    let (done, report) = run_plugin(&["--max-procs", "8"], "procs:50");
    let procs = limit(&report, "processes");
    assert!(is_cgroup(&procs["mechanism"]), "{report}");
    assert_eq!(procs["hit"], true, "{report}");
    let peak = procs["peak"].as_u64().expect("pids.peak");
    assert!((2..=8).contains(&peak), "{report}");
    let started: u64 = done
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("started "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no result line: {}", done.stdout));
    assert!(
        started <= 7,
        "the plugin itself is one of the 8: {}",
        done.stdout
    );
    // It exited 0 after forks were refused: not completed, and the limit is named.
    assert_eq!(report["outcome"], "failed", "{report}");
    assert_eq!(report["limit"], "processes");
    assert_eq!(done.ended, Ended::Code(1));
}

#[test]
fn a_write_outside_allow_write_is_denied_and_inside_it_works() {
    let allowed = TempDir::new();
    let outside = TempDir::new();
    let allowed_dir = allowed.0.to_string_lossy().into_owned();
    let inside = allowed.0.join("ok");
    let (done, report) = run_plugin(
        &["--allow-write", &allowed_dir],
        &format!("write:{}", inside.display()),
    );
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stdout);
    assert!(inside.exists());
    assert_eq!(report["limits"]["sandbox"]["landlock_fs"], true, "{report}");
    let denied = outside.0.join("no");
    let (done, _) = run_plugin(
        &["--allow-write", &allowed_dir],
        &format!("write:{}", denied.display()),
    );
    assert_eq!(done.ended, Ended::Code(3), "{}", done.stdout);
    assert!(done.stdout.contains("Permission denied"), "{}", done.stdout);
    assert!(!denied.exists());
}

#[test]
fn a_tcp_connect_under_no_network_is_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen on 127.0.0.1");
    let addr = listener.local_addr().expect("address").to_string();
    // The listener works: without --no-network the same plugin connects.
    let (done, _) = run_plugin(&["--sandbox"], &format!("connect:{addr}"));
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stdout);
    let (done, report) = run_plugin(&["--no-network"], &format!("connect:{addr}"));
    assert_eq!(done.ended, Ended::Code(3), "{}", done.stdout);
    assert!(done.stdout.contains("Permission denied"), "{}", done.stdout);
    assert_eq!(
        report["limits"]["sandbox"]["landlock_net"], true,
        "{report}"
    );
}

#[test]
fn a_sandboxed_plugin_cannot_signal_warden_or_ptrace_and_runs_with_nnp_and_seccomp() {
    let (done, report) = run_plugin(&["--sandbox"], "signal-parent");
    assert_eq!(done.ended, Ended::Code(3), "{}", done.stdout);
    assert!(done.stdout.contains("EPERM"), "{}", done.stdout);
    for feature in [
        "close_fds",
        "no_new_privs",
        "landlock_fs",
        "scope_abstract_sockets",
        "scope_signals",
        "seccomp",
    ] {
        assert_eq!(
            report["limits"]["sandbox"][feature], true,
            "{feature}: {report}"
        );
    }
    let (done, _) = run_plugin(&["--sandbox"], "ptrace");
    assert_eq!(done.ended, Ended::Code(3), "{}", done.stdout);
    assert!(done.stdout.contains("EPERM"), "{}", done.stdout);
    let (done, _) = run_plugin(&["--sandbox"], "status");
    assert!(done.stdout.contains("NoNewPrivs: 1"), "{}", done.stdout);
    assert!(done.stdout.contains("Seccomp: 2"), "{}", done.stdout);
    // Unsandboxed, the same plugin may signal its parent.
    let (done, _) = run_plugin(&[], "signal-parent");
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stdout);
}

#[test]
fn a_sandboxed_plugin_cannot_connect_to_an_abstract_socket_made_outside_it() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("warden-test-{}", new_mark());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .expect("abstract address");
    let _listener =
        std::os::unix::net::UnixListener::bind_addr(&addr).expect("listen on an abstract socket");
    let (done, _) = run_plugin(&[], &format!("abstract:{name}"));
    assert_eq!(done.ended, Ended::Code(0), "unsandboxed: {}", done.stdout);
    let (done, report) = run_plugin(&["--sandbox"], &format!("abstract:{name}"));
    assert_eq!(done.ended, Ended::Code(3), "{}", done.stdout);
    assert!(
        done.stdout.contains("Operation not permitted"),
        "{}",
        done.stdout
    );
    assert_eq!(report["limits"]["sandbox"]["scope_abstract_sockets"], true);
}

#[test]
fn a_sandboxed_plugin_sees_fds_0_1_2_only_and_clear_env_gives_exactly_its_env() {
    let (done, _) = run_plugin(&["--sandbox"], "fds");
    assert!(
        done.stdout.lines().any(|l| l == "fds 0,1,2"),
        "{}",
        done.stdout
    );
    let (done, _) = run_plugin(&["--clear-env", "--env", "PLUGIN_A=b=c"], "env");
    let mut names: Vec<&str> = done
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("env "))
        .map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k))
        .collect();
    names.sort_unstable();
    // WARDEN_TREE: the tree's tag, which warden itself needs to find adopted orphans.
    assert_eq!(
        names,
        [
            "PLUGIN_A",
            "WARDEN_CLI_FIXTURE",
            "WARDEN_CLI_TEST_MARK",
            "WARDEN_TREE"
        ],
        "{}",
        done.stdout
    );
    assert!(done.stdout.contains("env PLUGIN_A=b=c"), "{}", done.stdout);
}

#[test]
fn bad_limit_values_give_one_line_and_125() {
    for bad in [
        &["--memory", "64Q"][..],
        &["--memory", "0"],
        &["--cpu-time", "soon"],
        &["--max-files", "-3"],
        &["--max-procs", "0"],
        &["--env", "NOEQUALS"],
    ] {
        let mut args = vec!["run"];
        args.extend_from_slice(bad);
        args.extend(["--", "/bin/true"]);
        let done = crate::support::run(WARDEN, &args);
        assert_eq!(done.ended, Ended::Code(125), "{bad:?}: {}", done.stderr);
        assert_eq!(done.stderr.lines().count(), 1, "{bad:?}: {}", done.stderr);
        assert!(done.stderr.starts_with("warden run: "), "{}", done.stderr);
    }
}

#[test]
fn a_sigkilled_warden_leaves_no_process_and_no_cgroup_v1_or_v2() {
    let mark = new_mark();
    let (exe, fixture_args) = fixture_argv();
    let mut args = vec!["run", "--memory", "64M", "--max-procs", "16", "--", &exe];
    args.extend(fixture_args);
    let mut cmd = command(WARDEN, &args, &mark);
    cmd.env(ROLE_VAR, "plugin:hang");
    let mut proc = Proc::start("run --memory --max-procs plugin:hang", cmd, &mark);
    let pid = proc.pid();
    proc.wait_line("the plugin's ready line", |l| l == "ready");
    let made = cgroups_of(pid);
    assert!(
        made.iter().any(|p| p.starts_with("/sys/fs/cgroup/memory"))
            && made.iter().any(|p| p.starts_with("/sys/fs/cgroup/pids")),
        "this host puts both limits in v1 cgroups: {made:?}"
    );
    proc.signal(Signal::SIGKILL);
    // The guard kills the tree (so nothing marked survives: `finish` checks) and removes
    // every cgroup; its removal of the v1 ones comes last, after the tree is gone.
    let done = proc.finish();
    assert_eq!(done.ended, Ended::Signal(libc::SIGKILL));
    let deadline = std::time::Instant::now() + LIMIT;
    while !cgroups_of(pid).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_no_cgroups(pid);
}
