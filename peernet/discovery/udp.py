"""UDP discovery: signed announces, broadcast on each selected interface.

One thread (``peernet-udp``) sends an announce at start, every ``interval_s`` and at
once when asked (a network change), and receives announces on ``port``. Several nodes
on one host share the port (SO_REUSEPORT: each gets every broadcast). Received packets
go through :class:`AnnounceFilter` (see ``peernet/_proto/announce.py`` for the packet
and the checks); what passes is reported to the node as an address hint.

Announces go as *directed* broadcast (e.g. 192.168.1.255) from a socket bound to each
selected IPv4 address, so each packet is signed with the address it really leaves from.
``targets`` replaces broadcast with unicast to the given ``(host, port)`` pairs: for
networks that block broadcast, and for tests that must stay on loopback.

**Solicitations** make a fresh node fast: :meth:`UdpDiscovery.solicit` (which
``Node.call`` and ``Node.wait_for_peer`` use when no link is up) sends a 132-byte
packet that names nobody, the same way announces go, from a socket of its own on a
free port; every node with UDP discovery on answers at once with its signed announce,
by unicast to that socket, within the limits of :class:`SolicitationLimiter`, and only
to an address on one of its selected subnets (or, with ``targets``, on loopback or a
target host). The answers pass the usual announce filter.
"""

from __future__ import annotations

import logging
import ipaddress
import os
import select
import socket
import threading
import time
from typing import TYPE_CHECKING, Iterable

from .._proto.announce import (
    MAX_ANNOUNCE_LEN,
    AnnounceFilter,
    SolicitationLimiter,
    encode_announce,
    encode_solicitation,
    is_solicitation,
    next_counter,
)
from .._text import check_host
from .._io.netmon import host_interfaces, normalize_ip, on_subnet

if TYPE_CHECKING:
    from . import DiscoveryHost

