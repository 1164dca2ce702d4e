"""The acceptor: one thread, a ``selectors`` loop over the listening socket.

It accepts connections and hands each to the node, which starts a link thread for it.
Before that it enforces the pre-auth limits: at most ``max_preauth`` connections still in
their handshake overall and ``max_preauth_per_ip`` from one source address; anything over
is closed at once, before a thread or a buffer is spent on it. When ``accept`` fails
because the process is out of descriptors (``EMFILE`` and friends) it stops listening for
a moment instead of spinning, and carries on when descriptors are free again.
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


class Acceptor:
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
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._selector.register(listener, selectors.EVENT_READ)
        self._stopped = False
        self._last_exhaustion_log = 0.0
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

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
        self._stopped = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout_s)

    def _run(self) -> None:
        paused_until = 0.0
        try:
            while not self._stopped:
                timeout = None
                if paused_until:
                    timeout = paused_until - time.monotonic()
                    if timeout <= 0:
                        self._selector.register(self._listener, selectors.EVENT_READ)
                        paused_until, timeout = 0.0, None
                for key, _ in self._selector.select(timeout):
                    if key.fileobj is self._wake_r:
                        continue
                    if not self._accept_all():
                        self._selector.unregister(self._listener)
                        paused_until = time.monotonic() + _PAUSE_ON_EXHAUSTION_S
        finally:
            self._selector.close()
            self._listener.close()
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
