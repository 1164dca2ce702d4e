"""Fixtures of the attack suite: a target process, its trusted prober, and the report.

``make_env(**flags)`` starts a target (tests/procs/target_node.py) that trusts four
peers: B (an in-test Node, linked and used by the prober), A (an in-test Node that
tests connect through a proxy), and C and D (seeded identities for raw attackers that
are paired but hostile). Flags become command-line options (``handshake_timeout=1`` ->
``--handshake-timeout 1``).

Each test may ``record(...)`` what it measured; the table is printed at the end of the
run (it is the closing note's raw data).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

import peernet
from peernet.identity import Identity, load_or_create
from tests.conftest import wait_until
from tests.helpers import seeded_identity

from .harness import FrameProxy, Prober, RawPeer, Resources, Target

#: After an attack: threads and fds back within this of the baseline, RSS within 10 MiB.
SLACK_COUNT = 2
SLACK_RSS_KIB = 10 * 1024

REPORT: list[tuple[str, str]] = []


@dataclass
class Env:
    tmp: Path
    target: Target
    b: peernet.Node
    a_dir: Path
    c: Identity
    d: Identity
    baseline: Resources
    nodes: list[peernet.Node] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def raw(self, identity: Identity | None = None, src: str = "127.0.0.2") -> RawPeer:
        """A raw initiator (C by default) connected to the target; closed at teardown."""
        peer = RawPeer(identity or self.c, self.target.id, self.target.port, src)
        self.closers.append(peer.close)
        return peer

    def prober(self, interval_s: float = 0.02) -> Prober:
        return Prober(self.b, self.target.id, interval_s)

    def proxy(self, upstream_port: int | None = None, hook=None) -> FrameProxy:
        p = FrameProxy(self.target.port if upstream_port is None else upstream_port, hook)
        self.closers.append(p.close)
        return p

    def node_a(self, **settings: object) -> peernet.Node:
        settings.setdefault("host", "127.0.0.1")
        settings.setdefault("network_monitor", False)
        node = peernet.Node(self.a_dir, **settings)
        self.nodes.append(node)
        node.pair(self.target.id)
        return node

    def recovered(self, timeout_s: float = 5.0) -> Resources:
        """Wait until threads and fds are back near the baseline; return the deltas
        (asserting on RSS too)."""
        base = self.baseline

        def back() -> bool:
            r = self.target.resources()
            return (r.threads <= base.threads + SLACK_COUNT
                    and r.fds <= base.fds + SLACK_COUNT)

        ok = wait_until(back, timeout_s=timeout_s, interval_s=0.02)
        delta = self.target.resources().delta(base)
        assert ok, f"target did not return to its baseline: {delta}"
        assert delta.rss_kib < SLACK_RSS_KIB, f"target RSS grew: {delta}"
        assert self.target.alive()
        return delta


def _start(tmp: Path, flags: dict[str, object]) -> Env:
    b_dir, a_dir = tmp / "b", tmp / "a"
    b_id = load_or_create(b_dir).peer_id
    a_id = load_or_create(a_dir).peer_id
    c, d = seeded_identity("adversarial-C"), seeded_identity("adversarial-D")
    argv: list[str] = []
    for key, value in flags.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    target = Target(tmp / "target", [b_id, a_id, c.peer_id, d.peer_id], argv)
    try:
        b = peernet.Node(b_dir, host="127.0.0.1", network_monitor=False,
                         reconnect_initial=0.05, reconnect_max=0.5)
    except BaseException:
        target.close()
        raise
    env = Env(tmp, target, b, a_dir, c, d, Resources(0, 0, 0), nodes=[b])
    try:
        b.pair(target.id)
        b.connect(target.id, "127.0.0.1", target.port)
        assert b.call(target.id, "echo", "warm-up", timeout=5) == "warm-up"
        # Let the process settle (lazy imports, first allocations) before the baseline.
        for _ in range(20):
            b.call(target.id, "echo", "x" * 1000)
        time.sleep(0.05)
        env.baseline = target.resources()
    except BaseException:
        _stop(env)
        raise
    return env


def _stop(env: Env) -> None:
    for close in reversed(env.closers):
        close()
    for node in env.nodes:
        node.close()
    env.target.close()


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[Callable[..., Env]]:
    envs: list[Env] = []

    def factory(**flags: object) -> Env:
        env = _start(tmp_path / f"env{len(envs)}", flags)
        envs.append(env)
        return env

    yield factory
    for env in envs:
        _stop(env)
        # T15: the target's private key never reaches its logs, whatever happened.
        text = env.target.log() + env.target.stderr()
        for secret in env.target.secrets_hex():
            assert secret not in text, "the target logged its private key"


@pytest.fixture
def env(make_env) -> Env:
    """A target with default settings."""
    return make_env()


@pytest.fixture
def record(request) -> Callable[..., None]:
    """``record(text)``: one line of the measured-results table for this test."""

    def add(text: str) -> None:
        REPORT.append((request.node.name, text))

    return add


def pytest_terminal_summary(terminalreporter) -> None:
    if not REPORT:
        return
    terminalreporter.section("adversarial: measured results")
    for name, text in REPORT:
        terminalreporter.write_line(f"{name}: {text}")
