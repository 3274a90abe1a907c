//! Framed, non-blocking I/O on the supervisor's end of the socketpair.
//!
//! Writes go out from the caller's task with a non-blocking write (no writer task, so a cancel
//! costs no extra wake-up); what the socket does not take is kept and flushed when it becomes
//! writable. The socket is registered with the reactor for readability alone, and a copy of it
//! for writability only while bytes wait: registered for writability, a socket wakes the
//! reactor's thread each time the worker reads, which is after every message sent to it.
//! Reads are bounded per call and decoded at once, so memory stays within one read chunk plus
//! one maximal frame whatever the worker sends. The read chunk belongs to the thread, not the
//! channel (it is only used between a readiness event and the decoder, with no await between):
//! an idle worker costs its supervisor no read buffer. The channel keeps no timer: a read that leaves
//! part of a frame buffered returns [`Event::Partial`] once, and the caller's machine times the
//! stall (`frame_timeout`) with its other deadlines.
//!
//! Floods are coalesced, never queued: of a run of heartbeats and progress reports for one job
//! that one read already delivered, only the last report (or, if there is none, one heartbeat)
//! becomes an event. Any message is a sign of life, so a heartbeat next to a report loses
//! nothing; a report superseded by a newer one for the same job is what the SDK drops too. A
//! peer that writes faster than we read is held back by the socket buffer, not by our memory,
//! and the actor wakes once per read, not once per frame.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::process::register;
use warden_protocol::{DecodeError, EncodeError, FrameDecoder, SupervisorMessage, WorkerMessage};

const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// The read chunk of every channel polled on this thread (see the module doc).
    static READ_BUF: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

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
    /// Registered for readability only: a socket registered for writability wakes its reactor
    /// each time the worker reads a frame, which is after every message sent to it.
    stream: AsyncFd<UnixStream>,
    /// A copy of the socket registered for writability alone, only while queued bytes wait
    /// for room (rare: the socket takes a whole frame almost always).
    write_wait: Option<AsyncFd<OwnedFd>>,
    decoder: FrameDecoder,
    max_frame_len: u32,
    outbox: Vec<u8>,
    sent: usize,
    eof: bool,
    write_closed: bool,
    /// [`Event::Partial`] was returned for the frame now buffered.
    partial_told: bool,
    /// The message (or decode error) that ended a coalesced run, returned by the next call.
    pending: Option<Event>,
    /// Set while bytes are read but not yet returned as events (see [`UnreadProbe`]).
    unread: Arc<AtomicBool>,
}

/// Whether the worker has sent anything its supervisor has not taken as an event yet: bytes
/// in the socket, or read and buffered here. Usable from any thread (the timer thread asks it
/// before it SIGKILLs a tree on time: the answer could be the worker's `Cancelled`).
pub(crate) struct UnreadProbe {
    socket: OwnedFd,
    unread: Arc<AtomicBool>,
}

impl UnreadProbe {
    /// True if anything is unread, or if the socket cannot be asked.
    pub(crate) fn has_unread(&self) -> bool {
        if self.unread.load(Ordering::Acquire) {
            return true;
        }
        let mut fds = [nix::poll::PollFd::new(
            self.socket.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        !matches!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
            Ok(0)
        )
    }
}

impl Channel {
    pub(crate) fn new(fd: OwnedFd, max_frame_len: u32) -> io::Result<Self> {
        let std = UnixStream::from(fd);
        std.set_nonblocking(true)?;
        let stream = register(std, Interest::READABLE)?;
        Ok(Channel {
            stream,
            write_wait: None,
            decoder: FrameDecoder::new(max_frame_len),
            max_frame_len,
            outbox: Vec::new(),
            sent: 0,
            eof: false,
            write_closed: false,
            partial_told: false,
            pending: None,
            unread: Arc::new(AtomicBool::new(false)),
        })
    }

