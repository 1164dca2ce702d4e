"""Live administration (issue 19): the control endpoint of a running node, driven by the
CLI and by ``peernet.admin`` from other processes, on 127.0.0.1 only.

The app node runs in its own process (tests/procs/node_proc.py, which serves ``echo``
and ``slow`` and exits when its stdin closes); peers that must connect to it run in
this process.
"""

from __future__ import annotations

import json
import os
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
from peernet._io import control as endpoint
from tests.conftest import wait_until
from tests.integration.test_cli import Proc, one_line_error, run

PROCS = Path(__file__).resolve().parent.parent / "procs"
LOOPBACK = "127.0.0.1"
NOBODY = 65534


class App:
    """A node in its own process, as an app holds one for hours."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.proc = Proc([sys.executable, str(PROCS / "node_proc.py"), str(data_dir), *args])
        info = json.loads(self.proc.expect(r"^READY (.*)$").group(1))
        self.id = peernet.PeerId.parse(info["id"])
        self.port = int(info["port"])
        self.pid = self.proc.p.pid

    def stop(self) -> None:
        """Close it the way an app does (its `with Node` block ends)."""
        if self.proc.p.poll() is None:
            self.proc.p.stdin.close()
            assert self.proc.wait(15) == 0
        errors = self.proc.rest("err")
        assert not [line for line in errors if "Traceback" in line], errors
        self.proc.stop()

    def kill(self) -> None:
        self.proc.p.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stop()


@pytest.fixture
def app(tmp_path):
    running = App(tmp_path / "app")
    try:
        yield running
    finally:
        if running.proc.p.poll() is None:
            running.stop()


def cli(app_or_dir, *args, **kwargs):
    data_dir = app_or_dir.data_dir if isinstance(app_or_dir, App) else app_or_dir
    return run("--data-dir", str(data_dir), *args, **kwargs)


def table(out) -> dict[str, list[str]]:
    """`peernet peers` output as {label: row cells}."""
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split()[:3] == ["LABEL", "ID", "STATUS"], out.stdout
    return {row.split()[0]: row.split() for row in rows}


def raw_request(data_dir: Path, payload: bytes, *, read_s: float = 5.0) -> list[dict]:
    """Send raw bytes to the control socket; every answer line until it closes or
    ``read_s`` passes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(read_s)
        s.connect(str(data_dir / endpoint.SOCKET_NAME))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return [json.loads(line) for line in data.splitlines()]


# --- the journey: a second terminal manages the running app ------------------


@pytest.mark.timeout(60)
def test_a_new_peer_paired_through_the_cli_connects_calls_and_is_dropped_at_once(app, tmp_path):
    with peernet.Node(tmp_path / "device", host=LOOPBACK, network_monitor=False) as device:
        device.pair(app.id)
        device.connect(app.id, LOOPBACK, app.port)
        assert not device.wait_for_peer(app.id, timeout=0.5)  # the app refuses it

        out = cli(app, "pair", str(device.id), "--label", "kitchen-pi")
        assert out.returncode == 0, out.stderr
        assert f"paired with {device.id.short} (kitchen-pi)" in out.stdout
        # The device has paired the app (it got in: the app dials a key that knocked,
        # see below), so the line asking the other side to pair this machine is not
        # printed.
        assert "kitchen-pi is online: it has paired this machine too" in out.stdout
        assert "must pair" not in out.stdout
        # Trusted at once by the running node: the device gets in and calls within 1 s.
        assert device.call(app.id, "echo", {"n": 1}, timeout=1.0) == {"n": 1}

        row = table(cli(app, "peers"))["kitchen-pi"]
        assert row[1:3] == [device.id.short, "online"]
        assert row[-1] == "ms" and float(row[-2]) > 0  # an rtt, though no heartbeat ran yet

        out = cli(app, "unpair", "kitchen-pi")
        assert out.returncode == 0 and "unpaired kitchen-pi" in out.stdout, out.stderr
        assert wait_until(lambda: not device.list_peers()[0].online, timeout_s=1.0)
        with pytest.raises(peernet.PeerNetError):
            device.call(app.id, "echo", 1, timeout=1.0)  # and it stays out
    app.stop()
    # The node persisted both changes itself, under its file-safety rules.
    trust = json.loads((app.data_dir / "trust.json").read_text())
    assert trust["peers"] == []
    assert stat.S_IMODE((app.data_dir / "trust.json").stat().st_mode) == 0o600


