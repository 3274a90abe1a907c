//! One worker's task: spawns it (within the pool's spawn concurrency), runs the jobs the
//! dispatcher hands it over its own channel one at a time, reads what each report means for
//! the worker (and its memory, for recycling), and shuts it down once it is retired, recycled
//! or lost. It decides nothing about jobs: it tells the dispatcher.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::fate::{self, WorkerEnd};
use super::handle::PoolJobId;
use super::recycle::{RecycleReason, Recycling};
use crate::error::{RunError, SpawnError, WorkerLoss};
use crate::outcome::JobReport;
use crate::process::{Command, ContainmentMode};
use crate::worker::{JobOptions, Worker, WorkerConfig};

/// One attempt of a job, handed to one worker.
pub(crate) struct Assign {
    pub(crate) job: PoolJobId,
    pub(crate) attempt: u32,
    pub(crate) payload: Vec<u8>,
    pub(crate) options: JobOptions,
}

/// What becomes of the worker after a job.
#[derive(Debug)]
pub(crate) enum Fate {
    /// It takes the next job.
    Reuse,
    /// It is fine but replaced.
    Recycle(RecycleReason),
    /// The job's own cancel had to signal or kill it.
    Replace,
    /// It was lost on its own (the restart policy counts it).
    Lost(WorkerLoss),
}

/// What a worker's task tells the dispatcher.
pub(crate) enum Event {
    /// Spawned and handshaken.
    Ready {
        key: u64,
        pid: u32,
        containment: ContainmentMode,
    },
    /// Could not be started (the task ends).
    SpawnFailed { key: u64, error: SpawnError },
    /// An attempt ended; unless the fate is `Reuse` the task now shuts the worker down.
    Finished(Box<Finished>),
}

/// How an attempt ended, and what becomes of its worker.
pub(crate) struct Finished {
    pub(crate) key: u64,
    pub(crate) job: PoolJobId,
    pub(crate) attempt: u32,
    pub(crate) result: Result<JobReport, RunError>,
    pub(crate) fate: Fate,
}

/// What every worker's task shares.
pub(crate) struct Shared {
    pub(crate) cmd: Command,
    pub(crate) config: WorkerConfig,
    pub(crate) spawns: Arc<Semaphore>,
    pub(crate) recycling: Recycling,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// The pool's kill token (also every worker's): no spawn starts once it is cancelled.
    pub(crate) kill: CancellationToken,
}

/// Runs one worker's life; returns its key once the worker is gone (reaped, or its kill
/// pending: then `false`).
pub(crate) async fn drive(
    key: u64,
    shared: Arc<Shared>,
    mut jobs: mpsc::Receiver<Assign>,
    retire: CancellationToken,
) -> (u64, bool) {
    let span = tracing::info_span!("pool_worker", key);
    async move {
        let permit = tokio::select! {
            permit = shared.spawns.clone().acquire_owned() => permit,
            () = retire.cancelled() => return (key, true),
            () = shared.kill.cancelled() => return (key, true),
        };
        // Dropping the spawn future (retired or killed meanwhile) kills and reaps the child.
        let spawned = tokio::select! {
            spawned = Worker::spawn(&shared.cmd, shared.config.clone()) => spawned,
            () = retire.cancelled() => return (key, true),
            () = shared.kill.cancelled() => return (key, true),
        };
        drop(permit);
        let worker = match spawned {
            Ok(worker) => worker,
            Err(error) => {
                let _ = shared.events.send(Event::SpawnFailed { key, error });
                return (key, true);
            }
        };
        let pid = worker.pid();
        tracing::info!(pid, "pool worker spawned");
        let _ = shared.events.send(Event::Ready {
            key,
            pid,
            containment: worker.info().containment,
        });
        let liveness = shared.config.unresponsive_after.unwrap_or(Duration::ZERO);
        let mut jobs_done = 0u32;
        loop {
            let assign = tokio::select! {
                biased;
                assign = jobs.recv() => match assign {
                    Some(assign) => assign,
                    None => break,
                },
                () = retire.cancelled() => break,
            };
            let Assign {
                job,
                attempt,
                payload,
                options,
            } = assign;
            let result = worker.run(payload, options).await;
            let fate = match &result {
                Ok(report) => match fate::worker_end(report, pid, liveness) {
                    WorkerEnd::Survived => {
                        if report.started {
                            jobs_done = jobs_done.saturating_add(1);
                        }
                        let memory = if shared.recycling.reads_memory() {
                            worker.memory().await
                        } else {
                            None
                        };
                        match shared.recycling.decide(jobs_done, memory) {
                            Some(reason) => Fate::Recycle(reason),
                            None => Fate::Reuse,
                        }
                    }
                    WorkerEnd::Replace => Fate::Replace,
                    WorkerEnd::Lost(loss) => Fate::Lost(loss),
                },
                Err(error) => match fate::gone(error, pid) {
                    Some(loss) => Fate::Lost(loss),
                    None => Fate::Reuse,
                },
            };
            let reuse = matches!(fate, Fate::Reuse);
            let _ = shared.events.send(Event::Finished(Box::new(Finished {
                key,
                job,
                attempt,
                result,
                fate,
            })));
            if !reuse {
                break;
            }
        }
        let reaped = worker.shutdown().await.is_some();
        tracing::debug!(pid, reaped, "pool worker stopped");
        (key, reaped)
    }
    .instrument(span)
    .await
}
