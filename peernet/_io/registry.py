"""The peer registry: every link of a node, and per peer its live link, its addresses
and any dial in progress. It is the one table of links: each link is tracked from its
creation (inbound handshakes included) until it closes.

One lock guards it; it is never held across I/O and runs no callback. A dial is
reserved (``begin_dial``) and the caller then builds and registers the link.
Readers on the hot path (``active_link``) take no lock at all.

**One link per peer.** When a second authenticated link to the same peer appears (both
sides dialled at once, or a reconnect raced an old link), both nodes keep the link whose
*initiator* has the smaller PeerId -- a rule both compute identically -- and retire the
other gracefully (see :meth:`Link.retire`). Two links with the same initiator: the newer
one wins (the older is most likely a dead link the peer has already given up on).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from .._proto.backoff import Backoff
from ..ids import PeerId
from .link import Link
from .timers import TimerHandle, Timers

__all__ = ["Registry", "PeerEntry"]


#: Address sources we know, in the order dials try them. "remembered" is the last good
#: address from before this node started (``_addresses.py``). Any other source (a
#: custom discovery) is tried after "mdns", in the order its addresses arrived.
SOURCES = ("manual", "udp", "mdns", "inbound", "remembered")
_RANK = {source: rank for rank, source in enumerate(SOURCES)}
_CUSTOM_RANK = _RANK["mdns"] + 0.5


def _rank(source: str) -> float:
    return _RANK.get(source, _CUSTOM_RANK)


class _DialReserved:
    """``PeerEntry.dialing`` between ``begin_dial`` and ``dial_started``."""

    closed = False


DIAL_RESERVED = _DialReserved()


@dataclass
class PeerEntry:
    peer_id: PeerId
    link: Link | None = None
    dialing: Link | _DialReserved | None = None
    #: Candidate addresses by where they came from: "manual" (connect), "udp" and
    #: "mdns" (discovery), "inbound" (source IP + the listening port the peer told us
    #: in its handshake), "remembered" (the last good address from a previous run).
    candidates: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: Wall-clock time we last heard from the peer on a link that has since closed.
    last_seen: float | None = None
    last_error: str | None = None
    retiring: list[Link] = field(default_factory=list)
    #: Reconnect state: failed attempts since the last success, and the pending redial.
    attempt: int = 0
    redial: TimerHandle | None = None
    #: A restart (a fresh address, a network change) came while a dial was in progress:
    #: when that dial ends without a link, redial at once, the backoff started over.
    restart_after_dial: bool = False
    #: Which candidate the next dial tries (see next_address).
    next_candidate: int = 0
    #: Last status reported to observers.
    status: str = "unknown"

    @property
    def address(self) -> tuple[str, int] | None:
        """The live link's address if online, else the first candidate by source order."""
        if self.link is not None and not self.link.closed and self.link.outbound:
            return self.link.address
        ordered = self._ordered()
        return ordered[0] if ordered else None

    def _ordered(self) -> list[tuple[str, int]]:
        # sorted() is stable: custom sources keep their insertion order among themselves.
        return [self.candidates[s] for s in sorted(self.candidates, key=_rank)]

    def next_address(self) -> tuple[str, int] | None:
        """The candidate to dial now: successive dials cycle through the sources, from
        the first (by source order) after a success or a restart."""
        unique = list(dict.fromkeys(self._ordered()))
        return unique[self.next_candidate % len(unique)] if unique else None

    def current_status(self) -> str:
        # A link counts until it leaves the table (drop_link, when its thread is done
        # with it), not from the moment it starts closing: what its end changes (the
        # status event, a departed peer's inbound address) is settled by then, so
        # list_peers() never shows the peer offline with that change still pending.
        if self.link is not None:
            return "online"
        if self.dialing is not None:
            return "connecting"
        return "offline" if self.status != "unknown" or self.last_seen else "unknown"


