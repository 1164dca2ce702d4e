"""``Peer``: a read-only snapshot of one paired peer, as ``Node.list_peers()`` returns it."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

from .ids import PeerId

__all__ = ["Nearby", "Peer", "PeerEvent", "PeerList"]


@dataclass(frozen=True, slots=True)
class Peer:
    """One paired peer at the moment ``list_peers()`` was called."""

    id: PeerId
    label: str | None
    #: "online" (a live authenticated link), "connecting" (a dial in progress) or "offline".
    status: str
    #: (host, port) we would dial, or None when no address is known.
    address: tuple[str, int] | None
    #: Unix time we last heard from the peer, or None if never.
    last_seen: float | None
    #: Round-trip time of the last heartbeat, in seconds, or None.
    rtt: float | None

    @property
    def online(self) -> bool:
        return self.status == "online"

    def __repr__(self) -> str:
        parts = [f"<Peer {self.id.short}"]
        if self.label:
            parts.append(repr(self.label))
        parts.append(self.status)
        if self.address:
            parts.append(f"{self.address[0]}:{self.address[1]}")
        if self.rtt is not None:
            parts.append(f"rtt={self.rtt * 1000:.1f}ms")
        return " ".join(parts) + ">"

    def _repr_html_(self) -> str:
        return peers_table([self])


class PeerList(list[Peer]):
    """What ``Node.list_peers()`` returns: a plain list of :class:`Peer` that a notebook
    shows as a table (with each full id, to copy)."""

    def _repr_html_(self) -> str:
        return peers_table(self)


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """A paired peer's status changed (see ``Node.on_peer_change``)."""

    id: PeerId
    #: "unknown", "connecting", "online" or "offline".
    status: str
    previous: str
    #: Unix time of the change.
    at: float


@dataclass(frozen=True, slots=True)
class Nearby:
    """An unpaired node that discovery heard (see ``Node.list_nearby``). Never dialled:
    pair it (after checking its id out of band) to talk to it."""

    id: PeerId
    #: (host, port) it announced.
    address: tuple[str, int]
    #: Which discovery heard it: "udp" or "mdns".
    source: str
    #: Unix time it was last heard.
    last_seen: float

    def __repr__(self) -> str:
        return f"<Nearby {self.id.short} {self.address[0]}:{self.address[1]} via {self.source}>"


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    seconds = max(0.0, time.time() - ts)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def peers_table(peers: list[Peer]) -> str:
    """An HTML table of peers; every field is escaped (labels come from people)."""
    if not peers:
        return "<div>no paired peers</div>"
    rows = []
    for p in peers:
        addr = f"{p.address[0]}:{p.address[1]}" if p.address else ""
        rtt = f"{p.rtt * 1000:.1f} ms" if p.rtt is not None else ""
        cells = [html.escape(c) for c in (p.label or "", p.status, addr, _ago(p.last_seen), rtt)]
        cells.insert(1, f"<code>{html.escape(str(p.id))}</code>")  # the full id, to copy
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("label", "id", "status", "address", "last seen", "rtt"))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"
