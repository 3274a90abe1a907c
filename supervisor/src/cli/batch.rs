//! `warden batch -j N [OPTIONS] -- PROGRAM [ARG]...`: one job per line of stdin, at most N at
//! a time, each under warden's full ladder, with a JSON Lines report.
//!
//! Without `--protocol` each line replaces every `{}` in the ARGs (or is appended as the last
//! argument when no ARG has one) and runs as its own process tree, exactly as `warden run`
//! runs a plain program. With `--protocol` each line is the payload of a job on one of N warm
//! SDK workers (see `batch_exec`).
//!
//! Input: lines end with `\n` (the last one may lack it); the newline is not part of the job.
//! Empty lines are skipped (no job, no report). A line is bytes: one that is not valid UTF-8
//! is run as it is (an argument or a payload) and reported as `input_base64`. A line longer
//! than [`MAX_LINE`] is warden's error: no further line is read, the jobs already started
//! finish, and warden exits 125. So is a read error on stdin.
//!
//! The loop here owns every decision: which line runs next, retries (never two attempts of a
//! job at once: a retry waits for its attempt to finish), when to stop launching, what is
//! written. Report lines and protocol outputs are written by a thread of their own, so a slow
//! or stalled reader of warden's stdout holds back new jobs, never the ladder of running ones.

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use libc::c_int;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use warden::WorkerConfig;

use super::batch_exec::{Attempt, AttemptError, Executor, Job, Setup};
use super::batch_report::{Finished, Tally, class, exit_status, finish, line, retried};
use super::containment::ContainmentArg;
use super::duration::Interval;
use super::exit_status::EXIT_CANCELED;
use super::out::say;
use super::run::{
    Ladder, base_tree, choose_containment, count_arg, duration_arg, init_verbose_log,
    ladder_config, signal_arg, usage_error,
};
use super::signal_set::SignalSet;
use super::stop::{Stop, StopSignalArgs};
use super::unix;

/// The name warden's diagnostics use for this command.
const PROGRAM: &str = "warden batch";

/// The longest input line (1 MiB, the protocol's default frame limit): longer is an error,
/// so that one line cannot take unbounded memory.
pub(crate) const MAX_LINE: usize = 1 << 20;

const AFTER_HELP: &str = "\
Each line of stdin is one job. Without --protocol, the line replaces every {} in ARG...
(or is appended as the last argument when no ARG has {}), and PROGRAM runs once per line,
at most -j at a time, each process tree under the ladder and contained as 'warden run' does:
on --timeout the polite --signal and SIGCONT go to the whole tree, then after --kill-after
SIGKILL. With --protocol, PROGRAM is an SDK worker: -j warm workers take the lines as job
payloads, and the ladder starts with a cooperative cancel and --grace.

Input: empty lines are skipped; a line that is not UTF-8 is run as it is and reported as
input_base64; a line over 1 MiB, or a read error, stops the reading (jobs started finish) and
warden exits 125.

Output: a plain job's stdout and stderr are warden's (its stdout goes to warden's stderr
with --report -). A completed protocol job's result is written to stdout, a newline added
unless it ends with one, in completion order (not with --report -: it is in the report).

--report FILE|-: JSON Lines, one object per job in completion order: input (or
input_base64), outcome, reason, stage, exit_code, signal, worker_pid, attempt, timings_ms
(milliseconds since warden started), output (or output_base64), and warden run's other keys.

--retries R: a job that crashed, or was killed for its own fault (a protocol violation, a
limit), runs again, up to R more times; attempt counts them, and only the last is reported.

Signals to warden (SIGINT, SIGTERM, SIGHUP):
  1st  stop reading; every running job gets its ladder (reason shutdown) and is reported
  2nd  SIGKILL every process tree now
  3rd  exit at once
Ctrl-Z (SIGTSTP) is ignored: warden batch does not stop its trees for job control yet.

Exit status:
  0      every job completed
  1-100  the number of jobs that did not complete
  101    more than 100 jobs did not complete
  125    warden itself failed (bad arguments, bad input, a report it could not write)
  128+N  warden received signal N

