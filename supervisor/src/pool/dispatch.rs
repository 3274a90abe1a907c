//! The dispatcher: the one task that owns a pool's state. It holds the queue, knows what each
//! worker holds, hands each job to one idle worker over that worker's own channel, reads
//! every attempt's end (retry, replace, recycle, restart), and runs the shutdown.
//!
//! # Invariants
//! - A worker holds at most one attempt; an attempt is handed only to an idle worker, so a
//!   job's cancel (its own token, which only the actor running that job watches) can never
//!   reach the job after it on the same worker.
//! - An attempt is queued again only after the previous one's report came back (and never
//!   with a kill still pending), so two attempts of a job never run at once.
//! - Every job's reply is sent exactly once: with its report, or with an error once the pool
//!   failed; never dropped while the dispatcher runs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Span;
use warden_protocol::{CancelReason, JobId};

use super::config::{PoolConfig, ShutdownMode};
use super::driver::{self, Assign, Event, Fate, Shared};
use super::fate;
use super::handle::{PoolJobId, PoolReport, ShutdownReport};
use super::restart::Restarts;
use super::snapshot::{PoolSnapshot, WorkerSnapshot, WorkerState};
use crate::error::{JobError, PoolFailure, RunError, WorkerLoss};
use crate::outcome::{JobReport, Outcome};
use crate::process::{ContainmentMode, LimitReport};
use crate::time::Wakeup;
use crate::worker::JobOptions;

pub(crate) type Reply = oneshot::Sender<Result<PoolReport, JobError>>;

/// A job as submitted.
pub(crate) struct NewJob {
    pub(crate) id: PoolJobId,
    pub(crate) payload: Vec<u8>,
    /// With the job's own token (a child of the caller's).
    pub(crate) options: JobOptions,
    pub(crate) reply: Reply,
    pub(crate) permit: OwnedSemaphorePermit,
}

/// What the pool handle asks.
pub(crate) enum Cmd {
    Submit(Box<NewJob>),
    Cancel(PoolJobId),
    Snapshot(oneshot::Sender<PoolSnapshot>),
    WhenReady(oneshot::Sender<Result<(), PoolFailure>>),
    Shutdown {
        mode: ShutdownMode,
        deadline: Duration,
        reply: oneshot::Sender<ShutdownReport>,
    },
}

/// A job the pool holds (queued or running).
struct Job {
    id: PoolJobId,
    payload: Vec<u8>,
    options: JobOptions,
    attempt: u32,
    reply: Option<Reply>,
    /// Room in the queue, given back when the job leaves it.
    permit: Option<OwnedSemaphorePermit>,
    /// Cancelled when the job leaves the queue: ends its cancel watcher.
    left_queue: CancellationToken,
}

struct Slot {
    pid: Option<u32>,
    state: WorkerState,
    jobs: u32,
    /// The attempts handed to it early (`PoolConfig::prefetch`), waiting behind the running
    /// one, in the order they were handed (which is the order they run in).
    next: VecDeque<(PoolJobId, u32)>,
    tx: mpsc::Sender<Assign>,
    retire: CancellationToken,
}

/// The counters of a snapshot.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    restarts: u64,
    replacements: u64,
    recycles: u64,
    retries: u64,
    completed: u64,
    spawn_deferrals: u64,
}

