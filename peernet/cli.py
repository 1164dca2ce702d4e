"""The ``peernet`` command (also ``python -m peernet``).

Subcommands::

    peernet id [--qr]                               this machine's id and a pairing line
    peernet pair ID|N|PREFIX [--label L] [--yes]    trust a peer (both sides must pair);
                                                    N or PREFIX picks a `nearby` entry
    peernet unpair ID                               stop trusting a peer
    peernet label ID LABEL                          relabel a paired peer ('' clears)
    peernet peers [--check ID@HOST:PORT]... [--timeout S] [--full]
                                                    the paired peers, as a status table
                                                    (--full: whole ids, for unpair/label)
    peernet status                                  the node running on the data dir
    peernet nearby [--wait S]                       unpaired nodes announcing on the LAN
    peernet listen [--host H] [--port N]            serve ``echo`` and ``chat`` until Ctrl-C
    peernet chat ID [--to HOST:PORT] [--host H] [--port N] [--wait S]
                                                    interactive walkie-talkie chat
    peernet call ID HANDLER [JSON] [--to HOST:PORT] [--timeout S]
                                                    run a handler, print its JSON result
    peernet send ID HANDLER [JSON] [--to HOST:PORT] [--timeout S]
                                                    fire and forget, no reply
    peernet invite [--label L] [--ttl S] [--long-only]
                                                    open a one-time invite, show its
                                                    codes, wait for the join (in the
                                                    running node, if one holds the dir)
    peernet join CODE [--label L] [--timeout S]     pair with the inviter in one step

Discovery (``listen``, ``nearby``, ``peers``, ``chat``, ``call``, ``send``):
``--discovery udp|mdns|none`` (repeatable, or ``udp,mdns``), ``--interface NAME``
(repeatable), ``--udp-port P`` and ``--udp-target HOST:PORT`` (unicast instead of
broadcast). Defaults come from ``$PEERNET_DISCOVERY`` (e.g. ``udp`` or ``udp,mdns``;
``none`` turns it off), else from ``DATA_DIR/settings.toml``::

    discovery = ["udp"]          # or "udp", or ["udp", "mdns"]
    interfaces = ["eth0"]        # optional; default: every usable IPv4 interface
    port = 7777                  # optional: what listen, invite and chat listen on
                                 # without --port (default: any free port, a one-off)

A data dir's usual port matters after an invite: the joiner remembers the inviter at
the port in the code, so a later call without ``--to`` reaches it only where a node of
the inviter's data dir listens on that port again (``invite`` says so once paired).

With discovery on, ``call``, ``send`` and ``chat`` need no ``--to``: the command asks
the LAN (a UDP solicitation, an mDNS query) and the peer answers at once. Without it, a
remembered address (the last one a node of this data dir reached) is tried. One-shot
commands never announce themselves; ``listen`` and ``chat`` do.

Every command takes ``--data-dir`` (default ``$PEERNET_DATA_DIR``, else
``~/.local/share/peernet``): the identity and trust list. When a node runs on that data
dir (``peernet listen``, an app, a notebook), the commands work through it, over its
control socket (``DATA_DIR/control.sock``, see ``peernet.admin``): ``pair``/``unpair``/
``label`` take effect in it at once (an unpaired peer's links close), ``peers`` shows
its live status, ``nearby`` what its discovery hears, and ``call``/``send``/``chat`` use
its identity and links. Otherwise they use the files (and ``call``/``send``/``chat``/
``peers --check``/``nearby`` run a node of their own). The output is the same either
way. Only ``listen`` needs the data dir to itself. A node started with
``control=False`` serves no socket: then commands that need the data dir are refused.

``ID`` is a peer id (``pn1…``) or the label of a paired peer. ``JSON`` arguments are
parsed with ``json.loads`` (``-`` reads them from stdin); bytes travel as
``{"$base64": "..."}`` in both directions (an argument object with exactly that one key
becomes bytes; a bytes result is printed that way).

Errors are one line on stderr, starting ``peernet: ``. Exit codes:

    0  ok
    1  runtime error (bad key or trust file, data dir in use, port in use, ...)
    2  usage error: bad arguments, bad peer id, bad JSON, bad HOST:PORT, own id
    3  peer unreachable: no link could be had, the link dropped, or a send was not
       delivered because the peer is offline; ``status``: no node runs on the data dir
    4  the peer refused or failed: no such handler, forbidden, busy, handler raised
    5  timeout: the peer did not answer in time
    6  not paired: pair the peer on this side first (``peernet pair ID``)

  ``invite`` and ``join``: 0 paired; 2 a malformed code; 3 no such invite nearby, or
  the inviter unreachable; 4 a wrong code (the invite is burned) or an invite already
  used, burned or cancelled; 5 the invite expired (``invite``: nobody joined in time);
  1 two invites nearby with that number, and other errors.
  130  interrupted (Ctrl-C) during call/send; ``listen`` and ``chat`` exit 0 on Ctrl-C,
       SIGTERM or SIGHUP, after closing the node cleanly
"""

from __future__ import annotations

import argparse
import base64
import binascii
import codecs
import errno
import ipaddress
import json
import logging
import os
import queue
import re
import selectors
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

from ._fs import atomic_write, ensure_private_dir, read_private_file
from ._text import escape, escape_json
from ._io import lifecycle
from ._io.control import SOCKET_NAME
from ._io.lifecycle import DataDirLock
from .errors import (
    Busy,
    CallTimeout,
    DataDirLocked,
    EncodeError,
    Forbidden,
    InvalidHandlerName,
    InvalidInviteCode,
    InvalidPeerId,
    InviteError,
    InviteExpired,
    InviteNotFound,
    InviteRejected,
    InviteTimeout,
    MessageTooLarge,
    NodeNotRunning,
    PortInUse,
    NoSuchHandler,
    NotPaired,
    PeerNetError,
    PeerUnavailable,
    RemoteError,
)
from ._version import __version__
from . import labels
from .handlers import HandlerFailure, check_handler_name
from .identity import load_or_create
from .ids import PeerId
from .node import Node, cli_command, default_data_dir
from .control import Admin, ChatLine, NodeStatus
from .peer import Peer, PeerEvent
from ._addresses import AddressBook
from ._text import check_host
from ._io.netmon import LocalAddress, host_interfaces, interface_names
from .discovery import Discovery, MdnsDiscovery, UdpDiscovery
from .discovery.mdns import MdnsUnavailable
from .trust import TrustedPeer, TrustStore, normalize_label
from ._proto.invite import LongCode, parse_code
from .invites import JoinResult

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

on a LAN, no addresses (both machines: export PEERNET_DISCOVERY=udp, or mdns):
  alice$ peernet listen              # announces itself; says on which interfaces
  bob$   peernet nearby              # 1  pn1aaa...  192.168.1.10:40321  udp  0 s ago
  bob$   peernet pair 1 --label alice   # shows the full id to check, asks
  bob$   peernet call alice echo '"hi"' # found by asking the LAN, no --to

