"""Process-level lifecycle: the data-dir lock and closing forgotten nodes at exit.

The lock is an ``flock`` on ``data_dir/node.lock``: the kernel drops it when the process
dies, so a crash never leaves a stale lock behind, and a second node on the same
directory -- in this process or another -- is refused with a clear error.

Every live node is kept in a WeakSet; one ``atexit`` hook closes those still open, so a
script that forgot ``close()`` says goodbye to its peers and exits promptly (all peernet
threads are daemons, so nothing holds the interpreter up even before the hook runs).
"""

from __future__ import annotations

import atexit
import fcntl
import os
import threading
import weakref
from pathlib import Path
from typing import Protocol

from ..errors import DataDirLocked

__all__ = ["DataDirLock", "track", "untrack"]

LOCK_FILE = "node.lock"


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        path = data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirLocked(
                f"another peernet node is using {data_dir}; close it first (node.close(), "
                f"or leave its `with` block), or give this node its own data_dir"
            ) from None
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock


class _Closable(Protocol):
    def close(self) -> None: ...


_live: weakref.WeakSet[_Closable] = weakref.WeakSet()
_live_lock = threading.Lock()


def track(node: _Closable) -> None:
    with _live_lock:
        _live.add(node)


def untrack(node: _Closable) -> None:
    with _live_lock:
        _live.discard(node)


@atexit.register
def _close_forgotten_nodes() -> None:
    with _live_lock:
        nodes = list(_live)
    for node in nodes:
        try:
            node.close()
        except Exception:  # noqa: BLE001 -- exiting anyway
            pass
