"""Tools for attacking a node from outside (reference/security.md section 3).

The node under test (:class:`Target`) runs in its own process (tests/procs/target_node.py)
on 127.0.0.1. Attackers are raw sockets bound to other loopback addresses, speaking our
wire format with our own sans-IO code so that they can send exactly the bytes they mean
to: :class:`RawPeer` (a full Noise XX initiator with any identity, able to seal any
plaintext), :func:`attacker_socket` / :func:`closed_within` (bytes in, "was I closed?"
out), and :class:`FrameProxy` (a man in the middle that cuts each direction into frames
and may record, drop, duplicate, reorder, flip or inject them).

During every attack a trusted in-test :class:`peernet.Node` keeps calling ``echo``
(:class:`Prober`); afterwards :meth:`Target.resources` must come back to the baseline.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import peernet
from peernet._proto.framing import frame
from peernet._proto.messages import Message, decode_message, encode_message
from peernet._proto.session import (
    HandshakeCompleted,
    LocalCredentials,
    MessageReceived,
    Session,
    SessionClosed,
    SessionState,
)
from peernet.errors import ProtocolError
from peernet.identity import Identity, load_or_create
from peernet.ids import PeerId
from peernet.trust import TrustStore

REPO = Path(__file__).resolve().parents[2]
TARGET_HOST = "127.0.0.1"
#: The default attacker address; the honest prober uses 127.0.0.1.
ATTACKER = "127.0.0.2"
#: Where a FrameProxy's upstream connections come from (so the target cannot dial back).
PROXY_SOURCE = "127.0.0.5"
MIB = 1024


def spread(i: int) -> str:
    """The i-th of many attacker source addresses (127.1.x.y), for floods past per-IP caps."""
    return f"127.1.{i // 250}.{1 + i % 250}"


# -- resources ------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    threads: int
    fds: int
    rss_kib: int

    def delta(self, base: Resources) -> Resources:
        return Resources(self.threads - base.threads, self.fds - base.fds,
                         self.rss_kib - base.rss_kib)

    def __str__(self) -> str:
        return f"threads {self.threads:+d}, fds {self.fds:+d}, RSS {self.rss_kib / MIB:+.1f} MiB"


def read_resources(pid: int) -> Resources:
    threads = rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return Resources(threads, len(os.listdir(f"/proc/{pid}/fd")), rss)


class Sampler:
    """Samples a process's thread and fd counts and RSS every few ms; keeps the maxima."""

    def __init__(self, pid: int, interval_s: float = 0.01) -> None:
        self.pid = pid
        self.max_threads = 0
        self.max_fds = 0
        self.max_rss_kib = 0
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                r = read_resources(self.pid)
            except (FileNotFoundError, ProcessLookupError):
                return
            self.max_threads = max(self.max_threads, r.threads)
            self.max_fds = max(self.max_fds, r.fds)
            self.max_rss_kib = max(self.max_rss_kib, r.rss_kib)
            self._stop.wait(self._interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- the node under test --------------------------------------------------------------


class Target:
    """The node under attack, in its own process."""

    def __init__(self, data_dir: Path, trusted: Iterable[PeerId], flags: Iterable[str]) -> None:
        self.data_dir = data_dir
        self.identity = load_or_create(data_dir)
        store = TrustStore.load(data_dir)
        for peer in trusted:
            store.pair(peer)
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.err_path = data_dir.parent / f"{data_dir.name}.stderr"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.procs.target_node", str(data_dir),
                 "--log", str(self.log_path), *flags],
                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.close()
            raise AssertionError(f"target did not start: {line!r} {self.stderr()}")
        info = json.loads(line[6:])
        self.id = PeerId.parse(info["id"])
        self.port: int = info["port"]
        self.pid: int = info["pid"]
        assert self.id == self.identity.peer_id
        self._lock = threading.Lock()

    def command(self, op: str, **kw: object) -> object:
        with self._lock:
            self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"target died: {self.stderr()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["ok"]

    def stats(self) -> dict:
        return self.command("stats")  # type: ignore[return-value]

    def resources(self) -> Resources:
        return read_resources(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""

    def secrets_hex(self) -> list[str]:
        """Representations of the target's private key that must never be logged."""
        seed = self.identity._seed()
        return [seed.hex(), self.identity.x25519_private.hex()]

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()


# -- the honest peer's liveness probe -------------------------------------------------


class Prober:
    """A trusted Node calling ``echo`` on the target in a loop; records every latency."""

    def __init__(self, node: peernet.Node, target: PeerId, interval_s: float = 0.02) -> None:
        self.node = node
        self.target = target
        self.interval_s = interval_s
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            t0 = time.monotonic()
            try:
                ok = self.node.call(self.target, "echo", n, timeout=2.0) == n
                if not ok:
                    self.failures.append(f"echo {n}: wrong answer")
            except Exception as exc:  # noqa: BLE001 -- recorded, asserted by the test
                self.failures.append(f"echo {n}: {type(exc).__name__}: {exc}")
            self.latencies.append(time.monotonic() - t0)
            self._stop.wait(self.interval_s)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def check(self, limit_s: float = 0.5) -> None:
        assert self.latencies, "the prober made no call"
        assert not self.failures, self.failures[:5]
        assert self.worst < limit_s, f"trusted peer waited {self.worst:.3f} s"


# -- raw attackers ---------------------------------------------------------------------


def attacker_socket(port: int, src: str = ATTACKER, timeout_s: float = 2.0) -> socket.socket:
    s = socket.socket()
    try:
        s.bind((src, 0))
        s.settimeout(timeout_s)
        s.connect((TARGET_HOST, port))
    except BaseException:
        s.close()
        raise
    return s


@dataclass
class Closed:
    closed: bool
    elapsed_s: float
    received: bytes


def closed_within(sock: socket.socket, secs: float) -> Closed:
    """Wait up to ``secs`` for the peer to close (FIN or RST); keep what it sent."""
    t0 = time.monotonic()
    got = bytearray()
    end = t0 + secs
    try:
        while (left := end - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            data = sock.recv(65536)
            if not data:
                return Closed(True, time.monotonic() - t0, bytes(got))
            got += data
    except (ConnectionResetError, BrokenPipeError):
        return Closed(True, time.monotonic() - t0, bytes(got))
    return Closed(False, time.monotonic() - t0, bytes(got))


def read_exact(sock: socket.socket, n: int, timeout_s: float = 1.0) -> bytes:
    """Read exactly ``n`` bytes, or fewer if the peer closes or ``timeout_s`` passes."""
    got = bytearray()
    end = time.monotonic() + timeout_s
    try:
        while len(got) < n and (left := end - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            data = sock.recv(n - len(got))
            if not data:
                break
            got += data
    except (ConnectionResetError, BrokenPipeError):
        pass
    return bytes(got)


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send, ignoring a peer that already hung up (that is often the point)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


class RawPeer:
    """A Noise XX initiator over a raw socket, built from the sans-IO Session.

    With a trusted identity it is a paired peer gone bad: after the handshake it can
    seal any plaintext (:meth:`transport`), any message (:meth:`send`) or any bytes
    (:meth:`send_payload`), including ones the real Node would never produce.
    """

    def __init__(self, identity: Identity, target_id: PeerId, port: int,
                 src: str = ATTACKER) -> None:
        self.identity = identity
        self.session = Session(LocalCredentials.from_identity(identity), initiator=True,
                               is_trusted=lambda peer: True, expected_peer=target_id)
        self.sock = attacker_socket(port, src)
        self.payloads: list[bytes] = []
        #: Bytes received since message 2 (READY and everything sealed).
        self.received_after_msg2 = 0
        self.closed_at: float | None = None
        self.close_reason: str | None = None

    # -- handshake ---------------------------------------------------------------------

    def hello(self, timeout_s: float = 2.0) -> None:
        """Send message 1 and read message 2 (checked: the target is who we dialled)."""
        self.sock.sendall(self.session.data_to_send())
        deadline = time.monotonic() + timeout_s
        while self.session.state is SessionState.HANDSHAKING:
            self._read(deadline)
        self.received_after_msg2 = 0

    def finish(self, early: Iterable[bytes] = (), timeout_s: float = 2.0) -> None:
        """Send message 3, with ``early`` payloads in the same write, and wait for READY."""
        out = self.session.data_to_send() + b"".join(self.transport(b"\x01" + p)
                                                     for p in early)
        self.sock.sendall(out)
        deadline = time.monotonic() + timeout_s
        while self.session.state is SessionState.AWAITING_READY:
            self._read(deadline)
        if self.session.state is not SessionState.OPEN:
            raise ConnectionError(f"handshake failed: {self.close_reason}")

    def handshake(self, early: Iterable[bytes] = (), timeout_s: float = 2.0) -> None:
        self.hello(timeout_s)
        self.finish(early, timeout_s)

    # -- sending -----------------------------------------------------------------------

    def transport(self, plaintext: bytes) -> bytes:
        """One transport frame carrying ``plaintext`` verbatim (flag byte included),
        sealed with the next send nonce, whatever the session state."""
        return frame(self.session._send.encrypt(plaintext))  # type: ignore[union-attr]

    def send_payload(self, payload: bytes) -> None:
        send_quietly(self.sock, self.session.seal(payload))

    def send(self, msg: Message) -> None:
        self.send_payload(encode_message(msg))

    # -- receiving ---------------------------------------------------------------------

    def _read(self, deadline: float) -> None:
        """Read once, waiting until ``deadline`` at most (else TimeoutError)."""
        if self.closed_at is not None:
            raise ConnectionError(f"closed: {self.close_reason}")
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.sock], [], [], left)[0]:
            raise TimeoutError("nothing from the target")
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self._closed("EOF")
            return
        self.received_after_msg2 += len(data)
        for event in self.session.receive_data(data):
            if isinstance(event, MessageReceived):
                self.payloads.append(event.payload)
            elif isinstance(event, SessionClosed):
                self._closed(f"session: {event.reason}")

    def _closed(self, reason: str) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()
            self.close_reason = reason

    def messages(self) -> list[Message]:
        return [decode_message(p) for p in self.payloads]

    def wait_for(self, predicate: Callable[[RawPeer], bool], timeout_s: float = 2.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            try:
                self._read(deadline)
            except (TimeoutError, ConnectionError):
                return predicate(self)
        return True

    def wait_closed(self, timeout_s: float = 2.0) -> float | None:
        """Seconds until the target closed the connection, or None if it did not."""
        t0 = time.monotonic()
        self.wait_for(lambda p: p.closed_at is not None, timeout_s)
        return None if self.closed_at is None else max(0.0, self.closed_at - t0)

    def answer(self, request_id: int, timeout_s: float = 2.0) -> Message:
        """Wait for the reply or error to ``request_id``."""
        def found(p: RawPeer) -> bool:
            return any(getattr(m, "request_id", None) == request_id for m in p.messages())
        if not self.wait_for(found, timeout_s):
            raise TimeoutError(f"no answer to {request_id} ({self.close_reason})")
        return next(m for m in self.messages() if getattr(m, "request_id", None) == request_id)

    def close(self) -> None:
        self.sock.close()


def raw_session_alive(peer: RawPeer, timeout_s: float = 1.0) -> bool:
    """True if the link still answers a call (``echo``) after whatever was sent."""
    from peernet._proto.messages import Call, Reply

    rid = 0x5EED
    peer.send(Call(rid, "echo", "still there?"))
    try:
        msg = peer.answer(rid, timeout_s)
    except (TimeoutError, ConnectionError):
        return False
    return isinstance(msg, Reply) and msg.result == "still there?"


# -- a frame-aware man in the middle ---------------------------------------------------

CLOSE = object()
"""Returned by a FrameProxy hook: stop forwarding and close this connection."""

Hook = Callable[["ProxiedConnection", str, int, bytes], list]


@dataclass
class ProxiedConnection:
    index: int
    client: socket.socket
    upstream: socket.socket
    frames: dict[str, list[bytes]] = field(default_factory=lambda: {"up": [], "down": []})
    #: When the target end closed (EOF or reset on the upstream socket).
    upstream_closed_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def shutdown(self) -> None:
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class FrameProxy:
    """Listens on 127.0.0.1, forwards each connection to ``upstream_port`` (from
    127.0.0.5), cutting both directions into frames. ``hook(conn, direction, index,
    frame)`` ("up" is client to target) returns the frames to forward instead (or
    :data:`CLOSE`); without a hook, or when it returns None, frames pass unchanged.
    """

    def __init__(self, upstream_port: int, hook: Hook | None = None) -> None:
        self.upstream_port = upstream_port
        self.hook = hook
        self.connections: list[ProxiedConnection] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket()
        self._listener.bind((TARGET_HOST, 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._start(self._accept_loop, "proxy-accept")

    def _start(self, fn: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._listener], [], [], 0.05)[0]:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            upstream = socket.socket()
            try:
                upstream.bind((PROXY_SOURCE, 0))
                upstream.connect((TARGET_HOST, self.upstream_port))
            except OSError:
                upstream.close()
                client.close()
                continue
            with self._lock:
                conn = ProxiedConnection(len(self.connections), client, upstream)
                self.connections.append(conn)
            self._start(lambda c=conn: self._pump(c, "up"), "proxy-up")
            self._start(lambda c=conn: self._pump(c, "down"), "proxy-down")

    def _pump(self, conn: ProxiedConnection, direction: str) -> None:
        src, dst = ((conn.client, conn.upstream) if direction == "up"
                    else (conn.upstream, conn.client))
        buf = bytearray()
        try:
            while not self._stop.is_set() and not conn.done.is_set():
                if not select.select([src], [], [], 0.05)[0]:
                    continue
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    if direction == "down":
                        conn.upstream_closed_at = time.monotonic()
                    return
                buf += data
                while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                    n = 2 + int.from_bytes(buf[:2], "big")
                    whole = bytes(buf[:n])
                    del buf[:n]
                    index = len(conn.frames[direction])
                    conn.frames[direction].append(whole)
                    out = self.hook(conn, direction, index, whole) if self.hook else None
                    for item in ([whole] if out is None else out):
                        if item is CLOSE:
                            return
                        dst.sendall(item)
        except OSError:
            return
        finally:
            conn.done.set()
            conn.shutdown()

    def close(self) -> None:
        self._stop.set()
        self._threads[0].join(5)  # the accept loop: no connection is added after this
        with self._lock:
            conns = list(self.connections)
        for conn in conns:
            conn.done.set()
            conn.shutdown()
        for t in self._threads[1:]:
            t.join(5)
        for conn in conns:
            conn.client.close()
            conn.upstream.close()
        self._listener.close()


def still_open(sock: socket.socket) -> bool:
    """True if the peer has neither closed nor reset ``sock`` (nothing is consumed)."""
    try:
        if not select.select([sock], [], [], 0)[0]:
            return True
        return bool(sock.recv(1, socket.MSG_PEEK))
    except OSError:
        return False


def decode_or_none(payload: bytes) -> Message | None:
    try:
        return decode_message(payload)
    except ProtocolError:
        return None


__all__ = [
    "ATTACKER", "CLOSE", "Closed", "FrameProxy", "HandshakeCompleted", "Prober", "RawPeer",
    "Resources", "Sampler", "Target", "attacker_socket", "closed_within", "decode_or_none",
    "raw_session_alive", "read_exact", "read_resources", "send_quietly", "spread", "still_open",
]
