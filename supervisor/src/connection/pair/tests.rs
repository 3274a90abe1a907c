//! The supervisor's connection and the SDK's machine against each other, on one virtual clock.

use warden_protocol::{CancelReason, JobId, SupervisorMessage, WorkerMessage};
use warden_worker::CancelCause;
use warden_worker::machine::Exit;

use super::{Dir, Finish, GRACE, KILLED, Pair, Side, ms, settings};
use crate::connection::JobStart;
use crate::error::RunError;
use crate::escalation::Stage;
use crate::outcome::{JobReport, Outcome, Violation};
use crate::process::ExitStatus;

fn pair() -> Pair {
    Pair::new(settings(), None)
}

/// The one reply so far, a report.
fn report(p: &Pair) -> &JobReport {
    match p.replies.as_slice() {
        [Ok(report)] => report,
        other => panic!("expected exactly one report, got {other:?}"),
    }
}

fn result(out: &[u8]) -> Finish {
    Finish::Result(out.to_vec())
}

#[test]
fn a_cancel_crossing_a_completed_on_the_wire_is_completed_despite_cancel() {
    for worker_first in [true, false] {
        let mut p = pair();
        p.start(JobStart::default());
        assert_eq!(p.handler_starts, [JobId(1)]);
        p.hold(Dir::ToWorker);
        p.hold(Dir::ToSupervisor);
        p.finish(result(b"out"));
        p.cancel(CancelReason::Requested);
        assert!(p.in_flight(Dir::ToWorker) > 0, "the cancel is in flight");
        assert!(
            p.in_flight(Dir::ToSupervisor) > 0,
            "the result is in flight"
        );
        if worker_first {
            p.deliver_to_worker();
            p.deliver_to_supervisor();
        } else {
            p.deliver_to_supervisor();
            p.deliver_to_worker();
        }
        assert!(
            matches!(
                p.worker_got.last(),
                Some(SupervisorMessage::Cancel { job: JobId(1), .. })
            ),
            "the SDK read the stale cancel"
        );
        assert_eq!(p.trips, [], "the SDK ignores a cancel for a finished job");
        assert!(p.sdk_exit.is_none(), "a stale cancel is no violation");
        let r = report(&p);
        assert_eq!(r.outcome, Outcome::CompletedDespiteCancel(b"out".to_vec()));
        assert_eq!(r.reason, Some(CancelReason::Requested));
        assert_eq!((p.kills.len(), p.signals.len()), (0, 0));
        // The worker is reused, and the stale cancel does not leak into the next job.
        p.release(Dir::ToWorker);
        p.release(Dir::ToSupervisor);
        p.advance(ms(1_000));
        assert_eq!(p.replies.len(), 1, "exactly one outcome");
        p.start(JobStart::default());
        p.finish(result(b"two"));
        assert_eq!(p.trips, []);
        match p.replies.as_slice() {
            [Ok(_), Ok(second)] => {
                assert_eq!(second.job, JobId(2));
                assert_eq!(second.outcome, Outcome::Completed(b"two".to_vec()));
            }
            other => panic!("expected two reports, got {other:?}"),
        }
    }
}

#[test]
fn a_job_cancelled_before_start_never_reaches_the_worker() {
    for start in [
        JobStart {
            cancelled: Some(CancelReason::Requested),
            ..JobStart::default()
        },
        JobStart {
            timeout: Some(ms(0)),
            ..JobStart::default()
        },
    ] {
        let mut p = pair();
        p.start(start);
        let r = report(&p);
        assert_eq!(r.outcome, Outcome::Cancelled);
        assert!(!r.started);
        assert_eq!(p.worker_got, [], "nothing was sent");
        assert_eq!(p.handler_starts, []);
        assert!(p.conn.takes_requests(), "the worker is reused");
    }
}

#[test]
fn a_cancel_behind_the_start_trips_the_handler_and_is_acknowledged() {
    let mut p = pair();
    p.on_trip = Some(Finish::Cancelled);
    p.hold(Dir::ToWorker);
    p.start(JobStart::default());
    p.cancel(CancelReason::Requested);
    assert_eq!(p.handler_starts, [], "the start is still in flight");
    p.release(Dir::ToWorker);
    assert_eq!(
        p.trips,
        [(JobId(1), CancelCause::Message(CancelReason::Requested))]
    );
    let r = report(&p);
    assert_eq!(r.outcome, Outcome::Cancelled);
    assert_eq!(r.stage, Some(Stage::Cooperative));
    assert_eq!(p.kills.len(), 0);
}

