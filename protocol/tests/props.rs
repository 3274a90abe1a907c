//! Property tests: round trips, split independence, and the decoder's bounds on arbitrary input.
//! They are the fuzz targets' properties (`fuzz/`, README "Fuzzing"), kept in the normal suite
//! so CI checks them on every run; the allocation bound is in `hostile.rs`, which counts
//! allocations.
//!
//! Case counts are kept small so the whole suite runs in about a second in a debug build on a
//! shared 2-core machine; raise `PROPTEST_CASES` locally for a deeper run.

use proptest::collection::vec;
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use warden_protocol::{
    CancelReason, DEFAULT_MAX_FRAME_LEN, DecodeError, FrameDecoder, JobId, MAX_PROGRESS_TEXT,
    SupervisorMessage, WorkerMessage, encode_frame, encode_frame_into, truncate_str,
};

/// A generous limit for generated messages (none is near it); hostile streams use small ones.
const LIMIT: u32 = 64 * 1024;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn job() -> impl Strategy<Value = JobId> {
    // Mix small ids (one-byte varints) with the whole range (up to ten bytes).
    prop_oneof![(0u64..300).prop_map(JobId), any::<u64>().prop_map(JobId)]
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including multi-byte chars, up to 40 chars.
    proptest::string::string_regex(".{0,40}").expect("valid regex")
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..200)
}

fn cancel_reason() -> impl Strategy<Value = CancelReason> {
    prop_oneof![
        Just(CancelReason::Requested),
        Just(CancelReason::Timeout),
        Just(CancelReason::Shutdown),
        Just(CancelReason::Unresponsive),
        Just(CancelReason::NoProgress),
    ]
}

fn supervisor_message() -> impl Strategy<Value = SupervisorMessage> {
    prop_oneof![
        (any::<u16>(), text(), any::<u32>(), any::<u32>()).prop_map(
            |(protocol_version, supervisor_version, max_frame_len, heartbeat_interval_ms)| {
                SupervisorMessage::Hello {
                    protocol_version,
                    supervisor_version,
                    max_frame_len,
                    heartbeat_interval_ms,
                }
            }
        ),
        (job(), bytes(), proptest::option::of(any::<u64>())).prop_map(
            |(job, payload, deadline_ms)| SupervisorMessage::StartJob {
                job,
                payload,
                deadline_ms
            }
        ),
        (job(), cancel_reason())
            .prop_map(|(job, reason)| SupervisorMessage::Cancel { job, reason }),
        Just(SupervisorMessage::Shutdown),
        text().prop_map(|reason| SupervisorMessage::Refuse { reason }),
    ]
}

fn worker_message() -> impl Strategy<Value = WorkerMessage> {
    prop_oneof![
        (any::<u16>(), any::<u32>(), text()).prop_map(|(protocol_version, pid, sdk_version)| {
            WorkerMessage::Hello {
                protocol_version,
                pid,
                sdk_version,
            }
        }),
        Just(WorkerMessage::Heartbeat),
        // any::<f32>() includes NaN, infinities and subnormals: the wire carries all of them.
        (
            job(),
            proptest::option::of(any::<f32>()),
            proptest::option::of(text())
        )
            .prop_map(|(job, fraction, text)| WorkerMessage::Progress {
                job,
                fraction,
                text
            }),
        (job(), bytes()).prop_map(|(job, output)| WorkerMessage::Completed { job, output }),
        job().prop_map(|job| WorkerMessage::Cancelled { job }),
        (job(), text()).prop_map(|(job, error)| WorkerMessage::Failed { job, error }),
    ]
}

