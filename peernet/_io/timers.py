"""One timer thread per node: a heap of deadlines and the callbacks due at them.

Callbacks run on the timer thread and must be quick and never block on the network
(heartbeats use a non-blocking write; anything slower hands off to another thread).
A callback that raises is logged and does not stop the timer thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable

__all__ = ["Timers", "TimerHandle"]

log = logging.getLogger(__name__)


class TimerHandle:
    __slots__ = ("deadline", "callback", "cancelled")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        # Lazy deletion: the heap entry stays and is skipped when it comes due.
        self.cancelled = True


class Timers:
    def __init__(self, name: str = "peernet-timers") -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(time.monotonic() + max(0.0, delay_s), callback)
        with self._cond:
            if self._stopped:
                handle.cancelled = True
                return handle
            first = not self._heap or handle.deadline < self._heap[0][0]
            heapq.heappush(self._heap, (handle.deadline, next(self._seq), handle))
            if first:
                self._cond.notify()
        return handle

    def stop(self) -> None:
        """Run no more callbacks and let the thread end (``close`` also waits for it)."""
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()

    def close(self, timeout_s: float) -> None:
        self.stop()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    if self._heap:
                        wait_s = self._heap[0][0] - time.monotonic()
                        if wait_s <= 0:
                            handle = heapq.heappop(self._heap)[2]
                            break
                        self._cond.wait(wait_s)
                    else:
                        self._cond.wait()
            if handle.cancelled:
                continue
            try:
                handle.callback()
            except Exception:  # noqa: BLE001
                log.exception("timer callback failed")
