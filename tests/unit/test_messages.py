"""The wire messages (peernet._proto.messages): round trips and strict shape checks."""

from __future__ import annotations

import dataclasses
import enum

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peernet._proto import messages as m
from peernet._proto.messages import (
    BAD_REQUEST, BUSY, ERROR_CODES, FORBIDDEN, HANDLER_ERROR, HANDLER_NAME_RE,
    NO_SUCH_HANDLER, Bye, Call, Error, Ping, Pong, Reply, Send, decode_message,
    encode_message, is_valid_handler_name,
)
from peernet.errors import EncodeError, ProtocolError
from tests.helpers import mutate
from tests.hostile_cbor import HOSTILE

# The whole module runs on both codec backends: the pure-Python reference and the
# compiled accelerator.
pytestmark = pytest.mark.usefixtures("codec_backend")

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

NONCE = bytes(range(8))
SAMPLES = [
    Call(1, "echo", ["hi"]),
    Call(2**64 - 1, "a", None),
    Call(77, "chat.send:v2-x_y", {"text": "hi", "n": 1, "nested": [[1.5, b"\x00"]]}),
    Reply(5, {"ok": True}),
    Reply(6, None),
    Error(7, NO_SUCH_HANDLER, None),
    Error(8, HANDLER_ERROR, "ValueError"),
    Error(9, FORBIDDEN, "x" * 200),
    Error(10, BUSY, "myapp.errors.Busy_2"),
    Error(11, BAD_REQUEST, None),
    Send("notify", [1, 2, 3]),
    Send("Z" + "9" * 63, {}),
    Ping(NONCE),
    Pong(b"\xff" * 8),
    Bye(""),
    Bye("shutting down"),
]


def raw(*items: object) -> bytes:
    """A CBOR array built by cbor2 directly, bypassing encode_message's checks."""
    return cbor2.dumps(list(items))


@pytest.mark.parametrize("msg", SAMPLES, ids=[repr(s)[:40] for s in SAMPLES])
def test_each_record_round_trips(msg):
    data = encode_message(msg)
    out = decode_message(data)
    assert out == msg and type(out) is type(msg)


def test_wire_layout_is_the_documented_array():
    assert encode_message(Call(1, "echo", ["hi"])) == bytes.fromhex("840001646563686f81626869")
    assert cbor2.loads(encode_message(Reply(3, 4))) == [1, 3, 4]
    assert cbor2.loads(encode_message(Error(3, BUSY))) == [2, 3, "busy", None]
    assert cbor2.loads(encode_message(Send("s", {"a": 1}))) == [3, "s", {"a": 1}]
    assert cbor2.loads(encode_message(Ping(NONCE))) == [4, NONCE]
    assert cbor2.loads(encode_message(Pong(NONCE))) == [5, NONCE]
    assert cbor2.loads(encode_message(Bye("bye"))) == [6, "bye"]
    assert [r.KIND for r in (Call, Reply, Error, Send, Ping, Pong, Bye)] == list(range(7))


