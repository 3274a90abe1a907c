//! encode(decode(x)) where decode(x) succeeds: the re-encoding decodes to the same message, is
//! a fixed point, and is no longer than x. Byte 0 picks the direction; the rest is the body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_protocol::{SupervisorMessage, WorkerMessage};
use warden_protocol_fuzz::{check_round_trip, decode_body};

fuzz_target!(|data: &[u8]| {
    let Some((&direction, body)) = data.split_first() else {
        return;
    };
    if direction & 1 == 0 {
        if let Ok(msg) = decode_body::<WorkerMessage>(body) {
            check_round_trip(body, &msg);
        }
    } else if let Ok(msg) = decode_body::<SupervisorMessage>(body) {
        check_round_trip(body, &msg);
    }
});
