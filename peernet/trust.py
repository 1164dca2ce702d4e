"""The trust store: the peers this node is paired with.

Only peers in the trust store get past the handshake, so the store is checked on every
handshake (:meth:`TrustStore.is_trusted`, a lock-free O(1) lookup) and changed rarely.
It lives in ``data_dir/trust.json``, a human-readable file::

    {"version": 1, "peers": [{"id": "pn1…", "label": "alice's phone" or null,
                              "added_at": 1763712000.0}, ...]}

Every change rewrites the file atomically (mode 0600). A file that cannot be read back
exactly is an error, never an empty list, and is never overwritten by a load.
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import os
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from . import _fs
from ._proto import strict_json
from .errors import InvalidPeerId, TrustStoreError
from .ids import PeerId

__all__ = ["TrustedPeer", "TrustStore", "TRUST_FILE_NAME", "MAX_LABEL_LENGTH"]

logger = logging.getLogger(__name__)

TRUST_FILE_NAME = "trust.json"
MAX_LABEL_LENGTH = 100
_FORMAT_VERSION = 1
_MAX_FILE_BYTES = 4 * 1024 * 1024
# Bidirectional overrides and isolates could make one label display as another.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})

Event = str  # "paired" or "unpaired"
Subscriber = Callable[[Event, PeerId], None]


@dataclass(frozen=True)
class TrustedPeer:
    """One paired peer: its id, an optional human label, and when it was first paired
    (Unix time, seconds)."""

    peer_id: PeerId
    label: str | None
    added_at: float


def normalize_label(label: str | None, *, strict: bool = True) -> str | None:
    """Return ``label`` stripped, or None for None or an all-blank label.

    Raises ``TypeError`` for a non-string and ``ValueError`` for a label longer than
    100 characters or containing control characters (including line breaks and
    bidirectional overrides, which could make one label look like another). ``strict``
    (every new label) also refuses invisible characters: format characters such as
    zero-width spaces, the soft hyphen, tag characters, and other default-ignorable
    ones, with which two different labels would print the same. (Labels stored by
    older versions are only held to the first rules.)
    """
    if label is None:
        return None
    if not isinstance(label, str):
        raise TypeError(f"label must be a str or None, got {type(label).__name__}")
    label = label.strip()
    if len(label) > MAX_LABEL_LENGTH:
        raise ValueError(f"label is {len(label)} characters long, at most {MAX_LABEL_LENGTH}")
    for i, char in enumerate(label):
        if char in _BIDI_CONTROLS or unicodedata.category(char) in _BAD_CATEGORIES:
            raise ValueError(f"label contains a control character ({ascii(char)})")
        if strict and _invisible(char) and not _in_emoji(label, i):
            raise ValueError(f"label contains an invisible character ({ascii(char)}); "
                             "type it without one")
    return label or None


# Default-ignorable code points that are not Cf (Unicode's DerivedCoreProperties):
# Hangul fillers, the combining grapheme joiner, variation selectors.
_IGNORABLE = frozenset("\u115f\u1160\u3164\uffa0\u034f\u17b4\u17b5") | frozenset(
    chr(c) for c in [*range(0x180B, 0x1810), *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)])


def _invisible(char: str) -> bool:
    return unicodedata.category(char) == "Cf" or char in _IGNORABLE


_EMOJI_GLUE = frozenset("\u200d\ufe0f")  # zero-width joiner, emoji presentation


def _in_emoji(label: str, i: int) -> bool:
    """A joiner or presentation selector inside an emoji sequence (a family, a red
    heart) is part of what is shown, not a hidden difference."""
    if label[i] not in _EMOJI_GLUE or i == 0:
        return False
    before = unicodedata.category(label[i - 1]) == "So" or label[i - 1] == "\ufe0f"
    after = label[i] == "\ufe0f" or (i + 1 < len(label)
                                       and unicodedata.category(label[i + 1]) == "So")
    return before and after


# Look-alikes of Latin letters, after the spirit of Unicode's UTS #39 confusables: the
# common Cyrillic and Greek homoglyphs (and a few Latin ones) of each case, applied to
# the decomposed text (so accents stay, on a Latin base), before and after case folding.
_UPPER_LOOK_ALIKES = str.maketrans({
    # Cyrillic capitals
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P",
    "С": "C", "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԛ": "Q",
    "Ԝ": "W", "Ӏ": "I", "Ү": "Y", "Һ": "H", "Ԁ": "D", "З": "3",
    # Greek capitals
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M",
    "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "Ϲ": "C", "Ϳ": "J",
})
_LOWER_LOOK_ALIKES = str.maketrans({
    # Cyrillic
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "ѕ": "s",
    "і": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ү": "y",
    "к": "k", "п": "n", "г": "r", "ь": "b", "м": "m", "з": "3",
    # Greek
    "α": "a", "ο": "o", "ρ": "p", "ι": "i", "κ": "k", "ν": "v", "υ": "u", "τ": "t",
    "χ": "x", "γ": "y", "ε": "e", "η": "n", "ω": "w", "ϲ": "c", "ϳ": "j", "μ": "u",
    # Latin look-alikes of other Latin letters
    "ı": "i", "ɑ": "a", "ɡ": "g", "ǀ": "l", "ɩ": "i", "ɪ": "i", "ʀ": "r",
})
# Then the letters and digits that many fonts draw alike collapse together: capital I
# (folded to i), l, 1 and | as "l"; 0 and o as "o"; and "rn" reads as "m".
_COLLAPSE = str.maketrans({"i": "l", "1": "l", "|": "l", "0": "o"})


def label_skeleton(label: str) -> str:
    """What a label looks like, for telling look-alikes apart (in the spirit of
    Unicode's UTS #39 skeleton): compatibility-decomposed (NFKD, so full-width and
    styled letters are plain ones), Cyrillic and Greek look-alikes of Latin letters
    mapped to them, case folded, i/l/1/I/| and 0/o collapsed, "rn" as "m", invisible
    characters dropped and runs of white space as one space. Two labels with the same
    skeleton could be mistaken for each other on a screen."""
    visible = "".join(ch for ch in unicodedata.normalize("NFKD", label)
                      if not _invisible(ch))
    text = visible.translate(_UPPER_LOOK_ALIKES)
    text = unicodedata.normalize("NFKD", text.casefold()).translate(_LOWER_LOOK_ALIKES)
    text = " ".join(text.translate(_COLLAPSE).split()).replace("rn", "m")
    return unicodedata.normalize("NFC", text)


# Scripts that one word may mix: Japanese (Han, kana) and Korean (Han, Hangul) writing
# do, each also with Latin (UTS #39's "highly restrictive" sets). Any other mix of
# letters in one word (Latin with Cyrillic or Greek, say) is how look-alikes are made.
_MIXABLE = (frozenset({"Latin", "Han", "Hiragana", "Katakana"}),
            frozenset({"Latin", "Han", "Bopomofo"}),
            frozenset({"Latin", "Han", "Hangul"}))
_SCRIPT_OF_PREFIX = {"CJK": "Han", "IDEOGRAPHIC": "Han", "KATAKANA-HIRAGANA": "Katakana"}


def _script(char: str) -> str | None:
    """The script of a letter, from its Unicode name's first word (LATIN, CYRILLIC,
    GREEK, CJK ...), or None for what every script uses: digits, punctuation, spaces,
    symbols and emoji, combining marks and modifier letters."""
    if unicodedata.category(char) not in ("Lu", "Ll", "Lt", "Lo"):
        return None
    name = unicodedata.name(char, "")
    if not name:
        return None
    prefix = name.split(" ", 1)[0]
    return _SCRIPT_OF_PREFIX.get(prefix, prefix.capitalize())


def mixed_scripts(label: str) -> tuple[str, builtins.list[str]] | None:
    """The first word of ``label`` that mixes letters of scripts that are not written
    together (Latin with Cyrillic, say), with those scripts in order of appearance;
    None if there is none. Words are separated by white space."""
    for word in unicodedata.normalize("NFKC", label).split():
        scripts: dict[str, None] = {}
        for char in word:
            script = _script(char)
            if script is not None:
                scripts[script] = None
        if len(scripts) > 1 and not any(set(scripts) <= allowed for allowed in _MIXABLE):
            return word, builtins.list(scripts)
    return None


class TrustStore:
    """The set of paired peers, persisted in ``data_dir/trust.json``.

    Use :meth:`load` (persistent) or :meth:`in_memory` (nothing on disk). All methods
    are thread-safe. Changes are written to disk before they take effect in memory, so
    a failed write (the ``OSError`` propagates) leaves both unchanged.
    """

    def __init__(
        self,
        path: Path | None,
        peers: builtins.list[TrustedPeer],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Prefer :meth:`load` or :meth:`in_memory`; ``peers`` in insertion order."""
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        # Copy-on-write: readers (the handshake's is_trusted) use the current mapping
        # without the lock; writers build a new one and swap the reference.
        self._peers: MappingProxyType[PeerId, TrustedPeer] = MappingProxyType(
            {entry.peer_id: entry for entry in peers}
        )
        self._subscribers: tuple[_Subscription, ...] = ()

    # --- construction -------------------------------------------------------------

    @classmethod
    def load(
        cls, data_dir: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> TrustStore:
        """Load the store from ``data_dir/trust.json`` (missing = empty; the file is
        created on the first change). ``data_dir`` is created 0700 if missing.

        Raises :class:`~peernet.errors.TrustStoreError` if the file is corrupt, too big,
        a symlink, owned by another user, or writable by group or others. The file is
        left untouched in every case.
        """
        return cls.load_in(_fs.ensure_private_dir(data_dir), clock=clock)

    @classmethod
    def load_in(cls, directory: Path, *, clock: Callable[[], float] = time.time
                ) -> TrustStore:
        """:meth:`load` from a directory the caller has just made sure of with
        ``_fs.ensure_private_dir`` (a Node does, once for all the files it reads)."""
        path = directory / TRUST_FILE_NAME
        _fs.sweep_stale_temps(directory, TRUST_FILE_NAME)
        try:
            data = _fs.read_private_file(
                path,
                max_bytes=_MAX_FILE_BYTES,
                error=TrustStoreError,
                forbidden_mode=0o022,  # not secret, but nobody else may edit it
                what="trust store",
            )
        except FileNotFoundError:
            return cls(path, [], clock)
        return cls(path, _parse_file(data, path), clock)

    @classmethod
    def in_memory(cls, *, clock: Callable[[], float] = time.time) -> TrustStore:
        """An empty store that is never written anywhere (tests, ephemeral nodes)."""
        return cls(None, [], clock)

    @property
    def path(self) -> Path | None:
        """The file this store persists to, or None for an in-memory store."""
        return self._path

    # --- queries ------------------------------------------------------------------

    def is_trusted(self, peer: PeerId) -> bool:
        """True if ``peer`` is paired. The handshake's hot path: no parsing, no lock,
        never raises (anything that is not a paired PeerId is simply not trusted)."""
        try:
            return peer in self._peers
        except TypeError:  # unhashable junk
            return False

    def paired_ids(self) -> frozenset[PeerId]:
        """The ids of every paired peer (a snapshot)."""
        return frozenset(self._peers)

    def get(self, peer: PeerId | str | bytes) -> TrustedPeer | None:
        """The entry for ``peer`` (anything ``PeerId.parse`` accepts), or None."""
        return self._peers.get(PeerId.parse(peer))

    def list(self) -> builtins.list[TrustedPeer]:
        """All paired peers, newest first (equal times keep the order they were added)."""
        # sorted() is stable with reverse=True too, so ties keep insertion order.
        return sorted(self._peers.values(), key=lambda entry: entry.added_at, reverse=True)

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer: object) -> bool:
        try:
            return PeerId.parse(peer) in self._peers  # type: ignore[arg-type]
        except InvalidPeerId:
            return False

    def __repr__(self) -> str:
        where = str(self._path) if self._path is not None else "in memory"
        return f"<TrustStore {where}: {len(self._peers)} peers>"

    # --- changes ------------------------------------------------------------------

    def pair(self, peer: PeerId | str | bytes, label: str | None = None) -> TrustedPeer:
        """Trust ``peer`` (anything ``PeerId.parse`` accepts) and return its entry.

        Idempotent. Pairing an already paired peer keeps its ``added_at``; a new
        non-None ``label`` replaces the old one, ``label=None`` keeps it, and a blank
        label (``""``) clears it. Labels are stripped, at most 100 characters, without
        control or invisible characters, and may neither look like another peer's label
        (the same :func:`label_skeleton`: ``аlice`` with a Cyrillic ``а``, ``aIice``,
        ``ALICE`` next to ``alice``) nor mix scripts within a word (:func:`mixed_scripts`),
        else ``ValueError``. Subscribers hear "paired" only when the peer was not paired
        before.
        """
        peer_id = PeerId.parse(peer)
        new_label = normalize_label(label)
        with self._lock:
            if new_label is not None:
                self._refuse_look_alike(peer_id, new_label)
                _refuse_mixed_scripts(new_label)
            old = self._peers.get(peer_id)
            if old is None:
                entry = TrustedPeer(peer_id, new_label, float(self._clock()))
            elif label is None or new_label == old.label:
                return old
            else:
                entry = TrustedPeer(peer_id, new_label, old.added_at)
            peers = dict(self._peers)
            peers[peer_id] = entry
            self._commit(peers)
        if old is None:
            self._notify("paired", peer_id)
        return entry

    def _refuse_look_alike(self, peer_id: PeerId, label: str) -> None:
        skeleton = label_skeleton(label)
        for other in self._peers.values():
            if (other.peer_id != peer_id and other.label is not None
                    and label_skeleton(other.label) == skeleton):
                if other.label == label:
                    raise ValueError(f"label {label!r} is already the label of "
                                     f"{other.peer_id.short}; labels are unique")
                raise ValueError(
                    f"label {label!r} looks like {other.label!r}, the label of "
                    f"{other.peer_id.short}; choose one that cannot be mistaken for it")

    def unpair(self, peer: PeerId | str | bytes) -> bool:
        """Stop trusting ``peer``; True if it was paired. Subscribers hear "unpaired"."""
        peer_id = PeerId.parse(peer)
        with self._lock:
            if peer_id not in self._peers:
                return False
            peers = dict(self._peers)
            del peers[peer_id]
            self._commit(peers)
        self._notify("unpaired", peer_id)
        return True

    def _commit(self, peers: dict[PeerId, TrustedPeer]) -> None:
        """Persist ``peers``, then make them current. Called with the lock held, so
        writes reach the disk in the order the changes were made."""
        if self._path is not None:
            ordered = sorted(peers.values(), key=lambda entry: entry.added_at, reverse=True)
            _fs.atomic_write(self._path, _render_file(ordered), 0o600)
        self._peers = MappingProxyType(peers)

    # --- change notifications -------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event, peer_id)`` after every change; return an unsubscribe
        function (calling it twice is harmless).

        ``event`` is "paired" or "unpaired". Callbacks run on the changing thread after
        the store's lock is released, so they may use the store; under concurrent
        changes they may arrive out of order, so check :meth:`is_trusted` for the
        current state. A callback that raises is logged and does not affect the change
        or the other callbacks.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        token = _Subscription(callback)
        with self._lock:
            self._subscribers = (*self._subscribers, token)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not token)

        return unsubscribe

    def _notify(self, event: Event, peer_id: PeerId) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event, peer_id)
            except Exception:
                logger.exception(
                    "trust store subscriber %r failed on %s %s",
                    subscriber.callback,
                    event,
                    peer_id.short,
                )


