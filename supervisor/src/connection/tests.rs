//! The connection machine on a virtual clock: no process, no socket, no sleep.

use std::time::{Duration, Instant};

use warden_protocol::{CancelReason, DecodeError, JobId, SupervisorMessage, WorkerMessage};

use super::pair::{ms, settings};
use super::{Action, Connection, JobStart, Settings};
use crate::error::RunError;
use crate::escalation::Stage;
use crate::outcome::{JobReport, Outcome, Violation};
use crate::process::{ExitStatus, LimitEntry, LimitKind, LimitReport, Mechanism};
use crate::worker::TimeoutExtension;

const KILLED: ExitStatus = ExitStatus::Signal {
    signal: libc::SIGKILL,
    core_dumped: false,
};
const TERMED: ExitStatus = ExitStatus::Signal {
    signal: libc::SIGTERM,
    core_dumped: false,
};

/// A connection and its virtual clock.
struct Rig {
    t0: Instant,
    conn: Connection,
}

impl Rig {
    fn new(settings: Settings) -> Rig {
        let t0 = Instant::now();
        Rig {
            t0,
            conn: Connection::new(t0, settings),
        }
    }

    fn at(&self, n: u64) -> Instant {
        self.t0 + ms(n)
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.conn.poll_action()).collect()
    }

    fn start(&mut self, n: u64, start: JobStart) -> Vec<Action> {
        self.conn.handle_start(self.at(n), start);
        self.actions()
    }

    fn msg(&mut self, n: u64, msg: WorkerMessage) -> Vec<Action> {
        self.conn.handle_message(self.at(n), msg);
        self.actions()
    }

    fn time(&mut self, n: u64) -> Vec<Action> {
        self.conn.handle_timeout(self.at(n));
        self.actions()
    }

    /// Exit, the channel's EOF, then the actor's reap (which it performs when asked).
    fn exit_and_reap(&mut self, n: u64, status: ExitStatus) -> Vec<Action> {
        self.conn.handle_exit(self.at(n), Some(status));
        if self.conn.is_reading() {
            self.conn.handle_eof(self.at(n));
        }
        let mut out = self.actions();
        if out.iter().any(|a| matches!(a, Action::Reap)) {
            self.conn
                .handle_reaped(self.at(n), Some(status), LimitReport::default());
            out.extend(self.actions());
        }
        out
    }
}

fn job(n: u64) -> JobId {
    JobId(n)
}

fn replies(actions: &[Action]) -> Vec<&Result<JobReport, RunError>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply(_, r) => Some(&**r),
            _ => None,
        })
        .collect()
}

fn report(actions: &[Action]) -> &JobReport {
    match replies(actions).as_slice() {
        [Ok(report)] => report,
        other => panic!("expected one report, got {other:?}"),
    }
}

fn sent(actions: &[Action]) -> Vec<&SupervisorMessage> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn has(actions: &[Action], want: fn(&Action) -> bool) -> bool {
    actions.iter().any(want)
}

fn completed(n: u64) -> WorkerMessage {
    WorkerMessage::Completed {
        job: job(n),
        output: b"out".to_vec(),
    }
}

#[test]
fn a_result_before_any_signal_ends_the_job_and_keeps_the_worker() {
    let mut r = Rig::new(settings());
    let a = r.start(0, JobStart::default());
    assert!(matches!(
        sent(&a).as_slice(),
        [SupervisorMessage::StartJob { job: JobId(1), .. }]
    ));
    assert!(replies(&a).is_empty());
    assert!(!r.conn.takes_requests());
    let a = r.msg(5, completed(1));
    let rep = report(&a);
    assert_eq!(rep.outcome, Outcome::Completed(b"out".to_vec()));
    assert_eq!(rep.trace.result_received, Some(ms(5)));
    assert_eq!(rep.trace.ended, ms(5));
    assert_eq!(
        rep.exit, None,
        "decided without an exit: the worker is reused"
    );
    assert!(r.conn.takes_requests());
    assert_eq!(r.conn.poll_timeout(), None);
}

#[test]
fn a_cancel_crossing_the_result_gives_one_outcome() {
    let mut r = Rig::new(settings());
    r.start(0, JobStart::default());
    r.conn.handle_cancel(r.at(10), CancelReason::Requested);
    let a = r.actions();
    assert!(matches!(
        sent(&a).as_slice(),
        [SupervisorMessage::Cancel {
            job: JobId(1),
            reason: CancelReason::Requested
        }]
    ));
    let a = r.msg(12, completed(1));
    let rep = report(&a);
    assert_eq!(
        rep.outcome,
        Outcome::CompletedDespiteCancel(b"out".to_vec())
    );
    assert_eq!(rep.stage, Some(Stage::Cooperative));
    // Nothing else comes: no second outcome, no signal at the grace deadline.
    assert!(r.time(1000).is_empty());
}

#[test]
fn a_job_cancelled_before_start_is_never_sent() {
    for reason in [CancelReason::Requested, CancelReason::Shutdown] {
        let mut r = Rig::new(settings());
        let a = r.start(
            0,
            JobStart {
                cancelled: Some(reason),
                ..JobStart::default()
            },
        );
        assert!(sent(&a).is_empty(), "{a:?}");
        let rep = report(&a);
        assert_eq!(rep.outcome, Outcome::Cancelled);
        assert_eq!(rep.reason, Some(reason));
        assert!(!rep.started);
        assert!(r.conn.takes_requests());
    }
    // A zero timeout too.
    let mut r = Rig::new(settings());
    let a = r.start(
        0,
        JobStart {
            timeout: Some(Duration::ZERO),
            ..JobStart::default()
        },
    );
    assert!(sent(&a).is_empty());
    assert_eq!(report(&a).reason, Some(CancelReason::Timeout));
}