#[test]
fn supervisor_eof_mid_job_trips_the_token_and_the_sdk_exits_at_its_orphan_grace() {
    let mut p = pair();
    p.start(JobStart::default());
    p.advance(ms(10));
    let eof = p.now;
    p.sever_supervisor_end();
    assert_eq!(p.trips, [(JobId(1), CancelCause::ChannelClosed)]);
    // The handler ignores its token.
    p.advance(GRACE - ms(1));
    assert!(p.sdk_exit.is_none(), "not before the grace");
    p.advance(ms(1));
    assert!(matches!(p.sdk_exit, Some(Exit::Orphaned)));
    assert_eq!(p.sdk_exit_at, Some(eof + GRACE));
    assert_eq!(
        p.exit,
        Some(ExitStatus::Code(warden_worker::ORPHAN_EXIT_CODE))
    );
    assert!(p.fires.iter().all(|f| f.at >= f.deadline));
}

#[test]
fn supervisor_eof_mid_job_with_a_handler_that_stops_disconnects() {
    let mut p = pair();
    p.on_trip = Some(Finish::Cancelled);
    p.start(JobStart::default());
    p.sever_supervisor_end();
    assert!(matches!(p.sdk_exit, Some(Exit::Disconnected(None))));
    assert_eq!(p.sdk_exit_at, Some(p.t0), "at once, no grace needed");
    assert_eq!(p.sup_got, [], "nothing is written after the channel closed");
}

#[test]
fn worker_eof_while_idle_is_killed_at_the_drain_bound() {
    let mut p = pair();
    p.advance(ms(5));
    p.close_worker_end();
    p.advance(ms(29));
    assert_eq!(p.kills, [], "not before the drain bound");
    p.advance(ms(1));
    assert_eq!(p.kills, [p.at(35)]);
    assert_eq!((p.kills.len(), p.exit, p.reaped), (1, Some(KILLED), true));
    p.start(JobStart::default());
    assert!(matches!(
        p.replies.as_slice(),
        [Err(RunError::WorkerGone { .. })]
    ));
}

#[test]
fn a_result_then_an_immediate_exit_is_completed_exactly_once() {
    let mut p = pair();
    p.start(JobStart::default());
    p.hold(Dir::ToSupervisor);
    p.finish(result(b"out"));
    // The exit is observed before the result is read.
    p.exit_process(ExitStatus::Code(0));
    assert_eq!(p.replies.len(), 0, "the drain waits for the result");
    p.advance(ms(10));
    p.release(Dir::ToSupervisor);
    let r = report(&p);
    assert_eq!(r.outcome, Outcome::Completed(b"out".to_vec()));
    assert_eq!(r.exit, Some(ExitStatus::Code(0)));
    assert!(p.reaped);
    p.advance(ms(10_000));
    assert_eq!(p.replies.len(), 1, "exactly once");
    assert_eq!(p.after_reap, Vec::<String>::new());
    assert_eq!(p.kills.len(), 0);
}

#[test]
fn a_result_for_another_job_is_killed_with_the_violation_named() {
    let mut p = pair();
    p.start(JobStart::default());
    p.inject_to_supervisor(&WorkerMessage::Completed {
        job: JobId(7),
        output: vec![],
    });
    let r = report(&p);
    assert_eq!(r.outcome, Outcome::Killed);
    assert_eq!(
        r.violation,
        Some(Violation::NotRunning {
            kind: "completed",
            job: JobId(7)
        })
    );
    assert_eq!((p.kills.len(), p.exit), (1, Some(KILLED)));
}

#[test]
fn an_unrequested_cancelled_is_killed_but_a_handler_cancelled_unasked_is_failed() {
    let mut p = pair();
    p.start(JobStart::default());
    p.inject_to_supervisor(&WorkerMessage::Cancelled { job: JobId(1) });
    assert!(p.replies.is_empty(), "held for a cancel from here");
    assert!(p.kills.is_empty());
    p.advance(ms(30));
    let r = report(&p);
    assert_eq!(r.outcome, Outcome::Killed);
    assert_eq!(
        r.violation,
        Some(Violation::UnrequestedCancel { job: JobId(1) })
    );
    assert_eq!(p.kills.len(), 1);

    // The SDK never sends one: a handler returning cancelled unasked is a failure.
    let mut p = pair();
    p.start(JobStart::default());
    p.finish(Finish::Cancelled);
    let r = report(&p);
    assert!(matches!(r.outcome, Outcome::Failed(_)), "{r:?}");
    assert_eq!((r.violation.as_ref(), p.kills.len()), (None, 0));
}

