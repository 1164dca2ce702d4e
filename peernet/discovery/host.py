"""The node as its discovery sources see it (:class:`~peernet.discovery.DiscoveryHost`)."""

from __future__ import annotations

from typing import Callable

from ..ids import PeerId
from .hints import Hints

__all__ = ["Host"]


class Host:
    """Its id and port, a signing function, and where hints go (:class:`Hints`).
    Checks what third-party sources report, so a bad hint fails there, not deep in a
    dial; hints that arrive after the node closed are ignored."""

    def __init__(self, *, peer_id: PeerId, port: Callable[[], int],
                 sign: Callable[[bytes], bytes], hints: Hints,
                 closed: Callable[[], bool],
                 paired_peers: Callable[[], frozenset[PeerId]],
                 open_nameplates: Callable[[], tuple[int, ...]] = tuple) -> None:
        self._id = peer_id
        self._port = port
        self._sign = sign
        self._hints = hints
        self._closed = closed
        self.paired_peers = paired_peers
        #: The nameplates of this node's open invites, for announces (issue 21).
        self.open_nameplates = open_nameplates

    @property
    def id(self) -> PeerId:
        return self._id

    @property
    def port(self) -> int:
        return self._port()

    def sign(self, message: bytes) -> bytes:
        return self._sign(message)

    def peer_seen(self, peer: PeerId, address: tuple[str, int], *, source: str,
                  ttl_s: float | None, nameplates: tuple[int, ...] = ()) -> None:
        host, port = address
        if not isinstance(peer, PeerId) or type(port) is not int or not 0 < port <= 0xFFFF:
            raise ValueError(f"bad hint from {source}: {peer!r} at {address!r}")
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"bad hint from {source}: ttl_s={ttl_s!r}")
        if not self._closed():
            self._hints.seen(peer, (str(host), port), source, ttl_s, tuple(nameplates))

    def peer_lost(self, peer: PeerId, *, source: str) -> None:
        self._hints.lost(peer, source)