#[test]
fn an_unrequested_cancelled_is_a_violation_once_nobody_here_asks_in_time() {
    let mut r = Rig::new(settings());
    r.start(0, JobStart::default());
    let a = r.msg(5, WorkerMessage::Cancelled { job: job(1) });
    assert!(a.is_empty(), "held for its attribution: {a:?}");
    assert!(r.conn.accepts_cancel());
    // Nothing more may come for the job meanwhile.
    assert_eq!(r.conn.poll_timeout(), Some(r.at(35)));
    assert!(r.time(34).is_empty(), "no timer early");
    let a = r.time(35);
    assert!(replies(&a).is_empty());
    assert!(has(&a, |a| matches!(a, Action::Kill)));
    assert!(has(&a, |a| matches!(a, Action::Close)));
    assert!(!r.conn.is_reading());
    let a = r.exit_and_reap(36, KILLED);
    let rep = report(&a);
    assert_eq!(rep.outcome, Outcome::Killed);
    assert_eq!(
        rep.violation,
        Some(Violation::UnrequestedCancel { job: job(1) })
    );
    assert_eq!(rep.stage, Some(Stage::Kill));
    assert_eq!(rep.reason, None);
}

#[test]
fn a_message_after_an_unrequested_cancelled_is_a_second_answer() {
    let mut r = Rig::new(settings());
    r.start(0, JobStart::default());
    r.msg(5, WorkerMessage::Cancelled { job: job(1) });
    let a = r.msg(6, completed(1));
    assert!(has(&a, |a| matches!(a, Action::Kill)));
    let rep = report(&r.exit_and_reap(7, KILLED)).clone();
    assert_eq!(rep.outcome, Outcome::Killed);
    assert!(matches!(rep.violation, Some(Violation::NotRunning { .. })));
}

#[test]
fn a_cancel_from_here_soon_after_is_what_an_early_cancelled_acknowledges() {
    // A stop signal reached the worker first (a batch system signals the whole job); warden's
    // own cancel for the same stop comes a moment later.
    let mut r = Rig::new(settings());
    r.start(0, JobStart::default());
    r.msg(5, WorkerMessage::Cancelled { job: job(1) });
    r.conn.handle_cancel(r.at(8), CancelReason::Shutdown);
    let a = r.actions();
    let rep = report(&a);
    assert_eq!(rep.outcome, Outcome::Cancelled);
    assert_eq!(rep.reason, Some(CancelReason::Shutdown));
    assert_eq!(rep.violation, None);
    assert_eq!(rep.trace.result_received, Some(ms(5)));
    assert_eq!(rep.trace.cancel_requested, Some(ms(8)));
    assert!(!has(&a, |a| matches!(a, Action::Kill)));
    assert_eq!(r.conn.poll_timeout(), None, "the hold is over");
    // The worker exits next, as the SDK does after a signal: an idle exit, no second report.
    let a = r.exit_and_reap(9, ExitStatus::Code(0));
    assert!(replies(&a).is_empty());
}

#[test]
fn an_early_cancelled_is_attributed_even_after_the_worker_is_reaped() {
    let mut r = Rig::new(settings());
    r.start(0, JobStart::default());
    r.msg(5, WorkerMessage::Cancelled { job: job(1) });
    let a = r.exit_and_reap(6, ExitStatus::Code(0));
    assert!(replies(&a).is_empty(), "the report waits: {a:?}");
    assert!(r.conn.accepts_cancel());
    // The job's own deadline is a cancel from here too.
    r.conn.handle_cancel(r.at(20), CancelReason::Requested);
    let a = r.actions();
    let rep = report(&a);
    assert_eq!(rep.outcome, Outcome::Cancelled);
    assert_eq!(rep.reason, Some(CancelReason::Requested));
    assert_eq!(rep.exit, Some(ExitStatus::Code(0)));
    assert_eq!(rep.trace.cancel_requested, Some(ms(20)));
    assert!(!has(&a, |a| matches!(a, Action::Send(_) | Action::Kill)));
    assert!(r.conn.takes_requests());
    assert!(matches!(
        replies(&r.start(21, JobStart::default()))[..],
        [Err(RunError::WorkerGone { .. })]
    ));
}

#[test]
fn an_early_cancelled_answers_the_jobs_own_deadline() {
    let mut r = Rig::new(settings());
    r.start(
        0,
        JobStart {
            timeout: Some(ms(10)),
            ..JobStart::default()
        },
    );
    r.msg(9, WorkerMessage::Cancelled { job: job(1) });
    let rep = report(&r.time(10)).clone();
    assert_eq!(rep.outcome, Outcome::Cancelled);
    assert_eq!(rep.reason, Some(CancelReason::Timeout));
}

#[test]
fn an_early_cancelled_nobody_here_asks_for_then_an_exit_is_crashed() {
    // Someone outside warden signalled the worker; the SDK cancelled and exited 0 on its own.
    let mut r = Rig::new(settings());
    r.start(0, JobStart::default());
    r.msg(5, WorkerMessage::Cancelled { job: job(1) });
    assert!(replies(&r.exit_and_reap(6, ExitStatus::Code(0))).is_empty());
    let a = r.time(35);
    let rep = report(&a);
    assert_eq!(rep.outcome, Outcome::Crashed(ExitStatus::Code(0)));
    assert_eq!(
        rep.violation,
        Some(Violation::UnrequestedCancel { job: job(1) })
    );
    assert_eq!((rep.reason, rep.stage), (None, None));
    assert!(!has(&a, |a| matches!(a, Action::Kill | Action::Signal)));
    // Exited but not reaped when the bound ends: the reap gives the report.
    let mut r = Rig::new(settings());
    r.start(0, JobStart::default());
    r.msg(5, WorkerMessage::Cancelled { job: job(1) });
    r.conn.handle_exit(r.at(6), Some(ExitStatus::Code(0)));
    r.actions();
    assert!(replies(&r.time(35)).is_empty());
    r.conn.handle_eof(r.at(36));
    r.actions();
    r.conn
        .handle_reaped(r.at(36), Some(ExitStatus::Code(0)), LimitReport::default());
    let rep = report(&r.actions()).clone();
    assert_eq!(rep.outcome, Outcome::Crashed(ExitStatus::Code(0)));
}

#[test]
fn a_requested_cancelled_is_an_acknowledgement() {
    let mut r = Rig::new(settings());
    r.start(0, JobStart::default());
    r.conn.handle_cancel(r.at(1), CancelReason::Timeout);
    r.actions();
    let a = r.msg(2, WorkerMessage::Cancelled { job: job(1) });
    assert_eq!(report(&a).outcome, Outcome::Cancelled);
}

