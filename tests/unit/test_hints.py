"""The discovery hints' table of refused keys (issue 19's open item): a key the
handshake refused keeps where it said it listens, bounded and for a while, and only
pairing it makes that address count (and dials it)."""

from __future__ import annotations

import pytest

from peernet.discovery import hints as hints_module
from peernet.discovery.hints import KNOCK_TTL_S, MAX_KNOCKS, Hints
from peernet.ids import PeerId

pytestmark = pytest.mark.timeout(10)


class FakeRegistry:
    """What the knock path asks of the registry: candidate addresses by source."""

    def __init__(self) -> None:
        self.candidates: dict[tuple[PeerId, str], tuple[str, int]] = {}

    def set_address(self, peer: PeerId, address: tuple[str, int], source: str) -> bool:
        changed = self.candidates.get((peer, source)) != address
        self.candidates[(peer, source)] = address
        return changed

    def active_link(self, peer: PeerId) -> None:
        return None


def make(trusted: set[PeerId]) -> tuple[Hints, FakeRegistry, list[tuple[PeerId, bool, str]]]:
    registry = FakeRegistry()
    dials: list[tuple[PeerId, bool, str]] = []
    hints = Hints(own_id=PeerId(bytes(32)), registry=registry, timers=None,  # type: ignore[arg-type]
                  is_trusted=trusted.__contains__,
                  dial=lambda peer, changed, source: dials.append((peer, changed, source)))
    return hints, registry, dials


def key(i: int) -> PeerId:
    return PeerId(i.to_bytes(2, "big") * 16)


def test_a_refused_key_is_dialled_where_it_listens_only_once_paired():
    trusted: set[PeerId] = set()
    hints, registry, dials = make(trusted)
    hints.knocked(key(1), ("192.0.2.7", 40001))
    assert dials == [] and registry.candidates == {}  # never before pairing
    assert hints.nearby() == []  # nor listed: it announced nothing
    trusted.add(key(1))
    hints.paired(key(1))
    assert dials == [(key(1), True, "inbound")]
    assert registry.candidates == {(key(1), "inbound"): ("192.0.2.7", 40001)}
    hints.paired(key(1))  # a relabel later: the knock was used up
    assert len(dials) == 1


def test_the_table_is_bounded_and_a_flood_of_keys_only_evicts():
    trusted: set[PeerId] = set()
    hints, _, dials = make(trusted)
    for i in range(10 * MAX_KNOCKS):
        hints.knocked(key(i), ("192.0.2.7", 40000 + i))
    assert len(hints._knocks) == MAX_KNOCKS
    oldest, newest = key(0), key(10 * MAX_KNOCKS - 1)
    trusted.update((oldest, newest))
    hints.paired(oldest)
    assert dials == []  # evicted by the flood: it is dialled when it knocks again
    hints.paired(newest)
    assert dials == [(newest, True, "inbound")]


def test_a_knock_expires(monkeypatch):
    trusted: set[PeerId] = set()
    hints, _, dials = make(trusted)
    now = hints_module.time.monotonic()
    hints.knocked(key(1), ("192.0.2.7", 40001))
    monkeypatch.setattr(hints_module.time, "monotonic", lambda: now + KNOCK_TTL_S + 1)
    trusted.add(key(1))
    hints.paired(key(1))
    assert dials == []
    hints.knocked(key(2), ("192.0.2.7", 40002))  # and expired entries leave the table
    assert list(hints._knocks) == [key(2)]


def test_a_key_paired_while_its_refusal_was_reported_is_dialled():
    """The refusal is reported after the handshake ended; a pairing in between saw
    no knock, so the knock itself counts then."""
    hints, _, dials = make({key(1)})
    hints.knocked(key(1), ("192.0.2.7", 40001))
    assert dials == [(key(1), True, "inbound")] and not hints._knocks
