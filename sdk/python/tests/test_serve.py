"""Serving in-process over a socketpair, with this test as the supervisor; and the bootstrap
from WARDEN_FD in a child process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import threading
from typing import Any, Callable, List, Optional

import pytest

import warden_worker
from warden_worker import protocol as p

from conftest import env_with

LIMIT = 20.0


class Supervisor:
    """The supervisor's end of a socketpair, and a thread serving the worker's end."""

    def __init__(self, serve: Callable[[socket.socket], None], heartbeat_ms: int = 0) -> None:
        self.sock, worker_end = socket.socketpair()
        self.sock.settimeout(LIMIT)
        self.decoder = p.FrameDecoder(p.DEFAULT_MAX_FRAME_LEN, p.WORKER)
        self.error: List[BaseException] = []

        def run() -> None:
            try:
                serve(worker_end)
            except BaseException as e:  # handed to the test
                self.error.append(e)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        hello = self.recv()
        assert isinstance(hello, p.WorkerHello) and hello.sdk_version == warden_worker.SDK_VERSION
        self.send(p.Hello(1, "pytest", p.DEFAULT_MAX_FRAME_LEN, heartbeat_ms))

    def send(self, msg: Any) -> None:
        self.sock.sendall(p.encode_frame(msg))

    def recv(self) -> Optional[Any]:
        while True:
            msg = self.decoder.next()
            if msg is not None:
                return msg
            data = self.sock.recv(65536)
            if not data:
                return None
            self.decoder.push(data)

    def terminal(self, job: int) -> "tuple[Any, List[Any]]":
        progress = []
        while True:
            msg = self.recv()
            if isinstance(msg, p.Progress):
                assert msg.job == job
                progress.append(msg)
            elif isinstance(msg, p.Heartbeat):
                continue
            else:
                return msg, progress

    def ready(self, job: int) -> None:
        while True:
            msg = self.recv()
            if isinstance(msg, p.Progress) and msg.text == "ready":
                return
            assert isinstance(msg, (p.Progress, p.Heartbeat)), msg

    def finish(self) -> None:
        self.send(p.Shutdown())
        msg = self.recv()
        while isinstance(msg, p.Heartbeat):
            msg = self.recv()
        assert msg is None, f"expected the end after Shutdown, got {msg}"
        self.thread.join(LIMIT)
        assert not self.thread.is_alive(), "serving did not return"
        if self.error:
            raise self.error[0]
        self.sock.close()


def blocking(handler: Callable[[warden_worker.Job], Any]) -> Callable[[socket.socket], None]:
    return lambda sock: warden_worker.serve(handler, channel=sock, handle_sigterm=False)


def asynchronous(handler: Callable[[warden_worker.AsyncJob], Any]) -> Callable[[socket.socket], None]:
    return lambda sock: asyncio.run(
        warden_worker.serve_async(handler, channel=sock, handle_sigterm=False)
    )


def test_results_and_failures(capsys: pytest.CaptureFixture[str]) -> None:
    def handler(job: warden_worker.Job) -> Any:
        if job.payload == b"boom":
            raise ValueError("it broke")
        if job.payload == b"str":
            return "not bytes"
        if job.payload == b"cancelled":
            job.check()  # passes: nobody cancelled
            raise warden_worker.Cancelled()
        return bytearray(job.payload.upper())

    s = Supervisor(blocking(handler))
    s.send(p.StartJob(1, b"abc", None))
    assert s.terminal(1)[0] == p.Completed(1, b"ABC")
    s.send(p.StartJob(2, b"boom", None))
    assert s.terminal(2)[0] == p.Failed(2, "it broke")
    s.send(p.StartJob(3, b"str", None))
    assert s.terminal(3)[0] == p.Failed(3, "handler returned str, not bytes")
    s.send(p.StartJob(4, b"cancelled", None))
    assert s.terminal(4)[0] == p.Failed(4, "handler raised Cancelled without a cancel request")
    s.finish()
    assert "ValueError: it broke" in capsys.readouterr().err


def test_cancel_reason_callbacks_and_deadline() -> None:
    seen: List[str] = []

    def handler(job: warden_worker.Job) -> bytes:
        assert job.deadline is not None and 0 < (job.remaining() or 0) <= 60.0
        assert not job.is_cancelled() and job.cancel_reason is None
        registration = job.on_cancel(lambda: seen.append("called"))
        removed = job.on_cancel(lambda: seen.append("removed"))
        removed.remove()
        job.progress(text="ready")
        assert job.cancelled(timeout=LIMIT)
        assert job.is_cancelled() and job.cancel_reason == warden_worker.CancelReason.TIMEOUT
        job.on_cancel(lambda: seen.append("late"))  # already cancelled: runs at once
        registration.remove()
        job.check()
        return b"unreachable"

    s = Supervisor(blocking(handler))
    s.send(p.StartJob(1, b"", 60_000))
    s.ready(1)
    s.send(p.Cancel(1, p.CancelReason.TIMEOUT))
    assert s.terminal(1)[0] == p.CancelledMsg(1)
    assert seen == ["called", "late"]
    s.finish()


def test_progress_is_clamped_cut_and_sent_before_the_result() -> None:
    def handler(job: warden_worker.Job) -> bytes:
        job.progress(fraction=7.0, text="é" * 300)
        return b"done"

    s = Supervisor(blocking(handler))
    s.send(p.StartJob(1, b"", None))
    terminal, progress = s.terminal(1)
    assert terminal == p.Completed(1, b"done")
    assert progress == [p.Progress(1, 1.0, "é" * 128)]
    s.finish()


def test_async_handlers() -> None:
    async def handler(job: warden_worker.AsyncJob) -> bytes:
        if job.payload == b"wait":
            job.progress(text="ready")
            await job.cancelled()
            job.check()
        await asyncio.sleep(0)
        return job.payload[::-1]

    s = Supervisor(asynchronous(handler))
    s.send(p.StartJob(1, b"abc", None))
    assert s.terminal(1)[0] == p.Completed(1, b"cba")
    s.send(p.StartJob(2, b"wait", None))
    s.ready(2)
    s.send(p.Cancel(2, p.CancelReason.REQUESTED))
    assert s.terminal(2)[0] == p.CancelledMsg(2)
    s.finish()


def test_heartbeats_while_a_handler_spins() -> None:
    import time

    def handler(job: warden_worker.Job) -> bytes:
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            pass
        return b"spun"

    s = Supervisor(blocking(handler), heartbeat_ms=20)
    s.send(p.StartJob(1, b"", None))
    beats = 0
    while True:
        msg = s.recv()
        if isinstance(msg, p.Heartbeat):
            beats += 1
        else:
            assert msg == p.Completed(1, b"spun")
            break
    assert beats >= 5, f"{beats} heartbeats in 0.5 s at 20 ms"
    s.finish()


def test_a_protocol_violation_raises() -> None:
    def handler(job: warden_worker.Job) -> bytes:
        job.progress(text="ready")
        job.cancelled(timeout=LIMIT)
        return b""

    s = Supervisor(blocking(handler))
    s.send(p.StartJob(1, b"", None))
    s.ready(1)
    s.sock.sendall(bytes.fromhex("0100000063"))  # tag 99
    assert s.recv() is None
    s.thread.join(LIMIT)
    assert isinstance(s.error[0], warden_worker.ProtocolError)


def test_sigterm_needs_the_main_thread() -> None:
    errors: List[BaseException] = []

    def run() -> None:
        try:
            warden_worker.serve(lambda job: b"")
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(LIMIT)
    assert isinstance(errors[0], warden_worker.WardenError)


BOOTSTRAP = textwrap.dedent(
    """
    import os, sys
    from warden_worker import _serve
    try:
        sock = _serve._take_channel()
    except Exception as e:
        print(type(e).__name__, e)
        sys.exit(0)
    fd = sock.fileno()
    print("inheritable", os.get_inheritable(fd), "env", "WARDEN_FD" in os.environ)
    try:
        _serve._take_channel()
    except Exception as e:
        print("again", type(e).__name__)  # the variable is gone with the first take
    """
)


def bootstrap(marker: str, fd_value: Optional[str], pass_fds: "tuple[int, ...]" = ()) -> str:
    env = env_with(marker)
    env.pop("WARDEN_FD", None)
    if fd_value is not None:
        env["WARDEN_FD"] = fd_value
    out = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP],
        env=env,
        pass_fds=pass_fds,
        capture_output=True,
        text=True,
        timeout=LIMIT,
        check=True,
    )
    return out.stdout.strip()


def test_bootstrap_takes_the_channel_once(marker: str) -> None:
    a, b = socket.socketpair()
    with a, b:
        out = bootstrap(marker, str(b.fileno()), (b.fileno(),))
    assert out.splitlines() == ["inheritable False env False", "again NotStartedByWarden"]


def test_bootstrap_refuses_what_is_not_a_channel(marker: str) -> None:
    assert bootstrap(marker, None).startswith("NotStartedByWarden")
    assert bootstrap(marker, "three").startswith("BootstrapError")
    assert bootstrap(marker, "-1").startswith("BootstrapError")
    assert "not open" in bootstrap(marker, "1000")
    r, w = os.pipe()
    try:
        assert "not a socket" in bootstrap(marker, str(r), (r,))
    finally:
        os.close(r)
        os.close(w)
    d1, d2 = socket.socketpair(type=socket.SOCK_DGRAM)
    with d1, d2:
        assert "not a Unix stream socket" in bootstrap(marker, str(d1.fileno()), (d1.fileno(),))
