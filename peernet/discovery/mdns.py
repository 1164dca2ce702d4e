"""mDNS / DNS-SD discovery with python-zeroconf (``pip install "peernet-py[mdns]"``).

The node registers ``pn-<short id>._peernet._tcp.local.`` (host name
``pn-<short id>.local.``, never the machine's) with a signed TXT record (see
``peernet/_proto/mdns_record.py``) and browses the same type. Only the selected
interfaces' IPv4 addresses are used, both for zeroconf's sockets and in the record.

When the node needs a peer now (``solicit``), it asks from a port of its own, not 5353
(a one-shot query, RFC 6762 5.1): responders answer that by unicast, at once, and only
a socket of our own can be sure to get it. Every mDNS responder on a host shares port
5353, and the kernel hands a unicast datagram to that port to just one of them (15.1):
a QU question asked from 5353 had its answer go to another node or responder on the
same host, and this node found its peer only at its browser's next query, a second
later. The answers are fed to zeroconf as if its own socket had read them.

Threads: one ``peernet-mdns`` thread owns everything. It creates the ``Zeroconf``
instance, so zeroconf never attaches to an asyncio loop the application runs (a
notebook's): zeroconf then starts its private loop thread, and the browser has its own
thread. Browser callbacks only queue the name; resolving (from zeroconf's cache,
asking the network only if needed), verifying and reporting happen on
``peernet-mdns``. Once a second it also checks that the records of each peer it
reported are still in zeroconf's cache, so a peer that vanished without a goodbye is
lost when its records expire (``ttl_s``) rather than at zeroconf's next cleanup.
``stop`` sends goodbyes, closes zeroconf (which joins its threads) and joins ours.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import socket
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Iterable

from .._proto.announce import next_counter
from .._proto.mdns_record import (
    MAX_ADDRESSES,
    SERVICE_TYPE,
    RecordFilter,
    build_txt,
    choose_address,
    instance_name,
    server_name,
)
from ..errors import PeerNetError
from ..ids import PeerId
from .._io.netmon import LocalAddress, host_interfaces, on_subnet

if TYPE_CHECKING:
    from . import DiscoveryHost

__all__ = ["MdnsDiscovery", "MdnsUnavailable"]

log = logging.getLogger(__name__)

_INSTALL_HINT = 'mDNS discovery needs python-zeroconf: pip install "peernet-py[mdns]"'
#: How often the records of reported peers are checked against zeroconf's cache.
_CHECK_INTERVAL_S = 1.0
#: solicit() asks the network at most this often (RFC 6762 5.2: no faster than 1 s).
_SOLICIT_MIN_INTERVAL_S = 1.0
_TYPE_PTR, _CLASS_IN = 12, 1
_MDNS_GROUP, _MDNS_PORT = "224.0.0.251", 5353
#: How long a one-shot query's socket waits for answers (they come by unicast, at once).
_ANSWER_WINDOW_S = 1.0
#: The largest mDNS packet (RFC 6762 17), and how many one read-readiness takes.
_MAX_PACKET = 9000
_PACKETS_PER_WAKEUP = 16


class MdnsUnavailable(PeerNetError, ImportError):
    """mDNS discovery was asked for but python-zeroconf is not installed."""


def _import_zeroconf() -> Any:
    try:
        import zeroconf
    except ImportError as exc:
        raise MdnsUnavailable(_INSTALL_HINT) from exc
    return zeroconf


class MdnsDiscovery:
    """mDNS / DNS-SD discovery (``Node(discovery="mdns")``), with python-zeroconf.

    :param interfaces: interface names or addresses to use; default: every IPv4
        interface except loopback, link-local and virtual ones (docker, veth, bridges).
    :param ttl_s: TTL of the records we publish (120 s, RFC 6762's for host records).
        A node that vanishes without a goodbye is forgotten by others this long after
        they last heard it; browsers refresh live records before they expire.
    :param resolve_timeout_s: how long to ask the network for a service's records when
        they did not come with its announcement.
    :param max_peers: how many paired peers' services are tracked and queued at most;
        more are ignored (a flood of records costs bounded memory and work).
    :param max_strangers: how many of those may be *unpaired* announcers (default 32,
        at most ``max_peers``). Keys are
        free, so strangers get a small budget of their own, least recently heard out
        first, and can never crowd out a paired peer's record; nor delay it, as paired
        peers' names wait in a queue of their own that is always resolved first.
    :param register: False: publish nothing about this node, only browse (and query
        when :meth:`solicit` is called): what a one-shot command wants.
    :raises MdnsUnavailable: python-zeroconf is not installed.
    """

    source = "mdns"
    #: Reports the nameplates of open invites it hears (issue 21).
    hears_invites = True

    def __init__(self, *, interfaces: Iterable[str] | None = None, ttl_s: float = 120.0,
                 resolve_timeout_s: float = 1.0, max_peers: int = 256,
                 max_strangers: int | None = None, register: bool = True) -> None:
        self._zc_mod = _import_zeroconf()
        if not 1 <= float(ttl_s) <= 4500:
            raise ValueError(f"ttl_s must be 1 .. 4500 seconds, got {ttl_s!r}")
        if not 0.05 <= float(resolve_timeout_s) <= 10:
            raise ValueError(f"resolve_timeout_s must be 0.05 .. 10 seconds, got {resolve_timeout_s!r}")
        if type(max_peers) is not int or max_peers < 1:
            raise ValueError(f"max_peers must be a positive int, got {max_peers!r}")
        if max_strangers is None:
            max_strangers = min(32, max_peers)
        if type(max_strangers) is not int or not 1 <= max_strangers <= max_peers:
            raise ValueError(f"max_strangers must be an int in 1 .. max_peers, "
                             f"got {max_strangers!r}")
        self.interfaces = None if interfaces is None else tuple(interfaces)
        self.ttl_s = int(round(float(ttl_s)))
        self.resolve_timeout_s = float(resolve_timeout_s)
        self.max_peers = max_peers
        self.max_strangers = max_strangers
        self._paired_names: tuple[frozenset[PeerId], frozenset[str]] = (frozenset(), frozenset())
        self._host: DiscoveryHost | None = None
        self._filter: RecordFilter | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._announce_now = False
        self._solicit_now = False
        self._solicited_at = -_SOLICIT_MIN_INTERVAL_S
        #: One-shot query sockets still waiting for answers -> what ends them (on
        #: zeroconf's loop). Guarded by its lock: the loop and our thread both use it.
        self._queries: dict[socket.socket, Any] = {}
        self._queries_lock = threading.Lock()
        self.registering = bool(register)
        #: name -> "resolve" | "removed": work queued by the browser (bounded), paired
        #: peers' names in a queue of their own that is always worked first.
        self._pending_paired: OrderedDict[str, str] = OrderedDict()
        self._pending_strangers: OrderedDict[str, str] = OrderedDict()
        #: name -> peer it resolved to (for Removed and the expiry check).
        self._tracked: dict[str, PeerId] = {}
        # Owned by the peernet-mdns thread:
        self._zc: Any = None
        self._browser: Any = None
        self._info: Any = None
        self._published: tuple[LocalAddress, ...] = ()
        self._seq = 0
        #: Statistics (tests and debugging).
        self.registered = 0
        self.resolved = 0
        self.ignored: dict[str, int] = {}

    @property
    def carries_invites(self) -> bool:
        """Does it publish this node's open invites (issue 21)? Only if it registers."""
        return self.registering

    @property
    def dropped(self) -> dict[str, int]:
        """Records and events that did not count, by reason."""
        found = dict(self.ignored)
        if self._filter is not None:
            for reason, count in self._filter.dropped.items():
                found[reason] = found.get(reason, 0) + count
        return found

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    # -- the Discovery interface -----------------------------------------------------------

    def start(self, host: DiscoveryHost) -> None:
        if self._thread is not None:
            raise RuntimeError("MdnsDiscovery can be started once")
        self._host = host
        self._filter = RecordFilter(host.id, max_peers=self.max_peers, remember_s=self.ttl_s)
        self._thread = threading.Thread(target=self._run, name="peernet-mdns", daemon=True)
        self._thread.start()
        # Wait for zeroconf's sockets (not for registration), so a failure is raised here.
        if not self._ready.wait(10.0):
            log.warning("mDNS discovery is slow to start; continuing in the background")
        if self._failure is not None:
            self._thread.join(5.0)
            raise self._failure

    def announce(self) -> None:
        with self._cond:
            self._announce_now = True
            self._cond.notify()

    def solicit(self) -> None:
        """Ask the network now for every ``_peernet._tcp`` service (a native PTR query,
        asking for unicast answers), so a fresh node hears its peers at once. Names no
        peer: the same question the browser asks at start. At most once a second."""
        with self._cond:
            self._solicit_now = True
            self._cond.notify()

    def stop(self, timeout_s: float) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    # -- browser callback (on zeroconf's browser thread: queue only, never block) ---------

    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        kind = "removed" if state_change is self._zc_mod.ServiceStateChange.Removed else "resolve"
        paired = self._is_paired_name(name)
        with self._cond:
            if self._stop:
                return
            if paired:
                queue, other = self._pending_paired, self._pending_strangers
            else:
                queue, other = self._pending_strangers, self._pending_paired
            other.pop(name, None)  # paired or unpaired since it was queued
            if paired:
                if name not in queue and len(queue) >= self.max_peers:
                    self._ignore("queue_full")
                    return
                # A paired name keeps its place: announcing again never delays it, and
                # strangers' names wait behind every paired one (see _next_work).
            elif name in queue:
                queue.move_to_end(name)  # most recently heard last
            elif len(queue) >= self.max_strangers:
                queue.popitem(last=False)  # the least recently heard stranger
                self._ignore("stranger_evicted")
            queue[name] = kind
            self._cond.notify()

    @property
    def _pending(self) -> list[str]:
        """The queued names in the order they will be worked (tests and debugging)."""
        return [*self._pending_paired, *self._pending_strangers]

    def _next_work(self) -> tuple[str, str] | None:
        """The next queued name and its kind: paired peers' names first, so a paired
        peer is never stuck behind strangers that may each cost ``resolve_timeout_s``.
        Called with ``_cond`` held."""
        for queue in (self._pending_paired, self._pending_strangers):
            if queue:
                return queue.popitem(last=False)
        return None

    def _is_paired_name(self, name: str) -> bool:
        """Is ``name`` the service name of a peer we are paired with? (Names are derived
        from keys, so a stranger cannot take a paired peer's name without its key's
        short form, and its record would not verify anyway.)"""
        paired_peers = getattr(self._host, "paired_peers", None)  # a host of one's own
        if paired_peers is None:                                   # may not offer it
            return False
        paired = paired_peers()
        known, names = self._paired_names
        if paired is not known:
            names = frozenset(instance_name(p) for p in paired)
            self._paired_names = (paired, names)
        return name in names

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._open()
        except BaseException as exc:  # noqa: BLE001 -- reported by start()
            self._failure = exc
            self._ready.set()
            self._close()
            return
        self._ready.set()
        try:
            self._register()
            next_check = time.monotonic() + _CHECK_INTERVAL_S
            while True:
                with self._cond:
                    while not (self._stop or self._announce_now or self._pending_paired
                               or self._pending_strangers or self._solicit_now):
                        remaining = next_check - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                    if self._stop:
                        return
                    announce, self._announce_now = self._announce_now, False
                    solicit, self._solicit_now = self._solicit_now, False
                    work = self._next_work()
                if announce:
                    self._reannounce()
                if solicit:
                    self._query()
                if work is not None:
                    name, kind = work
                    if kind == "removed":
                        self._forget(name)
                    else:
                        self._resolve(name)
                if time.monotonic() >= next_check:
                    self._check_expired()
                    next_check = time.monotonic() + _CHECK_INTERVAL_S
        except Exception:  # noqa: BLE001 -- logged; discovery stops, the node goes on
            log.exception("mDNS discovery failed")
        finally:
            self._close()

    def on_lan(self, source_ip: str, local_ip: str) -> bool:
        """Is ``source_ip``, which reached us at ``local_ip``, on a LAN we publish on?
        An invite takes short-code attempts only from there (issue 21)."""
        return on_subnet(source_ip, local_ip, self._addresses())

    def _addresses(self) -> tuple[LocalAddress, ...]:
        found = [a for a in host_interfaces(self.interfaces) if ":" not in a.ip]
        return tuple(found[:MAX_ADDRESSES])

    def _open(self) -> None:
        """Create zeroconf and the browser (nothing if there is no usable address)."""
        self._published = self._addresses()
        if not self._published:
            log.info("mDNS discovery: no usable IPv4 interface yet")
            return
        zc_mod = self._zc_mod
        options: dict[str, Any] = {
            "interfaces": [a.ip for a in self._published],
            "ip_version": zc_mod.IPVersion.V4Only,
        }
        try:
            if "use_asyncio" in inspect.signature(zc_mod.Zeroconf).parameters:
                options["use_asyncio"] = False
        except (TypeError, ValueError):
            pass
        self._zc = zc_mod.Zeroconf(**options)
        self._browser = zc_mod.ServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._on_change])

    def _make_info(self) -> Any:
        host = self._host
        assert host is not None
        self._seq = next_counter(self._seq, time.time_ns() // 1_000_000)
        ips = [a.ip for a in self._published]
        nameplates = tuple(getattr(host, "open_nameplates", tuple)())  # a host of one's own
        txt = build_txt(host.sign, host.id, port=host.port, seq=self._seq, addresses=ips,
                        nameplates=nameplates)
        return self._zc_mod.ServiceInfo(
            SERVICE_TYPE, instance_name(host.id), port=host.port, properties=txt,
            server=server_name(host.id), parsed_addresses=ips,
            host_ttl=self.ttl_s, other_ttl=self.ttl_s)

    def _query(self) -> None:
        """Ask for every ``_peernet._tcp`` service now, from a port of our own on each
        published address (see the module docstring), at most once a second."""
        now = time.monotonic()
        zc = self._zc
        if zc is None or now - self._solicited_at < _SOLICIT_MIN_INTERVAL_S:
            return
        self._solicited_at = now
        query_id = secrets.randbelow(0xFFFF) + 1  # the answers echo it
        out = self._zc_mod.DNSOutgoing(0, False, query_id)  # a query (False: with its id)
        out.add_question(self._zc_mod.DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
        packets = out.packets()
        for address in self._published:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                socket.inet_aton(address.ip))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
                sock.bind((address.ip, 0))
                sock.setblocking(False)
                for packet in packets:
                    sock.sendto(packet, (_MDNS_GROUP, _MDNS_PORT))
            except OSError:
                log.debug("mDNS query on %s failed", address.ip, exc_info=True)
                sock.close()
                continue
            self._await_answers(zc, sock, query_id)

    def _await_answers(self, zc: Any, sock: socket.socket, query_id: int) -> None:
        """Have zeroconf's loop read the answers to a one-shot query on ``sock`` for
        ``_ANSWER_WINDOW_S``, and take them in as responses heard on 5353 are: into the
        cache, the browser told (which queues the names for us). Only answers from port
        5353 that echo ``query_id`` count; the socket is closed when the window ends or
        discovery stops, whichever comes first."""
        loop: Any = getattr(zc, "loop", None)

        def read() -> None:
            for _ in range(_PACKETS_PER_WAKEUP):
                try:
                    data, source = sock.recvfrom(_MAX_PACKET)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    end()
                    return
                try:
                    msg = self._zc_mod.DNSIncoming(data, source)
                    if (msg.valid and not msg.is_query() and msg.id == query_id
                            and source[1] == _MDNS_PORT):
                        zc.record_manager.async_updates_from_response(msg)
                except Exception:  # noqa: BLE001 -- a bad packet must not end discovery
                    log.debug("mDNS answer from %s dropped", source[0], exc_info=True)

        def end() -> None:  # on the loop
            with self._queries_lock:
                if self._queries.pop(sock, None) is None:
                    return
            loop.remove_reader(sock)
            sock.close()

        def start() -> None:  # on the loop
            with self._queries_lock:
                if sock not in self._queries:
                    return  # discovery stopped before this ran
            loop.add_reader(sock, read)
            loop.call_later(_ANSWER_WINDOW_S, end)

        with self._queries_lock:
            self._queries[sock] = end
        try:
            if loop is None:
                raise RuntimeError("zeroconf has no loop")
            loop.call_soon_threadsafe(start)
        except RuntimeError:  # no loop, or it is closed: no answers
            with self._queries_lock:
                self._queries.pop(sock, None)
            sock.close()

    def _end_queries(self) -> None:
        """Before zeroconf closes: have its loop, which may be reading them, close the
        one-shot queries' sockets (queued ahead of zeroconf's own close)."""
        with self._queries_lock:
            ends = list(self._queries.values())
        loop: Any = getattr(self._zc, "loop", None)
        if loop is None:
            return
        for end in ends:
            try:
                loop.call_soon_threadsafe(end)
            except RuntimeError:  # the loop is closed: _drop_queries closes them
                return

    def _drop_queries(self) -> None:
        """After zeroconf closed: close the sockets its loop did not close."""
        with self._queries_lock:
            socks, self._queries = list(self._queries), {}
        for sock in socks:
            sock.close()

    def _register(self) -> None:
        if self._zc is None or not self.registering:
            return
        info = self._make_info()
        # No probing: the name is derived from our key, so only our own key can claim
        # it (and a stale copy of our own record is simply replaced).
        self._zc.register_service(info, cooperating_responders=True)
        self._info = info
        self.registered += 1

    def _reannounce(self) -> None:
        """After a network change: follow the interfaces and publish the addresses."""
        addresses = self._addresses()
        if addresses == self._published and self._zc is not None:
            if self._info is not None:  # say it again (open invites may have changed)
                info = self._make_info()
                self._zc.update_service(info)
                self._info = info
            return
        if self._zc is not None and addresses and hasattr(self._zc, "update_interfaces"):
            self._published = addresses
            try:
                self._zc.update_interfaces(interfaces=[a.ip for a in addresses])
            except Exception:  # noqa: BLE001 -- fall back to a fresh instance
                log.debug("zeroconf update_interfaces failed; recreating", exc_info=True)
                self._reopen()
                return
            if not self.registering:
                return
            info = self._make_info()
            if self._info is None:
                self._zc.register_service(info, cooperating_responders=True)
                self.registered += 1
            else:
                self._zc.update_service(info)
            self._info = info
            return
        self._reopen()

    def _reopen(self) -> None:
        self._close()
        self._open()
        self._register()

    def _resolve(self, name: str) -> None:
        zc, host, filt = self._zc, self._host, self._filter
        if zc is None or host is None or filt is None:
            return
        if name not in self._tracked and not self._is_paired_name(name):
            strangers = [n for n in self._tracked if not self._is_paired_name(n)]
            if len(strangers) >= self.max_strangers:
                self._forget(strangers[0])  # the least recently heard stranger
                self._ignore("stranger_evicted")
        elif name not in self._tracked and sum(
                map(self._is_paired_name, self._tracked)) >= self.max_peers:
            self._ignore("too_many_peers")
            return
        info = self._zc_mod.ServiceInfo(SERVICE_TYPE, name)
        try:
            complete = info.request(zc, int(self.resolve_timeout_s * 1000))  # milliseconds
        except Exception:  # noqa: BLE001 -- zeroconf closing, or a bad name
            log.debug("resolving %r failed", name, exc_info=True)
            complete = False
        if not complete or info.port is None:
            self._ignore("unresolved")
            return
        record = filt.accept(info.properties, info.port, time.monotonic())
        if record is None:
            return
        resolved = info.parsed_addresses()
        local = [f"{a.ip}/{a.prefix_len}" for a in self._published]
        address = choose_address(record.addresses, resolved, local)
        if address is None:
            return
        self._tracked.pop(name, None)
        self._tracked[name] = record.peer_id  # most recently heard last
        self.resolved += 1
        extra = {"nameplates": record.nameplates} if record.nameplates else {}
        host.peer_seen(record.peer_id, (address, record.port), source=self.source, ttl_s=None,
                       **extra)

    def _forget(self, name: str) -> None:
        peer = self._tracked.pop(name, None)
        if peer is None or peer in self._tracked.values():
            return  # unknown, or another name still vouches for this peer
        if self._host is not None:
            self._host.peer_lost(peer, source=self.source)

    def _check_expired(self) -> None:
        """Lose peers whose records expired from zeroconf's cache (no goodbye came)."""
        zc = self._zc
        if zc is None:
            return
        for name in list(self._tracked):
            info = self._zc_mod.ServiceInfo(SERVICE_TYPE, name)
            try:
                alive = info.load_from_cache(zc)
            except Exception:  # noqa: BLE001
                alive = False
            if not alive:
                self._forget(name)

    def _close(self) -> None:
        """Goodbye, cancel the browser, close zeroconf (joins its threads)."""
        self._end_queries()  # queued on the loop before zeroconf's own close
        browser, self._browser = self._browser, None
        zc, self._zc = self._zc, None
        info, self._info = self._info, None
        if browser is not None:
            try:
                browser.cancel()
            except Exception:  # noqa: BLE001
                log.debug("cancelling the mDNS browser failed", exc_info=True)
        if zc is not None:
            if info is not None:
                try:
                    zc.unregister_service(info)  # goodbye: peers forget us at once
                except Exception:  # noqa: BLE001
                    log.debug("mDNS goodbye failed", exc_info=True)
            try:
                zc.close()
            except Exception:  # noqa: BLE001
                log.debug("closing zeroconf failed", exc_info=True)
        self._drop_queries()
        for name in list(self._tracked):
            self._forget(name)