Examples:
  ls *.png | warden batch -j 4 --timeout 1m -- convert {} {}.jpg
  seq 1000 | warden batch -j 8 --retries 2 --report runs.jsonl -- ./legacy-tool --id
  warden batch -j 4 --protocol --report - -- ./my-worker < jobs.txt";

/// `warden batch`'s arguments.
#[derive(Debug, Parser)]
#[command(
    name = "warden batch",
    version,
    override_usage = "warden batch -j N [OPTIONS] [--] PROGRAM [ARG]...",
    about = "Run one job per line of stdin, N at a time, each under warden's escalation ladder.",
    after_help = AFTER_HELP
)]
struct Args {
    /// How many jobs run at once (default: the number of CPUs).
    #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = count_arg)]
    jobs: Option<u64>,
    /// PROGRAM is an SDK worker: each line is a job's payload on one of N warm workers.
    #[arg(long)]
    protocol: bool,
    /// Cancel each job after DURATION (0: never).
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
    /// Liveness (needs --protocol): a worker silent for DURATION has its job cancelled with
    /// reason unresponsive (0 or inf: off, the default).
    #[arg(long, value_name = "DURATION", requires = "protocol", allow_hyphen_values = true, value_parser = duration_arg)]
    unresponsive_after: Option<Interval>,
    /// Replace each worker after K jobs (needs --protocol).
    #[arg(long, value_name = "K", requires = "protocol", value_parser = count_arg)]
    max_jobs_per_worker: Option<u64>,
    /// Run a job that crashed (or was killed for its own fault) again, up to R more times.
    #[arg(long, value_name = "R", default_value = "0", value_parser = clap::value_parser!(u32))]
    retries: u32,
    #[command(flatten)]
    stop: StopSignalArgs,
    /// Write one JSON object per job to FILE or '-' (stdout), one per line.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Log each step of the ladder to stderr.
    #[arg(short, long)]
    verbose: bool,
    /// How to contain each process tree.
    #[arg(long, value_enum, value_name = "MODE")]
    containment: Option<ContainmentArg>,
    /// The program to run and its arguments.
    #[arg(
        value_name = "PROGRAM",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    command: Vec<OsString>,
}

/// Runs `warden batch` with the arguments after the subcommand; returns the exit status.
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
    let report_to_stdout = args.report.as_deref().is_some_and(is_stdio);
    let report = match &args.report {
        None => Sink::None,
        Some(path) if is_stdio(path) => Sink::Stdout,
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => Sink::File(file),
            Err(e) => {
                say!(
                    "{PROGRAM}: cannot create the report {}: {e}",
                    path.display()
                );
                return EXIT_CANCELED;
            }
        },
    };
    // A protocol job's result goes to stdout unless the report is there.
    let outputs = if args.protocol && !report_to_stdout {
        Sink::Stdout
    } else {
        Sink::None
    };
    unix::ignore_tty_stop_signals();
    let Some(runtime) = super::start_runtime(PROGRAM) else {
        return EXIT_CANCELED;
    };
    let writer = Writer::start(report, outputs);
    let (tally, warden_signal, failed) =
        runtime.block_on(run_batch(&args, containment, report_to_stdout, &writer));
    // Dropping the runtime ends the workers' actors: their cgroup leaves are removed.
    drop(runtime);
    let mut failed = failed;
    if let Err(e) = writer.finish() {
        say!("{PROGRAM}: cannot write the report: {e}");
        failed = true;
    }
    exit_status(&tally, warden_signal, failed)
}

fn is_stdio(path: &std::path::Path) -> bool {
    path.as_os_str() == "-"
}

