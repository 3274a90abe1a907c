//! `warden run [OPTIONS] -- PROGRAM [ARG]...`: one program (or one job of an SDK worker) under
//! warden's full ladder, with a JSON report.
//!
//! Durations use the same grammar as `warden timeout` (GNU's: `1.5`, `2m`, `0x1p-3s`, `inf`),
//! so one spelling works everywhere and no second parser is needed. For `--timeout`, 0 means no
//! timeout (as in GNU `timeout`); for `--grace` and `--kill-after`, 0 means "the next stage at
//! once" and `inf` means "never escalate on a timer".
//!
//! Job control: on `SIGTSTP` (Ctrl-Z) warden suspends the worker ([`Worker::suspend`]: its
//! tree is frozen or SIGSTOPped, its deadlines paused), then stops itself; when continued it
//! resumes the worker. The time stopped does not count against `--timeout` or the ladder.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use libc::c_int;
use warden::{
    CancelReason, Command, Deadlines, JobOptions, JobReport, Limits, Outcome, OutputCapture,
    OutputSink, RunError, Sandbox, SpawnError, Stage, Stdio, TreeOptions, Worker, WorkerConfig,
};

use super::c_locale::quote;
use super::containment::{CONTAINMENT_ENV, ContainmentArg};
use super::duration::{Interval, parse_duration};
use super::exit_status::{EXIT_CANCELED, EXIT_CANNOT_INVOKE, EXIT_NOT_FOUND};
use super::out::{say, stdout_all};
use super::report::{Ending, RunFacts, exit_status, to_json};
use super::signal_set::SignalSet;
use super::signals::parse_signal;
use super::stop::{Stop, StopSignalArgs};
use super::timeout_main::{errno_text, error_chain, exec_errno};
use super::unix;

/// The name warden's diagnostics use for this command.
const PROGRAM: &str = "warden run";

/// How long the program gets to be reaped after SIGKILL before it is reported as pending.
pub(crate) const REAP_TIMEOUT: Duration = Duration::from_secs(5);

const AFTER_HELP: &str = "\
The ladder: on --timeout (or when warden is asked to stop) an SDK worker (--protocol) first
gets a cooperative cancel and --grace to stop; then the polite --signal and SIGCONT go to its
whole process tree, which gets --kill-after to exit; then the tree is SIGKILLed. A plain
program starts at the signal stage.

Signals to warden (SIGINT, SIGTERM, SIGHUP, and each --stop-signal), counted together:
  1st  run the ladder above with its deadlines (cancel reason: shutdown)
  2nd  SIGKILL every process tree now
  3rd  exit at once
