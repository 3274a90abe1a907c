//! What the fuzz targets share: how an input becomes a frame limit and a chunking, a receiver
//! that checks the decoder's buffering bound after every push, and the round-trip check.
//!
//! The same properties run as proptest property tests in `protocol/tests/props.rs`, so they are
//! checked in every CI run, not only when someone fuzzes.

use serde::Serialize;
use serde::de::DeserializeOwned;
use warden_protocol::{DEFAULT_MAX_FRAME_LEN, DecodeError, FrameDecoder, HEADER_LEN, encode_frame};

/// A stream and how to feed it, read from the front of a fuzz input.
#[derive(Debug)]
pub struct Script<'a> {
    /// The decoder's frame limit.
    pub max_len: u32,
    /// Sizes of the pieces pushed in turn (cycled); 0 pushes an empty piece.
    pub chunk_sizes: [usize; 4],
    /// The bytes.
    pub stream: &'a [u8],
}

impl<'a> Script<'a> {
    /// Byte 0 picks the limit (tiny ones often, so bodies reach the limit check), bytes 1-4 the
    /// chunk sizes, the rest is the stream.
    pub fn parse(data: &'a [u8]) -> Script<'a> {
        let byte = |i: usize| data.get(i).copied().unwrap_or(0);
        let max_len = match byte(0) >> 5 {
            0..=2 => u32::from(byte(0) & 31),
            3 => 255,
            4 => 4096,
            5 => DEFAULT_MAX_FRAME_LEN,
            _ => u32::MAX,
        };
        let chunk_sizes = [byte(1), byte(2), byte(3), byte(4)].map(usize::from);
        Script {
            max_len,
            chunk_sizes,
            stream: data.get(5..).unwrap_or_default(),
        }
    }

    /// The stream cut into pieces of the chunk sizes, cycled.
    pub fn pieces(&self) -> Vec<&'a [u8]> {
        let mut pieces = Vec::new();
        let mut rest = self.stream;
        for size in self.chunk_sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*size).min(rest.len()));
            pieces.push(piece);
            rest = tail;
            if *size == 0 {
                // An empty push must change nothing; then go on with one byte.
                let (piece, tail) = rest.split_at(1);
                pieces.push(piece);
                rest = tail;
            }
        }
        pieces
    }
}

/// What a receiver saw: messages in order, then the error that ended the stream, if any.
#[derive(Debug)]
pub struct Received<M> {
    /// The decoded messages.
    pub messages: Vec<M>,
    /// The error that ended the stream.
    pub error: Option<DecodeError>,
}

/// Feeds `pieces` the way a reader loop does (push, then take messages until `Ok(None)`),
/// stopping at the first error, and asserts the buffering bound after every push and drain.
pub fn receive<M: DeserializeOwned>(max_len: u32, pieces: &[&[u8]]) -> Received<M> {
    let mut decoder = FrameDecoder::new(max_len);
    let mut messages = Vec::new();
    let limit = usize::try_from(max_len).unwrap_or(usize::MAX);
    for piece in pieces {
        decoder.push(piece);
        assert!(
            decoder.buffered() <= limit.saturating_add(HEADER_LEN + piece.len()),
            "buffered {} after a push of {}, limit {max_len}",
            decoder.buffered(),
            piece.len()
        );
        loop {
            match decoder.next::<M>() {
                Ok(Some(msg)) => messages.push(msg),
                Ok(None) => break,
                Err(error) => {
                    return Received {
                        messages,
                        error: Some(error),
                    };
                }
            }
        }
        assert!(
            decoder.buffered() <= limit.saturating_add(HEADER_LEN - 1),
            "a drained decoder holds at most one partial frame"
        );
        assert_eq!(decoder.is_mid_frame(), decoder.buffered() > 0);
    }
    Received {
        messages,
        error: None,
    }
}

/// Each message's frame: compares messages bit for bit (a NaN progress fraction included).
pub fn encodings<M: Serialize>(messages: &[M]) -> Vec<Vec<u8>> {
    messages
        .iter()
        .map(|m| encode_frame(m, u32::MAX).expect("a decoded message encodes"))
        .collect()
}

/// Decodes `body` as one whole frame under the default limit, as the receiving side would.
/// A whole frame is never "incomplete": the result is a message or an error.
pub fn decode_body<M: DeserializeOwned>(body: &[u8]) -> Result<M, DecodeError> {
    let len = u32::try_from(body.len()).expect("fuzz inputs are far below 4 GiB");
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.push(&len.to_le_bytes());
    decoder.push(body);
    match decoder.next::<M>() {
        Ok(Some(msg)) => {
            assert_eq!(decoder.buffered(), 0, "a whole frame is consumed");
            Ok(msg)
        }
        Ok(None) => panic!("a whole frame of {} bytes was not decoded", body.len()),
        Err(e) => Err(e),
    }
}

/// For a body that decodes: its re-encoding decodes to the same message, encodes to itself
/// again (canonical form is a fixed point), and is no longer than the body (the wire accepts
/// over-long varints; the encoder writes the shortest).
pub fn check_round_trip<M: Serialize + DeserializeOwned>(body: &[u8], msg: &M) {
    let frame = encode_frame(msg, u32::MAX).expect("a decoded message encodes");
    assert!(
        frame.len() - HEADER_LEN <= body.len(),
        "re-encoding of {} bytes is longer than the {}-byte body it came from",
        frame.len() - HEADER_LEN,
        body.len()
    );
    let again: M = decode_body(&frame[HEADER_LEN..]).expect("a re-encoded message decodes");
    let frame_again = encode_frame(&again, u32::MAX).expect("encodes");
    assert_eq!(frame, frame_again, "encode(decode(encode(m))) == encode(m)");
}
