"""The ``peernet`` command (also ``python -m peernet``).

Subcommands::

    peernet id [--qr]                               this machine's id and a pairing line
    peernet pair ID [--label L]                     trust a peer (both sides must pair)
    peernet unpair ID                               stop trusting a peer
    peernet peers [--check ID@HOST:PORT]... [--timeout S]
                                                    the paired peers, as a status table
    peernet listen [--host H] [--port N]            serve ``echo`` and ``chat`` until Ctrl-C
    peernet chat ID [--to HOST:PORT] [--host H] [--port N] [--wait S]
                                                    interactive walkie-talkie chat
    peernet call ID HANDLER [JSON] --to HOST:PORT [--timeout S]
                                                    run a handler, print its JSON result
    peernet send ID HANDLER [JSON] --to HOST:PORT [--timeout S]
                                                    fire and forget, no reply

Every command takes ``--data-dir`` (default ``$PEERNET_DATA_DIR``, else
``~/.local/share/peernet``): the identity and trust list. Commands that run a node
(``listen``, ``chat``, ``call``, ``send``, ``peers --check``) and those that change the
trust list (``pair``, ``unpair``) need the data dir to themselves: only one of them may
run per data dir at a time.

``ID`` is a peer id (``pn1…``) or the label of a paired peer. ``JSON`` arguments are
parsed with ``json.loads`` (``-`` reads them from stdin); bytes travel as
``{"$base64": "..."}`` in both directions (an argument object with exactly that one key
becomes bytes; a bytes result is printed that way).

Errors are one line on stderr, starting ``peernet: ``. Exit codes:

    0  ok
    1  runtime error (bad key or trust file, data dir in use, port in use, ...)
    2  usage error: bad arguments, bad peer id, bad JSON, bad HOST:PORT, own id
    3  peer unreachable: no link could be had, the link dropped, or a send was not
       delivered because the peer is offline
    4  the peer refused or failed: no such handler, forbidden, busy, handler raised
    5  timeout: the peer did not answer in time
    6  not paired: pair the peer on this side first (``peernet pair ID``)
  130  interrupted (Ctrl-C) during call/send; ``listen`` and ``chat`` exit 0 on Ctrl-C,
       SIGTERM or SIGHUP, after closing the node cleanly
"""

from __future__ import annotations

import argparse
import base64
import binascii
import codecs
import errno
import json
import os
import queue
import selectors
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from ._fs import ensure_private_dir
from ._text import escape, escape_json
from ._io.lifecycle import DataDirLock
from .errors import (
    Busy,
    CallTimeout,
    DataDirLocked,
    EncodeError,
    Forbidden,
    InvalidHandlerName,
    InvalidPeerId,
    MessageTooLarge,
    PortInUse,
    NoSuchHandler,
    NotPaired,
    PeerNetError,
    PeerUnavailable,
    RemoteError,
)
from ._version import __version__
from .handlers import HandlerFailure, check_handler_name
from .identity import load_or_create
from .ids import PeerId
from .node import Node, default_data_dir
from .peer import Peer, PeerEvent
from ._addresses import AddressBook
from .trust import TrustStore

