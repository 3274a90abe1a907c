//! Differential tests: warden's `timeout` argument layer against the GNU
//! coreutils programs installed on this machine (`/usr/bin/timeout`, and
//! `/usr/bin/env` for signal names).
//!
//! Each case runs GNU on the same argv with a command that exits at once
//! (`true`, or a name that does not exist) and compares: accepted or
//! rejected, exit status 125 and the exact stderr text (GNU's program name in
//! both) for rejected ones, help/version for those. GNU runs with `LC_ALL=C`
//! because under `cfg(test)` warden renders messages in the C-locale form
//! whatever the runner's locale; the binary's UTF-8 quoting is compared with
//! GNU's in `tests/cli/gnu.rs`.
//!
//! Every case also states the expected outcome, so warden is still checked
//! when GNU is absent (the GNU side is then skipped with a message). Every GNU
//! run is bounded by a watchdog that kills it by PID (it is never reaped
//! before that), and afterwards its process group must be gone and its
//! output pipes closed by every process that inherited them.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use super::duration::Interval;
use super::signals::{parse_signal, signal_name};
use super::timeout::{Parsed, parse};

const GNU_TIMEOUT: &str = "/usr/bin/timeout";
const GNU_ENV: &str = "/usr/bin/env";
/// Far longer than any of these runs takes; only a hang reaches it.
const WATCHDOG: Duration = Duration::from_secs(30);

/// What the test expects warden (and GNU 9.1) to do with a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Both run the command.
    Accept,
    /// Both reject it with status 125 and the same message.
    Reject,
    /// Both print help and exit 0.
    Help,
    /// Both print their version and exit 0.
    Version,
    /// warden accepts what GNU 9.1 rejects as an invalid option (`-f`, `-p`,
    /// known to newer coreutils); a newer GNU may accept it too.
    NewerShortOption(char),
    /// warden rejects it as upstream coreutils does, where GNU 9.1 accepted it; the reason
    /// names the upstream change.
    UpstreamReject(&'static str),
}

use Expect::{Accept, Help, NewerShortOption, Reject, UpstreamReject, Version};