warden then exits with 128 + the first signal; the report names it (\"stop_signal\").
Under Slurm, sbatch --signal=B:USR1@120 with --stop-signal USR1 gives the work its whole
ladder before the time limit ('Running under an engine' in the README).

Exit status:
  0-255  the program's own status when it completed or failed on its own
         (a protocol worker: 0 completed, 1 failed), 128+N if a signal killed it
  124    cancelled by --timeout or --unresponsive-after (cooperatively or by the
         polite signal)
  125    warden itself failed (bad arguments, I/O, containment unavailable)
  126    PROGRAM found but not runnable
  127    PROGRAM not found
  137    SIGKILL was needed: the kill stage was reached, or --signal was KILL
  128+N  warden itself received signal N

Containment (--containment, default from $WARDEN_CONTAINMENT, else auto): cgroup (a cgroup v2
leaf killed with cgroup.kill), subreaper (warden adopts and sweeps orphaned descendants),
process-group (descendants that leave the group escape). auto takes the strongest available.

Durations: a number with an optional suffix s, m, h or d (GNU timeout's grammar); inf never.

Limits and sandbox (untrusted plugins): --memory, --cpu-time, --max-files, --max-procs use the
strongest mechanism the host has (a cgroup v2 or v1 controller, else an rlimit) and the report's
\"limits\" says which one did; a limit that cannot be enforced is an error (125) unless
--best-effort. --sandbox sets no_new_privs, a Landlock ruleset (everything read-only, abstract
sockets and signals scoped to the tree) and a seccomp deny-list, and closes every fd but 0-2 and
the channel; --allow-write DIR and --no-network imply it. --clear-env starts PROGRAM with only
the --env variables (and what warden needs: WARDEN_FD, WARDEN_TREE).

Output (--capture-output; --stdout FILE, --stderr FILE and --output-cap SIZE imply it):
PROGRAM's stdout and stderr go through pipes warden drains, so it never blocks on a full pipe,
and are forwarded to warden's own (or the files). --output-cap keeps the head and the tail of
each stream with a line '[warden: N bytes of stdout truncated]' between; warden's memory stays
bounded either way. Once the tree is gone, output still held open by an escaped process is
read for at most 1 s, then cut. The report's output_tail has each stream's last 20 lines.

Examples:
  warden run --timeout 30s -- make test
  warden run --timeout 1m --report report.json -- ./legacy-batch --all
  warden run --protocol --input job.json --output result.bin --timeout 10m -- ./my-worker";

/// `warden run`'s arguments.
#[derive(Debug, Parser)]
#[command(
    name = "warden run",
    version,
    override_usage = "warden run [OPTIONS] [--] PROGRAM [ARG]...",
    about = "Run PROGRAM under a timeout and warden's escalation ladder, killing its whole process tree.",
    after_help = AFTER_HELP
)]
struct Args {
    /// Cancel the program after DURATION (0: never).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, value_parser = duration_arg)]
    timeout: Option<Interval>,
    /// Cooperative stage: how long an SDK worker has to stop after the cancel message.
    #[arg(long, value_name = "DURATION", default_value = "5s", allow_hyphen_values = true, value_parser = duration_arg)]
    grace: Interval,
    /// Signal stage: how long the tree has to exit after the polite signal before SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "5s", allow_hyphen_values = true, value_parser = duration_arg)]
    kill_after: Interval,
    /// The polite signal: a name (TERM, SIGINT, rtmin+2) or a number.
    #[arg(long, value_name = "SIGNAL", default_value = "TERM", allow_hyphen_values = true, value_parser = signal_arg)]
    signal: c_int,
    #[command(flatten)]
    stop: StopSignalArgs,
    /// Liveness (needs --protocol): when nothing, not even a heartbeat, comes from the worker
    /// for DURATION, cancel the job with reason unresponsive and run the ladder from there
    /// (0 or inf: off, the default). The worker is asked for a heartbeat every quarter of it.
    #[arg(long, value_name = "DURATION", requires = "protocol", allow_hyphen_values = true, value_parser = duration_arg)]
    unresponsive_after: Option<Interval>,
    /// PROGRAM is an SDK worker: run one job over warden's protocol.
    #[arg(long)]
    protocol: bool,
    /// The job's payload, from FILE or '-' (stdin); empty if not given. Needs --protocol.
    #[arg(long, value_name = "FILE", requires = "protocol")]
    input: Option<PathBuf>,
    /// Where the job's result bytes go: FILE or '-' (stdout, the default). Needs --protocol.
    #[arg(long, value_name = "FILE", requires = "protocol")]
    output: Option<PathBuf>,
    /// Write a JSON report of the run to FILE or '-' (stdout).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Log each step of the ladder to stderr.
    #[arg(short, long)]
    verbose: bool,
    /// How to contain the process tree.
    #[arg(long, value_enum, value_name = "MODE")]
    containment: Option<ContainmentArg>,
    /// Memory limit for the whole tree: bytes, or a number with K, M, G or T (powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    memory: Option<u64>,
    /// CPU-time limit for each process (whole seconds, rounded up): SIGXCPU when reached.
    #[arg(long, value_name = "DURATION", value_parser = cpu_time_arg)]
    cpu_time: Option<Duration>,
    /// Open-file limit for each process (RLIMIT_NOFILE).
    #[arg(long, value_name = "N", value_parser = count_arg)]
    max_files: Option<u64>,
    /// Process limit for the whole tree (pids.max; RLIMIT_NPROC only when not root).
    #[arg(long, value_name = "N", value_parser = count_arg)]
    max_procs: Option<u64>,
    /// A limit or sandbox feature this host cannot enforce is reported instead of an error.
    #[arg(long)]
    best_effort: bool,
    /// Run PROGRAM sandboxed: no_new_privs, Landlock read-only, seccomp deny-list, fds 0-2 only.
    #[arg(long)]
    sandbox: bool,
    /// A directory the sandboxed PROGRAM may write (repeatable; implies --sandbox).
    #[arg(long, value_name = "DIR")]
    allow_write: Vec<PathBuf>,
    /// Refuse TCP bind and connect in the sandbox (implies --sandbox).
    #[arg(long)]
    no_network: bool,
    /// Start PROGRAM with an empty environment, plus the --env variables.
    #[arg(long)]
    clear_env: bool,
    /// Set the variable K to V in PROGRAM's environment (repeatable).
    #[arg(long, value_name = "K=V", value_parser = env_arg)]
    env: Vec<(OsString, OsString)>,
    /// Capture PROGRAM's stdout and stderr through pipes warden drains and forwards (to its
    /// own, or --stdout/--stderr); the report's output_tail has their last lines.
    #[arg(long)]
    capture_output: bool,
    /// Forward the captured stdout to FILE (created or truncated; implies --capture-output).
    #[arg(long, value_name = "FILE")]
    stdout: Option<PathBuf>,
    /// Forward the captured stderr to FILE (created or truncated; implies --capture-output).
    #[arg(long, value_name = "FILE")]
    stderr: Option<PathBuf>,
    /// Forward at most SIZE bytes of each captured stream: its head and its tail, with a
    /// marker line between (K, M, G or T suffixes; implies --capture-output).
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    output_cap: Option<u64>,
    /// The program to run and its arguments.
    #[arg(
        value_name = "PROGRAM",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    command: Vec<OsString>,
}

