"""The SDK's exceptions."""

from __future__ import annotations


class Cancelled(Exception):
    """The job was cancelled. ``job.check()`` raises it; a handler that lets it out (after a
    cancel arrived) answers ``Cancelled``. Raised with no cancel requested, it answers
    ``Failed``."""


class WardenError(Exception):
    """Serving failed; the subclasses say why."""


class NotStartedByWarden(WardenError):
    """``WARDEN_FD`` is not set: this program was not started by a warden supervisor."""

    def __init__(self) -> None:
        super().__init__(
            "not started by a warden supervisor: WARDEN_FD is not set "
            "(run it under `warden run --protocol`)"
        )


class BootstrapError(WardenError):
    """``WARDEN_FD`` names no usable channel (not a number, not open, not a Unix stream
    socket), or the channel was already taken."""


class HandshakeError(WardenError):
    """The handshake failed: refused, another protocol version, a timeout, or the supervisor
    closed the channel or sent something other than its hello."""


class Refused(HandshakeError):
    """The supervisor refused the connection; ``reason`` is its text."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the supervisor refused the connection: {reason}")
        self.reason = reason


class ProtocolError(WardenError):
    """The supervisor broke the protocol (an undecodable or oversized frame, a job while one
    runs, ...). Nothing more was sent; the running job's token tripped."""


class Disconnected(WardenError):
    """The channel to the supervisor closed (it died or hung up) while serving."""
