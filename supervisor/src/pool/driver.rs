//! One worker's task: spawns it (within the pool's spawn concurrency), runs the jobs the
//! dispatcher hands it over its own channel one at a time, reads what each report means for
//! the worker (and its memory, for recycling), and shuts it down once it is retired, recycled
//! or lost. It decides nothing about jobs: it tells the dispatcher.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
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
    /// Nothing new: a job handed early that ended before its turn (cancelled while it waited),
    /// or after the worker's fate was told with the job before it.
    Told,
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

type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<JobReport, RunError>> + Send + 'a>>;

/// An attempt handed to the worker: its run future.
struct InFlight<'a> {
    job: PoolJobId,
    attempt: u32,
    run: RunFuture<'a>,
}

impl<'a> InFlight<'a> {
    fn start(worker: &'a Worker, assign: Assign) -> InFlight<'a> {
        let Assign {
            job,
            attempt,
            payload,
            options,
        } = assign;
        InFlight {
            job,
            attempt,
            run: Box::pin(worker.run(payload, options)),
        }
    }
}

/// A job handed early ended: its fate is nothing new (`Fate::Told`).
fn early_finished(
    key: u64,
    job: PoolJobId,
    attempt: u32,
    result: Result<JobReport, RunError>,
) -> Event {
    Event::Finished(Box::new(Finished {
        key,
        job,
        attempt,
        result,
        fate: Fate::Told,
    }))
}

/// Polls the jobs handed early, oldest first (so their requests reach the worker in the order
/// they were handed): the position and result of the first that ended before its turn.
fn ahead_ended<'a, 'b>(
    ahead: &'a mut VecDeque<InFlight<'b>>,
) -> impl Future<Output = (usize, Result<JobReport, RunError>)> + 'a {
    std::future::poll_fn(move |cx| {
        for (i, early) in ahead.iter_mut().enumerate() {
            if let Poll::Ready(result) = early.run.as_mut().poll(cx) {
                return Poll::Ready((i, result));
            }
        }
        Poll::Pending
    })
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
        // Jobs the dispatcher handed early (`PoolConfig::prefetch`): their runs wait in the
        // worker behind the running one (queued on its channel, or in its task), in order.
        let mut ahead: VecDeque<InFlight<'_>> = VecDeque::new();
        let mut open = true;
        loop {
            let mut current = match ahead.pop_front() {
                Some(next) => next,
                None => {
                    let assign = tokio::select! {
                        biased;
                        assign = jobs.recv() => match assign {
                            Some(assign) => assign,
                            None => break,
                        },
                        () = retire.cancelled() => break,
                    };
                    InFlight::start(&worker, assign)
                }
            };
            let result = loop {
                tokio::select! {
                    biased;
                    result = &mut current.run => break result,
                    // Ended before its turn (cancelled while it waited): answered now.
                    (i, result) = ahead_ended(&mut ahead), if !ahead.is_empty() => {
                        if let Some(early) = ahead.remove(i) {
                            let _ = shared.events.send(early_finished(key, early.job, early.attempt, result));
                        }
                    }
                    // The dispatcher hands no more than the channel holds and `prefetch` allows.
                    assign = jobs.recv(), if open => match assign {
                        // Polled from now on, so its run is on its way to the worker.
                        Some(assign) => ahead.push_back(InFlight::start(&worker, assign)),
                        None => open = false,
                    },
                }
            };
            let InFlight { job, attempt, .. } = current;
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
                // The worker is gone (or going): the jobs handed early are answered by it at
                // once (`WorkerGone`, so the dispatcher queues them again) and its fate was told.
                for early in ahead.drain(..) {
                    let result = early.run.await;
                    let _ = shared.events.send(early_finished(key, early.job, early.attempt, result));
                }
                break;
            }
        }
        drop(ahead);
        // The dispatcher may have handed this worker more before it heard how the last job
        // ended (a job handed early that came back at once, `WorkerGone`, is handed out again
        // at once): they never reached the worker, and go back to the queue whole.
        jobs.close();
        while let Ok(assign) = jobs.try_recv() {
            let gone = Err(RunError::WorkerGone {
                status: None,
                violation: None,
            });
            let _ = shared
                .events
                .send(early_finished(key, assign.job, assign.attempt, gone));
        }
        let reaped = worker.shutdown().await.is_some();
        tracing::debug!(pid, reaped, "pool worker stopped");
        (key, reaped)
    }
    .instrument(span)
    .await
}
