"""The strict CBOR profile every peernet message is written in.

Theory of operation
-------------------

Every byte a peer sends us ends up here, after the frame is decrypted and before anything
else looks at it. A general-purpose CBOR decoder is the wrong tool for that: ``cbor2``
by default turns attacker bytes into datetimes, Decimals, compiled regular expressions,
parsed e-mail messages, sets, cyclic lists and shared-reference DAGs that hang ``repr()``
(``reference/security.md`` section 1). Rather than chase each of those, we accept a small
*profile* of CBOR (RFC 8949) and refuse everything else before cbor2 sees the bytes:

* unsigned and negative integers (at most 64 bits: no bignum tags),
* byte strings and UTF-8 text strings,
* arrays, and maps whose keys are text strings with no duplicates,
* ``false``, ``true``, ``null``,
* floats (half, single or double precision; a wider float than needed is allowed).

Everything else is refused: every tag (major type 6), indefinite lengths, the reserved
additional-information values 28-30, ``undefined`` and other simple values, stray
"break" bytes, integer or length heads that are not in their shortest form, lengths and
counts that claim more than the input holds, nesting deeper than ``max_depth``, more than
``max_items`` data items, trailing bytes after the one top-level item, and empty input.
Shortest-form heads make the encoding of a given value (floats aside) unique, so two
parsers cannot disagree about what a message says.

Decoding is therefore two steps. :func:`decode` first runs an iterative pre-validator over
the bytes (one pass, O(n), no recursion, string bodies skipped in one step), then hands
the same complete ``bytes`` object to a fresh ``cbor2`` decoder locked down with every
strict option cbor2 6.x offers (no indefinite lengths, no duplicate keys, text or byte
keys only, every built-in tag overridden by a rejecting decoder, a rejecting tag hook, a
depth limit). The second step is defence in depth; it is also where UTF-8 validity of
text is checked. Any failure at all, including ``MemoryError``, becomes one
:class:`~peernet.errors.ProtocolError` whose message says briefly what was wrong and
never repeats the data. :func:`check` runs the first step alone, with the UTF-8 check
added, and returns an upper bound of the bytes the decoded value will hold, so a large
untrusted message can be charged what it will cost before anything is built.

Encoding is the mirror image. cbor2's encoder recurses in C and crashes the interpreter
on values nested a few thousand levels deep inside a thread, so :func:`encode` walks the
value iteratively first and refuses, with :class:`~peernet.errors.EncodeError` naming the
offending type and where it sits (``args["x"][3]: set is not CBOR data``), anything the
decoder would refuse: non-CBOR types, non-``str`` map keys, integers outside 64 bits,
text with lone surrogates, nesting deeper than ``max_depth``, more than ``max_items``
items, and cycles. With the same limits, whatever :func:`encode` accepts :func:`decode`
accepts, and vice versa.

Conventions:

* Depth counts containers: a scalar has depth 0, ``[1]`` depth 1, ``[[1]]`` depth 2.
* The item count counts every data item, map keys included: ``[1, {"a": 2}]`` is 5.
* Tuples encode as arrays and come back as lists; ``bytearray`` and ``memoryview``
  encode as byte strings and come back as ``bytes``.
* Subclasses of ``int``, ``float``, ``str``, ``bytes``, ``list``, ``tuple`` and ``dict``
  (``IntEnum``, ``StrEnum``, ``OrderedDict``...) are accepted and sent as plain values
  of their base type; the receiver sees only builtin types. Their overridden methods
  (``__iter__``, ``items``, ``__str__``...) are not called.
* NaN and the infinities are accepted both ways (CBOR has them and they are harmless
  once keys must be text); note that ``nan != nan`` when comparing round trips.

Decoded values are built from exactly ``None``, ``bool``, ``int``, ``float``, ``str``,
``bytes``, ``list`` and ``dict`` (with ``str`` keys).

The compiled accelerator
------------------------

``peernet._proto._cstrict`` (``_cstrict.c``, built when a C compiler is present) does the
same work faster: :func:`decode` of a ``bytes`` object in one pass (the pre-validator's
checks, in the same order with the same messages, while it builds the value), and the
fast path of :func:`encode` (exact builtin types within the limits; it answers "not
mine" for anything else, so every conversion and error message stays here). The code in
this module is the reference: both backends give the same values and the same errors,
which the test suite and the differential fuzz targets check. ``PEERNET_PURE=1`` in the
environment (read at import) keeps the accelerator off; :data:`BACKEND` says which one
runs (``"c"`` or ``"python"``).
"""

