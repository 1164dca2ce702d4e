"""mDNS discovery without a network: the signed TXT record (pure), the missing-extra
error, and MdnsDiscovery's bookkeeping driven through a fake zeroconf module (nothing
here opens a socket)."""

from __future__ import annotations

import base64
import enum
import sys
import threading
import types
from typing import Any

import pytest

from peernet.discovery import make_discoveries
from peernet.errors import PeerNetError, ProtocolError
from peernet.identity import Identity
from peernet._proto.mdns_record import (
    SERVICE_TYPE,
    RecordFilter,
    build_txt,
    choose_address,
    decode_txt,
    instance_name,
    server_name,
)
from tests.conftest import wait_until

ME = Identity.from_seed(bytes(range(32)))
OTHER = Identity.from_seed(bytes(range(1, 33)))


def txt(identity: Identity = OTHER, *, port: int = 4321, seq: int = 7,
        addresses: tuple[str, ...] = ("10.0.0.5",)) -> dict[bytes, bytes | None]:
    """As python-zeroconf hands properties over: bytes keys and values."""
    built = build_txt(identity.sign, identity.peer_id, port=port, seq=seq, addresses=addresses)
    return {k.encode(): v.encode() for k, v in built.items()}


# -- the record --------------------------------------------------------------------------


def test_round_trip():
    props = txt(addresses=("10.0.0.5", "192.168.1.9"))
    assert list(props)[0] == b"txtvers"
    record = decode_txt(props, 4321)
    assert record.peer_id == OTHER.peer_id
    assert (record.port, record.seq) == (4321, 7)
    assert record.addresses == ("10.0.0.5", "192.168.1.9")
    assert len(b"".join(k + b"=" + v for k, v in props.items())) < 300


def test_str_properties_and_address_order_do_not_matter():
    built = build_txt(OTHER.sign, OTHER.peer_id, port=1, seq=0, addresses=["10.0.0.2", "10.0.0.1"])
    swapped = dict(built, addr="10.0.0.1,10.0.0.2")
    assert decode_txt(swapped, 1).addresses == ("10.0.0.1", "10.0.0.2")


def test_names_are_our_own():
    short = OTHER.peer_id.short[3:]
    assert instance_name(OTHER.peer_id) == f"pn-{short}._peernet._tcp.local."
    assert server_name(OTHER.peer_id) == f"pn-{short}.local."
    assert SERVICE_TYPE == "_peernet._tcp.local."


@pytest.mark.parametrize("change", [
    lambda p: {"port": 4322},
    lambda p: {"props": {**p, b"addr": b"10.0.0.6"}},
    lambda p: {"props": {**p, b"addr": b"10.0.0.5,10.0.0.6"}},
    lambda p: {"props": {**p, b"seq": b"8"}},
    lambda p: {"props": {**p, b"pk": str(ME.peer_id).encode()}},
    lambda p: {"props": {**p, b"sig": base64.b64encode(bytes(64))}},
    lambda p: {"props": {**p, b"sig": base64.b64encode(ME.sign(b"x"))}},
], ids=["port", "address", "added-address", "seq", "pk", "zero-sig", "other-sig"])
def test_tampering_is_rejected(change):
    props = txt()
    args = {"props": props, "port": 4321, **change(props)}
    with pytest.raises(ProtocolError):
        decode_txt(args["props"], args["port"])


def test_a_record_re_signed_by_another_key_is_rejected():
    forged = txt(ME)
    forged[b"pk"] = str(OTHER.peer_id).encode()
    with pytest.raises(ProtocolError, match="signature"):
        decode_txt(forged, 4321)


@pytest.mark.parametrize("key", [b"txtvers", b"pk", b"proto", b"seq", b"addr", b"sig"])
def test_every_key_is_required_with_a_value(key):
    props = txt()
    with pytest.raises(ProtocolError):
        decode_txt({k: v for k, v in props.items() if k != key}, 4321)
    with pytest.raises(ProtocolError):
        decode_txt({**props, key: None}, 4321)


def test_unknown_keys_are_ignored_but_bounded():
    props = {**txt(), b"net": b"abc", b"flag": None}
    assert decode_txt(props, 4321).peer_id == OTHER.peer_id
    many = {**txt(), **{f"k{i}".encode(): b"v" for i in range(20)}}
    with pytest.raises(ProtocolError, match="keys"):
        decode_txt(many, 4321)


