"""The signed UDP announce, and the filter every received announce goes through.

An announce says "the node with this key listens on this TCP port at this address".
It is only ever an address *hint*: identity comes from the Noise handshake alone. The
signature, the address binding and the freshness counter make sure a hint cannot be
forged or moved: nobody can announce someone else's key, and a genuine packet replayed
from another host names the genuine address, which the replayer does not own.

Layout (132 bytes, integers big-endian)::

    off len
      0   4  magic b"PNET"
      4   1  version 0x02 (the original PeerNet's unsigned packet was version 1)
      5   1  flags, 0 (reserved: a packet with any flag set is refused)
      6   2  TCP listen port, 1..65535
      8  32  the sender's PeerId (Ed25519 public key)
     40   8  counter: strictly increasing per sender (its wall clock in ms, bumped)
     48   4  interval until the sender's next announce, ms (100 .. 3,600,000)
     52  16  the address the packet is sent from: IPv6, or IPv4-mapped ::ffff:a.b.c.d
     68  64  Ed25519 signature over b"peernet/1 announce" || bytes 0..67

**Open invites** (``Node.invite``, issue 21): while a node has open invites with a short
code, it sets flag ``0x02`` (``0x01`` in that byte is a solicitation) and inserts
their nameplate numbers before the signature (nothing else about an invite is ever
announced)::

     68   1  n, the number of nameplates (1..4)
     69  2n  each nameplate, uint16 (1..65535), distinct
  69+2n  64  Ed25519 signature over b"peernet/1 announce" || bytes 0..68+2n

so such an announce is 135..141 bytes. Receivers older than this flag drop it (flags
must be 0 there): a node is invisible to them while it has an invite open.

The receiver drops a packet unless it parses exactly, its rate limits allow it, the
signature verifies, it is not its own, the signed address equals the UDP source
address, and its counter is higher than the last one accepted from that key.

The solicitation (also 132 bytes, so a query is never smaller than the announce it asks
for) says "anyone with discovery on, announce now, to me"; it names nobody::

    off len
      0   4  magic b"PNET"
      4   1  version 0x02
      5   1  kind 0x01 (an announce has 0 here: its flags)
      6   2  reserved, 0
      8  16  nonce: random, so a node can tell its own solicitation when it hears it
     24 108  zero padding

:class:`SolicitationLimiter` decides which ones get an answer (per source address and
overall token buckets, bounded tables).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from ..errors import ProtocolError
from .keys import verify
from ..ids import PeerId

__all__ = [
    "ANNOUNCE_LEN",
    "MAX_ANNOUNCE_LEN",
    "Announce",
    "AnnounceFilter",
    "SOLICITATION_LEN",
    "SolicitationLimiter",
    "TokenBucket",
    "decode_announce",
    "decode_solicitation",
    "encode_announce",
    "encode_solicitation",
    "is_solicitation",
]

MAGIC = b"PNET"
VERSION = 2
_SIGNED = struct.Struct(">4sBBH32sQI16s")
SIGNATURE_LEN = 64
ANNOUNCE_LEN = _SIGNED.size + SIGNATURE_LEN  # 132
_CONTEXT = b"peernet/1 announce"
MIN_INTERVAL_MS = 100
MAX_INTERVAL_MS = 3_600_000
#: Byte 5 of an announce: 0, or this flag (0x01 there means a solicitation).
FLAG_INVITES = 0x02
MAX_NAMEPLATES = 4
#: The longest announce: one with the most nameplates.
MAX_ANNOUNCE_LEN = ANNOUNCE_LEN + 1 + 2 * MAX_NAMEPLATES  # 141


@dataclass(frozen=True, slots=True)
class Announce:
    peer_id: PeerId
    port: int
    counter: int
    interval_s: float
    #: The address the sender says it sent from (normalized; IPv4 as a.b.c.d).
    address: str
    signed: bytes
    signature: bytes
    #: Nameplates of the sender's open invites (issue 21); usually none.
    nameplates: tuple[int, ...] = ()

    def verify(self) -> bool:
        return verify(self.peer_id, _CONTEXT + self.signed, self.signature)


def _pack_address(address: str) -> bytes:
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip.packed


def _unpack_address(raw: bytes) -> str:
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped or ip)


def encode_announce(sign: Callable[[bytes], bytes], peer_id: PeerId, *, port: int,
                    counter: int, interval_s: float, address: str,
                    nameplates: tuple[int, ...] = ()) -> bytes:
    """A signed announce. ``sign`` is the sender's Ed25519 signing function;
    ``nameplates`` are the numbers of its open invites (at most 4, distinct)."""
    if not 0 < port <= 0xFFFF:
        raise ValueError(f"port must be 1..65535, got {port!r}")
    interval_ms = round(interval_s * 1000)
    if not MIN_INTERVAL_MS <= interval_ms <= MAX_INTERVAL_MS:
        raise ValueError(f"interval must be 0.1 s .. 1 h, got {interval_s!r}")
    if len(nameplates) > MAX_NAMEPLATES or len(set(nameplates)) != len(nameplates) or not all(
            type(n) is int and 0 < n <= 0xFFFF for n in nameplates):
        raise ValueError(f"at most {MAX_NAMEPLATES} distinct nameplates 1..65535")
    signed = _SIGNED.pack(MAGIC, VERSION, FLAG_INVITES if nameplates else 0, port,
                          peer_id.bytes, counter, interval_ms, _pack_address(address))
    if nameplates:
        signed += bytes([len(nameplates)]) + b"".join(n.to_bytes(2, "big") for n in nameplates)
    return signed + sign(_CONTEXT + signed)


def decode_announce(packet: bytes) -> Announce:
    """Parse (not verify) an announce; anything but an exact packet raises ProtocolError."""
    if not ANNOUNCE_LEN <= len(packet) <= MAX_ANNOUNCE_LEN:
        raise ProtocolError(f"announce must be {ANNOUNCE_LEN} bytes, got {len(packet)}")
    magic, version, flags, port, key, counter, interval_ms, raw_address = _SIGNED.unpack_from(
        packet)
    if magic != MAGIC:
        raise ProtocolError("not a peernet announce (bad magic)")
    if version != VERSION:
        raise ProtocolError(f"unsupported announce version {version}")
    nameplates: tuple[int, ...] = ()
    if flags == FLAG_INVITES:
        count = packet[_SIGNED.size]
        if not 1 <= count <= MAX_NAMEPLATES or len(packet) != ANNOUNCE_LEN + 1 + 2 * count:
            raise ProtocolError("announce nameplate list is malformed")
        at = _SIGNED.size + 1
        nameplates = tuple(int.from_bytes(packet[at + 2 * i:at + 2 * i + 2], "big")
                           for i in range(count))
        if 0 in nameplates or len(set(nameplates)) != count:
            raise ProtocolError("announce nameplates must be distinct and 1..65535")
    elif flags != 0:
        raise ProtocolError("unknown announce flags")
    elif len(packet) != ANNOUNCE_LEN:
        raise ProtocolError(f"announce must be {ANNOUNCE_LEN} bytes, got {len(packet)}")
    signed = bytes(packet[:len(packet) - SIGNATURE_LEN])
    if port == 0:
        raise ProtocolError("announce port must not be 0")
    if not MIN_INTERVAL_MS <= interval_ms <= MAX_INTERVAL_MS:
        raise ProtocolError(f"announce interval {interval_ms} ms is out of range")
    address = _unpack_address(raw_address)
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified or ip.is_multicast:
        raise ProtocolError(f"announce address {address} is not a host address")
    return Announce(PeerId(key), port, counter, interval_ms / 1000, address, signed,
                    bytes(packet[len(signed):]), nameplates)


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved up. Time is passed in."""

    __slots__ = ("rate_per_s", "burst", "_tokens", "_at")

    def __init__(self, rate_per_s: float, burst: float, now_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._at = now_s

    def take(self, now_s: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now_s - self._at) * self.rate_per_s)
        self._at = now_s
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class AnnounceFilter:
    """Decides which received announces count. Pure: the caller passes the clock.

    Cheap checks come first, so a flood costs little: the exact parse, then a token
    bucket per source address and one for all sources (before the ~50 µs signature
    check), then the signature, our own key, the address binding and freshness. Every
    table is bounded: the oldest entry goes when it is full.
    """

    def __init__(self, own_id: PeerId, *, per_source_rate_per_s: float = 5.0,
                 per_source_burst: int = 20, total_rate_per_s: float = 500.0,
                 max_sources: int = 1024, max_senders: int = 1024) -> None:
        self._own_id = own_id
        self._per_source = (per_source_rate_per_s, per_source_burst)
        self._total_rate = total_rate_per_s
        self._total: TokenBucket | None = None
        self._max_sources = max_sources
        self._max_senders = max_senders
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()
        #: Per sender: (last accepted counter, when to forget it). Forgetting lets a
        #: sender whose clock went backwards (a board without an RTC) be heard again.
        self._senders: OrderedDict[PeerId, tuple[int, float]] = OrderedDict()
        #: Why packets were dropped, by reason (for logs, tests and debugging).
        self.dropped: dict[str, int] = {}

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def _bucket(self, source_ip: str, now_s: float) -> TokenBucket:
        bucket = self._sources.get(source_ip)
        if bucket is None:
            if len(self._sources) >= self._max_sources:
                self._sources.popitem(last=False)
            bucket = self._sources[source_ip] = TokenBucket(*self._per_source, now_s)
        else:
            self._sources.move_to_end(source_ip)
        return bucket

    def accept(self, packet: bytes, source_ip: str, now_s: float) -> Announce | None:
        """The announce if it counts, else None (and the reason is counted)."""
        try:
            announce = decode_announce(packet)
        except ProtocolError:
            self._drop("malformed")
            return None
        if not self._bucket(source_ip, now_s).take(now_s):
            self._drop("rate_source")
            return None
        if self._total is None:
            self._total = TokenBucket(self._total_rate, self._total_rate, now_s)
        if not self._total.take(now_s):
            self._drop("rate_total")
            return None
        if not announce.verify():
            self._drop("signature")
            return None
        if announce.peer_id == self._own_id:
            self._drop("own")
            return None
        if announce.address != source_ip:
            self._drop("address")
            return None
        last = self._senders.get(announce.peer_id)
        if last is not None and last[1] > now_s and announce.counter <= last[0]:
            self._drop("stale")
            return None
        self._senders.pop(announce.peer_id, None)
        if len(self._senders) >= self._max_senders:
            self._senders.popitem(last=False)
        self._senders[announce.peer_id] = (announce.counter, now_s + 3 * announce.interval_s)
        return announce


