"""What the control endpoint does on the node: each op of the control protocol
(``_proto/control.py``) is the same call of the node's own API, so a change made
through it takes effect at once and persists exactly as a local one (the node owns its
files; clients never write them).

Runs on the endpoint's connection threads (``_io/control.py``); raises what the node
raises, which crosses to ``peernet.admin`` as the same exception.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any, Callable

from ._proto.control import TOPICS, VERSION, Refusal, Request, to_wire
from ._version import __version__
from .errors import InviteRejected, InviteTimeout, NodeClosed, NotPaired, PeerUnavailable
from .peer import Nearby, Peer, PeerEvent

if TYPE_CHECKING:
    from ._io.control import ControlServer, Session
    from .node import Node

__all__ = ["ControlOps", "peer_to_wire", "nearby_to_wire"]

#: How long ``peers`` waits for the pongs that measure the rtt of links without one.
_RTT_WAIT_S = 0.5
#: How often a waiting op looks whether the node is closing.
_STOP_POLL_S = 0.25


def peer_to_wire(p: Peer) -> dict[str, Any]:
    return {"id": str(p.id), "label": p.label, "status": p.status,
            "address": list(p.address) if p.address else None,
            "last_seen": p.last_seen, "rtt": p.rtt}


def nearby_to_wire(n: Nearby) -> dict[str, Any]:
    return {"id": str(n.id), "address": list(n.address), "source": n.source,
            "last_seen": n.last_seen}


class ControlOps:
    """The ops of one node. ``handle`` is the endpoint's handler; ``feed`` gives the
    CLI's chat handler a way to relay what it receives to watching clients."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._server: ControlServer | None = None
        self._lock = threading.Lock()
        self._feeds = {"peers"}
        self._unsubscribe_peers: Callable[[], None] | None = None
        self._ops: dict[str, Callable[..., Any]] = {
            "hello": self._hello, "status": self._status, "peers": self._peers,
            "nearby": self._nearby, "pair": self._pair, "unpair": self._unpair,
            "label": self._label, "connect": self._connect,
            "wait_for_peer": self._wait_for_peer, "call": self._call, "send": self._send,
            "watch": self._watch, "invite": self._invite, "invite_wait": self._invite_wait,
            "invite_cancel": self._invite_cancel, "join": self._join,
        }

    def serve(self, server: ControlServer) -> None:
        self._server = server

    def handle(self, request: Request, session: Session) -> Any:
        return self._ops[request.op](session, **request.args)

    def feed(self, topic: str) -> Callable[[dict[str, Any]], None]:
        """Declare ``topic`` served (``status`` lists it; ``watch`` accepts it) and return
        what publishes one event of it."""
        assert topic in TOPICS
        with self._lock:
            self._feeds.add(topic)
        return lambda data: self._publish(topic, data)

    def _publish(self, topic: str, data: dict[str, Any]) -> None:
        if self._server is not None:
            self._server.publish(topic, data)

    # -- the ops --------------------------------------------------------------------

    def _hello(self, session: Session) -> dict[str, Any]:
        node = self._node
        return {"version": VERSION, "id": str(node.id), "pid": os.getpid(),
                "peernet": __version__, "call_timeout": node.settings.call_timeout}

    def _status(self, session: Session) -> dict[str, Any]:
        node = self._node
        peers = node.list_peers()
        with self._lock:
            feeds = sorted(self._feeds)
        return {
            **self._hello(session),
            "port": node.port, "host": node._host,
            "uptime_s": time.monotonic() - node._started_at,
            "data_dir": str(node.data_dir),
            "peers": len(peers), "online": sum(p.online for p in peers),
            "links": len(node._registry.all_links()),
            "handlers": node._handlers.names(),
            "discovery": [s.source for s in node._discoveries if s.source != "manual"],
            "feeds": feeds,
        }

    def _peers(self, session: Session) -> list[dict[str, Any]]:
        """Every paired peer, live; a link that has no rtt yet (heartbeats are 30 s
        apart) is pinged first, so an online peer shows one."""
        node = self._node
        pings: list[Future[float]] = []
        for trusted in node.trust.list():
            link = node._registry.active_link(trusted.peer_id)
            if link is not None and link.rtt_s is None:
                try:
                    pings.append(link.ping())
                except PeerUnavailable:
                    pass
        if pings:
            wait(pings, _RTT_WAIT_S)
        return [peer_to_wire(p) for p in node.list_peers()]

    def _nearby(self, session: Session, wait: float = 0.0) -> list[dict[str, Any]]:
        """What discovery heard; with ``wait``, ask the LAN first and listen that long."""
        node = self._node
        if wait > 0:
            node._solicit()
            self._sleep(session, wait)
        return [nearby_to_wire(n) for n in node.list_nearby()]

    def _pair(self, session: Session, peer: str, label: str | None = None) -> dict[str, Any]:
        node = self._node
        pid = node.resolve(peer)  # an id, or the label of a paired peer (a relabel)
        was = node.trust.is_trusted(pid)
        pid = node.pair(pid, label)
        entry = node.trust.get(pid)
        return {"id": str(pid), "label": entry.label if entry else label, "was_paired": was}

    def _unpair(self, session: Session, peer: str) -> dict[str, Any]:
        node = self._node
        pid = node.resolve(peer)
        entry = node.trust.get(pid)
        removed = node.unpair(pid)
        return {"id": str(pid), "label": entry.label if entry else None, "removed": removed}

    def _label(self, session: Session, peer: str, label: str | None) -> dict[str, Any]:
        node = self._node
        pid = node.resolve(peer)
        if not node.trust.is_trusted(pid):
            raise NotPaired(f"{pid.short} is not paired; pair it first")
        entry = node.trust.pair(pid, label if label is not None else "")  # "" clears it
        return {"id": str(pid), "label": entry.label}

    def _connect(self, session: Session, peer: str, host: str, port: int) -> None:
        self._node.connect(peer, host, port)

    def _wait_for_peer(self, session: Session, peer: str, timeout: float) -> bool:
        node = self._node
        deadline = time.monotonic() + timeout
        pid = node._dial_for_wait(peer)
        while True:
            left = deadline - time.monotonic()
            step = min(left, _STOP_POLL_S)
            if node._registry.wait_for_link(pid, time.monotonic() + max(0.0, step),
                                            give_up_when_idle=False) is not None:
                return True
            if left <= _STOP_POLL_S:
                return False
            if session.stopping or node.closed:
                raise NodeClosed("the node is closing")

    def _call(self, session: Session, peer: str, name: str, args: Any = None,
              timeout: float | None = None) -> Any:
        return to_wire(self._node.call(peer, name, args, timeout=timeout))

    def _send(self, session: Session, peer: str, name: str, args: Any = None) -> bool:
        return self._node.send(peer, name, args)

    # Invites (issue 21): the running node opens, announces and answers them; a client
    # (``peernet invite`` in another terminal) shows the codes and waits.

    def _invite(self, session: Session, label: str | None = None,
                ttl_s: float = 600.0, short: bool = True) -> dict[str, Any]:
        invite = self._node.invite(label, ttl_s, short=short)
        return {"nameplate": invite.nameplate, "short": invite.short, "long": invite.long,
                "expires_at": invite.expires_at, "status": invite.status}

    def _invite_wait(self, session: Session, nameplate: int, timeout: float) -> dict[str, Any]:
        """Invite.wait in steps, so a closing node or endpoint ends it. Raises what
        wait raises: InviteTimeout (still open), InviteExpired, InviteRejected."""
        node = self._node
        invite = self._node._invites.invite(nameplate)
        if invite is None:
            raise InviteRejected(f"this node knows no invite {nameplate}", "refused")
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                peer = invite.wait(max(0.0, min(left, _STOP_POLL_S)))
                break
            except InviteTimeout:
                if left <= _STOP_POLL_S:
                    raise
                if session.stopping or node.closed:
                    raise NodeClosed("the node is closing") from None
        return {"peer": str(peer), "peer_label": invite.peer_label, "note": invite.note,
                "status": invite.status}

    def _invite_cancel(self, session: Session, nameplate: int) -> bool:
        invite = self._node._invites.invite(nameplate)
        return invite.cancel() if invite is not None else False

    def _join(self, session: Session, code: str, label: str | None = None,
              timeout: float = 10.0) -> dict[str, Any]:
        result = self._node._invites.join(code, label, timeout)
        return {"id": str(result.peer), "label": result.label, "note": result.note}

    def _watch(self, session: Session, topics: list[str]) -> dict[str, Any]:
        with self._lock:
            missing = [t for t in topics if t not in self._feeds]
        if missing:
            raise Refusal("NoSuchFeed", f"this node does not relay {missing[0]}: only a node "
                          f"whose chat handler relays it does (as `peernet listen` does)")
        if "peers" in topics:
            self._follow_peers()
        session.watch(topics)
        return {"topics": topics}

    # -- helpers -----------------------------------------------------------------------

    def _follow_peers(self) -> None:
        """Publish peer status changes from now on (subscribed on the first watch)."""
        node = self._node
        with self._lock:
            if self._unsubscribe_peers is not None:
                return

            def changed(event: PeerEvent) -> None:
                entry = node.trust.get(event.id)
                self._publish("peers", {
                    "peer": str(event.id), "label": entry.label if entry else None,
                    "status": event.status, "previous": event.previous, "at": event.at})

            self._unsubscribe_peers = node.on_peer_change(changed)

    def _sleep(self, session: Session, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not (session.stopping or self._node.closed):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, _STOP_POLL_S))
