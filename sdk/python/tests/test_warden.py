"""Real processes: Python workers under the built `warden run --protocol`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from conftest import SDK, env_with

LIMIT = 60.0
PLUGIN = SDK / "examples" / "slow_upper.py"
CONFORMANCE = SDK / "tests" / "conformance_worker.py"


def warden_run(
    warden_bin: Path, marker: str, args: List[str], worker: List[str], stdin: bytes = b""
) -> Tuple[int, bytes, str, Dict[str, Any]]:
    """Runs ``warden run --protocol --input - --report FILE ARGS -- python3 WORKER`` (bounded)
    and returns its status, stdout, stderr and report."""
    report = Path(f"/tmp/warden-pytest-{marker}.json")
    try:
        done = subprocess.run(
            [str(warden_bin), "run", "--protocol", "--input", "-", "--report", str(report),
             *args, "--", sys.executable, *worker],
            input=stdin,
            env=env_with(marker),
            capture_output=True,
            timeout=LIMIT,
        )
        data: Dict[str, Any] = json.loads(report.read_text())
    finally:
        report.unlink(missing_ok=True)
    return done.returncode, done.stdout, done.stderr.decode(errors="replace"), data


def test_plugin_is_cancelled_cooperatively_on_timeout(warden_bin: Path, marker: str) -> None:
    # 100 lines at 0.2 s each: the 0.5 s timeout always comes first; the 60 s grace never ends.
    lines = b"".join(b"word %d\n" % i for i in range(100))
    status, out, err, report = warden_run(
        warden_bin, marker, ["--timeout", "0.5s", "--grace", "60s"], [str(PLUGIN)], lines
    )
    assert status == 124, err
    assert report["outcome"] == "cancelled", report
    assert report["stage"] == "cooperative"
    assert report["reason"] == "timeout"
    assert out == b""
    assert "slow_upper: stopping after" in err and "(timeout)" in err


def test_plugin_completes(warden_bin: Path, marker: str) -> None:
    status, out, err, report = warden_run(
        warden_bin, marker, ["--timeout", "60s"], [str(PLUGIN)], b"alpha\nbeta\n"
    )
    assert status == 0, err
    assert out == b"ALPHA\nBETA\n"
    assert report["outcome"] == "completed", report


def test_a_failing_handler_is_reported_failed(warden_bin: Path, marker: str) -> None:
    status, out, err, report = warden_run(
        warden_bin, marker, ["--timeout", "60s"], [str(CONFORMANCE)], b"fail:no such file"
    )
    assert status == 1, err
    assert report["outcome"] == "failed", report
    assert "no such file" in json.dumps(report)
    assert "RuntimeError: no such file" in err  # the traceback went to stderr


@pytest.mark.parametrize("variant", ["blocking", "async"])
def test_the_async_and_blocking_workers_complete(
    warden_bin: Path, marker: str, variant: str
) -> None:
    status, out, err, _ = warden_run(
        warden_bin, marker, ["--timeout", "60s"], [str(CONFORMANCE), variant], b"echo:hello"
    )
    assert (status, out) == (0, b"hello"), err


def test_stays_live_under_unresponsive_after_while_spinning(
    warden_bin: Path, marker: str
) -> None:
    help_text = subprocess.run(
        [str(warden_bin), "run", "--help"], capture_output=True, text=True, timeout=LIMIT
    ).stdout
    if "--unresponsive-after" not in help_text:
        pytest.skip("this warden has no --unresponsive-after yet (issue 7)")
    # The handler spins in pure Python for 3 s without looking at its job; heartbeats come from
    # the SDK's writer thread, so 1 s of silence never happens.
    status, out, err, report = warden_run(
        warden_bin, marker, ["--timeout", "60s", "--unresponsive-after", "1s"],
        [str(CONFORMANCE)], b"spin:3000",
    )
    assert (status, out) == (0, b"spun"), (err, report)
