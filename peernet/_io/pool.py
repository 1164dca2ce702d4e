"""The handler pool: where peers' calls and sends run, off the connection threads.

Bounded twice: at most ``max_workers`` threads (started on demand), and at most
``max_calls_per_peer`` calls from one peer queued or running at once -- past that a
call is refused as busy at once, so one peer cannot starve the others. Sends from one
peer run one after another, in the order they arrived (a per-peer queue drained by one
task at a time; a send the reader runs itself holds the queue, see :meth:`begin_send`),
and at most ``max_sends_per_peer`` of them wait. When that queue is
full the reader waits a little for room (``wait_s``), which stops it reading and lets
TCP push back on the sender; only a handler too slow to make room in that time gets
sends dropped, which is what fire-and-forget promises.

Worker threads are daemons so a forgotten node never holds up interpreter exit.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Any, Callable

from ..ids import PeerId

__all__ = ["HandlerPool"]

log = logging.getLogger(__name__)

Task = Callable[[], None]
_STOP = object()


class HandlerPool:
    def __init__(
        self,
        *,
        max_workers: int,
        max_calls_per_peer: int,
        max_sends_per_peer: int,
        max_send_bytes_per_peer: int | None = None,
        name: str = "peernet-handler",
    ) -> None:
        if max_workers < 1 or max_calls_per_peer < 1 or max_sends_per_peer < 1:
            raise ValueError("handler pool limits must be at least 1")
        self._max_workers = max_workers
        self._max_calls_per_peer = max_calls_per_peer
        self._max_sends_per_peer = max_sends_per_peer
        self._max_send_bytes = max_send_bytes_per_peer
        self._name = name
        self._tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._queued = 0  # tasks submitted but not yet taken by a worker
        self._calls: dict[PeerId, int] = {}  # queued or running, per peer
        # One peer's calls occupy at most half the workers; the rest of them wait in
        # line, so one busy peer can never starve the others.
        self._max_running_per_peer = max(1, max_workers // 2)
        self._running: dict[PeerId, int] = {}
        self._waiting: dict[PeerId, collections.deque[Task]] = {}
        self._sends: dict[PeerId, collections.deque[tuple[Task, int]]] = {}
        self._send_bytes: dict[PeerId, int] = {}  # bytes of sends waiting, per peer
        self._room = threading.Condition(self._lock)  # a send left a queue, or closing
        self._room_waiters = 0  # readers waiting on _room: draining notifies only then
        # Peers whose handler did not make room within wait_s: their sends are dropped
        # without waiting until their queue is empty again.
        self._stalled: set[PeerId] = set()
        self._closed = False

    def submit_call(self, peer: PeerId, task: Task) -> bool:
        """Queue one call from ``peer``; False (nothing queued) if the peer is at its cap."""
        with self._lock:
            if not self._begin_call_locked(peer):
                return False
            running = self._running.get(peer, 0)
            if running < self._max_running_per_peer:
                self._running[peer] = running + 1
                self._submit_locked(lambda: self._run_call(peer, task))
            else:
                self._waiting.setdefault(peer, collections.deque()).append(task)
        return True

    def begin_call(self, peer: PeerId) -> bool:
        """Count a call from ``peer`` that the caller runs itself (see Link.run_inline);
        False if the peer is at its cap. Pair with :meth:`end_call`."""
        with self._lock:
            return self._begin_call_locked(peer)

    def end_call(self, peer: PeerId) -> None:
        with self._lock:
            left = self._calls[peer] - 1
            if left:
                self._calls[peer] = left
            else:
                del self._calls[peer]

    def _begin_call_locked(self, peer: PeerId) -> bool:
        running = self._calls.get(peer, 0)
        if self._closed or running >= self._max_calls_per_peer:
            return False
        self._calls[peer] = running + 1
        return True

    def begin_send(self, peer: PeerId) -> bool:
        """Claim ``peer``'s send queue for a send the caller runs itself (see
        Link.run_inline): True if none of its sends is waiting or running. Sends
        submitted meanwhile queue behind it. Pair with :meth:`end_send`."""
        claim: collections.deque[tuple[Task, int]] = collections.deque()
        with self._lock:  # one dict operation each way: this runs once per send
            return not self._closed and self._sends.setdefault(peer, claim) is claim

    def end_send(self, peer: PeerId) -> None:
        """The send claimed by :meth:`begin_send` is done: run what queued behind it."""
        with self._lock:
            backlog = self._sends.pop(peer)
            if backlog:  # sends came in meanwhile (the reader handed off): drain them
                self._sends[peer] = backlog
                self._submit_locked(lambda: self._drain_sends(peer))
            # else nothing was submitted while it ran, so nothing counts bytes or stalls

    def submit_send(self, peer: PeerId, task: Task, *, size: int = 0,
                    wait_s: float = 0.0) -> bool:
        """Queue one send (``size`` bytes) from ``peer`` behind its earlier sends. If
        too many, or too many bytes, are already waiting, wait up to ``wait_s`` for
        room; False if there was none (the send is dropped)."""
        deadline: float | None = None
        with self._lock:
            while True:
                if self._closed:
                    return False
                waiting = self._send_bytes.get(peer, 0)
                backlog = self._sends.get(peer)
                full = (backlog is not None and len(backlog) >= self._max_sends_per_peer) \
                    or (self._max_send_bytes is not None and waiting
                        and waiting + size > self._max_send_bytes)
                if not full:
                    break
                if peer in self._stalled:
                    return False
                now = time.monotonic()
                if deadline is None:
                    deadline = now + wait_s
                if now >= deadline:
                    self._stalled.add(peer)
                    return False
                self._room_waiters += 1
                try:
                    self._room.wait(deadline - now)
                finally:
                    self._room_waiters -= 1
            if backlog is not None:  # a drain task, or a send run inline, is under way
                backlog.append((task, size))
            else:
                self._sends[peer] = collections.deque(((task, size),))
                self._submit_locked(lambda: self._drain_sends(peer))
            self._send_bytes[peer] = waiting + size
        return True

    def calls_in_progress(self, peer: PeerId) -> int:
        return self._calls.get(peer, 0)

    def close(self, timeout_s: float) -> None:
        """Stop taking work, let running tasks finish, join the workers (bounded)."""
        with self._lock:
            if self._closed:
                threads: list[threading.Thread] = []
            else:
                self._closed = True
                self._room.notify_all()
                threads = list(self._threads)
                for _ in threads:
                    self._tasks.put(_STOP)
        me = threading.current_thread()
        for t in threads:
            if t is not me:  # close() may run inside a handler
                t.join(timeout_s)

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)

    # -- internals -------------------------------------------------------------------

    def _submit_locked(self, task: Task) -> None:
        self._queued += 1
        if self._idle < self._queued and len(self._threads) < self._max_workers:
            t = threading.Thread(
                target=self._worker, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(t)
            self._idle += 1  # counted idle until it takes its first task
            t.start()
        self._tasks.put(task)

    def _run_call(self, peer: PeerId, task: Task) -> None:
        while True:
            try:
                task()
            finally:
                self.end_call(peer)
            with self._lock:  # this worker takes the peer's next waiting call, if any
                waiting = self._waiting.get(peer)
                if waiting and not self._closed:
                    task = waiting.popleft()
                    if not waiting:
                        del self._waiting[peer]
                    continue
                left = self._running[peer] - 1
                if left:
                    self._running[peer] = left
                else:
                    del self._running[peer]
                return

    def _drain_sends(self, peer: PeerId) -> None:
        while True:
            with self._lock:
                backlog = self._sends[peer]
                if not backlog:
                    del self._sends[peer]
                    self._send_bytes.pop(peer, None)
                    self._stalled.discard(peer)
                    return
                task, size = backlog.popleft()
                self._send_bytes[peer] -= size
                if self._room_waiters:
                    self._room.notify_all()
            try:
                task()
            except BaseException:  # noqa: BLE001 -- one bad send must not stall the rest
                log.exception("send task failed")

    def _worker(self) -> None:
        while True:
            task = self._tasks.get()
            if task is _STOP:
                return
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            try:
                task()
            except BaseException:  # noqa: BLE001 -- tasks handle their own errors; belt and braces
                log.exception("handler task failed")
            finally:
                with self._lock:
                    self._idle += 1
