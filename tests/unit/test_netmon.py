import threading
from types import SimpleNamespace as NS

from peernet._io.netmon import (LocalAddress, NetworkChange, PollingMonitor, normalize_ip,
                                on_subnet, select_addresses)


def adapter(name, *ips):
    return NS(name=name, ips=[NS(ip=ip) for ip in ips])


ADAPTERS = [
    adapter("lo", "127.0.0.1", ("::1", 0, 0)),
    adapter("eth0", "192.0.2.10", ("2001:db8::10", 0, 0), ("fe80::1", 0, 2)),
    adapter("docker0", "172.17.0.1"),
    adapter("veth12ab", "10.200.0.1"),
    adapter("br-5f1e", "172.18.0.1"),
    adapter("wlan0", "169.254.3.4", "198.51.100.7", ("2001:db8::beef", 0, 0)),
    adapter("mybridge", "10.9.0.1"),
]


def test_default_selection_drops_loopback_virtual_link_local_and_temporary():
    got = select_addresses(ADAPTERS, is_bridge=lambda name: name == "mybridge",
                           temporary={"2001:db8::beef"})
    assert got == {"192.0.2.10", "2001:db8::10", "198.51.100.7"}


def test_explicit_interfaces_by_name_or_address():
    got = select_addresses(ADAPTERS, interfaces=("docker0", "198.51.100.7"),
                           is_bridge=lambda n: False, temporary=set())
    assert got == {"172.17.0.1", "198.51.100.7"}


def test_ipv4_mapped_addresses_normalise():
    assert normalize_ip("::ffff:10.0.0.2") == "10.0.0.2"
    assert normalize_ip("fe80::1%eth0") == "fe80::1"


def test_own_subnet_is_the_lan_of_the_address_reached():
    """The one "own network" test (UDP solicitation answers, short-code invite
    attempts): the source must be on the subnet of the local address it reached."""
    lan = [LocalAddress("eth0", "192.168.1.5", 24), LocalAddress("wg0", "10.8.0.2", 32),
           LocalAddress("eth1", "10.0.0.5", 16)]
    assert on_subnet("192.168.1.77", "192.168.1.5", lan)
    assert on_subnet("::ffff:192.168.1.77", "::ffff:192.168.1.5", lan)  # a dual-stack socket
    assert not on_subnet("192.168.2.77", "192.168.1.5", lan)  # routed from elsewhere
    assert not on_subnet("10.0.3.4", "192.168.1.5", lan)  # our other LAN, the wrong door
    assert on_subnet("10.0.3.4", "10.0.0.5", lan)
    assert not on_subnet("10.8.0.9", "10.8.0.2", lan)  # a /32 tunnel has no LAN
    assert not on_subnet("127.0.0.1", "127.0.0.1", lan)
    assert not on_subnet("not an ip", "192.168.1.5", lan) and not on_subnet("1.2.3.4", "", lan)


def test_polling_reports_only_real_changes():
    states = iter([frozenset({"a"}), frozenset({"a"}), frozenset({"b"})])
    last = frozenset({"b"})
    changes: list[NetworkChange] = []
    got = threading.Event()

    def probe():
        return next(states, last)

    def on_change(change):
        changes.append(change)
        got.set()

    mon = PollingMonitor(0.01, probe=probe)
    mon.start(on_change)
    try:
        assert got.wait(5)
    finally:
        mon.stop(5)
    assert changes == [NetworkChange(frozenset({"b"}), frozenset({"a"}), frozenset({"b"}))]
