"""The address book is a cache: written atomically (never torn) but not fsynced, so a
one-shot process does not pay two fsyncs at close(); the trust list still is."""

from __future__ import annotations

import os

import pytest

from peernet._addresses import AddressBook
from peernet.trust import TrustStore
from tests.helpers import seeded_identity

pytestmark = pytest.mark.timeout(30)

PEER = seeded_identity("address-book-peer").peer_id


def count_fsyncs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_the_address_book_is_replaced_atomically_without_fsync(tmp_path, monkeypatch):
    tmp_path.chmod(0o700)
    book = AddressBook.load(tmp_path)
    book.reached(PEER, ("127.0.0.1", 7777), 1000.0)
    fsyncs = count_fsyncs(monkeypatch)
    book.save()
    assert fsyncs == []
    again = AddressBook.load(tmp_path).get(PEER)
    assert again is not None and again.address == ("127.0.0.1", 7777)
    assert oct((tmp_path / "addresses.json").stat().st_mode & 0o777) == "0o600"
    assert not list(tmp_path.glob(".addresses.json.*.tmp"))


def test_the_trust_list_is_still_fsynced(tmp_path, monkeypatch):
    tmp_path.chmod(0o700)
    store = TrustStore.load(tmp_path)
    fsyncs = count_fsyncs(monkeypatch)
    store.pair(PEER, "pi")
    assert len(fsyncs) >= 2  # the file and its directory


def test_a_newer_last_seen_alone_is_written_only_once_it_moved_a_minute(tmp_path):
    """A script that reaches the same device run after run does not replace the file
    every time: the address is written at once, a newer last-seen time only once it is
    LAST_SEEN_RESOLUTION_S past what the file holds (so it never drifts further)."""
    from peernet._addresses import LAST_SEEN_RESOLUTION_S as RES

    tmp_path.chmod(0o700)
    path = tmp_path / "addresses.json"
    book = AddressBook.load(tmp_path)
    book.reached(PEER, ("127.0.0.1", 7777), 1000.0)
    book.save()
    written = path.read_bytes()

    def saved_last_seen() -> float | None:
        entry = AddressBook.load(tmp_path).get(PEER)
        assert entry is not None
        return entry.last_seen

    for step in range(1, 10):  # many small steps: the file may lag, never by RES
        book = AddressBook.load(tmp_path)  # a new run of the script
        book.reached(PEER, ("127.0.0.1", 7777), 1000.0 + step * RES / 4)
        book.seen(PEER, 1000.0 + step * RES / 4 + 1)
        book.save()
        assert 1000.0 + step * RES / 4 + 1 - saved_last_seen() < RES
    assert path.read_bytes() != written  # rewritten when the lag reached RES
    rewritten = path.read_bytes()
    book = AddressBook.load(tmp_path)
    book.reached(PEER, ("127.0.0.1", 7777), saved_last_seen() + 1)
    book.save()
    assert path.read_bytes() == rewritten  # a second later: not worth a write
    book.reached(PEER, ("127.0.0.1", 8888), saved_last_seen() + 2)
    book.save()
    assert AddressBook.load(tmp_path).get(PEER).address == ("127.0.0.1", 8888)