pairing in one step (both sides trust each other; same LAN, or any network):
  alice$ peernet invite --label alice --port 7777   # shows 7-amber-orbit, pninv1...
  bob$   peernet join 7-amber-orbit --label bob    # or: peernet join pninv1...
  (then `peernet listen --port 7777` on alice and `peernet call alice echo '"hi"'`
  on bob, which remembers alice at the port in the code; `port = 7777` in
  DATA_DIR/settings.toml makes it alice's usual port, without --port)

ID is a peer id (pn1...) or the label of a paired peer. JSON arguments are
parsed with json.loads ('-' reads stdin); bytes are {"$base64": "..."} both ways.
While a node runs on the data dir (`listen`, an app), the other commands work
through it: `pair` in a second terminal takes effect in it at once.

exit codes:
  0 ok                     1 runtime error (data dir in use, bad key file...)
  2 usage (bad id, JSON)   3 peer unreachable, or not delivered (offline)
  4 peer refused/failed    5 timeout
  6 not paired here        130 interrupted
  (invite/join: 4 wrong code or invite used/burned, 5 expired, 3 not found)
  (nearby: 3 when nothing answered; call/send without --to: 2 when there is no
  discovery and no remembered address, 3 when the peer is not nearby in time;
  status: 3 when no node runs on the data dir)"""


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
    try:
        return check_host(host), int(port_text)
    except ValueError as exc:
        raise CliError(f"bad address: {exc}", EXIT_USAGE) from None


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


def _shown_address(address: tuple[str, int] | list[Any]) -> str:
    """``host:port`` for a terminal: a host came from a file, another process or a
    discovery packet, so it is escaped even though every way in checks it."""
    return f"{_printable(str(address[0]))}:{address[1]}"


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


class _NoteHandler(logging.Handler):
    """peernet's WARNINGs as notes on stderr (see :func:`_warnings_shown`)."""

    def __init__(self, out: _Out) -> None:
        super().__init__(logging.WARNING)
        self._out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._out.note(f"peernet: {escape(record.getMessage())}")
        except Exception:  # noqa: BLE001 -- logging's own policy for a failed emit
            self.handleError(record)


@contextmanager
def _warnings_shown(out: _Out) -> Iterator[None]:
    """While a long-running command serves, show the person watching it what peernet
    warns about: above all a key it refused (a peer that paired this machine, which
    this machine has not paired), with the command that lets it in."""
    handler = _NoteHandler(out)
    logger = logging.getLogger("peernet")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


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


def _port_in_use(host: str, port: int, origin: str = "--port") -> str:
    """PortInUse in the command line's terms (its message speaks of ``port=0``)."""
    if origin == SETTINGS_FILE_NAME:
        return (f"port {port} on {host} (the port in {SETTINGS_FILE_NAME}) is already in "
                "use (another node or program listens there): pick another with --port, "
                f"or change it in {SETTINGS_FILE_NAME}")
    return (f"port {port} on {host} is already in use (another node or program listens "
            "there): pick another --port, or leave --port out for a free one")


def _open_node(data_dir: Path, *, host: str, port: int, port_origin: str = "--port",
               **settings: Any) -> Node:
    settings.setdefault("on_handler_error", _note_handler_error)
    try:
        return Node(data_dir, host=host, port=port, **settings)
    except DataDirLocked as exc:
        raise CliError(_locked_message(data_dir, exc)) from None
    except PortInUse:
        raise CliError(_port_in_use(host, port, port_origin)) from None
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        raise


# --- where a command runs: the node running on the data dir, or the data dir itself ---


class _Remote:
    """The node running on the data dir, reached through its control endpoint
    (``peernet.admin``), with what the commands use of a :class:`Node`: the same
    methods, plus ``trust``, a snapshot of its trust list (for labels and names)."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin
        self.id = admin.id
        self.data_dir = admin.data_dir
        self._trust: TrustStore | None = None
        self._status: NodeStatus | None = None

    @property
    def trust(self) -> TrustStore:
        if self._trust is None:
            self._trust = TrustStore(None, [TrustedPeer(p.id, p.label, 0.0)
                                           for p in self.admin.list_peers()])
        return self._trust

    @property
    def status(self) -> NodeStatus:
        if self._status is None:
            self._status = self.admin.status()
        return self._status

    @property
    def port(self) -> int:
        return self.status.port

    def pair(self, pid: PeerId, label: str | None) -> PeerId:
        self._trust = None
        return self.admin.pair(pid, label)

    def unpair(self, pid: PeerId) -> bool:
        self._trust = None
        return self.admin.unpair(pid)

    def label(self, pid: PeerId, label: str | None) -> None:
        self._trust = None
        self.admin.label(pid, label)

    def list_peers(self) -> list[Peer]:
        return self.admin.list_peers()

    def connect(self, pid: PeerId, host: str, port: int) -> None:
        self.admin.connect(pid, host, port)

    def wait_for_peer(self, pid: PeerId, timeout: float) -> bool:
        return self.admin.wait_for_peer(pid, timeout)

    def call(self, pid: PeerId, name: str, args: Any, *, timeout: float | None = None) -> Any:
        return self.admin.call(pid, name, args, timeout=timeout)

    def send(self, pid: PeerId, name: str, args: Any) -> bool:
        return self.admin.send(pid, name, args)

    def on_peer_change(self, callback: Callable[[PeerEvent], None]) -> Callable[[], None]:
        return self.follow(lambda event: callback(event) if isinstance(event, PeerEvent)
                           else None, chat=False)

    def follow(self, deliver: Callable[[PeerEvent | ChatLine], None], *,
               chat: bool) -> Callable[[], None]:
        """Deliver the node's peer events (and chat lines) on a thread of ours until
        the returned function is called."""
        watch = self.admin.watch(["chat", "peers"] if chat else ["peers"])
        _ = self.trust  # the labels, fetched here rather than by the pump on its first event

        def pump() -> None:
            try:
                for event in watch:
                    deliver(event)
            except Exception as exc:  # noqa: BLE001 -- the node dropped the watch, or went
                if not watch.ended:  # away while we asked it a label: one line, no traceback
                    print(f"peernet: {escape(str(exc))}", file=sys.stderr, flush=True)

        thread = threading.Thread(target=pump, name="peernet-cli-watch", daemon=True)
        thread.start()

        def stop() -> None:
            watch.close()
            thread.join(5.0)

        return stop


class _Files:
    """The data dir's files, when no node runs there: ``trust`` is its trust list
    (held under the data-dir lock by a command that changes it)."""

    def __init__(self, data_dir: Path, trust: TrustStore) -> None:
        self.data_dir = data_dir
        self.trust = trust

    @property
    def id(self) -> PeerId:
        return load_or_create(self.data_dir).peer_id

    def pair(self, pid: PeerId, label: str | None) -> PeerId:
        return self.trust.pair(pid, label).peer_id

    def unpair(self, pid: PeerId) -> bool:
        return self.trust.unpair(pid)

    def label(self, pid: PeerId, label: str | None) -> None:
        self.trust.pair(pid, label if label is not None else "")  # "" clears it

    def list_peers(self) -> list[Peer]:
        """Paired peers as the files know them: no live status, the remembered address."""
        book = AddressBook.load(ensure_private_dir(self.data_dir))
        peers = []
        for t in self.trust.list():
            seen = book.get(t.peer_id)
            peers.append(Peer(t.peer_id, t.label, "unknown", seen.address if seen else None,
                              seen.last_seen if seen else None, None))
        return peers


#: What a command that runs a node gets: its own short-lived node, or the running one.
_Live = Node | _Remote


def _running(data_dir: Path) -> _Remote | None:
    """The node running on ``data_dir`` if it serves a control endpoint; None when no
    node runs there. CliError when one runs without an endpoint (``control=False``)."""
    try:
        return _Remote(Admin(data_dir))
    except NodeNotRunning as exc:
        if lifecycle.holder(data_dir) is not None:
            raise CliError(f"{exc} (--data-dir)") from None
        return None


@contextmanager
def _node_or_files(data_dir: Path, *, lock: bool) -> Iterator[_Remote | _Files]:
    """The running node, else the files (under the data-dir lock when ``lock``: the
    command changes them, and no node may start meanwhile)."""
    remote = _running(data_dir)
    if remote is not None:
        yield remote
        return
    directory = ensure_private_dir(data_dir)
    if not lock:
        yield _Files(directory, TrustStore.load(directory))
        return
    try:
        held = DataDirLock(directory)
    except DataDirLocked as exc:
        remote = _running(data_dir)  # a node started meanwhile (it serves last)?
        if remote is None:
            raise CliError(_locked_message(data_dir, exc)) from None
        yield remote
        return
    try:
        yield _Files(directory, TrustStore.load(directory))
    finally:
        held.release()


@contextmanager
def _node_or_running(data_dir: Path, **settings: Any) -> Iterator[_Live]:
    """The running node, else a short-lived one of our own (``_open_node`` settings)."""
    remote = _running(data_dir)
    if remote is None:
        try:
            node = _open_node(data_dir, **settings)
        except CliError:
            if lifecycle.holder(data_dir) is None:
                raise
            remote = _running(data_dir)  # a node started meanwhile?
            if remote is None:
                raise
        else:
            with node:
                yield node
            return
    yield remote


def resolve_peer(text: str, trust: TrustStore, data_dir: Path) -> PeerId:
    """A peer id typed by a person, or the label of a paired peer, by the library's
    rules (:func:`peernet.labels.resolve_peer`: ids win, labels compare like the
    look-alike rule, unknown and ambiguous ones name the candidates, here in
    command-line terms); CliError exit 2."""
    here = cli_command(data_dir)
    terms = labels.Terms(give_label=f"`{here} label ID NAME` gives one; `{here} peers "
                                    "--full` shows the ids",
                         show_ids=f"`{here} peers --full` shows them")
    try:
        return labels.resolve_peer(trust, text, terms)
    except InvalidPeerId as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _name(pid: PeerId, trust: TrustStore) -> str:
    """The peer's label, escaped for a terminal (a label stored by an older version was
    held only to its rules, and may hold format characters), else its short id."""
    entry = trust.get(pid)
    return _printable(entry.label) if entry is not None and entry.label else pid.short


def _require_paired(pid: PeerId, trust: TrustStore, data_dir: Path) -> None:
    if not trust.is_trusted(pid):
        raise CliError(f"{pid.short} is not paired on this side; run: "
                       f"{cli_command(data_dir)} pair {pid}", EXIT_NOT_PAIRED)


def _peer(node: _Live | _Files, pid: PeerId) -> Peer | None:
    """``pid``'s row of ``node.list_peers()`` (None: not paired there)."""
    return next((p for p in node.list_peers() if p.id == pid), None)


def _status(node: _Live, pid: PeerId) -> str | None:
    peer = _peer(node, pid)
    return peer.status if peer is not None else None


def _reach(node: _Live, pid: PeerId, address: tuple[str, int] | None, timeout: float,
           stop: Callable[[], bool] = lambda: False) -> bool:
    """Connect to ``pid`` at ``address``; True once online, False when the first dial
    fails or ``timeout`` passes. ``address`` None: wherever discovery or a remembered
    address says (``wait_for_peer``, which asks the LAN), until ``timeout``."""
    if address is None:
        deadline = time.monotonic() + timeout
        while not stop():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if node.wait_for_peer(pid, timeout=min(remaining, 0.2)):
                return True
        return False
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


def _unreachable_hint(node: _Live) -> str:
    return f"is it running `peernet listen`, and has it paired this machine, {node.id}?"


