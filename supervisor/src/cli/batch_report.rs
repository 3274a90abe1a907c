//! What `warden batch` reports: one JSON object per job (JSON Lines), the tally the progress
//! bar shows, and the exit status.
//!
//! A job's line is `warden run`'s report of that job ([`to_json`] over the same
//! [`RunFacts`], itself the library's `JobReport` serialised) without `exit_status` (warden
//! batch has one status for the whole batch), plus:
//! - `input`: the line as UTF-8 text; when it is not valid UTF-8, `input` is `null` and
//!   `input_base64` holds its bytes (standard alphabet, padded);
//! - `worker_pid`: the process that ran the last attempt (`pid` too), `null` if none started;
//! - `attempt`: 1 for the first attempt, one more for each retry; only the last attempt of a
//!   job is reported;
//! - `output`: a completed protocol job's result as UTF-8 text (`null` otherwise: a plain
//!   program's output is its stdout); when it is not valid UTF-8, `output` is `null` and
//!   `output_base64` holds it.

use std::time::Instant;

use libc::c_int;
use serde_json::Value;
use warden::Outcome;

use super::batch_exec::{Attempt, AttemptError};
use super::exit_status::EXIT_CANCELED;
use super::report::{Ending, RunFacts, to_json};
use super::run::{fill_from_report, spawn_status};
use super::timeout_main::error_chain;

/// A finished job: the facts of its last attempt and what it returned.
#[derive(Debug)]
pub(crate) struct Finished {
    /// The line.
    pub(crate) input: Vec<u8>,
    /// Which attempt this was.
    pub(crate) attempt: u32,
    /// How it ended.
    pub(crate) facts: RunFacts,
    /// A completed protocol job's result.
    pub(crate) output: Option<Vec<u8>>,
}

/// The facts of `attempt`, as `warden run` gathers them for its one job.
pub(crate) fn finish(
    attempt: Attempt,
    program: &str,
    protocol: bool,
    epoch: Instant,
    warden_signal: Option<c_int>,
) -> Finished {
    let mut facts = RunFacts {
        program: program.to_owned(),
        protocol,
        pid: attempt.pid,
        ending: Ending::SpawnFailed {
            status: EXIT_CANCELED,
        },
        reason: None,
        stage: None,
        exit: None,
        report: None,
        epoch,
        ended: epoch.elapsed(),
        warden_signal,
        error: None,
        limit: None,
    };
    let mut output = None;
    match attempt.result {
        Ok(report) => {
            output = fill_from_report(&mut facts, report);
            if facts.exit.is_none() {
                facts.exit = attempt.exit_after;
            }
        }
        Err(AttemptError::Spawn(error)) => {
            facts.ending = Ending::SpawnFailed {
                status: spawn_status(&error),
            };
            if let warden::SpawnError::ExitedDuringHandshake { status, .. } = &error {
                facts.exit = Some(*status);
            }
            facts.error = Some(error_chain(&error));
        }
        Err(AttemptError::Pool(why)) => {
            // Never the job's own failure: no worker could be kept up to run it.
            facts.ending = Ending::SpawnFailed { status: 125 };
            facts.error = Some(why);
        }
        Err(AttemptError::Run(error)) => {
            facts.ending = Ending::Failed { exit_code: None };
            facts.error = Some(error_chain(&error));
            facts.exit = attempt.exit_after.or(match error {
                warden::RunError::WorkerGone { status, .. } => status,
                _ => None,
            });
        }
    }
    Finished {
        input: attempt.job.input,
        attempt: attempt.job.attempt,
        facts,
        output,
    }
}

/// Whether an attempt that ended so is retried (with `--retries`): the process died on its
/// own (`crashed`), or was killed for its own fault (a protocol violation, a limit, a hang-up:
/// `killed` with no cancel asked for). Never a job that completed, failed with its own error,
/// or was stopped by a timeout or by warden's own stop; never one that could not be started.
pub(crate) fn retried(attempt: &Attempt) -> bool {
    match &attempt.result {
        Ok(report) => match report.outcome {
            Outcome::Crashed(_) => true,
            Outcome::Killed => report.reason.is_none(),
            _ => false,
        },
        Err(_) => false,
    }
}

