"""Request ids and Futures: the edge's half of a pending call.

Ids are unpredictable 64-bit values from the OS's CSPRNG, drawn 512 at a time (one
``getrandom`` per 512 calls instead of one each); each link's
:class:`~peernet._proto.channel.Channel` keeps the pending ones, scoped to that link.
``settle`` completes a caller's Future unless the caller already gave up on it.
"""

from __future__ import annotations

import os
import struct
import threading
from concurrent.futures import Future, InvalidStateError
from typing import Any

__all__ = ["new_request_id", "settle"]

_BATCH = 512
_unpack_batch = struct.Struct(f"<{_BATCH}Q").unpack
#: Ids drawn but not handed out yet. ``list.pop`` is atomic, so each goes to one caller.
_pool: list[int] = []
_refill_lock = threading.Lock()
# A forked child must not hand out the ids its parent will also use.
os.register_at_fork(after_in_child=_pool.clear)


def new_request_id() -> int:
    """A random id in 1..2**64-1 (0 is never used: it reads as "no id" too easily)."""
    while True:
        try:
            return _pool.pop()
        except IndexError:
            with _refill_lock:
                if not _pool:
                    _pool.extend(rid for rid in _unpack_batch(os.urandom(8 * _BATCH)) if rid)


def settle(fut: Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    """Complete ``fut`` unless its caller already gave up on it (cancelled it)."""
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
    except InvalidStateError:
        pass
