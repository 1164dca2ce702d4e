"""The ``peernet`` command line, driven in subprocesses on 127.0.0.1."""

import json
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import peernet
import peernet.cli
from tests.conftest import wait_until

PROCS = Path(__file__).resolve().parent.parent / "procs"
LOOPBACK = "127.0.0.1"


def run(*args, env=None, input=None):
    return subprocess.run([sys.executable, "-m", "peernet", *args], capture_output=True,
                          text=True, timeout=30, env=env, input=input)


def one_line_error(out, code):
    """The command failed with ``code`` and exactly one ``peernet: `` line on stderr."""
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("peernet: "), out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


class Proc:
    """A long-running subprocess whose stdout and stderr lines can be awaited."""

    def __init__(self, argv, **kwargs):
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, bufsize=1, **kwargs)
        self.lines = {"out": queue.SimpleQueue(), "err": queue.SimpleQueue()}
        self.seen = {"out": [], "err": []}
        self._readers = [
            threading.Thread(target=self._pump, args=(stream, self.lines[name]), daemon=True)
            for name, stream in (("out", self.p.stdout), ("err", self.p.stderr))
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _pump(stream, q):
        for line in stream:
            q.put(line.rstrip("\n"))
        q.put(None)

    def expect(self, pattern, stream="out", timeout=10.0):
        """The first new line on ``stream`` matching ``pattern`` (a regex) as a Match."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines[stream].get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} on std{stream}; saw {self.seen}") from None
            if line is None:
                self.lines[stream].put(None)
                raise AssertionError(f"std{stream} ended without {pattern!r}; saw {self.seen}")
            self.seen[stream].append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def write(self, text):
        self.p.stdin.write(text)
        self.p.stdin.flush()

    def wait(self, timeout=10.0):
        code = self.p.wait(timeout)
        for t in self._readers:
            t.join(5)
        return code

    def rest(self, stream):
        """Every remaining line of ``stream`` (after the process ended)."""
        lines = []
        while (line := self.lines[stream].get(timeout=5)) is not None:
            lines.append(line)
        self.lines[stream].put(None)
        return lines

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
        self.wait()
        for stream in (self.p.stdin, self.p.stdout, self.p.stderr):
            try:
                stream.close()
            except OSError:
                pass


def peernet_proc(*args):
    return Proc([sys.executable, "-m", "peernet", *args])


def ready(proc):
    """Wait for the READY line; return (id, port)."""
    m = proc.expect(r"^READY id=(\S+) port=(\d+) host=")
    return m.group(1), int(m.group(2))


def make_id(tmp_path, name):
    out = run("--data-dir", str(tmp_path / name), "id")
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()[0]


@pytest.fixture
def alice_bob(tmp_path):
    """Two data dirs paired both ways through the CLI: (a_dir, a_id, b_dir, b_id)."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    a_id, b_id = make_id(tmp_path, "a"), make_id(tmp_path, "b")
    assert run("--data-dir", a, "pair", b_id, "--label", "bob").returncode == 0
    assert run("--data-dir", b, "pair", a_id, "--label", "alice").returncode == 0
    return a, a_id, b, b_id


def typo(pid):
    """``pid`` with its last character changed: the checksum catches it."""
    return pid[:-1] + ("q" if pid[-1] != "q" else "p")


def closed_port():
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


# --- id ------------------------------------------------------------------------------


def test_id_creates_and_shows_a_stable_identity(tmp_path):
    first = run("--data-dir", str(tmp_path / "d"), "id")
    assert first.returncode == 0, first.stderr
    pid = peernet.PeerId.parse(first.stdout.splitlines()[0])
    again = run("--data-dir", str(tmp_path / "d"), "id")
    assert again.stdout == first.stdout
    assert pid.short in first.stdout
    assert f"peernet pair {pid}" in first.stdout


def test_commands_a_hint_says_to_run_here_name_this_data_dir(tmp_path, monkeypatch):
    """Two data dirs in two terminals is how everyone tries peernet: a hint that says
    `peernet pair ...` without --data-dir would act on the default identity there."""
    d = tmp_path / "my dir"
    empty = run("--data-dir", str(d), "peers")
    assert empty.returncode == 0
    assert f"pair one with: peernet --data-dir '{d}' pair ID --label NAME" in empty.stdout
    stranger = make_id(tmp_path, "stranger")
    line = one_line_error(run("--data-dir", str(d), "call", stranger, "echo", "--to",
                              f"{LOOPBACK}:{closed_port()}"), 6)
    assert f"run: peernet --data-dir '{d}' pair {stranger}" in line
    # The built-in default needs no --data-dir, whatever $PEERNET_DATA_DIR says here.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PEERNET_DATA_DIR", str(tmp_path / "elsewhere"))
    assert peernet.cli.cli_command(tmp_path / "xdg" / "peernet") == "peernet"
    assert peernet.cli.cli_command(tmp_path / "elsewhere") == (
        f"peernet --data-dir {tmp_path / 'elsewhere'}")


def test_pair_with_an_id_cut_short_says_so_before_any_nearby_list(tmp_path):
    """`pair` also takes the start of a `peernet nearby` entry's id; without a nearby
    list, a cut-short id used to get "no nearby list yet: run `peernet nearby` first"."""
    d = str(tmp_path / "d")
    other = make_id(tmp_path, "other")
    for text in (other[:-1], other[:11]):
        line = one_line_error(run("--data-dir", d, "pair", text), 2)
        assert f"a peer id has 61 characters, got {len(text)}" in line, line
        assert "nearby" not in line


def test_a_busy_port_is_explained_in_command_line_terms(tmp_path):
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        for command in ("listen", "invite"):
            line = one_line_error(run("--data-dir", str(tmp_path / command), command,
                                      "--host", LOOPBACK, "--port", str(port)), 1)
            assert f"port {port} on {LOOPBACK} is already in use" in line, line
            assert "pick another --port, or leave --port out" in line
            assert "port=0" not in line


def test_listen_and_join_hints_name_this_data_dir(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    listener = peernet_proc("--data-dir", str(a), "listen", "--host", LOOPBACK)
    inviter = None
    try:
        ready(listener)
        hint = listener.expect(r"^no peers paired yet", "err")
        assert (f"`peernet --data-dir {a} invite`" in hint.string
                and f"`peernet --data-dir {a} pair ID`" in hint.string)
        inviter = peernet_proc("--data-dir", str(a), "invite", "--label", "alice",
                               "--no-qr")
        code = inviter.expect(r"^long code: (\S+)").group(1)
        joined = run("--data-dir", str(b), "join", "--label", "bob", input=code + "\n")
        assert joined.returncode == 0, joined.stderr
        assert (f"""call it with: peernet --data-dir {b} call alice echo '"hi"'"""
                in joined.stderr)
        assert inviter.wait() == 0
    finally:
        if inviter is not None:
            inviter.stop()
        listener.stop()


def test_peers_full_shows_whole_ids_for_unpair_and_label(tmp_path):
    """`peernet peers` cuts ids short; an unlabelled peer is then named by an id no
    command takes. `--full` shows whole ones, and the table and the lookup errors of
    unpair and label say so (with this data dir)."""
    d = tmp_path / "d"
    carol = make_id(tmp_path, "carol")
    assert run("--data-dir", str(d), "pair", carol).returncode == 0
    short = run("--data-dir", str(d), "peers")
    assert short.stdout.splitlines()[1].split()[:2] == ["-", peernet.PeerId.parse(carol).short]
    assert f"`peernet --data-dir {d} peers --full` shows whole ones" in short.stderr
    full = run("--data-dir", str(d), "peers", "--full")
    assert full.stdout.splitlines()[1].split()[:2] == ["-", carol]
    assert "cut short" not in full.stderr
    line = one_line_error(run("--data-dir", str(d), "unpair", "carol"), 2)
    assert (f"no paired peer has a label (`peernet --data-dir {d} label ID NAME` gives one; "
            f"`peernet --data-dir {d} peers --full` shows the ids)") in line, line
    assert "pair(peer_id" not in line  # the library's Python phrasing, in a terminal
    assert "peers --full" in run("--data-dir", str(d), "unpair", "--help").stdout
    assert run("--data-dir", str(d), "label", carol, "carol").returncode == 0
    assert run("--data-dir", str(d), "unpair", carol).returncode == 0
    line = one_line_error(run("--data-dir", str(d), "unpair", carol), 6)
    assert f"`peernet --data-dir {d} peers --full` lists the paired ones" in line


def test_an_interface_that_does_not_exist_is_named_with_those_that_do(tmp_path):
    """It said "has no usable IPv4 address", as for an interface without one. Nothing
    is sent: the check comes before any socket."""
    import ifaddr

    line = one_line_error(run("--data-dir", str(tmp_path / "d"), "nearby", "--discovery",
                              "udp", "--interface", "polnosuch7"), 2)
    names = sorted({a.name for a in ifaddr.get_adapters()})
    assert line == (f"peernet: there is no interface 'polnosuch7' on this machine; its "
                    f"interfaces: {', '.join(names)}"), line
    line = one_line_error(run("--data-dir", str(tmp_path / "d"), "nearby", "--discovery",
                              "udp", "--interface", "lo"), 2)
    assert "has no usable IPv4 address" in line  # it exists: loopback does not count


def test_a_usual_port_in_settings_is_where_listen_listens(tmp_path):
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    port = closed_port()
    (d / "settings.toml").write_text(f"port = {port}\n")
    listener = peernet_proc("--data-dir", str(d), "listen", "--host", LOOPBACK)
    try:
        assert ready(listener)[1] == port
        line = one_line_error(run("--data-dir", str(tmp_path / "e"), "listen", "--host",
                                  LOOPBACK, "--port", str(port)), 1)
        assert "pick another --port" in line
        (tmp_path / "e" / "settings.toml").write_text(f"port = {port}\n")
        line = one_line_error(run("--data-dir", str(tmp_path / "e"), "listen", "--host",
                                  LOOPBACK), 1)
        assert f"port {port} on {LOOPBACK} (the port in settings.toml) is already in use" in line
    finally:
        listener.stop()
    (d / "settings.toml").write_text('port = "7777"\n')
    line = one_line_error(run("--data-dir", str(d), "listen", "--host", LOOPBACK), 1)
    assert "port must be a number 0..65535" in line


def test_data_dir_from_the_environment(tmp_path):
    env = {**os.environ, "PEERNET_DATA_DIR": str(tmp_path / "env")}
    out = run("id", env=env)
    assert out.returncode == 0 and (tmp_path / "env" / "identity.key").exists()


def test_an_insecure_key_file_is_a_one_line_error(tmp_path):
    assert run("--data-dir", str(tmp_path / "d"), "id").returncode == 0
    key = tmp_path / "d" / "identity.key"
    key.chmod(0o644)
    out = run("--data-dir", str(tmp_path / "d"), "id")
    one_line_error(out, 1)
    assert stat.S_IMODE(key.stat().st_mode) == 0o644  # refused, not "fixed" behind our back


def test_id_qr_code_when_the_optional_package_is_there(tmp_path):
    fake = tmp_path / "site" / "qrcode"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "class QRCode:\n"
        "    def __init__(self, **kw): self.data = ''\n"
        "    def add_data(self, data): self.data += data\n"
        "    def make(self, fit=True): pass\n"
        "    def print_ascii(self, out=None, invert=False): out.write('QR<' + self.data + '>\\n')\n"
    )
    without = run("--data-dir", str(tmp_path / "d"), "id", "--qr")
    assert without.returncode == 0 and "QR<" not in without.stdout
    assert "qrcode" in without.stderr  # says what to install; not an error
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    with_qr = run("--data-dir", str(tmp_path / "d"), "id", "--qr", env=env)
    pid = without.stdout.splitlines()[0]
    assert with_qr.returncode == 0 and f"QR<{pid.upper()}>" in with_qr.stdout
    assert peernet.PeerId.parse(pid.upper()) == peernet.PeerId.parse(pid)
    assert "QR<" not in run("--data-dir", str(tmp_path / "d"), "id", env=env).stdout  # not a tty


# --- help and usage ------------------------------------------------------------------


def test_help_and_usage_errors():
    assert run("--help").returncode == 0
    one_line_error(run("bogus"), 2)
    one_line_error(run("call"), 2)


def test_help_teaches_the_two_machine_flow_and_exit_codes():
    text = run("--help").stdout
    for needle in ("peernet id", "peernet pair", "peernet listen", "peernet call",
                   "--to", "exit codes", "3 peer unreachable", "5 timeout", "$base64"):
        assert needle in text, needle
    for command in ("id", "pair", "unpair", "peers", "listen", "chat", "call", "send"):
        assert run(command, "--help").returncode == 0, command
    assert "exit codes" in (peernet.cli.__doc__ or "").lower()


def test_usage_errors_are_exit_2_before_any_network(tmp_path):
    d = str(tmp_path / "d")
    other = make_id(tmp_path, "other")
    bad_id = one_line_error(run("--data-dir", d, "call", typo(other), "echo",
                                "--to", f"{LOOPBACK}:1"), 2)
    assert "invalid peer id" in bad_id
    assert "checksum" in one_line_error(run("--data-dir", d, "pair", typo(other)), 2)
    bad_json = one_line_error(run("--data-dir", d, "call", other, "echo", "{nope",
                                  "--to", f"{LOOPBACK}:1"), 2)
    assert "bad JSON" in bad_json
    bare = one_line_error(run("--data-dir", d, "send", other, "chat", "hello",
                              "--to", f"{LOOPBACK}:1"), 2)
    assert "quotes" in bare
    assert "base64" in one_line_error(run("--data-dir", d, "call", other, "echo",
                                          '{"$base64": "!!"}', "--to", f"{LOOPBACK}:1"), 2)
    assert "HOST:PORT" in one_line_error(run("--data-dir", d, "call", other, "echo",
                                             "--to", "nowhere"), 2)
    one_line_error(run("--data-dir", d, "call", other, "bad name!", "--to", f"{LOOPBACK}:1"), 2)
    one_line_error(run("--data-dir", d, "call", other, "echo", "--to", f"{LOOPBACK}:1",
                       "--timeout", "-1"), 2)
    own = make_id(tmp_path, "d")
    assert "own id" in one_line_error(run("--data-dir", d, "pair", own), 2)


# --- pair, peers, unpair ---------------------------------------------------------------


def test_pair_peers_unpair(tmp_path):
    d = str(tmp_path / "d")
    bob = make_id(tmp_path, "bob")
    carol = make_id(tmp_path, "carol")
    empty = run("--data-dir", d, "peers")
    assert empty.returncode == 0 and "no paired peers" in empty.stdout
    out = run("--data-dir", d, "pair", bob, "--label", "bob")
    assert out.returncode == 0 and "paired with" in out.stdout and "bob" in out.stdout
    assert run("--data-dir", d, "pair", carol).returncode == 0
    # The id in capitals (as a QR code holds it) is the same id: a new label renames it.
    renamed = run("--data-dir", d, "pair", carol.upper(), "--label", "carol").stdout
    assert renamed.startswith(f"relabelled {peernet.PeerId.parse(carol).short}: carol "
                              "(it had none)\n"), renamed
    assert run("--data-dir", d, "pair", carol).stdout.startswith(
        f"already paired with {peernet.PeerId.parse(carol).short} (carol)\n")
    assert "control character" in one_line_error(
        run("--data-dir", d, "pair", bob, "--label", "evil\x1b[2J"), 2)

    table = run("--data-dir", d, "peers")
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["LABEL", "ID", "STATUS", "ADDRESS", "LAST", "SEEN", "RTT"]
    assert len(rows) == 2
    by_label = {row.split()[0]: row.split() for row in rows}
    assert by_label["bob"][1] == peernet.PeerId.parse(bob).short
    assert by_label["carol"][1:3] == [peernet.PeerId.parse(carol).short, "unknown"]

    out = run("--data-dir", d, "unpair", "bob")  # by label
    assert out.returncode == 0 and "unpaired bob" in out.stdout
    assert "not paired" in one_line_error(run("--data-dir", d, "unpair", bob), 6)
    assert "neither a peer id nor the label" in one_line_error(
        run("--data-dir", d, "unpair", "nobody"), 2)
    # Labels follow the library's rules (peernet.labels): case and spacing do not
    # matter, and an unknown one names the close matches.
    assert "did you mean 'carol'" in one_line_error(run("--data-dir", d, "unpair", "karol"), 2)
    out = run("--data-dir", d, "unpair", " CAROL ")
    assert out.returncode == 0 and "unpaired carol" in out.stdout, out.stderr
    assert run("--data-dir", d, "pair", carol, "--label", "carol").returncode == 0
    assert run("--data-dir", d, "unpair", carol).returncode == 0
    assert "no paired peers" in run("--data-dir", d, "peers").stdout


# --- listen, call, send ----------------------------------------------------------------


def test_listen_serves_call_and_send_and_stops_on_sigterm(alice_bob, tmp_path):
    a, a_id, b, b_id = alice_bob
    listener = peernet_proc("--data-dir", a, "listen", "--host", LOOPBACK)
    try:
        got_id, port = ready(listener)
        assert got_id == a_id
        to = f"{LOOPBACK}:{port}"

        out = run("--data-dir", b, "call", "alice", "echo", '{"n": [1, 2.5, null, "x"]}',
                  "--to", to)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"n": [1, 2.5, None, "x"]}
        raw = run("--data-dir", b, "call", a_id, "echo", '{"$base64": "AAH/"}', "--to", to)
        assert json.loads(raw.stdout) == {"$base64": "AAH/"}  # bytes in, bytes out
        assert json.loads(run("--data-dir", b, "call", a_id, "echo", "--to", to).stdout) is None
        piped = run("--data-dir", b, "call", a_id, "echo", "-", "--to", to, input="[true]")
        assert json.loads(piped.stdout) == [True]

        out = run("--data-dir", b, "send", "alice", "chat", '"hello\\u001b[2J from b"',
                  "--to", to)
        assert out.returncode == 0, out.stderr
        # The label alice gave bob; terminal control characters come out escaped.
        assert listener.expect(r"^bob: ").group(0) and "\\x1b[2J from b" in listener.seen["out"][-1]

        # A failure names the peer as the user did (its label), not by its short id.
        line = one_line_error(run("--data-dir", b, "call", a_id, "nope", "--to", to), 4)
        assert line == "peernet: the peer refused: alice exposes no handler 'nope'", line
        assert "TypeError" in one_line_error(
            run("--data-dir", b, "call", "alice", "chat", "5", "--to", to), 4)

        # A live node holds its data dir: a second node there is a clear one-line
        # error, exit 1, naming the holder: its pid and command line (`peernet listen`).
        line = one_line_error(run("--data-dir", a, "listen", "--host", LOOPBACK), 1)
        assert "in another process (pid " in line and "listen" in line, line
        # Other commands work through it (tests/integration/test_control.py has more).
        again = run("--data-dir", a, "pair", b_id)
        assert again.returncode == 0 and "already paired" in again.stdout, again.stderr

        checked = run("--data-dir", b, "peers", "--check", f"alice@{to}")
        assert checked.returncode == 0, checked.stderr
        row = checked.stdout.splitlines()[1].split()
        assert row[:4] == ["alice", peernet.PeerId.parse(a_id).short, "online", to]
        assert row[-1] == "ms"  # an rtt was measured

        listener.p.send_signal(signal.SIGTERM)
        assert listener.wait() == 0
        assert not [line for line in listener.rest("err") if "Traceback" in line]
    finally:
        listener.stop()


