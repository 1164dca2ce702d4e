"""mp-connection: stdlib multiprocessing.connection (pickle, HMAC auth, no encryption)."""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Client as MpClient
from multiprocessing.connection import Connection, Listener
from typing import Any

from .common import BaseClient, Conn, Handlers

SECURITY = "HMAC auth, not encrypted"
CALL, ONEWAY = 0, 1


def serve(opts: dict[str, Any], handlers: Handlers) -> tuple[dict[str, Any], Callable[[], None]]:
    # backlog=128: the default (1) stalls simultaneous connects on SYN retries.
    listener = Listener(("127.0.0.1", 0), backlog=128, authkey=bytes.fromhex(opts["authkey"]))
    table = handlers.table()

    def serve_one(conn: Connection) -> None:
        try:
            while True:
                kind, method, arg = conn.recv()
                result = table[method](arg)
                if kind == CALL:
                    conn.send(result)
        except (EOFError, OSError):
            pass
        finally:
            conn.close()

    def accept_loop() -> None:
        while True:
            try:
                conn = listener.accept()  # runs the HMAC challenge too
            except OSError:
                continue
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, name="bench-accept", daemon=True).start()
    return {"port": listener.address[1]}, listener.close


class MpConn:
    def __init__(self, port: int, authkey: bytes) -> None:
        self.conn = MpClient(("127.0.0.1", port), authkey=authkey)
        # The stdlib has no NODELAY switch; without it W5 waits ~40 ms on Nagle + delayed ACK.
        dup = socket.socket(fileno=os.dup(self.conn.fileno()))
        dup.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        dup.close()

    def call(self, method: str, arg: Any) -> Any:
        self.conn.send((CALL, method, arg))
        return self.conn.recv()

    def send(self, method: str, arg: Any) -> bool:
        self.conn.send((ONEWAY, method, arg))
        return True

    def close(self) -> None:
        self.conn.close()


class Client(BaseClient):
    shared_mode = "locked"

    def __init__(self) -> None:
        self._authkey = secrets.token_bytes(32)

    def server_opts(self) -> dict[str, Any]:
        return {"authkey": self._authkey.hex()}

    def connect(self) -> Conn:
        return MpConn(self.ready["port"], self._authkey)
