//! The frame decoder on arbitrary bytes in arbitrary chunkings, in both directions: never a
//! panic, the buffer stays within one partial frame plus the latest push (allocation beyond
//! that trips `-malloc_limit_mb`), and the messages and the final error do not depend on how
//! the bytes were split.

#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_protocol::{SupervisorMessage, WorkerMessage};
use warden_protocol_fuzz::{Script, encodings, receive};

fuzz_target!(|data: &[u8]| {
    let script = Script::parse(data);
    let pieces = script.pieces();

    let whole = receive::<WorkerMessage>(script.max_len, &[script.stream]);
    let split = receive::<WorkerMessage>(script.max_len, &pieces);
    assert_eq!(encodings(&whole.messages), encodings(&split.messages));
    assert_eq!(whole.error, split.error);

    let whole = receive::<SupervisorMessage>(script.max_len, &[script.stream]);
    let split = receive::<SupervisorMessage>(script.max_len, &pieces);
    assert_eq!(whole.messages, split.messages);
    assert_eq!(whole.error, split.error);
});
