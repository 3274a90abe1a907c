//! What the supervisor does with a worker's frame body: decode it strictly (a typed error or
//! exactly one message), then use it as the actor does (kind, job id, progress text cut to
//! its limit at a character boundary).

#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_protocol::{MAX_PROGRESS_TEXT, WorkerMessage, truncate_str};
use warden_protocol_fuzz::decode_body;

fuzz_target!(|body: &[u8]| {
    let Ok(msg) = decode_body::<WorkerMessage>(body) else {
        return;
    };
    let _ = msg.kind();
    let job = msg.job();
    match &msg {
        WorkerMessage::Hello { .. } | WorkerMessage::Heartbeat => assert_eq!(job, None),
        WorkerMessage::Progress { text, fraction, .. } => {
            assert!(job.is_some());
            if let Some(text) = text {
                let cut = truncate_str(text, MAX_PROGRESS_TEXT);
                assert!(cut.len() <= MAX_PROGRESS_TEXT && text.starts_with(cut));
                assert!(cut.len() == text.len() || text.len() > MAX_PROGRESS_TEXT);
            }
            // What the actor hands the caller is always in range.
            if let Some(f) = fraction
                .filter(|f| f.is_finite())
                .map(|f| f.clamp(0.0, 1.0))
            {
                assert!((0.0..=1.0).contains(&f));
            }
        }
        _ => assert!(job.is_some()),
    }
});
