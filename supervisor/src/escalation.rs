//! The escalation ladder: how a job is stopped, as a sans-IO state machine.
//!
//! [`Escalation`] decides *when* to escalate and *what* to do; it never does it. Time comes in as
//! an argument (`now: Instant`), actions come out of [`Escalation::poll_action`], and the next
//! wake-up comes out of [`Escalation::poll_timeout`]. There is no clock read, no tokio, no
//! process and no signal in here, so every path is tested on a virtual clock (the model is
//! quinn-proto's `Connection::handle_timeout` / `poll_timeout`).
//!
//! # The ladder
//!
//! ```text
//!            handle_cancel            grace              kill_after          reap_timeout
//!  Running ───────────────► Cooperative ──────► Signal ────────────► Kill ───────────────► (kill pending)
//!     │      SendCancel                 SignalGroup          KillGroup          KillPending
//!     │                                     ▲                  ▲                no more deadlines:
//!     ├── handle_cancel, plain program ─────┘                  │                the actor keeps
//!     └── handle_kill (from Running, Cooperative or Signal) ───┘                waiting for exit
//!
//!  handle_result before any SignalGroup/KillGroup ──► finished, worker reusable
//!  handle_result after a SignalGroup/KillGroup   ──► doomed: the ladder runs on until exit
//!  handle_exit, anywhere                         ──► finished, nothing more ever
//! ```
//!
//! A cooperative worker (one that speaks the protocol) gets [`Action::SendCancel`] first and
//! [`Deadlines::grace`] to stop; a plain program starts at [`Action::SignalGroup`]. Each later
//! deadline is measured from the moment the previous action was decided (the `now` passed to the
//! call that emitted it), so a late wake-up never shortens the next stage. A zero duration means
//! "the next stage at once": every `handle_*` call fires everything due at its `now` before it
//! returns, so one call may emit several actions, always in ladder order.
//!
//! # Driving it
//!
//! The actor around it is thin: on every event call the matching `handle_*`, then drain
//! [`Escalation::poll_action`] and perform each action in order, then sleep until
//! [`Escalation::poll_timeout`] (if any) and call [`Escalation::handle_timeout`]. One
//! `Escalation` covers one job: once it finished on a result, a protocol violation while the
//! worker idles is handled with a fresh `Escalation` and [`Escalation::handle_kill`].
//!
//! ```
//! use std::time::{Duration, Instant};
//! use warden::escalation::{Action, Deadlines, Escalation, Stage};
//! use warden_protocol::CancelReason;
//!
//! let secs = Duration::from_secs;
//! let t0 = Instant::now(); // a virtual clock: only offsets from t0 matter
//! let mut ladder = Escalation::new(Deadlines::default(), true);
//!
//! ladder.handle_cancel(t0, CancelReason::Timeout);
//! assert_eq!(ladder.poll_action(), Some(Action::SendCancel(CancelReason::Timeout)));
//! assert_eq!(ladder.poll_timeout(), Some(t0 + secs(5)));
//!
//! // The worker ignored the cancel for the whole grace period.
//! ladder.handle_timeout(t0 + secs(5));
//! assert_eq!(ladder.poll_action(), Some(Action::SignalGroup));
//! assert_eq!(ladder.stage(), Some(Stage::Signal));
//!
//! // The polite signal ended it.
//! ladder.handle_exit(t0 + secs(6));
//! assert!(ladder.is_finished());
//! assert_eq!(ladder.poll_action(), None);
//! assert_eq!(ladder.poll_timeout(), None);
//! ```
//!
//! # Pausing
//!
//! While the worker's tree is suspended (job control: the supervisor was stopped with Ctrl-Z),
//! the job is not running, and a stop must not count against its budget.
//! [`Escalation::pause`] stops the ladder's clock: no deadline is due while paused, and a stage
//! decided while paused (a cancel, say) arms its deadline from the moment of the pause.
//! [`Escalation::resume`] starts the clock again, every pending deadline moved later by the
//! time spent paused, and fires what is due. Events are still accepted while paused, and
//! their actions come out at once: a kill is never delayed by a pause.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use warden::escalation::{Action, Deadlines, Escalation};
//! use warden_protocol::CancelReason;
//!
//! let secs = Duration::from_secs;
//! let t0 = Instant::now();
//! let mut ladder = Escalation::new(Deadlines::default(), true);
//! ladder.handle_cancel(t0, CancelReason::Timeout);
//! assert_eq!(ladder.poll_action(), Some(Action::SendCancel(CancelReason::Timeout)));
//!
//! ladder.pause(t0 + secs(1)); // stopped after 1 s of its 5 s grace
//! assert_eq!(ladder.poll_timeout(), None);
//! ladder.resume(t0 + secs(61)); // a minute later: 4 s of grace are left
//! assert_eq!(ladder.poll_timeout(), Some(t0 + secs(65)));
//! ```
//!
//! # Invariants
//!
//! These hold for every sequence of calls, with any deadlines (zero and [`Duration::MAX`]
//! included) and any `now`, even one earlier than a previous call's; the property tests below
//! check each of them.
//!
//! 1. Actions come out in ladder order, each at most once:
//!    `SendCancel < SignalGroup < KillGroup < KillPending`. A stage may be skipped (a plain
//!    program never gets `SendCancel`, [`Escalation::handle_kill`] skips to `KillGroup`), never
//!    repeated: SIGKILL is asked for at most once.
//! 2. No action before the first [`Escalation::handle_cancel`] or [`Escalation::handle_kill`].
//! 3. No action after [`Escalation::handle_exit`], nor after a result that finished the ladder:
//!    actions still queued at that point are dropped, never handed out.
//! 4. [`Escalation::poll_timeout`] is `None` once finished and after `KillPending`; after any
//!    `handle_*(now)` call it is `None` or later than `now` (everything due has fired).
//! 5. [`Escalation::stage`] and the action fields of [`Trace`] describe exactly the actions
//!    handed out by [`Escalation::poll_action`]: a field is `Some` if and only if its action was
//!    handed out, and holds the `now` at which that action was decided.
//! 6. The first accepted cancel reason wins; [`Trace::cancel_requested`] is `Some` exactly when
//!    [`Escalation::reason`] is.
//! 7. A deadline too far away to represent as an `Instant` never fires (no overflow panic): pass
//!    [`Duration::MAX`] for "wait forever".
//! 8. Nothing panics and memory is bounded: at most four actions are ever queued.
//! 9. [`Escalation::poll_timeout`] is `None` while paused, and with time that only moves
//!    forward, a stage that fires on a timer fires only once its deadline has passed in
//!    running time (wall time minus the time spent paused).

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use warden_protocol::CancelReason;

use crate::error::ParseNameError;

