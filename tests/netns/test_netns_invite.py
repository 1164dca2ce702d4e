"""Invites between hosts (issue 21), in network namespaces this test creates and
deletes (joined by a bridge of their own: broadcast stays in the lab).

Host 0 runs ``peernet invite``, host 1 ``peernet join SHORTCODE`` (found by UDP
discovery: a solicitation, answered at once), then a call each way. Also timed: from
starting ``peernet join`` to the result of the first ``peernet call`` against an inviter
that keeps running (an app that opened the invite with ``node.invite()``). And a third
host that races the joiner with a guess burns the invite and pairs nobody; and a
short code is found through mDNS as well. Last, the whole flow with both hosts running
`peernet listen` and the invite and join going through those nodes (item 4).
"""

from __future__ import annotations

import signal
import time

import pytest

from peernet._proto.invite import ShortCode, parse_code
from peernet.identity import load_or_create
from peernet.trust import TrustStore
from tests.integration.test_cli import Proc, ready
from tests.netns.test_netns_cli import peernet_argv, peernet_run
from tests.netns_lab import ROOT, Lab, require_netns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

DISC = ["--discovery", "udp", "--interface", "eth0"]


@pytest.fixture
def lab():
    require_netns()
    with Lab(3) as lab:
        yield lab


def stop_cleanly(proc: Proc) -> None:
    proc.p.send_signal(signal.SIGTERM)
    assert proc.wait() == 0
    proc.stop()


def test_invite_on_one_host_join_on_another_then_calls_both_ways(lab, tmp_path):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    inviter = Proc(peernet_argv(lab, 0, a_dir, "invite", "--label", "kitchen", "--no-qr",
                                *DISC), cwd=ROOT)
    try:
        short = inviter.expect(r"^short code: (\S+)$").group(1)
        started = time.monotonic()
        out = peernet_run(lab, 1, b_dir, "join", short, "--label", "laptop", *DISC)
        joined_s = time.monotonic() - started
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("paired with kitchen (pn1")
        inviter.expect(r"^paired with laptop \(pn1")
        assert inviter.wait() == 0
    finally:
        inviter.stop()
    assert TrustStore.load(a_dir).list()[0].label == "laptop"
    assert TrustStore.load(b_dir).list()[0].label == "kitchen"

    listener = Proc(peernet_argv(lab, 0, a_dir, "listen", *DISC), cwd=ROOT)
    try:
        ready(listener)
        out = peernet_run(lab, 1, b_dir, "call", "kitchen", "echo", '"hi"', *DISC)
        first_call_s = time.monotonic() - started
        assert (out.returncode, out.stdout) == (0, '"hi"\n'), out.stderr
    finally:
        stop_cleanly(listener)
    listener = Proc(peernet_argv(lab, 1, b_dir, "listen", *DISC), cwd=ROOT)
    try:
        ready(listener)
        out = peernet_run(lab, 0, a_dir, "call", "laptop", "echo", '"back"', *DISC)
        assert (out.returncode, out.stdout) == (0, '"back"\n'), out.stderr
    finally:
        stop_cleanly(listener)
    print(f"\n`peernet join {short}`: paired in {joined_s * 1000:.0f} ms (a fresh process); "
          f"first call answered {first_call_s * 1000:.0f} ms after join started (the "
          "inviter restarted as `peernet listen` in between)")


def test_join_to_the_first_call_against_a_running_inviter(lab, tmp_path):
    a = lab.agent(0, tmp_path / "a", "--discovery", "udp")
    invite = a.request(op="invite", label="kitchen")
    b_dir = tmp_path / "b"
    started = time.monotonic()
    out = peernet_run(lab, 1, b_dir, "join", invite["short"], "--label", "laptop", *DISC)
    joined_s = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    out = peernet_run(lab, 1, b_dir, "call", "kitchen", "echo", '"hi"', *DISC)
    first_call_s = time.monotonic() - started
    assert (out.returncode, out.stdout) == (0, '"hi"\n'), out.stderr
    assert a.request(op="invite_wait", timeout=1.0) == str(load_or_create(b_dir).peer_id)
    # and the other way: a node on host 1 (b's data dir, now free) answers a's call
    b = lab.agent(1, b_dir, "--discovery", "udp")
    assert a.request(op="call", peer=b.id, name="echo", args="back", timeout=3.0) == "back"
    print(f"\nrunning inviter: `peernet join` paired in {joined_s * 1000:.0f} ms; first "
          f"`peernet call` answered {first_call_s * 1000:.0f} ms after join started")
    assert first_call_s < 3.0


