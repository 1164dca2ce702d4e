"""The handler directory: which handlers a paired peer may call here, and their doc lines.

Served by the built-in handler :data:`DIRECTORY_HANDLER` (``"peernet.directory"``), a
name in the reserved ``peernet.`` namespace: valid on the wire, refused by ``expose()``.
It is an ordinary handler behind the handshake, so only paired peers reach it, and it
goes through the same handler pool and per-peer limits as any other call.

Wire shape (see guides/protocol.md §5.7): a call of ``"peernet.directory"`` with
``args`` None (other values are ignored, for later versions); the reply is a map::

    {"handlers": [[name, summary], ...], "truncated": bool}

sorted by name, listing only the handlers whose ``authorize`` allows the asking peer
(``authorize`` runs once per handler per listing; one that raises hides its handler).
``summary`` is the first line of the handler's docstring, at most
:data:`MAX_SUMMARY` characters (``""`` without one). At most :data:`MAX_ENTRIES`
entries, and no more than fits in half of ``max_message_size``; ``truncated`` says
whether some were left out. ``Node(directory=False)`` does not serve it: callers get
``no_such_handler``.

A directory is peer-supplied text: :func:`parse_directory` checks its shape, keeps at
most :data:`MAX_ENTRIES` entries with valid handler names, cuts summaries to
:data:`MAX_SUMMARY` characters and escapes terminal control characters in them.
"""

from __future__ import annotations

import difflib
import html
import inspect
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ._proto.messages import is_valid_handler_name
from ._text import escape
from .errors import CallError
from .ids import PeerId

__all__ = ["DIRECTORY_HANDLER", "MAX_ENTRIES", "MAX_SUMMARY", "HandlerInfo", "HandlerList",
           "DirectoryCache", "directory_handler", "parse_directory", "suggest", "summary_of"]

#: The reserved name the directory is served under.
DIRECTORY_HANDLER = "peernet.directory"
#: Most entries a directory lists (callee) or is read with (caller).
MAX_ENTRIES = 256
#: Longest summary line, in characters, either way.
MAX_SUMMARY = 120
#: How long a fetched directory is reused for ``dir(proxy)`` and "did you mean", seconds.
CACHE_TTL_S = 5.0


@dataclass(frozen=True, slots=True)
class HandlerInfo:
    """One handler a peer lets this node call: its name and the first line of its doc."""

    name: str
    #: The first line of the handler's docstring ("" without one), escaped and cut short.
    doc: str

    def __repr__(self) -> str:
        return f"<handler {self.name}: {self.doc!r}>" if self.doc else f"<handler {self.name}>"


class HandlerList(list[HandlerInfo]):
    """What :meth:`Node.handlers_of` returns: a plain list of :class:`HandlerInfo`
    sorted by name (a table in a notebook). ``truncated`` is True when the peer left
    some out (too many to list)."""

    truncated: bool = False

    @property
    def names(self) -> list[str]:
        """Just the handler names."""
        return [info.name for info in self]

    def _repr_html_(self) -> str:
        if not self:
            return "<div>no handlers offered</div>"
        rows = "".join(f"<tr><td><code>{html.escape(h.name)}</code></td>"
                       f"<td>{html.escape(h.doc)}</td></tr>" for h in self)
        more = "<tr><td colspan=2>(more not listed)</td></tr>" if self.truncated else ""
        return f"<table><tr><th>handler</th><th>doc</th></tr>{rows}{more}</table>"


def summary_of(fn: Callable[..., Any]) -> str:
    """The first non-blank line of ``fn``'s docstring, stripped and cut to MAX_SUMMARY."""
    try:
        doc = inspect.getdoc(fn)
    except Exception:  # noqa: BLE001 -- an odd callable's __doc__ must not break listing
        return ""
    if not isinstance(doc, str):
        return ""
    for line in doc.splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= MAX_SUMMARY else line[:MAX_SUMMARY - 1] + "…"
    return ""


def directory_handler(table: Any, max_message_size: int) -> Callable[[PeerId, Any], Any]:
    """The built-in handler serving ``table``'s directory (a :class:`HandlerTable`)."""
    budget = max_message_size // 2

    def directory(peer: PeerId, args: Any) -> dict[str, Any]:
        """The handlers this node lets the asking peer call."""
        entries: list[list[str]] = []
        size = 32
        truncated = False
        for handler in table.snapshot():
            if not table.authorized(handler, peer):
                continue
            doc = summary_of(handler.fn)
            cost = len(handler.name) + len(doc.encode()) + 8
            if len(entries) >= MAX_ENTRIES or size + cost > budget:
                truncated = True
                break
            entries.append([handler.name, doc])
            size += cost
        return {"handlers": entries, "truncated": truncated}

    return directory


def parse_directory(reply: Any, peer: PeerId) -> HandlerList:
    """Check a directory reply from ``peer`` and make its text safe; raises CallError
    for a reply of the wrong shape."""
    def bad(what: str) -> CallError:
        return CallError(f"{peer.short} sent a malformed handler directory ({what})")

    if type(reply) is not dict or type(reply.get("handlers")) is not list:
        raise bad("expected a map with a 'handlers' list")
    out = HandlerList()
    seen: set[str] = set()
    for item in reply["handlers"][:MAX_ENTRIES]:
        if (type(item) is not list or len(item) != 2 or not is_valid_handler_name(item[0])
                or type(item[1]) is not str):
            raise bad("an entry is not [handler name, summary]")
        name, doc = item
        if name in seen:
            continue
        seen.add(name)
        doc = doc.splitlines()[0] if doc else ""
        out.append(HandlerInfo(name, escape(doc[:MAX_SUMMARY])))
    out.sort(key=lambda info: info.name)
    out.truncated = reply.get("truncated") is True or len(reply["handlers"]) > MAX_ENTRIES
    return out


def suggest(name: str, names: list[str]) -> tuple[str, ...]:
    """Up to three names close to ``name`` ("did you mean ...?")."""
    return tuple(difflib.get_close_matches(name, names, n=3, cutoff=0.6))


class DirectoryCache:
    """Directories fetched recently, per peer, for ``dir(proxy)`` and "did you mean".

    Entries live :data:`CACHE_TTL_S` seconds; :meth:`Node.handlers_of` always fetches
    afresh (and refreshes the entry). Thread-safe, bounded by the number of peers asked.
    """

    def __init__(self, ttl_s: float = CACHE_TTL_S, max_peers: int = 1024) -> None:
        self._ttl_s = ttl_s
        self._max_peers = max_peers
        self._entries: dict[PeerId, tuple[float, HandlerList]] = {}
        self._lock = threading.Lock()

    def get(self, peer: PeerId) -> HandlerList | None:
        """The cached directory of ``peer`` if it is fresh, else None."""
        with self._lock:
            entry = self._entries.get(peer)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, peer: PeerId, handlers: HandlerList) -> None:
        with self._lock:
            if len(self._entries) >= self._max_peers:
                self._entries.clear()
            self._entries[peer] = (time.monotonic() + self._ttl_s, handlers)

    def forget(self, peer: PeerId) -> None:
        with self._lock:
            self._entries.pop(peer, None)
