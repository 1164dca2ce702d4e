"""The control endpoint: a Unix-domain socket in the data dir through which processes
of the node's own user (or root) manage the running node (``peernet.admin``, the CLI).

Threads: the listening socket is served by the node's acceptor loop (``_io/acceptor.py``,
through the small :class:`Listeners` interface), so the endpoint costs a node no thread
of its own until a client comes; each accepted connection from an allowed uid gets a
``peernet-control-conn`` thread, at most :data:`MAX_CONNECTIONS` at once (beyond that
the listener is not watched, so clients wait in the kernel's backlog rather than being
refused). A connection thread reads one
request line at a time (at most ``MAX_REQUEST_BYTES``), runs it through the node's
handler and writes the answer; a connection that brings no whole request within
:data:`IDLE_TIMEOUT_S` is closed. After a ``watch`` request the thread only writes the
events :meth:`ControlServer.publish` queues for it (bounded in bytes; a watcher that
falls behind is told and dropped) until the client hangs up.

Checks, in order: the socket lives in the 0700 data dir and is made 0600; the peer's
``SO_PEERCRED`` uid must be the node's effective uid or root, else it gets one
``AccessDenied`` line and is closed before any thread or buffer is spent on it. The
protocol itself (``_proto/control.py``) refuses everything malformed with an error
line; no request can end the node's serving.

The caller holds the data-dir lock, so a socket already at the path is stale (left by
a node that was killed): it is replaced. ``stop()`` removes the socket only if it is
still the one this server bound.

Paths: ``sun_path`` holds 107 bytes. A longer data dir is reached through
``/proc/self/fd/N/control.sock``, N an ``O_PATH`` descriptor of the data dir; clients
do the same (:func:`socket_path`).
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
import stat
import struct
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from .._proto.control import (
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    LineReader,
    LineTooLong,
    Refusal,
    Request,
    decode_request,
    encode_error,
    encode_event,
    encode_result,
    error_to_wire,
)
from ..errors import ControlError

__all__ = [
    "Listeners",
    "SUPPORTED",
    "SOCKET_NAME",
    "MAX_CONNECTIONS",
    "MAX_WATCHERS",
    "IDLE_TIMEOUT_S",
    "ControlServer",
    "Session",
    "socket_path",
    "peer_credentials",
]

log = logging.getLogger(__name__)

#: The endpoint needs Unix sockets and peer credentials (``SO_PEERCRED``: Linux).
#: Elsewhere a node serves none, and ``peernet.admin`` says so.
SUPPORTED = hasattr(socket, "AF_UNIX") and hasattr(socket, "SO_PEERCRED")
SOCKET_NAME = "control.sock"
#: Connections served at once; more wait in the backlog until one ends.
MAX_CONNECTIONS = 16
#: Of those, how many may be watching (a watch lasts as long as its client).
MAX_WATCHERS = 8
#: A connection must bring its next whole request within this long.
IDLE_TIMEOUT_S = 10.0
#: An answer or event the client does not take within this long ends the connection.
WRITE_TIMEOUT_S = 10.0
#: Events queued for one watcher, bytes; past that the watcher is dropped.
WATCH_QUEUE_BYTES = 4 * 1024 * 1024
#: How often a watching thread looks for its client having hung up.
_WATCH_POLL_S = 0.25
_MAX_SUN_PATH = 107
_UCRED = struct.Struct("3i")  # pid, uid, gid
_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_REFUSAL_LOG_EVERY_S = 60.0
_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC


@contextmanager
def socket_path(data_dir: Path) -> Iterator[str]:
    """A path to ``data_dir/control.sock`` that fits ``sun_path``: the plain one if it
    does, else one through a descriptor of the directory (valid inside the block)."""
    direct = os.path.join(os.path.abspath(data_dir), SOCKET_NAME)
    if len(os.fsencode(direct)) <= _MAX_SUN_PATH:
        yield direct
        return
    fd = os.open(data_dir, _DIR_FLAGS)
    try:
        via = f"/proc/self/fd/{fd}"
        if not os.path.isdir(via):
            raise ControlError(
                f"the data dir path is too long for a Unix socket ({len(os.fsencode(direct))} "
                f"bytes, at most {_MAX_SUN_PATH}) and /proc is not mounted to reach it "
                f"another way: use a shorter data dir, or Node(control=False)")
        yield f"{via}/{SOCKET_NAME}"
    finally:
        os.close(fd)


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a connected Unix socket."""
    pid, uid, _ = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid


