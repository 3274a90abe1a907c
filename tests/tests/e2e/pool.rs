//! Pools (issue 9): reuse, replacement, recycling, the restart limit, liveness, cancel
//! isolation, one outcome per job when a cancel races its completion, both shutdown modes,
//! EMFILE as backpressure, and a 1,000-worker cancel-all.
//!
//! Every pool is shut down (bounded) before its test ends, and the survivor check proves that
//! no worker outlived it. Timing is one-sided as elsewhere: a worker that stops when asked gets
//! 60 s, one that never does gets 100-300 ms.

use std::time::Duration;

use nix::sys::signal::Signal;
use warden::{
    CancelReason, JobError, JobHandle, JobOptions, Outcome, Pool, PoolConfig, PoolReport,
    RestartPolicy, ShutdownMode, SpawnError, Stage, SubmitError, WorkerConfig, WorkerLoss,
    WorkerState,
};
use warden_tests::{POOL_CRASH, POOL_GROW, POOL_IGNORE, POOL_STOP, mode};

use crate::support::*;

fn start(t: &Ctx, worker: WorkerConfig, config: PoolConfig) -> Pool {
    Pool::start(&t.command(&[mode::POOL]), worker, config).expect("a valid pool")
}

async fn submit(pool: &Pool, payload: &[u8], options: JobOptions) -> JobHandle {
    within(
        LIMIT,
        "room in the queue",
        pool.submit(payload.to_vec(), options),
    )
    .await
    .expect("submit")
}

async fn report(handle: JobHandle) -> PoolReport {
    within(LIMIT, "the job's report", handle)
        .await
        .expect("a report")
}

async fn run(pool: &Pool, payload: &[u8]) -> PoolReport {
    report(submit(pool, payload, JobOptions::new()).await).await
}

async fn stop(pool: &Pool, mode: ShutdownMode) {
    let report = within(LIMIT, "the pool's shutdown", pool.shutdown(mode, LIMIT)).await;
    assert!(!report.deadline_passed, "{report:?}");
    assert_eq!(report.not_reaped, 0);
}

async fn snapshot(pool: &Pool) -> warden::PoolSnapshot {
    within(LIMIT, "a snapshot", pool.snapshot())
        .await
        .expect("the pool runs")
}

fn completed(r: &PoolReport, data: &[u8]) {
    assert_eq!(
        r.report.outcome,
        Outcome::Completed(data.to_vec()),
        "{r:#?}"
    );
}

#[test]
fn workers_are_reused_across_jobs() {
    e2e("pool_workers_are_reused_across_jobs", |t| async move {
        let pool = start(&t, WorkerConfig::protocol(), PoolConfig::new(1));
        let mut pids = Vec::new();
        for i in 0..3u8 {
            let r = run(&pool, &echo(&[i])).await;
            completed(&r, &[i]);
            assert_eq!(r.attempt, 1);
            pids.push(r.worker_pid.expect("a worker ran it"));
        }
        assert!(pids.iter().all(|&p| p == pids[0]), "{pids:?}");
        let s = snapshot(&pool).await;
        assert_eq!(s.workers.len(), 1);
        assert_eq!(s.workers[0].jobs, 3);
        assert_eq!(s.workers[0].state, WorkerState::Idle);
        assert_eq!(
            (s.completed, s.restarts, s.replacements, s.recycles),
            (3, 0, 0, 0)
        );
        stop(&pool, ShutdownMode::Drain).await;
        t.wait_reaped(pids[0], "the pool's worker").await;
    });
}

#[test]
fn a_worker_the_ladder_killed_is_replaced() {
    e2e(
        "pool_a_worker_the_ladder_killed_is_replaced",
        |t| async move {
            // It ignores its token: the grace runs out, SIGTERM (at its default) ends it.
            let worker = WorkerConfig::protocol().deadlines(short(ms(100), ms(60_000)));
            let pool = start(&t, worker, PoolConfig::new(1));
            let first = run(&pool, &echo(b"x"))
                .await
                .worker_pid
                .expect("a worker ran it");
            let (options, mut progress) = watch(JobOptions::new());
            let token = options.token.clone();
            let handle = submit(&pool, POOL_IGNORE, options).await;
            progress.ready().await;
            token.cancel();
            let r = report(handle).await;
            assert_eq!(r.report.outcome, Outcome::Terminated, "{r:#?}");
            assert_eq!(r.report.stage, Some(Stage::Signal));
            assert_eq!(
                r.worker_pid,
                Some(first),
                "the cancel hit the job's own worker"
            );
            let next = run(&pool, &echo(b"after")).await;
            completed(&next, b"after");
            assert_ne!(
                next.worker_pid,
                Some(first),
                "a fresh worker ran the next job"
            );
            let s = snapshot(&pool).await;
            assert_eq!((s.replacements, s.restarts), (1, 0), "{s:?}");
            stop(&pool, ShutdownMode::Drain).await;
            t.wait_reaped(first, "the replaced worker").await;
        },
    );
}