pub(crate) fn duration_arg(text: &str) -> Result<Interval, String> {
    parse_duration(OsStr::new(text)).map_err(|e| e.to_string())
}

pub(crate) fn signal_arg(text: &str) -> Result<c_int, String> {
    match parse_signal(OsStr::new(text)) {
        Ok(0) => Err("signal 0 cannot stop anything".into()),
        Ok(sig) => Ok(sig),
        Err(e) => Err(e.to_string()),
    }
}

/// A size: digits with an optional K, M, G or T suffix (powers of 1024; a `B` or `iB` after it
/// is allowed). Zero is refused: it would stop everything.
fn size_arg(text: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid size '{text}': expected a number with an optional K, M, G or T suffix");
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, shift) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 10),
        Some('m') => (&lower[..lower.len() - 1], 20),
        Some('g') => (&lower[..lower.len() - 1], 30),
        Some('t') => (&lower[..lower.len() - 1], 40),
        _ => (lower, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{text}' is too large"))?;
    if bytes == 0 {
        return Err(format!("size '{text}' must be more than 0"));
    }
    Ok(bytes)
}

/// A positive, finite CPU time in `warden timeout`'s grammar.
fn cpu_time_arg(text: &str) -> Result<Duration, String> {
    match duration_arg(text)? {
        Interval::After(d) => Ok(d),
        Interval::Disabled => Err(format!("CPU time '{text}' must be more than 0")),
        Interval::Never => Err(format!(
            "CPU time '{text}' must be finite (leave the option out for none)"
        )),
    }
}

/// A count of at least 1.
pub(crate) fn count_arg(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err(format!("'{text}' must be at least 1")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("invalid count '{text}': expected a whole number")),
    }
}

/// `K=V`, with a non-empty K.
fn env_arg(text: &str) -> Result<(OsString, OsString), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.into(), value.into())),
        _ => Err(format!("invalid variable '{text}': expected K=V")),
    }
}

