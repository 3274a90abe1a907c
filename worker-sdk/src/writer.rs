//! The channel's writers, and the clock of the protocol machine.
//!
//! The serve task reads, runs handlers and feeds the [`Machine`]; after each change it writes
//! what the machine queued itself, without blocking ([`Shared::flush`]), which costs a job no
//! wake-up of another thread. The writer thread finishes what the socket did not take, writes
//! heartbeats, and calls `handle_timeout` when a heartbeat or the end of the orphan grace is due.
//! A handler that hogs the serve task's thread (an async handler that never yields on a
//! current-thread runtime) therefore stops neither heartbeats nor the orphan exit.
//!
//! A blocking job's thread is a third writer: it ends its job and writes the terminal frame
//! itself the same way, and starts the next queued job under the same lock (`serve.rs`).
//!
//! # Invariants
//! - The machine is only touched under `Shared::state`; no I/O happens under that lock, and no
//!   cancel token is tripped under it (a token's callbacks are the handler's code).
//! - One frame is written at a time: a frame is taken from the machine only while it says no
//!   write is in flight ([`Machine::is_writing`]), and whoever took it writes it whole (or hands
//!   the rest to the writer thread as `State::tail`) before it reports it transmitted. So frames
//!   never interleave.
//! - The writer thread is woken only when it has work: a tail, a timer earlier than the one it
//!   sleeps until, or the stop. It wakes the serve task after every frame it wrote.
//! - Nothing is written once the machine says the channel closed or the exit is decided, nor
//!   once [`Writer`] is dropped; dropping it joins the thread, so its copy of the socket is
//!   closed when serving returns.

use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::socket::{MsgFlags, send};
use tokio::sync::Notify;
use tracing::Span;

use crate::machine::Machine;
use crate::serve::{JobSlot, ORPHAN_EXIT_CODE};

/// How long one wait for a full socket to drain lasts before the thread checks whether serving
/// stopped (bounds how long dropping a [`Writer`] can block).
const POLL_SLICE_MS: u16 = 50;

/// The state the serve task and the writer thread share.
pub(crate) struct Shared {
    state: Mutex<State>,
    writer: Condvar,
    /// Woken by the writer thread after it changed the machine (a frame written, the channel
    /// found closed, a timer fired).
    pub(crate) wake_serve: Notify,
    /// Set under the `state` lock when serving stops.
    stop: AtomicBool,
}

/// The machine, who writes what, and the running job's handles (under one lock). Derefs to the
/// machine.
pub(crate) struct State {
    machine: Machine,
    /// The serve side's view of the running job (`serve.rs`), under the machine's lock so that
    /// a job's start, its token's registration and the trips decided for it are ordered by one
    /// lock, whichever thread starts it.
    pub(crate) slot: JobSlot,
    /// The rest of a frame the serve task began and the socket did not take; the writer thread
    /// writes it (the machine counts it in flight until then).
    tail: Option<Vec<u8>>,
    /// `Some(until)` while the writer thread sleeps (`until`: its timer, if any); `None` while
    /// it is awake, when it looks at the machine before it sleeps again.
    asleep: Option<Option<Instant>>,
}

impl Deref for State {
    type Target = Machine;
    fn deref(&self) -> &Machine {
        &self.machine
    }
}

impl DerefMut for State {
    fn deref_mut(&mut self) -> &mut Machine {
        &mut self.machine
    }
}

impl Shared {
    /// Locks the machine. A panic while it was held cannot leave it half-updated in a way that
    /// matters more than stopping would, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called by the serve task after it changed the machine (without holding the lock): writes
    /// the frames queued now as far as the socket takes them without blocking, and wakes the
    /// writer thread only if that leaves it work (the rest of a frame, or a timer earlier than
    /// the one it sleeps until).
    ///
    /// Returns whether it wrote a whole frame. The machine counted the writer busy meanwhile,
    /// so a caller other than the serve task must wake the serve task if the machine now wants
    /// progress: it decides what to wait for only when woken, and may have decided while this
    /// wrote.
    pub(crate) fn flush(&self, socket: BorrowedFd<'_>) -> bool {
        let mut state = self.lock();
        let mut wake = false;
        let mut transmitted = false;
        while !state.machine.is_writing() {
            let Some(frame) = state.machine.poll_transmit() else {
                break;
            };
            drop(state);
            let written = send_now(socket, &frame);
            state = self.lock();
            match written {
                Ok(n) if n >= frame.len() => {
                    state.machine.handle_transmitted();
                    transmitted = true;
                }
                Ok(n) => {
                    state.tail = Some(frame.get(n..).unwrap_or_default().to_vec());
                    wake = true;
                    break;
                }
                Err(e) => {
                    state.machine.handle_channel_closed(Instant::now(), Some(e));
                    break;
                }
            }
        }
        if let Some(until) = state.asleep {
            let due = state.machine.poll_timeout();
            wake |= due.is_some_and(|due| until.is_none_or(|until| due < until));
        }
        drop(state);
        if wake {
            self.writer.notify_one();
        }
        transmitted
    }
}