    /// A probe of what is unread, for another thread; `None` if the socket cannot be copied.
    pub(crate) fn unread_probe(&self) -> Option<UnreadProbe> {
        Some(UnreadProbe {
            socket: self.stream.get_ref().as_fd().try_clone_to_owned().ok()?,
            unread: Arc::clone(&self.unread),
        })
    }

    /// Whether bytes were read that no event has returned yet.
    fn note_unread(&self) {
        let unread = self.pending.is_some() || self.decoder.buffered() > 0;
        self.unread.store(unread, Ordering::Release);
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
            match self.stream.get_ref().write(&self.outbox[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.write_closed = true,
            }
        }
        if self.sent == self.outbox.len() || self.write_closed {
            self.outbox.clear();
            self.sent = 0;
            // Nothing waits for room any more: deregister the copy.
            self.write_wait = None;
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

    /// True once the worker closed its end or the stream became unusable (and every event
    /// before that was returned).
    pub(crate) fn is_eof(&self) -> bool {
        self.eof
    }

    /// The next event. Also flushes queued writes while it waits.
    ///
    /// A read that starts a frame without completing it returns [`Event::Partial`]; a read
    /// that only adds to a partial frame returns nothing and the call waits on.
    ///
    /// Heartbeats and progress reports already received are coalesced (see the module doc).
    ///
    /// # Cancel safety
    /// Cancel-safe: all state lives in `self`; a dropped call loses no bytes.
    pub(crate) async fn next_event(&mut self) -> Event {
        let event = self.next_event_inner().await;
        self.note_unread();
        event
    }

    async fn next_event_inner(&mut self) -> Event {
        match self.pending.take() {
            Some(Event::Message(msg)) => return self.message(msg),
            // The only other event kept is the decode error that ends the stream.
            Some(event) => {
                self.eof = true;
                return event;
            }
            None => {}
        }
        loop {
            match self.decoder.next::<WorkerMessage>() {
                Ok(Some(msg)) => return self.message(msg),
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
            let wants_write = self.wants_write();
            tokio::select! {
                ready = self.stream.readable() => match ready {
                    Ok(mut ready) => {
                        // One non-blocking read into the thread's chunk, pushed to the decoder
                        // at once (no await in between).
                        READ_BUF.with_borrow_mut(|buf| {
                            match ready.try_io(|socket| socket.get_ref().read(buf)) {
                                Ok(Ok(0)) => self.eof = true,
                                Ok(Ok(n)) => {
                                    self.decoder.push(&buf[..n]);
                                    // Before any await: a caller that drops this call now
                                    // leaves them unread.
                                    self.unread.store(true, Ordering::Release);
                                }
                                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                                Ok(Err(_)) => self.eof = true,
                                // Spurious readiness, cleared by `try_io`.
                                Err(_would_block) => {}
                            }
                        });
                    }
                    Err(_) => self.eof = true,
                },
                () = room(&mut self.write_wait, &self.stream), if wants_write => {
                    self.flush_now();
                }
            }
        }
    }

    /// The event for a decoded message, with what is coalesced into it.
    fn message(&mut self, msg: WorkerMessage) -> Event {
        let msg = self.coalesce(msg);
        // A frame completed: any bytes left belong to a new frame, told as partial anew.
        self.partial_told = false;
        Event::Message(msg)
    }

    /// Folds into `msg` the heartbeats and same-job progress reports decoded right behind it,
    /// without waiting for more bytes. What ends the run is kept in `pending`: a decode error
    /// is reported after the messages before it, so the channel reads as live until then.
    fn coalesce(&mut self, mut msg: WorkerMessage) -> WorkerMessage {
        while matches!(
            msg,
            WorkerMessage::Heartbeat | WorkerMessage::Progress { .. }
        ) {
            match self.decoder.next::<WorkerMessage>() {
                Ok(Some(next)) => match (&msg, &next) {
                    (_, WorkerMessage::Heartbeat) => {}
                    (WorkerMessage::Heartbeat, WorkerMessage::Progress { .. }) => msg = next,
                    (
                        WorkerMessage::Progress { job, .. },
                        WorkerMessage::Progress { job: next_job, .. },
                    ) if job == next_job => msg = next,
                    _ => {
                        self.pending = Some(Event::Message(next));
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    self.pending = Some(Event::Invalid(e));
                    break;
                }
            }
        }
        msg
    }
}

/// Waits until the socket may take more of the queued bytes (or may have: the caller retries
/// and comes back on `WouldBlock`). The copy registered for writability is made on first need;
/// if it cannot be made (no descriptor left, say), this waits a millisecond instead, so
/// nothing queued is ever given up for it.
///
/// # Cancel safety
/// Cancel-safe: it only waits.
async fn room(slot: &mut Option<AsyncFd<OwnedFd>>, stream: &AsyncFd<UnixStream>) {
    if slot.is_none() {
        *slot = stream
            .get_ref()
            .as_fd()
            .try_clone_to_owned()
            .and_then(|copy| register(copy, Interest::WRITABLE))
            .ok();
    }
    match slot.as_ref() {
        Some(copy) => match copy.writable().await {
            // The flush that follows finds out; a WouldBlock there waits for the next edge.
            Ok(mut ready) => ready.clear_ready(),
            Err(_) => {
                *slot = None;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        },
        None => tokio::time::sleep(Duration::from_millis(1)).await,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream as StdStream;
    use std::time::Duration;

    use warden_protocol::{DEFAULT_MAX_FRAME_LEN, JobId, encode_frame_into};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn progress(job: u64, text: &str) -> WorkerMessage {
        WorkerMessage::Progress {
            job: JobId(job),
            fraction: None,
            text: Some(text.into()),
        }
    }

    /// A channel whose peer has already written `messages` (then `tail`) and closed its end, so
    /// a single read sees them all.
    fn channel_after(messages: &[WorkerMessage], tail: &[u8]) -> Channel {
        let (ours, mut theirs) = StdStream::pair().expect("socketpair");
        let mut bytes = Vec::new();
        for msg in messages {
            encode_frame_into(msg, DEFAULT_MAX_FRAME_LEN, &mut bytes).expect("encode");
        }
        bytes.extend_from_slice(tail);
        assert!(
            bytes.len() < READ_CHUNK,
            "one read must see the whole test stream"
        );
        theirs.write_all(&bytes).expect("write");
        drop(theirs);
        Channel::new(ours.into(), DEFAULT_MAX_FRAME_LEN).expect("channel")
    }

    async fn events(channel: &mut Channel) -> Vec<String> {
        let mut out = Vec::new();
        while !channel.is_eof() {
            let event = tokio::time::timeout(WAIT, channel.next_event())
                .await
                .expect("an event within the wait");
            out.push(match event {
                Event::Message(WorkerMessage::Progress { job, text, .. }) => {
                    format!("progress {} {}", job.0, text.unwrap_or_default())
                }
                Event::Message(m) => m.kind().to_owned(),
                Event::Invalid(e) => format!("invalid: {e}"),
                Event::Partial => "partial".to_owned(),
                Event::Eof => "eof".to_owned(),
            });
        }
        out
    }

    #[tokio::test]
    async fn a_flood_already_received_is_one_event_with_the_latest_report() {
        let mut flood = Vec::new();
        for i in 0..500 {
            flood.push(WorkerMessage::Heartbeat);
            flood.push(progress(1, &i.to_string()));
        }
        flood.push(WorkerMessage::Heartbeat);
        flood.push(WorkerMessage::Completed {
            job: JobId(1),
            output: b"done".to_vec(),
        });
        flood.extend(std::iter::repeat_n(WorkerMessage::Heartbeat, 300));
        let mut channel = channel_after(&flood, &[]);
        assert_eq!(
            events(&mut channel).await,
            ["progress 1 499", "completed", "heartbeat", "eof"]
        );
    }

    #[tokio::test]
    async fn reports_for_another_job_and_other_messages_are_never_folded() {
        let mut channel = channel_after(
            &[
                progress(1, "a"),
                progress(2, "b"),
                progress(2, "c"),
                WorkerMessage::Cancelled { job: JobId(1) },
                progress(1, "d"),
                WorkerMessage::Hello {
                    protocol_version: 1,
                    pid: 1,
                    sdk_version: String::new(),
                },
                WorkerMessage::Heartbeat,
            ],
            &[],
        );
        assert_eq!(
            events(&mut channel).await,
            [
                "progress 1 a",
                "progress 2 c",
                "cancelled",
                "progress 1 d",
                "hello",
                "heartbeat",
                "eof"
            ]
        );
    }

    #[tokio::test]
    async fn a_bad_frame_behind_a_run_comes_after_it_and_only_then_ends_the_channel() {
        // An unknown tag (99) behind two reports.
        let mut channel = channel_after(&[progress(1, "a"), progress(1, "b")], &[1, 0, 0, 0, 99]);
        let first = tokio::time::timeout(WAIT, channel.next_event()).await;
        assert!(
            matches!(&first, Ok(Event::Message(WorkerMessage::Progress { text: Some(t), .. })) if t == "b"),
            "{first:?}"
        );
        assert!(!channel.is_eof(), "the error is still to be reported");
        assert_eq!(
            events(&mut channel).await,
            ["invalid: unknown message or enum tag"]
        );
    }

    /// Frames larger than the socket takes wait in the outbox and go out as the worker reads,
    /// through the copy registered for writability alone; then it is deregistered.
    #[tokio::test]
    async fn what_the_socket_does_not_take_goes_out_as_the_peer_reads() {
        const FRAMES: usize = 8;
        let (ours, theirs) = StdStream::pair().expect("socketpair");
        let mut channel = Channel::new(ours.into(), DEFAULT_MAX_FRAME_LEN).expect("channel");
        let payload = vec![7u8; 900 * 1024];
        for job in 0..FRAMES as u64 {
            channel
                .send(&SupervisorMessage::StartJob {
                    job: JobId(job),
                    payload: payload.clone(),
                    deadline_ms: None,
                })
                .expect("encode");
        }
        assert!(channel.wants_write(), "7 MiB cannot fit in a socket buffer");
        // The peer reads every frame, then answers.
        let peer = std::thread::spawn(move || {
            let mut theirs = theirs;
            theirs.set_read_timeout(Some(WAIT)).expect("timeout");
            let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
            let mut buf = vec![0u8; 64 * 1024];
            let mut seen = 0;
            while seen < FRAMES {
                let n = theirs.read(&mut buf).expect("read within the wait");
                assert!(n > 0, "EOF before every frame");
                decoder.push(&buf[..n]);
                while let Some(msg) = decoder.next::<SupervisorMessage>().expect("a valid frame") {
                    assert!(
                        matches!(&msg, SupervisorMessage::StartJob { payload, .. } if payload.len() == 900 * 1024)
                    );
                    seen += 1;
                }
            }
            let mut answer = Vec::new();
            encode_frame_into(
                &WorkerMessage::Heartbeat,
                DEFAULT_MAX_FRAME_LEN,
                &mut answer,
            )
            .expect("encode");
            theirs.write_all(&answer).expect("answer");
        });
        let event = tokio::time::timeout(WAIT, channel.next_event())
            .await
            .expect("the answer within the wait");
        assert!(
            matches!(event, Event::Message(WorkerMessage::Heartbeat)),
            "{event:?}"
        );
        assert!(!channel.wants_write());
        assert!(
            channel.write_wait.is_none(),
            "the writability copy is dropped once drained"
        );
        peer.join().expect("peer");
    }
}
