//! Framed, non-blocking I/O on the supervisor's end of the socketpair.
//!
//! Writes go out from the caller's task with `try_write` (no writer task, so a cancel costs no
//! extra wake-up); what the socket does not take is kept and flushed when it becomes writable.
//! Reads are bounded per call and decoded at once, so memory stays within one read chunk plus
//! one maximal frame whatever the worker sends. The channel keeps no timer: a read that leaves
//! part of a frame buffered returns [`Event::Partial`] once, and the caller's machine times the
//! stall (`frame_timeout`) with its other deadlines.

use std::io;
use std::os::fd::OwnedFd;
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
    /// A frame started to arrive and is not complete yet (see [`Channel::is_mid_frame`]).
    Partial,
}

pub(crate) struct Channel {
    stream: UnixStream,
    decoder: FrameDecoder,
    max_frame_len: u32,
    outbox: Vec<u8>,
    sent: usize,
    eof: bool,
    write_closed: bool,
    /// [`Event::Partial`] was returned for the frame now buffered.
    partial_told: bool,
    read_buf: Box<[u8]>,
}

impl Channel {
    pub(crate) fn new(fd: OwnedFd, max_frame_len: u32) -> io::Result<Self> {
        let std = std::os::unix::net::UnixStream::from(fd);
        std.set_nonblocking(true)?;
        Ok(Channel {
            stream: UnixStream::from_std(std)?,
            decoder: FrameDecoder::new(max_frame_len),
            max_frame_len,
            outbox: Vec::new(),
            sent: 0,
            eof: false,
            write_closed: false,
            partial_told: false,
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
        })
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

    /// True while part of a frame is buffered.
    pub(crate) fn is_mid_frame(&self) -> bool {
        self.decoder.is_mid_frame()
    }

    /// True once the worker closed its end or the stream became unusable.
    pub(crate) fn is_eof(&self) -> bool {
        self.eof
    }

    /// The next event. Also flushes queued writes while it waits.
    ///
    /// A read that starts a frame without completing it returns [`Event::Partial`]; a read
    /// that only adds to a partial frame returns nothing and the call waits on.
    ///
    /// # Cancel safety
    /// Cancel-safe: all state lives in `self`; a dropped call loses no bytes.
    pub(crate) async fn next_event(&mut self) -> Event {
        loop {
            match self.decoder.next::<WorkerMessage>() {
                Ok(Some(msg)) => {
                    self.partial_told = false;
                    return Event::Message(msg);
                }
                Ok(None) if self.decoder.is_mid_frame() && !self.partial_told => {
                    self.partial_told = true;
                    return Event::Partial;
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
            tokio::select! {
                ready = self.stream.readable() => {
                    if ready.is_err() {
                        self.eof = true;
                        continue;
                    }
                    match self.stream.try_read(&mut self.read_buf) {
                        Ok(0) => self.eof = true,
                        Ok(n) => {
                            self.decoder.push(&self.read_buf[..n]);
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
}
