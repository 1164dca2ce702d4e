"""A network-namespace lab: N hosts joined by a bridge that lives in the lab's own
namespace, so nothing touches the machine's real interfaces.

    with Lab(3) as lab:            # hosts 10.77.0.1 .. 10.77.0.3 on eth0
        agent = lab.agent(0, data_dir)
        lab.ip(1, "addr", "del", "10.77.0.2/24", "dev", "eth0")

Everything is deleted on exit, also when a test fails; namespaces left behind by a
killed run (their owning pid is gone) are removed when the next lab starts.

Several labs may run at once on one machine (parallel runs, several checkouts): every
name is unique per lab. Namespaces are ``<prefix><pid>x<random>-<checkout>...`` (the prefix is
``pnlab``, or ``$PEERNET_NETNS_PREFIX`` to tell one checkout's labs from another's), and
each veth pair is created with its ends already inside the two namespaces, so no
interface name ever exists in the machine's own namespace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SUBNET = "10.77.0"
_PREFIX = os.environ.get("PEERNET_NETNS_PREFIX", "pnlab")
ROOT = Path(__file__).resolve().parent.parent
#: The checkout's directory name, cut to what a namespace name may carry.
_CHECKOUT = re.sub(r"[^a-z0-9-]", "", ROOT.name.lower())[:24] or "lab"


def require_netns() -> None:
    """Skip (with the reason) where namespaces cannot be made."""
    if os.geteuid() != 0:
        pytest.skip("network namespace tests need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (the ip command) is not installed")


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


def _remove_stale() -> None:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(_PREFIX):
            pid = name[len(_PREFIX):].split("x", 1)[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                subprocess.run(["ip", "netns", "del", name], capture_output=True)


def stop_process(proc: subprocess.Popen) -> None:
    """Kill ``proc`` if it still runs, reap it and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for f in (proc.stdin, proc.stdout):
        if f:
            f.close()


class Agent:
    """A node in a namespace, driven by JSON lines (tests/procs/node_agent.py)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        info = self.request(op="info")
        self.id: str = info["id"]
        self.port: int = info["port"]
        #: time.monotonic() (system-wide) when the node had started.
        self.started: float = info["started"]

    def request(self, **command: Any) -> Any:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("agent exited")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply.get("ok")

    def stop(self) -> None:
        stop_process(self.proc)


def wait_for_one_link(x: Agent, y: Agent, timeout_s: float = 3.0) -> bool:
    """Wait until ``x`` and ``y`` use the same link and it is the only one either has to
    the other: no dial in progress, no duplicate retiring. (When both dial at once, as
    when each hears the other's first announce, both may use one link for a moment
    while the other dial is still in its handshake; the pair has settled only once that
    dial is done and the loser retired.)"""
    import time

    def links() -> list[Any]:
        return [x.request(op="links", peer=y.id), y.request(op="links", peer=x.id)]

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = links()
        lx, ly = x.request(op="link", peer=y.id), y.request(op="link", peer=x.id)
        if (lx and ly and lx["local_port"] == ly["remote"][1]
                and ly["local_port"] == lx["remote"][1]
                and all(side["links"] == 1 and not side["dialing"] for side in before)
                and links() == before):  # and no link came or went meanwhile
            return True
        time.sleep(0.02)
    return False


class Lab:
    def __init__(self, hosts: int) -> None:
        self.prefix = f"{_PREFIX}{os.getpid()}x{os.urandom(2).hex()}-{_CHECKOUT}"
        self.hosts = [f"{self.prefix}h{i}" for i in range(hosts)]
        self.bridge_ns = f"{self.prefix}br"
        self.agents: list[Agent] = []

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def __enter__(self) -> Lab:
        _remove_stale()
        try:
            _sh("ip", "netns", "add", self.bridge_ns)
            _sh("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            _sh("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
            for i, ns in enumerate(self.hosts):
                _sh("ip", "netns", "add", ns)
                # Both ends are born in their namespaces: names only need to be unique
                # there (a name made in the machine's namespace could clash with
                # another lab's, or with a real interface).
                bridge_end = f"v{i}"
                _sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth",
                    "peer", "name", bridge_end, "netns", self.bridge_ns)
                _sh("ip", "-n", self.bridge_ns, "link", "set", bridge_end, "master", "br0", "up")
                _sh("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                _sh("ip", "-n", ns, "link", "set", "eth0", "up")
                _sh("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for agent in self.agents:
            agent.stop()
        for ns in [*self.hosts, self.bridge_ns]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def ip(self, i: int, *args: str) -> None:
        _sh("ip", "-n", self.hosts[i], *args)

    def popen(self, i: int, module: str, *args: str, **kwargs: Any) -> subprocess.Popen:
        """Run ``python -m module args`` inside host ``i`` (pipes for stdin/stdout)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.hosts[i], sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, **kwargs,
        )

    def agent(self, i: int, data_dir: Path, *options: str) -> Agent:
        agent = Agent(self.popen(i, "tests.procs.node_agent", str(data_dir), *options))
        self.agents.append(agent)
        return agent
