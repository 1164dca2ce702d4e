"""Shared fixtures: node factories and the leak guard every test runs under."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

import peernet

# The journeys stop recipes with Ctrl-C (SIGINT), as a user at a terminal does. A suite
# started in the background by a non-interactive shell (`cmd &`) inherits SIGINT
# *ignored*, and so would every process it starts (an ignored signal survives exec):
# the recipes' processes would never see the Ctrl-C. A handler does not survive exec,
# so installing Python's own here gives them a terminal's default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def wait_until(predicate: Callable[[], object], timeout_s: float = 5.0,
               interval_s: float = 0.005) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout_s`` passes; returns its last truth."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def _peernet_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("peernet")]


def _open_fds() -> set[str]:
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add(f"{fd}:{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    return fds


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves peernet threads or sockets behind after close()."""
    threads_before = set(_peernet_threads())
    fds_before = _open_fds()
    yield
    ok = wait_until(lambda: not (set(_peernet_threads()) - threads_before), timeout_s=5.0)
    leaked = set(_peernet_threads()) - threads_before
    assert ok, f"threads left running: {sorted(t.name for t in leaked)}"
    wait_until(lambda: not [f for f in _open_fds() - fds_before if "socket:" in f], timeout_s=2.0)
    sockets = [f for f in _open_fds() - fds_before if "socket:" in f]
    assert not sockets, f"sockets left open: {sockets}"


@pytest.fixture
def umask0() -> Iterator[None]:
    """Run with umask 0, to prove file modes do not depend on the caller's umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., peernet.Node]]:
    """Factory for nodes on 127.0.0.1 with their own data dirs; all closed afterwards."""
    nodes: list[peernet.Node] = []
    counter = iter(range(1000))

    def factory(name: str | None = None, **settings: object) -> peernet.Node:
        settings.setdefault("host", "127.0.0.1")
        node = peernet.Node(tmp_path / (name or f"node{next(counter)}"), **settings)
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.close()


@pytest.fixture
def pair_of_nodes(make_node) -> tuple[peernet.Node, peernet.Node]:
    """Two nodes that trust each other; ``a`` knows ``b``'s address."""
    a, b = make_node("a"), make_node("b")
    a.pair(b.id, label="b")
    b.pair(a.id, label="a")
    a.connect(b.id, "127.0.0.1", b.port)
    return a, b


@pytest.fixture(scope="module", params=["python", "c"])
def codec_backend(request) -> Iterator[str]:
    """Runs every test of a module that uses it (``pytestmark =
    pytest.mark.usefixtures("codec_backend")``) once per codec backend: the pure-Python
    reference and the compiled accelerator (see tests/accel.py for when "c" fails or
    skips). Module scope, so hypothesis tests may use it."""
    from tests.accel import backend

    with backend(request.param):
        yield request.param