#[test]
fn workers_are_recycled_after_max_jobs() {
    e2e("pool_workers_are_recycled_after_max_jobs", |t| async move {
        let config = PoolConfig::new(1).max_jobs_per_worker(2);
        let pool = start(&t, WorkerConfig::protocol(), config);
        let mut pids = Vec::new();
        for i in 0..4u8 {
            let r = run(&pool, &echo(&[i])).await;
            completed(&r, &[i]);
            pids.push(r.worker_pid.expect("a worker ran it"));
        }
        assert_eq!(pids[0], pids[1], "{pids:?}");
        assert_eq!(pids[2], pids[3], "{pids:?}");
        assert_ne!(pids[0], pids[2], "{pids:?}");
        let s = snapshot(&pool).await;
        assert_eq!((s.recycles, s.restarts, s.replacements), (2, 0, 0), "{s:?}");
        stop(&pool, ShutdownMode::Drain).await;
        for pid in pids {
            t.wait_reaped(pid, "a recycled worker").await;
        }
    });
}

#[test]
fn a_worker_that_grows_past_the_memory_bound_is_recycled_a_fresh_one_is_not() {
    e2e("pool_memory_recycling", |t| async move {
        // A fresh SDK worker is a few MiB; one that kept 128 MiB is far over 64.
        let config = PoolConfig::new(1).max_memory(64 << 20);
        let pool = start(&t, WorkerConfig::protocol(), config);
        let fresh = run(&pool, &echo(b"a")).await.worker_pid;
        assert_eq!(
            run(&pool, &echo(b"b")).await.worker_pid,
            fresh,
            "a fresh worker is kept"
        );
        let grown = run(&pool, &[POOL_GROW, b"128"].concat()).await;
        assert_eq!(grown.worker_pid, fresh);
        completed(&grown, b"grew 128");
        let next = run(&pool, &echo(b"c")).await;
        assert_ne!(next.worker_pid, fresh, "the grown worker was recycled");
        // Its replacement starts small: it is not recycled for what its predecessor did.
        assert_eq!(run(&pool, &echo(b"d")).await.worker_pid, next.worker_pid);
        let s = snapshot(&pool).await;
        assert_eq!(s.recycles, 1, "{s:?}");
        stop(&pool, ShutdownMode::Drain).await;
        t.wait_reaped(fresh.expect("a pid"), "the recycled worker")
            .await;
    });
}

#[test]
fn a_crash_fails_only_its_job_and_retries_are_counted() {
    e2e("pool_a_crash_fails_only_its_job", |t| async move {
        let config = PoolConfig::new(1)
            .retries(1)
            .restart(RestartPolicy::new(10, Duration::from_secs(60)).backoff(ms(1), ms(10)));
        let pool = start(&t, WorkerConfig::protocol(), config);
        let r = run(&pool, POOL_CRASH).await;
        let segv = by_signal(Signal::SIGSEGV);
        assert_eq!(r.report.outcome, Outcome::Crashed(segv), "{r:#?}");
        assert_eq!(r.report.exit, Some(segv));
        // Run again once, on a fresh worker: it crashed again.
        assert_eq!(r.attempt, 2);
        let next = run(&pool, &echo(b"on")).await;
        completed(&next, b"on");
        assert_eq!(next.attempt, 1);
        assert_ne!(next.worker_pid, r.worker_pid);
        let s = snapshot(&pool).await;
        assert_eq!((s.restarts, s.retries, s.completed), (2, 1, 2), "{s:?}");
        stop(&pool, ShutdownMode::Drain).await;
    });
}

