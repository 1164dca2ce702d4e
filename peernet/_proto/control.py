"""The control protocol: how a process of the node's own user talks to a running node.

Pure code (no socket, thread, clock or file): the request and response codec, the
table of operations and their arguments, the line splitter with its size bound, how
values and errors cross. The endpoint (``_io/control.py``) moves the bytes; the client
(``peernet.control``) and the node's side (``peernet._control``) use this module to
agree on what they mean. guides/protocol.md section 11 describes every field.

One request per line, one response per request, in order; UTF-8 JSON objects::

    -> {"v": 1, "op": "pair", "args": {"peer": "pn1...", "label": "pi"}}
    <- {"ok": true, "result": {"id": "pn1...", "label": "pi", "was_paired": false}}
    <- {"ok": false, "error": {"type": "NotPaired", "message": "..."}}

After a ``watch`` request the connection carries only events::

    <- {"event": "chat", "data": {"peer": "pn1...", "label": "pi", "text": "hi"}}

Values that JSON lacks travel as one-key objects whose key starts with ``$``
(:func:`to_wire`, :func:`from_wire`): ``{"$base64": "..."}`` is bytes, ``{"$float":
"nan"}`` a non-finite float, and ``{"$dict": {...}}`` a dict that itself has one key
starting with ``$``. Every other object is a plain dict, so nothing is lost.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .. import errors
from . import strict_json

__all__ = [
    "VERSION",
    "MAX_REQUEST_BYTES",
    "MAX_RESPONSE_BYTES",
    "OPS",
    "TOPICS",
    "Request",
    "Response",
    "Event",
    "Refusal",
    "LineTooLong",
    "LineReader",
    "encode_request",
    "decode_request",
    "encode_result",
    "encode_error",
    "encode_event",
    "decode_response",
    "to_wire",
    "from_wire",
    "error_to_wire",
    "error_from_wire",
]

VERSION = 1
#: One request line, its newline included. Larger ones are refused (and the
#: connection closed: the rest of the line cannot be told from the next request).
MAX_REQUEST_BYTES = 64 * 1024
#: What a client reads back in one line: a call's result may be up to the node's
#: ``max_message_size`` of CBOR, a few times that as JSON.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: Nesting of a value in a request beyond this is refused (JSON itself allows more).
MAX_DEPTH = 32
#: Longest text a peer argument (an id or a label) may be.
_MAX_PEER_TEXT = 256
#: Longest wait a request may ask for, seconds.
_MAX_SECONDS = 24 * 3600.0

#: What ``watch`` can follow: incoming chat lines (served only by a node whose chat
#: handler relays them, as ``peernet listen`` does) and peer status changes.
TOPICS = ("chat", "peers")

# Kinds of argument, checked by decode_request before an op runs.
_PEER, _TEXT, _LABEL, _PORT, _SECONDS, _SECONDS_OPT, _VALUE, _TOPICS, _WAIT = (
    "peer", "text", "label", "port", "seconds", "seconds?", "value", "topics", "wait")
_NAMEPLATE, _BOOL = "nameplate", "bool"

#: Every op: its arguments, each (kind, required). guides/protocol.md 11.3 lists
#: what each one returns.
OPS: dict[str, dict[str, tuple[str, bool]]] = {
    "hello": {},
    "status": {},
    "peers": {},
    "nearby": {"wait": (_WAIT, False)},
    "pair": {"peer": (_PEER, True), "label": (_LABEL, False)},
    "unpair": {"peer": (_PEER, True)},
    "label": {"peer": (_PEER, True), "label": (_LABEL, True)},
    "connect": {"peer": (_PEER, True), "host": (_TEXT, True), "port": (_PORT, True)},
    "wait_for_peer": {"peer": (_PEER, True), "timeout": (_SECONDS, True)},
    "call": {"peer": (_PEER, True), "name": (_TEXT, True), "args": (_VALUE, False),
             "timeout": (_SECONDS_OPT, False)},
    "send": {"peer": (_PEER, True), "name": (_TEXT, True), "args": (_VALUE, False)},
    "watch": {"topics": (_TOPICS, True)},
    # Invites (issue 21): opened in the running node, which announces and answers them.
    "invite": {"label": (_LABEL, False), "ttl_s": (_SECONDS, False), "short": (_BOOL, False)},
    "invite_wait": {"nameplate": (_NAMEPLATE, True), "timeout": (_SECONDS, True)},
    "invite_cancel": {"nameplate": (_NAMEPLATE, True)},
    "join": {"code": (_TEXT, True), "label": (_LABEL, False), "timeout": (_SECONDS, False)},
}


class Refusal(Exception):
    """A request the endpoint refuses before running it: ``kind`` is the error type on
    the wire (``BadRequest``, ``UnsupportedVersion``, ``RequestTooLarge``, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class LineTooLong(Refusal):
    """More bytes than the line limit arrived without a newline."""

    def __init__(self, limit: int) -> None:
        super().__init__("RequestTooLarge", f"a request line may hold at most {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Request:
    op: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Response:
    """A decoded response: ``ok`` with ``result``, or not with ``error`` (the wire's
    error object: ``type``, ``message`` and, for some types, more fields)."""

    ok: bool
    result: Any = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """Something a ``watch`` follows happened: ``topic`` is one of :data:`TOPICS`."""

    topic: str
    data: dict[str, Any]


# --- lines --------------------------------------------------------------------------


class LineReader:
    """Splits a byte stream into lines of at most ``limit`` bytes (newline included),
    holding at most that much while a line is incomplete."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()

    @property
    def pending(self) -> bool:
        """A line has started and not ended."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The complete lines ``data`` ends (without their newlines). Raises
        :class:`LineTooLong` once a line exceeds the limit; the reader is then done."""
        lines = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if len(self._buffer) + end - start + 1 > self._limit:
                raise LineTooLong(self._limit)
            lines.append(bytes(self._buffer) + data[start:end])
            self._buffer.clear()
            start = end + 1
        if len(self._buffer) + len(data) - start >= self._limit:
            raise LineTooLong(self._limit)
        self._buffer += data[start:]
        return lines


# --- values -------------------------------------------------------------------------


def to_wire(value: Any, _depth: int = 0) -> Any:
    """A CBOR-able value as JSON-able data (see the module docstring). Raises
    :class:`~peernet.EncodeError` for what could not travel to a peer either."""
    if _depth > MAX_DEPTH:
        raise errors.EncodeError(f"value nested more than {MAX_DEPTH} levels deep")
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        if math.isfinite(value):
            return value
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [to_wire(item, _depth + 1) for item in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise errors.EncodeError(
                    f"dict keys must be str, got {type(key).__name__} ({key!r:.40})")
            out[key] = to_wire(item, _depth + 1)
        if len(out) == 1 and next(iter(out)).startswith("$"):
            return {"$dict": out}
        return out
    if isinstance(value, (bool, int, float, str)):  # subclasses (IntEnum, ...) as the base
        return to_wire(_base(value), _depth)
    raise errors.EncodeError(f"cannot send a {type(value).__name__}: only None, bool, int, "
                             "float, str, bytes, list/tuple and dict with str keys travel")


def _base(value: Any) -> Any:
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    raise AssertionError(value)  # pragma: no cover


_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def from_wire(data: Any, _depth: int = 0) -> Any:
    """The value :func:`to_wire` made. Raises :class:`Refusal` (``BadRequest``) for an
    unknown ``$`` tag, a malformed tagged value or too deep a nesting."""
    if _depth > MAX_DEPTH:
        raise Refusal("BadRequest", f"value nested more than {MAX_DEPTH} levels deep")
    if isinstance(data, list):
        return [from_wire(item, _depth + 1) for item in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1:
        key, inner = next(iter(data.items()))
        if key.startswith("$"):
            return _tagged(key, inner, _depth)
    return {key: from_wire(item, _depth + 1) for key, item in data.items()}


def _tagged(tag: str, inner: Any, depth: int) -> Any:
    if tag == "$base64" and isinstance(inner, str):
        try:
            return base64.b64decode(inner, validate=True)
        except (binascii.Error, ValueError):
            raise Refusal("BadRequest", "bad $base64 value") from None
    if tag == "$float" and inner in _FLOATS:
        return _FLOATS[inner]
    if tag == "$dict" and isinstance(inner, dict):
        return {key: from_wire(item, depth + 1) for key, item in inner.items()}
    raise Refusal("BadRequest", f"unknown or malformed tagged value {tag!r:.40}")


# --- JSON ---------------------------------------------------------------------------


def _parse(line: bytes, what: str) -> Any:
    try:
        return strict_json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise Refusal("BadRequest", f"{what} is not UTF-8") from None
    except RecursionError:
        raise Refusal("BadRequest", f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, duplicate keys, huge ints
        raise Refusal("BadRequest", f"{what} is not a JSON object: {str(exc):.120}") from None


def _line(document: dict[str, Any]) -> bytes:
    # ASCII: any text (a lone surrogate in an error message too) survives as an escape.
    return json.dumps(document, ensure_ascii=True, allow_nan=False,
                      separators=(",", ":")).encode("ascii") + b"\n"


# --- requests -----------------------------------------------------------------------


def encode_request(op: str, args: dict[str, Any]) -> bytes:
    """One request line. ``args`` hold plain values; a call's ``args`` value is
    encoded with :func:`to_wire` here (EncodeError for what cannot travel)."""
    wire = dict(args)
    if "args" in wire:
        wire["args"] = to_wire(wire["args"])
    return _line({"v": VERSION, "op": op, "args": wire})


def decode_request(line: bytes) -> Request:
    """The request one line holds, its arguments checked against :data:`OPS`.

    Raises :class:`Refusal`: ``BadRequest`` (not JSON, not an object, unknown fields or
    op, missing or mistyped arguments), ``UnsupportedVersion``."""
    document = _parse(line, "the request")
    if not isinstance(document, dict):
        raise Refusal("BadRequest", "a request is a JSON object: "
                      '{"v": 1, "op": "...", "args": {...}}')
    unknown = sorted(set(document) - {"v", "op", "args"})
    if unknown:
        raise Refusal("BadRequest", f"unknown request field(s) {_names(unknown)}")
    version = document.get("v")
    if type(version) is not int or version != VERSION:
        raise Refusal("UnsupportedVersion", f"control protocol version {version!r:.20} is not "
                      f"spoken here: this node speaks version {VERSION}")
    op = document.get("op")
    if type(op) is not str or op not in OPS:
        raise Refusal("BadRequest", f"unknown op {op!r:.40}; known: {_names(OPS)}")
    raw_args = document.get("args", {})
    if not isinstance(raw_args, dict):
        raise Refusal("BadRequest", f"{op}: args must be an object")
    spec = OPS[op]
    extra = sorted(set(raw_args) - set(spec))
    if extra:
        raise Refusal("BadRequest", f"{op}: unknown argument(s) {_names(extra)}; it takes "
                      f"{_names(spec) or 'none'}")
    args: dict[str, Any] = {}
    for name, (kind, required) in spec.items():
        if name not in raw_args:
            if required:
                raise Refusal("BadRequest", f"{op}: missing argument {name!r}")
            continue
        args[name] = _check(op, name, kind, raw_args[name])
    return Request(op, args)


def _names(items: Iterable[str]) -> str:
    return ", ".join(repr(item)[:42] for item in items)


def _seconds(value: Any) -> float | None:
    if type(value) in (int, float) and math.isfinite(value) and 0 < value <= _MAX_SECONDS:
        return float(value)
    return None


def _check(op: str, name: str, kind: str, value: Any) -> Any:
    """``value`` as argument ``name`` of ``op`` wants it, or Refusal."""
    def bad(wanted: str) -> Refusal:
        shown = json.dumps(value)[:40] if not isinstance(value, (dict, list)) else type(value).__name__
        return Refusal("BadRequest", f"{op}: {name} must be {wanted}, got {shown}")

    if kind in (_PEER, _TEXT):
        if type(value) is not str or not value or len(value) > _MAX_PEER_TEXT:
            raise bad(f"a non-empty string of at most {_MAX_PEER_TEXT} characters")
        return value
    if kind == _LABEL:
        if value is not None and (type(value) is not str or len(value) > _MAX_PEER_TEXT):
            raise bad("a string or null")
        return value
    if kind in (_PORT, _NAMEPLATE):
        if type(value) is not int or not 0 < value <= 0xFFFF:
            raise bad("a port number 1..65535" if kind == _PORT else "a number 1..65535")
        return value
    if kind in (_SECONDS, _SECONDS_OPT):
        if value is None and kind == _SECONDS_OPT:
            return None
        seconds = _seconds(value)
        if seconds is None:
            raise bad(f"a number of seconds, more than 0 and at most {_MAX_SECONDS:g}")
        return seconds
    if kind == _WAIT:
        if type(value) not in (int, float) or not 0 <= value <= 30:
            raise bad("a number of seconds from 0 to 30")
        return float(value)
    if kind == _TOPICS:
        if (type(value) is not list or not value
                or any(type(t) is not str or t not in TOPICS for t in value)):
            raise bad(f"a non-empty list of {_names(TOPICS)}")
        return list(dict.fromkeys(value))
    if kind == _BOOL:
        if type(value) is not bool:
            raise bad("true or false")
        return value
    if kind == _VALUE:
        return from_wire(value)
    raise AssertionError(kind)  # pragma: no cover


# --- responses and events -----------------------------------------------------------


def encode_result(value: Any) -> bytes:
    """A success line; ``value`` is plain JSON data (results of ``call`` are passed
    through :func:`to_wire` by the op)."""
    return _line({"ok": True, "result": value})


def encode_error(error: dict[str, Any]) -> bytes:
    """A failure line; ``error`` from :func:`error_to_wire` or ``{"type", "message"}``."""
    return _line({"ok": False, "error": error})


def encode_event(topic: str, data: dict[str, Any]) -> bytes:
    return _line({"event": topic, "data": data})


def decode_response(line: bytes) -> Response | Event:
    """A response or event line from the endpoint. Raises :class:`Refusal`
    (``BadResponse``) for anything else."""
    try:
        document = _parse(line, "the response")
    except Refusal as exc:
        raise Refusal("BadResponse", str(exc)) from None
    if isinstance(document, dict):
        if document.keys() == {"ok", "result"} and document["ok"] is True:
            return Response(True, result=document["result"])
        error = document.get("error")
        if (document.keys() == {"ok", "error"} and document["ok"] is False
                and isinstance(error, dict) and type(error.get("type")) is str
                and type(error.get("message")) is str):
            return Response(False, error=error)
        topic, data = document.get("event"), document.get("data")
        if document.keys() == {"event", "data"} and topic in TOPICS and isinstance(data, dict):
            return Event(topic, data)
    raise Refusal("BadResponse", "the endpoint answered something that is not a control "
                  "protocol response")


# --- errors -------------------------------------------------------------------------

#: Builtin exceptions an op may raise as they are (the same ones the local API raises).
_BUILTINS: dict[str, type[Exception]] = {
    "ValueError": ValueError, "TypeError": TypeError, "LookupError": LookupError,
    "OSError": OSError, "PermissionError": PermissionError, "TimeoutError": TimeoutError,
}


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """What crosses for an exception an op raised: its type name and message, plus what
    the local API's exception carries (a remote error's type name, suggestions)."""
    if isinstance(exc, Refusal):
        return {"type": exc.kind, "message": str(exc)}
    name = type(exc).__name__
    if not (isinstance(exc, errors.PeerNetError) and name in errors.__all__) and (
            name not in _BUILTINS):
        # Not one of ours: the type only (the node's log has the rest).
        return {"type": "InternalError", "message": f"the node failed: {name}"}
    message = str(exc.strerror or exc) if isinstance(exc, OSError) and not isinstance(
        exc, errors.PeerNetError) else str(exc)
    wire: dict[str, Any] = {"type": name, "message": message}
    if isinstance(exc, errors.RemoteError):
        wire["remote_type"] = exc.type_name
        wire["remote_message"] = exc.message
    elif isinstance(exc, errors.NoSuchHandler):
        wire["suggestions"] = list(exc.suggestions)
    elif isinstance(exc, errors.ConnectionLost):
        wire["protocol_error"] = bool(exc.protocol_error)
    elif isinstance(exc, errors.InviteRejected):
        wire["reason"] = exc.reason
    return wire


def error_from_wire(error: dict[str, Any],
                    fallback: Callable[[str, str], Exception]) -> Exception:
    """The exception :func:`error_to_wire` described: the same peernet class (or
    builtin) the local API raises; ``fallback(type, message)`` for the endpoint's own
    types (BadRequest, ...) and anything unknown."""
    kind, message = str(error.get("type")), str(error.get("message"))
    if kind in _BUILTINS:
        return _BUILTINS[kind](message)
    cls = getattr(errors, kind, None) if kind in errors.__all__ else None
    if not (isinstance(cls, type) and issubclass(cls, errors.PeerNetError)):
        return fallback(kind, message)
    if cls is errors.RemoteError:
        remote_type = error.get("remote_type")
        remote_message = error.get("remote_message")
        return errors.RemoteError(
            remote_type if type(remote_type) is str else "?",
            remote_message if type(remote_message) is str else None)
    exc: Exception
    try:
        exc = cls(message)
    except TypeError:  # pragma: no cover - every listed class takes a message
        return fallback(kind, message)
    if isinstance(exc, errors.NoSuchHandler):
        suggestions = error.get("suggestions")
        if isinstance(suggestions, list) and all(type(s) is str for s in suggestions):
            exc.suggestions = tuple(suggestions)
    elif isinstance(exc, errors.ConnectionLost):
        exc.protocol_error = error.get("protocol_error") is True
    elif isinstance(exc, errors.InviteRejected) and type(error.get("reason")) is str:
        exc.reason = error["reason"]
    return exc