class Registry:
    def __init__(self, own_id: PeerId, timers: Timers) -> None:
        self._own_id = own_id
        self._timers = timers
        self._peers: dict[PeerId, PeerEntry] = {}
        self._links: set[Link] = set()  # every link, from creation until it closed
        self._cond = threading.Condition(threading.Lock())
        #: Inbound connections still in their handshake: any of them may turn out to
        #: be the peer a caller is waiting for.
        self._inbound_handshakes = 0
        #: Callers waiting for a link to call on, per peer (see first_flight).
        self._callers_waiting: dict[PeerId, int] = {}
        self._closed = False  # the node is closing: no link will come (see close)

    def inbound_started(self) -> None:
        with self._cond:
            self._inbound_handshakes += 1

    def inbound_over(self) -> None:
        """An inbound handshake ended: registered (``add_link`` came first) or failed."""
        with self._cond:
            self._inbound_handshakes -= 1
            self._cond.notify_all()

    def _entry(self, peer: PeerId) -> PeerEntry:
        entry = self._peers.get(peer)
        if entry is None:
            entry = self._peers[peer] = PeerEntry(peer)
        return entry

    def get(self, peer: PeerId) -> PeerEntry | None:
        return self._peers.get(peer)

    def active_link(self, peer: PeerId) -> Link | None:
        entry = self._peers.get(peer)
        if entry is None:
            return None
        link = entry.link
        return link if link is not None and not link.closed else None

    def set_address(self, peer: PeerId, address: tuple[str, int], source: str) -> bool:
        """Record a candidate address; returns whether it is new for that source.
        Candidates are kept per source, so an address learned from discovery never
        replaces the manual one or the live link's."""
        with self._cond:
            candidates = self._entry(peer).candidates
            changed = candidates.get(source) != address
            candidates[source] = address
            return changed

    def remember(self, peer: PeerId, address: tuple[str, int] | None,
                 last_seen: float | None) -> None:
        """Seed ``peer`` from the address book when the node starts."""
        with self._cond:
            entry = self._entry(peer)
            if address is not None:
                entry.candidates["remembered"] = address
            if last_seen is not None:
                entry.last_seen = last_seen

    def remove_address(self, peer: PeerId, source: str) -> None:
        """Drop the candidate ``source`` gave for ``peer`` (its hint expired)."""
        with self._cond:
            entry = self._peers.get(peer)
            if entry is not None:
                entry.candidates.pop(source, None)

    def track(self, link: Link) -> None:
        """A link was created (dialled or accepted): it is in the table until it closes."""
        with self._cond:
            self._links.add(link)

    def all_links(self) -> list[Link]:
        with self._cond:
            return list(self._links)

    def begin_dial(self, peer: PeerId) -> tuple[str, int] | None:
        """Reserve a dial to ``peer`` and return the address to dial, unless it has a live
        link, a dial in progress or no address. Follow with :meth:`dial_started`."""
        with self._cond:
            entry = self._entry(peer)
            address = entry.next_address()
            if address is None or entry.dialing is not None:
                return None
            if entry.link is not None and not entry.link.closed:
                return None
            entry.dialing = DIAL_RESERVED
            entry.last_error = None
            entry.next_candidate += 1
            return address

    def dial_started(self, peer: PeerId, link: Link) -> bool:
        """The reserved dial's link exists (not started). False if the reservation is
        gone meanwhile (the peer was forgotten): do not start it."""
        with self._cond:
            entry = self._peers.get(peer)
            if entry is None or entry.dialing is not DIAL_RESERVED:
                return False
            entry.dialing = link
            self._links.add(link)
            return True

    def add_link(self, link: Link) -> Link | None:
        """Register an authenticated link. Returns the link to retire, if any."""
        peer = link.peer_id
        assert peer is not None
        with self._cond:
            entry = self._entry(peer)
            if entry.dialing is link:
                entry.dialing = None
            old = entry.link
            loser: Link | None = None
            if old is not None and not old.closed:
                loser = old if self._preferred(old, link) is link else link
                entry.retiring.append(loser)
            if loser is not link:
                entry.link = link
            entry.attempt = 0  # a success resets the backoff
            entry.next_candidate = 0
            entry.restart_after_dial = False
            if entry.redial is not None:
                entry.redial.cancel()
                entry.redial = None
            self._cond.notify_all()
            return loser

    def stale_dial(self, peer: PeerId, source: str) -> Link | None:
        """The dial in progress to ``peer``, if it goes to another address than the one
        ``source`` just reported (so that address may be stale)."""
        with self._cond:
            entry = self._peers.get(peer)
            dialing = entry.dialing if entry is not None else None
            if not isinstance(dialing, Link) or dialing.established:
                return None
            fresh = entry.candidates.get(source) if entry is not None else None
            return dialing if fresh is not None and dialing.address != fresh else None

    def excess_retiring(self, peer: PeerId, keep: int) -> list[Link]:
        """Retiring links to ``peer`` beyond the newest ``keep``, oldest first."""
        with self._cond:
            entry = self._peers.get(peer)
            return list(entry.retiring[:-keep] if keep else entry.retiring) if entry else []

    def retire(self, link: Link) -> None:
        """The peer retired ``link``: stop handing it out."""
        with self._cond:
            entry = self._peers.get(link.peer_id) if link.peer_id else None
            if entry is not None and entry.link is link:
                entry.link = None
                entry.retiring.append(link)

    def drop_link(self, link: Link) -> None:
        """``link`` closed (or its dial failed)."""
        peer = link.target
        with self._cond:
            self._links.discard(link)
            entry = self._peers.get(peer) if peer is not None else None
            if entry is not None:
                if entry.dialing is link:
                    entry.dialing = None
                    entry.last_error = link.close_reason
                if entry.link is link:
                    entry.link = None
                    entry.last_seen = time.time() - (time.monotonic() - link.last_received)
                if link in entry.retiring:
                    entry.retiring.remove(link)
            self._cond.notify_all()

    def wait_for_link(self, peer: PeerId, deadline: float, *, give_up_when_idle: bool,
                      abandoned: Future[Any] | None = None,
                      for_call: bool = False) -> Link | None:
        """Wait until ``peer`` has a live link or ``deadline`` (monotonic) passes.

        With ``give_up_when_idle`` it also returns (None) as soon as nothing is on its
        way: no dial in progress, no retiring link whose replacement is being set up,
        and no inbound handshake that may be this peer dialling us. A failed dial is an
        answer, not a reason to wait out the timeout. ``abandoned``: the Future of the
        waiting call; once it is cancelled (checked whenever :meth:`notify` wakes it),
        None at once. Only its state is read under the lock: no callback runs there.
        ``for_call``: the caller will write a call at once, so a dial that is
        :attr:`Link.open_early` (message 2 checked) will do: the call then goes out with
        handshake message 3.
        """
        with self._cond:
            if for_call:
                self._callers_waiting[peer] = self._callers_waiting.get(peer, 0) + 1
            try:
                while True:
                    if self._closed or (abandoned is not None and abandoned.cancelled()):
                        return None
                    entry = self._peers.get(peer)
                    if entry is not None and entry.link is not None and not entry.link.closed:
                        return entry.link
                    if for_call and entry is not None:
                        dialing = entry.dialing
                        if isinstance(dialing, Link) and dialing.open_early \
                                and not dialing.closed:
                            return dialing
                    if give_up_when_idle and not self._inbound_handshakes and (
                        entry is None or (entry.dialing is None and not entry.retiring)
                    ):
                        return None
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._cond.wait(remaining)
            finally:
                if for_call:
                    left = self._callers_waiting[peer] - 1
                    if left:
                        self._callers_waiting[peer] = left
                    else:
                        del self._callers_waiting[peer]

    def first_flight(self, link: Link) -> bool:
        """``link`` (a dial) is :attr:`Link.open_early`: wake the callers waiting for its
        peer. Returns whether there are any (then one of them sends message 3)."""
        with self._cond:
            if not self._callers_waiting.get(link.target):  # type: ignore[arg-type]
                return False
            self._cond.notify_all()
            return True

    def links_of(self, peer: PeerId) -> list[Link]:
        """``peer``'s live, dialling and retiring links."""
        with self._cond:
            entry = self._peers.get(peer)
            if entry is None:
                return []
            links = [entry.link, entry.dialing, *entry.retiring]
            return [link for link in links if isinstance(link, Link)]

    def forget(self, peer: PeerId) -> None:
        """Drop everything known about ``peer`` (the caller closes its links)."""
        with self._cond:
            entry = self._peers.pop(peer, None)
            if entry is not None and entry.redial is not None:
                entry.redial.cancel()
            self._cond.notify_all()

    def schedule_redial(self, peer: PeerId, backoff: Backoff, draw: float,
                        dial: Callable[[PeerId], None], *, restart: bool = False) -> None:
        """Dial ``peer`` again after ``backoff.delay(attempt, draw)`` seconds, unless it
        has a live link, no address, or a redial already pending. ``restart`` (a fresh
        address, the network changed) dials now with the backoff started over, replacing
        a pending redial; while a dial is in progress it takes effect when that dial ends.
        ``dial`` runs later on the timer thread, never under this lock."""
        with self._cond:
            entry = self._peers.get(peer)
            if entry is None or not entry.candidates:
                return
            if entry.link is not None and not entry.link.closed:
                return
            if restart and entry.dialing is not None:
                entry.restart_after_dial = True
                return
            if entry.restart_after_dial and entry.dialing is None:
                entry.restart_after_dial = False
                restart = True
            if entry.redial is not None:
                if not restart:
                    return
                entry.redial.cancel()
            if restart:  # the best candidate first: it may be the fresh one
                entry.attempt = entry.next_candidate = 0
            delay = 0.0 if restart else backoff.delay(entry.attempt, draw)
            entry.attempt += 1

            def fire() -> None:
                with self._cond:
                    if entry.redial is not handle:
                        return  # cancelled or replaced meanwhile
                    entry.redial = None
                dial(peer)

            handle = entry.redial = self._timers.call_later(delay, fire)

    def entries(self) -> list[PeerEntry]:
        with self._cond:
            return list(self._peers.values())

    def status_changes(self) -> list[tuple[PeerId, str, str]]:
        """(peer, old, new) for every peer whose status changed since the last call."""
        changes = []
        with self._cond:
            for entry in self._peers.values():
                new = entry.current_status()
                if new != entry.status:
                    changes.append((entry.peer_id, entry.status, new))
                    entry.status = new
        return changes

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """The node is closing: every :meth:`wait_for_link`, now and later, returns
        None at once instead of waiting out its deadline."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _preferred(self, a: Link, b: Link) -> Link:
        """The link both sides keep: smaller initiator PeerId; same initiator: ``b``."""
        ia = self._own_id if a.outbound else a.peer_id
        ib = self._own_id if b.outbound else b.peer_id
        assert ia is not None and ib is not None
        if ia == ib:
            return b
        return a if ia < ib else b