def _unreachable(node: _Live, pid: PeerId, address: tuple[str, int]) -> str:
    return (f"could not reach {_name(pid, node.trust)} at {_shown_address(address)}: "
            + _unreachable_hint(node))


def _named(text: str, pid: PeerId, trust: TrustStore) -> str:
    """A library message about ``pid`` (which names it by its short id, as a Python
    user's code does) in the command line's terms: by its label, as the user typed it."""
    name = _name(pid, trust)
    if name == pid.short:
        return text
    # Only the short id itself, never the start of a whole id (which goes on in bech32).
    return re.sub(re.escape(pid.short) + r"(?![0-9a-z])", lambda _: name, text)


def _call_failed(node: _Live, pid: PeerId, exc: PeerNetError) -> CliError:
    """A call or send that reached no answer, in command-line terms: the peer by its
    label, one sentence per thing to check, the exit code of :func:`_classify`."""
    code, message = _classify(exc)
    if not isinstance(exc, PeerUnavailable):
        return CliError(_named(message, pid, node.trust), code)
    name = _name(pid, node.trust)
    if str(node.id) in message:  # it proved its key, then refused ours
        return CliError(f"{name} did not accept this machine's key: it has not paired this "
                        f"machine. On {name}, run `peernet pair {node.id}`", code)
    if getattr(exc, "protocol_error", False):  # reached, and it broke the protocol
        return CliError(_named(message, pid, node.trust), code)
    return CliError(f"{_named(message, pid, node.trust)}: {_unreachable_hint(node)}", code)


# --- discovery: flags, $PEERNET_DISCOVERY, settings.toml ------------------------------

SETTINGS_FILE_NAME = "settings.toml"
NEARBY_FILE_NAME = "nearby.json"
#: A nearby list older than this is not used by ``pair N``: run ``nearby`` again.
_NEARBY_MAX_AGE_S = 600.0
_MODES = ("udp", "mdns")
_MDNS_HINT = 'mDNS discovery needs the mdns extra: pip install "peernet-py[mdns]"'


@dataclass(frozen=True)
class Lan:
    """The discovery a command runs with, and where that choice came from."""

    modes: tuple[str, ...]
    interfaces: tuple[str, ...] | None
    udp_port: int
    udp_targets: tuple[tuple[str, int], ...] | None
    origin: str

    def __bool__(self) -> bool:
        return bool(self.modes)

    def named(self) -> str:
        return " and ".join(self.modes) or "none"


def _parse_modes(values: list[str], where: str) -> tuple[str, ...]:
    modes: list[str] = []
    for value in values:
        for item in str(value).replace(" ", ",").split(","):
            item = item.strip().lower()
            if not item:
                continue
            if item in ("none", "off"):
                modes.clear()
                continue
            if item not in _MODES:
                raise CliError(f"unknown discovery {item!r} in {where}: use udp, mdns or none",
                               EXIT_USAGE)
            if item not in modes:
                modes.append(item)
    return tuple(modes)


def _read_settings(data_dir: Path) -> dict[str, Any]:
    """``DATA_DIR/settings.toml`` ({} when missing); CliError (exit 1) when unusable."""
    import tomllib

    path = data_dir / SETTINGS_FILE_NAME
    try:
        raw = read_private_file(path, max_bytes=64 * 1024, error=ValueError,
                                forbidden_mode=0o022, what="settings file")
    except FileNotFoundError:
        return {}
    except (ValueError, PeerNetError, OSError) as exc:
        raise CliError(f"cannot use {path}: {exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"bad settings file {path}: {exc}") from None
    unknown = sorted(set(data) - {"discovery", "interfaces", "port"})
    if unknown:
        raise CliError(f"bad settings file {path}: unknown setting(s) {', '.join(unknown)} "
                       "(known: discovery, interfaces, port)")
    port = data.get("port")
    if port is not None and (type(port) is not int or not 0 <= port <= 0xFFFF):
        raise CliError(f"bad settings file {path}: port must be a number 0..65535 (0: any "
                       f"free one), got {port!r}")
    for key in ("discovery", "interfaces"):
        value = data.get(key)
        if isinstance(value, str):
            data[key] = [value]
        elif value is not None and not (isinstance(value, list)
                                        and all(isinstance(v, str) for v in value)):
            raise CliError(f"bad settings file {path}: {key} must be a string or a list "
                           "of strings")
    return data


@dataclass(frozen=True)
class ListenPort:
    """The port a command's own node listens on, and where that came from: ``--port``,
    ``settings.toml`` (the data dir's usual port), or neither (0: any free one, a
    one-off that the next run will not have)."""

    port: int
    origin: str

    @property
    def usual(self) -> bool:
        """A port chosen, that the next run listens on again (not 0)."""
        return self.port != 0


def choose_port(opts: argparse.Namespace, data_dir: Path) -> ListenPort:
    """``--port``, else ``port`` in ``DATA_DIR/settings.toml``, else 0."""
    if opts.port is not None:
        return ListenPort(opts.port, "--port")
    port = _read_settings(data_dir).get("port")
    return ListenPort(port, SETTINGS_FILE_NAME) if port is not None else ListenPort(0, "")


def choose_lan(opts: argparse.Namespace, data_dir: Path) -> Lan:
    """The discovery for this command: ``--discovery``, else ``$PEERNET_DISCOVERY``,
    else ``settings.toml``, else none. ``--interface`` likewise (flag, then file)."""
    settings: dict[str, Any] | None = None
    flags = getattr(opts, "discovery", None)
    if flags:
        modes, origin = _parse_modes(flags, "--discovery"), "--discovery"
    elif os.environ.get("PEERNET_DISCOVERY", "").strip():
        modes = _parse_modes([os.environ["PEERNET_DISCOVERY"]], "$PEERNET_DISCOVERY")
        origin = "$PEERNET_DISCOVERY"
    else:
        settings = _read_settings(data_dir)
        modes = _parse_modes(settings.get("discovery") or [], str(data_dir / SETTINGS_FILE_NAME))
        origin = SETTINGS_FILE_NAME
    interfaces: tuple[str, ...] | None = tuple(getattr(opts, "interface", None) or ()) or None
    if interfaces is None and modes:
        if settings is None:
            settings = _read_settings(data_dir)
        interfaces = tuple(settings.get("interfaces") or ()) or None
    targets = getattr(opts, "udp_target", None)
    return Lan(modes, interfaces, getattr(opts, "udp_port", None) or 4040,
               tuple(parse_address(t) for t in targets) if targets else None, origin)


def _check_interfaces(lan: Lan) -> list[LocalAddress]:
    """The addresses discovery will use; CliError for a named interface that has none,
    or (UDP) no broadcast address."""
    found = host_interfaces(lan.interfaces)
    if lan.interfaces is not None:
        for name in lan.interfaces:
            mine = [a for a in found if name in (a.interface, a.ip) and ":" not in a.ip]
            if not mine and not _is_ip(name) and name not in (names := interface_names()):
                raise CliError(f"there is no interface {name!r} on this "
                               f"machine; its interfaces: {', '.join(names) or 'none'}",
                               EXIT_USAGE)
            if not mine:
                loopback = name == "lo" or name.startswith("127.")
                raise CliError(f"interface {name!r} has no usable IPv4 address (loopback and "
                               "link-local do not count); see `ip addr`" + (
                                   "; for two nodes on this machine, give each its own "
                                   "--udp-port and --udp-target 127.0.0.1 at the other's"
                                   if loopback else ""), EXIT_USAGE)
            if ("udp" in lan.modes and lan.udp_targets is None
                    and all(a.broadcast is None for a in mine)):
                raise CliError(
                    f"interface {name!r} has no broadcast address ({mine[0].ip}/"
                    f"{mine[0].prefix_len}): UDP discovery cannot announce there; use "
                    "--discovery mdns, --udp-target HOST:PORT, or another interface",
                    EXIT_USAGE)
    return [a for a in found if ":" not in a.ip]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def make_discovery(lan: Lan, *, one_shot: bool) -> list[Discovery]:
    """Discovery objects for ``lan``. ``one_shot``: listen and ask, never announce."""
    if not lan:
        return []
    _check_interfaces(lan)
    found: list[Discovery] = []
    for mode in lan.modes:
        if mode == "udp":
            try:
                found.append(UdpDiscovery(port=lan.udp_port, interfaces=lan.interfaces,
                                          targets=lan.udp_targets, announce=not one_shot))
            except ValueError as exc:  # a target this machine's own port (--udp-port)
                raise CliError(f"--udp-target: {exc} (--udp-port)", EXIT_USAGE) from None
        else:
            try:
                found.append(MdnsDiscovery(interfaces=lan.interfaces, register=not one_shot))
            except MdnsUnavailable:
                raise CliError(_MDNS_HINT) from None
    return found


def _describe_lan(lan: Lan) -> list[str]:
    """What ``listen`` tells the user: which interfaces each discovery uses."""
    addresses = _check_interfaces(lan)
    lines = []
    for mode in lan.modes:
        if mode == "udp" and lan.udp_targets is not None:
            where = ", ".join(f"{h}:{p}" for h, p in lan.udp_targets)
            lines.append(f"discovery udp: unicast to {where} (UDP port {lan.udp_port})")
        elif mode == "udp":
            where = ", ".join(f"{a.interface} {a.ip} (broadcast {a.broadcast})"
                              for a in addresses if a.broadcast) or "no interface yet"
            lines.append(f"discovery udp on {where}, UDP port {lan.udp_port}")
        else:
            where = ", ".join(f"{a.interface} {a.ip}" for a in addresses) or "no interface yet"
            lines.append(f"discovery mdns on {where}")
    return [f"{line} (from {lan.origin})" for line in lines]


def _solicit(sources: list[Discovery]) -> None:
    """Ask the LAN now (each discovery that can: UDP solicitation, mDNS query)."""
    for source in sources:
        solicit = getattr(source, "solicit", None)
        if solicit is not None:
            solicit()


def _no_address(pid: PeerId, trust: TrustStore) -> CliError:
    return CliError(f"no address for {_name(pid, trust)}: give --to HOST:PORT, or turn on "
                    "discovery (--discovery udp, or PEERNET_DISCOVERY=udp)", EXIT_USAGE)


def _not_found(node: _Live, pid: PeerId, lan: Lan, wait_s: float) -> str:
    return (f"{_name(pid, node.trust)} is not nearby: no {lan.named()} answer from it within "
            f"{wait_s:g} s (is it running `peernet listen --discovery {lan.modes[0]}` on "
            f"this network, and has it paired this machine, {node.id}?)")


# --- the nearby list, kept for `pair N` ------------------------------------------------


def _save_nearby(data_dir: Path, rows: list[dict[str, Any]]) -> None:
    data = {"version": 1, "at": time.time(), "entries": rows}
    atomic_write(data_dir / NEARBY_FILE_NAME, json.dumps(data).encode(), durable=False)


def _load_nearby(data_dir: Path) -> tuple[float, list[dict[str, Any]]]:
    path = data_dir / NEARBY_FILE_NAME
    try:
        raw = read_private_file(path, max_bytes=1024 * 1024, error=ValueError,
                                forbidden_mode=0o022, what="nearby list")
        data = json.loads(raw)
        entries = [{"id": PeerId.parse(e["id"]), "address": (check_host(e["address"][0]),
                                                            int(e["address"][1])),
                    "via": str(e["via"]), "last_seen": float(e["last_seen"])}
                   for e in data["entries"]]
        return float(data["at"]), entries
    except FileNotFoundError:
        raise CliError("no nearby list yet: run `peernet nearby` first", EXIT_USAGE) from None
    except (ValueError, KeyError, TypeError, IndexError, PeerNetError) as exc:
        raise CliError(f"unreadable nearby list {path} ({exc}): run `peernet nearby` again",
                       EXIT_USAGE) from None


def _pick_nearby(text: str, data_dir: Path) -> dict[str, Any] | None:
    """The ``nearby`` entry ``text`` names (its number, or a prefix of its id), None
    when ``text`` does not look like either; CliError if it names none or several."""
    text = text.strip()
    if text.isdigit():
        at, entries = _load_nearby(data_dir)
        index = int(text)
        if not 1 <= index <= len(entries):
            count = f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}"
            raise CliError(f"no entry {index} in the nearby list ({count}): "
                           "run `peernet nearby`", EXIT_USAGE)
        entry = entries[index - 1]
    elif text.lower().startswith("pn1") and 7 <= len(text) < len(str(PeerId(bytes(32)))):
        if not (data_dir / NEARBY_FILE_NAME).exists():
            return None  # no `nearby` ran: more likely an id cut short (the parser says so)
        at, entries = _load_nearby(data_dir)
        matches = [e for e in entries if str(e["id"]).startswith(text.lower())]
        if not matches:
            return None
        if len(matches) > 1:
            raise CliError(f"{len(matches)} nearby entries start with {text!r}: type more "
                           "of the id, or its number", EXIT_USAGE)
        entry = matches[0]
    else:
        return None
    age = time.time() - at
    if age > _NEARBY_MAX_AGE_S:
        raise CliError(f"the nearby list is {age / 60:.0f} min old: run `peernet nearby` "
                       "again", EXIT_USAGE)
    return entry