def test_a_third_host_racing_with_a_guess_pairs_nobody(lab, tmp_path):
    a = lab.agent(0, tmp_path / "a", "--discovery", "udp")
    invite = a.request(op="invite", label="kitchen")
    code = parse_code(invite["short"])
    assert isinstance(code, ShortCode)
    guess = ShortCode(code.nameplate, ((code.words[0] + 1) % 256, code.words[1])).text
    c_dir, b_dir = tmp_path / "c", tmp_path / "b"
    out = peernet_run(lab, 2, c_dir, "join", guess, *DISC)
    assert out.returncode == 4 and "wrong code" in out.stderr, out.stderr
    out = peernet_run(lab, 1, b_dir, "join", invite["short"], *DISC)
    assert out.returncode in (3, 4), out.stderr  # burned, or gone from the announces
    assert a.request(op="invite_wait", timeout=2.0) == {"failed": "InviteRejected",
                                                        "status": "burned"}
    assert a.request(op="peers") == {}
    assert len(TrustStore.load(b_dir)) == len(TrustStore.load(c_dir)) == 0


def test_a_short_code_attempt_from_another_subnet_is_refused(lab, tmp_path):
    """Host 1 moves to 10.78.0.2/24 (routed to host 0 over the same wire): it reaches
    the inviter's port, as a machine beyond a router would, but is on no LAN the
    inviter announces on. Its short-code attempt (16 bits) is refused at message 3 and
    touches nothing; host 2, on the inviter's LAN, then joins with the short code, and
    host 1 can still join a second invite with its long code."""
    lab.ip(1, "addr", "del", f"{lab.address(1)}/24", "dev", "eth0")
    lab.ip(1, "addr", "add", "10.78.0.2/24", "dev", "eth0")
    lab.ip(1, "route", "add", "10.77.0.0/24", "dev", "eth0")
    lab.ip(0, "route", "add", "10.78.0.0/24", "dev", "eth0")
    a = lab.agent(0, tmp_path / "a", "--discovery", "udp")
    far = lab.agent(1, tmp_path / "far")
    invite = a.request(op="invite", label="kitchen")
    nameplate = parse_code(invite["short"]).nameplate
    for _ in range(3):
        assert far.request(op="knock", host=lab.address(0), port=a.port, peer=a.id,
                           nameplate=nameplate) == "InviteRejected"
    out = peernet_run(lab, 2, tmp_path / "near", "join", invite["short"], *DISC)
    assert out.returncode == 0, out.stderr
    assert a.request(op="invite_wait", timeout=2.0) == str(
        load_or_create(tmp_path / "near").peer_id)
    second = a.request(op="invite", label="kitchen", short=False)
    assert second["short"] is None
    assert far.request(op="join", code=second["long"]) == a.id


def test_a_short_code_is_found_by_mdns_too(lab, tmp_path):
    pytest.importorskip("zeroconf")
    a = lab.agent(0, tmp_path / "a", "--discovery", "mdns")
    invite = a.request(op="invite", label="kitchen")
    out = peernet_run(lab, 1, tmp_path / "b", "join", invite["short"], "--discovery", "mdns",
                      "--interface", "eth0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("paired with kitchen (pn1")
    assert a.request(op="invite_wait", timeout=2.0) == str(load_or_create(tmp_path / "b")
                                                           .peer_id)


def test_invite_and_join_through_running_nodes_on_two_hosts(lab, tmp_path):
    """Both hosts run `peernet listen`; `peernet invite` and `peernet join` in second
    terminals go through those nodes (issue 21 item 4): no restart, calls both ways."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    listeners = [Proc(peernet_argv(lab, host, d, "listen", *DISC), cwd=ROOT)
                 for host, d in ((0, a_dir), (1, b_dir))]
    try:
        for listener in listeners:
            ready(listener)
        inviter = Proc(peernet_argv(lab, 0, a_dir, "invite", "--label", "kitchen", "--no-qr"),
                       cwd=ROOT)
        try:
            short = inviter.expect(r"^short code: (\S+)$").group(1)
            started = time.monotonic()
            out = peernet_run(lab, 1, b_dir, "join", short, "--label", "laptop")
            joined_s = time.monotonic() - started
            assert out.returncode == 0, out.stderr
            inviter.expect(r"^paired with laptop \(pn1")
            assert inviter.wait() == 0
        finally:
            inviter.stop()
        out = peernet_run(lab, 1, b_dir, "call", "kitchen", "echo", '"hi"')
        first_call_s = time.monotonic() - started
        assert (out.returncode, out.stdout) == (0, '"hi"\n'), out.stderr
        out = peernet_run(lab, 0, a_dir, "call", "laptop", "echo", '"back"')
        assert (out.returncode, out.stdout) == (0, '"back"\n'), out.stderr
        print(f"\nthrough running nodes: `peernet join` paired in {joined_s * 1000:.0f} ms; "
              f"first call answered {first_call_s * 1000:.0f} ms after join started")
    finally:
        for listener in listeners:
            stop_cleanly(listener)