__all__ = [
    "main",
    "EXIT_OK",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "EXIT_UNREACHABLE",
    "EXIT_REMOTE",
    "EXIT_TIMEOUT",
    "EXIT_NOT_PAIRED",
    "EXIT_INTERRUPTED",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REMOTE = 4
EXIT_TIMEOUT = 5
EXIT_NOT_PAIRED = 6
EXIT_INTERRUPTED = 130

_DESCRIPTION = """\
Default-deny peer-to-peer messaging. Each machine has an id (its public key);
two machines that pair with each other can call the handlers the other exposes.
Nothing gets past the encrypted handshake unless it was paired first."""

_EPILOG = """\
example, two machines (alice at 192.168.1.10, and bob):
  alice$ peernet id                  # prints alice's id, pn1aaa...
  bob$   peernet id                  # prints bob's id, pn1bbb...
  alice$ peernet pair pn1bbb... --label bob
  bob$   peernet pair pn1aaa... --label alice
  alice$ peernet listen --port 7777  # serves echo and chat until Ctrl-C
  bob$   peernet call alice echo '{"hello": [1, 2]}' --to 192.168.1.10:7777
  bob$   peernet send alice chat '"hi alice"' --to 192.168.1.10:7777
  bob$   peernet chat alice --to 192.168.1.10:7777   # or, instead of listen, run
                                                    # `peernet chat bob` on alice

ID is a peer id (pn1...) or the label of a paired peer. JSON arguments are
parsed with json.loads ('-' reads stdin); bytes are {"$base64": "..."} both ways.
Only one node may use a data dir at a time (stop `listen` before `pair`).

exit codes:
  0 ok                     1 runtime error (data dir in use, bad key file...)
  2 usage (bad id, JSON)   3 peer unreachable, or not delivered (offline)
  4 peer refused/failed    5 timeout
  6 not paired here        130 interrupted"""


class CliError(Exception):
    """A failure with its one-line message and exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one ``peernet: `` line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"peernet: {message} (see '{self.prog} --help')\n")


# --- small parsers -----------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"port must be 0..65535: {text!r}")
    return value


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``; CliError (exit 2) if bad."""
    host, sep, port_text = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) <= 0xFFFF:
        raise CliError(f"bad address {text!r}: expected HOST:PORT, e.g. 192.168.1.10:7777 "
                       "or [::1]:7777", EXIT_USAGE)
    return host, int(port_text)


