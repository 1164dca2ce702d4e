"""The address book: each paired peer's last good address, kept across restarts.

A node that restarts (a script run again, an app redeployed) still knows where its
peers were, so it can redial them by itself instead of failing with "no known address"
until someone calls ``connect()`` again. It lives in ``data_dir/addresses.json``::

    {"version": 1, "peers": {"pn1…": {"address": ["192.168.1.20", 7777],
                                      "last_seen": 1763712000.0}}}

What counts as a good address: one this node dialled and completed a handshake with
(a manual ``connect``, a discovery hint, or a remembered one; or the inviter's address
that a join dialled, whose invite exchange proved the inviter's key there). An address a peer
connected *in* from is not remembered: its listening port may be a one-off (a CLI call
listens on a random port and is gone a second later).

The file follows the trust file's rules (atomic writes, mode 0600, no symlinks, refused
if another user owns it or may write it). Unlike the trust file it is only a cache: a
corrupt one is logged as a warning and replaced on the next write, because losing it
loses nothing that the next handshake does not bring back. Identity never comes from
here: a wrong address only makes a dial fail its handshake.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _fs
from .errors import InvalidPeerId, TrustStoreError
from ._text import check_host
from .ids import PeerId

__all__ = ["ADDRESS_FILE_NAME", "AddressBook", "Remembered"]

log = logging.getLogger(__name__)

ADDRESS_FILE_NAME = "addresses.json"
_FORMAT_VERSION = 1
_MAX_FILE_BYTES = 1024 * 1024
#: A newer last-seen time alone makes the book worth writing only once it moved this far:
#: a script that reaches the same device over and over (a cron job, `peernet call`)
#: would otherwise replace the file on every run. The address is written at once.
LAST_SEEN_RESOLUTION_S = 60.0


class _Corrupt(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Remembered:
    """Where a peer was last reached, and when it was last heard (Unix time or None)."""

    address: tuple[str, int] | None
    last_seen: float | None


class AddressBook:
    """Thread-safe map of peer -> :class:`Remembered`, saved with :meth:`save`.

    Changes only mark the book dirty; :meth:`save` writes it when dirty, so a burst of
    link events costs one write. ``path=None`` keeps it in memory only.
    """

    def __init__(self, path: Path | None, entries: dict[PeerId, Remembered]) -> None:
        self._path = path
        self._entries = entries
        self._saved = dict(entries)  # what the file holds (see _update)
        self._lock = threading.Lock()
        self._dirty = False

    @classmethod
    def load(cls, data_dir: Path) -> AddressBook:
        """Read ``data_dir/addresses.json`` (missing or corrupt: empty, see above).

        Raises :class:`~peernet.TrustStoreError` if the file is a symlink, owned by
        another user or writable by others: someone else may be steering our dials.
        """
        path = data_dir / ADDRESS_FILE_NAME
        _fs.sweep_stale_temps(data_dir, ADDRESS_FILE_NAME)
        try:
            data = _fs.read_private_file(path, max_bytes=_MAX_FILE_BYTES, error=_Corrupt,
                                         insecure_error=TrustStoreError,
                                         forbidden_mode=0o022, what="address book")
        except FileNotFoundError:
            return cls(path, {})
        except _Corrupt as exc:
            log.warning("%s; starting with no remembered addresses", exc)
            return cls(path, {})
        try:
            entries = _parse(json.loads(data))
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("address book %s is corrupt (%s); starting with no remembered "
                        "addresses, it is rewritten on the next change", path, exc)
            return cls(path, {})
        return cls(path, entries)

    def get(self, peer: PeerId) -> Remembered | None:
        return self._entries.get(peer)

    def items(self) -> list[tuple[PeerId, Remembered]]:
        with self._lock:
            return list(self._entries.items())

    def reached(self, peer: PeerId, address: tuple[str, int], now: float) -> None:
        """A dial to ``address`` completed its handshake."""
        self._update(peer, address, now)

    def seen(self, peer: PeerId, when: float) -> None:
        """We last heard from ``peer`` at ``when`` (a link to it just closed)."""
        with self._lock:
            old = self._entries.get(peer)
        self._update(peer, old.address if old else None, when)

    def _update(self, peer: PeerId, address: tuple[str, int] | None, when: float) -> None:
        with self._lock:
            self._entries[peer] = Remembered(address, when)
            saved = self._saved.get(peer)
            if (saved is None or saved.address != address or saved.last_seen is None
                    or abs(when - saved.last_seen) >= LAST_SEEN_RESOLUTION_S):
                self._dirty = True

    def forget(self, peer: PeerId) -> None:
        with self._lock:
            if self._entries.pop(peer, None) is not None:
                self._dirty = True

    def keep_only(self, peers: set[PeerId]) -> None:
        """Drop entries of peers no longer paired (unpaired while we were not running)."""
        with self._lock:
            for peer in [p for p in self._entries if p not in peers]:
                del self._entries[peer]
                self._dirty = True

    def save(self) -> None:
        """Write the book if it changed since the last save. Never raises: a failed
        write is logged, and the book stays dirty so the next save tries again."""
        with self._lock:
            if not self._dirty or self._path is None:
                return
            body = {"version": _FORMAT_VERSION, "peers": {
                str(peer): {"address": list(entry.address) if entry.address else None,
                            "last_seen": entry.last_seen}
                for peer, entry in self._entries.items()}}
            self._dirty = False
            self._saved = dict(self._entries)
            try:
                # A cache: atomic (never torn) but not fsynced, which would cost every
                # one-shot process ~1.4 ms at close(); a power cut may lose an update.
                _fs.atomic_write(self._path, json.dumps(body, indent=1).encode(), 0o600,
                                 durable=False)
            except OSError as exc:
                self._dirty = True
                log.warning("could not save the address book %s: %s", self._path, exc)


def _parse(doc: Any) -> dict[PeerId, Remembered]:
    if not isinstance(doc, dict) or doc.get("version") != _FORMAT_VERSION:
        raise ValueError("unknown format or version")
    peers = doc["peers"]
    if not isinstance(peers, dict):
        raise TypeError("'peers' is not an object")
    entries = {}
    for text, item in peers.items():
        try:
            peer = PeerId.parse(text)
        except InvalidPeerId:
            raise ValueError("a peer id does not parse") from None
        entries[peer] = Remembered(_address(item.get("address")), _time(item.get("last_seen")))
    return entries


def _address(value: Any) -> tuple[str, int] | None:
    if value is None:
        return None
    host, port = value
    if type(port) is not int or not 0 < port <= 0xFFFF:
        raise ValueError("bad address")
    return check_host(host), port


def _time(value: Any) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise ValueError("bad last_seen")
    return float(value)