@pytest.mark.parametrize("key, value", [
    (b"txtvers", b"2"), (b"proto", b"9"), (b"pk", b"pn1notakey"),
    (b"pk", str(OTHER.peer_id).upper().encode()),  # parses, but is not canonical
    (b"seq", b"-1"), (b"seq", b"1" * 21), (b"seq", str(1 << 64).encode()), (b"seq", b"x"),
    (b"addr", b""), (b"addr", b"10.0.0.5,10.0.0.5"), (b"addr", b"not-an-ip"),
    (b"addr", b"224.0.0.251"), (b"addr", b"0.0.0.0"),
    (b"addr", ",".join(f"10.0.0.{i}" for i in range(1, 10)).encode()),
    (b"sig", b"A" * 87), (b"sig", b"!" * 88), (b"pk", "pn1é".encode()),
], ids=repr)
def test_malformed_values_are_rejected(key, value):
    with pytest.raises(ProtocolError):
        decode_txt({**txt(), key: value}, 4321)


def test_oversized_values_are_rejected():
    with pytest.raises(ProtocolError, match="255"):
        decode_txt({**txt(), b"note": b"x" * 300}, 4321)
    with pytest.raises(ValueError):
        build_txt(OTHER.sign, OTHER.peer_id, port=1, seq=0,
                  addresses=[f"10.0.0.{i}" for i in range(1, 10)])


@pytest.mark.parametrize("port", [0, 65536, "80", None])
def test_bad_ports(port):
    with pytest.raises(ProtocolError):
        decode_txt(txt(), port)
    with pytest.raises(ValueError):
        build_txt(OTHER.sign, OTHER.peer_id, port=port, seq=0, addresses=["10.0.0.1"])


def test_ipv6_and_mapped_addresses():
    props = txt(addresses=("2001:db8::5", "::ffff:10.0.0.5"))
    assert decode_txt(props, 4321).addresses == ("2001:db8::5", "10.0.0.5")


def test_filter_drops_own_stale_and_invalid_and_forgets():
    f = RecordFilter(ME.peer_id, remember_s=10)
    assert f.accept(txt(ME), 4321, 0.0) is None
    assert f.accept(txt(seq=5), 4321, 0.0).seq == 5
    assert f.accept(txt(seq=5), 4321, 1.0).seq == 5  # the same record again is fine
    assert f.accept(txt(seq=4), 4321, 2.0) is None  # a replayed older one is not
    assert f.accept({**txt(), b"sig": b"A" * 88}, 4321, 2.0) is None
    assert f.accept(txt(seq=1), 4321, 11.0).seq == 1  # forgotten after remember_s
    assert f.dropped == {"own": 1, "stale": 1, "invalid": 1}


def test_filter_is_bounded():
    f = RecordFilter(ME.peer_id, max_peers=4)
    for _ in range(10):
        assert f.accept(txt(Identity.generate()), 4321, 0.0) is not None
    assert len(f._senders) == 4


def test_choose_address_only_returns_signed_ones():
    signed = ["192.168.1.9", "10.0.0.5"]
    assert choose_address(signed, [], ["10.0.0.1/24"]) == "10.0.0.5"
    assert choose_address(signed, ["10.0.0.5"], []) == "10.0.0.5"
    assert choose_address(signed, [], []) == "192.168.1.9"
    assert choose_address(signed, ["172.16.0.66"], ["172.16.0.1/16"]) == "192.168.1.9"
    assert choose_address([], ["10.0.0.5"], ["10.0.0.1/24"]) is None


# -- zeroconf missing --------------------------------------------------------------------


def test_without_zeroconf_asking_for_mdns_names_the_extra(monkeypatch, tmp_path):
    from peernet.discovery.mdns import MdnsDiscovery, MdnsUnavailable

    monkeypatch.setitem(sys.modules, "zeroconf", None)  # import zeroconf -> ImportError
    for attempt in (MdnsDiscovery, lambda: make_discoveries("mdns")):
        with pytest.raises(MdnsUnavailable) as info:
            attempt()
        assert isinstance(info.value, ImportError) and isinstance(info.value, PeerNetError)
        assert 'pip install "peernet-py[mdns]"' in str(info.value)
    import peernet

    with pytest.raises(ImportError, match="peernet-py\\[mdns\\]"):
        peernet.Node(tmp_path / "n", discovery="mdns")
    assert not (tmp_path / "n").exists()  # failed before any side effect