#[test]
fn the_restart_limit_ends_a_crash_loop() {
    e2e("pool_the_restart_limit_ends_a_crash_loop", |t| async move {
        // A "protocol worker" that exits at once: every start fails in its handshake.
        let cmd = t.command(&[mode::PLAIN_EXIT, "3"]);
        let policy = RestartPolicy::new(3, Duration::from_secs(60)).backoff(ms(1), ms(20));
        let config = PoolConfig::new(2).restart(policy);
        let pool = Pool::start(&cmd, WorkerConfig::protocol(), config).expect("a valid pool");
        let handle = submit(&pool, &echo(b"never"), JobOptions::new()).await;
        let failure = match within(LIMIT, "the job's answer", handle).await {
            Err(JobError::PoolFailed(failure)) => failure,
            other => panic!("expected the pool's failure, got {other:?}"),
        };
        assert_eq!(failure.max_restarts, 3);
        match &failure.cause {
            WorkerLoss::Spawn(e) => assert!(
                matches!(**e, SpawnError::ExitedDuringHandshake { .. }),
                "{e:?}"
            ),
            other => panic!("expected a spawn failure, got {other:?}"),
        }
        let ready = within(LIMIT, "wait_ready", pool.wait_ready()).await;
        assert!(matches!(ready, Err(Some(_))), "{ready:?}");
        assert!(matches!(
            pool.try_submit(echo(b"x"), JobOptions::new()),
            Err(SubmitError::Failed(_))
        ));
        let s = snapshot(&pool).await;
        assert_eq!(s.restarts, 3, "{s:?}");
        assert!(s.failure.is_some());
        let report = within(
            LIMIT,
            "the shutdown",
            pool.shutdown(ShutdownMode::Drain, LIMIT),
        )
        .await;
        assert!(report.failure.is_some());
    });
}

#[test]
fn an_unresponsive_worker_in_a_pool_is_ended_and_replaced() {
    e2e("pool_an_unresponsive_worker_is_replaced", |t| async move {
        let worker = WorkerConfig::protocol()
            .deadlines(short(ms(100), ms(60_000)))
            .unresponsive_after(ms(300));
        let pool = start(&t, worker, PoolConfig::new(1));
        let r = run(&pool, POOL_STOP).await;
        assert_eq!(r.report.reason, Some(CancelReason::Unresponsive), "{r:#?}");
        assert_eq!(r.report.outcome, Outcome::Terminated);
        let next = run(&pool, &echo(b"alive")).await;
        completed(&next, b"alive");
        assert_ne!(next.worker_pid, r.worker_pid);
        let s = snapshot(&pool).await;
        assert_eq!(s.restarts, 1, "{s:?}");
        stop(&pool, ShutdownMode::Drain).await;
    });
}

#[test]
fn a_cancel_never_touches_another_job() {
    e2e("pool_a_cancel_never_touches_another_job", |t| async move {
        let pool = start(
            &t,
            WorkerConfig::protocol().deadlines(patient()),
            PoolConfig::new(2),
        );
        // Two concurrent jobs: cancelling one leaves the other running.
        let (a_opts, mut a_progress) = watch(JobOptions::new());
        let (b_opts, mut b_progress) = watch(JobOptions::new());
        let a = submit(&pool, WAIT, a_opts).await;
        let b = submit(&pool, WAIT, b_opts).await;
        a_progress.ready().await;
        b_progress.ready().await;
        let b_id = b.id();
        a.cancel();
        let ra = report(a).await;
        assert_eq!(ra.report.outcome, Outcome::Cancelled, "{ra:#?}");
        assert!(ra.report.started);
        let s = snapshot(&pool).await;
        assert!(
            s.workers.iter().any(|w| w.state
                == WorkerState::Busy {
                    job: b_id,
                    attempt: 1
                }),
            "{s:?}"
        );
        assert_eq!(s.in_flight, 1);
        // The next job on the cancelled job's worker is not hit by that cancel.
        let rc = run(&pool, &echo(b"next")).await;
        completed(&rc, b"next");
        assert_eq!(
            rc.worker_pid, ra.worker_pid,
            "the cancelled job's worker was reused"
        );
        pool.cancel(b_id);
        let rb = report(b).await;
        assert_eq!(rb.report.outcome, Outcome::Cancelled);
        let s = snapshot(&pool).await;
        assert_eq!((s.replacements, s.restarts), (0, 0), "{s:?}");
        stop(&pool, ShutdownMode::Drain).await;
    });
}

