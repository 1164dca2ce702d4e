"""``Node``: the object users hold. Identity, trust, handlers and links, behind a plain
blocking API: ``call`` returns or raises, ``send`` is fire-and-forget.

Threads a node starts (all daemons, all joined by ``close()``):

- ``peernet-acceptor``: the selector loop over the listening sockets (TCP, and the
  control endpoint's);
- ``peernet-link``: one per connection (dials, handshakes, reads, routes);
- ``peernet-handler-N``: the handler scheduler's workers (bounded, shared with inline runs);
- ``peernet-timers``: deadlines (``call_async`` timeouts, retiring duplicate links,
  heartbeats, reconnects, discovery expiry);
- ``peernet-netmon``: polls the host's addresses (``network_monitor=True``);
- ``peernet-udp`` / ``peernet-mdns``: discovery, when asked for;
- ``peernet-control-conn``: one per client of the control endpoint
  ``data_dir/control.sock`` that ``peernet.admin`` and the CLI use (``control=True``,
  the default), at most 16.

See guides/architecture.md for the path of one ``call()``.
"""

from __future__ import annotations

import html
import logging
import os
import shlex
import threading
import time
from concurrent.futures import CancelledError, Future
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from ._proto.backoff import Backoff
from ._proto.messages import Bulk, Call, Send, encode_for_link
from ._proto.session import DEFAULT_MAX_MESSAGE_SIZE, LocalCredentials
from ._addresses import AddressBook
from ._text import check_host, check_port
from ._control import ControlOps
from ._fs import ensure_private_dir
from .errors import (
    CallTimeout,
    MessageTooLarge,
    NodeClosed,
    NoSuchHandler,
    NotPaired,
    PeerUnavailable,
)
from .directory import (
    DIRECTORY_HANDLER,
    DirectoryCache,
    HandlerList,
    directory_handler,
    parse_directory,
    suggest,
)
from .labels import PeerLike, resolve_peer
from .discovery import Discovery, ManualDiscovery, make_discoveries
from .handlers import (
    AuthorizeFn,
    HandlerFailure,
    HandlerTable,
    check_handler_name,
    is_reserved,
    report_handler_error,
)
from .identity import load_or_create_in
from .ids import PeerId
from .peer import Nearby, Peer, PeerEvent, PeerList, peers_table
from .settings import Settings, check_seconds
from .trust import TrustStore
from .invites import Invite, InviteBook
from ._io import lifecycle
from ._io.acceptor import Acceptor, open_listener
from ._io.control import SUPPORTED as control_supported
from ._io.control import ControlServer
from .discovery.hints import Hints
from .discovery.host import Host
from ._io.link import Link
from ._io.mesh import Mesh, MeshSettings
from ._io.netmon import (START_DELAY_S, NetworkChange, NetworkMonitor, PollingMonitor,
                          host_interfaces)
from ._io.scheduler import Scheduler
from ._io.registry import Registry
from ._io.replies import new_request_id, settle
from ._io.timers import Timers
from . import fanout

if TYPE_CHECKING:
    from .proxy import PeerProxy

__all__ = ["Node", "default_data_dir"]

log = logging.getLogger(__name__)

DiscoverySpec = None | str | Discovery | Iterable[str | Discovery]


