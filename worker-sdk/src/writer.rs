//! The writer thread: the only writer of the channel, and the clock of the protocol machine.
//!
//! The serve task reads, runs handlers and feeds the [`Machine`]; this thread takes whole frames
//! out of it and writes them, and calls its `handle_timeout` when a heartbeat or the end of the
//! orphan grace is due. A handler that hogs the serve task's thread (an async handler that never
//! yields on a current-thread runtime) therefore stops neither heartbeats nor the orphan exit,
//! and since one thread writes every frame, frames never interleave.
//!
//! # Invariants
//! - The machine is only touched under `Shared::machine`; no I/O happens under that lock.
//! - Whoever changes the machine wakes the other side after releasing the lock: the serve task
//!   calls [`Shared::wake_writer`], this thread notifies `wake_serve`.
//! - Nothing is written once the machine says the channel closed or the exit is decided, nor
//!   once [`Writer`] is dropped; dropping it joins the thread, so its copy of the socket is
//!   closed when serving returns.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
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
use crate::serve::ORPHAN_EXIT_CODE;

/// How long one wait for a full socket to drain lasts before the thread checks whether serving
/// stopped (bounds how long dropping a [`Writer`] can block).
const POLL_SLICE_MS: u16 = 50;

/// The state the serve task and the writer thread share.
pub(crate) struct Shared {
    machine: Mutex<Machine>,
    writer: Condvar,
    /// Woken by the writer thread after it changed the machine (a frame written, the channel
    /// found closed, a timer fired).
    pub(crate) wake_serve: Notify,
    /// Set under the `machine` lock when serving stops.
    stop: AtomicBool,
}

impl Shared {
    /// Locks the machine. A panic while it was held cannot leave it half-updated in a way that
    /// matters more than stopping would, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells the writer thread the machine changed (call without holding the lock).
    pub(crate) fn wake_writer(&self) {
        self.writer.notify_one();
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
            machine: Mutex::new(machine),
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
            let _machine = self.shared.lock();
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
    let mut machine = shared.lock();
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        machine.handle_timeout(now);
        if machine.is_orphaned() {
            // The serve task may be starved by the very handler that outlived the channel; a
            // blocking handler cannot be stopped any other way either. The machine logged why.
            std::process::exit(ORPHAN_EXIT_CODE);
        }
        if let Some(frame) = machine.poll_transmit() {
            drop(machine);
            let written = send_frame(socket, &frame, &shared.stop);
            machine = shared.lock();
            match written {
                Ok(()) => machine.handle_transmitted(),
                Err(e) => machine.handle_channel_closed(Instant::now(), Some(e)),
            }
            shared.wake_serve.notify_one();
            continue;
        }
        machine = match machine.poll_timeout() {
            Some(deadline) => {
                shared
                    .writer
                    .wait_timeout(machine, deadline.saturating_duration_since(now))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => shared
                .writer
                .wait(machine)
                .unwrap_or_else(PoisonError::into_inner),
        };
    }
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