#[test]
fn the_job_queued_behind_a_cancelled_one_on_one_worker_runs() {
    // pebble #33: a cancel must never hit the next job already waiting for the same worker.
    e2e("pool_the_job_behind_a_cancelled_one_runs", |t| async move {
        let pool = start(
            &t,
            WorkerConfig::protocol().deadlines(patient()),
            PoolConfig::new(1),
        );
        let (opts, mut progress) = watch(JobOptions::new());
        let a = submit(&pool, WAIT, opts).await;
        let b = submit(&pool, &echo(b"b"), JobOptions::new()).await;
        // A job cancelled in the queue never starts.
        let c = submit(&pool, &echo(b"c"), JobOptions::new()).await;
        c.cancel();
        let rc = report(c).await;
        assert_eq!(rc.report.outcome, Outcome::Cancelled);
        assert!(!rc.report.started);
        assert_eq!((rc.attempt, rc.worker_pid), (0, None));
        progress.ready().await;
        a.cancel();
        let ra = report(a).await;
        assert_eq!(ra.report.outcome, Outcome::Cancelled);
        let rb = report(b).await;
        completed(&rb, b"b");
        assert_eq!(rb.worker_pid, ra.worker_pid);
        stop(&pool, ShutdownMode::Drain).await;
    });
}

#[test]
fn a_cancel_racing_its_jobs_completion_gives_one_outcome() {
    e2e("pool_a_cancel_racing_completion", |t| async move {
        let pool = start(
            &t,
            WorkerConfig::protocol().deadlines(patient()),
            PoolConfig::new(1),
        );
        let (mut cancelled, mut late, mut done, mut unstarted) = (0, 0, 0, 0);
        let rounds = 60u32;
        for i in 0..rounds {
            let data = i.to_le_bytes();
            let handle = submit(&pool, &echo(&data), JobOptions::new()).await;
            for _ in 0..(i % 6) {
                tokio::task::yield_now().await;
            }
            handle.cancel();
            let r = report(handle).await;
            match &r.report.outcome {
                Outcome::Cancelled if !r.report.started => unstarted += 1,
                Outcome::Cancelled => cancelled += 1,
                Outcome::CompletedDespiteCancel(out) if out == &data => late += 1,
                Outcome::Completed(out) if out == &data => done += 1,
                other => panic!("round {i}: {other:?} ({r:#?})"),
            }
            // The race never harms the worker: the next job completes on it.
            let next = run(&pool, &echo(b"next")).await;
            completed(&next, b"next");
        }
        eprintln!(
            "cancel race: {unstarted} before start, {cancelled} cancelled, {late} late, {done} done"
        );
        let s = snapshot(&pool).await;
        assert_eq!(s.completed, u64::from(rounds) * 2);
        assert_eq!(
            (s.in_flight, s.queued, s.replacements, s.restarts),
            (0, 0, 0, 0)
        );
        stop(&pool, ShutdownMode::Drain).await;
    });
}

#[test]
fn drain_finishes_every_queued_and_running_job() {
    e2e("pool_drain_finishes_every_job", |t| async move {
        let pool = start(&t, WorkerConfig::protocol(), PoolConfig::new(2));
        let mut handles = Vec::new();
        for i in 0..8u8 {
            handles.push(submit(&pool, &echo(&[i]), JobOptions::new()).await);
        }
        let (report, reports) = tokio::join!(
            within(
                LIMIT,
                "the drain",
                pool.shutdown(ShutdownMode::Drain, LIMIT)
            ),
            within(LIMIT, "the reports", async {
                let mut out = Vec::new();
                for h in handles {
                    out.push(h.await);
                }
                out
            })
        );
        assert!(!report.deadline_passed);
        for (i, r) in (0u8..).zip(reports) {
            completed(&r.expect("a report"), &[i]);
        }
        assert!(matches!(
            pool.try_submit(echo(b"late"), JobOptions::new()),
            Err(SubmitError::ShutDown)
        ));
        assert!(snapshot(&pool).await.workers.is_empty());
    });
}

