"""The worker's side of the protocol as a sans-IO state machine: every decision serving makes,
with no sockets, threads or clock reads (``now`` is an argument). A port of the Rust SDK's
``worker-sdk/src/machine.rs``, with the same decisions:

- One job at a time. A ``StartJob`` while one runs, or after ``Shutdown``, is the supervisor's
  violation: the running job's token trips (``CLOSED``), nothing more is sent, serving ends with
  a protocol error. A ``StartJob`` after the polite signal crossed it and is dropped.
- A ``Cancel`` trips the running job's token once; one for any other job is ignored (it crossed
  that job's result).
- Exactly one terminal message per job, after its last progress report; none after it. A result
  that does not fit in a frame becomes a ``Failed`` that does.
- ``Shutdown`` and the polite signal end serving once no job runs and every queued frame is
  written; the signal also trips the running job's token.
- The channel closing trips the running job's token and starts the orphan grace: the handler
  returning in time ends serving (``disconnected``), the grace running out exits the process
  (``orphaned``). Idle, serving ends at once. Nothing is written after the channel closed.
- Heartbeats, if asked for, are due every interval from the handshake until the exit is
  decided; at most one waits in the queue, and after a stall the rhythm restarts from now.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Deque, List, Optional, Union

from . import protocol as p

# Encoded size of a Failed message without its text, at most: tag, job id varint, length varint.
FAILED_OVERHEAD = 16


@dataclass
class Config:
    """What the handshake settled, and the SDK's own settings (seconds)."""

    max_frame_len: int
    heartbeat_interval: Optional[float]
    orphan_grace: float


@dataclass(frozen=True)
class Finished:
    """How a handler call ended: ``kind`` is ``returned`` (with ``output``), ``cancelled``
    (it raised ``Cancelled``) or ``failed`` (with ``error``)."""

    kind: str
    output: bytes = b""
    error: str = ""


@dataclass(frozen=True)
class StartAction:
    """Start the handler for a job. ``deadline``: monotonic seconds, or None."""

    job: int
    payload: bytes
    deadline: Optional[float]


@dataclass(frozen=True)
class TripAction:
    """Trip the running job's token (at most once per job)."""

    job: int
    reason: p.CancelReason


Action = Union[StartAction, TripAction]


@dataclass(frozen=True)
class Exit:
    """How serving ends: ``stopped`` (Shutdown or the signal, all written), ``disconnected``
    (the channel closed; ``error`` is the OS error, if any), ``protocol`` (the supervisor broke
    the protocol; ``error`` says how) or ``orphaned`` (exit the process now)."""

    kind: str
    error: Optional[BaseException] = None


_HEARTBEAT = object()


