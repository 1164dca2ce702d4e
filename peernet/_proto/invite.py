"""Invite codes and the invite exchange, sans-IO (``Node.invite`` / ``Node.join``).

Theory of operation
-------------------
An **invite** lets two nodes pair each other in one step. The inviter shows a code; the
joiner types it; both end up trusting each other, each under the label the other
proposed. guides/protocol.md section 12 specifies every byte; in short:

1. **Codes.** A *short code* ``7-amber-orbit`` is a nameplate number (public: it is in
   the inviter's announces, so the joiner can find the inviter on the LAN) and two
   words of :mod:`~peernet._proto.wordlist` (16 secret bits). A *long code*
   ``pninv1...`` is bech32m text holding a version, the inviter's PeerId, the invite's
   id (64 random bits), a 128-bit secret, and the TCP port and addresses to dial: it
   works across networks, without discovery. The secret parts are passwords, never
   sent anywhere.
2. **Transport.** The joiner dials the inviter with the normal Noise XX handshake and
   appends an :class:`InviteHello` (which code form, and which invite: the nameplate
   of a short code, the id of a long one) to the identity binding in its message 3,
   encrypted. The inviter's responder accepts that one unpaired key only into an
   invite-only link (no handler reachable) while the invite is known to it, and the
   joiner skips its trust check only in this mode (the PeerId in a long code, or in
   the announce that carried the nameplate, is still checked). A long-code attempt
   must name the invite's id, which only the long code holds: a scanner that can
   reach the port cannot find the invite, let alone burn it.
3. **PAKE.** Over that link the two run SPAKE2 (the ``spake2`` package, imported only
   here and only when an invite is used) with the code as the password and both
   PeerIds and the Noise handshake hash as its identities, then confirm the key
   explicitly both ways with HMACs over the transcript: a man in the middle who runs
   two Noise sessions has two handshake hashes, so the keys differ and the first
   confirmation fails. The inviter checks the joiner's confirmation before it sends
   its own; the joiner gets nothing from an inviter that could not compute the key.
4. **Labels.** Only after both confirmations do labels travel (each side proposes its
   own); the inviter stores the joiner, says so, and the joiner stores the inviter.

:class:`InviterExchange` and :class:`JoinerExchange` are the two state machines: bytes
of one message in, bytes of the next out, exceptions on any failure. A failure on the
inviter's side burns the invite (the edge decides that; this module only says why).
No sockets, threads, clocks or files here.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInviteCode, InviteExpired, InviteRejected, ProtocolError
from ..ids import CHARSET, PeerId, bech32m_decode, bech32m_encode, convertbits, locate_single_error
from .wordlist import WORD_INDEX, WORDS

__all__ = [
    "HELLO_LEN",
    "INVITE_ID_LEN",
    "InviteHello",
    "KIND_LONG",
    "KIND_SHORT",
    "LONG_HRP",
    "LongCode",
    "ShortCode",
    "InviterExchange",
    "JoinerExchange",
    "WrongCode",
    "MAX_NAMEPLATE",
    "MAX_LABEL_BYTES",
    "MAX_INVITE_MESSAGE",
    "REASONS",
    "encode_refusal",
    "parse_code",
]

#: Code forms, as the hello says which one the joiner holds.
KIND_SHORT = 1
KIND_LONG = 2
MAX_NAMEPLATE = 0xFFFF
SECRET_LEN = 16  # 128 bits
#: A long code's invite id: 64 random bits that a long-code hello must name.
INVITE_ID_LEN = 8
MAX_ADDRESSES = 4
LONG_HRP = "pninv"
_LONG_VERSION = 2  # 1 (before any release) had the nameplate instead of an id
_MAX_LONG_TEXT = 400  # the largest long code is 217 characters; leave room for typos

# --- the hello in handshake message 3 ---------------------------------------------------

# type (invite), version, code kind, which invite: a short code's nameplate (six zero
# bytes, then the number) or a long code's id. One size for both, so that message 3
# does not tell an observer which code was typed.
_HELLO = struct.Struct(">BBB8s")
HELLO_LEN = _HELLO.size  # 11
_HELLO_TYPE = 0x01
_HELLO_VERSION = 0x02  # 1 (before any release): 5 bytes, a nameplate for both kinds
_NAMEPLATE_PAD = bytes(INVITE_ID_LEN - 2)


@dataclass(frozen=True, slots=True)
class InviteHello:
    """What the joiner appends to its identity binding in handshake message 3: the
    code's kind and which invite it is for, ``nameplate`` (a short code) or
    ``invite_id`` (a long code; the other is 0 / empty)."""

    kind: int
    nameplate: int = 0
    invite_id: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if self.kind == KIND_SHORT:
            valid = 1 <= self.nameplate <= MAX_NAMEPLATE and not self.invite_id
        else:
            valid = (self.kind == KIND_LONG and self.nameplate == 0
                     and len(self.invite_id) == INVITE_ID_LEN)
        if not valid:
            raise ValueError("an invite hello names a short code's nameplate (1..65535) or "
                             f"a long code's {INVITE_ID_LEN}-byte id")

    @classmethod
    def for_code(cls, code: Code) -> InviteHello:
        """The hello that asks for the invite ``code`` belongs to."""
        if isinstance(code, LongCode):
            return cls(KIND_LONG, invite_id=code.invite_id)
        return cls(KIND_SHORT, nameplate=code.nameplate)

    def encode(self) -> bytes:
        which = (self.invite_id if self.kind == KIND_LONG
                 else _NAMEPLATE_PAD + self.nameplate.to_bytes(2, "big"))
        return _HELLO.pack(_HELLO_TYPE, _HELLO_VERSION, self.kind, which)

    @classmethod
    def decode(cls, data: bytes) -> InviteHello:
        """The hello in ``data``; ProtocolError unless it is exact."""
        if len(data) != HELLO_LEN:
            raise ProtocolError(f"invite hello must be {HELLO_LEN} bytes, got {len(data)}")
        kind_type, version, kind, which = _HELLO.unpack(data)
        if kind_type != _HELLO_TYPE or version != _HELLO_VERSION:
            raise ProtocolError("unsupported invite hello")
        try:
            if kind == KIND_SHORT:
                if which[:len(_NAMEPLATE_PAD)] != _NAMEPLATE_PAD:
                    raise ValueError("padding")
                return cls(KIND_SHORT, nameplate=int.from_bytes(which[-2:], "big"))
            return cls(kind, invite_id=which)
        except ValueError:
            raise ProtocolError("malformed invite hello") from None


# --- codes --------------------------------------------------------------------------------

_SHORT_CONTEXT = b"peernet/1 invite short "
_LONG_CONTEXT = b"peernet/1 invite long "


@dataclass(frozen=True, slots=True)
class ShortCode:
    """``N-word-word``: nameplate ``N`` (public) and two words (16 secret bits)."""

    nameplate: int
    words: tuple[int, int] = field(repr=False)

    kind = KIND_SHORT

    def __post_init__(self) -> None:
        if not 1 <= self.nameplate <= MAX_NAMEPLATE:
            raise ValueError(f"nameplate must be 1..{MAX_NAMEPLATE}, got {self.nameplate}")
        if len(self.words) != 2 or not all(0 <= w < len(WORDS) for w in self.words):
            raise ValueError("a short code has two words")

    @classmethod
    def from_secret(cls, nameplate: int, secret: bytes) -> ShortCode:
        """The short code of ``nameplate`` whose words are the first 2 bytes of ``secret``."""
        return cls(nameplate, (secret[0], secret[1]))

    @property
    def text(self) -> str:
        return f"{self.nameplate}-{WORDS[self.words[0]]}-{WORDS[self.words[1]]}"

    @property
    def password(self) -> bytes:
        """The SPAKE2 password: the whole code, its nameplate included."""
        return _SHORT_CONTEXT + self.text.encode("ascii")

    def __str__(self) -> str:
        return self.text


_LONG_HEAD = struct.Struct(">B32s8s16sHB")  # version, inviter, invite id, secret, port, n


@dataclass(frozen=True, slots=True)
class LongCode:
    """``pninv1...``: everything needed to join across networks (see the module doc).
    ``invite_id`` names the invite in the hello; with the secret it is kept out of
    ``repr`` (whoever knows the id can burn the invite)."""

    inviter: PeerId
    invite_id: bytes = field(repr=False)
    secret: bytes = field(repr=False)
    port: int
    addresses: tuple[str, ...]

    kind = KIND_LONG

    def __post_init__(self) -> None:
        if len(self.invite_id) != INVITE_ID_LEN:
            raise ValueError(f"the invite id must be {INVITE_ID_LEN} bytes")
        if len(self.secret) != SECRET_LEN:
            raise ValueError(f"the secret must be {SECRET_LEN} bytes")
        if not 0 < self.port <= 0xFFFF:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        if not 1 <= len(self.addresses) <= MAX_ADDRESSES:
            raise ValueError(f"a long code holds 1..{MAX_ADDRESSES} addresses")
        for address in self.addresses:
            ipaddress.ip_address(address)  # ValueError for anything but an IP address

    @property
    def text(self) -> str:
        payload = _LONG_HEAD.pack(_LONG_VERSION, self.inviter.bytes, self.invite_id,
                                  self.secret, self.port, len(self.addresses))
        for address in self.addresses:
            ip = ipaddress.ip_address(address)
            payload += bytes([ip.version]) + ip.packed
        return bech32m_encode(LONG_HRP, convertbits(payload, 8, 5, pad=True))

    @property
    def password(self) -> bytes:
        return _LONG_CONTEXT + self.secret

    def __str__(self) -> str:
        return self.text


Code = ShortCode | LongCode


def _bad(message: str) -> InvalidInviteCode:
    return InvalidInviteCode(f"invalid invite code: {message}")


def parse_code(text: object) -> Code:
    """The code in ``text`` (typed by a person: spaces, case and, in a short code, spaces
    for dashes are forgiven), or :class:`~peernet.InvalidInviteCode` saying what is wrong."""
    if not isinstance(text, str):
        raise _bad(f"expected text, got {type(text).__name__}")
    if len(text) > 1000:
        raise _bad(f"too long ({len(text)} characters)")
    compact = "".join(text.split())
    if not compact:
        raise _bad("empty; a code looks like 7-amber-orbit or pninv1...")
    if compact.lower().startswith(LONG_HRP + "1"):
        return _parse_long(compact)
    if compact[0].isdigit():
        return _parse_short(text)
    raise _bad(f"{_shown(text)} is neither a short code (a number and two words, like "
               "7-amber-orbit) nor a long one (pninv1...)")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def _parse_short(text: str) -> ShortCode:
    parts = [p for p in text.replace("-", " ").split() if p]
    number = parts[0]
    if not number.isdecimal() or not 1 <= int(number) <= MAX_NAMEPLATE:  # isdigit: "²" too
        raise _bad(f"the number {number[:8]!r} must be 1..{MAX_NAMEPLATE}")
    words = parts[1:]
    if len(words) != 2:
        raise _bad(f"a short code is a number and two words (like 7-amber-orbit); "
                   f"got {len(words)} word{'' if len(words) == 1 else 's'}")
    indexes = []
    for position, word in enumerate(words, 1):
        key = word.lower()
        if key not in WORD_INDEX:
            close = _close_words(key)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise _bad(f"word {position}, {_shown(word)}, is not in the word list{hint}")
        indexes.append(WORD_INDEX[key])
    return ShortCode(int(number), (indexes[0], indexes[1]))


def _close_words(word: str) -> list[str]:
    """Words one edit away (the list guarantees at most one), else sharing the first
    three letters."""
    found = [w for w in WORDS if _one_edit_apart(word, w)]
    return found or [w for w in WORDS if len(word) >= 3 and w.startswith(word[:3])]


def _one_edit_apart(a: str, b: str) -> bool:
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def _parse_long(compact: str) -> LongCode:
    try:
        hrp, data = bech32m_decode(compact, max_length=_MAX_LONG_TEXT)
    except ValueError as exc:
        if str(exc) == "bad checksum":
            raise _bad(_checksum_hint(compact)) from None
        raise _bad(f"not a long code ({exc})") from None
    if hrp != LONG_HRP:
        raise _bad(f"wrong prefix {hrp[:12]!r}: a long code starts with {LONG_HRP}1")
    try:
        payload = bytes(convertbits(data, 5, 8, pad=False))
    except ValueError as exc:
        raise _bad(f"not a canonical encoding ({exc})") from None
    if payload[:1] != bytes([_LONG_VERSION]):
        raise _bad(f"unsupported long code version {payload[0] if payload else '(none)'} "
                   f"(this peernet reads version {_LONG_VERSION}): ask for a new code")
    if len(payload) < _LONG_HEAD.size:
        raise _bad("truncated")
    _, key, invite_id, secret, port, count = _LONG_HEAD.unpack_from(payload)
    addresses, at = [], _LONG_HEAD.size
    for _ in range(count):
        family = payload[at:at + 1]
        size = {b"\x04": 4, b"\x06": 16}.get(family)
        if size is None or len(payload) < at + 1 + size:
            raise _bad("malformed address list")
        addresses.append(str(ipaddress.ip_address(payload[at + 1:at + 1 + size])))
        at += 1 + size
    if at != len(payload):
        raise _bad("trailing bytes after the address list")
    try:
        return LongCode(PeerId(key), invite_id, secret, port, tuple(addresses))
    except ValueError as exc:
        raise _bad(str(exc)) from None


def _checksum_hint(compact: str) -> str:
    text = compact.lower()
    data = [CHARSET.find(c) for c in text[len(LONG_HRP) + 1:]]
    index = locate_single_error(LONG_HRP, data) if -1 not in data else None
    if index is None:
        return "bad checksum: the code was mistyped (copy it again, or scan its QR code)"
    position = len(LONG_HRP) + 1 + index + 1
    return (f"bad checksum: the character {text[position - 1]!r} at position {position} is "
            "probably mistyped (positions count from 1, ignoring spaces)")


# --- the exchange ---------------------------------------------------------------------------

MSG_JOINER_PAKE = 0x01
MSG_INVITER_PAKE = 0x02
MSG_JOINER_CONFIRM = 0x03
MSG_INVITER_CONFIRM = 0x04
MSG_JOINER_LABEL = 0x05
MSG_DONE = 0x06
MSG_REFUSED = 0x7F

_PAKE_LEN = 33  # SPAKE2 on Ed25519: the side byte ("A" or "B") and a 32-byte element
_MAC_LEN = 32
#: A label is at most 100 characters (trust.MAX_LABEL_LENGTH): at most 400 UTF-8 bytes.
MAX_LABEL_BYTES = 400
#: The largest invite message is 433 bytes: an invite link's sessions refuse to
#: reassemble more than this (a pre-auth link must not hold a megabyte).
MAX_INVITE_MESSAGE = 1024

#: Why the inviter refuses, as the byte of a REFUSED message.
REASONS = {1: "wrong_code", 2: "used", 3: "burned", 4: "expired", 5: "cancelled", 6: "busy"}
_REASON_CODES = {name: code for code, name in REASONS.items()}
_REASON_TEXT = {
    "wrong_code": "wrong code: the inviter burned the invite; ask for a new one",
    "used": "that invite was already used",
    "burned": "that invite was burned by an earlier failed attempt; ask for a new one",
    "cancelled": "that invite was cancelled",
    "busy": "someone else is joining with that invite right now",
}

_ID_CONTEXT = b"peernet/1 invite "
_CONFIRM_CONTEXT = b"peernet/1 invite confirm "


class WrongCode(ProtocolError):
    """The inviter's verdict on the joiner's key confirmation: the codes differ (or a
    man in the middle relayed the exchange). The inviter burns the invite."""


def encode_refusal(reason: str) -> bytes:
    """The REFUSED message for ``reason`` (a value of :data:`REASONS`)."""
    return bytes([MSG_REFUSED, _REASON_CODES[reason]])


def _raise_refusal(message: bytes) -> None:
    if len(message) != 2 or message[1] not in REASONS:
        raise ProtocolError("malformed refusal")
    reason = REASONS[message[1]]
    if reason == "expired":
        raise InviteExpired("that invite expired before it was used; ask for a new one")
    raise InviteRejected(_REASON_TEXT[reason], reason)


def _spake2() -> Any:
    """The ``spake2`` module, imported when an invite is first used (not with peernet)."""
    import spake2  # type: ignore[import-untyped]  # noqa: PLC0415 -- lazy: ~30 ms

    return spake2


def _encode_label(label: str | None) -> bytes:
    raw = (label or "").encode("utf-8")
    if len(raw) > MAX_LABEL_BYTES:
        raise ValueError(f"a label is at most {MAX_LABEL_BYTES} bytes of UTF-8")
    return raw


def _decode_label(raw: bytes) -> str | None:
    """A label as the peer proposed it: peer text, checked by the caller's label rules."""
    if len(raw) > MAX_LABEL_BYTES:
        raise ProtocolError("label too long")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("label is not UTF-8") from None
    return text or None