def test_call_and_send_failures_have_distinct_exit_codes(alice_bob, tmp_path):
    a, a_id, b, b_id = alice_bob
    port = closed_port()
    for command in ("call", "send"):
        line = one_line_error(run("--data-dir", b, command, a_id, "echo",
                                  "--to", f"{LOOPBACK}:{port}"), 3)
        # By its label, with one level of parentheses (it was "(...) (is the peer...)").
        assert line.startswith(f"peernet: could not reach alice at {LOOPBACK}:{port}"), line
        assert line.endswith(f": is it running `peernet listen`, and has it paired this "
                             f"machine, {b_id}?"), line
        assert line.count("(") <= 1 and peernet.PeerId.parse(a_id).short not in line
    stranger = make_id(tmp_path, "stranger")
    line = one_line_error(run("--data-dir", b, "call", stranger, "echo",
                              "--to", f"{LOOPBACK}:{port}"), 6)
    assert f"peernet --data-dir {b} pair {stranger}" in line
    checked = run("--data-dir", b, "peers", "--check", f"alice@{LOOPBACK}:{port}",
                  "--timeout", "5")
    # Not online; "offline", or "connecting" if a redial had just begun.
    assert checked.returncode == 3 and "online" not in checked.stdout


def test_a_peer_that_did_not_pair_us_is_unreachable(tmp_path):
    """One-sided pairing in two terminals: the caller is told which id the peer must
    pair (once, not also asked whether the peer runs `peernet listen`), and the
    listening terminal shows the refused key with the command that lets it in, once."""
    a, c = str(tmp_path / "a"), str(tmp_path / "c")
    a_id = make_id(tmp_path, "a")
    c_id = make_id(tmp_path, "c")
    assert run("--data-dir", c, "pair", a_id, "--label", "alice").returncode == 0
    listener = peernet_proc("--data-dir", a, "listen", "--host", LOOPBACK)
    try:
        _, port = ready(listener)
        line = one_line_error(run("--data-dir", c, "call", "alice", "echo", "1",
                                  "--to", f"{LOOPBACK}:{port}"), 3)
        # Named by its label, in command-line terms (no node.pair(...)), one sentence
        # per thing to know; before, "could not reach pn1... (pn1... did not ...))".
        assert line == (f"peernet: alice did not accept this machine's key: it has not "
                        f"paired this machine. On alice, run `peernet pair {c_id}`"), line
        refusal = listener.expect(r"^peernet: refused a connection from 127\.0\.0\.1", "err")
        # The command to run in the listener's terminal names its data dir: a plain
        # `peernet pair` there would pair the default identity, not this one.
        assert f"`peernet --data-dir {a} pair {c_id}`" in refusal.string
        line = one_line_error(run("--data-dir", c, "send", "alice", "echo", "1",
                                  "--to", f"{LOOPBACK}:{port}"), 3)
        assert f"paired this machine, {c_id}" in line
        listener.p.send_signal(signal.SIGINT)
        assert listener.wait() == 0
        assert not [x for x in listener.rest("err") if "refused a connection" in x]
    finally:
        listener.stop()


