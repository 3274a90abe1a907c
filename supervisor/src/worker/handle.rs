//! The handle a caller holds, and spawning with the handshake.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use warden_protocol::{SupervisorMessage, WorkerMessage, negotiate};

use super::actor::{Actor, Control, Request};
use super::config::{JobOptions, WorkerConfig};
use crate::error::{JobControlError, RunError, SpawnError};
use crate::ipc::{Channel, Event};
use crate::outcome::{JobReport, Violation};
use crate::output::{self, Output};
use crate::process::{self, Child, Command, ExitStatus, Tree};
use crate::time::{Wakeup, deadline_after};

/// What the worker said about itself in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// The worker's process id (also its process group id).
    pub pid: u32,
    /// The protocol version agreed on; `None` for a plain program.
    pub protocol_version: Option<u16>,
    /// The SDK (or other implementation) the worker announced; `None` for a plain program.
    pub sdk_version: Option<String>,
    /// How the worker's process tree is contained.
    pub containment: crate::ContainmentMode,
}

/// A running worker process.
///
/// Jobs run one at a time; [`run`](Self::run) calls made while a job runs wait their turn, in
/// the supervisor or, with [`WorkerConfig::pipeline`], queued in the worker.
///
/// # Drop
/// Dropping the handle shuts the worker down in the background as [`shutdown`](Self::shutdown)
/// does: a `Shutdown` message, then the ladder (polite signal, SIGKILL) with the worker's
/// deadlines. If the runtime itself goes away first, the process group is SIGKILLed and reaped.
/// A worker [suspended](Self::suspend) when its handle is dropped is resumed first.
#[derive(Debug)]
pub struct Worker {
    tx: mpsc::UnboundedSender<Request>,
    control: mpsc::UnboundedSender<Control>,
    info: WorkerInfo,
}

