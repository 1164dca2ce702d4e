"""The compiled accelerator (peernet._proto._cstrict) against the pure-Python reference.

The codec suites (test_cbor.py, test_messages.py) and the fuzz targets run on both
backends; this module holds what is specific to having two: the switch, the inputs the
accelerator hands back to the reference, exact floats, records built in C, and the
bounds of the C code (deep input in a small-stack thread).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import struct
import subprocess
import sys
import threading

import cbor2
import pytest

from peernet._proto import cbor
from peernet._proto import messages as m
from peernet._proto.messages import Bye, Call, Error, Ping, Reply, Send, decode_message
from peernet.errors import ProtocolError
from tests.accel import accelerator, backend, under_both
from tests.hostile_cbor import AMPLIFY, BENIGN, HOSTILE

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _backend_in_a_fresh_interpreter(**env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "PEERNET_PURE"}
    out = subprocess.run([sys.executable, "-c",
                          "import peernet._proto.cbor as c; print(c.BACKEND)"],
                         env={**environ, **env}, cwd=REPO, capture_output=True, text=True,
                         timeout=30, check=True)
    return out.stdout.strip()


def test_backend_is_c_unless_peernet_pure_is_set():
    accelerator()
    assert _backend_in_a_fresh_interpreter() == "c"
    assert _backend_in_a_fresh_interpreter(PEERNET_PURE="0") == "c"
    assert _backend_in_a_fresh_interpreter(PEERNET_PURE="1") == "python"


def test_backend_names_the_module_in_use():
    with backend("python"):
        assert cbor.BACKEND == "python" and cbor._accel is None
    with backend("c"):
        assert cbor.BACKEND == "c" and cbor._accel is accelerator()
    with pytest.raises(AttributeError):
        cbor.NO_SUCH_NAME  # noqa: B018  # the module __getattr__ knows only BACKEND


LIMITS = [(16, 50_000), (1000, 10**7), (0, 0), (1, 1), (3, 10), (2, -5)]


@pytest.mark.parametrize("data", [c[1] for c in HOSTILE + BENIGN + AMPLIFY],
                         ids=[c[0] for c in HOSTILE + BENIGN + AMPLIFY])
def test_hostile_corpus_gets_the_same_answer_from_both(data):
    for max_depth, max_items in LIMITS:
        pure, compiled = under_both(cbor.decode, data, max_depth=max_depth,
                                    max_items=max_items)
        assert pure == compiled, (max_depth, max_items)
        pure, compiled = under_both(decode_message, data, max_depth=max_depth,
                                    max_items=max_items)
        assert pure == compiled, (max_depth, max_items)


@pytest.mark.parametrize("hex_item", [
    "f90000", "f98000", "f90001", "f903ff", "f90400", "f93c00", "f97bff", "f97c00",
    "f9fc00", "f97e00", "f9fe00", "f97c01", "f97e01", "f9fdff",          # half
    "fa00000001", "fa7f800000", "fa7f800001", "fa7fc00000", "faff800001",  # single
    "fb0000000000000001", "fb7ff0000000000001", "fbfff8000000000000",     # double
    "fb8000000000000000", "fb7fefffffffffffff",
])
def test_floats_decode_to_the_same_bits(hex_item):
    """NaN payloads, subnormals and signed zeros included: compared bit for bit."""
    data = bytes.fromhex(hex_item)
    pure, compiled = under_both(cbor.decode, data)
    assert pure == compiled and pure[0] == "ok"
    value = cbor2.loads(data)
    assert compiled[1] == ("float", struct.pack(">d", value))


@pytest.mark.parametrize("value", [
    float("nan"), -float("nan"), struct.unpack(">d", bytes.fromhex("7ff0000000000001"))[0],
    float("inf"), -float("inf"), 0.0, -0.0, 5e-324, 1.5, 1e300,
])
def test_floats_encode_as_cbor2_writes_them(value):
    assert accelerator().encode([value], 16, 100) == cbor2.dumps([value])


class Level(enum.IntEnum):
    LOW = 1


class Label(str):
    pass


@pytest.mark.parametrize("value", [
    Level.LOW, Label("x"), {Label("k"): 1}, {1: 2}, {1, 2}, 2**64, -(2**64) - 1, "\ud800",
    {"\udc00": 1}, memoryview(b"x"), [[[0]]], list(range(10)),
])
def test_encode_declines_what_the_reference_must_convert_or_refuse(value):
    # [[[0]]] is too deep and range(10) too many items for the limits used here.
    assert accelerator().encode(value, 2, 8) is None
    pure, compiled = under_both(cbor.encode, value, max_depth=2, max_items=8)
    assert pure == compiled


def test_encode_takes_exact_builtin_values_and_writes_cbor2_bytes():
    value = {"a": [None, True, False, 0, -1, 2**64 - 1, -(2**64), 1.25, "é", b"\x00"],
             "t": (1, (2,)), "ba": bytearray(b"xy"), "": {}}
    assert accelerator().encode(value, 16, 50_000) == cbor2.dumps(value)


@pytest.mark.parametrize("data", [
    bytearray(b"\x82\x01\x02"), memoryview(b"\x82\x01\x02"), bytearray(b"\x82\x01"),
    type("Bytes", (bytes,), {})(b"\x81\x01"), "\x01", 1, None,
])
def test_non_bytes_input_is_left_to_the_reference(data):
    with pytest.raises(accelerator().Unsupported):
        accelerator().decode(data, 16, 100)
    pure, compiled = under_both(cbor.decode, data)
    assert pure == compiled


@pytest.mark.parametrize("max_depth, max_items", [
    (-1, 100), (2**63, 100), (2**64 - 1, 100), (2**64, 100), (16, 2**70), (16, -(2**70)),
])
def test_limits_beyond_a_c_size_are_left_to_the_reference(max_depth, max_items):
    for data in (b"\x82\x01\x02", b"\x81\x81\x00", b"\x01", b"\x84\x00\x01\x61a\x80"):
        pure, compiled = under_both(cbor.decode, data, max_depth=max_depth,
                                    max_items=max_items)
        assert pure == compiled
        pure, compiled = under_both(decode_message, data, max_depth=max_depth,
                                    max_items=max_items)
        assert pure == compiled
        pure, compiled = under_both(cbor.encode, [1, [2]], max_depth=max_depth,
                                    max_items=max_items)
        assert pure == compiled


def test_text_errors_come_after_structure_errors_as_in_the_reference():
    bad_text = b"\x62\xff\xfe"
    # Bad UTF-8 first, then a structural error: the reference's first step (the
    # pre-validator) reports the structure; its second step (cbor2) would report the text.
    for data in (b"\x82" + bad_text + b"\xc1", b"\x82" + bad_text + b"\x01\x00",
                 b"\xa2\x61a" + bad_text + b"\x61a\x00",
                 b"\xa2" + bad_text + b"\x00" + bad_text + b"\x00",  # duplicate bad keys
                 b"\x82" + bad_text + b"\x01"):
        pure, compiled = under_both(cbor.decode, data)
        assert pure == compiled
        assert pure[0] == "raised"


def test_errors_chain_nothing():
    with backend("c"):
        for data in (b"\x62\xff\xfe", b"\xc1\x00", b"", b"\x01\x02",
                     cbor2.dumps([0, 0, "echo", None])):
            with pytest.raises(ProtocolError) as info:
                decode_message(data)
            assert info.value.__cause__ is None and info.value.__context__ is None


def test_records_built_in_c_are_the_same_records():
    samples = [Call(7, "echo", 1.5), Reply(2**64 - 1, None), Error(3, m.BUSY, "x.Y"),
               Send("s", b"b"), Ping(bytes(8)), m.Pong(b"\xff" * 8), Bye("bye")]
    for msg in samples:
        data = m.encode_message(msg)
        with backend("c"):
            assert m.encode_message(msg) == data
            out = decode_message(data)
        assert type(out) is type(msg) and out == msg and hash(out) == hash(msg)
        assert repr(out) == repr(msg)
        assert not hasattr(out, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(out, dataclasses.fields(out)[0].name, 1)


def test_encode_message_declines_what_the_reference_must_check_or_convert():
    accel = accelerator()

    class MyCall(Call):
        __slots__ = ()

    for msg in (MyCall(1, "echo", None), Call(0, "echo", None), Call(1, "_x", None),
                Call(1, "echo", {1, 2}), Reply(1, b"x" * 4096), Send("s", Level.LOW),
                Error(1, "nope", None), Error(1, m.BUSY, "a..b"), Ping(b"short"),
                Bye("é"), [0, 1, "echo", None]):
        assert accel.encode_message(msg, 16, 50_000, m._SPEC) is None
        pure, compiled = under_both(m.encode_for_link, msg)
        assert pure == compiled


def _in_small_stack_thread(fn):
    out: list = []
    old = threading.stack_size(256 * 1024)
    try:
        t = threading.Thread(target=lambda: out.append(fn()))
        t.start()
    finally:
        threading.stack_size(old)
    t.join(30)
    assert not t.is_alive()
    return out[0]


def test_deep_input_is_decoded_iteratively_in_a_small_stack_thread():
    # 60,000 levels: a recursive decoder would overflow a 256 KiB stack long before.
    depth = 60_000
    accel = accelerator()
    value = _in_small_stack_thread(lambda: accel.decode(b"\x81" * depth + b"\x00", 10**6,
                                                        10**7))
    level = 0
    while type(value) is list:
        (value,) = value
        level += 1
    assert level == depth and value == 0
    with pytest.raises(ProtocolError, match="nested deeper than 59999 levels"):
        accel.decode(b"\x81" * depth + b"\x00", depth - 1, 10**7)


def test_deep_values_are_encoded_iteratively_in_a_small_stack_thread():
    depth = 60_000
    deep: object = 0
    for _ in range(depth):
        deep = [deep]
    accel = accelerator()
    data = _in_small_stack_thread(lambda: accel.encode(deep, 10**6, 10**7))
    assert data == b"\x81" * depth + b"\x00"
    assert accel.encode(deep, depth - 1, 10**7) is None  # the reference names the culprit