def test_call_timeout_is_exit_5(tmp_path):
    b = str(tmp_path / "b")
    b_id = make_id(tmp_path, "b")
    agent = Proc([sys.executable, str(PROCS / "node_proc.py"), str(tmp_path / "slow"),
                  "--pair", b_id])
    try:
        m = agent.expect(r"^READY (.*)$")
        info = json.loads(m.group(1))
        assert run("--data-dir", b, "pair", info["id"]).returncode == 0
        line = one_line_error(run("--data-dir", b, "call", info["id"], "slow", "5",
                                  "--to", f"{LOOPBACK}:{info['port']}", "--timeout", "0.3"), 5)
        assert "0.3" in line
    finally:
        agent.stop()  # killed: its handler is still asleep, and that is not under test


# --- chat ----------------------------------------------------------------------------


def test_chat_between_two_terminals(alice_bob):
    a, a_id, b, b_id = alice_bob
    alice = peernet_proc("--data-dir", a, "chat", "bob", "--host", LOOPBACK)
    bob = None
    try:
        _, port = ready(alice)
        alice.expect("waiting for bob", "err")
        bob = peernet_proc("--data-dir", b, "chat", a_id, "--to", f"{LOOPBACK}:{port}",
                           "--host", LOOPBACK)
        ready(bob)
        bob.expect(r"^\* alice is online", "err")
        alice.expect(r"^\* bob is online", "err")

        bob.write("hello from bob\n")
        alice.expect(r"^bob: hello from bob$")
        alice.write("hi bob, ünïcode\n\n")
        bob.expect(r"^alice: hi bob, ünïcode$")

        bob.p.stdin.close()  # EOF ends chat cleanly
        assert bob.wait() == 0
        assert not [line for line in bob.rest("err") if "Traceback" in line]
        alice.expect(r"^\* bob went offline", "err")
        alice.write("anyone there?\n")
        alice.expect(r"not delivered: bob is offline", "err")

        alice.p.send_signal(signal.SIGTERM)
        assert alice.wait() == 0
        assert not [line for line in alice.rest("err") if "Traceback" in line]
    finally:
        alice.stop()
        if bob is not None:
            bob.stop()