SOLICIT_KIND = 0x01
NONCE_LEN = 16
_SOLICIT_HEAD = struct.Struct(">4sBBH16s")
SOLICITATION_LEN = ANNOUNCE_LEN  # 132: padded, so answering amplifies no bytes
_SOLICIT_PAD = bytes(SOLICITATION_LEN - _SOLICIT_HEAD.size)


def encode_solicitation(nonce: bytes) -> bytes:
    """A solicitation carrying ``nonce`` (16 random bytes)."""
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes, got {len(nonce)}")
    return _SOLICIT_HEAD.pack(MAGIC, VERSION, SOLICIT_KIND, 0, bytes(nonce)) + _SOLICIT_PAD


def is_solicitation(packet: bytes) -> bool:
    """Cheap test: does ``packet`` claim to be a solicitation (byte 5 is 0x01)?"""
    return len(packet) >= 6 and packet[5] == SOLICIT_KIND and packet[:4] == MAGIC


def decode_solicitation(packet: bytes) -> bytes:
    """The nonce of an exact solicitation; anything else raises ProtocolError."""
    if len(packet) != SOLICITATION_LEN:
        raise ProtocolError(f"solicitation must be {SOLICITATION_LEN} bytes, got {len(packet)}")
    magic, version, kind, reserved, nonce = _SOLICIT_HEAD.unpack_from(packet)
    if magic != MAGIC:
        raise ProtocolError("not a peernet solicitation (bad magic)")
    if version != VERSION:
        raise ProtocolError(f"unsupported solicitation version {version}")
    if kind != SOLICIT_KIND:
        raise ProtocolError(f"not a solicitation (kind {kind})")
    if reserved != 0 or packet[_SOLICIT_HEAD.size:] != _SOLICIT_PAD:
        raise ProtocolError("solicitation reserved bytes and padding must be 0")
    return bytes(nonce)


