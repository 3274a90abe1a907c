//! Captured output ([`WorkerConfig::capture_output`](crate::WorkerConfig::capture_output)): a
//! worker's stdout and stderr go through pipes that warden drains, so a plugin never blocks on
//! a full pipe, and the supervisor's memory stays O(cap + a fixed buffer) however much it
//! writes.
//!
//! Each stream is read by a task of its own on the caller's runtime (non-blocking, through
//! tokio's reactor) into a fixed 64 KiB buffer, then forwarded to its [`OutputSink`]. Writes to
//! a sink run on tokio's blocking pool (the supervisor's own stdout may be a terminal or a pipe
//! shared with others, which must not be made non-blocking), with SIGPIPE blocked in that
//! thread: a sink that fails (EPIPE, ENOSPC, a closed descriptor) is dropped and the stream is
//! still drained, its bytes discarded. A slow sink slows the drain (the program then waits on
//! its pipe, as under a shell pipeline); it never grows the supervisor's memory.
//!
//! With a cap ([`OutputCapture::cap`], bytes per stream), the first `cap / 2` bytes are
//! forwarded as they come, the last `cap - cap / 2` are held and forwarded once the stream
//! ends, and a line `[warden: N bytes of stdout truncated]` goes between them (after a
//! newline if the head does not end with one), as CI logs truncate.
//!
//! Once the tree is gone (killed and reaped), each stream is read to EOF for at most the
//! worker's [`drain_timeout`](crate::WorkerConfig::drain_timeout), then closed: a descendant
//! that escaped the tree and keeps the pipe open does not hold the job open. A stream closed
//! so is `cut` in the report, and its forwarded output ends with a line
//! `[warden: stdout cut: still held open after the tree ended]`.
//!
//! Every [`JobReport`](crate::JobReport) of a capturing worker has an
//! [`output_tail`](crate::JobReport::output_tail): per stream, the last [`TAIL_LINES`] lines
//! within the last [`TAIL_BYTES`] bytes written *during that job* (from its start to its end:
//! for a reused SDK worker, what it wrote between jobs belongs to none), so a killed plugin
//! leaves its last words.

mod drain;
mod stream;

use std::fs::File;
use std::sync::Arc;

pub(crate) use drain::{Output, pipes};

/// At most this many lines of each stream are in a job's [`StreamTail`].
pub const TAIL_LINES: usize = 20;

/// A job's [`StreamTail`] comes from at most its last this many bytes of each stream.
pub const TAIL_BYTES: usize = 4096;

/// Where a captured stream is forwarded.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum OutputSink {
    /// To the supervisor's own stream of the same name (its stdout or stderr).
    #[default]
    Forward,
    /// To this file (appended at its offset; shared by every worker given the same one).
    File(Arc<File>),
    /// Nowhere: the stream is drained, counted and tailed only.
    Discard,
}

impl OutputSink {
    /// Forwards to `file`.
    pub fn file(file: File) -> Self {
        OutputSink::File(Arc::new(file))
    }
}

/// How a worker's output is captured (see the [module](self) docs).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct OutputCapture {
    /// Where stdout goes (default: the supervisor's stdout).
    pub stdout: OutputSink,
    /// Where stderr goes (default: the supervisor's stderr).
    pub stderr: OutputSink,
    /// Most bytes of each stream forwarded: its head and its tail, with a marker line between
    /// (default `None`: everything, streamed through a fixed buffer).
    pub cap: Option<u64>,
}

impl OutputCapture {
    /// Both streams forwarded to the supervisor's own, without a cap.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where stdout goes.
    pub fn stdout(mut self, sink: OutputSink) -> Self {
        self.stdout = sink;
        self
    }

    /// Where stderr goes.
    pub fn stderr(mut self, sink: OutputSink) -> Self {
        self.stderr = sink;
        self
    }

    /// Forwards at most `bytes` of each stream: its head and its tail.
    pub fn cap(mut self, bytes: u64) -> Self {
        self.cap = Some(bytes);
        self
    }
}

/// The last words of a job on each captured stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct OutputTail {
    /// The job's stdout.
    pub stdout: StreamTail,
    /// The job's stderr.
    pub stderr: StreamTail,
}

/// One stream's tail for a job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StreamTail {
    /// The last lines written during the job (at most [`TAIL_LINES`], from at most its last
    /// [`TAIL_BYTES`] bytes), without their newlines; invalid UTF-8 is replaced with U+FFFD.
    /// The first may be cut at its start by the byte window.
    pub lines: Vec<String>,
    /// Bytes written during the job.
    pub bytes: u64,
    /// Bytes of the stream the cap left out of the forwarded output by the end of the job
    /// (final once the stream is closed).
    pub truncated: u64,
    /// The stream was closed by warden before its end: something outside the tree still held
    /// it open once the tree was gone.
    pub cut: bool,
}