def _from_json_object(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$base64" in obj:
        value = obj["$base64"]
        if not isinstance(value, str):
            raise ValueError('"$base64" needs a string')
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise ValueError(f'bad "$base64" value: {exc}') from None
    return obj


def parse_json_arg(text: str | None) -> Any:
    """Decode a JSON argument (None when absent, ``-`` reads stdin); CliError exit 2 if bad."""
    if text is None:
        return None
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text, object_hook=_from_json_object)
    except json.JSONDecodeError as exc:
        hint = ""
        if text.strip() and text.strip()[0] not in '[{"-0123456789tfn':
            hint = f" (a string needs JSON quotes: '\"{text.strip()[:20]}\"')"
        raise CliError(f"bad JSON argument: {exc}{hint}", EXIT_USAGE) from None
    except ValueError as exc:
        raise CliError(f"bad JSON argument: {exc}", EXIT_USAGE) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {k if isinstance(k, (str, int, float, bool)) or k is None else str(_jsonable(k)):
                _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def dump_json(value: Any) -> str:
    """One line of JSON for a call result; bytes become ``{"$base64": ...}``. A peer
    chose these strings: C1 controls, format and bidi characters come out as ``\\u``
    escapes (still the same JSON value), so a result cannot drive the terminal."""
    return escape_json(json.dumps(_jsonable(value), ensure_ascii=False))


_printable = escape  # chat lines and labels: peer text, safe for a terminal


# --- output ------------------------------------------------------------------------


class _Out:
    """Line output shared by the main thread and handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        """A line on stdout (results, READY, incoming chat), flushed at once."""
        with self._lock:
            print(text, flush=True)

    def note(self, text: str) -> None:
        """A status line for people, on stderr."""
        with self._lock:
            print(text, file=sys.stderr, flush=True)


# --- signals -----------------------------------------------------------------------


class _StopFlag:
    """Set by SIGINT/SIGTERM/SIGHUP while a long-running command runs."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def _stop_on_signals() -> Iterator[_StopFlag]:
    """Turn Ctrl-C, SIGTERM and SIGHUP into a flag the main loop polls, so the node
    always closes from the main thread at a safe point."""
    flag = _StopFlag()

    def handler(signum: int, frame: object) -> None:
        flag.signum = signum

    if threading.current_thread() is not threading.main_thread():
        yield flag  # signals only reach the main thread; nothing to install
        return
    signums = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield flag
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


# --- nodes and peers ---------------------------------------------------------------


def _locked_message(data_dir: Path, exc: DataDirLocked) -> str:
    """The lock's own message names the holder (its pid and command line)."""
    return f"{exc} (--data-dir)"


def _note_handler_error(failure: HandlerFailure) -> None:
    """The CLI serves only its own echo and chat, so a failure there means a peer sent
    arguments they cannot take: one line, not a traceback."""
    print(f"peernet: {failure.handler} could not serve a call from {failure.peer.short}: "
          f"{type(failure.exception).__name__}", file=sys.stderr, flush=True)


def _open_node(data_dir: Path, *, host: str, port: int, **settings: Any) -> Node:
    settings.setdefault("on_handler_error", _note_handler_error)
    try:
        return Node(data_dir, host=host, port=port, **settings)
    except DataDirLocked as exc:
        raise CliError(_locked_message(data_dir, exc)) from None
    except PortInUse as exc:
        raise CliError(f"{exc} (--port)") from None
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        raise


@contextmanager
def _trust_store_locked(data_dir: Path) -> Iterator[TrustStore]:
    directory = ensure_private_dir(data_dir)
    try:
        lock = DataDirLock(directory)
    except DataDirLocked as exc:
        raise CliError(_locked_message(data_dir, exc)) from None
    try:
        yield TrustStore.load(directory)
    finally:
        lock.release()


def resolve_peer(text: str, trust: TrustStore) -> PeerId:
    """A peer id typed by a person, or the label of a paired peer (CliError exit 2)."""
    try:
        return PeerId.parse(text)
    except InvalidPeerId as exc:
        matches = [p.peer_id for p in trust.list() if p.label is not None and p.label == text.strip()]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise CliError(f"{len(matches)} paired peers are labelled {text!r}; use the id",
                           EXIT_USAGE) from None
        if text.strip().lower().startswith("pn1"):
            raise CliError(str(exc), EXIT_USAGE) from None
        raise CliError(f"{exc}; and no paired peer is labelled {text.strip()!r}",
                       EXIT_USAGE) from None


def _name(pid: PeerId, trust: TrustStore) -> str:
    """The peer's label, escaped for a terminal (a label stored by an older version was
    held only to its rules, and may hold format characters), else its short id."""
    entry = trust.get(pid)
    return _printable(entry.label) if entry is not None and entry.label else pid.short


def _require_paired(pid: PeerId, trust: TrustStore) -> None:
    if not trust.is_trusted(pid):
        raise CliError(f"{pid.short} is not paired on this side; run: peernet pair {pid}",
                       EXIT_NOT_PAIRED)


def _status(node: Node, pid: PeerId) -> str | None:
    return next((p.status for p in node.list_peers() if p.id == pid), None)


def _reach(node: Node, pid: PeerId, address: tuple[str, int], timeout: float,
           stop: Callable[[], bool] = lambda: False) -> bool:
    """Connect to ``pid`` at ``address``; True once online, False when the first dial
    fails or ``timeout`` passes."""
    events: queue.SimpleQueue[str] = queue.SimpleQueue()
    unsubscribe = node.on_peer_change(lambda ev: events.put(ev.status) if ev.id == pid else None)
    try:
        node.connect(pid, *address)
        deadline = time.monotonic() + timeout
        while not stop():
            if _status(node, pid) == "online":
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                status = events.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            if status == "online":
                return True
            if status == "offline":
                return False
        return False
    finally:
        unsubscribe()


def _unreachable_hint(node: Node) -> str:
    return (f"(is the peer running `peernet listen`, and has it paired this machine, "
            f"{node.id}?)")


def _unreachable(node: Node, pid: PeerId, address: tuple[str, int]) -> str:
    return (f"could not reach {_name(pid, node.trust)} at {address[0]}:{address[1]} "
            + _unreachable_hint(node))


def _serve(node: Node, out: _Out) -> Callable[[], None]:
    """Expose ``echo`` and ``chat`` and report peers going on/offline on stderr until the
    returned function is called."""

    def chat(peer: PeerId, text: Any) -> None:
        if not isinstance(text, str):
            raise TypeError("chat takes a string")
        who = _name(peer, node.trust)
        for line in text.splitlines() or [""]:
            out.line(f"{who}: {_printable(line)}")

    def on_change(event: PeerEvent) -> None:
        if event.status == event.previous:
            return
        who = _name(event.id, node.trust)
        if event.status == "online":
            out.note(f"* {who} is online")
        elif event.previous == "online":
            out.note(f"* {who} went offline")

    node.expose("echo", lambda peer, args: args)
    node.expose("chat", chat)
    return node.on_peer_change(on_change)


def _stdin_lines(stop: _StopFlag) -> Iterator[str]:
    """Lines from fd 0 until EOF or ``stop``; polls, so a signal ends it promptly."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0:
        return
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = ""
    with selectors.DefaultSelector() as selector:
        pollable = True
        try:
            selector.register(fd, selectors.EVENT_READ)
        except (PermissionError, ValueError):  # a regular file: always readable
            pollable = False
        while not stop:
            if pollable and not selector.select(0.2):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += decoder.decode(chunk)
            *lines, pending = pending.split("\n")
            for line in lines:
                yield line.rstrip("\r")
                if stop:
                    return
        pending += decoder.decode(b"", final=True)
        if pending and not stop:
            yield pending


# --- commands ----------------------------------------------------------------------


def _print_qr(text: str, out: _Out, *, explicit: bool) -> None:
    try:
        import qrcode  # type: ignore[import-not-found, import-untyped, unused-ignore]  # optional
    except ImportError:
        if explicit:
            out.note("(no QR code: install the optional 'qrcode' package for one)")
        return
    qr = qrcode.QRCode(border=1)
    qr.add_data(text)
    qr.make(fit=True)
    qr.print_ascii(out=sys.stdout, invert=True)
    sys.stdout.flush()


def cmd_id(opts: argparse.Namespace, data_dir: Path) -> int:
    """Show this machine's id (created on first use), its short form and a pairing line."""
    pid = load_or_create(data_dir).peer_id
    out = _Out()
    out.line(str(pid))
    out.line(f"short id: {pid.short}")
    out.line(f"to pair, the other side runs: peernet pair {pid} --label NAME")
    if opts.qr or sys.stdout.isatty():
        # Upper case: the compact alphanumeric QR form; PeerId.parse accepts it.
        _print_qr(str(pid).upper(), out, explicit=opts.qr)
    return EXIT_OK


def cmd_pair(opts: argparse.Namespace, data_dir: Path) -> int:
    """Trust a peer, with an optional label."""
    try:
        pid = PeerId.parse(opts.peer)
    except InvalidPeerId as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    with _trust_store_locked(data_dir) as trust:
        own = load_or_create(data_dir).peer_id
        if pid == own:
            raise CliError("that is this machine's own id; pair the other machine's id",
                           EXIT_USAGE)
        was = trust.is_trusted(pid)
        try:
            entry = trust.pair(pid, opts.label)
        except (TypeError, ValueError) as exc:
            raise CliError(f"bad label: {exc}", EXIT_USAGE) from None
    label = f" ({_printable(entry.label)})" if entry.label else ""
    print(f"{'already paired' if was else 'paired'} with {pid.short}{label}")
    print(f"the other side must pair this machine too: peernet pair {own}")
    return EXIT_OK


def cmd_unpair(opts: argparse.Namespace, data_dir: Path) -> int:
    """Stop trusting a peer (by id or label)."""
    with _trust_store_locked(data_dir) as trust:
        pid = resolve_peer(opts.peer, trust)
        name = _name(pid, trust)
        if not trust.unpair(pid):
            raise CliError(f"{pid.short} is not paired; nothing to do", EXIT_NOT_PAIRED)
    print(f"unpaired {name}" + (f" ({pid.short})" if name != pid.short else ""))
    return EXIT_OK


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    seconds = max(0.0, time.time() - ts)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _table(peers: list[Peer]) -> str:
    rows = [("LABEL", "ID", "STATUS", "ADDRESS", "LAST SEEN", "RTT")]
    for p in peers:
        rows.append((
            _printable(p.label) if p.label else "-",
            p.id.short,
            p.status,
            f"{p.address[0]}:{p.address[1]}" if p.address else "-",
            _ago(p.last_seen),
            f"{p.rtt * 1000:.1f} ms" if p.rtt is not None else "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def cmd_peers(opts: argparse.Namespace, data_dir: Path) -> int:
    """The status table of paired peers; ``--check`` dials some of them first."""
    if not opts.check:
        trust = TrustStore.load(data_dir)
        book = AddressBook.load(ensure_private_dir(data_dir))
        peers = []
        for t in trust.list():
            seen = book.get(t.peer_id)
            peers.append(Peer(t.peer_id, t.label, "unknown", seen.address if seen else None,
                              seen.last_seen if seen else None, None))
        if not peers:
            print("no paired peers yet; pair one with: peernet pair ID --label NAME")
            return EXIT_OK
        print(_table(peers))
        print("(live status is known only to a running node; dial peers with "
              "--check ID@HOST:PORT)", file=sys.stderr)
        return EXIT_OK
    targets: list[tuple[str, tuple[str, int]]] = []
    for item in opts.check:
        who, sep, where = item.rpartition("@")
        if not sep or not who:
            raise CliError(f"bad --check {item!r}: expected ID@HOST:PORT", EXIT_USAGE)
        targets.append((who, parse_address(where)))
    # A short heartbeat so an rtt is measured while we wait.
    with _open_node(data_dir, host="127.0.0.1", port=0, network_monitor=False,
                    redial_remembered=False, heartbeat_interval=0.1, heartbeat_timeout=60.0) as node:
        pids = []
        for who, address in targets:
            pid = resolve_peer(who, node.trust)
            _require_paired(pid, node.trust)
            pids.append(pid)
            node.connect(pid, *address)
        deadline = time.monotonic() + opts.timeout
        while time.monotonic() < deadline:
            by_id = {p.id: p for p in node.list_peers()}
            if all(by_id[pid].status == "offline" or (by_id[pid].online and by_id[pid].rtt is not None)
                   for pid in pids):
                break
            time.sleep(0.02)
        peers = node.list_peers()
    print(_table(peers))
    offline = [p for p in peers if p.id in pids and not p.online]
    return EXIT_UNREACHABLE if offline else EXIT_OK


def cmd_listen(opts: argparse.Namespace, data_dir: Path) -> int:
    """Serve ``echo`` and ``chat`` until Ctrl-C or SIGTERM."""
    out = _Out()
    with _stop_on_signals() as stop:
        with _open_node(data_dir, host=opts.host, port=opts.port) as node:
            quiet = _serve(node, out)
            out.line(f"READY id={node.id} port={node.port} host={opts.host}")
            if len(node.trust) == 0:
                out.note("no peers paired yet: nobody can connect. Pair one with "
                         "`peernet pair ID` (stop this first).")
            out.note(f"serving echo and chat on port {node.port}; a paired peer runs: "
                     f"peernet call {node.id} echo '\"hi\"' --to THIS_HOST:{node.port}")
            out.note("Ctrl-C stops.")
            while not stop:
                time.sleep(0.1)
            quiet()  # our own shutdown is not news
    return EXIT_OK


def cmd_chat(opts: argparse.Namespace, data_dir: Path) -> int:
    """Interactive chat: stdin lines go to the peer's ``chat``; its lines are printed."""
    address = parse_address(opts.to) if opts.to else None
    out = _Out()
    with _stop_on_signals() as stop:
        with _open_node(data_dir, host=opts.host, port=opts.port,
                        redial_remembered=False) as node:
            pid = resolve_peer(opts.peer, node.trust)
            _require_paired(pid, node.trust)
            name = _name(pid, node.trust)
            quiet = _serve(node, out)
            out.line(f"READY id={node.id} port={node.port} host={opts.host}")
            if address is None:
                out.note(f"waiting for {name} to connect to port {node.port} "
                         f"(it runs: peernet chat {node.id} --to THIS_HOST:{node.port})")
            elif not _reach(node, pid, address, opts.wait, lambda: bool(stop)) and not stop:
                out.note(f"{_unreachable(node, pid, address)}; will keep trying.")
            out.note(f"chat with {name}: type a line and press Enter; Ctrl-D or Ctrl-C ends.")
            for line in _stdin_lines(stop):
                if not line.strip():
                    continue
                try:
                    delivered = node.send(pid, "chat", line)
                except MessageTooLarge as exc:
                    out.note(f"peernet: line not sent: {exc}")
                    continue
                if not delivered:
                    out.note(f"(not delivered: {name} is offline) {line}")
            quiet()  # our own shutdown is not news
    return EXIT_OK


def _check_handler(name: str) -> None:
    try:
        check_handler_name(name)
    except InvalidHandlerName as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


@contextmanager
def _to_peer(opts: argparse.Namespace, data_dir: Path) -> Iterator[tuple[Node, PeerId, Any,
                                                                          tuple[str, int]]]:
    """For call/send: check the handler, JSON and address, then a short-lived node and
    the paired peer named on the command line."""
    _check_handler(opts.handler)
    args = parse_json_arg(opts.json)
    address = parse_address(opts.to)
    with _open_node(data_dir, host="127.0.0.1", port=0, network_monitor=False,
                    redial_remembered=False) as node:
        pid = resolve_peer(opts.peer, node.trust)
        _require_paired(pid, node.trust)
        yield node, pid, args, address


def cmd_call(opts: argparse.Namespace, data_dir: Path) -> int:
    """Run HANDLER on the peer and print its result as JSON."""
    with _to_peer(opts, data_dir) as (node, pid, args, address):
        node.connect(pid, *address)
        try:
            result = node.call(pid, opts.handler, args, timeout=opts.timeout)
        except PeerUnavailable as exc:
            # A peer that broke the protocol was reached: asking whether it runs
            # `peernet listen` would send the user looking in the wrong place.
            hint = "" if getattr(exc, "protocol_error", False) else f" {_unreachable_hint(node)}"
            raise CliError(f"{exc}{hint}", EXIT_UNREACHABLE) from None
    print(dump_json(result), flush=True)
    return EXIT_OK


def cmd_send(opts: argparse.Namespace, data_dir: Path) -> int:
    """Hand ``HANDLER(JSON)`` to the peer without waiting for a reply."""
    with _to_peer(opts, data_dir) as (node, pid, args, address):
        if not _reach(node, pid, address, opts.timeout):
            raise CliError(_unreachable(node, pid, address), EXIT_UNREACHABLE)
        if not node.send(pid, opts.handler, args):
            raise CliError(f"not delivered: {_name(pid, node.trust)} went offline",
                           EXIT_UNREACHABLE)
    return EXIT_OK


# --- wiring ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="peernet", description=_DESCRIPTION, epilog=_EPILOG,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="where the identity and trust list live (default: "
                         "$PEERNET_DATA_DIR or ~/.local/share/peernet)")
    ap.add_argument("--version", action="version",
                    version=f"peernet {__version__} (distribution peernet-py, "
                            f"Python {sys.version.split()[0]})")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace, Path], int], help_text: str,
                epilog: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    peer_help = "peer id (pn1...) or the label of a paired peer"
    p = command("id", cmd_id, "show this machine's peer id (created on first use)")
    p.add_argument("--qr", action="store_true",
                   help="also draw a QR code (needs the optional 'qrcode' package; "
                        "automatic on a terminal when it is installed)")

    p = command("pair", cmd_pair, "trust a peer; both machines must pair each other",
                "example: peernet pair pn1aaa... --label alice")
    p.add_argument("peer", metavar="ID", help="the other machine's id, from its `peernet id`")
    p.add_argument("--label", help="a name for it, usable instead of the id later")

    p = command("unpair", cmd_unpair, "stop trusting a peer (closes its links)")
    p.add_argument("peer", metavar="ID", help=peer_help)

    p = command("peers", cmd_peers, "list paired peers: label, id, status, address, "
                "last seen, rtt",
                "example: peernet peers --check alice@192.168.1.10:7777\n"
                "exit code 3 when a checked peer is not online")
    p.add_argument("--check", action="append", metavar="ID@HOST:PORT", default=[],
                   help="dial this peer first, to show its live status and rtt (repeatable)")
    p.add_argument("--timeout", type=_positive_float, default=5.0,
                   help="how long --check waits, seconds (default 5)")

    p = command("listen", cmd_listen, "serve echo and chat until Ctrl-C or SIGTERM",
                "prints 'READY id=ID port=PORT host=HOST' on stdout once listening, and\n"
                "each incoming chat line as 'LABEL: text'")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=_port, default=0, help="TCP port (default: any free one)")

    p = command("chat", cmd_chat, "chat with a peer: each line you type is sent to its chat "
                "handler; its lines are printed",
                "example: peernet chat alice --to 192.168.1.10:7777\n"
                "without --to it waits for the peer to connect. Lines typed while the peer\n"
                "is offline are not delivered (you are told). EOF or Ctrl-C ends.")
    p.add_argument("peer", metavar="ID", help=peer_help)
    p.add_argument("--to", metavar="HOST:PORT", help="where the peer listens")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=_port, default=0, help="TCP port (default: any free one)")
    p.add_argument("--wait", type=_positive_float, default=5.0,
                   help="how long to wait for the first connection, seconds (default 5)")

    for name, func, help_text in (
        ("call", cmd_call, "run a handler on a peer and print its result as JSON"),
        ("send", cmd_send, "hand a message to a peer's handler: no reply, no retry"),
    ):
        p = command(name, func, help_text,
                    f"example: peernet {name} alice echo '{{\"n\": 1}}' --to 192.168.1.10:7777")
        p.add_argument("peer", metavar="ID", help=peer_help)
        p.add_argument("handler", metavar="HANDLER", help="handler name, e.g. echo or chat")
        p.add_argument("json", metavar="JSON", nargs="?", default=None,
                       help="the argument as JSON (default null; '-' reads stdin)")
        p.add_argument("--to", metavar="HOST:PORT", required=True, help="where the peer listens")
        p.add_argument("--timeout", type=_positive_float, default=5.0,
                       help="seconds to connect" + (" and get the answer" if name == "call" else "")
                            + " (default 5)")
    return ap