impl Args {
    fn limits(&self) -> Limits {
        let mut limits = Limits::new().best_effort(self.best_effort);
        limits.memory = self.memory;
        limits.cpu_time = self.cpu_time;
        limits.open_files = self.max_files;
        limits.processes = self.max_procs;
        limits
    }

    fn sandbox(&self) -> Option<Sandbox> {
        let wanted = self.sandbox || self.no_network || !self.allow_write.is_empty();
        wanted.then(|| {
            let mut sandbox = Sandbox::new()
                .no_network(self.no_network)
                .best_effort(self.best_effort);
            for dir in &self.allow_write {
                sandbox = sandbox.allow_write(dir);
            }
            sandbox
        })
    }
}

impl Args {
    /// The capture the options ask for; `Err` names a file that cannot be opened.
    fn capture(&self) -> Result<Option<OutputCapture>, String> {
        let wanted = self.capture_output
            || self.stdout.is_some()
            || self.stderr.is_some()
            || self.output_cap.is_some();
        if !wanted {
            return Ok(None);
        }
        let sink = |path: &Option<PathBuf>| -> Result<OutputSink, String> {
            match path {
                None => Ok(OutputSink::Forward),
                Some(path) => std::fs::File::create(path)
                    .map(OutputSink::file)
                    .map_err(|e| {
                        format!(
                            "cannot open {}: {}",
                            quote(path.as_os_str().as_bytes()),
                            errno_text(e.raw_os_error().unwrap_or(0))
                        )
                    }),
            }
        };
        let mut capture = OutputCapture::new()
            .stdout(sink(&self.stdout)?)
            .stderr(sink(&self.stderr)?);
        capture.cap = self.output_cap;
        Ok(Some(capture))
    }
}

/// A stage deadline: 0 is "at once", inf is "never".
/// The ladder options `warden run` and `warden batch` share.
pub(crate) struct Ladder {
    pub(crate) grace: Interval,
    pub(crate) kill_after: Interval,
    pub(crate) signal: c_int,
    pub(crate) unresponsive_after: Option<Interval>,
}

/// `config` with the ladder's deadlines, polite signal and liveness bound, driven by warden's
/// own stop signals (`stop`).
pub(crate) fn ladder_config(mut config: WorkerConfig, ladder: Ladder, stop: &Stop) -> WorkerConfig {
    if let Some(Interval::After(after)) = ladder.unresponsive_after {
        config = config.unresponsive_after(after);
    }
    config
        .deadlines(Deadlines {
            grace: stage_deadline(ladder.grace),
            kill_after: stage_deadline(ladder.kill_after),
            reap_timeout: REAP_TIMEOUT,
        })
        .polite_signal(ladder.signal)
        .shutdown_token(stop.shutdown.clone())
        .kill_token(stop.kill.clone())
}

/// The tree every program of `warden run` and `warden batch` runs in: `containment`, and
/// every signal at its default in the program (an inherited ignored SIGTERM would break the
/// ladder) except SIGPIPE, which stays as warden inherited it: under `trap '' PIPE` a program
/// sees EPIPE instead of dying of it.
pub(crate) fn base_tree(containment: ContainmentArg) -> TreeOptions {
    TreeOptions::new()
        .containment(containment.to_containment())
        .ignored_signals(unix::ignored_at_start(libc::SIGPIPE).then_some(libc::SIGPIPE))
}

pub(crate) fn stage_deadline(interval: Interval) -> Duration {
    match interval {
        Interval::Disabled => Duration::ZERO,
        Interval::After(d) => d,
        Interval::Never => Duration::MAX,
    }
}

