"""The handler scheduler: one accounting for inline and queued work, ordered sends,
push-back before dropping, memory charged for what queued work holds, and revocation
that reaches queued work. Driven directly, without sockets."""

from __future__ import annotations

import threading
import time

from peernet._io.scheduler import Scheduler
from tests.conftest import wait_until
from tests.helpers import seeded_identity

PEER = seeded_identity("sched-peer").peer_id
OTHER = seeded_identity("sched-other").peer_id


class Link:
    """A stand-in for the link a job came on."""

    def __init__(self) -> None:
        self.closed = False


class Blocked:
    """A handler that holds its slot until ``gate`` opens."""

    def __init__(self) -> None:
        self.started, self.gate = threading.Event(), threading.Event()

    def __call__(self) -> None:
        self.started.set()
        self.gate.wait(5)


def make(trusted: set | None = None, **limits) -> Scheduler:
    limits.setdefault("max_workers", 2)
    limits.setdefault("max_calls_per_peer", 4)
    limits.setdefault("max_sends_per_peer", 4)
    limits.setdefault("max_queued_bytes_per_peer", 1 << 20)
    allowed = trusted if trusted is not None else {PEER, OTHER}
    return Scheduler(is_trusted=lambda p: p in allowed, **limits)


def _full_lane(sched: Scheduler, link: Link, max_sends: int, first: Blocked,
               ran: list | None = None) -> None:
    assert sched.submit_send(PEER, link, first, cost=1)
    assert first.started.wait(5)
    for i in range(max_sends):
        assert sched.submit_send(PEER, link, (lambda i=i: ran.append(i)) if ran is not None
                                 else (lambda: None), cost=1)


def test_a_full_send_queue_waits_for_room_and_loses_nothing():
    sched, link, first, ran = make(), Link(), Blocked(), []
    _full_lane(sched, link, 4, first, ran)
    try:
        opener = threading.Timer(0.05, first.gate.set)
        opener.start()
        t0 = time.monotonic()
        assert sched.submit_send(PEER, link, lambda: ran.append(4), cost=1, wait_s=5)
        assert 0.03 < time.monotonic() - t0 < 5
        assert wait_until(lambda: len(ran) == 5)
        assert ran == list(range(5))  # in order, none dropped
        opener.join()
    finally:
        first.gate.set()
        sched.close(5)


def test_a_stuck_send_handler_gets_sends_dropped_after_the_wait_and_then_at_once():
    sched, link, first = make(max_sends_per_peer=2), Link(), Blocked()
    _full_lane(sched, link, 2, first)
    try:
        t0 = time.monotonic()
        assert not sched.submit_send(PEER, link, lambda: None, cost=1, wait_s=0.1)
        assert time.monotonic() - t0 >= 0.09
        t0 = time.monotonic()  # stalled now: no second wait
        assert not sched.submit_send(PEER, link, lambda: None, cost=1, wait_s=5)
        assert time.monotonic() - t0 < 2
        first.gate.set()  # once its queue empties, sends are taken again
        assert wait_until(lambda: sched.submit_send(PEER, link, lambda: None, cost=1))
    finally:
        first.gate.set()
        sched.close(5)


def test_close_wakes_a_reader_waiting_for_room():
    sched, link, first = make(max_sends_per_peer=1), Link(), Blocked()
    _full_lane(sched, link, 1, first)
    result: list[bool] = []
    waiter = threading.Thread(
        target=lambda: result.append(sched.submit_send(PEER, link, lambda: None, cost=1,
                                                       wait_s=30)))
    try:
        waiter.start()
        assert wait_until(lambda: sched._room_waiters)
        closer = threading.Thread(target=sched.close, args=(5,))
        closer.start()
        waiter.join(2)
        assert not waiter.is_alive() and result == [False]
    finally:
        first.gate.set()
        sched.close(5)
        closer.join(5)


def test_an_inline_send_holds_the_lane_and_later_sends_follow_in_order():
    sched, link, ran = make(), Link(), []
    try:
        assert sched.claim_send(PEER, link)
        assert not sched.claim_send(PEER, link)  # held: a second one must queue
        for i in range(1, 4):
            assert sched.submit_send(PEER, link, lambda i=i: ran.append(i), cost=1)
        assert not wait_until(lambda: ran, timeout_s=0.05)  # none overtakes it
        ran.append(0)
        sched.release_send(PEER)
        assert wait_until(lambda: len(ran) == 4)
        assert ran == [0, 1, 2, 3]
        assert wait_until(lambda: sched.claim_send(PEER, link))
        sched.release_send(PEER)
    finally:
        sched.close(5)
    assert not sched.claim_send(PEER, link)  # closed: nothing runs any more


def test_inline_calls_take_running_slots_like_workers_do():
    """The bound holds however calls are paced: an inline call needs a free slot, and
    one peer's calls never hold more than half of them."""
    sched, link = make(max_workers=4, max_calls_per_peer=8), Link()
    gates = [Blocked() for _ in range(4)]
    try:
        assert sched.claim_call(PEER, link) and sched.claim_call(PEER, link)  # the peer's share: 2
        assert not sched.claim_call(PEER, link)  # the third must queue ...
        assert sched.submit_call(PEER, link, gates[0], cost=1)
        assert not gates[0].started.wait(0.1)  # ... and waits for the peer's share
        assert sched.claim_call(OTHER, link) and sched.claim_call(OTHER, link)
        assert sched.running == 4
        assert not sched.claim_call(OTHER, link)  # no slot left for anyone
        sched.release_call(PEER)
        assert gates[0].started.wait(5)  # the queued call got the freed slot
        assert sched.running == 4
    finally:
        for g in gates:
            g.gate.set()
        sched.close(5)


