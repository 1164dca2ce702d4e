"""Request ids and Futures: the edge's half of a pending call.

Ids are unpredictable 64-bit values (``secrets``); each link's
:class:`~peernet._proto.channel.Channel` keeps the pending ones, scoped to that link.
``settle`` completes a caller's Future unless the caller already gave up on it.
"""

from __future__ import annotations

import secrets
from concurrent.futures import Future, InvalidStateError
from typing import Any

__all__ = ["new_request_id", "settle"]


def new_request_id() -> int:
    """A random id in 1..2**64-1 (0 is never used: it reads as "no id" too easily)."""
    while True:
        rid = secrets.randbits(64)
        if rid:
            return rid


def settle(fut: Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    """Complete ``fut`` unless its caller already gave up on it (cancelled it)."""
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
    except InvalidStateError:
        pass
