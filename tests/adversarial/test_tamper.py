"""A man in the middle of a live link: security.md T9 (replayed, reordered, dropped,
bit-flipped, short and truncated transport frames), T10a (a frame reflected back at its
sender) and T11 (a reply dropped, then the connection cut).

A trusted Node A talks to the target through a :class:`FrameProxy`. For each tampering
the link must close at the first bad frame (within a second), no call may run twice or
run from a tampered frame, A's pending calls must fail at once (not time out), and A must
get a working link back by itself.
"""

from __future__ import annotations

import time
from concurrent.futures import Future

import pytest

import peernet

from .harness import CLOSE, ProxiedConnection

#: What each tampering does to the next client-to-target transport frame X (a call to
#: ``incr``, followed by a second call Y), and how many calls on the tampered link may
#: then run.
MODES = {
    "duplicate": 1,   # X arrives twice: the first copy runs, the copy kills the link
    "reorder": 0,     # Y arrives before X: Y fails its nonce, nothing runs
    "drop": 0,        # X never arrives: Y fails its nonce
    "bitflip": 0,     # one bit of X's ciphertext
    "short": 0,       # a 5-byte frame (shorter than a tag) injected before X
    "empty": 0,       # a zero-length frame injected before X
    "truncate": 0,    # half of X, then the connection is cut
    "reflect": 0,     # a frame the target sent to A, injected back towards the target
}


class Tamper:
    """A FrameProxy hook that tampers once with the next client-to-target frame."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self.acted_at: float | None = None
        self.conn: ProxiedConnection | None = None
        self._held: bytes | None = None

    def arm(self, mode: str) -> None:
        self.acted_at = None
        self.conn = None
        self.mode = mode

    def __call__(self, conn: ProxiedConnection, direction: str, index: int, frame: bytes):
        mode = self.mode
        if mode is None:
            return None
        if mode == "cut-reply":  # T11: the target's next frame (a reply) never arrives
            if direction != "down":
                return None
            self._act(conn)
            return [CLOSE]
        if direction != "up":
            return None
        if mode == "reorder":
            if self._held is None:
                self._held = frame
                return []
            held, self._held = self._held, None
            self._act(conn)
            return [frame, held]
        self._act(conn)
        if mode == "duplicate":
            return [frame, frame]
        if mode == "drop":
            return []
        if mode == "bitflip":
            body = bytearray(frame)
            body[len(body) // 2] ^= 0x10
            return [bytes(body)]
        if mode == "short":
            return [b"\x00\x05" + bytes(5), frame]
        if mode == "empty":
            return [b"\x00\x00", frame]
        if mode == "truncate":
            return [frame[: len(frame) // 2], CLOSE]
        if mode == "reflect":
            return [conn.frames["down"][-1], frame]
        raise AssertionError(mode)

    def _act(self, conn: ProxiedConnection) -> None:
        self.mode = None
        self.conn = conn
        self.acted_at = time.monotonic()


def _outcome(fut: Future, limit_s: float) -> str:
    try:
        return f"value {fut.result(limit_s)}"
    except peernet.ConnectionLost:
        return "lost"


@pytest.fixture
def mitm(env):
    tamper = Tamper()
    proxy = env.proxy(hook=tamper)
    a = env.node_a(reconnect_initial=0.05, reconnect_max=0.3)
    a.connect(env.target.id, "127.0.0.1", proxy.port)
    assert a.call(env.target.id, "echo", "through the proxy", timeout=5) == "through the proxy"
    return env, a, proxy, tamper


def test_T9_T10_tampered_frames_close_the_link_and_nothing_runs_twice(mitm, record):
    env, a, proxy, tamper = mitm
    target = env.target.id
    lines = []
    with env.prober() as probe:
        for mode, may_run in MODES.items():
            # A fresh, working link (reconnected through the proxy after the last mode).
            assert a.call(target, "echo", mode, timeout=5) == mode, mode
            before = env.target.stats()["counter"]
            tamper.arm(mode)
            x = a.call_async(target, "incr", timeout=5)
            y = a.call_async(target, "incr", timeout=5)
            outcomes = [_outcome(x, 1.5), _outcome(y, 1.5)]
            assert tamper.acted_at is not None, mode
            failed_after = time.monotonic() - tamper.acted_at
            conn = tamper.conn
            assert conn is not None
            assert conn.done.wait(1.0), f"{mode}: the link stayed open"
            closed_after = (conn.upstream_closed_at or time.monotonic()) - tamper.acted_at
            assert closed_after < 1.0, mode
            assert failed_after < 1.0, mode
            # Y either failed with the link, or (issued after the link died) waited for
            # A's reconnect and ran once on the new link.
            y_ran = outcomes[1].startswith("value")
            ran = env.target.stats()["counter"] - before
            assert ran == may_run + y_ran, f"{mode}: {ran} calls ran, {outcomes}"
            if may_run == 0:
                assert outcomes[0] == "lost", f"{mode}: {outcomes}"
            lines.append(f"{mode} closed {closed_after * 1000:.0f} ms, calls failed "
                         f"{failed_after * 1000:.0f} ms, ran {ran}")
        # A reconnects by itself; the target is unharmed.
        assert a.call(target, "echo", "back", timeout=5) == "back"
    probe.check()
    delta = env.recovered()
    record("T9/T10a " + "; ".join(lines) + f"; probe worst {probe.worst * 1000:.0f} ms; "
           f"A reconnected after each; after: {delta}")


def test_T11_a_dropped_reply_and_a_cut_connection_fail_the_call_at_once(mitm, record):
    env, a, proxy, tamper = mitm
    tamper.arm("cut-reply")
    t0 = time.monotonic()
    with pytest.raises(peernet.ConnectionLost):
        a.call(env.target.id, "incr", timeout=5)
    failed_s = time.monotonic() - t0
    assert failed_s < 1.0
    assert env.target.stats()["counter"] == 1  # it ran once; the caller was told "lost"
    assert a.call(env.target.id, "echo", "again", timeout=5) == "again"
    record(f"T11 reply dropped then TCP cut: call failed with ConnectionLost after "
           f"{failed_s * 1000:.0f} ms (no silent timeout, no false success)")
