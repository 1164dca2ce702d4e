"""asyncio facades: ``await node.acall(...)``, ``await node.asend(...)``,
``await node.await_peer(...)``.

No event loop runs inside peernet. ``acall`` awaits the ``concurrent.futures.Future``
of :meth:`Node.call_async` through :func:`asyncio.wrap_future`, so it needs no thread
of its own and works on whatever loop is running: ``asyncio.run``, FastAPI/uvicorn, a
Jupyter kernel. Cancelling the awaiting task cancels that Future, and
:meth:`Node.call_async` drops the call's pending entry when its Future is cancelled, so
a late reply finds nothing to complete and is dropped. ``await_peer`` listens to
:meth:`Node.on_peer_change` and is woken with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING, Any

from .errors import NoSuchHandler
from .labels import PeerLike

if TYPE_CHECKING:
    from .node import Node
    from .peer import PeerEvent

__all__ = ["acall", "asend", "await_peer"]


async def acall(node: Node, peer: PeerLike, name: str, args: Any = None, *,
                timeout: float | None = None) -> Any:
    """See :meth:`Node.acall`."""
    pid = node.resolve(peer)
    started = time.monotonic()
    fut = node.call_async(pid, name, args, timeout=timeout)  # bad input raises here
    try:
        return await asyncio.wrap_future(fut)
    except asyncio.CancelledError:
        fut.cancel()  # wrap_future does this too; say it plainly
        raise
    except NoSuchHandler as exc:
        budget = node.settings.call_timeout if timeout is None else float(timeout)
        left = min(1.0, budget - (time.monotonic() - started))
        await _asuggest(node, exc, pid, name, left)
        raise


async def _asuggest(node: Node, exc: NoSuchHandler, pid: Any, name: str, left: float) -> None:
    """"Did you mean" for ``acall``: the directory fetched without blocking the loop."""
    from .directory import DIRECTORY_HANDLER, parse_directory, suggest  # noqa: PLC0415
    from .handlers import is_reserved  # noqa: PLC0415

    if is_reserved(name) or left < 0.05:
        return
    try:
        handlers = node._directories.get(pid)
        if handlers is None:
            if not node._has_link(pid):
                return
            reply = await asyncio.wrap_future(
                node.call_async(pid, DIRECTORY_HANDLER, None, timeout=left))
            handlers = parse_directory(reply, pid)
            node._directories.put(pid, handlers)
        if name in handlers.names:
            return
        close = suggest(name, handlers.names)
        if close:
            exc.suggestions = close
            exc.args = (f"{exc}; did you mean {' or '.join(map(repr, close))}?",)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 -- best effort, never masks the original error
        pass


async def asend(node: Node, peer: PeerLike, name: str, args: Any = None) -> bool:
    """See :meth:`Node.asend`."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(node.send, peer, name, args))


async def await_peer(node: Node, peer: PeerLike, timeout: float = 10.0) -> bool:
    """See :meth:`Node.await_peer`."""
    pid = node._dial_for_wait(peer)
    if node._has_link(pid):
        return True
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()

    def on_change(event: PeerEvent) -> None:  # on the peernet-events thread
        if event.id == pid and event.status == "online":
            try:
                loop.call_soon_threadsafe(woken.set)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    unsubscribe = node.on_peer_change(on_change)
    deadline = loop.time() + timeout
    try:
        while not node._has_link(pid):
            left = deadline - loop.time()
            if left <= 0:
                return False
            woken.clear()
            try:
                # Re-checked now and then too, in case an event and the link's hand-out
                # cross (subscribing before the first check covers the usual race).
                await asyncio.wait_for(woken.wait(), min(left, 1.0))
            except TimeoutError:
                pass
        return True
    finally:
        unsubscribe()
