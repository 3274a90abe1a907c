//! warden's wire protocol, sans-IO.
//!
//! A supervisor and a worker talk over one byte stream (an inherited socketpair end). Every
//! message travels in a **frame**: a 4-byte little-endian body length followed by a
//! [postcard](https://docs.rs/postcard) body. This crate holds the message types, the frame
//! encoder and the incremental [`FrameDecoder`], and the handshake rules. It performs no I/O and
//! reads no clock: callers push bytes in and take messages out.
//!
//! `PROTOCOL.md` beside this crate describes the byte layout precisely enough to write a worker in
//! another language.
//!
//! # Example
//! ```
//! use warden_protocol::{encode_frame, FrameDecoder, JobId, SupervisorMessage, CancelReason};
//!
//! let msg = SupervisorMessage::Cancel { job: JobId(7), reason: CancelReason::Timeout };
//! let bytes = encode_frame(&msg, warden_protocol::DEFAULT_MAX_FRAME_LEN).unwrap();
//! assert_eq!(bytes, [3, 0, 0, 0, 2, 7, 1]);
//!
//! // Bytes may arrive in any split; the decoder yields whole messages only.
//! let mut decoder = FrameDecoder::new(warden_protocol::DEFAULT_MAX_FRAME_LEN);
//! decoder.push(&bytes[..2]);
//! assert_eq!(decoder.next::<SupervisorMessage>().unwrap(), None);
//! decoder.push(&bytes[2..]);
//! assert_eq!(decoder.next::<SupervisorMessage>().unwrap(), Some(msg));
//! ```
//!
//! # Invariants
//! - Wire types are flat (no recursive type), so decoding depth is bounded by the type, not the
//!   input.
//! - A frame's declared length is checked against the limit before anything is buffered for it;
//!   the decoder never holds more than one maximal frame plus what the caller pushed at once.
//! - A body must be consumed exactly: trailing bytes are an error.

#![no_std]
#![warn(missing_docs)]

extern crate alloc;

mod codec;
mod handshake;
mod message;

pub use codec::{DecodeError, EncodeError, FrameDecoder, encode_frame, encode_frame_into};
pub use handshake::{
    HandshakeError, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, QUEUED_JOBS_VERSION, check_version,
    negotiate, queues_jobs,
};
pub use message::{CancelReason, JobId, ParseCancelReasonError, SupervisorMessage, WorkerMessage};

/// Length of the frame header: a little-endian `u32` body length.
pub const HEADER_LEN: usize = 4;

/// Default maximum frame body length: 1 MiB.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 1024 * 1024;

/// Longest progress text a peer should send, in bytes. The SDK truncates to it; the supervisor
/// truncates what it receives to it.
pub const MAX_PROGRESS_TEXT: usize = 256;

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary: how
/// both sides cut progress and error texts to their limits.
pub fn truncate_str(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::truncate_str;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_str("abc", 2), "ab");
        assert_eq!(truncate_str("aé", 2), "a");
        assert_eq!(truncate_str("é", 2), "é");
        assert_eq!(truncate_str("", 0), "");
        assert_eq!(truncate_str("é", 1), "");
    }
}
