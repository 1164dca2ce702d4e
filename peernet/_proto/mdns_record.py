"""The signed DNS-SD TXT record of mDNS discovery, and the filter received ones go through.

A node registers ``pn-<short id>._peernet._tcp.local.`` on host name
``pn-<short id>.local.`` (never the machine's own host name). Its TXT record is::

    txtvers=1              first, as RFC 6763 §6.7 asks
    pk=pn1...              the PeerId, bech32m (canonical text only)
    proto=1                peernet wire protocol version
    seq=1718000000123      freshness: strictly increasing per sender (wall clock ms, bumped)
    addr=10.0.0.5,...      the addresses the node publishes (at most 8)
    sig=<base64>           Ed25519 by pk over the message below
    inv=7,12               only while the node has open invites: their nameplates

The signature covers ``b"peernet/1 mdns" || pk (32) || port (2) || seq (8) ||
count (1) || the sorted addresses, each 16 bytes (IPv6, or IPv4-mapped)``, followed, when
``inv`` is present, by ``n (1) || each nameplate (uint16)`` in the order of ``inv``. The port is
the SRV record's, so a record whose SRV port or address list was changed does not
verify, and only signed addresses are ever reported: a spoofed or replayed record can
at worst point at the genuine node. Unknown keys are ignored (RFC 6763 §6.4) and are
not signed. Identity still comes from the Noise handshake alone; this only keeps
others from steering dials.

Pure: no sockets, threads or clocks (the caller passes the time).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from ..errors import InvalidPeerId, ProtocolError
from .keys import verify
from ..ids import PeerId

__all__ = [
    "SERVICE_TYPE",
    "MdnsRecord",
    "RecordFilter",
    "build_txt",
    "choose_address",
    "decode_txt",
    "instance_name",
    "server_name",
]

SERVICE_TYPE = "_peernet._tcp.local."
TXT_VERSION = "1"
PROTO_VERSION = "1"
MAX_ADDRESSES = 8
#: RFC 6763 §6.1: each key=value string is at most 255 bytes.
MAX_VALUE_LEN = 255
#: More keys than this and the record is not looked at (bounded work per record).
MAX_KEYS = 16
_CONTEXT = b"peernet/1 mdns"
_HEAD = struct.Struct(">32sHQB")
_SIG_B64_LEN = 88  # 64 bytes
_MAX_SEQ = (1 << 64) - 1
_REQUIRED = ("txtvers", "pk", "proto", "seq", "addr", "sig")


@dataclass(frozen=True, slots=True)
class MdnsRecord:
    peer_id: PeerId
    port: int
    seq: int
    #: The signed addresses, normalized (IPv4 as a.b.c.d), in the sender's order.
    addresses: tuple[str, ...]
    #: Nameplates of the sender's open invites (issue 21); usually none.
    nameplates: tuple[int, ...] = ()


def _label(peer_id: PeerId) -> str:
    return "pn-" + peer_id.short[3:]


def instance_name(peer_id: PeerId) -> str:
    """``pn-<short id>._peernet._tcp.local.``"""
    return f"{_label(peer_id)}.{SERVICE_TYPE}"


def server_name(peer_id: PeerId) -> str:
    """``pn-<short id>.local.``: our own host name, never the machine's."""
    return f"{_label(peer_id)}.local."


