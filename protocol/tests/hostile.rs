//! Hostile input: every malformed frame is a typed error, never a panic, and decoding never
//! allocates anywhere near what the frame claims.
//!
//! This test binary installs a counting global allocator that records the largest single
//! allocation made by the current thread while a measurement is active, so the allocation bound is
//! proved rather than assumed. Tracking is per thread because the test harness runs tests in
//! parallel in one process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::error::Error as _;

use serde::de::DeserializeOwned;
use warden_protocol::{
    CancelReason, DEFAULT_MAX_FRAME_LEN, DecodeError, EncodeError, FrameDecoder, JobId,
    SupervisorMessage, WorkerMessage, encode_frame, encode_frame_into,
};

/// Forwards to the system allocator and records the largest request of the measuring thread.
struct CountingAlloc;

thread_local! {
    /// Whether the current thread is inside [`largest_allocation_during`].
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    /// Largest single allocation (or reallocation target) seen while measuring.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    // `try_with`: the allocator also runs while thread-locals are being torn down. The cells are
    // const-initialised `Cell<usize/bool>` (no destructor, no lazy init), so touching them never
    // allocates and cannot recurse into the allocator.
    let measuring = MEASURING.try_with(Cell::get).unwrap_or(false);
    if measuring {
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    }
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; `record` only reads and writes thread-local cells and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's `layout` contract (non-zero size) is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was returned by `System` (every allocation goes through this type) with
        // this `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: `ptr`/`layout` come from `System` as for `dealloc`; `new_size` is the caller's,
        // valid by the `realloc` contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
fn largest_allocation_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|largest| largest.set(0));
    MEASURING.with(|measuring| measuring.set(true));
    let value = f();
    MEASURING.with(|measuring| measuring.set(false));
    (value, LARGEST.with(Cell::get))
}

#[test]
fn the_counter_sees_allocations() {
    // The bound below means nothing unless the instrument measures: check it on a known size.
    let (v, largest) = largest_allocation_during(|| vec![0u8; 300_000]);
    assert_eq!(v.len(), 300_000);
    assert!(largest >= 300_000, "counted {largest}");
    // And it sees the decoder's own buffer.
    let (_, largest) = largest_allocation_during(|| {
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        decoder.push(&[0; 100]);
        decoder
    });
    assert!(largest >= 100, "counted {largest}");
}

/// No hostile frame in this file is longer than a few dozen bytes; decoding one must not
/// allocate more than this in one piece, whatever lengths it claims.
const ALLOCATION_BOUND: usize = 64 * 1024;

/// Pushes `bytes` into a fresh default decoder and returns the first error, asserting the
/// allocation bound. Panics (failing the test) if the bytes decode without error.
fn decode_error<M: DeserializeOwned + std::fmt::Debug>(bytes: &[u8]) -> DecodeError {
    let (result, largest) = largest_allocation_during(|| {
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        decoder.push(bytes);
        loop {
            match decoder.next::<M>() {
                Ok(Some(_)) => continue,
                Ok(None) => break Ok(decoder.buffered()),
                Err(e) => break Err(e),
            }
        }
    });
    assert!(
        largest < ALLOCATION_BOUND,
        "decoding {} bytes allocated {largest} bytes at once",
        bytes.len()
    );
    match result {
        Err(e) => e,
        Ok(buffered) => panic!("{bytes:02x?} decoded without error ({buffered} bytes waiting)"),
    }
}

/// Wraps `body` in a header that declares exactly its length.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// 2^50 as LEB128: 50 = 7 * 7 + 1, seven zero groups then 2^1.
const VARINT_2_POW_50: [u8; 8] = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02];

// ---------------------------------------------------------------------------------------------
// Lengths
// ---------------------------------------------------------------------------------------------