def test_importing_peernet_does_not_import_zeroconf():
    import subprocess

    code = "import peernet, sys; print('zeroconf' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


# -- MdnsDiscovery against a fake zeroconf -----------------------------------------------


class FakeNet:
    """What the fake zeroconf "hears": name -> (port, properties, addresses)."""

    def __init__(self) -> None:
        self.services: dict[str, tuple[int, dict, list[str]]] = {}
        self.instances: list[Any] = []


def fake_zeroconf(net: FakeNet) -> types.ModuleType:
    mod = types.ModuleType("zeroconf")

    class IPVersion(enum.Enum):
        V4Only = 1

    class ServiceStateChange(enum.Enum):
        Added = 1
        Removed = 2
        Updated = 3

    class ServiceInfo:
        def __init__(self, type_, name, port=None, properties=None, server=None,
                     host_ttl=120, other_ttl=4500, *, parsed_addresses=None):
            self.type, self.name, self.port, self.server = type_, name, port, server
            self.properties = {k.encode(): v.encode() for k, v in (properties or {}).items()}
            self._addresses = list(parsed_addresses or [])
            self.host_ttl, self.other_ttl = host_ttl, other_ttl

        def load_from_cache(self, zc):
            if self.name not in net.services:
                return False
            self.port, self.properties, self._addresses = net.services[self.name]
            return True

        def request(self, zc, timeout):
            assert isinstance(timeout, int) and timeout >= 50  # milliseconds
            return self.load_from_cache(zc)

        def parsed_addresses(self):
            return list(self._addresses)

    class ServiceBrowser:
        def __init__(self, zc, type_, handlers):
            assert threading.current_thread().name == "peernet-mdns"
            self.zc, self.type, self.handlers = zc, type_, handlers
            self.cancelled = False
            zc.browser = self

        def fire(self, name, state):
            for h in self.handlers:
                h(zeroconf=self.zc, service_type=self.type, name=name, state_change=state)

        def cancel(self):
            self.cancelled = True

    class Zeroconf:
        def __init__(self, interfaces, ip_version, use_asyncio=None):
            assert threading.current_thread().name == "peernet-mdns"
            self.interfaces, self.ip_version, self.use_asyncio = interfaces, ip_version, use_asyncio
            self.registered: list[ServiceInfo] = []
            self.updated: list[ServiceInfo] = []
            self.unregistered: list[ServiceInfo] = []
            self.interface_updates: list[list[str]] = []
            self.closed = False
            net.instances.append(self)

        def register_service(self, info, cooperating_responders=False):
            self.registered.append(info)

        def update_service(self, info):
            self.updated.append(info)

        def unregister_service(self, info):
            self.unregistered.append(info)

        def update_interfaces(self, interfaces=None):
            self.interface_updates.append(interfaces)

        def close(self):
            self.closed = True

    for cls in (IPVersion, ServiceStateChange, ServiceInfo, ServiceBrowser, Zeroconf):
        setattr(mod, cls.__name__, cls)
    return mod


class RecordingHost:
    def __init__(self, identity: Identity = ME, port: int = 5000) -> None:
        self._identity = identity
        self.id = identity.peer_id
        self.port = port
        self.seen: list[tuple] = []
        self.lost: list[tuple] = []
        self.paired: frozenset = frozenset()

    def paired_peers(self):
        return self.paired

    def sign(self, message: bytes) -> bytes:
        return self._identity.sign(message)

    def peer_seen(self, peer, address, *, source, ttl_s):
        self.seen.append((peer, address, source, ttl_s))

    def peer_lost(self, peer, *, source):
        self.lost.append((peer, source))


@pytest.fixture
def fake(monkeypatch):
    from peernet.discovery import mdns
    from peernet._io.netmon import LocalAddress

    net = FakeNet()
    monkeypatch.setitem(sys.modules, "zeroconf", fake_zeroconf(net))
    net.local = [LocalAddress("eth0", "10.0.0.1", 24)]
    monkeypatch.setattr(mdns, "host_interfaces", lambda interfaces: list(net.local))
    return net


@pytest.fixture
def running(fake):
    from peernet.discovery.mdns import MdnsDiscovery

    disc = MdnsDiscovery(max_peers=8)
    host = RecordingHost()
    disc.start(host)
    zc = fake.instances[0]
    assert wait_until(lambda: zc.registered)
    yield disc, host, zc
    disc.stop(5.0)


