"""The first hour, continued: handler errors that show on the callee, a PeerId that
equals its pasted text, and the small things a new user trips over (issue: the first
hour, items 3, 4 and 8)."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import peernet
from peernet.handlers import HandlerFailure

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


# -- item 3: handler errors are visible on the callee ---------------------------------------


TWO_NODES = """
import sys, tempfile, peernet
with tempfile.TemporaryDirectory() as tmp:
    with peernet.Node(tmp + "/dev", host="127.0.0.1") as dev, \\
         peernet.Node(tmp + "/app", host="127.0.0.1") as app:
        dev.pair(app.id); app.pair(dev.id)
        app.connect(dev.id, "127.0.0.1", dev.port)
        {setup}
        try:
            app.call(dev.id, "temperature", {{"room": "kitchen"}})
        except peernet.RemoteError as exc:
            print("caller got:", exc, flush=True)
"""


def run_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "app.py"
    script.write_text(body)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=30, cwd=ROOT)


def test_a_handler_that_raises_prints_its_traceback_on_the_callee_by_default(tmp_path):
    """No logging configured (a plain script): the callee shows the handler's name, the
    calling peer's short id and the traceback on stderr; the caller only the type."""
    setup = textwrap.dedent("""
        def temperature(peer, args):
            return {"kitchen": 21}[args["room"].upper()]
        dev.expose("temperature", temperature)
    """).strip().replace("\n", "\n        ")
    done = run_script(tmp_path, TWO_NODES.format(setup=setup))
    assert done.returncode == 0, done.stderr
    assert "caller got: remote handler raised KeyError" in done.stdout
    err = done.stderr
    assert "peernet: exception in handler 'temperature' (call from pn1" in err
    assert "Traceback (most recent call last):" in err
    assert "KeyError: 'KITCHEN'" in err and 'args["room"].upper()' in err
    assert "KeyError" not in done.stdout.replace("raised KeyError", "")  # no traceback sent


def test_peer_text_in_a_handlers_exception_reaches_the_terminal_escaped(tmp_path):
    """A handler that quotes its (hostile) args in its exception message: the callee's
    stderr shows the escapes as text, with no raw ESC, BEL, C1 or bidi character."""
    setup = textwrap.dedent("""
        def temperature(peer, args):
            raise ValueError(f"no room {args}")
        dev.expose("temperature", temperature)
    """).strip().replace("\n", "\n        ")
    script = TWO_NODES.format(setup=setup).replace(
        '{"room": "kitchen"}', '"\\x1b]0;pwned\\x07\\x9b2J\\u202eevil"')
    assert "\\x1b]0;pwned" in script
    done = run_script(tmp_path, script)
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "ValueError: no room \\x1b]0;pwned\\x07\\x9b2J\\u202eevil" in err, err
    assert not any(ch in err for ch in "\x1b\x07\x9b\u202e")


def test_with_logging_configured_the_failure_is_logged_once_instead(tmp_path):
    setup = textwrap.dedent("""
        import logging
        logging.basicConfig(level=logging.WARNING, format="LOG %(levelname)s %(name)s %(message)s")
        dev.expose("temperature", lambda peer, args: 1 / 0)
    """).strip().replace("\n", "\n        ")
    done = run_script(tmp_path, TWO_NODES.format(setup=setup))
    assert done.returncode == 0, done.stderr
    assert "LOG ERROR peernet.handlers handler 'temperature' raised for pn1" in done.stderr
    assert done.stderr.count("ZeroDivisionError: division by zero") == 1
    assert "peernet: exception in handler" not in done.stderr


def test_a_result_that_cannot_be_sent_is_shown_on_the_callee(tmp_path):
    """A handler that returns a datetime: the caller gets RemoteError, and the callee's
    stderr says which handler returned what cannot be sent, and what to send instead
    (before, it was logged on a logger nobody sees in a plain script)."""
    setup = textwrap.dedent("""
        import datetime
        dev.expose("temperature", lambda peer, args: datetime.datetime(2024, 1, 2))
    """).strip().replace("\n", "\n        ")
    done = run_script(tmp_path, TWO_NODES.format(setup=setup))
    assert done.returncode == 0, done.stderr
    assert "caller got: remote handler raised EncodeError" in done.stdout
    assert ("peernet: handler 'temperature' returned a result that cannot be sent (call "
            "from pn1") in done.stderr, done.stderr
    assert "EncodeError: result: datetime is not CBOR data" in done.stderr
    assert "d.isoformat()" in done.stderr
    assert "Traceback" not in done.stderr  # peernet's encoder is not the user's bug