#[test]
fn a_result_then_an_exit_keeps_the_result() {
    // The exit is seen first; the result is still in the channel.
    let mut r = Rig::new(settings());
    r.start(0, JobStart::default());
    r.conn.handle_exit(r.at(5), Some(KILLED));
    let a = r.actions();
    assert!(has(&a, |a| matches!(a, Action::Kill)), "leftovers killed");
    assert!(!has(&a, |a| matches!(a, Action::Reap)), "drain first");
    assert!(replies(&a).is_empty());
    let a = r.msg(6, completed(1));
    assert!(replies(&a).is_empty(), "the outcome waits for the reap");
    r.conn.handle_eof(r.at(7));
    let a = r.actions();
    assert!(has(&a, |a| matches!(a, Action::Reap)));
    r.conn
        .handle_reaped(r.at(8), Some(KILLED), LimitReport::default());
    let a = r.actions();
    let rep = report(&a);
    assert_eq!(rep.outcome, Outcome::Completed(b"out".to_vec()));
    assert_eq!(rep.exit, Some(KILLED));
    assert_eq!(rep.trace.reaped, Some(ms(8)));
    // The worker is gone: the next run is refused.
    let a = r.start(9, JobStart::default());
    assert!(matches!(
        replies(&a).as_slice(),
        [Err(RunError::WorkerGone { .. })]
    ));
}

#[test]
fn the_drain_is_bounded_and_not_early() {
    let mut r = Rig::new(settings());
    r.start(0, JobStart::default());
    r.conn.handle_exit(r.at(10), Some(ExitStatus::Code(0)));
    r.actions();
    assert_eq!(r.conn.poll_timeout(), Some(r.at(40)));
    assert!(r.time(39).is_empty());
    let a = r.time(40);
    assert!(has(&a, |a| matches!(a, Action::Reap)));
    r.conn
        .handle_reaped(r.at(41), Some(ExitStatus::Code(0)), LimitReport::default());
    let a = r.actions();
    assert_eq!(
        report(&a).outcome,
        Outcome::Failed(crate::Failure::ExitedWithoutResult)
    );
}

#[test]
fn eof_mid_job_without_an_exit_is_killed_after_the_drain_timeout() {
    let mut r = Rig::new(settings());
    r.start(0, JobStart::default());
    r.conn.handle_eof(r.at(10));
    assert!(r.actions().is_empty());
    assert!(r.time(39).is_empty());
    let a = r.time(40);
    assert!(has(&a, |a| matches!(a, Action::Kill)));
    let a = r.exit_and_reap(41, KILLED);
    let rep = report(&a);
    assert_eq!(rep.outcome, Outcome::Killed);
    assert_eq!(rep.stage, Some(Stage::Kill));
}

#[test]
fn eof_while_idle_then_exit_is_reaped_and_later_runs_are_refused() {
    let mut r = Rig::new(settings());
    r.conn.handle_eof(r.at(1));
    assert!(r.actions().is_empty());
    let a = r.start(2, JobStart::default());
    assert!(sent(&a).is_empty());
    assert!(matches!(
        replies(&a).as_slice(),
        [Err(RunError::WorkerGone { .. })]
    ));
    let a = r.exit_and_reap(3, ExitStatus::Code(0));
    assert!(has(&a, |a| matches!(a, Action::Reap)));
    assert!(replies(&a).is_empty());
}

#[test]
fn a_stalled_partial_frame_is_a_violation_at_its_deadline() {
    let mut r = Rig::new(settings());
    r.start(0, JobStart::default());
    r.conn.handle_partial(r.at(10), true);
    // More bytes of the same frame do not re-arm it.
    r.conn.handle_partial(r.at(30), true);
    assert!(r.time(59).is_empty());
    let a = r.time(60);
    assert!(has(&a, |a| matches!(a, Action::Kill)));
    let a = r.exit_and_reap(61, KILLED);
    assert_eq!(
        report(&a).violation,
        Some(Violation::StalledFrame { timeout: ms(50) })
    );
}

#[test]
fn a_completed_frame_restarts_the_stall_bound() {
    let mut r = Rig::new(settings());
    r.conn.handle_partial(r.at(10), true);
    r.conn.handle_message(r.at(50), WorkerMessage::Heartbeat);
    r.conn.handle_partial(r.at(50), true); // leftovers: a new frame
    assert!(r.time(99).is_empty());
    assert!(has(&r.time(100), |a| matches!(a, Action::Kill)));
}

#[test]
fn no_deadline_fires_early_however_large() {
    let huge = Settings {
        frame_timeout: Duration::from_secs(100 * 365 * 24 * 3600),
        unresponsive_after: Some(Duration::MAX),
        ..settings()
    };
    let mut r = Rig::new(huge);
    r.start(
        0,
        JobStart {
            timeout: Some(Duration::MAX),
            ..JobStart::default()
        },
    );
    r.conn.handle_partial(r.at(0), true);
    let due = r
        .conn
        .poll_timeout()
        .expect("the frame bound is representable");
    assert!(due >= r.t0 + Duration::from_secs(100 * 365 * 24 * 3600));
    r.actions();
    assert!(r.time(1_000_000_000).is_empty());
}

#[test]
fn a_silent_worker_is_cancelled_unresponsive_and_the_ladder_runs_on() {
    let mut r = Rig::new(Settings {
        unresponsive_after: Some(ms(1000)),
        ..settings()
    });
    r.start(0, JobStart::default());
    // Any frame is a sign of life.
    r.msg(600, WorkerMessage::Heartbeat);
    assert!(r.time(1599).is_empty());
    let a = r.time(1600);
    assert!(matches!(
        sent(&a).as_slice(),
        [SupervisorMessage::Cancel {
            reason: CancelReason::Unresponsive,
            ..
        }]
    ));
    // Stopped: it answers nothing. The polite signal and SIGCONT, then SIGKILL.
    let a = r.time(1700);
    assert!(matches!(a.as_slice(), [Action::Signal, Action::Continue]));
    let a = r.time(1800);
    assert!(matches!(a.as_slice(), [Action::Kill]));
    let a = r.exit_and_reap(1801, KILLED);
    let rep = report(&a);
    assert_eq!(rep.reason, Some(CancelReason::Unresponsive));
    assert_eq!(rep.outcome, Outcome::Killed);
    assert_eq!(rep.stage, Some(Stage::Kill));
}