def publish(net: FakeNet, identity: Identity, *, port: int = 4321, name: str | None = None,
            addresses: tuple[str, ...] = ("10.0.0.7",)) -> str:
    name = name or instance_name(identity.peer_id)
    net.services[name] = (port, txt(identity, port=port, addresses=addresses), list(addresses))
    return name


def test_registers_a_signed_record_on_our_own_host_name(running):
    disc, host, zc = running
    info = zc.registered[0]
    assert zc.interfaces == ["10.0.0.1"] and zc.use_asyncio is False
    assert info.name == instance_name(ME.peer_id) and info.server == server_name(ME.peer_id)
    assert info.port == 5000 and info.host_ttl == info.other_ttl == 120
    assert decode_txt(info.properties, 5000).addresses == ("10.0.0.1",)


def test_browse_events_become_hints(running, fake):
    disc, host, zc = running
    name = publish(fake, OTHER)
    zc.browser.fire(name, sys.modules["zeroconf"].ServiceStateChange.Added)
    assert wait_until(lambda: host.seen)
    assert host.seen == [(OTHER.peer_id, ("10.0.0.7", 4321), "mdns", None)]
    zc.browser.fire(name, sys.modules["zeroconf"].ServiceStateChange.Removed)
    assert wait_until(lambda: host.lost)
    assert host.lost == [(OTHER.peer_id, "mdns")]


def test_own_forged_and_unresolvable_records_are_not_reported(running, fake):
    disc, host, zc = running
    state = sys.modules["zeroconf"].ServiceStateChange
    own = publish(fake, ME)
    forged = publish(fake, OTHER, name="evil._peernet._tcp.local.")
    port, props, _ = fake.services[forged]
    fake.services[forged] = (port + 1, props, ["10.0.0.66"])  # SRV port moved
    for name in (own, forged, "ghost._peernet._tcp.local."):
        zc.browser.fire(name, state.Added)
    assert wait_until(lambda: sum(disc.dropped.values()) >= 3)
    assert host.seen == []
    assert disc.dropped == {"own": 1, "invalid": 1, "unresolved": 1}


def test_a_replay_under_another_name_reports_the_signed_address_and_one_goodbye_is_not_enough(
        running, fake):
    disc, host, zc = running
    state = sys.modules["zeroconf"].ServiceStateChange
    genuine = publish(fake, OTHER)
    replay = "evil._peernet._tcp.local."
    fake.services[replay] = (4321, fake.services[genuine][1], ["10.0.0.66"])  # A records lie
    zc.browser.fire(genuine, state.Added)
    zc.browser.fire(replay, state.Added)
    assert wait_until(lambda: len(host.seen) == 2)
    assert {s[1] for s in host.seen} == {("10.0.0.7", 4321)}
    zc.browser.fire(replay, state.Removed)  # the replayer leaves: the genuine name stays
    zc.browser.fire(genuine, state.Updated)
    assert wait_until(lambda: len(host.seen) == 3)
    assert host.lost == []


def test_records_that_expire_from_the_cache_are_lost(running, fake):
    disc, host, zc = running
    name = publish(fake, OTHER)
    zc.browser.fire(name, sys.modules["zeroconf"].ServiceStateChange.Added)
    assert wait_until(lambda: host.seen)
    del fake.services[name]  # no goodbye; the record just expires
    assert wait_until(lambda: host.lost, timeout_s=3)


def test_a_flood_is_bounded(running, fake):
    disc, host, zc = running
    state = sys.modules["zeroconf"].ServiceStateChange
    for i in range(300):
        zc.browser.fire(publish(fake, Identity.generate(), name=f"x{i}._peernet._tcp.local."),
                        state.Added)
    assert wait_until(lambda: not disc._pending)
    # Strangers share a small LRU budget: the least recently heard make room.
    assert len(disc._tracked) <= disc.max_strangers
    assert disc.dropped.get("stranger_evicted", 0) >= 300 - disc.max_strangers