def test_calls_beyond_the_per_peer_cap_are_refused():
    sched, link = make(max_calls_per_peer=3), Link()
    gate = Blocked()
    try:
        assert all(sched.submit_call(PEER, link, gate, cost=1) for _ in range(3))
        assert not sched.submit_call(PEER, link, gate, cost=1)
        assert sched.submit_call(OTHER, link, lambda: None, cost=1)
    finally:
        gate.gate.set()
        sched.close(5)


def test_queued_and_running_work_is_bounded_by_its_byte_budget():
    """Work is charged from submission until its handler returns (running, it holds its
    decoded message), and so is a claim that carries a cost."""
    sched, link = make(max_workers=2, max_calls_per_peer=100, max_sends_per_peer=100,
                       max_queued_bytes_per_peer=1000), Link()
    call, send = Blocked(), Blocked()
    try:
        assert sched.submit_call(PEER, link, call, cost=300)  # the peer's share of calls
        assert call.started.wait(5)  # running: still charged
        assert sched.submit_send(PEER, link, send, cost=300)  # and the send lane
        assert send.started.wait(5)
        assert sched.submit_send(PEER, link, lambda: None, cost=300)  # 900
        assert not sched.submit_send(PEER, link, lambda: None, cost=300)  # 1200 > 1000
        assert sched.submit_call(PEER, link, lambda: None, cost=100)  # 1000
        assert not sched.submit_call(PEER, link, lambda: None, cost=1)  # calls share it
        assert sched.submit_call(OTHER, link, lambda: None, cost=900)  # a budget per peer
        assert not sched.claim_call(OTHER, link, 200)  # 1100 > 1000 for OTHER
        call.gate.set()  # the running call returns: its 300 are free again
        assert wait_until(lambda: sched.submit_call(PEER, link, lambda: None, cost=200))
    finally:
        call.gate.set()
        send.gate.set()
        sched.close(5)


def test_work_queued_on_a_link_that_ended_never_runs():
    sched, link = make(max_workers=2, max_calls_per_peer=10, max_sends_per_peer=10), Link()
    call, send, ran = Blocked(), Blocked(), []
    try:
        assert sched.submit_call(PEER, link, call, cost=1)  # the peer's one share of calls
        assert sched.submit_send(PEER, link, send, cost=1)  # its send lane
        assert call.started.wait(5) and send.started.wait(5)
        for i in range(5):
            assert sched.submit_call(PEER, link, lambda i=i: ran.append(i), cost=1)
            assert sched.submit_send(PEER, link, lambda i=i: ran.append(-i), cost=1)
        link.closed = True
        assert sched.drop(link) == 10
        call.gate.set()
        send.gate.set()
        assert wait_until(lambda: sched.calls_in_progress(PEER) == 0)
        assert wait_until(lambda: sched.running == 0)
        assert ran == []
    finally:
        call.gate.set()
        send.gate.set()
        sched.close(5)


def test_queued_work_of_a_peer_that_was_unpaired_never_runs():
    trusted = {PEER}
    sched, link = make(trusted, max_workers=2, max_calls_per_peer=10), Link()
    gate, ran = Blocked(), []
    try:
        assert sched.submit_call(PEER, link, gate, cost=1)
        assert gate.started.wait(5)
        for i in range(5):
            assert sched.submit_call(PEER, link, lambda i=i: ran.append(i), cost=1)
        trusted.clear()  # unpaired; its link has not even closed yet
        gate.gate.set()
        assert wait_until(lambda: sched.calls_in_progress(PEER) == 0)
        assert ran == []
    finally:
        gate.gate.set()
        sched.close(5)


def test_revoke_refuses_claims_and_drops_queued_work_at_once():
    """unpair() revokes under the scheduler's lock: from its return on, no claim
    (inline) or queued job of the peer starts, whatever the trust store says."""
    sched, link = make(max_workers=3, max_calls_per_peer=10), Link()
    gate, send_gate, ran = Blocked(), Blocked(), []
    try:
        assert sched.submit_call(PEER, link, gate, cost=1)
        assert gate.started.wait(5)
        for i in range(3):
            assert sched.submit_call(PEER, link, lambda i=i: ran.append(i), cost=1)
        # The peer's send lane is busy, so this send is queued, not ready: a send that
        # found the lane and a slot free could (rightly) start before revoke().
        assert sched.submit_send(PEER, link, send_gate, cost=1)
        assert send_gate.started.wait(5)
        assert sched.submit_send(PEER, link, lambda: ran.append("send"), cost=1)
        assert sched.revoke(PEER) >= 4
        assert not sched.claim_call(PEER, link) and not sched.claim_send(PEER, link)
        assert not sched.submit_call(PEER, link, lambda: ran.append("late"), cost=1)
        assert not sched.submit_send(PEER, link, lambda: ran.append("late"), cost=1)
        assert sched.claim_call(OTHER, link)  # others are unaffected
        sched.release_call(OTHER)
        gate.gate.set()
        send_gate.gate.set()
        assert wait_until(lambda: sched.running == 0 and sched.calls_in_progress(PEER) == 0)
        assert ran == []
        sched.admit(PEER)  # paired again, with a new link
        assert sched.claim_call(PEER, link)
        sched.release_call(PEER)
    finally:
        gate.gate.set()
        send_gate.gate.set()
        sched.close(5)


def test_a_claim_on_a_link_that_ended_is_refused():
    sched, link = make(), Link()
    try:
        link.closed = True
        assert not sched.claim_call(PEER, link) and not sched.claim_send(PEER, link)
        assert not sched.submit_call(PEER, link, lambda: None, cost=1)
    finally:
        sched.close(5)
