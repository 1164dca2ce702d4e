"""zmq-curve: REQ clients, one single-threaded ROUTER server, CURVE on every socket.

No ZAP handler, so CURVE authenticates the server only (clients are anonymous). W3
uses a DEALER socket, which also carries the final ``stats`` call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import cbor2
import zmq

from .common import CALL_TIMEOUT_S, BaseClient, Conn, Handlers

SECURITY = "encrypted, server auth only"
_TIMEOUT_MS = int(CALL_TIMEOUT_S * 1000)


def serve(opts: dict[str, Any], handlers: Handlers) -> tuple[dict[str, Any], Callable[[], None]]:
    ctx = zmq.Context()
    public, secret = zmq.curve_keypair()
    sock = ctx.socket(zmq.ROUTER)
    sock.curve_server = True
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    table = handlers.table()
    stopping = threading.Event()

    def loop() -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not stopping.is_set():
            if not poller.poll(100):  # wake now and then to notice the stop
                continue
            while True:
                try:
                    ident, empty, body = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                method, arg = cbor2.loads(body)
                result = table[method](arg)
                if method != "count":  # count is one-way
                    sock.send_multipart([ident, empty, cbor2.dumps(result)])

    threading.Thread(target=loop, name="bench-zmq", daemon=True).start()
    return {"port": port, "server_key": public.decode()}, stopping.set


class _Socket:
    def __init__(self, client: Client, kind: int) -> None:
        self.sock = client.ctx.socket(kind)
        self.sock.curve_serverkey = client.server_key
        self.sock.curve_publickey = client.public
        self.sock.curve_secretkey = client.secret
        self.sock.rcvtimeo = _TIMEOUT_MS
        self.sock.sndtimeo = _TIMEOUT_MS
        self.sock.linger = 0
        self.sock.connect(f"tcp://127.0.0.1:{client.ready['port']}")

    def close(self) -> None:
        self.sock.close(0)


class ReqConn(_Socket):
    def call(self, method: str, arg: Any) -> Any:
        self.sock.send(cbor2.dumps([method, arg]))
        return cbor2.loads(self.sock.recv())

    def send(self, method: str, arg: Any) -> bool:
        raise NotImplementedError("REQ has no one-way; W3 uses DEALER")


class DealerConn(_Socket):
    """Speaks the REQ envelope (an empty delimiter frame) by hand."""

    def call(self, method: str, arg: Any) -> Any:
        self.sock.send_multipart([b"", cbor2.dumps([method, arg])])
        _empty, body = self.sock.recv_multipart()  # count never replies: this is ours
        return cbor2.loads(body)

    def send(self, method: str, arg: Any) -> bool:
        self.sock.send_multipart([b"", cbor2.dumps([method, arg])])
        return True


class Client(BaseClient):
    shared_mode = "locked"  # zmq sockets are not thread-safe

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.public, self.secret = zmq.curve_keypair()

    def attach(self, ready: dict[str, Any]) -> None:
        super().attach(ready)
        self.server_key = ready["server_key"].encode()

    def connect(self) -> Conn:
        return ReqConn(self, zmq.REQ)

    def connect_oneway(self) -> Conn:
        return DealerConn(self, zmq.DEALER)

    def cold_call(self, arg: Any) -> tuple[Any, float]:
        """W5-cold: what a fresh process does: a context, a CURVE socket, connect, one
        call, close. Returns the result and the set-up time (context + socket)."""
        t0 = time.perf_counter()
        ctx = zmq.Context()
        sock = ctx.socket(zmq.REQ)
        sock.curve_serverkey = self.server_key
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.rcvtimeo = sock.sndtimeo = _TIMEOUT_MS
        sock.linger = 0
        started_s = time.perf_counter() - t0
        try:
            sock.connect(f"tcp://127.0.0.1:{self.ready['port']}")
            sock.send(cbor2.dumps(["echo", arg]))
            return cbor2.loads(sock.recv()), started_s
        finally:
            sock.close(0)
            ctx.term()

    def close(self) -> None:
        self.ctx.term()