#[test]
fn shutdown_while_idle_stops_the_worker_without_a_signal() {
    let mut p = pair();
    p.shutdown();
    assert!(matches!(p.sdk_exit, Some(Exit::Stopped)));
    assert_eq!(p.shutdowns, [Some(ExitStatus::Code(0))]);
    assert_eq!((p.signals.len(), p.kills.len()), (0, 0));
    assert!(p.conn.is_stopped());
}

#[test]
fn shutdown_mid_job_runs_the_ladder_against_a_handler_that_ignores_it() {
    let mut p = pair();
    p.start(JobStart::default());
    // The shutdown token cancels the running job first; the shutdown follows its report.
    p.cancel(CancelReason::Shutdown);
    assert_eq!(
        p.trips,
        [(JobId(1), CancelCause::Message(CancelReason::Shutdown))]
    );
    p.advance(ms(99));
    assert_eq!(p.signals, []);
    p.advance(ms(1));
    assert_eq!(p.signals, [p.at(100)], "the polite signal at the grace");
    assert_eq!(p.trips.len(), 1, "the token trips once");
    p.advance(ms(99));
    assert_eq!(p.kills, []);
    p.advance(ms(1));
    assert_eq!(p.kills, [p.at(200)]);
    let r = report(&p);
    assert_eq!(
        (r.outcome.clone(), r.stage),
        (Outcome::Killed, Some(Stage::Kill))
    );
    assert_eq!(r.reason, Some(CancelReason::Shutdown));
    p.shutdown();
    assert_eq!(p.shutdowns, [Some(KILLED)]);
    assert_eq!(p.kills.len(), 1);
    assert_eq!(p.after_reap, Vec::<String>::new());
}

#[test]
fn shutdown_mid_job_with_a_cooperative_handler_stops_cleanly() {
    let mut p = pair();
    p.on_trip = Some(Finish::Cancelled);
    p.start(JobStart::default());
    p.cancel(CancelReason::Shutdown);
    assert_eq!(report(&p).outcome, Outcome::Cancelled);
    p.shutdown();
    assert!(matches!(p.sdk_exit, Some(Exit::Stopped)));
    assert_eq!(p.shutdowns, [Some(ExitStatus::Code(0))]);
    assert_eq!((p.signals.len(), p.kills.len()), (0, 0));
}

#[test]
fn heartbeats_keep_a_busy_worker_alive() {
    let mut p = Pair::new(
        crate::connection::Settings {
            unresponsive_after: Some(ms(100)),
            ..settings()
        },
        Some(ms(40)),
    );
    p.start(JobStart::default());
    p.advance(ms(1_000));
    assert_eq!(p.trips, [], "never unresponsive");
    p.finish(result(b"late"));
    assert_eq!(report(&p).outcome, Outcome::Completed(b"late".to_vec()));
    assert!(p.fires.iter().any(|f| f.side == Side::Worker));
    assert!(
        p.fires.iter().all(|f| f.at == f.deadline),
        "on time, never early"
    );
}

