"""UDP discovery between real hosts: network namespaces this test creates and deletes,
joined by a bridge in a namespace of their own. Broadcast stays inside the lab."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.conftest import wait_until
from tests.helpers import prepaired
from tests.netns_lab import Lab, require_netns, wait_for_one_link

pytestmark = pytest.mark.netns

INTERVAL_S = 0.5


@pytest.fixture
def lab():
    require_netns()
    with Lab(4) as lab:
        yield lab


def start(lab, tmp_path, names, ids, *, hosts=None, interval_s=INTERVAL_S):
    """One agent per name (on hosts 0.. unless given), with UDP discovery; nothing else
    configured."""
    agents = {}
    for i, name in enumerate(names):
        host = i if hosts is None else hosts[i]
        agents[name] = lab.agent(host, tmp_path / name, "--discovery", "udp", "--interval",
                                 str(interval_s), "--heartbeat", "30", "60")
        assert agents[name].id == str(ids[name])
    return agents


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_three_paired_hosts_find_each_other_and_call_within_2s(lab, tmp_path):
    names = ["a", "b", "c"]
    ids = prepaired(tmp_path, names)
    agents = start(lab, tmp_path, names, ids)
    for x in names:
        for y in names:
            if x == y:
                continue
            got = agents[x].request(op="call", peer=str(ids[y]), name="echo", args=[x, y],
                                    timeout=2.0)
            assert got == [x, y]
            assert time.monotonic() - agents[x].started < 2.0, (x, y)
    peers = agents["a"].request(op="peers")
    assert peers[str(ids["b"])] == {"status": "online", "address": [lab.address(1), agents["b"].port]}


def test_spoofed_replayed_and_flooded_announces_change_nothing(lab, tmp_path):
    ids = prepaired(tmp_path, ["a", "b"])
    agents = start(lab, tmp_path, ["a", "b"], ids)
    a, b = agents["a"], agents["b"]
    assert b.request(op="call", peer=a.id, name="echo", args=0, timeout=2.0) == 0
    assert wait_for_one_link(a, b)
    link_before = b.request(op="link", peer=a.id)
    links_before = [a.request(op="links", peer=b.id), b.request(op="links", peer=a.id)]
    rss_before = rss_kib(b.proc.pid)
    attacker = lab.popen(3, "tests.procs.udp_attacker", lab.address(3), lab.address(1),
                         lab.address(0), "--flood", "10000", "--watch", str(4 * INTERVAL_S))
    try:
        worst_s = 0.0
        while attacker.poll() is None:  # b keeps calling a throughout the attack
            t0 = time.monotonic()
            assert b.request(op="call", peer=a.id, name="echo", args=1, timeout=2.0) == 1
            worst_s = max(worst_s, time.monotonic() - t0)
        report = json.loads(attacker.stdout.read())
    finally:
        if attacker.poll() is None:
            attacker.kill()
        attacker.wait(10)
        attacker.stdout.close()
        attacker.stdin.close()
    print(f"attack: {report}; worst call {worst_s * 1000:.1f} ms; "
          f"udp {b.request(op='udp')}; rss {rss_before} -> {rss_kib(b.proc.pid)} KiB")
    assert report["replayed_peer"] == a.id
    assert report["connections"] == 0  # nothing was redirected to the attacker
    assert worst_s < 0.5
    assert b.request(op="link", peer=a.id) == link_before  # the live link is untouched
    # and neither side made another link meanwhile (not even one retired at once)
    assert [a.request(op="links", peer=b.id), b.request(op="links", peer=a.id)] == links_before
    peers = b.request(op="peers")
    assert peers[a.id]["address"] == [lab.address(0), a.port]
    nearby = b.request(op="nearby")
    assert [n["id"] for n in nearby] == [report["stranger"]]
    assert nearby[0]["address"] == [lab.address(3), report["tarpit_port"]]
    assert report["stranger"] not in peers
    dropped = b.request(op="udp")["dropped"]
    assert dropped.get("address", 0) >= 1 and dropped.get("signature", 0) >= 1
    assert rss_kib(b.proc.pid) - rss_before < 10 * 1024
    # Still listening: a's genuine announces keep arriving after the flood.
    received = b.request(op="udp")["received"]
    assert wait_until(lambda: b.request(op="udp")["received"] > received + 1, timeout_s=3)


def test_a_host_that_leaves_is_offline_within_3_intervals(lab, tmp_path):
    names = ["a", "b", "c"]
    ids = prepaired(tmp_path, names)
    agents = start(lab, tmp_path, names, ids)
    a, c = agents["a"], agents["c"]
    assert a.request(op="call", peer=c.id, name="echo", args=0, timeout=2.0) == 0
    assert wait_until(lambda: a.request(op="peers")[c.id]["status"] == "online")
    c.proc.send_signal(signal.SIGSTOP)  # no FIN, no pongs, no announces: just gone
    try:
        gone_at = time.monotonic()
        assert wait_until(lambda: a.request(op="peers")[c.id]["status"] != "online",
                          timeout_s=6 * INTERVAL_S, interval_s=0.02)
        assert time.monotonic() - gone_at <= 3 * INTERVAL_S + 0.1
        assert a.request(op="peers")[str(ids["b"])]["status"] == "online"
    finally:
        c.proc.send_signal(signal.SIGCONT)


def test_nodes_on_one_host_share_the_announce_port(lab, tmp_path):
    names = ["a", "b", "c"]
    ids = prepaired(tmp_path, names)
    agents = start(lab, tmp_path, names, ids, hosts=[0, 0, 1])
    for x, y in [("a", "c"), ("b", "c"), ("c", "a"), ("c", "b"), ("a", "b")]:
        assert agents[x].request(op="call", peer=str(ids[y]), name="echo", args=y,
                                 timeout=2.0) == y


def test_a_new_address_is_announced_at_once_not_an_interval_later(lab, tmp_path):
    ids = prepaired(tmp_path, ["a", "b"])
    agents = start(lab, tmp_path, ["a", "b"], ids, interval_s=60.0)
    a, b = agents["a"], agents["b"]
    assert a.request(op="call", peer=b.id, name="echo", args=0, timeout=2.0) == 0
    assert a.request(op="candidates", peer=b.id)["udp"] == [lab.address(1), b.port]
    lab.ip(1, "addr", "del", f"{lab.address(1)}/24", "dev", "eth0")
    lab.ip(1, "addr", "add", "10.77.0.99/24", "dev", "eth0")
    assert wait_until(
        lambda: a.request(op="candidates", peer=b.id).get("udp") == ["10.77.0.99", b.port],
        timeout_s=3, interval_s=0.05)  # b polls every 0.5 s; its next timed announce is in 60 s

    def answered() -> bool:
        # A call already on a's old link (dead: b's FIN left from the vanished
        # address) fails with ConnectionLost once the probe the new address triggered
        # closes that link, within a second; the next call goes over the new link.
        try:
            return a.request(op="call", peer=b.id, name="echo", args=1, timeout=1.0) == 1
        except RuntimeError as exc:
            assert "ConnectionLost" in str(exc) or "CallTimeout" in str(exc), exc
            return False

    assert wait_until(answered, timeout_s=4, interval_s=0.05)


def test_solicitations_from_beyond_the_subnet_get_no_answer(lab, tmp_path):
    """b answers a solicitation only when the asker is on one of its own subnets: a
    host that reaches b through a router (here host 3, b's default gateway, asking from
    10.88.0.5) gets nothing, so b cannot be used as a reflector from afar; a neighbour
    asking from the same host gets its answer."""
    ids = prepaired(tmp_path, ["b"])
    b = start(lab, tmp_path, ["b"], ids, hosts=[1])["b"]
    lab.ip(1, "route", "add", "default", "via", lab.address(3))  # b can route to 10.88/16
    lab.ip(3, "addr", "add", "10.88.0.5/24", "dev", "eth0")
    flood = lab.popen(3, "tests.procs.solicit_flood", lab.address(1),
                      f"10.88.0.5,{lab.address(3)}", "--seconds", "0.3")
    try:
        report = json.loads(flood.stdout.read())
    finally:
        flood.wait(10)
        flood.stdout.close()
        flood.stdin.close()
    far, near = report["answers"]
    assert near >= 1 and report["peers"] == [str(ids["b"])]  # the neighbour is answered
    assert far == 0
    assert b.request(op="udp")["unanswered"].get("off_subnet", 0) >= 1