def test_chat_with_an_unpaired_peer_or_a_busy_data_dir(alice_bob, tmp_path):
    a, a_id, b, b_id = alice_bob
    stranger = make_id(tmp_path, "stranger")
    one_line_error(run("--data-dir", a, "chat", stranger, "--host", LOOPBACK), 6)
    alice = peernet_proc("--data-dir", a, "chat", "bob", "--host", LOOPBACK)
    try:
        alice_id, alice_port = ready(alice)
        # A second chat on the same data dir goes through the running one.
        second = run("--data-dir", a, "chat", "bob", "--host", LOOPBACK, "--wait", "0.2",
                     input="")
        assert second.returncode == 0, second.stderr
        assert f"READY id={alice_id} port={alice_port}" in second.stdout
        assert "chatting through the node running on" in second.stderr
        one_line_error(run("--data-dir", a, "chat", stranger), 6)
        assert "in another process (pid " in one_line_error(
            run("--data-dir", a, "listen", "--host", LOOPBACK), 1)
        alice.p.send_signal(signal.SIGINT)
        assert alice.wait() == 0
    finally:
        alice.stop()


def test_a_result_cannot_drive_the_terminal(tmp_path):
    """A paired peer's result with a C1 CSI (U+009B), a right-to-left override and a tag
    character is printed as JSON escapes, and still parses to the same value."""
    from peernet.identity import load_or_create

    me = load_or_create(tmp_path / "me").peer_id
    evil = "\u009b2J\u202eevil\U000e0041 ok"
    with peernet.Node(tmp_path / "device", host=LOOPBACK, network_monitor=False) as device:
        device.pair(me)
        device.expose("evil", lambda peer, args: [evil, {"k": evil}])
        assert run("--data-dir", tmp_path / "me", "pair", str(device.id)).returncode == 0
        out = run("--data-dir", tmp_path / "me", "call", str(device.id), "evil",
                  "--to", f"{LOOPBACK}:{device.port}")
    assert out.returncode == 0, out.stderr
    assert "\u009b" not in out.stdout and "\u202e" not in out.stdout
    assert "\\u009b2J\\u202eevil\\udb40\\udc41 ok" in out.stdout
    assert json.loads(out.stdout) == [evil, {"k": evil}]


