"""tls-tcp: raw framing over stdlib ssl, TLS 1.3, mutual certificate authentication."""

from __future__ import annotations

import shutil
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import certs, framed
from .common import BaseClient, Conn, Handlers

SECURITY = "encrypted, mutual auth"


def serve(opts: dict[str, Any], handlers: Handlers) -> tuple[dict[str, Any], Callable[[], None]]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(opts["server_cert"], opts["server_key"])
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual: the client must show its certificate
    ctx.load_verify_locations(opts["client_cert"])
    listener = framed.listen_loopback()
    framed.serve_connections(listener, handlers,
                             wrap=lambda s: ctx.wrap_socket(s, server_side=True))
    return {"port": listener.getsockname()[1]}, listener.close


class Client(BaseClient):
    # An SSLSocket must not be read and written from two threads at once.
    shared_mode = "locked"

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="bench-tls-"))
        self._server = certs.make_pair(self._dir, "server")
        self._client = certs.make_pair(self._dir, "client")
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies name and chain
        self._ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self._ctx.load_cert_chain(*map(str, self._client))
        self._ctx.load_verify_locations(str(self._server[0]))

    def server_opts(self) -> dict[str, Any]:
        return {"server_cert": str(self._server[0]), "server_key": str(self._server[1]),
                "client_cert": str(self._client[0])}

    def connect(self) -> Conn:
        raw = framed.dial(self.ready["port"])
        return framed.DirectConn(self._ctx.wrap_socket(raw, server_hostname="127.0.0.1"))

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
