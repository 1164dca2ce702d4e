"""``peernet invite`` and ``peernet join`` on loopback (issue 21): both code forms, and
the exit codes of a wrong code, an expired invite and a malformed code. UDP discovery
goes by unicast to loopback targets, never broadcast."""

from __future__ import annotations

import dataclasses
import sys

import pytest

import shlex

from peernet._addresses import AddressBook
from peernet._proto.invite import parse_code
from peernet.identity import load_or_create
from peernet.trust import TrustStore
from tests.integration.test_cli import Proc, closed_port, one_line_error, ready, run
from tests.integration.test_discovery import free_udp_ports

pytestmark = pytest.mark.timeout(60)


def invite(data_dir, *args):
    return Proc([sys.executable, "-m", "peernet", "--data-dir", str(data_dir), "invite",
                 "--host", "127.0.0.1", "--no-qr", *args])


def udp_pair():
    """Discovery options for the inviter and the joiner: each announces to the other."""
    pi, pj = free_udp_ports(2)
    return (["--udp-port", str(pi), "--udp-target", f"127.0.0.1:{pj}"],
            ["--udp-port", str(pj), "--udp-target", f"127.0.0.1:{pi}"])


def test_invite_and_join_with_the_short_code(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    disc_a, disc_b = udp_pair()
    proc = invite(a, "--label", "kitchen", *disc_a)
    try:
        short = proc.expect(r"^short code: (\d+-[a-z]+-[a-z]+)$").group(1)
        long = proc.expect(r"^long code: (pninv1\S+)$").group(1)
        shown = proc.expect(r"^inviter id: (pn1\S+)$").group(1)
        assert shown == load_or_create(a).peer_id.short  # next to the codes
        proc.expect(rf"peernet join {short} ", stream="err")
        out = run("--data-dir", str(b), "join", short, "--label", "laptop", *disc_b)
        assert out.returncode == 0, out.stderr
        inviter = TrustStore.load(b).list()[0]
        assert out.stdout == f"paired with kitchen ({inviter.peer_id})\n"
        assert f"peernet --data-dir {b} call kitchen echo" in out.stderr
        match = proc.expect(r"^paired with laptop \((pn1\S+)\)$")
        assert proc.wait() == 0
        assert TrustStore.load(a).get(match.group(1)).label == "laptop"
        assert inviter.label == "kitchen" and long not in out.stderr + out.stdout
        # The address the joiner dialled (the announce's) is remembered at once.
        remembered = AddressBook.load(b).get(inviter.peer_id)
        assert remembered.address == ("127.0.0.1", parse_code(long).port)
    finally:
        proc.stop()


def test_invite_without_discovery_offers_the_long_code_only(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    proc = invite(a, "--discovery", "none", "--label", "far away")
    try:
        long = proc.expect(r"^long code: (pninv1\S+)$").group(1)
        proc.expect("no short code", stream="err")
        out = run("--data-dir", str(b), "join", long, "--label", "here")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("paired with far away (pn1")
        assert f"peernet --data-dir {b} call 'far away' echo" in out.stderr  # quoted for a shell
        proc.expect(r"^paired with here ")
        assert proc.wait() == 0
        assert not any(line.startswith("short code") for line in proc.seen["out"])
    finally:
        proc.stop()


def test_invite_shows_the_inviter_id_that_a_refused_join_names(tmp_path):
    """`peernet invite` prints its node's short id next to the codes, and a refused
    join's error names the node that answered, so a joiner who reached someone else
    (a node posing as the inviter) can tell at once: here the answer is the inviter's
    own (a long code with the right id but other words), and its id is the one shown."""
    a, b = tmp_path / "a", tmp_path / "b"
    proc = invite(a, "--long-only")
    try:
        long = proc.expect(r"^long code: (pninv1\S+)$").group(1)
        shown = proc.expect(r"^inviter id: (pn1\S+)$").group(1)
        proc.expect(f"names another id than {shown}", stream="err")
        code = parse_code(long)
        forged = dataclasses.replace(code, secret=bytes(16))
        line = one_line_error(run("--data-dir", str(b), "join", forged.text), 4)
        assert line.startswith(f"peernet: {shown}: wrong code"), line
        assert shown == code.inviter.short == load_or_create(a).peer_id.short
        assert proc.wait() == 4
    finally:
        proc.stop()


def test_invite_long_only_offers_no_short_code_even_with_discovery(tmp_path):
    """`peernet invite --long-only`: no short code, also with discovery configured (its
    16 bits are for a LAN you trust); the long code joins as ever."""
    a, b = tmp_path / "a", tmp_path / "b"
    disc_a, _ = udp_pair()
    proc = invite(a, "--long-only", "--discovery", "udp", "--label", "far away", *disc_a)
    try:
        long = proc.expect(r"^long code: (pninv1\S+)$").group(1)
        proc.expect("no short code: --long-only", stream="err")
        out = run("--data-dir", str(b), "join", long, "--label", "here")
        assert out.returncode == 0, out.stderr
        proc.expect(r"^paired with here ")
        assert proc.wait() == 0
        assert not any(line.startswith("short code") for line in proc.seen["out"])
    finally:
        proc.stop()


def test_a_wrong_code_fails_both_commands_with_exit_4(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    disc_a, disc_b = udp_pair()
    proc = invite(a, *disc_a)
    try:
        number, first, second = proc.expect(r"^short code: (\d+)-([a-z]+)-([a-z]+)$").groups()
        wrong = f"{number}-{first}-{'amber' if second != 'amber' else 'orbit'}"
        line = one_line_error(run("--data-dir", str(b), "join", wrong, *disc_b), 4)
        assert "wrong code" in line
        proc.expect("burned", stream="err")
        assert proc.wait() == 4
        assert len(TrustStore.load(a)) == len(TrustStore.load(b)) == 0
    finally:
        proc.stop()


def test_an_expired_invite_exits_5_and_a_malformed_code_2(tmp_path):
    proc = invite(tmp_path / "a", "--discovery", "none", "--ttl", "0.5")
    try:
        long = proc.expect(r"^long code: (pninv1\S+)$").group(1)
        proc.expect("expired", stream="err")
        assert proc.wait() == 5
    finally:
        proc.stop()
    line = one_line_error(run("--data-dir", str(tmp_path / "b"), "join", long), 3)
    assert "could not reach" in line
    line = one_line_error(run("--data-dir", str(tmp_path / "b"), "join", "7-amber-orbt"), 2)
    assert "did you mean 'orbit'" in line


def test_a_short_code_without_discovery_is_a_usage_error_in_cli_terms(tmp_path):
    """It said "use Node(discovery='udp') ... on both sides", and exit 3 (not found),
    to a user who had typed --discovery none."""
    b = tmp_path / "b"
    line = one_line_error(run("--data-dir", str(b), "join", "7-amber-orbit",
                              "--discovery", "none"), 2)
    assert "--discovery none" in line and "long code" in line and "Node(" not in line
    listener = Proc([sys.executable, "-m", "peernet", "--data-dir", str(b), "listen",
                     "--host", "127.0.0.1", "--discovery", "none"])
    try:
        listener.expect(r"^READY ")
        line = one_line_error(run("--data-dir", str(b), "join", "7-amber-orbit"), 2)
        assert f"the node running on {b} has none" in line and "Node(" not in line
    finally:
        listener.stop()


def test_join_reads_the_code_from_stdin_so_other_users_cannot_see_it(tmp_path):
    """A code in the command line is in /proc/PID/cmdline, which every local user can
    read while join runs, and one of them could join with it first: `peernet join`
    without CODE (or with `-`) reads it from stdin instead."""
    proc = invite(tmp_path / "a", "--discovery", "none", "--label", "far")
    try:
        long = proc.expect(r"^long code: (pninv1\S+)$").group(1)
        out = run("--data-dir", str(tmp_path / "b"), "join", "--label", "here",
                  input=f"  {long}  \n")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("paired with far (pn1") and long not in out.stderr
        proc.expect(r"^paired with here ")
        assert proc.wait() == 0
    finally:
        proc.stop()
    for argv, stdin in ((["join"], ""), (["join", "-"], "7-amber-orbt\n")):
        line = one_line_error(run("--data-dir", str(tmp_path / "b"), *argv, input=stdin), 2)
        assert "no code" in line or "did you mean 'orbit'" in line


def test_invite_and_join_through_running_nodes_then_calls_both_ways(tmp_path):
    """Issue 21 item 4: `peernet invite` and `peernet join` on data dirs that running
    nodes hold go through their control endpoints; the nodes pair, announce, answer
    and dial, and serve calls at once, with no restart."""
    import time

    from tests.integration.test_cli import ready

    a, b = tmp_path / "a", tmp_path / "b"
    disc_a, disc_b = udp_pair()
    nodes = [Proc([sys.executable, "-m", "peernet", "--data-dir", str(d), "listen", "--host",
                   "127.0.0.1", "--discovery", "udp", *disc]) for d, disc in ((a, disc_a),
                                                                             (b, disc_b))]
    try:
        for node in nodes:
            ready(node)
        proc = Proc([sys.executable, "-m", "peernet", "--data-dir", str(a), "invite",
                     "--label", "kitchen", "--no-qr"])
        try:
            proc.expect("open in the node running on", stream="err")
            short = proc.expect(r"^short code: (\S+)$").group(1)
            shown = proc.expect(r"^inviter id: (pn1\S+)$").group(1)
            assert shown == load_or_create(a).peer_id.short
            started = time.monotonic()
            out = run("--data-dir", str(b), "join", short, "--label", "laptop")
            assert out.returncode == 0, out.stderr
            assert out.stdout.startswith("paired with kitchen (pn1")
            proc.expect(r"^paired with laptop \(pn1")
            assert proc.wait() == 0
        finally:
            proc.stop()
        out = run("--data-dir", str(b), "call", "kitchen", "echo", '"hi"')
        first_call_s = time.monotonic() - started
        assert (out.returncode, out.stdout) == (0, '"hi"\n'), out.stderr
        out = run("--data-dir", str(a), "call", "laptop", "echo", '"back"')
        assert (out.returncode, out.stdout) == (0, '"back"\n'), out.stderr
        print(f"\njoin to the first call's result through running nodes: "
              f"{first_call_s * 1000:.0f} ms (two fresh CLI processes)")
    finally:
        for node in nodes:
            node.stop()


def test_invite_through_a_running_node_says_which_flags_it_cannot_apply(tmp_path):
    """A new user's `invite --discovery udp --udp-port ...` on a data dir whose node runs
    without discovery: the flags were dropped without a word (the invite said only
    "long code only"). The running node keeps its settings; the command says so."""
    from tests.integration.test_cli import ready

    a = tmp_path / "a"
    node = Proc([sys.executable, "-m", "peernet", "--data-dir", str(a), "listen", "--host",
                 "127.0.0.1", "--discovery", "none"])
    try:
        ready(node)
        proc = Proc([sys.executable, "-m", "peernet", "--data-dir", str(a), "invite", "--no-qr",
                     "--host", "127.0.0.1", "--discovery", "udp", "--udp-port", "4999",
                     "--udp-target", "127.0.0.1:4998"])
        try:
            proc.expect("runs no discovery: long code only", stream="err")
            proc.expect(r"^\(--host, --discovery, --udp-port, --udp-target ignored: the "
                        r"running node keeps the settings it was started with", stream="err")
            proc.expect(r"^long code: pninv1")
        finally:
            proc.stop()
    finally:
        node.stop()


def _invite_join_listen_call(tmp_path, invite_args, settings=""):
    """`peernet invite` with no node running (it runs its own) and `peernet join` with
    the long code; then what the inviter's note says to run, and a call from the joiner
    without --to. Returns (the inviter's note, the listener's port, the invite's)."""
    a, b = tmp_path / "a", tmp_path / "b"
    if settings:
        a.mkdir(mode=0o700)
        (a / "settings.toml").write_text(settings)
    proc = invite(a, "--discovery", "none", "--label", "alice", *invite_args)
    listener = None
    try:
        long = proc.expect(r"^long code: (pninv1\S+)$").group(1)
        out = run("--data-dir", str(b), "join", long, "--label", "bob")
        assert out.returncode == 0, out.stderr
        port = parse_code(long).port
        assert (f"without --to, a call goes to 127.0.0.1:{port}, where alice answered the "
                "invite") in out.stderr
        proc.expect(r"^paired with bob ")
        note = proc.expect(r"^bob remembers this machine at port", "err").string
        assert proc.wait() == 0
        # The joiner's node closed before its dial to the inviter (whose `invite` exits
        # at once) could finish: the address was remembered when the pairing succeeded.
        assert AddressBook.load(b).get(TrustStore.load(b).list()[0].peer_id).address == (
            "127.0.0.1", port)
        listen = shlex.split(note.split("`")[1]) if "`" in note else None
        assert listen is not None and listen[-1 if "--port" not in listen else -3] == "listen"
        listener = Proc([sys.executable, "-m", *listen, "--host", "127.0.0.1"])
        _, listening = ready(listener)
        call = run("--data-dir", str(b), "call", "alice", "echo", '"hi"')
        assert (call.returncode, call.stdout) == (0, '"hi"\n'), call.stderr
        return note, listening, port
    finally:
        proc.stop()
        if listener is not None:
            listener.stop()


def test_after_invite_and_join_the_joiner_calls_the_inviter_at_its_usual_port(tmp_path):
    """A data dir's usual port (`port` in settings.toml) is the one `invite` listens on,
    and so the one in the code: `peernet listen` there later, and the joiner's
    `peernet call alice` (no --to) reaches it. Before, the joiner remembered nothing,
    and the call said "no address for alice" (exit 2)."""
    usual = closed_port()
    note, listening, in_code = _invite_join_listen_call(tmp_path, [], f"port = {usual}\n")
    assert listening == in_code == usual
    assert f"while `peernet --data-dir {tmp_path / 'a'} listen` (or an app on port " in note


def test_an_invite_on_a_one_off_port_says_how_to_be_reached_there_later(tmp_path):
    """No usual port: the invite's own is a free one it picked, which the next run
    would not have; the inviter's note says so, and the command it gives (`listen
    --port P`) is the one after which the joiner's call works without --to."""
    note, listening, in_code = _invite_join_listen_call(tmp_path, [])
    assert listening == in_code
    assert "a free port this invite picked" in note and f"port = {in_code}" in note


def test_listen_on_one_address_names_it_in_its_hint(tmp_path):
    """`listen --host 127.0.0.1` said "--to THIS_HOST:PORT" though the host is known."""
    from tests.integration.test_cli import ready

    node = Proc([sys.executable, "-m", "peernet", "--data-dir", str(tmp_path / "a"), "listen",
                 "--host", "127.0.0.1", "--discovery", "none"])
    try:
        _, port = ready(node)
        node.expect(rf"a paired peer runs: peernet call pn1\S+ echo '\"hi\"' --to "
                    rf"127\.0\.0\.1:{port}$", stream="err")
    finally:
        node.stop()