#[test]
fn header_ffffffff_is_oversized_before_any_body() {
    // Only the header has arrived: the decision must not wait for (or buffer) the body.
    let err = decode_error::<WorkerMessage>(&[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        err,
        DecodeError::Oversized {
            len: u32::MAX,
            max: DEFAULT_MAX_FRAME_LEN
        }
    );
    let err = decode_error::<SupervisorMessage>(&[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        err,
        DecodeError::Oversized {
            len: u32::MAX,
            max: DEFAULT_MAX_FRAME_LEN
        }
    );
}

#[test]
fn one_over_the_limit_is_oversized_and_the_limit_is_accepted() {
    let over = (DEFAULT_MAX_FRAME_LEN + 1).to_le_bytes();
    assert_eq!(
        decode_error::<WorkerMessage>(&over),
        DecodeError::Oversized {
            len: DEFAULT_MAX_FRAME_LEN + 1,
            max: DEFAULT_MAX_FRAME_LEN
        }
    );

    // A configured limit is honoured the same way.
    let mut decoder = FrameDecoder::new(16);
    decoder.push(&17u32.to_le_bytes());
    assert_eq!(
        decoder.next::<WorkerMessage>(),
        Err(DecodeError::Oversized { len: 17, max: 16 })
    );

    // Exactly at the limit the decoder waits for the body, then decodes it.
    let msg = WorkerMessage::Completed {
        job: JobId(1),
        output: vec![7; 13],
    }; // 1 + 1 + 1 + 13
    let bytes = encode_frame(&msg, 16).unwrap();
    assert_eq!(bytes.len(), 4 + 16);
    let mut decoder = FrameDecoder::new(16);
    decoder.push(&bytes[..4]);
    assert_eq!(decoder.next::<WorkerMessage>(), Ok(None));
    decoder.push(&bytes[4..]);
    assert_eq!(decoder.next::<WorkerMessage>(), Ok(Some(msg)));
}

#[test]
fn fifteen_byte_body_claiming_2_pow_50_bytes_is_truncated_without_allocating() {
    // Each body: the bytes before the field, the claimed length, then filler up to 15 bytes.
    let worker_bodies: [&[u8]; 4] = [
        &[0x00, 0x01, 0x01], // Hello { protocol_version 1, pid 1, sdk_version: <claim> }
        &[0x02, 0x01, 0x00, 0x01], // Progress { job 1, fraction None, text: Some(<claim>) }
        &[0x03, 0x01],       // Completed { job 1, output: <claim> }
        &[0x05, 0x01],       // Failed { job 1, error: <claim> }
    ];
    let supervisor_bodies: [&[u8]; 3] = [
        &[0x00, 0x01], // Hello { protocol_version 1, supervisor_version: <claim> ... }
        &[0x01, 0x01], // StartJob { job 1, payload: <claim> ... }
        &[0x04],       // Refuse { reason: <claim> }
    ];
    let claim = |prefix: &[u8]| {
        let mut body = prefix.to_vec();
        body.extend_from_slice(&VARINT_2_POW_50);
        body.resize(15, b'x');
        assert_eq!(body.len(), 15);
        frame(&body)
    };
    for prefix in worker_bodies {
        assert_eq!(
            decode_error::<WorkerMessage>(&claim(prefix)),
            DecodeError::Truncated
        );
    }
    for prefix in supervisor_bodies {
        assert_eq!(
            decode_error::<SupervisorMessage>(&claim(prefix)),
            DecodeError::Truncated
        );
    }
}

#[test]
fn claimed_length_over_u64_is_malformed_without_allocating() {
    // A length varint that does not fit 64 bits: eleven bytes, all with the continuation bit.
    let mut body = vec![0x05, 0x01];
    body.extend_from_slice(&[0xff; 11]);
    assert_eq!(
        decode_error::<WorkerMessage>(&frame(&body)),
        DecodeError::Malformed(postcard::Error::DeserializeBadVarint)
    );
}

#[test]
fn empty_frame_is_rejected() {
    assert_eq!(
        decode_error::<WorkerMessage>(&[0, 0, 0, 0]),
        DecodeError::Empty
    );
    assert_eq!(
        decode_error::<SupervisorMessage>(&[0, 0, 0, 0]),
        DecodeError::Empty
    );
    // Even with a valid frame right behind it: the stream is bad from there on.
    assert_eq!(
        decode_error::<WorkerMessage>(&[0, 0, 0, 0, 1, 0, 0, 0, 1]),
        DecodeError::Empty
    );
}

#[test]
fn truncated_bodies_are_rejected() {
    let cases: [&[u8]; 5] = [
        &[0x02, 0x07],                   // Cancel without its reason
        &[0x01, 0x07, 0x04, 0xde, 0xad], // StartJob payload claims 4 bytes, 2 present
        &[0x01, 0x07, 0x00],             // StartJob without its deadline option
        &[0x02, 0xff],                   // Cancel whose job varint stops mid-way
        &[0x00, 0x01, 0x05, b'0'],       // Hello whose version string stops after 1 of 5
    ];
    for body in cases {
        assert_eq!(
            decode_error::<SupervisorMessage>(&frame(body)),
            DecodeError::Truncated
        );
    }
    // Progress with Some(fraction) but only 2 of its 4 bytes.
    assert_eq!(
        decode_error::<WorkerMessage>(&frame(&[0x02, 0x01, 0x01, 0x00, 0x00])),
        DecodeError::Truncated
    );
}

// ---------------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------------

#[test]
fn trailing_bytes_are_rejected() {
    assert_eq!(
        decode_error::<SupervisorMessage>(&frame(&[0x03, 0x00])),
        DecodeError::TrailingBytes { extra: 1 }
    );
    assert_eq!(
        decode_error::<SupervisorMessage>(&frame(&[0x02, 0x07, 0x01, 0xaa, 0xbb, 0xcc])),
        DecodeError::TrailingBytes { extra: 3 }
    );
    assert_eq!(
        decode_error::<WorkerMessage>(&frame(&[0x01, 0xff])),
        DecodeError::TrailingBytes { extra: 1 }
    );
}

#[test]
fn unknown_message_tags_are_rejected() {
    for tag in [
        &[0x05][..],
        &[0x7f],
        &[0x80, 0x01],
        &[0xff, 0xff, 0xff, 0xff, 0x0f],
    ] {
        assert_eq!(
            decode_error::<SupervisorMessage>(&frame(tag)),
            DecodeError::UnknownTag
        );
    }
    for tag in [
        &[0x06][..],
        &[0x7f],
        &[0x80, 0x01],
        &[0xff, 0xff, 0xff, 0xff, 0x0f],
    ] {
        assert_eq!(
            decode_error::<WorkerMessage>(&frame(tag)),
            DecodeError::UnknownTag
        );
    }
    // A tag is a u32 varint: one that does not fit 32 bits is malformed, not merely unknown.
    assert_eq!(
        decode_error::<WorkerMessage>(&frame(&[0xff, 0xff, 0xff, 0xff, 0x1f])),
        DecodeError::Malformed(postcard::Error::DeserializeBadVarint)
    );
}

#[test]
fn unknown_cancel_reason_tag_is_rejected() {
    for tag in [0x05, 0x06, 0x7f] {
        assert_eq!(
            decode_error::<SupervisorMessage>(&frame(&[0x02, 0x07, tag])),
            DecodeError::UnknownTag
        );
    }
    // The known ones still decode.
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.push(&frame(&[0x02, 0x07, 0x03]));
    assert_eq!(
        decoder.next::<SupervisorMessage>(),
        Ok(Some(SupervisorMessage::Cancel {
            job: JobId(7),
            reason: CancelReason::Unresponsive
        }))
    );
}

#[test]
fn bad_utf8_is_malformed() {
    let bad_strings: [&[u8]; 4] = [
        &[0xc3, 0x28],       // a lead byte followed by a non-continuation byte
        &[0x80],             // a lone continuation byte
        &[0xed, 0xa0, 0x80], // an encoded UTF-16 surrogate (U+D800)
        &[0xc0, 0xaf],       // an overlong encoding of '/'
    ];
    for bad in bad_strings {
        let mut refuse = vec![0x04, u8::try_from(bad.len()).unwrap()];
        refuse.extend_from_slice(bad);
        assert_eq!(
            decode_error::<SupervisorMessage>(&frame(&refuse)),
            DecodeError::Malformed(postcard::Error::DeserializeBadUtf8)
        );
        let mut failed = vec![0x05, 0x01, u8::try_from(bad.len()).unwrap()];
        failed.extend_from_slice(bad);
        assert_eq!(
            decode_error::<WorkerMessage>(&frame(&failed)),
            DecodeError::Malformed(postcard::Error::DeserializeBadUtf8)
        );
    }
}

#[test]
fn bad_option_tags_are_malformed() {
    let bad_option = DecodeError::Malformed(postcard::Error::DeserializeBadOption);
    // StartJob { job 7, payload [], deadline_ms: <tag 2> }
    assert_eq!(
        decode_error::<SupervisorMessage>(&frame(&[0x01, 0x07, 0x00, 0x02])),
        bad_option
    );
    // Progress { job 1, fraction: <tag 0xff> ... }
    assert_eq!(
        decode_error::<WorkerMessage>(&frame(&[0x02, 0x01, 0xff])),
        bad_option
    );
    // Progress { job 1, fraction None, text: <tag 2> }
    assert_eq!(
        decode_error::<WorkerMessage>(&frame(&[0x02, 0x01, 0x00, 0x02, 0x00])),
        bad_option
    );
}

#[test]
fn bad_bool_is_malformed() {
    // No v1 message has a bool field; the codec's rule (only 00 and 01) still maps to a typed
    // error through the same decoder, for any later message that adds one.
    assert_eq!(
        decode_error::<bool>(&frame(&[0x02])),
        DecodeError::Malformed(postcard::Error::DeserializeBadBool)
    );
}

#[test]
fn invalid_varints_are_malformed() {
    let bad_varint = DecodeError::Malformed(postcard::Error::DeserializeBadVarint);
    // Cancel whose u64 job id has eleven continuation bytes (a u64 takes at most ten).
    let mut body = vec![0x02];
    body.extend_from_slice(&[0xff; 11]);
    body.push(0x00);
    assert_eq!(decode_error::<SupervisorMessage>(&frame(&body)), bad_varint);
    // Ten bytes, but the tenth carries more than the one bit left of a u64.
    let mut body = vec![0x02];
    body.extend_from_slice(&[0xff; 9]);
    body.extend_from_slice(&[0x02, 0x00]);
    assert_eq!(decode_error::<SupervisorMessage>(&frame(&body)), bad_varint);
    // u16 protocol_version over three bytes' worth (last byte may hold only 2 bits).
    assert_eq!(
        decode_error::<WorkerMessage>(&frame(&[0x00, 0xff, 0xff, 0x04, 0x01, 0x00])),
        bad_varint
    );
    // u32 max_frame_len over five bytes' worth (last byte may hold only 4 bits).
    assert_eq!(
        decode_error::<SupervisorMessage>(&frame(&[
            0x00, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0x10, 0x00
        ])),
        bad_varint
    );
}

#[test]
fn a_good_frame_is_returned_before_the_bad_one_behind_it() {
    let mut bytes = frame(&[0x01]); // Heartbeat
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.push(&bytes);
    assert_eq!(
        decoder.next::<WorkerMessage>(),
        Ok(Some(WorkerMessage::Heartbeat))
    );
    assert_eq!(
        decoder.next::<WorkerMessage>(),
        Err(DecodeError::Oversized {
            len: u32::MAX,
            max: DEFAULT_MAX_FRAME_LEN
        })
    );
}

#[test]
fn malformed_error_keeps_the_codec_cause_as_source() {
    let err = decode_error::<SupervisorMessage>(&frame(&[0x04, 0x01, 0x80]));
    assert_eq!(err.to_string(), "malformed frame body");
    let source = err.source().expect("the codec error is the source");
    assert_eq!(
        source.to_string(),
        postcard::Error::DeserializeBadUtf8.to_string(),
        "the cause is reported once, as the source"
    );
}

// ---------------------------------------------------------------------------------------------
// Encoding over the limit
// ---------------------------------------------------------------------------------------------

#[test]
fn encode_over_the_limit_is_too_large() {
    // Body: tag 1 + job 1 byte + length 2 bytes (2000 = `d0 0f`) + 2000 + deadline None 1 = 2005.
    let msg = SupervisorMessage::StartJob {
        job: JobId(1),
        payload: vec![0; 2000],
        deadline_ms: None,
    };
    match encode_frame(&msg, 1024) {
        Err(EncodeError::TooLarge { len, max }) => assert_eq!((len, max), (2005, 1024)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // One byte under the body length fails, the exact body length succeeds.
    assert!(matches!(
        encode_frame(&msg, 2004),
        Err(EncodeError::TooLarge {
            len: 2005,
            max: 2004
        })
    ));
    assert_eq!(
        encode_frame(&msg, 2005).map(|frame| frame.len()).ok(),
        Some(4 + 2005)
    );
}

#[test]
fn encode_into_leaves_the_buffer_unchanged_on_error() {
    let msg = WorkerMessage::Completed {
        job: JobId(1),
        output: vec![0xab; 100],
    };
    let mut out = vec![1, 2, 3];
    encode_frame_into(&WorkerMessage::Heartbeat, 16, &mut out).unwrap();
    let before = out.clone();
    let err = encode_frame_into(&msg, 16, &mut out).unwrap_err();
    assert!(
        matches!(err, EncodeError::TooLarge { len: 103, max: 16 }),
        "{err:?}"
    );
    assert_eq!(
        out, before,
        "a failed encode must not leave a partial frame behind"
    );
    // The buffer is still usable for the next frame.
    encode_frame_into(&WorkerMessage::Heartbeat, 16, &mut out).unwrap();
    assert_eq!(out, [1, 2, 3, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1]);
}

// ---------------------------------------------------------------------------------------------
// Allocation on arbitrary input (the property the `frame_decoder` fuzz target runs under
// `-malloc_limit_mb`)
// ---------------------------------------------------------------------------------------------

/// Headers that get past the length check often (small or at the limit), then anything.
fn shaped_stream() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let piece = prop_oneof![
        (0u32..48, proptest::collection::vec(any::<u8>(), 0..48)).prop_map(|(len, body)| {
            let mut out = len.to_le_bytes().to_vec();
            out.extend(body);
            out
        }),
        proptest::collection::vec(any::<u8>(), 0..48).prop_map(|body| {
            // A body claiming 2^50 bytes somewhere after its tag.
            let mut claim = body;
            let at = claim.len().min(2);
            claim.splice(at..at, VARINT_2_POW_50);
            frame(&claim)
        }),
        proptest::collection::vec(any::<u8>(), 0..48),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Whatever the bytes claim, the largest single allocation while pushing and decoding is
    /// bounded by the bytes actually pushed (the buffer may double), never by a declared length.
    #[test]
    fn allocation_is_bounded_by_the_bytes_received(
        stream in shaped_stream(),
        max_len in proptest::prop_oneof![
            proptest::strategy::Just(64u32),
            proptest::strategy::Just(DEFAULT_MAX_FRAME_LEN),
            proptest::strategy::Just(u32::MAX),
        ],
        chunk in 1usize..64,
    ) {
        fn drain<M: DeserializeOwned>(decoder: &mut FrameDecoder) -> bool {
            loop {
                match decoder.next::<M>() {
                    Ok(Some(_)) => {}
                    Ok(None) => return true,
                    Err(_) => return false,
                }
            }
        }
        for worker_side in [true, false] {
            let ((), largest) = largest_allocation_during(|| {
                let mut decoder = FrameDecoder::new(max_len);
                for piece in stream.chunks(chunk) {
                    decoder.push(piece);
                    let ok = if worker_side {
                        drain::<WorkerMessage>(&mut decoder)
                    } else {
                        drain::<SupervisorMessage>(&mut decoder)
                    };
                    if !ok {
                        break;
                    }
                }
            });
            proptest::prop_assert!(
                largest <= 2 * stream.len() + 64,
                "{} bytes pushed, {largest} allocated at once",
                stream.len()
            );
        }
    }
}
