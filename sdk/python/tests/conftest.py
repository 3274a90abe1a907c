"""Shared fixtures: the golden frames, the built warden binary, and the survivor check."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

HERE = Path(__file__).resolve().parent
SDK = HERE.parent
REPO = SDK.parent.parent

MARKER_VAR = "WARDEN_TEST_MARKER"

if os.environ.get("WARDEN_PY_INSTALLED"):
    import warden_worker

    # The test script installs the package: make sure that copy is the one under test.
    assert SDK not in Path(warden_worker.__file__).resolve().parents, warden_worker.__file__


@pytest.fixture(scope="session")
def golden() -> Dict[str, Any]:
    """protocol/tests/golden.json (``WARDEN_GOLDEN`` names another copy)."""
    path = Path(os.environ.get("WARDEN_GOLDEN", REPO / "protocol/tests/golden.json"))
    if not path.exists():
        pytest.fail(f"{path} is missing: run these tests from a warden checkout or set WARDEN_GOLDEN")
    data: Dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.fixture(scope="session")
def warden_bin() -> Path:
    """The built ``warden`` binary, named by ``WARDEN_BIN`` (the test script sets it)."""
    value = os.environ.get("WARDEN_BIN")
    if not value:
        pytest.skip("WARDEN_BIN is not set: the real-process tests need the built warden binary "
                    "(run ./test, or set WARDEN_BIN=target/debug/warden)")
    path = Path(value)
    if not os.access(path, os.X_OK):
        pytest.fail(f"WARDEN_BIN={value} is not an executable")
    return path


def _marked(marker: str) -> List[int]:
    needle = f"{MARKER_VAR}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


@pytest.fixture
def marker() -> Iterator[str]:
    """A value for ``WARDEN_TEST_MARKER`` unique to the test. Every process the test starts
    carries it; afterwards any process still carrying it is a survivor: killed by pid, and the
    test fails."""
    value = f"pytest-{os.getpid()}-{uuid.uuid4().hex}"
    yield value
    survivors = []
    deadline = time.monotonic() + 2.0
    while True:
        found = _marked(value)
        if not found:
            break
        if time.monotonic() > deadline:
            for pid in found:
                survivors.append(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        time.sleep(0.01)  # bounded: processes being reaped right now
    assert not survivors, f"processes of this test outlived it (killed now): {survivors}"


def env_with(marker: str, **extra: str) -> Dict[str, str]:
    """The environment for a child: this one, the marker, and the SDK importable from source
    unless it is installed (``WARDEN_PY_INSTALLED=1``)."""
    env = dict(os.environ)
    env[MARKER_VAR] = marker
    if not os.environ.get("WARDEN_PY_INSTALLED"):
        env["PYTHONPATH"] = str(SDK)
    env.update(extra)
    return env