def test_records_are_frozen_slotted_dataclasses():
    msg = Call(1, "a", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.name = "b"  # type: ignore[misc]
    for cls in (Call, Reply, Error, Send, Ping, Pong, Bye):
        assert dataclasses.is_dataclass(cls) and "__slots__" in vars(cls)
        assert not hasattr(cls(*[None] * len(dataclasses.fields(cls))), "__dict__")


def test_error_codes():
    assert ERROR_CODES == {"no_such_handler", "forbidden", "handler_error", "busy",
                           "bad_request"}


class Name(enum.StrEnum):
    ECHO = "echo"


@pytest.mark.parametrize("name, ok", [
    ("a", True), ("echo", True), ("Chat.v2:send-x_y", True), ("a" * 64, True),
    ("a" * 65, False), ("", False), ("_private", False), ("9lives", False),
    ("a b", False), ("é", False), ("echo\n", False), ("-x", False), (".x", False),
    (b"echo", False), (None, False), (Name.ECHO, False),
])
def test_handler_names(name, ok):
    assert is_valid_handler_name(name) is ok
    if type(name) is str:
        assert (HANDLER_NAME_RE.fullmatch(name) is not None) is ok


# --------------------------------------------------------------------- bad shapes

BAD = {
    "top-level-int": cbor2.dumps(1),
    "top-level-map": cbor2.dumps({"kind": 0}),
    "top-level-str": cbor2.dumps("call"),
    "top-level-null": cbor2.dumps(None),
    "empty-array": raw(),
    "unknown-kind-7": raw(7, "x"),
    "unknown-kind-neg": raw(-1, 1),
    "kind-bool": raw(True, 1, None),
    "kind-float": raw(0.0, 1, "echo", None),
    "kind-str": raw("0", 1, "echo", None),
    "call-arity-3": raw(0, 1, "echo"),
    "call-arity-5": raw(0, 1, "echo", None, None),
    "call-rid-bool": raw(0, True, "echo", None),
    "call-rid-zero": raw(0, 0, "echo", None),
    "call-rid-negative": raw(0, -1, "echo", None),
    "call-rid-2^64": raw(0, 2**64, "echo", None),  # needs a bignum tag
    "call-rid-float": raw(0, 1.0, "echo", None),
    "call-rid-str": raw(0, "1", "echo", None),
    "call-name-private": raw(0, 1, "_private", None),
    "call-name-digit": raw(0, 1, "1abc", None),
    "call-name-empty": raw(0, 1, "", None),
    "call-name-space": raw(0, 1, "a b", None),
    "call-name-65": raw(0, 1, "a" * 65, None),
    "call-name-newline": raw(0, 1, "echo\n", None),
    "call-name-bytes": raw(0, 1, b"echo", None),
    "call-name-null": raw(0, 1, None, None),
    "reply-arity-2": raw(1, 1),
    "reply-arity-4": raw(1, 1, None, None),
    "reply-rid-bool": raw(1, False, None),
    "reply-rid-zero": raw(1, 0, None),
    "error-arity-3": raw(2, 1, "busy"),
    "error-arity-5": raw(2, 1, "busy", None, None),
    "error-rid-zero": raw(2, 0, "busy", None),
    "error-unknown-code": raw(2, 1, "oops", None),
    "error-code-case": raw(2, 1, "BUSY", None),
    "error-code-int": raw(2, 1, 3, None),
    "error-code-null": raw(2, 1, None, None),
    "error-detail-long": raw(2, 1, "busy", "x" * 201),
    "error-detail-int": raw(2, 1, "busy", 5),
    "error-detail-bytes": raw(2, 1, "busy", b"x"),
    "send-arity-2": raw(3, "echo"),
    "send-arity-4": raw(3, "echo", None, None),
    "send-name-private": raw(3, "_x", None),
    "send-name-int": raw(3, 5, None),
    "ping-arity-1": raw(4),
    "ping-arity-3": raw(4, NONCE, NONCE),
    "ping-nonce-7": raw(4, b"\x00" * 7),
    "ping-nonce-9": raw(4, b"\x00" * 9),
    "ping-nonce-str": raw(4, "12345678"),
    "ping-nonce-int": raw(4, 12345678),
    "pong-nonce-empty": raw(5, b""),
    "pong-arity-1": raw(5),
    "bye-arity-1": raw(6),
    "bye-arity-3": raw(6, "x", "y"),
    "bye-reason-long": raw(6, "x" * 201),
    "bye-reason-null": raw(6, None),
    "bye-reason-bytes": raw(6, b"x"),
}


@pytest.mark.parametrize("data", BAD.values(), ids=BAD.keys())
def test_bad_shapes_are_protocol_errors(data):
    with pytest.raises(ProtocolError):
        decode_message(data)


def test_boundary_values_are_accepted():
    assert decode_message(raw(0, 2**64 - 1, "a" * 64, None)) == Call(2**64 - 1, "a" * 64, None)
    assert decode_message(raw(2, 1, "busy", "x" * 200)) == Error(1, BUSY, "x" * 200)
    assert decode_message(raw(6, "~" * 200)) == Bye("~" * 200)


@pytest.mark.parametrize("data", [
    raw(2, 1, "handler_error", "\x1b]0;pwned\x07"),     # set the window title
    raw(2, 1, "handler_error", "Value\nError"),          # a forged log line
    raw(2, 1, "handler_error", "ValueError: secret"),    # a message, not a type name
    raw(2, 1, "handler_error", ""),
    raw(2, 1, "handler_error", "Ünïcode"),
    raw(2, 1, "busy", "a..b"),
    raw(6, "bye\x1b[2J"),                                 # clear the screen
    raw(6, "two\nlines"),
    raw(6, "\u202eevil"),                                 # right-to-left override
    raw(6, "\u009b31m"),                                  # C1 CSI
    raw(6, "é"),
], ids=["osc-title", "newline-detail", "message-detail", "empty-detail", "non-ascii-detail",
        "empty-segment", "clear-screen", "newline-reason", "rlo-reason", "c1-reason",
        "non-ascii-reason"])
def test_texts_a_peer_controls_must_look_like_what_they_are(data):
    """An error detail is an exception type name; a bye reason is printable ASCII. Both
    reach terminals and logs, so anything else ends the link."""
    with pytest.raises(ProtocolError):
        decode_message(data)


@pytest.mark.parametrize("data", [c[1] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_cbor_is_a_protocol_error(data):
    with pytest.raises(ProtocolError):
        decode_message(data)


def test_protocol_error_messages_do_not_repeat_the_data():
    with pytest.raises(ProtocolError) as info:
        decode_message(raw(0, 1, "_secret_handler_name", None))
    assert "secret" not in str(info.value)
    with pytest.raises(ProtocolError) as info:
        decode_message(raw(2, 1, "password=hunter2", None))
    assert "hunter2" not in str(info.value)


# ------------------------------------------------------------- local encode errors


@pytest.mark.parametrize("msg", [
    Call(0, "echo", None), Call(True, "echo", None), Call(2**64, "echo", None),
    Call(1.0, "echo", None), Call(1, "_private", None), Call(1, "a" * 65, None),
    Call(1, b"echo", None), Call(1, Name.ECHO, None), Send("bad name", None),
    Reply(-5, None), Error(1, "oops", None), Error(1, BUSY, "x" * 201),
    Error(1, BUSY, 5), Error(1, ["busy"], None), Error(1, HANDLER_ERROR, "bad\ud800"),
    Ping(b"short"), Ping(bytearray(8)), Pong("12345678"), Bye("x" * 201), Bye(None),
    Bye("\udc00"), Bye("é"), Bye("a\nb"), Error(1, HANDLER_ERROR, "not a name"),
])
def test_invalid_fields_raise_value_error_on_encode(msg):
    with pytest.raises(ValueError):
        encode_message(msg)


def test_non_cbor_args_and_results_raise_encode_error_with_a_path():
    with pytest.raises(EncodeError) as info:
        encode_message(Call(1, "echo", {"x": [0, 0, 0, {"secret"}]}))
    assert str(info.value).startswith('args["x"][3]: set is not CBOR data; send a list')
    with pytest.raises(EncodeError, match=r"^result\[0\]: object is not CBOR data$"):
        encode_message(Reply(1, [object()]))
    with pytest.raises(EncodeError, match=r"^args: dict key of type int"):
        encode_message(Send("echo", {1: 2}))
    with pytest.raises(EncodeError, match=r'^args\["t"\]: str is not valid Unicode'):
        encode_message(Send("echo", {"t": "\ud800"}))
    loop: list = []
    loop.append(loop)
    with pytest.raises(EncodeError, match="cycle"):
        encode_message(Reply(1, loop))


def test_encode_message_refuses_non_messages():
    with pytest.raises(TypeError):
        encode_message([0, 1, "echo", None])  # type: ignore[arg-type]


# ------------------------------------------------------------------ limits agree


def nested(depth: int) -> object:
    v: object = 0
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("max_depth", [1, 2, 16])
def test_depth_accounting_agrees(max_depth):
    # The envelope is level 1, so args get max_depth - 1 levels.
    for make in (lambda a: Call(1, "f", a), lambda a: Reply(1, a), lambda a: Send("f", a)):
        ok = make(nested(max_depth - 1))
        assert decode_message(encode_message(ok, max_depth=max_depth),
                              max_depth=max_depth) == ok
        too_deep = make(nested(max_depth))
        with pytest.raises(EncodeError, match="nested deeper"):
            encode_message(too_deep, max_depth=max_depth)
        with pytest.raises(ProtocolError, match="nested deeper"):
            decode_message(encode_message(too_deep, max_depth=max_depth + 1),
                           max_depth=max_depth)


def test_item_accounting_agrees():
    # [0, rid, name, args]: 4 items besides what args holds (its own root counted).
    args = list(range(45))  # 46 items
    msg = Call(1, "f", args)
    assert decode_message(encode_message(msg, max_items=50), max_items=50) == msg
    with pytest.raises(EncodeError, match="items"):
        encode_message(msg, max_items=49)
    with pytest.raises(ProtocolError, match="items"):
        decode_message(encode_message(msg), max_items=49)
    reply = Reply(1, args)  # [1, rid, result]: 3 items besides result
    assert decode_message(encode_message(reply, max_items=49), max_items=49) == reply
    with pytest.raises(EncodeError, match="items"):
        encode_message(reply, max_items=48)


# ------------------------------------------------------------------ property tests

scalars = (st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=10) | st.binary(max_size=10))
cbor_values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=20)
rids = st.integers(1, 2**64 - 1)
names = st.from_regex(HANDLER_NAME_RE, fullmatch=True)
short_text = st.text(max_size=200)
type_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}(\.[A-Za-z_][A-Za-z0-9_]{0,20}){0,3}",
                           fullmatch=True)
