"""Serving: the channel, the handshake, the reader loop, the writer thread and the runners.

Three threads (plus the asyncio loop for ``serve_async``):

- the **reader** (the caller's thread in ``serve``, ``warden-reader`` in ``serve_async``) reads
  and decodes the supervisor's frames, starts handlers, trips tokens and forwards progress,
  feeding the sans-IO ``Machine`` under one lock;
- the **writer** (``warden-writer``) is the channel's only writer (whole frames,
  ``MSG_NOSIGNAL``) and the machine's clock: heartbeats and the orphan exit come from it, so a
  handler that never checks its job does not stop them (the GIL switches threads every few
  milliseconds; a C extension that holds the GIL for long does stop them);
- the **job thread** (``warden-job``, reused from job to job) runs a blocking handler; an async
  handler runs as a task on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time
import traceback
import queue
from typing import Any, Awaitable, Callable, List, Optional, Tuple, Union

from . import protocol as p
from ._errors import (
    BootstrapError,
    Cancelled,
    Disconnected,
    HandshakeError,
    NotStartedByWarden,
    ProtocolError,
    Refused,
    WardenError,
)
from ._job import AsyncJob, Job, _JobBase, _ProgressSlot, _Token
from ._machine import Config, Exit, Finished, Machine, StartAction, TripAction, drain_actions

__version__ = "0.1.0"

FD_ENV_VAR = "WARDEN_FD"
"""The environment variable that names the channel's descriptor."""

SDK_VERSION = f"warden-worker-python {__version__}"
"""What the worker's hello names as its SDK."""

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
"""Seconds to wait for the supervisor's hello."""

DEFAULT_ORPHAN_GRACE = 1.0
"""Seconds a handler may keep running after the channel closed before the process exits."""

ORPHAN_EXIT_CODE = 70
"""The status the process exits with when its handler outlives the channel (EX_SOFTWARE)."""

MIN_MAX_FRAME_LEN = 16
"""The smallest frame limit accepted from the supervisor: a heartbeat, and a ``Failed`` with
an empty error for any job id, must fit."""

READ_CHUNK = 64 * 1024
_POLL_SLICE = 0.05

_taken = False
_taken_lock = threading.Lock()


def _take_channel() -> socket.socket:
    """The socket named by ``WARDEN_FD``: checked, made close-on-exec, and the variable
    removed from the environment so that programs the worker starts do not see it."""
    global _taken
    value = os.environ.get(FD_ENV_VAR)
    if value is None:
        raise NotStartedByWarden()
    if not value or not value.isascii() or not value.isdigit():
        raise BootstrapError(f"{FD_ENV_VAR}={value!r} is not a descriptor number")
    fd = int(value)
    with _taken_lock:
        if _taken:
            raise BootstrapError("the warden channel was already taken by this process")
        try:
            mode = os.fstat(fd).st_mode
        except OSError as e:
            raise BootstrapError(f"{FD_ENV_VAR} names descriptor {fd}, which is not open") from e
        if not stat.S_ISSOCK(mode):
            raise BootstrapError(f"{FD_ENV_VAR} names descriptor {fd}, which is not a socket")
        sock = socket.socket(fileno=fd)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise BootstrapError(
                f"{FD_ENV_VAR} names descriptor {fd}, which is not a Unix stream socket"
            )
        _taken = True
    os.set_inheritable(fd, False)
    os.environ.pop(FD_ENV_VAR, None)
    return sock


class _Wake:
    """The reader's wake-up: a non-blocking pipe any thread (or a signal handler) writes."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        for fd in (self.r, self.w):
            os.set_blocking(fd, False)
        self.signalled = False

    def wake(self) -> None:
        try:
            os.write(self.w, b"\0")
        except OSError:
            pass  # full: a wake-up is pending anyway

    def drain(self) -> None:
        try:
            while os.read(self.r, 4096):
                pass
        except OSError:
            pass

    def on_signal(self, *_: object) -> None:
        self.signalled = True
        self.wake()

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def _wait(fds: List[int], deadline: Optional[float]) -> List[int]:
    """The fds of ``fds`` that are readable, waiting until ``deadline`` (monotonic) at most."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    timeout = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000) + 1)
    return [fd for fd, _ in poller.poll(timeout)]


