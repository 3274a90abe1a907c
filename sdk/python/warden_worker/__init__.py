"""Serve jobs for a warden supervisor from Python: observe cancellation, report progress and
heartbeats, answer with results. Pure standard library, Python 3.9 or later.

A worker is a program that calls ``serve`` (or ``serve_async``) with a handler. warden starts
it with a socket at the descriptor named by ``WARDEN_FD``, sends it jobs one at a time, and may
ask it to stop; this package speaks the protocol (``protocol/PROTOCOL.md``) so the program
only writes the handler:

.. code-block:: python

    import time
    import warden_worker

    def handler(job: warden_worker.Job) -> bytes:
        total = 0
        for i, byte in enumerate(job.payload):
            job.check()                      # raises Cancelled once a cancel arrived
            total += byte
            job.progress(fraction=(i + 1) / len(job.payload))
            time.sleep(0.01)
        return str(total).encode()

    if __name__ == "__main__":
        warden_worker.serve(handler)

Run it with ``warden run --protocol --input data.bin --timeout 30s -- python3 worker.py``.
The async form is the same with ``async def handler(job: warden_worker.AsyncJob)``,
``await job.cancelled()`` and ``asyncio.run(warden_worker.serve_async(handler))``.

What the handler's ending answers:

- returns bytes (even after a cancel came too late): ``Completed``;
- raises ``Cancelled`` (from ``job.check()``) after a cancel: ``Cancelled``;
- raises anything else: ``Failed`` with its message; the traceback goes to stderr.

A job is cancelled by the supervisor's ``Cancel`` (its timeout, the caller, its shutdown, a
missed heartbeat), by SIGTERM (the polite signal, after which serving ends), or by the channel
closing (the supervisor died: if the handler has not returned within 1 s the process exits with
status 70). Heartbeats go out from a thread of their own, so a pure-Python handler that never
checks its job still looks alive; a C extension that holds the GIL for longer than the
supervisor's ``--unresponsive-after`` stops them, and the supervisor is then right to stop the
worker. Release the GIL in such code, or split it into shorter calls.
"""

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
from ._job import AsyncJob, CancelRegistration, Job
from ._serve import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_ORPHAN_GRACE,
    FD_ENV_VAR,
    ORPHAN_EXIT_CODE,
    SDK_VERSION,
    __version__,
    serve,
    serve_async,
)
from .protocol import MAX_PROGRESS_TEXT, PROTOCOL_VERSION, CancelReason

__all__ = [
    "AsyncJob",
    "BootstrapError",
    "CancelReason",
    "CancelRegistration",
    "Cancelled",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_ORPHAN_GRACE",
    "Disconnected",
    "FD_ENV_VAR",
    "HandshakeError",
    "Job",
    "MAX_PROGRESS_TEXT",
    "NotStartedByWarden",
    "ORPHAN_EXIT_CODE",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "Refused",
    "SDK_VERSION",
    "WardenError",
    "__version__",
    "serve",
    "serve_async",
]