/// `-v`: warden's steps on stderr (`$WARDEN_LOG` filters them, default `warden=info`).
pub(crate) fn init_verbose_log() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warden=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // Its report of a failed write is an `eprintln!`, which panics on a closed stderr.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The containment `--containment` chose, else `$WARDEN_CONTAINMENT`'s, else auto; `None`
/// (after one line on stderr) when the variable names none.
pub(crate) fn choose_containment(
    program: &str,
    choice: Option<ContainmentArg>,
) -> Option<ContainmentArg> {
    match choice {
        Some(choice) => Some(choice),
        None => match ContainmentArg::from_env() {
            Ok(choice) => Some(choice.unwrap_or_default()),
            Err(text) => {
                say!(
                    "{program}: invalid {CONTAINMENT_ENV} '{text}': expected auto, cgroup, subreaper or process-group"
                );
                None
            }
        },
    }
}

/// Runs `warden run` with the arguments after the subcommand; returns the exit status.
pub(crate) fn main(args: &[OsString]) -> u8 {
    let argv = std::iter::once(OsString::from(PROGRAM)).chain(args.iter().cloned());
    let args = match Args::try_parse_from(argv) {
        Ok(args) => args,
        Err(error) => return usage_error(PROGRAM, &error),
    };
    let Some(containment) = choose_containment(PROGRAM, args.containment) else {
        return EXIT_CANCELED;
    };
    if args.verbose {
        init_verbose_log();
    }
    // As PID 1, a stop signal with no handler yet would be discarded: keep it pending until
    // `Stop::listen` (which unblocks them) is listening.
    if std::process::id() == 1 {
        unix::block_signals(&args.stop.all());
    }
    let payload = match read_input(args.input.as_deref()) {
        Ok(payload) => payload,
        Err(e) => {
            say!("{PROGRAM}: cannot read the input: {e}");
            return EXIT_CANCELED;
        }
    };
    // Only now: reading `--input -` from the terminal in the background may stop warden (no
    // tree exists yet); from here on, see `ignore_tty_stop_signals` for why they are ignored.
    unix::ignore_tty_stop_signals();
    let Some(runtime) = super::start_runtime(PROGRAM) else {
        return EXIT_CANCELED;
    };
    let (facts, output) = runtime.block_on(supervise(&args, containment, payload));
    // Dropping the runtime ends the worker's actor: its cgroup leaf is removed.
    drop(runtime);
    let mut status = exit_status(&facts);
    if let Some(output) = output
        && let Err(e) = write_to(args.output.as_deref(), &output)
    {
        say!("{PROGRAM}: cannot write the output: {e}");
        status = EXIT_CANCELED;
    }
    if let Some(path) = &args.report {
        let mut text = to_json(&facts).to_string();
        text.push('\n');
        if let Err(e) = write_to(Some(path), text.as_bytes()) {
            say!("{PROGRAM}: cannot write the report: {e}");
            status = EXIT_CANCELED;
        }
    }
    if args.verbose {
        say!(
            "{PROGRAM}: {} (reason {}, stage {}), exit status {status}",
            facts.ending.name(),
            facts.reason.map_or("none", CancelReason::as_str),
            facts.stage.map_or("none", Stage::as_str)
        );
    }
    status
}

/// One line on stderr and 125 for bad arguments; help and version go to stdout with 0.
pub(crate) fn usage_error(program: &str, error: &clap::Error) -> u8 {
    use clap::error::ErrorKind;
    match error.kind() {
        // Rendered and written by us: clap's own `print` would panic on a closed stdout.
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            match stdout_all(error.render().to_string().as_bytes()) {
                Ok(()) => 0,
                Err(_) => EXIT_CANCELED,
            }
        }
        _ => {
            let rendered = error.to_string();
            // clap's first paragraph, on one line: "error: ...:\n  <PROGRAM>..." and the like.
            let message = rendered
                .trim_start()
                .split("\n\n")
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            say!("{program}: {message} (try '{program} --help')");
            EXIT_CANCELED
        }
    }
}

fn is_stdio(path: &std::path::Path) -> bool {
    path.as_os_str() == "-"
}