def _show_chat(out: _Out, who: str, text: str) -> None:
    """An incoming chat message, one line per line, after the sender's (escaped) name."""
    for line in text.splitlines() or [""]:
        out.line(f"{who}: {_printable(line)}")


def _show_change(out: _Out, who: str, event: PeerEvent) -> None:
    if event.status == event.previous:
        return
    if event.status == "online":
        out.note(f"* {who} is online")
    elif event.previous == "online":
        out.note(f"* {who} went offline")


def _serve(node: _Live, out: _Out, *, chat: bool = True) -> Callable[[], None]:
    """Show incoming chat lines on stdout and peers going on/offline on stderr until
    the returned function is called. Our own node exposes ``echo`` and ``chat`` (and
    relays each chat line to control clients watching it, such as a second ``peernet
    chat``); the running node is followed through its control endpoint (its chat lines
    only when ``chat``: it relays them)."""
    if isinstance(node, _Remote):
        def deliver(event: PeerEvent | ChatLine) -> None:
            if isinstance(event, ChatLine):
                _show_chat(out, _name(event.peer, node.trust), event.text)
            else:
                _show_change(out, _name(event.id, node.trust), event)

        return node.follow(deliver, chat=chat)
    relay = node._feed("chat")

    def on_chat(peer: PeerId, text: Any) -> None:
        if not isinstance(text, str):
            raise TypeError("chat takes a string")
        _show_chat(out, _name(peer, node.trust), text)
        if relay is not None:
            entry = node.trust.get(peer)
            relay({"peer": str(peer), "label": entry.label if entry else None, "text": text})

    node.expose("echo", lambda peer, args: args)
    node.expose("chat", on_chat)
    return node.on_peer_change(lambda event: _show_change(out, _name(event.id, node.trust),
                                                          event))


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


