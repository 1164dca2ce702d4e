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
