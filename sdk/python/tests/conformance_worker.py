"""The conformance suite's worker, written on ``warden_worker``: the modes of
``protocol/CONFORMANCE.md``, chosen by each job's payload (``mode`` or ``mode:arg``).

    python3 conformance_worker.py [blocking|async]

``blocking`` (the default) serves with ``warden_worker.serve``; ``async`` with
``warden_worker.serve_async``. Other exits: the SDK's (an exception from serving exits 1 with
its traceback; a handler outliving the channel by the orphan grace exits 70).
"""

from __future__ import annotations

import asyncio
import sys
import time

import warden_worker
from warden_worker import AsyncJob, Job

READY = "ready"


def split(payload: bytes) -> "tuple[str, bytes]":
    mode, _, arg = payload.partition(b":")
    return mode.decode("ascii", "replace"), arg


def immediate(job: "Job | AsyncJob") -> "bytes | None":
    """The modes that never wait; None for the waiting ones."""
    mode, arg = split(job.payload)
    if mode == "echo":
        job.progress(0.5, "echoing")
        return arg
    if mode == "fail":
        raise RuntimeError(arg.decode("utf-8", "replace"))
    if mode == "progress":
        n = int(arg)
        for i in range(n):
            job.progress(i / n, f"step {i}")
        job.progress(1.0, "done")
        return str(n).encode()
    if mode == "spin":
        until = time.monotonic() + int(arg) / 1000.0
        spins = 0
        while time.monotonic() < until:
            spins += 1  # pure Python, never checking the job
        return b"spun"
    if mode == "output":
        return b"x" * int(arg)
    if mode == "deadline":
        remaining = job.remaining()
        return b"none" if remaining is None else str(int(remaining * 1000)).encode()
    if mode in ("wait", "late"):
        return None
    raise ValueError(f"unknown conformance mode {mode!r}")


def blocking(job: Job) -> bytes:
    out = immediate(job)
    if out is not None:
        return out
    job.progress(text=READY)
    job.cancelled()
    reason = job.cancel_reason
    job.progress(text=f"cancelled:{reason.value if reason else 'unknown'}")
    if split(job.payload)[0] == "late":
        return b"late but done"
    job.check()
    raise RuntimeError("the job was cancelled but check() passed")


async def asynchronous(job: AsyncJob) -> bytes:
    out = immediate(job)
    if out is not None:
        return out
    job.progress(text=READY)
    await job.cancelled()
    reason = job.cancel_reason
    job.progress(text=f"cancelled:{reason.value if reason else 'unknown'}")
    if split(job.payload)[0] == "late":
        return b"late but done"
    job.check()
    raise RuntimeError("the job was cancelled but check() passed")


def main() -> None:
    variant = sys.argv[1] if len(sys.argv) > 1 else "blocking"
    try:
        if variant == "blocking":
            warden_worker.serve(blocking)
        elif variant == "async":
            asyncio.run(warden_worker.serve_async(asynchronous))
        else:
            sys.exit(f"unknown variant {variant!r}: blocking or async")
    except warden_worker.WardenError as e:
        sys.exit(f"conformance_worker: {e}")


if __name__ == "__main__":
    main()