def _confirm_nearby(entry: dict[str, Any], yes: bool) -> None:
    """Show the full id of the picked nearby entry; go on only once the user says so."""
    print(f"nearby: {entry['id']}\n  at {_shown_address(entry['address'])} via "
          f"{_printable(entry['via'])}, heard {_ago(entry['last_seen'])}", flush=True)
    print("check that this is the id `peernet id` shows on that machine", flush=True)
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError("pairing a nearby entry needs a confirmation: compare the full id "
                       "above, then run the command again with --yes", EXIT_USAGE)
    answer = input("pair with it? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise CliError("not paired", EXIT_USAGE)


def cmd_pair(opts: argparse.Namespace, data_dir: Path) -> int:
    """Trust a peer, with an optional label: by id, or a ``nearby`` entry (its number
    or an id prefix), after showing its full id."""
    try:
        pid = PeerId.parse(opts.peer)
    except InvalidPeerId as exc:
        picked = _pick_nearby(opts.peer, ensure_private_dir(data_dir))
        if picked is None:
            raise CliError(str(exc), EXIT_USAGE) from None
        pid = picked["id"]
        _confirm_nearby(picked, opts.yes)
    with _node_or_files(data_dir, lock=True) as target:
        own = target.id
        if pid == own:
            raise CliError("that is this machine's own id; pair the other machine's id",
                           EXIT_USAGE)
        was = target.trust.get(pid)
        try:
            target.pair(pid, opts.label)
        except (TypeError, ValueError) as exc:
            raise CliError(f"bad label: {exc}", EXIT_USAGE) from None
        entry = target.trust.get(pid)
        label = entry.label if entry is not None else None
        name = _printable(label) if label else pid.short
        if was is None:
            print(f"paired with {pid.short}" + (f" ({name})" if label else ""), flush=True)
        elif was.label != label:
            old = f"was {_printable(was.label)}" if was.label else "it had none"
            print(f"relabelled {pid.short}: {name if label else 'no label now'} ({old})",
                  flush=True)
        else:
            print(f"already paired with {pid.short}" + (f" ({name})" if label else ""),
                  flush=True)
        peer = _peer(target, pid)
        if (isinstance(target, _Remote) and was is None and peer is not None
                and peer.address is not None and not peer.online):
            # The running node knows where it is (it knocked, or discovery heard it)
            # and dials it now: whether it gets in says whether it paired this machine.
            if target.wait_for_peer(pid, _DIAL_ON_PAIR_WAIT_S):
                peer = _peer(target, pid)
    if peer is not None and peer.online:
        print(f"{name} is online: it has paired this machine too")
    elif peer is None or peer.last_seen is None:  # no link with it ever, here
        print("the other side must pair this machine too, if it has not yet: "
              f"peernet pair {own}")
    return EXIT_OK


#: How long ``pair`` through a running node waits for the dial the pairing started (to
#: a peer that knocked, or that discovery heard), to say whether it paired this machine.
_DIAL_ON_PAIR_WAIT_S = 2.0


def cmd_unpair(opts: argparse.Namespace, data_dir: Path) -> int:
    """Stop trusting a peer (by id or label); a running node closes its links at once."""
    with _node_or_files(data_dir, lock=True) as target:
        pid = resolve_peer(opts.peer, target.trust, data_dir)
        name = _name(pid, target.trust)
        if not target.unpair(pid):
            raise CliError(f"{pid.short} is not paired; nothing to do (`"
                           f"{cli_command(data_dir)} peers --full` lists the paired ones)",
                           EXIT_NOT_PAIRED)
    print(f"unpaired {name}" + (f" ({pid.short})" if name != pid.short else ""))
    return EXIT_OK


def cmd_label(opts: argparse.Namespace, data_dir: Path) -> int:
    """Give a paired peer a new label, or clear it (an empty label)."""
    with _node_or_files(data_dir, lock=True) as target:
        pid = resolve_peer(opts.peer, target.trust, data_dir)
        _require_paired(pid, target.trust, data_dir)
        try:
            target.label(pid, opts.label)
        except (TypeError, ValueError) as exc:
            raise CliError(f"bad label: {exc}", EXIT_USAGE) from None
        entry = target.trust.get(pid)
    if entry is not None and entry.label:
        print(f"{pid.short} is now labelled {_printable(entry.label)}")
    else:
        print(f"{pid.short} has no label now")
    return EXIT_OK


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    seconds = max(0.0, time.time() - ts)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _table(peers: list[Peer], *, full: bool = False) -> str:
    rows = [("LABEL", "ID", "STATUS", "ADDRESS", "LAST SEEN", "RTT")]
    for p in peers:
        rows.append((
            _printable(p.label) if p.label else "-",
            str(p.id) if full else p.id.short,
            p.status,
            _shown_address(p.address) if p.address else "-",
            _ago(p.last_seen),
            f"{p.rtt * 1000:.1f} ms" if p.rtt is not None else "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def _print_table(peers: list[Peer], full: bool, data_dir: Path) -> None:
    """The peers table on stdout; when an unlabelled peer's id is cut short, where to
    get the whole one (what unpair and label take) on stderr."""
    print(_table(peers, full=full), flush=True)
    if not full and any(not p.label for p in peers):
        print(f"(ids cut short: `{cli_command(data_dir)} peers --full` shows whole ones, "
              "for unpair or label)", file=sys.stderr)


def _peers_discovered(lan: Lan, data_dir: Path, timeout_s: float, full: bool) -> int:
    """Ask the LAN for the paired peers and show where they are (and reach them)."""
    sources = make_discovery(lan, one_shot=True)
    with _open_node(data_dir, host="127.0.0.1", port=0, network_monitor=False,
                    redial_remembered=False, heartbeat_interval=0.1, heartbeat_timeout=60.0,
                    discovery=sources) as node:
        pids = [t.peer_id for t in node.trust.list()]
        if not pids:
            print(f"no paired peers yet; pair one with: {cli_command(data_dir)} pair ID "
                  "--label NAME (see `peernet nearby`)")
            return EXIT_OK
        _solicit(sources)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(p.online and p.rtt is not None for p in node.list_peers()):
                break
            time.sleep(0.02)
        peers = node.list_peers()
    _print_table(peers, full, data_dir)
    print(f"(addresses found by {lan.named()} discovery within {timeout_s:g} s)",
          file=sys.stderr)
    return EXIT_OK if all(p.online for p in peers) else EXIT_UNREACHABLE


def cmd_peers(opts: argparse.Namespace, data_dir: Path) -> int:
    """The status table of paired peers: live from the running node, else from the
    files; ``--check`` dials some of them first; with discovery on (and no node
    running), the addresses it finds and the live status."""
    targets: list[tuple[str, tuple[str, int]]] = []
    for item in opts.check:
        who, sep, where = item.rpartition("@")
        if not sep or not who:
            raise CliError(f"bad --check {item!r}: expected ID@HOST:PORT", EXIT_USAGE)
        targets.append((who, parse_address(where)))
    if not targets:
        with _node_or_files(data_dir, lock=False) as target:
            if isinstance(target, _Files):
                lan = choose_lan(opts, data_dir)
                if lan:
                    return _peers_discovered(lan, data_dir, opts.timeout or 2.0, opts.full)
            peers = target.list_peers()
        if not peers:
            print(f"no paired peers yet; pair one with: {cli_command(data_dir)} pair ID "
                  "--label NAME")
            return EXIT_OK
        _print_table(peers, opts.full, data_dir)
        if isinstance(target, _Files):
            print("(no node is running on this data dir, so the status is not live; dial "
                  "peers with --check ID@HOST:PORT)", file=sys.stderr)
        return EXIT_OK
    # A short heartbeat so an rtt is measured while we wait (the running node pings a
    # link that has none yet whenever its peers are listed).
    with _node_or_running(data_dir, host="127.0.0.1", port=0, network_monitor=False,
                          redial_remembered=False, heartbeat_interval=0.1,
                          heartbeat_timeout=60.0) as node:
        pids = []
        for who, address in targets:
            pid = resolve_peer(who, node.trust, data_dir)
            _require_paired(pid, node.trust, data_dir)
            pids.append(pid)
            node.connect(pid, *address)
        deadline = time.monotonic() + (opts.timeout or 5.0)
        while time.monotonic() < deadline:
            by_id = {p.id: p for p in node.list_peers()}
            if all(by_id[pid].status == "offline" or (by_id[pid].online and by_id[pid].rtt is not None)
                   for pid in pids):
                break
            time.sleep(0.02)
        peers = node.list_peers()
    _print_table(peers, opts.full, data_dir)
    offline = [p for p in peers if p.id in pids and not p.online]
    return EXIT_UNREACHABLE if offline else EXIT_OK


def cmd_nearby(opts: argparse.Namespace, data_dir: Path) -> int:
    """Unpaired nodes announcing on the LAN, numbered for ``peernet pair N``."""
    remote = _running(data_dir)
    if remote is not None:
        _say_ignored(opts)
        modes = remote.status.discovery
        if not modes:
            raise CliError(f"the node running on {data_dir} (pid {remote.status.pid}) runs no "
                           "discovery, so it hears nobody nearby: start it with discovery "
                           "(e.g. peernet listen --discovery udp)", EXIT_USAGE)
        heard = remote.admin.list_nearby(wait=min(opts.wait, 30.0))
        directory = data_dir
    else:
        lan = choose_lan(opts, data_dir)
        if not lan:
            raise CliError("nearby needs discovery: --discovery udp or mdns (or set "
                           "PEERNET_DISCOVERY=udp)", EXIT_USAGE)
        modes = lan.modes
        sources = make_discovery(lan, one_shot=True)
        with _open_node(data_dir, host="127.0.0.1", port=0, network_monitor=False,
                        redial_remembered=False, discovery=sources) as node:
            _solicit(sources)
            deadline = time.monotonic() + opts.wait
            while time.monotonic() < deadline:  # answers come at once; announces as they will
                time.sleep(0.05)
            heard = node.list_nearby()
            directory = node.data_dir
    by_id: dict[PeerId, dict[str, Any]] = {}
    for n in heard:  # newest first; one row per node, all the ways it was heard
        row = by_id.get(n.id)
        if row is None:
            by_id[n.id] = {"id": str(n.id), "address": list(n.address), "via": n.source,
                           "last_seen": n.last_seen}
        elif n.source not in row["via"].split(","):
            row["via"] += f",{n.source}"
    rows = list(by_id.values())
    _save_nearby(directory, rows)
    if not rows:
        print(f"peernet: nothing nearby: no unpaired node answered on {' and '.join(modes)} "
              f"within {opts.wait:g} s (is the other machine running `peernet listen "
              f"--discovery {modes[0]}` on this network?)", file=sys.stderr)
        return EXIT_UNREACHABLE
    table = [("#", "ID", "ADDRESS", "VIA", "AGE")]
    for i, row in enumerate(rows, 1):
        table.append((str(i), row["id"][:15] + "…", _shown_address(row["address"]),
                      row["via"], _ago(row["last_seen"])))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table))
    print("pair one with: peernet pair N (or an id prefix); it shows the full id to check",
          file=sys.stderr)
    return EXIT_OK


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:.0f} min"
    return f"{seconds // 86400:.0f} d {seconds % 86400 / 3600:.0f} h"


def cmd_status(opts: argparse.Namespace, data_dir: Path) -> int:
    """The node running on the data dir: id, process, uptime, port, peers, links,
    handlers, discovery. Exit code 3 when none runs there."""
    remote = _running(data_dir)
    if remote is None:
        print(f"node:      not running (no peernet node holds {data_dir})")
        return EXIT_UNREACHABLE
    s = remote.status
    process = lifecycle.holder(data_dir) or f"pid {s.pid}"
    rows = [
        ("id", str(s.id)),
        ("node", f"running for {_duration(s.uptime_s)} in {process}"),
        ("listening", f"{s.host}:{s.port}"),
        ("peers", f"{s.peers} paired, {s.online} online"),
        ("links", str(s.links)),
        ("handlers", ", ".join(s.handlers) or "none"),
        ("discovery", ", ".join(s.discovery) or "none (manual addresses only)"),
        ("control", str(remote.data_dir / SOCKET_NAME)),
        ("version", f"peernet {s.version}"),
    ]
    for key, value in rows:
        print(f"{key + ':':<10} {value}")
    return EXIT_OK