def test_a_flood_of_strangers_never_crowds_out_a_paired_peer(running, fake):
    """300 validly signed records from throwaway keys used to fill every slot (256 by
    default), so a paired peer's record was never resolved."""
    disc, host, zc = running
    state = sys.modules["zeroconf"].ServiceStateChange
    host.paired = frozenset({OTHER.peer_id})
    for i in range(300):
        zc.browser.fire(publish(fake, Identity.generate(), name=f"x{i}._peernet._tcp.local."),
                        state.Added)
    zc.browser.fire(publish(fake, OTHER), state.Added)
    for i in range(300, 400):  # and the flood goes on
        zc.browser.fire(publish(fake, Identity.generate(), name=f"x{i}._peernet._tcp.local."),
                        state.Added)
    assert wait_until(lambda: any(seen[0] == OTHER.peer_id for seen in host.seen))
    assert wait_until(lambda: not disc._pending)
    assert instance_name(OTHER.peer_id) in disc._tracked
    assert len(disc._tracked) <= disc.max_strangers + 1


@pytest.mark.parametrize("paired_heard", ["after the strangers", "again after them"])
def test_a_paired_peers_name_is_resolved_before_any_strangers(running, fake, monkeypatch,
                                                               paired_heard):
    """Each queued stranger may cost resolve_timeout_s, so a paired name must not wait
    behind them: not when it is heard after them, and not when it announces again (a
    move to the back of one shared queue put it behind up to 32 strangers)."""
    disc, host, zc = running
    zeroconf = sys.modules["zeroconf"]
    state = zeroconf.ServiceStateChange
    host.paired = frozenset({OTHER.peer_id})
    gate, order = threading.Event(), []
    plain_request = zeroconf.ServiceInfo.request

    def request(self, zc, timeout):
        order.append(self.name)
        if self.name.startswith("blocker."):
            gate.wait(5)  # hold the mDNS thread while the queue fills
        return plain_request(self, zc, timeout)

    monkeypatch.setattr(zeroconf.ServiceInfo, "request", request)
    zc.browser.fire(publish(fake, Identity.generate(), name="blocker._peernet._tcp.local."),
                    state.Added)
    assert wait_until(lambda: order == ["blocker._peernet._tcp.local."])
    paired = publish(fake, OTHER)
    if paired_heard == "again after them":
        zc.browser.fire(paired, state.Added)
    strangers = [publish(fake, Identity.generate(), name=f"s{i}._peernet._tcp.local.")
                 for i in range(disc.max_strangers)]
    for name in strangers:
        zc.browser.fire(name, state.Added)
    zc.browser.fire(paired, state.Updated)
    gate.set()
    assert wait_until(lambda: len(order) == 2 + len(strangers))
    assert order[1] == paired, order
    assert host.seen[1][0] == OTHER.peer_id


def test_announce_follows_the_interfaces(running, fake):
    from peernet._io.netmon import LocalAddress

    disc, host, zc = running
    disc.announce()
    assert wait_until(lambda: zc.updated)  # same addresses: said again
    fake.local = [LocalAddress("eth0", "10.0.0.2", 24)]
    disc.announce()
    assert wait_until(lambda: len(zc.updated) == 2)
    assert zc.interface_updates == [["10.0.0.2"]]
    assert decode_txt(zc.updated[-1].properties, 5000).addresses == ("10.0.0.2",)


def test_stop_says_goodbye_and_closes(fake):
    from peernet.discovery.mdns import MdnsDiscovery

    disc = MdnsDiscovery()
    disc.start(RecordingHost())
    zc = fake.instances[0]
    assert wait_until(lambda: zc.registered)
    disc.stop(5.0)
    assert zc.unregistered and zc.closed and zc.browser.cancelled
    assert not disc._thread.is_alive()


def test_no_interface_yet_means_no_zeroconf_until_announce(fake):
    from peernet.discovery.mdns import MdnsDiscovery
    from peernet._io.netmon import LocalAddress

    fake.local = []
    disc = MdnsDiscovery()
    disc.start(RecordingHost())
    try:
        assert fake.instances == []
        fake.local = [LocalAddress("wlan0", "192.168.1.4", 24)]
        disc.announce()
        assert wait_until(lambda: fake.instances and fake.instances[0].registered)
    finally:
        disc.stop(5.0)


def test_bad_settings():
    from peernet.discovery.mdns import MdnsDiscovery

    for bad in ({"ttl_s": 0}, {"resolve_timeout_s": 0}, {"max_peers": 0}):
        with pytest.raises(ValueError):
            MdnsDiscovery(**bad)