class Machine:
    """The worker's protocol state; see the module docs."""

    def __init__(self, config: Config, now: float) -> None:
        self.config = config
        self._job: Optional[int] = None
        self._tripped = False
        self._stopping: Optional[str] = None  # "shutdown" or "signal"
        self._closed = False
        self._close_error: Optional[BaseException] = None
        self._orphan_deadline: Optional[float] = None
        self._next_heartbeat: Optional[float] = (
            now + config.heartbeat_interval if config.heartbeat_interval else None
        )
        self._queue: Deque[object] = collections.deque()
        self._in_flight = False
        self._actions: Deque[Action] = collections.deque()
        self._exit: Optional[Exit] = None
        self._ended = False

    # Inputs -------------------------------------------------------------------------------

    def handle_message(self, now: float, msg: p.SupervisorMessage) -> None:
        """A decoded message from the supervisor."""
        if self._closed or (self._ended and not self._stop_pending()):
            return
        if isinstance(msg, p.StartJob):
            self._start(now, msg)
        elif isinstance(msg, p.Cancel):
            if self._job == msg.job and not self._tripped:
                self._tripped = True
                self._actions.append(TripAction(msg.job, msg.reason))
            # Otherwise it crossed with that job's result, or is a second one: ignored.
        elif isinstance(msg, p.Shutdown):
            if self._stopping is None:
                self._stopping = "shutdown"
            self._check_stopped()
        else:
            kind = type(msg).__name__
            self._violation(f"unexpected {kind} from the supervisor")

    def handle_decode_error(self, error: p.DecodeError) -> None:
        """The supervisor's bytes do not decode: the stream is lost."""
        if self._closed or (self._ended and not self._stop_pending()):
            return
        self._violation(f"undecodable frame from the supervisor ({error.kind}): {error}")

    def handle_progress(self, job: int, fraction: Optional[float], text: Optional[str]) -> None:
        """The handler's latest progress for ``job`` (ignored unless it is running)."""
        if self._ended or self._closed or self._job != job:
            return
        try:
            self._queue_frame(p.Progress(job, fraction, text))
        except p.EncodeError:
            pass  # a report that does not fit in a frame is dropped

    def handle_finished(self, job: int, finished: Finished) -> None:
        """The handler for ``job`` ended: queue its single terminal message."""
        if self._job != job:
            return
        tripped = self._tripped
        self._job = None
        self._tripped = False
        if self._ended:
            return
        if self._closed:
            self._orphan_deadline = None
            self._end(Exit("disconnected", self._close_error))
            return
        max_len = self.config.max_frame_len
        msg: p.WorkerMessage
        if finished.kind == "returned":
            if len(finished.output) > max_len:
                msg = p.Failed(job, _output_too_large(len(finished.output), max_len))
            else:
                msg = p.Completed(job, finished.output)
        elif finished.kind == "cancelled" and tripped:
            msg = p.CancelledMsg(job)
        elif finished.kind == "cancelled":
            msg = p.Failed(job, "handler raised Cancelled without a cancel request")
        else:
            msg = p.Failed(job, finished.error)
        self._queue_terminal(msg)
        self._check_stopped()

    def handle_signal(self) -> None:
        """The polite signal: trip the running job's token, stop once it has finished."""
        if self._ended or self._closed or self._stopping == "signal":
            return
        self._stopping = "signal"
        if self._job is not None and not self._tripped:
            self._tripped = True
            self._actions.append(TripAction(self._job, p.CancelReason.SIGNAL))
        self._check_stopped()

    def handle_channel_closed(self, now: float, error: Optional[BaseException] = None) -> None:
        """The channel is gone: EOF (``error`` None), or a read or write error."""
        if self._ended or self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._in_flight = False
        self._next_heartbeat = None
        if self._job is None:
            self._end(Exit("disconnected", error))
            return
        if not self._tripped:
            self._tripped = True
            self._actions.append(TripAction(self._job, p.CancelReason.CLOSED))
        self._close_error = error
        self._orphan_deadline = now + self.config.orphan_grace

    def handle_transmitted(self) -> None:
        """The frame last taken with ``poll_transmit`` is written."""
        self._in_flight = False
        self._check_stopped()

    def handle_timeout(self, now: float) -> None:
        """Time passed; harmless before ``poll_timeout``."""
        if self._ended:
            return
        if self._orphan_deadline is not None and self._orphan_deadline <= now:
            self._orphan_deadline = None
            self._end(Exit("orphaned"))
            return
        interval = self.config.heartbeat_interval
        due = self._next_heartbeat
        if due is not None and interval and due <= now:
            if not any(o is _HEARTBEAT for o in self._queue):
                self._queue.append(_HEARTBEAT)
            nxt = due + interval
            self._next_heartbeat = nxt if nxt > now else now + interval

    # Outputs ------------------------------------------------------------------------------

    def poll_transmit(self) -> Optional[bytes]:
        """The next whole frame to write; the writer counts as busy until
        ``handle_transmitted``. Nothing once the channel closed or the exit is decided."""
        if self._closed or self._ended or not self._queue:
            return None
        item = self._queue.popleft()
        frame = p.encode_frame(p.Heartbeat()) if item is _HEARTBEAT else item
        self._in_flight = True
        assert isinstance(frame, bytes)
        return frame

    def poll_action(self) -> Optional[Action]:
        """The next thing to do besides writing, in the order decided."""
        return self._actions.popleft() if self._actions else None

    def poll_exit(self) -> Optional[Exit]:
        """How serving ends, once decided (returned once)."""
        exit_, self._exit = self._exit, None
        return exit_

    def poll_timeout(self) -> Optional[float]:
        """When ``handle_timeout`` is due next (monotonic seconds), or None."""
        if self._ended:
            return None
        times = [t for t in (self._next_heartbeat, self._orphan_deadline) if t is not None]
        return min(times) if times else None

    def wants_progress(self) -> Optional[int]:
        """The running job, when the writer is idle: the time to send its latest report.
        Reports coalesce in the job while frames wait, so the queue stays short."""
        if self._ended or self._closed or self._in_flight or self._queue:
            return None
        return self._job

    def running(self) -> Optional[int]:
        """The job whose handler is running, if any."""
        return self._job

    def is_orphaned(self) -> bool:
        """Whether the decided exit is ``orphaned`` and not yet taken."""
        return self._exit is not None and self._exit.kind == "orphaned"

    def is_ended(self) -> bool:
        """Whether the exit is decided (even if taken)."""
        return self._ended

    # Internals ----------------------------------------------------------------------------

    def _stop_pending(self) -> bool:
        return self._exit is not None and self._exit.kind == "stopped"

    def _start(self, now: float, msg: p.StartJob) -> None:
        if self._job is not None:
            self._violation(f"job {msg.job} started while job {self._job} runs")
            return
        if self._stopping == "shutdown":
            self._violation(f"job {msg.job} started after shutdown")
            return
        if self._stopping == "signal":
            return  # crossed with the signal; about to exit
        deadline = None if msg.deadline_ms is None else now + msg.deadline_ms / 1000.0
        self._job = msg.job
        self._tripped = False
        self._actions.append(StartAction(msg.job, msg.payload, deadline))

    def _violation(self, error: str) -> None:
        if self._job is not None and not self._tripped:
            self._actions.append(TripAction(self._job, p.CancelReason.CLOSED))
        self._job = None
        self._queue.clear()
        self._end(Exit("protocol", ProtocolViolation(error)))

    def _check_stopped(self) -> None:
        if self._ended or self._closed or self._job is not None or self._in_flight:
            return
        # Heartbeats alone do not hold up a stop.
        if any(o is not _HEARTBEAT for o in self._queue):
            return
        if self._stopping is not None:
            self._queue.clear()
            self._end(Exit("stopped"))

    def _end(self, exit_: Exit) -> None:
        self._ended = True
        self._next_heartbeat = None
        self._exit = exit_

    def _queue_frame(self, msg: p.WorkerMessage) -> None:
        self._queue.append(p.encode_frame(msg, self.config.max_frame_len))

    def _queue_terminal(self, msg: p.WorkerMessage) -> None:
        try:
            self._queue_frame(msg)
            return
        except p.EncodeError:
            pass
        max_len = self.config.max_frame_len
        if isinstance(msg, p.Completed):
            error = _output_too_large(len(msg.output), max_len)
        elif isinstance(msg, p.Failed):
            error = msg.error
        else:  # pragma: no cover - Cancelled always fits in the smallest accepted limit
            return
        error = p.truncate_text(error, max(0, max_len - FAILED_OVERHEAD))
        self._queue_frame(p.Failed(msg.job, error))


class ProtocolViolation(Exception):
    """What the supervisor did wrong (carried by ``Exit('protocol')``)."""


def _output_too_large(length: int, max_len: int) -> str:
    return f"output of {length} bytes exceeds the supervisor's frame limit of {max_len} bytes"


def drain_actions(machine: Machine) -> List[Action]:
    """Every pending action, in order."""
    out: List[Action] = []
    while True:
        action = machine.poll_action()
        if action is None:
            return out
        out.append(action)