def _send_all(sock: socket.socket, frame: bytes, stopped: Callable[[], bool]) -> Optional[OSError]:
    """Writes the whole frame on the non-blocking socket; a full socket is waited out in slices
    until ``stopped()``. Returns the error that ended it, if any."""
    view = memoryview(frame)
    while view:
        try:
            n = sock.send(view, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            while not select.select([], [sock], [], _POLL_SLICE)[1]:
                if stopped():
                    return OSError("serving stopped")
            continue
        except InterruptedError:
            continue
        except OSError as e:
            return e
        view = view[n:]
    return None


def _handshake(sock: socket.socket, timeout: float, wake: _Wake) -> Optional[p.Hello]:
    """Sends the hello and reads exactly the supervisor's answer (later bytes stay in the
    socket). None: the polite signal came first."""
    deadline = time.monotonic() + timeout
    hello = p.encode_frame(p.WorkerHello(p.PROTOCOL_VERSION, os.getpid(), SDK_VERSION))
    error = _send_all(sock, hello, lambda: time.monotonic() > deadline)
    if error is not None:
        raise HandshakeError(f"could not send the hello: {error}") from error
    def recv_exact(n: int) -> Optional[bytes]:
        buf = b""
        while len(buf) < n:
            if wake.signalled:
                return None
            if time.monotonic() > deadline:
                raise HandshakeError(f"no hello from the supervisor within {timeout} s")
            ready = _wait([sock.fileno(), wake.r], deadline)
            if wake.r in ready:
                wake.drain()
            if sock.fileno() not in ready:
                continue
            try:
                chunk = sock.recv(n - len(buf))
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                raise HandshakeError(f"the channel failed during the handshake: {e}") from e
            if not chunk:
                raise HandshakeError("the supervisor closed the channel during the handshake")
            buf += chunk
        return buf

    header = recv_exact(p.HEADER_LEN)
    if header is None:
        return None
    # The declared length is checked before anything is read or allocated for the body.
    (length,) = struct.unpack("<I", header)
    if length == 0 or length > p.DEFAULT_MAX_FRAME_LEN:
        raise HandshakeError(
            f"the supervisor's answer declares {length} bytes (limit {p.DEFAULT_MAX_FRAME_LEN})"
        )
    body = recv_exact(length)
    if body is None:
        return None
    try:
        msg = p.decode_body(body, p.SUPERVISOR)
    except p.DecodeError as e:
        raise HandshakeError(f"the supervisor's answer does not decode: {e}") from e
    if isinstance(msg, p.Refuse):
        raise Refused(msg.reason)
    if not isinstance(msg, p.Hello):
        raise HandshakeError(f"expected the supervisor's hello, got {type(msg).__name__}")
    if msg.protocol_version != p.PROTOCOL_VERSION:
        raise HandshakeError(
            f"the supervisor speaks protocol version {msg.protocol_version}, "
            f"this SDK speaks {p.PROTOCOL_VERSION}"
        )
    if msg.max_frame_len < MIN_MAX_FRAME_LEN:
        raise HandshakeError(
            f"the supervisor's frame limit of {msg.max_frame_len} bytes is under "
            f"the {MIN_MAX_FRAME_LEN} this SDK needs"
        )
    return msg


def _describe(e: BaseException) -> str:
    text = str(e)
    return text if text else type(e).__name__


def _finished_from_return(value: object) -> Finished:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Finished("returned", output=bytes(value))
    return Finished("failed", error=f"handler returned {type(value).__name__}, not bytes")


def _finished_from_exception(e: BaseException) -> Finished:
    if isinstance(e, (Cancelled, asyncio.CancelledError)):
        return Finished("cancelled")
    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    return Finished("failed", error=_describe(e))


class _BlockingRunner:
    """Runs each job's handler on one reused daemon thread, ``warden-job``."""

    def __init__(self, handler: Callable[[Job], Any]) -> None:
        self._handler = handler
        self._jobs: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="warden-job", daemon=True)
        self._thread.start()

    job_class = Job

    def start(self, job: _JobBase, done: Callable[[Finished], None]) -> None:
        self._jobs.put((job, done))

    def _loop(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                finished = _finished_from_return(self._handler(job))
            except BaseException as e:  # noqa: B902 - every way out of a handler is an answer
                finished = _finished_from_exception(e)
            done(finished)


class _AsyncRunner:
    """Runs each job's handler as a task on the caller's event loop."""

    job_class = AsyncJob

    def __init__(self, handler: Callable[[AsyncJob], Any], loop: asyncio.AbstractEventLoop) -> None:
        self._handler = handler
        self._loop = loop

    def start(self, job: _JobBase, done: Callable[[Finished], None]) -> None:
        assert isinstance(job, AsyncJob)

        async def run() -> None:
            try:
                result: Any = self._handler(job)
                if inspect.isawaitable(result):
                    result = await result
                finished = _finished_from_return(result)
            except BaseException as e:  # noqa: B902
                finished = _finished_from_exception(e)
            done(finished)

        try:
            asyncio.run_coroutine_threadsafe(run(), self._loop)
        except RuntimeError:
            done(Finished("failed", error="the event loop is closed"))


class _Running:
    def __init__(self, job_id: int, token: _Token, slot: _ProgressSlot) -> None:
        self.id = job_id
        self.token = token
        self.slot = slot


class _Core:
    """The reader loop and the writer thread around one ``Machine``."""

    def __init__(self, sock: socket.socket, machine: Machine, wake: _Wake) -> None:
        self.sock = sock
        self.machine = machine
        self.wake = wake
        self.cond = threading.Condition()
        self.decoder = p.FrameDecoder(machine.config.max_frame_len, p.SUPERVISOR)
        self.job: Optional[_Running] = None
        self.finished: Optional[Tuple[int, Finished]] = None
        self.read_closed = False
        self.signal_seen = False
        self.aborted = False
        self._stop = False
        self._writer = threading.Thread(target=self._write_loop, name="warden-writer", daemon=True)

    # The writer thread --------------------------------------------------------------------

    def _write_loop(self) -> None:
        m = self.machine
        with self.cond:
            while not self._stop:
                now = time.monotonic()
                m.handle_timeout(now)
                if m.is_orphaned():
                    # A blocking handler cannot be stopped any other way, and nobody would
                    # read its result.
                    _orphan_exit()
                frame = m.poll_transmit()
                if frame is not None:
                    self.cond.release()
                    try:
                        error = _send_all(self.sock, frame, lambda: self._stop)
                    finally:
                        self.cond.acquire()
                    if error is None:
                        m.handle_transmitted()
                    else:
                        m.handle_channel_closed(time.monotonic(), error)
                    self.wake.wake()
                    continue
                due = m.poll_timeout()
                self.cond.wait(None if due is None else max(0.0, due - now))

    def _stop_writer(self) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        if self._writer.is_alive():
            self._writer.join()

    # The reader ---------------------------------------------------------------------------

    def run(self, runner: Union[_BlockingRunner, _AsyncRunner]) -> Exit:
        self._writer.start()
        try:
            return self._read_loop(runner)
        finally:
            self._stop_writer()
            if self.job is not None:
                # Serving stopped with the handler still running: its result has nowhere to go.
                self.job.token.trip(p.CancelReason.CLOSED)

    def _done(self, job_id: int) -> Callable[[Finished], None]:
        def done(finished: Finished) -> None:
            with self.cond:
                self.finished = (job_id, finished)
            self.wake.wake()

        return done

    def _read_loop(self, runner: Union[_BlockingRunner, _AsyncRunner]) -> Exit:
        m = self.machine
        sock_fd = self.sock.fileno()
        while True:
            with self.cond:
                actions = drain_actions(m)
                exit_ = m.poll_exit()
                progress_for = m.wants_progress()
                self.cond.notify_all()
            for action in actions:
                if isinstance(action, StartAction):
                    token = _Token()
                    slot = _ProgressSlot(self.wake.wake)
                    self.job = _Running(action.job, token, slot)
                    job = runner.job_class(action.job, action.payload, action.deadline, token, slot)
                    runner.start(job, self._done(action.job))
                elif isinstance(action, TripAction):
                    if self.job is not None and self.job.id == action.job:
                        self.job.token.trip(action.reason)
            if exit_ is not None:
                return exit_
            if self.aborted:
                return Exit("aborted")
            if self.job is not None and progress_for == self.job.id:
                update = self.job.slot.take()
                if update is not None:
                    with self.cond:
                        m.handle_progress(self.job.id, *update)
                    continue
            fds = [self.wake.r] if self.read_closed else [self.wake.r, sock_fd]
            ready = _wait(fds, None)
            if self.wake.r in ready:
                self.wake.drain()
            now = time.monotonic()
            if self.wake.signalled and not self.signal_seen:
                self.signal_seen = True
                with self.cond:
                    m.handle_signal()
            with self.cond:
                finished, self.finished = self.finished, None
            if finished is not None and self.job is not None and finished[0] == self.job.id:
                running, self.job = self.job, None
                last = running.slot.close()
                with self.cond:
                    if last is not None:
                        m.handle_progress(running.id, *last)
                    m.handle_finished(running.id, finished[1])
            if sock_fd in ready and not self.read_closed:
                self._read(now)

    def _read(self, now: float) -> None:
        m = self.machine
        try:
            data = self.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.read_closed = True
            with self.cond:
                m.handle_channel_closed(now, e)
            return
        if not data:
            self.read_closed = True
            with self.cond:
                m.handle_channel_closed(now, None)
            return
        self.decoder.push(data)
        # Everything this read brought is decoded: a violation right behind Shutdown counts.
        with self.cond:
            while True:
                try:
                    msg = self.decoder.next()
                except p.DecodeError as e:
                    m.handle_decode_error(e)
                    self.read_closed = True
                    return
                if msg is None:
                    return
                m.handle_message(now, msg)  # type: ignore[arg-type]


def _orphan_exit() -> None:
    print(
        "warden_worker: the handler is still running after the supervisor went away; exiting",
        file=sys.stderr,
    )
    try:
        sys.stderr.flush()
        sys.stdout.flush()
    except Exception:
        pass
    os._exit(ORPHAN_EXIT_CODE)


def _result(exit_: Exit) -> None:
    if exit_.kind == "stopped":
        return None
    if exit_.kind == "disconnected":
        raise Disconnected("the supervisor closed the channel") from exit_.error
    if exit_.kind == "protocol":
        raise ProtocolError(str(exit_.error))
    if exit_.kind == "orphaned":
        _orphan_exit()
    if exit_.kind == "aborted":
        return None
    raise WardenError(f"serving ended unexpectedly: {exit_.kind}")  # pragma: no cover


def _serve_on(
    sock: socket.socket,
    wake: _Wake,
    make_runner: Callable[[], Union[_BlockingRunner, _AsyncRunner]],
    handshake_timeout: float,
    orphan_grace: float,
    on_core: Callable[[_Core], None] = lambda core: None,
) -> Exit:
    sock.setblocking(False)
    hello = _handshake(sock, handshake_timeout, wake)
    if hello is None:
        return Exit("stopped")
    interval = hello.heartbeat_interval_ms / 1000.0 if hello.heartbeat_interval_ms else None
    machine = Machine(Config(hello.max_frame_len, interval, orphan_grace), time.monotonic())
    core = _Core(sock, machine, wake)
    on_core(core)
    return core.run(make_runner())


def _check_options(handle_sigterm: bool, orphan_grace: float) -> None:
    if handle_sigterm and threading.current_thread() is not threading.main_thread():
        raise WardenError(
            "SIGTERM can only be handled from the main thread; pass handle_sigterm=False"
        )
    if not orphan_grace >= 0:
        raise ValueError("orphan_grace must be a number of seconds, at least 0")


def serve(
    handler: Callable[[Job], Union[bytes, bytearray, memoryview]],
    *,
    handle_sigterm: bool = True,
    orphan_grace: float = DEFAULT_ORPHAN_GRACE,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    channel: Optional[socket.socket] = None,
) -> None:
    """Serves jobs with a blocking ``handler(job) -> bytes`` until the supervisor says stop.

    Each job's handler runs on a thread of its own (``warden-job``) while this thread keeps
    reading the channel. Returning bytes answers ``Completed`` (even after a cancel); raising
    ``Cancelled`` after a cancel answers ``Cancelled``; any other exception answers ``Failed``
    with its message (the traceback goes to stderr).

    Returns after ``Shutdown`` or the polite signal (SIGTERM, which also cancels the running
    job), once the last result is written. ``handle_sigterm=False`` leaves SIGTERM alone (it
    must be False outside the main thread). ``channel``: a connected Unix stream socket to
    serve on instead of ``WARDEN_FD`` (for tests); it is closed on return.

    Raises ``NotStartedByWarden``/``BootstrapError`` (no channel), ``HandshakeError`` (refused,
    another version, no answer within ``handshake_timeout`` seconds), ``ProtocolError`` (the
    supervisor broke the protocol) or ``Disconnected`` (the channel closed; a handler still
    running ``orphan_grace`` seconds after that makes the process exit with status 70).
    """
    _check_options(handle_sigterm, orphan_grace)
    wake = _Wake()
    previous: Any = None
    previous_fd = -1
    try:
        if handle_sigterm:
            # Installed before the hello, so a supervisor that got the hello can rely on it.
            # The wake-up fd is written by the C-level handler, whichever thread the kernel
            # delivers the signal to: the reader's poll returns even if it was not interrupted.
            previous = signal.signal(signal.SIGTERM, wake.on_signal)
            previous_fd = signal.set_wakeup_fd(wake.w, warn_on_full_buffer=False)
        sock = channel if channel is not None else _take_channel()
        with sock:
            exit_ = _serve_on(
                sock, wake, lambda: _BlockingRunner(handler), handshake_timeout, orphan_grace
            )
        _result(exit_)
    finally:
        if handle_sigterm and previous is not None:
            signal.set_wakeup_fd(previous_fd)
            signal.signal(signal.SIGTERM, previous)
        wake.close()


async def serve_async(
    handler: Callable[[AsyncJob], Awaitable[Union[bytes, bytearray, memoryview]]],
    *,
    handle_sigterm: bool = True,
    orphan_grace: float = DEFAULT_ORPHAN_GRACE,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    channel: Optional[socket.socket] = None,
) -> None:
    """``serve`` for an ``async def handler(job) -> bytes`` on the running asyncio loop:
    ``asyncio.run(warden_worker.serve_async(handler))``.

    Each job runs as a task on this loop; ``await job.cancelled()`` completes on a cancel. The
    channel is read and written by SDK threads, so heartbeats keep flowing while a handler
    computes without awaiting. Same results and errors as ``serve``.

    Cancelling the coroutine stops serving: the running job's token trips and its result is
    not sent.
    """
    _check_options(handle_sigterm, orphan_grace)
    loop = asyncio.get_running_loop()
    wake = _Wake()
    done: "asyncio.Future[Exit]" = loop.create_future()
    cores: List[_Core] = []

    def settle(result: Any, error: Optional[BaseException]) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def reader(sock: socket.socket) -> None:
        try:
            with sock:
                exit_ = _serve_on(
                    sock,
                    wake,
                    lambda: _AsyncRunner(handler, loop),
                    handshake_timeout,
                    orphan_grace,
                    cores.append,
                )
            outcome: Tuple[Optional[Exit], Optional[BaseException]] = (exit_, None)
        except BaseException as e:  # noqa: B902 - handed to the awaiting coroutine
            outcome = (None, e)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:
            pass  # the loop is gone; nobody is waiting

    if handle_sigterm:
        loop.add_signal_handler(signal.SIGTERM, wake.on_signal)
    try:
        sock = channel if channel is not None else _take_channel()
        thread = threading.Thread(target=reader, args=(sock,), name="warden-reader", daemon=True)
        thread.start()
        try:
            exit_ = await asyncio.shield(done)
        except asyncio.CancelledError:
            for core in cores:
                core.aborted = True
            wake.wake()
            await loop.run_in_executor(None, thread.join)
            raise
        await loop.run_in_executor(None, thread.join)
        _result(exit_)
    finally:
        if handle_sigterm:
            loop.remove_signal_handler(signal.SIGTERM)
        wake.close()