def default_data_dir() -> Path:
    """``$PEERNET_DATA_DIR``, else ``$XDG_DATA_HOME/peernet``, else ``~/.local/share/peernet``."""
    explicit = os.environ.get("PEERNET_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return _builtin_data_dir()


def _builtin_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return Path(base).expanduser() / "peernet"


def cli_command(data_dir: str | os.PathLike[str]) -> str:
    """The ``peernet`` command line that works on ``data_dir``, for hints a person pastes
    into another terminal: ``peernet --data-dir DIR`` (absolute, shell-quoted) unless it
    is the built-in default, since $PEERNET_DATA_DIR may not be set over there. Without
    it, a hint followed in that terminal would pair or call from another identity."""
    path = Path(data_dir).expanduser().absolute()
    if path == _builtin_data_dir().absolute():
        return "peernet"
    return f"peernet --data-dir {shlex.quote(str(path))}"


def _copy_outcome(source: Future[Any], target: Future[Any]) -> None:
    """Complete ``target`` as ``source`` completed (unless ``target`` was cancelled)."""
    if source.cancelled():
        target.cancel()
        return
    error = source.exception()
    if error is not None:
        settle(target, error=error)
    else:
        settle(target, result=source.result())


class Node:
    """A peernet node: a key pair, a trust list, exposed handlers and live links.

    :param data_dir: where the identity key, trust list and lock file live (created
        0700). Two live nodes may not share one. Default: :func:`default_data_dir`.
    :param port: TCP port to listen on; 0 picks a free one (see :attr:`port`).
    :param host: address to listen on; ``"0.0.0.0"`` (all IPv4), ``"::"`` (IPv6 and
        IPv4), or one address such as ``"127.0.0.1"``.
    :param discovery: None (the default): manual addresses only (``connect``); the node
        announces nothing about itself. ``"udp"`` (signed broadcast announces on port
        4040), ``"mdns"`` (needs ``peernet-py[mdns]``), a discovery object such as
        ``UdpDiscovery(interfaces=["eth0"])``, or a list of these. Discovery only gives
        address hints: paired peers it finds are dialled, unpaired ones are listed by
        :meth:`list_nearby` and never dialled.
    :param call_timeout: default timeout of ``call`` and ``call_async``, seconds (5.0).
    :param handshake_timeout: absolute deadline for connect + handshake, seconds (10.0).
    :param io_timeout: a write that cannot complete within this many seconds (the peer
        stopped reading) ends the link rather than blocking the caller (10.0).
    :param max_message_size: largest encoded message either way, bytes (1 MiB).
    :param handler_workers: handlers that may run at once, on the link thread that read
        the message or on a worker thread alike (16). One peer's calls hold at most half
        of them, so one busy peer never starves the others. A handler that calls back a
        peer that calls back again needs a free one at every level.
    :param max_calls_per_peer: calls from one peer queued or running at once; more are
        refused as busy (32).
    :param max_sends_per_peer: sends from one peer waiting for its handler (256). Queued
        calls and sends of one peer also hold at most 4 x ``max_message_size`` bytes
        (kept encoded until they run). When a peer's sends are full the link stops
        reading for up to 0.5 s, so TCP slows the sender down; sends still without room
        are dropped. Queued work of a link that ends, or of a peer that is unpaired,
        never runs (a link retired in favour of another link to the same peer is not
        "ended": what the peer sent on it still runs). A peer's sends run in the order
        they were sent, except that while a duplicate link retires (both sides dialled
        at once) sends on their way over the two links may interleave.
    :param max_preauth: connections still in their handshake, overall (64).
    :param max_preauth_per_ip: connections in their handshake from one address (8).
    :param close_timeout: how long ``close()`` waits for threads, seconds (5.0).
    :param heartbeat_interval: a ping goes out on every link this often, seconds (30.0).
    :param heartbeat_timeout: a link that brought nothing for this long is dead: its
        pending calls fail with ConnectionLost and a reconnect starts, seconds (60.0).
    :param reconnect_initial: first reconnect delay, doubling on each failure (0.5).
    :param reconnect_max: longest reconnect delay, seconds (30.0). Delays have jitter.
    :param network_monitor: True (default) polls the host's interfaces every
        ``network_poll_interval`` seconds (5.0); False turns it off; or pass your own
        object with ``start(on_change)``/``stop(timeout_s)`` (see ``peernet._io.netmon``).
        On a real change, links whose local address vanished are closed and every
        offline peer is redialled at once.
    :param redial_remembered: each paired peer's last good address (one this node
        dialled successfully) is kept in ``data_dir/addresses.json``, so a restarted
        node can reach its peers without ``connect()``. True (default): dial them as
        soon as the node starts; False: only when a call or ``wait_for_peer`` needs
        them (what a one-shot script or CLI command wants).
    :param on_handler_error: called with a :class:`~peernet.handlers.HandlerFailure`
        (handler name, peer, exception) whenever one of this node's handlers (or its
        ``authorize``) raises, or returns a result that cannot be sent (``in_result``:
        not CBOR data, or too large); the calling peer only gets ``RemoteError`` with
        the type name. The default, :func:`~peernet.handlers.report_handler_error`, logs it at
        ERROR on ``peernet.handlers`` when logging is configured and otherwise prints
        the traceback to stderr, like an uncaught exception in a thread.
    :param directory: True (default) serves the handler directory: a paired peer may
        ask (``handlers_of``) which of this node's handlers it may call, and gets each
        one's name and the first line of its docstring, only for handlers whose
        ``authorize`` allows it. False refuses such requests (``no_such_handler``).
    :param control: True (default) serves the control endpoint, a Unix socket
        ``data_dir/control.sock`` (0600 in the 0700 data dir) through which processes of
        the same user, or root, manage this running node: ``peernet.admin(data_dir)``,
        and the ``peernet`` command (``pair``, ``unpair``, ``peers``, ``call``, ...) in
        another terminal. It gives them this node's full power, as its files already
        do. False serves nothing (such commands then say the data dir is in use).
        Linux only (it relies on ``SO_PEERCRED``); elsewhere no endpoint is served.

    Wherever a method takes a peer it accepts a :class:`PeerId`, its ``pn1...`` text,
    32 raw bytes, or the label of a paired peer (see :meth:`resolve`).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int = 0,
        host: str = "0.0.0.0",
        discovery: DiscoverySpec = None,
        call_timeout: float = 5.0,
        handshake_timeout: float = 10.0,
        io_timeout: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        handler_workers: int = 16,
        max_calls_per_peer: int = 32,
        max_sends_per_peer: int = 256,
        max_preauth: int = 64,
        max_preauth_per_ip: int = 8,
        close_timeout: float = 5.0,
        heartbeat_interval: float = 30.0,
        heartbeat_timeout: float = 60.0,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0,
        network_monitor: bool | NetworkMonitor = True,
        network_poll_interval: float = 5.0,
        redial_remembered: bool = True,
        on_handler_error: Callable[[HandlerFailure], None] = report_handler_error,
        directory: bool = True,
        control: bool = True,
    ) -> None:
        self._closed = True  # until it is built: repr() and close() of a half-built node work
        self._close_lock = threading.Lock()
        self._host = check_host(host) if host != "" else host  # "": every address
        discoveries = make_discoveries(discovery)  # bad input fails before any side effect
        if not callable(on_handler_error):
            raise TypeError("on_handler_error must be callable")
        self._settings = settings = Settings(
            call_timeout=call_timeout, handshake_timeout=handshake_timeout,
            io_timeout=io_timeout, max_message_size=max_message_size,
            handler_workers=handler_workers, max_calls_per_peer=max_calls_per_peer,
            max_sends_per_peer=max_sends_per_peer, max_preauth=max_preauth,
            max_preauth_per_ip=max_preauth_per_ip, close_timeout=close_timeout,
            heartbeat_interval=heartbeat_interval, heartbeat_timeout=heartbeat_timeout,
            reconnect_initial=reconnect_initial, reconnect_max=reconnect_max,
            network_poll_interval=network_poll_interval)
        where = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        mesh_settings = MeshSettings(
            call_timeout_s=settings.call_timeout,
            handshake_timeout_s=settings.handshake_timeout,
            io_timeout_s=settings.io_timeout,
            max_message_size=settings.max_message_size,
            heartbeat_interval_s=settings.heartbeat_interval,
            heartbeat_timeout_s=settings.heartbeat_timeout,
            backoff=Backoff(base_s=settings.reconnect_initial, cap_s=settings.reconnect_max),
            cli_command=partial(cli_command, where),
        )
        check_port(port, listen=True)

        self._data_dir = ensure_private_dir(where)
        self._dir_lock = lifecycle.DataDirLock(self._data_dir)
        self._closed = False
        try:
            self._identity = load_or_create_in(self._data_dir)  # the dir is checked above
            self.trust = TrustStore.load_in(self._data_dir)
            addresses = AddressBook.load(self._data_dir)
            addresses.keep_only({t.peer_id for t in self.trust.list()})
            self._handlers = HandlerTable(on_error=on_handler_error)
            if directory:
                self._handlers.install_builtin(
                    DIRECTORY_HANDLER,
                    directory_handler(self._handlers, settings.max_message_size))
            self._directories = DirectoryCache()
            self._timers = Timers()
            self._registry = Registry(self._identity.peer_id, self._timers)
            credentials = LocalCredentials.from_identity(self._identity)
            self._discoveries: list[Discovery] = []
            self._invites = self._invite_book(credentials)  # issue 21
            self._mesh = Mesh(
                invites=self._invites,
                knocked=lambda peer, address: self._hints.knocked(peer, address),
                credentials=credentials,
                is_trusted=self.trust.is_trusted, settings=mesh_settings,
                dispatch=self._handlers.dispatch,
                report_unsendable=self._handlers.report_unsendable, timers=self._timers,
                registry=self._registry, addresses=addresses,
                scheduler=Scheduler(max_workers=settings.handler_workers,
                                    max_calls_per_peer=settings.max_calls_per_peer,
                                    max_sends_per_peer=settings.max_sends_per_peer,
                                    max_queued_bytes_per_peer=settings.max_queued_bytes_per_peer,
                                    is_trusted=self.trust.is_trusted),
            )
            self._hints = Hints(own_id=self._identity.peer_id, registry=self._registry,
                                timers=self._timers, is_trusted=self.trust.is_trusted,
                                dial=self._mesh.dial_hinted)
            self._netmon: NetworkMonitor | None = None
            if network_monitor is True:
                self._netmon = PollingMonitor(settings.network_poll_interval)
            elif network_monitor is not False:
                self._netmon = network_monitor
            if isinstance(self._netmon, PollingMonitor):  # see START_DELAY_S
                self._timers.call_later(min(START_DELAY_S, settings.network_poll_interval),
                                        self._start_network_monitor)
            elif self._netmon is not None:
                self._netmon.start(self._on_network_change)
            self._unsubscribe_trust = self.trust.subscribe(self._on_trust_change)
            self._acceptor = Acceptor(open_listener(host, port), self._mesh.accept,
                                      max_preauth=settings.max_preauth,
                                      max_preauth_per_ip=settings.max_preauth_per_ip)
            self._mesh.listening(self._acceptor)
            self._manual = ManualDiscovery()
            host_view = Host(peer_id=self.id, port=lambda: self.port,
                             sign=self._identity.sign, hints=self._hints,
                             closed=lambda: self._closed,
                             paired_peers=self.trust.paired_ids,
                             open_nameplates=self._invites.open_nameplates)
            for source in (self._manual, *discoveries):
                source.start(host_view)
                self._discoveries.append(source)
            if redial_remembered:
                self._mesh.redial_remembered()
            self._started_at = time.monotonic()
            if control and not control_supported:
                log.info("no control endpoint: it needs Unix sockets with SO_PEERCRED (Linux)")
            elif control:  # last: a client that reaches it finds a node that is all up
                self._control_ops = ControlOps(self)
                self._control = ControlServer(self._data_dir, self._control_ops.handle,
                                              self._acceptor)
                self._control_ops.serve(self._control)
            self._acceptor.start()  # one thread serves the TCP and the control listener
        except BaseException:
            self._closed = True
            self._shutdown_partial()
            raise
        lifecycle.track(self)
        log.info("node %s listening on %s:%d", self.id.short, host, self.port)

    # -- identity ------------------------------------------------------------------------

    @property
    def id(self) -> PeerId:
        """This node's PeerId (its Ed25519 public key)."""
        return self._identity.peer_id

    @property
    def port(self) -> int:
        """The TCP port this node listens on."""
        return self._acceptor.port

    @property
    def settings(self) -> Settings:
        """This node's settings (frozen: create a new node to change them)."""
        return self._settings

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def closed(self) -> bool:
        return self._closed

    def resolve(self, peer: PeerLike) -> PeerId:
        """The :class:`PeerId` that ``peer`` means here: a PeerId, its text or 32 raw
        bytes is that id (ids always win); any other text is the label of exactly one
        paired peer (compared ignoring case and invisible differences, like the
        look-alike rule of ``pair``). Raises :class:`~peernet.UnknownPeer` or
        :class:`~peernet.AmbiguousPeer` (both ``InvalidPeerId`` and ``LookupError``)
        naming the candidates. Every method that takes a peer resolves it this way."""
        return resolve_peer(self.trust, peer)

    # -- handlers ------------------------------------------------------------------------

    def expose(self, name: str, fn: Callable[[PeerId, Any], Any] | None = None, *,
               authorize: AuthorizeFn | None = None) -> Any:
        """Let paired peers run ``fn(peer, args) -> result`` as ``name``.

        Also a decorator: ``@node.expose("chat")``. ``authorize(peer) -> bool`` runs
        before every call of this handler; only ``True`` allows it. Exposing a name again
        replaces the earlier handler.
        """
        return self._handlers.expose(name, fn, authorize=authorize)

    def revoke(self, name: str) -> bool:
        """Stop exposing ``name``; later calls get NoSuchHandler. Returns whether it was exposed."""
        return self._handlers.revoke(name)

    # -- trust -----------------------------------------------------------------------------

    def pair(self, peer_id: PeerLike, label: str | None = None) -> PeerId:
        """Trust ``peer_id`` (its text form, raw 32 bytes or a PeerId). Idempotent; a new
        label replaces the old one, so ``pair("kitchen pi", label="pi")`` renames a
        paired peer (a label only ever names a peer that is paired already). Both sides
        must pair each other to talk. A peer heard before pairing is dialled at once:
        one that discovery lists as nearby, or one that dialled this node and was
        refused (its address kept for 10 minutes, a few dozen keys at most)."""
        pid = self.resolve(peer_id)
        if pid == self.id:
            raise ValueError("that is this node's own id: pair the other node's id "
                             "(run `peernet id` there)")
        return self.trust.pair(pid, label).peer_id

    def unpair(self, peer_id: PeerLike) -> bool:
        """Stop trusting ``peer_id`` (or the peer with that label) and close its live
        links at once."""
        pid = self.resolve(peer_id)
        removed = self.trust.unpair(pid)
        self._mesh.drop_peer(pid)  # also when it was not paired: a stale link must not live on
        return removed

    def connect(self, peer_id: PeerLike, host: str, port: int) -> None:
        """Remember ``host:port`` as ``peer_id``'s address and dial it in the background.

        Returns at once, before the link is up: :meth:`call` waits for a dial in
        progress, but :meth:`send` never waits, so a ``send()`` straight after
        ``connect()`` usually returns False. Call :meth:`wait_for_peer` first. Raises
        NotPaired for a peer that is not paired (the handshake would refuse it anyway),
        ValueError for a host with a port, a space or a control character in it, or a
        bad port.
        """
        self._check_open()
        pid = self.resolve(peer_id)
        self._require_paired(pid)
        host = check_host(host)
        self._manual.add(pid, (host, check_port(port)))

    def list_peers(self) -> PeerList:
        """Every paired peer, newest first, with status, address, last_seen and rtt.

        Status is "online" (a live authenticated link), "connecting" (a dial in
        progress), "offline" (known before, no link now) or "unknown" (never seen).
        A plain list, shown as a table in a notebook.
        """
        now_wall, now_mono = time.time(), time.monotonic()
        peers = PeerList()
        for trusted in self.trust.list():
            entry = self._registry.get(trusted.peer_id)
            link = self._registry.active_link(trusted.peer_id)
            if link is not None:
                last_seen: float | None = now_wall - (now_mono - link.last_received)
                rtt = link.rtt_s
            else:
                last_seen = entry.last_seen if entry is not None else None
                rtt = None
            status = entry.current_status() if entry is not None else "unknown"
            address = entry.address if entry is not None else None
            peers.append(Peer(trusted.peer_id, trusted.label, status, address, last_seen, rtt))
        return peers

    def list_nearby(self) -> list[Nearby]:
        """Unpaired nodes that discovery heard recently (id, address, source, last_seen),
        newest first. They are never dialled: check an id out of band, then
        :meth:`pair` it and it is dialled at once."""
        return self._hints.nearby()

    def on_peer_change(self, callback: Callable[[PeerEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` whenever a paired peer's status changes.

        Events arrive in order on one peernet thread (``peernet-events``); keep the
        callback quick. Returns a function that unsubscribes.
        """
        self._check_open()
        return self._mesh.subscribe(
            lambda e: callback(PeerEvent(id=e[0], status=e[1], previous=e[2], at=e[3])))

    # -- invites (issue 21) ------------------------------------------------------------------

    def invite(self, label: str | None = None, ttl_s: float = 600.0, *,
               addresses: Iterable[str] | None = None, short: bool = True) -> Invite:
        """Open a one-time invite and return it: show ``inv.short`` (``"7-amber-orbit"``,
        same LAN) or ``inv.long`` (``"pninv1..."``, any network) to the other person,
        who runs :meth:`join` (or ``peernet join CODE``) with it; ``inv.wait()`` returns
        the joiner's PeerId once both sides trust each other.

        ``label`` is the name this node proposes for itself (the joiner stores it under
        that label). The invite is used at most once, a failed attempt burns it, and it
        expires after ``ttl_s`` seconds. The short code exists only when a discovery
        source of this node announces (``discovery="udp"`` or ``"mdns"``) and ``short``
        is True: its number is in the announces while the invite is open, nothing else
        is, and a short-code attempt is taken only from the LANs those announces reach
        (16 bits: a guesser far away must not get a try). Otherwise ``inv.short`` is
        None and the long code is the way; ``short=False`` asks for that (an invite for
        a machine elsewhere, or a LAN you do not trust). The long code holds this node's
        id, port and ``addresses`` (default: the addresses it listens on), the invite's
        64-bit id and a 128-bit secret; it is never logged. At most 4 invites are open
        at once. With a short code, it first listens 0.3 s for the numbers of invites
        open nearby, so it picks another. Raises ValueError for a bad label, ``ttl_s``
        or address.
        """
        self._check_open()
        return self._invites.open(label, ttl_s, None if addresses is None else list(addresses),
                                  short)

    def join(self, code: str, label: str | None = None, timeout: float = 10.0) -> PeerId:
        """Join the invite ``code`` names; return the inviter's PeerId once both sides
        trust each other (each under the label the other proposed; ``label`` is the one
        this node proposes for itself). The address the join reached the inviter at is
        remembered at once (``addresses.json``), and the inviter is dialled as a normal
        paired peer, so a call right after works at once, and one after a restart
        finds it there.

        A short code is looked up on the LAN by discovery (this node needs
        ``discovery="udp"`` or ``"mdns"``); a long code holds the addresses to dial.
        Raises InvalidInviteCode (says what is wrong with the text), InviteNotFound (no
        such invite nearby, or the inviter unreachable), InviteAmbiguous (two invites
        nearby with that number), InviteRejected (wrong code: the inviter burned the
        invite; or it was used, burned or cancelled), InviteExpired, or InviteError.
        """
        self._check_open()
        timeout_s = check_seconds("timeout", timeout)
        return self._invites.join(code, label, timeout_s).peer

    @property
    def invites(self) -> list[Invite]:
        """This node's open invites (a snapshot)."""
        return self._invites.open_invites()

    def _invite_book(self, credentials: LocalCredentials) -> InviteBook:
        def addresses() -> list[str]:
            if self._host not in ("0.0.0.0", "::", ""):
                return [self._host]
            return [a.ip for a in host_interfaces() if ":" not in a.ip][:4] or ["127.0.0.1"]

        def can(attribute: str) -> Callable[[], bool]:
            return lambda: any(getattr(s, attribute, False) for s in self._discoveries)

        def on_lan(source_ip: str, local_ip: str) -> bool:
            """Is that address on a LAN where a source announces short codes? (A source
            without ``on_lan`` takes no short-code attempts.)"""
            for source in self._discoveries:
                check = getattr(source, "on_lan", None)
                if getattr(source, "carries_invites", False) and check is not None and (
                        check(source_ip, local_ip)):
                    return True
            return False

        def announce() -> None:
            for source in self._discoveries:
                source.announce()

        return InviteBook(
            credentials=credentials, trust=self.trust, timers=self._timers,
            port=lambda: self.port, addresses=addresses,
            carries_short=can("carries_invites"), hears_short=can("hears_invites"),
            on_lan=on_lan, announce=announce, solicit=self._solicit, heard=lambda: self._hints.invites(),
            remember=lambda peer, dialled: self._mesh.paired_by_invite(peer, dialled),
            connect=self.connect,
            # After a join: wait for the dial just started, not for the whole timeout.
            wait_for_peer=lambda pid, timeout_s: self._registry.wait_for_link(
                pid, time.monotonic() + timeout_s, give_up_when_idle=True) is not None)

    # -- calls -----------------------------------------------------------------------------

    def call(self, peer_id: PeerLike, name: str, args: Any = None, *,
             timeout: float | None = None) -> Any:
        """Run handler ``name`` on ``peer_id`` with ``args``; return its result or raise.

        Waits up to ``timeout`` seconds (default ``call_timeout``), including dialling a
        paired peer whose address is known. Raises NotPaired, PeerUnavailable,
        ConnectionLost, CallTimeout, NoSuchHandler, Forbidden, Busy, RemoteError;
        EncodeError or MessageTooLarge before anything is sent. A NoSuchHandler names
        close matches from the peer's handler directory ("did you mean ...?") when it
        can be had within what is left of the timeout (at most 1 s more).
        """
        pid, fut, link, rid, deadline, timeout_s, reading = self._start_call(
            peer_id, name, args, timeout, read_reply=True)
        try:
            if reading:  # we hold the link's reading baton: the reply wakes only us
                link.read_reply(fut, deadline)
            return fut.result(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if fut.done():  # answered just as the wait ran out
                return fut.result()
            link.forget_call(rid)
            raise self._timeout_error(pid, name, timeout_s) from None
        except NoSuchHandler as exc:
            self._add_suggestions(exc, pid, name, deadline)
            raise
        except BaseException:  # KeyboardInterrupt in a notebook: a late reply is dropped
            if reading:  # interrupted before read_reply could give the baton back
                link.end_reading()
            if not fut.done():
                link.forget_call(rid)
            raise

    def call_async(self, peer_id: PeerLike, name: str, args: Any = None, *,
                   timeout: float | None = None) -> Future[Any]:
        """Like :meth:`call` but returns a ``concurrent.futures.Future`` at once.

        Errors that can be known before sending (bad name or args, not paired) are
        raised here; everything later lands in the Future. Cancelling the Future
        (``fut.cancel()``) abandons the call: its pending entry is dropped and a late
        reply is ignored; cancelled while the peer is still being dialled, the call is
        never sent. (A NoSuchHandler here carries no suggestions.)
        """
        pid = self.resolve(peer_id)
        check_handler_name(name)
        self._check_open()
        if self._registry.active_link(pid) is None:
            # A dial may be needed, and dialling waits: do it on a helper thread, which
            # ends as soon as the call is on its way.
            self._encode_call(new_request_id(), name, args)  # bad args still raise here
            self._require_paired(pid)
            fut: Future[Any] = Future()

            def run() -> None:
                try:
                    # Cancelled while waiting for the link: nothing is sent, and the
                    # wait ends at once (the callback below wakes it).
                    started = self._start_call(pid, name, args, timeout,
                                               abandoned=fut)[:6]
                except BaseException as exc:  # noqa: BLE001 -- delivered through the Future
                    settle(fut, error=exc)
                    return
                inner = self._watch_call(name, *started)
                inner.add_done_callback(lambda f: _copy_outcome(f, fut))
                fut.add_done_callback(lambda f: inner.cancel() if f.cancelled() else None)

            fut.add_done_callback(lambda f: self._registry.notify() if f.cancelled() else None)
            threading.Thread(target=run, name="peernet-call", daemon=True).start()
            return fut
        # The usual case: a live link. No thread; the timer thread enforces the deadline.
        try:
            started = self._start_call(pid, name, args, timeout)[:6]
        except PeerUnavailable as exc:  # the link died under us: that is a result
            fut = Future()
            fut.set_exception(exc)
            return fut
        return self._watch_call(name, *started)

    def _watch_call(self, name: str, pid: PeerId, fut: Future[Any], link: Link, rid: int,
                    deadline: float, timeout_s: float) -> Future[Any]:
        """Enforce a pending call's deadline on the timer thread, and drop its pending
        entry at once if the caller cancels ``fut``."""
        def expire() -> None:
            if not fut.done():
                link.forget_call(rid)
                settle(fut, error=self._timeout_error(pid, name, timeout_s))

        def done(f: Future[Any]) -> None:
            timer.cancel()
            if f.cancelled():  # abandoned: an asyncio task cancelled, fut.cancel()
                link.forget_call(rid)

        timer = self._timers.call_later(deadline - time.monotonic(), expire)
        fut.add_done_callback(done)
        return fut

    def send(self, peer_id: PeerLike, name: str, args: Any = None) -> bool:
        """Fire and forget: True if handed to a live link, False if dropped (offline).

        Never waits and never queues, not even for a dial in progress: after
        :meth:`connect` or at start-up, :meth:`wait_for_peer` first. Bad args raise
        before anything is sent.
        """
        pid = peer_id if type(peer_id) is PeerId else self.resolve(peer_id)
        check_handler_name(name)
        payload = encode_for_link(Send(name, args))
        if len(payload) > self._settings.max_message_size:
            self._check_size(payload)  # raises, saying how to fix it
        if self._closed:
            self._check_open()
        link = self._registry.active_link(pid)
        if link is None:
            return False
        try:
            link.write(payload)
        except PeerUnavailable:
            return False
        return True

    def wait_for_peer(self, peer_id: PeerLike, timeout: float = 10.0) -> bool:
        """Wait until a live authenticated link to ``peer_id`` exists; dial if its address
        is known. Returns whether one exists. Raises NotPaired at once for a peer that
        is not paired (no link to it can ever come up). :meth:`await_peer` is the
        asyncio form."""
        pid = self._dial_for_wait(peer_id)
        deadline = time.monotonic() + timeout
        if self._registry.active_link(pid) is not None:
            return True
        return self._registry.wait_for_link(pid, deadline, give_up_when_idle=False) is not None

    # -- ergonomics: proxies, the directory, fan-out, asyncio -------------------------------

    def peer(self, peer: PeerLike, *, timeout: float | None = None) -> PeerProxy:
        """A proxy for one peer: ``pi = node.peer("pi"); pi.temperature()``.

        ``peer`` is resolved once, now (see :meth:`resolve`); ``timeout`` is the
        proxy's call timeout (default ``call_timeout``). See :class:`peernet.PeerProxy`
        for how positional and keyword arguments become ``args``.
        """
        from .proxy import PeerProxy  # noqa: PLC0415 -- proxy.py imports nothing of node

        return PeerProxy(self, self.resolve(peer), timeout=timeout)

    def handlers_of(self, peer: PeerLike, *, timeout: float | None = None) -> HandlerList:
        """The handlers ``peer`` lets this node call, with the first line of each one's
        docstring, from its handler directory (fetched now; one call).

        Lists only handlers whose ``authorize`` allows this node. Raises like
        :meth:`call`; NoSuchHandler if the peer does not serve its directory
        (``Node(directory=False)``), CallError if what it sent is malformed.
        """
        pid = self.resolve(peer)
        try:
            reply = self.call(pid, DIRECTORY_HANDLER, None, timeout=timeout)
        except NoSuchHandler:
            raise NoSuchHandler(f"{pid.short} does not publish its handler directory "
                                f"(it runs with directory=False)") from None
        handlers = parse_directory(reply, pid)
        self._directories.put(pid, handlers)
        return handlers

    def call_many(self, peers: Iterable[PeerLike] | None, name: str, args: Any = None, *,
                  timeout: float | None = None, max_concurrency: int = 32
                  ) -> dict[PeerId, Any]:
        """Call ``name`` on many peers at once: ``{peer id: result or exception}``.

        ``peers`` is an iterable of ids or labels, or None for every paired peer that
        is online now. At most ``max_concurrency`` calls are in flight at once (each
        one a :meth:`call_async` Future, not a thread). ``timeout`` (default
        ``call_timeout``) bounds the whole fan-out: a peer that has not answered by
        then gets a CallTimeout, and never delays the others. Failures (CallTimeout,
        PeerUnavailable, RemoteError, NotPaired, ...) are values in the dict, never
        raised; bad ``name``, ``args`` or labels raise before anything is sent. The
        dict keeps the order of ``peers``. :meth:`call_many_iter` yields each result
        as it arrives.
        """
        return fanout.call_many(self, peers, name, args, timeout=timeout,
                                max_concurrency=max_concurrency)

    def call_many_iter(self, peers: Iterable[PeerLike] | None, name: str, args: Any = None,
                       *, timeout: float | None = None, max_concurrency: int = 32
                       ) -> Iterator[tuple[PeerId, Any]]:
        """:meth:`call_many`, yielding ``(peer id, result or exception)`` as each call
        completes (fastest first). Leaving the loop early abandons the calls still
        pending."""
        return fanout.call_many_iter(self, peers, name, args, timeout=timeout,
                                     max_concurrency=max_concurrency)

    async def acall(self, peer_id: PeerLike, name: str, args: Any = None, *,
                    timeout: float | None = None) -> Any:
        """``await node.acall(peer, name, args)``: :meth:`call` for asyncio code.

        Runs on :meth:`call_async` (no event loop inside peernet, no thread per call),
        so it works under ``asyncio.run``, FastAPI and a notebook's running loop.
        Cancelling the awaiting task abandons the call: its pending entry is dropped
        and a late reply is ignored (cancelled while the peer is still being dialled,
        it is never sent).
        """
        from . import aio  # noqa: PLC0415 -- asyncio only for code that uses it

        return await aio.acall(self, peer_id, name, args, timeout=timeout)

    async def asend(self, peer_id: PeerLike, name: str, args: Any = None) -> bool:
        """``await node.asend(peer, name, args)``: :meth:`send` for asyncio code (the
        write runs in the loop's default executor, so a full socket never blocks the
        loop)."""
        from . import aio  # noqa: PLC0415 -- asyncio only for code that uses it

        return await aio.asend(self, peer_id, name, args)

    async def await_peer(self, peer_id: PeerLike, timeout: float = 10.0) -> bool:
        """``await node.await_peer(peer)``: :meth:`wait_for_peer` for asyncio code.

        Returns whether a live link exists, waiting up to ``timeout`` seconds without
        blocking the loop or holding a thread. Raises NotPaired at once."""
        from . import aio  # noqa: PLC0415 -- asyncio only for code that uses it

        return await aio.await_peer(self, peer_id, timeout)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Say goodbye to peers, close every socket and join every thread this node
        started. Idempotent, bounded by ``close_timeout``, safe from inside a handler."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        lifecycle.untrack(self)
        self._shutdown_partial()
        log.info("node %s closed", self.id.short)

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        identity = getattr(self, "_identity", None)
        short = identity.peer_id.short if identity is not None else "(not started)"
        if self._closed:
            return f"<Node {short} closed>"
        peers = self.list_peers()
        online = sum(p.online for p in peers)
        handlers = len(self._handlers)
        return (f"<Node {short} on {self._host}:{self.port}, {online}/{len(peers)} "
                f"peers online, {handlers} handler{'' if handlers == 1 else 's'}>")

    def _repr_html_(self) -> str:
        if getattr(self, "_identity", None) is None:
            return "<div><b>peernet node</b> (not started)</div>"
        state = "closed" if self._closed else f"listening on {self._host}:{self.port}"
        handlers = ", ".join(self._handlers.names()) or "none"
        return (
            f"<div><b>peernet node</b> <code>{html.escape(str(self.id))}</code> "
            f"({html.escape(state)})<br>handlers: {html.escape(handlers)}</div>"
            + ("" if self._closed else peers_table(self.list_peers()))
        )

    # -- internals: calls --------------------------------------------------------------------

    def _dial_for_wait(self, peer: PeerLike) -> PeerId:
        """What waiting for a peer starts with: resolve, check, dial unless linked."""
        pid = self.resolve(peer)
        self._check_open()
        self._require_paired(pid)
        if self._registry.active_link(pid) is None:
            self._solicit()
            self._mesh.dial(pid)
        return pid

    def _has_link(self, pid: PeerId) -> bool:
        return self._registry.active_link(pid) is not None

    def _directory_for_hints(self, pid: PeerId, timeout_s: float) -> HandlerList | None:
        """``pid``'s directory for "did you mean" and ``dir(proxy)``: cached, or fetched
        within ``timeout_s`` over a live link only; None if it cannot be had."""
        cached = self._directories.get(pid)
        if cached is not None:
            return cached
        if timeout_s < 0.05 or self._closed or not self._has_link(pid):
            return None
        try:
            return self.handlers_of(pid, timeout=timeout_s)
        except Exception:  # noqa: BLE001 -- best effort: hints never raise
            return None

    def _add_suggestions(self, exc: NoSuchHandler, pid: PeerId, name: str,
                         deadline: float) -> None:
        """Add "did you mean ...?" to ``exc`` from ``pid``'s directory, within what is
        left until ``deadline`` (at most 1 s). Never raises; ``exc`` stays the error."""
        if is_reserved(name):
            return
        try:
            handlers = self._directory_for_hints(pid, min(1.0, deadline - time.monotonic()))
            if handlers is None or name in handlers.names:  # it exists: it refused itself
                return
            close = suggest(name, handlers.names)
            if close:
                exc.suggestions = close
                exc.args = (f"{exc}; did you mean {' or '.join(map(repr, close))}?",)
        except Exception:  # noqa: BLE001 -- never mask the original error
            log.debug("no suggestions for %r on %s", name, pid.short, exc_info=True)

    def _require_paired(self, pid: PeerId) -> None:
        if not self.trust.is_trusted(pid):
            raise NotPaired(f"{pid.short} is not paired; call node.pair({str(pid)!r}) first")

    @staticmethod
    def _timeout_error(pid: PeerId, name: str, timeout_s: float) -> CallTimeout:
        return CallTimeout(f"{pid.short} did not answer {name!r} within {timeout_s:g} s")

    def _check_open(self) -> None:
        if self._closed:
            raise NodeClosed("this node is closed")

    def _check_size(self, payload: bytes | Bulk) -> None:
        limit = self._settings.max_message_size
        if len(payload) > limit:
            raise MessageTooLarge(
                f"message of {len(payload)} bytes exceeds max_message_size "
                f"({limit}); raise it on both nodes to send more"
            )

    def _encode_call(self, rid: int, name: str, args: Any) -> bytes | Bulk:
        payload = encode_for_link(Call(rid, name, args))
        if len(payload) > self._settings.max_message_size:
            self._check_size(payload)  # raises, saying how to fix it
        return payload

    def _start_call(self, peer_id: PeerLike, name: str, args: Any, timeout: float | None,
                    abandoned: Future[Any] | None = None, *, read_reply: bool = False
                    ) -> tuple[PeerId, Future[Any], Link, int, float, float, bool]:
        """Send the call. ``abandoned`` cancelled once a link is had: CancelledError, and
        nothing is sent. With ``read_reply``, first take the link's reading baton if its
        thread is parked (the last value says if it was): then the caller must
        ``link.read_reply(fut, deadline)``, which gives it back."""
        pid = peer_id if type(peer_id) is PeerId else self.resolve(peer_id)
        check_handler_name(name)
        timeout_s = (self._settings.call_timeout if timeout is None
                     else check_seconds("timeout", timeout))
        deadline = time.monotonic() + timeout_s
        rid = new_request_id()
        payload = self._encode_call(rid, name, args)  # before anything is sent
        if self._closed:
            self._check_open()
        while True:
            link = (self._registry.active_link(pid)
                    or self._link_for_call(pid, deadline, abandoned))
            if abandoned is not None and abandoned.cancelled():
                raise CancelledError()
            if link.inline_since is not None and link.is_inline_here():
                # A handler calling back the peer that called it: someone else must
                # read the reply.
                link.take_over_reading()
            try:
                # With read_reply: take the link's reading baton too, if its thread is
                # parked, before the reply can come.
                fut, reading = link.start_call(rid, name, read_reply=read_reply)
            except PeerUnavailable:  # the link ended, or retired, between lookup and use
                if not link.established:
                    raise  # the dial for this call failed: that is the answer
                continue
            if fut is None:  # id collision on this link: draw again
                rid = new_request_id()
                payload = self._encode_call(rid, name, args)
                continue
            try:
                link.write(payload)
            except BaseException:
                if reading:
                    link.end_reading()
                raise
            return pid, fut, link, rid, deadline, timeout_s, reading

    def _link_for_call(self, pid: PeerId, deadline: float,
                       abandoned: Future[Any] | None = None) -> Link:
        """No live link: dial (if paired) and wait for one, up to ``deadline``."""
        self._require_paired(pid)
        self._solicit()
        try:
            # No address yet, but discovery is on: it may find one before the deadline.
            return self._mesh.link_for(pid, deadline, searching=len(self._discoveries) > 1,
                                       abandoned=abandoned)
        except PeerUnavailable:
            self._check_open()
            raise

    def _solicit(self) -> None:
        """A caller waits for a peer with no live link: discovery sources that can ask
        the network at once (``solicit()``: UDP solicitations, an mDNS query) do."""
        for source in self._discoveries:
            solicit = getattr(source, "solicit", None)
            if solicit is not None:
                solicit()

    def _feed(self, topic: str) -> Callable[[dict[str, Any]], None] | None:
        """For a handler that relays what it receives to control clients watching
        ``topic`` (the CLI's chat handler); None when this node serves no endpoint."""
        ops = getattr(self, "_control_ops", None)
        return ops.feed(topic) if ops is not None else None

    def _on_trust_change(self, event: str, peer: PeerId) -> None:
        if event == "unpaired":
            self._mesh.drop_peer(peer)
            self._hints.forget(peer)
        elif event == "paired":
            self._hints.paired(peer)  # a nearby node just picked: dial it now

    def _start_network_monitor(self) -> None:
        """On the timer thread, a moment after start-up (unless closed by then)."""
        if not self._closed and self._netmon is not None:
            self._netmon.start(self._on_network_change)

    def _on_network_change(self, change: NetworkChange) -> None:
        self._mesh.on_network_change(change)
        for source in self._discoveries:
            source.announce()  # peers learn our new address now, not an interval later

    def _shutdown_partial(self) -> None:
        """Stop whatever was started, in order; works on a half-built node too."""
        deadline = time.monotonic() + self._settings.close_timeout
        left = lambda: max(0.0, deadline - time.monotonic())  # noqa: E731
        control: ControlServer | None = getattr(self, "_control", None)
        if control is not None:
            control.stop()  # first: clients learn at once that this node is going
        unsubscribe = getattr(self, "_unsubscribe_trust", None)
        if unsubscribe is not None:
            unsubscribe()
        invites = getattr(self, "_invites", None)
        if invites is not None:
            invites.close()
        for source in getattr(self, "_discoveries", ()):
            try:
                source.stop(left())
            except Exception:  # noqa: BLE001 -- a broken discovery must not stop close()
                log.exception("stopping %s discovery failed", source.source)
        acceptor = getattr(self, "_acceptor", None)
        if acceptor is not None:
            acceptor.close(left())
        timers = getattr(self, "_timers", None)
        if timers is not None:
            # Nothing due now matters once the node closes: the timer thread ends while
            # close() waits for the link threads below, not in a wait of its own.
            timers.stop()
        mesh = getattr(self, "_mesh", None)
        if mesh is not None:
            mesh.close(left)  # byes, link threads, then the handler workers
        if timers is not None:
            timers.close(left())
        netmon = getattr(self, "_netmon", None)
        if netmon is not None:
            netmon.stop(left())
        if mesh is not None:
            mesh.finish(left)
        if control is not None:
            control.join(left())
        self._dir_lock.release()
