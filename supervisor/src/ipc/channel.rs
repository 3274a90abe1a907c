//! Framed, non-blocking I/O on the supervisor's end of the socketpair.
//!
//! Writes go out from the caller's task with `try_write` (no writer task, so a cancel costs no
//! extra wake-up); what the socket does not take is kept and flushed when it becomes writable.
//! Reads are bounded per call and decoded at once, so memory stays within one read chunk plus
//! one maximal frame whatever the worker sends. A frame that starts to arrive must be complete
//! within the frame timeout; the timer runs inside [`Channel::next_event`], which does not
//! return on a partial frame, so callers cannot forget to arm it.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use tokio::net::UnixStream;
use warden_protocol::{DecodeError, EncodeError, FrameDecoder, SupervisorMessage, WorkerMessage};

const READ_CHUNK: usize = 16 * 1024;

/// What the channel produced.
#[derive(Debug)]
pub(crate) enum Event {
    /// A whole message.
    Message(WorkerMessage),
    /// The worker closed its end (or the connection broke).
    Eof,
    /// The worker sent bytes that are not a valid frame; the channel is unusable.
    Invalid(DecodeError),
    /// Part of a frame arrived and the rest did not come within the frame timeout; the channel
    /// is unusable.
    Stalled,
}

pub(crate) struct Channel {
    stream: UnixStream,
    decoder: FrameDecoder,
    max_frame_len: u32,
    frame_timeout: Duration,
    outbox: Vec<u8>,
    sent: usize,
    eof: bool,
    write_closed: bool,
    partial_since: Option<Instant>,
    read_buf: Box<[u8]>,
}

impl Channel {
    pub(crate) fn new(
        fd: OwnedFd,
        max_frame_len: u32,
        frame_timeout: Duration,
    ) -> io::Result<Self> {
        let std = std::os::unix::net::UnixStream::from(fd);
        std.set_nonblocking(true)?;
        Ok(Channel {
            stream: UnixStream::from_std(std)?,
            decoder: FrameDecoder::new(max_frame_len),
            max_frame_len,
            frame_timeout,
            outbox: Vec::new(),
            sent: 0,
            eof: false,
            write_closed: false,
            partial_since: None,
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
        })
    }

    /// Moves the start of a partial frame later by `by`: the worker was suspended that long
    /// and could not send the rest, so that time does not count against `frame_timeout`.
    pub(crate) fn defer_stall(&mut self, by: Duration) {
        if let Some(since) = &mut self.partial_since {
            *since = since.checked_add(by).unwrap_or(*since);
        }
    }

    /// Queues `msg` and writes what the socket takes now. A broken pipe is not an error here:
    /// the worker's exit (or EOF) is how its death is observed.
    pub(crate) fn send(&mut self, msg: &SupervisorMessage) -> Result<(), EncodeError> {
        warden_protocol::encode_frame_into(msg, self.max_frame_len, &mut self.outbox)?;
        self.flush_now();
        Ok(())
    }

    fn flush_now(&mut self) {
        while !self.write_closed && self.sent < self.outbox.len() {
            match self.stream.try_write(&self.outbox[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.write_closed = true,
            }
        }
        if self.sent == self.outbox.len() || self.write_closed {
            self.outbox.clear();
            self.sent = 0;
        }
    }

    /// True while queued bytes wait for the socket.
    pub(crate) fn wants_write(&self) -> bool {
        !self.write_closed && self.sent < self.outbox.len()
    }

    /// True once the worker closed its end or the stream became unusable.
    pub(crate) fn is_eof(&self) -> bool {
        self.eof
    }

    /// The next event. Also flushes queued writes while it waits.
    ///
    /// A partial frame is not an event: the call keeps waiting for the rest, and returns
    /// [`Event::Stalled`] if it does not arrive within the frame timeout (measured from the
    /// frame's first byte, across calls).
    ///
    /// # Cancel safety
    /// Cancel-safe: all state lives in `self`; a dropped call loses no bytes.
    pub(crate) async fn next_event(&mut self) -> Event {
        loop {
            match self.decoder.next::<WorkerMessage>() {
                Ok(Some(msg)) => {
                    // A frame completed: any bytes left belong to a new frame.
                    self.partial_since = None;
                    self.track_partial();
                    return Event::Message(msg);
                }
                Ok(None) => {}
                Err(e) => {
                    self.eof = true;
                    return Event::Invalid(e);
                }
            }
            if self.eof {
                return Event::Eof;
            }
            // A timeout too large to add never fires.
            let stall_at = self
                .partial_since
                .and_then(|since| since.checked_add(self.frame_timeout));
            tokio::select! {
                () = sleep_until(stall_at) => {
                    self.eof = true;
                    return Event::Stalled;
                }
                ready = self.stream.readable() => {
                    if ready.is_err() {
                        self.eof = true;
                        continue;
                    }
                    match self.stream.try_read(&mut self.read_buf) {
                        Ok(0) => self.eof = true,
                        Ok(n) => {
                            self.decoder.push(&self.read_buf[..n]);
                            self.track_partial();
                        }
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                        Err(_) => self.eof = true,
                    }
                }
                ready = self.stream.writable(), if self.wants_write() => {
                    if ready.is_err() {
                        self.write_closed = true;
                    }
                    self.flush_now();
                }
            }
        }
    }

    fn track_partial(&mut self) {
        if self.decoder.is_mid_frame() {
            self.partial_since.get_or_insert_with(Instant::now);
        } else {
            self.partial_since = None;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