class _Exchange:
    """What both sides compute: SPAKE2 bound to the handshake and both PeerIds."""

    def __init__(self, password: bytes, *, handshake_hash: bytes, joiner: PeerId,
                 inviter: PeerId, label: str | None) -> None:
        if len(handshake_hash) != 32:
            raise ValueError("handshake_hash must be 32 bytes")
        self._password = password
        self._h = bytes(handshake_hash)
        self.joiner = joiner
        self.inviter = inviter
        self._label = _encode_label(label)
        self._key: bytes | None = None
        self._transcript = b""
        #: The label the other side proposed for itself (peer text), once received.
        self.peer_label: str | None = None
        self.done = False

    def _ids(self) -> tuple[bytes, bytes]:
        return (_ID_CONTEXT + b"A" + self._h + self.joiner.bytes,
                _ID_CONTEXT + b"B" + self._h + self.inviter.bytes)

    def _finish(self, pake: Any, joiner_msg: bytes, inviter_msg: bytes, theirs: bytes) -> None:
        try:
            self._key = pake.finish(theirs)
        except Exception:  # noqa: BLE001 -- spake2 raises several types for bad points
            raise ProtocolError("invalid SPAKE2 message") from None
        self._transcript = (self._h + self.joiner.bytes + self.inviter.bytes
                            + joiner_msg + inviter_msg)

    def _mac(self, who: bytes) -> bytes:
        assert self._key is not None
        return hmac.new(self._key, _CONFIRM_CONTEXT + who + self._transcript,
                        hashlib.sha256).digest()


