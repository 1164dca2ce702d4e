"""Where a peer's calls run, through the public API: the bounds hold however calls are
paced, and revocation reaches work that is still queued."""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import wait_until


class Tracker:
    """A slow handler that records how many of its runs overlap, and when each started."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.starts: list[float] = []

    def __call__(self, peer, args):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.starts.append(time.monotonic())
        try:
            time.sleep(self.seconds)
        finally:
            with self.lock:
                self.now -= 1
        return args


@pytest.mark.timeout(60)
def test_calls_paced_apart_never_exceed_the_handler_bound(make_node):
    """handler_workers=2 lets one peer run at most one call at a time. Calls paced 40 ms
    apart each arrive in a read of their own, after the previous reader was handed off;
    they used to run all at once on reader threads (32 at once, threads 4 -> 36)."""
    a, b = make_node("a"), make_node("b", handler_workers=2)
    a.pair(b.id)
    b.pair(a.id)
    slow = Tracker(0.3)
    b.expose("slow", slow)
    a.connect(b.id, "127.0.0.1", b.port)
    assert a.wait_for_peer(b.id, timeout=5)
    threads_before = threading.active_count()
    futures = []
    for i in range(8):
        futures.append(a.call_async(b.id, "slow", i, timeout=20))
        time.sleep(0.04)  # the pacing under test, not a wait for a condition
    peak_threads = threading.active_count()
    assert [f.result(20) for f in futures] == list(range(8))
    assert slow.most == 1
    assert peak_threads - threads_before <= 4


@pytest.mark.timeout(60)
def test_no_handler_starts_after_unpair_returns(make_node):
    a, b = make_node("a"), make_node("b", handler_workers=2, max_calls_per_peer=64)
    a.pair(b.id)
    b.pair(a.id)
    slow = Tracker(0.1)
    b.expose("slow", slow)
    a.connect(b.id, "127.0.0.1", b.port)
    assert a.wait_for_peer(b.id, timeout=5)
    links = b._registry.all_links()
    futures = [a.call_async(b.id, "slow", i, timeout=20) for i in range(30)]
    # Two have started: by then the rest were read and are queued behind them.
    assert wait_until(lambda: len(slow.starts) >= 2, timeout_s=5)
    b.unpair(a.id)
    unpaired_at = time.monotonic()
    _settled(b, links, futures)  # nothing on B is left that could start a handler
    late = [t for t in slow.starts if t > unpaired_at]
    assert late == [], f"{len(late)} handlers started after unpair() returned"
    assert len(slow.starts) < 30


class Starts:
    """A short handler (well inside the 20 ms inline budget, so it runs on the reader)
    that records, for each run, when it started, on which thread, and whether the link
    that brought it had already ended at that moment."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.link = None  # the callee's link to the caller, once known
        self.lock = threading.Lock()
        self.runs: list[tuple[float, str, bool]] = []

    def __call__(self, peer, args):
        ended = self.link is not None and self.link.closed
        with self.lock:
            self.runs.append((time.monotonic(), threading.current_thread().name, ended))
        time.sleep(self.seconds)
        return args


def _pipelined(make_node, calls: int = 400):
    a = make_node("a")
    b = make_node("b", max_calls_per_peer=calls)
    a.pair(b.id)
    b.pair(a.id)
    short = Starts(0.005)
    b.expose("short", short)
    a.connect(b.id, "127.0.0.1", b.port)
    assert a.wait_for_peer(b.id, timeout=5)
    assert wait_until(lambda: b._registry.active_link(a.id) is not None)
    short.link = b._registry.active_link(a.id)
    links = b._registry.all_links()
    futures = [a.call_async(b.id, "short", i, timeout=20) for i in range(calls)]
    assert wait_until(lambda: len(short.runs) >= 10, timeout_s=10)
    return a, b, short, links, futures


def _settled(b, links, futures) -> None:
    """Every call ended and nothing on B can start another handler: its links' threads
    are gone, no handler runs and no work is queued."""
    for f in futures:
        f.exception(20)
    sched = b._mesh._sched
    assert wait_until(lambda: not any(t.is_alive() for link in links for t in link.threads)
                      and sched.running == 0 and not sched.queued(), timeout_s=10)


@pytest.mark.timeout(60)
def test_no_inline_handler_starts_after_unpair_returns(make_node):
    """The reader used to route the rest of its read after unpair() closed the link, and
    its inline path checked neither trust nor the link: most of a pipelined burst of
    short calls still ran, on the reader, after unpair() returned."""
    a, b, short, links, futures = _pipelined(make_node)
    b.unpair(a.id)
    unpaired_at = time.monotonic()
    _settled(b, links, futures)
    assert any(name == "peernet-link" for _, name, _ in short.runs)  # the inline path ran
    late = [name for at, name, _ in short.runs if at > unpaired_at]
    assert late == [], f"{len(late)} of {len(short.runs)} handlers started after unpair()"
    assert len(short.runs) < len(futures)


@pytest.mark.timeout(60)
def test_no_inline_handler_starts_after_the_link_ended(make_node):
    """Link loss (here the callee's own close, as a heartbeat timeout or a vanished
    address would do it): no handler starts once the link is known to have ended."""
    a, b, short, links, futures = _pipelined(make_node)
    short.link.close("test: link lost")
    closed_at = time.monotonic()
    _settled(b, links, futures)
    late = [name for at, name, ended in short.runs if at > closed_at or ended]
    assert late == [], f"{len(late)} of {len(short.runs)} handlers started after the link ended"
    assert len(short.runs) < len(futures)


@pytest.mark.timeout(60)
def test_no_queued_handler_starts_after_the_peer_closed(make_node):
    """The caller goes away (bye, then its socket closes) with calls queued on workers:
    none of them starts once the callee knows the link ended."""
    a = make_node("a")
    b = make_node("b", handler_workers=2, max_calls_per_peer=64)
    a.pair(b.id)
    b.pair(a.id)
    slow = Starts(0.05)  # over the inline budget: the rest queue
    b.expose("short", slow)
    a.connect(b.id, "127.0.0.1", b.port)
    assert a.wait_for_peer(b.id, timeout=5)
    assert wait_until(lambda: b._registry.active_link(a.id) is not None)
    slow.link = b._registry.active_link(a.id)
    links = b._registry.all_links()
    futures = [a.call_async(b.id, "short", i, timeout=20) for i in range(40)]
    assert wait_until(lambda: len(slow.runs) >= 2, timeout_s=10)
    a.close()
    _settled(b, links, futures)
    assert [r for r in slow.runs if r[2]] == []
    assert len(slow.runs) < len(futures)
