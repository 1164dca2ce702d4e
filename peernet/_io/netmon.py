"""Network monitor: notices when this host's addresses change.

A node needs to know two things: an address one of its links uses has vanished (that
link is dead even if TCP has not noticed), and the network changed at all (offline
peers may be reachable now, so redial at once instead of waiting out the backoff).

:class:`NetworkMonitor` is the small interface; :class:`PollingMonitor` polls with
ifaddr. A host application that gets change events from its platform (a phone, a
desktop network manager) can pass its own object with ``start``/``stop`` instead.

Noise is filtered out by default, because the original PeerNet tore every link down
whenever *anything* changed: loopback, docker/veth/bridge and similar virtual
interfaces, link-local addresses (169.254/16, fe80::/10) and IPv6 temporary (privacy)
addresses, which rotate on their own.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

__all__ = [
    "NetworkChange",
    "NetworkMonitor",
    "PollingMonitor",
    "DEFAULT_IGNORED_INTERFACES",
    "select_addresses",
    "select_interfaces",
    "host_interfaces",
    "LocalAddress",
    "normalize_ip",
    "on_subnet",
    "START_DELAY_S",
]

log = logging.getLogger(__name__)

#: Interface name prefixes that are virtual plumbing, not the host's own networks.
DEFAULT_IGNORED_INTERFACES = ("lo", "docker", "veth", "br-", "virbr", "vboxnet", "vmnet",
                              "cni", "flannel", "podman", "lxcbr", "lxdbr")
_IFA_F_TEMPORARY = 0x01
#: A node starts its polling monitor this long after it started (at most one interval):
#: one that lives for less (a one-shot command) never starts that thread nor reads the
#: interfaces (~1 ms of ifaddr and its import), and its first call does not compete
#: with that for the CPU. Changes in that first moment are part of the first reading.
START_DELAY_S = 1.0


@dataclass(frozen=True, slots=True)
class NetworkChange:
    added: frozenset[str]
    removed: frozenset[str]
    current: frozenset[str]


class NetworkMonitor(Protocol):
    """Anything that calls ``on_change`` when the host's usable addresses change."""

    def start(self, on_change: Callable[[NetworkChange], None]) -> None: ...
    def stop(self, timeout_s: float) -> None: ...


def normalize_ip(ip: str) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 (``::ffff:a.b.c.d``) becomes IPv4."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _is_bridge(name: str) -> bool:
    return os.path.isdir(f"/sys/class/net/{name}/bridge")


def _temporary_ipv6() -> set[str]:
    """IPv6 addresses flagged temporary (privacy extensions), from /proc on Linux."""
    found: set[str] = set()
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 5 and int(fields[4], 16) & _IFA_F_TEMPORARY:
                    raw = fields[0]
                    found.add(str(ipaddress.IPv6Address(int(raw, 16))))
    except OSError:
        pass
    return found


@dataclass(frozen=True, slots=True)
class LocalAddress:
    """One usable address of this host: interface name, address text, prefix length."""

    interface: str
    ip: str
    prefix_len: int

    @property
    def broadcast(self) -> str | None:
        """The directed broadcast address of an IPv4 subnet (None for IPv6 or a /31-/32)."""
        net = ipaddress.ip_network(f"{self.ip}/{self.prefix_len}", strict=False)
        if net.version != 4 or net.prefixlen >= 31:
            return None
        return str(net.broadcast_address)


def on_subnet(source_ip: str, local_ip: str, addresses: Iterable[LocalAddress]) -> bool:
    """Is ``source_ip`` a neighbour on the LAN of ``local_ip`` (the address it reached
    us at), one of ``addresses``, an IPv4 subnet with a broadcast address? The one test
    of "our own network": UDP discovery answers solicitations only from there, and an
    invite takes short-code attempts only from there (through the discovery sources'
    ``on_lan``)."""
    try:
        source = ipaddress.ip_address(normalize_ip(source_ip))
        local = normalize_ip(local_ip)
    except ValueError:
        return False
    return any(a.ip == local and a.broadcast is not None
               and source in ipaddress.ip_network(f"{a.ip}/{a.prefix_len}", strict=False)
               for a in addresses)


