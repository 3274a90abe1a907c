//! warden's example programs (the binaries in `src/bin/`) and what they share: the workers
//! themselves ([`workers`]), the work a cooperative worker is asked to do, a CPU-bound busy loop,
//! and small helpers to print distributions and tables.
//!
//! The scenarios are the binaries:
//!
//! | binary               | scenario                                                          |
//! |----------------------|-------------------------------------------------------------------|
//! | `cooperative-worker` | SDK worker doing chunked work, checking its token between chunks  |
//! | `stubborn-worker`    | SDK worker in a CPU-bound loop that never checks its token        |
//! | `ignore-term`        | plain program (no SDK) that ignores SIGTERM and blocks forever    |
//! | `demo`               | runs the workers under warden, cancels each, prints who stopped it |
//! | `ladder-bench`       | times cancels and kills against raw IPC and spawn baselines       |
//! | `hostile-worker`     | untrusted plugin: one attack per run on memory, CPU, files, forks, the filesystem, the network, the host, syscalls, output and the channel ([`hostile`]) |
//! | `plugin-host`        | runs every attack under limits and the sandbox, prints what blocked each and how, checks nothing is left |
//!
//! The worker scenarios live in [`workers`] (and [`hostile`]), so that the standalone worker
//! binaries and the hosts run the same code: `demo`, `ladder-bench` and `plugin-host` start
//! *themselves* as workers
//! ([`workers::command`]), because `cargo run --bin demo` builds only the `demo` binary and a
//! sibling worker binary may be missing or stale.
//!
//! ```
//! use std::time::Duration;
//! use warden_examples::{Table, WorkSpec, distribution};
//!
//! let spec = WorkSpec { chunks: 10, chunk: Duration::from_millis(2) };
//! assert_eq!(WorkSpec::parse(&spec.encode()), Ok(spec));
//! assert_eq!(WorkSpec::parse(b""), Ok(WorkSpec::default()));
//!
//! let mut samples: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
//! let d = distribution(&mut samples).expect("ten samples");
//! assert_eq!((d.median, d.p90, d.worst), (Duration::from_millis(5), Duration::from_millis(9), Duration::from_millis(10)));
//!
//! let mut table = Table::new(["worker", "outcome"]);
//! table.row(["cooperative-worker", "cancelled"]);
//! assert!(table.to_string().contains("cooperative-worker  cancelled"));
//! ```
#![warn(missing_docs)]

pub mod cgroups;
pub mod hostile;
mod sys;
pub mod workers;

/// The README's code blocks, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

use std::fmt;
use std::time::{Duration, Instant};

use thiserror::Error;

/// What a `cooperative-worker` job does: `chunks` slices of CPU-bound work of `chunk` each, with
/// a token check and a progress report between slices.
///
/// On the wire (the job's payload) it is the ASCII text `"<chunks> <chunk_us>"`; an empty payload
/// means [`WorkSpec::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkSpec {
    /// How many slices of work.
    pub chunks: u32,
    /// How long each slice keeps the CPU busy. A cancel is noticed within one slice.
    pub chunk: Duration,
}

impl Default for WorkSpec {
    /// 10,000 slices of 1 ms: ten seconds of work, plenty of time to be cancelled.
    fn default() -> Self {
        WorkSpec {
            chunks: 10_000,
            chunk: Duration::from_millis(1),
        }
    }
}

/// A payload that is not a [`WorkSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid work spec {text:?}: expected \"<chunks> <chunk_us>\"")]
pub struct ParseWorkSpecError {
    /// The payload, lossily decoded.
    pub text: String,
}

impl WorkSpec {
    /// The payload that asks for this work.
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}", self.chunks, self.chunk.as_micros()).into_bytes()
    }

    /// Reads a payload; empty means the default.
    pub fn parse(payload: &[u8]) -> Result<WorkSpec, ParseWorkSpecError> {
        if payload.is_empty() {
            return Ok(WorkSpec::default());
        }
        let error = || ParseWorkSpecError {
            text: String::from_utf8_lossy(payload).into_owned(),
        };
        let text = std::str::from_utf8(payload).map_err(|_| error())?;
        let mut fields = text.split_whitespace();
        let (Some(chunks), Some(chunk_us), None) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(error());
        };
        Ok(WorkSpec {
            chunks: chunks.parse().map_err(|_| error())?,
            chunk: Duration::from_micros(chunk_us.parse().map_err(|_| error())?),
        })
    }
}

/// Keeps one CPU busy for `duration` (a xorshift generator, so the compiler cannot skip it) and
/// returns what it computed.
pub fn spin_for(duration: Duration) -> u64 {
    let start = Instant::now();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    loop {
        for _ in 0..1024 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        if start.elapsed() >= duration {
            return std::hint::black_box(x);
        }
    }
}

/// Order statistics of a set of durations (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Distribution {
    /// Number of samples.
    pub n: usize,
    /// The smallest sample.
    pub best: Duration,
    /// The 50th percentile.
    pub median: Duration,
    /// The 90th percentile.
    pub p90: Duration,
    /// The largest sample.
    pub worst: Duration,
}

/// Sorts `samples` and summarises them; `None` when there are none.
pub fn distribution(samples: &mut [Duration]) -> Option<Distribution> {
    samples.sort_unstable();
    let n = samples.len();
    let rank = |p: usize| samples[(n * p).div_ceil(100).max(1) - 1];
    Some(Distribution {
        n,
        best: *samples.first()?,
        median: rank(50),
        p90: rank(90),
        worst: *samples.last()?,
    })
}

/// An error of the example hosts.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Waits for `fut` at most `limit`, naming what was awaited if it took too long.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, BoxError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| format!("timed out after {limit:?} waiting for {what}").into())
}

/// Whether this process's effective uid is 0 (from `/proc/self/status`; `false` where it cannot
/// be read).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap_or(false)
    })
}

/// Milliseconds with three decimals (microsecond resolution).
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// A plain-text table with left-aligned columns separated by two spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<I, S>(headers: I) -> Table
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Table {
            rows: vec![headers.into_iter().map(Into::into).collect()],
        }
    }

    /// Appends a row.
    pub fn row<I, S>(&mut self, cells: I) -> &mut Table
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for (i, row) in self.rows.iter().enumerate() {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[c].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            writeln!(f, "{}", line.trim_end())?;
            if i == 0 {
                let rule: usize = widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1);
                writeln!(f, "{}", "-".repeat(rule))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_spec_rejects_garbage() {
        for bad in [&b"x"[..], b"1", b"1 2 3", b"-1 2", b"\xff 1"] {
            assert!(WorkSpec::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn percentiles_of_one_and_many() {
        let one = Duration::from_millis(7);
        let d = distribution(&mut [one]).expect("one sample");
        assert_eq!((d.best, d.median, d.p90, d.worst), (one, one, one, one));
        assert_eq!(distribution(&mut []), None);
        let mut many: Vec<Duration> = (1..=200).rev().map(Duration::from_micros).collect();
        let d = distribution(&mut many).expect("samples");
        assert_eq!(d.median, Duration::from_micros(100));
        assert_eq!(d.p90, Duration::from_micros(180));
        assert_eq!(d.worst, Duration::from_micros(200));
    }
}
