"""The handler scheduler: the one owner of where peers' calls and sends run.

A call or send runs either *inline*, on the link's reading thread that brought it (no
thread hand-off: the fast path), or on one of the scheduler's worker threads. Both
count the same way, so the limits hold however a peer paces its messages:

- **Running slots.** At most ``max_workers`` handlers run at once, inline ones
  included (a reader must :meth:`claim_call` / :meth:`claim_send` a slot first, or
  queue the work), and one peer's calls hold at most half of them
  (``max(1, max_workers // 2)``), so one busy peer never starves the others.
- **Calls per peer.** At most ``max_calls_per_peer`` calls from one peer are queued or
  running; past that a call is refused as busy at once.
- **Sends** from one peer run one at a time, in the order they arrived, inline or not;
  at most ``max_sends_per_peer`` wait. When the queue is full the reader waits for room
  (``wait_s``), which stops it reading and lets TCP push back on the sender; a handler
  too slow to make room in that time gets the peer's sends dropped (fire-and-forget).
- **Memory.** Work on a worker is charged what it holds against the peer's
  ``max_queued_bytes_per_peer``, from the moment it is queued until its handler
  returns. The caller queues a task that keeps the message *encoded* (decoded only
  when it runs), and charges it what it holds once decoded: for a small message
  (decoded on arrival) the larger of its encoded size and :func:`held_bytes`, for a
  large one (over 4 KiB, never decoded on arrival) the bound ``cbor.check`` took of
  what decoding it will hold; plus a fixed overhead. A running job stays charged: it
  holds its decoded arguments. Only small messages run inline (uncharged: at most a
  few hundred KiB decoded each). So a peer's budget bounds what its queued and
  running work holds, however its data inflates when decoded (50 KB of empty maps
  decode to ~3.5 MB).
- **Revocation.** Every claim and every job names the link it came on, and the
  scheduler's lock decides: a claim (inline) or a job (on a worker) whose link has
  ended (``work_dropped``: not a link that retired in favour of another link to the
  same peer, whose work still runs), or whose peer was revoked (:meth:`revoke`), is
  refused under that lock, where the worker takes the job, not after. :meth:`revoke` (``unpair()``, before it returns)
  marks the peer and drops all its queued work under the same lock, so no handler,
  inline or queued, call or send, starts for a peer once ``unpair()`` returned or once
  its link is known to have ended (:meth:`drop` then frees the dead link's queue).
  A new link of a re-paired peer re-admits it (:meth:`admit`).

Worker threads start on demand and are daemons, so a forgotten node never holds up
interpreter exit.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from ..ids import PeerId

__all__ = ["JOB_OVERHEAD_BYTES", "Scheduler", "held_bytes"]

log = logging.getLogger(__name__)

Task = Callable[[], None]
#: What a queued job costs beyond its message bytes (the job, its closure, a deque slot).
JOB_OVERHEAD_BYTES = 512


def held_bytes(value: object, limit: int) -> int:
    """About how much memory ``value`` (decoded CBOR data) holds, counting each object
    once per reference (so shared ones count too often: an upper estimate); stops
    counting once past ``limit``. Bounded by the decoder's item limit (50,000)."""
    total = 0
    stack = [value]
    size = sys.getsizeof
    while stack:
        v = stack.pop()
        total += size(v)
        t = type(v)
        if t is list:
            stack.extend(v)  # type: ignore[arg-type]
        elif t is dict:
            stack.extend(v)  # type: ignore[arg-type]
            stack.extend(v.values())  # type: ignore[attr-defined]
        if total > limit:
            break
    return total


class Source(Protocol):
    """Where a job came from (a link)."""

    @property
    def work_dropped(self) -> bool:
        """True once the work it brought must not start (the link ended; not when it
        handed its peer over to another link)."""
        ...


class _Load:
    """One peer's share of the scheduler; every field is guarded by the scheduler's lock.
    (One record per peer, found with one dict lookup: a PeerId hashes in Python.)"""

    __slots__ = ("calls", "started", "waiting", "sending", "lane", "bytes", "stalled")

    def __init__(self) -> None:
        self.calls = 0  # queued, ready or running
        self.started = 0  # ready or running
        self.waiting: collections.deque[_Job] = collections.deque()  # calls over the share
        self.sending = False  # one of its sends is ready or running
        self.lane: collections.deque[_Job] = collections.deque()  # sends queued behind it
        self.bytes = 0  # cost of queued and running work
        self.stalled = False  # sends dropped without waiting, until the lane drains

    def idle(self) -> bool:
        return not self.calls and not self.sending and not self.bytes