from __future__ import annotations

import json
import os
from types import ModuleType
from typing import Any, NoReturn

import cbor2

from peernet.errors import EncodeError, ProtocolError

__all__ = ["BACKEND", "DEFAULT_MAX_DEPTH", "DEFAULT_MAX_ITEMS", "HELD_PER_ITEM", "check",
           "decode", "encode", "prepare"]

DEFAULT_MAX_DEPTH = 16
"""Deepest container nesting accepted by default (the top-level container is level 1)."""

DEFAULT_MAX_ITEMS = 50_000
"""Most data items (map keys included) accepted in one value by default. It bounds
amplification: 65,000 empty arrays fit in 65 kB of CBOR but become ~5 MiB of Python
objects (security.md §1.5), and are refused. Bulk numbers travel better as ``bytes``."""

_INT_MIN = -(1 << 64)  # CBOR major types 0/1 reach exactly this far without a bignum tag
_INT_MAX = (1 << 64) - 1

# Every tag number cbor2 6.x decodes by itself (probed exhaustively for 0..69999 on
# 6.2.1; larger unknown numbers go to tag_hook). The pre-validator already refuses all
# tags; these overrides only matter if it ever had a bug.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258,
                 260, 261, 1004, 43000, 55799)


class _TagRefused(Exception):
    """Raised inside cbor2 by the rejecting tag hooks (then wrapped by cbor2)."""



#: What to send instead of a common non-CBOR type, by its type name (checked by name, so
#: this module imports no datetime, decimal, uuid, pathlib or enum).
_INSTEAD = {
    "set": "a list (sorted(s), if order should not matter)",
    "frozenset": "a list (sorted(s))",
    "datetime": "an ISO 8601 string (d.isoformat()) or a Unix time (d.timestamp())",
    "date": "an ISO 8601 string (d.isoformat())",
    "time": "an ISO 8601 string (t.isoformat())",
    "timedelta": "seconds as a float (td.total_seconds())",
    "Decimal": "a string (str(d)), or a float if rounding is fine",
    "Fraction": "a [numerator, denominator] list, or a float",
    "complex": "a [real, imag] list",
    "UUID": "its text (str(u)) or bytes (u.bytes)",
    "PosixPath": "a string (str(path))",
    "WindowsPath": "a string (str(path))",
    "PeerId": "its text (str(peer)) or bytes (peer.bytes)",
    "bytearray": "bytes",
}


def _hint_for(value: object) -> str:
    """A ``; send ... instead`` hint for a common non-CBOR type, else ''."""
    name = type(value).__name__
    hint = _INSTEAD.get(name)
    if hint is None:
        for base in type(value).__mro__[1:]:  # an Enum member: its value may travel
            if base.__name__ in ("Enum", "IntEnum", "StrEnum", "Flag"):
                return "; send its .value or .name instead"
        if hasattr(value, "__dataclass_fields__"):
            return "; send a dict instead (dataclasses.asdict(obj))"
        return ""
    return f"; send {hint} instead"

def _refuse_tag(*_args: object) -> NoReturn:
    raise _TagRefused("tag")


_STRICT: dict[str, Any] = {
    "allow_indefinite": False,
    "allow_duplicate_keys": False,
    "strict_hashable_types": True,
    "tag_hook": _refuse_tag,
    "semantic_decoders": {t: _refuse_tag for t in _BUILTIN_TAGS},
}


# ------------------------------------------------------------------------ backends


def _load_accelerator() -> ModuleType | None:
    """The compiled ``_cstrict`` module, or None: not built, or ``PEERNET_PURE`` set."""
    if os.environ.get("PEERNET_PURE", "") not in ("", "0"):
        return None
    try:
        from peernet._proto import _cstrict
    except ImportError:
        return None
    return _cstrict


_accel: Any = _load_accelerator()
"""The accelerator module in use, or None. The one switch: messages.py reads it too."""


def __getattr__(name: str) -> str:
    if name == "BACKEND":  # derived from _accel, so it cannot disagree with it
        return "c" if _accel is not None else "python"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