#[test]
fn cancel_shutdown_cancels_running_and_queued_jobs() {
    e2e("pool_cancel_shutdown", |t| async move {
        let pool = start(
            &t,
            WorkerConfig::protocol().deadlines(patient()),
            PoolConfig::new(1),
        );
        let (opts, mut progress) = watch(JobOptions::new());
        let running = submit(&pool, WAIT, opts).await;
        let mut queued = Vec::new();
        for i in 0..3u8 {
            queued.push(submit(&pool, &echo(&[i]), JobOptions::new()).await);
        }
        progress.ready().await;
        let report = within(
            LIMIT,
            "the shutdown",
            pool.shutdown(ShutdownMode::Cancel, LIMIT),
        )
        .await;
        assert!(!report.deadline_passed);
        let r = report_now(running).await;
        assert_eq!(r.report.outcome, Outcome::Cancelled, "{r:#?}");
        assert_eq!(r.report.reason, Some(CancelReason::Shutdown));
        assert!(r.report.started);
        for h in queued {
            let r = report_now(h).await;
            assert_eq!(r.report.outcome, Outcome::Cancelled);
            assert_eq!(r.report.reason, Some(CancelReason::Shutdown));
            assert!(!r.report.started);
        }
    });
}

#[test]
fn past_the_shutdown_deadline_everything_is_killed() {
    e2e("pool_shutdown_deadline_kills", |t| async move {
        // Patient deadlines: only the pool's overall deadline can end the ignoring job.
        let pool = start(
            &t,
            WorkerConfig::protocol().deadlines(patient()),
            PoolConfig::new(1),
        );
        let (opts, mut progress) = watch(JobOptions::new());
        let stuck = submit(&pool, POOL_IGNORE, opts).await;
        progress.ready().await;
        let report = within(
            LIMIT,
            "the shutdown",
            pool.shutdown(ShutdownMode::Cancel, ms(200)),
        )
        .await;
        assert!(report.deadline_passed);
        let r = report_now(stuck).await;
        assert_eq!(r.report.outcome, Outcome::Killed, "{r:#?}");
        assert_eq!(r.report.reason, Some(CancelReason::Shutdown));
        t.wait_reaped(r.worker_pid.expect("a pid"), "the killed worker")
            .await;
    });
}

#[test]
fn try_submit_fails_fast_when_the_queue_is_full() {
    e2e("pool_try_submit_queue_full", |t| async move {
        let config = PoolConfig::new(1).queue_capacity(1);
        let pool = start(&t, WorkerConfig::protocol().deadlines(patient()), config);
        let (opts, mut progress) = watch(JobOptions::new());
        let running = submit(&pool, WAIT, opts).await;
        progress.ready().await;
        let queued = pool
            .try_submit(echo(b"q"), JobOptions::new())
            .expect("room for one");
        assert!(matches!(
            pool.try_submit(echo(b"full"), JobOptions::new()),
            Err(SubmitError::QueueFull)
        ));
        running.cancel();
        assert_eq!(report(running).await.report.outcome, Outcome::Cancelled);
        completed(&report(queued).await, b"q");
        stop(&pool, ShutdownMode::Drain).await;
    });
}

/// The report of a job that has its answer by now (its pool has shut down).
async fn report_now(handle: JobHandle) -> PoolReport {
    within(ms(1000), "a report already decided", handle)
        .await
        .expect("a report")
}

#[test]
fn emfile_is_backpressure_under_ulimit_n_256() {
    e2e("pool_emfile_is_backpressure", |t| async move {
        // A host of its own with RLIMIT_NOFILE 256: 300 workers cannot all have their
        // descriptors, so spawns hit EMFILE; 1,000 jobs must all complete anyway.
        let mut host = tokio::process::Command::new(FIXTURE);
        host.args([mode::POOL_HOST, "256", "300", "1000"])
            .env(warden_tests::MARKER_VAR, t.marker())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let out = within(Duration::from_secs(100), "the pool host", host.output())
            .await
            .expect("run the pool host");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{:?}: {text} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields.first(), Some(&"completed"), "{text:?}");
        assert_eq!(fields[1], "1000", "every job completed: {text:?}");
        let deferrals: u64 = fields[3].parse().expect("a count");
        let workers: usize = fields[5].parse().expect("a count");
        assert!(deferrals > 0, "EMFILE was hit and deferred: {text:?}");
        assert!(workers > 0 && workers < 300, "{text:?}");
        eprintln!("ulimit -n 256: {text}");
    });
}

