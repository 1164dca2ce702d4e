"""The seven wire messages and their strict codec.

Every application message is one CBOR array (in the profile of :mod:`peernet._proto.cbor`)
whose first element is the kind number:

====  ==========  ========================================
kind  record      CBOR array
====  ==========  ========================================
0     `Call`      ``[0, request_id, name, args]``
1     `Reply`     ``[1, request_id, result]``
2     `Error`     ``[2, request_id, code, detail]``
3     `Send`      ``[3, name, args]``
4     `Ping`      ``[4, nonce]``
5     `Pong`      ``[5, nonce]``
6     `Bye`       ``[6, reason]``
====  ==========  ========================================

Field rules, checked exactly (``type(x) is int``, so ``True`` is not a request id):

* ``request_id``: an ``int`` with ``1 <= request_id < 2**64``.
* ``name``: a ``str`` matching :data:`HANDLER_NAME_RE` (so never ``_private``).
* ``code``: one of :data:`ERROR_CODES`; unknown codes are refused, not guessed at.
* ``detail``: ``None`` or an exception's qualified type name (ASCII identifiers joined
  by dots, at most 200 characters, e.g. ``ValueError`` or ``myapp.errors.Busy``); never
  a message or a traceback.
* ``nonce``: exactly 8 ``bytes``. ``reason``: printable ASCII (``0x20``-``0x7e``), at
  most 200 characters.

* ``args`` and ``result``: any CBOR data; arity is exact.

Both texts reach people (exception messages, terminals, logs), so they are held to
these shapes on receipt: nothing a peer sends there can carry an escape sequence or a
line break.

Depth and item limits cover the whole message: the envelope array is nesting level 1,
so ``args``/``result`` get ``max_depth - 1`` levels. :func:`encode_message` and
:func:`decode_message` apply the same accounting, so with the same limits anything the
first produces the second accepts.

:func:`decode_message` with ``defer_over=n`` checks a call or send longer than ``n``
bytes completely but leaves its ``args`` unbuilt: they come back as :class:`Deferred`,
which carries an upper bound of what building them will hold, and are built later by
decoding the same bytes again without ``defer_over`` (where the work runs).

Records are plain frozen dataclasses and do not validate themselves: received ones were
checked by :func:`decode_message`, and locally built ones are checked by
:func:`encode_message` (``ValueError`` for a bad field, ``EncodeError`` for non-CBOR
``args``/``result``). :func:`decode_message` raises only
:class:`~peernet.errors.ProtocolError`.

When the compiled accelerator is in use (:data:`peernet._proto.cbor.BACKEND`),
:func:`decode_message` and :func:`encode_for_link` run in C for the common case: bytes
to a checked record in one pass, and back. The code in this module is the reference
they are tested against, and what runs for everything the C code hands back.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from peernet._proto import cbor
from peernet.errors import ProtocolError

__all__ = [
    "BAD_REQUEST", "BUSY", "BYE_NODE_CLOSING", "BYE_REASONS", "BYE_SUPERSEDED",
    "BYE_UNPAIRED", "Bulk", "Bye", "Call", "Deferred", "ERROR_CODES", "Error", "FORBIDDEN",
    "HANDLER_ERROR", "HANDLER_NAME_RE", "MAX_TEXT", "Message", "NONCE_SIZE",
    "NO_SUCH_HANDLER", "Ping", "Pong", "Reply", "Send", "decode_message",
    "encode_for_link", "encode_message", "exception_detail", "is_valid_detail",
    "is_valid_handler_name", "is_valid_reason",
]

HANDLER_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")
"""A handler name, matched with ``fullmatch``: a letter, then up to 63 of
letters, digits and ``_.:-``. A leading ``_`` is therefore refused."""

NO_SUCH_HANDLER = "no_such_handler"
"""Error code: the callee exposes no handler by that name."""
FORBIDDEN = "forbidden"
"""Error code: the handler's ``authorize`` refused the caller."""
HANDLER_ERROR = "handler_error"
"""Error code: the handler raised; ``detail`` is the exception's type name."""
BUSY = "busy"
"""Error code: the callee has too many calls from this peer in progress."""
BAD_REQUEST = "bad_request"
"""Error code, reserved: peernet never sends it (a malformed call ends the link; args a
handler cannot take make it raise, which is ``handler_error``). A receiver accepts it
like any other code and fails the call."""
ERROR_CODES = frozenset({NO_SUCH_HANDLER, FORBIDDEN, HANDLER_ERROR, BUSY, BAD_REQUEST})
"""Every error code that may appear in an :class:`Error` message."""

