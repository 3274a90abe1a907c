"""The protocol machine on a virtual clock: no sockets, threads or sleeps."""

from __future__ import annotations

from typing import List, Optional

from warden_worker import protocol as p
from warden_worker._machine import (
    Config,
    Finished,
    Machine,
    StartAction,
    TripAction,
    drain_actions,
)


def machine(heartbeat: Optional[float] = None, max_len: int = p.DEFAULT_MAX_FRAME_LEN) -> Machine:
    return Machine(Config(max_len, heartbeat, orphan_grace=1.0), now=0.0)


def sent(m: Machine) -> List[object]:
    out = []
    while True:
        frame = m.poll_transmit()
        if frame is None:
            return out
        m.handle_transmitted()
        decoder = p.FrameDecoder(p.DEFAULT_MAX_FRAME_LEN, p.WORKER)
        decoder.push(frame)
        out.append(decoder.next())


def test_a_job_runs_and_answers_once() -> None:
    m = machine()
    m.handle_message(0.0, p.StartJob(7, b"in", 1500))
    (start,) = drain_actions(m)
    assert start == StartAction(7, b"in", 1.5)
    m.handle_progress(7, 0.5, "half")
    m.handle_finished(7, Finished("returned", output=b"out"))
    m.handle_finished(7, Finished("returned", output=b"again"))
    assert sent(m) == [p.Progress(7, 0.5, "half"), p.Completed(7, b"out")]
    m.handle_progress(7, 1.0, "late")
    assert sent(m) == []


def test_cancel_trips_once_and_stale_cancels_are_ignored() -> None:
    m = machine()
    m.handle_message(0.0, p.Cancel(1, p.CancelReason.TIMEOUT))  # nothing runs
    m.handle_message(0.0, p.StartJob(2, b"", None))
    m.handle_message(0.0, p.Cancel(1, p.CancelReason.TIMEOUT))  # another job
    m.handle_message(0.0, p.Cancel(2, p.CancelReason.REQUESTED))
    m.handle_message(0.0, p.Cancel(2, p.CancelReason.SHUTDOWN))
    actions = drain_actions(m)
    assert actions[1:] == [TripAction(2, p.CancelReason.REQUESTED)]
    m.handle_finished(2, Finished("cancelled"))
    assert sent(m) == [p.CancelledMsg(2)]


def test_cancelled_without_a_cancel_is_a_failure() -> None:
    m = machine()
    m.handle_message(0.0, p.StartJob(1, b"", None))
    m.handle_finished(1, Finished("cancelled"))
    assert sent(m) == [p.Failed(1, "handler raised Cancelled without a cancel request")]


def test_output_over_the_limit_degrades_to_failed() -> None:
    m = machine(max_len=64)
    m.handle_message(0.0, p.StartJob(1, b"", None))
    m.handle_finished(1, Finished("returned", output=b"x" * 100))
    (failed,) = sent(m)
    assert isinstance(failed, p.Failed) and "100 bytes" in failed.error
    m.handle_message(0.0, p.StartJob(2, b"", None))
    m.handle_finished(2, Finished("failed", error="e" * 500))
    (failed,) = sent(m)
    assert isinstance(failed, p.Failed) and len(p.encode_frame(failed)) <= 64 + 4


def test_heartbeats_keep_their_rhythm_and_never_burst() -> None:
    m = machine(heartbeat=0.1)
    assert m.poll_timeout() == 0.1
    m.handle_timeout(0.1)
    assert m.poll_timeout() is not None and abs(m.poll_timeout() - 0.2) < 1e-9
    # A stall of a second: one heartbeat waits, and the rhythm restarts from now.
    m.handle_timeout(1.25)
    assert sent(m) == [p.Heartbeat()]
    assert m.poll_timeout() is not None and abs(m.poll_timeout() - 1.35) < 1e-9


def test_shutdown_waits_for_the_running_job() -> None:
    m = machine()
    m.handle_message(0.0, p.StartJob(1, b"", None))
    m.handle_message(0.0, p.Shutdown())
    assert m.poll_exit() is None
    m.handle_finished(1, Finished("returned", output=b"done"))
    assert m.poll_exit() is None  # the result is not written yet
    assert sent(m) == [p.Completed(1, b"done")]
    exit_ = m.poll_exit()
    assert exit_ is not None and exit_.kind == "stopped"


def test_start_after_shutdown_is_a_violation() -> None:
    m = machine()
    m.handle_message(0.0, p.Shutdown())
    m.handle_message(0.0, p.StartJob(1, b"", None))
    exit_ = m.poll_exit()
    assert exit_ is not None and exit_.kind == "protocol"


def test_start_while_running_trips_and_stops_sending() -> None:
    m = machine()
    m.handle_message(0.0, p.StartJob(1, b"", None))
    m.handle_progress(1, 0.1, None)
    m.handle_message(0.0, p.StartJob(2, b"", None))
    assert drain_actions(m)[1:] == [TripAction(1, p.CancelReason.CLOSED)]
    assert sent(m) == []
    exit_ = m.poll_exit()
    assert exit_ is not None and exit_.kind == "protocol"


def test_the_signal_trips_and_stops_once_answered() -> None:
    m = machine()
    m.handle_message(0.0, p.StartJob(1, b"", None))
    m.handle_signal()
    assert drain_actions(m)[1:] == [TripAction(1, p.CancelReason.SIGNAL)]
    m.handle_finished(1, Finished("cancelled"))
    assert sent(m) == [p.CancelledMsg(1)]
    exit_ = m.poll_exit()
    assert exit_ is not None and exit_.kind == "stopped"


def test_eof_starts_the_orphan_grace() -> None:
    m = machine(heartbeat=0.1)
    m.handle_message(0.0, p.StartJob(1, b"", None))
    m.handle_channel_closed(5.0)
    assert drain_actions(m)[1:] == [TripAction(1, p.CancelReason.CLOSED)]
    assert m.poll_timeout() == 6.0
    m.handle_timeout(5.999)
    assert not m.is_orphaned()
    m.handle_timeout(6.0)
    assert m.is_orphaned()


def test_eof_then_the_handler_returns_in_time() -> None:
    m = machine()
    m.handle_message(0.0, p.StartJob(1, b"", None))
    m.handle_channel_closed(0.0)
    m.handle_finished(1, Finished("returned", output=b"x"))
    assert sent(m) == []
    exit_ = m.poll_exit()
    assert exit_ is not None and exit_.kind == "disconnected"


def test_eof_while_idle_ends_at_once() -> None:
    m = machine()
    m.handle_channel_closed(0.0)
    exit_ = m.poll_exit()
    assert exit_ is not None and exit_.kind == "disconnected"


def test_garbage_ends_serving_and_sends_nothing() -> None:
    m = machine()
    m.handle_message(0.0, p.StartJob(1, b"", None))
    m.handle_decode_error(p.DecodeError("unknown_tag", "tag 99"))
    m.handle_finished(1, Finished("returned", output=b"x"))
    assert sent(m) == []
    exit_ = m.poll_exit()
    assert exit_ is not None and exit_.kind == "protocol"
