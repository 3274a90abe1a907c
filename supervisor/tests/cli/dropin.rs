//! warden installed as `timeout`, warden's own output never ending it, and the signals it
//! leaves ignored.
//!
//! Installed as `timeout` (argv[0]'s file name, through a symlink or hard link), the binary is
//! `warden timeout` with GNU's command line and GNU's program name in every message; compared
//! here byte for byte with GNU's own `timeout` run under the same argv[0]. Then warden's writes
//! to a closed pipe or a full device: dropped, never a panic, never a changed exit status
//! (except `--help`/`--version`, whose text is the point: 125, as GNU).

use std::os::unix::process::CommandExt;

use crate::support::{
    Ended, Finished, GNU_TIMEOUT, Proc, TempDir, WARDEN, command, gnu_available, new_mark,
    pidfd_open, wait_pidfd,
};

/// Runs `program` with argv[0] `argv0` and `args`, bounded, survivors checked.
fn run_as(program: &str, argv0: &str, args: &[&str]) -> Finished {
    let mark = new_mark();
    let mut cmd = command(program, args, &mark);
    cmd.arg0(argv0).env("LC_ALL", "C");
    Proc::start(&format!("{argv0} {args:?}"), cmd, &mark).finish()
}

#[test]
fn as_timeout_it_speaks_gnus_words_byte_for_byte() {
    let cases: &[(&[&str], Ended)] = &[
        (&["-/", "1", "true"], Ended::Code(125)),
        (&["--bogus", "1", "true"], Ended::Code(125)),
        (&["--kill", "1", "true"], Ended::Code(125)),
        (&["5"], Ended::Code(125)),
        (&["-s", "NOPE", "1", "true"], Ended::Code(125)),
        (&["x", "true"], Ended::Code(125)),
        (
            &["10", "sh", "-c", "echo out; echo err >&2; exit 3"],
            Ended::Code(3),
        ),
        (&["10", "warden-no-such-command"], Ended::Code(127)),
        (&["-v", "0.1", "sleep", "60"], Ended::Code(124)),
        (
            &["-v", "-k", "0.1", "-s", "0", "0.1", "sleep", "60"],
            Ended::Code(137),
        ),
    ];
    let gnu = gnu_available();
    for &(args, expect) in cases {
        let ours = run_as(WARDEN, "timeout", args);
        assert_eq!(ours.ended, expect, "{args:?}: {}", ours.stderr);
        if !gnu {
            continue;
        }
        let theirs = run_as(GNU_TIMEOUT, "timeout", args);
        let signal_zero = args.contains(&"0") && args.contains(&"-s");
        if signal_zero {
            // Upstream 9.10 prints `sending signal 0`; 9.1 here prints `EXIT`.
            assert_eq!(
                ours.stderr,
                "timeout: sending signal 0 to command 'sleep'\n\
                 timeout: sending signal KILL to command 'sleep'\n"
            );
            continue;
        }
        assert_eq!(ours.stderr, theirs.stderr, "{args:?}: stderr");
        assert_eq!(ours.stdout, theirs.stdout, "{args:?}: stdout");
    }
}

#[test]
fn as_timeout_help_and_version_name_it_timeout() {
    let help = run_as(WARDEN, "timeout", &["--help"]);
    assert_eq!(help.ended, Ended::Code(0));
    assert!(
        help.stdout.starts_with(
            "Usage: timeout [OPTION] DURATION COMMAND [ARG]...\n  or:  timeout [OPTION]\n"
        ),
        "{}",
        help.stdout
    );
    let version = run_as(WARDEN, "timeout", &["--version"]);
    assert_eq!(version.ended, Ended::Code(0));
    assert_eq!(
        version.stdout,
        format!("timeout (warden) {}\n", env!("CARGO_PKG_VERSION"))
    );
    // argv[0] as given, as GNU's program_name: a path stays a path.
    let done = run_as(WARDEN, "/usr/local/bin/timeout", &["-/"]);
    assert_eq!(
        done.stderr,
        "/usr/local/bin/timeout: invalid option -- '/'\n\
         Try '/usr/local/bin/timeout --help' for more information.\n"
    );
}