def _expect(message: bytes, kind: int, *, size: int | None = None,
            max_size: int | None = None) -> bytes:
    """The body of ``message`` if it is of ``kind`` and size, else ProtocolError."""
    if not message or message[0] != kind:
        raise ProtocolError(f"expected invite message {kind:#04x}")
    body = message[1:]
    if size is not None and len(body) != size:
        raise ProtocolError(f"invite message {kind:#04x} must carry {size} bytes")
    if max_size is not None and len(body) > max_size:
        raise ProtocolError(f"invite message {kind:#04x} is too long")
    return bytes(body)


class JoinerExchange(_Exchange):
    """The joiner's side. :meth:`start`, then feed each inviter message to
    :meth:`receive` and send what it returns, until :attr:`done`.

    Raises :class:`~peernet.InviteRejected` / :class:`~peernet.InviteExpired` when the
    inviter refuses (its REFUSED message), :class:`~peernet.InviteRejected` with reason
    ``wrong_code`` when the inviter cannot prove it holds the code, and ProtocolError
    for anything malformed. The joiner may write trust once :attr:`done`.
    """

    _state = "new"
    #: The joiner's last message is out: from here the inviter may have paired it.
    sent_label = False

    def start(self) -> bytes:
        if self._state != "new":
            raise ProtocolError("the exchange has started")
        id_a, id_b = self._ids()
        self._pake = _spake2().SPAKE2_A(self._password, idA=id_a, idB=id_b)
        self._mine = self._pake.start()
        self._state = "pake"
        return bytes([MSG_JOINER_PAKE]) + self._mine

    def receive(self, message: bytes) -> bytes | None:
        if message[:1] == bytes([MSG_REFUSED]):
            _raise_refusal(message)
        state = self._state
        if state == "pake":
            theirs = _expect(message, MSG_INVITER_PAKE, size=_PAKE_LEN)
            if theirs[:1] != b"B":
                raise ProtocolError("the inviter's SPAKE2 message is not side B")
            self._finish(self._pake, self._mine, theirs, theirs)
            self._state = "confirm"
            return bytes([MSG_JOINER_CONFIRM]) + self._mac(b"J")
        if state == "confirm":
            body = _expect(message, MSG_INVITER_CONFIRM, max_size=_MAC_LEN + MAX_LABEL_BYTES)
            if len(body) < _MAC_LEN or not hmac.compare_digest(body[:_MAC_LEN], self._mac(b"I")):
                self._state = "failed"
                raise InviteRejected("the inviter could not prove it holds the code (a man "
                                     "in the middle, or a node posing as the inviter); "
                                     "nothing was paired", "wrong_code")
            self.peer_label = _decode_label(body[_MAC_LEN:])
            self._state = "label"
            self.sent_label = True
            return bytes([MSG_JOINER_LABEL]) + self._label
        if state == "label":
            _expect(message, MSG_DONE, size=0)
            self._state = "done"
            self.done = True
            return None
        raise ProtocolError("invite exchange is over")


