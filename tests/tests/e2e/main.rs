//! End-to-end tests of the warden supervisor with real processes.
//!
//! Every worker is `fixture-worker` (tests/src/bin) in one of its modes. Tests never sleep to
//! synchronise: a worker says it is ready (a progress report, or a FIFO line for a plain
//! program), every wait is bounded and names what it waited for, timing is one-sided (a worker
//! that stops when asked gets 60 s; one that never stops gets 100-300 ms), and every test ends
//! with the survivor check (see `support`).
//!
//! `limits`: limits and the sandbox (OOM kill named, fresh counters per tree, a fork bomb's
//! peak, fd hygiene).
//!
//! `output`: captured stdout and stderr (the cap's head, marker and tail, lossy tails, last
//! words of a killed plugin, per-job tails, a grandchild holding a pipe).
//!
//! `shim`: what the exec shim does between spawn and exec (typed exec-time errors, signals
//! that start ignored) and what the cgroup guard does when the supervisor is SIGKILLed
//! (death signal, orphan ladders).

mod actor;
mod deps;
mod handshake;
mod hostile;
mod ladder;
mod lifecycle;
mod limits;
mod liveness;
mod output;
mod plain;
mod pool;
mod protocol;
mod results;
mod shim;
mod support;
mod tree;
