"""pyro5: every setting at its default (serpent, thread-pool server, threaded @oneway).

bytes travel as serpent's base64 dict; both sides turn them back with serpent.tobytes,
as a Pyro5 user has to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import Pyro5.api
import serpent

from .common import BaseClient, Conn, Handlers

SECURITY = "none"


def _unwrap(x: Any) -> Any:
    if isinstance(x, dict) and x.get("encoding") == "base64" and "data" in x:
        return serpent.tobytes(x)
    return x


def serve(opts: dict[str, Any], handlers: Handlers) -> tuple[dict[str, Any], Callable[[], None]]:
    @Pyro5.api.expose
    class Bench:
        def echo(self, x: Any) -> Any:
            return _unwrap(x)

        @Pyro5.api.oneway
        def count(self, x: Any) -> None:
            handlers.count(x)

        def stats(self, x: Any = None) -> Any:
            return handlers.stats(x)

        def reset(self, x: Any = None) -> Any:
            return handlers.reset(x)

    daemon = Pyro5.api.Daemon(host="127.0.0.1", port=0)
    uri = daemon.register(Bench, "bench")
    threading.Thread(target=daemon.requestLoop, name="bench-pyro", daemon=True).start()
    return {"port": daemon.locationStr.rsplit(":", 1)[1], "uri": str(uri)}, daemon.shutdown


class PyroConn:
    def __init__(self, uri: str) -> None:
        self.proxy = Pyro5.api.Proxy(uri)

    def call(self, method: str, arg: Any) -> Any:
        # A proxy belongs to one thread; W2's lock makes handing it over safe.
        self.proxy._pyroClaimOwnership()
        return _unwrap(getattr(self.proxy, method)(arg))

    def send(self, method: str, arg: Any) -> bool:
        getattr(self.proxy, method)(arg)  # count is @oneway: returns at once
        return True

    def close(self) -> None:
        self.proxy._pyroClaimOwnership()
        self.proxy._pyroRelease()


class Client(BaseClient):
    shared_mode = "locked"

    def connect(self) -> Conn:
        return PyroConn(self.ready["uri"])
