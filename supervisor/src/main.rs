//! The `warden` command line: `warden timeout` (a GNU `timeout` drop-in that contains the whole
//! process tree), `warden run` (one program or SDK worker job under warden's full ladder) and
//! `warden batch` (one job per line of stdin, N at a time).

mod cli;

use std::ffi::OsString;
use std::process::ExitCode;

const HELP: &str = "\
Usage: warden timeout [OPTION]... DURATION COMMAND [ARG]...
  or:  warden run [OPTIONS] -- PROGRAM [ARG]...
  or:  warden batch -j N [OPTIONS] -- PROGRAM [ARG]...
  or:  warden --help | --version

Run work that cannot be trusted to stop when asked, and stop all of it when it must: the
program and every process it starts, including descendants that leave its process group.

Commands:
  timeout   GNU coreutils timeout, same options and exit statuses, but signals and kills
            the whole process tree ('warden timeout --help')
  run       run PROGRAM (or one job of an SDK worker) under the escalation ladder:
            cooperative cancel, polite signal, SIGKILL; JSON report ('warden run --help')
  batch     one job per line of stdin, N at a time, each under the ladder; JSON Lines
            report, exit status the count of jobs that did not complete ('warden batch --help')

Signals to warden itself (SIGINT, SIGTERM):
  1st  stop the work: the ladder with its deadlines ('timeout': forwarded as GNU does)
  2nd  SIGKILL every process tree now
  3rd  exit at once (128 + the signal)

Containment: a cgroup v2 leaf per tree where warden may create one, else warden becomes a
child subreaper and sweeps adopted descendants, else the process group only. Choose with
'warden run --containment' or $WARDEN_CONTAINMENT (auto, cgroup, subreaper, process-group).
As PID 1 (in a container), warden also reaps every orphaned zombie.
";

fn main() -> ExitCode {
    // First: when started as warden's exec shim this execs the target and never returns.
    warden::shim::run_if_shim();
    // What the caller left ignored, before anything of ours changes it: `warden timeout`
    // keeps those ignored in COMMAND as GNU does, `warden run` keeps SIGPIPE so.
    cli::unix::record_ignored_at_start();
    // Before any thread exists, so every thread (and the spawner) starts with this state.
    cli::unix::reset_inherited_signal_state();
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_default();
    let args: Vec<OsString> = argv.collect();
    // Installed as `timeout` (a symlink or hard link): GNU's command line, no subcommand word.
    if std::path::Path::new(&argv0).file_name() == Some(std::ffi::OsStr::new("timeout")) {
        cli::timeout::set_program_name(argv0.to_string_lossy().into_owned());
        return ExitCode::from(cli::timeout_main::main(&args));
    }
    let status = match args.split_first() {
        Some((command, rest)) if command == "timeout" => cli::timeout_main::main(rest),
        Some((command, rest)) if command == "run" => cli::run::main(rest),
        Some((command, rest)) if command == "batch" => cli::batch::main(rest),
        Some((flag, _)) if flag == "--help" || flag == "-h" || flag == "help" => {
            cli::timeout_main::print_stdout(HELP)
        }
        Some((flag, _)) if flag == "--version" || flag == "-V" => {
            cli::timeout_main::print_stdout(&format!("warden {}\n", env!("CARGO_PKG_VERSION")))
        }
        Some((other, _)) => {
            cli::out::say!(
                "warden: unknown command '{}' (try 'warden --help')",
                other.to_string_lossy()
            );
            cli::exit_status::EXIT_CANCELED
        }
        None => {
            cli::out::say!("warden: missing command: timeout, run or batch (try 'warden --help')");
            cli::exit_status::EXIT_CANCELED
        }
    };
    ExitCode::from(status)
}