@pytest.mark.timeout(60)
def test_pairing_a_key_that_knocked_makes_the_app_dial_it_at_once(app, tmp_path):
    """Issue 19's open item: a device that paired the app dials it and is refused; the
    app keeps where the device said it listens (bounded, expiring, never listed or
    dialled before), and `peernet pair` through the control socket makes the app dial
    it at once, not at the device's next redial (30 s away here)."""
    with peernet.Node(tmp_path / "device", host=LOOPBACK, network_monitor=False,
                      reconnect_initial=30.0, reconnect_max=30.0) as device:
        device.expose("echo", lambda peer, args: args)
        device.pair(app.id)
        device.connect(app.id, LOOPBACK, app.port)
        assert not device.wait_for_peer(app.id, timeout=0.5)  # refused: not paired there
        admin = peernet.admin(app.data_dir)
        assert admin.list_nearby() == [] and admin.list_peers() == []

        out = cli(app, "pair", str(device.id), "--label", "kitchen-pi")
        assert out.returncode == 0, out.stderr
        assert "kitchen-pi is online: it has paired this machine too" in out.stdout
        link = device._registry.active_link(app.id)
        assert link is not None and not link.outbound  # the app dialled the device
        row = table(cli(app, "peers"))["kitchen-pi"]
        assert row[2:4] == ["online", f"{LOOPBACK}:{device.port}"]  # where it listens
        assert admin.call("kitchen-pi", "echo", "back", timeout=2.0) == "back"


@pytest.mark.timeout(60)
def test_admin_pair_takes_a_label_as_node_pair_does(app, tmp_path):
    """`admin.pair("kitchen", label="pi")` relabels, as `Node.pair` does; the control op
    parsed the peer as an id first and refused the label ("missing the 'pn1' prefix")."""
    device = peernet.identity.load_or_create(tmp_path / "device").peer_id
    admin = peernet.admin(app.data_dir)
    assert admin.pair(str(device), label="kitchen") == device
    assert admin.pair("kitchen", label="pi") == device
    assert [(p.id, p.label) for p in admin.list_peers()] == [(device, "pi")]


@pytest.mark.timeout(60)
def test_pair_says_whether_the_other_side_must_pair_this_machine(app, tmp_path):
    """"The other side must pair this machine too" only when nothing says it has: not
    for a peer online or seen before (which paired this machine, or no link would have
    come up), and a new label on a paired peer is a relabel, not "already paired"."""
    stranger = peernet.identity.load_or_create(tmp_path / "stranger").peer_id
    out = cli(app, "pair", str(stranger))
    assert out.stdout == (f"paired with {stranger.short}\nthe other side must pair this "
                          f"machine too, if it has not yet: peernet pair {app.id}\n"), out.stderr
    with peernet.Node(tmp_path / "device", host=LOOPBACK, network_monitor=False) as device:
        device.pair(app.id)
        assert cli(app, "pair", str(device.id)).returncode == 0
        device.connect(app.id, LOOPBACK, app.port)
        assert device.wait_for_peer(app.id, timeout=5.0)
        out = cli(app, "pair", str(device.id).upper(), "--label", "kitchen-pi")
        assert out.stdout == (f"relabelled {device.id.short}: kitchen-pi (it had none)\n"
                              "kitchen-pi is online: it has paired this machine too\n")
    admin = peernet.admin(app.data_dir)
    assert wait_until(lambda: not [p for p in admin.list_peers() if p.online], timeout_s=5.0)
    out = cli(app, "pair", str(device.id), "--label", "pi")  # offline now, seen before
    assert out.stdout == f"relabelled {device.id.short}: pi (was kitchen-pi)\n", out.stdout