#[test]
fn a_thousand_workers_run_and_are_all_cancelled_and_reaped() {
    // Sized for CI: 1,000 workers of the fixture (about 3 s here to spawn them all, and well
    // under a second to cancel them all; the bench, `pool-bench`, measures).
    e2e("pool_a_thousand_workers_cancel_all", |t| async move {
        const N: usize = 1000;
        let config = PoolConfig::new(N).queue_capacity(N);
        let before = own_usage();
        let pool = start(&t, WorkerConfig::protocol().deadlines(patient()), config);
        let started = std::time::Instant::now();
        within(
            Duration::from_secs(60),
            "1,000 workers ready",
            pool.wait_ready(),
        )
        .await
        .expect("every worker started");
        let spawned = started.elapsed();
        let after = own_usage();
        // One channel for every job's readiness.
        let (tx, mut ready) = tokio::sync::mpsc::unbounded_channel();
        let mut handles = Vec::with_capacity(N);
        for _ in 0..N {
            let tx = tx.clone();
            let options = JobOptions::new().on_progress(move |p| {
                let _ = tx.send(p.job);
            });
            handles.push(submit(&pool, WAIT, options).await);
        }
        within(Duration::from_secs(60), "1,000 jobs running", async {
            for _ in 0..N {
                ready.recv().await.expect("a progress report");
            }
        })
        .await;
        let s = snapshot(&pool).await;
        assert_eq!(s.in_flight, N, "no worker idles while jobs wait");
        let pids: Vec<u32> = s.workers.iter().filter_map(|w| w.pid).collect();
        assert_eq!(pids.len(), N);
        let cancelling = std::time::Instant::now();
        for h in &handles {
            h.cancel();
        }
        let reports = within(Duration::from_secs(60), "1,000 cancelled reports", async {
            let mut out = Vec::with_capacity(N);
            for h in handles {
                out.push(h.await.expect("a report"));
            }
            out
        })
        .await;
        let cancelled = cancelling.elapsed();
        assert!(
            reports
                .iter()
                .all(|r| r.report.outcome == Outcome::Cancelled && r.report.started)
        );
        let stopping = std::time::Instant::now();
        stop(&pool, ShutdownMode::Drain).await;
        let stopped = stopping.elapsed();
        for pid in pids {
            t.wait_reaped(pid, "a pool worker").await;
        }
        // A reading, not an assertion (other tests may run beside this one): per worker, the
        // supervisor's resident set, descriptors and threads.
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / N as f64;
        eprintln!(
            "1,000 workers: ready in {spawned:?}, 1,000 cooperative cancels in {cancelled:?}, \
             shut down and reaped in {stopped:?}; per worker: {:.1} KiB RSS, {:.2} fds, \
             {:.3} threads",
            per(after.0, before.0),
            per(after.1, before.1),
            per(after.2, before.2),
        );
    });
}

/// This process's resident set (KiB), open descriptors and threads.
fn own_usage() -> (u64, u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    (field("VmRSS:"), fds, field("Threads:"))
}

/// The pool's only worker runs the first attempt of `job`.
fn assert_runs_first_attempt(s: &warden::PoolSnapshot, job: warden::PoolJobId) {
    assert_eq!(
        s.workers[0].state,
        WorkerState::Busy { job, attempt: 1 },
        "{s:?}"
    );
}

#[test]
fn with_prefetch_the_next_job_waits_in_its_worker_and_its_cancel_is_answered_at_once() {
    e2e("pool_prefetch_cancel_while_waiting", |t| async move {
        let pool = start(
            &t,
            WorkerConfig::protocol().deadlines(patient()),
            PoolConfig::new(1).prefetch(1),
        );
        let (opts, mut progress) = watch(JobOptions::new());
        let a = submit(&pool, WAIT, opts).await;
        let a_id = a.id();
        let b = submit(&pool, &echo(b"b"), JobOptions::new()).await;
        let c = submit(&pool, &echo(b"c"), JobOptions::new()).await;
        progress.ready().await;
        // `a` runs, `b` waits in its worker, `c` in the queue.
        let s = snapshot(&pool).await;
        assert_eq!((s.in_flight, s.queued), (2, 1), "{s:?}");
        assert_runs_first_attempt(&s, a_id);
        // A cancel of the job handed early is answered while `a` still runs.
        b.cancel();
        let rb = report(b).await;
        assert_eq!(rb.report.outcome, Outcome::Cancelled, "{rb:#?}");
        assert_eq!(rb.report.reason, Some(CancelReason::Requested));
        assert!(!rb.report.started, "{rb:#?}");
        assert_eq!((rb.attempt, rb.worker_pid), (0, None));
        assert_runs_first_attempt(&snapshot(&pool).await, a_id);
        a.cancel();
        let ra = report(a).await;
        assert_eq!(ra.report.outcome, Outcome::Cancelled, "{ra:#?}");
        assert!(ra.report.started);
        let rc = report(c).await;
        completed(&rc, b"c");
        assert_eq!(
            rc.worker_pid, ra.worker_pid,
            "the cancels left the worker reusable"
        );
        let s = snapshot(&pool).await;
        assert_eq!(
            (s.replacements, s.restarts, s.in_flight),
            (0, 0, 0),
            "{s:?}"
        );
        stop(&pool, ShutdownMode::Drain).await;
    });
}

