"""Control of a node running in another process: ``peernet.admin(data_dir)``.

A running node (``Node(control=True)``, the default) serves a Unix socket in its data
dir, ``control.sock``, to processes of the same user and to root. :class:`Admin` speaks
to it: a Django management command pairs a device with the site's running node, a
script lists the peers it has online, the ``peernet`` command in a second terminal
does what it would do on the files, through the node that holds them::

    import peernet

    site = peernet.admin("/var/lib/myapp/peernet")    # NodeNotRunning if none runs there
    site.pair("pn1...", label="kitchen pi")            # takes effect at once, persists
    site.connect("kitchen pi", "192.168.1.7", 7777)   # the node dials it now
    print(site.list_peers())                           # live status, address, rtt
    site.call("kitchen pi", "temperature")             # through the node's own link

Each method is the node's own method of that name, run in the node's process: it takes
the same arguments (a peer is a ``PeerId``, its text, 32 raw bytes, or a label the node
knows) and raises the same exceptions (``NotPaired``, ``PeerUnavailable``,
``CallTimeout``, ``RemoteError``, ...). Problems with the endpoint itself raise
:class:`~peernet.ControlError` (:class:`~peernet.NodeNotRunning` when no node serves
one there). Each request uses a connection of its own, so an ``Admin`` holds no
resources and may be shared by threads.

Whoever can connect has the node's full power, exactly as whoever can read its data
dir has its key: the node accepts only its own user and root (checked with
``SO_PEERCRED``), and this client talks only to a node run by its own user or root.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ._text import check_host, check_port
from ._io import lifecycle
from ._proto.invite import LongCode, parse_code
from ._io.control import SOCKET_NAME, SUPPORTED, peer_credentials, socket_path
from ._proto.control import (
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    Event,
    LineReader,
    Refusal,
    Response,
    decode_response,
    encode_request,
    error_from_wire,
    from_wire,
)
from .errors import ControlError, MessageTooLarge, NodeNotRunning
from .handlers import check_handler_name
from .ids import PeerId
from .labels import PeerLike
from .node import default_data_dir
from .peer import Nearby, Peer, PeerEvent, PeerList
from .settings import check_seconds

__all__ = ["Admin", "ChatLine", "NodeStatus", "RemoteInvite", "Watch", "admin"]

#: How long a client waits for a node whose lock is held but whose socket is not there
#: yet (a node starting up binds its socket last).
_STARTING_WAIT_S = 1.0


def admin(data_dir: str | os.PathLike[str] | None = None, *, timeout: float = 10.0) -> Admin:
    """Control of the node running on ``data_dir`` (default: :func:`default_data_dir`).

    Raises :class:`~peernet.NodeNotRunning` at once when no node serves a control
    endpoint there (none runs, or it runs with ``control=False``: the message says
    which). ``timeout`` bounds each request, seconds; a call or a wait gets its own
    timeout on top."""
    return Admin(data_dir, timeout=timeout)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What :meth:`Admin.status` reports about the running node."""

    id: PeerId
    #: The node's process.
    pid: int
    port: int
    host: str
    uptime_s: float
    #: peernet's version in that process.
    version: str
    data_dir: Path
    #: Paired peers, and how many of them are online.
    peers: int
    online: int
    #: Connections, handshaking and retiring ones included.
    links: int
    handlers: tuple[str, ...]
    #: Discovery sources besides manual addresses ("udp", "mdns", ...).
    discovery: tuple[str, ...]
    #: What :meth:`Admin.watch` can follow on this node ("peers", and "chat" when its
    #: chat handler relays incoming lines, as ``peernet listen`` does).
    feeds: tuple[str, ...]
    call_timeout: float


@dataclass(frozen=True, slots=True)
class ChatLine:
    """A chat message the running node received (``watch(["chat"])``). ``text`` and
    ``label`` came from people: escape them before they reach a terminal."""

    peer: PeerId
    label: str | None
    text: str