#[test]
fn a_silent_worker_stopped_by_the_polite_signal_is_terminated() {
    let mut r = Rig::new(Settings {
        unresponsive_after: Some(ms(1000)),
        ..settings()
    });
    r.start(0, JobStart::default());
    r.time(1000);
    r.time(1100);
    let a = r.exit_and_reap(1150, TERMED);
    let rep = report(&a);
    assert_eq!(rep.outcome, Outcome::Terminated);
    assert_eq!(rep.reason, Some(CancelReason::Unresponsive));
    assert_eq!(rep.stage, Some(Stage::Signal));
}

#[test]
fn an_idle_unresponsive_worker_is_killed_and_the_error_says_why() {
    let mut r = Rig::new(Settings {
        unresponsive_after: Some(ms(1000)),
        ..settings()
    });
    assert!(r.time(999).is_empty());
    let a = r.time(1000);
    assert!(matches!(a.as_slice(), [Action::Kill, Action::Close]));
    r.exit_and_reap(1001, KILLED);
    let a = r.start(1002, JobStart::default());
    match replies(&a).as_slice() {
        [Err(RunError::WorkerGone { violation, status })] => {
            assert_eq!(
                *violation,
                Some(Violation::Unresponsive { after: ms(1000) })
            );
            assert_eq!(*status, Some(KILLED));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn liveness_is_paused_with_the_tree() {
    let mut r = Rig::new(Settings {
        unresponsive_after: Some(ms(1000)),
        ..settings()
    });
    r.conn.handle_pause(r.at(500));
    assert_eq!(r.conn.poll_timeout(), None);
    assert!(r.time(5000).is_empty());
    r.conn.handle_resume(r.at(10_000));
    assert!(r.actions().is_empty());
    assert_eq!(r.conn.poll_timeout(), Some(r.at(10_500)));
}

#[test]
fn a_pause_moves_the_job_timeout_and_the_ladder_and_owes_sigcont() {
    let mut r = Rig::new(settings());
    r.start(
        0,
        JobStart {
            timeout: Some(ms(100)),
            ..JobStart::default()
        },
    );
    r.conn.handle_pause(r.at(50));
    assert!(r.time(1000).is_empty());
    r.conn.handle_resume(r.at(1050));
    assert!(r.actions().is_empty());
    assert!(r.time(1099).is_empty());
    let a = r.time(1100);
    assert!(matches!(
        sent(&a).as_slice(),
        [SupervisorMessage::Cancel {
            reason: CancelReason::Timeout,
            ..
        }]
    ));
    // The polite signal while suspended: its SIGCONT waits for the resume.
    r.conn.handle_pause(r.at(1150));
    r.conn.handle_cancel(r.at(1150), CancelReason::Requested);
    r.conn.handle_kill(r.at(1160));
    let a = r.actions();
    assert!(
        matches!(a.as_slice(), [Action::Kill]),
        "a kill is never delayed: {a:?}"
    );
}

#[test]
fn the_polite_signal_while_suspended_sends_sigcont_on_resume() {
    let mut r = Rig::new(Settings {
        protocol: false,
        ..settings()
    });
    r.start(0, JobStart::default());
    r.conn.handle_pause(r.at(1));
    r.conn.handle_cancel(r.at(2), CancelReason::Requested);
    let a = r.actions();
    assert!(matches!(a.as_slice(), [Action::Signal]));
    r.conn.handle_resume(r.at(500));
    let a = r.actions();
    assert!(matches!(a.as_slice(), [Action::Continue]));
    // kill_after counts from the resume.
    assert_eq!(r.conn.poll_timeout(), Some(r.at(600)));
}

#[test]
fn a_kill_pending_reports_at_once_and_reaps_later_without_a_second_report() {
    let mut r = Rig::new(settings());
    r.start(0, JobStart::default());
    r.conn.handle_kill(r.at(1));
    assert!(matches!(r.actions().as_slice(), [Action::Kill]));
    let a = r.time(101);
    let rep = report(&a);
    assert_eq!(rep.outcome, Outcome::Killed);
    assert_eq!(rep.exit, None);
    assert_eq!(rep.trace.kill_pending, Some(ms(101)));
    assert!(!r.conn.takes_requests(), "still reaping");
    let a = r.exit_and_reap(5000, KILLED);
    assert!(replies(&a).is_empty());
    assert!(r.conn.takes_requests());
}

#[test]
fn a_plain_program_that_ended_before_the_run_still_reports() {
    let mut r = Rig::new(Settings {
        protocol: false,
        ..settings()
    });
    let a = r.exit_and_reap(5, ExitStatus::Code(3));
    assert!(replies(&a).is_empty());
    let a = r.start(9, JobStart::default());
    let rep = report(&a);
    assert_eq!(rep.outcome, Outcome::Failed(crate::Failure::ExitCode(3)));
    assert_eq!(rep.trace.exited, Some(Duration::ZERO));
    let a = r.start(10, JobStart::default());
    assert!(matches!(
        replies(&a).as_slice(),
        [Err(RunError::WorkerGone { .. })]
    ));
}

/// A memory limit in a cgroup whose OOM killer killed `oom_kills` processes.
fn memory_limit(oom_kills: u64) -> LimitReport {
    LimitReport {
        limits: vec![LimitEntry {
            kind: LimitKind::Memory,
            value: 64 << 20,
            mechanism: Mechanism::CgroupV2,
            hit: Some(oom_kills > 0),
            peak: Some(64 << 20),
            oom_kills: Some(oom_kills),
        }],
        sandbox: Vec::new(),
    }
}

#[test]
fn an_oom_kill_reported_at_the_reap_is_killed_with_the_limit_named() {
    let mut r = Rig::new(Settings {
        protocol: false,
        ..settings()
    });
    r.start(0, JobStart::default());
    r.conn.handle_exit(r.at(5), Some(KILLED));
    assert!(has(&r.actions(), |a| matches!(a, Action::Reap)));
    r.conn.handle_reaped(r.at(6), Some(KILLED), memory_limit(1));
    let a = r.actions();
    let rep = report(&a);
    assert_eq!(rep.outcome, Outcome::Killed);
    assert_eq!(rep.limit, Some(LimitKind::Memory));
    assert_eq!(rep.limits, memory_limit(1));
    assert_eq!(rep.stage, None, "warden sent nothing");
}

#[test]
fn a_limit_reached_but_not_deciding_is_reported_and_not_named() {
    // A SIGKILL with no OOM kill counted is a crash, not the limit's doing.
    let mut r = Rig::new(Settings {
        protocol: false,
        ..settings()
    });
    r.start(0, JobStart::default());
    r.conn.handle_exit(r.at(5), Some(KILLED));
    r.actions();
    r.conn.handle_reaped(r.at(6), Some(KILLED), memory_limit(0));
    let a = r.actions();
    let rep = report(&a);
    assert_eq!(rep.outcome, Outcome::Crashed(KILLED));
    assert_eq!(rep.limit, None);
    assert_eq!(rep.limits, memory_limit(0));
}

#[test]
fn a_plain_program_gets_no_payload() {
    let mut r = Rig::new(Settings {
        protocol: false,
        ..settings()
    });
    let a = r.start(
        0,
        JobStart {
            payload: b"x".to_vec(),
            ..JobStart::default()
        },
    );
    assert!(matches!(
        replies(&a).as_slice(),
        [Err(RunError::PayloadForPlainProgram)]
    ));
}

#[test]
fn shutdown_sends_shutdown_then_runs_the_ladder_until_the_reap() {
    let mut r = Rig::new(settings());
    r.conn.handle_shutdown(r.at(0));
    let a = r.actions();
    assert!(matches!(sent(&a).as_slice(), [SupervisorMessage::Shutdown]));
    // What an exiting worker says does not matter.
    assert!(r.msg(1, completed(7)).is_empty());
    let a = r.time(100);
    assert!(matches!(a.as_slice(), [Action::Signal, Action::Continue]));
    let a = r.exit_and_reap(150, TERMED);
    assert!(matches!(
        a.last(),
        Some(Action::ShutdownDone(Some(status))) if *status == TERMED
    ));
    assert!(r.conn.is_stopped());
}

#[test]
fn idle_violations_kill_and_name_the_violation() {
    let cases: Vec<(WorkerMessage, Violation)> = vec![
        (
            completed(4),
            Violation::NotRunning {
                kind: "completed",
                job: job(4),
            },
        ),
        (
            WorkerMessage::Hello {
                protocol_version: 1,
                pid: 1,
                sdk_version: "x".into(),
            },
            Violation::RepeatedHello,
        ),
    ];
    for (msg, violation) in cases {
        let mut r = Rig::new(settings());
        let a = r.msg(1, msg);
        assert!(matches!(a.as_slice(), [Action::Kill, Action::Close]));
        r.exit_and_reap(2, KILLED);
        let a = r.start(3, JobStart::default());
        assert!(matches!(
            replies(&a).as_slice(),
            [Err(RunError::WorkerGone { violation: Some(v), .. })] if *v == violation
        ));
    }
    let mut r = Rig::new(settings());
    r.conn.handle_invalid(r.at(1), DecodeError::Empty);
    assert!(matches!(
        r.actions().as_slice(),
        [Action::Kill, Action::Close]
    ));
}

#[test]
fn a_result_for_another_job_during_a_job_is_a_violation() {
    let mut r = Rig::new(settings());
    r.start(0, JobStart::default());
    let a = r.msg(1, completed(1001));
    assert!(has(&a, |a| matches!(a, Action::Kill)));
    let a = r.exit_and_reap(2, KILLED);
    assert_eq!(
        report(&a).violation,
        Some(Violation::NotRunning {
            kind: "completed",
            job: job(1001)
        })
    );
}

#[test]
fn progress_is_sanitised_and_only_for_a_caller_who_wants_it() {
    let mut r = Rig::new(settings());
    r.start(
        0,
        JobStart {
            wants_progress: true,
            ..JobStart::default()
        },
    );
    let a = r.msg(
        1,
        WorkerMessage::Progress {
            job: job(1),
            fraction: Some(7.0),
            text: Some("x".repeat(1000)),
        },
    );
    match a.as_slice() {
        [Action::Progress(p)] => {
            assert_eq!(p.fraction, Some(1.0));
            assert_eq!(p.text.as_ref().map(String::len), Some(256));
        }
        other => panic!("{other:?}"),
    }
    let mut r = Rig::new(settings());
    r.start(0, JobStart::default());
    let a = r.msg(
        1,
        WorkerMessage::Progress {
            job: job(1),
            fraction: None,
            text: None,
        },
    );
    assert!(a.is_empty());
}

fn progress(n: u64) -> WorkerMessage {
    WorkerMessage::Progress {
        job: job(n),
        fraction: None,
        text: None,
    }
}

/// The one `Cancel` sent, with its wire reason.
fn cancel_sent(actions: &[Action]) -> Option<CancelReason> {
    match sent(actions).as_slice() {
        [SupervisorMessage::Cancel { reason, .. }] => Some(*reason),
        _ => None,
    }
}

#[test]
fn no_progress_for_the_bound_cancels_the_job_through_its_ladder() {
    let mut r = Rig::new(settings());
    r.start(
        0,
        JobStart {
            no_progress: Some(ms(100)),
            ..JobStart::default()
        },
    );
    assert_eq!(r.conn.poll_timeout(), Some(r.at(100)));
    // Each progress report moves the bound; heartbeats do not (they are liveness).
    assert!(r.msg(90, progress(1)).is_empty());
    assert!(r.msg(150, WorkerMessage::Heartbeat).is_empty());
    assert!(r.time(189).is_empty());
    let a = r.time(190);
    // v1 on the wire: a version 1 worker may not know tag 4.
    assert_eq!(cancel_sent(&a), Some(CancelReason::Timeout));
    let a = r.msg(195, WorkerMessage::Cancelled { job: job(1) });
    let rep = report(&a);
    assert_eq!(rep.outcome, Outcome::Cancelled);
    assert_eq!(rep.reason, Some(CancelReason::NoProgress));
    assert_eq!(rep.stage, Some(Stage::Cooperative));
    assert_eq!(rep.trace.cancel_requested, Some(ms(190)));
    // The worker is reused, and the next job has no bound unless it asks for one.
    r.start(200, JobStart::default());
    assert_eq!(r.conn.poll_timeout(), None);
}

#[test]
fn no_progress_is_off_for_a_plain_program_and_after_the_result() {
    let mut r = Rig::new(Settings {
        protocol: false,
        ..settings()
    });
    r.start(
        0,
        JobStart {
            no_progress: Some(ms(100)),
            ..JobStart::default()
        },
    );
    assert_eq!(
        r.conn.poll_timeout(),
        None,
        "a plain program sends no progress"
    );

    let mut r = Rig::new(settings());
    r.start(
        0,
        JobStart {
            no_progress: Some(ms(100)),
            ..JobStart::default()
        },
    );
    let rep = report(&r.msg(50, completed(1))).clone();
    assert_eq!(rep.outcome, Outcome::Completed(b"out".to_vec()));
    assert_eq!(r.conn.poll_timeout(), None);
    assert!(r.time(500).is_empty());
}

#[test]
fn progress_extends_the_timeout_up_to_the_cap() {
    let mut r = Rig::new(settings());
    r.start(
        0,
        JobStart {
            timeout: Some(ms(100)),
            extension: Some(TimeoutExtension {
                by: ms(100),
                cap: ms(250),
            }),
            ..JobStart::default()
        },
    );
    assert_eq!(r.conn.poll_timeout(), Some(r.at(100)));
    // At least `by` from now...
    r.msg(80, progress(1));
    assert_eq!(r.conn.poll_timeout(), Some(r.at(180)));
    // ...never earlier than it was...
    r.msg(81, progress(1));
    assert_eq!(r.conn.poll_timeout(), Some(r.at(181)));
    r.msg(10, progress(1));
    assert_eq!(
        r.conn.poll_timeout(),
        Some(r.at(181)),
        "never moved earlier"
    );
    // ...and never past the cap.
    r.msg(170, progress(1));
    assert_eq!(r.conn.poll_timeout(), Some(r.at(250)));
    r.msg(240, progress(1));
    assert_eq!(r.conn.poll_timeout(), Some(r.at(250)));
    assert!(r.time(249).is_empty());
    let a = r.time(250);
    assert_eq!(cancel_sent(&a), Some(CancelReason::Timeout));
    let rep = report(&r.msg(260, WorkerMessage::Cancelled { job: job(1) })).clone();
    assert_eq!(rep.reason, Some(CancelReason::Timeout));
    assert_eq!(rep.trace.deadline, Some(ms(250)), "the effective deadline");
}

#[test]
fn without_progress_the_timeout_is_not_extended_and_reported_as_set() {
    let mut r = Rig::new(settings());
    r.start(
        0,
        JobStart {
            timeout: Some(ms(100)),
            extension: Some(TimeoutExtension {
                by: ms(100),
                cap: ms(250),
            }),
            ..JobStart::default()
        },
    );
    let rep = report(&r.msg(50, completed(1))).clone();
    assert_eq!(rep.trace.deadline, Some(ms(100)));
    // No timeout: nothing to extend.
    r.start(
        60,
        JobStart {
            extension: Some(TimeoutExtension {
                by: ms(100),
                cap: ms(250),
            }),
            ..JobStart::default()
        },
    );
    r.msg(70, progress(2));
    assert_eq!(r.conn.poll_timeout(), None);
}

#[test]
fn a_pause_moves_the_no_progress_bound_the_extension_and_its_cap() {
    let mut r = Rig::new(settings());
    r.start(
        0,
        JobStart {
            timeout: Some(ms(100)),
            no_progress: Some(ms(80)),
            extension: Some(TimeoutExtension {
                by: ms(100),
                cap: ms(250),
            }),
            ..JobStart::default()
        },
    );
    r.msg(50, progress(1));
    // Deadlines now: no progress at 130, timeout at 150, cap at 250.
    r.conn.handle_pause(r.at(60));
    assert!(r.time(5000).is_empty());
    r.conn.handle_resume(r.at(1060));
    assert_eq!(r.conn.poll_timeout(), Some(r.at(1130)));
    // The cap moved by the pause too: 1250, not 250.
    r.msg(1120, progress(1));
    assert_eq!(r.conn.poll_timeout(), Some(r.at(1200)));
    r.msg(1190, progress(1));
    assert_eq!(r.conn.poll_timeout(), Some(r.at(1250)));
    assert!(r.time(1249).is_empty());
    assert_eq!(cancel_sent(&r.time(1250)), Some(CancelReason::Timeout));
    let rep = report(&r.msg(1251, WorkerMessage::Cancelled { job: job(1) })).clone();
    assert_eq!(rep.reason, Some(CancelReason::Timeout));
    assert_eq!(rep.trace.deadline, Some(ms(1250)));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Input {
        Progress,
        Cancel,
        Kill,
        Heartbeat,
        Result(u8),
        Partial,
        Eof,
        Exit,
        Pause,
        Resume,
        Time,
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            Just(Input::Progress),
            Just(Input::Cancel),
            Just(Input::Kill),
            Just(Input::Heartbeat),
            (0u8..3).prop_map(Input::Result),
            Just(Input::Partial),
            Just(Input::Eof),
            Just(Input::Exit),
            Just(Input::Pause),
            Just(Input::Resume),
            Just(Input::Time),
        ]
    }

    /// `watched`: the job has a timeout that progress extends up to a cap, and a no-progress
    /// bound.
    fn check(protocol: bool, live: bool, watched: bool, steps: &[(Input, u64)]) {
        let mut r = Rig::new(Settings {
            protocol,
            unresponsive_after: live.then_some(ms(250)),
            ..settings()
        });
        let start = if watched {
            JobStart {
                timeout: Some(ms(300)),
                no_progress: Some(ms(200)),
                extension: Some(TimeoutExtension {
                    by: ms(150),
                    cap: ms(600),
                }),
                ..JobStart::default()
            }
        } else {
            JobStart::default()
        };
        r.conn.handle_start(r.t0, start);
        r.actions();
        let mut now = 0;
        let mut replies = 0;
        let mut kills_before_exit = 0;
        let mut exited = false;
        let mut reaped = false;
        let mut reap_asked = false;
        for (input, dt) in steps {
            now += dt;
            let t = r.at(now);
            // As the actor: a deadline at or before this input fired first.
            if !matches!(input, Input::Time) && r.conn.poll_timeout().is_some_and(|d| d <= t) {
                r.conn.handle_timeout(t);
            }
            let due = r.conn.poll_timeout();
            match input {
                Input::Progress if protocol && r.conn.is_reading() => {
                    r.conn.handle_message(
                        t,
                        WorkerMessage::Progress {
                            job: job(1),
                            fraction: None,
                            text: None,
                        },
                    );
                }
                Input::Cancel => r.conn.handle_cancel(t, CancelReason::Requested),
                Input::Kill => r.conn.handle_kill(t),
                Input::Heartbeat if protocol && r.conn.is_reading() => {
                    r.conn.handle_message(t, WorkerMessage::Heartbeat);
                }
                Input::Result(kind) if protocol && r.conn.is_reading() => {
                    let msg = match kind {
                        0 => completed(1),
                        1 => WorkerMessage::Cancelled { job: job(1) },
                        _ => WorkerMessage::Failed {
                            job: job(1),
                            error: "e".into(),
                        },
                    };
                    r.conn.handle_message(t, msg);
                }
                Input::Partial if protocol => r.conn.handle_partial(t, true),
                Input::Eof if protocol => r.conn.handle_eof(t),
                Input::Exit if !exited => {
                    exited = true;
                    r.conn.handle_exit(t, Some(KILLED));
                }
                Input::Pause => r.conn.handle_pause(t),
                Input::Resume => r.conn.handle_resume(t),
                Input::Time => {
                    r.conn.handle_timeout(t);
                    if due.is_none_or(|d| t < d) {
                        let early: Vec<Action> = r.actions();
                        prop_assert_no_timer_action(&early);
                    }
                }
                _ => {}
            }
            for action in r.actions() {
                assert!(
                    !reaped
                        || !matches!(
                            action,
                            Action::Send(_)
                                | Action::Signal
                                | Action::Continue
                                | Action::Kill
                                | Action::Reap
                        ),
                    "{action:?} after the reap"
                );
                match action {
                    Action::Reply(_, _) => replies += 1,
                    Action::Kill if !exited => kills_before_exit += 1,
                    Action::Reap => {
                        assert!(!reap_asked, "one reap");
                        reap_asked = true;
                        r.conn
                            .handle_reaped(t, Some(KILLED), LimitReport::default());
                        reaped = true;
                    }
                    _ => {}
                }
            }
            for action in r.actions() {
                if let Action::Reply(_, _) = action {
                    replies += 1;
                }
            }
            assert!(replies <= 1, "one outcome per job");
            assert!(kills_before_exit <= 1, "SIGKILL at most once");
        }
        // Finish: exit, drain, reap; then there is exactly one outcome.
        now += 10_000;
        let t = r.at(now);
        r.conn.handle_resume(t);
        if !exited {
            r.conn.handle_exit(t, Some(KILLED));
        }
        r.conn.handle_timeout(t + ms(10_000));
        for action in r.actions() {
            match action {
                Action::Reply(_, _) => replies += 1,
                Action::Reap if !reaped => {
                    r.conn
                        .handle_reaped(t, Some(KILLED), LimitReport::default());
                }
                _ => {}
            }
        }
        for action in r.actions() {
            if let Action::Reply(_, _) = action {
                replies += 1;
            }
        }
        assert_eq!(replies, 1, "exactly one outcome per job");
    }

    /// Before its deadline, a timeout call does nothing a timer would have done.
    fn prop_assert_no_timer_action(actions: &[Action]) {
        assert!(actions.is_empty(), "fired early: {actions:?}");
    }

    proptest! {
        #[test]
        fn one_outcome_one_kill_nothing_after_the_reap_nothing_early(
            protocol in any::<bool>(),
            live in any::<bool>(),
            watched in any::<bool>(),
            steps in proptest::collection::vec((input(), 0u64..150), 0..40),
        ) {
            check(protocol, live, watched, &steps);
        }
    }
}

// ---- queued jobs (protocol version 2) ----

fn queueing(depth: usize) -> Rig {
    Rig::new(Settings {
        queue_depth: depth,
        ..settings()
    })
}

fn reply_ids(actions: &[Action]) -> Vec<JobId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply(id, _) => Some(*id),
            _ => None,
        })
        .collect()
}