def cmd_listen(opts: argparse.Namespace, data_dir: Path) -> int:
    """Serve ``echo`` and ``chat`` until Ctrl-C or SIGTERM."""
    out = _Out()
    lan = choose_lan(opts, data_dir)
    sources = make_discovery(lan, one_shot=False)
    port = choose_port(opts, data_dir)
    with _stop_on_signals() as stop, _warnings_shown(out):
        with _open_node(data_dir, host=opts.host, port=port.port, port_origin=port.origin,
                        discovery=sources) as node:
            quiet = _serve(node, out)
            out.line(f"READY id={node.id} port={node.port} host={opts.host}")
            for line in _describe_lan(lan) if lan else ():
                out.note(line)
            if len(node.trust) == 0:
                here = cli_command(data_dir)
                out.note(f"no peers paired yet: nobody can connect. In another terminal, "
                         f"`{here} invite` (the other machine joins with its code) or "
                         f"`{here} pair ID`: this node takes it at once.")
            where = "" if lan else f" --to {_this_host(opts.host)}:{node.port}"
            out.note(f"serving echo and chat on port {node.port}; a paired peer runs: "
                     f"peernet call {node.id} echo '\"hi\"'{where}")
            out.note("Ctrl-C stops.")
            while not stop:
                time.sleep(0.1)
            quiet()  # our own shutdown is not news
    return EXIT_OK


def _attached(remote: _Remote, name: str, relays: bool) -> str:
    """What ``chat`` through the running node says about where the peer's lines go."""
    status = remote.status
    node = f"the node running on {remote.data_dir} (pid {status.pid}, port {status.port})"
    if relays:
        return f"chatting through {node}: its incoming chat lines are shown here too"
    if "chat" in status.handlers:
        return (f"chatting through {node}: your lines are sent from it, but {name}'s lines "
                "go to its own chat handler, which does not relay them here")
    return (f"chatting through {node}: your lines are sent from it, but it has no chat "
            f"handler, so {name}'s lines to it are dropped (run `peernet listen` as the "
            "node to have them shown)")


def cmd_chat(opts: argparse.Namespace, data_dir: Path) -> int:
    """Interactive chat: stdin lines go to the peer's ``chat``; its lines are printed.
    When a node runs on the data dir, through that node (``_attached``)."""
    address = parse_address(opts.to) if opts.to else None
    out = _Out()
    with _stop_on_signals() as stop, _warnings_shown(out):
        remote = _running(data_dir)
        lan = choose_lan(opts, data_dir) if address is None and remote is None else None
        sources = make_discovery(lan, one_shot=False) if lan else []
        port = choose_port(opts, data_dir) if remote is None else ListenPort(0, "")
        with (nullcontext(remote) if remote is not None else
              _open_node(data_dir, host=opts.host, port=port.port, port_origin=port.origin,
                         redial_remembered=False, discovery=sources)) as node:
            pid = resolve_peer(opts.peer, node.trust, data_dir)
            _require_paired(pid, node.trust, data_dir)
            name = _name(pid, node.trust)
            relays = remote is None or "chat" in remote.status.feeds
            quiet = _serve(node, out, chat=relays)
            host = remote.status.host if remote is not None else opts.host
            out.line(f"READY id={node.id} port={node.port} host={host}")
            if remote is not None:
                out.note(_attached(remote, name, relays))
                _say_ignored(opts)
                if _status(node, pid) == "online":  # no event will say so: it was before
                    out.note(f"* {name} is online")
            remembered = _remembered(node, pid) if remote is None else None
            if address is None and (lan or remembered or remote is not None):
                if not _reach(node, pid, None, opts.wait, lambda: bool(stop)) and not stop:
                    out.note((_not_found(node, pid, lan, opts.wait) if lan else
                              f"{name} is not online yet" if remote is not None else
                              f"could not reach {name} at its remembered address "
                              f"{_shown_address(remembered or ('?', 0))}")
                             + "; will keep trying.")
            elif address is None:
                out.note(f"waiting for {name} to connect to port {node.port} "
                         f"(it runs: peernet chat {node.id} --to {_this_host(host)}:{node.port})")
            elif not _reach(node, pid, address, opts.wait, lambda: bool(stop)) and not stop:
                out.note(f"{_unreachable(node, pid, address)} (will keep trying)")
            out.note(f"chat with {name}: type a line and press Enter; Ctrl-D or Ctrl-C ends.")
            try:
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
            finally:  # the running node may have gone away (ControlError): still stop
                quiet()  # our own shutdown is not news
    return EXIT_OK


def _check_handler(name: str) -> None:
    try:
        check_handler_name(name)
    except InvalidHandlerName as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _remembered(node: _Live, pid: PeerId) -> tuple[str, int] | None:
    """The address a node of this data dir last reached ``pid`` at, if any."""
    seen = AddressBook.load(node.data_dir).get(pid)
    return seen.address if seen is not None else None


@contextmanager
def _to_peer(opts: argparse.Namespace, data_dir: Path) -> Iterator[tuple[
        _Live, PeerId, Any, tuple[str, int] | None, Lan | None]]:
    """For call/send: check the handler, JSON and address, then the node running on
    the data dir (its identity, links and discovery), else a short-lived node of our
    own, and the paired peer named on the command line. Our own node, without
    ``--to``: discovery (asking, never announcing) or the remembered address, else a
    usage error."""
    _check_handler(opts.handler)
    args = parse_json_arg(opts.json)
    address = parse_address(opts.to) if opts.to else None
    remote = _running(data_dir)
    if remote is not None:
        _say_ignored(opts)
        pid = resolve_peer(opts.peer, remote.trust, data_dir)
        _require_paired(pid, remote.trust, data_dir)
        yield remote, pid, args, address, None
        return
    lan = choose_lan(opts, data_dir) if address is None else None
    sources = make_discovery(lan, one_shot=True) if lan else []
    with _open_node(data_dir, host="127.0.0.1", port=0, network_monitor=False,
                    redial_remembered=False, discovery=sources) as node:
        pid = resolve_peer(opts.peer, node.trust, data_dir)
        _require_paired(pid, node.trust, data_dir)
        if address is None and not lan and _remembered(node, pid) is None:
            raise _no_address(pid, node.trust)
        yield node, pid, args, address, lan


def _unreachable_without_to(node: _Live, pid: PeerId, lan: Lan | None,
                            wait_s: float) -> CliError:
    if lan:
        return CliError(_not_found(node, pid, lan, wait_s), EXIT_UNREACHABLE)
    remembered = _remembered(node, pid)
    if remembered is None:  # the running node knows no address either
        return _no_address(pid, node.trust)
    return CliError(f"could not reach {_name(pid, node.trust)} at its remembered address "
                    f"{_shown_address(remembered)}: give --to HOST:PORT, or turn on "
                    "discovery (--discovery udp, or PEERNET_DISCOVERY=udp)", EXIT_UNREACHABLE)


def cmd_call(opts: argparse.Namespace, data_dir: Path) -> int:
    """Run HANDLER on the peer and print its result as JSON."""
    with _to_peer(opts, data_dir) as (node, pid, args, address, lan):
        if address is not None:
            node.connect(pid, *address)
        try:
            result = node.call(pid, opts.handler, args, timeout=opts.timeout)
        except PeerUnavailable as exc:
            if address is None and (lan or "no known address" in str(exc)):
                raise _unreachable_without_to(node, pid, lan, opts.timeout) from None
            raise _call_failed(node, pid, exc) from None
        except PeerNetError as exc:  # refused, failed or timed out: said of the label
            raise _call_failed(node, pid, exc) from None
    print(dump_json(result), flush=True)
    return EXIT_OK


def cmd_send(opts: argparse.Namespace, data_dir: Path) -> int:
    """Hand ``HANDLER(JSON)`` to the peer without waiting for a reply."""
    with _to_peer(opts, data_dir) as (node, pid, args, address, lan):
        if not _reach(node, pid, address, opts.timeout):
            if address is None:
                raise _unreachable_without_to(node, pid, lan, opts.timeout)
            raise CliError(_unreachable(node, pid, address), EXIT_UNREACHABLE)
        if not node.send(pid, opts.handler, args):
            raise CliError(f"not delivered: {_name(pid, node.trust)} went offline",
                           EXIT_UNREACHABLE)
    return EXIT_OK


# --- invites ----------------------------------------------------------------------


class InviteLike(Protocol):
    """What ``peernet invite`` shows and waits on: a :class:`peernet.Invite` of a node
    this command runs, or one the node running on the data dir opened for it through
    its control endpoint (:class:`peernet.control.RemoteInvite`)."""

    @property
    def short(self) -> str | None: ...
    @property
    def long(self) -> str: ...
    @property
    def inviter(self) -> PeerId: ...
    @property
    def expires_at(self) -> float: ...
    @property
    def peer_label(self) -> str | None: ...
    @property
    def note(self) -> str | None: ...
    def wait(self, timeout: float | None = None) -> PeerId: ...
    def cancel(self) -> bool: ...


def _default_label() -> str | None:
    """What a machine proposes for itself when ``--label`` is not given: its host name."""
    try:
        return normalize_label(socket.gethostname()[:100])
    except (TypeError, ValueError):
        return None


def _discovery_configured(opts: argparse.Namespace, data_dir: Path) -> bool:
    return bool(getattr(opts, "discovery", None)
                or os.environ.get("PEERNET_DISCOVERY", "").strip()
                or "discovery" in _read_settings(data_dir))


