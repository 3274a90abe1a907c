//! The SDK driven by an in-process fake supervisor over a socketpair.
//!
//! Process-exiting paths (orphan exit, the polite signal) are tested out of process in
//! `tests/process.rs`.

mod blocking;
mod handshake;
mod jobs;
mod lifecycle;
mod progress;
mod protocol;
mod support;
