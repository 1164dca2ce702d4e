"""The command line's LAN flow between hosts (issue 22): network namespaces this test
creates and deletes, joined by a bridge of their own; broadcast and multicast stay in
the lab.

Two hosts run ``peernet listen --discovery udp`` (and again with mdns). From a third
process on host 0, ``peernet nearby`` lists the other, ``peernet pair N`` picks it, and
``peernet call OTHER echo '"hi"'`` returns with no address anywhere. Then 20 fresh
``peernet call`` processes: the command's time from its start to its result (a new
node, discovery, the dial, the call), p50 under 1 s; Python's start-up and the imports
are measured apart and reported.
A solicitation flood from a fourth host is rate-limited and leaves live calls alone.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peernet._addresses import ADDRESS_FILE_NAME
from peernet._proto.announce import is_solicitation
from peernet.identity import load_or_create
from peernet.trust import TrustStore
from tests.integration.test_cli import Proc, ready
from tests.netns_lab import ROOT, Lab, require_netns

pytestmark = pytest.mark.netns

RUNS = 20


@pytest.fixture
def lab():
    require_netns()
    with Lab(4) as lab:
        yield lab


def peernet_argv(lab: Lab, host: int, data_dir: Path, *args: str) -> list[str]:
    return ["ip", "netns", "exec", lab.hosts[host], sys.executable, "-m", "peernet",
            "--data-dir", str(data_dir), *args]


def peernet_run(lab: Lab, host: int, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(peernet_argv(lab, host, data_dir, *args), capture_output=True,
                          text=True, timeout=30, cwd=ROOT)


def run_lan_flow(lab: Lab, tmp_path: Path, mode: str) -> None:
    """The flow of the module docstring, with ``mode`` discovery."""
    a_dir, b_dir, c_dir, d_dir = (tmp_path / n for n in ("a", "b", "c", "d"))
    ids = {n: load_or_create(d).peer_id for n, d in zip("abcd", (a_dir, b_dir, c_dir, d_dir))}
    # b's owner paired c's and d's ids (told out of band); c will pick b from `nearby`.
    TrustStore.load(b_dir).pair(ids["c"], label="c")
    TrustStore.load(b_dir).pair(ids["d"], label="d")
    TrustStore.load(d_dir).pair(ids["b"], label="b")
    disc = ["--discovery", mode, "--interface", "eth0"]
    listeners = [Proc(peernet_argv(lab, host, d, "listen", *disc), cwd=ROOT)
                 for host, d in ((0, a_dir), (1, b_dir))]
    try:
        ports = []
        for proc, who in zip(listeners, "ab"):
            pid, port = ready(proc)
            assert pid == str(ids[who])
            ports.append(port)
            proc.expect(rf"^discovery {mode} on eth0 10\.77\.0\.\d", stream="err")
        out = peernet_run(lab, 0, c_dir, "nearby", *disc, "--wait", "1.5")
        assert out.returncode == 0, out.stderr
        rows = [line.split() for line in out.stdout.splitlines()[1:]]
        mine = [r for r in rows if str(ids["b"]).startswith(r[1].rstrip("…"))]
        assert len(mine) == 1, out.stdout
        assert mine[0][2].startswith(f"{lab.address(1)}:") and mode in mine[0][3]
        out = peernet_run(lab, 0, c_dir, "pair", mine[0][0], "--label", "other", "--yes")
        assert out.returncode == 0 and str(ids["b"]) in out.stdout, out.stderr
        out = peernet_run(lab, 0, c_dir, "call", "other", "echo", '"hi"', *disc)
        assert (out.returncode, out.stdout) == (0, '"hi"\n'), out.stderr

        # Each a fresh process, as a cron job or a shell user runs it. What discovery
        # must make fast (issue 22: "a fresh process's first call finds the peer in
        # under 1 s") is the command's own work: from the CLI's start, through a new
        # node, its solicitation, the dial and the call, to the printed result. The
        # interpreter's start-up and the imports before it are reported apart: they
        # are not discovery's, and on a loaded machine they alone can pass 1 s.
        starts, imports, calls, totals = [], [], [], []
        for _ in range(RUNS):
            # Found by discovery every time, not at the address the last run remembered.
            (c_dir / ADDRESS_FILE_NAME).unlink(missing_ok=True)
            spawned = time.monotonic()
            out = subprocess.run(
                ["ip", "netns", "exec", lab.hosts[0], sys.executable, "-m",
                 "tests.procs.timed_cli", "--data-dir", str(c_dir), "call", "other", "echo",
                 '"hi"', *disc, "--timeout", "3"],
                capture_output=True, text=True, timeout=30, cwd=ROOT)
            totals.append(time.monotonic() - spawned)
            assert (out.returncode, out.stdout) == (0, '"hi"\n'), out.stderr
            at = json.loads(out.stderr.splitlines()[-1])
            starts.append(at["up"] - spawned)
            imports.append(at["imported"] - at["up"])
            calls.append(at["done"] - at["imported"])

        def ms(times: list[float]) -> str:
            ordered = [round(t * 1000) for t in sorted(times)]
            return (f"p50 {round(statistics.median(times) * 1000)} ms, "
                    f"p90 {ordered[int(RUNS * 0.9) - 1]} ms, max {ordered[-1]} ms")

        print(f"\n{mode}, {RUNS} fresh `peernet call` processes:\n"
              f"  the command, start to result: {ms(calls)}\n"
              f"  start-up (ip netns exec, Python): {ms(starts)}; imports: {ms(imports)}\n"
              f"  whole process, spawn to exit: {ms(totals)}")
        assert statistics.median(calls) < 1.0

        # b restarts, on another free port as `listen` picks: the address c remembers
        # now refuses, and the call still finds b by discovery at once.
        listeners[1].stop()
        listeners[1] = Proc(peernet_argv(lab, 1, b_dir, "listen", *disc), cwd=ROOT)
        old_port, (_, ports[1]) = ports[1], ready(listeners[1])
        assert ports[1] != old_port
        started = time.monotonic()
        out = peernet_run(lab, 0, c_dir, "call", "other", "echo", '"again"', *disc)
        assert (out.returncode, out.stdout) == (0, '"again"\n'), out.stderr
        assert time.monotonic() - started < 3.0

        if mode == "udp":
            flood(lab, ids, d_dir, ports[1])
    finally:
        for proc in listeners:
            proc.stop()


def flood(lab: Lab, ids: dict, d_dir: Path, b_port: int) -> None:
    """Host 3 floods b (host 1) with solicitations from 20 addresses while d (host 2)
    keeps calling b over its live link (dialled by hand: one link, never a second).
    A bystander on host 2 listens on the discovery port: answers go by unicast to
    whoever asked, so it hears none of them."""
    d = lab.agent(2, d_dir, "--heartbeat", "30", "60")
    bystander = Proc(["ip", "netns", "exec", lab.hosts[2], sys.executable, "-m",
                      "tests.procs.udp_sniffer", "4040"], cwd=ROOT)
    try:
        bystander.expect("^READY$")
        # It does hear b: one of b's own (5 s) broadcast announces, before the flood.
        bystander.expect(f'"from": "{lab.address(1)}"', timeout=7.0)
        heard = _flood(lab, ids, d, b_port)
    finally:
        bystander.stop()
    from_b = [json.loads(line) for line in bystander.rest("out")]
    from_b = [p for p in from_b if p["from"] == lab.address(1)]
    assert all(not is_solicitation(bytes.fromhex(p["hex"])) for p in from_b)
    print(f"a bystander on the LAN heard {len(from_b)} announces from b meanwhile "
          f"(the attacker got {heard})")
    assert len(from_b) <= 2  # b's own 5 s announces; none of the answers


def _flood(lab: Lab, ids: dict, d, b_port: int) -> int:
    b = str(ids["b"])
    d.request(op="connect", peer=b, host=lab.address(1), port=b_port)
    assert d.request(op="call", peer=b, name="echo", args=0, timeout=3.0) == 0
    link_before = d.request(op="link", peer=b)
    sources = [f"10.77.0.{100 + i}" for i in range(20)]
    for ip in sources:
        lab.ip(3, "addr", "add", f"{ip}/24", "dev", "eth0")
    attacker = lab.popen(3, "tests.procs.solicit_flood", lab.address(1), ",".join(sources),
                         "--seconds", "2")
    try:
        worst_s, calls = 0.0, 0
        while attacker.poll() is None:
            t0 = time.monotonic()
            assert d.request(op="call", peer=b, name="echo", args=calls, timeout=2.0) == calls
            worst_s = max(worst_s, time.monotonic() - t0)
            calls += 1
        report = json.loads(attacker.stdout.read())
    finally:
        if attacker.poll() is None:
            attacker.kill()
        attacker.wait(10)
        attacker.stdout.close()
        attacker.stdin.close()
    total, seconds = sum(report["answers"]), report["seconds"]
    print(f"solicitation flood: {report['sent']} sent from {len(sources)} addresses in "
          f"{seconds:.1f} s; {total} answered (at most {max(report['answers'])} per "
          f"address); {calls} live calls meanwhile, worst {worst_s * 1000:.1f} ms")
    assert report["sent"] > 2000
    assert report["peers"] == [b]  # answers are b's own signed announce, nothing else
    assert total <= 50 + 50 * (seconds + 0.5)  # overall: burst 50, then 50/s
    assert max(report["answers"]) <= 10 + 5 * (seconds + 0.5)  # per address: 10, then 5/s
    assert worst_s < 0.5 and calls >= 5
    assert d.request(op="link", peer=b) == link_before  # the live link is untouched
    return total


def test_cli_lan_flow_udp(lab, tmp_path):
    run_lan_flow(lab, tmp_path, "udp")


def test_cli_lan_flow_mdns(lab, tmp_path):
    pytest.importorskip("zeroconf")
    run_lan_flow(lab, tmp_path, "mdns")


def test_listen_with_both_discoveries_then_nearby_and_chat_without_an_address(lab, tmp_path):
    """`listen` takes several discoveries and says where each one runs; `nearby` with
    both hears the listener both ways; `chat` finds a paired peer with no --to."""
    a_dir, c_dir = tmp_path / "a", tmp_path / "c"
    ids = {n: load_or_create(d).peer_id for n, d in (("a", a_dir), ("c", c_dir))}
    TrustStore.load(a_dir).pair(ids["c"], label="c")
    listener = Proc(peernet_argv(lab, 1, a_dir, "listen", "--discovery", "udp",
                                 "--discovery", "mdns", "--interface", "eth0"), cwd=ROOT)
    chat = None
    try:
        assert ready(listener)[0] == str(ids["a"])
        listener.expect(rf"^discovery udp on eth0 {lab.address(1)} \(broadcast 10\.77\.0\.255\)",
                        stream="err")
        listener.expect(rf"^discovery mdns on eth0 {lab.address(1)}", stream="err")
        out = peernet_run(lab, 0, c_dir, "nearby", "--discovery", "udp,mdns", "--wait", "1.5")
        assert out.returncode == 0, out.stderr
        (row,) = [line.split() for line in out.stdout.splitlines()[1:]]
        assert str(ids["a"]).startswith(row[1].rstrip("…"))
        assert sorted(row[3].split(",")) == ["mdns", "udp"]
        out = peernet_run(lab, 0, c_dir, "pair", "1", "--label", "a", "--yes")
        assert out.returncode == 0, out.stderr
        chat = Proc(peernet_argv(lab, 0, c_dir, "chat", "a", "--discovery", "udp"), cwd=ROOT)
        ready(chat)
        listener.expect(r"^\* c is online$", stream="err")
        chat.expect(r"^chat with a: type a line", stream="err")
        chat.write("hello over the lan\n")
        try:
            listener.expect(r"^c: hello over the lan$", timeout=3.0)
        except AssertionError:
            # Both sides dialled at once (each heard the other): while the second link
            # takes over, a line may find no link. Then the chat must say so, never
            # drop it silently; typed again, it arrives.
            chat.expect(r"^\(not delivered: a is offline\) hello over the lan$", stream="err",
                        timeout=1.0)
            chat.write("hello over the lan\n")
            listener.expect(r"^c: hello over the lan$")
    finally:
        if chat is not None:
            chat.stop()
        listener.stop()


@pytest.mark.parametrize("mode", ["udp", "mdns"])
def test_a_peer_that_got_another_ip_is_found_by_its_key(lab, tmp_path, mode):
    """b's host gets another address (a new DHCP lease) and b starts again: c's call
    finds it by its key at once. The remembered address no longer answers at all (no
    host there), and the dial still trying it gives way to the address b announces; it
    used to hang the call until its timeout ("not nearby")."""
    if mode == "mdns":
        pytest.importorskip("zeroconf")
    b_dir, c_dir = tmp_path / "b", tmp_path / "c"
    b_id, c_id = load_or_create(b_dir).peer_id, load_or_create(c_dir).peer_id
    TrustStore.load(b_dir).pair(c_id, label="c")
    TrustStore.load(c_dir).pair(b_id, label="b")
    disc = ["--discovery", mode, "--interface", "eth0"]
    for new_address in (None, "10.77.0.50"):
        if new_address is not None:
            lab.ip(1, "addr", "del", f"{lab.address(1)}/24", "dev", "eth0")
            lab.ip(1, "addr", "add", f"{new_address}/24", "dev", "eth0")
        listener = Proc(peernet_argv(lab, 1, b_dir, "listen", *disc), cwd=ROOT)
        try:
            ready(listener)
            started = time.monotonic()
            out = peernet_run(lab, 0, c_dir, "call", "b", "echo", '"hi"', *disc)
            assert (out.returncode, out.stdout) == (0, '"hi"\n'), out.stderr
            assert time.monotonic() - started < 3.0
        finally:
            listener.stop()
    book = json.loads((c_dir / "addresses.json").read_text())
    assert "10.77.0.50" in json.dumps(book)  # the new address is the one remembered now
