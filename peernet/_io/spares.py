"""Spare link threads: a thread whose link ended waits a moment to run the next link.

Starting a thread costs tens of microseconds (a clone, a Python thread state, and the
start handshake that switches to the new thread and back), a visible part of what a
new link costs both sides: a server that one-shot clients reach again and again, a
node that reconnects. So a thread that finished its link (or a reader's turn, see
``Link.take_over_reading``) stays, up to ``idle_s``, as a spare, at most ``keep`` of
them, and the next one runs on it (one notify) instead of on a new thread.

What a link holds is a :class:`Run`: ``join`` waits for its work, not for the thread,
which may go on to serve another link; :meth:`Spares.close` joins the threads
themselves, once no work can come. Spares are daemons, like the threads they replace.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

__all__ = ["Run", "Spares"]

log = logging.getLogger(__name__)


class Run:
    """One piece of work for :class:`Spares`, with the parts of ``threading.Thread`` a
    link's owner uses: ``ident`` (None until handed to a thread), ``is_alive``, ``join``."""

    __slots__ = ("_fn", "_done", "ident")

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn: Callable[[], None] | None = fn
        self._done = threading.Event()
        #: The thread that runs (or ran) it, as ``threading.get_ident()`` gives it.
        self.ident: int | None = None

    def is_alive(self) -> bool:
        """Handed to a thread and not finished."""
        return self.ident is not None and not self._done.is_set()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the work has returned (at most ``timeout`` seconds)."""
        self._done.wait(timeout)

    def _run(self) -> None:
        fn, self._fn = self._fn, None  # the thread outlives it: hold no link
        try:
            if fn is not None:
                fn()
        except BaseException:  # noqa: BLE001 -- a spare must survive what it ran
            log.exception("link thread failed")
        finally:
            self._done.set()


class _Spare:
    """A thread waiting for work (all fields guarded by the Spares' lock)."""

    __slots__ = ("wake", "run", "ident")

    def __init__(self, lock: threading.Lock) -> None:
        self.wake = threading.Condition(lock)
        self.run: Run | None = None
        self.ident = threading.get_ident()


class Spares:
    """Threads named ``name`` that run :class:`Run` s, keeping up to ``keep`` idle ones
    for up to ``idle_s`` each."""

    def __init__(self, *, name: str, keep: int, idle_s: float) -> None:
        self._name = name
        self._keep = keep
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._idle: list[_Spare] = []  # waiting for work, most recently idle last
        self._threads: list[threading.Thread] = []
        self._closed = False

    def start(self, run: Run) -> None:
        """Run ``run`` on a spare thread if one waits, else on a new one. Raises
        RuntimeError if no thread can be started (``run`` is then not handed out)."""
        with self._lock:
            if self._idle:
                spare = self._idle.pop()  # the warmest
                spare.run = run
                run.ident = spare.ident
                spare.wake.notify()
                return
        # A new thread, started outside the lock (start() waits for it to come up, and
        # threads finishing their links need the lock meanwhile), and listed only once
        # started: close() joins only threads that run, and a start that fails
        # (RuntimeError: out of threads or memory) leaves nothing behind.
        thread = threading.Thread(target=self._main, args=(run,), name=self._name,
                                  daemon=True)
        thread.start()
        run.ident = thread.ident
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    def stop(self) -> None:
        """Keep no spare from now on (a thread whose work ends, ends) and wake the idle
        ones, which end. Work may still come: it runs on a thread of its own."""
        with self._lock:
            self._closed = True
            for spare in self._idle:
                spare.wake.notify()

    def close(self, timeout_s: float) -> None:
        """:meth:`stop`, then join every thread (but the calling one) within
        ``timeout_s``. Call it once no more work comes."""
        self.stop()
        deadline = time.monotonic() + timeout_s
        me = threading.get_ident()
        joined: set[threading.Thread] = set()
        while True:  # again while a start that raced stop() listed one more
            with self._lock:
                threads = [t for t in self._threads if t not in joined]
            if not threads:
                return
            for thread in threads:
                joined.add(thread)
                if thread.ident != me:
                    thread.join(max(0.0, deadline - time.monotonic()))

    def _main(self, run: Run) -> None:
        spare = _Spare(self._lock)
        next_run: Run | None = run
        while next_run is not None:
            next_run.ident = spare.ident
            next_run._run()
            next_run = self._wait(spare)

    def _wait(self, spare: _Spare) -> Run | None:
        """Wait as a spare for the next run; None: this thread ends."""
        with self._lock:
            if self._closed or len(self._idle) >= self._keep:
                return None
            spare.run = None
            self._idle.append(spare)
            deadline = time.monotonic() + self._idle_s
            while spare.run is None and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                spare.wake.wait(left)
            if spare.run is None and spare in self._idle:
                self._idle.remove(spare)
            return spare.run