# --- a hostile peer, and labels stored by older versions ------------------------------


def test_a_peer_that_breaks_the_protocol_is_not_called_unreachable(tmp_path):
    """A reached peer that answers with bytes that break the protocol loses the link;
    the CLI must not ask whether it runs `peernet listen` (it was reached: the hint would
    send the user looking in the wrong place)."""
    from peernet.identity import load_or_create

    me = load_or_create(tmp_path / "me").peer_id
    with peernet.Node(tmp_path / "device", host=LOOPBACK, network_monitor=False) as device:
        device.pair(me)

        def garbage(peer, args):
            device._registry.active_link(peer).write(b"\xff\xfe not CBOR")
            return "never seen"

        device.expose("garbage", garbage)
        assert run("--data-dir", tmp_path / "me", "pair", str(device.id)).returncode == 0
        out = run("--data-dir", tmp_path / "me", "call", str(device.id), "garbage",
                  "--to", f"{LOOPBACK}:{device.port}")
    line = one_line_error(out, peernet.cli.EXIT_UNREACHABLE)
    assert "protocol error" in line, line
    assert "peernet listen" not in line and "paired this machine" not in line, line


# Accepted from trust.json by the loader (older rules), refused for a new label.
ODD_LABEL = "bob\u200f\U000e0041\u00ad"
ODD_LABEL_SHOWN = "bob\\u200f\\U000e0041\\xad"


