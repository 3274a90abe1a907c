//! Workers: the handle callers hold and the actor task that owns the process and its channel.

mod actor;
mod config;
mod handle;
mod progress;

pub use config::{JobOptions, Progress, TimeoutExtension, WorkerConfig};
pub use handle::{Worker, WorkerInfo};