const CASES: &[(&[&str], Expect)] = &[
    // DURATION: suffixes, fractions, exponents, hex floats, infinity.
    (&["5", "true"], Accept),
    (&["5s", "true"], Accept),
    (&["2m", "true"], Accept),
    (&["0.5h", "true"], Accept),
    (&["1d", "true"], Accept),
    (&["1.5", "true"], Accept),
    (&[".5", "true"], Accept),
    (&["7.", "true"], Accept),
    (&["1e1", "true"], Accept),
    (&["2.5E+1s", "true"], Accept),
    (&["0x1p3", "true"], Accept),
    (&["0X1.8P1", "true"], Accept),
    (&["0x1d", "true"], Accept),
    (&["0x.8m", "true"], Accept),
    (&["inf", "true"], Accept),
    (&["INFINITY", "true"], Accept),
    (&["infinitys", "true"], Accept),
    (&["Infd", "true"], Accept),
    (&["1e400", "true"], Accept),
    (&["+5", "true"], Accept),
    (&[" 5", "true"], Accept),
    (&["\t\n5", "true"], Accept),
    (&["0", "true"], Accept),
    (&["0s", "true"], Accept),
    (&["--", "-0", "true"], Accept),
    (&["1e-400", "true"], Accept),
    (
        &["--", "-1e-400", "true"],
        UpstreamReject("9.7: an underflow keeps its sign, so this is negative (9.1: 0)"),
    ),
    (&["1e-10", "true"], Accept),
    // DURATION: rejected.
    (&["5 ", "true"], Reject),
    (&["5x", "true"], Reject),
    (&["5ss", "true"], Reject),
    (&["5S", "true"], Reject),
    (&["1M", "true"], Reject),
    (&["--", "-1", "true"], Reject),
    (&["-1", "true"], Reject),
    (&["--", "-1e-320", "true"], Reject),
    (&["--", "-inf", "true"], Reject),
    (&["", "true"], Reject),
    (&[" ", "true"], Reject),
    (&["nan", "true"], Reject),
    (&["NAN(1)", "true"], Reject),
    (&["infinit", "true"], Reject),
    (&[".", "true"], Reject),
    (&["1e", "true"], Reject),
    (&["1e+", "true"], Reject),
    (&["0x", "true"], Reject),
    (&["0x1p", "true"], Reject),
    (&["1,5", "true"], Reject),
    (&["a'b\\c", "true"], Reject),
    (&["1\n", "true"], Reject),
    (&["\u{1}\u{7f}é", "true"], Reject),
    // --signal: names, cases, prefix, numbers, real-time, invalid.
    (&["-s", "HUP", "5", "true"], Accept),
    (&["-s", "hup", "5", "true"], Accept),
    (&["-s", "SIGHUP", "5", "true"], Accept),
    (&["-s", "sigterm", "5", "true"], Accept),
    (&["-s", "Kill", "5", "true"], Accept),
    (&["-s", "iot", "5", "true"], Accept),
    (&["-s", "cld", "5", "true"], Accept),
    (&["-s", "Poll", "5", "true"], Accept),
    (&["-s", "exit", "5", "true"], Accept),
    (&["-s", "9", "5", "true"], Accept),
    (&["-s", "09", "5", "true"], Accept),
    (&["-s", "0", "5", "true"], Accept),
    (&["-s", "128", "5", "true"], Accept),
    (&["-s", "143", "5", "true"], Accept),
    (&["-s", "256", "5", "true"], Accept),
    (&["-s", "271", "5", "true"], Accept),
    (&["-s", "sig9", "5", "true"], Accept),
    (&["-s", "RTMIN", "5", "true"], Accept),
    (&["-s", "RTMIN+2", "5", "true"], Accept),
    (&["-s", "rtmin+2", "5", "true"], Accept),
    (&["-s", "SIGRTMIN+2", "5", "true"], Accept),
    (&["-s", "RTMAX-1", "5", "true"], Accept),
    (&["-s", "RTMAX-30", "5", "true"], Accept),
    (&["-s", "RTMIN 3", "5", "true"], Accept),
    (&["-s", "rtmin-0", "5", "true"], Accept),
    (&["-s", "RTMIN+31", "5", "true"], Reject),
    (&["-s", "RTMIN+", "5", "true"], Reject),
    (&["-s", "255", "5", "true"], Reject),
    (&["-s", "384", "5", "true"], Reject),
    (&["-s", "32", "5", "true"], Reject),
    (&["-s", "65", "5", "true"], Reject),
    (&["-s", "4294967311", "5", "true"], Reject),
    (&["-s", "+9", "5", "true"], Reject),
    (&["-s", " 9", "5", "true"], Reject),
    (&["-s", "-9", "5", "true"], Reject),
    (&["-s", "bogus", "5", "true"], Reject),
    (&["-s", "SIG", "5", "true"], Reject),
    (&["-s", "", "5", "true"], Reject),
    (&["--signal=a'b", "5", "true"], Reject),
    // --kill-after forms.
    (&["-k", "1", "5", "true"], Accept),
    (&["-k1", "5", "true"], Accept),
    (&["-k", "0", "5", "true"], Accept),
    (&["--kill-after=1", "5", "true"], Accept),
    (&["--kill-after", "1", "5", "true"], Accept),
    (&["--kill=1m", "5", "true"], Accept),
    (&["-k", "x", "5", "true"], Reject),
    (&["--kill-after=", "5", "true"], Reject),
    (&["-k", "1", "-k", "x", "5", "true"], Reject),
    (&["-k", "-1", "5", "true"], Reject),
    // Clustered short options.
    (&["-vs9", "5", "true"], Accept),
    (&["-vk1", "5", "true"], Accept),
    (&["-vk", "1", "5", "true"], Accept),
    (&["-vs", "HUP", "5", "true"], Accept),
    (&["-vv", "5", "true"], Accept),
    (&["-kv", "5", "true"], Reject),
    (&["-vx", "5", "true"], Reject),
    // `--` and the first operand end the options.
    (&["--", "5", "true"], Accept),
    (&["-v", "--", "5", "true"], Accept),
    (&["5", "--", "true"], Accept),
    (&["5", "--help"], Accept),
    (&["5", "no-such-command-for-warden", "-x"], Accept),
    (&["--", "--", "true"], Reject),
    (&["-", "true"], Reject),
    // Unique prefixes, ambiguous and unknown options.
    (&["--pre", "5", "true"], Accept),
    (&["--preserve-status", "5", "true"], Accept),
    (&["--fore", "5", "true"], Accept),
    (&["--foreground", "5", "true"], Accept),
    (&["--verb", "5", "true"], Accept),
    (&["--sig=HUP", "5", "true"], Accept),
    (&["--k", "1", "5", "true"], Accept),
    (&["--v", "5", "true"], Reject),
    (&["--ve", "5", "true"], Reject),
    (&["--ve=1", "5", "true"], Reject),
    (&["--=x", "5", "true"], Reject),
    (&["--foo", "5", "true"], Reject),
    (&["--foo=bar", "5", "true"], Reject),
    (&["--verbose=1", "5", "true"], Reject),
    (&["--pre=1", "5", "true"], Reject),
    (&["--help=x"], Reject),
    (&["-x", "5", "true"], Reject),
    (&["-+", "5", "true"], Reject),
    (&["-h"], Reject),
    // Missing operands and option values.
    (&[], Reject),
    (&["5"], Reject),
    (&["x"], Reject),
    (&["-v"], Reject),
    (&["-v", "5"], Reject),
    (&["--"], Reject),
    (&["-k"], Reject),
    (&["-vk"], Reject),
    (&["--kill"], Reject),
    (&["-s"], Reject),
    (&["--signal"], Reject),
    // Help and version, acting in order.
    (&["--help"], Help),
    (&["--he"], Help),
    (&["--help", "-x"], Help),
    (&["-v", "--help"], Help),
    (&["-s", "HUP", "--help", "bad"], Help),
    (&["-s", "bad", "--help"], Reject),
    (&["--version"], Version),
    (&["--vers"], Version),
    // Short forms GNU 9.1 lacks.
    (&["-f", "5", "true"], NewerShortOption('f')),
    (&["-p", "5", "true"], NewerShortOption('p')),
    (&["-vp", "5", "true"], NewerShortOption('p')),
];

