//! Bad arguments give one clear line on stderr and status 125; help and version work.

use crate::support::{Ended, Proc, WARDEN, command, new_mark, run};

fn one_line_125(args: &[&str], mentions: &str) {
    let done = run(WARDEN, args);
    assert_eq!(done.ended, Ended::Code(125), "{args:?}: {}", done.stderr);
    assert_eq!(
        done.stderr.lines().count(),
        1,
        "{args:?}: {:?}",
        done.stderr
    );
    assert!(
        done.stderr.contains(mentions),
        "{args:?} should mention {mentions:?}: {}",
        done.stderr
    );
    assert!(done.stdout.is_empty(), "{args:?}: {}", done.stdout);
}

#[test]
fn bad_arguments_give_one_line_and_125() {
    one_line_125(&[], "missing command");
    one_line_125(&["frobnicate"], "unknown command 'frobnicate'");
    one_line_125(&["run"], "<PROGRAM>");
    one_line_125(&["run", "--bogus", "--", "true"], "--bogus");
    one_line_125(
        &["run", "--timeout", "soon", "--", "true"],
        "invalid time interval 'soon'",
    );
    one_line_125(
        &["run", "--grace", "-1", "--", "true"],
        "invalid time interval '-1'",
    );
    one_line_125(
        &["run", "--signal", "FOO", "--", "true"],
        "'FOO': invalid signal",
    );
    one_line_125(&["run", "--input", "x", "--", "true"], "--protocol");
    one_line_125(&["run", "--containment", "jail", "--", "true"], "jail");
}

#[test]
fn timeout_usage_errors_are_gnus() {
    let done = run(WARDEN, &["timeout", "-x", "1", "true"]);
    assert_eq!(done.ended, Ended::Code(125));
    assert_eq!(
        done.stderr,
        "warden timeout: invalid option -- 'x'\nTry 'warden timeout --help' for more information.\n"
    );
    let done = run(WARDEN, &["timeout", "5"]);
    assert_eq!(done.ended, Ended::Code(125));
    assert_eq!(
        done.stderr,
        "Try 'warden timeout --help' for more information.\n"
    );
}

#[test]
fn bad_containment_environment_is_125() {
    for sub in [&["timeout", "5", "true"][..], &["run", "--", "true"]] {
        let mark = new_mark();
        let mut cmd = command(WARDEN, sub, &mark);
        cmd.env("WARDEN_CONTAINMENT", "jail");
        let done = Proc::start("bad WARDEN_CONTAINMENT", cmd, &mark).finish();
        assert_eq!(done.ended, Ended::Code(125), "{sub:?}");
        assert_eq!(done.stderr.lines().count(), 1, "{}", done.stderr);
        assert!(
            done.stderr.contains("WARDEN_CONTAINMENT"),
            "{}",
            done.stderr
        );
    }
}

#[test]
fn help_and_version() {
    let done = run(WARDEN, &["--help"]);
    assert_eq!(done.ended, Ended::Code(0));
    for text in ["warden timeout", "warden run", "2nd", "3rd", "PID 1"] {
        assert!(done.stdout.contains(text), "--help lacks {text:?}");
    }
    let done = run(WARDEN, &["run", "--help"]);
    assert_eq!(done.ended, Ended::Code(0));
    for text in [
        "--timeout",
        "--grace",
        "--kill-after",
        "--protocol",
        "--report",
        "2nd",
        "137",
    ] {
        assert!(done.stdout.contains(text), "run --help lacks {text:?}");
    }
    let done = run(WARDEN, &["timeout", "--help"]);
    assert_eq!(done.ended, Ended::Code(0));
    assert!(done.stdout.starts_with("Usage: warden timeout"));
    let done = run(WARDEN, &["--version"]);
    assert_eq!(done.ended, Ended::Code(0));
    assert!(done.stdout.starts_with("warden "));
}