fn timed(ms_: u64) -> JobStart {
    JobStart {
        timeout: Some(ms(ms_)),
        ..JobStart::default()
    }
}

#[test]
fn queued_jobs_go_on_the_wire_at_once_and_start_their_clocks_at_their_turn() {
    let mut r = queueing(3);
    assert!(r.conn.takes_jobs());
    r.start(0, timed(100));
    assert!(r.conn.takes_jobs(), "room for two behind it");
    let a = r.start(1, timed(100));
    assert!(matches!(
        sent(&a).as_slice(),
        [SupervisorMessage::StartJob {
            job: JobId(2),
            deadline_ms: Some(100),
            ..
        }]
    ));
    r.start(2, timed(100));
    assert!(!r.conn.takes_jobs(), "three on the wire: full");
    assert!(
        !r.conn.takes_requests(),
        "no shutdown while jobs are on the wire"
    );
    // Job 1's timeout is the only deadline: queued jobs wait without a clock.
    assert_eq!(r.conn.poll_timeout(), Some(r.at(100)));
    let a = r.msg(50, completed(1));
    assert_eq!(reply_ids(&a), [job(1)]);
    assert_eq!(r.conn.running_job(), Some(job(2)));
    assert!(sent(&a).is_empty(), "job 2 is on the wire already");
    assert_eq!(
        r.conn.poll_timeout(),
        Some(r.at(150)),
        "job 2's clock runs from 50"
    );
    let a = r.msg(60, completed(2));
    let rep = report(&a);
    assert_eq!(rep.job, job(2));
    assert_eq!(
        rep.trace.ended,
        ms(10),
        "timed from its turn, not from its send"
    );
    let a = r.msg(70, completed(3));
    assert_eq!(reply_ids(&a), [job(3)]);
    assert!(r.conn.takes_requests());
}

