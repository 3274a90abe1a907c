//! Golden bytes: the exact frame (header and body) of every message variant.
//!
//! Every expected byte string here was derived by hand from postcard's wire format, not copied from
//! the encoder's output, so these tests are an independent check of the format PROTOCOL.md
//! describes:
//! - frame header: body length as a 4-byte little-endian `u32`;
//! - enum variant tag, `u16`, `u32`, `u64`, and every length prefix: unsigned LEB128 varint
//!   (7 bits per byte, least significant group first, high bit set on every byte but the last);
//! - `Option`: one byte `00` (None) or `01` (Some) followed by the value;
//! - `String` / bytes: varint length, then the raw bytes (UTF-8 for strings);
//! - `f32`: its 4 IEEE-754 bytes, little-endian;
//! - struct fields in declaration order, nothing between them, no field names.
//!
//! Each test checks both directions: the message encodes to the bytes, and the bytes decode to
//! the message (consuming the whole frame).

use warden_protocol::{
    CancelReason, DEFAULT_MAX_FRAME_LEN, DecodeError, FrameDecoder, JobId, SupervisorMessage,
    WorkerMessage, encode_frame, encode_frame_into,
};

/// 2^40 as LEB128: 40 = 5 * 7 + 5, so five zero groups (`80` each, continuation set) and a last
/// group holding 2^5 = `20`.
const VARINT_2_POW_40: [u8; 6] = [0x80, 0x80, 0x80, 0x80, 0x80, 0x20];

/// 300 = 0b10_0101100: low group 0101100 = 0x2c (| 0x80 = `ac`), high group `02`.
const VARINT_300: [u8; 2] = [0xac, 0x02];

/// Encodes `msg` and checks it against `frame`, then decodes `frame` and checks it is `msg`.
fn assert_supervisor(msg: SupervisorMessage, frame: &[u8]) {
    assert_header_matches(frame);
    let encoded = encode_frame(&msg, DEFAULT_MAX_FRAME_LEN).expect("encode supervisor message");
    assert_eq!(hex(&encoded), hex(frame), "encoding of {msg:?}");
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.push(frame);
    assert_eq!(decoder.next::<SupervisorMessage>(), Ok(Some(msg)));
    assert_eq!(decoder.buffered(), 0, "the whole frame was consumed");
}

/// Same as [`assert_supervisor`] for the worker's messages.
fn assert_worker(msg: WorkerMessage, frame: &[u8]) {
    assert_header_matches(frame);
    let encoded = encode_frame(&msg, DEFAULT_MAX_FRAME_LEN).expect("encode worker message");
    assert_eq!(hex(&encoded), hex(frame), "encoding of {msg:?}");
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.push(frame);
    assert_eq!(decoder.next::<WorkerMessage>(), Ok(Some(msg)));
    assert_eq!(decoder.buffered(), 0, "the whole frame was consumed");
}

/// Guards the hand-written expectations themselves: the header must count the body.
fn assert_header_matches(frame: &[u8]) {
    let header = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    assert_eq!(
        header as usize,
        frame.len() - 4,
        "hand-written header of {}",
        hex(frame)
    );
}