@pytest.mark.timeout(60)
def test_call_send_and_chat_go_through_the_running_node(app, tmp_path):
    with peernet.Node(tmp_path / "device", host=LOOPBACK, network_monitor=False) as device:
        seen = []
        device.pair(app.id)
        device.expose("whoami", lambda peer, args: str(peer))
        device.expose("chat", lambda peer, text: seen.append((peer, text)))
        assert cli(app, "pair", str(device.id), "--label", "dev").returncode == 0

        # Its identity and its links: the device sees the app's id calling.
        out = cli(app, "call", "dev", "whoami", "--to", f"{LOOPBACK}:{device.port}")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == str(app.id)
        out = cli(app, "call", "dev", "whoami")  # the running node knows the address now
        assert out.returncode == 0 and json.loads(out.stdout) == str(app.id), out.stderr

        # The same errors and exit codes as without a running node.
        assert "no handler 'nope'" in one_line_error(cli(app, "call", "dev", "nope"), 4)
        stranger = peernet.Node(tmp_path / "stranger", host=LOOPBACK, network_monitor=False)
        with stranger:
            assert "not paired" in one_line_error(cli(app, "call", str(stranger.id), "echo"), 6)

        out = cli(app, "send", "dev", "chat", '"hello from the app"')
        assert out.returncode == 0, out.stderr
        out = cli(app, "chat", "dev", input="line one\nline two\n")
        assert out.returncode == 0, out.stderr
        # An app node has no chat handler: the chat command says where replies go.
        assert "no chat handler" in out.stderr
        assert wait_until(lambda: len(seen) == 3)
        assert seen == [(app.id, "hello from the app"), (app.id, "line one"),
                        (app.id, "line two")]


@pytest.mark.timeout(60)
def test_chat_through_a_listening_node_shows_what_it_receives(tmp_path):
    a_dir = tmp_path / "a"
    listener = Proc([sys.executable, "-m", "peernet", "--data-dir", str(a_dir), "listen",
                     "--host", LOOPBACK])
    chat = None
    try:
        a_id, a_port = listener.expect(r"^READY id=(\S+) port=(\d+)").groups()
        with peernet.Node(tmp_path / "bob", host=LOOPBACK, network_monitor=False) as bob:
            bob.pair(a_id)
            assert cli(a_dir, "pair", str(bob.id), "--label", "bob").returncode == 0
            got = []
            bob.expose("chat", lambda peer, text: got.append(text))
            bob.connect(a_id, LOOPBACK, int(a_port))
            assert bob.wait_for_peer(a_id, timeout=5)

            chat = Proc([sys.executable, "-m", "peernet", "--data-dir", str(a_dir), "chat",
                         "bob"])
            assert chat.expect(r"^READY id=(\S+)").group(1) == a_id  # the running node
            chat.expect(r"shown here too", stream="err")
            chat.expect(r"\* bob is online", stream="err")
            chat.write("hi bob\n")
            assert wait_until(lambda: got == ["hi bob"])
            bob.send(a_id, "chat", "hi \x1b[2J terminal")
            # Relayed to the second terminal, escaped, as the listener prints it.
            assert chat.expect(r"^bob: ").string == "bob: hi \\x1b[2J terminal"
            assert listener.expect(r"^bob: ").string == "bob: hi \\x1b[2J terminal"
            chat.p.stdin.close()
            assert chat.wait() == 0
        listener.p.send_signal(signal.SIGTERM)
        assert listener.wait() == 0
        assert not (a_dir / endpoint.SOCKET_NAME).exists()
    finally:
        listener.stop()
        if chat is not None:
            chat.stop()


