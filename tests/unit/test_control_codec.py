"""peernet/_proto/control.py: the control protocol's codec, in memory (no socket)."""

from __future__ import annotations

import json
import math

import pytest

import peernet
from peernet._proto import control as proto
from peernet._proto.control import (
    MAX_REQUEST_BYTES,
    OPS,
    Event,
    LineReader,
    LineTooLong,
    Refusal,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_error,
    encode_event,
    encode_request,
    encode_result,
    error_from_wire,
    error_to_wire,
    from_wire,
    to_wire,
)

PID = "pn1" + "q" * 58  # the shape of an id; the codec does not parse ids


def refusal(line: bytes) -> Refusal:
    with pytest.raises(Refusal) as info:
        decode_request(line)
    return info.value


# --- lines -----------------------------------------------------------------------------


def test_lines_are_split_across_and_within_reads():
    reader = LineReader(100)
    assert reader.feed(b'{"a"') == [] and reader.pending
    assert reader.feed(b':1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert reader.feed(b":3}\n") == [b'{"c":3}'] and not reader.pending


def test_a_line_over_the_limit_is_refused_whether_or_not_it_ends():
    assert LineReader(10).feed(b"123456789\n") == [b"123456789"]  # 10 bytes with \n
    with pytest.raises(LineTooLong):
        LineReader(10).feed(b"1234567890\n")
    reader = LineReader(10)
    reader.feed(b"12345")
    with pytest.raises(LineTooLong) as info:
        reader.feed(b"67890")  # no newline yet, and already too long: never buffered more
    assert info.value.kind == "RequestTooLarge"


def test_the_reader_holds_at_most_the_limit():
    reader = LineReader(MAX_REQUEST_BYTES)
    with pytest.raises(LineTooLong):
        reader.feed(b"x" * (10 * MAX_REQUEST_BYTES))
    assert len(reader._buffer) < MAX_REQUEST_BYTES


# --- requests --------------------------------------------------------------------------


def test_a_request_round_trips_with_its_arguments_checked():
    line = encode_request("pair", {"peer": PID, "label": "kitchen pi"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"v": 1, "op": "pair", "args": {"peer": PID, "label": "kitchen pi"}}
    assert decode_request(line[:-1]) == Request("pair", {"peer": PID, "label": "kitchen pi"})
    assert decode_request(b'{"v":1,"op":"status"}') == Request("status", {})
    call = decode_request(encode_request("call", {"peer": "pi", "name": "echo", "args": b"\x00",
                                                  "timeout": 2}))
    assert call.args == {"peer": "pi", "name": "echo", "args": b"\x00", "timeout": 2.0}


@pytest.mark.parametrize("line, kind, needle", [
    (b"garbage", "BadRequest", "not a JSON object"),
    (b"\xff\xfe", "BadRequest", "not UTF-8"),
    (b"[1, 2]", "BadRequest", "a request is a JSON object"),
    (b'{"v":1,"op":"status","x":1}', "BadRequest", "unknown request field"),
    (b'{"op":"status"}', "UnsupportedVersion", "speaks version 1"),
    (b'{"v":2,"op":"status"}', "UnsupportedVersion", "version 2"),
    (b'{"v":true,"op":"status"}', "UnsupportedVersion", "version"),
    (b'{"v":1,"op":"shutdown"}', "BadRequest", "unknown op 'shutdown'"),
    (b'{"v":1,"op":5}', "BadRequest", "unknown op"),
    (b'{"v":1,"op":"pair","args":[]}', "BadRequest", "args must be an object"),
    (b'{"v":1,"op":"pair","args":{}}', "BadRequest", "missing argument 'peer'"),
    (b'{"v":1,"op":"pair","args":{"peer":"x","admin":true}}', "BadRequest", "unknown argument"),
    (b'{"v":1,"op":"pair","args":{"peer":7}}', "BadRequest", "peer must be"),
    (b'{"v":1,"op":"pair","args":{"peer":""}}', "BadRequest", "peer must be"),
    (b'{"v":1,"op":"pair","args":{"peer":"x","label":3}}', "BadRequest", "label must be"),
    (b'{"v":1,"op":"connect","args":{"peer":"x","host":"h","port":0}}', "BadRequest", "port"),
    (b'{"v":1,"op":"connect","args":{"peer":"x","host":"h","port":true}}', "BadRequest", "port"),
    (b'{"v":1,"op":"wait_for_peer","args":{"peer":"x","timeout":-1}}', "BadRequest", "seconds"),
    (b'{"v":1,"op":"wait_for_peer","args":{"peer":"x","timeout":1e400}}', "BadRequest",
     "seconds"),
    (b'{"v":1,"op":"call","args":{"peer":"x","name":"n","timeout":NaN}}', "BadRequest",
     "is not a number"),
    (b'{"v":1,"op":"call","args":{"peer":"x","name":"n","args":{"$eval":"x"}}}', "BadRequest",
     "tagged value"),
    (b'{"v":1,"op":"call","args":{"peer":"x","name":"n","args":{"$base64":"!!"}}}',
     "BadRequest", "$base64"),
    (b'{"v":1,"op":"watch","args":{"topics":["everything"]}}', "BadRequest", "topics"),
    (b'{"v":1,"op":"watch","args":{"topics":[]}}', "BadRequest", "topics"),
    (b'{"v":1,"v":1,"op":"status"}', "BadRequest", "duplicate key"),
    (b'{"v":1,"op":"nearby","args":{"wait":31}}', "BadRequest", "0 to 30"),
])
def test_bad_requests_are_refused_with_a_clear_reason(line, kind, needle):
    exc = refusal(line)
    assert exc.kind == kind and needle in str(exc), (kind, str(exc))


def test_hostile_json_is_refused_quickly():
    assert "nested" in str(refusal(b'{"v":1,"op":"call","args":{"peer":"x","name":"n","args":'
                                   + b"[" * 100_000 + b"]" * 100_000 + b"}}"))
    deep = b"[" * (proto.MAX_DEPTH + 5) + b"]" * (proto.MAX_DEPTH + 5)
    assert "nested" in str(refusal(b'{"v":1,"op":"call","args":{"peer":"x","name":"n","args":'
                                   + deep + b"}}"))
    assert refusal(b'{"v":1,"op":"status","args":{"x":' + b"9" * 5000 + b"}}").kind == "BadRequest"


def test_every_op_has_a_declared_argument_table():
    assert set(OPS) == {"hello", "status", "peers", "nearby", "pair", "unpair", "label",
                        "connect", "wait_for_peer", "call", "send", "watch",
                        "invite", "invite_wait", "invite_cancel", "join"}
    for op, spec in OPS.items():
        required = {name: kind for name, (kind, needed) in spec.items() if needed}
        line = json.dumps({"v": 1, "op": op, "args": {}}).encode()
        if required:
            assert "missing argument" in str(refusal(line))
        else:
            assert decode_request(line) == Request(op, {})


# --- values ----------------------------------------------------------------------------


def test_invite_ops_check_their_arguments_and_rejections_keep_their_reason():
    assert decode_request(json.dumps({"v": 1, "op": "invite_wait", "args": {
        "nameplate": 7, "timeout": 0.5}}).encode()) == Request(
            "invite_wait", {"nameplate": 7, "timeout": 0.5})
    for bad in (0, 65536, "7", 7.0, True):
        with pytest.raises(Refusal, match="nameplate must be a number 1..65535"):
            decode_request(json.dumps({"v": 1, "op": "invite_cancel",
                                       "args": {"nameplate": bad}}).encode())
    assert decode_request(json.dumps({"v": 1, "op": "invite", "args": {
        "short": False}}).encode()) == Request("invite", {"short": False})
    for bad in (0, 1, "false", None):
        with pytest.raises(Refusal, match="short must be true or false"):
            decode_request(json.dumps({"v": 1, "op": "invite", "args": {"short": bad}}).encode())
    back = error_from_wire(error_to_wire(peernet.InviteRejected("burned", "wrong_code")),
                           lambda k, m: peernet.ControlError(m, k))
    assert type(back) is peernet.InviteRejected and back.reason == "wrong_code"
    expired = error_from_wire(error_to_wire(peernet.InviteExpired("late")),
                              lambda k, m: peernet.ControlError(m, k))
    assert type(expired) is peernet.InviteExpired


@pytest.mark.parametrize("value", [
    None, True, 0, -2**63, 2**64 - 1, 1.5, "text", "\u202e\x1b", b"", b"\x00\xff",
    [1, [2, [b"3"]]], {"a": {"b": b"c"}}, {"$base64": "not bytes, a dict"},
    {"$dict": 1}, {"$": None}, {"$x": 1, "$y": 2}, {},
])
def test_values_cross_unchanged(value):
    wire = to_wire(value)
    assert from_wire(json.loads(json.dumps(wire))) == value


def test_non_finite_floats_and_tuples():
    back = from_wire(json.loads(json.dumps(to_wire([math.inf, -math.inf, math.nan, (1, 2)]))))
    assert back[:2] == [math.inf, -math.inf] and math.isnan(back[2]) and back[3] == [1, 2]


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("value", [{1: "int key"}, {"s": {1, 2}}, object(), _nested(40)])
def test_what_cannot_travel_raises_encode_error_like_the_local_api(value):
    with pytest.raises(peernet.EncodeError):
        encode_request("call", {"peer": "x", "name": "n", "args": value})


# --- responses, events and errors ------------------------------------------------------


def test_responses_and_events_decode():
    assert decode_response(encode_result({"id": PID})) == Response(True, result={"id": PID})
    error = {"type": "NotPaired", "message": "m"}
    assert decode_response(encode_error(error)) == Response(False, error=error)
    event = decode_response(encode_event("chat", {"peer": PID, "text": "\u2028hi\n"}))
    assert event == Event("chat", {"peer": PID, "text": "\u2028hi\n"})
    assert encode_event("chat", {"text": "\u2028\ud800"}).isascii()  # even a lone surrogate


@pytest.mark.parametrize("line", [b"nope", b"[]", b'{"ok":true}', b'{"ok":false,"error":{}}',
                                  b'{"event":"secrets","data":{}}', b'{"ok":1,"result":2}'])
def test_malformed_responses_are_bad_responses(line):
    with pytest.raises(Refusal) as info:
        decode_response(line)
    assert info.value.kind == "BadResponse"


def _round_trip(exc: BaseException) -> Exception:
    wire = json.loads(json.dumps(error_to_wire(exc)))
    return error_from_wire(wire, lambda kind, message: peernet.ControlError(message, kind))


@pytest.mark.parametrize("exc", [
    peernet.NotPaired("pn1x is not paired"), peernet.PeerUnavailable("gone"),
    peernet.CallTimeout("slow"), peernet.Forbidden("no"), peernet.Busy("busy"),
    peernet.UnknownPeer("who?"), peernet.InvalidPeerId("typo"), peernet.NodeClosed("closed"),
    peernet.MessageTooLarge("big"), peernet.InvalidHandlerName("bad"),
    ValueError("that is this node's own id"), TypeError("label must be a str"),
])
def test_errors_cross_as_the_same_class_and_message(exc):
    back = _round_trip(exc)
    assert type(back) is type(exc) and str(back) == str(exc)


def test_errors_keep_what_their_class_carries():
    remote = _round_trip(peernet.RemoteError("ZeroDivisionError", None))
    assert isinstance(remote, peernet.RemoteError) and remote.type_name == "ZeroDivisionError"
    nsh = peernet.NoSuchHandler("no 'ech'")
    nsh.suggestions = ("echo",)
    assert _round_trip(nsh).suggestions == ("echo",)
    lost = peernet.ConnectionLost("protocol error")
    lost.protocol_error = True
    assert _round_trip(lost).protocol_error is True


def test_other_exceptions_cross_as_their_type_name_only():
    wire = error_to_wire(KeyError("/home/secret/path"))
    assert wire == {"type": "InternalError", "message": "the node failed: KeyError"}
    back = _round_trip(KeyError("x"))
    assert type(back) is peernet.ControlError and back.kind == "InternalError"
    refused = _round_trip(Refusal("BadRequest", "why"))
    assert type(refused) is peernet.ControlError and refused.kind == "BadRequest"
    # A type name that is no peernet error is never looked up anywhere else.
    assert type(error_from_wire({"type": "SystemExit", "message": "m"},
                                lambda k, m: peernet.ControlError(m, k))) is peernet.ControlError


def test_the_protocol_guide_lists_every_op_and_the_limits():
    """guides/protocol.md section 11 is the control protocol's spec: it cannot drift."""
    import re
    from pathlib import Path

    from peernet._io import control as endpoint

    guide = (Path(__file__).resolve().parents[2] / "guides" / "protocol.md").read_text()
    text = guide[guide.index("## 11. The control protocol"):].split("\n## ")[0]
    assert re.findall(r"^\| `(\w+)` \|", text, re.MULTILINE) == list(OPS)
    assert f"{MAX_REQUEST_BYTES:,} bytes" in text
    assert f"{proto.MAX_RESPONSE_BYTES // 2**20} MiB" in text
    assert f"deeper\nthan {proto.MAX_DEPTH}" in text
    assert f"within {endpoint.IDLE_TIMEOUT_S:g} s" in text
    assert f"Up to {endpoint.MAX_CONNECTIONS} connections" in text
    assert f"{endpoint.MAX_WATCHERS} may watch" in text
    assert f"{endpoint.WATCH_QUEUE_BYTES // 2**20} MiB" in text
    assert f"{int(proto._MAX_SECONDS):,}" in text
