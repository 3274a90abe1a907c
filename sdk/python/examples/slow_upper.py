"""A plugin for `warden run --protocol`: upper-cases its input one line at a time, slowly (a
stand-in for real work), reporting progress and stopping when warden cancels it.

    warden run --protocol --input words.txt --timeout 1s --report - -- python3 slow_upper.py
"""

import sys
import time

import warden_worker


def handler(job: warden_worker.Job) -> bytes:
    lines = job.payload.splitlines(keepends=True)
    out = []
    for i, line in enumerate(lines):
        if job.cancelled(timeout=0.2):  # 0.2 s of "work" per line, or less if cancelled
            print(f"slow_upper: stopping after {i} of {len(lines)} lines "
                  f"({job.cancel_reason.value})", file=sys.stderr)
            job.check()  # raises Cancelled: warden reports the job cancelled
        out.append(line.upper())
        job.progress(fraction=(i + 1) / len(lines), text=f"line {i + 1}")
    return b"".join(out)


if __name__ == "__main__":
    warden_worker.serve(handler)