@dataclass(slots=True, eq=False)
class _Job:
    peer: PeerId
    load: _Load
    source: Source
    task: Task
    cost: int
    is_call: bool


class Scheduler:
    def __init__(
        self,
        *,
        max_workers: int,
        max_calls_per_peer: int,
        max_sends_per_peer: int,
        max_queued_bytes_per_peer: int,
        is_trusted: Callable[[PeerId], bool],
        name: str = "peernet-handler",
    ) -> None:
        if min(max_workers, max_calls_per_peer, max_sends_per_peer) < 1:
            raise ValueError("handler limits must be at least 1")
        self._max_workers = max_workers
        self._max_calls = max_calls_per_peer
        self._max_sends = max_sends_per_peer
        self._max_bytes = max_queued_bytes_per_peer
        self._share = max(1, max_workers // 2)  # running calls of one peer
        self._is_trusted = is_trusted
        self._name = name
        self._lock = threading.Lock()
        # Idle workers, most recently idle last, each waiting on its own condition (of
        # the one lock): a job wakes the warmest one (see _take_locked).
        self._idle_workers: list[threading.Condition] = []
        self._room = threading.Condition(self._lock)  # a send left a queue, or closing
        self._room_waiters = 0
        self._running = 0  # handlers running now, inline or on workers
        self._ready: collections.deque[_Job] = collections.deque()  # next for a slot
        # Peers that have (or had) work here. A record goes when its peer is revoked
        # idle; else there is one per paired peer that ever sent work, at most.
        self._peers: dict[PeerId, _Load] = {}
        self._revoked: set[PeerId] = set()  # unpaired: nothing of theirs starts
        self._threads: list[threading.Thread] = []
        self._closed = False

    def _load_locked(self, peer: PeerId) -> _Load:
        load = self._peers.get(peer)
        if load is None:
            load = self._peers[peer] = _Load()
        return load

    # -- calls -------------------------------------------------------------------------

    def claim_call(self, peer: PeerId, source: Source) -> bool:
        """Take a running slot for a call the caller runs itself (inline); False if
        none is free (queue it with :meth:`submit_call`), or if ``source`` ended or the
        peer was revoked (drop it). Pair with :meth:`release_call`."""
        with self._lock:
            if (self._closed or self._running >= self._max_workers or source.work_dropped
                    or (self._revoked and peer in self._revoked)):
                return False
            load = self._peers.get(peer) or self._load_locked(peer)
            if load.calls >= self._max_calls or load.started >= self._share:
                return False
            self._running += 1
            load.calls += 1
            load.started += 1
            return True

    def release_call(self, peer: PeerId) -> None:
        with self._lock:
            self._running -= 1
            self._call_done_locked(self._peers[peer])
            if self._ready:
                self._dispatch_locked()

    def submit_call(self, peer: PeerId, source: Source, task: Task, *, cost: int) -> bool:
        """Queue a call; False (nothing queued: answer busy) if the peer has its maximum
        of calls in progress or of queued bytes."""
        with self._lock:
            if self._closed or source.work_dropped or (self._revoked and peer in self._revoked):
                return False
            load = self._load_locked(peer)
            if load.calls >= self._max_calls or not self._charge_locked(load, cost):
                return False
            job = _Job(peer, load, source, task, cost, True)
            load.calls += 1
            if load.started < self._share:
                load.started += 1
                self._ready.append(job)
                self._dispatch_locked()
            else:
                load.waiting.append(job)
        return True

    def calls_in_progress(self, peer: PeerId) -> int:
        load = self._peers.get(peer)
        return load.calls if load is not None else 0

    # -- sends -------------------------------------------------------------------------

    def claim_send(self, peer: PeerId, source: Source) -> bool:
        """Take a running slot and the peer's send lane for a send the caller runs itself:
        True only if none of the peer's sends is queued or running (order) and a slot is
        free, and ``source`` is open and the peer not revoked. Sends submitted meanwhile queue
        behind it. Pair with :meth:`release_send`."""
        with self._lock:
            if (self._closed or self._running >= self._max_workers or source.work_dropped
                    or (self._revoked and peer in self._revoked)):
                return False
            load = self._peers.get(peer) or self._load_locked(peer)
            if load.sending:
                return False
            load.sending = True
            self._running += 1
            return True

    def may_start(self, peer: PeerId, source: Source) -> bool:
        """Whether one more send may start under a :meth:`claim_send` its caller still
        holds (a reader running the sends of one read in a row on one claim): not if
        ``source`` ended, the peer was revoked or the scheduler closed. No lock: each
        is one flag or set member, and :meth:`revoke` marks the peer before it returns,
        so nothing that checks after that starts; a claim decides no more than that."""
        return not (self._closed or source.work_dropped
                    or (self._revoked and peer in self._revoked))

    def release_send(self, peer: PeerId) -> None:
        with self._lock:
            self._running -= 1
            self._send_done_locked(self._peers[peer])
            if self._ready:
                self._dispatch_locked()

    def submit_send(self, peer: PeerId, source: Source, task: Task, *, cost: int,
                    wait_s: float = 0.0) -> bool:
        """Queue a send behind the peer's earlier ones. If its queue is full (count or
        bytes), wait up to ``wait_s`` for room; False if there was none (dropped)."""
        deadline: float | None = None
        with self._lock:
            while True:
                if self._closed or source.work_dropped or peer in self._revoked:
                    return False
                load = self._load_locked(peer)
                if (not load.sending or len(load.lane) < self._max_sends) and \
                        self._charge_locked(load, cost):
                    break
                if load.stalled:
                    return False
                now = time.monotonic()
                if deadline is None:
                    deadline = now + wait_s
                if now >= deadline:
                    load.stalled = True
                    return False
                self._room_waiters += 1
                try:
                    self._room.wait(deadline - now)
                finally:
                    self._room_waiters -= 1
            job = _Job(peer, load, source, task, cost, False)
            if load.sending:
                load.lane.append(job)
            else:  # the lane is free: this send is next
                load.sending = True
                self._ready.append(job)
                self._dispatch_locked()
        return True

    # -- revocation and shutdown ------------------------------------------------------

    def drop(self, source: Source) -> int:
        """Forget the queued work that came on ``source`` (a link that ended), unless it
        is not :attr:`~Source.work_dropped` (handed over: it still runs). Jobs already
        ready for a worker are skipped when they come up. Returns how many went."""
        with self._lock:
            if not source.work_dropped:
                return 0
            return self._drop_locked(self._peers.values(), lambda job: job.source is source)

    def revoke(self, peer: PeerId) -> int:
        """``peer`` was unpaired: from now on none of its work starts (claims and
        submissions are refused, jobs ready for a worker are skipped), and its queued
        work goes now. Returns how many queued jobs went."""
        with self._lock:
            self._revoked.add(peer)
            load = self._peers.get(peer)
            if load is None:
                return 0
            dropped = self._drop_locked([load], lambda job: True)
            if load.idle():
                del self._peers[peer]
            return dropped

    def admit(self, peer: PeerId) -> None:
        """``peer`` is trusted again (a new link of it was established)."""
        with self._lock:
            self._revoked.discard(peer)

    def _drop_locked(self, loads: Iterable[_Load], doomed: Callable[[_Job], bool]) -> int:
        dropped = 0
        for load in loads:
            for queue in (load.waiting, load.lane):
                if not queue:
                    continue
                keep = [job for job in queue if not doomed(job)]
                for job in queue:
                    if doomed(job):
                        dropped += 1
                        load.bytes -= job.cost
                        if job.is_call:
                            load.calls -= 1
                queue.clear()
                queue.extend(keep)
        if dropped and self._room_waiters:
            self._room.notify_all()
        return dropped

    def close(self, timeout_s: float) -> None:
        """Stop taking work, let running handlers finish, join the workers (bounded)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._ready.clear()
            for cond in self._idle_workers:
                cond.notify()
            self._room.notify_all()
            threads = list(self._threads)
        me = threading.current_thread()
        deadline = time.monotonic() + timeout_s
        for t in threads:
            if t is not me:  # close() may run inside a handler
                t.join(max(0.0, deadline - time.monotonic()))

    def start_workers(self) -> None:
        """Start every worker now instead of on demand (a steady thread count)."""
        with self._lock:
            while len(self._threads) < self._max_workers and not self._closed:
                self._start_worker_locked()

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)

    @property
    def running(self) -> int:
        """Handlers running now, inline or on workers."""
        return self._running

    def queued(self) -> int:
        """Jobs that have not started: ready for a worker, or waiting behind their
        peer's share of the slots or its earlier sends."""
        with self._lock:
            return len(self._ready) + sum(len(load.waiting) + len(load.lane)
                                          for load in self._peers.values())

    # -- internals (under the lock) ----------------------------------------------------

    def _charge_locked(self, load: _Load, cost: int) -> bool:
        queued = load.bytes
        if queued and queued + cost > self._max_bytes:  # one job always fits
            return False
        load.bytes = queued + cost
        return True

    def _call_done_locked(self, load: _Load) -> None:
        """One of a peer's started calls finished: start its next waiting one."""
        load.calls -= 1
        if load.waiting and not self._closed:
            self._ready.append(load.waiting.popleft())
            return  # its started count carries over to the next call
        load.started -= 1

    def _send_done_locked(self, load: _Load) -> None:
        """A peer's current send finished: its next one is ready, or the lane is free."""
        if load.lane and not self._closed:
            self._ready.append(load.lane.popleft())
        else:
            load.sending = False
            load.stalled = False
        if self._room_waiters:
            self._room.notify_all()

    def _dispatch_locked(self) -> None:
        """Make sure a worker takes the ready jobs that have a free slot."""
        if not self._ready or self._running >= self._max_workers:
            return
        if self._idle_workers:
            self._idle_workers.pop().notify()
        elif len(self._threads) < self._max_workers:
            self._start_worker_locked()

    def _start_worker_locked(self) -> None:
        t = threading.Thread(target=self._worker, daemon=True,
                             name=f"{self._name}-{len(self._threads)}")
        self._threads.append(t)
        t.start()

    def _next_job(self) -> _Job | None:
        """Wait for a ready job with a free slot and take both; None when closing."""
        with self._lock:
            return self._take_locked()

    def _take_locked(self) -> _Job | None:
        while not self._closed:
            if self._ready and self._running < self._max_workers:
                job = self._ready.popleft()
                if job.source.work_dropped or (self._revoked and job.peer in self._revoked):
                    # Decided here, under the lock revoke() takes: it never starts.
                    log.debug("dropped queued work of %s: link ended or peer unpaired",
                              job.peer.short)
                    job.load.bytes -= job.cost
                    self._job_done_locked(job)
                    continue
                self._running += 1
                if self._ready:
                    self._dispatch_locked()
                return job
            # Wait as the most recently idle worker: the next job wakes this thread, not
            # the one idle longest, so steady work stays on few (warm) threads; each
            # thread that decodes keeps what it freed in its own malloc arena.
            cond = threading.Condition(self._lock)
            self._idle_workers.append(cond)
            try:
                cond.wait()
            finally:
                if cond in self._idle_workers:
                    self._idle_workers.remove(cond)
        return None

    def _worker(self) -> None:
        job = self._next_job()
        while job is not None:
            try:
                # _next_job checked the link and revocation under the lock; the trust
                # store is checked here too, for a store changed behind the node's back.
                if self._is_trusted(job.peer):
                    job.task()
            except BaseException:  # noqa: BLE001 -- tasks handle their own errors
                log.exception("handler task failed")
            finally:
                with self._lock:
                    self._running -= 1
                    job.load.bytes -= job.cost  # it held its decoded message until now
                    self._job_done_locked(job)
                    # This (warm) thread takes the next ready job itself, under the same
                    # lock, rather than waking another: one peer's sends stay on one
                    # thread instead of spreading over every worker, each of which would
                    # keep the memory its decodes freed (a malloc arena per thread).
                    job = self._take_locked()

    def _job_done_locked(self, job: _Job) -> None:
        if job.is_call:
            self._call_done_locked(job.load)
        else:
            self._send_done_locked(job.load)
