"""The codec against protocol/tests/golden.json: every valid frame both ways, every invalid
one with its reason."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from warden_worker import protocol as p


def message(d: Dict[str, Any], direction: str) -> Any:
    kind = d["type"]
    if direction == p.SUPERVISOR:
        if kind == "Hello":
            return p.Hello(d["protocol_version"], d["supervisor_version"], d["max_frame_len"],
                           d["heartbeat_interval_ms"])
        if kind == "StartJob":
            return p.StartJob(d["job"], bytes.fromhex(d["payload"]), d["deadline_ms"])
        if kind == "Cancel":
            return p.Cancel(d["job"], p.CancelReason(d["reason"]))
        if kind == "Shutdown":
            return p.Shutdown()
        if kind == "Refuse":
            return p.Refuse(d["reason"])
    else:
        if kind == "Hello":
            return p.WorkerHello(d["protocol_version"], d["pid"], d["sdk_version"])
        if kind == "Heartbeat":
            return p.Heartbeat()
        if kind == "Progress":
            return p.Progress(d["job"], d["fraction"], d["text"])
        if kind == "Completed":
            return p.Completed(d["job"], bytes.fromhex(d["output"]))
        if kind == "Cancelled":
            return p.CancelledMsg(d["job"])
        if kind == "Failed":
            return p.Failed(d["job"], d["error"])
    raise AssertionError(f"golden.json names a message this test does not know: {d}")


def test_golden_has_cases(golden: Dict[str, Any]) -> None:
    assert len(golden["valid"]) >= 30 and len(golden["invalid"]) >= 10


def test_every_valid_frame_decodes_and_encodes(golden: Dict[str, Any]) -> None:
    for case in golden["valid"]:
        frame = bytes.fromhex(case["frame"])
        expected = message(case["message"], case["direction"])
        decoder = p.FrameDecoder(p.DEFAULT_MAX_FRAME_LEN, case["direction"])
        decoder.push(frame)
        assert decoder.next() == expected, case["name"]
        assert decoder.buffered == 0, case["name"]
        encoded = p.encode_frame(expected)
        assert (encoded == frame) == case["canonical"], case["name"]


def test_frames_split_anywhere_decode_the_same(golden: Dict[str, Any]) -> None:
    frames = [c for c in golden["valid"] if c["direction"] == p.SUPERVISOR]
    stream = b"".join(bytes.fromhex(c["frame"]) for c in frames)
    decoder = p.FrameDecoder(p.DEFAULT_MAX_FRAME_LEN, p.SUPERVISOR)
    got = []
    for i in range(len(stream)):
        decoder.push(stream[i : i + 1])
        msg = decoder.next()
        while msg is not None:
            got.append(msg)
            msg = decoder.next()
    assert got == [message(c["message"], p.SUPERVISOR) for c in frames]


def test_every_invalid_frame_is_refused_for_its_reason(golden: Dict[str, Any]) -> None:
    for case in golden["invalid"]:
        decoder = p.FrameDecoder(case["max_frame_len"], case["direction"])
        decoder.push(bytes.fromhex(case["frame"]))
        with pytest.raises(p.DecodeError) as err:
            decoder.next()
        assert err.value.kind == case["error"], case["name"]
        # A lost stream stays lost.
        with pytest.raises(p.DecodeError):
            decoder.next()


def test_the_limit_is_checked_on_the_header_alone() -> None:
    decoder = p.FrameDecoder(1024, p.SUPERVISOR)
    decoder.push((1025).to_bytes(4, "little"))
    with pytest.raises(p.DecodeError) as err:
        decoder.next()
    assert err.value.kind == "oversized"
    assert decoder.buffered == 0


def test_a_partial_frame_waits() -> None:
    decoder = p.FrameDecoder(p.DEFAULT_MAX_FRAME_LEN, p.SUPERVISOR)
    decoder.push(bytes.fromhex("0a000000 01ac02"))
    assert decoder.next() is None
    assert decoder.pending_body_len() == 10


def test_encoding_refuses_a_body_over_the_limit() -> None:
    with pytest.raises(p.EncodeError):
        p.encode_frame(p.Completed(1, b"x" * 100), 50)


def test_text_is_cut_at_a_character_boundary() -> None:
    assert p.truncate_text("é" * 200, 255) == "é" * 127
    assert p.truncate_text("abc", 256) == "abc"


def test_fractions_are_clamped_and_nan_dropped() -> None:
    assert p.clamp_fraction(2.0) == 1.0
    assert p.clamp_fraction(-1.0) == 0.0
    assert p.clamp_fraction(float("nan")) is None
    assert p.clamp_fraction(None) is None