class InviterExchange(_Exchange):
    """The inviter's side: feed each joiner message to :meth:`receive` and send what it
    returns. After the joiner's label (the third message) :attr:`done` is true: write
    trust, then send the returned DONE message.

    Raises :class:`WrongCode` when the joiner's key confirmation fails (send
    ``encode_refusal("wrong_code")``), ProtocolError for anything malformed. Either
    way the invite is burned.
    """

    _state = "pake"

    def receive(self, message: bytes) -> bytes:
        state = self._state
        self._state = "failed"  # until this step succeeds
        if state == "pake":
            theirs = _expect(message, MSG_JOINER_PAKE, size=_PAKE_LEN)
            if theirs[:1] != b"A":
                raise ProtocolError("the joiner's SPAKE2 message is not side A")
            id_a, id_b = self._ids()
            pake = _spake2().SPAKE2_B(self._password, idA=id_a, idB=id_b)
            mine = pake.start()
            self._finish(pake, theirs, mine, theirs)
            self._state = "confirm"
            return bytes([MSG_INVITER_PAKE]) + mine
        if state == "confirm":
            body = _expect(message, MSG_JOINER_CONFIRM, size=_MAC_LEN)
            if not hmac.compare_digest(body, self._mac(b"J")):
                raise WrongCode("the joiner's key confirmation failed: wrong code")
            self._state = "label"
            return bytes([MSG_INVITER_CONFIRM]) + self._mac(b"I") + self._label
        if state == "label":
            self.peer_label = _decode_label(_expect(message, MSG_JOINER_LABEL,
                                                    max_size=MAX_LABEL_BYTES))
            self._state = "done"
            self.done = True
            return bytes([MSG_DONE])
        raise ProtocolError("invite exchange is over")