reasons = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)
valid_messages = st.one_of(
    st.builds(Call, rids, names, cbor_values),
    st.builds(Reply, rids, cbor_values),
    st.builds(Error, rids, st.sampled_from(sorted(ERROR_CODES)), st.none() | type_names),
    st.builds(Send, names, cbor_values),
    st.builds(Ping, st.binary(min_size=8, max_size=8)),
    st.builds(Pong, st.binary(min_size=8, max_size=8)),
    st.builds(Bye, reasons),
)


@FUZZ
@given(valid_messages)
def test_valid_messages_round_trip(msg):
    out = decode_message(encode_message(msg, max_depth=64), max_depth=64)
    assert out == msg and type(out) is type(msg)


@FUZZ
@given(valid_messages, st.data())
def test_mutated_messages_raise_only_protocol_error(msg, draw):
    data = mutate(encode_message(msg, max_depth=64), draw, max_ops=3)
    try:
        out = decode_message(data)
    except ProtocolError:
        return
    # Anything accepted is a well-formed message that encodes back to itself (compared
    # as bytes: a mutated float may be a NaN).
    again = encode_message(out)
    assert encode_message(decode_message(again)) == again


@FUZZ
@given(st.binary(max_size=40))
def test_random_bytes_raise_only_protocol_error(data):
    try:
        decode_message(data)
    except ProtocolError:
        pass