mod properties {
    //! Whatever the interleaving of cancel, result, exit, EOF, delivery and time: exactly one
    //! outcome per job, SIGKILL at most once, nothing after the reap, no timer early.

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Input {
        Start,
        Cancel,
        Kill,
        Finish(u8),
        Exit(i32),
        ObserveExit,
        WorkerEof,
        SupervisorEof,
        Hold(bool),
        Release(bool),
        Deliver(bool),
        Advance(u64),
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            1 => Just(Input::Start),
            2 => Just(Input::Cancel),
            1 => Just(Input::Kill),
            3 => (0u8..3).prop_map(Input::Finish),
            1 => (0i32..2).prop_map(Input::Exit),
            1 => Just(Input::ObserveExit),
            1 => Just(Input::WorkerEof),
            1 => Just(Input::SupervisorEof),
            2 => any::<bool>().prop_map(Input::Hold),
            2 => any::<bool>().prop_map(Input::Release),
            2 => any::<bool>().prop_map(Input::Deliver),
            4 => (0u64..250).prop_map(Input::Advance),
        ]
    }

    fn dir(to_worker: bool) -> Dir {
        if to_worker {
            Dir::ToWorker
        } else {
            Dir::ToSupervisor
        }
    }

    fn check_invariants(p: &Pair, starts: usize) {
        assert!(
            p.replies.len() <= starts,
            "more outcomes than jobs: {:?}",
            p.replies
        );
        assert!(p.kills.len() <= 1, "SIGKILL {} times", p.kills.len());
        assert_eq!(p.after_reap, Vec::<String>::new(), "actions after the reap");
        assert!(p.shutdowns.len() <= 1, "one shutdown answer");
        for f in &p.fires {
            assert!(f.at >= f.deadline, "{:?} fired early", f.side);
        }
    }

    fn check(on_trip: Option<u8>, live: bool, late_exit: bool, inputs: &[Input]) {
        let mut p = Pair::new(
            crate::connection::Settings {
                unresponsive_after: live.then_some(ms(300)),
                ..settings()
            },
            live.then_some(ms(100)),
        );
        let finish = |k: u8| match k {
            0 => Finish::Result(b"r".to_vec()),
            1 => Finish::Error("e".into()),
            _ => Finish::Cancelled,
        };
        p.on_trip = on_trip.map(finish);
        p.late_exit = late_exit;
        let job = || JobStart {
            timeout: Some(ms(500)),
            ..JobStart::default()
        };
        p.start(job());
        let mut starts = 1;
        for input in inputs {
            match input {
                Input::Start if p.conn.takes_requests() && !p.conn.is_stopped() => {
                    p.start(job());
                    starts += 1;
                }
                Input::Cancel => p.cancel(CancelReason::Requested),
                Input::Kill => p.kill(),
                Input::Finish(k) => p.finish(finish(*k)),
                Input::Exit(code) => p.exit_process(ExitStatus::Code(*code)),
                Input::ObserveExit => p.observe_exit(),
                Input::WorkerEof => p.close_worker_end(),
                Input::SupervisorEof => p.sever_supervisor_end(),
                Input::Hold(d) => p.hold(dir(*d)),
                Input::Release(d) => p.release(dir(*d)),
                Input::Deliver(true) => p.deliver_to_worker(),
                Input::Deliver(false) => p.deliver_to_supervisor(),
                Input::Advance(n) => p.advance(ms(*n)),
                Input::Start => {}
            }
            check_invariants(&p, starts);
        }
        // Let everything land: every job gets its outcome, then the worker shuts down.
        p.release(Dir::ToWorker);
        p.release(Dir::ToSupervisor);
        for _ in 0..20 {
            if p.replies.len() == starts && p.conn.takes_requests() {
                break;
            }
            p.advance(ms(1_000));
        }
        assert_eq!(p.replies.len(), starts, "exactly one outcome per job");
        if !p.conn.is_stopped() {
            p.shutdown();
            for _ in 0..20 {
                if !p.shutdowns.is_empty() {
                    break;
                }
                p.advance(ms(1_000));
            }
            assert_eq!(p.shutdowns.len(), 1, "the shutdown is answered");
        }
        p.advance(ms(10_000));
        assert_eq!(p.replies.len(), starts, "no late outcome");
        check_invariants(&p, starts);
    }

    proptest! {
        #[test]
        fn one_outcome_one_kill_nothing_after_the_reap_no_timer_early(
            on_trip in proptest::option::of(0u8..3),
            live in any::<bool>(),
            late_exit in any::<bool>(),
            inputs in proptest::collection::vec(input(), 0..40),
        ) {
            check(on_trip, live, late_exit, &inputs);
        }
    }
}

#[test]
fn a_stop_signal_that_reaches_the_worker_before_the_supervisors_cancel_is_cancelled() {
    // Slurm's plain `scancel` signals warden and the worker at once: the SDK cancels on the
    // signal and answers before warden's own cancel for the same stop goes out.
    for exits_first in [false, true] {
        let mut p = pair();
        p.start(JobStart::default());
        p.outside_signal();
        p.finish(Finish::Cancelled);
        assert!(p.replies.is_empty(), "held: {:?}", p.replies);
        if exits_first {
            p.advance(ms(5));
            assert!(
                p.replies.is_empty(),
                "still held after the exit: {:?}",
                p.replies
            );
        }
        p.cancel(CancelReason::Shutdown);
        let r = report(&p);
        assert_eq!(r.outcome, Outcome::Cancelled, "exits first: {exits_first}");
        assert_eq!(
            (r.reason, r.violation.as_ref()),
            (Some(CancelReason::Shutdown), None)
        );
        p.advance(ms(1000));
        assert!(p.kills.is_empty(), "nothing was killed: {:?}", p.kills);
        assert_eq!(p.replies.len(), 1);
        assert!(p.after_reap.is_empty(), "{:?}", p.after_reap);
    }
}

