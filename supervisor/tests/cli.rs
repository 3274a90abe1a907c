//! The `warden` binary end to end, as users run it from shells, CI jobs and containers.
//!
//! - `gnu`: differential tests of `warden timeout` against the installed GNU `timeout`
//!   (statuses, signals, durations, `-k`, `--preserve-status`, `--foreground`, `-v` text,
//!   forwarded signals), each case also checked against its stated expectation;
//! - `escape`: trees that try to escape (background, setsid, setpgid, double-forked daemon,
//!   SIGTERM-ignoring grandchild, stopped child) under each containment this machine has,
//!   for both subcommands; nothing survives (process-group mode: the known leak is asserted,
//!   then cleaned up by PID);
//! - `ladder`: warden's own first, second and third stop signal, and inherited signal state;
//! - `jobctl`: Ctrl-Z and `fg` in a real terminal (tmux): the whole tree stops with warden and
//!   runs again after `fg`, and the deadline does not count the time stopped;
//! - `limits`: `warden run`'s limits and sandbox on misbehaving plugins (1 GiB under 64 MiB, a
//!   busy loop under one CPU-second, 200 files under 32, a fork bomb under 8 processes, a
//!   write outside `--allow-write`, a TCP connect under `--no-network`, signals and ptrace);
//!   no process and no cgroup (v1 included) is left;
//! - `output`: `--capture-output` with a 1 GiB flood (to /dev/null, and capped to warden's own
//!   stdout: head, marker and tail byte for byte), warden's peak RSS measured and bounded
//!   (generously), and a closed stdout of warden's own while it forwards;
//! - `report`: `warden run`'s JSON report and exit statuses, plain and SDK workers;
//! - `liveness`: `--unresponsive-after` with a worker that stops itself and one that never
//!   sends heartbeats;
//! - `batch`: `warden batch` in both modes: its JSON Lines, exit statuses (0, a count, 101),
//!   `{}` substitution and appending, retries, warm workers and their recycling, the ladder on
//!   a job that ignores SIGTERM, warden's first stop signal, bad input, an unwritable report;
//! - `pid1`: warden as PID 1 of a PID namespace, as a kubelet runs a container: SIGTERM, then
//!   SIGKILL of the namespace at the pod's grace; the ladder and the report finish first;
//! - `stop_signal`: `warden run --stop-signal USR1`: SIGUSR1 starts the ladder (a cooperative
//!   cancel) and the report names it; SIGTERM after it kills now; without it, USR1's default;
//! - `spawn_paths`: the direct spawn and the exec shim (`WARDEN_SPAWN=shim`) set a program up
//!   the same way (limits, cgroup, signals, descriptors, sandbox, exec errors);
//! - `args`: bad arguments (one line, status 125), help and version;
//! - `dropin`: the binary installed as `timeout` (GNU's words byte for byte), and warden's own
//!   output to a closed pipe or a full device.
//!
//! Fixture processes are this test binary started with `WARDEN_CLI_FIXTURE` set (see
//! `fixture`). Every run carries a mark in its environment; after it ends, a /proc scan for the
//! mark proves that nothing it started is still alive.

#[path = "cli/args.rs"]
mod args;
#[path = "cli/batch.rs"]
mod batch;
#[path = "cli/dropin.rs"]
mod dropin;
#[path = "cli/escape.rs"]
mod escape;
#[path = "cli/fixture.rs"]
mod fixture;
#[path = "cli/gnu.rs"]
mod gnu;
#[path = "cli/jobctl.rs"]
mod jobctl;
#[path = "cli/ladder.rs"]
mod ladder;
#[path = "cli/limits.rs"]
mod limits;
#[path = "cli/liveness.rs"]
mod liveness;
#[path = "cli/output.rs"]
mod output;
#[path = "cli/pid1.rs"]
mod pid1;
#[path = "cli/report.rs"]
mod report;
#[path = "cli/spawn_paths.rs"]
mod spawn_paths;
#[path = "cli/stop_signal.rs"]
mod stop_signal;
#[path = "cli/support.rs"]
mod support;

/// Not a test: the entry point of fixture processes. Does nothing in the test run itself.
#[test]
fn fixture() {
    fixture::main();
}