def _allowed(uid: int) -> bool:
    return uid == os.geteuid() or uid == 0


class Session:
    """One client connection, as the handler sees it."""

    def __init__(self, server: ControlServer, sock: socket.socket, pid: int, uid: int) -> None:
        self.pid = pid
        self.uid = uid
        self.topics: tuple[str, ...] = ()
        self._server = server
        self.sock = sock
        self._cond = threading.Condition()
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued_bytes = 0
        self._overflow = False
        self.thread = threading.Thread(target=server._serve, args=(self,),
                                       name="peernet-control-conn", daemon=True)

    @property
    def stopping(self) -> bool:
        """The node is closing: a long op should give up."""
        return self._server.stopping

    def watch(self, topics: list[str]) -> None:
        """After the current answer, carry only events of ``topics``. Raises
        ControlError when :data:`MAX_WATCHERS` connections watch already."""
        self._server._add_watcher(self, tuple(topics))

    def offer(self, line: bytes) -> None:
        with self._cond:
            if self._overflow:
                return
            if self._queued_bytes + len(line) > WATCH_QUEUE_BYTES:
                self._overflow = True
            else:
                self._queue.append(line)
                self._queued_bytes += len(line)
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def take(self, timeout_s: float) -> tuple[list[bytes], bool]:
        """Queued event lines (waiting up to ``timeout_s`` for one), and whether the
        watcher overflowed."""
        with self._cond:
            if not self._queue and not self._overflow and not self._server.stopping:
                self._cond.wait(timeout_s)
            lines = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            return lines, self._overflow


Handler = Callable[[Request, Session], Any]


class Listeners(Protocol):
    """The loop that serves the endpoint's listening socket (the node's acceptor)."""

    def serve(self, listener: socket.socket, on_ready: Callable[[], bool]) -> None: ...
    def watch(self, listener: socket.socket, on: bool) -> None: ...
    def drop(self, listener: socket.socket) -> None: ...


