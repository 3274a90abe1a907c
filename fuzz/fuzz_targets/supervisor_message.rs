//! What a worker (the SDK) does with the supervisor's frame body: decode it strictly (a typed
//! error or exactly one message) and name it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_protocol::SupervisorMessage;
use warden_protocol_fuzz::decode_body;

fuzz_target!(|body: &[u8]| {
    let Ok(msg) = decode_body::<SupervisorMessage>(body) else {
        return;
    };
    let _ = msg.kind();
    if let SupervisorMessage::Cancel { reason, .. } = &msg {
        // Every reason that decodes has a name that parses back to it.
        assert_eq!(reason.as_str().parse(), Ok(*reason));
    }
});
