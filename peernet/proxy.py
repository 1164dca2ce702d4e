"""Peer proxies: ``pi = node.peer("pi")``, then ``pi.temperature()``.

A :class:`PeerProxy` is a thin, stateless view of one peer through one node: every
method is a :class:`~peernet.Node` method with the peer filled in. Nothing is fetched
or looked up on the peer until you call something; no attribute of the peer's objects
is ever reached (there are none: only handlers the peer ``expose``\\ d).

**How arguments become ``args``** (:func:`pack_args`; the wire format is the one of
``node.call``, a handler still gets one ``args`` value):

==============================  ===========================================
``pi.temperature()``            ``None``
``pi.temperature("C")``         ``"C"`` (one positional: that value)
``pi.add(25, 17)``              ``[25, 17]`` (several positional: a list)
``pi.move(x=1, y=2)``           ``{"x": 1, "y": 2}`` (keywords only: a dict)
``pi.move(1, y=2)``             ``TypeError`` (both: refused, nothing sent)
==============================  ===========================================

So ``pi.add(25, 17)`` and ``pi.add([25, 17])`` send the same thing. No keyword is
taken by the proxy itself, so a handler may expect any key: the call timeout is the
proxy's (``node.peer("pi", timeout=2.0)`` or ``pi.timeout = 2.0``), or use
``pi.call(name, args, timeout=...)``.

Attribute sugar works for handler names that are Python identifiers and do not start
with ``_``; ``pi["sensor.read"](...)`` works for any handler name. The proxy's own
names (``call``, ``send``, ``status``, ``wait``, ...) win over handlers of the same
name: reach those with ``pi.call("send", ...)``. ``dir(pi)`` adds the handlers the
peer's directory offers this node (cached for 5 s, fetched within 1 s and only over a
live link; it never raises), so Jupyter tab-completes them.
"""

from __future__ import annotations

import html
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ._text import escape
from .directory import HandlerList
from .handlers import check_handler_name
from .ids import PeerId

if TYPE_CHECKING:
    from .node import Node

__all__ = ["PeerProxy", "RemoteHandler", "pack_args"]

_HINT_TIMEOUT_S = 1.0


