//! Pools: N warm workers of one command, a bounded queue, and a dispatcher task that owns
//! every decision (which worker runs which job, restarts, recycling, shutdown).

mod config;
mod dispatch;
mod driver;
mod fate;
mod handle;
mod recycle;
mod restart;
mod snapshot;

pub use config::{PoolConfig, RestartPolicy, ShutdownMode};
pub use handle::{JobHandle, Pool, PoolJobId, PoolReport, ShutdownReport};
pub use recycle::RecycleReason;
pub use snapshot::{PoolSnapshot, WorkerSnapshot, WorkerState};
