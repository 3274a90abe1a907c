//! The conformance suite's worker on the Rust SDK: the modes of `protocol/CONFORMANCE.md`,
//! chosen by each job's payload (`mode` or `mode:arg`). Its Python twin is
//! `sdk/python/tests/conformance_worker.py`; `tests/tests/conformance/` runs the same cases
//! against both.

use std::time::{Duration, Instant};

use warden_worker::{CancelCause, Job, JobError, Worker};

fn main() {
    // Like every worker binary of this package, it can serve as warden's exec shim.
    warden::shim::run_if_shim();
    if let Err(e) = Worker::new().serve(handle) {
        eprintln!("conformance-worker: {e}");
        std::process::exit(1);
    }
}

async fn handle(job: Job) -> Result<Vec<u8>, JobError> {
    let payload = job.payload().to_vec();
    let (mode, arg) = match payload.iter().position(|&b| b == b':') {
        Some(i) => (&payload[..i], &payload[i + 1..]),
        None => (&payload[..], &[][..]),
    };
    let number = || -> Result<u64, JobError> {
        std::str::from_utf8(arg)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| JobError::msg(format!("mode needs a number, got {arg:?}")))
    };
    match mode {
        b"echo" => {
            job.progress().report(Some(0.5), Some("echoing"));
            Ok(arg.to_vec())
        }
        b"fail" => Err(JobError::msg(String::from_utf8_lossy(arg))),
        b"progress" => {
            let n = number()?;
            for i in 0..n {
                job.progress()
                    .report(Some(i as f32 / n as f32), Some(&format!("step {i}")));
            }
            job.progress().report(Some(1.0), Some("done"));
            Ok(n.to_string().into_bytes())
        }
        b"spin" => {
            let until = Instant::now() + Duration::from_millis(number()?);
            let mut spins = 0u64;
            while Instant::now() < until {
                spins = std::hint::black_box(spins + 1);
            }
            Ok(b"spun".to_vec())
        }
        b"output" => Ok(vec![
            b'x';
            usize::try_from(number()?).map_err(JobError::msg)?
        ]),
        b"deadline" => Ok(match job.deadline() {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .to_string()
                .into_bytes(),
            None => b"none".to_vec(),
        }),
        b"wait" | b"late" => {
            job.progress().set_text("ready");
            job.cancelled().await;
            let cause = match job.cancel_cause() {
                Some(CancelCause::Message(reason)) => reason.as_str(),
                Some(CancelCause::Signal) => "signal",
                Some(CancelCause::ChannelClosed) => "closed",
                _ => "unknown",
            };
            job.progress().set_text(&format!("cancelled:{cause}"));
            if mode == b"late" {
                return Ok(b"late but done".to_vec());
            }
            job.check()?;
            Err(JobError::msg("the job was cancelled but check() passed"))
        }
        other => Err(JobError::msg(format!(
            "unknown conformance mode {:?}",
            String::from_utf8_lossy(other)
        ))),
    }
}