def _refuse_mixed_scripts(label: str) -> None:
    found = mixed_scripts(label)
    if found is not None:
        word, scripts = found
        raise ValueError(
            f"label {label!r} mixes {' and '.join(scripts)} letters in the word {word!r}, "
            "as look-alike names do; write each word in one script")


class _Subscription:
    """A distinct wrapper per subscribe() call, so subscribing one function twice and
    unsubscribing once removes exactly one subscription."""

    __slots__ = ("callback",)

    def __init__(self, callback: Subscriber) -> None:
        self.callback = callback

    def __call__(self, event: Event, peer_id: PeerId) -> None:
        self.callback(event, peer_id)


# --- file format ----------------------------------------------------------------------


def _render_file(entries: builtins.list[TrustedPeer]) -> bytes:
    document = {
        "version": _FORMAT_VERSION,
        "peers": [
            {"id": str(entry.peer_id), "label": entry.label, "added_at": entry.added_at}
            for entry in entries
        ],
    }
    return (json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _parse_file(data: bytes, path: Path) -> builtins.list[TrustedPeer]:
    """Validate the whole file strictly; return its entries in file order."""

    def bad(what: str) -> NoReturn:
        raise TrustStoreError(
            f"trust store {path} is unusable: {what}. The file was left untouched; fix it "
            "or move it away (then pair your peers again)."
        )

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad(f"not UTF-8 text (byte {exc.start})")
    try:
        document = strict_json.loads(text)
    except (ValueError, RecursionError) as exc:
        bad(f"not valid JSON ({exc})")
    if not isinstance(document, dict):
        bad(f"expected a JSON object at the top, found {_json_type(document)}")
    if set(document) != {"version", "peers"}:
        bad(f"expected exactly the keys 'version' and 'peers', found {sorted(document)}")
    version = document["version"]
    if type(version) is not int or version != _FORMAT_VERSION:
        bad(f"unsupported version {version!r} (this peernet reads version {_FORMAT_VERSION})")
    raw_peers = document["peers"]
    if not isinstance(raw_peers, builtins.list):
        bad(f"'peers' must be a list, found {_json_type(raw_peers)}")
    entries: builtins.list[TrustedPeer] = []
    seen: dict[PeerId, int] = {}
    for index, item in enumerate(raw_peers):
        where = f"peers[{index}]"
        if not isinstance(item, dict):
            bad(f"{where} must be an object, found {_json_type(item)}")
        if set(item) != {"id", "label", "added_at"}:
            bad(f"{where} must have exactly the keys 'id', 'label', 'added_at', "
                f"found {sorted(item)}")
        if not isinstance(item["id"], str):
            bad(f"{where}.id must be a string, found {_json_type(item['id'])}")
        try:
            peer_id = PeerId.parse(item["id"])
        except InvalidPeerId as exc:
            bad(f"{where}.id: {exc}")
        if peer_id in seen:
            bad(f"{where} repeats the id {peer_id.short}… of peers[{seen[peer_id]}]")
        seen[peer_id] = index
        label = item["label"]
        try:
            if label is not None and normalize_label(label, strict=False) != label:
                bad(f"{where}.label has surrounding spaces or is empty")
        except (TypeError, ValueError) as exc:
            bad(f"{where}.label: {exc}")
        added_at = item["added_at"]
        if type(added_at) not in (int, float) or not math.isfinite(added_at) or added_at < 0:
            bad(f"{where}.added_at must be a non-negative number, found {added_at!r}")
        entries.append(TrustedPeer(peer_id, label, float(added_at)))
    return entries


def _json_type(value: object) -> str:
    names: dict[type, str] = {
        dict: "an object",
        builtins.list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)
