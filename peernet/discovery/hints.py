"""What discovery heard, and what it means for the registry.

Every discovery source reports ``seen(peer, address, source, ttl_s)`` and
``lost(peer, source)``. This module turns those hints into policy:

- a **paired** peer's address becomes a dial candidate for that source (the registry
  keeps candidates per source, so a hint never replaces a live link's address or a
  manual one); a new address is dialled now, a repeated one only when the reconnect
  backoff allows;
- an **unpaired** announcer goes to a bounded "nearby" table so a person can pick one
  to pair with; it is never dialled and gets no registry entry;
- a hint naming a new address while the peer's link is up pings that link, and
  closes it if nothing comes back within a second (the peer moved; the old link may
  be dead without knowing it);
- a key the handshake refused (not paired) that said where it listens is kept in a
  small table (``knocked``: at most ``MAX_KNOCKS``, for ``KNOCK_TTL_S``), never listed
  and never dialled; pairing it dials it there at once (issue 19: a running node
  paired through its control socket learns of the peer that has been knocking);
- a hint that is not repeated within its ``ttl_s`` expires: two thirds of the way
  there the peer's live link (if any) is pinged, and at expiry the candidate is
  dropped and a link that answered nothing since the ping is closed. So a node that
  vanished is offline within three announce intervals, while a peer that merely
  stopped announcing keeps a healthy link.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from ..ids import PeerId
from ..peer import Nearby
from .._io.registry import Registry
from .._io.timers import Timers

__all__ = ["Hints"]

_PROBE_FRACTION = 2 / 3
#: Refused keys kept with the address they listen on (see ``knocked``). Keys are free,
#: so the table is small: a stranger minting keys only evicts entries, and a peer that
#: was evicted knocks again at its next redial (or is found by discovery).
MAX_KNOCKS = 32
#: How long a refused key's address is kept: long enough for its owner to read the
#: warning and pair it, short enough that an address is not stale.
KNOCK_TTL_S = 600.0
#: How long a link asked "are you there?" (a ping) has to show any sign of life.
_PROBE_S = 1.0


@dataclass
class _Sighting:
    address: tuple[str, int]
    last_seen: float  # wall clock, for people
    heard_at: float  # monotonic
    ttl_s: float | None
    probed_at: float | None = None
    armed: bool = False
    #: Nameplates of the sender's open invites, as this hint announced them (issue 21).
    nameplates: tuple[int, ...] = ()

    def live(self, now: float) -> bool:
        return self.ttl_s is None or now < self.expires_at

    @property
    def probe_at(self) -> float:
        assert self.ttl_s is not None
        return self.heard_at + self.ttl_s * _PROBE_FRACTION

    @property
    def expires_at(self) -> float:
        assert self.ttl_s is not None
        return self.heard_at + self.ttl_s


class Hints:
    def __init__(self, *, own_id: PeerId, registry: Registry, timers: Timers,
                 is_trusted: Callable[[PeerId], bool],
                 dial: Callable[[PeerId, bool, str], None], max_nearby: int = 256) -> None:
        """``dial(peer, address_changed, source)`` asks the node to (re)dial a paired peer."""
        self._own_id = own_id
        self._registry = registry
        self._timers = timers
        self._is_trusted = is_trusted
        self._dial = dial
        self._max_nearby = max_nearby
        self._lock = threading.Lock()
        self._paired: dict[tuple[PeerId, str], _Sighting] = {}
        self._nearby: OrderedDict[tuple[PeerId, str], _Sighting] = OrderedDict()
        #: Refused keys: peer -> (address it listens on, monotonic expiry), oldest first.
        self._knocks: OrderedDict[PeerId, tuple[tuple[str, int], float]] = OrderedDict()

    def seen(self, peer: PeerId, address: tuple[str, int], source: str,
             ttl_s: float | None, nameplates: tuple[int, ...] = ()) -> None:
        if peer == self._own_id:
            return
        now = time.monotonic()
        sighting = _Sighting(address, time.time(), now, ttl_s, nameplates=nameplates)
        key = (peer, source)
        if not self._is_trusted(peer):
            with self._lock:
                self._nearby.pop(key, None)
                self._nearby[key] = sighting
                self._expire_nearby(now)
                while len(self._nearby) > self._max_nearby:
                    self._nearby.popitem(last=False)
            return
        with self._lock:
            old = self._paired.get(key)
            if old is not None:
                sighting.armed = old.armed
            self._paired[key] = sighting
            arm = ttl_s is not None and not sighting.armed
            sighting.armed = sighting.armed or arm
        changed = self._registry.set_address(peer, address, source)
        link = self._registry.active_link(peer)
        if changed and link is not None and link.address[0] != address[0]:
            # The peer speaks from somewhere new: the live link may be dead without
            # knowing it (its FIN left from an address that is gone). Ask it.
            self._probe(link, f"peer moved to {address[0]} and the old link is silent")
        if arm and ttl_s is not None:
            self._timers.call_later(ttl_s * _PROBE_FRACTION, lambda: self._check(key))
        self._dial(peer, changed, source)

    def lost(self, peer: PeerId, source: str) -> None:
        with self._lock:
            self._nearby.pop((peer, source), None)
            gone = self._paired.pop((peer, source), None)
        if gone is not None:
            self._registry.remove_address(peer, source)

    def knocked(self, peer: PeerId, address: tuple[str, int]) -> None:
        """The handshake refused ``peer`` (not paired) after it proved its key;
        ``address`` is where it connected from, at the port it said it listens on.
        Kept, bounded and for a while, only so that pairing it dials it at once."""
        now = time.monotonic()
        with self._lock:
            self._knocks.pop(peer, None)
            self._knocks[peer] = (address, now + KNOCK_TTL_S)
            while self._knocks and (len(self._knocks) > MAX_KNOCKS
                                    or next(iter(self._knocks.values()))[1] <= now):
                self._knocks.popitem(last=False)
        if self._is_trusted(peer):  # paired just after the refusal: it counts now
            self.paired(peer)

    def paired(self, peer: PeerId) -> None:
        """``peer`` was just paired: what discovery already heard of it counts now, and
        so does the address it knocked from (a candidate like a link's inbound one)."""
        with self._lock:
            heard = [(key, s) for key, s in self._nearby.items() if key[0] == peer]
            for key, _ in heard:
                del self._nearby[key]
            knock = self._knocks.pop(peer, None)
        for (_, source), s in heard:
            remaining = None if s.ttl_s is None else s.expires_at - time.monotonic()
            if remaining is None or remaining > 0:
                self.seen(peer, s.address, source, remaining, s.nameplates)
        if knock is not None and time.monotonic() < knock[1]:
            changed = self._registry.set_address(peer, knock[0], "inbound")
            self._dial(peer, changed, "inbound")

    def forget(self, peer: PeerId) -> None:
        """``peer`` was unpaired (its registry entry is gone already)."""
        with self._lock:
            for key in [k for k in self._paired if k[0] == peer]:
                del self._paired[key]

    def nearby(self) -> list[Nearby]:
        """Unpaired announcers heard recently, newest first."""
        with self._lock:
            self._expire_nearby(time.monotonic())
            items = list(self._nearby.items())
        return [Nearby(peer, s.address, source, s.last_seen)
                for (peer, source), s in reversed(items)]

    def invites(self) -> dict[int, dict[PeerId, tuple[str, int]]]:
        """Open invites heard nearby (issue 21): nameplate -> {announcer: its address},
        from hints that have not expired, paired announcers included."""
        now = time.monotonic()
        found: dict[int, dict[PeerId, tuple[str, int]]] = {}
        with self._lock:
            for table in (self._paired, self._nearby):
                for (peer, _), s in table.items():
                    if s.nameplates and s.live(now):
                        for nameplate in s.nameplates:
                            found.setdefault(nameplate, {})[peer] = s.address
        return found

    def _probe(self, link, reason: str) -> None:
        """Ping ``link``; close it if nothing at all arrives within the probe time."""
        sent_at = time.monotonic()
        link.ping_nowait()

        def check() -> None:
            if link.last_received < sent_at:
                link.close(reason)

        self._timers.call_later(_PROBE_S, check)

    def _expire_nearby(self, now: float) -> None:
        for key in [k for k, s in self._nearby.items()
                    if s.ttl_s is not None and now >= s.expires_at]:
            del self._nearby[key]

    def _check(self, key: tuple[PeerId, str]) -> None:
        """On the timer thread: probe, expire, or look again later."""
        peer, source = key
        now = time.monotonic()
        with self._lock:
            s = self._paired.get(key)
            if s is None:
                return
            if now < s.probe_at:
                next_check = s.probe_at
            elif now < s.expires_at:
                probe = s.probed_at is None or s.probed_at < s.heard_at
                if probe:
                    s.probed_at = now
                next_check = s.expires_at
            else:
                del self._paired[key]
                next_check = None
        link = self._registry.active_link(peer)
        if next_check is not None:
            if link is not None and now >= s.probe_at and s.probed_at == now:
                link.ping_nowait()
            self._timers.call_later(next_check - now, lambda: self._check(key))
            return
        self._registry.remove_address(peer, source)
        probed_at = s.probed_at
        if (link is not None and probed_at is not None and probed_at >= s.heard_at
                and link.last_received < probed_at):
            link.close(f"not heard by {source} and did not answer a ping")
