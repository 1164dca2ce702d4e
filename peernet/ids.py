"""Peer ids: a node's Ed25519 public key and its human text form.

A :class:`PeerId` wraps the 32 raw bytes of an Ed25519 public key. Its text form is
bech32m (BIP-350) with the prefix ``pn``: ``pn1`` followed by 58 characters, the last six
of which are a BCH checksum that catches any four or fewer typos. ``PeerId.parse`` turns
anything a user may hand us (text, raw bytes, another PeerId) into a PeerId, or raises
:class:`~peernet.errors.InvalidPeerId` saying exactly what is wrong.

The generic bech32m functions below follow the BIP-173/BIP-350 reference algorithm and
accept any human-readable part; the PeerId layer then insists on ``pn`` and 32 bytes.
This module is pure: no I/O, no clocks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from .errors import InvalidPeerId

__all__ = ["PeerId"]

# --- generic bech32m (BIP-173 structure, BIP-350 checksum constant) --------------------

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHAR_VALUE = {c: i for i, c in enumerate(CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
BECH32M_CONST = 0x2BC830A3
_MAX_LENGTH = 90  # BIP-173: longer strings lose the checksum's guarantees
_CHECKSUM_LENGTH = 6


def _polymod_step(chk: int, value: int) -> int:
    top = chk >> 25
    chk = ((chk & 0x1FFFFFF) << 5) ^ value
    for i in range(5):
        if (top >> i) & 1:
            chk ^= _GENERATOR[i]
    return chk


#: The generators XORed in for each value of the 5 bits shifted out (BIP-173's
#: polymod, a table instead of a bit loop).
_GEN_TABLE = tuple(_polymod_step(top << 25, 0) for top in range(32))


def _polymod(values: Iterable[int], chk: int = 1) -> int:
    table = _GEN_TABLE
    for value in values:
        chk = ((chk & 0x1FFFFFF) << 5) ^ value ^ table[chk >> 25]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _checksum_residue(hrp: str, data: Sequence[int]) -> int:
    """Zero when ``data`` (payload plus checksum) carries a valid bech32m checksum."""
    return _polymod(_hrp_expand(hrp) + list(data)) ^ BECH32M_CONST


def _create_checksum(hrp: str, data: Sequence[int]) -> list[int]:
    polymod = _polymod(_hrp_expand(hrp) + list(data) + [0] * 6) ^ BECH32M_CONST
    return [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]


@functools.lru_cache(maxsize=8)
def _single_error_syndromes(length: int) -> dict[int, int]:
    """Map the checksum residue of every single substitution in ``length`` symbols to
    the index of the substituted symbol.

    The polymod is affine, so substituting ``e`` at ``d`` symbols from the end adds
    ``L(e * x^d)`` to the residue whatever the rest of the string is. Within 89
    symbols the code's distance makes these residues distinct.
    """
    table: dict[int, int] = {}
    for error in range(1, 32):
        contribution = _polymod_step(0, error)
        for distance in range(length):
            table.setdefault(contribution, length - 1 - distance)
            contribution = _polymod_step(contribution, 0)
    return table


def locate_single_error(hrp: str, data: Sequence[int]) -> int | None:
    """Index into ``data`` (payload plus checksum) of the one substituted symbol that
    explains a bad checksum, or None if the checksum is fine or no single substitution
    explains it. Exact for one typo; with more typos, at best a hint.
    """
    residue = _checksum_residue(hrp, data)
    if residue == 0:
        return None
    return _single_error_syndromes(len(data)).get(residue)


def convertbits(data: Iterable[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    """Regroup ``frombits``-wide values into ``tobits``-wide ones (BIP-173).

    Without ``pad``, leftover bits must be fewer than ``frombits`` and all zero, else
    ``ValueError``.
    """
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        if value < 0 or value >> frombits:
            raise ValueError(f"value {value} does not fit in {frombits} bits")
        acc = ((acc << frombits) | value) & ((1 << (frombits + tobits)) - 1)
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits:
        raise ValueError("too many padding bits")
    elif (acc << (tobits - bits)) & maxv:
        raise ValueError("non-zero padding bits")
    return out


def bech32m_encode(hrp: str, values: Sequence[int]) -> str:
    """Encode 5-bit ``values`` under ``hrp`` as a lower-case bech32m string."""
    hrp = hrp.lower()
    return hrp + "1" + "".join(CHARSET[v] for v in [*values, *_create_checksum(hrp, values)])


def bech32m_decode(text: str, max_length: int = _MAX_LENGTH) -> tuple[str, list[int]]:
    """Decode a bech32m string into ``(hrp, 5-bit values)`` (checksum removed).

    Applies every BIP-173/BIP-350 rule: printable US-ASCII only, no mixed case, a
    non-empty HRP, a checksum of six valid characters, at most 90 characters (or
    ``max_length``: longer texts keep a 30-bit checksum, like BOLT 11 invoices, but
    lose the guarantee for four typos). Raises ``ValueError`` naming the rule that
    failed.
    """
    for position, char in enumerate(text, 1):
        if not 33 <= ord(char) <= 126:
            raise ValueError(f"invalid character {char!r} at position {position}")
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed upper and lower case")
    if len(text) > max_length:
        raise ValueError(f"too long: {len(text)} characters, at most {max_length}")
    text = text.lower()
    sep = text.rfind("1")
    if sep < 0:
        raise ValueError("no '1' separator")
    if sep == 0:
        raise ValueError("empty human-readable part")
    if len(text) - sep - 1 < _CHECKSUM_LENGTH:
        raise ValueError("too short for a checksum")
    hrp = text[:sep]
    data: list[int] = []
    for position, char in enumerate(text[sep + 1 :], sep + 2):
        if char not in _CHAR_VALUE:
            raise ValueError(f"invalid character {char!r} at position {position}")
        data.append(_CHAR_VALUE[char])
    if _checksum_residue(hrp, data) != 0:
        raise ValueError("bad checksum")
    return hrp, data[:-_CHECKSUM_LENGTH]


# --- PeerId ---------------------------------------------------------------------------

_HRP = "pn"
_PREFIX = _HRP + "1"
_KEY_LENGTH = 32
_TEXT_LENGTH = 61  # "pn1" + ceil(256 / 5) = 52 data + 6 checksum
_SHORT_LENGTH = 8  # data characters in the short form: 40 bits, display only
_MAX_TYPED_LENGTH = 1000  # generous room for spaces, dashes and line breaks
_NOT_IN_CHARSET = "bech32 text never uses '1', 'b', 'i' or 'o' after the prefix"
_BYTES_LIKE = (bytes, bytearray, memoryview)


# Fast paths for the one shape a PeerId text has ("pn1" + 52 data + 6 checksum
# characters, lower case): bytes.translate and int arithmetic instead of per-character
# Python, 2-5x faster. Anything else goes to the careful parser, which says what is wrong.
_HRP_POLYMOD = _polymod(_hrp_expand(_HRP))
_DATA_LENGTH = 52  # ceil(256 / 5)
_SHIFTS = tuple(range(5 * _DATA_LENGTH - 5, -1, -5))
_TO_CHARSET = bytes.maketrans(bytes(range(32)), CHARSET.encode("ascii"))
_FROM_CHARSET = bytes(_CHAR_VALUE.get(chr(i), 0xFF) for i in range(256))


def _encode_key(raw: bytes) -> str:
    """The text of 32 raw key bytes (bech32m_encode of their 5-bit groups, faster)."""
    bits = int.from_bytes(raw, "big") << 4  # 256 bits, zero-padded to 52 x 5
    values = bytes([(bits >> shift) & 31 for shift in _SHIFTS])
    chk = _polymod(bytes(_CHECKSUM_LENGTH), _polymod(values, _HRP_POLYMOD)) ^ BECH32M_CONST
    checksum = bytes([(chk >> 5 * (5 - i)) & 31 for i in range(_CHECKSUM_LENGTH)])
    return _PREFIX + (values + checksum).translate(_TO_CHARSET).decode("ascii")


def _decode_key(text: str) -> bytes | None:
    """The raw key of a canonical PeerId text, or None for anything else (then the
    careful parser decides, and explains)."""
    if len(text) != _TEXT_LENGTH or not text.startswith(_PREFIX) or not text.isascii():
        return None
    values = text[len(_PREFIX):].encode("ascii").translate(_FROM_CHARSET)
    if 0xFF in values or _polymod(values, _HRP_POLYMOD) != BECH32M_CONST:
        return None
    bits = 0
    for value in values[:_DATA_LENGTH]:
        bits = (bits << 5) | value
    if bits & 0xF:  # the 4 bits that pad 256 to 260 must be zero (canonical)
        return None
    return (bits >> 4).to_bytes(_KEY_LENGTH, "big")


def _fail(message: str) -> NoReturn:
    raise InvalidPeerId(f"invalid peer id: {message}")


def _coerce_raw(value: bytes | bytearray | memoryview) -> bytes:
    raw = bytes(value)
    if len(raw) != _KEY_LENGTH:
        _fail(f"expected {_KEY_LENGTH} bytes, got {len(raw)}")
    return raw


def _parse_text(value: str) -> bytes:
    raw = _decode_key(value)
    if raw is not None:
        return raw
    if len(value) > _MAX_TYPED_LENGTH:  # don't scan megabytes of junk character by character
        _fail(f"too long: {len(value)} characters, a peer id has {_TEXT_LENGTH}")
    # People copy ids out of chat windows and read them aloud: forgive whitespace and
    # dashes anywhere, and an all-upper-case id (the compact QR form), but nothing else.
    text = "".join(value.split()).replace("-", "")
    if not text:
        _fail("empty string")
    for position, char in enumerate(text, 1):
        if not 33 <= ord(char) <= 126:
            _fail(f"invalid character {char!r} at position {position}")
    if text.lower() != text and text.upper() != text:
        _fail("mixed upper and lower case (write it all lower case or all upper case)")
    text = text.lower()
    if not text.startswith(_PREFIX):
        sep = text.rfind("1")
        if sep < 0:
            _fail(f"missing the {_PREFIX!r} prefix (a peer id looks like 'pn1qqqsyqcy…')")
        found = text[: sep + 1]
        shown = found if len(found) <= 20 else found[:20] + "…"
        _fail(f"wrong prefix {shown!r}: expected {_PREFIX!r}")
    data: list[int] = []
    for position, char in enumerate(text[len(_PREFIX) :], len(_PREFIX) + 1):
        if char not in _CHAR_VALUE:
            _fail(f"invalid character {char!r} at position {position} ({_NOT_IN_CHARSET})")
        data.append(_CHAR_VALUE[char])
    valid_checksum = len(data) >= _CHECKSUM_LENGTH and _checksum_residue(_HRP, data) == 0
    if len(text) != _TEXT_LENGTH:
        if valid_checksum:
            got = (len(data) - _CHECKSUM_LENGTH) * 5 // 8
            _fail(f"the text decodes to {got} bytes, expected {_KEY_LENGTH}")
        cut = (" (cut short? a short id, as listings show, is for reading only: give "
               "the whole id)" if len(text) < _TEXT_LENGTH else "")
        _fail(f"wrong length: a peer id has {_TEXT_LENGTH} characters, got {len(text)}{cut}")
    if not valid_checksum:
        index = locate_single_error(_HRP, data)
        if index is None:
            _fail("bad checksum (more than one character looks mistyped)")
        position = len(_PREFIX) + index + 1
        _fail(
            f"bad checksum: the character {text[position - 1]!r} at position {position} "
            "is probably mistyped (positions count from 1, ignoring spaces and dashes)"
        )
    try:
        return bytes(convertbits(data[:-_CHECKSUM_LENGTH], 5, 8, pad=False))
    except ValueError as exc:  # only reachable for a crafted string: checksum is fine
        _fail(f"{exc} (not a canonical encoding)")


#: Text form of recently seen keys (a pure function of the key, so safe to share).
_TEXT_CACHE: dict[bytes, str] = {}
_TEXT_CACHE_SIZE = 4096
#: PeerIds of recently parsed texts, keyed by the exact text given: users pass ids as
#: text on every call, and bech32m in pure Python costs ~40 us. Only valid texts are
#: kept, so a caller feeding junk cannot fill it; it is emptied when full.
_PARSED: dict[str, PeerId] = {}
_PARSED_SIZE = 4096


class PeerId:
    """A peer's identity: the 32 bytes of its Ed25519 public key.

    Immutable, hashable, and ordered by the raw bytes. ``str(pid)`` is the canonical
    61-character ``pn1…`` text, ``pid.bytes`` the raw key, ``pid.short`` a short form for
    logs (display only: never authorize anything by it). Build one from raw bytes with
    ``PeerId(raw32)`` or from anything a user typed with :meth:`PeerId.parse`.

    A PeerId equals its canonical text and hashes like it, so an id pasted from
    ``peernet id`` works wherever a PeerId does: ``peer == "pn1…"``, ``"pn1…" in
    {peer}``, ``peer in {"pn1…"}`` and dict keys. Only the canonical (lower-case, no
    spaces) text compares equal; ``PeerId.parse`` accepts the looser forms.
    """

    __slots__ = ("_raw", "_text")

    _raw: bytes
    _text: str

    def __init__(self, raw32: bytes | bytearray | memoryview) -> None:
        if isinstance(raw32, str):
            _fail("PeerId() takes the 32 raw key bytes; use PeerId.parse() for text")
        if not isinstance(raw32, _BYTES_LIKE):
            _fail(f"expected {_KEY_LENGTH} bytes, got {type(raw32).__name__}")
        raw = _coerce_raw(raw32)
        text = _TEXT_CACHE.get(raw)
        if text is None:  # bech32m in Python: once per key, not per link
            text = _encode_key(raw)
            if len(_TEXT_CACHE) >= _TEXT_CACHE_SIZE:
                _TEXT_CACHE.clear()  # atomic, so safe between threads; refilled as used
            _TEXT_CACHE[raw] = text
        object.__setattr__(self, "_raw", raw)
        object.__setattr__(self, "_text", text)

    @classmethod
    def parse(cls, value: PeerId | str | bytes | bytearray | memoryview) -> PeerId:
        """Return the PeerId for ``value``, or raise ``InvalidPeerId`` saying why not.

        Accepts a PeerId (returned as is), its text form (surrounding whitespace and
        spaces or dashes inside are ignored; all upper case is fine, mixed case is not),
        or the 32 raw key bytes.
        """
        if isinstance(value, PeerId):
            return value
        if isinstance(value, str):
            pid = _PARSED.get(value)
            if pid is None:
                pid = cls(_parse_text(value))
                if type(value) is str:  # a str subclass could hash or compare oddly
                    if len(_PARSED) >= _PARSED_SIZE:
                        _PARSED.clear()  # atomic, so safe between threads
                    _PARSED[value] = pid
            return pid
        if isinstance(value, _BYTES_LIKE):
            return cls(value)
        _fail(
            f"expected a PeerId, its 'pn1…' text or {_KEY_LENGTH} raw bytes, "
            f"got {type(value).__name__}"
        )

    @property
    def short(self) -> str:
        """``pn1`` plus the first 8 data characters: for display, never for identity."""
        return self._text[: len(_PREFIX) + _SHORT_LENGTH]

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"PeerId('{self.short}…')"

    def __bytes__(self) -> bytes:
        return self._raw

    def __hash__(self) -> int:
        return hash(self._text)  # like the text, so a PeerId and its text are one key

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PeerId):
            return self._raw == other._raw
        if isinstance(other, str):
            return self._text == other
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        if isinstance(other, PeerId):
            return self._raw != other._raw
        if isinstance(other, str):
            return self._text != other
        return NotImplemented

    def __lt__(self, other: object) -> bool:
        if isinstance(other, PeerId):
            return self._raw < other._raw
        return NotImplemented

    def __le__(self, other: object) -> bool:
        if isinstance(other, PeerId):
            return self._raw <= other._raw
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if isinstance(other, PeerId):
            return self._raw > other._raw
        return NotImplemented

    def __ge__(self, other: object) -> bool:
        if isinstance(other, PeerId):
            return self._raw >= other._raw
        return NotImplemented

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("PeerId is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("PeerId is immutable")

    def __reduce__(self) -> tuple[type[PeerId], tuple[bytes]]:
        # The default slot-state protocol would go through __setattr__ and fail.
        return (PeerId, (self._raw,))

    def __copy__(self) -> PeerId:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> PeerId:
        return self

    # Defined last: inside the class body, later annotations would otherwise see this
    # property where they mean the builtin type.
    @property
    def bytes(self) -> bytes:  # noqa: A003
        """The 32 raw bytes of the Ed25519 public key."""
        return self._raw