#[test]
fn with_prefetch_the_job_behind_one_whose_ladder_ended_the_worker_runs_on_a_fresh_one() {
    e2e("pool_prefetch_behind_a_replaced_worker", |t| async move {
        // It ignores its token: the grace runs out, SIGTERM (at its default) ends it.
        let worker = WorkerConfig::protocol().deadlines(short(ms(100), ms(60_000)));
        let pool = start(&t, worker, PoolConfig::new(1).prefetch(1));
        let (options, mut progress) = watch(JobOptions::new());
        let token = options.token.clone();
        let a = submit(&pool, POOL_IGNORE, options).await;
        let b = submit(&pool, &echo(b"b"), JobOptions::new()).await;
        progress.ready().await;
        assert_eq!(snapshot(&pool).await.in_flight, 2);
        token.cancel();
        let ra = report(a).await;
        assert_eq!(ra.report.outcome, Outcome::Terminated, "{ra:#?}");
        let first = ra.worker_pid.expect("a worker ran it");
        // The job handed early never reached the dying worker: it runs, once, on the next.
        let rb = report(b).await;
        completed(&rb, b"b");
        assert_eq!(rb.attempt, 1, "{rb:#?}");
        assert_ne!(rb.worker_pid, Some(first), "{rb:#?}");
        let s = snapshot(&pool).await;
        assert_eq!((s.replacements, s.restarts, s.retries), (1, 0, 0), "{s:?}");
        stop(&pool, ShutdownMode::Drain).await;
        t.wait_reaped(first, "the replaced worker").await;
    });
}

#[test]
fn with_prefetch_every_job_completes_once_and_max_jobs_still_holds() {
    e2e("pool_prefetch_many_jobs_and_max_jobs", |t| async move {
        let config = PoolConfig::new(2).prefetch(4).queue_capacity(300);
        let pool = start(&t, WorkerConfig::protocol(), config);
        let mut handles = Vec::new();
        for i in 0..200u32 {
            handles.push(submit(&pool, &echo(&i.to_le_bytes()), JobOptions::new()).await);
        }
        let mut pids = std::collections::BTreeSet::new();
        for (i, handle) in (0..200u32).zip(handles) {
            let r = report(handle).await;
            completed(&r, &i.to_le_bytes());
            assert_eq!(r.attempt, 1);
            pids.insert(r.worker_pid.expect("a worker ran it"));
        }
        assert_eq!(pids.len(), 2, "{pids:?}");
        let s = snapshot(&pool).await;
        assert_eq!((s.completed, s.in_flight, s.queued), (200, 0, 0), "{s:?}");
        stop(&pool, ShutdownMode::Drain).await;

        // Recycled after 3 jobs: nothing is handed early to a worker about to be recycled.
        let config = PoolConfig::new(1).prefetch(2).max_jobs_per_worker(3);
        let pool = start(&t, WorkerConfig::protocol(), config);
        let mut handles = Vec::new();
        for i in 0..7u8 {
            handles.push(submit(&pool, &echo(&[i]), JobOptions::new()).await);
        }
        let mut runs: Vec<u32> = Vec::new();
        for (i, handle) in (0..7u8).zip(handles) {
            let r = report(handle).await;
            completed(&r, &[i]);
            runs.push(r.worker_pid.expect("a worker ran it"));
        }
        let mut per_worker = std::collections::BTreeMap::new();
        for pid in &runs {
            *per_worker.entry(*pid).or_insert(0) += 1;
        }
        assert!(per_worker.values().all(|&n| n <= 3), "{runs:?}");
        let s = snapshot(&pool).await;
        assert_eq!((s.recycles, s.restarts, s.replacements), (2, 0, 0), "{s:?}");
        stop(&pool, ShutdownMode::Drain).await;
        for pid in per_worker.keys() {
            t.wait_reaped(*pid, "a recycled worker").await;
        }
    });
}