fn os_args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// What a GNU program did.
#[derive(Debug)]
struct Observed {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs `program` (named `arg0` in its argv) with `args` under the watchdog,
/// and proves afterwards that it and its descendants are gone.
fn run_bounded(program: &str, arg0: &str, args: &[OsString]) -> Observed {
    let mut child = Command::new(program)
        .arg0(arg0)
        .args(args)
        .env("LC_ALL", "C")
        .env_remove("POSIXLY_CORRECT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in pid_t"));
    let (output_tx, output_rx) = mpsc::channel();
    for (stream, pipe) in [
        (
            "stdout",
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            "stderr",
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let mut pipe = pipe.expect("piped");
        let output_tx = output_tx.clone();
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let result = pipe.read_to_end(&mut bytes).map(|_| bytes);
            let _ = output_tx.send((stream, result));
        });
    }
    // Wait without reaping, so that the pid stays ours until we kill it.
    let (exited_tx, exited_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = exited_tx.send(waitid(
            Id::Pid(pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        ));
    });
    if exited_rx.recv_timeout(WATCHDOG).is_err() {
        // Still unreaped, so the pid (and the group it leads, if any) is
        // still this run's: take its descendants down with it.
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = kill(pid, Signal::SIGKILL);
        let _ = child.wait();
        panic!("{program} {args:?} did not exit within {WATCHDOG:?}; killed pid {pid}");
    }
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("reaping {program}: {e}"));
    let (mut stdout, mut stderr) = (None, None);
    for _ in 0..2 {
        let (stream, result) = output_rx
            .recv_timeout(WATCHDOG)
            .unwrap_or_else(|_| panic!("EOF on {program}'s output pipes for {args:?}"));
        let bytes = result.unwrap_or_else(|e| panic!("reading {program}'s {stream}: {e}"));
        if stream == "stdout" {
            stdout = Some(bytes);
        } else {
            stderr = Some(bytes);
        }
    }
    // `timeout` leads its own process group; nothing may be left in it.
    assert_eq!(
        killpg(pid, None),
        Err(Errno::ESRCH),
        "process group {pid} of {program} {args:?} still has members"
    );
    Observed {
        code: status.code(),
        stdout: stdout.unwrap_or_default(),
        stderr: stderr.unwrap_or_default(),
    }
}

fn gnu_available(program: &str) -> bool {
    if Path::new(program).exists() {
        true
    } else {
        eprintln!("skipping the GNU side: {program} is not installed");
        false
    }
}

/// The status GNU `timeout` exits with when it runs `command` to completion.
fn command_status(command: &OsString) -> i32 {
    if command == "true" { 0 } else { 127 }
}

