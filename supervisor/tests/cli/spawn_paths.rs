//! The ways warden starts a program with setup: the direct spawn (a vfork-style child that
//! does the setup itself, one exec; made by clone3 straight into the tree's cgroup, or by
//! `clone` and a `cgroup.procs` write with `WARDEN_SPAWN=clone`) and the exec shim
//! (`WARDEN_SPAWN=shim`, a second exec). Each case runs under each and must give the same
//! result: the limits are in place before the program's first instruction, the program is in
//! its cgroup, no signal starts blocked or ignored, only fds 0-2 are inherited, the sandbox's
//! `no_new_privs` and seccomp hold (the sandbox always goes through the shim), and exec errors
//! (missing, not executable, no `#!`) come back the same.

use crate::support::{Ended, Finished, Proc, TempDir, WARDEN, command, new_mark};

fn run(mode: Option<&str>, args: &[&str]) -> Finished {
    let mark = new_mark();
    let mut cmd = command(WARDEN, args, &mark);
    match mode {
        Some(mode) => cmd.env("WARDEN_SPAWN", mode),
        None => cmd.env_remove("WARDEN_SPAWN"),
    };
    Proc::start(&format!("{mode:?} {args:?}"), cmd, &mark).finish()
}

/// Prints the rlimits, whether it is in a warden cgroup, its blocked and ignored signals, and
/// the shell's open descriptors.
const PROBE: &str = "ulimit -t; ulimit -n; grep -c warden- /proc/self/cgroup || true; \
    grep -E '^(SigBlk|SigIgn):' /proc/self/status; ls /proc/$$/fd | tr '\\n' ' '";

#[test]
fn the_direct_spawn_and_the_shim_set_up_the_same() {
    let dir = TempDir::new();
    let script = dir.file("no-shebang", "exit 7\n", 0o755);
    let plain = dir.file("plain-file", "exit 0\n", 0o644);
    let mut seen = Vec::new();
    for mode in [None, Some("clone"), Some("shim")] {
        let probe = run(
            mode,
            &[
                "run",
                "--cpu-time",
                "7s",
                "--max-files",
                "99",
                "--",
                "sh",
                "-c",
                PROBE,
            ],
        );
        assert_eq!(probe.ended, Ended::Code(0), "{mode:?}: {}", probe.stderr);
        let lines: Vec<&str> = probe.stdout.lines().collect();
        assert_eq!(
            lines.get(..2),
            Some(&["7", "99"][..]),
            "{mode:?}: {lines:?}"
        );
        assert!(
            probe.stdout.contains("SigBlk:\t0000000000000000")
                && probe.stdout.contains("SigIgn:\t0000000000000000"),
            "{mode:?}: {}",
            probe.stdout
        );
        // The shell's own descriptors: 0, 1, 2 and nothing inherited above them.
        assert!(
            lines.last().is_some_and(|l| l.trim() == "0 1 2"),
            "{mode:?}: {lines:?}"
        );
        let missing = run(mode, &["run", "--", "/nonexistent/program"]);
        assert_eq!(
            missing.ended,
            Ended::Code(127),
            "{mode:?}: {}",
            missing.stderr
        );
        let not_executable = run(mode, &["run", "--", &plain]);
        assert_eq!(not_executable.ended, Ended::Code(126), "{mode:?}");
        let no_shebang = run(mode, &["run", "--", &script]);
        assert_eq!(
            no_shebang.ended,
            Ended::Code(7),
            "{mode:?}: {}",
            no_shebang.stderr
        );
        let sandboxed = run(
            mode,
            &[
                "run",
                "--sandbox",
                "--",
                "sh",
                "-c",
                "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
            ],
        );
        assert_eq!(
            sandboxed.ended,
            Ended::Code(0),
            "{mode:?}: {}",
            sandboxed.stderr
        );
        seen.push((
            probe.stdout,
            missing.stderr,
            not_executable.stderr,
            sandboxed.stdout,
        ));
    }
    assert_eq!(seen[0], seen[1], "clone3 and clone differ");
    assert_eq!(seen[0], seen[2], "the direct spawn and the shim differ");
}
