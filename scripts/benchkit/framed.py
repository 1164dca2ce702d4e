"""4-byte big-endian length + cbor2 ``[kind, id, method, arg]`` over a stream socket.

Shared by raw-tcp (the floor) and tls-tcp. The server runs one thread per connection
and handles calls inline; clients either read their own reply ("direct") or use one
reader thread that hands replies to waiters by id ("mux", raw-tcp's W2).
"""

from __future__ import annotations

import itertools
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

import cbor2

from .common import CALL_TIMEOUT_S, Handlers

CALL, ONEWAY, REPLY = 0, 1, 2
_LEN = 4


def write_frame(sock: socket.socket, obj: Any) -> None:
    body = cbor2.dumps(obj)
    header = len(body).to_bytes(_LEN, "big")
    if isinstance(sock, ssl.SSLSocket):  # no sendmsg on TLS sockets
        sock.sendall(header + body)
        return
    sent = sock.sendmsg([header, body])  # one syscall, no copy of a large body
    if sent < len(header):
        sock.sendall(header[sent:])
        sent = len(header)
    if sent < len(header) + len(body):
        sock.sendall(memoryview(body)[sent - len(header):])


def read_frame(rfile: BinaryIO) -> Any:
    header = rfile.read(_LEN)
    if len(header) < _LEN:
        raise EOFError("connection closed")
    n = int.from_bytes(header, "big")
    body = rfile.read(n)
    if len(body) < n:
        raise EOFError("connection closed mid-frame")
    return cbor2.loads(body)


def nodelay(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def serve_connections(listener: socket.socket, handlers: Handlers,
                      wrap: Callable[[socket.socket], socket.socket] = lambda s: s) -> None:
    """Accept forever (daemon threads); the process exits to stop."""

    def serve_one(raw: socket.socket) -> None:
        try:
            sock = wrap(nodelay(raw))  # TLS handshake happens here, per connection thread
            rfile = sock.makefile("rb")
            table = handlers.table()
            while True:
                kind, rid, method, arg = read_frame(rfile)
                result = table[method](arg)
                if kind == CALL:
                    write_frame(sock, [REPLY, rid, result])
        except (EOFError, OSError, ValueError):
            pass
        finally:
            raw.close()

    def accept_loop() -> None:
        while True:
            raw, _ = listener.accept()
            threading.Thread(target=serve_one, args=(raw,), daemon=True).start()

    threading.Thread(target=accept_loop, name="bench-accept", daemon=True).start()


class DirectConn:
    """The calling thread writes its request and reads its own reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb")

    def call(self, method: str, arg: Any) -> Any:
        write_frame(self.sock, [CALL, 0, method, arg])
        _kind, _rid, result = read_frame(self.rfile)
        return result

    def send(self, method: str, arg: Any) -> bool:
        write_frame(self.sock, [ONEWAY, 0, method, arg])
        return True

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


class MuxConn:
    """One reader thread; each call waits on a pre-acquired Lock, the cheapest wake-up."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._wlock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, list[Any]] = {}
        self._reader = threading.Thread(target=self._read, args=(sock.makefile("rb"),),
                                         name="bench-mux-reader", daemon=True)
        self._reader.start()

    def _read(self, rfile: BinaryIO) -> None:
        try:
            while True:
                _kind, rid, result = read_frame(rfile)
                slot = self._waiting.pop(rid)
                slot[1] = result
                slot[0].release()
        except (EOFError, OSError, ValueError):
            pass

    def call(self, method: str, arg: Any) -> Any:
        rid = next(self._ids)
        slot: list[Any] = [threading.Lock(), None]
        slot[0].acquire()
        self._waiting[rid] = slot
        with self._wlock:
            write_frame(self.sock, [CALL, rid, method, arg])
        if not slot[0].acquire(timeout=CALL_TIMEOUT_S):
            raise TimeoutError(f"no reply to {method}")
        return slot[1]

    def send(self, method: str, arg: Any) -> bool:
        with self._wlock:
            write_frame(self.sock, [ONEWAY, 0, method, arg])
        return True

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._reader.join(5)
        self.sock.close()


def listen_loopback() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    return listener


def dial(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT_S)
    # Blocking from here on: a timeout would add a poll() before every send and recv. A
    # hung peer is still bounded: the runner kills the client process at its deadline.
    sock.settimeout(None)
    return nodelay(sock)