/// How long each stage of the ladder waits before escalating to the next.
///
/// A zero duration means "the next stage at once"; [`Duration::MAX`] (or anything too large to
/// add to an `Instant`) means "never escalate past this stage on a timer".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Deadlines {
    /// After [`Action::SendCancel`]: how long a cooperative worker has to stop on its own before
    /// the polite signal.
    pub grace: Duration,
    /// After [`Action::SignalGroup`]: how long the process group has to exit before SIGKILL.
    pub kill_after: Duration,
    /// After [`Action::KillGroup`]: how long to wait for the process to be reaped before
    /// reporting [`Action::KillPending`].
    pub reap_timeout: Duration,
}

impl Default for Deadlines {
    /// 5 s for each stage.
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(5),
            kill_after: Duration::from_secs(5),
            reap_timeout: Duration::from_secs(5),
        }
    }
}

/// A rung of the ladder. Ordered by severity: `Cooperative < Signal < Kill`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Stage {
    /// A Cancel message was sent; the worker is expected to stop on its own.
    Cooperative,
    /// The polite signal (then SIGCONT) was sent to the process group.
    Signal,
    /// SIGKILL was sent to the process group.
    Kill,
}

impl Stage {
    /// Every stage, from the mildest.
    pub const ALL: [Stage; 3] = [Stage::Cooperative, Stage::Signal, Stage::Kill];

    /// Lower-case name used in reports and logs: `cooperative`, `signal`, `kill`.
    /// [`FromStr`] takes it back.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Cooperative => "cooperative",
            Stage::Signal => "signal",
            Stage::Kill => "kill",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = ParseNameError;

    /// The stage [`Stage::as_str`] names (exactly: lower case).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.as_str() == name)
            .ok_or_else(|| ParseNameError::new("stage", name))
    }
}

/// What the actor must do now. Emitted by [`Escalation::poll_action`], in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Stage 1: write a `Cancel { job, reason }` message to the worker.
    SendCancel(CancelReason),
    /// Stage 2: send the polite signal (SIGTERM by default) to the process group, then SIGCONT so
    /// a stopped worker can act on it.
    SignalGroup,
    /// Stage 3: SIGKILL the process group.
    KillGroup,
    /// Still not reaped `reap_timeout` after SIGKILL (D state, frozen cgroup...): report it and
    /// keep waiting for the exit without blocking anything else. Emitted at most once.
    KillPending,
}

impl Action {
    /// The stage this action belongs to ([`Action::KillPending`] is part of [`Stage::Kill`]).
    pub fn stage(self) -> Stage {
        match self {
            Action::SendCancel(_) => Stage::Cooperative,
            Action::SignalGroup => Stage::Signal,
            Action::KillGroup | Action::KillPending => Stage::Kill,
        }
    }
}

/// When each step of the ladder happened, for reports and outcome decisions.
///
/// The action fields (`signal_sent`, `kill_sent`, `kill_pending`) are `Some` exactly when the
/// action was handed out by [`Escalation::poll_action`], and hold the `now` at which it was
/// decided. The event fields record the first time each input was seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Trace {
    /// The first accepted [`Escalation::handle_cancel`].
    pub cancel_requested: Option<Instant>,
    /// When [`Action::SignalGroup`] was decided; set once it is handed out.
    pub signal_sent: Option<Instant>,
    /// When [`Action::KillGroup`] was decided; set once it is handed out.
    pub kill_sent: Option<Instant>,
    /// When [`Action::KillPending`] was decided; set once it is handed out.
    pub kill_pending: Option<Instant>,
    /// The first [`Escalation::handle_exit`].
    pub exited: Option<Instant>,
    /// The first [`Escalation::handle_result`], even one that arrived after the exit (the
    /// channel is drained after the exit is observed) or after a signal.
    pub result: Option<Instant>,
}

/// How the ladder finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// The job's terminal message arrived before any signal: the worker lives on.
    Result,
    /// The process exited.
    Exit,
}

/// Where the ladder stands. Each running state carries the deadline of its next step; `None`
/// means no timer (never reached for `Running`, unrepresentable or already fired otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No cancel and no kill yet.
    Running,
    /// `SendCancel` decided; `SignalGroup` at the deadline.
    Cooperative { signal_at: Option<Instant> },
    /// `SignalGroup` decided; `KillGroup` at the deadline.
    Signalled { kill_at: Option<Instant> },
    /// `KillGroup` decided; `KillPending` at the deadline, `None` once reported.
    Killed { pending_at: Option<Instant> },
    /// Nothing more will happen.
    Finished(Finish),
}

/// The escalation ladder of one job: feed it events and time, take actions out.
///
/// See the [module documentation](self) for the ladder, how to drive it and its invariants.
#[derive(Debug, Clone)]
pub struct Escalation {
    deadlines: Deadlines,
    cooperative: bool,
    state: State,
    reason: Option<CancelReason>,
    /// Decided actions not yet handed out, with the `now` at which each was decided. Ladder
    /// order and at-most-once per action bound it to four entries.
    queue: VecDeque<(Action, Instant)>,
    /// The highest stage handed out by `poll_action`.
    delivered: Option<Stage>,
    trace: Trace,
    /// When the clock was stopped ([`Escalation::pause`]), while it is.
    paused_at: Option<Instant>,
}

impl Escalation {
    /// A ladder for a job that has not been asked to stop.
    ///
    /// `cooperative`: the worker speaks the protocol. A plain program's ladder starts at the
    /// signal stage.
    pub fn new(deadlines: Deadlines, cooperative: bool) -> Self {
        Self {
            deadlines,
            cooperative,
            state: State::Running,
            reason: None,
            queue: VecDeque::with_capacity(4),
            delivered: None,
            trace: Trace::default(),
            paused_at: None,
        }
    }

    /// The deadlines this ladder was built with.
    pub fn deadlines(&self) -> Deadlines {
        self.deadlines
    }

    /// Whether the ladder starts with a cooperative cancel.
    pub fn is_cooperative(&self) -> bool {
        self.cooperative
    }

    /// Asks the job to stop: [`Action::SendCancel`] and a grace deadline for a cooperative
    /// worker, [`Action::SignalGroup`] at once for a plain program.
    ///
    /// Only the first cancel counts: a repeat (whatever its reason), a cancel after
    /// [`handle_kill`](Self::handle_kill), and a cancel once finished are ignored.
    pub fn handle_cancel(&mut self, now: Instant, reason: CancelReason) {
        if self.state == State::Running {
            self.reason = Some(reason);
            self.trace.cancel_requested = Some(now);
            if self.cooperative {
                self.queue.push_back((Action::SendCancel(reason), now));
                self.state = State::Cooperative {
                    signal_at: self.clock(now).checked_add(self.deadlines.grace),
                };
            } else {
                self.signal(now);
            }
        }
        self.advance(now);
    }

