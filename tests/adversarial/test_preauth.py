"""Strangers before authentication: slowloris, floods, bad lengths, garbage, bad keys.

security.md T1-T5, adapted to our wire format: 2-byte length prefixes, handshake frames
of 32..512 bytes, message 1 = 32 bytes, message 2 = 195 bytes, message 3 = 163 bytes.
Nothing a stranger sends may hold a thread or descriptor past the handshake deadline,
get an answer it should not, or slow down the trusted peer's calls.
"""

from __future__ import annotations

import errno
import os
import random
import resource
import select
import socket
import time

import pytest

from peernet._proto.framing import frame
from peernet._proto.messages import Call, Reply
from peernet._proto.noise import HandshakeState
from peernet._proto.session import PROLOGUE
from peernet.identity import Identity
from tests.conftest import wait_until

from .harness import (
    Sampler,
    TARGET_HOST,
    attacker_socket,
    closed_within,
    read_exact,
    send_quietly,
    spread,
    still_open,
)

MSG2_WIRE = 2 + 195  # what a responder writes for message 2, header included

_P = 2**255 - 19
LOW_ORDER_POINTS = [  # X25519 points of small order, canonical and not
    bytes(32),
    (1).to_bytes(32, "little"),
    (_P - 1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    _P.to_bytes(32, "little"),
    (_P + 1).to_bytes(32, "little"),
    ((_P - 1) | (1 << 255)).to_bytes(32, "little"),
]


def msg1() -> bytes:
    """A valid message 1 (a fresh ephemeral key), header included."""
    return frame(HandshakeState(True, os.urandom(32), prologue=PROLOGUE).write_message())


def handlers_run(env) -> dict:
    """Calls of every handler except the prober's echo."""
    calls = dict(env.target.stats()["calls"])
    calls.pop("echo", None)
    return calls


# -- T1 ---------------------------------------------------------------------------------


def test_T1_idle_and_trickling_sockets_meet_an_absolute_handshake_deadline(make_env, record):
    deadline_s = 1.0
    env = make_env(handshake_timeout=deadline_s)
    kinds = {"idle": b"", "one-byte": b"\x00", "trickle": b"\x00\x20", "msg1-only": None}
    per_kind = 12  # 48 sockets, one per source address: under every pre-auth cap
    socks: list[tuple[str, socket.socket, float]] = []
    closed_at: dict[int, float] = {}
    got: dict[int, bytearray] = {}
    with env.prober() as probe, Sampler(env.target.pid) as sampler:
        try:
            for i in range(per_kind * len(kinds)):
                kind = list(kinds)[i % len(kinds)]
                s = attacker_socket(env.target.port, spread(i))
                t0 = time.monotonic()
                data = kinds[kind]
                s.sendall(msg1() if data is None else data)
                socks.append((kind, s, t0))
                got[s.fileno()] = bytearray()
            next_trickle = time.monotonic() + 0.2
            end = time.monotonic() + deadline_s + 3
            while len(closed_at) < len(socks) and time.monotonic() < end:
                live = [s for _, s, _ in socks if s.fileno() not in closed_at]
                ready = select.select(live, [], [], 0.05)[0]
                for s in ready:
                    try:
                        data = s.recv(4096)
                    except ConnectionResetError:
                        data = b""
                    if data:
                        got[s.fileno()] += data
                    else:
                        closed_at[s.fileno()] = time.monotonic()
                if time.monotonic() >= next_trickle:  # one byte at a time: defeats any
                    next_trickle += 0.2               # per-recv timeout, not a deadline
                    for kind, s, _ in socks:
                        if kind == "trickle" and s.fileno() not in closed_at:
                            send_quietly(s, b"\x01")
            lifetimes = {kind: [] for kind in kinds}
            for kind, s, t0 in socks:
                assert s.fileno() in closed_at, f"a {kind} socket is still open"
                lifetimes[kind].append(closed_at[s.fileno()] - t0)
                expected = MSG2_WIRE if kind == "msg1-only" else 0
                assert len(got[s.fileno()]) == expected, kind
        finally:
            for _, s, _ in socks:
                s.close()
    worst = max(max(v) for v in lifetimes.values())
    assert worst < deadline_s + 1.0, lifetimes
    assert min(min(v) for v in lifetimes.values()) > deadline_s * 0.8  # it is the deadline
    probe.check()
    assert sampler.max_threads <= env.baseline.threads + len(socks) + 4
    delta = env.recovered()
    record(f"T1 48 idle/1-byte/trickling/msg1-only sockets, deadline {deadline_s:g} s: all "
           f"closed after {min(min(v) for v in lifetimes.values()):.2f}..{worst:.2f} s; "
           f"probe worst {probe.worst * 1000:.0f} ms; after: {delta}")


# -- T2 ---------------------------------------------------------------------------------


def test_T2_preauth_caps_close_the_excess_at_once(env, record):
    """10 addresses x 10 sockets: 8 per address and 64 in all are held, the rest closed."""
    socks: list[tuple[socket.socket, float]] = []
    with env.prober() as probe, Sampler(env.target.pid) as sampler:
        try:
            for ip in range(10):
                for _ in range(10):
                    s = attacker_socket(env.target.port, spread(ip))
                    socks.append((s, time.monotonic()))
            closed: list[float] = []
            deadline = time.monotonic() + 1.5
            pending = list(socks)
            while pending and time.monotonic() < deadline:
                ready = select.select([s for s, _ in pending], [], [], 0.05)[0]
                for s, t0 in list(pending):
                    if s in ready and not still_open(s):
                        closed.append(time.monotonic() - t0)
                        pending.remove((s, t0))
            assert len(closed) == 100 - 64, len(closed)
            assert max(closed) < 1.0
            assert len(pending) == 64 and all(still_open(s) for s, _ in pending)
            assert sampler.max_threads <= env.baseline.threads + 64 + 4
        finally:
            for s, _ in socks:
                s.close()
    probe.check()
    delta = env.recovered()
    record(f"T2 100 sockets from 10 addresses: 64 held, 36 closed within "
           f"{max(closed) * 1000:.0f} ms; threads peak +{sampler.max_threads - env.baseline.threads}; "
           f"probe worst {probe.worst * 1000:.0f} ms; after: {delta}")


def _raise_own_fd_limit(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


def test_T2_flood_with_a_low_descriptor_limit(make_env, record):
    """1000 half-open connections against a node limited to 64 descriptors: accept hits
    EMFILE, pauses and survives; the trusted link keeps working; a new peer gets in."""
    env = make_env(handshake_timeout=1.0, nofile=64)
    n = min(1000, _raise_own_fd_limit(1400) - 300)
    flood: list[socket.socket] = []
    with env.prober() as probe, Sampler(env.target.pid) as sampler:
        try:
            for i in range(n):
                s = socket.socket()
                flood.append(s)
                s.setblocking(False)
                s.bind((spread(i % 125), 0))
                err = s.connect_ex((TARGET_HOST, env.target.port))
                assert err in (0, errno.EINPROGRESS), os.strerror(err)
            time.sleep(0.3)  # hold the flood while the deadline turns sockets over
            assert wait_until(lambda: "accept paused" in env.target.log(), timeout_s=3), \
                "the flood never exhausted the target's descriptors"
            time.sleep(0.3)
        finally:
            for s in flood:
                s.close()
        peak = sampler.max_threads - env.baseline.threads
        peak_fds = sampler.max_fds
        # The accept loop is alive: a trusted newcomer gets in once the flood is gone.
        t0 = time.monotonic()
        peer = env.raw(env.c, src="127.0.0.3")
        peer.handshake(early=[], timeout_s=5)
        peer.send(Call(1, "whoami", None))
        assert peer.answer(1, 3) == Reply(1, str(env.c.peer_id))
        newcomer_s = time.monotonic() - t0
        peer.close()
    probe.check()
    assert peak <= 64 + 4
    assert env.target.alive()
    delta = env.recovered(timeout_s=5)
    record(f"T2 flood of {n} connections, RLIMIT_NOFILE 64: EMFILE hit (accept paused), "
           f"fds peak {peak_fds}, threads peak +{peak}; trusted probe worst "
           f"{probe.worst * 1000:.0f} ms; newcomer handshake+call {newcomer_s * 1000:.0f} ms "
           f"after the flood; after: {delta}")


# -- T3 ---------------------------------------------------------------------------------

LENGTH_PREFIXES = {
    "65535": b"\xff\xff" + b"A" * 100,
    "513 (handshake max + 1)": b"\x02\x01" + b"A" * 100,
    "zero": b"\x00\x00",
    "31 (under 32)": b"\x00\x1f" + b"\x01" * 31,
    "1": b"\x00\x01\x00",
}


def test_T3_bad_length_prefixes_close_at_once_and_allocate_nothing(env, record):
    reps = 200
    worst = 0.0
    with env.prober() as probe:
        for rep in range(reps):
            for name, data in LENGTH_PREFIXES.items():
                with attacker_socket(env.target.port, spread(rep % 4)) as s:
                    send_quietly(s, data)
                    result = closed_within(s, 1.0)
                assert result.closed, name
                assert result.received == b"", name
                worst = max(worst, result.elapsed_s)
    probe.check()
    assert handlers_run(env) == {}
    delta = env.recovered()
    assert delta.rss_kib < 5 * 1024
    record(f"T3 {reps * len(LENGTH_PREFIXES)} connections with lengths 65535/513/0/31/1: "
           f"each closed within {worst * 1000:.0f} ms, nothing sent back; probe worst "
           f"{probe.worst * 1000:.0f} ms; after: {delta}")


# -- T4 ---------------------------------------------------------------------------------


def test_T4_garbage_is_closed_within_a_second_and_runs_nothing(env, record):
    rng = random.Random(4)
    worst = 0.0
    with env.prober() as probe:
        for i in range(20):  # (a) 4096 random bytes
            with attacker_socket(env.target.port, spread(i % 4)) as s:
                send_quietly(s, rng.randbytes(4096))
                result = closed_within(s, 1.0)
            assert result.closed
            assert len(result.received) in (0, MSG2_WIRE)
            worst = max(worst, result.elapsed_s)
        for fake3 in (163, 64):  # (b) a random message 1, then a fake message 3
            with attacker_socket(env.target.port) as s:
                s.sendall(frame(rng.randbytes(32)))
                assert len(read_exact(s, MSG2_WIRE)) == MSG2_WIRE
                t0 = time.monotonic()
                send_quietly(s, frame(rng.randbytes(fake3)))
                result = closed_within(s, 1.0)
            assert result.closed and result.received == b""
            worst = max(worst, time.monotonic() - t0)
    probe.check()
    assert handlers_run(env) == {}
    delta = env.recovered()
    record(f"T4 20 x 4096 random bytes and fake message 3s (163/64 bytes): closed within "
           f"{worst * 1000:.0f} ms, no handler ran; probe worst {probe.worst * 1000:.0f} ms; "
           f"after: {delta}")


# -- T5 ---------------------------------------------------------------------------------

BAD_MSG1 = {
    "empty frame": b"\x00\x00",
    "5-byte key": frame(b"\x01" * 5),
    "31-byte key": frame(b"\x01" * 31),
    "33 bytes (a payload in message 1)": frame(b"\x01" * 33),
    **{f"low-order point {p.hex()[:8]}": frame(p) for p in LOW_ORDER_POINTS},
}


def test_T5_short_and_low_order_message1_get_no_message2(env, record):
    worst = 0.0
    with env.prober() as probe:
        for name, data in BAD_MSG1.items():
            with attacker_socket(env.target.port) as s:
                send_quietly(s, data)
                result = closed_within(s, 1.0)
            assert result.closed, name
            assert result.received == b"", f"{name}: the target answered"
            worst = max(worst, result.elapsed_s)
    probe.check()
    delta = env.recovered()
    record(f"T5 {len(BAD_MSG1)} short/low-order/oversize message 1s: closed within "
           f"{worst * 1000:.0f} ms, no message 2 sent; probe worst {probe.worst * 1000:.0f} ms; "
           f"after: {delta}")


@pytest.mark.parametrize("point", LOW_ORDER_POINTS[:5], ids=lambda p: p.hex()[:8])
def test_T5_low_order_static_key_in_message3_is_refused(env, point):
    hs = HandshakeState(True, Identity.generate().x25519_private, prologue=PROLOGUE)
    with attacker_socket(env.target.port) as s:
        s.sendall(frame(hs.write_message()))
        reply = read_exact(s, MSG2_WIRE)
        assert len(reply) == MSG2_WIRE
        hs.read_message(reply[2:])
        hs._s_pub = point  # claim a low-order static key, encrypted correctly
        s.sendall(frame(hs.write_message(bytes(99))))
        result = closed_within(s, 1.0)
    assert result.closed and result.received == b""
    assert env.target.alive()
