//! A fake supervisor that speaks the real protocol over one end of a socketpair.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use warden_protocol::{
    DEFAULT_MAX_FRAME_LEN, FrameDecoder, JobId, PROTOCOL_VERSION, SupervisorMessage, WorkerMessage,
    encode_frame,
};
use warden_worker::{Channel, Job, JobError, ServeError, Worker};

/// Every wait in these tests is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`LIMIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {LIMIT:?} waiting for {what}"),
    }
}

/// Settings tests use: no SIGTERM handler (it is process-wide), and an orphan grace long enough
/// that a slow machine never exits the test binary.
pub fn worker(channel: Channel) -> Worker {
    Worker::new()
        .channel(channel)
        .handle_sigterm(false)
        .orphan_grace(Duration::from_secs(60))
}

pub struct FakeSupervisor {
    stream: UnixStream,
    decoder: FrameDecoder,
}

/// A connected fake supervisor and the worker's channel (call inside a runtime).
pub fn pair() -> (FakeSupervisor, Channel) {
    let (ours, channel) = pair_std();
    (FakeSupervisor::new(ours), channel)
}

/// The supervisor's end, to wrap later inside a runtime, and the worker's channel.
pub fn pair_std() -> (std::os::unix::net::UnixStream, Channel) {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let channel = Channel::from_std(theirs).expect("channel from a socketpair end");
    (ours, channel)
}

/// Serves `handler` (async) in a task.
pub fn spawn_async<F, Fut>(channel: Channel, handler: F) -> JoinHandle<Result<(), ServeError>>
where
    F: FnMut(Job) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<u8>, JobError>> + Send + 'static,
{
    tokio::spawn(worker(channel).serve_async(handler))
}

/// Serves `handler` (blocking) in a task.
pub fn spawn_blocking<F>(channel: Channel, handler: F) -> JoinHandle<Result<(), ServeError>>
where
    F: FnMut(Job) -> Result<Vec<u8>, JobError> + Send + 'static,
{
    tokio::spawn(worker(channel).serve_blocking_async(handler))
}

/// Waits for serving to end.
pub async fn finished(serving: JoinHandle<Result<(), ServeError>>) -> Result<(), ServeError> {
    within("serve to return", serving)
        .await
        .expect("serve task panicked")
}

/// The supervisor's hello, in the newest version (the worker's own, so jobs may be queued).
pub fn hello(heartbeat_interval_ms: u32, max_frame_len: u32) -> SupervisorMessage {
    hello_version(PROTOCOL_VERSION, heartbeat_interval_ms, max_frame_len)
}

/// The supervisor's hello settling on `protocol_version`.
pub fn hello_version(
    protocol_version: u16,
    heartbeat_interval_ms: u32,
    max_frame_len: u32,
) -> SupervisorMessage {
    SupervisorMessage::Hello {
        protocol_version,
        supervisor_version: "fake 0".into(),
        max_frame_len,
        heartbeat_interval_ms,
    }
}

pub fn start(job: u64, payload: &[u8]) -> SupervisorMessage {
    SupervisorMessage::StartJob {
        job: JobId(job),
        payload: payload.to_vec(),
        deadline_ms: None,
    }
}

impl FakeSupervisor {
    /// Wraps the supervisor's end (call inside a runtime).
    pub fn new(stream: std::os::unix::net::UnixStream) -> FakeSupervisor {
        stream.set_nonblocking(true).expect("nonblocking");
        let stream = UnixStream::from_std(stream).expect("tokio stream");
        FakeSupervisor {
            stream,
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_LEN),
        }
    }

    pub async fn send(&mut self, msg: &SupervisorMessage) {
        let frame = encode_frame(msg, u32::MAX).expect("encode");
        self.send_raw(&frame).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        within("a write to the worker", self.stream.write_all(bytes))
            .await
            .expect("write");
    }

    /// The next message, whatever it is.
    pub async fn recv_any(&mut self, what: &str) -> WorkerMessage {
        within(what, async {
            let mut buf = [0u8; 4096];
            loop {
                if let Some(msg) = self.decoder.next().expect("worker sent a valid frame") {
                    return msg;
                }
                let n = self.stream.read(&mut buf).await.expect("read");
                assert!(n > 0, "channel closed while waiting for {what}");
                self.decoder.push(&buf[..n]);
            }
        })
        .await
    }

    /// The next message that is not a heartbeat.
    pub async fn recv(&mut self, what: &str) -> WorkerMessage {
        loop {
            let msg = self.recv_any(what).await;
            if msg != WorkerMessage::Heartbeat {
                return msg;
            }
        }
    }

    /// Waits until the worker closes its end, failing on any message but a heartbeat.
    pub async fn expect_eof(&mut self, what: &str) {
        within(what, async {
            let mut buf = [0u8; 4096];
            loop {
                if let Some(msg) = self.decoder.next::<WorkerMessage>().expect("valid frame") {
                    assert_eq!(
                        msg,
                        WorkerMessage::Heartbeat,
                        "unexpected message before EOF"
                    );
                    continue;
                }
                // A worker that exits with our bytes unread makes the kernel reset the
                // connection: that is an end of stream too.
                let n = match self.stream.read(&mut buf).await {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                    r => r.expect("read"),
                };
                if n == 0 {
                    assert_eq!(self.decoder.buffered(), 0, "partial frame before EOF");
                    return;
                }
                self.decoder.push(&buf[..n]);
            }
        })
        .await
    }

    /// Receives the worker's hello and accepts it in the newest version.
    pub async fn accept(&mut self, heartbeat_interval_ms: u32, max_frame_len: u32) {
        self.accept_version(PROTOCOL_VERSION, heartbeat_interval_ms, max_frame_len)
            .await;
    }

    /// Receives the worker's hello (which must name the newest version) and answers that both
    /// speak `protocol_version`, as an older supervisor does.
    pub async fn accept_version(
        &mut self,
        protocol_version: u16,
        heartbeat_interval_ms: u32,
        max_frame_len: u32,
    ) {
        let msg = self.recv_any("worker hello").await;
        assert!(
            matches!(
                msg,
                WorkerMessage::Hello {
                    protocol_version: PROTOCOL_VERSION,
                    ..
                }
            ),
            "expected a version {PROTOCOL_VERSION} hello, got {msg:?}"
        );
        self.send(&hello_version(
            protocol_version,
            heartbeat_interval_ms,
            max_frame_len,
        ))
        .await;
    }

    /// Accepts with no heartbeats and the default frame limit.
    pub async fn accept_default(&mut self) {
        self.accept(0, DEFAULT_MAX_FRAME_LEN).await;
    }

    /// Accepts in protocol version 1 (no queued jobs), with no heartbeats and the default frame
    /// limit.
    pub async fn accept_v1(&mut self) {
        self.accept_version(1, 0, DEFAULT_MAX_FRAME_LEN).await;
    }

    /// Closes the supervisor's end.
    pub fn close(self) {
        drop(self);
    }
}