/// Checks warden against the stated expectation and, if given, against GNU.
fn check_case(args: &[OsString], expect: Expect, gnu: Option<&Observed>) {
    let warden = parse(args);
    let warden_outcome = match &warden {
        Ok(Parsed::Run(_)) => Accept,
        Ok(Parsed::Help) => Help,
        Ok(Parsed::Version) => Version,
        Err(_) => Reject,
    };
    let expected_for_warden = match expect {
        NewerShortOption(_) => Accept,
        UpstreamReject(_) => Reject,
        other => other,
    };
    assert_eq!(
        warden_outcome, expected_for_warden,
        "warden on {args:?}: {warden:?}"
    );
    let Some(gnu) = gnu else { return };
    if let UpstreamReject(reason) = expect {
        assert_eq!(
            gnu.code,
            Some(0),
            "{args:?}: GNU 9.1 was expected to accept it ({reason})"
        );
        return;
    }
    let context = format!(
        "{args:?}: GNU exited {:?}, stdout {:?}, stderr {:?}; warden: {warden:?}",
        gnu.code,
        String::from_utf8_lossy(&gnu.stdout),
        String::from_utf8_lossy(&gnu.stderr)
    );
    match &warden {
        Err(error) => {
            assert_eq!(gnu.code, Some(125), "{context}");
            assert_eq!(error.exit_status(), 125);
            assert!(gnu.stdout.is_empty(), "{context}");
            let ours = error.render("timeout");
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&gnu.stderr),
                "{context}"
            );
            assert_eq!(ours, gnu.stderr, "{context}");
        }
        Ok(Parsed::Help) => {
            assert_eq!(gnu.code, Some(0), "{context}");
            assert!(
                gnu.stdout
                    .starts_with(b"Usage: timeout [OPTION] DURATION COMMAND"),
                "{context}"
            );
            assert!(gnu.stderr.is_empty(), "{context}");
        }
        Ok(Parsed::Version) => {
            assert_eq!(gnu.code, Some(0), "{context}");
            assert!(
                gnu.stdout.starts_with(b"timeout (GNU coreutils) "),
                "{context}"
            );
        }
        Ok(Parsed::Run(invocation)) => {
            if let (NewerShortOption(short), Some(125)) = (expect, gnu.code) {
                let expected = format!(
                    "timeout: invalid option -- '{short}'\nTry 'timeout --help' for more information.\n"
                );
                assert_eq!(String::from_utf8_lossy(&gnu.stderr), expected, "{context}");
                return;
            }
            let expected = command_status(&invocation.command);
            // A sub-second timer may fire before `true` exits: 124.
            let may_fire =
                matches!(invocation.duration, Interval::After(d) if d < Duration::from_secs(1));
            let fired = may_fire && gnu.code == Some(124);
            assert!(gnu.code == Some(expected) || fired, "{context}");
            if expected == 0 && !fired {
                assert!(gnu.stderr.is_empty(), "{context}");
            }
        }
    }
}

#[test]
fn argument_cases_match_gnu_timeout() {
    assert!(CASES.len() >= 40);
    let gnu = gnu_available(GNU_TIMEOUT);
    for &(case, expect) in CASES {
        let args = os_args(case);
        let observed = gnu.then(|| run_bounded(GNU_TIMEOUT, "timeout", &args));
        check_case(&args, expect, observed.as_ref());
    }
}

#[test]
fn non_utf8_arguments_match_gnu_timeout() {
    let gnu = gnu_available(GNU_TIMEOUT);
    let cases: &[(&[&[u8]], Expect)] = &[
        (&[b"-\xc3\xa9", b"5", b"true"], Reject),
        (&[b"--\xff", b"5", b"true"], Reject),
        (&[b"5\xff", b"true"], Reject),
        (&[b"-s", b"\xffHUP", b"5", b"true"], Reject),
        (&[b"5", b"\xff-no-such-command"], Accept),
    ];
    for &(case, expect) in cases {
        let args: Vec<OsString> = case
            .iter()
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect();
        let observed = gnu.then(|| run_bounded(GNU_TIMEOUT, "timeout", &args));
        check_case(&args, expect, observed.as_ref());
    }
}

/// Every number GNU might fold, as `-s N`: same acceptance, same message.
#[test]
fn signal_numbers_match_gnu_timeout() {
    let gnu = gnu_available(GNU_TIMEOUT);
    for number in 0..=300 {
        let args = os_args(&["-s", &number.to_string(), "5", "true"]);
        let expect = if parse(&args).is_ok() { Accept } else { Reject };
        let observed = gnu.then(|| run_bounded(GNU_TIMEOUT, "timeout", &args));
        check_case(&args, expect, observed.as_ref());
    }
}

