"""Discovery: where a node learns *addresses* of peers. Never who they are.

Every source of address hints implements the small :class:`Discovery` interface and
reports to the node through :class:`DiscoveryHost`. The node decides what a hint is
worth: a paired peer's address becomes a dial candidate (never replacing a live link),
an unpaired announcer is listed by ``Node.list_nearby()`` and never dialled, and the
Noise handshake alone establishes identity.

Sources:

- :class:`ManualDiscovery` -- ``Node.connect(peer, host, port)``; always on.
- :class:`UdpDiscovery` -- signed broadcast announces (``discovery="udp"``).
- :class:`MdnsDiscovery` -- DNS-SD ``_peernet._tcp`` (``discovery="mdns"``; needs
  ``pip install "peernet-py[mdns]"``).

Pass a string, an object, or a list of them::

    Node(discovery="udp")
    Node(discovery=[UdpDiscovery(interfaces=["eth0"], interval_s=2.0), "mdns"])
"""

from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

from ..ids import PeerId
from .mdns import MdnsDiscovery
from .udp import UdpDiscovery

__all__ = [
    "Discovery",
    "DiscoveryHost",
    "ManualDiscovery",
    "MdnsDiscovery",
    "UdpDiscovery",
    "make_discoveries",
]


class DiscoveryHost(Protocol):
    """What a node offers its discovery sources."""

    @property
    def id(self) -> PeerId: ...
    @property
    def port(self) -> int: ...
    def sign(self, message: bytes) -> bytes:
        """Sign with the node's Ed25519 key."""
        ...
    def peer_seen(self, peer: PeerId, address: tuple[str, int], *, source: str,
                  ttl_s: float | None, nameplates: tuple[int, ...] = ()) -> None:
        """``peer`` can be reached at ``address``; the hint expires after ``ttl_s``
        seconds without being repeated (None: until ``peer_lost``). A source that
        carries invite nameplates (issue 21) passes ``nameplates=(...)`` too, only when
        the announce had some (a host of one's own may not take the keyword)."""
        ...
    def peer_lost(self, peer: PeerId, *, source: str) -> None:
        """The hint this source gave for ``peer`` no longer holds."""
        ...
    def paired_peers(self) -> frozenset[PeerId]:
        """The peers this node is paired with now: a source that must ration its work
        (strangers' announcements are free to make) serves these first."""
        ...


@runtime_checkable
class Discovery(Protocol):
    """A source of address hints. ``source`` names it in ``Peer``/``Nearby`` rows."""

    source: str

    def start(self, host: DiscoveryHost) -> None:
        """Begin: announce ourselves (if this source does) and report peers."""
        ...
    def announce(self) -> None:
        """Announce again now, e.g. after the host's addresses changed."""
        ...
    def stop(self, timeout_s: float) -> None:
        """Stop announcing and listening; join any thread; bounded by ``timeout_s``."""
        ...

    # Optional: ``solicit() -> None``, "ask the network now" (it must not block).
    # ``Node.call`` and ``Node.wait_for_peer`` call it when a peer has no live link;
    # UdpDiscovery and MdnsDiscovery have it.
    # Optional (issue 21): ``hears_invites`` (True: reports the nameplates of open
    # invites it hears) and ``carries_invites`` (True: announces this node's open
    # nameplates, read from ``host.open_nameplates()``), with ``on_lan(source_ip,
    # local_ip) -> bool`` (is that address on a LAN the announces reach? a short-code
    # attempt is taken only from there). UDP and mDNS have all three.


class ManualDiscovery:
    """Addresses given by hand (``Node.connect``). Announces nothing."""

    source = "manual"

    def __init__(self) -> None:
        self._host: DiscoveryHost | None = None

    def start(self, host: DiscoveryHost) -> None:
        self._host = host

    def announce(self) -> None:
        pass

    def stop(self, timeout_s: float) -> None:
        self._host = None

    def add(self, peer: PeerId, address: tuple[str, int]) -> None:
        """Report ``peer`` at ``address`` until removed."""
        if self._host is not None:
            self._host.peer_seen(peer, address, source=self.source, ttl_s=None)


def make_discoveries(spec: None | str | Discovery | Iterable[str | Discovery]) -> list[Discovery]:
    """Turn ``Node(discovery=...)`` into discovery objects (ValueError/TypeError if bad)."""
    if spec is None:
        return []
    items = [spec] if isinstance(spec, (str, Discovery)) else list(spec)
    found: list[Discovery] = []
    for item in items:
        if item == "udp":
            item = UdpDiscovery()
        elif item == "mdns":
            item = MdnsDiscovery()  # zeroconf is imported here, not before
        elif isinstance(item, str):
            raise ValueError(f"unknown discovery {item!r}; use 'udp', 'mdns' or a discovery object")
        elif not isinstance(item, Discovery):
            raise TypeError(f"discovery must be 'udp', 'mdns' or a Discovery object, not {item!r}")
        if any(d.source == item.source for d in found):
            raise ValueError(f"discovery {item.source!r} given twice")
        found.append(item)
    return found