#[test]
fn a_queued_jobs_timeout_cancels_it_at_its_turn() {
    let mut r = queueing(2);
    r.start(0, JobStart::default());
    r.start(0, timed(30));
    // Far past job 2's timeout as counted from its send: nothing fires while it waits.
    assert!(r.time(500).is_empty());
    r.msg(500, completed(1));
    let a = r.time(530);
    assert!(matches!(
        sent(&a).as_slice(),
        [SupervisorMessage::Cancel {
            job: JobId(2),
            reason: CancelReason::Timeout
        }]
    ));
}

#[test]
fn a_queued_cancel_is_answered_before_its_turn_and_never_escalates() {
    let mut r = queueing(3);
    r.start(0, JobStart::default());
    r.start(0, JobStart::default());
    r.start(0, JobStart::default());
    assert!(r.conn.accepts_cancel_queued(job(3)));
    r.conn
        .handle_cancel_queued(r.at(5), job(3), CancelReason::Requested);
    let a = r.actions();
    assert!(matches!(
        sent(&a).as_slice(),
        [SupervisorMessage::Cancel {
            job: JobId(3),
            reason: CancelReason::Requested
        }]
    ));
    assert!(!r.conn.accepts_cancel_queued(job(3)), "once per job");
    // No ladder for a queued job: the running one is fine and nothing else is due.
    assert_eq!(r.conn.poll_timeout(), None);
    let a = r.msg(8, WorkerMessage::Cancelled { job: job(3) });
    let rep = report(&a);
    assert_eq!(rep.job, job(3));
    assert_eq!(rep.outcome, Outcome::Cancelled);
    assert!(!rep.started);
    assert_eq!(rep.reason, Some(CancelReason::Requested));
    assert_eq!(
        r.conn.running_job(),
        Some(job(1)),
        "the running job goes on"
    );
    assert!(r.conn.takes_jobs(), "its room is free again");
    r.msg(10, completed(1));
    r.msg(12, completed(2));
    assert!(r.conn.takes_requests());
}