__all__ = ["UdpDiscovery", "DEFAULT_PORT"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 4040
#: Packets handled per wake-up before the thread checks its clock again.
_BATCH = 64
#: When the solicitations of one solicit() go out, seconds after it (datagrams get lost).
_SOLICIT_AT_S = (0.0, 0.25, 1.0)


class UdpDiscovery:
    """Signed UDP announces (``Node(discovery="udp")``).

    :param port: UDP port to listen and announce on (4040); nodes sharing a LAN must
        agree on it. 0 picks a free port (only useful with ``targets``).
    :param interval_s: seconds between announces (5.0). Peers not heard from for three
        intervals are considered gone.
    :param interfaces: interface names or addresses to announce on; default: every
        IPv4 interface except loopback, link-local and virtual ones (docker, veth,
        bridges).
    :param targets: ``(host, port)`` pairs to announce to by unicast instead of
        broadcasting. A loopback target at this node's own ``port`` is refused
        (``ValueError``): nodes sharing a port each get only some unicast datagrams, so
        two nodes on one machine take a port each and target the other's.
    :param bind_host: address to receive on ("0.0.0.0": every interface).
    :param announce: False: never announce this node, not even when solicited; only
        listen, and solicit when asked (what a one-shot command wants: it finds its
        peers without telling the LAN where it listens).
    """

    source = "udp"
    #: Reports the nameplates of open invites it hears (issue 21).
    hears_invites = True

    def __init__(self, *, port: int = DEFAULT_PORT, interval_s: float = 5.0,
                 interfaces: Iterable[str] | None = None,
                 targets: Iterable[tuple[str, int]] | None = None,
                 bind_host: str = "0.0.0.0", announce: bool = True) -> None:
        if type(port) is not int or not 0 <= port <= 0xFFFF:
            raise ValueError(f"port must be 0..65535, got {port!r}")
        if not 0.1 <= float(interval_s) <= 3600:
            raise ValueError(f"interval_s must be 0.1 .. 3600 seconds, got {interval_s!r}")
        self.port = port
        self.interval_s = float(interval_s)
        self.interfaces = None if interfaces is None else tuple(interfaces)
        self.targets = None if targets is None else [(check_host(h), int(p)) for h, p in targets]
        for host, target_port in self.targets or ():
            if target_port == port and _is_loopback(host):
                other = port + 1 if port < 0xFFFF else port - 1
                raise ValueError(
                    f"target {host}:{target_port} is this machine at this node's own UDP "
                    f"port: nodes sharing a port each get only some of the datagrams sent "
                    f"to it (the sender may get its own back); give each node a port of "
                    f"its own and target the other's: port {port} with target "
                    f"{host}:{other}, port {other} with target {host}:{port}")
        self.bind_host = bind_host
        self.announcing = bool(announce)
        self._limiter = SolicitationLimiter()
        self._query: socket.socket | None = None
        self._solicit_due: list[float] = []
        self._host: DiscoveryHost | None = None
        self._filter: AnnounceFilter | None = None
        self._sock: socket.socket | None = None
        self._wake_r = self._wake_w = -1
        self._stop = threading.Event()
        self._announce_now = threading.Event()
        self._solicit_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._counter = 0
        #: Announces sent and datagrams received (tests and debugging).
        self.sent = 0
        self.received = 0
        #: Solicitations sent, and answers (announces) sent to others' solicitations.
        self.solicited = 0
        self.answered = 0

    @property
    def carries_invites(self) -> bool:
        """Does it announce this node's open invites (issue 21)? Only if it announces."""
        return self.announcing

    @property
    def dropped(self) -> dict[str, int]:
        """Received packets that did not count, by reason."""
        return dict(self._filter.dropped) if self._filter is not None else {}

    @property
    def unanswered(self) -> dict[str, int]:
        """Solicitations heard and not answered, by reason (rate limits, own, ...)."""
        return dict(self._limiter.dropped)

    def start(self, host: DiscoveryHost) -> None:
        self._host = host
        self._filter = AnnounceFilter(host.id)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.bind_host, self.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        query = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            query.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            query.bind((self.bind_host, 0))  # a port of its own: answers come here alone
            query.setblocking(False)
        except OSError:
            query.close()
            sock.close()
            raise
        self._sock, self._query = sock, query
        self.port = sock.getsockname()[1]
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="peernet-udp", daemon=True)
        self._thread.start()

    def announce(self) -> None:
        self._announce_now.set()
        self._wake()

    def solicit(self) -> None:
        """Ask the LAN now: "anyone with discovery on, announce to me". Sends a
        solicitation at once and twice more within a second (a lost datagram), unless a
        round is still going; answers arrive as ordinary hints."""
        with self._solicit_lock:
            if self._solicit_due:
                return
            now = time.monotonic()
            self._solicit_due = [now + t for t in _SOLICIT_AT_S]
        self._wake()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        if self._sock is not None:
            self._sock.close()
        if self._query is not None:
            self._query.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # not started, stopped, or the pipe is full (a wake-up is pending anyway)

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None  # start() opened it before starting this thread
        query = self._query
        assert sock is not None and query is not None  # start() opened them
        next_due = time.monotonic()  # the first announce goes out at once
        while not self._stop.is_set():
            now = time.monotonic()
            if self._announce_now.is_set() or now >= next_due:
                self._announce_now.clear()
                if self.announcing:
                    self._send_announces()
                next_due = time.monotonic() + self.interval_s
            with self._solicit_lock:
                due = [t for t in self._solicit_due if t <= now]
                self._solicit_due = [t for t in self._solicit_due if t > now]
                wake_at = min([next_due, *self._solicit_due])
            if due:
                self._send_solicitations()
            try:  # poll(), not select(): descriptors may be numbered 1024 and up
                poller = select.poll()
                poller.register(sock, select.POLLIN)
                poller.register(query, select.POLLIN)
                poller.register(self._wake_r, select.POLLIN)
                ready = {fd for fd, _ in poller.poll(max(0.0, wake_at - time.monotonic()) * 1000)}
            except (OSError, ValueError):
                return  # closed under us: stopping
            if self._wake_r in ready:
                os.read(self._wake_r, 512)
            if self._sock is not None and self._sock.fileno() in ready:
                self._receive_batch(self._sock, answer=True)
            if self._query is not None and self._query.fileno() in ready:
                self._receive_batch(self._query, answer=False)

    def _receive_batch(self, sock: socket.socket, *, answer: bool) -> None:
        assert self._filter is not None and self._host is not None
        for _ in range(_BATCH):
            try:
                packet, (source_ip, source_port) = sock.recvfrom(MAX_ANNOUNCE_LEN + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error queued by an earlier send
                log.debug("udp discovery receive: %s", exc)
                return
            self.received += 1
            if is_solicitation(packet):
                if answer and self.announcing and self._limiter.allow(
                        packet, source_ip, time.monotonic()):
                    self._answer(source_ip, source_port)
                continue
            announce = self._filter.accept(packet, source_ip, time.monotonic())
            if announce is None:
                continue
            extra = {"nameplates": announce.nameplates} if announce.nameplates else {}
            try:
                self._host.peer_seen(announce.peer_id, (announce.address, announce.port),
                                     source=self.source, ttl_s=3 * announce.interval_s,
                                     **extra)
            except Exception:  # noqa: BLE001 -- a bad hint must not end discovery
                log.exception("handling an announce from %s failed", announce.peer_id.short)

    def _answer(self, source_ip: str, source_port: int) -> None:
        """Our announce, by unicast to a solicitation's source, if it is on our network."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((source_ip, source_port))  # no traffic: the route's source
                local_ip = probe.getsockname()[0]
            except OSError as exc:
                log.debug("no route to answer %s: %s", source_ip, exc)
                return
        if not self.on_lan(source_ip, local_ip):
            self._limiter.dropped["off_subnet"] = self._limiter.dropped.get("off_subnet", 0) + 1
            return
        packet = self._announce_from(local_ip)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
                out.bind((local_ip, 0))
                out.sendto(packet, (source_ip, source_port))
            self.answered += 1
        except OSError as exc:
            log.debug("answering %s failed: %s", source_ip, exc)

    def on_lan(self, source_ip: str, local_ip: str) -> bool:
        """Is ``source_ip``, which reached us at ``local_ip``, on the LAN we announce
        on: a selected subnet (with ``targets``: loopback or a target host), never a
        reflector or a scanner far away? Solicitations are answered, and an invite's
        short-code attempts taken (issue 21), only from there."""
        if self.targets is not None:
            try:
                source = ipaddress.ip_address(normalize_ip(source_ip))
            except ValueError:
                return False
            return source.is_loopback or any(h == source_ip for h, _ in self.targets)
        return on_subnet(source_ip, local_ip, host_interfaces(self.interfaces))

    def _announce_from(self, address: str) -> bytes:
        """Our signed announce from ``address``, with a fresh counter and the nameplates
        of the node's open invites, if any."""
        host = self._host
        assert host is not None
        self._counter = next_counter(self._counter, time.time_ns() // 1_000_000)
        nameplates: tuple[int, ...] = getattr(host, "open_nameplates", tuple)()  # own hosts
        return encode_announce(host.sign, host.id, port=host.port, counter=self._counter,
                               interval_s=self.interval_s, address=address,
                               nameplates=tuple(nameplates))

    def _send_solicitations(self) -> None:
        query = self._query
        assert query is not None
        nonce = os.urandom(16)
        self._limiter.sent(nonce)
        packet = encode_solicitation(nonce)
        try:
            destinations = [d for _, d in self._destinations()]
        except Exception:  # noqa: BLE001 -- unreadable interfaces: nothing to ask
            log.exception("listing interfaces for solicitations failed")
            return
        for destination in destinations:
            try:
                query.sendto(packet, destination)
                self.solicited += 1
            except OSError as exc:
                log.debug("solicitation to %s failed: %s", destination, exc)

    def _destinations(self) -> list[tuple[str, tuple[str, int]]]:
        """(source address, destination) for each announce to send now."""
        if self.targets is not None:
            found = []
            for target in self.targets:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    try:
                        probe.connect(target)  # no traffic: asks the kernel for the route
                    except OSError as exc:
                        log.debug("no route to announce target %s: %s", target, exc)
                        continue
                    found.append((probe.getsockname()[0], target))
            return found
        return [(a.ip, (a.broadcast, self.port)) for a in host_interfaces(self.interfaces)
                if a.broadcast is not None]

    def _send_announces(self) -> None:
        try:
            destinations = self._destinations()
        except Exception:  # noqa: BLE001 -- unreadable interfaces: try again next interval
            log.exception("listing interfaces for announces failed")
            return
        for source_ip, destination in destinations:
            packet = self._announce_from(source_ip)
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
                    out.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                    out.bind((source_ip, 0))
                    out.sendto(packet, destination)
                self.sent += 1
            except OSError as exc:  # an interface going away mid-announce
                log.debug("announce from %s to %s failed: %s", source_ip, destination, exc)


def _is_loopback(host: str) -> bool:
    """Is ``host`` (an address, or ``localhost``) this machine's loopback?"""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"