class Admin:
    """A running node, seen from another process. See the module docstring."""

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, *,
                 timeout: float = 10.0) -> None:
        self.data_dir = (Path(data_dir).expanduser() if data_dir is not None
                         else default_data_dir())
        self._timeout = check_seconds("timeout", timeout)
        hello = self._request("hello", {})
        self._id = PeerId.parse(hello["id"])
        self._pid = int(hello["pid"])
        self._call_timeout = float(hello["call_timeout"])

    @property
    def id(self) -> PeerId:
        """The running node's id."""
        return self._id

    @property
    def pid(self) -> int:
        """The running node's process id."""
        return self._pid

    def __repr__(self) -> str:
        return f"<Admin of node {self._id.short} (pid {self._pid}) in {self.data_dir}>"

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass  # nothing held between requests

    # -- the node's methods --------------------------------------------------------------

    def status(self) -> NodeStatus:
        """Id, process, port, uptime, peers, links, handlers, discovery of the node."""
        s = self._request("status", {})
        return NodeStatus(
            id=PeerId.parse(s["id"]), pid=int(s["pid"]), port=int(s["port"]),
            host=str(s["host"]), uptime_s=float(s["uptime_s"]), version=str(s["peernet"]),
            data_dir=Path(s["data_dir"]), peers=int(s["peers"]), online=int(s["online"]),
            links=int(s["links"]), handlers=tuple(map(str, s["handlers"])),
            discovery=tuple(map(str, s["discovery"])), feeds=tuple(map(str, s["feeds"])),
            call_timeout=float(s["call_timeout"]))

    def pair(self, peer_id: PeerLike, label: str | None = None) -> PeerId:
        """:meth:`Node.pair <peernet.Node.pair>` on the running node: trusted at once (a
        peer that dials now gets in), written to its trust list."""
        return PeerId.parse(self._request("pair", {"peer": _peer(peer_id),
                                                   "label": _label(label)})["id"])

    def unpair(self, peer_id: PeerLike) -> bool:
        """:meth:`Node.unpair <peernet.Node.unpair>`: also closes its live links at once."""
        return bool(self._request("unpair", {"peer": _peer(peer_id)})["removed"])

    def label(self, peer_id: PeerLike, label: str | None) -> None:
        """Give a paired peer a new label (None or "" clears it); NotPaired otherwise."""
        self._request("label", {"peer": _peer(peer_id), "label": _label(label)})

    def list_peers(self) -> PeerList:
        """:meth:`Node.list_peers <peernet.Node.list_peers>`, live. An online peer whose
        link has no rtt yet is pinged first (waiting at most half a second)."""
        return PeerList(_peer_from(p) for p in self._request("peers", {}))

    def list_nearby(self, wait: float = 0.0) -> list[Nearby]:
        """:meth:`Node.list_nearby <peernet.Node.list_nearby>`; with ``wait`` (at most 30
        seconds) the node first asks the LAN and listens that long."""
        found = self._request("nearby", {"wait": wait}, extra_s=wait)
        return [Nearby(PeerId.parse(n["id"]), (str(n["address"][0]), int(n["address"][1])),
                       str(n["source"]), float(n["last_seen"])) for n in found]

    def connect(self, peer_id: PeerLike, host: str, port: int) -> None:
        """:meth:`Node.connect <peernet.Node.connect>`: remember the address, dial now."""
        host = check_host(host)  # the node checks them again: the same checks
        port = check_port(port)
        self._request("connect", {"peer": _peer(peer_id), "host": host, "port": port})

    def wait_for_peer(self, peer_id: PeerLike, timeout: float = 10.0) -> bool:
        """:meth:`Node.wait_for_peer <peernet.Node.wait_for_peer>`."""
        timeout_s = check_seconds("timeout", timeout)
        return bool(self._request("wait_for_peer", {"peer": _peer(peer_id),
                                                    "timeout": timeout_s}, extra_s=timeout_s))

    def call(self, peer_id: PeerLike, name: str, args: Any = None, *,
             timeout: float | None = None) -> Any:
        """:meth:`Node.call <peernet.Node.call>`, from the running node's identity and
        over its links. Arguments and results are the same CBOR data (bytes included)."""
        check_handler_name(name)
        timeout_s = self._call_timeout if timeout is None else check_seconds("timeout", timeout)
        result = self._request("call", {"peer": _peer(peer_id), "name": name, "args": args,
                                        "timeout": timeout_s}, extra_s=timeout_s + 1.0)
        return _from_wire(result)

    def send(self, peer_id: PeerLike, name: str, args: Any = None) -> bool:
        """:meth:`Node.send <peernet.Node.send>`: True if handed to a live link."""
        check_handler_name(name)
        return bool(self._request("send", {"peer": _peer(peer_id), "name": name,
                                           "args": args}))

    def invite(self, label: str | None = None, ttl_s: float = 600.0, *,
               short: bool = True) -> RemoteInvite:
        """:meth:`Node.invite <peernet.Node.invite>` in the running node: it announces
        the invite (with its own discovery: no short code if it runs none, or with
        ``short=False``) and answers the joiner. The returned :class:`RemoteInvite`
        shows the codes and waits."""
        ttl = check_seconds("ttl_s", ttl_s)
        if type(short) is not bool:
            raise TypeError(f"short must be True or False, got {short!r}")
        found = self._request("invite", {"label": label, "ttl_s": ttl, "short": short},
                              extra_s=1.0)
        return RemoteInvite(self, found)

    def join(self, code: str, label: str | None = None, timeout: float = 10.0) -> PeerId:
        """:meth:`Node.join <peernet.Node.join>` from the running node: it pairs with the
        inviter and dials it. Returns the inviter's PeerId."""
        return PeerId.parse(self._join(code, label, timeout)["id"])

    def _join(self, code: str, label: str | None, timeout: float) -> dict[str, Any]:
        """The join, with the label stored for the inviter and the note about it."""
        timeout_s = check_seconds("timeout", timeout)
        if type(code) is not str:
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        return dict(self._request("join", {"code": code.strip(), "label": label,
                                           "timeout": timeout_s}, extra_s=timeout_s + 1.0))

    def watch(self, topics: tuple[str, ...] | list[str] = ("peers",)) -> Watch:
        """Follow the node as it runs: ``"peers"`` (each status change, as a
        :class:`~peernet.PeerEvent`) and ``"chat"`` (each chat line it receives, as a
        :class:`ChatLine`, only on a node whose chat handler relays them, such as
        ``peernet listen``; ControlError ``NoSuchFeed`` elsewhere). Close the
        :class:`Watch` when done (it is a context manager)."""
        topics = list(topics)
        sock = self._connect()
        try:
            sock.sendall(encode_request("watch", {"topics": topics}))
            watch = Watch(sock, self._timeout)
            watch._expect_answer()
        except BaseException:
            sock.close()
            raise
        return watch

    # -- the wire ------------------------------------------------------------------------

    def _request(self, op: str, args: dict[str, Any], *, extra_s: float = 0.0) -> Any:
        line = encode_request(op, args)
        if len(line) > MAX_REQUEST_BYTES:
            raise MessageTooLarge(f"a {op} request of {len(line)} bytes exceeds what the "
                                  f"control endpoint takes ({MAX_REQUEST_BYTES} bytes)")
        sock = self._connect()
        with sock:
            sock.settimeout(self._timeout + extra_s)
            try:
                sock.sendall(line)
            except OSError:
                pass  # refused at once (AccessDenied)? its answer is still to be read
            answer = _read_answer(sock, self._timeout + extra_s)
        if isinstance(answer, Event):
            raise ControlError("the node sent an event where an answer was due", "BadResponse")
        if answer.ok:
            return answer.result
        assert answer.error is not None
        raise error_from_wire(answer.error, lambda kind, message: ControlError(message, kind))

    def _connect(self) -> socket.socket:
        if not SUPPORTED:
            raise NodeNotRunning("controlling a running node needs Unix sockets with "
                                 "SO_PEERCRED (Linux); no node serves one here")
        started = time.monotonic()
        deadline = started + _STARTING_WAIT_S
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._timeout)
            try:
                with socket_path(self.data_dir) as path:
                    sock.connect(path)
            except BlockingIOError:  # EAGAIN: the served connections and the backlog are full
                sock.close()
                if time.monotonic() - started < self._timeout:
                    time.sleep(0.02)
                    continue
                raise ControlError(f"the node on {self.data_dir} is busy: no room for another "
                                   f"control connection within {self._timeout:g} s",
                                   "Busy") from None
            except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
                sock.close()
                holder = lifecycle.holder(self.data_dir)
                if holder is not None and time.monotonic() < deadline:
                    time.sleep(0.02)  # starting up: the socket comes last
                    continue
                raise self._not_running(holder) from None
            except PermissionError as exc:
                sock.close()
                raise ControlError(f"cannot reach the node on {self.data_dir}: "
                                   f"{exc.strerror} (it belongs to another user?)") from None
            except OSError as exc:
                sock.close()
                raise ControlError(f"cannot reach the node on {self.data_dir}: "
                                   f"{exc.strerror or exc}") from None
            break
        _, uid = peer_credentials(sock)
        if uid not in (os.geteuid(), 0):
            sock.close()
            raise ControlError(f"{self.data_dir / SOCKET_NAME} is served by uid {uid}, "
                               f"neither you nor root: not talking to it", "AccessDenied")
        return sock

    def _not_running(self, holder: str | None) -> NodeNotRunning:
        where = self.data_dir
        if holder is not None:
            return NodeNotRunning(
                f"{where} is in use by a peernet node in {holder}, which serves no control "
                f"endpoint (it runs with control=False, or an older peernet); stop it "
                f"first, or start it with control on")
        stale = (where / SOCKET_NAME).is_socket() if where.is_dir() else False
        return NodeNotRunning(
            f"no peernet node is running on {where}"
            + (" (a stale control socket is left there by a node that did not close; the "
               "next node replaces it)" if stale else ""))


