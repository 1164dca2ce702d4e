"""What every system shares: the server handlers, the payloads and the client interface."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: Echoed 1 MiB payload of W4.
BULK_SIZE_B = 1 << 20
#: W3's one-way payload text: 30 characters, so the CBOR envelope is about 52 bytes.
ONEWAY_TEXT = "x" * 30
#: Upper bound for any single call; a hung system fails its workload instead of the run.
CALL_TIMEOUT_S = 30.0


class Handlers:
    """echo, count (one-way), stats, reset: identical semantics in every server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count_n = 0
        self.first_s = 0.0
        self.last_s = 0.0

    def echo(self, x: Any) -> Any:
        return x

    def count(self, _x: Any) -> None:
        # time.monotonic is CLOCK_MONOTONIC: comparable with the client's clock.
        now = time.monotonic()
        with self._lock:
            if not self.count_n:
                self.first_s = now
            self.count_n += 1
            self.last_s = now

    def stats(self, _x: Any = None) -> list[Any]:
        with self._lock:
            return [self.count_n, self.first_s, self.last_s]

    def reset(self, _x: Any = None) -> bool:
        with self._lock:
            self.count_n, self.first_s, self.last_s = 0, 0.0, 0.0
        return True

    def dispatch(self, method: str, arg: Any) -> Any:
        return self.table()[method](arg)

    def table(self) -> dict[str, Callable[[Any], Any]]:
        return {"echo": self.echo, "count": self.count, "stats": self.stats, "reset": self.reset}


class Conn(Protocol):
    """One connection (or one peernet link) as the workloads use it."""

    def call(self, method: str, arg: Any) -> Any: ...
    def send(self, method: str, arg: Any) -> bool: ...
    def close(self) -> None: ...


class Client(Protocol):
    """A system's client side. Lifecycle: ``server_opts()`` (before the server starts),
    ``attach(ready)`` (with the server's READY json), workloads, ``close()``."""

    #: How 8 threads share one connection in W2: "mux" (natively) or "locked".
    shared_mode: str

    def server_opts(self) -> dict[str, Any]: ...
    def attach(self, ready: dict[str, Any]) -> None: ...
    def small(self, i: int) -> Any: ...
    def oneway_arg(self, i: int) -> Any: ...
    def connect(self) -> Conn: ...
    def connect_shared(self) -> Conn: ...
    def connect_oneway(self) -> Conn: ...
    def connect_fresh(self) -> Conn: ...
    def close(self) -> None: ...


class BaseClient:
    """Defaults: dict payloads; W2/W3/W5 use the ordinary connection."""

    shared_mode = "locked"

    def server_opts(self) -> dict[str, Any]:
        return {}

    def attach(self, ready: dict[str, Any]) -> None:
        self.ready = ready

    def small(self, i: int) -> Any:
        return {"text": "hi", "n": i}

    def oneway_arg(self, i: int) -> Any:
        return {"text": ONEWAY_TEXT, "n": i}

    def connect(self) -> Conn:
        raise NotImplementedError

    def connect_shared(self) -> Conn:
        conn = self.connect()
        return conn if self.shared_mode == "mux" else LockedConn(conn)

    def connect_oneway(self) -> Conn:
        return self.connect()

    def connect_fresh(self) -> Conn:
        return self.connect()

    def close(self) -> None:
        pass


class LockedConn:
    """Serialises whole calls: for connections that are not thread-safe."""

    def __init__(self, inner: Conn) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def call(self, method: str, arg: Any) -> Any:
        with self._lock:
            return self._inner.call(method, arg)

    def send(self, method: str, arg: Any) -> bool:
        with self._lock:
            return self._inner.send(method, arg)

    def close(self) -> None:
        self._inner.close()


@dataclass(frozen=True)
class Sizes:
    """Iterations and durations of one run (full or --quick)."""

    w1_warmup: int = 1000
    w1_calls: int = 20000
    w2_threads: int = 8
    w2_warmup: int = 50
    w2_duration_s: float = 5.0
    w3_duration_s: float = 3.0
    w3_stable_s: float = 2.0
    w3_drain_cap_s: float = 30.0
    w4_warmup: int = 3
    w4_calls: int = 200
    w5_warmup: int = 10
    w5_calls: int = 200
    #: Any one workload loop stops here even if its count is not reached.
    loop_cap_s: float = 60.0
    scale_peers: int = 500
    scale_w1_warmup: int = 500
    scale_w1_calls: int = 5000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(w1_warmup=200, w1_calls=3000, w2_warmup=20, w2_duration_s=1.5,
                   w3_duration_s=1.0, w3_stable_s=0.5, w3_drain_cap_s=10.0, w4_warmup=2,
                   w4_calls=20, w5_warmup=5, w5_calls=40, loop_cap_s=15.0,
                   scale_peers=100, scale_w1_warmup=200, scale_w1_calls=2000)
