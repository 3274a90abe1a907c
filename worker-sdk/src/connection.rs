//! The framed channel: the handshake, and the encoding rules the serve loop relies on.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use warden_protocol::{
    DEFAULT_MAX_FRAME_LEN, FrameDecoder, HEADER_LEN, PROTOCOL_VERSION, SupervisorMessage,
    WorkerMessage, check_version, encode_frame_into,
};

use crate::error::ConnectError;

/// The SDK's name and version, sent in its hello.
pub(crate) const SDK_VERSION: &str = concat!("warden-worker ", env!("CARGO_PKG_VERSION"));

/// The smallest frame limit the SDK accepts from the supervisor: enough for a heartbeat, and for
/// a `Failed` message with an empty error for any job id, which is what every oversized terminal
/// message degrades to.
pub(crate) const MIN_MAX_FRAME_LEN: u32 = 16;

/// What the supervisor's hello settled.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The version both sides speak from now on (the supervisor's answer, checked).
    pub(crate) protocol_version: u16,
    /// Largest frame body either side may send.
    pub(crate) max_frame_len: u32,
    /// `None` when the supervisor wants no heartbeats.
    pub(crate) heartbeat_interval: Option<Duration>,
    pub(crate) supervisor_version: String,
}

/// Sends the worker's hello and waits for the supervisor's answer, at most `timeout`.
///
/// The hello names the newest protocol version the SDK speaks ([`PROTOCOL_VERSION`]); the
/// supervisor answers with the version both will speak, which must be one the SDK speaks
/// ([`check_version`]; version 1 is a supervisor that never queues jobs).
///
/// Reads exactly one frame, so bytes the supervisor sends after its hello stay in the socket for
/// the serve loop's decoder (which uses the negotiated frame limit).
///
/// # Cancel safety
/// Not cancel safe: a dropped handshake leaves the stream at an unknown position.
pub(crate) async fn handshake(
    stream: &mut UnixStream,
    timeout: Duration,
) -> Result<Session, ConnectError> {
    tokio::time::timeout(timeout, exchange_hellos(stream))
        .await
        .unwrap_or(Err(ConnectError::Timeout { timeout }))
}

async fn exchange_hellos(stream: &mut UnixStream) -> Result<Session, ConnectError> {
    let hello = WorkerMessage::Hello {
        protocol_version: PROTOCOL_VERSION,
        pid: std::process::id(),
        sdk_version: SDK_VERSION.to_owned(),
    };
    let mut frame = Vec::new();
    encode_frame_into(&hello, DEFAULT_MAX_FRAME_LEN, &mut frame).map_err(ConnectError::Encode)?;
    stream.write_all(&frame).await.map_err(io_error)?;

    match read_one(stream).await? {
        SupervisorMessage::Hello {
            protocol_version,
            supervisor_version,
            max_frame_len,
            heartbeat_interval_ms,
        } => {
            let protocol_version =
                check_version(protocol_version).map_err(ConnectError::Version)?;
            if max_frame_len < MIN_MAX_FRAME_LEN {
                return Err(ConnectError::FrameLimitTooSmall {
                    max: max_frame_len,
                    min: MIN_MAX_FRAME_LEN,
                });
            }
            let heartbeat_interval = (heartbeat_interval_ms > 0)
                .then(|| Duration::from_millis(u64::from(heartbeat_interval_ms)));
            Ok(Session {
                protocol_version,
                max_frame_len,
                heartbeat_interval,
                supervisor_version,
            })
        }
        SupervisorMessage::Refuse { reason } => Err(ConnectError::Refused { reason }),
        other => Err(ConnectError::Unexpected { kind: other.kind() }),
    }
}

/// Reads exactly one frame under the default limit and decodes it.
async fn read_one(rd: &mut UnixStream) -> Result<SupervisorMessage, ConnectError> {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let mut header = [0u8; HEADER_LEN];
    read_exact(rd, &mut header).await?;
    decoder.push(&header);
    // Checks the declared length (limit, empty) before anything is allocated for the body.
    if let Some(msg) = decoder.next().map_err(ConnectError::Decode)? {
        return Ok(msg);
    }
    let len = u32::from_le_bytes(header) as usize;
    let mut body = vec![0u8; len];
    read_exact(rd, &mut body).await?;
    decoder.push(&body);
    match decoder.next().map_err(ConnectError::Decode)? {
        Some(msg) => Ok(msg),
        // A whole frame was pushed, so the decoder cannot still be waiting for bytes.
        None => Err(ConnectError::Decode(
            warden_protocol::DecodeError::Truncated,
        )),
    }
}

async fn read_exact(rd: &mut UnixStream, buf: &mut [u8]) -> Result<(), ConnectError> {
    rd.read_exact(buf).await.map(drop).map_err(io_error)
}

/// The supervisor going away shows up as EOF, EPIPE or ECONNRESET depending on timing.
fn io_error(e: std::io::Error) -> ConnectError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => {
            ConnectError::Closed
        }
        _ => ConnectError::Io(e),
    }
}
