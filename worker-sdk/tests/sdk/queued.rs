//! Protocol version 2: jobs the supervisor sends while one runs wait in the worker and run one
//! at a time, in order (PROTOCOL.md, "Queued jobs"). Each case runs with a blocking and an
//! async handler.
//!
//! A job whose payload is [`HOLD`] waits on the test's gate (or its token tripping); every
//! other job returns its payload at once. Every handler call is recorded as it returns, before
//! its result is queued, so once a result has arrived the record of its call is there too.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use warden_protocol::{CancelReason, JobId, PROTOCOL_VERSION, SupervisorMessage, WorkerMessage};
use warden_worker::{CancelCause, Job, JobError, OnCancelGuard, ProtocolError, ServeError};

use crate::support::*;

/// The payload of a job that waits for the gate.
const HOLD: &[u8] = b"hold";

#[derive(Debug, Clone, Copy)]
enum Kind {
    Blocking,
    Async,
}

/// One handler call, as it returned.
#[derive(Debug, Clone, PartialEq)]
struct Ran {
    job: JobId,
    cause: Option<CancelCause>,
    deadline: Option<Instant>,
}

fn ran(job: u64, cause: Option<CancelCause>) -> (JobId, Option<CancelCause>) {
    (JobId(job), cause)
}

/// The handler's side of the test.
#[derive(Clone)]
struct Script {
    /// Opens the gate once per message; a held job's token tripping sends one too.
    gate_tx: mpsc::UnboundedSender<()>,
    gate_rx: Arc<Mutex<mpsc::UnboundedReceiver<()>>>,
    /// A held job's id, once it waits (its cancel callback registered).
    holding: mpsc::UnboundedSender<JobId>,
    ran: std_mpsc::Sender<Ran>,
}

impl Script {
    fn hold(&self, job: &Job) -> Option<OnCancelGuard> {
        if job.payload() != HOLD {
            return None;
        }
        let gate = self.gate_tx.clone();
        let guard = job.on_cancel(move || {
            let _ = gate.send(());
        });
        let _ = self.holding.send(job.id());
        Some(guard)
    }

    fn end(&self, job: &Job) -> Result<Vec<u8>, JobError> {
        let _ = self.ran.send(Ran {
            job: job.id(),
            cause: job.cancel_cause(),
            deadline: job.deadline(),
        });
        if job.payload() == HOLD {
            job.check()?;
            Ok(b"released".to_vec())
        } else {
            Ok(job.payload().to_vec())
        }
    }

    fn blocking(&self, job: &Job) -> Result<Vec<u8>, JobError> {
        if let Some(_guard) = self.hold(job) {
            // The job thread is no runtime's: it may block on the gate.
            let _ = self.gate_rx.blocking_lock().blocking_recv();
        }
        self.end(job)
    }

    async fn run(self, job: Job) -> Result<Vec<u8>, JobError> {
        if let Some(_guard) = self.hold(&job) {
            let _ = self.gate_rx.lock().await.recv().await;
        }
        self.end(&job)
    }
}

/// The supervisor's side of the test.
struct Case {
    sup: FakeSupervisor,
    serving: JoinHandle<Result<(), ServeError>>,
    gate: mpsc::UnboundedSender<()>,
    holding: mpsc::UnboundedReceiver<JobId>,
    ran: std_mpsc::Receiver<Ran>,
}

/// Serves the script with a `kind` handler; the fake supervisor answers in `version`.
async fn case(kind: Kind, version: u16) -> Case {
    let (mut sup, channel) = pair();
    let (gate_tx, gate_rx) = mpsc::unbounded_channel();
    let (holding_tx, holding) = mpsc::unbounded_channel();
    let (ran_tx, ran) = std_mpsc::channel();
    let script = Script {
        gate_tx: gate_tx.clone(),
        gate_rx: Arc::new(Mutex::new(gate_rx)),
        holding: holding_tx,
        ran: ran_tx,
    };
    let serving = match kind {
        Kind::Blocking => spawn_blocking(channel, move |job| script.blocking(&job)),
        Kind::Async => spawn_async(channel, move |job| script.clone().run(job)),
    };
    sup.accept_version(version, 0, warden_protocol::DEFAULT_MAX_FRAME_LEN)
        .await;
    Case {
        sup,
        serving,
        gate: gate_tx,
        holding,
        ran,
    }
}

impl Case {
    /// Sends `msgs` in one write, so the worker reads them together.
    async fn send_all(&mut self, msgs: &[SupervisorMessage]) {
        let mut bytes = Vec::new();
        for msg in msgs {
            bytes.extend(warden_protocol::encode_frame(msg, u32::MAX).expect("encode"));
        }
        self.sup.send_raw(&bytes).await;
    }

    /// Waits until `job` waits on the gate.
    async fn held(&mut self, job: u64) {
        let held = within("a held job", self.holding.recv()).await;
        assert_eq!(held, Some(JobId(job)), "the job holding");
    }