class ControlServer:
    """Serves ``handle(request, session) -> result`` on ``data_dir/control.sock``, its
    listening socket watched by ``listeners`` (the node's acceptor loop).

    ``handle`` raises to refuse: peernet errors and a few builtins cross as
    themselves (see ``error_to_wire``), anything else as ``InternalError`` (logged
    here with its traceback). The caller must hold the data-dir lock.
    """

    def __init__(self, data_dir: Path, handle: Handler, listeners: Listeners) -> None:
        self._data_dir = data_dir
        self._handle = handle
        self._listeners = listeners
        self._dir_fd = os.open(data_dir, _DIR_FLAGS)
        self._listener: socket.socket | None = None
        try:
            self._remove_stale()
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with socket_path(data_dir) as path:
                self._listener.bind(path)
                # The directory is 0700, so the umask's mode until here exposed nothing.
                os.chmod(path, 0o600)
            info = os.stat(SOCKET_NAME, dir_fd=self._dir_fd, follow_symlinks=False)
            self._key = (info.st_dev, info.st_ino)
            self._listener.listen(MAX_CONNECTIONS)
            self._listener.setblocking(False)
        except BaseException as exc:
            if self._listener is not None:
                self._listener.close()
            os.close(self._dir_fd)
            if isinstance(exc, OSError) and not isinstance(exc, ControlError):
                raise ControlError(f"cannot serve the control endpoint {self.path}: "
                                   f"{exc.strerror or exc} (Node(control=False) runs "
                                   f"without it)") from None
            raise
        self.stopping = False
        self._lock = threading.Lock()
        self._sessions: set[Session] = set()
        self._watchers: set[Session] = set()
        self._full = False  # the listener is not watched: MAX_CONNECTIONS are served
        self._last_refusal_log = 0.0
        listeners.serve(self._listener, self._on_ready)

    @property
    def path(self) -> Path:
        """``data_dir/control.sock``, for messages."""
        return self._data_dir / SOCKET_NAME

    # -- what the node does ---------------------------------------------------------

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Queue an event for every connection watching ``topic``; never blocks."""
        with self._lock:
            targets = [s for s in self._watchers if topic in s.topics]
        if not targets:
            return
        line = encode_event(topic, data)
        for session in targets:
            session.offer(line)

    def stop(self) -> None:
        """Stop accepting, remove the socket (if still ours), and end every connection
        (a request running now finishes, its answer is not written). Then :meth:`join`."""
        with self._lock:
            if self.stopping:
                return
            self.stopping = True
            sessions = list(self._sessions)
        self._unlink_own()  # no client finds it from now on
        if self._listener is not None:
            self._listeners.drop(self._listener)  # never accepted on again; closed soon
        for session in sessions:
            try:
                session.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            session.wake()

    def join(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) for every connection thread."""
        deadline = time.monotonic() + timeout_s
        me = threading.current_thread()
        with self._lock:
            threads = [s.thread for s in self._sessions]
        for thread in threads:
            if thread is not me and thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    # -- the socket file --------------------------------------------------------------

    def _remove_stale(self) -> None:
        try:
            info = os.stat(SOCKET_NAME, dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise ControlError(f"{self.path} exists and is not a socket: move it away, or "
                               f"run with Node(control=False)")
        # We hold the data-dir lock: whoever bound this is gone (killed, or crashed).
        log.info("replacing the stale control socket %s", self.path)
        os.unlink(SOCKET_NAME, dir_fd=self._dir_fd)

    def _unlink_own(self) -> None:
        try:
            info = os.stat(SOCKET_NAME, dir_fd=self._dir_fd, follow_symlinks=False)
            if (info.st_dev, info.st_ino) == self._key:
                os.unlink(SOCKET_NAME, dir_fd=self._dir_fd)
        except OSError:
            pass  # gone already, or not ours: leave it

    # -- the listener -----------------------------------------------------------------

    def _on_ready(self) -> bool:
        """On the acceptor loop's thread: accept what waits, while there is room.
        False when out of descriptors (the loop then pauses this listener a moment)."""
        listener = self._listener
        assert listener is not None
        while not self.stopping:
            with self._lock:  # with _serve's resume: the last word on watching is right
                if len(self._sessions) >= MAX_CONNECTIONS:
                    self._full = True  # clients wait in the backlog until one ends
                    self._listeners.watch(listener, False)
                    return True
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                log.debug("control accept failed: %s", exc)
                return exc.errno not in _RESOURCE_ERRNOS
            self._admit(sock)
        return True

    def _admit(self, sock: socket.socket) -> None:
        """A client connected: refuse it (wrong uid) or give it a connection thread."""
        try:
            pid, uid = peer_credentials(sock)
        except OSError:
            sock.close()
            return
        if not _allowed(uid):
            self._refuse(sock, pid, uid)
            return
        session = Session(self, sock, pid, uid)
        with self._lock:
            if self.stopping:
                sock.close()
                return
            self._sessions.add(session)
        try:
            session.thread.start()
        except RuntimeError:  # no thread to be had now: this client only loses
            with self._lock:
                self._sessions.discard(session)
            sock.close()

    def _refuse(self, sock: socket.socket, pid: int, uid: int) -> None:
        now = time.monotonic()
        if now - self._last_refusal_log >= _REFUSAL_LOG_EVERY_S:
            self._last_refusal_log = now
            log.warning("control endpoint: refused pid %d of uid %d (only uid %d and root "
                        "may control this node)", pid, uid, os.geteuid())
        try:
            sock.setblocking(False)
            sock.send(encode_error({"type": "AccessDenied", "message":
                                    f"uid {uid} may not control this node (only its own "
                                    f"user and root may)"}))
        except OSError:
            pass
        sock.close()

    # -- one connection ---------------------------------------------------------------

    def _serve(self, session: Session) -> None:
        sock = session.sock
        try:
            if self._requests(session) and session.topics:
                self._stream(session)
        except OSError as exc:
            log.debug("control connection ended: %s", exc)
        finally:
            with self._lock:
                self._sessions.discard(session)
                self._watchers.discard(session)
                if self._full and not self.stopping:  # room again: serve who waits
                    self._full = False
                    self._listeners.watch(self._listener, True)  # type: ignore[arg-type]
            sock.close()

    def _requests(self, session: Session) -> bool:
        """Answer requests until the client hangs up, idles, or starts watching (True)."""
        sock = session.sock
        reader = LineReader(MAX_REQUEST_BYTES)
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        while not self.stopping:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                self._write(sock, encode_error({
                    "type": "Timeout", "message": f"no complete request within "
                    f"{IDLE_TIMEOUT_S:g} s; closing"}))
                return False
            if not data:
                return False
            try:
                lines = reader.feed(data)
            except LineTooLong as exc:
                self._write(sock, encode_error(error_to_wire(exc)))
                return False  # the rest of that line cannot be told from a request
            for line in lines:
                self._write(sock, self._answer(line, session))
                if session.topics:
                    return True
            if lines:
                deadline = time.monotonic() + IDLE_TIMEOUT_S
        return False

    def _answer(self, line: bytes, session: Session) -> bytes:
        try:
            request = decode_request(line)
            response = encode_result(self._handle(request, session))
            if len(response) > MAX_RESPONSE_BYTES:
                raise Refusal("ResultTooLarge", f"the answer has {len(response)} bytes, more "
                              f"than a client reads ({MAX_RESPONSE_BYTES})")
            return response
        except Exception as exc:  # noqa: BLE001 -- every request gets an answer
            wire = error_to_wire(exc)
            if wire["type"] == "InternalError":
                log.error("control request failed", exc_info=True)
            with self._lock:  # a refused watch does not start
                session.topics = ()
                self._watchers.discard(session)
            return encode_error(wire)

    def _stream(self, session: Session) -> None:
        """Write queued events until the client hangs up or falls behind."""
        sock = session.sock
        while not self.stopping:
            lines, overflow = session.take(_WATCH_POLL_S)
            for line in lines:
                self._write(sock, line)
            if overflow:
                self._write(sock, encode_error({
                    "type": "WatchOverflow", "message": f"events came faster than they "
                    f"were read (over {WATCH_QUEUE_BYTES} bytes waiting); the watch ended"}))
                return
            if self._client_gone(sock):
                return

    @staticmethod
    def _client_gone(sock: socket.socket) -> bool:
        """Whether the watching client hung up (what it sends meanwhile is ignored)."""
        sock.setblocking(False)  # with a timeout, recv would wait for data first
        try:
            return sock.recv(4096) == b""
        except (BlockingIOError, InterruptedError):
            return False

    def _add_watcher(self, session: Session, topics: tuple[str, ...]) -> None:
        with self._lock:
            if len(self._watchers) >= MAX_WATCHERS:
                raise Refusal("TooManyWatchers", f"{MAX_WATCHERS} connections watch this "
                              "node already; close one")
            session.topics = topics
            self._watchers.add(session)

    @staticmethod
    def _write(sock: socket.socket, data: bytes) -> None:
        sock.settimeout(WRITE_TIMEOUT_S)
        sock.sendall(data)