class RemoteInvite:
    """An invite a running node opened for this client (:meth:`Admin.invite`): the same
    ``short``, ``long``, ``inviter``, ``expires_at``, ``nameplate``, ``wait()`` and
    ``cancel()`` as a :class:`peernet.Invite`, and, once someone joined, ``peer``,
    ``peer_label`` and ``note``. The node holds the invite: a client that goes away leaves it open until
    it is used, cancelled or expires."""

    def __init__(self, admin: Admin, found: dict[str, Any]) -> None:
        self._admin = admin
        self.nameplate: int = found["nameplate"]
        self.short: str | None = found["short"]
        self.long: str = found["long"]
        self.expires_at: float = found["expires_at"]
        self.status: str = found["status"]
        self.peer: PeerId | None = None
        self.peer_label: str | None = None
        self.note: str | None = None

    @property
    def inviter(self) -> PeerId:
        """The running node's id, as the long code holds it."""
        code = parse_code(self.long)
        assert isinstance(code, LongCode)
        return code.inviter

    def wait(self, timeout: float | None = None) -> PeerId:
        """Wait until someone joins; raises as :meth:`peernet.Invite.wait` does."""
        timeout_s = max(0.001, self.expires_at - time.time() + 1.0) if timeout is None \
            else check_seconds("timeout", timeout)
        done = self._admin._request("invite_wait", {"nameplate": self.nameplate,
                                                    "timeout": timeout_s}, extra_s=timeout_s)
        self.status, self.peer = done["status"], PeerId.parse(done["peer"])
        self.peer_label, self.note = done["peer_label"], done["note"]
        return self.peer

    def cancel(self) -> bool:
        return bool(self._admin._request("invite_cancel", {"nameplate": self.nameplate}))

    def __repr__(self) -> str:
        return f"<RemoteInvite {self.nameplate}; .short / .long are the codes>"