# --- peernet.admin ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_admin_mirrors_the_node_api_and_raises_the_same_errors(app, tmp_path):
    site = peernet.admin(app.data_dir)
    assert site.id == app.id and site.pid == app.pid
    status = site.status()
    assert (status.port, status.handlers, status.feeds) == (app.port, ("callback", "echo",
                                                                       "slow"), ("peers",))
    with peernet.Node(tmp_path / "device", host=LOOPBACK, network_monitor=False) as device:
        device.pair(app.id)
        device.expose("echo", lambda peer, args: args)
        device.expose("slow", lambda peer, args: time.sleep(args))

        with pytest.raises(ValueError, match="own id"):
            site.pair(app.id)
        with pytest.raises(TypeError):
            site.pair(device.id, label=5)  # type: ignore[arg-type]
        with pytest.raises(peernet.NotPaired):
            site.call(device.id, "echo")
        assert site.pair(device.id, label="pi") == device.id
        with pytest.raises(peernet.UnknownPeer, match="labels: 'pi'"):
            site.call("po", "echo")
        with pytest.raises(peernet.PeerUnavailable):
            site.call("pi", "echo", timeout=0.5)  # no address known yet

        with site.watch(["peers"]) as events:
            site.connect("pi", LOOPBACK, device.port)
            assert site.wait_for_peer("pi", timeout=5)
            event = events.get(timeout=5)
            while event is not None and event.status != "online":
                event = events.get(timeout=5)
            assert event == peernet.PeerEvent(device.id, "online", event.previous, event.at)

        value = {"b": b"\x00\xff", "$k": [1.5, None, True], "nested": {"$base64": "x"}}
        assert site.call("pi", "echo", value) == value
        assert site.send("pi", "echo", 1) is True
        with pytest.raises(peernet.NoSuchHandler, match="did you mean 'echo'"):
            site.call("pi", "ecoh")
        with pytest.raises(peernet.CallTimeout):
            site.call("pi", "slow", 2, timeout=0.3)
        with pytest.raises(peernet.EncodeError):
            site.call("pi", "echo", {1, 2})
        with pytest.raises(peernet.MessageTooLarge, match="control endpoint"):
            site.call("pi", "echo", b"x" * 100_000)

        site.label("pi", "kitchen")
        [peer] = site.list_peers()
        assert (peer.id, peer.label, peer.status) == (device.id, "kitchen", "online")
        assert peer.rtt is not None and peer.address == (LOOPBACK, device.port)
        assert site.unpair("kitchen") is True
        assert wait_until(lambda: not device.list_peers()[0].online, timeout_s=1.0)
        assert site.unpair(device.id) is False
        assert site.list_peers() == []
    # In the trust list the node wrote: nothing the client wrote itself.
    assert json.loads((app.data_dir / "trust.json").read_text())["peers"] == []


def test_admin_says_clearly_when_no_node_runs(tmp_path):
    with pytest.raises(peernet.NodeNotRunning, match="no peernet node is running"):
        peernet.admin(tmp_path / "nothing-here")
    with peernet.Node(tmp_path / "quiet", host=LOOPBACK, network_monitor=False,
                      control=False) as quiet:
        assert not (quiet.data_dir / endpoint.SOCKET_NAME).exists()
        with pytest.raises(peernet.NodeNotRunning, match="control=False"):
            peernet.admin(quiet.data_dir)
        # The CLI cannot go through it, nor use the files it holds: one clear line.
        other = peernet.PeerId.parse(run("--data-dir", str(tmp_path / "other"), "id")
                                     .stdout.splitlines()[0])
        line = one_line_error(run("--data-dir", str(quiet.data_dir), "pair", str(other)), 1)
        assert "control=False" in line and "in another process (pid" in line


# --- the endpoint's checks ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_garbage_and_oversize_requests_are_refused_and_the_node_keeps_serving(app):
    cases = [
        (b"garbage\n", "BadRequest"),
        (b"\x00\xff\xfe\n", "BadRequest"),
        (b'{"v": 99, "op": "status"}\n', "UnsupportedVersion"),
        (b'{"v": 1, "op": "shutdown"}\n', "BadRequest"),
        (b'{"v": 1, "op": "pair", "args": {"peer": 7}}\n', "BadRequest"),
        (b'{"v": 1, "op": "call", "args": {"peer": "x", "name": "echo", "args": '
         + b"[" * 30_000 + b"]" * 30_000 + b"}}\n", "BadRequest"),
        (b"x" * (endpoint.MAX_REQUEST_BYTES + 10), "RequestTooLarge"),
        (b"y" * (endpoint.MAX_REQUEST_BYTES - 1) + b"\n", "BadRequest"),
    ]
    for payload, kind in cases:
        answers = raw_request(app.data_dir, payload)
        assert [a["error"]["type"] for a in answers] == [kind], (payload[:40], answers)
        assert "Traceback" not in json.dumps(answers)
    # Several requests on one connection, each answered in order, a bad one included.
    answers = raw_request(app.data_dir, b'{"v":1,"op":"hello"}\nnope\n{"v":1,"op":"peers"}\n')
    assert [a["ok"] for a in answers] == [True, False, True]
    # A half line and a hang-up: nothing to answer, nothing broken.
    assert raw_request(app.data_dir, b'{"v":1,"op":"sta') == []
    assert peernet.admin(app.data_dir).status().id == app.id  # still serving
    assert run("--data-dir", str(app.data_dir), "status").returncode == 0


