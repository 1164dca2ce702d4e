"""The reply table of one link: request id -> the Future its caller waits on.

Ids are unpredictable 64-bit values (``secrets``), unique among the link's pending calls,
and scoped to the link: a reply is looked up only in the table of the link it arrived
on, so no peer can complete a call that was made to someone else. When the link ends,
``fail_all`` fails every pending call at once, so no caller waits out its timeout.
"""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import Future, InvalidStateError
from typing import Any, Callable

__all__ = ["ReplyTable", "new_request_id", "settle"]


def new_request_id() -> int:
    """A random id in 1..2**64-1 (0 is never used: it reads as "no id" too easily)."""
    while True:
        rid = secrets.randbits(64)
        if rid:
            return rid


class ReplyTable:
    __slots__ = ("_pending", "_lock", "_closed_with")

    def __init__(self) -> None:
        self._pending: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._closed_with: Callable[[], BaseException] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, request_id: int) -> Future[Any] | None:
        """Register a pending call. None if the id is taken (draw another one).

        Raises the table's closing error if the link has already ended.
        """
        fut: Future[Any] = Future()
        with self._lock:
            if self._closed_with is not None:
                raise self._closed_with()
            if request_id in self._pending:
                return None
            self._pending[request_id] = fut
        return fut

    def pop(self, request_id: int) -> Future[Any] | None:
        """Remove and return the pending call, or None (unknown, late or duplicate)."""
        with self._lock:
            return self._pending.pop(request_id, None)

    def close_if_empty(self, make_error: Callable[[], BaseException]) -> bool:
        """Refuse new calls (``add`` raises ``make_error()``) if none is pending.

        Atomic with ``add``: a link retiring itself uses it to be sure no call slips in
        after it told the peer it has nothing left in flight.
        """
        with self._lock:
            if self._pending:
                return False
            if self._closed_with is None:
                self._closed_with = make_error
            return True

    def fail_all(self, make_error: Callable[[], BaseException]) -> None:
        """Fail every pending call with a fresh ``make_error()``; later ``add`` calls
        raise one too. (One instance per caller: tracebacks must not mix threads.)"""
        with self._lock:
            self._closed_with = make_error
            pending = list(self._pending.values())
            self._pending.clear()
        for fut in pending:
            settle(fut, error=make_error())


def settle(fut: Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    """Complete ``fut`` unless its caller already gave up on it (cancelled it)."""
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
    except InvalidStateError:
        pass