    /// Jumps straight to [`Action::KillGroup`] (protocol violation, handle dropped), skipping
    /// any stage not reached yet. A no-op once SIGKILL was decided or the ladder finished.
    pub fn handle_kill(&mut self, now: Instant) {
        match self.state {
            State::Running | State::Cooperative { .. } | State::Signalled { .. } => self.kill(now),
            State::Killed { .. } | State::Finished(_) => {}
        }
        self.advance(now);
    }

    /// The job's terminal message arrived.
    ///
    /// Before any signal the ladder is finished: no more actions (a queued `SendCancel` is
    /// dropped, the protocol lets it cross the result anyway) and the worker stays alive and
    /// reusable. Once a signal or SIGKILL was decided the worker is doomed: the ladder keeps
    /// running until [`handle_exit`](Self::handle_exit).
    pub fn handle_result(&mut self, now: Instant) {
        self.trace.result.get_or_insert(now);
        match self.state {
            State::Running | State::Cooperative { .. } => self.finish(Finish::Result),
            State::Signalled { .. } | State::Killed { .. } | State::Finished(_) => {}
        }
        self.advance(now);
    }

    /// The process exited (observed, not necessarily reaped). The ladder is finished: actions
    /// still queued are dropped and none is ever emitted again. A worker that exited is not
    /// reusable, even after a result.
    pub fn handle_exit(&mut self, now: Instant) {
        if self.state != State::Finished(Finish::Exit) {
            self.trace.exited = Some(now);
            self.finish(Finish::Exit);
        }
    }

    /// Advances every stage whose deadline is at or before `now`, possibly several at once.
    /// Does nothing for a `now` before the next deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// The next action to perform, in ladder order; `None` when there is nothing to do now.
    pub fn poll_action(&mut self) -> Option<Action> {
        let (action, at) = self.queue.pop_front()?;
        match action {
            Action::SendCancel(_) => {}
            Action::SignalGroup => self.trace.signal_sent = Some(at),
            Action::KillGroup => self.trace.kill_sent = Some(at),
            Action::KillPending => self.trace.kill_pending = Some(at),
        }
        self.delivered = self.delivered.max(Some(action.stage()));
        Some(action)
    }

    /// Stops the ladder's clock at `now`: the worker's tree is suspended, and the time until
    /// [`resume`](Self::resume) does not count against any deadline. Until then no deadline
    /// is due. A no-op while already paused.
    pub fn pause(&mut self, now: Instant) {
        self.paused_at.get_or_insert(now);
    }

    /// Starts the clock again at `now`: every pending deadline moves later by the time spent
    /// paused (one that can no longer be represented never fires), then whatever is due fires,
    /// as in [`handle_timeout`](Self::handle_timeout) (which is all it does unless paused).
    pub fn resume(&mut self, now: Instant) {
        let Some(at) = self.paused_at.take() else {
            self.advance(now);
            return;
        };
        let stopped = now.saturating_duration_since(at);
        let shift = |t: Option<Instant>| t.and_then(|t| t.checked_add(stopped));
        self.state = match self.state {
            State::Cooperative { signal_at } => State::Cooperative {
                signal_at: shift(signal_at),
            },
            State::Signalled { kill_at } => State::Signalled {
                kill_at: shift(kill_at),
            },
            State::Killed { pending_at } => State::Killed {
                pending_at: shift(pending_at),
            },
            other @ (State::Running | State::Finished(_)) => other,
        };
        self.advance(now);
    }