def _python_for(uid: int) -> str:
    """A Python interpreter ``uid`` may run (ours may live below root's home)."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            ok = subprocess.run([candidate, "-c", "pass"], user=uid, group=uid, cwd="/",
                                capture_output=True, timeout=20).returncode == 0
        except OSError:
            ok = False
        if ok:
            return candidate
    pytest.skip(f"no Python interpreter that uid {uid} may run")


@pytest.mark.skipif(os.geteuid() != 0, reason="playing another local user needs root "
                    "(a child process with setuid)")
@pytest.mark.timeout(60)
def test_another_uid_is_refused_even_with_the_socket_opened_up(app):
    """The data dir (0700) keeps other users away from the socket; were it opened up
    (a hard link elsewhere, mode 0666), SO_PEERCRED still refuses them."""
    import shutil
    import tempfile

    client = ("import socket, sys\n"
              "s = socket.socket(socket.AF_UNIX)\n"
              "s.connect(sys.argv[1])\n"
              "try:\n"
              "    s.sendall(b'{\"v\":1,\"op\":\"hello\"}\\n')\n"
              "except OSError:\n"
              "    pass  # refused before it asked: the answer is waiting\n"
              "print(s.makefile().readline(), end='')\n")
    python = _python_for(NOBODY)

    def as_nobody(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-c", client, str(path)], user=NOBODY, group=NOBODY,
                              capture_output=True, text=True, timeout=20, cwd="/")

    sock = app.data_dir / endpoint.SOCKET_NAME
    out = as_nobody(sock)
    assert out.returncode != 0 and "PermissionError" in out.stderr  # cannot even reach it

    exposed = Path(tempfile.mkdtemp(prefix="feature-19-ctl-", dir="/tmp"))
    try:
        os.chmod(exposed, 0o755)
        os.link(sock, exposed / "control.sock")
        os.chmod(sock, 0o666)
        out = as_nobody(exposed / "control.sock")
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["ok"] is False and answer["error"]["type"] == "AccessDenied", out
        assert f"uid {NOBODY}" in answer["error"]["message"]
        # Root and the node's own user get in.
        assert peernet.admin(app.data_dir).status().pid == app.pid
    finally:
        shutil.rmtree(exposed, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="playing another local user needs root "
                    "(a child process with setuid)")
@pytest.mark.timeout(60)
def test_admin_talks_only_to_a_node_of_its_own_user():
    """A socket another user serves (a fake node) gets none of our requests."""
    import shutil
    import tempfile

    server = ("import socket, sys\n"
              "s = socket.socket(socket.AF_UNIX)\n"
              "s.bind(sys.argv[1] + '/control.sock')\n"
              "s.listen()\n"
              "print('READY', flush=True)\n"
              "c, _ = s.accept()\n"
              "c.settimeout(5)\n"
              "got = c.recv(65536)\n"
              "print('GOT', got.decode(), flush=True)\n")
    shared = Path(tempfile.mkdtemp(prefix="feature-19-fake-", dir="/tmp"))
    fake = None
    try:
        os.chmod(shared, 0o755)
        os.chown(shared, NOBODY, NOBODY)
        fake = subprocess.Popen([_python_for(NOBODY), "-c", server, str(shared)], user=NOBODY,
                                group=NOBODY, cwd="/", stdout=subprocess.PIPE, text=True)
        assert fake.stdout.readline().strip() == "READY"
        with pytest.raises(peernet.ControlError, match=f"served by uid {NOBODY}") as info:
            peernet.admin(shared)
        assert info.value.kind == "AccessDenied"
        assert fake.wait(10) == 0 and fake.stdout.read().strip() == "GOT"  # it got nothing
    finally:
        if fake is not None:
            fake.kill()
            fake.wait()
            fake.stdout.close()
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.timeout(60)
def test_a_stale_socket_after_kill_9_is_replaced(tmp_path):
    data = tmp_path / "app"
    first = App(data)
    first.kill()
    assert (data / endpoint.SOCKET_NAME).is_socket()  # left behind
    with pytest.raises(peernet.NodeNotRunning, match="stale control socket"):
        peernet.admin(data)
    # Nobody holds the data dir: the CLI uses the files, as without any node.
    other = peernet.PeerId.parse(run("--data-dir", str(tmp_path / "o"), "id")
                                 .stdout.splitlines()[0])
    assert cli(data, "pair", str(other), "--label", "o").returncode == 0
    assert "not live" in cli(data, "peers").stderr
    with socket.socket(socket.AF_UNIX) as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(str(data / endpoint.SOCKET_NAME))  # nobody answers there
    second = App(data)
    try:
        assert [p.label for p in peernet.admin(data).list_peers()] == ["o"]
    finally:
        second.stop()
    assert not (data / endpoint.SOCKET_NAME).exists()


def test_a_data_dir_too_deep_for_a_socket_path_still_works(tmp_path):
    deep = tmp_path
    while len(str(deep / endpoint.SOCKET_NAME)) <= 120:
        deep = deep / "a-rather-long-directory-name"
    with peernet.Node(deep, host=LOOPBACK, network_monitor=False) as node:
        assert (deep / endpoint.SOCKET_NAME).is_socket()
        assert peernet.admin(deep).id == node.id
        out = run("--data-dir", str(deep), "status")
        assert out.returncode == 0 and str(node.id) in out.stdout, out.stderr
    assert not (deep / endpoint.SOCKET_NAME).exists()


def test_close_removes_its_socket_only_and_leaks_nothing(tmp_path):
    with peernet.Node(tmp_path / "n", host=LOOPBACK, network_monitor=False) as node:
        site = peernet.admin(node.data_dir)
        events = site.watch(["peers"])
        assert site.status().id == node.id
        mode = stat.S_IMODE((node.data_dir / endpoint.SOCKET_NAME).stat().st_mode)
        assert mode == 0o600 and stat.S_IMODE(node.data_dir.stat().st_mode) == 0o700
    assert not (node.data_dir / endpoint.SOCKET_NAME).exists()
    assert events.get(timeout=5) is None and events.ended  # the watch saw the node go
    events.close()
    with pytest.raises(peernet.NodeNotRunning):
        site.status()

    # A socket that is not its own (someone replaced it) is left alone.
    node = peernet.Node(tmp_path / "m", host=LOOPBACK, network_monitor=False)
    path = node.data_dir / endpoint.SOCKET_NAME
    path.unlink()
    with socket.socket(socket.AF_UNIX) as foreign:
        foreign.bind(str(path))
        node.close()
        assert path.is_socket()


def test_the_endpoint_costs_no_thread_of_its_own(tmp_path):
    """The endpoint's listener is served by the node's acceptor loop: a node with it runs
    the same threads as one without, until a client connects (a one-shot node pays
    nothing for it but the socket file)."""
    def threads() -> list[str]:
        return sorted(t.name for t in threading.enumerate() if t.name.startswith("peernet"))

    with peernet.Node(tmp_path / "off", host=LOOPBACK, network_monitor=False,
                      control=False):
        without = threads()
    with peernet.Node(tmp_path / "on", host=LOOPBACK, network_monitor=False) as node:
        assert threads() == without
        assert peernet.admin(node.data_dir).status().id == node.id  # and it serves


def test_a_bug_in_the_endpoint_accept_leaves_the_node_accepting_peers(tmp_path, monkeypatch,
                                                                      caplog):
    """The endpoint shares the acceptor's loop with the TCP listener: an exception from
    its accept callback ended that loop, which closed the TCP listener too, and the
    node silently took no more links. Now it is logged and only that listener pauses."""
    def broken(self) -> bool:
        raise RuntimeError("bug in the control accept")

    monkeypatch.setattr(endpoint.ControlServer, "_on_ready", broken)
    with peernet.Node(tmp_path / "a", host=LOOPBACK, network_monitor=False) as a, \
            peernet.Node(tmp_path / "b", host=LOOPBACK, network_monitor=False) as b:
        a.expose("echo", lambda peer, x: x)
        a.pair(b.id)
        b.pair(a.id)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(a.data_dir / endpoint.SOCKET_NAME))  # the callback raises
            assert wait_until(lambda: "bug in the control accept" in caplog.text)
        b.connect(a.id, LOOPBACK, a.port)
        assert b.call(a.id, "echo", 5, timeout=5) == 5  # a still accepts peers


def test_connections_are_bounded_and_idle_ones_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(endpoint, "IDLE_TIMEOUT_S", 0.5)
    with peernet.Node(tmp_path / "n", host=LOOPBACK, network_monitor=False) as node:
        path = str(node.data_dir / endpoint.SOCKET_NAME)
        idle = []
        try:
            for _ in range(endpoint.MAX_CONNECTIONS + 4):  # beyond the cap: the backlog
                s = socket.socket(socket.AF_UNIX)
                s.connect(path)
                idle.append(s)
            assert wait_until(lambda: sum(t.name == "peernet-control-conn"
                                          for t in threading.enumerate())
                              == endpoint.MAX_CONNECTIONS, timeout_s=2)
            # Idle ones are told and closed, then the waiting ones are served.
            started = time.monotonic()
            assert peernet.admin(node.data_dir).id == node.id
            assert time.monotonic() - started < 5
            idle[0].settimeout(5)
            assert json.loads(idle[0].recv(65536))["error"]["type"] == "Timeout"
        finally:
            for s in idle:
                s.close()


def test_a_client_waits_for_room_when_the_backlog_is_full(tmp_path, monkeypatch):
    """Beyond the 16 served connections and the kernel's backlog, a Unix socket refuses
    a connect with EAGAIN: peernet.admin waits for room within its timeout (threads of
    a busy app share one Admin, each request on a connection of its own) instead of
    failing at once with "Resource temporarily unavailable"."""
    monkeypatch.setattr(endpoint, "IDLE_TIMEOUT_S", 0.5)
    with peernet.Node(tmp_path / "n", host=LOOPBACK, network_monitor=False) as node:
        path = str(node.data_dir / endpoint.SOCKET_NAME)
        idle = []
        try:
            while True:  # until the backlog is full
                s = socket.socket(socket.AF_UNIX)
                s.setblocking(False)
                try:
                    s.connect(path)
                except BlockingIOError:
                    s.close()
                    break
                idle.append(s)
            assert len(idle) > endpoint.MAX_CONNECTIONS
            started = time.monotonic()
            assert peernet.admin(node.data_dir, timeout=5).id == node.id
            assert time.monotonic() - started < 5
        finally:
            for s in idle:
                s.close()


def test_a_watcher_that_does_not_read_is_dropped_not_buffered(tmp_path, monkeypatch):
    monkeypatch.setattr(endpoint, "WATCH_QUEUE_BYTES", 64 * 1024)
    with peernet.Node(tmp_path / "n", host=LOOPBACK, network_monitor=False) as node:
        publish = node._feed("chat")
        assert publish is not None
        with peernet.admin(node.data_dir).watch(["chat"]) as events:
            peer = str(node.id)
            for _ in range(400):  # ~4 MB, far more than the socket buffers and the queue
                publish({"peer": peer, "label": None, "text": "x" * 10_000})
            with pytest.raises(peernet.ControlError) as info:
                while events.get(timeout=5) is not None:
                    pass
            assert info.value.kind == "WatchOverflow"


def test_watch_refuses_a_feed_the_node_does_not_serve(tmp_path):
    with peernet.Node(tmp_path / "n", host=LOOPBACK, network_monitor=False) as node:
        with pytest.raises(peernet.ControlError, match="does not relay chat") as info:
            peernet.admin(node.data_dir).watch(["chat"])
        assert info.value.kind == "NoSuchFeed"


def test_status_of_a_data_dir_without_a_node(tmp_path):
    out = run("--data-dir", str(tmp_path / "d"), "status")
    assert out.returncode == 3 and "not running" in out.stdout


_HOSTILE_HOSTS = ["\x00bad", "pi\x1b[2J", "fe80::1%\x1b[31m", "fe80::1%eth 0", "pi\u202e.local",
                  "pi\n.local", "pi\u2028x", "pi\x85x"]


@pytest.mark.timeout(30)
def test_every_way_to_give_a_host_refuses_control_characters(tmp_path):
    """node.connect, peernet.admin().connect (and its request sent raw, so the node's own
    check is what refuses it), --to HOST:PORT, a UDP target, the listen host, a
    remembered address and the nearby list all go through one check: a host reaches
    list_peers, `peernet peers` and log lines, so nothing in it may drive a terminal (an IPv6 scope id
    included: ipaddress takes any text after the %)."""
    from peernet.cli import CliError, parse_address

    with peernet.Node(tmp_path / "n", host=LOOPBACK, network_monitor=False) as node:
        peer = peernet.PeerId(bytes(range(32)))
        node.pair(peer, label="pi")
        admin = peernet.admin(node.data_dir)
        for host in _HOSTILE_HOSTS:
            with pytest.raises(ValueError, match="host"):
                node.connect(peer, host, 7777)
            with pytest.raises(ValueError, match="host"):
                admin.connect(peer, host, 7777)
            with pytest.raises(ValueError, match="host"):  # past the client's check
                admin._request("connect", {"peer": str(peer), "host": host, "port": 7777})
            with pytest.raises(CliError, match="bad address"):
                parse_address(f"{host}:7777")
            with pytest.raises(ValueError, match="host"):
                peernet.UdpDiscovery(targets=[(host, 4040)])
            with pytest.raises(ValueError, match="host"):
                peernet.Node(tmp_path / "other", host=host)
        assert [p.address for p in node.list_peers()] == [None]
        admin.connect(peer, "pi.local", 7777)  # a plain name still works
        assert wait_until(lambda: node.list_peers()[0].address == ("pi.local", 7777))
    book = tmp_path / "n" / "addresses.json"
    book.write_text(json.dumps({"version": 1, "peers": {str(peer): {
        "address": ["\x1b]0;owned\x07", 7777], "last_seen": None}}}))
    book.chmod(0o600)
    from peernet._addresses import AddressBook
    from peernet.cli import NEARBY_FILE_NAME, _load_nearby

    assert AddressBook.load(tmp_path / "n").items() == []  # corrupt: not used
    nearby = tmp_path / "n" / NEARBY_FILE_NAME
    nearby.write_text(json.dumps({"version": 1, "at": 0, "entries": [{
        "id": str(peer), "address": ["pi\x1b[2J", 7777], "via": "udp", "last_seen": 0}]}))
    nearby.chmod(0o600)
    with pytest.raises(CliError, match="unreadable nearby list"):
        _load_nearby(tmp_path / "n")


@pytest.mark.timeout(30)
def test_every_way_to_give_a_port_says_it_must_be_an_int(tmp_path):
    """`node.connect(peer, host, "7777")` said "port must be 1..65535", and
    `Node(port="7777")` raised a bare TypeError from a comparison: one check says what
    is wrong with it."""
    with peernet.Node(tmp_path / "n", host=LOOPBACK, network_monitor=False) as node:
        peer = peernet.PeerId(bytes(range(32)))
        node.pair(peer, label="pi")
        admin = peernet.admin(node.data_dir)
        for connect in (node.connect, admin.connect):
            with pytest.raises(ValueError, match=r"port must be an int \(1\.\.65535\), not "
                                                 r"the str '7777' \(pass int\('7777'\)\)"):
                connect(peer, LOOPBACK, "7777")
            with pytest.raises(ValueError, match=r"port must be 1\.\.65535, got 0"):
                connect(peer, LOOPBACK, 0)
        assert [p.address for p in node.list_peers()] == [None]
    with pytest.raises(ValueError, match=r"port must be an int \(0\.\.65535\), not the str"):
        peernet.Node(tmp_path / "other", host=LOOPBACK, port="7777")
