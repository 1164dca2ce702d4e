"""The command line's LAN flow (``--discovery``, ``nearby``, ``pair N``, ``call`` without
``--to``) on loopback: UDP discovery by unicast ``--udp-target`` only, never broadcast
on the machine's interfaces. The namespace lab (tests/netns/test_netns_cli.py) runs the
same flow with real broadcast and mDNS between hosts."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

import peernet.cli
from peernet._io.netmon import LocalAddress
from peernet.trust import TrustStore
from tests.integration.test_cli import LOOPBACK, make_id, one_line_error, peernet_proc, ready, run
from tests.integration.test_discovery import free_udp_ports


def lan(port, target):
    """Discovery options for a CLI process on loopback: unicast to ``target`` only."""
    return ["--udp-port", str(port), "--udp-target", f"{LOOPBACK}:{target}"]


@pytest.fixture
def bob_listening(tmp_path):
    """bob runs `listen --discovery udp` and trusts alice; alice has not paired bob yet."""
    a, b = tmp_path / "alice", tmp_path / "bob"
    a_id, b_id = make_id(tmp_path, "alice"), make_id(tmp_path, "bob")
    TrustStore.load(b).pair(a_id, label="alice")
    pa, pb = free_udp_ports(2)
    bob = peernet_proc("--data-dir", str(b), "listen", "--host", LOOPBACK, "--discovery", "udp",
                       *lan(pb, pa))
    try:
        assert ready(bob)[0] == b_id
        bob.expect(r"^discovery udp: unicast to 127\.0\.0\.1:\d+ \(UDP port \d+\) "
                   r"\(from --discovery\)", stream="err")
        yield str(a), a_id, b_id, lan(pa, pb), bob
    finally:
        bob.stop()


def test_nearby_pair_by_number_then_call_without_an_address(bob_listening):
    a, a_id, b_id, opts, bob = bob_listening
    out = run("--data-dir", a, "nearby", "--discovery", "udp", "--wait", "0.5", *opts)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split() == ["#", "ID", "ADDRESS", "VIA", "AGE"]
    number, prefix, address, via = row.split()[:4]
    assert number == "1" and b_id.startswith(prefix.rstrip("…")) and via == "udp"
    assert address.startswith(f"{LOOPBACK}:")
    # Without --yes, a script is shown the full id and told to confirm.
    refused = run("--data-dir", a, "pair", "1")
    assert refused.returncode == 2 and b_id in refused.stdout and "--yes" in refused.stderr
    paired = run("--data-dir", a, "pair", "1", "--label", "bob", "--yes")
    assert paired.returncode == 0, paired.stderr
    assert b_id in paired.stdout and "paired with" in paired.stdout
    # No --to: the default discovery comes from the environment.
    env = {**os.environ, "PEERNET_DISCOVERY": "udp"}
    started = time.monotonic()
    call = run("--data-dir", a, "call", "bob", "echo", '"hi"', *opts, env=env)
    elapsed = time.monotonic() - started
    assert (call.returncode, call.stdout) == (0, '"hi"\n'), call.stderr
    print(f"fresh `peernet call` on loopback, found by solicitation: {elapsed * 1000:.0f} ms")
    assert run("--data-dir", a, "send", "bob", "chat", '"by udp"', *opts, env=env).returncode == 0
    bob.expect(r"^alice: by udp$")
    peers = run("--data-dir", a, "peers", *opts, env=env)
    assert peers.returncode == 0, peers.stderr
    assert "online" in peers.stdout and f"{LOOPBACK}:" in peers.stdout


def test_pair_by_id_prefix_and_clear_errors(bob_listening, tmp_path):
    a, a_id, b_id, opts, bob = bob_listening
    # A settings file gives the default discovery (the flags here only aim it at loopback).
    settings = tmp_path / "alice" / "settings.toml"
    settings.write_text('discovery = ["udp"]\n')
    assert run("--data-dir", a, "nearby", "--wait", "0.3", *opts).returncode == 0
    assert "nearby entries start" not in run("--data-dir", a, "pair", "pn1zzzzzzz").stderr
    out = run("--data-dir", a, "pair", b_id[:12], "--yes")
    assert out.returncode == 0 and b_id in out.stdout, out.stderr
    bob.stop()  # gone: not nearby any more
    msg = one_line_error(run("--data-dir", a, "call", b_id, "echo", "--timeout", "0.5", *opts), 3)
    assert "is not nearby" in msg and "udp" in msg and "0.5 s" in msg
    settings.unlink()
    msg = one_line_error(run("--data-dir", a, "call", b_id, "echo", "--timeout", "0.5"), 2)
    assert "no address for" in msg and "--to HOST:PORT" in msg and "PEERNET_DISCOVERY" in msg
    msg = one_line_error(run("--data-dir", a, "nearby"), 2)
    assert "needs discovery" in msg
    settings.write_text('discovery = ["carrier pigeon"]\n')
    assert "unknown discovery" in one_line_error(run("--data-dir", a, "nearby"), 2)
    # (A setting that exists would let this `nearby` run: it must fail before any socket.)
    settings.write_text('discovery = "udp"\ncolour = 4\n')
    assert "unknown setting" in one_line_error(run("--data-dir", a, "nearby"), 1)


def test_mdns_without_the_extra_is_one_clear_line(tmp_path):
    code = ("import sys; sys.modules['zeroconf'] = None; import peernet.cli; "
            "sys.exit(peernet.cli.main(sys.argv[1:]))")
    import subprocess
    out = subprocess.run([sys.executable, "-c", code, "--data-dir", str(tmp_path / "d"),
                          "nearby", "--discovery", "mdns"], capture_output=True, text=True,
                         timeout=30)
    msg = one_line_error(out, 1)
    assert 'pip install "peernet-py[mdns]"' in msg


def test_a_udp_target_at_this_machines_own_port_is_a_usage_error(tmp_path):
    """The way a new user first tries a short code in two terminals: both on the
    default UDP port, each targeting 127.0.0.1:4040. Refused before any traffic, with
    the crossed ports that work."""
    for command in (["join", "7-amber-orbit"], ["nearby"], ["invite", "--no-qr"]):
        line = one_line_error(run("--data-dir", str(tmp_path / "d"), *command,
                                  "--discovery", "udp", "--udp-target", "127.0.0.1:4040"), 2)
        assert "--udp-target: target 127.0.0.1:4040 is this machine" in line, line
        assert "port 4041 with target 127.0.0.1:4040" in line
    for interface in ("lo", "127.0.0.1"):
        line = one_line_error(run("--data-dir", str(tmp_path / "d"), "nearby", "--discovery",
                                  "udp", "--interface", interface), 2)
        assert "--udp-target 127.0.0.1 at the other's" in line, line


def test_an_interface_without_a_broadcast_address_is_refused(tmp_path, monkeypatch, capsys):
    tun = [LocalAddress("tun0", "10.8.0.2", 32)]
    monkeypatch.setattr(peernet.cli, "host_interfaces", lambda names=None: tun)
    monkeypatch.setattr(peernet.cli, "interface_names", lambda: ["lo", "tun0", "wlan9"])
    code = peernet.cli.main(["--data-dir", str(tmp_path / "d"), "nearby", "--discovery", "udp",
                             "--interface", "tun0"])
    err = capsys.readouterr().err
    assert code == 2 and "tun0" in err and "no broadcast address" in err and "mdns" in err
    code = peernet.cli.main(["--data-dir", str(tmp_path / "d"), "nearby", "--discovery", "udp",
                             "--interface", "wlan9"])
    assert code == 2 and "no usable IPv4 address" in capsys.readouterr().err


def _pair_on_a_terminal(a, entry, answer):
    """`peernet pair ENTRY` with stdin a terminal (a pty) on which ``answer`` is typed."""
    import pty
    import subprocess

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "peernet", "--data-dir", a, "pair", entry,
                                 "--label", "bob"], stdin=slave, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        os.write(master, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(master)
        os.close(slave)
    return proc.returncode, out, err


def test_pair_from_the_nearby_list_asks_on_a_terminal(bob_listening):
    a, a_id, b_id, opts, bob = bob_listening
    assert run("--data-dir", a, "nearby", "--discovery", "udp", "--wait", "0.5",
               *opts).returncode == 0
    code, out, err = _pair_on_a_terminal(a, "1", "n")
    assert code == 2 and b_id in out and "pair with it? [y/N]" in out and "not paired" in err
    assert TrustStore.load(Path(a)).get(b_id) is None
    code, out, err = _pair_on_a_terminal(a, b_id[:10], "y")  # by id prefix this time
    assert code == 0, err
    assert b_id in out and "paired with" in out
    assert TrustStore.load(Path(a)).get(b_id).label == "bob"