def test_module_exports():
    for name in m.__all__:
        assert getattr(m, name) is not None
        obj = getattr(m, name)
        if callable(obj) and not isinstance(obj, type(HANDLER_NAME_RE)):
            assert obj.__doc__


@pytest.mark.parametrize("size", [4095, 4096, 65535, 65536, 1 << 20])
def test_big_bytes_bodies_encode_exactly_as_cbor2_would(size):
    """A bytes body of 4 KiB or more skips cbor2 (it copies them slowly): same bytes."""
    import cbor2

    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for msg, fields in ((Call(5, "echo", body), [0, 5, "echo"]), (Reply(7, body), [1, 7]),
                        (Send("put", body), [3, "put"])):
        wire = encode_message(msg)
        assert wire == cbor2.dumps([*fields, body])
        assert decode_message(wire) == msg
        # What the link gets: the same bytes, the body kept apart (and not copied).
        parts = m.encode_for_link(msg)
        if size >= 4096:
            assert type(parts) is m.Bulk and parts.body is body
            assert bytes(parts) == wire and len(parts) == len(wire)
        else:
            assert parts == wire


# --------------------------------------------------------------------- deferred args

def _deferred_agrees(data: bytes) -> None:
    """decode_message(defer_over=0) accepts exactly what decode_message accepts, and a
    call or send it accepts has the same fields, its args Deferred (built later by the
    plain decode) with a bound at least what they hold."""
    try:
        full = decode_message(data)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            decode_message(data, defer_over=0)
        return
    lazy = decode_message(data, defer_over=0)
    if type(full) not in (Call, Send):
        assert lazy == full
        return
    assert type(lazy) is type(full) and type(lazy.args) is m.Deferred
    assert dataclasses.replace(lazy, args=full.args) == full
    assert lazy.args.held_bound >= len(data)


@pytest.mark.parametrize("data", [*BAD.values(), *(c[1] for c in HOSTILE),
                                  *(encode_message(s) for s in SAMPLES),
                                  raw(0, 1, "echo", "\udcff".encode("utf-8", "surrogatepass")),
                                  b"\x84\x00\x01\x64echo\x62\xff\xfe",  # args: bad UTF-8
                                  b"\x83\x03\x64ech\xff\x00",            # name: bad UTF-8
                                  b"\x84\x00\x18\x01\x64echo\xf6",       # rid: not shortest
                                  b"\x84\x00\x01\x64echo\xf6\x00"],      # trailing byte
                         ids=lambda d: d[:12].hex())
def test_deferred_decoding_accepts_and_refuses_exactly_what_decoding_does(data):
    _deferred_agrees(data)


@FUZZ
@given(valid_messages, st.data())
def test_deferred_decoding_agrees_on_mutated_messages(msg, draw):
    _deferred_agrees(encode_message(msg, max_depth=64))
    _deferred_agrees(mutate(encode_message(msg, max_depth=64), draw, max_ops=3))


def test_only_calls_and_sends_over_the_threshold_are_deferred():
    small, big = Call(1, "echo", "x"), Call(1, "echo", "x" * 5000)
    assert decode_message(encode_message(small), defer_over=4096) == small
    assert type(decode_message(encode_message(big), defer_over=4096).args) is m.Deferred
    assert decode_message(encode_message(big)) == big
    reply = Reply(1, "x" * 5000)
    assert decode_message(encode_message(reply), defer_over=0) == reply