BACKEND: str
"""``"c"`` when the compiled accelerator decodes and encodes, ``"python"`` otherwise."""


# --------------------------------------------------------------------------- decoding


def decode(buf: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH,
           max_items: int = DEFAULT_MAX_ITEMS) -> object:
    """Decode exactly one untrusted CBOR item in the strict profile (see the module doc).

    ``buf`` must hold the whole item and nothing else (``bytearray`` and ``memoryview``
    are copied to ``bytes`` first). Raises :class:`~peernet.errors.ProtocolError` for
    every failure, whatever its cause; the message never contains decoded data.
    """
    accel = _accel
    if accel is not None:
        try:
            return accel.decode(buf, max_depth, max_items)
        except accel.Unsupported:
            pass  # not exactly bytes, or a limit beyond a C size: the reference decides
    return _decode_python(buf, max_depth, max_items)


def _refused(exc: Exception) -> ProtocolError:
    what = "invalid UTF-8 or malformed item" if isinstance(exc, cbor2.CBORDecodeError) \
        else type(exc).__name__
    return ProtocolError(f"CBOR refused by the strict decoder ({what})")


def _decode_python(buf: bytes, max_depth: int, max_items: int) -> object:
    """:func:`decode` in pure Python: the reference."""
    try:
        if type(buf) is not bytes:
            if not isinstance(buf, (bytes, bytearray, memoryview)):
                raise ProtocolError(f"expected bytes, got {type(buf).__name__}")
            buf = bytes(buf)
        _prevalidate(buf, max_depth, max_items)
        # A fresh decoder per call over a complete bytes object: no state (shared or
        # string references) can leak from one message into the next (CVE-2025-68131).
        return cbor2.loads(buf, max_depth=max_depth, **_STRICT)
    except ProtocolError:
        raise
    except Exception as exc:  # MemoryError, cbor2 errors (e.g. bad UTF-8), anything
        raise _refused(exc) from None


#: What one decoded data item can hold at most in CPython, beyond its own encoded bytes:
#: an object, its slot in its container and the container's spare room (measured with
#: tracemalloc: at most ~101 bytes, for one-entry maps of empty maps).
HELD_PER_ITEM = 128


def check(buf: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH,
          max_items: int = DEFAULT_MAX_ITEMS) -> int:
    """Everything :func:`decode` checks (UTF-8 included), without building anything.

    Returns an upper bound of the bytes decoding it will hold at its peak:
    ``HELD_PER_ITEM`` per data item, plus the encoded size and a quarter more (cbor2
    reads long strings in pieces) and 4 KiB, plus four per byte of text (a character
    may widen to four bytes). So an untrusted message can be charged what it will cost
    before it costs anything. Raises :class:`~peernet.errors.ProtocolError` exactly
    where :func:`decode` would.
    """
    try:
        items, text = _prevalidate(buf, max_depth, max_items, utf8=True)
    except ProtocolError:
        raise
    except UnicodeDecodeError:
        raise ProtocolError("CBOR refused by the strict decoder "
                            "(invalid UTF-8 or malformed item)") from None
    except Exception as exc:  # MemoryError, a non-bytes buf
        raise ProtocolError(f"CBOR refused by the strict decoder ({type(exc).__name__})") \
            from None
    return items * HELD_PER_ITEM + len(buf) * 5 // 4 + 4096 + 4 * text


