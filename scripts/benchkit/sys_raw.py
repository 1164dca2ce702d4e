"""raw-tcp: length prefix + cbor2, no security at all. The floor every ratio is against."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import framed
from .common import BaseClient, Conn, Handlers

SECURITY = "none"


def serve(opts: dict[str, Any], handlers: Handlers) -> tuple[dict[str, Any], Callable[[], None]]:
    listener = framed.listen_loopback()
    framed.serve_connections(listener, handlers)
    return {"port": listener.getsockname()[1]}, listener.close


class Client(BaseClient):
    #: W2 shares one connection through a reader thread, as peernet does.
    shared_mode = "mux"

    def connect(self) -> Conn:
        return framed.DirectConn(framed.dial(self.ready["port"]))

    def connect_shared(self) -> Conn:
        return framed.MuxConn(framed.dial(self.ready["port"]))
