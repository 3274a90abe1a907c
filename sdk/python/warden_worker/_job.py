"""What a handler gets: the job, its cancellation token and its progress reporter."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from typing import Callable, List, Optional, Tuple

from . import protocol as p
from ._errors import Cancelled

_Report = Tuple[Optional[float], Optional[str]]


class CancelRegistration:
    """A callback registered with ``job.on_cancel``; ``remove()`` (or leaving the ``with``
    block) unregisters it if it has not run yet."""

    def __init__(self, token: "_Token", callback: Callable[[], object]) -> None:
        self._token = token
        self._callback = callback

    def remove(self) -> None:
        """Unregisters the callback (no-op once it ran)."""
        self._token._remove(self._callback)

    def __enter__(self) -> "CancelRegistration":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _run_callback(callback: Callable[[], object]) -> None:
    try:
        callback()
    except Exception:  # a callback's error must not stop the SDK's thread
        print("warden_worker: an on_cancel callback raised:", file=sys.stderr)
        traceback.print_exc()


class _Token:
    """Trips once, with a reason; wakes waiters and runs callbacks (on the tripping thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self.reason: Optional[p.CancelReason] = None
        self._callbacks: List[Callable[[], object]] = []
        self._futures: List[Tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]] = []

    def trip(self, reason: p.CancelReason) -> bool:
        with self._lock:
            if self.reason is not None:
                return False
            self.reason = reason
            callbacks, self._callbacks = self._callbacks, []
            futures, self._futures = self._futures, []
        self._event.set()
        for loop, fut in futures:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:
                pass  # that loop is closed: nobody waits any more
        for callback in callbacks:
            _run_callback(callback)
        return True

    def register(self, callback: Callable[[], object]) -> CancelRegistration:
        with self._lock:
            tripped = self.reason is not None
            if not tripped:
                self._callbacks.append(callback)
        if tripped:
            _run_callback(callback)
        return CancelRegistration(self, callback)

    def _remove(self, callback: Callable[[], object]) -> None:
        with self._lock:
            self._callbacks = [c for c in self._callbacks if c is not callback]

    def wait(self, timeout: Optional[float]) -> bool:
        return self._event.wait(timeout)

    async def wait_async(self) -> None:
        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[None]" = loop.create_future()
        with self._lock:
            if self.reason is None:
                self._futures.append((loop, fut))
            else:
                return
        await fut


def _resolve(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


class _ProgressSlot:
    """The latest report not yet sent; ``wake`` tells the SDK a report is pending (once per
    pending report, so a flood costs one wake-up, not one per call)."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._pending: Optional[Tuple[Optional[float], Optional[str]]] = None
        self._closed = False
        self._wake = wake

    def report(self, fraction: Optional[float], text: Optional[str]) -> None:
        fraction = p.clamp_fraction(fraction)
        if text is not None:
            text = p.truncate_text(str(text), p.MAX_PROGRESS_TEXT)
        if fraction is None and text is None:
            return
        with self._lock:
            if self._closed:
                return
            first = self._pending is None
            old_fraction, old_text = self._pending or (None, None)
            self._pending = (
                fraction if fraction is not None else old_fraction,
                text if text is not None else old_text,
            )
        if first:
            self._wake()

    def take(self) -> Optional[_Report]:
        with self._lock:
            pending, self._pending = self._pending, None
            return pending

    def close(self) -> Optional[_Report]:
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, None
            return pending


class _JobBase:
    """What both kinds of job share."""

    def __init__(
        self,
        job_id: int,
        payload: bytes,
        deadline: Optional[float],
        token: _Token,
        progress: _ProgressSlot,
    ) -> None:
        self._id = job_id
        self._payload = payload
        self._deadline = deadline
        self._token = token
        self._progress = progress

    @property
    def id(self) -> int:
        """The job's id, chosen by the supervisor."""
        return self._id

    @property
    def payload(self) -> bytes:
        """The job's input."""
        return self._payload

    @property
    def deadline(self) -> Optional[float]:
        """When the supervisor stops waiting, in ``time.monotonic()`` seconds; None: no
        deadline. Informative: the supervisor enforces it (a ``Cancel``, then signals)."""
        return self._deadline

    def remaining(self) -> Optional[float]:
        """Seconds left until the deadline (0.0 once it passed), or None without one."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def is_cancelled(self) -> bool:
        """Whether a cancel arrived (one flag read: cheap enough for a hot loop)."""
        return self._token.reason is not None

    @property
    def cancel_reason(self) -> Optional[p.CancelReason]:
        """Why the job was cancelled (``REQUESTED``, ``TIMEOUT``, ``SHUTDOWN``,
        ``UNRESPONSIVE`` from the supervisor; ``SIGNAL``, ``CLOSED`` the worker's own), or
        None."""
        return self._token.reason

    def check(self) -> None:
        """Raises ``Cancelled`` once a cancel arrived; returns at once otherwise."""
        if self._token.reason is not None:
            raise Cancelled(f"job {self._id} cancelled ({self._token.reason.value})")

    def on_cancel(self, callback: Callable[[], object]) -> CancelRegistration:
        """Calls ``callback()`` once when the job is cancelled (at once if it already is), to
        bridge code with its own stop API. It runs on the SDK's thread that saw the cancel, so
        it must be quick and must not block; an exception in it is printed to stderr."""
        return self._token.register(callback)

    def progress(self, fraction: Optional[float] = None, text: Optional[str] = None) -> None:
        """Reports the part done (clamped to 0.0..1.0; NaN dropped) and/or a short status (cut
        to 256 bytes of UTF-8). Never blocks: reports coalesce into the latest value of each
        field, sent when the channel is free, always before the job's result. A field left
        None keeps what was reported for it before."""
        self._progress.report(fraction, text)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self._id}, payload={len(self._payload)} bytes)"


class Job(_JobBase):
    """A job for a blocking handler (``serve``)."""

    def cancelled(self, timeout: Optional[float] = None) -> bool:
        """Waits, like ``threading.Event.wait``, until the job is cancelled or ``timeout``
        seconds passed; returns whether it is cancelled."""
        return self._token.wait(timeout)


class AsyncJob(_JobBase):
    """A job for an async handler (``serve_async``)."""

    async def cancelled(self) -> None:
        """Completes once the job is cancelled (at once if it already is)."""
        await self._token.wait_async()
