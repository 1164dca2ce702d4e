"""The acceptor: one thread, a ``selectors`` loop over the node's listening sockets.

The TCP listener: it accepts connections and hands each to the node, which starts a
link thread for it. Before that it enforces the pre-auth limits: at most
``max_preauth`` connections still in their handshake overall and
``max_preauth_per_ip`` from one source address; anything over is closed at once,
before a thread or a buffer is spent on it. When ``accept`` fails because the process
is out of descriptors (``EMFILE`` and friends) it stops listening for a moment instead
of spinning, and carries on when descriptors are free again.

Other listeners of the node (the control endpoint's Unix socket, ``_io/control.py``)
are served from the same loop (:meth:`Acceptor.serve`): one thread for every listener,
which a node that starts and stops at once (a one-shot command) pays for once. Their
owner says when to stop and resume watching one (:meth:`Acceptor.watch`) and hands it
back to be closed (:meth:`Acceptor.drop`); each change is applied on the loop's thread.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
import time
from typing import Callable

from ..errors import PortInUse

__all__ = ["Acceptor", "open_listener"]

log = logging.getLogger(__name__)

_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_PAUSE_ON_EXHAUSTION_S = 0.1
_BACKLOG = 128


def open_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; ``"::"`` listens on IPv6 and IPv4."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, socktype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortInUse(
                exc.errno, f"port {port} on {host or '*'} is already in use (another node "
                f"or program listens there); pick another port, or port=0 for a free one"
            ) from None
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Served:
    """A listener of the loop: what to call when it is readable, and whether to watch it."""

    __slots__ = ("on_ready", "wanted", "paused_until", "registered", "dropped")

    def __init__(self, on_ready: Callable[[], bool]) -> None:
        self.on_ready = on_ready
        self.wanted = True  # its owner's wish (watch)
        self.paused_until = 0.0  # out of descriptors: not watched until then (monotonic)
        self.registered = False  # in the selector now
        self.dropped = False  # to be closed by the loop


def _ready(served: _Served) -> bool:
    """``served.on_ready()``. A bug in one listener's callback (the control endpoint's,
    say) pauses that listener and is logged; it must not end the loop, which would
    close the node's TCP listener with it and silently stop all incoming links."""
    try:
        return served.on_ready()
    except Exception:  # noqa: BLE001
        log.exception("a listener's accept failed; paused")
        return False


