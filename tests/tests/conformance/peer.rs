//! A supervisor written by hand: the worker under test gets one end of a socketpair (at
//! whatever descriptor number it lands on, named in `WARDEN_FD`, as PROTOCOL.md allows) and
//! this side speaks the protocol frame by frame, so a case can send what warden never would.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use warden_protocol::{
    DEFAULT_MAX_FRAME_LEN, FrameDecoder, JobId, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
    SupervisorMessage, WorkerMessage, encode_frame, negotiate,
};

use crate::sdks::Sdk;
use crate::support::{Ctx, LIMIT};

/// Held from making the worker's end inheritable until it is closed here again: no other
/// process this test binary starts meanwhile may inherit it (the library's own spawns close
/// every stray descriptor; std's do not).
pub static SPAWN: Mutex<()> = Mutex::new(());

/// The hand-written supervisor and its worker.
pub struct Peer {
    child: Child,
    stream: Option<UnixStream>,
    decoder: FrameDecoder,
    /// What the worker under test is called, for messages.
    pub sdk: &'static str,
    /// The newest protocol version the worker's hello announced (0 before it).
    pub announced: u16,
}

impl Peer {
    /// Starts `sdk`'s worker with a channel of its own.
    pub fn spawn(t: &Ctx, sdk: &Sdk) -> Peer {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let child = {
            let _spawning = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
            fcntl(&theirs, FcntlArg::F_SETFD(FdFlag::empty())).expect("make the end inheritable");
            let child = sdk
                .std_command(t)
                .env("WARDEN_FD", theirs.as_raw_fd().to_string())
                .spawn()
                .unwrap_or_else(|e| panic!("{}: cannot start the worker: {e}", sdk.name));
            drop(theirs);
            child
        };
        ours.set_read_timeout(Some(LIMIT)).expect("read timeout");
        Peer {
            child,
            stream: Some(ours),
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_LEN),
            sdk: sdk.name,
            announced: 0,
        }
    }

    /// The worker's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stream(&mut self) -> &mut UnixStream {
        self.stream.as_mut().expect("the channel is still open")
    }

    /// The next frame from the worker, heartbeats included; `None` at end-of-file.
    pub fn recv_any(&mut self, what: &str) -> Option<WorkerMessage> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.decoder.next::<WorkerMessage>() {
                Ok(Some(msg)) => return Some(msg),
                Ok(None) => {}
                Err(e) => panic!(
                    "{}: undecodable frame while waiting for {what}: {e}",
                    self.sdk
                ),
            }
            let sdk = self.sdk;
            match self.stream().read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("{sdk}: timed out after {LIMIT:?} waiting for {what}")
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The worker exited with bytes unread on our side: the end of its stream.
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("{sdk}: reading the channel while waiting for {what}: {e}"),
            }
        }
    }

    /// The next frame that is not a heartbeat; `None` at end-of-file.
    pub fn recv(&mut self, what: &str) -> Option<WorkerMessage> {
        loop {
            match self.recv_any(what)? {
                WorkerMessage::Heartbeat => {}
                msg => return Some(msg),
            }
        }
    }

    /// The next frame, which must be there and not a heartbeat.
    pub fn expect(&mut self, what: &str) -> WorkerMessage {
        let sdk = self.sdk;
        self.recv(what)
            .unwrap_or_else(|| panic!("{sdk}: end-of-file while waiting for {what}"))
    }

    /// Waits for end-of-file; any frame but a heartbeat before it fails the case.
    pub fn expect_eof(&mut self, what: &str) {
        if let Some(msg) = self.recv(what) {
            panic!("{}: expected nothing more ({what}), got {msg:?}", self.sdk);
        }
    }

    /// Sends one message.
    pub fn send(&mut self, msg: &SupervisorMessage) {
        let frame = encode_frame(msg, u32::MAX).expect("encode");
        self.send_bytes(&frame);
    }

    /// Sends raw bytes.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let sdk = self.sdk;
        self.stream()
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("{sdk}: writing to the worker: {e}"));
    }

    /// Closes this side of the channel: the worker sees end-of-file.
    pub fn close(&mut self) {
        self.stream = None;
    }

    /// Reads the worker's hello and checks it.
    pub fn expect_hello(&mut self) {
        let pid = self.pid();
        match self.recv_any("the worker's hello") {
            Some(WorkerMessage::Hello {
                protocol_version,
                pid: said,
                sdk_version,
            }) => {
                assert!(
                    (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol_version),
                    "{}: announces version {protocol_version}, which warden does not speak",
                    self.sdk
                );
                self.announced = protocol_version;
                assert_eq!(
                    said, pid,
                    "{}: the hello names the worker's own pid",
                    self.sdk
                );
                assert!(
                    !sdk_version.is_empty(),
                    "{}: the hello names its SDK",
                    self.sdk
                );
            }
            other => panic!(
                "{}: expected the worker's hello first, got {other:?}",
                self.sdk
            ),
        }
    }

    /// The whole handshake, announcing `max_frame_len` and `heartbeat_interval_ms`, in the
    /// version warden would settle on with this worker.
    pub fn handshake(&mut self, max_frame_len: u32, heartbeat_interval_ms: u32) {
        self.expect_hello();
        let version = negotiate(self.announced).expect("checked in expect_hello");
        self.send(&SupervisorMessage::Hello {
            protocol_version: version,
            supervisor_version: "conformance peer".into(),
            max_frame_len,
            heartbeat_interval_ms,
        });
    }

    /// Starts job `job` with `payload` and no deadline.
    pub fn start(&mut self, job: u64, payload: &[u8]) {
        self.send(&start(job, payload));
    }

    /// Waits for the job's `ready` report (progress before it is allowed).
    pub fn expect_ready(&mut self, job: u64) {
        loop {
            match self.expect("the job's ready report") {
                WorkerMessage::Progress { job: j, text, .. } if j == JobId(job) => {
                    if text.as_deref() == Some("ready") {
                        return;
                    }
                }
                other => panic!(
                    "{}: expected progress for job {job}, got {other:?}",
                    self.sdk
                ),
            }
        }
    }

    /// The job's terminal message, skipping its progress reports (returned too).
    pub fn expect_terminal(&mut self, job: u64) -> (WorkerMessage, Vec<WorkerMessage>) {
        let mut progress = Vec::new();
        loop {
            match self.expect("the job's terminal message") {
                p @ WorkerMessage::Progress { .. } => {
                    assert!(
                        matches!(p, WorkerMessage::Progress { job: j, .. } if j == JobId(job)),
                        "{}: progress for another job: {p:?}",
                        self.sdk
                    );
                    progress.push(p);
                }
                msg @ (WorkerMessage::Completed { .. }
                | WorkerMessage::Cancelled { .. }
                | WorkerMessage::Failed { .. }) => {
                    let j = match &msg {
                        WorkerMessage::Completed { job, .. }
                        | WorkerMessage::Cancelled { job }
                        | WorkerMessage::Failed { job, .. } => *job,
                        _ => unreachable!(),
                    };
                    assert_eq!(j, JobId(job), "{}: terminal message for job", self.sdk);
                    return (msg, progress);
                }
                other => panic!("{}: expected job {job}'s messages, got {other:?}", self.sdk),
            }
        }
    }

    /// Waits (bounded) for the worker to exit and reaps it.
    pub fn wait_exit(&mut self, what: &str) -> ExitStatus {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out after {LIMIT:?} waiting for the worker to exit ({what})",
                self.sdk
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // A case that failed half-way: our own, unreaped child, so the pid is still its.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `StartJob` with no deadline.
pub fn start(job: u64, payload: &[u8]) -> SupervisorMessage {
    SupervisorMessage::StartJob {
        job: JobId(job),
        payload: payload.to_vec(),
        deadline_ms: None,
    }
}