fn read_input(path: Option<&std::path::Path>) -> std::io::Result<Vec<u8>> {
    match path {
        None => Ok(Vec::new()),
        Some(path) if is_stdio(path) => {
            let mut payload = Vec::new();
            std::io::stdin().lock().read_to_end(&mut payload)?;
            Ok(payload)
        }
        Some(path) => std::fs::read(path),
    }
}

fn write_to(path: Option<&std::path::Path>, bytes: &[u8]) -> std::io::Result<()> {
    match path {
        Some(path) if !is_stdio(path) => std::fs::write(path, bytes),
        _ => stdout_all(bytes),
    }
}

/// Runs the program and gathers the facts; the second value is a completed job's output.
async fn supervise(
    args: &Args,
    containment: ContainmentArg,
    payload: Vec<u8>,
) -> (RunFacts, Option<Vec<u8>>) {
    let t0 = Instant::now();
    let stop = Stop::listen(PROGRAM, &args.stop.all());
    // Ctrl-Z: at its default action warden would stop alone, its tree running on. A SIGTSTP
    // ignored at start stays ignored (whoever started warden wanted no job control).
    let job_control = !unix::ignored_at_start(libc::SIGTSTP);
    let mut job_stops = SignalSet::listen(if job_control { &[libc::SIGTSTP] } else { &[] });
    let (program, rest) = match args.command.split_first() {
        Some(split) => split,
        None => unreachable_command(),
    };
    let mut facts = RunFacts {
        program: program.to_string_lossy().into_owned(),
        protocol: args.protocol,
        pid: None,
        ending: Ending::SpawnFailed {
            status: EXIT_CANCELED,
        },
        reason: None,
        stage: None,
        exit: None,
        report: None,
        epoch: t0,
        ended: Duration::ZERO,
        warden_signal: None,
        error: None,
        limit: None,
    };
    let mut command = Command::new(program);
    command.args(rest);
    if args.clear_env {
        command.env_clear();
    }
    for (key, value) in &args.env {
        command.env(key, value);
    }
    command.stdin(if args.protocol {
        Stdio::Null
    } else {
        Stdio::Inherit
    });
    let mut config = if args.protocol {
        WorkerConfig::protocol()
    } else {
        WorkerConfig::plain()
    };
    match args.capture() {
        Ok(Some(capture)) => config = config.capture_output(capture),
        Ok(None) => {}
        Err(error) => {
            say!("{PROGRAM}: {error}");
            facts.error = Some(error);
            facts.ended = t0.elapsed();
            return (facts, None);
        }
    }
    let config = ladder_config(
        config,
        Ladder {
            grace: args.grace,
            kill_after: args.kill_after,
            signal: args.signal,
            unresponsive_after: args.unresponsive_after,
        },
        &stop,
    )
    .tree({
        let tree = base_tree(containment).limits(args.limits());
        match args.sandbox() {
            Some(sandbox) => tree.sandbox(sandbox),
            None => tree,
        }
    });

    let worker = match Worker::spawn(&command, config).await {
        Ok(worker) => worker,
        Err(error) => {
            let status = spawn_status(&error);
            match exec_errno(&error) {
                Some(errno) => say!(
                    "{PROGRAM}: cannot run {}: {}",
                    quote(program.as_bytes()),
                    errno_text(errno)
                ),
                None => say!("{PROGRAM}: {}", error_chain(&error)),
            }
            facts.ending = Ending::SpawnFailed { status };
            if let SpawnError::ExitedDuringHandshake { status: exit, .. } = &error {
                facts.exit = Some(*exit);
            }
            facts.error = Some(error_chain(&error));
            facts.ended = t0.elapsed();
            facts.warden_signal = stop.signal();
            return (facts, None);
        }
    };
    facts.pid = Some(worker.pid());
    let mut options = JobOptions::new();
    if let Some(Interval::After(timeout)) = args.timeout {
        options = options.timeout(timeout);
    }
    let result = {
        let job = worker.run(payload, options);
        tokio::pin!(job);
        loop {
            tokio::select! {
                result = &mut job => break result,
                _ = job_stops.recv() => stop_job(&worker).await,
            }
        }
    };
    let after_job = worker.shutdown().await;
    facts.warden_signal = stop.signal();
    match result {
        Ok(report) => {
            let output = fill_from_report(&mut facts, report);
            if facts.exit.is_none() {
                facts.exit = after_job;
            }
            (facts, output)
        }
        Err(error) => {
            say!("{PROGRAM}: {}", error_chain(&error));
            facts.ending = Ending::Failed { exit_code: None };
            facts.error = Some(error_chain(&error));
            facts.exit = after_job.or(match error {
                RunError::WorkerGone { status, .. } => status,
                _ => None,
            });
            facts.ended = t0.elapsed();
            (facts, None)
        }
    }
}