def _invite_discovery(opts: argparse.Namespace, data_dir: Path, *,
                      one_shot: bool) -> list[Discovery]:
    """The discovery ``invite`` and ``join`` run with: as configured (flags, then
    $PEERNET_DISCOVERY, then settings.toml), else UDP, for the command's lifetime, so
    the short code works (``--discovery none``: the long code only; ``invite
    --long-only`` turns nothing on)."""
    lan = choose_lan(opts, data_dir)
    if not lan and not _discovery_configured(opts, data_dir) and not getattr(
            opts, "long_only", False):
        targets = getattr(opts, "udp_target", None)
        lan = Lan(("udp",), tuple(getattr(opts, "interface", None) or ()) or None,
                  getattr(opts, "udp_port", None) or 4040,
                  tuple(parse_address(t) for t in targets) if targets else None,
                  "the default of invite and join")
    return make_discovery(lan, one_shot=one_shot)


@contextmanager
def _invite_source(opts: argparse.Namespace, data_dir: Path, label: str | None
                   ) -> Iterator[tuple[InviteLike, ListenPort | None]]:
    """An open invite: in the node running on this data dir (through its control
    endpoint: it announces the invite and answers the join), else in a node this
    command runs, with discovery (see above), until the join; with the port that node
    listens on (None: the running node's, which stays)."""
    remote = _running(data_dir)
    if remote is None:
        port = choose_port(opts, data_dir)
        try:
            sources = _invite_discovery(opts, data_dir, one_shot=False)
            node = Node(data_dir, host=opts.host, port=port.port, discovery=sources,
                        on_handler_error=_note_handler_error)
        except DataDirLocked as exc:
            remote = _running(data_dir)  # a node started meanwhile (it serves last)?
            if remote is None:
                raise CliError(_locked_message(data_dir, exc)) from None
        except PortInUse:
            raise CliError(_port_in_use(opts.host, port.port, port.origin)) from None
        else:
            with node:
                yield (node.invite(label, opts.ttl, short=not opts.long_only),
                       ListenPort(node.port, port.origin if port.usual else ""))
            return
    status = remote.status
    print(f"the invite is open in the node running on {data_dir} (pid {status.pid}, port "
          f"{status.port}); it answers the join" + (
              "" if status.discovery or opts.long_only
              else ", and runs no discovery: long code only"),
          file=sys.stderr, flush=True)
    _say_ignored(opts)
    yield remote.admin.invite(label, opts.ttl, short=not opts.long_only), None


def _this_host(host: str) -> str:
    """How another machine names this one in a hint: the address listened on when it
    is one address, else a placeholder (0.0.0.0 listens on all of them)."""
    return "THIS_HOST" if host in ("0.0.0.0", "::", "") else host


def _say_ignored(opts: argparse.Namespace) -> None:
    """A command going through a running node cannot apply the flags that set up a node
    of its own (where it listens, its discovery): say so on stderr, not drop them."""
    ignored = _node_flags_given(opts)
    if ignored:
        print(f"({', '.join(ignored)} ignored: the running node keeps the settings it was "
              "started with; start it with them to change them)", file=sys.stderr, flush=True)


def _node_flags_given(opts: argparse.Namespace) -> list[str]:
    """The flags given that set up a node of this command's own (where it listens, its
    discovery)."""
    given = [flag for flag, attr in (("--port", "port"), ("--discovery", "discovery"),
                                     ("--interface", "interface"), ("--udp-port", "udp_port"),
                                     ("--udp-target", "udp_target"))
             if getattr(opts, attr, None) is not None]
    if getattr(opts, "host", "0.0.0.0") != "0.0.0.0":
        given.insert(0, "--host")
    return given


def _where_to_find_me(who: str, port: int, origin: str, data_dir: Path) -> str:
    """What ``invite`` says once paired, when its own node answered the join: the
    joiner remembers this machine at the port in the code, so later calls without
    ``--to`` reach it only where a node of this data dir listens on that port."""
    here = cli_command(data_dir)
    if origin == SETTINGS_FILE_NAME:
        return (f"{who} remembers this machine at port {port}: it can call without --to "
                f"while `{here} listen` (or an app on port {port}) runs here")
    if origin == "--port":
        return (f"{who} remembers this machine at port {port}: it can call without --to "
                f"while `{here} listen --port {port}` (or an app on port {port}) runs here")
    return (f"{who} remembers this machine at port {port}, a free port this invite picked: "
            f"to let it call without --to (or discovery), run `{here} listen --port {port}` "
            f"here, or put `port = {port}` in {data_dir / SETTINGS_FILE_NAME} (listen and "
            "invite then use it)")


def cmd_invite(opts: argparse.Namespace, data_dir: Path) -> int:
    """Open a one-time invite, show its codes, wait until someone joins."""
    label = opts.label if opts.label is not None else _default_label()
    out = _Out()
    with _stop_on_signals() as stop, _invite_source(opts, data_dir, label) as (invite, port):
        until = time.strftime("%H:%M:%S", time.localtime(invite.expires_at))
        minutes = max(0.0, invite.expires_at - time.time()) / 60
        if invite.short:
            out.line(f"short code: {invite.short}")
        out.line(f"long code: {invite.long}")
        out.line(f"inviter id: {invite.inviter.short}")
        out.note(f"invite open for {minutes:.0f} min (until {until}), for one use; a join "
                 f"error that names another id than {invite.inviter.short} reached another "
                 "node. On the other machine run:")
        if invite.short:
            out.note(f"  peernet join {invite.short}        (same network)")
        elif opts.long_only:
            out.note("  (no short code: --long-only)")
        else:
            out.note("  (no short code: discovery is off, so nothing nearby can find it)")
        out.note(f"  peernet join {invite.long}   (any network)")
        if opts.qr or (opts.qr is None and sys.stdout.isatty()):
            _print_qr(invite.long.upper(), out, explicit=bool(opts.qr))
        out.note("waiting for someone to join (Ctrl-C cancels)...")
        while True:
            try:
                peer = invite.wait(0.2)
                break
            except InviteTimeout:
                if stop:
                    invite.cancel()
                    out.note("peernet: invite cancelled")
                    return EXIT_INTERRUPTED
        who = _printable(invite.peer_label) if invite.peer_label else peer.short
        out.line(f"paired with {who} ({peer})")
        if invite.note:
            out.note(f"peernet: {escape(invite.note)}")
        if port is not None:
            out.note(_where_to_find_me(who, port.port, port.origin, data_dir))
    return EXIT_OK


def _read_code(given: str | None) -> str:
    """The code from the command line, or (none, or ``-``) from stdin: a prompt on a
    terminal, else its first line. A code in the command line is in /proc/PID/cmdline,
    which every local user can read while join runs."""
    if given not in (None, "-"):
        return given
    if sys.stdin.isatty():
        try:
            text = input("invite code: ")
        except EOFError:
            text = ""
    else:
        text = sys.stdin.readline(1024)
    if not text.strip():
        raise CliError("no code given: type the code the inviter shows (7-amber-orbit or "
                       "pninv1...)", EXIT_USAGE)
    return text.strip()


def cmd_join(opts: argparse.Namespace, data_dir: Path) -> int:
    """Join an invite: both sides end up paired."""
    opts.code = _read_code(opts.code)
    try:
        code = parse_code(opts.code)
    except InvalidInviteCode as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    label = opts.label if opts.label is not None else _default_label()
    remote = _running(data_dir)
    if remote is not None:  # the running node pairs (and keeps its link to the inviter)
        _say_ignored(opts)
        if not isinstance(code, LongCode) and not remote.status.discovery:
            raise CliError(f"a short code is found by discovery, and the node running on "
                           f"{data_dir} has none: join with the long code, or restart it "
                           f"with discovery on (--discovery udp)", EXIT_USAGE)
        found = remote.admin._join(opts.code, label, opts.timeout)
        result = JoinResult(PeerId.parse(found["id"]), found["label"], found["note"])
        address = _address_of(remote, result.peer)
    else:
        sources = [] if isinstance(code, LongCode) else _invite_discovery(
            opts, data_dir, one_shot=True)
        if not isinstance(code, LongCode) and not sources:
            raise CliError("a short code is found by discovery, which --discovery none "
                           "(or the configuration) turns off: leave it out (join uses udp "
                           "unless configured), or join with the long code", EXIT_USAGE)
        with _open_node(data_dir, host="127.0.0.1", port=0, network_monitor=False,
                        redial_remembered=False, discovery=sources) as node:
            # The label stored here, and the note about it, are for the person to see.
            result = node._invites.join(opts.code, label, opts.timeout)
            address = _address_of(node, result.peer)
    who = _printable(result.label) if result.label else result.peer.short
    print(f"paired with {who} ({result.peer})", flush=True)
    if result.note:
        print(f"peernet: {escape(result.note)}", file=sys.stderr)
    name = shlex.quote(result.label) if result.label else str(result.peer)
    print(f"""call it with: {cli_command(data_dir)} call {_printable(name)} echo '"hi"'""",
          file=sys.stderr)
    if address is not None:  # remembered: the address the join reached it at
        print(f"(without --to, a call goes to {_shown_address(address)}, where {who} answered "
              f"the invite: {who} must listen on that port then; else give --to HOST:PORT "
              "or turn on discovery)", file=sys.stderr)
    return EXIT_OK