/// The running writer thread; dropping it stops and joins the thread.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread, which owns `socket` (a copy of the channel) from now on.
    pub(crate) fn start(machine: Machine, socket: UnixStream, span: Span) -> io::Result<Writer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                machine,
                slot: JobSlot::default(),
                tail: None,
                asleep: None,
            }),
            writer: Condvar::new(),
            wake_serve: Notify::new(),
            stop: AtomicBool::new(false),
        });
        let thread = std::thread::Builder::new()
            .name("warden-writer".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || span.in_scope(|| run(&shared, &socket))
            })?;
        Ok(Writer {
            shared,
            thread: Some(thread),
        })
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        {
            // Under the lock, so the thread cannot miss it between its check and its wait.
            let _state = self.shared.lock();
            self.shared.stop.store(true, Ordering::Release);
        }
        self.shared.writer.notify_all();
        if let Some(thread) = self.thread.take() {
            // It returns within one poll slice; it does not panic (nothing in it unwraps).
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared, socket: &UnixStream) {
    let mut state = shared.lock();
    loop {
        state.asleep = None;
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        state.machine.handle_timeout(now);
        if state.machine.is_orphaned() {
            // The serve task may be starved by the very handler that outlived the channel; a
            // blocking handler cannot be stopped any other way either. The machine logged why.
            std::process::exit(ORPHAN_EXIT_CODE);
        }
        // While the serve task writes a frame, the next one waits for it (it takes the next
        // itself, or hands over the rest of this one).
        let frame = if state.machine.is_writing() {
            state.tail.take()
        } else {
            state.machine.poll_transmit()
        };
        if let Some(frame) = frame {
            drop(state);
            let written = send_frame(socket, &frame, &shared.stop);
            state = shared.lock();
            match written {
                Ok(()) => state.machine.handle_transmitted(),
                Err(e) => state.machine.handle_channel_closed(Instant::now(), Some(e)),
            }
            shared.wake_serve.notify_one();
            continue;
        }
        let due = state.machine.poll_timeout();
        state.asleep = Some(due);
        state = match due {
            Some(deadline) => {
                shared
                    .writer
                    .wait_timeout(state, deadline.saturating_duration_since(now))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => shared
                .writer
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
        };
    }
}

/// Writes as much of `frame` as the socket takes now; returns how much that was.
/// `MSG_NOSIGNAL`: a supervisor that is gone gives `EPIPE`, never `SIGPIPE`.
fn send_now(socket: BorrowedFd<'_>, frame: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while let Some(rest) = frame.get(sent..).filter(|rest| !rest.is_empty()) {
        match send(
            socket.as_raw_fd(),
            rest,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(sent)
}

/// Writes the whole frame. The socket is non-blocking (it shares its file description with the
/// serve task's reader), so a full socket is waited out with `poll`, in slices, giving up once
/// serving stopped. `MSG_NOSIGNAL`: a supervisor that is gone gives `EPIPE`, never `SIGPIPE`.
fn send_frame(socket: &UnixStream, mut frame: &[u8], stop: &AtomicBool) -> io::Result<()> {
    while !frame.is_empty() {
        match send(socket.as_raw_fd(), frame, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => frame = frame.get(n..).unwrap_or_default(),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => loop {
                if stop.load(Ordering::Acquire) {
                    return Err(io::Error::other("serving stopped"));
                }
                let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)];
                match poll(&mut fds, POLL_SLICE_MS) {
                    Ok(0) | Err(Errno::EINTR) => {}
                    Ok(_) => break,
                    Err(e) => return Err(e.into()),
                }
            },
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
