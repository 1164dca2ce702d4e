"""Peers come back by themselves: restarts, stalls, drops, simultaneous reconnects."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import peernet
from peernet import PeerId
from tests.conftest import wait_until

FAST = dict(heartbeat_interval=0.2, heartbeat_timeout=1.0, reconnect_initial=0.05,
            reconnect_max=0.5, handshake_timeout=2.0)


class Proc:
    """A node in a child process (tests/procs/node_proc.py)."""

    def __init__(self, tmp_path, name: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.procs.node_proc", str(tmp_path / name), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("READY "), line
        info = json.loads(line[6:])
        self.id, self.port = PeerId.parse(info["id"]), info["port"]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGCONT)
        p.stop()


def _state(pid: int) -> str:
    """The process state letter from /proc (T = stopped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_restarted_peer_is_back_within_two_seconds_same_port(make_node, tmp_path, procs):
    a = make_node("a", **FAST)
    port = _free_port()
    b = Proc(tmp_path, "b", "--port", str(port), "--pair", str(a.id))
    procs.append(b)
    a.pair(b.id)
    a.connect(b.id, "127.0.0.1", port)
    assert a.call(b.id, "echo", 1) == 1
    b.stop()
    assert wait_until(lambda: a.list_peers()[0].status != "online")
    b2 = Proc(tmp_path, "b", "--port", str(port), "--pair", str(a.id))
    procs.append(b2)
    listening_at = time.monotonic()
    assert wait_until(lambda: a.list_peers()[0].status == "online", timeout_s=2)
    assert a.call(b.id, "echo", 2) == 2
    assert time.monotonic() - listening_at < 2


def test_restarted_peer_on_a_new_port_given_by_connect(make_node, tmp_path, procs):
    a = make_node("a", **FAST)
    b = Proc(tmp_path, "b", "--pair", str(a.id))
    procs.append(b)
    a.pair(b.id)
    a.connect(b.id, "127.0.0.1", b.port)
    assert a.call(b.id, "echo", 1) == 1
    b.stop()
    b2 = Proc(tmp_path, "b", "--pair", str(a.id))
    procs.append(b2)
    assert b2.port != b.port
    a.connect(b.id, "127.0.0.1", b2.port)
    assert a.call(b.id, "echo", 2, timeout=2) == 2


def test_a_stopped_peer_is_declared_dead_and_comes_back_after_sigcont(make_node, tmp_path, procs):
    a = make_node("a", **FAST)
    b = Proc(tmp_path, "b", "--pair", str(a.id), "--heartbeat", "0.2", "1.0")
    procs.append(b)
    a.pair(b.id)
    a.connect(b.id, "127.0.0.1", b.port)
    assert a.call(b.id, "echo", 1) == 1
    b.proc.send_signal(signal.SIGSTOP)
    assert wait_until(lambda: _state(b.proc.pid) == "T")
    t0 = time.monotonic()
    pending = a.call_async(b.id, "echo", "never answered", timeout=30)
    with pytest.raises(peernet.ConnectionLost):
        pending.result(5)
    assert 0.5 < time.monotonic() - t0 < 3, "dead after about heartbeat_timeout"
    b.proc.send_signal(signal.SIGCONT)
    assert wait_until(lambda: a.list_peers()[0].status == "online", timeout_s=10)
    assert a.call(b.id, "echo", 3) == 3


def test_manual_and_inbound_only_peers_are_both_redialled(make_node):
    hub = make_node("hub", **FAST)
    manual, inbound = make_node("manual", **FAST), make_node("inbound", **FAST)
    for n in (manual, inbound):
        hub.pair(n.id), n.pair(hub.id)
        n.expose("echo", lambda peer, args: args)
    hub.connect(manual.id, "127.0.0.1", manual.port)   # hub knows manual's address
    inbound.connect(hub.id, "127.0.0.1", hub.port)      # hub only saw inbound dial in
    assert hub.call(manual.id, "echo", 1) == 1
    assert wait_until(lambda: hub._registry.active_link(inbound.id) is not None)
    inbound.unpair(hub.id), inbound.pair(hub.id)        # inbound forgets hub's address
    assert wait_until(lambda: hub._registry.active_link(inbound.id) is None)
    for peer in (manual.id,):
        hub._registry.active_link(peer).close("test drops it")
    # hub redials both: the manual address, and the inbound peer's announced port
    assert wait_until(lambda: hub._registry.active_link(manual.id) is not None, timeout_s=3)
    assert wait_until(lambda: hub._registry.active_link(inbound.id) is not None, timeout_s=3)
    assert hub.call(inbound.id, "echo", 2) == 2
    assert hub._registry.active_link(inbound.id).outbound


def _drop_so_both_redial(a, b) -> None:
    """Wait for a link between ``a`` and ``b``, then drop it: both reconnect at once."""
    assert wait_until(lambda: a._registry.active_link(b.id) and b._registry.active_link(a.id))
    a._registry.active_link(b.id).close("drop")


def _one_link(a, b) -> bool:
    """Both sides hold exactly one link, the same established one (a duplicate retired)."""
    la, lb = a._registry.links_of(b.id), b._registry.links_of(a.id)
    return (len(la) == 1 and len(lb) == 1 and la[0].established and lb[0].established
            and not la[0].closed and not lb[0].closed)


def test_simultaneous_reconnects_converge_without_a_storm(make_node):
    a, b = make_node("a", **FAST), make_node("b", **FAST)
    a.pair(b.id), b.pair(a.id)
    a.expose("echo", lambda peer, args: args)
    b.expose("echo", lambda peer, args: args)
    a.connect(b.id, "127.0.0.1", b.port)
    b.connect(a.id, "127.0.0.1", a.port)
    dials = {"n": 0}
    original = a._mesh.dial

    def counting_dial(pid):
        dials["n"] += 1
        original(pid)

    a._mesh.dial = counting_dial
    for attempt in range(50):
        _drop_so_both_redial(a, b)
        assert wait_until(lambda: _one_link(a, b), timeout_s=5), f"attempt {attempt}"
        assert a.call(b.id, "echo", attempt) == attempt
    assert dials["n"] <= 3 * 50, f"{dials['n']} dials for 50 drops: a reconnect storm"


def test_sends_made_while_a_duplicate_link_retires_all_arrive(make_node):
    """Both sides dial at once (a reconnect, or discovery: each hears the other), so one
    of two links retires. A send handed to the retiring link (send() said True) runs
    on the other side like any other: the link was not lost, only replaced. It used to
    be dropped with the work queued on that link when it closed."""
    a, b = make_node("a", **FAST), make_node("b", **FAST)
    a.pair(b.id), b.pair(a.id)
    got: list[int] = []
    b.expose("note", lambda peer, args: got.append(args))
    a.connect(b.id, "127.0.0.1", b.port)
    b.connect(a.id, "127.0.0.1", a.port)
    sent = 0
    for attempt in range(30):
        _drop_so_both_redial(a, b)
        deadline = time.monotonic() + 5
        while not _one_link(a, b):  # send all through the switch-over, as a chat user would
            assert time.monotonic() < deadline, f"attempt {attempt}"
            if a.send(b.id, "note", sent):
                sent += 1
            time.sleep(0.0005)  # pacing, so the peer's send queue never fills
        assert wait_until(lambda: len(got) == sent, timeout_s=3), (
            f"attempt {attempt}: {sent - len(got)} of {sent} sends lost")
    # All of them. (Sends on their way over the two links at the switch-over may
    # interleave: order holds on one link; see guides/architecture.md.)
    assert sorted(got) == list(range(sent))


def test_a_tarpit_address_delays_nothing_else(make_node):
    tarpit = socket.socket()
    tarpit.bind(("127.0.0.3", 0))
    tarpit.listen(16)  # accepts in the kernel, never answers
    try:
        a, b, c = make_node("a"), make_node("b"), make_node("c")
        for x, y in ((a, b), (a, c)):
            x.pair(y.id), y.pair(x.id)
        c.expose("echo", lambda peer, args: args)
        a.connect(c.id, "127.0.0.1", c.port)
        assert a.call(c.id, "echo", 0) == 0
        a.connect(b.id, *tarpit.getsockname())
        stuck = a.call_async(b.id, "echo", 1, timeout=3)
        t0 = time.monotonic()
        for i in range(20):
            assert a.call(c.id, "echo", i) == i
            a.list_peers()
        assert time.monotonic() - t0 < 1
        with pytest.raises(peernet.PeerNetError):
            stuck.result(5)
    finally:
        tarpit.close()


def test_status_changes_are_observable(make_node):
    a, b = make_node("a", **FAST), make_node("b", **FAST)
    a.pair(b.id), b.pair(a.id)
    seen: list[peernet.PeerEvent] = []
    got_offline = threading.Event()

    def observe(event):
        seen.append(event)
        if event.status == "offline":
            got_offline.set()

    unsubscribe = a.on_peer_change(observe)
    assert a.list_peers()[0].status == "unknown"
    a.connect(b.id, "127.0.0.1", b.port)
    assert wait_until(lambda: any(e.status == "online" for e in seen))
    b.close()
    assert got_offline.wait(5)
    assert all(e.id == b.id for e in seen)
    assert [e.status for e in seen][:2] == ["connecting", "online"]
    unsubscribe()
    peer = a.list_peers()[0]
    assert peer.status in ("offline", "connecting") and peer.last_seen is not None


def test_connecting_is_reported_even_when_the_handshake_wins_the_race(make_node, monkeypatch):
    """The dialling thread used to report "connecting" only after starting the link's
    thread; on a busy machine that thread could finish the handshake (and report
    unknown -> online) first, and "connecting" was never seen. Here the link's thread
    always wins: its start() returns only once the link is established."""
    from peernet._io.link import Link

    start = Link.start

    def start_and_finish_the_handshake(link):
        start(link)
        assert wait_until(lambda: link.established or link.closed, timeout_s=5)

    monkeypatch.setattr(Link, "start", start_and_finish_the_handshake)
    a, b = make_node("a", **FAST), make_node("b", **FAST)
    a.pair(b.id), b.pair(a.id)
    seen: list[tuple[str, str]] = []
    a.on_peer_change(lambda event: seen.append((event.previous, event.status)))
    a.connect(b.id, "127.0.0.1", b.port)
    assert wait_until(lambda: ("connecting", "online") in seen)
    assert seen[:2] == [("unknown", "connecting"), ("connecting", "online")]


class ManualMonitor:
    """A host-supplied monitor: the test pushes changes instead of polling."""

    def __init__(self) -> None:
        self.on_change = None

    def start(self, on_change) -> None:
        self.on_change = on_change

    def stop(self, timeout_s: float) -> None:
        self.on_change = None


def test_a_replaced_monitor_closes_only_links_whose_address_vanished(make_node):
    from peernet._io.netmon import NetworkChange

    mon = ManualMonitor()
    a = make_node("a", network_monitor=mon, host="0.0.0.0", **FAST)
    b, c = make_node("b", **FAST), make_node("c", **FAST)
    for peer in (b, c):
        a.pair(peer.id), peer.pair(a.id)
        peer.expose("echo", lambda p, x: x)
    a.expose("echo", lambda p, x: x)
    # Two inbound links whose local ends (on a) have different addresses.
    b.connect(a.id, "127.0.0.1", a.port)
    c.connect(a.id, "127.0.0.2", a.port)
    assert b.call(a.id, "echo", 1) == 1 and c.call(a.id, "echo", 1) == 1
    link_b, link_c = a._registry.active_link(b.id), a._registry.active_link(c.id)
    assert link_b.local_ip == "127.0.0.1" and link_c.local_ip == "127.0.0.2"
    # unrelated churn touches nothing
    mon.on_change(NetworkChange(frozenset({"192.0.2.1"}), frozenset(), frozenset({"192.0.2.1"})))
    assert a._registry.active_link(b.id) is link_b and not link_c.closed
    # our address on the link with c vanished: only that link goes, and it comes back
    # at once (a redials c at the port c announced in its handshake)
    mon.on_change(NetworkChange(frozenset(), frozenset({"127.0.0.2"}), frozenset()))
    assert wait_until(lambda: link_c.closed)
    assert not link_b.closed
    assert wait_until(lambda: a._registry.active_link(c.id) not in (None, link_c), timeout_s=2)
    assert a.call(c.id, "echo", 2) == 2


def test_heartbeats_record_round_trip_time(make_node):
    a, b = make_node("a", **FAST), make_node("b", **FAST)
    a.pair(b.id), b.pair(a.id)
    a.connect(b.id, "127.0.0.1", b.port)
    assert wait_until(lambda: a.list_peers()[0].rtt is not None, timeout_s=3)
    peer = a.list_peers()[0]
    assert 0 < peer.rtt < 1 and peer.status == "online"


def test_a_heartbeat_tick_that_fails_does_not_end_liveness(make_node, monkeypatch):
    a, b = make_node("a", **FAST), make_node("b", **FAST)
    a.pair(b.id), b.pair(a.id)
    a.connect(b.id, "127.0.0.1", b.port)
    assert a.wait_for_peer(b.id)
    link = a._registry.active_link(b.id)
    calls = {"n": 0}
    original = link.ping_nowait

    def flaky():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("one bad tick")
        return original()

    monkeypatch.setattr(link, "ping_nowait", flaky)
    assert wait_until(lambda: calls["n"] >= 3, timeout_s=3), "heartbeats stopped"
    assert not link.closed