class Watch:
    """Events from a running node (:meth:`Admin.watch`). Iterate it (until the node
    closes or :meth:`close`), or :meth:`get` one with a timeout. Raises ControlError
    ``WatchOverflow`` if events came faster than they were read and the node dropped
    this watch."""

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        self._sock = sock
        self._timeout_s = timeout_s
        self._reader = LineReader(MAX_RESPONSE_BYTES)
        self._lines: list[bytes] = []
        self._ended = False

    def _expect_answer(self) -> None:
        answer = self._next(self._timeout_s)
        if answer is None:
            raise ControlError("the node closed the watch before answering", "BadResponse")
        if isinstance(answer, Event):
            raise ControlError("the node sent an event before its answer", "BadResponse")
        if not answer.ok:
            assert answer.error is not None
            raise error_from_wire(answer.error, lambda kind, message: ControlError(message, kind))

    @property
    def ended(self) -> bool:
        """The node closed (or this watch was closed)."""
        return self._ended

    def get(self, timeout: float | None = None) -> PeerEvent | ChatLine | None:
        """The next event; None if none came within ``timeout`` seconds (None: wait) or
        the watch has ended (see :attr:`ended`)."""
        while True:
            try:
                item = self._next(timeout)
            except TimeoutError:
                return None
            if item is None:
                return None
            if isinstance(item, Event):
                return _event(item)
            if not item.ok:
                self._ended = True
                assert item.error is not None
                raise ControlError(str(item.error.get("message")), str(item.error.get("type")))

    def __iter__(self) -> Iterator[PeerEvent | ChatLine]:
        while (event := self.get()) is not None:
            yield event

    def close(self) -> None:
        """End the watch (safe from another thread: a blocked :meth:`get` returns None)."""
        self._ended = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _next(self, timeout: float | None) -> Event | Response | None:
        """The next decoded line; None at the end; TimeoutError if none in time."""
        while not self._lines:
            if self._ended:
                return None
            try:
                self._sock.settimeout(timeout)
                data = self._sock.recv(65536)
            except TimeoutError:
                raise
            except OSError:
                data = b""
            if not data:
                self._ended = True
                return None
            try:
                self._lines.extend(self._reader.feed(data))
            except Refusal as exc:
                self._ended = True
                raise ControlError(str(exc), "BadResponse") from None
        try:
            return decode_response(self._lines.pop(0))
        except Refusal as exc:
            raise ControlError(str(exc), exc.kind) from None