#[test]
fn a_queued_cancel_that_meets_its_job_started_runs_the_ladder_from_its_turn() {
    let mut r = queueing(2);
    r.start(0, JobStart::default());
    r.start(0, JobStart::default());
    r.conn
        .handle_cancel_queued(r.at(5), job(2), CancelReason::Requested);
    r.actions();
    // Job 1's result crossed the cancel: the worker started job 2 before it read the cancel.
    let a = r.msg(10, completed(1));
    assert_eq!(reply_ids(&a), [job(1)]);
    assert!(
        sent(&a).is_empty(),
        "its Cancel went out already: not a second one"
    );
    assert_eq!(
        r.conn.poll_timeout(),
        Some(r.at(110)),
        "the grace runs from its turn"
    );
    let a = r.msg(20, WorkerMessage::Cancelled { job: job(2) });
    let rep = report(&a);
    assert_eq!(rep.outcome, Outcome::Cancelled);
    assert!(rep.started);
    assert_eq!(rep.stage, Some(Stage::Cooperative));
    assert!(r.conn.takes_requests());
}

#[test]
fn queued_jobs_come_back_unstarted_when_the_worker_is_doomed() {
    let mut r = queueing(3);
    r.start(0, timed(10));
    r.start(0, JobStart::default());
    r.start(0, JobStart::default());
    r.conn
        .handle_cancel_queued(r.at(1), job(3), CancelReason::Requested);
    r.actions();
    // Job 1 ignores its timeout: the polite signal dooms the worker and what waits behind.
    r.time(10);
    let a = r.time(110);
    assert!(has(&a, |a| matches!(a, Action::Signal)));
    let mut ids = reply_ids(&a);
    ids.sort();
    assert_eq!(ids, [job(2), job(3)]);
    for reply in replies(&a) {
        match reply {
            Err(RunError::WorkerGone { .. }) => {}
            Ok(rep) => {
                assert_eq!(rep.job, job(3), "the one cancelled before its turn");
                assert_eq!(rep.outcome, Outcome::Cancelled);
                assert!(!rep.started);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!r.conn.takes_jobs());
    let a = r.exit_and_reap(120, TERMED);
    assert_eq!(reply_ids(&a), [job(1)]);
    assert_eq!(report(&a).outcome, Outcome::Terminated);
}

#[test]
fn messages_for_a_queued_job_are_violations() {
    for msg in [
        completed(2),
        WorkerMessage::Progress {
            job: job(2),
            fraction: None,
            text: None,
        },
        // Never asked for: no Cancel went out for job 2.
        WorkerMessage::Cancelled { job: job(2) },
    ] {
        let mut r = queueing(2);
        r.start(0, JobStart::default());
        r.start(0, JobStart::default());
        let a = r.msg(5, msg.clone());
        assert!(has(&a, |a| matches!(a, Action::Kill)), "{msg:?}");
        assert_eq!(reply_ids(&a), [job(2)], "{msg:?}: job 2 never ran");
        assert!(
            matches!(replies(&a)[0], Err(RunError::WorkerGone { .. })),
            "{msg:?}"
        );
        let a = r.exit_and_reap(6, KILLED);
        let rep = report(&a);
        assert_eq!(rep.job, job(1));
        assert!(rep.violation.is_some(), "{msg:?}");
    }
}

#[test]
fn a_depth_of_one_queues_nothing() {
    let mut r = queueing(1);
    r.start(0, JobStart::default());
    assert!(!r.conn.takes_jobs());
}

#[test]
fn nothing_is_queued_behind_a_job_being_cancelled() {
    let mut r = queueing(3);
    r.start(0, JobStart::default());
    r.conn.handle_cancel(r.at(1), CancelReason::Requested);
    r.actions();
    assert!(!r.conn.takes_jobs(), "its ladder may end the worker");
}