def _store_old_label(data_dir, peer, label):
    from peernet.trust import TRUST_FILE_NAME

    data_dir.mkdir(mode=0o700, exist_ok=True)
    path = data_dir / TRUST_FILE_NAME
    path.write_text(json.dumps({"version": 1, "peers": [
        {"id": str(peer), "label": label, "added_at": 1.0}]}), encoding="utf-8")
    os.chmod(path, 0o600)


def test_a_stored_label_is_escaped_in_unpair_output(tmp_path):
    peer = peernet.PeerId.parse(make_id(tmp_path, "bob"))
    _store_old_label(tmp_path / "d", peer, ODD_LABEL)
    out = run("--data-dir", tmp_path / "d", "unpair", str(peer))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"unpaired {ODD_LABEL_SHOWN} ({peer.short})"


def test_a_stored_label_is_escaped_in_chat_lines_and_online_notes(tmp_path, capsys):
    from peernet.identity import load_or_create

    bob_id = load_or_create(tmp_path / "bob").peer_id
    _store_old_label(tmp_path / "me", bob_id, ODD_LABEL)
    seen = {"out": "", "err": ""}

    def captured(text, where):
        got = capsys.readouterr()
        seen["out"] += got.out
        seen["err"] += got.err
        return text in seen[where]

    with peernet.Node(tmp_path / "me", host=LOOPBACK, network_monitor=False) as me, \
            peernet.Node(tmp_path / "bob", host=LOOPBACK, network_monitor=False) as bob:
        quiet = peernet.cli._serve(me, peernet.cli._Out())
        try:
            bob.pair(me.id)
            bob.connect(me.id, LOOPBACK, me.port)
            bob.call(me.id, "chat", "hi")  # waits for the link, returns once printed
            assert wait_until(lambda: captured(f"{ODD_LABEL_SHOWN}: hi", "out")), seen
            assert wait_until(lambda: captured(f"* {ODD_LABEL_SHOWN} is online", "err")), seen
        finally:
            quiet()
    assert "\u200f" not in seen["out"] + seen["err"]
    assert "\U000e0041" not in seen["out"] + seen["err"]