def _event(event: Event) -> PeerEvent | ChatLine:
    data = event.data
    try:
        if event.topic == "chat":
            return ChatLine(PeerId.parse(data["peer"]), data.get("label"), str(data["text"]))
        return PeerEvent(PeerId.parse(data["peer"]), str(data["status"]),
                         str(data["previous"]), float(data["at"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ControlError(f"malformed {event.topic} event: {exc}", "BadResponse") from None


# -- helpers -------------------------------------------------------------------------------


def _peer(peer: PeerLike) -> str:
    """A peer as the node's methods take it: an id's text, or a label."""
    if isinstance(peer, str) and type(peer) is not PeerId:
        return peer
    return str(PeerId.parse(peer))


def _label(label: str | None) -> str | None:
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a str or None, got {type(label).__name__}")
    return label


def _from_wire(value: Any) -> Any:
    try:
        return from_wire(value)
    except Refusal as exc:
        raise ControlError(str(exc), "BadResponse") from None


def _peer_from(p: dict[str, Any]) -> Peer:
    address = p.get("address")
    return Peer(PeerId.parse(p["id"]), p.get("label"), str(p["status"]),
                (str(address[0]), int(address[1])) if address else None,
                p.get("last_seen"), p.get("rtt"))


def _read_answer(sock: socket.socket, timeout_s: float) -> Response | Event:
    """The one line the node answers with, decoded."""
    reader = LineReader(MAX_RESPONSE_BYTES)
    deadline = time.monotonic() + timeout_s
    while True:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            raise ControlError(f"the node did not answer within {timeout_s:g} s",
                               "Timeout") from None
        except OSError:
            data = b""  # reset: as good as closed
        if not data:
            raise ControlError("the node closed the control connection without answering "
                               "(is it closing?)", "ConnectionClosed")
        try:
            lines = reader.feed(data)
        except Refusal as exc:
            raise ControlError(str(exc), "BadResponse") from None
        if lines:
            try:
                return decode_response(lines[0])
            except Refusal as exc:
                raise ControlError(str(exc), exc.kind) from None