BYE_SUPERSEDED = "superseded"
"""Bye reason: this link lost to another link to the same peer; it closes once both
sides have said it (the two-sided retirement of ``guides/protocol.md``)."""
BYE_NODE_CLOSING = "node closing"
"""Bye reason: the sender is shutting down (``Node.close``)."""
BYE_UNPAIRED = "unpaired"
"""Bye reason: the sender stopped trusting the receiver (``Node.unpair``)."""
BYE_REASONS = (BYE_SUPERSEDED, BYE_NODE_CLOSING, BYE_UNPAIRED)
"""Every bye reason peernet sends. A receiver accepts any reason text: only
``superseded`` has a meaning of its own, every other one ends the link at once."""

MAX_TEXT = 200
"""Longest ``Error.detail`` / ``Bye.reason``, in characters."""
NONCE_SIZE = 8
"""Length of a ping/pong nonce in bytes."""

_RID_END = 1 << 64
_name_ok = HANDLER_NAME_RE.fullmatch
_detail_ok = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*").fullmatch
_reason_ok = re.compile(r"[\x20-\x7e]*").fullmatch


def is_valid_detail(detail: object) -> bool:
    """True for ``None`` or a qualified exception type name (see the module doc)."""
    return detail is None or (type(detail) is str and len(detail) <= MAX_TEXT
                              and _detail_ok(detail) is not None)


def exception_detail(exc: BaseException) -> str:
    """The ``detail`` that reports ``exc``: its type name, or ``Exception`` when the name
    is not one a peer would accept (a non-ASCII class name, say)."""
    name = type(exc).__name__
    return name if is_valid_detail(name) else "Exception"


def is_valid_reason(reason: object) -> bool:
    """True for a bye reason: printable ASCII, at most :data:`MAX_TEXT` characters."""
    return type(reason) is str and len(reason) <= MAX_TEXT and _reason_ok(reason) is not None


def is_valid_handler_name(name: object) -> bool:
    """True if ``name`` is exactly a ``str`` and matches :data:`HANDLER_NAME_RE`."""
    return type(name) is str and _name_ok(name) is not None


@dataclass(frozen=True, slots=True)
class Call:
    """Kind 0: call handler ``name`` with ``args``; a :class:`Reply` or :class:`Error`
    with the same ``request_id`` answers it."""

    request_id: int
    name: str
    args: object
    KIND: ClassVar[int] = 0


@dataclass(frozen=True, slots=True)
class Reply:
    """Kind 1: the handler's return value for the call ``request_id``."""

    request_id: int
    result: object
    KIND: ClassVar[int] = 1


@dataclass(frozen=True, slots=True)
class Error:
    """Kind 2: the call ``request_id`` failed with ``code`` (one of :data:`ERROR_CODES`)."""

    request_id: int
    code: str
    detail: str | None = None
    KIND: ClassVar[int] = 2


@dataclass(frozen=True, slots=True)
class Send:
    """Kind 3: fire-and-forget delivery of ``args`` to handler ``name``; never answered."""

    name: str
    args: object
    KIND: ClassVar[int] = 3


@dataclass(frozen=True, slots=True)
class Ping:
    """Kind 4: liveness probe; the peer answers with a :class:`Pong` echoing ``nonce``."""

    nonce: bytes
    KIND: ClassVar[int] = 4


@dataclass(frozen=True, slots=True)
class Pong:
    """Kind 5: the answer to the :class:`Ping` carrying the same ``nonce``."""

    nonce: bytes
    KIND: ClassVar[int] = 5