    fn open(&self) {
        self.gate
            .send(())
            .expect("a handler holds the gate's receiver");
    }

    /// The handler calls recorded so far (every call whose result has arrived is among them).
    fn calls(&self) -> Vec<Ran> {
        self.ran.try_iter().collect()
    }

    /// Waits for serving to end.
    async fn finished(&mut self) -> Result<(), ServeError> {
        within("serve to return", &mut self.serving)
            .await
            .expect("serve task panicked")
    }

    async fn expect(&mut self, msg: WorkerMessage) {
        let what = format!("{msg:?}");
        assert_eq!(self.sup.recv(&what).await, msg);
    }
}

fn completed(job: u64, output: &[u8]) -> WorkerMessage {
    WorkerMessage::Completed {
        job: JobId(job),
        output: output.to_vec(),
    }
}

fn cancel(job: u64) -> SupervisorMessage {
    SupervisorMessage::Cancel {
        job: JobId(job),
        reason: CancelReason::Requested,
    }
}

fn ids(calls: &[Ran]) -> Vec<(JobId, Option<CancelCause>)> {
    calls.iter().map(|call| (call.job, call.cause)).collect()
}

/// A test per handler kind, named after the case.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn blocking() {
                super::$name(super::Kind::Blocking).await;
            }

            #[tokio::test]
            async fn async_handler() {
                super::$name(super::Kind::Async).await;
            }
        }
    };
}

both!(three_starts_back_to_back_get_three_results_in_order);
async fn three_starts_back_to_back_get_three_results_in_order(kind: Kind) {
    let mut c = case(kind, PROTOCOL_VERSION).await;
    c.send_all(&[start(1, b"a"), start(2, b"b"), start(3, b"c")])
        .await;
    for (job, output) in [(1, b"a"), (2, b"b"), (3, b"c")] {
        c.expect(completed(job, output)).await;
    }
    c.sup.send(&SupervisorMessage::Shutdown).await;
    c.finished().await.expect("ok");
    assert_eq!(ids(&c.calls()), [ran(1, None), ran(2, None), ran(3, None)]);
}

/// The job thread starts a queued blocking job itself: with the serve task unable to run (this
/// test holds the runtime's only thread), the jobs queued behind the held one still run.
#[tokio::test]
async fn queued_blocking_jobs_run_without_the_serve_task() {
    let mut c = case(Kind::Blocking, PROTOCOL_VERSION).await;
    // The cancel of job 4 is answered once the worker has read every start before it.
    c.send_all(&[
        start(1, HOLD),
        start(2, b"b"),
        start(3, b"c"),
        start(4, b"d"),
        cancel(4),
    ])
    .await;
    c.expect(WorkerMessage::Cancelled { job: JobId(4) }).await;
    c.held(1).await;
    c.open();
    // Blocks this thread, and with it the serve task, until job 3 has run.
    let calls: Vec<Ran> = (0..3)
        .map(|_| c.ran.recv_timeout(LIMIT).expect("a handler call"))
        .collect();
    assert_eq!(ids(&calls), [ran(1, None), ran(2, None), ran(3, None)]);
    c.expect(completed(1, b"released")).await;
    c.expect(completed(2, b"b")).await;
    c.expect(completed(3, b"c")).await;
    c.sup.send(&SupervisorMessage::Shutdown).await;
    c.finished().await.expect("ok");
}

both!(cancel_for_a_queued_job_is_answered_before_the_running_one_ends);
async fn cancel_for_a_queued_job_is_answered_before_the_running_one_ends(kind: Kind) {
    let mut c = case(kind, PROTOCOL_VERSION).await;
    c.send_all(&[start(1, HOLD), start(2, b"b"), start(3, b"c")])
        .await;
    c.held(1).await;
    c.sup.send(&cancel(3)).await;
    // Job 1 still holds: nothing else can come first.
    c.expect(WorkerMessage::Cancelled { job: JobId(3) }).await;
    c.open();
    c.expect(completed(1, b"released")).await;
    c.expect(completed(2, b"b")).await;
    c.sup.send(&SupervisorMessage::Shutdown).await;
    c.finished().await.expect("ok");
    assert_eq!(
        ids(&c.calls()),
        [ran(1, None), ran(2, None)],
        "job 3's handler never ran"
    );
}

both!(cancel_for_the_running_job_trips_only_its_token);
async fn cancel_for_the_running_job_trips_only_its_token(kind: Kind) {
    let mut c = case(kind, PROTOCOL_VERSION).await;
    c.send_all(&[start(1, HOLD), start(2, HOLD), start(3, b"c")])
        .await;
    c.held(1).await;
    c.sup.send(&cancel(1)).await;
    c.expect(WorkerMessage::Cancelled { job: JobId(1) }).await;
    // Job 2 holds with its own token untripped; only the gate releases it.
    c.held(2).await;
    c.open();
    c.expect(completed(2, b"released")).await;
    c.expect(completed(3, b"c")).await;
    c.sup.send(&SupervisorMessage::Shutdown).await;
    c.finished().await.expect("ok");
    assert_eq!(
        ids(&c.calls()),
        [
            ran(1, Some(CancelCause::Message(CancelReason::Requested))),
            ran(2, None),
            ran(3, None)
        ]
    );
}