class SolicitationLimiter:
    """Which solicitations get an answer. Pure: the caller passes the clock.

    An answer is one announce per selected interface, by unicast to the solicitation's
    source, so the limits bound what any one address (or a spoofer using many) can make
    this node send: a token bucket per source address (default 5 a second, burst 10) and
    one for all sources together (50 a second, burst 50). At most ``max_sources``
    addresses are remembered (the least recently heard goes first), and the node's own
    last ``max_own`` nonces, so it ignores its own solicitations.
    """

    def __init__(self, *, per_source_rate_per_s: float = 5.0, per_source_burst: int = 10,
                 total_rate_per_s: float = 50.0, total_burst: int = 50,
                 max_sources: int = 256, max_own: int = 16) -> None:
        self._per_source = (per_source_rate_per_s, per_source_burst)
        self._total_args = (total_rate_per_s, total_burst)
        self._total: TokenBucket | None = None
        self._max_sources = max_sources
        self._max_own = max_own
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()
        self._own: OrderedDict[bytes, None] = OrderedDict()
        #: Solicitations not answered, by reason; and how many were answered.
        self.dropped: dict[str, int] = {}
        self.answered = 0

    def _drop(self, reason: str) -> bool:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        return False

    def sent(self, nonce: bytes) -> None:
        """We sent a solicitation with ``nonce``: do not answer it when it comes back."""
        self._own[bytes(nonce)] = None
        while len(self._own) > self._max_own:
            self._own.popitem(last=False)

    def allow(self, packet: bytes, source_ip: str, now_s: float) -> bool:
        """True if the solicitation in ``packet`` from ``source_ip`` should be answered."""
        try:
            nonce = decode_solicitation(packet)
        except ProtocolError:
            return self._drop("malformed")
        if nonce in self._own:
            return self._drop("own")
        bucket = self._sources.get(source_ip)
        if bucket is None:
            if len(self._sources) >= self._max_sources:
                self._sources.popitem(last=False)
            bucket = self._sources[source_ip] = TokenBucket(*self._per_source, now_s)
        else:
            self._sources.move_to_end(source_ip)
        if not bucket.take(now_s):
            return self._drop("rate_source")
        if self._total is None:
            self._total = TokenBucket(*self._total_args, now_s)
        if not self._total.take(now_s):
            return self._drop("rate_total")
        self.answered += 1
        return True


def next_counter(previous: int, wall_ms: int) -> int:
    """The sender's next counter: its clock in ms, but always above the last one."""
    return max(previous + 1, wall_ms)