/// The JSON line of a finished job (see the module docs).
pub(crate) fn line(finished: &Finished) -> Value {
    let mut value = to_json(&finished.facts);
    if let Value::Object(map) = &mut value {
        map.remove("exit_status");
        let (text, base64) = text_or_base64(Some(&finished.input));
        map.insert("input".into(), text);
        if let Some(b) = base64 {
            map.insert("input_base64".into(), b);
        }
        map.insert("worker_pid".into(), finished.facts.pid.into());
        map.insert("attempt".into(), finished.attempt.into());
        let (text, base64) = text_or_base64(finished.output.as_deref());
        map.insert("output".into(), text);
        if let Some(b) = base64 {
            map.insert("output_base64".into(), b);
        }
    }
    value
}

fn text_or_base64(bytes: Option<&[u8]>) -> (Value, Option<Value>) {
    match bytes {
        None => (Value::Null, None),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => (text.into(), None),
            Err(_) => (Value::Null, Some(base64(bytes).into())),
        },
    }
}

/// Standard base64 (RFC 4648 alphabet, `=` padding): the few lines it takes do not need a
/// dependency.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// How the progress bar counts a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// It completed.
    Done,
    /// A timeout, liveness or warden's own stop ended it (cancelled, terminated or killed
    /// after a cancel was asked for).
    Cancelled,
    /// Anything else: it failed, crashed, was killed for its own fault, or could not start.
    Failed,
}

/// The class of a finished job.
pub(crate) fn class(facts: &RunFacts) -> Class {
    match facts.ending {
        Ending::Completed => Class::Done,
        Ending::Cancelled | Ending::Terminated | Ending::Killed if facts.reason.is_some() => {
            Class::Cancelled
        }
        _ => Class::Failed,
    }
}

/// Counts of finished jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Completed.
    pub(crate) done: u64,
    /// Stopped by a deadline or by warden.
    pub(crate) cancelled: u64,
    /// Everything else.
    pub(crate) failed: u64,
}

impl Tally {
    /// Counts one job.
    pub(crate) fn add(&mut self, class: Class) {
        match class {
            Class::Done => self.done += 1,
            Class::Cancelled => self.cancelled += 1,
            Class::Failed => self.failed += 1,
        }
    }

    /// Jobs that did not complete.
    pub(crate) fn not_completed(&self) -> u64 {
        self.cancelled + self.failed
    }
}

/// warden batch's exit status: 128 + the first stop signal warden received; else 125 when
/// warden itself failed (bad input, a report it could not write); else 0 when every job
/// completed, the number of jobs that did not (1 to 100), or 101 for more than 100 (as GNU
/// parallel).
pub(crate) fn exit_status(tally: &Tally, warden_signal: Option<c_int>, warden_failed: bool) -> u8 {
    if let Some(sig) = warden_signal {
        return u8::try_from((128 + sig).rem_euclid(256)).unwrap_or(EXIT_CANCELED);
    }
    if warden_failed {
        return EXIT_CANCELED;
    }
    match tally.not_completed() {
        n @ 0..=100 => u8::try_from(n).unwrap_or(101),
        _ => 101,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (b"\xff\xfe\x00", "//4A"),
        ] {
            assert_eq!(base64(plain), encoded, "{plain:?}");
        }
    }

    #[test]
    fn statuses_count_jobs_that_did_not_complete() {
        let tally = |failed| Tally {
            done: 5,
            cancelled: 0,
            failed,
        };
        assert_eq!(exit_status(&tally(0), None, false), 0);
        assert_eq!(exit_status(&tally(1), None, false), 1);
        assert_eq!(exit_status(&tally(100), None, false), 100);
        assert_eq!(exit_status(&tally(101), None, false), 101);
        assert_eq!(exit_status(&tally(100_000), None, false), 101);
        assert_eq!(exit_status(&tally(3), None, true), 125);
        assert_eq!(exit_status(&tally(3), Some(libc::SIGINT), true), 130);
    }

    #[test]
    fn lines_carry_text_or_base64() {
        assert_eq!(text_or_base64(Some(b"abc")), (Value::from("abc"), None));
        assert_eq!(
            text_or_base64(Some(b"\xff")),
            (Value::Null, Some(Value::from("/w==")))
        );
        assert_eq!(text_or_base64(None), (Value::Null, None));
    }
}