both!(eof_with_jobs_queued_never_runs_them);
async fn eof_with_jobs_queued_never_runs_them(kind: Kind) {
    let mut c = case(kind, PROTOCOL_VERSION).await;
    c.send_all(&[start(1, HOLD), start(2, b"b"), start(3, b"c")])
        .await;
    c.held(1).await;
    let Case {
        sup,
        serving,
        ran: calls,
        ..
    } = c;
    sup.close();
    let err = finished(serving).await.unwrap_err();
    assert!(matches!(err, ServeError::Disconnected), "{err:?}");
    // Serving returned once job 1's handler had returned; nothing is left to start.
    assert_eq!(
        ids(&calls.try_iter().collect::<Vec<_>>()),
        [ran(1, Some(CancelCause::ChannelClosed))],
        "the queued jobs' handlers never ran"
    );
}

both!(shutdown_with_jobs_queued_runs_them_all_then_returns_ok);
async fn shutdown_with_jobs_queued_runs_them_all_then_returns_ok(kind: Kind) {
    let mut c = case(kind, PROTOCOL_VERSION).await;
    c.send_all(&[
        start(1, HOLD),
        start(2, b"b"),
        start(3, b"c"),
        SupervisorMessage::Shutdown,
    ])
    .await;
    c.held(1).await;
    c.open();
    c.expect(completed(1, b"released")).await;
    c.expect(completed(2, b"b")).await;
    c.expect(completed(3, b"c")).await;
    c.finished().await.expect("ok after the last result");
    c.sup.expect_eof("the worker to close").await;
    assert_eq!(
        ids(&c.calls()),
        [ran(1, None), ran(2, None), ran(3, None)],
        "shutdown is not a cancel"
    );
}

both!(a_queued_jobs_deadline_counts_from_its_start);
async fn a_queued_jobs_deadline_counts_from_its_start(kind: Kind) {
    const DEADLINE: Duration = Duration::from_secs(600);
    let mut c = case(kind, PROTOCOL_VERSION).await;
    c.send_all(&[
        start(1, HOLD),
        SupervisorMessage::StartJob {
            job: JobId(2),
            payload: b"b".to_vec(),
            deadline_ms: Some(DEADLINE.as_millis() as u64),
        },
    ])
    .await;
    c.held(1).await;
    // Job 2 was received before this instant and starts after it.
    let released = Instant::now();
    c.open();
    c.expect(completed(1, b"released")).await;
    c.expect(completed(2, b"b")).await;
    let calls = c.calls();
    let deadline = calls
        .iter()
        .find(|call| call.job == JobId(2))
        .and_then(|call| call.deadline)
        .expect("job 2 ran with a deadline");
    assert!(
        deadline >= released + DEADLINE,
        "the deadline counts from the start"
    );
    assert!(deadline <= Instant::now() + DEADLINE);
    c.sup.send(&SupervisorMessage::Shutdown).await;
    c.finished().await.expect("ok");
}

both!(a_start_naming_a_queued_job_is_a_protocol_error);
async fn a_start_naming_a_queued_job_is_a_protocol_error(kind: Kind) {
    let mut c = case(kind, PROTOCOL_VERSION).await;
    c.send_all(&[start(1, HOLD), start(2, b"b")]).await;
    c.held(1).await;
    c.sup.send(&start(2, b"again")).await;
    let err = c.finished().await.unwrap_err();
    assert!(
        matches!(
            err,
            ServeError::Protocol(ProtocolError::DuplicateJob { job: JobId(2) })
        ),
        "{err:?}"
    );
    // Its token trips as serving stops; its handler returns on a thread or task of its own.
    let ran_rx = c.ran;
    let call = within(
        "job 1's return",
        tokio::task::spawn_blocking(move || ran_rx.recv_timeout(LIMIT)),
    )
    .await
    .expect("the waiting thread")
    .expect("job 1's call");
    assert_eq!(
        (call.job, call.cause),
        ran(1, Some(CancelCause::ChannelClosed))
    );
}

both!(a_second_start_while_a_job_runs_is_a_protocol_error_in_version_1);
async fn a_second_start_while_a_job_runs_is_a_protocol_error_in_version_1(kind: Kind) {
    let mut c = case(kind, 1).await;
    c.sup.send(&start(1, HOLD)).await;
    c.held(1).await;
    c.sup.send(&start(2, b"b")).await;
    let err = c.finished().await.unwrap_err();
    assert!(
        matches!(
            err,
            ServeError::Protocol(ProtocolError::StartWhileRunning {
                running: JobId(1),
                started: JobId(2)
            })
        ),
        "{err:?}"
    );
}