def pack_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The ``args`` value a proxy call sends for ``f(*args, **kwargs)`` (see the table
    in the module doc). Raises TypeError when both are given."""
    if kwargs:
        if args:
            raise TypeError(
                "a peer handler takes one args value: pass positional arguments "
                "(one value, or several as a list) or keyword arguments (a dict), not "
                f"both; e.g. f({{'a': ..., 'b': ...}}) sends a dict, got {len(args)} "
                f"positional and the keywords {sorted(kwargs)}")
        return dict(kwargs)
    if not args:
        return None
    if len(args) == 1:
        return args[0]
    return list(args)


class RemoteHandler:
    """One handler on one peer, as ``pi.temperature`` returns it: call it to run it.

    ``pi.temperature(...)`` calls and returns the result (or raises);
    ``.send(...)``, ``.call_async(...)`` and ``await .acall(...)`` are the other
    forms. Arguments map to ``args`` as :func:`pack_args` says.
    """

    __slots__ = ("_proxy", "name")

    def __init__(self, proxy: PeerProxy, name: str) -> None:
        self._proxy = proxy
        #: The handler's name.
        self.name = check_handler_name(name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._proxy.call(self.name, pack_args(args, kwargs))

    def send(self, *args: Any, **kwargs: Any) -> bool:
        """Fire and forget (``node.send``): True if handed to a live link."""
        return self._proxy.send(self.name, pack_args(args, kwargs))

    def call_async(self, *args: Any, **kwargs: Any) -> Future[Any]:
        """A ``concurrent.futures.Future`` of the result (``node.call_async``)."""
        return self._proxy.call_async(self.name, pack_args(args, kwargs))

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """``await pi.temperature.acall()`` (``node.acall``)."""
        return await self._proxy.acall(self.name, pack_args(args, kwargs))

    def __repr__(self) -> str:
        return f"<remote handler {self.name!r} on {self._proxy._shown()}>"


class PeerProxy:
    """One peer, seen through one node: ``pi = node.peer("pi")`` (see the module doc).

    The peer is fixed when the proxy is made (a later label change does not move it).
    """

    __slots__ = ("_node", "_id", "timeout")

    def __init__(self, node: Node, peer_id: PeerId, *, timeout: float | None = None) -> None:
        self._node = node
        self._id = peer_id
        #: Call timeout of this proxy's calls, seconds (None: the node's call_timeout).
        self.timeout = timeout

    # -- who ------------------------------------------------------------------------------

    @property
    def id(self) -> PeerId:
        """The peer's id."""
        return self._id

    @property
    def node(self) -> Node:
        """The node this proxy calls through."""
        return self._node

    @property
    def label(self) -> str | None:
        """This node's current label for the peer (None if it has none, or is unpaired)."""
        entry = self._node.trust.get(self._id)
        return entry.label if entry is not None else None

    @property
    def status(self) -> str:
        """"online", "connecting", "offline" or "unknown" (see ``list_peers``);
        "unpaired" once the peer is no longer paired."""
        for peer in self._node.list_peers():
            if peer.id == self._id:
                return peer.status
        return "unpaired"

    @property
    def online(self) -> bool:
        """Whether a live authenticated link to the peer exists."""
        return self._node._has_link(self._id)

    # -- doing ----------------------------------------------------------------------------

    def call(self, name: str, args: Any = None, *, timeout: float | None = None) -> Any:
        """``node.call(peer, name, args)``; ``timeout`` defaults to the proxy's."""
        return self._node.call(self._id, name, args,
                               timeout=self.timeout if timeout is None else timeout)

    def call_async(self, name: str, args: Any = None, *,
                   timeout: float | None = None) -> Future[Any]:
        """``node.call_async(peer, name, args)``."""
        return self._node.call_async(self._id, name, args,
                                     timeout=self.timeout if timeout is None else timeout)

    async def acall(self, name: str, args: Any = None, *, timeout: float | None = None) -> Any:
        """``await node.acall(peer, name, args)``."""
        return await self._node.acall(self._id, name, args,
                                      timeout=self.timeout if timeout is None else timeout)

    def send(self, name: str, args: Any = None) -> bool:
        """``node.send(peer, name, args)``: True if handed to a live link."""
        return self._node.send(self._id, name, args)

    async def asend(self, name: str, args: Any = None) -> bool:
        """``await node.asend(peer, name, args)``."""
        return await self._node.asend(self._id, name, args)

    def wait(self, timeout: float = 10.0) -> bool:
        """``node.wait_for_peer(peer, timeout)``: whether a live link exists."""
        return self._node.wait_for_peer(self._id, timeout)

    async def await_online(self, timeout: float = 10.0) -> bool:
        """``await node.await_peer(peer, timeout)``."""
        return await self._node.await_peer(self._id, timeout)

    def handlers(self, *, timeout: float | None = None) -> HandlerList:
        """``node.handlers_of(peer)``: what the peer lets this node call, fetched now."""
        return self._node.handlers_of(self._id,
                                      timeout=self.timeout if timeout is None else timeout)

    # -- sugar ----------------------------------------------------------------------------

    def __getattr__(self, name: str) -> RemoteHandler:
        # Only reached for names the class does not define. Underscore names are never
        # handlers (and are what IPython, pickle and copy probe for).
        if name.startswith("_") or not name.isidentifier():
            raise AttributeError(name)
        return RemoteHandler(self, name)

    def __getitem__(self, name: str) -> RemoteHandler:
        """``pi["sensor.read"]``: any handler name, also ones that are not identifiers."""
        return RemoteHandler(self, name)

    def __dir__(self) -> list[str]:
        own = set(super().__dir__())
        try:
            handlers = self._node._directory_for_hints(self._id, _HINT_TIMEOUT_S)
        except Exception:  # noqa: BLE001 -- dir() must never raise
            handlers = None
        names = {h.name for h in handlers or () if h.name.isidentifier()
                 and not h.name.startswith("_")}
        return sorted(own | names)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PeerProxy) and other._node is self._node
                and other._id == self._id)

    def __hash__(self) -> int:
        return hash((id(self._node), self._id))

    def _shown(self) -> str:
        label = self.label
        return f"{escape(label)!r} ({self._id.short}…)" if label else f"{self._id.short}…"

    def __repr__(self) -> str:
        return f"<peer {self._shown()} {self.status}>"

    def _repr_html_(self) -> str:
        label = self.label
        try:
            handlers = self._node._directory_for_hints(self._id, _HINT_TIMEOUT_S)
        except Exception:  # noqa: BLE001
            handlers = None
        offered = ("" if handlers is None else
                   "<br>handlers: " + (", ".join(
                       f"<code>{html.escape(h.name)}</code>"
                       + (f" ({html.escape(h.doc)})" if h.doc else "") for h in handlers)
                       or "none offered to this node"))
        return (f"<div><b>peer</b> {html.escape(label or '')} "
                f"<code>{html.escape(str(self._id))}</code> ({html.escape(self.status)})"
                f"{offered}</div>")
