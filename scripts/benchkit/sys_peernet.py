"""peernet: one client Node, one server Node, one link (Noise XX, mutual auth)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peernet import Node, PeerId

from .common import CALL_TIMEOUT_S, BaseClient, Conn, Handlers

SECURITY = "encrypted, mutual auth"
#: W4 echoes 1 MiB of bytes: the default 1 MiB limit is just too small for the envelope.
MAX_MESSAGE_SIZE_B = 4 << 20


def node_kwargs() -> dict[str, Any]:
    # reconnect_initial=60 on both sides: W5 closes links on purpose, and an automatic
    # redial (either way) must not race the next timed connect.
    return {"host": "127.0.0.1", "network_monitor": False,
            "max_message_size": MAX_MESSAGE_SIZE_B, "reconnect_initial": 60.0,
            "reconnect_max": 120.0}


def serve(opts: dict[str, Any], handlers: Handlers) -> tuple[dict[str, Any], Callable[[], None]]:
    data_dir = Path(tempfile.mkdtemp(prefix="bench-peernet-srv-"))
    node = Node(data_dir / "node", **node_kwargs(), **opts.get("node", {}))
    ids = list(opts.get("client_ids", []))
    if opts.get("client_ids_file"):
        ids += Path(opts["client_ids_file"]).read_text().split()
    for pid in ids:
        node.pair(pid)
    for name, fn in handlers.table().items():
        node.expose(name, lambda peer, args, fn=fn: fn(args))

    def shutdown() -> None:
        try:
            node.close()
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)

    return {"port": node.port, "id": str(node.id)}, shutdown


class PeernetConn:
    def __init__(self, client: Client, *, fresh: bool = False) -> None:
        self.node, self._fresh = client.node, fresh
        # What users pass: a PeerId, or (peernet-text) the pn1... text from a config file.
        self.pid: PeerId | str = client.server_text if client.ids_as_text else client.server_id

    def call(self, method: str, arg: Any) -> Any:
        return self.node.call(self.pid, method, arg, timeout=CALL_TIMEOUT_S)

    def send(self, method: str, arg: Any) -> bool:
        return self.node.send(self.pid, method, arg)

    def close(self) -> None:
        if self._fresh:
            drop_link(self.node, PeerId.parse(self.pid))


def drop_link(node: Node, pid: PeerId, timeout_s: float = 10.0) -> None:
    """Close the live link (internal API) and wait until the node no longer has one."""
    deadline = time.monotonic() + timeout_s
    link = node._registry.active_link(pid)
    if link is not None:
        link.close("bench")
        link.thread.join(timeout_s)
    while node._registry.active_link(pid) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError("the link did not close")
        time.sleep(0.001)


class Client(BaseClient):
    shared_mode = "mux"  # a node multiplexes calls from any number of threads
    #: Pass the server's id as its pn1... text on every call (the peernet-text system).
    ids_as_text = False

    def __init__(self, data_dir: Path | None = None) -> None:
        """``data_dir``: an existing identity to use (the scale test made it beforehand)."""
        self._dir = Path(tempfile.mkdtemp(prefix="bench-peernet-cli-"))
        self.node = Node(data_dir or self._dir / "node", **node_kwargs())
        # W5-cold starts a node from this existing data dir each time, as a management
        # command or `peernet call` does: made (and its key written) once, here.
        self._cold_dir = self._dir / "cold"
        with Node(self._cold_dir, **node_kwargs()) as cold:
            self._cold_id = str(cold.id)

    def server_opts(self) -> dict[str, Any]:
        return {"client_ids": [str(self.node.id), self._cold_id]}

    def attach(self, ready: dict[str, Any]) -> None:
        super().attach(ready)
        self.server_text = ready["id"]
        self.server_id = PeerId.parse(ready["id"])
        self.node.pair(self.server_id)
        with Node(self._cold_dir, **node_kwargs()) as cold:
            cold.pair(self.server_text)

    def cold_call(self, arg: Any) -> tuple[Any, float]:
        """W5-cold: a Node from the existing data dir, dial, one call (id as text), close.
        Returns the result and how long the Node took to start, in seconds. The Node is
        built as a one-shot command builds one: default settings (the network monitor
        on, remembered addresses redialled), only the address bound to loopback."""
        t0 = time.perf_counter()
        node = Node(self._cold_dir, host="127.0.0.1")
        started_s = time.perf_counter() - t0
        try:
            node.connect(self.server_text, "127.0.0.1", self.ready["port"])
            return node.call(self.server_text, "echo", arg, timeout=CALL_TIMEOUT_S), started_s
        finally:
            node.close()

    def connect(self) -> Conn:
        """The one link, set up outside any timed part (idempotent while it is up)."""
        self.node.connect(self.server_id, "127.0.0.1", self.ready["port"])
        if not self.node.wait_for_peer(self.server_id, CALL_TIMEOUT_S):
            raise TimeoutError("no link to the server")
        return PeernetConn(self)

    def connect_fresh(self) -> Conn:
        """W5: dial now; the first call waits for the handshake. close() drops the link."""
        self.node.connect(self.server_id, "127.0.0.1", self.ready["port"])
        return PeernetConn(self, fresh=True)

    def close(self) -> None:
        try:
            self.node.close()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
