"""warden's wire protocol, version 1: messages, the postcard encoding and framing.

Sans-IO: nothing here reads a clock or touches a socket. This is the part of the SDK that
``protocol/PROTOCOL.md`` specifies byte for byte; ``tests/test_codec.py`` checks it against the
golden frames of ``protocol/tests/golden.json``.

>>> frame = encode_frame(Heartbeat())
>>> frame.hex()
'0100000001'
>>> decoder = FrameDecoder(DEFAULT_MAX_FRAME_LEN, SUPERVISOR)
>>> decoder.push(bytes.fromhex("04000000 02 ac02 01"))
>>> decoder.next()
Cancel(job=300, reason=<CancelReason.TIMEOUT: 'timeout'>)
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Union

__all__ = [
    "DEFAULT_MAX_FRAME_LEN",
    "HEADER_LEN",
    "MAX_PROGRESS_TEXT",
    "PROTOCOL_VERSION",
    "SUPERVISOR",
    "WORKER",
    "CancelReason",
    "Cancel",
    "Completed",
    "CancelledMsg",
    "DecodeError",
    "EncodeError",
    "Failed",
    "FrameDecoder",
    "Heartbeat",
    "Hello",
    "Progress",
    "Refuse",
    "Shutdown",
    "StartJob",
    "SupervisorMessage",
    "WorkerHello",
    "WorkerMessage",
    "decode_body",
    "encode_body",
    "encode_frame",
    "truncate_text",
]

PROTOCOL_VERSION = 1
"""The protocol version this SDK speaks."""

HEADER_LEN = 4
"""Bytes of the frame header: the body length, a little-endian u32."""

DEFAULT_MAX_FRAME_LEN = 1024 * 1024
"""The body limit before the supervisor's hello announces its own."""

MAX_PROGRESS_TEXT = 256
"""Longest progress text, in UTF-8 bytes, the supervisor keeps."""


class CancelReason(str, enum.Enum):
    """Why a job was asked to stop.

    The first five travel on the wire (``Cancel.reason``, tags 0 to 4; a version 1 supervisor
    sends ``TIMEOUT`` for ``NO_PROGRESS``, tag 4 is decoded all the same); ``SIGNAL`` (the polite
    signal, SIGTERM) and ``CLOSED`` (the channel to the supervisor closed, or its bytes stopped
    making sense) are the worker's own causes.
    """

    REQUESTED = "requested"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    UNRESPONSIVE = "unresponsive"
    NO_PROGRESS = "no_progress"
    SIGNAL = "signal"
    CLOSED = "closed"


_WIRE_REASONS = [
    CancelReason.REQUESTED,
    CancelReason.TIMEOUT,
    CancelReason.SHUTDOWN,
    CancelReason.UNRESPONSIVE,
    CancelReason.NO_PROGRESS,
]


class DecodeError(Exception):
    """Bytes that are not a valid frame. ``kind`` names the rule broken, as ``golden.json`` does:
    ``oversized``, ``empty``, ``truncated``, ``trailing_bytes``, ``unknown_tag``, ``malformed``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class EncodeError(Exception):
    """A message whose body is over the frame limit, or a value its field cannot hold."""


# Supervisor to worker ---------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """The supervisor accepts the connection (tag 0)."""

    protocol_version: int
    supervisor_version: str
    max_frame_len: int
    heartbeat_interval_ms: int


@dataclass(frozen=True)
class StartJob:
    """Run a job (tag 1). ``deadline_ms``: time left when sent, or None."""

    job: int
    payload: bytes
    deadline_ms: Optional[int]


@dataclass(frozen=True)
class Cancel:
    """Stop the job cooperatively (tag 2)."""

    job: int
    reason: CancelReason


@dataclass(frozen=True)
class Shutdown:
    """No more jobs: finish and exit 0 (tag 3)."""


@dataclass(frozen=True)
class Refuse:
    """The handshake is refused (tag 4)."""

    reason: str


SupervisorMessage = Union[Hello, StartJob, Cancel, Shutdown, Refuse]

# Worker to supervisor ---------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerHello:
    """The worker's first message (tag 0)."""

    protocol_version: int
    pid: int
    sdk_version: str


@dataclass(frozen=True)
class Heartbeat:
    """The worker is alive (tag 1)."""


@dataclass(frozen=True)
class Progress:
    """Part done and a short status for the running job (tag 2)."""

    job: int
    fraction: Optional[float]
    text: Optional[str]


@dataclass(frozen=True)
class Completed:
    """The job finished with ``output`` (tag 3)."""

    job: int
    output: bytes


@dataclass(frozen=True)
class CancelledMsg:
    """The job stopped because it was cancelled (tag 4)."""

    job: int


@dataclass(frozen=True)
class Failed:
    """The job failed with its own error (tag 5)."""

    job: int
    error: str


WorkerMessage = Union[WorkerHello, Heartbeat, Progress, Completed, CancelledMsg, Failed]

