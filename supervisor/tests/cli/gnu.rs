//! `warden timeout` against GNU coreutils `timeout` (9.1 here) on the same command lines.
//!
//! Each case runs both (concurrently) and compares how they ended, their stdout, and their
//! stderr with GNU's program name replaced by warden's. The one accepted difference: when GNU
//! sends SIGKILL it sends it to its own process group too, so it dies of SIGKILL, where warden
//! (outside the command's tree) exits with status 137: the same status to a shell.
//!
//! Every case also states what warden must do, so warden is still checked without GNU.
//! Timing is one-sided throughout: a command that should time out sleeps 60 s against a
//! DURATION of at most 0.2 s, one that should not exits at once against 30 s; signals to the
//! supervisor are sent only after the command printed `ready`. A command that must first set
//! a trap (to ignore or catch the signal) prints `ready` once it has, and its timeout is then
//! fired with SIGALRM, which is how both implement their timer: with a real 0.1 s timer, a
//! slow shell start under load would get the signal before its trap.

use std::os::unix::process::CommandExt;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::{
    Ended, ExecFailures, Finished, GNU_TIMEOUT, LIMIT, Proc, TempDir, WARDEN, command,
    gnu_available, new_mark,
};

struct Case {
    name: &'static str,
    args: Vec<String>,
    /// Send this to the supervisor once the command printed `ready`.
    signal: Option<Signal>,
    /// What warden must do.
    expect: Ended,
    /// `LC_ALL` for both sides.
    locale: &'static str,
    /// More environment for both sides (`PATH`, a fixture role).
    env: Vec<(&'static str, String)>,
    /// warden follows upstream coreutils here, not the installed 9.1: why (the upstream
    /// change). GNU is not run for such a case; what warden must do is still checked.
    upstream: Option<&'static str>,
}

fn case(name: &'static str, args: &[&str], expect: Ended) -> Case {
    Case {
        name,
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        signal: None,
        expect,
        locale: "C",
        env: Vec::new(),
        upstream: None,
    }
}

/// A case where warden follows upstream coreutils, not 9.1, for the reason given.
fn upstream(reason: &'static str, case: Case) -> Case {
    Case {
        upstream: Some(reason),
        ..case
    }
}

fn signalled(name: &'static str, args: &[&str], signal: Signal, expect: Ended) -> Case {
    Case {
        signal: Some(signal),
        ..case(name, args, expect)
    }
}

/// The timeout fires (SIGALRM to the supervisor) once the command printed `ready`.
fn timer_fired(name: &'static str, args: &[&str], expect: Ended) -> Case {
    signalled(name, args, Signal::SIGALRM, expect)
}

use Ended::{Code, Signal as Sig};

/// A command that exits 0 when it gets SIGTERM.
///
/// No background child: a TERM that arrives between a child's fork and its exec is caught by
/// the trap handler it inherited, and the program it then becomes never sees it (GNU would
/// leave it running). A foreground `sleep 1` hit that way just ends, and the trap runs then.
/// (The loop's stderr is dropped: whether sh reports the `sleep` as "Terminated" is a race.)
const EXIT0_ON_TERM: &str =
    r#"trap "exit 0" TERM; echo ready; while :; do sleep 1; done 2>/dev/null"#;
/// A command that ignores SIGTERM (and so does the `sleep` it becomes).
const IGNORE_TERM: &str = r#"trap "" TERM; echo ready; exec sleep 60"#;

fn run_side(program: &str, prefix: &[&str], case: &Case) -> Finished {
    let mark = new_mark();
    let mut args: Vec<&str> = prefix.to_vec();
    args.extend(case.args.iter().map(String::as_str));
    let what = format!("{} {program} {args:?}", case.name);
    let mut cmd = command(program, &args, &mark);
    cmd.env("LC_ALL", case.locale);
    cmd.envs(case.env.iter().map(|(k, v)| (k, v)));
    // GNU names itself after argv[0].
    cmd.arg0(if program == GNU_TIMEOUT {
        "timeout"
    } else {
        program
    });
    let mut proc = Proc::start(&what, cmd, &mark);
    if let Some(sig) = case.signal {
        proc.wait_line("ready", |l| l == "ready" || l.starts_with("ready "));
        if program == GNU_TIMEOUT {
            wait_until_in_sigsuspend(proc.pid());
        }
        proc.signal(sig);
    }
    proc.finish()
}

/// GNU timeout 9.1 has a race: its child can exec and print before the parent has stored
/// the child's pid, and a signal handled in that window makes GNU `_exit(128 + sig)` and leave
/// the command running (reproduced here: about one run in ten). Later coreutils block the
/// signals across fork. The reference gets its signal only once it waits in `sigsuspend`.
fn wait_until_in_sigsuspend(pid: i32) {
    let start = Instant::now();
    let mut wchan_works = false;
    loop {
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        if wchan.contains("sigsuspend") {
            return;
        }
        wchan_works |= !wchan.is_empty() && wchan != "0";
        if !wchan_works && start.elapsed() > Duration::from_secs(2) {
            eprintln!("/proc/{pid}/wchan tells nothing on this kernel: not waiting for GNU");
            return;
        }
        assert!(
            start.elapsed() < LIMIT,
            "GNU timeout never waited in sigsuspend"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

fn normalise_gnu(stderr: &str) -> String {
    stderr
        .lines()
        .map(|line| match line.strip_prefix("timeout: ") {
            Some(rest) => format!("warden timeout: {rest}\n"),
            None => format!(
                "{}\n",
                line.replace("Try 'timeout --help'", "Try 'warden timeout --help'")
            ),
        })
        .collect()
}

/// A fixture's `ready PID` line as plain `ready`: the pids of the two sides differ.
fn without_pids(stdout: &str) -> String {
    stdout
        .lines()
        .map(|line| match line.strip_prefix("ready ") {
            Some(pid) if pid.bytes().all(|b| b.is_ascii_digit()) => "ready\n".to_owned(),
            _ => format!("{line}\n"),
        })
        .collect()
}

fn check(cases: &[Case]) {
    let gnu = gnu_available();
    for case in cases {
        let (warden, reference) = thread::scope(|scope| {
            let warden = scope.spawn(|| run_side(WARDEN, &["timeout"], case));
            let reference =
                (gnu && case.upstream.is_none()).then(|| run_side(GNU_TIMEOUT, &[], case));
            (warden.join().expect("warden side panicked"), reference)
        });
        assert_eq!(
            warden.ended, case.expect,
            "{}: warden ended {:?}, expected {:?}; stderr: {}",
            case.name, warden.ended, case.expect, warden.stderr
        );
        assert!(
            warden.elapsed < LIMIT,
            "{}: took {:?}",
            case.name,
            warden.elapsed
        );
        let Some(reference) = reference else { continue };
        let same_end = reference.ended == warden.ended
            || (reference.ended == Sig(libc::SIGKILL) && warden.ended == Code(137));
        assert!(
            same_end,
            "{}: GNU ended {:?}, warden {:?}",
            case.name, reference.ended, warden.ended
        );
        assert_eq!(
            without_pids(&warden.stdout),
            without_pids(&reference.stdout),
            "{}: stdout",
            case.name
        );
        assert_eq!(
            warden.stderr,
            normalise_gnu(&reference.stderr),
            "{}: stderr",
            case.name
        );
    }
}

#[test]
fn exit_statuses_match_gnu() {
    let dir = TempDir::new();
    let no_exec = dir.file("not-executable", "exit 0\n", 0o644);
    let no_shebang = dir.file("no-shebang", "echo from sh; exit 6\n", 0o755);
    let directory = dir.0.to_string_lossy().into_owned();
    let symlink_loop = dir.0.join("loop");
    std::os::unix::fs::symlink(&symlink_loop, &symlink_loop).expect("create a symlink loop");
    let symlink_loop = symlink_loop.to_string_lossy().into_owned();
    let too_long = "n".repeat(300);
    check(&[
        case("exit 0", &["30", "true"], Code(0)),
        case("exit 1", &["30", "false"], Code(1)),
        case("exit 3", &["30", "sh", "-c", "exit 3"], Code(3)),
        case(
            "exit 124 passes through",
            &["30", "sh", "-c", "exit 124"],
            Code(124),
        ),
        case("exit 255", &["30", "sh", "-c", "exit 255"], Code(255)),
        case(
            "output passes through",
            &["30", "sh", "-c", "echo out; echo err >&2"],
            Code(0),
        ),
        case("timed out", &["0.1", "sleep", "60"], Code(124)),
        timer_fired(
            "timed out, exits 0 on TERM",
            &["30", "sh", "-c", EXIT0_ON_TERM],
            Code(124),
        ),
        timer_fired(
            "-k needed",
            &["-k", "0.1", "30", "sh", "-c", IGNORE_TERM],
            Code(137),
        ),
        case(
            "--preserve-status after a timeout",
            &["--preserve-status", "0.1", "sleep", "60"],
            Code(143),
        ),
        timer_fired(
            "--preserve-status, command exits 7 on TERM",
            &[
                "--preserve-status",
                "30",
                "sh",
                "-c",
                r#"trap "exit 7" TERM; echo ready; while :; do sleep 1; done 2>/dev/null"#,
            ],
            Code(7),
        ),
        case(
            "--preserve-status without a timeout",
            &["--preserve-status", "30", "sh", "-c", "exit 5"],
            Code(5),
        ),
        timer_fired(
            "--preserve-status and -k: still 137",
            &[
                "--preserve-status",
                "-k",
                "0.1",
                "30",
                "sh",
                "-c",
                IGNORE_TERM,
            ],
            Code(137),
        ),
        case("not found", &["30", "warden-no-such-command"], Code(127)),
        case("not executable", &["30", &no_exec], Code(126)),
        case("a directory", &["30", &directory], Code(126)),
        case(
            "a symlink loop: glibc's strerror text",
            &["30", &symlink_loop],
            Code(126),
        ),
        case("a name longer than NAME_MAX", &["30", &too_long], Code(126)),
        case(
            "a script without #! runs under sh",
            &["30", &no_shebang],
            Code(6),
        ),
        case(
            "0 disables the timeout",
            &["0", "sh", "-c", "exit 4"],
            Code(4),
        ),
        case("inf never fires", &["inf", "sh", "-c", "exit 2"], Code(2)),
        case(
            "-k 0 disables the kill",
            &["-k", "0", "0.1", "sleep", "60"],
            Code(124),
        ),
    ]);
}

/// glibc's `execvp` search: a directory without the name is skipped, `EACCES` is remembered,
/// any other error ends the search.
#[test]
fn path_search_matches_gnu() {
    let first = TempDir::new();
    let second = TempDir::new();
    std::os::unix::fs::symlink("looped", first.0.join("looped")).expect("create a symlink loop");
    first.file("runnable", "exit 1\n", 0o644);
    second.file("runnable", "exit 5\n", 0o755);
    second.file("looped", "exit 6\n", 0o755);
    let (first_dir, second_dir) = (first.0.display(), second.0.display());
    let both = format!("/nonexistent-dir:{first_dir}:{second_dir}");
    let in_path = |name, args: &[&str], path: &str, expect| Case {
        env: vec![("PATH", path.to_owned())],
        ..case(name, args, expect)
    };
    let too_long = "n".repeat(300);
    check(&[
        in_path(
            "a non-executable file is passed over",
            &["30", "runnable"],
            &both,
            Code(5),
        ),
        in_path(
            "only a non-executable file: EACCES",
            &["30", "runnable"],
            &format!("{first_dir}"),
            Code(126),
        ),
        in_path(
            "a symlink loop ends the search",
            &["30", "looped"],
            &both,
            Code(126),
        ),
        in_path(
            "a name longer than NAME_MAX, an existing directory",
            &["30", &too_long],
            &both,
            Code(126),
        ),
        in_path(
            "a name longer than NAME_MAX, no existing directory",
            &["30", &too_long],
            "/nonexistent-dir",
            Code(127),
        ),
        in_path("an empty PATH", &["30", "runnable"], "", Code(127)),
    ]);
}

#[test]
fn signals_match_gnu() {
    check(&[
        case("-s KILL", &["-s", "KILL", "0.1", "sleep", "60"], Code(137)),
        case("-s 9", &["-s", "9", "0.1", "sleep", "60"], Code(137)),
        case("-s 1 (HUP)", &["-s", "1", "0.1", "sleep", "60"], Code(124)),
        case(
            "-s HUP --preserve-status",
            &["-s", "HUP", "--preserve-status", "0.1", "sleep", "60"],
            Code(129),
        ),
        case(
            "-s sigint",
            &["-s", "sigint", "0.1", "sleep", "60"],
            Code(124),
        ),
        case(
            "-s 0 then -k",
            &["-s", "0", "-k", "0.1", "0.1", "sleep", "60"],
            Code(137),
        ),
        case(
            "command dies of USR1: re-raised",
            &["30", "sh", "-c", "kill -USR1 $$"],
            Sig(libc::SIGUSR1),
        ),
        case(
            "command dies of SEGV: re-raised",
            &["30", "sh", "-c", "ulimit -c 0; kill -SEGV $$"],
            Sig(libc::SIGSEGV),
        ),
        case(
            "command dies of TERM on its own: re-raised",
            &["30", "sh", "-c", "kill -TERM $$"],
            Sig(libc::SIGTERM),
        ),
    ]);
}

#[test]
fn durations_match_gnu() {
    check(&[
        case("0.05s", &["0.05s", "sleep", "60"], Code(124)),
        case(".1", &[".1", "sleep", "60"], Code(124)),
        case("1e-1", &["1e-1", "sleep", "60"], Code(124)),
        case("0x.2p0 (0.125)", &["0x.2p0", "sleep", "60"], Code(124)),
        case("0.001m", &["0.001m", "sleep", "60"], Code(124)),
        case("+.1 with spaces", &["  +.1", "sleep", "60"], Code(124)),
        upstream(
            "9.7 rounds an underflow up to the smallest positive duration (9.1: 0, no timeout)",
            case("1e-400 times out", &["1e-400", "sleep", "60"], Code(124)),
        ),
        upstream(
            "9.7 keeps the sign of an underflow: a negative duration is invalid (9.1: 0)",
            case("bad: -1e-10000", &[" -1e-10000", "sleep", "60"], Code(125)),
        ),
        case("0e-400 is 0", &["0e-400", "sh", "-c", "exit 9"], Code(9)),
        case("100d", &["100d", "sh", "-c", "exit 8"], Code(8)),
        case("1e400 never fires", &["1e400", "true"], Code(0)),
        case("bad: 1x", &["1x", "true"], Code(125)),
        case("bad: -1", &["--", "-1", "true"], Code(125)),
        case("bad: -k nan", &["-k", "nan", "1", "true"], Code(125)),
    ]);
}

#[test]
fn verbose_and_foreground_match_gnu() {
    check(&[
        case("-v", &["-v", "0.1", "sleep", "60"], Code(124)),
        timer_fired(
            "-v with -k",
            &["-v", "-k", "0.1", "30", "sh", "-c", IGNORE_TERM],
            Code(137),
        ),
        case(
            "-v -s USR1",
            &["-v", "-s", "USR1", "0.1", "sleep", "60"],
            Code(124),
        ),
        upstream(
            "9.10 prints signal 0 as `0` (9.1: `EXIT`)",
            case(
                "-v -s 0 names 0",
                &["-v", "-s", "0", "-k", "0.1", "0.1", "sleep", "60"],
                Code(137),
            ),
        ),
        case("-v, no timeout: silent", &["-v", "30", "true"], Code(0)),
        case(
            "--foreground",
            &["--foreground", "0.1", "sleep", "60"],
            Code(124),
        ),
        timer_fired(
            "--foreground -v -k",
            &[
                "--foreground",
                "-v",
                "-k",
                "0.1",
                "30",
                "sh",
                "-c",
                IGNORE_TERM,
            ],
            Code(137),
        ),
        case(
            "--foreground --preserve-status",
            &["--foreground", "--preserve-status", "0.1", "sleep", "60"],
            Code(143),
        ),
    ]);
}

#[test]
fn forwarded_signals_match_gnu() {
    let ready_then_sleep: &[&str] = &["30", "sh", "-c", "echo ready; exec sleep 60"];
    let mut verbose: Vec<&str> = vec!["-v"];
    verbose.extend_from_slice(ready_then_sleep);
    check(&[
        signalled(
            "SIGTERM forwarded",
            ready_then_sleep,
            Signal::SIGTERM,
            Sig(libc::SIGTERM),
        ),
        signalled(
            "SIGINT forwarded",
            ready_then_sleep,
            Signal::SIGINT,
            Sig(libc::SIGINT),
        ),
        signalled(
            "SIGHUP forwarded",
            ready_then_sleep,
            Signal::SIGHUP,
            Sig(libc::SIGHUP),
        ),
        signalled(
            "-v: SIGTERM forwarded",
            &verbose,
            Signal::SIGTERM,
            Sig(libc::SIGTERM),
        ),
        signalled(
            "SIGALRM is a timeout",
            ready_then_sleep,
            Signal::SIGALRM,
            Code(124),
        ),
        signalled(
            "a forwarded signal starts the -k clock",
            &[
                "-k",
                "0.1",
                "30",
                "sh",
                "-c",
                r#"trap "" INT; echo ready; exec sleep 60"#,
            ],
            Signal::SIGINT,
            Code(137),
        ),
        signalled(
            "-s USR1 is handled and forwarded",
            &["-s", "USR1", "30", "sh", "-c", "echo ready; exec sleep 60"],
            Signal::SIGUSR1,
            Sig(libc::SIGUSR1),
        ),
        upstream(
            "9.10 handles every terminating signal: USR1 is forwarded and waited for (9.1 \
             died of it and left the command running)",
            signalled(
                "SIGUSR1 is forwarded; the command's trap runs",
                &[
                    "30",
                    "sh",
                    "-c",
                    r#"trap "echo trapped; exit 3" USR1; echo ready; while :; do sleep 1; done 2>/dev/null"#,
                ],
                Signal::SIGUSR1,
                Code(3),
            ),
        ),
        upstream(
            "9.10 handles SIGPIPE like any terminating signal (9.1 died of it)",
            signalled(
                "SIGPIPE is forwarded",
                ready_then_sleep,
                Signal::SIGPIPE,
                Sig(libc::SIGPIPE),
            ),
        ),
        signalled(
            "--foreground forwards too",
            &[
                "--foreground",
                "30",
                "sh",
                "-c",
                "echo ready; exec sleep 60",
            ],
            Signal::SIGTERM,
            Sig(libc::SIGTERM),
        ),
    ]);
}

/// In a UTF-8 locale (this machine's default is `LANG=C.UTF-8`) GNU quotes operands and
/// command names as `‘...’` and keeps printable characters; getopt's own messages keep `'`.
/// If C.UTF-8 is not installed, both fall back to the C locale and still agree.
#[test]
fn utf8_locale_messages_match_gnu() {
    let dir = TempDir::new();
    let no_exec = dir.file("not-executable-\u{e9}", "exit 0\n", 0o644);
    let utf8 = |name, args: &[&str], expect| Case {
        locale: "C.UTF-8",
        ..case(name, args, expect)
    };
    check(&[
        utf8("bad DURATION", &["x'\u{e9}\\", "true"], Code(125)),
        utf8(
            "bad DURATION, closing quote",
            &["1\u{2019}", "true"],
            Code(125),
        ),
        utf8(
            "bad DURATION, unprintable",
            &["\u{85}1\u{378}", "true"],
            Code(125),
        ),
        utf8("bad -s", &["-s", "\u{e9}t\u{e9}", "1", "true"], Code(125)),
        utf8("bad -k", &["-k", "1 s", "1", "true"], Code(125)),
        utf8("getopt keeps ASCII quotes", &["-x", "1", "true"], Code(125)),
        utf8(
            "not found",
            &["30", "no-such-\u{2018}cmd\u{2019}"],
            Code(127),
        ),
        utf8("not executable", &["30", &no_exec], Code(126)),
        utf8("-v", &["-v", "0.1", "sleep", "60"], Code(124)),
        Case {
            locale: "C.UTF-8",
            ..timer_fired(
                "-v with -k",
                &["-v", "-k", "0.1", "30", "sh", "-c", IGNORE_TERM],
                Code(137),
            )
        },
    ]);
}

/// Failures only `execve` can see: a `#!` line naming a missing interpreter (ENOENT: 127),
/// and a script open for writing while it is executed (ETXTBSY: 126), with GNU's exact
/// "failed to run command" text.
#[test]
fn exec_time_failures_match_gnu() {
    let dir = TempDir::new();
    let scripts = ExecFailures::new(&dir);
    let (missing, busy) = (&scripts.missing_interpreter, &scripts.busy);
    check(&[
        case(
            "a #! interpreter that does not exist",
            &["30", missing],
            Code(127),
        ),
        case("a script open for writing", &["30", busy], Code(126)),
    ]);
    drop(scripts);
}