def _address_of(node: _Live, pid: PeerId) -> tuple[str, int] | None:
    """Where ``node`` would dial ``pid`` now (its live link's, else its best address)."""
    peer = _peer(node, pid)
    return peer.address if peer is not None else None


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
    port_help = ("TCP port (default: `port` in DATA_DIR/settings.toml, else any free one, "
                 "which the next run will not have)")

    def discovery_options(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group(
            "discovery", "default: $PEERNET_DISCOVERY, else DATA_DIR/settings.toml, else none")
        g.add_argument("--discovery", action="append", metavar="udp|mdns|none",
                       help="find peers on the LAN: udp (signed broadcast announces), mdns "
                            "(needs peernet-py[mdns]); repeatable or comma-separated")
        g.add_argument("--interface", action="append", metavar="NAME",
                       help="interface (or address) discovery uses (repeatable; default: "
                            "every usable IPv4 interface)")
        g.add_argument("--udp-port", type=_port, default=None,
                       help="UDP discovery port (default 4040; all nodes on a LAN must "
                            "agree)")
        g.add_argument("--udp-target", action="append", metavar="HOST:PORT",
                       help="announce and ask by unicast to this address instead of "
                            "broadcasting (repeatable; for networks that block broadcast, "
                            "and for two nodes on one machine: each its own --udp-port, "
                            "targeting 127.0.0.1 at the other's)")
    p = command("id", cmd_id, "show this machine's peer id (created on first use)")
    p.add_argument("--qr", action="store_true",
                   help="also draw a QR code (needs the optional 'qrcode' package; "
                        "automatic on a terminal when it is installed)")

    p = command("pair", cmd_pair, "trust a peer; both machines must pair each other",
                "example: peernet pair pn1aaa... --label alice\n"
                "         peernet nearby; peernet pair 1 --label alice   # a nearby entry")
    p.add_argument("peer", metavar="ID|N|PREFIX",
                   help="the other machine's id, from its `peernet id`; or the number or an "
                        "id prefix of an entry of the last `peernet nearby` (its full id is "
                        "shown to check first)")
    p.add_argument("--label", help="a name for it, usable instead of the id later")
    p.add_argument("--yes", action="store_true",
                   help="pair a nearby entry without asking (its full id is still shown)")

    whole_id_help = peer_help + " (`peernet peers --full` shows whole ids)"
    p = command("unpair", cmd_unpair, "stop trusting a peer (closes its links)",
                "example: peernet unpair kitchen-pi\n"
                "         peernet peers --full; peernet unpair pn1aaa...   # no label")
    p.add_argument("peer", metavar="ID", help=whole_id_help)

    p = command("label", cmd_label, "give a paired peer a new label ('' clears it)",
                "example: peernet label pn1aaa... kitchen-pi   # the id from `peernet peers "
                "--full`")
    p.add_argument("peer", metavar="ID", help=whole_id_help)
    p.add_argument("label", metavar="LABEL", help="the new label; '' clears it")

    command("status", cmd_status, "the node running on the data dir: id, process, uptime, "
            "port, peers, links, handlers, discovery",
            "exit code 3 when no node runs there")

    p = command("peers", cmd_peers, "list paired peers: label, id, status, address, "
                "last seen, rtt",
                "example: peernet peers --check alice@192.168.1.10:7777\n"
                "exit code 3 when a checked peer is not online, or (with discovery on)\n"
                "a paired peer was not found")
    p.add_argument("--check", action="append", metavar="ID@HOST:PORT", default=[],
                   help="dial this peer first, to show its live status and rtt (repeatable)")
    p.add_argument("--timeout", type=_positive_float, default=None,
                   help="how long --check (default 5) or discovery (default 2) waits, seconds")
    p.add_argument("--full", action="store_true",
                   help="whole ids instead of short ones (to copy into unpair or label)")
    discovery_options(p)

    p = command("nearby", cmd_nearby, "list unpaired nodes announcing on the LAN: number, "
                "id, address, via, age",
                "example: peernet nearby --discovery udp; then: peernet pair 1\n"
                "exit code 3 when nothing answered within the wait")
    p.add_argument("--wait", type=_positive_float, default=1.5,
                   help="how long to listen, seconds (default 1.5)")
    discovery_options(p)

    p = command("listen", cmd_listen, "serve echo and chat until Ctrl-C or SIGTERM",
                "prints 'READY id=ID port=PORT host=HOST' on stdout once listening, and\n"
                "each incoming chat line as 'LABEL: text'")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=_port, default=None, help=port_help)
    discovery_options(p)

    p = command("chat", cmd_chat, "chat with a peer: each line you type is sent to its chat "
                "handler; its lines are printed",
                "example: peernet chat alice --to 192.168.1.10:7777\n"
                "without --to it finds the peer by discovery or its remembered address, or\n"
                "else waits for it to connect. Lines typed while the peer is offline are\n"
                "not delivered (you are told). EOF or Ctrl-C ends.\n"
                "stdout: 'READY id=ID port=PORT host=HOST' once it listens (as `listen`\n"
                "prints it, for scripts that drive chat), then each incoming line as\n"
                "'LABEL: text'; notes for people go to stderr.")
    p.add_argument("peer", metavar="ID", help=peer_help)
    p.add_argument("--to", metavar="HOST:PORT", help="where the peer listens")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=_port, default=None, help=port_help)
    p.add_argument("--wait", type=_positive_float, default=5.0,
                   help="how long to wait for the first connection, seconds (default 5)")
    discovery_options(p)

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
        p.add_argument("--to", metavar="HOST:PORT",
                       help="where the peer listens (default: find it by discovery, or its "
                            "remembered address)")
        p.add_argument("--timeout", type=_positive_float, default=5.0,
                       help="seconds to connect" + (" and get the answer" if name == "call" else "")
                            + " (default 5)")
        discovery_options(p)
    p = command("invite", cmd_invite, "open a one-time invite: shows a short code (same LAN) "
                "and a long one (any network), waits until someone joins, then both "
                "machines are paired",
                "example: peernet invite --label alice\n"
                "         (the other machine runs: peernet join 7-amber-orbit)\n"
                "discovery (udp unless configured; --discovery none or --long-only: long "
                "code only)\nannounces the invite's number, and nothing else about it, "
                "while it is open;\na short code is taken only from the networks it is "
                "announced on.\nexit codes: 0 paired, 4 burned by a wrong code, 5 expired, 130 "
                "cancelled")
    p.add_argument("--label", help="the name this machine proposes for itself (default: "
                   "its host name)")
    p.add_argument("--ttl", type=_positive_float, default=600.0,
                   help="seconds the invite stays open (default 600)")
    p.add_argument("--long-only", action="store_true",
                   help="no short code: only the long code can join (for a machine on "
                        "another network, or a LAN you do not trust; a short code's 16 "
                        "bits are for the same LAN)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=_port, default=None, help=port_help)
    p.add_argument("--qr", action=argparse.BooleanOptionalAction, default=None,
                   help="draw the long code as a QR code (needs the optional 'qrcode' "
                        "package; default: on a terminal)")
    discovery_options(p)

    p = command("join", cmd_join, "join an invite: pairs this machine and the inviter "
                "in one step",
                "example: peernet join 7-amber-orbit --label bob\n"
                "         peernet join pninv1...            # the long code, any network\n"
                "         peernet join                      # asks for the code\n"
                "a short code is found on the LAN (udp discovery unless configured)\n"
                "on a machine other people use, leave CODE out and type it when asked\n"
                "(or pipe it in): a command line is visible to them while join runs\n"
                "exit codes: 0 paired, 2 malformed code, 3 not found, 4 wrong code or "
                "used,\n5 expired, 1 two invites nearby with that number")
    p.add_argument("code", metavar="CODE", nargs="?", help="the code the inviter shows: "
                   "7-amber-orbit or pninv1... (left out or -: read from stdin)")
    p.add_argument("--label", help="the name this machine proposes for itself (default: "
                   "its host name)")
    p.add_argument("--timeout", type=_positive_float, default=10.0,
                   help="seconds to find the inviter and pair (default 10)")
    discovery_options(p)
    return ap


#: Exit code and message prefix per exception type, first match wins (order matters:
#: InviteError after its subclasses, PeerNetError after everything of its own).
_EXIT_FOR: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int, str], ...] = (
    (InvalidInviteCode, EXIT_USAGE, ""),
    (InviteNotFound, EXIT_UNREACHABLE, ""),
    (InviteRejected, EXIT_REMOTE, ""),
    (InviteExpired, EXIT_TIMEOUT, ""),
    (InviteError, EXIT_ERROR, ""),  # InviteAmbiguous included
    (NotPaired, EXIT_NOT_PAIRED, ""),
    ((InvalidPeerId, InvalidHandlerName, EncodeError, MessageTooLarge), EXIT_USAGE, ""),
    (CallTimeout, EXIT_TIMEOUT, ""),
    (PeerUnavailable, EXIT_UNREACHABLE, ""),
    (NoSuchHandler, EXIT_REMOTE, "the peer refused: "),
    ((Forbidden, Busy, RemoteError), EXIT_REMOTE, "the peer refused or failed: "),
    ((PeerNetError, OSError), EXIT_ERROR, ""),
)


def _classify(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, CliError):
        return exc.code, str(exc)
    for types, code, prefix in _EXIT_FOR:
        if isinstance(exc, types):
            return code, f"{prefix}{exc}"
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