SUPERVISOR = "supervisor"
"""Direction of the frames the worker receives."""
WORKER = "worker"
"""Direction of the frames the worker sends."""

# Encoding ---------------------------------------------------------------------------------

_U16, _U32, _U64 = 16, 32, 64


def _varint(value: int, bits: int, out: bytearray) -> None:
    if value < 0 or value >> bits:
        raise EncodeError(f"{value} does not fit in u{bits}")
    while True:
        b = value & 0x7F
        value >>= 7
        if value == 0:
            out.append(b)
            return
        out.append(b | 0x80)


def _bytes(data: bytes, out: bytearray) -> None:
    _varint(len(data), _U64, out)
    out += data


def _string(text: str, out: bytearray) -> None:
    _bytes(text.encode("utf-8"), out)


def _f32(value: float, out: bytearray) -> None:
    try:
        out += struct.pack("<f", value)
    except OverflowError as e:
        raise EncodeError(f"{value} does not fit in f32") from e


def encode_body(msg: Union[SupervisorMessage, WorkerMessage]) -> bytes:
    """The postcard body of one message (either direction)."""
    out = bytearray()
    if isinstance(msg, WorkerHello):
        out.append(0)
        _varint(msg.protocol_version, _U16, out)
        _varint(msg.pid, _U32, out)
        _string(msg.sdk_version, out)
    elif isinstance(msg, Heartbeat):
        out.append(1)
    elif isinstance(msg, Progress):
        out.append(2)
        _varint(msg.job, _U64, out)
        if msg.fraction is None:
            out.append(0)
        else:
            out.append(1)
            _f32(msg.fraction, out)
        if msg.text is None:
            out.append(0)
        else:
            out.append(1)
            _string(msg.text, out)
    elif isinstance(msg, Completed):
        out.append(3)
        _varint(msg.job, _U64, out)
        _bytes(msg.output, out)
    elif isinstance(msg, CancelledMsg):
        out.append(4)
        _varint(msg.job, _U64, out)
    elif isinstance(msg, Failed):
        out.append(5)
        _varint(msg.job, _U64, out)
        _string(msg.error, out)
    elif isinstance(msg, Hello):
        out.append(0)
        _varint(msg.protocol_version, _U16, out)
        _string(msg.supervisor_version, out)
        _varint(msg.max_frame_len, _U32, out)
        _varint(msg.heartbeat_interval_ms, _U32, out)
    elif isinstance(msg, StartJob):
        out.append(1)
        _varint(msg.job, _U64, out)
        _bytes(msg.payload, out)
        if msg.deadline_ms is None:
            out.append(0)
        else:
            out.append(1)
            _varint(msg.deadline_ms, _U64, out)
    elif isinstance(msg, Cancel):
        out.append(2)
        _varint(msg.job, _U64, out)
        reason = CancelReason(msg.reason)
        if reason not in _WIRE_REASONS:
            raise EncodeError(f"cancel reason {reason.value} is not a wire value")
        _varint(_WIRE_REASONS.index(reason), _U32, out)
    elif isinstance(msg, Shutdown):
        out.append(3)
    elif isinstance(msg, Refuse):
        out.append(4)
        _string(msg.reason, out)
    else:
        raise EncodeError(f"not a protocol message: {msg!r}")
    return bytes(out)


def encode_frame(
    msg: Union[SupervisorMessage, WorkerMessage], max_len: int = DEFAULT_MAX_FRAME_LEN
) -> bytes:
    """One whole frame (header and body); refuses a body over ``max_len`` bytes."""
    body = encode_body(msg)
    if len(body) > max_len:
        raise EncodeError(f"message of {len(body)} bytes exceeds the frame limit of {max_len}")
    return struct.pack("<I", len(body)) + body