/// Ctrl-Z: suspends the worker (its tree stopped, its deadlines paused), stops warden, and
/// resumes the worker once warden is continued.
async fn stop_job(worker: &Worker) {
    if let Err(error) = worker.suspend(super::SUSPEND_TIMEOUT).await {
        tracing::warn!(error = %error_chain(&error), "stopping the tree");
    }
    tracing::info!("stopped (job control); the deadlines are paused");
    unix::stop_self();
    if let Err(error) = worker.resume().await {
        tracing::warn!(error = %error_chain(&error), "continuing the tree");
    }
    tracing::info!("continued");
}

fn unreachable_command() -> ! {
    // clap enforces `required = true, num_args = 1..`.
    say!("{PROGRAM}: missing PROGRAM");
    std::process::exit(i32::from(EXIT_CANCELED));
}

/// 127 not found, 126 not runnable (the shim's exec failures arrive as those exit codes during
/// a protocol handshake), 125 anything else.
pub(crate) fn spawn_status(error: &SpawnError) -> u8 {
    // Exec failures are typed by the library (the exec shim reports them); a worker that ran
    // and then exited during the handshake is warden's failure to start it, whatever its code.
    match error {
        SpawnError::NotFound { .. } => EXIT_NOT_FOUND,
        SpawnError::NotExecutable { .. } => EXIT_CANNOT_INVOKE,
        _ => EXIT_CANCELED,
    }
}