def test_a_result_that_cannot_be_sent_reaches_the_hook_and_the_log(make_node, caplog):
    failures: list[HandlerFailure] = []
    a = make_node("a")
    b = make_node("b", on_handler_error=failures.append, max_message_size=64 * 1024)
    c = make_node("c")
    for server in (b, c):
        a.pair(server.id)
        server.pair(a.id)
        a.connect(server.id, "127.0.0.1", server.port)
    b.expose("when", lambda peer, args: {1, 2})
    b.expose("big", lambda peer, args: b"x" * (128 * 1024))
    c.expose("when", lambda peer, args: object())
    for name in ("when", "big"):
        with pytest.raises(peernet.RemoteError):
            a.call(b.id, name)
    assert [(f.handler, f.peer, type(f.exception), f.in_result, f.in_authorize)
            for f in failures] == [("when", a.id, peernet.EncodeError, True, False),
                                   ("big", a.id, peernet.MessageTooLarge, True, False)]
    with caplog.at_level(logging.ERROR, logger="peernet"):
        with pytest.raises(peernet.RemoteError):
            a.call(c.id, "when")
    logged = [r for r in caplog.records if r.name == "peernet.handlers"]
    assert len(logged) == 1 and logged[0].exc_info is None
    assert ("handler 'when' returned a result for " in logged[0].getMessage()
            and "EncodeError: result: object is not CBOR data" in logged[0].getMessage())


def test_on_handler_error_replaces_the_report(make_node):
    failures: list[HandlerFailure] = []
    a = make_node("a")
    b = make_node("b", on_handler_error=failures.append)
    a.pair(b.id)
    b.pair(a.id)
    a.connect(b.id, "127.0.0.1", b.port)
    b.expose("boom", lambda peer, args: [][args])
    b.expose("guarded", lambda peer, args: 1, authorize=lambda peer: {}["x"])
    with pytest.raises(peernet.RemoteError, match="IndexError"):
        a.call(b.id, "boom", 3)
    with pytest.raises(peernet.Forbidden):
        a.call(b.id, "guarded")
    assert [(f.handler, f.peer, type(f.exception), f.in_authorize) for f in failures] == [
        ("boom", a.id, IndexError, False), ("guarded", a.id, KeyError, True)]
    assert failures[0].exception.__traceback__ is not None


def test_a_hook_that_raises_does_not_break_serving(make_node, caplog):
    def broken(failure):
        raise RuntimeError("hook bug")

    a, b = make_node("a"), make_node("b", on_handler_error=broken)
    a.pair(b.id)
    b.pair(a.id)
    a.connect(b.id, "127.0.0.1", b.port)
    b.expose("boom", lambda peer, args: 1 / 0)
    b.expose("echo", lambda peer, args: args)
    with caplog.at_level(logging.ERROR, logger="peernet"):
        with pytest.raises(peernet.RemoteError):
            a.call(b.id, "boom")
    assert a.call(b.id, "echo", 5) == 5
    assert any("on_handler_error raised" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fn, shown", [
    (lambda args: args, "(args)"),
    (lambda: None, "()"),
    (lambda peer, args, extra: None, "(peer, args, extra)"),
])
def test_expose_refuses_a_handler_that_cannot_take_peer_and_args(make_node, fn, shown):
    node = make_node()
    with pytest.raises(TypeError) as caught:
        node.expose("temperature", fn)
    text = str(caught.value)
    assert "handler 'temperature'" in text and shown in text
    assert "def temperature(peer, args)" in text
    assert "temperature" not in node._handlers


@pytest.mark.parametrize("fn", [
    lambda peer, args: None, lambda peer, args=None: None, lambda *a: None,
    lambda peer, *rest, **kw: None, print,
])
def test_expose_accepts_every_handler_shape_that_takes_peer_and_args(make_node, fn):
    node = make_node()
    assert node.expose("ok", fn) is fn


def test_the_decorator_form_checks_the_signature_too(make_node):
    node = make_node()
    with pytest.raises(TypeError, match="cannot be called as fn\\(peer, args\\)"):
        @node.expose("temperature")
        def temperature(args):  # forgot peer
            return 21


