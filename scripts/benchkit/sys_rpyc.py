"""rpyc: service mode, ThreadedServer, brine, defaults (zlib on large messages).

The small payload is a tuple: brine passes a dict by reference (a netref), so echoing
it would be meaningless. Remote methods are looked up once per connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import rpyc
from rpyc.utils.server import ThreadedServer

from .common import ONEWAY_TEXT, BaseClient, Conn, Handlers

SECURITY = "none"
_POLL_EVERY = 256  # rpyc has no true one-way: drain async replies now and then


def serve(opts: dict[str, Any], handlers: Handlers) -> tuple[dict[str, Any], Callable[[], None]]:
    class BenchService(rpyc.Service):
        exposed_echo = staticmethod(handlers.echo)
        exposed_count = staticmethod(handlers.count)
        exposed_stats = staticmethod(lambda x=None: tuple(handlers.stats(x)))
        exposed_reset = staticmethod(handlers.reset)

    server = ThreadedServer(BenchService, hostname="127.0.0.1", port=0)
    server._listen()  # start() would listen only later, and an early client would race it
    threading.Thread(target=server.start, name="bench-rpyc", daemon=True).start()
    return {"port": server.port}, server.close


class RpycConn:
    def __init__(self, port: int) -> None:
        self.conn = rpyc.connect("127.0.0.1", port)
        root = self.conn.root
        self._methods = {name: getattr(root, name) for name in ("echo", "stats", "reset")}
        self._count = rpyc.async_(root.count)
        self._sent = 0

    def call(self, method: str, arg: Any) -> Any:
        return self._methods[method](arg)

    def send(self, method: str, arg: Any) -> bool:
        self._count(arg)
        self._sent += 1
        if not self._sent % _POLL_EVERY:
            self.conn.poll_all()
        return True

    def close(self) -> None:
        self.conn.close()


class Client(BaseClient):
    shared_mode = "mux"  # one rpyc connection serves many threads natively

    def small(self, i: int) -> Any:
        return ("hi", i)

    def oneway_arg(self, i: int) -> Any:
        return (ONEWAY_TEXT, i)

    def connect(self) -> Conn:
        return RpycConn(self.ready["port"])