/// Signal names as GNU prints them (`env --list-signal-handling` uses the
/// same `sig2str` as `timeout -v`), and the same names in other spellings
/// accepted by both.
#[test]
fn signal_names_match_gnu() {
    if !gnu_available(GNU_ENV) {
        return;
    }
    let listing = run_bounded(
        GNU_ENV,
        "env",
        &os_args(&["--ignore-signal", "--list-signal-handling", "true"]),
    );
    if listing.code != Some(0) {
        eprintln!(
            "skipping: {GNU_ENV} does not support --list-signal-handling: {}",
            String::from_utf8_lossy(&listing.stderr)
        );
        return;
    }
    // coreutils 9.1 writes the listing to stderr.
    let text = String::from_utf8(listing.stderr).expect("env's listing is ASCII");
    let timeout = gnu_available(GNU_TIMEOUT);
    let mut seen = 0;
    for line in text.lines() {
        // "RTMIN+1    (35): IGNORE"
        let (name, rest) = line.split_once(' ').expect("name then number");
        let number: i32 = rest
            .trim_start()
            .strip_prefix('(')
            .and_then(|r| r.split_once(')'))
            .and_then(|(n, _)| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        assert_eq!(signal_name(number), name, "signal {number}");
        for spelling in [name.to_owned(), name.to_lowercase(), format!("Sig{name}")] {
            let parsed = parse_signal(spelling.as_ref());
            assert_eq!(parsed, Ok(number), "{spelling}");
            let args = os_args(&["-s", &spelling, "5", "true"]);
            let observed = timeout.then(|| run_bounded(GNU_TIMEOUT, "timeout", &args));
            check_case(&args, Accept, observed.as_ref());
        }
        seen += 1;
    }
    assert!(seen >= 28, "env listed only {seen} signals:\n{text}");
}

/// Command lines built from a pool of options, values and operands by a
/// seeded generator, so that the combinations nobody thought to list are
/// compared too. `-f`/`-p` are left out (GNU 9.1 lacks them), as are timers
/// short enough to fire (GNU may then kill itself with `-s KILL`).
#[test]
fn random_command_lines_match_gnu_timeout() {
    const POOL: &[&str] = &[
        "-v",
        "-k",
        "-s",
        "-vk",
        "-vs9",
        "-ks",
        "-kv",
        "-x",
        "-vx",
        "--",
        "-",
        "--verbose",
        "--ve",
        "--v",
        "--kill-after",
        "--kill-after=1",
        "--kill=",
        "--signal=HUP",
        "--sig",
        "--pre",
        "--fore",
        "--foreground",
        "--preserve-status=1",
        "--=x",
        "--foo",
        "--help",
        "--version",
        "HUP",
        "sigint",
        "9",
        "0",
        "143",
        "255",
        "RTMIN+1",
        "bad",
        "5",
        "0",
        "inf",
        "1m",
        "2.5e1",
        "0x1p3",
        "x",
        "-1",
        "",
        " 5",
        "true",
    ];
    let gnu = gnu_available(GNU_TIMEOUT);
    // xorshift64*: deterministic, no dependency.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |bound: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let value = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33;
        usize::try_from(value).expect("33-bit value fits in usize") % bound
    };
    let mut outcomes = std::collections::HashMap::new();
    for _ in 0..400 {
        let length = 1 + next(5);
        let mut case: Vec<&str> = (0..length).map(|_| POOL[next(POOL.len())]).collect();
        if next(2) == 0 {
            case.extend(["5", "true"]);
        }
        let args = os_args(&case);
        let expect = match parse(&args) {
            Ok(Parsed::Run(_)) => Accept,
            Ok(Parsed::Help) => Help,
            Ok(Parsed::Version) => Version,
            Err(_) => Reject,
        };
        *outcomes.entry(format!("{expect:?}")).or_insert(0) += 1;
        let observed = gnu.then(|| run_bounded(GNU_TIMEOUT, "timeout", &args));
        check_case(&args, expect, observed.as_ref());
    }
    eprintln!("random command lines by outcome: {outcomes:?}");
    for outcome in [Accept, Reject, Help, Version] {
        let count = outcomes.get(&format!("{outcome:?}")).copied().unwrap_or(0);
        assert!(
            count >= 10,
            "only {count} random cases were {outcome:?}: {outcomes:?}"
        );
    }
}
