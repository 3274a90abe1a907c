//! The SDK driven by an in-process fake supervisor over a socketpair.
//!
//! Process-exiting paths (orphan exit, the polite signal) run out of process in `process`, which
//! starts this same binary as a worker child.

mod blocking;
mod handshake;
mod heartbeat;
mod jobs;
mod lifecycle;
mod process;
mod progress;
mod protocol;
mod queued;
mod support;