#[test]
fn a_stop_signal_from_outside_that_nobody_here_follows_is_crashed() {
    let mut p = pair();
    p.start(JobStart::default());
    p.outside_signal();
    p.finish(Finish::Cancelled);
    p.advance(ms(1000));
    let r = report(&p);
    assert!(matches!(r.outcome, Outcome::Crashed(_)), "{r:?}");
    assert_eq!(
        r.violation,
        Some(Violation::UnrequestedCancel { job: JobId(1) })
    );
    assert!(p.kills.is_empty(), "it ended on its own: {:?}", p.kills);
}

fn queueing(depth: usize) -> Pair {
    Pair::new(
        crate::connection::Settings {
            queue_depth: depth,
            ..settings()
        },
        None,
    )
}

fn outcomes(p: &Pair) -> Vec<(JobId, Outcome, bool)> {
    p.replies
        .iter()
        .map(|r| match r {
            Ok(r) => (r.job, r.outcome.clone(), r.started),
            Err(e) => panic!("expected reports, got {e:?}"),
        })
        .collect()
}

#[test]
fn queued_jobs_run_in_order_and_a_queued_cancel_is_answered_before_its_turn() {
    let mut p = queueing(3);
    for _ in 0..3 {
        p.start_queued(JobStart::default());
    }
    assert_eq!(
        p.handler_starts,
        [JobId(1)],
        "one runs, two wait in the worker"
    );
    p.cancel_queued(JobId(3), CancelReason::Requested);
    assert_eq!(p.trips, [], "no token trips for a job that never started");
    assert_eq!(
        outcomes(&p),
        [(JobId(3), Outcome::Cancelled, false)],
        "answered while job 1 still runs"
    );
    p.finish(result(b"one"));
    assert_eq!(p.handler_starts, [JobId(1), JobId(2)]);
    p.finish(result(b"two"));
    assert_eq!(p.handler_starts, [JobId(1), JobId(2)], "job 3 never ran");
    assert_eq!(
        outcomes(&p)[1..],
        [
            (JobId(1), Outcome::Completed(b"one".to_vec()), true),
            (JobId(2), Outcome::Completed(b"two".to_vec()), true),
        ]
    );
    assert!(p.sdk_exit.is_none());
    assert_eq!((p.kills.len(), p.signals.len()), (0, 0));
    assert!(p.conn.takes_requests());
}

#[test]
fn a_queued_cancel_crossing_the_result_before_it_cancels_the_started_job() {
    let mut p = queueing(2);
    p.start_queued(JobStart::default());
    p.start_queued(JobStart::default());
    p.hold(Dir::ToWorker);
    p.hold(Dir::ToSupervisor);
    // Job 1 ends, so the worker starts job 2, before it reads job 2's cancel.
    p.finish(result(b"one"));
    p.cancel_queued(JobId(2), CancelReason::Requested);
    p.deliver_to_worker();
    assert_eq!(p.handler_starts, [JobId(1), JobId(2)]);
    assert_eq!(p.trips.len(), 1, "the running job 2's token trips");
    p.finish(Finish::Cancelled);
    p.release(Dir::ToWorker);
    p.release(Dir::ToSupervisor);
    let got = outcomes(&p);
    assert_eq!(
        got[0],
        (JobId(1), Outcome::Completed(b"one".to_vec()), true)
    );
    assert_eq!(got[1].0, JobId(2));
    assert_eq!(got[1].1, Outcome::Cancelled);
    assert!(got[1].2, "it had started");
    assert_eq!((p.kills.len(), p.signals.len()), (0, 0));
}

#[test]
fn queued_jobs_never_run_once_the_running_one_is_signalled() {
    let mut p = queueing(3);
    p.start_queued(JobStart {
        timeout: Some(ms(10)),
        ..JobStart::default()
    });
    p.start_queued(JobStart::default());
    p.start_queued(JobStart::default());
    // The handler ignores its cancel: the grace ends, SIGTERM goes out.
    p.advance(ms(200));
    assert!(!p.signals.is_empty());
    let gone = p
        .replies
        .iter()
        .filter(|r| matches!(r, Err(RunError::WorkerGone { .. })))
        .count();
    assert_eq!(gone, 2, "{:?}", p.replies);
    assert_eq!(p.handler_starts, [JobId(1)], "nothing queued ever started");
}
