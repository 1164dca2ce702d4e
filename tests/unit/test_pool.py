"""The handler pool's send queue: bounded, ordered, and pushing back before dropping."""

from __future__ import annotations

import threading
import time

from peernet._io.pool import HandlerPool
from tests.conftest import wait_until
from tests.helpers import seeded_identity

PEER = seeded_identity("pool-peer").peer_id


class Blocked:
    """A send handler that holds the queue until ``gate`` opens."""

    def __init__(self) -> None:
        self.started, self.gate = threading.Event(), threading.Event()

    def __call__(self) -> None:
        self.started.set()
        self.gate.wait(5)


def _full_pool(max_sends: int, first: Blocked, ran: list | None = None) -> HandlerPool:
    """A pool whose queue for PEER holds ``max_sends`` sends behind a blocked one."""
    pool = HandlerPool(max_workers=2, max_calls_per_peer=4, max_sends_per_peer=max_sends)
    assert pool.submit_send(PEER, first)
    assert first.started.wait(5)
    for i in range(max_sends):
        assert pool.submit_send(PEER, (lambda i=i: ran.append(i)) if ran is not None
                                else (lambda: None))
    return pool


def test_a_full_queue_waits_for_room_and_loses_nothing():
    first, ran = Blocked(), []
    pool = _full_pool(4, first, ran)
    try:
        opener = threading.Timer(0.05, first.gate.set)
        opener.start()
        t0 = time.monotonic()
        assert pool.submit_send(PEER, lambda: ran.append(4), wait_s=5)
        assert 0.03 < time.monotonic() - t0 < 5
        assert wait_until(lambda: len(ran) == 5)
        assert ran == list(range(5))  # in order, none dropped
        opener.join()
    finally:
        first.gate.set()
        pool.close(5)


def test_a_stuck_handler_gets_sends_dropped_after_the_wait_and_then_at_once():
    first = Blocked()
    pool = _full_pool(2, first)
    try:
        t0 = time.monotonic()
        assert not pool.submit_send(PEER, lambda: None, wait_s=0.1)
        assert time.monotonic() - t0 >= 0.09
        t0 = time.monotonic()  # the peer is stalled now: no second wait
        assert not pool.submit_send(PEER, lambda: None, wait_s=5)
        assert time.monotonic() - t0 < 2  # far below its wait_s of 5
        first.gate.set()  # once its queue empties, sends are taken again
        assert wait_until(lambda: pool.submit_send(PEER, lambda: None))
    finally:
        first.gate.set()
        pool.close(5)


def test_close_wakes_a_reader_waiting_for_room():
    first = Blocked()
    pool = _full_pool(1, first)
    result: list[bool] = []
    waiter = threading.Thread(
        target=lambda: result.append(pool.submit_send(PEER, lambda: None, wait_s=30)))
    closer = threading.Thread(target=pool.close, args=(5,))
    try:
        waiter.start()
        assert wait_until(lambda: pool._room_waiters)  # it is waiting for room
        closer.start()  # the queue stays full: only close() can wake it
        waiter.join(2)
        assert not waiter.is_alive() and result == [False]
    finally:
        first.gate.set()
        if closer.ident is not None:
            closer.join(5)
        pool.close(5)


def test_a_send_run_by_the_caller_holds_the_queue_and_later_sends_follow_in_order():
    pool = HandlerPool(max_workers=2, max_calls_per_peer=4, max_sends_per_peer=8)
    ran: list[int] = []
    try:
        assert pool.begin_send(PEER)  # nothing queued or running: the reader may run it
        assert not pool.begin_send(PEER)  # held: a second claim must queue instead
        for i in range(1, 4):  # arrive while the held send runs (a reader that handed off)
            assert pool.submit_send(PEER, lambda i=i: ran.append(i))
        assert not wait_until(lambda: ran, timeout_s=0.05)  # none overtakes the held send
        ran.append(0)  # the held send itself
        pool.end_send(PEER)
        assert wait_until(lambda: len(ran) == 4)
        assert ran == [0, 1, 2, 3]
        assert wait_until(lambda: pool.begin_send(PEER))  # drained: free to claim again
        pool.end_send(PEER)
    finally:
        pool.close(5)


def test_a_send_queue_with_work_waiting_cannot_be_claimed():
    first = Blocked()
    pool = HandlerPool(max_workers=2, max_calls_per_peer=4, max_sends_per_peer=8)
    try:
        assert pool.submit_send(PEER, first)
        assert first.started.wait(5)
        assert not pool.begin_send(PEER)  # a drain task is running: go behind it
        first.gate.set()
        assert wait_until(lambda: pool.begin_send(PEER))
        pool.end_send(PEER)
    finally:
        first.gate.set()
        pool.close(5)
    assert not pool.begin_send(PEER)  # closed: nothing runs any more