def _prevalidate(buf: bytes, max_depth: int, max_items: int,
                 utf8: bool = False) -> tuple[int, int]:
    """Check that ``buf`` is exactly one item of the profile; raise ProtocolError if not.
    Returns the number of data items and (with ``utf8``) of bytes of text. ``utf8``:
    also check that every text is UTF-8 (raises UnicodeDecodeError; :func:`decode`
    leaves that to cbor2).

    One iterative pass. Each open container keeps its count of remaining items (maps
    count keys and values separately, so a key is read whenever that count is odd after
    the decrement) and, for maps, the set of raw key bodies seen so far.
    """
    n = len(buf)
    if not n:
        raise ProtocolError("empty message")
    i = 0
    rem = 1            # items still to read in the current container (root: one item)
    keys: set[bytes] | None = None  # raw keys seen in the current map; None in an array
    stack: list[tuple[int, set[bytes] | None]] = []  # saved (rem, keys) of open parents
    items = 1
    text = 0
    while True:
        if not rem:
            if not stack:
                break
            rem, keys = stack.pop()
            continue
        rem -= 1
        if i >= n:
            raise ProtocolError("truncated message")
        ib = buf[i]
        i += 1
        is_key = keys is not None and rem & 1
        major = ib >> 5
        if major == 7:
            if is_key:
                raise ProtocolError(f"map key at offset {i - 1} is not a text string")
            if 0xF4 <= ib <= 0xF6:  # false, true, null
                continue
            if ib == 0xFB:
                w = 8
            elif ib == 0xFA:
                w = 4
            elif ib == 0xF9:
                w = 2
            else:
                raise ProtocolError(
                    f"simple value, undefined or break (0x{ib:02x}) at offset {i - 1}")
            if w > n - i:
                raise ProtocolError("truncated float")
            i += w
            continue
        if major == 6:
            raise ProtocolError(f"tag at offset {i - 1}: tags are not allowed")
        ai = ib & 31
        if ai < 24:
            val = ai
        elif ai == 24:
            if i >= n:
                raise ProtocolError("truncated head")
            val = buf[i]
            i += 1
            if val < 24:
                raise ProtocolError(f"non-shortest head at offset {i - 2}")
        elif ai == 25:
            if i + 2 > n:
                raise ProtocolError("truncated head")
            val = buf[i] << 8 | buf[i + 1]
            i += 2
            if val < 0x100:
                raise ProtocolError(f"non-shortest head at offset {i - 3}")
        elif ai == 26:
            if i + 4 > n:
                raise ProtocolError("truncated head")
            val = int.from_bytes(buf[i:i + 4], "big")
            i += 4
            if val < 0x10000:
                raise ProtocolError(f"non-shortest head at offset {i - 5}")
        elif ai == 27:
            if i + 8 > n:
                raise ProtocolError("truncated head")
            val = int.from_bytes(buf[i:i + 8], "big")
            i += 8
            if val < 0x1_0000_0000:
                raise ProtocolError(f"non-shortest head at offset {i - 9}")
        elif ai == 31:
            raise ProtocolError(f"indefinite length at offset {i - 1}")
        else:
            raise ProtocolError(f"reserved additional information at offset {i - 1}")
        if is_key:
            if major != 3:
                raise ProtocolError(f"map key at offset {i - 1} is not a text string")
            if val > n - i:
                raise ProtocolError("declared string length exceeds the input")
            key = buf[i:i + val]
            if key in keys:  # type: ignore[operator]  # is_key implies keys is a set
                raise ProtocolError(f"duplicate map key at offset {i}")
            keys.add(key)  # type: ignore[union-attr]
            if utf8:
                key.decode()
                text += val
            i += val
            continue
        if major < 2:  # integers: the shortest-form head was all there was to check
            continue
        if major < 4:  # byte/text string: skip the body in one step
            if val > n - i:
                raise ProtocolError("declared string length exceeds the input")
            if utf8 and major == 3:  # only check() needs these (decode: cbor2 checks)
                text += val
                buf[i:i + val].decode()
            i += val
            continue
        if major == 5:
            val *= 2
        if val > n - i:  # every item needs at least one byte
            raise ProtocolError("declared container size exceeds the input")
        items += val
        if items > max_items:
            raise ProtocolError(f"more than {max_items} items")
        if len(stack) >= max_depth:
            raise ProtocolError(f"nested deeper than {max_depth} levels")
        stack.append((rem, keys))
        rem = val
        keys = set() if major == 5 else None
    if i != n:
        raise ProtocolError(f"{n - i} trailing bytes after the message")
    return items, text


# --------------------------------------------------------------------------- encoding

# Exact types cbor2 encodes the way the decoder reads them back, with nothing to check.
_PLAIN = frozenset({str, bytes, bytearray, float, bool, type(None)})


def encode(value: object, *, max_depth: int = DEFAULT_MAX_DEPTH,
           max_items: int = DEFAULT_MAX_ITEMS, name: str = "value") -> bytes:
    """Encode ``value`` as CBOR in the strict profile; :func:`decode` with the same limits
    accepts the result.

    Raises :class:`~peernet.errors.EncodeError` (a ``TypeError``) for anything that is
    not CBOR data as described in the module doc, naming the type and its path (rooted
    at ``name``) but never the value itself.
    """
    data = fast_encode(value, max_depth, max_items)
    if data is not None:
        return data
    value = prepare(value, max_depth=max_depth, max_items=max_items, name=name)
    return dumps_prepared(value, name=name, max_depth=max_depth, max_items=max_items)