@dataclass(frozen=True, slots=True)
class Bye:
    """Kind 6: the sender is closing the link, for a short human-readable ``reason``."""

    reason: str
    KIND: ClassVar[int] = 6


Message: TypeAlias = Call | Reply | Error | Send | Ping | Pong | Bye
"""Any of the seven wire messages."""


def _accelerator_spec() -> tuple:
    """What the compiled codec needs to check and build records, passed on each call (it
    keeps nothing): per kind, the record class and the descriptors of its slots in wire
    order; then :data:`ERROR_CODES`."""
    records = [(cls, *(cls.__dict__[f.name] for f in dataclasses.fields(cls)))
               for cls in (Call, Reply, Error, Send, Ping, Pong, Bye)]
    assert [r[0].KIND for r in records] == list(range(7))
    return (*records, ERROR_CODES)


_SPEC = _accelerator_spec()


class Deferred:
    """The ``args`` of a received call or send that were checked but not built (see
    ``defer_over`` in :func:`decode_message`). ``held_bound``: at most what building
    them will hold, in bytes (:func:`peernet._proto.cbor.check`)."""

    __slots__ = ("held_bound",)

    def __init__(self, held_bound: int) -> None:
        self.held_bound = held_bound

    def __repr__(self) -> str:
        return f"Deferred(held_bound={self.held_bound})"


# --------------------------------------------------------------------------- encoding


def _check_rid(rid: object) -> None:
    if type(rid) is not int or not 0 < rid < _RID_END:
        raise ValueError("request_id must be an int with 1 <= request_id < 2**64")


def _check_name(name: object) -> None:
    if not is_valid_handler_name(name):
        raise ValueError("handler name must be a str matching "
                         "[A-Za-z][A-Za-z0-9_.:-]{0,63}")


_BIG_BYTES = 4096  # from here on a bytes body skips cbor2 (see _with_body)


def _bytes_head(n: int) -> bytes:
    """The shortest CBOR head of a byte string of ``n`` bytes (major type 2)."""
    if n < 24:
        return bytes((0x40 | n,))
    if n < 0x100:
        return bytes((0x58, n))
    if n < 0x10000:
        return b"\x59" + n.to_bytes(2, "big")
    if n < 0x1_0000_0000:
        return b"\x5a" + n.to_bytes(4, "big")
    return b"\x5b" + n.to_bytes(8, "big")


class Bulk:
    """An encoded message whose large ``bytes`` body is kept apart from the bytes
    before it: ``bytes(bulk)`` is the encoding, ``len(bulk)`` its size. The link seals
    the two parts straight into frames, so a bulk message is never copied into one
    contiguous buffer (fresh large allocations are what make bulk transfer slow)."""

    __slots__ = ("head", "body")

    def __init__(self, head: bytes, body: bytes) -> None:
        self.head, self.body = head, body

    def __len__(self) -> int:
        return len(self.head) + len(self.body)

    def __bytes__(self) -> bytes:
        return self.head + self.body


def _with_body(fields: list, body: object, name: str, max_depth: int,
               max_items: int) -> bytes | Bulk:
    """Encode ``fields + [body]``; ``body`` gets what the envelope leaves of the limits."""
    if type(body) is bytes and len(body) >= _BIG_BYTES and max_items >= len(fields) + 2:
        # cbor2.dumps copies big byte strings slowly (1.4 ms per MiB); the envelope of a
        # bulk payload is a fixed head, so write it here: array head + fields + bytes.
        head = cbor.dumps_prepared(fields, name=name)
        assert head[0] == 0x80 | len(fields)  # a short array of small fields
        return Bulk(b"".join((bytes((head[0] + 1,)), head[1:], _bytes_head(len(body)))),
                    body)
    # The envelope is one level and 1 + len(fields) items; the body counts its own root.
    depth = max_depth - 1
    budget = max_items - 1 - len(fields)
    prepared = cbor.prepare(body, max_depth=depth, max_items=budget, name=name)
    fields.append(prepared)
    return cbor.dumps_prepared(fields, name=name, max_depth=depth, max_items=budget,
                               explain=prepared)


