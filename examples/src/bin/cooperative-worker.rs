//! Scenario: a well-behaved worker. It does its job in small slices of CPU-bound work and checks
//! its cancel token (`job.check()?`) between slices, reporting progress after each one. Cancelled
//! by warden, it stops within one slice and answers `Cancelled`; the worker process stays up and
//! takes the next job.
//!
//! The payload is a `WorkSpec` (`"<chunks> <chunk_us>"`, empty for 10,000 slices of 1 ms); the
//! output is what the slices computed, as 8 little-endian bytes. The code is
//! `warden_examples::workers::cooperative`.
//!
//! It needs the channel warden hands it: run it under warden (`Worker::spawn` with
//! `WorkerConfig::protocol()`), as `demo` and `ladder-bench` do.

fn main() -> std::process::ExitCode {
    warden_examples::workers::cooperative()
}