pub(crate) struct Dispatcher {
    config: PoolConfig,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<Event>,
    /// The queue's room: closed when the pool closes, so submitters learn at once.
    queue_room: Arc<Semaphore>,
    /// The failure, for submitters (set once).
    failure_cell: Arc<Mutex<Option<PoolFailure>>>,
    /// Cancelled for a cancel-mode shutdown and on failure: every running job is cancelled
    /// with reason `shutdown` (every worker's shutdown token).
    shutdown: CancellationToken,
    queue: VecDeque<Job>,
    running: HashMap<PoolJobId, (u64, Job)>,
    workers: BTreeMap<u64, Slot>,
    idle: VecDeque<u64>,
    drivers: JoinSet<(u64, bool)>,
    /// Which slot each worker task serves (to name the slot of a task that panicked).
    task_keys: HashMap<tokio::task::Id, u64>,
    watchers: JoinSet<Option<PoolJobId>>,
    next_key: u64,
    restarts: Restarts,
    /// When each owed restart may start (its backoff).
    delayed: Vec<Instant>,
    /// Spawns wait for file descriptors: until a worker ends, or this instant.
    fd_wait: Option<Instant>,
    fd_backoff: Duration,
    /// Since the last deferral: start one worker at a time until the pool is full again.
    fd_probe: bool,
    counts: Counts,
    containment: ContainmentMode,
    failure: Option<PoolFailure>,
    closed: bool,
    cancel_mode: bool,
    deadline: Option<Instant>,
    deadline_passed: bool,
    not_reaped: usize,
    shutdown_replies: Vec<oneshot::Sender<ShutdownReport>>,
    ready_waiters: Vec<oneshot::Sender<Result<(), PoolFailure>>>,
    span: Span,
}

impl Dispatcher {
    pub(crate) fn new(
        config: PoolConfig,
        shared: Arc<Shared>,
        events: mpsc::UnboundedReceiver<Event>,
        queue_room: Arc<Semaphore>,
        failure_cell: Arc<Mutex<Option<PoolFailure>>>,
        shutdown: CancellationToken,
        span: Span,
    ) -> Self {
        Dispatcher {
            restarts: Restarts::new(config.restart),
            config,
            shared,
            events,
            queue_room,
            failure_cell,
            shutdown,
            queue: VecDeque::new(),
            running: HashMap::new(),
            workers: BTreeMap::new(),
            idle: VecDeque::new(),
            drivers: JoinSet::new(),
            task_keys: HashMap::new(),
            watchers: JoinSet::new(),
            next_key: 0,
            delayed: Vec::new(),
            fd_wait: None,
            fd_backoff: FD_BACKOFF_FIRST,
            fd_probe: false,
            counts: Counts::default(),
            containment: ContainmentMode::ProcessGroup,
            failure: None,
            closed: false,
            cancel_mode: false,
            deadline: None,
            deadline_passed: false,
            not_reaped: 0,
            shutdown_replies: Vec::new(),
            ready_waiters: Vec::new(),
            span,
        }
    }