/// The batch: reads lines, keeps at most `-j` attempts running, retries, reports. Returns the
/// tally, the first stop signal warden received, and whether warden itself failed.
async fn run_batch(
    args: &Args,
    containment: ContainmentArg,
    report_to_stdout: bool,
    writer: &Writer,
) -> (Tally, Option<c_int>, bool) {
    let epoch = Instant::now();
    let stop = Stop::listen(PROGRAM, &args.stop.all());
    // Ctrl-Z at its default would stop warden alone and leave its trees unsupervised; a
    // SIGTSTP ignored at start stays ignored.
    let job_control = !unix::ignored_at_start(libc::SIGTSTP);
    let mut job_stops = SignalSet::listen(if job_control { &[libc::SIGTSTP] } else { &[] });
    let parallel = args.jobs.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| usize::try_from(n).unwrap_or(usize::MAX),
    );
    let executor = match executor(args, containment, report_to_stdout, &stop, parallel) {
        Ok(executor) => Arc::new(executor),
        Err(error) => {
            say!("{PROGRAM}: {error}");
            return (Tally::default(), None, true);
        }
    };
    let program = args.command[0].to_string_lossy().into_owned();
    let mut lines = read_lines(parallel);
    let mut running: JoinSet<Attempt> = JoinSet::new();
    let mut retries: std::collections::VecDeque<Attempt> = std::collections::VecDeque::new();
    let mut tally = Tally::default();
    let mut progress = Progress::new();
    let mut reading = true;
    let mut failed = false;
    let mut stopping = false;
    loop {
        if stop.shutdown.is_cancelled() && !stopping {
            stopping = true;
            reading = false;
        }
        // Retries first: they waited for their attempt to end, and for a free slot.
        while !stopping && running.len() < parallel {
            let Some(last) = retries.pop_front() else {
                break;
            };
            let mut job = last.job;
            job.attempt += 1;
            let executor = executor.clone();
            running.spawn(async move { executor.run(job).await });
        }
        if stopping {
            // What was to be retried ends with its last attempt.
            while let Some(last) = retries.pop_front() {
                report(
                    finish(last, &program, args.protocol, epoch, stop.signal()),
                    writer,
                    &mut tally,
                    &mut progress,
                    &mut failed,
                    &stop,
                )
                .await;
            }
        }
        if !reading && running.is_empty() && retries.is_empty() {
            break;
        }
        let launch = reading && !stopping && running.len() < parallel && retries.is_empty();
        tokio::select! {
            () = stop.shutdown.cancelled(), if !stopping => {}
            _ = job_stops.recv() => {
                say!("{PROGRAM}: job control is not supported; SIGTSTP ignored");
            }
            joined = running.join_next(), if !running.is_empty() => match joined {
                Some(Ok(attempt)) => {
                    if let Err(AttemptError::Pool(why)) = &attempt.result
                        && !failed
                    {
                        // The pool gave up (a crash loop past its restart limit): warden's
                        // own failure (125); what runs still gets its ladder.
                        say!("{PROGRAM}: {why}; stopping");
                        failed = true;
                        stopping = true;
                        reading = false;
                        stop.shutdown.cancel();
                    }
                    if !stopping && attempt.job.attempt <= args.retries && retried(&attempt) {
                        retries.push_back(attempt);
                    } else {
                        report(
                            finish(attempt, &program, args.protocol, epoch, stop.signal()),
                            writer,
                            &mut tally,
                            &mut progress,
                            &mut failed,
                            &stop,
                        )
                        .await;
                    }
                }
                Some(Err(error)) => {
                    // A task of ours panicked or was aborted: its job has no report.
                    say!("{PROGRAM}: a job's task failed: {error}");
                    failed = true;
                }
                None => {}
            },
            next = lines.recv(), if launch => match next {
                Some(Ok(input)) => {
                    let job = Job { input, attempt: 1 };
                    let executor = executor.clone();
                    running.spawn(async move { executor.run(job).await });
                }
                Some(Err(error)) => {
                    say!("{PROGRAM}: {error}; no further line is read");
                    failed = true;
                    reading = false;
                }
                None => reading = false,
            },
        }
    }
    executor.close().await;
    progress.finish(&tally);
    (tally, stop.signal(), failed)
}