/// Cut points for a stream of `len` bytes: sorted, deduplicated, within `0..=len`.
fn cuts(len: usize, raw: &[usize]) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.iter().map(|c| c % (len + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// The pieces of `stream` between consecutive cut points (empty pieces included at the ends).
fn pieces<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &cut in cuts {
        out.push(&stream[start..cut]);
        start = cut;
    }
    out.push(&stream[start..]);
    out
}

/// What a receiver sees: the messages in order, then the error that ended the stream, if any.
#[derive(Debug)]
struct Received<M> {
    messages: Vec<M>,
    error: Option<DecodeError>,
}

/// Feeds `pieces` to a decoder the way a reader loop does (push, then drain to `Ok(None)`),
/// stopping at the first error, and checks the buffering bound after every push.
fn receive<M: DeserializeOwned>(
    max_len: u32,
    pieces: &[&[u8]],
) -> Result<Received<M>, TestCaseError> {
    let mut decoder = FrameDecoder::new(max_len);
    let mut messages = Vec::new();
    let mut largest_push = 0;
    for piece in pieces {
        decoder.push(piece);
        largest_push = largest_push.max(piece.len());
        let bound = max_len as usize + 4 + largest_push;
        prop_assert!(
            decoder.buffered() <= bound,
            "buffered {} > max_len {max_len} + 4 + largest push {largest_push}",
            decoder.buffered()
        );
        loop {
            match decoder.next::<M>() {
                Ok(Some(msg)) => messages.push(msg),
                Ok(None) => break,
                Err(error) => {
                    return Ok(Received {
                        messages,
                        error: Some(error),
                    });
                }
            }
        }
        prop_assert!(
            decoder.buffered() <= max_len as usize + 3,
            "a drained decoder holds at most one partial frame"
        );
        prop_assert_eq!(decoder.is_mid_frame(), decoder.buffered() > 0);
    }
    Ok(Received {
        messages,
        error: None,
    })
}

/// Compares messages through their encoding, so a NaN fraction (never equal to itself) still
/// round-trips bit for bit.
fn same_encoding<M: Serialize>(a: &[M], b: &[M]) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(b) {
        prop_assert_eq!(
            encode_frame(a, u32::MAX).unwrap(),
            encode_frame(b, u32::MAX).unwrap()
        );
    }
    Ok(())
}