def truncate_text(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` bytes of UTF-8, at a character boundary."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", errors="ignore")


# Decoding ---------------------------------------------------------------------------------

_MAX_VARINT_LEN = {_U16: 3, _U32: 5, _U64: 10}


class _Reader:
    __slots__ = ("body", "pos")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.body):
            raise DecodeError("truncated", "frame body ends inside the message")
        b = self.body[self.pos]
        self.pos += 1
        return b

    def varint(self, bits: int) -> int:
        value = 0
        for i in range(_MAX_VARINT_LEN[bits]):
            b = self.byte()
            value |= (b & 0x7F) << (7 * i)
            if b & 0x80 == 0:
                if value >> bits:
                    raise DecodeError("malformed", f"varint over u{bits}")
                return value
        raise DecodeError("malformed", f"varint longer than u{bits} allows")

    def take(self, n: int) -> bytes:
        # Checked against what is there before anything is copied: a claim is not an allocation.
        if n > len(self.body) - self.pos:
            raise DecodeError("truncated", "frame body ends inside a byte string")
        data = self.body[self.pos : self.pos + n]
        self.pos += n
        return bytes(data)

    def bytes_(self) -> bytes:
        return self.take(self.varint(_U64))

    def string(self) -> str:
        raw = self.bytes_()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError("malformed", "string is not valid UTF-8") from e

    def option(self) -> bool:
        tag = self.byte()
        if tag > 1:
            raise DecodeError("malformed", f"option tag {tag}")
        return tag == 1

    def f32(self) -> float:
        value: float = struct.unpack("<f", self.take(4))[0]
        return value


def _decode_supervisor(r: _Reader) -> SupervisorMessage:
    tag = r.varint(_U32)
    if tag == 0:
        return Hello(r.varint(_U16), r.string(), r.varint(_U32), r.varint(_U32))
    if tag == 1:
        job = r.varint(_U64)
        payload = r.bytes_()
        deadline = r.varint(_U64) if r.option() else None
        return StartJob(job, payload, deadline)
    if tag == 2:
        job = r.varint(_U64)
        reason = r.varint(_U32)
        if reason >= len(_WIRE_REASONS):
            raise DecodeError("unknown_tag", f"unknown cancel reason {reason}")
        return Cancel(job, _WIRE_REASONS[reason])
    if tag == 3:
        return Shutdown()
    if tag == 4:
        return Refuse(r.string())
    raise DecodeError("unknown_tag", f"unknown supervisor message tag {tag}")


def _decode_worker(r: _Reader) -> WorkerMessage:
    tag = r.varint(_U32)
    if tag == 0:
        return WorkerHello(r.varint(_U16), r.varint(_U32), r.string())
    if tag == 1:
        return Heartbeat()
    if tag == 2:
        job = r.varint(_U64)
        fraction = r.f32() if r.option() else None
        text = r.string() if r.option() else None
        return Progress(job, fraction, text)
    if tag == 3:
        return Completed(r.varint(_U64), r.bytes_())
    if tag == 4:
        return CancelledMsg(r.varint(_U64))
    if tag == 5:
        return Failed(r.varint(_U64), r.string())
    raise DecodeError("unknown_tag", f"unknown worker message tag {tag}")


_DECODERS: Dict[str, Callable[[_Reader], Union[SupervisorMessage, WorkerMessage]]] = {SUPERVISOR: _decode_supervisor, WORKER: _decode_worker}


def decode_body(body: bytes, direction: str = SUPERVISOR) -> Union[SupervisorMessage, WorkerMessage]:
    """Decodes one whole frame body sent in ``direction``; strict: no bytes may follow."""
    r = _Reader(body)
    decode: Callable[[_Reader], Union[SupervisorMessage, WorkerMessage]] = _DECODERS[direction]
    msg = decode(r)
    if r.pos != len(body):
        extra = len(body) - r.pos
        raise DecodeError("trailing_bytes", f"frame body has {extra} bytes after the message")
    return msg


class FrameDecoder:
    """Reassembles frames from a byte stream: push bytes in, take messages out.

    The declared length is checked against the limit as soon as the header is in, before the
    body is buffered; the buffer holds at most one partial frame plus the latest push. A decode
    error is final: the stream is lost.
    """

    def __init__(self, max_frame_len: int, direction: str = SUPERVISOR) -> None:
        self.max_frame_len = max_frame_len
        self.direction = direction
        self._buf = bytearray()
        self._failed: Optional[DecodeError] = None

    def push(self, data: bytes) -> None:
        """Appends bytes read from the stream."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet decoded."""
        return len(self._buf)

    def _header(self) -> Optional[int]:
        if len(self._buf) < HEADER_LEN:
            return None
        (length,) = struct.unpack_from("<I", self._buf)
        if length == 0:
            raise DecodeError("empty", "frame declares an empty body")
        if length > self.max_frame_len:
            raise DecodeError(
                "oversized",
                f"frame declares {length} bytes, over the limit of {self.max_frame_len} bytes",
            )
        return int(length)

    def next(self) -> Optional[Union[SupervisorMessage, WorkerMessage]]:
        """The next whole message, or None until more bytes arrive.

        Raises ``DecodeError`` (and keeps raising it) once the stream is invalid.
        """
        if self._failed is not None:
            raise self._failed
        try:
            length = self._header()
            if length is None or len(self._buf) < HEADER_LEN + length:
                return None
            body = bytes(self._buf[HEADER_LEN : HEADER_LEN + length])
            del self._buf[: HEADER_LEN + length]
            return decode_body(body, self.direction)
        except DecodeError as e:
            self._failed = e
            self._buf.clear()
            raise

    def pending_body_len(self) -> Optional[int]:
        """The body length the partial frame in the buffer declared, if its header is in."""
        if len(self._buf) < HEADER_LEN:
            return None
        return int(struct.unpack_from("<I", self._buf)[0])


def clamp_fraction(fraction: Optional[float]) -> Optional[float]:
    """A fraction for the wire: clamped to 0.0..=1.0; None for None or NaN."""
    if fraction is None or math.isnan(fraction):
        return None
    return min(1.0, max(0.0, float(fraction)))


