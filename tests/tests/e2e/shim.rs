//! The exec shim and the cgroup guard: errors found only at exec time come back as typed
//! errors, signals a tree asks for start ignored, and a SIGKILLed supervisor's trees get the
//! death signal and orphan ladders they asked for.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use warden::{Command, Containment, SetupStep, SpawnError, Tree, TreeOptions, WorkerConfig};
use warden_tests::{MARKER_VAR, mode};

use crate::support::*;

/// Writes an executable file through a child shell, not from this process: a write
/// descriptor of ours, inherited for a moment by a child another test forks, would make its
/// exec fail with ETXTBSY instead of the error a test expects.
fn script(t: &Ctx, name: &str, contents: &str) -> TempFile {
    let file = t.file(name, "", 0o755);
    let status = std::process::Command::new("/bin/sh")
        .args(["-c", r#"printf %s "$1" > "$2""#, "sh", contents])
        .arg(file.path())
        .status()
        .expect("run sh to write a script");
    assert!(status.success());
    file
}

fn errno(error: &SpawnError) -> Option<i32> {
    match error {
        SpawnError::NotExecutable { source, .. } | SpawnError::Setup { source, .. } => {
            source.raw_os_error()
        }
        _ => None,
    }
}

async fn spawn_err(cmd: &Command, options: TreeOptions) -> SpawnError {
    match within(LIMIT, "a spawn that fails", Tree::spawn(cmd, options)).await {
        Ok(tree) => panic!("spawned pid {} where exec should fail", tree.pid()),
        Err(e) => e,
    }
}

#[test]
fn exec_time_failures_are_typed_errors_with_their_errno() {
    e2e("exec_time_failures_are_typed_errors", |t| async move {
        let missing = script(&t, "missing-interpreter", "#!/nonexistent/warden-interp\n");
        let mut cmd = Command::new(missing.path());
        cmd.env(MARKER_VAR, t.marker());
        for containment in [Containment::Auto, Containment::ProcessGroup] {
            let options = TreeOptions::new().containment(containment);
            let error = spawn_err(&cmd, options).await;
            assert!(
                matches!(error, SpawnError::NotFound { .. }),
                "{containment:?}: {error:?}"
            );
        }
        // A protocol worker never gets to its handshake: the same error, not an exit status.
        let error = within(
            LIMIT,
            "a worker spawn that fails",
            warden::Worker::spawn(&cmd, WorkerConfig::protocol()),
        )
        .await
        .expect_err("a worker whose #! interpreter is missing");
        assert!(matches!(error, SpawnError::NotFound { .. }), "{error:?}");

        // Open for writing (by us) while it is executed.
        let busy = script(&t, "busy", "#!/bin/sh\nexit 0\n");
        let writer = std::fs::OpenOptions::new()
            .append(true)
            .open(busy.path())
            .expect("open the script for writing");
        let mut cmd = Command::new(busy.path());
        cmd.env(MARKER_VAR, t.marker());
        let error = spawn_err(&cmd, TreeOptions::new()).await;
        assert!(
            matches!(error, SpawnError::NotExecutable { .. }),
            "{error:?}"
        );
        assert_eq!(errno(&error), Some(libc::ETXTBSY), "{error:?}");
        let error = within(
            LIMIT,
            "a worker spawn that fails",
            warden::Worker::spawn(&cmd, WorkerConfig::protocol()),
        )
        .await
        .expect_err("a busy worker");
        assert_eq!(errno(&error), Some(libc::ETXTBSY), "{error:?}");
        drop(writer);

        // A step before exec: the kernel refuses the death signal.
        let mut cmd = Command::new("true");
        cmd.env(MARKER_VAR, t.marker());
        let error = spawn_err(&cmd, TreeOptions::new().death_signal(1000)).await;
        assert!(
            matches!(
                error,
                SpawnError::Setup {
                    step: SetupStep::DeathSignal,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(errno(&error), Some(libc::EINVAL));
        // Nothing of any of these is left, not even a zombie: each was reaped before the
        // error came back.
        t.wait_none_marked("the failed spawns' processes").await;
    });
}

/// The signals `/proc/PID/status` lists as ignored.
fn ignored_by(pid: u32) -> Vec<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).expect("hex SigIgn"))
        .expect("a SigIgn line");
    (1..=64)
        .filter(|sig| mask & (1 << (sig - 1)) != 0)
        .collect()
}

#[test]
fn listed_signals_start_ignored_and_the_rest_at_default() {
    e2e("listed_signals_start_ignored", |t| async move {
        let mut cmd = Command::new("sleep");
        cmd.arg("60").env(MARKER_VAR, t.marker());
        // In ascending order, as /proc lists them.
        let asked = [libc::SIGHUP, libc::SIGUSR1, libc::SIGPIPE];
        for (options, want) in [
            (TreeOptions::new().ignored_signals(asked), asked.to_vec()),
            // Nothing: not the SIGPIPE the shim's Rust runtime ignores, nor glibc's internal
            // signals that its posix_spawn leaves ignored.
            (TreeOptions::new(), Vec::new()),
        ] {
            let before = std::time::Instant::now();
            let mut tree = within(LIMIT, "spawn sleep", Tree::spawn(&cmd, options))
                .await
                .expect("spawn sleep");
            // The moment the process was created is taken during the spawn.
            assert!(before <= tree.started_at() && tree.started_at() <= std::time::Instant::now());
            // Tree::spawn returns once the program is exec'd: its dispositions are final.
            assert_eq!(ignored_by(tree.pid()), want);
            let _ = tree.kill_tree();
            within(LIMIT, "the tree's end", tree.finish(LIMIT)).await;
        }
        let error = spawn_err(&cmd, TreeOptions::new().ignored_signals([libc::SIGKILL])).await;
        assert!(
            matches!(error, SpawnError::InvalidSignal { signal } if signal == libc::SIGKILL),
            "{error:?}"
        );
    });
}

/// warden's cgroup base directories of `pid`, under our own cgroup (it was our child).
fn cgroup_bases_of(pid: u32) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(mount) = info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4))?
    }) else {
        return Vec::new();
    };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Some(own) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Vec::new();
    };
    let infix = format!("-{pid}-");
    std::fs::read_dir(Path::new(mount).join(own.trim_start_matches('/')))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("warden-") && n.contains(&infix))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_sigkilled_supervisors_trees_get_their_death_signal_and_orphan_ladder() {
    if !crate::tree::cgroup_available() {
        eprintln!("skipped: cannot create cgroup v2 leaves here");
        return;
    }
    e2e("orphan_ladder", |t| async move {
        let record = t.file("record", "", 0o644);
        let mut host = std::process::Command::new(FIXTURE)
            .arg(mode::ORPHAN_HOST)
            .arg(record.path())
            .env(MARKER_VAR, t.marker())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the host");
        let stdout = host.stdout.take().expect("stdout");
        // Members by tag; the host's line comes once every tree is spawned, and members
        // announce themselves once SIGTERM is blocked.
        let members = within(
            LIMIT,
            "five members and the host's line",
            tokio::task::spawn_blocking(move || {
                let mut members: BTreeMap<String, Vec<u32>> = BTreeMap::new();
                let mut host = false;
                for line in std::io::BufReader::new(stdout).lines() {
                    let line = line.expect("read the host's stdout");
                    let words: Vec<&str> = line.split_whitespace().collect();
                    match words.as_slice() {
                        ["member", tag, pid] => members
                            .entry((*tag).to_owned())
                            .or_default()
                            .push(pid.parse().expect("pid")),
                        ["host", _] => host = true,
                        _ => panic!("unexpected line {line:?}"),
                    }
                    if host && members.values().map(Vec::len).sum::<usize>() == 5 {
                        break;
                    }
                }
                members
            }),
        )
        .await
        .expect("reader");
        let host_pid = host.id();
        assert_eq!(cgroup_bases_of(host_pid).len(), 1, "the host's cgroup base");
        let killed = std::time::Instant::now();
        host.kill().expect("SIGKILL the host");
        host.wait().expect("reap the host");

        for pids in members.values() {
            for &pid in pids {
                t.wait_gone(pid, "a member of a SIGKILLed supervisor's tree")
                    .await;
            }
        }
        // Bounded by LIMIT (20 s), well below tree a's 60 s delay: the guard saw a empty
        // (its members exit on SIGTERM) rather than waiting the delay out.
        within(LIMIT, "the guard to remove the host's cgroups", async {
            while !cgroup_bases_of(host_pid).is_empty() {
                tokio::time::sleep(ms(5)).await;
            }
        })
        .await;
        eprintln!(
            "orphan ladder: host SIGKILLed to its cgroups removed in {:?} (tree b's delay: 300 ms)",
            killed.elapsed()
        );
        t.wait_none_marked("the guard and every member").await;

        let text = std::fs::read_to_string(record.path()).expect("the record");
        let mut recorded: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for line in text.lines() {
            let (tag, pid) = line.split_once(' ').expect("TAG PID");
            recorded
                .entry(tag.to_owned())
                .or_default()
                .push(pid.parse().expect("pid"));
        }
        for pids in recorded.values_mut() {
            pids.sort_unstable();
        }
        let mut expected = members.clone();
        // `d` has the defaults: SIGKILL from PDEATHSIG and the guard, no SIGTERM ever.
        expected.remove("d");
        for pids in expected.values_mut() {
            pids.sort_unstable();
        }
        assert_eq!(
            recorded, expected,
            "a: both members ran their trap (the guard signalled the child, which PDEATHSIG \
             never reaches); b: took SIGTERM, then was killed after the delay; c: PDEATHSIG \
             was SIGTERM; d: nothing"
        );
    });
}