# -- item 4: a PeerId and its text ------------------------------------------------------------


def test_the_readme_authorize_shape_works_with_an_id_pasted_as_text(pair_of_nodes):
    a, b = pair_of_nodes
    laptop_id = str(a.id)  # what `peernet id` printed, pasted into the device's code
    b.expose("secret", lambda peer, args: "ok", authorize=lambda peer: peer == laptop_id)
    allowed = {laptop_id: "laptop"}
    b.expose("whoami", lambda peer, args: allowed[peer])
    assert a.call(b.id, "secret") == "ok"
    assert a.call(b.id, "whoami") == "laptop"
    assert a.id in {laptop_id} and laptop_id in {a.id}


# -- item 8: papercuts ------------------------------------------------------------------------


def test_wait_for_peer_on_an_unpaired_peer_raises_at_once(make_node):
    a, b = make_node("a"), make_node("b")
    started = time.monotonic()
    with pytest.raises(peernet.NotPaired, match="not paired"):
        a.wait_for_peer(b.id, timeout=5)
    assert time.monotonic() - started < 1.0


def test_pairing_the_node_with_itself_is_refused(make_node):
    node = make_node()
    with pytest.raises(ValueError, match="this node's own id"):
        node.pair(node.id)
    with pytest.raises(ValueError, match="this node's own id"):
        node.pair(str(node.id).upper())
    assert node.list_peers() == []


@pytest.mark.parametrize("host", ["127.0.0.1:7777", "[::1]", "", "host name", "a/b",
                                  "x" * 300, None, 127])
def test_connect_refuses_a_host_that_is_not_a_host(make_node, host):
    a, b = make_node("a"), make_node("b")
    a.pair(b.id)
    with pytest.raises(ValueError, match="host"):
        a.connect(b.id, host, b.port)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "pi.local", "my-pi"])
def test_connect_accepts_names_and_addresses(make_node, host):
    a, b = make_node("a"), make_node("b")
    a.pair(b.id)
    a.connect(b.id, host, b.port)  # returns at once; the dial runs in the background


def test_a_busy_port_is_a_peernet_error_that_names_it(make_node, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(peernet.PortInUse) as caught:
            peernet.Node(tmp_path / "x", host="127.0.0.1", port=port)
    assert f"port {port} on 127.0.0.1 is already in use" in str(caught.value)
    assert "port=0" in str(caught.value)
    assert isinstance(caught.value, OSError) and isinstance(caught.value, peernet.PeerNetError)
    # The data dir is free again: the failed node released its lock.
    peernet.Node(tmp_path / "x", host="127.0.0.1").close()


def test_repr_of_a_node_whose_constructor_failed_does_not_raise(tmp_path):
    """A notebook shows whatever a failed cell left behind: repr must not raise."""
    node = peernet.Node.__new__(peernet.Node)
    with pytest.raises(ValueError):
        node.__init__(tmp_path / "n", discovery="nonsense")  # type: ignore[misc]
    assert repr(node) == "<Node (not started) closed>"
    assert "not started" in node._repr_html_()
    node.close()  # a no-op, not an AttributeError


def test_repr_counts_handlers_in_good_english(make_node):
    node = make_node()
    assert ", 0 handlers>" in repr(node)
    node.expose("a", lambda peer, args: None)
    assert ", 1 handler>" in repr(node)
    node.expose("b", lambda peer, args: None)
    assert ", 2 handlers>" in repr(node)


def test_list_peers_shows_as_a_table_with_copyable_full_ids(pair_of_nodes):
    a, b = pair_of_nodes
    peers = a.list_peers()
    assert isinstance(peers, list) and peers == [peers[0]]
    html = peers._repr_html_()
    assert html.startswith("<table>") and f"<code>{b.id}</code>" in html
    assert "<td>b</td>" in html  # the label
    assert f"<code>{a.id}</code>" in a._repr_html_()  # the node's own full id


def test_peernet_version():
    done = subprocess.run([sys.executable, "-m", "peernet", "--version"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.strip().startswith(f"peernet {peernet.__version__} (distribution "
                                          "peernet-py")


def test_the_demo_shows_that_bob_received_the_send():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "send  -> True" in done.stdout
    assert "bob received: [\"'walkie-talkie says hi' from pn1" in done.stdout
    assert "send while bob is down -> False" in done.stdout
    assert done.stdout.rstrip().endswith("done")