def fast_encode(value: object, max_depth: int, max_items: int) -> bytes | None:
    """The accelerator's encoding of a value built from exact builtin types within the
    limits (what :func:`_fast_check` passes); None if it is off or declines, and then
    :func:`prepare` and :func:`dumps_prepared` decide (they give the same bytes)."""
    accel = _accel
    if accel is None:
        return None
    try:
        data: bytes | None = accel.encode(value, max_depth, max_items)
    except Exception:  # MemoryError: let the reference path decide what it is
        return None
    return data


def prepare(value: object, *, max_depth: int = DEFAULT_MAX_DEPTH,
            max_items: int = DEFAULT_MAX_ITEMS, name: str = "value") -> object:
    """Check ``value`` against the profile and return what to hand to ``cbor2.dumps``.

    That is ``value`` itself when it is built from exact builtin types only (the common,
    fast case), otherwise a copy with subclasses and ``memoryview`` turned into plain
    builtins. Text with lone surrogates is caught by :func:`dumps_prepared`, not here.
    Raises :class:`~peernet.errors.EncodeError`.
    """
    if _fast_check(value, max_depth, max_items):
        return value
    return _normalize(value, max_depth, max_items, name, check_text=False)


_SAME: Any = object()  # "explain the value itself" (None is a value to explain too)


def dumps_prepared(value: object, *, name: str = "value",
                   max_depth: int = DEFAULT_MAX_DEPTH,
                   max_items: int = DEFAULT_MAX_ITEMS, explain: object = _SAME) -> bytes:
    """``cbor2.dumps`` a value that went through :func:`prepare`.

    If cbor2 still fails (lone surrogates in text, a container mutated by another
    thread), re-walk ``explain`` (default: ``value``) to name the culprit, and raise
    :class:`~peernet.errors.EncodeError` either way.
    """
    try:
        return cbor2.dumps(value)
    except Exception as exc:
        what = type(exc).__name__
    try:  # find and name the culprit, if a second walk can pinpoint it
        _normalize(value if explain is _SAME else explain, max_depth, max_items, name,
                   check_text=True)
    except EncodeError as exc:
        raise EncodeError(str(exc)) from None
    except Exception:
        pass
    raise EncodeError(f"{name}: could not be encoded ({what})")


def _fast_check(value: object, max_depth: int, max_items: int) -> bool:
    """True if ``value`` holds only exact builtin CBOR types within the limits.

    False means "take the slow path": it may be an error (the slow path finds and names
    it) or only a subclass to convert. Cycles need no check here: a cycle is infinitely
    deep, so it always trips the depth limit.
    """
    t = type(value)
    if t in _PLAIN:
        return True
    if t is int:
        return _INT_MIN <= value <= _INT_MAX  # type: ignore[operator]
    if t is list or t is tuple:
        items = 1 + len(value)  # type: ignore[arg-type]
        top = iter(value)  # type: ignore[call-overload]
    elif t is dict:
        for k in value:  # type: ignore[attr-defined]
            if type(k) is not str:
                return False
        items = 1 + 2 * len(value)  # type: ignore[arg-type]
        top = iter(value.values())  # type: ignore[attr-defined]
    else:
        return False
    if max_depth < 1 or items > max_items:
        return False
    stack = [top]
    plain = _PLAIN
    while stack:
        for v in stack[-1]:
            t = type(v)
            if t in plain:
                continue
            if t is int:
                if _INT_MIN <= v <= _INT_MAX:
                    continue
                return False
            if t is list or t is tuple:
                items += len(v)
                it = iter(v)
            elif t is dict:
                for k in v:
                    if type(k) is not str:
                        return False
                items += 2 * len(v)
                it = iter(v.values())
            else:
                return False
            if items > max_items or len(stack) >= max_depth:
                return False
            stack.append(it)
            break  # descend: the while loop resumes with the new top iterator
        else:
            stack.pop()
    return True


def _key_segment(key: str) -> str:
    """Path segment for a dict key: JSON-quoted (so printable), long keys shortened."""
    if len(key) > 32:
        key = key[:32] + "..."
    return "[" + json.dumps(key) + "]"