/// Writes one finished job's line (and a protocol job's output), and counts it. A write that
/// fails is warden's failure: reading stops and every running job gets its ladder.
async fn report(
    finished: Finished,
    writer: &Writer,
    tally: &mut Tally,
    progress: &mut Progress,
    failed: &mut bool,
    stop: &Stop,
) {
    tally.add(class(&finished.facts));
    progress.update(tally);
    let mut text = line(&finished).to_string();
    text.push('\n');
    let output = finished.output.map(|mut out| {
        if out.last() != Some(&b'\n') {
            out.push(b'\n');
        }
        out
    });
    if writer.send(text.into_bytes(), output).await.is_err() && !*failed {
        say!("{PROGRAM}: cannot write the report; stopping every job");
        *failed = true;
        stop.shutdown.cancel();
    }
}

fn executor(
    args: &Args,
    containment: ContainmentArg,
    report_to_stdout: bool,
    stop: &Stop,
    parallel: usize,
) -> Result<Executor, warden::PoolConfigError> {
    let config = if args.protocol {
        WorkerConfig::protocol()
    } else {
        WorkerConfig::plain()
    };
    let ladder = Ladder {
        grace: args.grace,
        kill_after: args.kill_after,
        signal: args.signal,
        unresponsive_after: args.unresponsive_after,
    };
    let config = ladder_config(config, ladder, stop).tree(base_tree(containment));
    let (program, rest) = args
        .command
        .split_first()
        .map_or((OsString::new(), &[][..]), |(p, r)| (p.clone(), r));
    let setup = Setup {
        program,
        args: rest.to_vec(),
        config,
        timeout: match args.timeout {
            Some(Interval::After(timeout)) => Some(timeout),
            _ => None,
        },
        stdout: if report_to_stdout {
            warden::Stdio::Stderr
        } else {
            warden::Stdio::Inherit
        },
    };
    if args.protocol {
        Executor::protocol(setup, parallel, args.max_jobs_per_worker)
    } else {
        Ok(Executor::plain(setup))
    }
}

/// Why reading stopped early.
#[derive(Debug, thiserror::Error)]
enum InputError {
    #[error("line {line} of the input is longer than {MAX_LINE} bytes")]
    TooLong { line: u64 },
    #[error("cannot read the input")]
    Read(#[source] std::io::Error),
}

/// Reads stdin on a thread of its own (a blocking read must not hold the runtime), one line
/// at a time into a channel of `capacity`: no more lines are read than are about to run.
/// Empty lines are skipped. The thread ends at EOF, on an error, or when the receiver goes.
fn read_lines(capacity: usize) -> mpsc::Receiver<Result<Vec<u8>, InputError>> {
    let (tx, rx) = mpsc::channel(capacity.clamp(1, 1024));
    let spawned = std::thread::Builder::new()
        .name("warden-stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut input = stdin.lock();
            let mut number = 0u64;
            loop {
                number += 1;
                let next = match read_line(&mut input, MAX_LINE) {
                    Ok(Some(Line::Full(line))) if line.is_empty() => continue,
                    Ok(Some(Line::Full(line))) => Ok(line),
                    Ok(Some(Line::TooLong)) => Err(InputError::TooLong { line: number }),
                    Ok(None) => return,
                    Err(e) => Err(InputError::Read(e)),
                };
                let last = next.is_err();
                if tx.blocking_send(next).is_err() || last {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        say!("{PROGRAM}: cannot start the input thread: {e}");
    }
    rx
}

/// One line read.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// The line without its newline.
    Full(Vec<u8>),
    /// Longer than the limit (what was read of it is dropped).
    TooLong,
}

/// Reads one line of at most `max` bytes (the newline not counted); `None` at EOF.
fn read_line(input: &mut impl BufRead, max: usize) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut any = false;
    loop {
        let buf = match input.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(any.then_some(Line::Full(line)));
        }
        any = true;
        let (take, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (at, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Ok(Some(Line::TooLong));
        }
        line.extend_from_slice(&buf[..take]);
        input.consume(take + usize::from(end));
        if end {
            return Ok(Some(Line::Full(line)));
        }
    }
}

/// Where one kind of output goes.
#[derive(Debug)]
enum Sink {
    None,
    Stdout,
    File(std::fs::File),
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::None => Ok(()),
            Sink::Stdout => super::out::stdout_all(bytes),
            // A FIFO given as the report may be closed by its reader: EPIPE, not SIGPIPE.
            Sink::File(file) => unix::without_sigpipe(|| file.write_all(bytes)),
        }
    }
}

