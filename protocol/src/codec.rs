//! Framing and the one place that calls the codec.

use alloc::vec::Vec;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::HEADER_LEN;

/// A message could not be encoded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded body is longer than the frame limit.
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Encoded body length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// The codec refused the value.
    #[error("message could not be encoded")]
    Codec(#[source] postcard::Error),
}

/// The byte stream does not hold a valid frame. Every variant is fatal for the connection: after
/// an error the stream position is unknown.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The header declares a body longer than the limit (checked before buffering it).
    #[error("frame declares {len} bytes, over the limit of {max} bytes")]
    Oversized {
        /// Declared body length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The header declares an empty body; no message encodes to zero bytes.
    #[error("frame declares an empty body")]
    Empty,
    /// The body ends before the message does.
    #[error("frame body ends inside the message")]
    Truncated,
    /// The body holds a message followed by extra bytes.
    #[error("frame body has {extra} bytes after the message")]
    TrailingBytes {
        /// Count of unconsumed bytes.
        extra: usize,
    },
    /// The body starts with a message tag (or holds an enum tag, such as a
    /// [`CancelReason`](crate::CancelReason)) this side does not know.
    ///
    /// For a type other than this crate's messages decoded through
    /// [`FrameDecoder::next`], this is also what a value its `Deserialize` impl rejects with a
    /// custom error turns into: the codec does not say more than "rejected".
    #[error("unknown message or enum tag")]
    UnknownTag,
    /// The body is not a valid encoding (bad varint, bool, UTF-8, option tag, ...).
    #[error("malformed frame body")]
    Malformed(#[source] postcard::Error),
}

/// Encodes `msg` as one frame (header and body), refusing bodies over `max_len`.
pub fn encode_frame<M: Serialize>(msg: &M, max_len: u32) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_frame_into(msg, max_len, &mut out)?;
    Ok(out)
}

/// Appends one frame for `msg` to `out`, so that several frames can be written with one syscall.
/// On error `out` is left as it was.
pub fn encode_frame_into<M: Serialize>(
    msg: &M,
    max_len: u32,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let result = postcard::to_extend(msg, ExtendVec(out))
        .map(|_| ())
        .map_err(EncodeError::Codec);
    let len = out.len() - start - HEADER_LEN;
    let result = result.and_then(|()| match u32::try_from(len) {
        Ok(l) if l <= max_len => Ok(l),
        _ => Err(EncodeError::TooLarge { len, max: max_len }),
    });
    match result {
        Ok(len) => {
            out[start..start + HEADER_LEN].copy_from_slice(&len.to_le_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Lets postcard append to a caller's buffer in place.
struct ExtendVec<'a>(&'a mut Vec<u8>);

impl Extend<u8> for ExtendVec<'_> {
    fn extend<T: IntoIterator<Item = u8>>(&mut self, iter: T) {
        self.0.extend(iter);
    }
}

/// Incremental frame decoder: push bytes as they arrive, take whole messages out.
///
/// Memory is bounded: a header over the limit is rejected before its body is buffered, and
/// the buffer holds at most one partial frame plus the bytes of the latest [`push`](Self::push).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`.
    pos: usize,
    max_len: u32,
}

impl FrameDecoder {
    /// A decoder that rejects frame bodies longer than `max_len` bytes.
    pub fn new(max_len: u32) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            pos: 0,
            max_len,
        }
    }

    /// The frame body limit.
    pub fn max_len(&self) -> u32 {
        self.max_len
    }

    /// Appends received bytes. Call [`next`](Self::next) until it returns `Ok(None)` before
    /// pushing more, so the buffer stays bounded.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a message.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when part of a frame has arrived but not all of it (a peer may be stalling).
    pub fn is_mid_frame(&self) -> bool {
        self.buffered() > 0
    }

    /// Takes the next whole message, `Ok(None)` when more bytes are needed.
    ///
    /// After an error the decoder must be discarded: the stream cannot be resynchronised.
    #[expect(
        clippy::should_implement_trait,
        reason = "generic over the message type and fallible with a fatal error: not an Iterator"
    )]
    pub fn next<M: DeserializeOwned>(&mut self) -> Result<Option<M>, DecodeError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if len > self.max_len {
            return Err(DecodeError::Oversized {
                len,
                max: self.max_len,
            });
        }
        if len == 0 {
            return Err(DecodeError::Empty);
        }
        // `len <= max_len` fits a u32, but not necessarily a usize plus the header on a
        // 16- or 32-bit target with a limit near u32::MAX: such a frame could never be buffered.
        let Some(end) = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_add(HEADER_LEN))
        else {
            return Err(DecodeError::Oversized {
                len,
                max: self.max_len,
            });
        };
        if rest.len() < end {
            return Ok(None);
        }
        let msg = decode_body(&rest[HEADER_LEN..end])?;
        self.pos += end;
        Ok(Some(msg))
    }
}

/// Decodes exactly one message from a frame body (without its header).
pub(crate) fn decode_body<M: DeserializeOwned>(body: &[u8]) -> Result<M, DecodeError> {
    match postcard::take_from_bytes::<M>(body) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, extra)) => Err(DecodeError::TrailingBytes { extra: extra.len() }),
        Err(postcard::Error::DeserializeUnexpectedEnd) => Err(DecodeError::Truncated),
        // postcard reads a variant tag as a varint and hands it to the derived `Deserialize`,
        // which rejects an index it does not know with a custom error: postcard reports that as
        // `SerdeDeCustom` (`DeserializeBadEnum` is declared but not produced by postcard 1.1).
        // The wire types have no other source of custom errors (no validation in any impl).
        Err(postcard::Error::SerdeDeCustom | postcard::Error::DeserializeBadEnum) => {
            Err(DecodeError::UnknownTag)
        }
        Err(e) => Err(DecodeError::Malformed(e)),
    }
}