/// `ln -s "$(command -v warden)" DIR/timeout`, then an unmodified script's `timeout` runs it.
#[test]
fn a_symlink_named_timeout_on_path_is_found_by_scripts() {
    let dir = TempDir::new();
    std::os::unix::fs::symlink(WARDEN, dir.0.join("timeout")).expect("symlink");
    let path = format!(
        "{}:{}",
        dir.0.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mark = new_mark();
    let mut cmd = command(
        "/bin/sh",
        &["-c", "timeout -v 0.1 sleep 60; echo \"status $?\""],
        &mark,
    );
    cmd.env("PATH", path).env("LC_ALL", "C");
    let done = Proc::start("sh -c 'timeout ...'", cmd, &mark).finish();
    assert_eq!(done.ended, Ended::Code(0));
    assert_eq!(done.stdout, "status 124\n");
    assert_eq!(
        done.stderr,
        "timeout: sending signal TERM to command 'sleep'\n"
    );
}

/// Runs `script` under `sh -c` with `$W` set to warden; returns how it ended and the script's
/// stdout.
fn shell(script: &str) -> Finished {
    let mark = new_mark();
    let mut cmd = command("/bin/sh", &["-c", script], &mark);
    cmd.env("W", WARDEN).env("LC_ALL", "C");
    Proc::start(script, cmd, &mark).finish()
}

#[test]
fn a_closed_stderr_changes_nothing() {
    // The -v line goes to a pipe nobody reads: no panic (101), no early exit; the timeout's
    // status and the tree's death (the survivor scan) are as with a terminal.
    for script in [
        r#"{ { "$W" timeout -v .1 sleep 60 2>&1; echo "status $?" >&3; } | :; } 3>&1"#,
        r#"{ { "$W" timeout -v -s INT -k .1 .1 sh -c 'trap "" INT; exec sleep 60' 2>&1; echo "status $?" >&3; } | :; } 3>&1"#,
        r#"{ { "$W" run -v --timeout .1 -- sleep 60 2>&1; echo "status $?" >&3; } | :; } 3>&1"#,
        r#"{ { "$W" timeout 10 warden-no-such-command 2>&1; echo "status $?" >&3; } | :; } 3>&1"#,
    ] {
        let done = shell(script);
        let want = if script.contains("-k .1") {
            "status 137\n"
        } else if script.contains("no-such") {
            "status 127\n"
        } else {
            "status 124\n"
        };
        assert_eq!(done.stdout, want, "{script}: {}", done.stderr);
    }
}

#[test]
fn help_and_version_to_a_full_device_are_125() {
    for args in [
        "--help",
        "--version",
        "timeout --help",
        "timeout --version",
        "run --help",
        "run --version",
    ] {
        let done = shell(&format!("\"$W\" {args} >/dev/full; echo \"status $?\""));
        assert_eq!(
            done.stdout, "status 125\n",
            "warden {args}: {}",
            done.stderr
        );
    }
    let done = run_as(WARDEN, "timeout", &["--help"]);
    assert_eq!(done.ended, Ended::Code(0));
}

/// A report (or a result: the same write) that cannot be written is data lost: warden says so and exits 125,
/// after the ladder ran in full (no panic, nothing left running).
#[test]
fn a_report_or_output_to_a_closed_pipe_is_125_not_a_panic() {
    let done = shell(
        r#"{ { "$W" run --report - --timeout .1 -- sleep 60; echo "status $?" >&3; } | :; } 3>&1"#,
    );
    assert_eq!(done.stdout, "status 125\n", "{}", done.stderr);
    assert!(
        done.stderr.contains("cannot write the report"),
        "{}",
        done.stderr
    );
    // `--output -` goes through the same write (`write_to`) as `--report -`; an SDK fixture
    // cannot be used for it here, as libtest's own output would meet the closed pipe first.
}

/// The bits of `SigIgn` in `/proc/self/status` of the command, which prints them itself.
const PRINT_SIGIGN: &str = r#"grep SigIgn: /proc/self/status"#;

fn sigign_bits(line: &str) -> Vec<i32> {
    let hex = line
        .trim()
        .strip_prefix("SigIgn:")
        .unwrap_or_else(|| panic!("not a SigIgn line: {line:?}"))
        .trim();
    let mask = u64::from_str_radix(hex, 16).expect("hex mask");
    (1..=64)
        .filter(|sig| mask & (1 << (sig - 1)) != 0)
        .collect()
}

/// GNU's rule: a signal ignored when `timeout` started, that it does not handle itself, stays
/// ignored in COMMAND (`trap '' PIPE` makes `yes` see EPIPE, not die of SIGPIPE).
#[test]
fn timeout_leaves_ignored_signals_ignored() {
    let script = r#"(trap '' PIPE && "$W" timeout 10 yes | :) 2>&1"#;
    let done = shell(script);
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    assert!(
        done.stdout.contains("yes: standard output: Broken pipe"),
        "yes was not left to see EPIPE: {:?}",
        done.stdout
    );
    // Ignored at start: INT, USR1, PIPE, HUP; HUP is the -s signal (handled, so default in
    // COMMAND), and SIGALRM always gets warden's handler. Only what GNU leaves ignored is.
    let done = shell(&format!(
        r#"trap '' INT USR1 PIPE HUP ALRM; exec "$W" timeout -s HUP 10 sh -c '{PRINT_SIGIGN}'"#
    ));
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    assert_eq!(
        sigign_bits(&done.stdout),
        vec![libc::SIGINT, libc::SIGUSR1, libc::SIGPIPE],
        "{}",
        done.stdout
    );
}

/// `warden run` resets every disposition (an inherited ignored SIGTERM would break the
/// ladder) except SIGPIPE, which stays as inherited.
#[test]
fn run_resets_ignored_signals_but_sigpipe() {
    let done = shell(&format!(
        r#"trap '' INT TERM PIPE HUP; exec "$W" run -- sh -c '{PRINT_SIGIGN}'"#
    ));
    assert_eq!(done.ended, Ended::Code(0), "{}", done.stderr);
    assert_eq!(
        sigign_bits(&done.stdout),
        vec![libc::SIGPIPE],
        "{}",
        done.stdout
    );
    let done = shell(&format!(r#"exec "$W" run -- sh -c '{PRINT_SIGIGN}'"#));
    assert_eq!(
        sigign_bits(&done.stdout),
        Vec::<i32>::new(),
        "{}",
        done.stdout
    );
}

/// Upstream 9.10: a SIGKILLed `timeout` leaves COMMAND the `-s` signal (PR_SET_PDEATHSIG);
/// warden's cgroup guard gives the rest of the tree the same signal, then SIGKILL after `-k`.
/// The command and its child trap USR1 and say so (the child waits with the `wait` builtin,
/// which a trapped signal interrupts at once); a TERM-and-USR1-ignoring grandchild is
/// SIGKILLed after `-k` (the survivor scan proves it, once the guard, found before the kill
/// and held by a pidfd, has finished and exited).
#[test]
fn a_sigkilled_timeout_leaves_its_tree_the_signal_then_kill() {
    let trap = r#"trap 'echo "trapped $0"; exit 0' USR1"#;
    let script = format!(
        r#"{trap}
sh -c '{} ; echo ready-child; while :; do sleep 60 & wait $!; done' child &
sh -c 'trap "" USR1 TERM; echo ready-stubborn; exec sleep 60' &
echo ready-parent
while :; do sleep 1; done"#,
        trap.replace('\'', r#"'"'"'"#)
    );
    let cgroup = crate::escape::Mode::Cgroup;
    if !cgroup.available() {
        eprintln!("skipping: no cgroup containment here (the guard needs it)");
        return;
    }
    let mark = new_mark();
    let mut cmd = command(
        WARDEN,
        &[
            "timeout", "-s", "USR1", "-k", "2", "60", "sh", "-c", &script, "parent",
        ],
        &mark,
    );
    cmd.env("LC_ALL", "C")
        .env("WARDEN_CONTAINMENT", cgroup.arg());
    let mut proc = Proc::start("warden timeout, SIGKILLed", cmd, &mark);
    for ready in ["ready-parent", "ready-child", "ready-stubborn"] {
        proc.wait_line(ready, |l| l == ready);
    }
    let guard = crate::support::marked(&mark)
        .into_iter()
        .find(|s| s.comm == "warden-guard")
        .expect("warden's cgroup guard is running");
    let guard_fd = pidfd_open(guard.pid);
    proc.signal(nix::sys::signal::Signal::SIGKILL);
    proc.wait_line("the command's trap", |l| l == "trapped parent");
    // PDEATHSIG reaches only the command; the child's trap runs through the guard.
    proc.wait_line("the child's trap", |l| l == "trapped child");
    // The guard waits out -k for the stubborn one, kills it, removes the cgroups, exits.
    wait_pidfd(&guard_fd, 20_000, "the guard's end");
    let done = proc.finish();
    assert_eq!(done.ended, Ended::Signal(libc::SIGKILL), "{}", done.stderr);
}

/// `warden timeout` is a small single-threaded process, so it forks its cgroup guard rather
/// than exec it. The forked guard must start as an exec'd one would: only its order socket
/// (0) and /dev/null (1, 2) open, though warden inherited an fd 7 and holds its own runtime's
/// descriptors; no signal handler of warden's left (a forwarded USR1 would run warden's code
/// in it); an empty signal mask; a process group of its own; and the name `warden-guard`.
#[test]
fn a_forked_guard_holds_nothing_of_warden() {
    if !crate::escape::Mode::Cgroup.available() {
        eprintln!("skipping: no cgroup containment here (the guard needs it)");
        return;
    }
    let mark = new_mark();
    let mut cmd = command(
        "sh",
        &[
            "-c",
            r#"exec 7</dev/null; exec "$@""#,
            "sh",
            WARDEN,
            "timeout",
            "60",
            "sh",
            "-c",
            "echo ready; exec sleep 60",
        ],
        &mark,
    );
    cmd.env("WARDEN_CONTAINMENT", "cgroup");
    let mut proc = Proc::start("warden timeout with an inherited fd 7", cmd, &mark);
    proc.wait_line("ready", |l| l == "ready");
    let guard = crate::support::marked(&mark)
        .into_iter()
        .find(|s| s.comm == "warden-guard")
        .expect("warden's cgroup guard is running");
    let fds: std::collections::BTreeMap<String, String> =
        std::fs::read_dir(format!("/proc/{}/fd", guard.pid))
            .expect("the guard's fds")
            .flatten()
            .map(|e| {
                let target = std::fs::read_link(e.path()).unwrap_or_default();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    target.to_string_lossy().into_owned(),
                )
            })
            .collect();
    let names: Vec<&str> = fds.keys().map(String::as_str).collect();
    assert_eq!(names, ["0", "1", "2"], "{fds:?}");
    assert!(fds["0"].starts_with("socket:"), "{fds:?}");
    assert_eq!(
        (fds["1"].as_str(), fds["2"].as_str()),
        ("/dev/null", "/dev/null")
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", guard.pid)).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(field("SigBlk:"), "0000000000000000", "{status}");
    // glibc's own handlers (signals 32 and 33) are all a forked child may keep.
    let caught = u64::from_str_radix(&field("SigCgt:"), 16).unwrap();
    assert_eq!(caught & !(0b11 << 31), 0, "{status}");
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", guard.pid)).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let pgid: i32 = after_name.split(' ').nth(2).unwrap().parse().unwrap();
    assert_eq!(pgid, guard.pid, "{stat}");
    let guard_fd = pidfd_open(guard.pid);
    proc.signal(nix::sys::signal::Signal::SIGTERM);
    let done = proc.finish();
    assert_eq!(done.ended, Ended::Signal(libc::SIGTERM), "{}", done.stderr);
    wait_pidfd(&guard_fd, 20_000, "the guard's end");
}
