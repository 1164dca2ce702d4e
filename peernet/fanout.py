"""``node.call_many``: one call to many peers, in parallel, bounded, as Futures.

Each call is a :meth:`Node.call_async` Future (a pending entry on a live link, settled
by the link's reader thread or the timer thread), so a fan-out to 500 peers holds no
500 threads. At most ``max_concurrency`` calls are in flight; the caller's thread
starts more as earlier ones finish. One deadline bounds the whole fan-out: every call
is started with what is left of it, so a silent peer costs the others nothing.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ._proto.messages import Call, encode_for_link
from .errors import CallTimeout, PeerNetError
from .handlers import check_handler_name
from .ids import PeerId
from .labels import PeerLike
from .settings import check_seconds

if TYPE_CHECKING:
    from .node import Node

__all__ = ["call_many", "call_many_iter"]

_GRACE_S = 0.5  # past the deadline, a Future the timer somehow missed is given up


def _targets(node: Node, peers: Iterable[PeerLike] | None) -> list[PeerId]:
    if peers is None:
        return [p.id for p in node.list_peers() if p.online]
    if isinstance(peers, (str, bytes, PeerId)):
        raise TypeError("call_many takes a list of peers (or None for every online "
                        f"paired peer), not one {type(peers).__name__}; "
                        "for one peer use node.call()")
    seen: dict[PeerId, None] = {}
    for peer in peers:
        seen.setdefault(node.resolve(peer), None)  # a bad label raises before any call
    return list(seen)


def call_many_iter(node: Node, peers: Iterable[PeerLike] | None, name: str, args: Any = None,
                   *, timeout: float | None = None, max_concurrency: int = 32
                   ) -> Iterator[tuple[PeerId, Any]]:
    """See :meth:`Node.call_many_iter`. Input errors raise at the call, not when
    iteration starts."""
    check_handler_name(name)
    if type(max_concurrency) is not int or max_concurrency < 1:
        raise ValueError(f"max_concurrency must be a positive int, got {max_concurrency!r}")
    timeout_s = (node.settings.call_timeout if timeout is None
                 else check_seconds("timeout", timeout))
    payload = encode_for_link(Call(1, name, args))  # EncodeError before anything is sent
    node._check_size(payload)
    targets = _targets(node, peers)
    return _run(node, targets, name, args, time.monotonic() + timeout_s, timeout_s,
                max_concurrency)


def _run(node: Node, targets: list[PeerId], name: str, args: Any, deadline: float,
         timeout_s: float, limit: int) -> Iterator[tuple[PeerId, Any]]:
    queue = deque(targets)
    inflight: dict[Future[Any], PeerId] = {}

    def timed_out(pid: PeerId) -> CallTimeout:
        return CallTimeout(f"{pid.short} did not answer {name!r} within {timeout_s:g} s")

    try:
        while queue or inflight:
            while queue and len(inflight) < limit:
                pid = queue.popleft()
                left = deadline - time.monotonic()
                if left <= 0:
                    yield pid, timed_out(pid)
                    continue
                try:
                    fut = node.call_async(pid, name, args, timeout=left)
                except PeerNetError as exc:  # NotPaired, NodeClosed: that peer's result
                    yield pid, exc
                    continue
                inflight[fut] = pid
            if not inflight:
                continue
            left = deadline + _GRACE_S - time.monotonic()
            done, _ = wait(list(inflight), timeout=max(0.0, left), return_when=FIRST_COMPLETED)
            if not done and left <= 0:
                for fut, pid in list(inflight.items()):
                    fut.cancel()
                    del inflight[fut]
                    yield pid, timed_out(pid)
            for fut in done:
                pid = inflight.pop(fut)
                if fut.cancelled():
                    yield pid, timed_out(pid)
                    continue
                error = fut.exception()
                if isinstance(error, CallTimeout):  # say the fan-out's timeout, not what was left
                    error = timed_out(pid)
                yield pid, error if error is not None else fut.result()
    finally:
        for fut in inflight:  # the caller left early: abandon what is still pending
            fut.cancel()


def call_many(node: Node, peers: Iterable[PeerLike] | None, name: str, args: Any = None,
              *, timeout: float | None = None, max_concurrency: int = 32
              ) -> dict[PeerId, Any]:
    """See :meth:`Node.call_many`. The dict keeps the order of the targets."""
    check_handler_name(name)
    targets = _targets(node, peers)  # resolved once: ``peers`` may be a generator
    got = dict(call_many_iter(node, targets, name, args, timeout=timeout,
                              max_concurrency=max_concurrency))
    return {pid: got[pid] for pid in targets}