def encode_message(msg: Message, *, max_depth: int = cbor.DEFAULT_MAX_DEPTH,
                   max_items: int = cbor.DEFAULT_MAX_ITEMS) -> bytes:
    """Encode one message record as CBOR bytes.

    Raises ``ValueError`` for a field that breaks the rules in the module doc, and
    :class:`~peernet.errors.EncodeError` (a ``TypeError``) when ``args``/``result`` is
    not CBOR data within the limits (its message names the path, e.g. ``args["x"][3]``).
    """
    encoded = encode_for_link(msg, max_depth=max_depth, max_items=max_items)
    return encoded if type(encoded) is bytes else bytes(encoded)


def encode_for_link(msg: Message, *, max_depth: int = cbor.DEFAULT_MAX_DEPTH,
                    max_items: int = cbor.DEFAULT_MAX_ITEMS) -> bytes | Bulk:
    """:func:`encode_message`, except that a message with a large ``bytes`` body comes
    back as a :class:`Bulk` (same encoding, not joined) for the link to seal."""
    accel = cbor._accel
    if accel is not None:  # the common case in one step; None: the checks below decide
        try:
            data: bytes | None = accel.encode_message(msg, max_depth, max_items, _SPEC)
        except Exception:  # MemoryError: let the reference path decide what it is
            data = None
        if data is not None:
            return data
    if max_depth < 1:
        raise ValueError("max_depth must be at least 1 (the envelope is one level)")
    if isinstance(msg, Call):
        _check_rid(msg.request_id)
        _check_name(msg.name)
        return _with_body([0, msg.request_id, msg.name], msg.args, "args",
                          max_depth, max_items)
    if isinstance(msg, Reply):
        _check_rid(msg.request_id)
        return _with_body([1, msg.request_id], msg.result, "result", max_depth, max_items)
    if isinstance(msg, Send):
        _check_name(msg.name)
        return _with_body([3, msg.name], msg.args, "args", max_depth, max_items)
    if isinstance(msg, Error):
        _check_rid(msg.request_id)
        if type(msg.code) is not str or msg.code not in ERROR_CODES:
            raise ValueError(f"error code must be one of {sorted(ERROR_CODES)}")
        if not is_valid_detail(msg.detail):
            raise ValueError("error detail must be None or an exception type name")
        fields: list = [2, msg.request_id, msg.code, msg.detail]
    elif isinstance(msg, (Ping, Pong)):
        if type(msg.nonce) is not bytes or len(msg.nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be exactly {NONCE_SIZE} bytes")
        fields = [msg.KIND, msg.nonce]
    elif isinstance(msg, Bye):
        if not is_valid_reason(msg.reason):
            raise ValueError(f"bye reason must be printable ASCII, at most {MAX_TEXT} "
                             "characters")
        fields = [6, msg.reason]
    else:
        raise TypeError(f"not a peernet message: {type(msg).__name__}")
    if max_items < len(fields) + 1:
        raise ValueError(f"max_items={max_items} is too small for any message")
    return cbor.dumps_prepared(fields, name="message")


# --------------------------------------------------------------------------- decoding


def _bad(why: str) -> ProtocolError:
    return ProtocolError(f"bad message: {why}")


def decode_message(buf: bytes, *, max_depth: int = cbor.DEFAULT_MAX_DEPTH,
                   max_items: int = cbor.DEFAULT_MAX_ITEMS,
                   defer_over: int | None = None) -> Message:
    """Decode and check one untrusted message.

    Raises only :class:`~peernet.errors.ProtocolError` (malformed CBOR, or a shape that
    breaks the rules in the module doc); the message never repeats the data. With
    ``defer_over``, a call or send longer than that many bytes is checked just as
    completely, but its ``args`` come back :class:`Deferred` (not built).
    """
    if defer_over is not None and len(buf) > defer_over and type(buf) is bytes:
        deferred = _decode_deferred(buf, max_depth, max_items)
        if deferred is not None:
            return deferred
    accel = cbor._accel
    if accel is not None:  # bytes to a checked record in one pass, the same outcome
        try:
            return accel.decode_message(buf, max_depth, max_items, _SPEC)
        except accel.Unsupported:
            pass  # not exactly bytes, or a limit beyond a C size: the reference decides
    return _decode_message_python(buf, max_depth, max_items)


def _decode_message_python(buf: bytes, max_depth: int, max_items: int) -> Message:
    """:func:`decode_message` in pure Python: the reference."""
    msg = cbor._decode_python(buf, max_depth, max_items)
    if type(msg) is not list or not msg:
        raise _bad("not a non-empty array")
    kind = msg[0]
    n = len(msg)
    if type(kind) is not int:
        raise _bad("kind is not an int")
    if kind == 0:
        if n != 4:
            raise _bad("call needs 4 elements")
        _, rid, name, args = msg
        if type(rid) is not int or not 0 < rid < _RID_END:
            raise _bad("request id out of range")
        if not is_valid_handler_name(name):
            raise _bad("invalid handler name")
        return Call(rid, name, args)
    if kind == 1:
        if n != 3:
            raise _bad("reply needs 3 elements")
        _, rid, result = msg
        if type(rid) is not int or not 0 < rid < _RID_END:
            raise _bad("request id out of range")
        return Reply(rid, result)
    if kind == 2:
        if n != 4:
            raise _bad("error needs 4 elements")
        _, rid, code, detail = msg
        if type(rid) is not int or not 0 < rid < _RID_END:
            raise _bad("request id out of range")
        if type(code) is not str or code not in ERROR_CODES:
            raise _bad("unknown error code")
        if not is_valid_detail(detail):
            raise _bad("invalid error detail")
        return Error(rid, code, detail)
    if kind == 3:
        if n != 3:
            raise _bad("send needs 3 elements")
        _, name, args = msg
        if not is_valid_handler_name(name):
            raise _bad("invalid handler name")
        return Send(name, args)
    if kind == 4 or kind == 5:
        if n != 2:
            raise _bad("ping/pong needs 2 elements")
        nonce = msg[1]
        if type(nonce) is not bytes or len(nonce) != NONCE_SIZE:
            raise _bad(f"nonce is not {NONCE_SIZE} bytes")
        return Ping(nonce) if kind == 4 else Pong(nonce)
    if kind == 6:
        if n != 2:
            raise _bad("bye needs 2 elements")
        reason = msg[1]
        if not is_valid_reason(reason):
            raise _bad("invalid bye reason")
        return Bye(reason)
    raise _bad("unknown kind")


def _decode_deferred(buf: bytes, max_depth: int, max_items: int) -> Call | Send | None:
    """A well-formed call or send with its args checked, not built; None for anything
    else (the full decode then says what is wrong, exactly as without deferral)."""
    head = buf[:2]
    if head != b"\x84\x00" and head != b"\x83\x03":  # [0, rid, name, args] / [3, name, args]
        return None
    held = cbor.check(buf, max_depth=max_depth, max_items=max_items)  # ProtocolError
    i = 2
    rid = 0
    if head[1] == 0:
        rid, i = _uint(buf, i)
        if not 0 < rid < _RID_END:
            return None
    if buf[i] >> 5 != 3:
        return None
    length, start = _uint(buf, i, major=3)
    name = buf[start:start + length].decode()  # checked as UTF-8 by check()
    if not is_valid_handler_name(name):
        return None
    return Call(rid, name, Deferred(held)) if head[1] == 0 else Send(name, Deferred(held))


def _uint(buf: bytes, i: int, major: int = 0) -> tuple[int, int]:
    """The argument of the (checked, shortest-form) head at ``i`` and the offset after
    it; (-1, i) if that head is not of ``major``."""
    ib = buf[i]
    if ib >> 5 != major:
        return -1, i
    ai = ib & 31
    if ai < 24:
        return ai, i + 1
    width = 1 << (ai - 24)  # 24..27: 1, 2, 4 or 8 bytes follow
    return int.from_bytes(buf[i + 1:i + 1 + width], "big"), i + 1 + width