def _classify(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, NotPaired):
        return EXIT_NOT_PAIRED, str(exc)
    if isinstance(exc, (InvalidPeerId, InvalidHandlerName, EncodeError, MessageTooLarge)):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, CallTimeout):
        return EXIT_TIMEOUT, str(exc)
    if isinstance(exc, PeerUnavailable):
        return EXIT_UNREACHABLE, str(exc)
    if isinstance(exc, NoSuchHandler):
        return EXIT_REMOTE, f"the peer refused: {exc}"
    if isinstance(exc, (Forbidden, Busy, RemoteError)):
        return EXIT_REMOTE, f"the peer refused or failed: {exc}"
    if isinstance(exc, (PeerNetError, OSError)):
        return EXIT_ERROR, str(exc)
    return EXIT_ERROR, f"unexpected error: {type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    """Run the ``peernet`` command line; returns the exit code."""
    opts = _parser().parse_args(argv)
    data_dir = (opts.data_dir or default_data_dir()).expanduser()
    # SIGTERM behaves like Ctrl-C: the `with Node` blocks close the node on the way out.
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return opts.func(opts, data_dir)
    except KeyboardInterrupt:
        print("peernet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout went away (e.g. `| head`): no traceback, no "Exception ignored" at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 -- one line, never a traceback
        code, message = _classify(exc)
        # Whatever part of it came from a peer, it cannot move the cursor or forge lines.
        print(f"peernet: {escape(message)}", file=sys.stderr)
        return code
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
