"""Processes for the journeys: each in its own process group, its output read on a thread
with the time each line arrived, and the whole group ended when the test ends.

A journey runs what a user runs (``flask run --debug``, ``manage.py``, a kernel), and
those start children of their own (the reloader's serving child, the kernel): killing
only the process we started would leave them behind, so ``stop()`` signals the group
and waits until no member of it is left.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import wait_until

__all__ = ["Proc", "Device", "free_port", "wait_for_port", "group_alive", "parent_pid", "run",
           "peernet_cli", "with_tests_importable"]

VENV_BIN = Path(sys.executable).parent


class Proc:
    """A child process in a new session; stdout and stderr merged, line by line."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str],
                 stdin: bool = False) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            args, cwd=cwd, env=env, text=True, start_new_session=True,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.pid = self.popen.pid
        self.output: list[tuple[float, str]] = []  # (time.monotonic(), line)
        self._lines: queue.SimpleQueue[tuple[float, str] | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name="journey-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            item = (time.monotonic(), line.rstrip("\n"))
            self.output.append(item)
            self._lines.put(item)
        self._lines.put(None)

    def text(self) -> str:
        return "\n".join(line for _, line in self.output)

    def expect(self, pattern: str, timeout_s: float) -> tuple[float, re.Match[str]]:
        """The first line from now on that matches ``pattern``, and when it arrived."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                item = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = None
            if item is None:
                self._lines.put(None)  # the output ended: so will every later expect()
                raise AssertionError(f"{self.args[:3]}: no line matching {pattern!r} "
                                     f"(exit {self.popen.poll()}); output:\n{self.text()[-3000:]}")
            match = re.search(pattern, item[1])
            if match:
                return item[0], match

    def send(self, line: str) -> None:
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def wait(self, timeout_s: float) -> int:
        return self.popen.wait(timeout=timeout_s)

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 5.0) -> None:
        """Signal the whole group, then SIGKILL whatever is left after ``grace_s``."""
        _signal_group(self.pid, sig)
        if not wait_until(lambda: not group_alive(self.pid), timeout_s=grace_s,
                          interval_s=0.02):
            _signal_group(self.pid, signal.SIGKILL)
            wait_until(lambda: not group_alive(self.pid), timeout_s=5.0, interval_s=0.02)
        self.close()

    def close(self) -> None:
        try:
            self.popen.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._reader.join(timeout=5.0)
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                pipe.close()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running (zombies do not count:
    the one we started is reaped by ``wait``; others by init)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: Proc, timeout_s: float) -> None:
    def accepting() -> bool:
        assert proc.popen.poll() is None, f"exited {proc.popen.returncode}:\n{proc.text()}"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    assert wait_until(accepting, timeout_s=timeout_s, interval_s=0.05), proc.text()


def with_tests_importable(env: dict[str, str]) -> dict[str, str]:
    """``env`` plus the repo on PYTHONPATH, for ``python -m tests.journeys.X``."""
    repo = str(Path(__file__).resolve().parents[2])
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))}


def run(args: list[str], *, cwd: Path, env: dict[str, str],
        timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a command to completion in its own group; fail with its output if it fails."""
    proc = Proc(args, cwd=cwd, env=env)
    try:
        code = proc.wait(timeout_s)
    finally:
        proc.stop()
    assert code == 0, f"{' '.join(args)} exited {code}:\n{proc.text()[-3000:]}"
    return subprocess.CompletedProcess(args, code, proc.text(), "")


def peernet_cli(*args: str, cwd: Path, env: dict[str, str]) -> str:
    """Run the ``peernet`` command a user would; returns its output."""
    return run([str(VENV_BIN / "peernet"), *args], cwd=cwd, env=env).stdout


class Device:
    """tests/journeys/device.py in its own process: the thing a web app or notebook
    talks to."""

    def __init__(self, data_dir: Path, *, cwd: Path, env: dict[str, str]) -> None:
        self.proc = Proc([sys.executable, "-m", "tests.journeys.device", str(data_dir)],
                         cwd=cwd, env=with_tests_importable(env), stdin=True)
        try:
            info = json.loads(self.proc.expect(r"^READY (.*)$", timeout_s=20)[1].group(1))
        except BaseException:
            self.proc.stop()
            raise
        self.id: str = info["id"]
        self.port: int = info["port"]

    def do(self, op: str, timeout_s: float = 20.0, **args: object) -> object:
        self.proc.send(json.dumps({"op": op, **args}))
        reply = json.loads(self.proc.expect(r'^\{"(ok|error)"', timeout_s=timeout_s)[1].string)
        assert "error" not in reply, f"device {op}: {reply['error']}"
        return reply["ok"]

    def stop(self) -> None:
        """Close stdin, so the device closes its node and says goodbye; then make sure."""
        try:
            self.proc.popen.stdin.close()
            self.proc.wait(10.0)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            self.proc.stop()