    /// Whether the clock is stopped ([`pause`](Self::pause) without a
    /// [`resume`](Self::resume) since).
    pub fn is_paused(&self) -> bool {
        self.paused_at.is_some()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next; `None` when nothing is
    /// pending (not cancelled yet, finished, kill pending already reported, or paused).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.paused_at.is_some() {
            return None;
        }
        match self.state {
            State::Cooperative { signal_at: at }
            | State::Signalled { kill_at: at }
            | State::Killed { pending_at: at } => at,
            State::Running | State::Finished(_) => None,
        }
    }

    /// When SIGKILL is due, while the polite signal has been handed out and its deadline runs
    /// (not while paused): the instant at which a driver may kill the tree from elsewhere (a
    /// timer thread) before its own [`handle_timeout`](Self::handle_timeout) can run. `None`
    /// at every other stage.
    pub fn kill_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Signalled { kill_at }
                if self.paused_at.is_none() && self.trace.signal_sent.is_some() =>
            {
                kill_at
            }
            _ => None,
        }
    }

    /// The SIGKILL handed out by [`poll_action`](Self::poll_action) was in fact sent earlier,
    /// at `at` (by a driver's timer thread, at [`kill_deadline`](Self::kill_deadline)): the
    /// trace says so. A no-op before that SIGKILL, or for an `at` later than the trace's.
    pub fn kill_sent_at(&mut self, at: Instant) {
        if let Some(sent) = &mut self.trace.kill_sent {
            *sent = (*sent).min(at);
        }
    }

    /// The highest stage reached: the stage of the most severe action handed out by
    /// [`poll_action`](Self::poll_action). `None` before any.
    pub fn stage(&self) -> Option<Stage> {
        self.delivered
    }

    /// The reason of the first accepted cancel; `None` if there was none (or the ladder started
    /// with [`handle_kill`](Self::handle_kill)).
    pub fn reason(&self) -> Option<CancelReason> {
        self.reason
    }

    /// Whether the ladder is over: a result arrived before any signal, or the process exited.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished(_))
    }

    /// Whether the ladder finished on a result before any signal and the process has not
    /// exited: the worker can take another job.
    pub fn worker_reusable(&self) -> bool {
        self.state == State::Finished(Finish::Result)
    }

    /// When each step happened.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// The ladder's time, from which deadlines count: `now`, or the moment of the pause while
    /// paused (actions and the trace keep the real `now`).
    fn clock(&self, now: Instant) -> Instant {
        self.paused_at.map_or(now, |at| at.min(now))
    }

    fn signal(&mut self, now: Instant) {
        self.queue.push_back((Action::SignalGroup, now));
        self.state = State::Signalled {
            kill_at: self.clock(now).checked_add(self.deadlines.kill_after),
        };
    }

    fn kill(&mut self, now: Instant) {
        self.queue.push_back((Action::KillGroup, now));
        self.state = State::Killed {
            pending_at: self.clock(now).checked_add(self.deadlines.reap_timeout),
        };
    }

    fn finish(&mut self, how: Finish) {
        self.queue.clear();
        self.state = State::Finished(how);
    }

    /// Fires every deadline at or before `now`. Terminates: each step moves strictly up the
    /// ladder, and the last one clears the timer.
    fn advance(&mut self, now: Instant) {
        let due = self.clock(now);
        loop {
            match self.state {
                State::Cooperative {
                    signal_at: Some(at),
                } if at <= due => self.signal(now),
                State::Signalled { kill_at: Some(at) } if at <= due => self.kill(now),
                State::Killed {
                    pending_at: Some(at),
                } if at <= due => {
                    self.queue.push_back((Action::KillPending, now));
                    self.state = State::Killed { pending_at: None };
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CancelReason::{Requested, Shutdown, Timeout, Unresponsive};

    #[test]
    fn every_stage_name_round_trips() {
        // Exhaustive: a new stage does not compile here until it is in `ALL`, in order.
        let rank = |stage: Stage| match stage {
            Stage::Cooperative => 0,
            Stage::Signal => 1,
            Stage::Kill => 2,
        };
        for (i, stage) in Stage::ALL.into_iter().enumerate() {
            assert_eq!(rank(stage), i);
            assert_eq!(stage.as_str().parse(), Ok(stage));
            assert_eq!(stage.to_string(), stage.as_str());
        }
        assert!(Stage::ALL.is_sorted());
        assert_eq!(
            "Kill".parse::<Stage>(),
            Err(ParseNameError::new("stage", "Kill"))
        );
    }

    /// A virtual clock: a base instant plus offsets in milliseconds.
    struct Clock(Instant);

    impl Clock {
        fn new() -> Self {
            Self(Instant::now())
        }
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// grace 100 ms, kill_after 200 ms, reap_timeout 300 ms: distinct so a mix-up shows.
    fn deadlines() -> Deadlines {
        Deadlines {
            grace: ms(100),
            kill_after: ms(200),
            reap_timeout: ms(300),
        }
    }

    fn drain(e: &mut Escalation) -> Vec<Action> {
        std::iter::from_fn(|| e.poll_action()).collect()
    }

    fn assert_done(e: &mut Escalation) {
        assert!(e.is_finished());
        assert_eq!(e.poll_timeout(), None);
        assert_eq!(drain(e), []);
    }

    #[test]
    fn default_deadlines_are_five_seconds_each() {
        let d = Deadlines::default();
        assert_eq!(d.grace, Duration::from_secs(5));
        assert_eq!(d.kill_after, Duration::from_secs(5));
        assert_eq!(d.reap_timeout, Duration::from_secs(5));
    }

    #[test]
    fn stages_are_ordered_by_severity() {
        assert!(Stage::Cooperative < Stage::Signal);
        assert!(Stage::Signal < Stage::Kill);
        assert_eq!(Action::SendCancel(Timeout).stage(), Stage::Cooperative);
        assert_eq!(Action::SignalGroup.stage(), Stage::Signal);
        assert_eq!(Action::KillGroup.stage(), Stage::Kill);
        assert_eq!(Action::KillPending.stage(), Stage::Kill);
    }

    #[test]
    fn nothing_happens_without_cancel() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_timeout(c.at(1_000_000));
        assert_eq!(drain(&mut e), []);
        assert_eq!(e.poll_timeout(), None);
        assert_eq!(e.stage(), None);
        assert_eq!(e.reason(), None);
        assert!(!e.is_finished());
        assert!(!e.worker_reusable());
        assert_eq!(*e.trace(), Trace::default());
    }

    #[test]
    fn cooperative_full_ladder() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_cancel(c.at(10), Requested);
        assert_eq!(drain(&mut e), [Action::SendCancel(Requested)]);
        assert_eq!(e.stage(), Some(Stage::Cooperative));
        assert_eq!(e.reason(), Some(Requested));
        assert_eq!(e.poll_timeout(), Some(c.at(110)));

        e.handle_timeout(c.at(109));
        assert_eq!(drain(&mut e), []);
        assert_eq!(e.poll_timeout(), Some(c.at(110)));

        e.handle_timeout(c.at(110));
        assert_eq!(drain(&mut e), [Action::SignalGroup]);
        assert_eq!(e.stage(), Some(Stage::Signal));
        assert_eq!(e.poll_timeout(), Some(c.at(310)));

        e.handle_timeout(c.at(310));
        assert_eq!(drain(&mut e), [Action::KillGroup]);
        assert_eq!(e.stage(), Some(Stage::Kill));
        assert_eq!(e.poll_timeout(), Some(c.at(610)));

        e.handle_timeout(c.at(610));
        assert_eq!(drain(&mut e), [Action::KillPending]);
        assert_eq!(e.poll_timeout(), None, "kill pending leaves no deadline");
        e.handle_timeout(c.at(10_000));
        assert_eq!(drain(&mut e), [], "kill pending is reported once");
        assert!(!e.is_finished(), "the actor keeps waiting for the exit");

        e.handle_exit(c.at(20_000));
        assert_done(&mut e);
        assert!(!e.worker_reusable());
        assert_eq!(
            *e.trace(),
            Trace {
                cancel_requested: Some(c.at(10)),
                signal_sent: Some(c.at(110)),
                kill_sent: Some(c.at(310)),
                kill_pending: Some(c.at(610)),
                exited: Some(c.at(20_000)),
                result: None,
            }
        );
    }

    #[test]
    fn plain_program_starts_at_signal() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), false);
        e.handle_cancel(c.at(0), Timeout);
        assert_eq!(drain(&mut e), [Action::SignalGroup]);
        assert_eq!(e.stage(), Some(Stage::Signal));
        assert_eq!(e.reason(), Some(Timeout));
        assert_eq!(e.poll_timeout(), Some(c.at(200)));
        e.handle_timeout(c.at(200));
        assert_eq!(drain(&mut e), [Action::KillGroup]);
        e.handle_timeout(c.at(500));
        assert_eq!(drain(&mut e), [Action::KillPending]);
        assert_eq!(e.trace().cancel_requested, Some(c.at(0)));
        assert_eq!(e.trace().signal_sent, Some(c.at(0)));
    }

    #[test]
    fn late_wakeup_measures_next_stage_from_now() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_cancel(c.at(0), Requested);
        drain(&mut e);
        e.handle_timeout(c.at(150)); // 50 ms late
        assert_eq!(drain(&mut e), [Action::SignalGroup]);
        assert_eq!(e.trace().signal_sent, Some(c.at(150)));
        assert_eq!(
            e.poll_timeout(),
            Some(c.at(350)),
            "the full kill_after after the signal"
        );
    }

    #[test]
    fn late_timeout_fires_only_what_is_due() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_cancel(c.at(0), Requested);
        drain(&mut e);
        // Every later deadline is measured from the late `now`, so only the due one fires.
        e.handle_timeout(c.at(5_000));
        assert_eq!(drain(&mut e), [Action::SignalGroup]);
        assert_eq!(e.poll_timeout(), Some(c.at(5_200)));
    }

    #[test]
    fn cancel_after_result_is_ignored() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_result(c.at(5));
        assert!(e.worker_reusable());
        e.handle_cancel(c.at(6), Timeout);
        assert_done(&mut e);
        assert_eq!(e.reason(), None);
        assert_eq!(e.stage(), None);
        assert_eq!(e.trace().cancel_requested, None);
        assert_eq!(e.trace().result, Some(c.at(5)));
        assert!(e.worker_reusable());
    }

    #[test]
    fn result_during_cooperative_stage_keeps_worker() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_cancel(c.at(0), Requested);
        assert_eq!(drain(&mut e), [Action::SendCancel(Requested)]);
        e.handle_result(c.at(50));
        assert_done(&mut e);
        assert!(e.worker_reusable());
        assert_eq!(e.stage(), Some(Stage::Cooperative));
        e.handle_timeout(c.at(10_000));
        assert_done(&mut e);
    }

    #[test]
    fn result_before_send_cancel_is_drained_drops_it() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_cancel(c.at(0), Requested);
        e.handle_result(c.at(0));
        assert_done(&mut e);
        assert!(e.worker_reusable());
        assert_eq!(e.stage(), None, "nothing was handed out");
        assert_eq!(e.reason(), Some(Requested));
    }

    #[test]
    fn result_during_signal_stage_dooms_worker() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_cancel(c.at(0), Requested);
        e.handle_timeout(c.at(100));
        assert_eq!(
            drain(&mut e),
            [Action::SendCancel(Requested), Action::SignalGroup]
        );
        e.handle_result(c.at(150));
        assert!(!e.is_finished());
        assert!(!e.worker_reusable());
        assert_eq!(
            e.poll_timeout(),
            Some(c.at(300)),
            "the ladder keeps running"
        );
        e.handle_timeout(c.at(300));
        assert_eq!(drain(&mut e), [Action::KillGroup]);
        e.handle_exit(c.at(301));
        assert_done(&mut e);
        assert!(!e.worker_reusable());
        assert_eq!(e.trace().result, Some(c.at(150)));
    }

    #[test]
    fn result_after_exit_is_recorded_without_action() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), false);
        e.handle_cancel(c.at(0), Shutdown);
        drain(&mut e);
        e.handle_exit(c.at(10));
        e.handle_result(c.at(11));
        assert_done(&mut e);
        assert!(!e.worker_reusable());
        assert_eq!(e.trace().result, Some(c.at(11)));
        assert_eq!(e.trace().exited, Some(c.at(10)));
    }

    #[test]
    fn exit_before_cancel() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_exit(c.at(3));
        e.handle_cancel(c.at(4), Requested);
        e.handle_kill(c.at(5));
        assert_done(&mut e);
        assert_eq!(e.stage(), None);
        assert_eq!(e.reason(), None);
        assert_eq!(e.trace().exited, Some(c.at(3)));
    }

    #[test]
    fn exit_during_each_stage_stops_everything() {
        // (timeouts to walk through before the exit, stage reached)
        let cases = [
            (&[][..], Stage::Cooperative),
            (&[100][..], Stage::Signal),
            (&[100, 300][..], Stage::Kill),
            (&[100, 300, 600][..], Stage::Kill), // kill pending
        ];
        for (timeouts, stage) in cases {
            let c = Clock::new();
            let mut e = Escalation::new(deadlines(), true);
            e.handle_cancel(c.at(0), Requested);
            for &t in timeouts {
                e.handle_timeout(c.at(t));
            }
            drain(&mut e);
            assert_eq!(e.stage(), Some(stage));
            e.handle_exit(c.at(700));
            assert_done(&mut e);
            assert!(!e.worker_reusable());
            e.handle_timeout(c.at(1_000_000));
            e.handle_kill(c.at(1_000_000));
            e.handle_cancel(c.at(1_000_000), Timeout);
            e.handle_exit(c.at(1_000_001));
            assert_done(&mut e);
            assert_eq!(e.trace().exited, Some(c.at(700)), "first exit wins");
        }
    }

    #[test]
    fn exit_drops_undelivered_actions_and_trace_shows_only_delivered() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), false);
        e.handle_cancel(c.at(0), Timeout); // SignalGroup queued, never polled
        e.handle_exit(c.at(1));
        assert_done(&mut e);
        assert_eq!(e.stage(), None);
        assert_eq!(e.trace().signal_sent, None);
        assert_eq!(e.trace().cancel_requested, Some(c.at(0)));
    }

    #[test]
    fn exit_after_reusable_result_makes_worker_not_reusable() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_result(c.at(0));
        assert!(e.worker_reusable());
        e.handle_exit(c.at(1));
        assert_done(&mut e);
        assert!(!e.worker_reusable());
    }

    #[test]
    fn double_cancel_first_reason_wins() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_cancel(c.at(0), Timeout);
        e.handle_cancel(c.at(50), Shutdown);
        assert_eq!(drain(&mut e), [Action::SendCancel(Timeout)]);
        e.handle_cancel(c.at(60), Unresponsive);
        assert_eq!(drain(&mut e), []);
        assert_eq!(e.reason(), Some(Timeout));
        assert_eq!(e.trace().cancel_requested, Some(c.at(0)));
        assert_eq!(
            e.poll_timeout(),
            Some(c.at(100)),
            "a repeat does not move the deadline"
        );
    }

    #[test]
    fn repeat_cancel_fires_what_is_due() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_cancel(c.at(0), Timeout);
        drain(&mut e);
        e.handle_cancel(c.at(100), Shutdown);
        assert_eq!(drain(&mut e), [Action::SignalGroup]);
        assert_eq!(e.reason(), Some(Timeout));
    }

    #[test]
    fn kill_before_cancel() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_kill(c.at(0));
        assert_eq!(drain(&mut e), [Action::KillGroup]);
        assert_eq!(e.stage(), Some(Stage::Kill));
        assert_eq!(e.poll_timeout(), Some(c.at(300)));
        e.handle_cancel(c.at(1), Requested);
        assert_eq!(drain(&mut e), [], "no cancel after SIGKILL");
        assert_eq!(e.reason(), None);
        assert_eq!(e.trace().cancel_requested, None);
        e.handle_kill(c.at(2));
        assert_eq!(drain(&mut e), [], "SIGKILL at most once");
        e.handle_timeout(c.at(300));
        assert_eq!(drain(&mut e), [Action::KillPending]);
    }

    #[test]
    fn kill_after_cancel_skips_signal() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_cancel(c.at(0), Requested);
        e.handle_kill(c.at(10));
        assert_eq!(
            drain(&mut e),
            [Action::SendCancel(Requested), Action::KillGroup]
        );
        assert_eq!(e.trace().signal_sent, None);
        assert_eq!(e.trace().kill_sent, Some(c.at(10)));
        assert_eq!(e.poll_timeout(), Some(c.at(310)));
        assert_eq!(e.reason(), Some(Requested));
    }

    #[test]
    fn kill_during_signal_stage() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), false);
        e.handle_cancel(c.at(0), Timeout);
        e.handle_kill(c.at(10));
        assert_eq!(drain(&mut e), [Action::SignalGroup, Action::KillGroup]);
        e.handle_timeout(c.at(200));
        assert_eq!(drain(&mut e), [], "the old kill_after deadline is gone");
    }

    #[test]
    fn kill_after_doomed_result_still_kills() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), false);
        e.handle_cancel(c.at(0), Timeout);
        e.handle_result(c.at(5));
        e.handle_kill(c.at(6));
        assert_eq!(drain(&mut e), [Action::SignalGroup, Action::KillGroup]);
    }

    #[test]
    fn kill_after_finish_is_a_no_op() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_result(c.at(0));
        e.handle_kill(c.at(1));
        assert_done(&mut e);
        assert!(e.worker_reusable());

        let mut e = Escalation::new(deadlines(), true);
        e.handle_exit(c.at(0));
        e.handle_kill(c.at(1));
        assert_done(&mut e);
    }

    #[test]
    fn zero_durations_run_the_whole_ladder_at_once_in_order() {
        let c = Clock::new();
        let zero = Deadlines {
            grace: ms(0),
            kill_after: ms(0),
            reap_timeout: ms(0),
        };
        let mut e = Escalation::new(zero, true);
        e.handle_cancel(c.at(7), Unresponsive);
        assert_eq!(
            drain(&mut e),
            [
                Action::SendCancel(Unresponsive),
                Action::SignalGroup,
                Action::KillGroup,
                Action::KillPending
            ]
        );
        assert_eq!(e.poll_timeout(), None);
        assert_eq!(e.stage(), Some(Stage::Kill));
        let t = Some(c.at(7));
        assert_eq!(
            (
                e.trace().signal_sent,
                e.trace().kill_sent,
                e.trace().kill_pending
            ),
            (t, t, t)
        );
    }

    #[test]
    fn zero_grace_still_sends_cancel_first() {
        let c = Clock::new();
        let mut e = Escalation::new(
            Deadlines {
                grace: ms(0),
                ..deadlines()
            },
            true,
        );
        e.handle_cancel(c.at(0), Requested);
        assert_eq!(
            drain(&mut e),
            [Action::SendCancel(Requested), Action::SignalGroup]
        );
        assert_eq!(e.poll_timeout(), Some(c.at(200)));
    }

    #[test]
    fn zero_reap_timeout_reports_pending_with_the_kill() {
        let c = Clock::new();
        let mut e = Escalation::new(
            Deadlines {
                reap_timeout: ms(0),
                ..deadlines()
            },
            true,
        );
        e.handle_kill(c.at(0));
        assert_eq!(drain(&mut e), [Action::KillGroup, Action::KillPending]);
        assert_eq!(e.poll_timeout(), None);
    }

    #[test]
    fn unrepresentable_deadline_never_fires() {
        let c = Clock::new();
        let forever = Deadlines {
            grace: Duration::MAX,
            kill_after: Duration::MAX,
            reap_timeout: Duration::MAX,
        };
        let mut e = Escalation::new(forever, true);
        e.handle_cancel(c.at(0), Requested);
        assert_eq!(drain(&mut e), [Action::SendCancel(Requested)]);
        assert_eq!(e.poll_timeout(), None);
        e.handle_timeout(c.at(u64::from(u32::MAX)));
        assert_eq!(drain(&mut e), []);
        e.handle_kill(c.at(1));
        assert_eq!(drain(&mut e), [Action::KillGroup]);
        assert_eq!(e.poll_timeout(), None);
    }

    #[test]
    fn a_pause_moves_the_pending_deadline_by_its_length() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_cancel(c.at(10), Requested);
        assert_eq!(drain(&mut e), [Action::SendCancel(Requested)]);
        e.pause(c.at(50));
        assert!(e.is_paused());
        assert_eq!(e.poll_timeout(), None, "nothing is due while paused");
        e.handle_timeout(c.at(5_000));
        assert_eq!(
            drain(&mut e),
            [],
            "wall time passing while paused fires nothing"
        );
        e.resume(c.at(1_050));
        assert!(!e.is_paused());
        // 40 ms of the 100 ms grace had run: 60 ms are left after the resume.
        assert_eq!(e.poll_timeout(), Some(c.at(1_110)));
        e.handle_timeout(c.at(1_109));
        assert_eq!(drain(&mut e), []);
        e.handle_timeout(c.at(1_110));
        assert_eq!(drain(&mut e), [Action::SignalGroup]);
        assert_eq!(e.trace().signal_sent, Some(c.at(1_110)));
        // The next stage counts from its own decision, as always.
        assert_eq!(e.poll_timeout(), Some(c.at(1_310)));
    }

    #[test]
    fn a_cancel_while_paused_is_sent_at_once_and_its_grace_counts_from_the_resume() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.pause(c.at(0));
        e.handle_cancel(c.at(500), Timeout);
        assert_eq!(drain(&mut e), [Action::SendCancel(Timeout)]);
        assert_eq!(e.trace().cancel_requested, Some(c.at(500)), "real time");
        assert_eq!(e.poll_timeout(), None);
        e.resume(c.at(2_000));
        assert_eq!(e.poll_timeout(), Some(c.at(2_100)));
    }

    #[test]
    fn the_kill_deadline_is_offered_only_once_the_signal_is_out_and_not_while_paused() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        assert_eq!(e.kill_deadline(), None, "running");
        e.handle_cancel(c.at(0), Timeout);
        assert_eq!(e.kill_deadline(), None, "cooperative stage");
        e.handle_timeout(c.at(100));
        assert_eq!(e.kill_deadline(), None, "signal decided, not handed out");
        assert_eq!(
            drain(&mut e),
            [Action::SendCancel(Timeout), Action::SignalGroup]
        );
        assert_eq!(e.kill_deadline(), e.poll_timeout());
        let due = e.kill_deadline().expect("the kill deadline");
        e.pause(c.at(150));
        assert_eq!(e.kill_deadline(), None, "paused");
        e.resume(c.at(150));
        assert_eq!(e.kill_deadline(), Some(due));
        // A driver's timer thread killed at the deadline; the driver hears of it later.
        e.kill_sent_at(due);
        assert_eq!(
            e.trace().kill_sent,
            None,
            "nothing to correct before the kill"
        );
        e.handle_timeout(c.at(900));
        assert_eq!(drain(&mut e), [Action::KillGroup]);
        assert_eq!(e.kill_deadline(), None);
        e.kill_sent_at(due);
        assert_eq!(e.trace().kill_sent, Some(due));
        e.kill_sent_at(c.at(950));
        assert_eq!(e.trace().kill_sent, Some(due), "never later than it was");
    }

    #[test]
    fn a_kill_while_paused_is_not_delayed() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), false);
        e.handle_cancel(c.at(0), Shutdown);
        assert_eq!(drain(&mut e), [Action::SignalGroup]);
        e.pause(c.at(100));
        e.handle_kill(c.at(150));
        assert_eq!(drain(&mut e), [Action::KillGroup]);
        assert_eq!(e.trace().kill_sent, Some(c.at(150)));
        // Kill pending counts reap_timeout of running time from the pause on.
        e.resume(c.at(1_100));
        assert_eq!(e.poll_timeout(), Some(c.at(1_400)));
        e.handle_exit(c.at(1_200));
        assert_done(&mut e);
    }

    #[test]
    fn what_was_overdue_before_the_pause_fires_on_the_resume() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_cancel(c.at(0), Requested);
        assert_eq!(drain(&mut e), [Action::SendCancel(Requested)]);
        // The actor was late: the grace ended at 100, the pause came at 150.
        e.pause(c.at(150));
        e.resume(c.at(400));
        assert_eq!(drain(&mut e), [Action::SignalGroup]);
        assert_eq!(e.trace().signal_sent, Some(c.at(400)));
        assert_eq!(e.poll_timeout(), Some(c.at(600)));
    }

    #[test]
    fn repeated_pauses_and_stray_resumes() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.resume(c.at(0)); // not paused: nothing
        e.handle_cancel(c.at(0), Requested);
        drain(&mut e);
        e.pause(c.at(20));
        e.pause(c.at(70)); // still the first pause
        e.resume(c.at(120));
        assert_eq!(e.poll_timeout(), Some(c.at(200)));
        // A resume "before" the pause moves nothing; a far-away one drops the deadline
        // rather than overflow.
        e.pause(c.at(150));
        e.resume(c.at(100));
        assert_eq!(e.poll_timeout(), Some(c.at(200)));
        let mut far = Escalation::new(
            Deadlines {
                grace: Duration::MAX,
                ..deadlines()
            },
            true,
        );
        far.handle_cancel(c.at(0), Requested);
        far.pause(c.at(0));
        far.resume(c.at(u64::from(u32::MAX)));
        assert_eq!(far.poll_timeout(), None);
    }

    #[test]
    fn earlier_now_does_nothing_and_breaks_nothing() {
        let c = Clock::new();
        let mut e = Escalation::new(deadlines(), true);
        e.handle_cancel(c.at(1_000), Requested);
        drain(&mut e);
        e.handle_timeout(c.at(0));
        assert_eq!(drain(&mut e), []);
        assert_eq!(e.poll_timeout(), Some(c.at(1_100)));
        // A kill decided "in the past" measures its reap deadline from that past.
        e.handle_kill(c.at(500));
        assert_eq!(drain(&mut e), [Action::KillGroup]);
        assert_eq!(e.poll_timeout(), Some(c.at(800)));
        e.handle_timeout(c.at(799));
        assert_eq!(drain(&mut e), []);
        e.handle_timeout(c.at(800));
        assert_eq!(drain(&mut e), [Action::KillPending]);
    }

    /// Property tests: arbitrary inputs at arbitrary times, checked against the invariants.
    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Input {
            Cancel(CancelReason),
            Kill,
            Result,
            Exit,
            Timeout,
            /// Hand out one action (the actor may lag behind the inputs).
            Poll,
            Pause,
            Resume,
        }

        fn reason() -> impl Strategy<Value = CancelReason> {
            prop_oneof![
                Just(Requested),
                Just(Timeout),
                Just(Shutdown),
                Just(Unresponsive)
            ]
        }

        fn input() -> impl Strategy<Value = Input> {
            prop_oneof![
                2 => reason().prop_map(Input::Cancel),
                1 => Just(Input::Kill),
                1 => Just(Input::Result),
                1 => Just(Input::Exit),
                4 => Just(Input::Timeout),
                4 => Just(Input::Poll),
                1 => Just(Input::Pause),
                1 => Just(Input::Resume),
            ]
        }

        fn duration() -> impl Strategy<Value = Duration> {
            prop_oneof![
                1 => Just(Duration::ZERO),
                1 => Just(Duration::MAX),
                6 => (0u64..2_000).prop_map(Duration::from_millis),
            ]
        }

        fn deadlines() -> impl Strategy<Value = Deadlines> {
            (duration(), duration(), duration()).prop_map(|(grace, kill_after, reap_timeout)| {
                Deadlines {
                    grace,
                    kill_after,
                    reap_timeout,
                }
            })
        }

        /// Each input with a time step in ms: added to the previous time when `monotonic`,
        /// otherwise an absolute offset from the base (so time may go backwards).
        fn steps() -> impl Strategy<Value = Vec<(Input, u64)>> {
            prop::collection::vec((input(), 0u64..3_000), 0..40)
        }

        fn rank(a: Action) -> u8 {
            match a {
                Action::SendCancel(_) => 0,
                Action::SignalGroup => 1,
                Action::KillGroup => 2,
                Action::KillPending => 3,
            }
        }

        /// What the run has seen so far, to check the machine against.
        #[derive(Default)]
        struct Seen {
            emitted: Vec<Action>,
            cancel_or_kill: bool,
            exited: bool,
            /// The reason the first cancel should have been accepted with.
            expected_reason: Option<CancelReason>,
            /// Any input that closes the door on a later cancel (cancel, kill, result, exit).
            closed: bool,
            /// Pauses the machine took (start, end once resumed).
            pauses: Vec<(Instant, Option<Instant>)>,
            /// Time only moved forward.
            monotonic: bool,
        }

        impl Seen {
            /// Wall time from `a` to `b` minus the time spent paused in between.
            fn running(&self, a: Instant, b: Instant) -> Duration {
                let paused: Duration = self
                    .pauses
                    .iter()
                    .map(|&(start, end)| {
                        let (lo, hi) = (start.max(a), end.unwrap_or(b).min(b));
                        hi.saturating_duration_since(lo)
                    })
                    .sum();
                b.saturating_duration_since(a).saturating_sub(paused)
            }
        }

        fn check_state(e: &Escalation, seen: &Seen, d: Deadlines, cooperative: bool) {
            // Ladder order, each at most once.
            for w in seen.emitted.windows(2) {
                assert!(rank(w[0]) < rank(w[1]), "out of order: {:?}", seen.emitted);
            }
            let has = |f: fn(&Action) -> bool| seen.emitted.iter().any(f);
            let kills = seen
                .emitted
                .iter()
                .filter(|a| **a == Action::KillGroup)
                .count();
            assert!(kills <= 1);
            if !seen.cancel_or_kill {
                assert!(seen.emitted.is_empty(), "action before cancel or kill");
            }
            if !cooperative {
                assert!(!has(|a| matches!(a, Action::SendCancel(_))));
            }

            // stage() is the highest action handed out.
            assert_eq!(e.stage(), seen.emitted.last().map(|a| a.stage()));

            // The reason: the first cancel, if it came before anything that closes the door.
            assert_eq!(e.reason(), seen.expected_reason);
            for a in &seen.emitted {
                if let Action::SendCancel(r) = a {
                    assert_eq!(Some(*r), e.reason());
                }
            }

            // Trace consistent with actions handed out.
            let t = e.trace();
            assert_eq!(t.cancel_requested.is_some(), e.reason().is_some());
            assert_eq!(t.signal_sent.is_some(), has(|a| *a == Action::SignalGroup));
            assert_eq!(t.kill_sent.is_some(), has(|a| *a == Action::KillGroup));
            assert_eq!(t.kill_pending.is_some(), has(|a| *a == Action::KillPending));
            assert_eq!(t.exited.is_some(), seen.exited);
            if has(|a| matches!(a, Action::SendCancel(_))) {
                assert!(t.cancel_requested.is_some());
            }
            // Timer-driven steps happen no earlier than their deadline, whatever the clock did
            // (with pauses: in running time, and only when time moved forward).
            let unpaused = seen.pauses.is_empty();
            if let (Some(c), Some(s)) = (t.cancel_requested, t.signal_sent) {
                if !cooperative {
                    assert_eq!(s, c, "a plain program is signalled at the cancel");
                } else if unpaused {
                    assert!(c.checked_add(d.grace).is_some_and(|due| s >= due));
                } else if seen.monotonic && t.kill_sent.is_none_or(|k| k > s) {
                    assert!(
                        seen.running(c, s) >= d.grace,
                        "signal early in running time"
                    );
                }
            }
            if let (Some(k), Some(p)) = (t.kill_sent, t.kill_pending) {
                if unpaused {
                    assert!(k.checked_add(d.reap_timeout).is_some_and(|due| p >= due));
                } else if seen.monotonic {
                    assert!(seen.running(k, p) >= d.reap_timeout, "pending early");
                }
            }
            if e.is_paused() {
                assert_eq!(e.poll_timeout(), None, "a deadline due while paused");
            }
            if t.kill_pending.is_some() {
                assert!(t.kill_sent.is_some());
            }

            // Finished means quiet.
            if e.is_finished() {
                assert_eq!(e.poll_timeout(), None);
            }
            if seen.exited {
                assert!(e.is_finished());
                assert!(!e.worker_reusable());
            }
            if e.worker_reusable() {
                assert!(e.is_finished());
                assert!(!has(|a| a.stage() >= Stage::Signal));
                assert_eq!(t.signal_sent, None);
                assert_eq!(t.kill_sent, None);
            }
            if has(|a| *a == Action::KillPending) || e.trace().kill_pending.is_some() {
                assert_eq!(e.poll_timeout(), None);
            }
        }

        fn run(d: Deadlines, cooperative: bool, monotonic: bool, steps: &[(Input, u64)]) {
            let base = Instant::now();
            let mut e = Escalation::new(d, cooperative);
            let mut seen = Seen {
                monotonic,
                ..Seen::default()
            };
            let mut now_ms = 0u64;
            for (input, step) in steps {
                now_ms = if monotonic { now_ms + step } else { *step };
                let now = base + Duration::from_millis(now_ms);
                let handled = !matches!(input, Input::Poll);
                match input {
                    Input::Cancel(r) => {
                        if !seen.closed {
                            seen.expected_reason = Some(*r);
                        }
                        seen.closed = true;
                        seen.cancel_or_kill = true;
                        e.handle_cancel(now, *r);
                    }
                    Input::Kill => {
                        seen.closed = true;
                        seen.cancel_or_kill = true;
                        e.handle_kill(now);
                    }
                    Input::Result => {
                        seen.closed = true;
                        e.handle_result(now);
                    }
                    Input::Exit => {
                        seen.closed = true;
                        seen.exited = true;
                        e.handle_exit(now);
                    }
                    Input::Timeout => e.handle_timeout(now),
                    Input::Pause => {
                        if !e.is_paused() {
                            seen.pauses.push((now, None));
                        }
                        e.pause(now);
                    }
                    Input::Resume => {
                        if let Some(last) = seen.pauses.last_mut()
                            && last.1.is_none()
                        {
                            last.1 = Some(now);
                        }
                        e.resume(now);
                    }
                    Input::Poll => {
                        if let Some(a) = e.poll_action() {
                            assert!(!seen.exited, "action {a:?} after exit");
                            seen.emitted.push(a);
                        }
                    }
                }
                if handled {
                    // Everything due at `now` has fired.
                    assert!(e.poll_timeout().is_none_or(|t| t > now));
                }
                check_state(&e, &seen, d, cooperative);
            }
            while let Some(a) = e.poll_action() {
                assert!(!seen.exited, "action {a:?} after exit");
                seen.emitted.push(a);
                check_state(&e, &seen, d, cooperative);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1_000))]

            #[test]
            fn invariants_hold_with_monotonic_time(
                d in deadlines(), cooperative: bool, steps in steps(),
            ) {
                run(d, cooperative, true, &steps);
            }

            #[test]
            fn invariants_hold_when_time_goes_backwards(
                d in deadlines(), cooperative: bool, steps in steps(),
            ) {
                run(d, cooperative, false, &steps);
            }

            /// Without a lagging actor: the full ladder is walked with timeouts alone and ends in
            /// kill pending, with every stage the worker kind allows.
            #[test]
            fn timeouts_alone_walk_the_whole_ladder(
                d in deadlines(), cooperative: bool, reason in reason(),
            ) {
                let base = Instant::now();
                let mut e = Escalation::new(d, cooperative);
                e.handle_cancel(base, reason);
                let mut out = Vec::new();
                out.extend(std::iter::from_fn(|| e.poll_action()));
                // Three timers at most; a bounded loop so a machine that never fires fails
                // instead of hanging.
                for _ in 0..3 {
                    let Some(t) = e.poll_timeout() else { break };
                    e.handle_timeout(t);
                    out.extend(std::iter::from_fn(|| e.poll_action()));
                }
                prop_assert_eq!(e.poll_timeout(), None, "a timer left after three rounds");
                let mut want = Vec::new();
                if cooperative {
                    want.push(Action::SendCancel(reason));
                }
                // A stage whose deadline cannot be represented stops the walk there.
                let mut at = Some(base);
                for (dur, next) in [
                    (cooperative.then_some(d.grace), Action::SignalGroup),
                    (Some(d.kill_after), Action::KillGroup),
                    (Some(d.reap_timeout), Action::KillPending),
                ] {
                    if let Some(dur) = dur {
                        at = at.and_then(|t| t.checked_add(dur));
                    }
                    if at.is_none() {
                        break;
                    }
                    want.push(next);
                }
                prop_assert_eq!(out, want);
            }
        }
    }
}
