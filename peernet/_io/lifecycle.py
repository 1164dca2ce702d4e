"""Process-level lifecycle: the data-dir lock and closing forgotten nodes at exit.

The lock is an ``flock`` on ``data_dir/node.lock``: the kernel drops it when the process
dies, so a crash never leaves a stale lock behind, and a second node on the same
directory -- in this process or another -- is refused with a clear error. The holder
writes its pid into the file, so that error can name the process that holds it.

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

from .._text import escape
from ..errors import DataDirLocked

__all__ = ["DataDirLock", "holder", "track", "untrack"]

LOCK_FILE = "node.lock"


class DataDirLock:
    """Exclusive use of a data dir by one live node, for as long as it is held.

    The holder writes its pid into the lock file, so a refused opener can say who holds
    it: a node of this very process (close it first) or another process (named by pid
    and command line, which a node in this process cannot close).
    """

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_pid(fd)
            key = _file_key(fd)
            os.close(fd)
            raise DataDirLocked(_locked_message(data_dir, holder, _held_here(key))) from None
        self._key = _file_key(fd)
        self._owner_pid = os.getpid()
        try:
            _write_pid(fd)
        except OSError:
            pass  # the lock still holds; only the refused opener's message gets vaguer
        with _held_lock:
            _held[self._key] = os.getpid()
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if os.getpid() == self._owner_pid:
            with _held_lock:
                _held.pop(self._key, None)
            try:  # a later reader must not name a process that let go
                os.pwrite(fd, _NO_HOLDER, 0)
            except OSError:
                pass
        # else: a forked child letting go of its copy; the parent still holds the lock
        os.close(fd)  # closing the descriptor drops the flock


def holder(data_dir: Path) -> str | None:
    """Who seems to hold ``data_dir``'s lock, for a message ("another process (pid
    N: its command line)", "this process"), or None when no live process wrote its pid
    there. Reads the pid the holder wrote; never takes the lock, so it cannot get in
    the way of a node starting at that moment. A pid left by a killed node names a
    process only while one with that pid lives."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        pid = _holder_pid(fd)
        if pid is not None and _held_here(_file_key(fd)):
            return "this process"
    finally:
        os.close(fd)
    if pid is None or pid == os.getpid() or not _alive(pid):
        return None
    return _describe_process(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether it exists
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process: it exists
    return True


# Lock files held by nodes of this process, by (device, inode), with the pid that took
# them: a child forked after that (a pre-fork server) inherits the table but is not
# the holder, so the pid is compared too.
_held: dict[tuple[int, int], int] = {}
_held_lock = threading.Lock()

_MAX_PID_BYTES = 32
_MAX_CMDLINE_CHARS = 200


def _file_key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _held_here(key: tuple[int, int]) -> bool:
    with _held_lock:
        return _held.get(key) == os.getpid()


# The pid is written in place, in a record of fixed size, and blanked on release: no
# truncation, so a node's start and close do not free and allocate a disk block each.
_PID_RECORD = 20
_NO_HOLDER = b" " * (_PID_RECORD - 1) + b"\n"


def _write_pid(fd: int) -> None:
    if os.fstat(fd).st_size != _PID_RECORD:
        os.ftruncate(fd, _PID_RECORD)  # first use, or a file an older version wrote
    os.pwrite(fd, f"{os.getpid()}".ljust(_PID_RECORD - 1).encode() + b"\n", 0)


def _holder_pid(fd: int) -> int | None:
    """The pid the holder wrote, or None while it has not (yet) written a sane one."""
    try:
        text = os.pread(fd, _MAX_PID_BYTES, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 2**31 else None


def _command_line(pid: int) -> str | None:
    """``pid``'s command line, escaped and cut short, or None where it cannot be read.

    It is another user's text on this machine: every non-printable character is
    escaped so it cannot steer a terminal or forge a log line.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(4 * _MAX_CMDLINE_CHARS)
    except OSError:
        return None
    args = [a.decode("utf-8", "backslashreplace") for a in raw.split(b"\0") if a]
    if not args:
        return None  # a zombie or a kernel thread
    text = escape(" ".join(args))
    if len(text) > _MAX_CMDLINE_CHARS:
        text = text[:_MAX_CMDLINE_CHARS - 3] + "..."
    return text


def _describe_process(pid: int | None) -> str:
    if pid is None:
        return "another process"
    if pid == os.getpid():
        # Our own pid, yet not our lock: a process in another pid namespace (container).
        return f"another process (pid {pid} in another pid namespace)"
    text = f"another process (pid {pid}"
    if pid == os.getppid():
        text += ", the parent of this one"
    cmdline = _command_line(pid)
    return text + (f": {cmdline})" if cmdline else ")")


def _locked_message(data_dir: Path, holder: int | None, held_here: bool) -> str:
    if held_here:
        return (f"another peernet node in this process is using {data_dir}; close it "
                f"first (node.close(), or leave its `with` block), or give this node its "
                f"own data_dir")
    message = (f"{data_dir} is in use by a peernet node in {_describe_process(holder)}; "
               f"stop that process first, or give this node its own data_dir")
    if holder is not None and holder == os.getppid():
        message += (" (a reloader or pre-fork server that imports the app in its parent "
                    "process: create the node in the process that serves, on first use)")
    return message


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