/// The thread that writes report lines and outputs, and what it was sent through.
struct Writer {
    tx: mpsc::Sender<(Vec<u8>, Option<Vec<u8>>)>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Writer {
    /// Starts the thread (if it cannot start, every send fails: warden's error).
    fn start(mut report: Sink, mut outputs: Sink) -> Writer {
        let (tx, mut rx) = mpsc::channel::<(Vec<u8>, Option<Vec<u8>>)>(64);
        let thread = std::thread::Builder::new()
            .name("warden-report".into())
            .spawn(move || {
                while let Some((line, output)) = rx.blocking_recv() {
                    if let Some(output) = output {
                        outputs.write(&output)?;
                    }
                    report.write(&line)?;
                }
                Ok(())
            });
        let thread = match thread {
            Ok(thread) => Some(thread),
            Err(e) => {
                say!("{PROGRAM}: cannot start the report thread: {e}");
                None
            }
        };
        Writer { tx, thread }
    }

    /// Hands a report line (and an output) to the thread; `Err` once it stopped on an error.
    ///
    /// # Cancel safety
    /// Not cancel-safe: a dropped send loses the line.
    async fn send(&self, line: Vec<u8>, output: Option<Vec<u8>>) -> Result<(), ()> {
        self.tx.send((line, output)).await.map_err(drop)
    }

    /// Waits for everything sent to be written; the first write error, if any.
    fn finish(self) -> std::io::Result<()> {
        let Writer { tx, thread } = self;
        drop(tx);
        match thread {
            None => Err(std::io::Error::other("the report thread did not start")),
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the report thread panicked"))),
        }
    }
}

/// The progress bar on stderr, only when stderr is a terminal: jobs done, cancelled and
/// failed, and the rate.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new() -> Progress {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} {pos} jobs, {msg} ({per_sec}, {elapsed})",
            ) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar.set_message(message(&Tally::default()));
            bar
        });
        Progress { bar }
    }

    fn update(&mut self, tally: &Tally) {
        if let Some(bar) = &self.bar {
            bar.set_position(tally.done + tally.not_completed());
            bar.set_message(message(tally));
        }
    }

    fn finish(&mut self, tally: &Tally) {
        if let Some(bar) = self.bar.take() {
            bar.set_message(message(tally));
            bar.finish();
        }
    }
}

fn message(tally: &Tally) -> String {
    format!(
        "{} done, {} cancelled, {} failed",
        tally.done, tally.cancelled, tally.failed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("warden batch").chain(list.iter().copied()))
    }

    #[test]
    fn arguments() {
        let args = parse(&["-j", "4", "--retries", "2", "--", "echo", "-n", "{}"]).unwrap();
        assert_eq!(args.jobs, Some(4));
        assert_eq!(args.retries, 2);
        assert_eq!(
            args.command,
            vec![OsString::from("echo"), "-n".into(), "{}".into()]
        );
        for bad in [
            &["-j", "0", "--", "p"][..],
            &["--max-jobs-per-worker", "2", "--", "p"],
            &["--unresponsive-after", "1", "--", "p"],
            &["--retries", "-1", "--", "p"],
            &["-j", "2"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&["--protocol", "--max-jobs-per-worker", "2", "--", "p"]).is_ok());
    }

    #[test]
    fn lines_are_bytes_bounded_and_end_at_a_newline() {
        let mut input = std::io::BufReader::with_capacity(4, &b"ab\n\ncdefgh\n\xff\nlast"[..]);
        let mut got = Vec::new();
        while let Some(line) = read_line(&mut input, 6).unwrap() {
            got.push(line);
        }
        assert_eq!(
            got,
            vec![
                Line::Full(b"ab".to_vec()),
                Line::Full(Vec::new()),
                Line::Full(b"cdefgh".to_vec()),
                Line::Full(b"\xff".to_vec()),
                Line::Full(b"last".to_vec()),
            ]
        );
        let mut long = &b"abcdefg\n"[..];
        assert_eq!(read_line(&mut long, 6).unwrap(), Some(Line::TooLong));
    }
}
