"""Child processes: CPU pinning, READY handshakes, bounded lifetimes, RSS."""

from __future__ import annotations

import json
import os
import resource
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH_PY = str(Path(__file__).resolve().parent.parent / "bench.py")


def pin(cpu: int | None) -> None:
    """Pin this process (the calling thread; threads started later inherit it)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def hard_limit(limit_s: float) -> None:
    """Exit no matter what after ``limit_s``: a wedged child must not outlive the run."""
    timer = threading.Timer(limit_s, lambda: os._exit(3))
    timer.daemon = True
    timer.start()


def stdin_closed_event() -> threading.Event:
    """Set when our stdin reaches EOF, i.e. when the parent closed it or died."""
    done = threading.Event()

    def watch() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            done.set()

    threading.Thread(target=watch, name="bench-stdin", daemon=True).start()
    return done


def announce(info: dict[str, Any]) -> None:
    sys.stdout.write("READY " + json.dumps(info) + "\n")
    sys.stdout.flush()


def spawn_role(role: str, args: list[str], *, ready_timeout_s: float = 60.0,
               env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start ``bench.py --role ROLE ...`` and wait (bounded) for its READY line.

    The child shares our process group, so the runner's killpg reaches it too.
    """
    proc = subprocess.Popen([sys.executable, BENCH_PY, "--role", role, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        return proc, read_ready(proc, ready_timeout_s)
    except BaseException:
        stop(proc)
        raise


def read_ready(proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    buf = b""
    fd = proc.stdout.fileno()
    while b"\n" not in buf:
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            raise TimeoutError(f"child {proc.args[3]} sent no READY within {timeout_s:g} s")
        ready, _, _ = select.select([fd], [], [], left_s)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"child {proc.args[3]} exited before READY "
                                   f"(code {proc.wait(5)})")
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode()
    if not line.startswith("READY "):
        raise RuntimeError(f"unexpected first line from child: {line!r}")
    return json.loads(line[6:])


def stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """Close stdin (the polite stop), then terminate, then kill; always reaps."""
    try:
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(3)
    if proc.stdout is not None:
        proc.stdout.close()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (KiB) and Threads from /proc/<pid>/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    return out