impl Worker {
    /// Starts `cmd` in its own process group and, for a protocol worker, completes the
    /// handshake within `config.handshake_timeout`. On any handshake failure the process is
    /// killed and reaped before the error is returned.
    ///
    /// Must be called within a tokio runtime (with time and I/O enabled).
    pub async fn spawn(cmd: &Command, config: WorkerConfig) -> Result<Worker, SpawnError> {
        let span = tracing::info_span!("worker", program = ?cmd.get_program(), pid = tracing::field::Empty);
        let (ours, theirs) = if config.protocol {
            let (a, b) = process::socketpair().map_err(SpawnError::Channel)?;
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        let (readers, writers) = match &config.output {
            Some(_) => {
                let (readers, writers) = output::pipes().map_err(SpawnError::Output)?;
                (Some(readers), Some(writers))
            }
            None => (None, None),
        };
        let mut tree = Tree::spawn_with(cmd, &config.tree, theirs, writers)
            .instrument(span.clone())
            .await?;
        // Drained from now on: a worker that writes before its hello must not block on it.
        let output = match (&config.output, readers) {
            (Some(capture), Some(readers)) => {
                match Output::start(capture, readers, config.drain_timeout) {
                    Ok(output) => output,
                    Err(e) => {
                        tree.settle(config.deadlines.reap_timeout).await;
                        return Err(SpawnError::Output(e));
                    }
                }
            }
            _ => Output::default(),
        };
        let pid = tree.pid();
        span.record("pid", pid);
        let mut info = WorkerInfo {
            pid,
            protocol_version: None,
            sdk_version: None,
            containment: tree.containment(),
        };
        let channel = match ours {
            Some(fd) => {
                let result = match Channel::new(fd, config.max_frame_len) {
                    Ok(mut channel) => handshake(tree.child_mut(), &mut channel, &config)
                        .instrument(span.clone())
                        .await
                        .map(|(version, sdk)| {
                            info.protocol_version = Some(version);
                            info.sdk_version = Some(sdk);
                            channel
                        }),
                    Err(e) => Err(SpawnError::Channel(e)),
                };
                match result {
                    Ok(channel) => Some(channel),
                    Err(e) => {
                        tree.settle(config.deadlines.reap_timeout).await;
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        tracing::debug!(parent: &span, containment = tree.containment().as_str(), "worker ready");
        let (tx, rx) = mpsc::unbounded_channel();
        let (control, control_rx) = mpsc::unbounded_channel();
        let queue_depth = config.queue_depth(info.protocol_version);
        let actor = Actor::new(
            tree,
            channel,
            output,
            control_rx,
            config,
            queue_depth,
            span.clone(),
        );
        tokio::spawn(actor.run(rx).instrument(span));
        Ok(Worker { tx, control, info })
    }

    /// The worker's pid (also its process group id). Valid only while the worker runs: do not
    /// signal it yourself.
    pub fn pid(&self) -> u32 {
        self.info.pid
    }

    /// What the handshake told.
    pub fn info(&self) -> &WorkerInfo {
        &self.info
    }

    /// Runs one job and returns how it ended. For a plain program the "job" is the program's
    /// whole run and `payload` must be empty; if the program ended before the first call, that
    /// call still reports how it ended (with `trace.exited` at zero), and later calls get
    /// [`RunError::WorkerGone`].
    ///
    /// A protocol worker that broke the protocol or closed its channel while idle takes no new
    /// job: the call returns [`RunError::WorkerGone`] at once.
    ///
    /// Cancelling `options.token` (never blocks), the timeout, or the worker's shutdown token
    /// starts the ladder: cancel message, grace, polite signal + SIGCONT, kill_after, SIGKILL.
    ///
    /// # Cancel safety
    /// Dropping the returned future cancels the job (reason `requested`); the ladder then runs
    /// to its end in the background. A future dropped while its job waits behind another job
    /// cancels it before it starts: it is never sent to the worker. Jobs wait their turn in the
    /// order of the calls; one whose token is cancelled while it waits is answered at once
    /// (`Outcome::Cancelled`, `started: false`), and the next one is sent in the same turn of
    /// the worker's task that answered the job before it.
    pub async fn run(&self, payload: Vec<u8>, options: JobOptions) -> Result<JobReport, RunError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Run {
                payload,
                options,
                reply,
            })
            .map_err(|_| actor_gone())?;
        rx.await.map_err(|_| actor_gone())?
    }

    /// Suspends the worker, for job control (the host was stopped with Ctrl-Z, say): stops its
    /// whole process tree (freezes its cgroup where it has one, else SIGSTOPs its process group
    /// and the members that left it) and pauses every deadline of the worker (the job's
    /// timeout, the ladder's stages, the drain and hang-up waits, a partial frame's stall
    /// bound, liveness) until
    /// [`resume`](Self::resume), so the time suspended does not count against them. Returns
    /// once the tree is stopped, or after `timeout` if it does not stop (an error; the worker
    /// counts as suspended all the same). A no-op while already suspended.
    ///
    /// While suspended, events are still handled at once: a cancel message is sent, a polite
    /// signal too (its SIGCONT waits for the resume), and the kill token or a protocol
    /// violation SIGKILLs the tree. Only the deadlines wait.
    ///
    /// # Errors
    /// [`JobControlError::WorkerGone`] if the worker was shut down;
    /// [`JobControlError::Tree`] if stopping the tree failed;
    /// [`JobControlError::NotStopped`] if it did not stop within `timeout`.
    ///
    /// # Cancel safety
    /// Not cancel-safe once polled: the request is sent on the first poll, and dropping the
    /// future then does not undo the suspension. Call [`resume`](Self::resume).
    pub async fn suspend(&self, timeout: Duration) -> Result<(), JobControlError> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Suspend { timeout, reply })
            .map_err(|_| JobControlError::WorkerGone)?;
        rx.await.map_err(|_| JobControlError::WorkerGone)?
    }

    /// Resumes a [suspended](Self::suspend) worker: continues its tree (thaws the cgroup, or
    /// SIGCONT) and its deadlines, each moved later by the time suspended. A no-op unless
    /// suspended.
    ///
    /// # Errors
    /// [`JobControlError::WorkerGone`] if the worker was shut down;
    /// [`JobControlError::Tree`] if continuing the tree failed (the deadlines run again
    /// anyway).
    ///
    /// # Cancel safety
    /// As [`suspend`](Self::suspend): once polled, the resume happens even if the future is
    /// dropped.
    pub async fn resume(&self) -> Result<(), JobControlError> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Resume { reply })
            .map_err(|_| JobControlError::WorkerGone)?;
        rx.await.map_err(|_| JobControlError::WorkerGone)?
    }

    /// The memory the worker's tree uses now, in bytes: its cgroup's current usage where it
    /// has a cgroup with the memory controller (v2 `memory.current`, or the v1 memory cgroup
    /// of a memory limit), else the worker process's resident set (`/proc/PID/statm`). A
    /// reading of the moment, never a peak. `None` once the worker has exited, or where the
    /// platform tells nothing. Answered in every state of the worker, a job included.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future only drops the answer.
    pub async fn memory(&self) -> Option<u64> {
        let (reply, rx) = oneshot::channel();
        self.control.send(Control::Memory { reply }).ok()?;
        rx.await.ok().flatten()
    }

    /// Asks the worker to exit (a `Shutdown` message; for a plain program the polite signal),
    /// escalating along the ladder, and waits until it is reaped. Returns how it ended, or
    /// `None` if it was still not gone after SIGKILL and `reap_timeout` (it is reaped in the
    /// background once it dies).
    pub async fn shutdown(self) -> Option<ExitStatus> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Request::Shutdown { reply }).is_err() {
            return None;
        }
        rx.await.unwrap_or(None)
    }
}