def select_interfaces(
    adapters: Iterable[object],
    *,
    ignored_interfaces: tuple[str, ...] = DEFAULT_IGNORED_INTERFACES,
    is_bridge: Callable[[str], bool] = _is_bridge,
    temporary: set[str] | None = None,
    interfaces: Iterable[str] | None = None,
) -> list[LocalAddress]:
    """The addresses that count, from ifaddr-style adapters (``.name``,
    ``.ips[].ip``, ``.ips[].network_prefix``).

    ``interfaces`` (names or addresses), when given, selects exactly those instead of
    the default exclusions (loopback and link-local are still dropped).
    """
    temporary = _temporary_ipv6() if temporary is None else temporary
    wanted = None if interfaces is None else frozenset(interfaces)
    chosen: list[LocalAddress] = []
    for adapter in adapters:
        name = str(getattr(adapter, "name", ""))
        for ip in getattr(adapter, "ips", ()):
            raw = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                addr = ipaddress.ip_address(normalize_ip(raw))
            except ValueError:
                continue
            if addr.is_loopback or addr.is_link_local or addr.is_unspecified:
                continue
            text = str(addr)
            if wanted is not None:
                if name not in wanted and text not in wanted:
                    continue
            elif name.startswith(ignored_interfaces) or is_bridge(name) or text in temporary:
                continue
            prefix = getattr(ip, "network_prefix", None)
            chosen.append(LocalAddress(name, text, prefix if isinstance(prefix, int)
                                       else addr.max_prefixlen))
    return chosen


def select_addresses(adapters: Iterable[object], **options: object) -> frozenset[str]:
    """The addresses of :func:`select_interfaces`, as a set of strings."""
    return frozenset(a.ip for a in select_interfaces(adapters, **options))  # type: ignore[arg-type]


def host_interfaces(interfaces: Iterable[str] | None = None) -> list[LocalAddress]:
    """This host's usable addresses right now (ifaddr), selected as above."""
    import ifaddr

    return select_interfaces(ifaddr.get_adapters(), interfaces=interfaces)


def interface_names() -> list[str]:
    """The names of this host's interfaces (ifaddr), usable or not, sorted: for an
    error that says which names exist."""
    import ifaddr

    return sorted({str(a.name) for a in ifaddr.get_adapters()})


class PollingMonitor:
    """Polls the host's interfaces with ifaddr every ``interval_s`` seconds."""

    def __init__(self, interval_s: float = 5.0, *,
                 probe: Callable[[], frozenset[str]] | None = None) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self._probe = probe or self._ifaddr_probe
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: How many polls have completed (tests wait on it instead of sleeping).
        self.polls = 0

    @staticmethod
    def _ifaddr_probe() -> frozenset[str]:
        return frozenset(a.ip for a in host_interfaces())

    def start(self, on_change: Callable[[NetworkChange], None]) -> None:
        self._thread = threading.Thread(target=self._run, args=(on_change,),
                                        name="peernet-netmon", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _run(self, on_change: Callable[[NetworkChange], None]) -> None:
        try:
            current = self._probe()
        except Exception:  # noqa: BLE001 -- no interfaces readable: start from nothing
            log.exception("reading network interfaces failed")
            current = frozenset()
        while not self._stop.wait(self.interval_s):
            try:
                new = self._probe()
            except Exception:  # noqa: BLE001
                log.exception("reading network interfaces failed")
                continue
            self.polls += 1
            if new != current:
                change = NetworkChange(new - current, current - new, new)
                current = new
                try:
                    on_change(change)
                except Exception:  # noqa: BLE001
                    log.exception("network change handler failed")
