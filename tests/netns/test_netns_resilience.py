"""Real address changes, inside network namespaces this test creates and deletes."""

from __future__ import annotations

import time

import pytest

from tests.conftest import wait_until
from tests.netns_lab import Lab, require_netns

pytestmark = pytest.mark.netns


@pytest.fixture
def lab():
    require_netns()
    with Lab(2) as lab:
        yield lab


def _linked(lab, tmp_path):
    a = lab.agent(0, tmp_path / "a")
    b = lab.agent(1, tmp_path / "b")
    a.request(op="pair", peer=b.id)
    b.request(op="pair", peer=a.id)
    b.request(op="connect", peer=a.id, host=lab.address(0), port=a.port)
    assert b.request(op="call", peer=a.id, name="echo", args="hi") == "hi"
    return a, b


def test_an_address_change_is_noticed_and_the_link_is_back_within_5s(lab, tmp_path):
    a, b = _linked(lab, tmp_path)
    assert b.request(op="link", peer=a.id)["local"] == lab.address(1)
    lab.ip(1, "addr", "del", f"{lab.address(1)}/24", "dev", "eth0")
    lab.ip(1, "addr", "add", "10.77.0.99/24", "dev", "eth0")
    changed_at = time.monotonic()

    def back() -> bool:
        link = b.request(op="link", peer=a.id)
        if not link or link["local"] != "10.77.0.99":
            return False
        return b.request(op="call", peer=a.id, name="echo", args="again", timeout=1) == "again"

    assert wait_until(back, timeout_s=5, interval_s=0.05)
    assert time.monotonic() - changed_at < 5


def test_a_docker_like_bridge_appearing_drops_no_link(lab, tmp_path):
    a, b = _linked(lab, tmp_path)
    before = b.request(op="link", peer=a.id)
    lab.ip(1, "link", "add", "docker0", "type", "bridge")
    lab.ip(1, "addr", "add", "172.17.0.1/16", "dev", "docker0")
    lab.ip(1, "link", "set", "docker0", "up")
    lab.ip(1, "link", "add", "veth9f3c", "type", "veth", "peer", "name", "veth9f3d")
    lab.ip(1, "addr", "add", "172.18.0.1/16", "dev", "veth9f3c")
    polls = b.request(op="polls")
    assert wait_until(lambda: b.request(op="polls") >= polls + 3, timeout_s=5)
    assert b.request(op="link", peer=a.id) == before
    assert b.request(op="call", peer=a.id, name="echo", args=1) == 1
