//! The drain tasks: one per captured stream, reading its pipe through the reactor and
//! forwarding it, and the actor's handle on them ([`Output`]).
//!
//! # Cancel safety
//! The actor's calls ([`Output::start_job`], [`Output::tail`], [`Output::finish`]) only ask
//! the task and wait for its answer, bounded; dropping one loses nothing but the wait.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use super::stream::Stream;
use super::{OutputCapture, OutputSink, OutputTail, StreamTail};
use crate::process::{child_pipe, register, without_sigpipe};
use crate::time::{deadline_after, sleep_until};

/// The read buffer of each stream: the most the supervisor holds of unforwarded output
/// (besides the cap's tail).
const BUF: usize = 64 * 1024;

/// The most a catch-up reads: more than a pipe holds (64 KiB by default, 1 MiB at most
/// unprivileged), so everything written before a result is read.
const CATCH_UP: usize = 16 * BUF;

/// Two pipes for a child's stdout and stderr: `(readers, writers)`, the readers
/// non-blocking, every end close-on-exec, the writers above fd 9 (dup2'd to 1 and 2 by
/// posix_spawn).
///
/// # Errors
/// `pipe2` or `fcntl` failed (EMFILE, ENFILE).
pub(crate) fn pipes() -> io::Result<([OwnedFd; 2], [OwnedFd; 2])> {
    let (out_r, out_w) = child_pipe()?;
    let (err_r, err_w) = child_pipe()?;
    Ok(([out_r, err_r], [out_w, err_w]))
}

enum Ctl {
    /// Read what is in the pipe now, then answer.
    CatchUp(oneshot::Sender<()>),
    /// Read to EOF for at most `wait`, then close and answer.
    Finish {
        wait: Duration,
        reply: oneshot::Sender<()>,
    },
}

struct Handle {
    state: Arc<Mutex<Stream>>,
    ctl: mpsc::UnboundedSender<Ctl>,
}

/// The actor's handle on a worker's captured streams (stdout, stderr).
#[derive(Default)]
pub(crate) struct Output {
    streams: Vec<Handle>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("streams", &self.streams.len())
            .finish()
    }
}

fn lock(state: &Mutex<Stream>) -> MutexGuard<'_, Stream> {
    // A panic elsewhere while holding it leaves plain data; keep using it.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Output {
    /// Starts draining `readers` (stdout, stderr) as `capture` says. A stream whose actor
    /// goes away is still read to EOF for at most `drain_timeout`, then closed.
    ///
    /// # Errors
    /// A reader could not be registered with the reactor.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub(crate) fn start(
        capture: &OutputCapture,
        readers: [OwnedFd; 2],
        drain_timeout: Duration,
    ) -> io::Result<Output> {
        let [out, err] = readers;
        let mut streams = Vec::with_capacity(2);
        for (name, fd, sink) in [
            ("stdout", out, &capture.stdout),
            ("stderr", err, &capture.stderr),
        ] {
            let fd = register(fd, tokio::io::Interest::READABLE)?;
            let state = Arc::new(Mutex::new(Stream::new(name, capture.cap)));
            let (ctl, rx) = mpsc::unbounded_channel();
            let writer = Writer::new(name, sink);
            tokio::spawn(drain(fd, state.clone(), writer, rx, drain_timeout));
            streams.push(Handle { state, ctl });
        }
        Ok(Output { streams })
    }

    /// Whether output is captured.
    pub(crate) fn is_capturing(&self) -> bool {
        !self.streams.is_empty()
    }

    /// Asks each stream's task and waits (at most `bound` in all) for the answers.
    async fn ask(&self, bound: Duration, make: impl Fn(oneshot::Sender<()>) -> Ctl) {
        let mut waits = Vec::new();
        for s in &self.streams {
            // Asked even once its stream has ended: the task may still be forwarding the
            // held tail. A task that is gone has forwarded everything (it drops the request,
            // queued or not, only once it returns).
            let (tx, rx) = oneshot::channel();
            if s.ctl.send(make(tx)).is_ok() {
                waits.push(rx);
            }
        }
        let all = async {
            for rx in waits {
                let _ = rx.await;
            }
        };
        tokio::select! {
            () = all => {}
            () = sleep_until(deadline_after(Instant::now(), bound)) => {}
        }
    }

    /// A job starts: what is in the pipes now belongs to the time before it (read first, for
    /// at most `bound`), and its tails start empty.
    pub(crate) async fn start_job(&mut self, bound: Duration) {
        self.ask(bound, Ctl::CatchUp).await;
        for s in &self.streams {
            lock(&s.state).start_job();
        }
    }

    /// The job's tails, after reading what is in the pipes now (for at most `bound`): what the
    /// worker wrote before its result is in it. `None` without capture.
    pub(crate) async fn tail(&mut self, bound: Duration) -> Option<OutputTail> {
        if !self.is_capturing() {
            return None;
        }
        self.ask(bound, Ctl::CatchUp).await;
        let tail = |i: usize| {
            self.streams
                .get(i)
                .map_or_else(StreamTail::default, |s| lock(&s.state).tail())
        };
        Some(OutputTail {
            stdout: tail(0),
            stderr: tail(1),
        })
    }

    /// The tree is gone: reads each stream to EOF for at most `wait`, then closes it (cut, if
    /// it was still open). Returns within twice `wait` even if a sink blocks (then what it
    /// did not take is lost, and the stream counts as cut).
    pub(crate) async fn finish(&mut self, wait: Duration) {
        self.ask(wait.saturating_mul(2), |reply| Ctl::Finish { wait, reply })
            .await;
        for s in &self.streams {
            // Only a task stuck on its sink has not closed its stream by now.
            let _ = lock(&s.state).finish(true);
        }
    }
}