fn has_nan(msg: &WorkerMessage) -> bool {
    matches!(msg, WorkerMessage::Progress { fraction: Some(f), .. } if f.is_nan())
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn supervisor_message_round_trips(msg in supervisor_message()) {
        let frame = encode_frame(&msg, LIMIT).unwrap();
        let header = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        prop_assert_eq!(header as usize, frame.len() - 4);
        let got = receive::<SupervisorMessage>(LIMIT, &[&frame])?;
        prop_assert_eq!(got.error, None);
        prop_assert_eq!(got.messages, vec![msg]);
    }

    #[test]
    fn worker_message_round_trips(msg in worker_message()) {
        let frame = encode_frame(&msg, LIMIT).unwrap();
        let header = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        prop_assert_eq!(header as usize, frame.len() - 4);
        let got = receive::<WorkerMessage>(LIMIT, &[&frame])?;
        prop_assert_eq!(got.error, None);
        same_encoding(&got.messages, std::slice::from_ref(&msg))?;
        if !has_nan(&msg) {
            prop_assert_eq!(got.messages, vec![msg]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Splits
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn supervisor_stream_in_any_split_yields_the_same_messages(
        msgs in vec(supervisor_message(), 0..8),
        raw_cuts in vec(any::<usize>(), 0..16),
    ) {
        let mut stream = Vec::new();
        for msg in &msgs {
            encode_frame_into(msg, LIMIT, &mut stream).unwrap();
        }
        let cuts = cuts(stream.len(), &raw_cuts);
        let got = receive::<SupervisorMessage>(LIMIT, &pieces(&stream, &cuts))?;
        prop_assert_eq!(got.error, None);
        prop_assert_eq!(got.messages, msgs);
    }

    #[test]
    fn worker_stream_in_any_split_yields_the_same_messages(
        msgs in vec(worker_message(), 0..8),
        raw_cuts in vec(any::<usize>(), 0..16),
    ) {
        let mut stream = Vec::new();
        for msg in &msgs {
            encode_frame_into(msg, LIMIT, &mut stream).unwrap();
        }
        let cuts = cuts(stream.len(), &raw_cuts);
        let got = receive::<WorkerMessage>(LIMIT, &pieces(&stream, &cuts))?;
        prop_assert_eq!(got.error, None);
        same_encoding(&got.messages, &msgs)?;
    }

    #[test]
    fn byte_at_a_time_yields_the_same_messages(msgs in vec(worker_message(), 1..4)) {
        let mut stream = Vec::new();
        for msg in &msgs {
            encode_frame_into(msg, LIMIT, &mut stream).unwrap();
        }
        let singles: Vec<&[u8]> = stream.chunks(1).collect();
        let got = receive::<WorkerMessage>(LIMIT, &singles)?;
        prop_assert_eq!(got.error, None);
        same_encoding(&got.messages, &msgs)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Arbitrary bytes
// ---------------------------------------------------------------------------------------------

/// One piece of a hostile stream. Pure random bytes almost always start with an oversized header,
/// so most pieces are shaped to get past the header check and exercise the body decoder.
#[derive(Debug, Clone)]
enum Chunk {
    /// A valid frame.
    Valid(WorkerMessage),
    /// A valid frame with one byte replaced.
    Corrupted(WorkerMessage, usize, u8),
    /// A header declaring `len`, then `body` (shorter or longer than `len`).
    Framed(u8, Vec<u8>),
    /// Raw bytes.
    Raw(Vec<u8>),
}

fn chunk() -> impl Strategy<Value = Chunk> {
    prop_oneof![
        2 => worker_message().prop_map(Chunk::Valid),
        2 => (worker_message(), any::<usize>(), any::<u8>())
            .prop_map(|(msg, at, byte)| Chunk::Corrupted(msg, at, byte)),
        3 => (prop_oneof![0u8..=40, any::<u8>()], vec(any::<u8>(), 0..40)).prop_map(|(len, body)| Chunk::Framed(len, body)),
        1 => vec(any::<u8>(), 0..40).prop_map(Chunk::Raw),
    ]
}

fn hostile_stream(chunks: &[Chunk]) -> Vec<u8> {
    let mut stream = Vec::new();
    for chunk in chunks {
        match chunk {
            Chunk::Valid(msg) => encode_frame_into(msg, u32::MAX, &mut stream).unwrap(),
            Chunk::Corrupted(msg, at, byte) => {
                let mut frame = encode_frame(msg, u32::MAX).unwrap();
                let at = at % frame.len();
                frame[at] = *byte;
                stream.extend_from_slice(&frame);
            }
            Chunk::Framed(len, body) => {
                stream.extend_from_slice(&u32::from(*len).to_le_bytes());
                stream.extend_from_slice(body);
            }
            Chunk::Raw(bytes) => stream.extend_from_slice(bytes),
        }
    }
    stream
}

proptest! {
    #![proptest_config(config(256))]

    /// Never a panic, the buffering bound holds after every push, and the outcome (messages, then
    /// the error that ends the stream) does not depend on how the bytes were split.
    #[test]
    fn hostile_stream_is_bounded_and_split_independent(
        chunks in vec(chunk(), 0..8),
        max_len in prop_oneof![0u32..64, Just(255), Just(LIMIT)],
        raw_cuts in vec(any::<usize>(), 0..24),
    ) {
        let stream = hostile_stream(&chunks);
        let whole = receive::<WorkerMessage>(max_len, &[&stream])?;
        let cuts = cuts(stream.len(), &raw_cuts);
        let split = receive::<WorkerMessage>(max_len, &pieces(&stream, &cuts))?;
        same_encoding(&whole.messages, &split.messages)?;
        prop_assert_eq!(whole.error, split.error);

        // The other direction's decoder sees the same bytes as garbage of another type.
        let whole = receive::<SupervisorMessage>(max_len, &[&stream])?;
        let split = receive::<SupervisorMessage>(max_len, &pieces(&stream, &cuts))?;
        prop_assert_eq!(whole.messages, split.messages);
        prop_assert_eq!(whole.error, split.error);
    }

    /// Completely arbitrary bytes, pushed in arbitrary pieces.
    #[test]
    fn random_bytes_never_panic(
        stream in vec(any::<u8>(), 0..256),
        max_len in prop_oneof![0u32..64, Just(LIMIT), Just(u32::MAX)],
        raw_cuts in vec(any::<usize>(), 0..24),
    ) {
        let cuts = cuts(stream.len(), &raw_cuts);
        receive::<WorkerMessage>(max_len, &pieces(&stream, &cuts))?;
        receive::<SupervisorMessage>(max_len, &pieces(&stream, &cuts))?;
    }
}

// ---------------------------------------------------------------------------------------------
// From the wire side: encode(decode(x)) where decode(x) succeeds (fuzz targets `round_trip`,
// `worker_message`, `supervisor_message`)
// ---------------------------------------------------------------------------------------------

/// Decodes `body` as one whole frame under the default limit: a message or an error, never
/// "incomplete".
fn decode_whole<M: DeserializeOwned>(body: &[u8]) -> Result<Result<M, DecodeError>, TestCaseError> {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.push(&u32::try_from(body.len()).unwrap().to_le_bytes());
    decoder.push(body);
    match decoder.next::<M>() {
        Ok(Some(msg)) => {
            prop_assert_eq!(decoder.buffered(), 0);
            Ok(Ok(msg))
        }
        Ok(None) => Err(TestCaseError::fail("a whole frame was not decoded")),
        Err(e) => Ok(Err(e)),
    }
}

/// If `body` decodes, its re-encoding is no longer than it, decodes, and re-encodes to itself.
fn check_round_trip<M: Serialize + DeserializeOwned>(
    body: &[u8],
) -> Result<Option<M>, TestCaseError> {
    let Ok(msg) = decode_whole::<M>(body)? else {
        return Ok(None);
    };
    let frame = encode_frame(&msg, u32::MAX).unwrap();
    prop_assert!(
        frame.len() - 4 <= body.len(),
        "re-encoding longer than its source"
    );
    let Ok(again) = decode_whole::<M>(&frame[4..])? else {
        return Err(TestCaseError::fail("a re-encoded message does not decode"));
    };
    prop_assert_eq!(encode_frame(&again, u32::MAX).unwrap(), frame);
    Ok(Some(msg))
}

/// A body that decodes often: a valid one, mutated (a byte replaced, inserted or removed), or
/// arbitrary bytes.
fn mutated_body<S>(msg: fn() -> S) -> impl Strategy<Value = Vec<u8>>
where
    S: Strategy + 'static,
    S::Value: Serialize,
{
    let valid = move || msg().prop_map(|m| encode_frame(&m, u32::MAX).unwrap()[4..].to_vec());
    prop_oneof![
        2 => valid(),
        3 => (valid(), any::<usize>(), any::<u8>()).prop_map(|(mut b, at, byte)| {
            let at = at % b.len();
            b[at] = byte;
            b
        }),
        2 => (valid(), any::<usize>(), any::<u8>()).prop_map(|(mut b, at, byte)| {
            let at = at % (b.len() + 1);
            b.insert(at, byte);
            b
        }),
        2 => (valid(), any::<usize>()).prop_map(|(mut b, at)| {
            let at = at % b.len();
            b.remove(at);
            b
        }),
        1 => vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn worker_bodies_that_decode_re_encode_to_a_fixed_point(body in mutated_body(worker_message)) {
        if let Some(msg) = check_round_trip::<WorkerMessage>(&body)? {
            // What the actor relies on: only hello and heartbeat name no job.
            let jobless = matches!(msg, WorkerMessage::Hello { .. } | WorkerMessage::Heartbeat);
            prop_assert_eq!(msg.job().is_none(), jobless);
        }
    }

    #[test]
    fn supervisor_bodies_that_decode_re_encode_to_a_fixed_point(
        body in mutated_body(supervisor_message),
    ) {
        if let Some(SupervisorMessage::Cancel { reason, .. }) =
            check_round_trip::<SupervisorMessage>(&body)?
        {
            prop_assert_eq!(reason.as_str().parse::<CancelReason>(), Ok(reason));
        }
    }

    /// How both sides cut progress and error texts: the longest prefix within the limit that
    /// ends on a character boundary.
    #[test]
    fn truncation_is_the_longest_whole_character_prefix(
        text in ".{0,300}",
        max in prop_oneof![0usize..400, Just(MAX_PROGRESS_TEXT)],
    ) {
        let cut = truncate_str(&text, max);
        prop_assert!(text.starts_with(cut) && cut.len() <= max);
        if text.len() <= max {
            prop_assert_eq!(cut, text.as_str());
        } else {
            let next = text[cut.len()..].chars().next().map_or(0, char::len_utf8);
            prop_assert!(cut.len() + next > max, "a longer prefix would fit");
        }
    }
}

#[test]
fn over_long_varints_decode_and_re_encode_shorter() {
    // Cancelled (tag 4) for job 1, its id written in two bytes instead of one: the wire accepts
    // it (postcard does), and the re-encoding is the canonical, shorter form.
    let body = [4, 0x81, 0x00];
    let msg = check_round_trip::<WorkerMessage>(&body).unwrap();
    assert_eq!(msg, Some(WorkerMessage::Cancelled { job: JobId(1) }));
    assert_eq!(
        encode_frame(&WorkerMessage::Cancelled { job: JobId(1) }, 16).unwrap(),
        [2, 0, 0, 0, 4, 1]
    );
}
