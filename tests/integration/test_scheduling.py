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
    futures = [a.call_async(b.id, "slow", i, timeout=20) for i in range(30)]
    # Two have started: by then the rest were read and are queued behind them.
    assert wait_until(lambda: len(slow.starts) >= 2, timeout_s=5)
    b.unpair(a.id)
    unpaired_at = time.monotonic()
    for f in futures:  # every call ends, one way or another
        f.exception(20)
    time.sleep(0.3)  # a queued handler that would start late starts within this
    late = [t for t in slow.starts if t > unpaired_at]
    assert late == [], f"{len(late)} handlers started after unpair() returned"
    assert len(slow.starts) < 30