/// Where a stream's bytes go; `Gone` once a write failed.
enum Writer {
    Stdout,
    Stderr,
    File(Arc<std::fs::File>),
    Gone,
}

impl Writer {
    fn new(name: &'static str, sink: &OutputSink) -> Writer {
        match sink {
            OutputSink::Forward if name == "stdout" => Writer::Stdout,
            OutputSink::Forward => Writer::Stderr,
            OutputSink::File(file) => Writer::File(file.clone()),
            OutputSink::Discard => Writer::Gone,
        }
    }

    fn write_now(&self, bytes: &[u8]) -> io::Result<()> {
        without_sigpipe(|| match self {
            Writer::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes).and_then(|()| out.flush())
            }
            Writer::Stderr => io::stderr().lock().write_all(bytes),
            Writer::File(file) => (&**file).write_all(bytes),
            Writer::Gone => Ok(()),
        })
    }

    /// Writes `buf[..len]` on the blocking pool; `buf` comes back (a fresh one if the write
    /// panicked). A failure drops the sink for good: the rest is discarded.
    async fn write(&mut self, buf: &mut Vec<u8>, len: usize) {
        if len == 0 || matches!(self, Writer::Gone) {
            return;
        }
        let me = std::mem::replace(self, Writer::Gone);
        let data = std::mem::take(buf);
        let joined = tokio::task::spawn_blocking(move || {
            let result = me.write_now(&data[..len]);
            (me, data, result)
        })
        .await;
        match joined {
            Ok((me, data, result)) => {
                *buf = data;
                match result {
                    Ok(()) => *self = me,
                    Err(e) => {
                        tracing::debug!(error = %e, "a captured stream's sink failed; discarding the rest");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "a captured stream's write did not return");
            }
        }
        if buf.len() < BUF {
            buf.resize(BUF, 0);
        }
    }
}

/// What one read gave.
enum Read {
    Data(usize),
    /// EOF, or an error that ends the stream.
    End,
    /// Nothing there now (only for a non-waiting read).
    Empty,
}

fn read_now(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> Read {
    loop {
        match nix::unistd::read(fd.get_ref(), buf) {
            Ok(0) => return Read::End,
            Ok(n) => return Read::Data(n),
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => return Read::Empty,
            Err(e) => {
                tracing::debug!(error = %e, "reading a captured stream failed");
                return Read::End;
            }
        }
    }
}

/// Waits until the pipe is readable and reads once.
async fn read_ready(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> Read {
    loop {
        let mut guard = match fd.readable().await {
            Ok(guard) => guard,
            Err(_) => return Read::End,
        };
        match read_now(fd, buf) {
            Read::Empty => guard.clear_ready(),
            other => return other,
        }
    }
}

struct Drain {
    fd: AsyncFd<OwnedFd>,
    state: Arc<Mutex<Stream>>,
    writer: Writer,
    buf: Vec<u8>,
}

impl Drain {
    /// Takes `n` bytes just read: forwards what goes out now.
    async fn take(&mut self, n: usize) {
        let forward = lock(&self.state).push(&self.buf[..n]);
        self.writer.write(&mut self.buf, forward).await;
    }

    /// Reads until the pipe is empty (or ended), at most [`CATCH_UP`] bytes (a writer that
    /// never stops must not keep the answer back); whether it ended.
    async fn catch_up(&mut self) -> bool {
        let mut read = 0;
        while read < CATCH_UP {
            match read_now(&self.fd, &mut self.buf) {
                Read::Data(n) => {
                    read += n;
                    self.take(n).await;
                }
                Read::Empty => return false,
                Read::End => return true,
            }
        }
        false
    }

    /// Reads to EOF for at most `wait`; whether EOF came.
    async fn read_to_end(&mut self, wait: Duration) -> bool {
        let deadline = deadline_after(Instant::now(), wait);
        loop {
            let read = tokio::select! {
                read = read_ready(&self.fd, &mut self.buf) => read,
                () = sleep_until(deadline) => return false,
            };
            match read {
                Read::Data(n) => self.take(n).await,
                Read::End | Read::Empty => return true,
            }
        }
    }

    /// Closes the stream: forwards the held tail and the markers.
    async fn close(&mut self, eof: bool) {
        let mut rest = lock(&self.state).finish(!eof);
        let len = rest.len();
        self.writer.write(&mut rest, len).await;
    }
}

async fn drain(
    fd: AsyncFd<OwnedFd>,
    state: Arc<Mutex<Stream>>,
    writer: Writer,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    drain_timeout: Duration,
) {
    let mut d = Drain {
        fd,
        state,
        writer,
        buf: vec![0; BUF],
    };
    loop {
        let event = tokio::select! {
            biased;
            msg = ctl.recv() => Ok(msg),
            read = read_ready(&d.fd, &mut d.buf) => Err(read),
        };
        match event {
            Ok(msg) => match msg {
                Some(Ctl::CatchUp(reply)) => {
                    let ended = d.catch_up().await;
                    if ended {
                        d.close(true).await;
                    }
                    let _ = reply.send(());
                    if ended {
                        return;
                    }
                }
                Some(Ctl::Finish { wait, reply }) => {
                    let eof = d.read_to_end(wait).await;
                    d.close(eof).await;
                    let _ = reply.send(());
                    return;
                }
                None => {
                    // The worker's actor is gone (its tree killed with it).
                    let eof = d.read_to_end(drain_timeout).await;
                    d.close(eof).await;
                    return;
                }
            },
            Err(Read::Data(n)) => d.take(n).await,
            Err(Read::End | Read::Empty) => {
                d.close(true).await;
                return;
            }
        }
    }
}