/// Hex with spaces, so a failing comparison shows the bytes the way PROTOCOL.md does.
fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Builds a frame from a hand-written header and body pieces.
fn frame(header: [u8; 4], body: &[&[u8]]) -> Vec<u8> {
    let mut out = header.to_vec();
    for part in body {
        out.extend_from_slice(part);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// SupervisorMessage
// ---------------------------------------------------------------------------------------------

#[test]
fn supervisor_hello_typical() {
    // tag 0, protocol_version 1, "0.1.0" (len 5), max_frame_len 2^20, heartbeat 1000 ms.
    // 2^20: 20 = 2 * 7 + 6 -> two zero groups `80 80`, then 2^6 = `40`.
    // 1000 = 0b111_1101000: low group 1101000 = 0x68 (| 0x80 = `e8`), high group `07`.
    assert_supervisor(
        SupervisorMessage::Hello {
            protocol_version: 1,
            supervisor_version: "0.1.0".into(),
            max_frame_len: 1 << 20,
            heartbeat_interval_ms: 1000,
        },
        &[
            0x0d, 0x00, 0x00, 0x00, // body length 13
            0x00, // tag 0: Hello
            0x01, // protocol_version 1
            0x05, b'0', b'.', b'1', b'.', b'0', // supervisor_version
            0x80, 0x80, 0x40, // max_frame_len 1048576
            0xe8, 0x07, // heartbeat_interval_ms 1000
        ],
    );
}

#[test]
fn supervisor_hello_extremes() {
    // protocol_version 300 (two-byte varint), empty version string, max_frame_len u32::MAX
    // (five bytes: four full groups `ff` and a last group of 4 bits `0f`), heartbeat 0 (never).
    assert_supervisor(
        SupervisorMessage::Hello {
            protocol_version: 300,
            supervisor_version: String::new(),
            max_frame_len: u32::MAX,
            heartbeat_interval_ms: 0,
        },
        &frame(
            [0x0a, 0, 0, 0],
            &[
                &[0x00],
                &VARINT_300,
                &[0x00],
                &[0xff, 0xff, 0xff, 0xff, 0x0f],
                &[0x00],
            ],
        ),
    );
}

#[test]
fn supervisor_hello_max_u16_version() {
    // u16::MAX = 3 groups: 7f | 80 -> ff, 7f | 80 -> ff, last 2 bits -> 03.
    assert_supervisor(
        SupervisorMessage::Hello {
            protocol_version: u16::MAX,
            supervisor_version: "v".into(),
            max_frame_len: 127,
            heartbeat_interval_ms: 128,
        },
        &[
            0x09, 0x00, 0x00, 0x00, // body length 9
            0x00, // tag 0: Hello
            0xff, 0xff, 0x03, // protocol_version 65535
            0x01, b'v', // supervisor_version "v"
            0x7f, // max_frame_len 127: largest one-byte varint
            0x80, 0x01, // heartbeat_interval_ms 128: smallest two-byte varint
        ],
    );
}

#[test]
fn supervisor_start_job_minimal() {
    // job 300, empty payload (length 0), no deadline (Option tag 0).
    assert_supervisor(
        SupervisorMessage::StartJob {
            job: JobId(300),
            payload: Vec::new(),
            deadline_ms: None,
        },
        &[
            0x05, 0x00, 0x00, 0x00, // body length 5
            0x01, // tag 1: StartJob
            0xac, 0x02, // job 300
            0x00, // payload: 0 bytes
            0x00, // deadline_ms: None
        ],
    );
}

#[test]
fn supervisor_start_job_with_payload_and_deadline() {
    assert_supervisor(
        SupervisorMessage::StartJob {
            job: JobId(7),
            payload: vec![0xde, 0xad, 0xbe, 0xef],
            deadline_ms: Some(1 << 40),
        },
        &frame(
            [0x0e, 0, 0, 0], // 1 + 1 + 1 + 4 + 1 + 6 = 14
            &[
                &[0x01],                   // tag 1: StartJob
                &[0x07],                   // job 7
                &[0x04],                   // payload length 4
                &[0xde, 0xad, 0xbe, 0xef], // payload
                &[0x01],                   // deadline_ms: Some
                &VARINT_2_POW_40,          // 2^40 ms
            ],
        ),
    );
}

#[test]
fn supervisor_start_job_deadline_zero_and_max_job() {
    // job u64::MAX: nine full groups `ff` and a last group of 1 bit `01` (10 bytes, the longest
    // varint). A deadline of Some(0) is distinct from None: `01 00`.
    assert_supervisor(
        SupervisorMessage::StartJob {
            job: JobId(u64::MAX),
            payload: vec![0x00],
            deadline_ms: Some(0),
        },
        &frame(
            [0x0f, 0, 0, 0], // 1 + 10 + 2 + 2 = 15
            &[
                &[0x01],
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                &[0x01, 0x00], // payload: one zero byte
                &[0x01, 0x00], // deadline_ms: Some(0)
            ],
        ),
    );
}

#[test]
fn supervisor_start_job_long_payload_has_two_byte_length() {
    // 200 bytes: length 200 = 0b1_1001000 -> `c8 01`.
    let payload: Vec<u8> = (0..200u8).collect();
    let mut expected = vec![0xcd, 0x00, 0x00, 0x00, 0x01, 0x05, 0xc8, 0x01]; // 1+1+2+200+1 = 205
    expected.extend(0..200u8);
    expected.push(0x00);
    assert_supervisor(
        SupervisorMessage::StartJob {
            job: JobId(5),
            payload,
            deadline_ms: None,
        },
        &expected,
    );
}

#[test]
fn supervisor_cancel_every_reason() {
    // CancelReason tags follow declaration order.
    let reasons = [
        (CancelReason::Requested, 0x00),
        (CancelReason::Timeout, 0x01),
        (CancelReason::Shutdown, 0x02),
        (CancelReason::Unresponsive, 0x03),
        (CancelReason::NoProgress, 0x04),
    ];
    for (reason, tag) in reasons {
        assert_supervisor(
            SupervisorMessage::Cancel {
                job: JobId(7),
                reason,
            },
            &[0x03, 0x00, 0x00, 0x00, 0x02, 0x07, tag],
        );
    }
}

#[test]
fn supervisor_cancel_multi_byte_job() {
    assert_supervisor(
        SupervisorMessage::Cancel {
            job: JobId(300),
            reason: CancelReason::Unresponsive,
        },
        &frame([0x04, 0, 0, 0], &[&[0x02], &VARINT_300, &[0x03]]),
    );
}

#[test]
fn supervisor_shutdown() {
    // A unit variant is its tag alone.
    assert_supervisor(SupervisorMessage::Shutdown, &[0x01, 0x00, 0x00, 0x00, 0x03]);
}

#[test]
fn supervisor_refuse_empty_and_text() {
    assert_supervisor(
        SupervisorMessage::Refuse {
            reason: String::new(),
        },
        &[0x02, 0x00, 0x00, 0x00, 0x04, 0x00],
    );
    assert_supervisor(
        SupervisorMessage::Refuse {
            reason: "bad".into(),
        },
        &[0x05, 0x00, 0x00, 0x00, 0x04, 0x03, b'b', b'a', b'd'],
    );
}

#[test]
fn supervisor_refuse_length_counts_utf8_bytes_not_chars() {
    // "é" is one char but two UTF-8 bytes (c3 a9): the length prefix is 2.
    assert_supervisor(
        SupervisorMessage::Refuse {
            reason: "é".into()
        },
        &[0x04, 0x00, 0x00, 0x00, 0x04, 0x02, 0xc3, 0xa9],
    );
}

// ---------------------------------------------------------------------------------------------
// WorkerMessage
// ---------------------------------------------------------------------------------------------

#[test]
fn worker_hello() {
    // pid 4242 = 33 * 128 + 18: low group 18 = 0x12 (| 0x80 = `92`), high group 33 = `21`.
    assert_worker(
        WorkerMessage::Hello {
            protocol_version: 1,
            pid: 4242,
            sdk_version: "sdk".into(),
        },
        &[
            0x08, 0x00, 0x00, 0x00, // body length 8
            0x00, // tag 0: Hello
            0x01, // protocol_version 1
            0x92, 0x21, // pid 4242
            0x03, b's', b'd', b'k', // sdk_version "sdk"
        ],
    );
}

#[test]
fn worker_hello_extremes() {
    assert_worker(
        WorkerMessage::Hello {
            protocol_version: 0,
            pid: u32::MAX,
            sdk_version: String::new(),
        },
        &[
            0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00,
        ],
    );
}

#[test]
fn worker_heartbeat() {
    assert_worker(WorkerMessage::Heartbeat, &[0x01, 0x00, 0x00, 0x00, 0x01]);
}

#[test]
fn worker_progress_nothing() {
    assert_worker(
        WorkerMessage::Progress {
            job: JobId(1),
            fraction: None,
            text: None,
        },
        &[0x04, 0x00, 0x00, 0x00, 0x02, 0x01, 0x00, 0x00],
    );
}

#[test]
fn worker_progress_everything() {
    // 0.5f32 = 0x3f00_0000, little-endian `00 00 00 3f`.
    assert_worker(
        WorkerMessage::Progress {
            job: JobId(300),
            fraction: Some(0.5),
            text: Some("half".into()),
        },
        &frame(
            [0x0e, 0, 0, 0], // 1 + 2 + 5 + 6 = 14
            &[
                &[0x02],                               // tag 2: Progress
                &VARINT_300,                           // job 300
                &[0x01, 0x00, 0x00, 0x00, 0x3f],       // fraction: Some(0.5)
                &[0x01, 0x04, b'h', b'a', b'l', b'f'], // text: Some("half")
            ],
        ),
    );
}

#[test]
fn worker_progress_fraction_bytes() {
    // IEEE-754 single precision, little-endian; never a varint.
    let cases: [(f32, [u8; 4]); 5] = [
        (0.0, [0x00, 0x00, 0x00, 0x00]),
        (1.0, [0x00, 0x00, 0x80, 0x3f]),  // 0x3f80_0000
        (0.25, [0x00, 0x00, 0x80, 0x3e]), // 0x3e80_0000
        (0.1, [0xcd, 0xcc, 0xcc, 0x3d]),  // 0x3dcc_cccd (nearest f32 to 0.1)
        (-2.0, [0x00, 0x00, 0x00, 0xc0]), // 0xc000_0000: sign bit set
    ];
    for (fraction, bytes) in cases {
        assert_worker(
            WorkerMessage::Progress {
                job: JobId(2),
                fraction: Some(fraction),
                text: None,
            },
            &frame([0x08, 0, 0, 0], &[&[0x02, 0x02, 0x01], &bytes, &[0x00]]),
        );
    }
}

#[test]
fn worker_progress_text_only() {
    // Some("") is `01 00`, distinct from None `00`.
    assert_worker(
        WorkerMessage::Progress {
            job: JobId(2),
            fraction: None,
            text: Some(String::new()),
        },
        &[0x05, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x01, 0x00],
    );
}

#[test]
fn worker_completed_empty_and_non_empty() {
    assert_worker(
        WorkerMessage::Completed {
            job: JobId(2),
            output: Vec::new(),
        },
        &[0x03, 0x00, 0x00, 0x00, 0x03, 0x02, 0x00],
    );
    assert_worker(
        WorkerMessage::Completed {
            job: JobId(2),
            output: vec![0x00, 0x01, 0x02, 0xff],
        },
        &[
            0x07, 0x00, 0x00, 0x00, 0x03, 0x02, 0x04, 0x00, 0x01, 0x02, 0xff,
        ],
    );
}

#[test]
fn worker_cancelled() {
    assert_worker(
        WorkerMessage::Cancelled { job: JobId(2) },
        &[0x02, 0x00, 0x00, 0x00, 0x04, 0x02],
    );
    assert_worker(
        WorkerMessage::Cancelled {
            job: JobId(1 << 40),
        },
        &frame([0x07, 0, 0, 0], &[&[0x04], &VARINT_2_POW_40]),
    );
}

#[test]
fn worker_failed_empty_and_text() {
    assert_worker(
        WorkerMessage::Failed {
            job: JobId(9),
            error: String::new(),
        },
        &[0x03, 0x00, 0x00, 0x00, 0x05, 0x09, 0x00],
    );
    assert_worker(
        WorkerMessage::Failed {
            job: JobId(9),
            error: "boom".into(),
        },
        &[
            0x07, 0x00, 0x00, 0x00, 0x05, 0x09, 0x04, b'b', b'o', b'o', b'm',
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Variant counts: appending a variant must come with a golden test above.
// ---------------------------------------------------------------------------------------------

#[test]
fn first_unused_tags_are_unknown() {
    // The enums are #[non_exhaustive], so a match here cannot prove the list above is complete.
    // Pinning the first free tag does: adding a variant turns this test red.
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.push(&[0x01, 0x00, 0x00, 0x00, 0x05]);
    assert_eq!(
        decoder.next::<SupervisorMessage>(),
        Err(DecodeError::UnknownTag)
    );

    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.push(&[0x01, 0x00, 0x00, 0x00, 0x06]);
    assert_eq!(
        decoder.next::<WorkerMessage>(),
        Err(DecodeError::UnknownTag)
    );

    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.push(&[0x03, 0x00, 0x00, 0x00, 0x02, 0x07, 0x05]);
    assert_eq!(
        decoder.next::<SupervisorMessage>(),
        Err(DecodeError::UnknownTag)
    );
}

// ---------------------------------------------------------------------------------------------
// Several frames in one buffer, and the worked examples of PROTOCOL.md
// ---------------------------------------------------------------------------------------------

#[test]
fn frames_concatenate_without_separator() {
    let mut out = vec![0xaa]; // whatever the caller already had stays in front
    encode_frame_into(&WorkerMessage::Heartbeat, DEFAULT_MAX_FRAME_LEN, &mut out).unwrap();
    encode_frame_into(
        &WorkerMessage::Cancelled { job: JobId(2) },
        DEFAULT_MAX_FRAME_LEN,
        &mut out,
    )
    .unwrap();
    assert_eq!(
        hex(&out),
        hex(&[
            0xaa, 0x01, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x04, 0x02
        ])
    );
}

/// The hex dumps in PROTOCOL.md, "Worked examples", byte for byte.
fn from_hex(dump: &str) -> Vec<u8> {
    dump.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte in the dump"))
        .collect()
}

#[test]
fn protocol_md_example_worker_hello() {
    assert_worker(
        WorkerMessage::Hello {
            protocol_version: 1,
            pid: 4242,
            sdk_version: "warden-worker 0.1.0".into(),
        },
        &from_hex(
            "18 00 00 00 00 01 92 21 13 77 61 72 64 65 6e 2d \
             77 6f 72 6b 65 72 20 30 2e 31 2e 30",
        ),
    );
}

#[test]
fn protocol_md_example_supervisor_hello() {
    assert_supervisor(
        SupervisorMessage::Hello {
            protocol_version: 1,
            supervisor_version: "0.1.0".into(),
            max_frame_len: 1 << 20,
            heartbeat_interval_ms: 1000,
        },
        &from_hex("0d 00 00 00 00 01 05 30 2e 31 2e 30 80 80 40 e8 07"),
    );
}

#[test]
fn protocol_md_example_start_job() {
    assert_supervisor(
        SupervisorMessage::StartJob {
            job: JobId(300),
            payload: b"hi".to_vec(),
            deadline_ms: Some(30_000),
        },
        &from_hex("0a 00 00 00 01 ac 02 02 68 69 01 b0 ea 01"),
    );
}

#[test]
fn protocol_md_example_progress() {
    assert_worker(
        WorkerMessage::Progress {
            job: JobId(300),
            fraction: Some(0.25),
            text: Some("a".into()),
        },
        &from_hex("0b 00 00 00 02 ac 02 01 00 00 80 3e 01 01 61"),
    );
}

#[test]
fn protocol_md_example_cancel_then_completed() {
    assert_supervisor(
        SupervisorMessage::Cancel {
            job: JobId(300),
            reason: CancelReason::Timeout,
        },
        &from_hex("04 00 00 00 02 ac 02 01"),
    );
    assert_worker(
        WorkerMessage::Completed {
            job: JobId(300),
            output: b"ok".to_vec(),
        },
        &from_hex("06 00 00 00 03 ac 02 02 6f 6b"),
    );
}

/// The one-line dumps in PROTOCOL.md ("header  body") are the encoder's output for the same
/// messages, so the document cannot drift from the tests above.
#[test]
fn protocol_md_dumps_are_the_encoded_frames() {
    let doc = include_str!("../PROTOCOL.md");
    let dump = |frame: Vec<u8>| format!("{}  {}", hex(&frame[..4]), hex(&frame[4..]));
    let supervisor = [
        SupervisorMessage::Hello {
            protocol_version: 1,
            supervisor_version: "0.1.0".into(),
            max_frame_len: 1 << 20,
            heartbeat_interval_ms: 1000,
        },
        SupervisorMessage::StartJob {
            job: JobId(300),
            payload: b"hi".to_vec(),
            deadline_ms: Some(30_000),
        },
        SupervisorMessage::Cancel {
            job: JobId(300),
            reason: CancelReason::Timeout,
        },
    ];
    let worker = [
        WorkerMessage::Hello {
            protocol_version: 1,
            pid: 4242,
            sdk_version: "warden-worker 0.1.0".into(),
        },
        WorkerMessage::Progress {
            job: JobId(300),
            fraction: Some(0.25),
            text: Some("a".into()),
        },
        WorkerMessage::Completed {
            job: JobId(300),
            output: b"ok".to_vec(),
        },
    ];
    let dumps = supervisor
        .iter()
        .map(|m| encode_frame(m, DEFAULT_MAX_FRAME_LEN).unwrap())
        .chain(
            worker
                .iter()
                .map(|m| encode_frame(m, DEFAULT_MAX_FRAME_LEN).unwrap()),
        )
        .map(dump);
    for line in dumps {
        assert!(doc.contains(&line), "PROTOCOL.md lacks the dump `{line}`");
    }
}

// ---------------------------------------------------------------------------------------------
// tests/golden.json: the same frames as data, for SDKs written in other languages
// ---------------------------------------------------------------------------------------------

/// One frame of `golden.json`: a message and its bytes, or bytes and the error they must give.
enum Shared {
    Supervisor(&'static str, SupervisorMessage, &'static str),
    Worker(&'static str, WorkerMessage, &'static str),
    /// Decodes to the message, but is not how a sender writes it (an over-long varint).
    SupervisorLenient(&'static str, SupervisorMessage, &'static str),
    /// `(name, direction, limit, frame, error)`: what a strict receiver must reject, and why.
    Invalid(&'static str, &'static str, u32, &'static str, &'static str),
}

/// The frames of the tests above (the same hand-derived bytes, as hex), plus what a receiver
/// must refuse. `golden.json` is this list serialised; `golden_json_is_current` keeps them equal.
fn shared_frames() -> Vec<Shared> {
    use Shared::{Invalid, Supervisor, SupervisorLenient, Worker};
    let hello = |v: u16, s: &str, max: u32, hb: u32| SupervisorMessage::Hello {
        protocol_version: v,
        supervisor_version: s.into(),
        max_frame_len: max,
        heartbeat_interval_ms: hb,
    };
    let start = |job: u64, payload: &[u8], deadline_ms: Option<u64>| SupervisorMessage::StartJob {
        job: JobId(job),
        payload: payload.to_vec(),
        deadline_ms,
    };
    let cancel = |job: u64, reason| SupervisorMessage::Cancel {
        job: JobId(job),
        reason,
    };
    let progress = |job: u64, fraction: Option<f32>, text: Option<&str>| WorkerMessage::Progress {
        job: JobId(job),
        fraction,
        text: text.map(Into::into),
    };
    let max = DEFAULT_MAX_FRAME_LEN;
    vec![
        Supervisor(
            "supervisor_hello_typical",
            hello(1, "0.1.0", 1 << 20, 1000),
            "0d000000 00 01 05302e312e30 808040 e807",
        ),
        Supervisor(
            "supervisor_hello_extremes",
            hello(300, "", u32::MAX, 0),
            "0a000000 00 ac02 00 ffffffff0f 00",
        ),
        Supervisor(
            "supervisor_hello_max_u16_version",
            hello(u16::MAX, "v", 127, 128),
            "09000000 00 ffff03 0176 7f 8001",
        ),
        Supervisor(
            "supervisor_start_job_minimal",
            start(300, b"", None),
            "05000000 01 ac02 00 00",
        ),
        Supervisor(
            "supervisor_start_job_payload_deadline",
            start(7, &[0xde, 0xad, 0xbe, 0xef], Some(1 << 40)),
            "0e000000 01 07 04deadbeef 01 808080808020",
        ),
        Supervisor(
            "supervisor_start_job_max_job_deadline_zero",
            start(u64::MAX, &[0], Some(0)),
            "0f000000 01 ffffffffffffffffff01 0100 0100",
        ),
        Supervisor(
            "supervisor_start_job_protocol_md",
            start(300, b"hi", Some(30_000)),
            "0a000000 01 ac02 026869 01 b0ea01",
        ),
        Supervisor(
            "supervisor_cancel_requested",
            cancel(7, CancelReason::Requested),
            "03000000 02 07 00",
        ),
        Supervisor(
            "supervisor_cancel_timeout",
            cancel(7, CancelReason::Timeout),
            "03000000 02 07 01",
        ),
        Supervisor(
            "supervisor_cancel_shutdown",
            cancel(7, CancelReason::Shutdown),
            "03000000 02 07 02",
        ),
        Supervisor(
            "supervisor_cancel_unresponsive",
            cancel(300, CancelReason::Unresponsive),
            "04000000 02 ac02 03",
        ),
        Supervisor(
            "supervisor_shutdown",
            SupervisorMessage::Shutdown,
            "01000000 03",
        ),
        Supervisor(
            "supervisor_refuse_empty",
            SupervisorMessage::Refuse {
                reason: String::new(),
            },
            "02000000 04 00",
        ),
        Supervisor(
            "supervisor_refuse_utf8",
            SupervisorMessage::Refuse {
                reason: "é".into()
            },
            "04000000 04 02c3a9",
        ),
        SupervisorLenient(
            "supervisor_cancel_overlong_job_varint",
            cancel(1, CancelReason::Requested),
            "04000000 02 8100 00",
        ),
        Worker(
            "worker_hello",
            WorkerMessage::Hello {
                protocol_version: 1,
                pid: 4242,
                sdk_version: "sdk".into(),
            },
            "08000000 00 01 9221 0373646b",
        ),
        Worker(
            "worker_hello_protocol_md",
            WorkerMessage::Hello {
                protocol_version: 1,
                pid: 4242,
                sdk_version: "warden-worker 0.1.0".into(),
            },
            "18000000 00 01 9221 13 7761726465 6e2d776f726b657220302e312e30",
        ),
        Worker(
            "worker_hello_extremes",
            WorkerMessage::Hello {
                protocol_version: 0,
                pid: u32::MAX,
                sdk_version: String::new(),
            },
            "08000000 00 00 ffffffff0f 00",
        ),
        Worker("worker_heartbeat", WorkerMessage::Heartbeat, "01000000 01"),
        Worker(
            "worker_progress_nothing",
            progress(1, None, None),
            "04000000 02 01 00 00",
        ),
        Worker(
            "worker_progress_everything",
            progress(300, Some(0.5), Some("half")),
            "0e000000 02 ac02 010000003f 010468616c66",
        ),
        Worker(
            "worker_progress_protocol_md",
            progress(300, Some(0.25), Some("a")),
            "0b000000 02 ac02 010000803e 010161",
        ),
        Worker(
            "worker_progress_zero",
            progress(2, Some(0.0), None),
            "08000000 02 02 0100000000 00",
        ),
        Worker(
            "worker_progress_one",
            progress(2, Some(1.0), None),
            "08000000 02 02 010000803f 00",
        ),
        Worker(
            "worker_progress_tenth",
            progress(2, Some(0.1), None),
            "08000000 02 02 01cdcccc3d 00",
        ),
        Worker(
            "worker_progress_negative",
            progress(2, Some(-2.0), None),
            "08000000 02 02 01000000c0 00",
        ),
        Worker(
            "worker_progress_empty_text",
            progress(2, None, Some("")),
            "05000000 02 02 00 0100",
        ),
        Worker(
            "worker_completed_empty",
            WorkerMessage::Completed {
                job: JobId(2),
                output: Vec::new(),
            },
            "03000000 03 02 00",
        ),
        Worker(
            "worker_completed_bytes",
            WorkerMessage::Completed {
                job: JobId(2),
                output: vec![0, 1, 2, 0xff],
            },
            "07000000 03 02 04000102ff",
        ),
        Worker(
            "worker_completed_protocol_md",
            WorkerMessage::Completed {
                job: JobId(300),
                output: b"ok".to_vec(),
            },
            "06000000 03 ac02 026f6b",
        ),
        Worker(
            "worker_cancelled",
            WorkerMessage::Cancelled { job: JobId(2) },
            "02000000 04 02",
        ),
        Worker(
            "worker_cancelled_big_job",
            WorkerMessage::Cancelled {
                job: JobId(1 << 40),
            },
            "07000000 04 808080808020",
        ),
        Worker(
            "worker_failed_empty",
            WorkerMessage::Failed {
                job: JobId(9),
                error: String::new(),
            },
            "03000000 05 09 00",
        ),
        Worker(
            "worker_failed_text",
            WorkerMessage::Failed {
                job: JobId(9),
                error: "boom".into(),
            },
            "07000000 05 09 04626f6f6d",
        ),
        Invalid(
            "unknown_supervisor_tag",
            "supervisor",
            max,
            "01000000 05",
            "unknown_tag",
        ),
        Invalid(
            "unknown_worker_tag",
            "worker",
            max,
            "01000000 06",
            "unknown_tag",
        ),
        Invalid(
            "unknown_cancel_reason",
            "supervisor",
            max,
            "03000000 02 07 05",
            "unknown_tag",
        ),
        Invalid("empty_frame", "supervisor", max, "00000000", "empty"),
        Invalid(
            "oversized_default",
            "supervisor",
            max,
            "01001000",
            "oversized",
        ),
        Invalid(
            "oversized_u32_max",
            "supervisor",
            max,
            "ffffffff",
            "oversized",
        ),
        Invalid(
            "oversized_small_limit",
            "supervisor",
            16,
            "11000000",
            "oversized",
        ),
        Invalid(
            "trailing_byte",
            "supervisor",
            max,
            "02000000 03 00",
            "trailing_bytes",
        ),
        Invalid(
            "truncated_start_job",
            "supervisor",
            max,
            "03000000 01 07 05",
            "truncated",
        ),
        Invalid(
            "truncated_varint",
            "supervisor",
            max,
            "02000000 02 80",
            "truncated",
        ),
        Invalid(
            "string_claims_2_pow_50_bytes",
            "supervisor",
            max,
            "0a000000 04 80808080808080 02 6162",
            "truncated",
        ),
        Invalid(
            "bad_option_tag",
            "supervisor",
            max,
            "05000000 01 07 00 02 00",
            "malformed",
        ),
        Invalid(
            "bad_utf8",
            "supervisor",
            max,
            "03000000 04 01 ff",
            "malformed",
        ),
        Invalid(
            "u16_varint_too_long",
            "supervisor",
            max,
            "07000000 00 ffff04 00 10 00",
            "malformed",
        ),
        Invalid(
            "u64_varint_eleven_bytes",
            "supervisor",
            max,
            "0d000000 02 ffffffffffffffffffff01 00",
            "malformed",
        ),
    ]
}

fn hex_to_bytes(spaced: &str) -> Vec<u8> {
    let digits: String = spaced.split_whitespace().collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex"))
        .collect()
}

fn error_name(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::Oversized { .. } => "oversized",
        DecodeError::Empty => "empty",
        DecodeError::Truncated => "truncated",
        DecodeError::TrailingBytes { .. } => "trailing_bytes",
        DecodeError::UnknownTag => "unknown_tag",
        DecodeError::Malformed(_) => "malformed",
        other => panic!("a decode error golden.json cannot name yet: {other:?}"),
    }
}

fn supervisor_json(msg: &SupervisorMessage) -> serde_json::Value {
    use serde_json::json;
    match msg {
        SupervisorMessage::Hello {
            protocol_version,
            supervisor_version,
            max_frame_len,
            heartbeat_interval_ms,
        } => json!({"type": "Hello", "protocol_version": protocol_version,
            "supervisor_version": supervisor_version, "max_frame_len": max_frame_len,
            "heartbeat_interval_ms": heartbeat_interval_ms}),
        SupervisorMessage::StartJob {
            job,
            payload,
            deadline_ms,
        } => json!({"type": "StartJob", "job": job.0, "payload": hex(payload).replace(' ', ""),
            "deadline_ms": deadline_ms}),
        SupervisorMessage::Cancel { job, reason } => {
            json!({"type": "Cancel", "job": job.0, "reason": reason.as_str()})
        }
        SupervisorMessage::Shutdown => json!({"type": "Shutdown"}),
        SupervisorMessage::Refuse { reason } => json!({"type": "Refuse", "reason": reason}),
        other => panic!("golden.json cannot describe {other:?} yet"),
    }
}

fn worker_json(msg: &WorkerMessage) -> serde_json::Value {
    use serde_json::json;
    match msg {
        WorkerMessage::Hello {
            protocol_version,
            pid,
            sdk_version,
        } => json!({"type": "Hello", "protocol_version": protocol_version, "pid": pid,
            "sdk_version": sdk_version}),
        WorkerMessage::Heartbeat => json!({"type": "Heartbeat"}),
        WorkerMessage::Progress {
            job,
            fraction,
            text,
        } => json!({"type": "Progress", "job": job.0, "fraction": fraction.map(f64::from),
            "text": text}),
        WorkerMessage::Completed { job, output } => {
            json!({"type": "Completed", "job": job.0, "output": hex(output).replace(' ', "")})
        }
        WorkerMessage::Cancelled { job } => json!({"type": "Cancelled", "job": job.0}),
        WorkerMessage::Failed { job, error } => {
            json!({"type": "Failed", "job": job.0, "error": error})
        }
        other => panic!("golden.json cannot describe {other:?} yet"),
    }
}

/// Checks every shared frame against the codec and returns the JSON document for them.
fn golden_document() -> String {
    use serde_json::json;
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    for case in shared_frames() {
        match case {
            Shared::Supervisor(name, ref msg, frame)
            | Shared::SupervisorLenient(name, ref msg, frame) => {
                let canonical = matches!(case, Shared::Supervisor(..));
                let msg = msg.clone();
                let bytes = hex_to_bytes(frame);
                let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
                decoder.push(&bytes);
                assert_eq!(
                    decoder.next::<SupervisorMessage>(),
                    Ok(Some(msg.clone())),
                    "{name}"
                );
                assert_eq!(decoder.buffered(), 0, "{name}");
                let encoded = encode_frame(&msg, DEFAULT_MAX_FRAME_LEN).expect("encode");
                assert_eq!(encoded == bytes, canonical, "{name}: canonical form");
                valid.push(json!({"name": name, "direction": "supervisor",
                    "frame": hex(&bytes).replace(' ', ""), "canonical": canonical,
                    "message": supervisor_json(&msg)}));
            }
            Shared::Worker(name, msg, frame) => {
                let bytes = hex_to_bytes(frame);
                assert_worker(msg.clone(), &bytes);
                valid.push(json!({"name": name, "direction": "worker",
                    "frame": hex(&bytes).replace(' ', ""), "canonical": true,
                    "message": worker_json(&msg)}));
            }
            Shared::Invalid(name, direction, limit, frame, error) => {
                let bytes = hex_to_bytes(frame);
                let mut decoder = FrameDecoder::new(limit);
                decoder.push(&bytes);
                let got = if direction == "supervisor" {
                    decoder.next::<SupervisorMessage>().map(|m| m.is_some())
                } else {
                    decoder.next::<WorkerMessage>().map(|m| m.is_some())
                };
                let got = got.err().map(|e| error_name(&e));
                assert_eq!(got, Some(error), "{name}: {frame}");
                invalid.push(
                    json!({"name": name, "direction": direction, "max_frame_len": limit,
                    "frame": hex(&bytes).replace(' ', ""), "error": error}),
                );
            }
        }
    }
    let doc = json!({
        "about": "Golden frames of warden protocol v1, generated and checked by protocol/tests/golden.rs \
                  (golden_json_is_current; WARDEN_BLESS=1 rewrites it). `frame` is the whole frame in hex \
                  (header and body); byte strings (payload, output) are hex; `canonical` false: decodes to \
                  `message` but a sender writes the shortest form. `invalid`: what a strict receiver with \
                  `max_frame_len` must reject, with the reason.",
        "valid": valid,
        "invalid": invalid,
    });
    let mut text = serde_json::to_string_pretty(&doc).expect("serialise golden.json");
    text.push('\n');
    text
}

/// `golden.json` is what the codec and the hand-derived frames above say, byte for byte.
#[test]
fn golden_json_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden.json");
    let expected = golden_document();
    if std::env::var_os("WARDEN_BLESS").is_some() {
        std::fs::write(&path, &expected).expect("write golden.json");
        return;
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} is out of date: regenerate it with `WARDEN_BLESS=1 cargo test -p warden-protocol --test golden`",
        path.display()
    );
}