def _normalize(value: object, max_depth: int, max_items: int, name: str,
               *, check_text: bool) -> object:
    """Slow path of :func:`prepare`: validate with paths, return a plain-builtin copy.

    Iterative, like the fast path, and enforcing the same rules plus cycle detection
    (for a precise message). With ``check_text`` it also refuses text that cannot be
    UTF-8 encoded (lone surrogates).
    """
    path: list[str] = []  # segments from the root to the container being filled
    items = 0  # items seen so far (open_container counts them; set for real below)

    def fail(segment: str, why: str) -> NoReturn:
        raise EncodeError(f"{name}{''.join(path)}{segment}: {why}")

    def scalar(v: object, segment: str) -> tuple[bool, object]:
        """(True, plain copy) for a scalar, (False, None) for a container."""
        t = type(v)
        if v is None or t is bool:
            return True, v
        if isinstance(v, int):
            if t is not int:
                v = int.__index__(v)  # the int value itself, not an overridden method
            if not _INT_MIN <= v <= _INT_MAX:
                fail(segment, "int does not fit in 64 bits (bignums are not allowed)")
            return True, v
        if isinstance(v, float):
            return True, v if t is float else float.__float__(v)
        if isinstance(v, str):
            if t is not str:
                v = str.__str__(v)
            if check_text:
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    fail(segment, "str is not valid Unicode text (lone surrogate)")
            return True, v
        if isinstance(v, bytes):
            return True, v if t is bytes else bytes.__bytes__(v)
        if isinstance(v, bytearray):
            return True, bytes(v)
        if t is memoryview:
            try:
                return True, v.tobytes()  # type: ignore[attr-defined]
            except ValueError:
                fail(segment, "memoryview is released")
        if isinstance(v, (list, tuple, dict)):
            return False, None
        fail(segment, f"{t.__name__} is not CBOR data{_hint_for(v)}")

    def open_container(v: Any, segment: str, depth: int) -> tuple[Any, int, list | dict]:
        """Check limits and cycles for container ``v`` at nesting level ``depth``;
        return (iterator over (key or index, child), id(v), empty output container)."""
        nonlocal items
        if depth > max_depth:
            fail(segment, f"nested deeper than {max_depth} levels")
        if id(v) in open_ids:
            fail(segment, f"{type(v).__name__} contains itself (cycle)")
        if isinstance(v, dict):
            items += 2 * dict.__len__(v)
            pairs = dict.items(v)
            for k, _ in pairs:
                if not isinstance(k, str):
                    fail(segment, f"dict key of type {type(k).__name__} is not a str")
            it = iter(pairs)
            out: list | dict = {}
        else:
            base = list if isinstance(v, list) else tuple
            items += base.__len__(v)
            it = enumerate(base.__iter__(v))
            out = []
        if items > max_items:
            fail(segment, f"more than {max_items} items")
        return it, id(v), out

    items = 1
    ok, plain = scalar(value, "")
    if ok:
        return plain
    open_ids: list[int] = []
    it, vid, root = open_container(value, "", 1)
    # Frames of the containers being walked: (iterator, id, output container).
    stack = [(it, root)]
    open_ids.append(vid)
    while stack:
        it, out = stack[-1]
        for a, v in it:
            if type(out) is dict:
                key = a if type(a) is str else str.__str__(a)
                if check_text:
                    try:
                        key.encode("utf-8")
                    except UnicodeEncodeError:
                        fail("", "dict key is not valid Unicode text (lone surrogate)")
                if key in out:  # str subclasses with their own __eq__/__hash__
                    fail(_key_segment(key), "duplicate dict key after conversion to str")
                segment = _key_segment(key)
            else:
                segment = f"[{a}]"
            ok, plain = scalar(v, segment)
            if not ok:
                cit, cid, plain = open_container(v, segment, len(stack) + 1)
            if type(out) is dict:
                out[key] = plain
            else:
                out.append(plain)  # type: ignore[union-attr]
            if not ok:
                path.append(segment)
                open_ids.append(cid)
                stack.append((cit, plain))  # type: ignore[arg-type]  # a container here
                break
        else:
            stack.pop()
            open_ids.pop()
            if path:
                path.pop()
    return root