    pub(crate) async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let mut wakeup = Wakeup::new();
        let mut cmds_open = true;
        loop {
            let now = Instant::now();
            self.settle(now);
            if !cmds_open && self.is_done() {
                return;
            }
            wakeup.set(self.next_timer());
            tokio::select! {
                cmd = cmds.recv(), if cmds_open => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    None => {
                        cmds_open = false;
                        // A dropped pool shuts down in the background.
                        let deadline = self.config.drop_deadline;
                        self.close(ShutdownMode::Cancel, deadline, Instant::now());
                    }
                },
                Some(event) = self.events.recv() => self.on_event(event),
                Some(ended) = self.drivers.join_next_with_id(), if !self.drivers.is_empty() => {
                    let (id, reaped) = match ended {
                        Ok((id, (_, reaped))) => (id, reaped),
                        Err(e) => {
                            tracing::error!(parent: &self.span, error = %e, "a pool worker task failed");
                            (e.id(), false)
                        }
                    };
                    if let Some(key) = self.task_keys.remove(&id) {
                        self.on_driver_end(key, reaped);
                    }
                }
                Some(watched) = self.watchers.join_next(), if !self.watchers.is_empty() => {
                    if let Ok(Some(id)) = watched {
                        self.on_queued_cancel(id);
                    }
                }
                () = wakeup.fired() => self.on_timer(Instant::now()),
            }
        }
    }

    // ---- facts ----

    fn on_cmd(&mut self, cmd: Cmd) {
        let now = Instant::now();
        match cmd {
            Cmd::Submit(new) => {
                let NewJob {
                    id,
                    payload,
                    options,
                    reply,
                    permit,
                } = *new;
                let job = Job {
                    id,
                    payload,
                    options,
                    attempt: 1,
                    reply: Some(reply),
                    permit: Some(permit),
                    left_queue: CancellationToken::new(),
                };
                if let Some(failure) = &self.failure {
                    let failure = failure.clone();
                    return resolve(job, Err(JobError::PoolFailed(failure)), &mut self.counts);
                }
                if self.closed {
                    // Admitted just before the pool closed: it never runs.
                    let report = self.not_started(job.id, CancelReason::Shutdown, now);
                    return resolve(job, Ok(report), &mut self.counts);
                }
                self.enqueue(job, false);
            }
            Cmd::Cancel(id) => {
                if let Some(job) = self.queue.iter().find(|j| j.id == id) {
                    job.options.token.cancel();
                } else if let Some((_, job)) = self.running.get(&id) {
                    job.options.token.cancel();
                }
            }
            Cmd::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Cmd::WhenReady(reply) => match &self.failure {
                Some(failure) => {
                    let _ = reply.send(Err(failure.clone()));
                }
                // Dropped unanswered: the pool was shut down first.
                None if self.closed => {}
                None => self.ready_waiters.push(reply),
            },
            Cmd::Shutdown {
                mode,
                deadline,
                reply,
            } => {
                self.shutdown_replies.push(reply);
                self.close(mode, deadline, now);
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Ready {
                key,
                pid,
                containment,
            } => {
                self.containment = containment;
                self.fd_backoff = FD_BACKOFF_FIRST;
                if let Some(slot) = self.workers.get_mut(&key) {
                    slot.pid = Some(pid);
                    if slot.state == WorkerState::Starting {
                        slot.state = WorkerState::Idle;
                        self.idle.push_back(key);
                    }
                }
            }
            Event::SpawnFailed { key, error } => {
                self.workers.remove(&key);
                let others = self.workers.values().any(|s| s.pid.is_some());
                if fate::out_of_fds(&error) && others {
                    // Backpressure: retry once a worker ends (its descriptors are free then),
                    // or after a while in case someone else held them.
                    self.counts.spawn_deferrals += 1;
                    self.fd_probe = true;
                    self.fd_wait = Some(now + self.fd_backoff);
                    self.fd_backoff = (self.fd_backoff * 2).min(FD_BACKOFF_MAX);
                    tracing::debug!(parent: &self.span, error = %error, "spawn deferred: out of file descriptors");
                } else {
                    tracing::warn!(parent: &self.span, error = %error, "a pool worker could not be started");
                    self.on_loss(WorkerLoss::Spawn(Arc::new(error)), now);
                }
            }
            Event::Finished(finished) => {
                let driver::Finished {
                    key,
                    job,
                    attempt,
                    result,
                    fate,
                } = *finished;
                self.on_finished(key, job, attempt, result, fate, now);
            }
        }
    }

    fn on_finished(
        &mut self,
        key: u64,
        id: PoolJobId,
        attempt: u32,
        result: Result<JobReport, RunError>,
        fate: Fate,
        now: Instant,
    ) {
        let pid = self.workers.get(&key).and_then(|s| s.pid);
        let lost = matches!(fate, Fate::Lost(_));
        let early = matches!(fate, Fate::Told);
        let mut loss = None;
        let span = &self.span;
        if let Some(slot) = self.workers.get_mut(&key) {
            if matches!(&result, Ok(r) if r.started) {
                slot.jobs = slot.jobs.saturating_add(1);
            }
            match fate {
                Fate::Told => slot.next.retain(|&(next, _)| next != id),
                Fate::Reuse if slot.state == WorkerState::Stopping => {}
                Fate::Reuse => match slot.next.pop_front() {
                    // Its worker already has it: it started in the turn that answered this one.
                    Some((job, attempt)) => slot.state = WorkerState::Busy { job, attempt },
                    None => {
                        slot.state = WorkerState::Idle;
                        self.idle.push_back(key);
                    }
                },
                Fate::Recycle(reason) => {
                    slot.state = WorkerState::Stopping;
                    self.counts.recycles += 1;
                    tracing::info!(parent: span, pid, reason = reason.as_str(), jobs = slot.jobs, "pool worker recycled");
                }
                Fate::Replace => {
                    slot.state = WorkerState::Stopping;
                    self.counts.replacements += 1;
                    tracing::info!(parent: span, pid, "pool worker replaced after its job's ladder");
                }
                Fate::Lost(cause) => {
                    slot.state = WorkerState::Stopping;
                    tracing::warn!(parent: span, pid, cause = %cause, "pool worker lost");
                    loss = Some(cause);
                }
            }
        }
        if let Some(loss) = loss {
            self.on_loss(loss, now);
        }
        let Some((_, mut job)) = self.running.remove(&id) else {
            return;
        };
        debug_assert_eq!(job.attempt, attempt);
        match result {
            // Handed early and cancelled while it waited: reported as a job cancelled in the
            // queue is (no attempt, no worker), since it never started.
            Ok(report) if early && !report.started => {
                let reason = report.reason.unwrap_or(CancelReason::Requested);
                let report = self.not_started(job.id, reason, now);
                resolve(job, Ok(report), &mut self.counts);
            }
            Ok(report) => {
                if matches!(report.outcome, Outcome::Completed(_)) {
                    self.restarts.handle_success();
                }
                let again = fate::retryable(&report, lost)
                    && job.attempt <= self.config.retries
                    && !job.options.token.is_cancelled()
                    && self.failure.is_none()
                    && !self.cancel_mode;
                if again {
                    job.attempt += 1;
                    self.counts.retries += 1;
                    tracing::info!(parent: &self.span, job = %job.id, attempt = job.attempt, "job runs again");
                    self.enqueue(job, true);
                } else {
                    let report = PoolReport {
                        job: job.id,
                        attempt: job.attempt,
                        worker_pid: pid,
                        report,
                    };
                    resolve(job, Ok(report), &mut self.counts);
                }
            }
            // The worker was gone before the job reached it: it never started, so it goes
            // back to the front of the queue as the same attempt.
            Err(RunError::WorkerGone { .. }) => match &self.failure {
                Some(failure) => {
                    let failure = failure.clone();
                    resolve(job, Err(JobError::PoolFailed(failure)), &mut self.counts);
                }
                None if self.cancel_mode => {
                    let report = self.not_started(job.id, CancelReason::Shutdown, now);
                    resolve(job, Ok(report), &mut self.counts);
                }
                None => self.enqueue(job, true),
            },
            Err(error) => resolve(job, Err(JobError::Run(error)), &mut self.counts),
        }
    }

    fn on_driver_end(&mut self, key: u64, reaped: bool) {
        // What the task said before it ended comes first (`select!` may pick its end first).
        while let Ok(event) = self.events.try_recv() {
            self.on_event(event);
        }
        if !reaped {
            self.not_reaped += 1;
        }
        // A failed spawn's task has no slot left (and freed nothing worth a retry).
        let Some(slot) = self.workers.remove(&key) else {
            return;
        };
        if slot.pid.is_some() {
            // A worker is gone and its descriptors with it: spawns waiting for some may go.
            self.fd_wait = None;
        }
        self.idle.retain(|&k| k != key);
        let busy = match slot.state {
            WorkerState::Busy { job, .. } => Some(job),
            _ => None,
        };
        for id in busy
            .into_iter()
            .chain(slot.next.into_iter().map(|(job, _)| job))
        {
            if let Some((_, job)) = self.running.remove(&id) {
                // Only a task that panicked ends with a job: the job cannot be decided.
                resolve(job, Err(JobError::PoolGone), &mut self.counts);
            }
        }
        if slot.state != WorkerState::Stopping && slot.pid.is_some() {
            // Ended without saying why (a panic): count it as a loss.
            let loss = WorkerLoss::Died {
                pid: slot.pid.unwrap_or(0),
                status: None,
                violation: None,
            };
            self.on_loss(loss, Instant::now());
        }
    }

    fn on_queued_cancel(&mut self, id: PoolJobId) {
        let Some(pos) = self.queue.iter().position(|j| j.id == id) else {
            return;
        };
        if let Some(job) = self.queue.remove(pos) {
            job.left_queue.cancel();
            let report = self.not_started(job.id, CancelReason::Requested, Instant::now());
            resolve(job, Ok(report), &mut self.counts);
        }
    }

    fn on_timer(&mut self, now: Instant) {
        if self.fd_wait.is_some_and(|at| at <= now) {
            self.fd_wait = None;
        }
        if let Some(deadline) = self.deadline
            && deadline <= now
            && !self.deadline_passed
        {
            self.deadline_passed = true;
            tracing::warn!(parent: &self.span, "pool shutdown deadline passed: killing every worker");
            self.shared.kill.cancel();
            self.cancel_queue(now);
        }
        // Due restarts are owed now: `fill` starts them.
        self.delayed.retain(|&at| at > now);
    }

    fn on_loss(&mut self, loss: WorkerLoss, now: Instant) {
        if self.failure.is_some() || (self.closed && self.queue.is_empty()) {
            return;
        }
        match self.restarts.handle_loss(now) {
            Ok(delay) => {
                self.counts.restarts += 1;
                self.delayed.push(now + delay);
                tracing::info!(parent: &self.span, ?delay, cause = %loss, "pool worker restart scheduled");
            }
            Err(_) => {
                let failure = PoolFailure {
                    max_restarts: self.config.restart.max_restarts,
                    period: self.config.restart.period,
                    cause: loss,
                };
                self.fail(failure, now);
            }
        }
    }

    // ---- decisions ----

    fn fail(&mut self, failure: PoolFailure, _now: Instant) {
        tracing::error!(parent: &self.span, error = %failure, cause = %failure.cause, "pool failed");
        if let Ok(mut cell) = self.failure_cell.lock() {
            *cell = Some(failure.clone());
        }
        self.failure = Some(failure.clone());
        self.closed = true;
        self.queue_room.close();
        self.delayed.clear();
        for job in std::mem::take(&mut self.queue) {
            job.left_queue.cancel();
            resolve(
                job,
                Err(JobError::PoolFailed(failure.clone())),
                &mut self.counts,
            );
        }
        // Running jobs are cancelled through their ladders and report how they ended.
        self.shutdown.cancel();
        for waiter in self.ready_waiters.drain(..) {
            let _ = waiter.send(Err(failure.clone()));
        }
    }

    fn close(&mut self, mode: ShutdownMode, deadline: Duration, now: Instant) {
        self.closed = true;
        self.queue_room.close();
        let at = crate::time::deadline_after(now, deadline);
        self.deadline = match (self.deadline, at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if mode == ShutdownMode::Cancel && !self.cancel_mode {
            self.cancel_mode = true;
            self.shutdown.cancel();
            self.cancel_queue(now);
        }
        tracing::info!(parent: &self.span, ?mode, ?deadline, "pool shutting down");
    }

    fn cancel_queue(&mut self, now: Instant) {
        for job in std::mem::take(&mut self.queue) {
            job.left_queue.cancel();
            let report = self.not_started(job.id, CancelReason::Shutdown, now);
            resolve(job, Ok(report), &mut self.counts);
        }
        self.delayed.clear();
    }

    /// Brings the pool in line after each fact: workers owed are started, idle workers get the
    /// queue's jobs, workers nobody needs any more are retired, waiters are answered.
    fn settle(&mut self, now: Instant) {
        self.fill(now);
        self.dispatch(now);
        if self.closed && self.queue.is_empty() {
            self.retire_unneeded();
        }
        if self.closed && self.failure.is_none() {
            // Never ready now: their callers learn it from the dropped answer.
            self.ready_waiters.clear();
        }
        if self.failure.is_none() && !self.ready_waiters.is_empty() {
            let ready = self
                .workers
                .values()
                .filter(|s| matches!(s.state, WorkerState::Idle | WorkerState::Busy { .. }))
                .count();
            if ready >= self.config.workers {
                for waiter in self.ready_waiters.drain(..) {
                    let _ = waiter.send(Ok(()));
                }
            }
        }
        if self.is_done() && !self.shutdown_replies.is_empty() {
            let report = ShutdownReport {
                deadline_passed: self.deadline_passed,
                not_reaped: self.not_reaped,
                failure: self.failure.clone(),
            };
            for reply in self.shutdown_replies.drain(..) {
                let _ = reply.send(report.clone());
            }
        }
    }

    fn is_done(&self) -> bool {
        self.closed
            && self.queue.is_empty()
            && self.running.is_empty()
            && self.workers.is_empty()
            && self.drivers.is_empty()
    }

    /// Starts the workers owed: up to the pool's size, minus the restarts still in their
    /// backoff, unless spawns wait for file descriptors.
    fn fill(&mut self, _now: Instant) {
        if self.failure.is_some() || self.deadline_passed {
            return;
        }
        if self.closed && (self.cancel_mode || self.queue.is_empty()) {
            return;
        }
        if self.fd_wait.is_some() {
            return;
        }
        let active = self
            .workers
            .values()
            .filter(|s| s.state != WorkerState::Stopping)
            .count();
        let mut owed = self
            .config
            .workers
            .saturating_sub(active)
            .saturating_sub(self.delayed.len());
        if owed == 0 && self.delayed.is_empty() {
            // Full again: starts may go in bursts.
            self.fd_probe = false;
        }
        if self.fd_probe {
            // Out of descriptors since the pool was last full: one start at a time tells
            // whether some are free, without a burst of spawns that would all fail.
            let starting = self
                .workers
                .values()
                .filter(|s| s.state == WorkerState::Starting)
                .count();
            owed = owed.min(1usize.saturating_sub(starting));
        }
        for _ in 0..owed {
            self.spawn_worker();
        }
    }

    fn spawn_worker(&mut self) {
        let key = self.next_key;
        self.next_key += 1;
        // Room for the attempt it runs and those handed to it early.
        let (tx, rx) = mpsc::channel(self.config.prefetch.saturating_add(1));
        let retire = CancellationToken::new();
        self.workers.insert(
            key,
            Slot {
                pid: None,
                state: WorkerState::Starting,
                jobs: 0,
                next: VecDeque::new(),
                tx,
                retire: retire.clone(),
            },
        );
        let task = self
            .drivers
            .spawn(driver::drive(key, self.shared.clone(), rx, retire));
        self.task_keys.insert(task.id(), key);
    }

    /// Hands queued jobs to idle workers, oldest first, until one side runs out; then, with
    /// `prefetch`, more to each busy worker that may take them, one per worker per round.
    fn dispatch(&mut self, now: Instant) {
        self.dispatch_idle(now);
        let prefetch = self.config.prefetch;
        if prefetch == 0 || !self.shared.config.protocol || self.shared.recycling.reads_memory() {
            return;
        }
        let max_jobs = self.shared.recycling.max_jobs;
        loop {
            let takers: Vec<u64> = self
                .workers
                .iter()
                .filter(|(_, slot)| {
                    let held = u32::try_from(slot.next.len()).unwrap_or(u32::MAX);
                    matches!(slot.state, WorkerState::Busy { .. })
                        && slot.next.len() < prefetch
                        // The running job, those handed early and this one leave it within
                        // its recycling count.
                        && max_jobs
                            .is_none_or(|max| slot.jobs.saturating_add(held).saturating_add(2) <= max)
                })
                .map(|(&key, _)| key)
                .collect();
            if takers.is_empty() {
                return;
            }
            for key in takers {
                let Some(job) = self.take_queued(now) else {
                    return;
                };
                self.hand(key, job, true);
            }
        }
    }

    /// The oldest queued job that may run (those cancelled meanwhile are answered).
    fn take_queued(&mut self, now: Instant) -> Option<Job> {
        while let Some(job) = self.queue.pop_front() {
            job.left_queue.cancel();
            if job.options.token.is_cancelled() {
                let report = self.not_started(job.id, CancelReason::Requested, now);
                resolve(job, Ok(report), &mut self.counts);
                continue;
            }
            return Some(job);
        }
        None
    }

    /// Hands `job` to the worker of `key`: to run now, or (`early`) behind its running job.
    fn hand(&mut self, key: u64, mut job: Job, early: bool) {
        job.permit = None;
        // The payload is kept until the job is answered: a worker found gone when the job
        // reached it (it died meanwhile, or the job was handed early to a worker whose running
        // job then ended it) gives the job back to the queue, and it must go out whole.
        let assign = Assign {
            job: job.id,
            attempt: job.attempt,
            payload: job.payload.clone(),
            options: job.options.clone(),
        };
        let Some(slot) = self.workers.get_mut(&key) else {
            self.enqueue(job, true);
            return;
        };
        match slot.tx.try_send(assign) {
            Ok(()) => {
                if early {
                    slot.next.push_back((job.id, job.attempt));
                } else {
                    slot.state = WorkerState::Busy {
                        job: job.id,
                        attempt: job.attempt,
                    };
                }
                self.running.insert(job.id, (key, job));
            }
            Err(_) => {
                // Its task is gone (it ends on its own only after saying why; the channel has
                // room for both attempts a worker may hold): the job never reached it.
                slot.state = WorkerState::Stopping;
                self.enqueue(job, true);
            }
        }
    }

    /// Hands queued jobs to idle workers, oldest first, until one side runs out.
    fn dispatch_idle(&mut self, now: Instant) {
        while !self.queue.is_empty() {
            let Some(key) = self.idle.pop_front() else {
                return;
            };
            if !self
                .workers
                .get(&key)
                .is_some_and(|s| s.state == WorkerState::Idle)
            {
                continue;
            }
            let Some(job) = self.take_queued(now) else {
                self.idle.push_front(key);
                return;
            };
            self.hand(key, job, false);
        }
    }

    /// Once closed with nothing left to run: every idle or starting worker stops.
    fn retire_unneeded(&mut self) {
        for (key, slot) in &mut self.workers {
            if matches!(slot.state, WorkerState::Idle | WorkerState::Starting) {
                slot.state = WorkerState::Stopping;
                slot.retire.cancel();
                self.idle.retain(|k| k != key);
            }
        }
        self.delayed.clear();
    }

    fn enqueue(&mut self, job: Job, front: bool) {
        let token = job.options.token.clone();
        let left = CancellationToken::new();
        let id = job.id;
        let watch = left.clone();
        self.watchers.spawn(async move {
            tokio::select! {
                () = token.cancelled() => Some(id),
                () = watch.cancelled() => None,
            }
        });
        let job = Job {
            left_queue: left,
            ..job
        };
        if front {
            self.queue.push_front(job);
        } else {
            self.queue.push_back(job);
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        let deadline = self.deadline.filter(|_| !self.deadline_passed);
        [self.delayed.iter().min().copied(), self.fd_wait, deadline]
            .into_iter()
            .flatten()
            .min()
    }

    fn not_started(&self, id: PoolJobId, reason: CancelReason, now: Instant) -> PoolReport {
        PoolReport {
            job: id,
            attempt: 0,
            worker_pid: None,
            report: JobReport::not_started(
                JobId(0),
                reason,
                self.containment,
                LimitReport::default(),
                now,
            ),
        }
    }

    fn snapshot(&self) -> PoolSnapshot {
        let c = self.counts;
        PoolSnapshot {
            workers: self
                .workers
                .values()
                .map(|s| WorkerSnapshot {
                    pid: s.pid,
                    state: s.state,
                    jobs: s.jobs,
                })
                .collect(),
            queued: self.queue.len(),
            in_flight: self.running.len(),
            restarts: c.restarts,
            replacements: c.replacements,
            recycles: c.recycles,
            retries: c.retries,
            completed: c.completed,
            spawn_deferrals: c.spawn_deferrals,
            failure: self.failure.clone(),
            closed: self.closed,
        }
    }
}

const FD_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const FD_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Sends a job's one reply (counted when it is a report).
fn resolve(mut job: Job, result: Result<PoolReport, JobError>, counts: &mut Counts) {
    if result.is_ok() {
        counts.completed += 1;
    }
    if let Some(reply) = job.reply.take() {
        let _ = reply.send(result);
    }
}