/// A run that found the worker's actor already finished (it has nothing more to tell).
fn actor_gone() -> RunError {
    RunError::WorkerGone {
        status: None,
        violation: None,
    }
}

/// Waits for the worker's hello, answers it, and returns the agreed version and SDK name.
async fn handshake(
    child: &mut Child,
    channel: &mut Channel,
    config: &WorkerConfig,
) -> Result<(u16, String), SpawnError> {
    let pid = child.pid();
    let mut handshake_timer = Wakeup::new();
    handshake_timer.set(deadline_after(Instant::now(), config.handshake_timeout));
    // A partial frame's stall bound, armed by its first byte.
    let mut stall = Wakeup::new();
    loop {
        tokio::select! {
            status = child.wait_exit() => {
                return Err(match status {
                    Ok(status) => SpawnError::ExitedDuringHandshake { pid, status },
                    Err(source) => SpawnError::Launch { program: pid.to_string().into(), source },
                });
            }
            event = channel.next_event(), if !channel.is_eof() => match event {
                Event::Message(WorkerMessage::Hello { protocol_version, sdk_version, .. }) => {
                    return match negotiate(protocol_version) {
                        Ok(version) => {
                            let hello = SupervisorMessage::Hello {
                                protocol_version: version,
                                supervisor_version: concat!("warden ", env!("CARGO_PKG_VERSION")).into(),
                                max_frame_len: config.max_frame_len,
                                heartbeat_interval_ms: config
                                    .requested_heartbeat()
                                    .map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)),
                            };
                            // Cannot fail: the message is far below any sane frame limit.
                            let _ = channel.send(&hello);
                            tracing::debug!(pid, version, sdk = %sdk_version, "handshake complete");
                            Ok((version, sdk_version))
                        }
                        Err(source) => {
                            let _ = channel.send(&SupervisorMessage::Refuse { reason: source.to_string() });
                            Err(SpawnError::IncompatibleVersion { pid, source })
                        }
                    };
                }
                Event::Message(other) => {
                    return Err(SpawnError::Protocol { pid, violation: Violation::BeforeHello { kind: other.kind() } });
                }
                Event::Invalid(e) => return Err(SpawnError::Protocol { pid, violation: Violation::Frame(e) }),
                Event::Partial => stall.set(deadline_after(Instant::now(), config.frame_timeout)),
                Event::Eof => {}
            },
            () = stall.fired() => {
                let violation = Violation::StalledFrame { timeout: config.frame_timeout };
                return Err(SpawnError::Protocol { pid, violation });
            }
            () = handshake_timer.fired() => {
                return Err(SpawnError::HandshakeTimeout { pid, timeout: config.handshake_timeout });
            }
        }
    }
}