def _pack(address: str) -> bytes:
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def _normalize(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ProtocolError(f"mDNS record address {address[:64]!r} is not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        raise ProtocolError(f"mDNS record address {ip} is not a host address")
    return str(ip)


MAX_NAMEPLATES = 4


def _message(peer_id: PeerId, port: int, seq: int, addresses: Iterable[str],
             nameplates: tuple[int, ...] = ()) -> bytes:
    packed = sorted(_pack(a) for a in addresses)
    message = _CONTEXT + _HEAD.pack(peer_id.bytes, port, seq, len(packed)) + b"".join(packed)
    if nameplates:
        message += bytes([len(nameplates)]) + b"".join(n.to_bytes(2, "big") for n in nameplates)
    return message


def build_txt(sign: Callable[[bytes], bytes], peer_id: PeerId, *, port: int, seq: int,
              addresses: Iterable[str], nameplates: tuple[int, ...] = ()) -> dict[str, str]:
    """The TXT properties (``txtvers`` first) announcing ``peer_id`` on ``port`` at
    ``addresses`` (and the ``nameplates`` of its open invites, if any); ``sign`` is the
    node's Ed25519 signing function."""
    if type(port) is not int or not 0 < port <= 0xFFFF:
        raise ValueError(f"port must be 1..65535, got {port!r}")
    if type(seq) is not int or not 0 <= seq <= _MAX_SEQ:
        raise ValueError(f"seq must be a 64-bit unsigned integer, got {seq!r}")
    normalized = list(dict.fromkeys(_normalize(a) for a in addresses))
    if not 1 <= len(normalized) <= MAX_ADDRESSES:
        raise ValueError(f"publish 1..{MAX_ADDRESSES} addresses, got {len(normalized)}")
    if len(nameplates) > MAX_NAMEPLATES or len(set(nameplates)) != len(nameplates) or not all(
            type(n) is int and 0 < n <= 0xFFFF for n in nameplates):
        raise ValueError(f"at most {MAX_NAMEPLATES} distinct nameplates 1..65535")
    signature = sign(_message(peer_id, port, seq, normalized, nameplates))
    txt = {
        "txtvers": TXT_VERSION,
        "pk": str(peer_id),
        "proto": PROTO_VERSION,
        "seq": str(seq),
        "addr": ",".join(normalized),
        "sig": base64.b64encode(signature).decode("ascii"),
    }
    if nameplates:
        txt["inv"] = ",".join(map(str, nameplates))
    return txt


def _nameplates(props: Mapping[bytes, bytes | None]) -> tuple[int, ...]:
    if b"inv" not in props:
        return ()
    text = _text(props, "inv")
    parts = text.split(",")
    if not 1 <= len(parts) <= MAX_NAMEPLATES or not all(
            p.isdigit() and len(p) <= 5 and 0 < int(p) <= 0xFFFF and p == str(int(p))
            for p in parts):
        raise ProtocolError("mDNS record inv= is not 1..4 nameplates")
    numbers = tuple(int(p) for p in parts)
    if len(set(numbers)) != len(numbers):
        raise ProtocolError("mDNS record inv= lists a nameplate twice")
    return numbers


def _text(properties: Mapping[bytes, bytes | None], key: str) -> str:
    raw = properties.get(key.encode())
    if raw is None:
        raise ProtocolError(f"mDNS record has no {key}= value")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"mDNS record {key}= is not ASCII") from None


def decode_txt(properties: Mapping[bytes | str, bytes | str | None], port: int) -> MdnsRecord:
    """Parse and verify a TXT record (as python-zeroconf's ``ServiceInfo.properties``)
    received with SRV ``port``. Raises ProtocolError unless the record is well formed
    and its signature covers exactly this port, seq and address list."""
    if len(properties) > MAX_KEYS:
        raise ProtocolError(f"mDNS record has {len(properties)} keys (at most {MAX_KEYS})")
    props: dict[bytes, bytes | None] = {}
    for key, value in properties.items():
        k = key.encode("utf-8", "replace") if isinstance(key, str) else bytes(key)
        v = value.encode("utf-8", "replace") if isinstance(value, str) else value
        if len(k) + 1 + (len(v) if v is not None else 0) > MAX_VALUE_LEN:
            raise ProtocolError("mDNS record has a key=value string over 255 bytes")
        props.setdefault(k.lower(), None if v is None else bytes(v))
    if type(port) is not int or not 0 < port <= 0xFFFF:
        raise ProtocolError(f"mDNS record port {port!r} is not 1..65535")
    for key in _REQUIRED:
        _text(props, key)  # every required key, with a value
    if _text(props, "txtvers") != TXT_VERSION:
        raise ProtocolError(f"unsupported mDNS txtvers {_text(props, 'txtvers')[:8]!r}")
    if _text(props, "proto") != PROTO_VERSION:
        raise ProtocolError(f"unsupported peernet proto {_text(props, 'proto')[:8]!r}")
    pk = _text(props, "pk")
    try:
        peer_id = PeerId.parse(pk)
    except InvalidPeerId as exc:
        raise ProtocolError(f"mDNS record pk is not a PeerId: {exc}") from None
    if str(peer_id) != pk:
        raise ProtocolError("mDNS record pk is not in canonical form")
    seq_text = _text(props, "seq")
    if not seq_text.isdigit() or len(seq_text) > 20 or int(seq_text) > _MAX_SEQ:
        raise ProtocolError("mDNS record seq is not a 64-bit unsigned integer")
    seq = int(seq_text)
    addr_text = _text(props, "addr")
    parts = addr_text.split(",") if addr_text else []
    if not 1 <= len(parts) <= MAX_ADDRESSES:
        raise ProtocolError(f"mDNS record must list 1..{MAX_ADDRESSES} addresses")
    addresses = tuple(_normalize(a) for a in parts)
    if len(set(addresses)) != len(addresses):
        raise ProtocolError("mDNS record lists an address twice")
    sig_text = _text(props, "sig")
    if len(sig_text) != _SIG_B64_LEN:
        raise ProtocolError("mDNS record sig has the wrong length")
    try:
        signature = base64.b64decode(sig_text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("mDNS record sig is not base64") from None
    nameplates = _nameplates(props)
    if not verify(peer_id, _message(peer_id, port, seq, addresses, nameplates), signature):
        raise ProtocolError("mDNS record signature does not verify")
    return MdnsRecord(peer_id, port, seq, addresses, nameplates)


class RecordFilter:
    """Decides which received records count: they must decode and verify, not be our
    own, and not be older (lower seq) than the last one accepted from the same key
    (a replayed old record cannot roll a peer's addresses back). Bounded: at most
    ``max_peers`` senders are remembered, each for ``remember_s``. Time is passed in.
    """

    def __init__(self, own_id: PeerId, *, max_peers: int = 256, remember_s: float = 120.0) -> None:
        self._own_id = own_id
        self._max_peers = max_peers
        self._remember_s = remember_s
        self._senders: OrderedDict[PeerId, tuple[int, float]] = OrderedDict()
        #: Why records were dropped, by reason.
        self.dropped: dict[str, int] = {}

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def accept(self, properties: Mapping[bytes | str, bytes | str | None], port: int,
               now_s: float) -> MdnsRecord | None:
        try:
            record = decode_txt(properties, port)
        except ProtocolError:
            self._drop("invalid")
            return None
        if record.peer_id == self._own_id:
            self._drop("own")
            return None
        last = self._senders.get(record.peer_id)
        if last is not None and last[1] > now_s and record.seq < last[0]:
            self._drop("stale")
            return None
        self._senders.pop(record.peer_id, None)
        while len(self._senders) >= self._max_peers:
            self._senders.popitem(last=False)
        self._senders[record.peer_id] = (record.seq, now_s + self._remember_s)
        return record


def choose_address(signed: Iterable[str], resolved: Iterable[str],
                   local_networks: Iterable[str]) -> str | None:
    """The signed address to dial: one on a network we are on (``local_networks`` as
    ``"10.0.0.5/24"``) and present in the record's A/AAAA answers if possible, else
    the first signed one. Never an address that was not signed."""
    candidates = list(signed)
    if not candidates:
        return None
    seen = {_safe_normalize(a) for a in resolved}
    networks = []
    for text in local_networks:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue

    def local(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip.version == n.version and ip in n for n in networks)

    def rank(item: tuple[int, str]) -> tuple[int, int, int]:
        index, address = item
        return (0 if local(address) else 1, 0 if address in seen else 1, index)

    return min(enumerate(candidates), key=rank)[1]


def _safe_normalize(address: str) -> str | None:
    try:
        return _normalize(address.split("%", 1)[0])
    except ProtocolError:
        return None