/// Takes a job's report into the facts (the report is written from it); returns the output
/// of a completed job.
pub(crate) fn fill_from_report(facts: &mut RunFacts, report: JobReport) -> Option<Vec<u8>> {
    facts.reason = report.reason;
    facts.stage = report.stage;
    facts.exit = report.exit;
    facts.limit = report.limit;
    let (ending, error) = Ending::of(&report.outcome);
    if let Ending::Unrecognised { .. } = ending
        && let Some(error) = &error
    {
        say!("{PROGRAM}: {error}");
        facts.error = Some(error.clone());
    }
    facts.ending = ending;
    let output = match &report.outcome {
        Outcome::Completed(out) | Outcome::CompletedDespiteCancel(out) if facts.protocol => {
            Some(out.clone())
        }
        _ => None,
    };
    facts.report = Some(report);
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` seconds as parsed (upstream rounds every duration up, by a nanosecond here).
    fn secs(n: u64) -> Interval {
        parse_duration(OsStr::new(&n.to_string())).unwrap()
    }

    fn parse(list: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("warden run").chain(list.iter().copied()))
    }

    #[test]
    fn defaults() {
        let args = parse(&["--", "prog", "a"]).unwrap();
        assert_eq!(args.timeout, None);
        assert_eq!(args.grace, secs(5));
        assert_eq!(args.kill_after, secs(5));
        assert_eq!(args.signal, libc::SIGTERM);
        assert!(!args.protocol && !args.verbose);
        assert_eq!(args.command, vec![OsString::from("prog"), "a".into()]);
    }

    #[test]
    fn program_arguments_are_not_options() {
        let args = parse(&["--timeout", "1", "prog", "--timeout", "-v"]).unwrap();
        assert_eq!(
            args.command,
            vec![OsString::from("prog"), "--timeout".into(), "-v".into()]
        );
        assert!(!args.verbose);
        assert_eq!(args.timeout, Some(secs(1)));
    }

    #[test]
    fn values_use_gnu_grammar() {
        let args = parse(&[
            "--timeout",
            "0.5m",
            "--grace",
            "0",
            "--kill-after",
            "inf",
            "--signal",
            "sigint",
            "--",
            "p",
        ])
        .unwrap();
        assert_eq!(args.timeout, Some(secs(30)));
        assert_eq!(stage_deadline(args.grace), Duration::ZERO);
        assert_eq!(stage_deadline(args.kill_after), Duration::MAX);
        assert_eq!(args.signal, libc::SIGINT);
        for bad in [
            &["--timeout", "-1", "--", "p"][..],
            &["--signal", "BOGUS", "--", "p"],
            &["--signal", "0", "--", "p"],
            &["--input", "x", "--", "p"],
            &["--containment", "jail", "--", "p"],
            &["--bogus", "--", "p"],
            &[],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limit_values() {
        let args = parse(&[
            "--memory",
            "64M",
            "--cpu-time",
            "1.5",
            "--max-files",
            "32",
            "--max-procs",
            "8",
            "--allow-write",
            "/tmp",
            "--env",
            "A=b=c",
            "--",
            "p",
        ])
        .unwrap();
        assert_eq!(args.memory, Some(64 << 20));
        // Rounded up by a nanosecond, as every duration of GNU's grammar.
        let cpu = args.cpu_time.unwrap();
        assert!(cpu >= Duration::from_millis(1500) && cpu < Duration::from_millis(1501));
        let limits = args.limits();
        assert_eq!((limits.open_files, limits.processes), (Some(32), Some(8)));
        assert!(args.sandbox().is_some(), "--allow-write implies --sandbox");
        assert_eq!(args.env, [(OsString::from("A"), OsString::from("b=c"))]);
        assert_eq!(size_arg("1k"), Ok(1024));
        assert_eq!(size_arg("2GiB"), Ok(2 << 30));
        assert_eq!(size_arg("512"), Ok(512));
        for bad in [
            &["--memory", "0", "--", "p"][..],
            &["--memory", "64X", "--", "p"],
            &["--memory", "-1", "--", "p"],
            &["--memory", "99999999999T", "--", "p"],
            &["--cpu-time", "0", "--", "p"],
            &["--cpu-time", "inf", "--", "p"],
            &["--max-files", "0", "--", "p"],
            &["--max-procs", "many", "--", "p"],
            &["--env", "=v", "--", "p"],
            &["--env", "novalue", "--", "p"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&["--", "p"]).unwrap().sandbox().is_none());
    }

    #[test]
    fn output_options_imply_capture() {
        assert!(parse(&["--", "p"]).unwrap().capture().unwrap().is_none());
        let args = parse(&["--output-cap", "1M", "--", "p"]).unwrap();
        let capture = args
            .capture()
            .unwrap()
            .expect("--output-cap implies capture");
        assert_eq!(capture.cap, Some(1 << 20));
        assert!(matches!(capture.stdout, OutputSink::Forward));
        let args = parse(&["--stderr", "/dev/null", "--", "p"]).unwrap();
        let capture = args.capture().unwrap().expect("--stderr implies capture");
        assert!(matches!(capture.stderr, OutputSink::File(_)));
        let args = parse(&["--stdout", "/nonexistent-dir/x", "--", "p"]).unwrap();
        let error = args.capture().unwrap_err();
        assert!(error.contains("/nonexistent-dir/x"), "{error}");
        for bad in [
            &["--output-cap", "0", "--", "p"][..],
            &["--output-cap", "lots", "--", "p"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn containment_spellings() {
        let args = parse(&["--containment", "process-group", "--", "p"]).unwrap();
        assert_eq!(args.containment, Some(ContainmentArg::ProcessGroup));
    }
}