class Acceptor:
    """Create it, :meth:`serve` any further listeners, then :meth:`start` the loop."""

    def __init__(
        self,
        listener: socket.socket,
        on_accept: Callable[[socket.socket, tuple[str, int]], None],
        *,
        max_preauth: int,
        max_preauth_per_ip: int,
        name: str = "peernet-acceptor",
    ) -> None:
        self._listener = listener
        self._on_accept = on_accept
        self._max_preauth = max_preauth
        self._max_preauth_per_ip = max_preauth_per_ip
        self._preauth: dict[str, int] = {}
        self._preauth_total = 0
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # a wake already pending is enough
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        #: Every listener, guarded by _lock; the loop's thread alone touches the selector.
        self._served: dict[socket.socket, _Served] = {listener: _Served(self._accept_all)}
        self._stopped = False
        self._last_exhaustion_log = 0.0
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    # -- other listeners (any thread) --------------------------------------------------

    def serve(self, listener: socket.socket, on_ready: Callable[[], bool]) -> None:
        """Call ``on_ready()`` on the loop's thread whenever ``listener`` (non-blocking)
        is readable. It returns False when the process is out of descriptors: the
        listener is then not watched for a moment, instead of the loop spinning."""
        with self._lock:
            self._served[listener] = _Served(on_ready)
        if self.thread.ident is not None:  # else start() finds it
            self._wake()

    def watch(self, listener: socket.socket, on: bool) -> None:
        """Watch ``listener`` again, or stop watching it (its clients wait in the
        kernel's backlog meanwhile)."""
        with self._lock:
            served = self._served.get(listener)
            if served is None or served.wanted == on:
                return
            served.wanted = on
        self._wake()

    def drop(self, listener: socket.socket) -> None:
        """Stop serving ``listener``: ``on_ready`` is not called for it again, and the
        loop closes it the next time it wakes (a client knocking on it, or any other
        change, such as :meth:`close`). Waking the loop for it alone would cost a
        node that is closing anyway a thread switch."""
        with self._lock:
            served = self._served.get(listener)
            if served is not None:
                served.dropped = True

    # -- the TCP listener's pre-auth accounting ----------------------------------------

    def release(self, ip: str) -> None:
        """A connection from ``ip`` left its handshake (succeeded or not)."""
        with self._lock:
            left = self._preauth.get(ip, 0) - 1
            if left > 0:
                self._preauth[ip] = left
            else:
                self._preauth.pop(ip, None)
            self._preauth_total -= 1

    def preauth_count(self) -> int:
        return self._preauth_total

    def close(self, timeout_s: float) -> None:
        """Stop the loop and close every listener; waits up to ``timeout_s``."""
        self._stopped = True
        if self.thread.ident is None:  # never started
            self._close_all()
            return
        self._wake()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout_s)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # a wake is pending already (BlockingIOError), or the loop ended
            pass

    def _run(self) -> None:
        try:
            while not self._stopped:
                for key, _ in self._selector.select(self._sync()):
                    served = key.data
                    if served is None:  # the wake socket: _sync applies what changed
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                    elif not served.dropped and not self._stopped and not _ready(served):
                        with self._lock:
                            served.paused_until = time.monotonic() + _PAUSE_ON_EXHAUSTION_S
        finally:
            self._close_all()

    def _sync(self) -> float | None:
        """Make the selector watch what should be watched now; the timeout until a
        paused listener is due again (None: no pause)."""
        now = time.monotonic()
        timeout: float | None = None
        with self._lock:
            for sock, served in list(self._served.items()):
                if served.dropped:
                    if served.registered:
                        self._selector.unregister(sock)
                    del self._served[sock]
                    sock.close()
                    continue
                if served.paused_until and served.paused_until <= now:
                    served.paused_until = 0.0
                want = served.wanted and not served.paused_until
                if want != served.registered:
                    if want:
                        self._selector.register(sock, selectors.EVENT_READ, served)
                    else:
                        self._selector.unregister(sock)
                    served.registered = want
                if served.paused_until:
                    left = served.paused_until - now
                    timeout = left if timeout is None else min(timeout, left)
        return timeout

    def _close_all(self) -> None:
        with self._lock:
            listeners = list(self._served)
            self._served.clear()
        self._selector.close()
        for sock in listeners:
            sock.close()
        self._wake_r.close()
        self._wake_w.close()

    def _accept_all(self) -> bool:
        """Accept until the backlog is empty. False when out of descriptors."""
        while not self._stopped:
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    now = time.monotonic()
                    if now - self._last_exhaustion_log > 10:
                        self._last_exhaustion_log = now
                        log.warning("accept paused: %s (out of descriptors or memory)",
                                    errno.errorcode.get(exc.errno or 0, exc.errno))
                    return False
                log.debug("accept failed: %s", exc)  # e.g. ECONNABORTED: that peer only
                continue
            ip = addr[0]
            with self._lock:
                admit = (self._preauth_total < self._max_preauth
                         and self._preauth.get(ip, 0) < self._max_preauth_per_ip)
                if admit:
                    self._preauth[ip] = self._preauth.get(ip, 0) + 1
                    self._preauth_total += 1
            if not admit:
                log.debug("pre-auth limit reached; refusing %s", ip)
                sock.close()
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._on_accept(sock, (ip, addr[1]))
            except Exception:  # noqa: BLE001 -- one bad connection must not stop accepting
                log.exception("could not start a connection from %s", ip)
                self.release(ip)
                sock.close()
        return True
