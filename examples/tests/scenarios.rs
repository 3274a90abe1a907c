//! The README's commands must keep working: run `demo`, a short `ladder-bench` and `plugin-host`
//! and check what they report. Each host proves its own workers are gone (the demo and the
//! plugin host check every worker's process group is empty); these tests prove the host itself
//! exited, and for the plugin host that nothing it started outlived it.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs `program` with `args`, waiting at most `limit`; returns its exit success and stdout.
fn run(program: &str, args: &[&str], limit: Duration) -> (bool, String) {
    let (ok, stdout, _) = run_with(program, args, &[], limit);
    (ok, stdout)
}

/// As [`run`], with `env` added to the program's environment; also returns its pid.
fn run_with(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> (bool, String, u32) {
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
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
            (output.status.success(), stdout, pid)
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

/// The environment variable that marks every process of one test run (set on the host, passed
/// to each plugin with `--env`, inherited by their children and warden's cgroup guard).
const MARKER_VAR: &str = "WARDEN_TEST_MARKER";

/// Every process whose environment holds `MARKER_VAR=marker` (zombies have none to read).
fn marked(marker: &str) -> Vec<u32> {
    let needle = format!("{MARKER_VAR}={marker}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
        })
        .collect()
}

/// Polls `leftovers` (every 10 ms, at most `limit`) until it finds nothing; what it found last.
fn gone_within<T>(limit: Duration, leftovers: impl Fn() -> Vec<T>) -> Vec<T> {
    let deadline = Instant::now() + limit;
    loop {
        let found = leftovers();
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Nothing of a plugin-host run is left: no process carries `marker` (the plugins, their
/// children, warden's cgroup guard, which exits once the host is gone), and no cgroup base of
/// the host remains (the guard removes it). Survivors are killed by pid, then reported.
fn assert_nothing_left(marker: &str, host: u32) {
    let survivors = gone_within(Duration::from_secs(10), || marked(marker));
    for &pid in &survivors {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let bases = gone_within(Duration::from_secs(10), || {
        warden_examples::cgroups::warden_bases(host)
    });
    assert!(
        survivors.is_empty(),
        "processes outlived plugin-host: {survivors:?}"
    );
    assert!(bases.is_empty(), "cgroups outlived plugin-host: {bases:?}");
}

/// The last cell of the row of `attack`: its verdict.
fn verdict<'a>(stdout: &'a str, attack: &str) -> &'a str {
    row(stdout, attack)
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .last()
        .unwrap_or_default()
}

/// A marker unique to this test.
fn marker(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{test}.{}.{nanos}", std::process::id())
}

#[test]
fn plugin_host_contains_every_attack_and_leaves_nothing_behind() {
    let marker = marker("plugin_host_contains_every_attack");
    let env_arg = format!("{MARKER_VAR}={marker}");
    let (ok, stdout, host) = run_with(
        env!("CARGO_BIN_EXE_plugin-host"),
        &["--env", &env_arg],
        &[(MARKER_VAR, &marker)],
        Duration::from_secs(120),
    );

    assert_nothing_left(&marker, host);
    assert!(ok, "plugin-host failed:\n{stdout}");
    let mut not_enforced = Vec::new();
    for attack in warden_examples::hostile::Attack::ALL {
        let name = attack.name();
        let verdict = verdict(&stdout, name);
        // Only a host lacking a feature may leave an attack unblocked, and only if it says so;
        // the channel and output attacks need nothing from the host.
        let host_dependent = !attack.is_channel_attack() && name != "stdout-flood";
        if host_dependent && verdict.starts_with("not enforced here") {
            not_enforced.push(format!("{name}: {verdict}"));
        } else {
            assert_eq!(verdict, "contained", "row of {name} in:\n{stdout}");
        }
    }
    if !not_enforced.is_empty() {
        eprintln!("not enforceable on this host (best effort): {not_enforced:#?}");
    }
    assert!(
        stdout.contains(&format!(
            "processes: {} workers shut down, every process group empty",
            warden_examples::hostile::Attack::ALL.len()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("cgroups: no tree cgroup left"), "{stdout}");
}

#[test]
fn plugin_host_unconfined_names_the_attacks_that_got_through() {
    let marker = marker("plugin_host_unconfined");
    let env_arg = format!("{MARKER_VAR}={marker}");
    // Quick attacks that nothing but the limits and the sandbox stops.
    let (ok, stdout, host) = run_with(
        env!("CARGO_BIN_EXE_plugin-host"),
        &[
            "--env",
            &env_arg,
            "--unconfined",
            "files",
            "write-outside",
            "garbage-frame",
        ],
        &[(MARKER_VAR, &marker)],
        Duration::from_secs(60),
    );
    assert_nothing_left(&marker, host);
    assert!(!ok, "an unconfined run must fail:\n{stdout}");
    assert!(row(&stdout, "files").contains("opened all 200"), "{stdout}");
    assert!(
        row(&stdout, "write-outside").contains("outside: written"),
        "{stdout}"
    );
    for attack in ["files", "write-outside"] {
        assert!(
            verdict(&stdout, attack).starts_with("NOT CONTAINED"),
            "row of {attack} in:\n{stdout}"
        );
    }
    // The channel is guarded whatever the sandbox.
    assert_eq!(verdict(&stdout, "garbage-frame"), "contained", "{stdout}");
}
