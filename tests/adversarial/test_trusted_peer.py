"""A paired peer gone bad: everything it can do inside an authenticated session.

security.md T16 (forged and duplicate replies), T17 (hostile CBOR and hostile transport
plaintexts), T18 (handler exceptions leak nothing) and T20 (volume). The attacker C is a
:class:`RawPeer` holding a paired identity, so it can seal bytes the real Node never
would. The remote-call allow-list abuse (T19) is covered by
tests/integration/test_rpc.py::test_attacks_are_refused_as_forbidden_with_no_side_effect.
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from peernet._proto import cbor
from peernet._proto.messages import (
    BUSY,
    Bye,
    Call,
    Error,
    Ping,
    Pong,
    Reply,
    Send,
    encode_message,
)
from tests.conftest import wait_until
from tests.hostile_cbor import AMPLIFY, HOSTILE

from .harness import MIB, Sampler, decode_or_none, raw_session_alive, spread

# -- T16 -----------------------------------------------------------------------------------


def test_T16_forged_and_duplicate_replies_never_complete_another_call(env, record):
    release = threading.Event()
    env.b.expose("hold", lambda peer, args: release.wait(5) and "from B")
    c = env.raw()
    c.handshake()
    errors_before = env.target.log().count(" ERROR ")
    # The target calls B; the test leaks the request id to C, who answers it first.
    pending = env.target.command("call_async", peer=str(env.b.id), name="hold", timeout=5)
    rid = pending["rid"]
    assert type(rid) is int
    c.send(Reply(rid, "forged by C"))
    c.send(Error(rid, BUSY, None))
    # 10,000 replies and errors for ids nobody issued, plus duplicates of each.
    rng = random.Random(16)
    rss0 = env.target.resources().rss_kib
    with env.prober() as probe:
        batch = bytearray()
        for i in range(10_000):
            fake = rng.randrange(1, 2**64)
            msg = Reply(fake, "x") if i % 2 else Error(fake, BUSY, None)
            batch += c.session.seal(encode_message(msg))
            if i % 100 == 0:  # the same message again (sealed anew: a new nonce)
                batch += c.session.seal(encode_message(msg))
            if len(batch) > 60_000:
                c.sock.sendall(batch)
                batch.clear()
        c.sock.sendall(batch)
        assert raw_session_alive(c), "forged replies closed C's link (documented: ignored)"
    rss_growth = env.target.resources().rss_kib - rss0
    release.set()
    assert env.target.command("result", handle=pending["handle"]) == {"value": "from B"}
    # The target calls C; C answers twice (and then with an error): the first answer wins.
    mine = env.target.command("call_async", peer=str(env.c.peer_id), name="ask", args=1)
    assert c.wait_for(lambda p: any(type(m) is Call for m in p.messages()))
    call = next(m for m in c.messages() if type(m) is Call)
    assert call.request_id == mine["rid"]
    c.send(Reply(call.request_id, "first"))
    c.send(Reply(call.request_id, "second"))
    c.send(Error(call.request_id, BUSY, None))
    assert env.target.command("result", handle=mine["handle"]) == {"value": "first"}
    assert raw_session_alive(c)
    assert env.target.log().count(" ERROR ") == errors_before
    probe.check()
    assert rss_growth < 2 * MIB
    delta = env.recovered()
    record(f"T16 C answered the target's pending call to B (leaked id) + 10,000 replies/errors "
           f"for unknown ids + 100 duplicates: B's answer won, all ignored, C's link kept, "
           f"RSS +{rss_growth / MIB:.1f} MiB, no ERROR logged; duplicate reply to the "
           f"target's call to C ignored; probe worst {probe.worst * 1000:.0f} ms; after: {delta}")


# -- T17 -----------------------------------------------------------------------------------

_RID = 0xC0FFEE
#: Well-formed CBOR in the wrong shape: each must end the link.
BAD_SHAPES = {
    "not an array": cbor.encode({"kind": 0}),
    "empty array": cbor.encode([]),
    "top-level text": cbor.encode("call echo"),
    "unknown kind 7": cbor.encode([7, _RID, "echo", []]),
    "negative kind": cbor.encode([-1, _RID]),
    "kind as float": cbor.encode([0.0, _RID, "echo", []]),
    "call arity 3": cbor.encode([0, _RID, "echo"]),
    "call arity 5": cbor.encode([0, _RID, "echo", [], None]),
    "call name int": cbor.encode([0, _RID, 5, []]),
    "call name bytes": cbor.encode([0, _RID, b"echo", []]),
    "call name private": cbor.encode([0, _RID, "_private", []]),
    "call name dunder": cbor.encode([0, _RID, "__import__", []]),
    "call name 65 chars": cbor.encode([0, _RID, "e" * 65, []]),
    "call name with slash": cbor.encode([0, _RID, "os/system", []]),
    "call id 0": cbor.encode([0, 0, "echo", []]),
    "call id true": cbor.encode([0, True, "echo", []]),
    "call id 1.0": cbor.encode([0, 1.0, "echo", []]),
    "call id negative": cbor.encode([0, -5, "echo", []]),
    "reply id true": cbor.encode([1, True, "x"]),
    "reply id 1.0": cbor.encode([1, 1.0, "x"]),
    "error unknown code": cbor.encode([2, _RID, "weird", None]),
    "error detail 201 chars": cbor.encode([2, _RID, BUSY, "x" * 201]),
    "error detail bytes": cbor.encode([2, _RID, BUSY, b"x"]),
    "send arity 4": cbor.encode([3, "echo", [], 1]),
    "ping nonce 7 bytes": cbor.encode([4, b"1234567"]),
    "ping nonce text": cbor.encode([4, "12345678"]),
    "bye reason int": cbor.encode([6, 5]),
    "bye reason 201 chars": cbor.encode([6, "x" * 201]),
}


_MORE = b"\x00" + b"m" * 65518
#: Hostile plaintexts under valid encryption: bad flags, READY again, fragments.
TRANSPORT_CASES = {
    "READY after open": lambda c: c.transport(b"\x02"),
    "unknown flag 0x07": lambda c: c.transport(b"\x07hello"),
    "flag 0xff": lambda c: c.transport(b"\xff"),
    "empty MORE fragment": lambda c: c.transport(b"\x00"),
    "fragments past 1 MiB": lambda c: b"".join(c.transport(_MORE) for _ in range(17)),
}


def test_T17_hostile_cbor_and_plaintexts_from_a_paired_peer_end_only_its_link(env, record):
    cases = [(f"cbor {cid}", data) for cid, data in HOSTILE + AMPLIFY]
    cases += [(f"shape {name}", data) for name, data in BAD_SHAPES.items()]
    cases += [(f"transport {name}", build) for name, build in TRANSPORT_CASES.items()]
    calls_before = {k: v for k, v in env.target.stats()["calls"].items() if k != "echo"}
    worst = (0.0, "")
    with env.prober(interval_s=0.01) as probe:
        for i, (name, data) in enumerate(cases):
            c = env.raw(src=spread(i % 8))
            c.handshake()
            t0 = time.monotonic()
            if callable(data):
                c.sock.sendall(data(c))
            else:
                c.send_payload(data)
            elapsed = c.wait_closed(1.0)
            assert elapsed is not None, f"{name}: the link survived"
            assert c.payloads == [], f"{name}: the target answered {c.payloads[:1]}"
            if time.monotonic() - t0 > worst[0]:
                worst = (time.monotonic() - t0, name)
            c.close()
    calls_after = {k: v for k, v in env.target.stats()["calls"].items() if k != "echo"}
    assert calls_after == calls_before, "a handler ran on malformed input"
    log = env.target.log()
    assert "Traceback" not in log and "internal error" not in log
    assert max(map(len, log.splitlines())) < 400, "a log line repeats peer data"
    probe.check()
    delta = env.recovered()
    record(f"T17 {len(cases)} hostile payloads ({len(HOSTILE)} CBOR hazards, {len(AMPLIFY)} "
           f"amplifiers, {len(BAD_SHAPES)} bad shapes, 5 transport plaintexts), each on a "
           f"paired link: every link closed, worst {worst[0] * 1000:.0f} ms ({worst[1]}); no "
           f"handler ran, no traceback; probe worst {probe.worst * 1000:.0f} ms over "
           f"{len(probe.latencies)} calls; after: {delta}")


def test_T17_unsolicited_but_wellformed_messages_are_ignored(env):
    c = env.raw()
    c.handshake()
    c.send(Reply(12345, "reply to a call never made"))
    c.send(Error(12346, BUSY, None))
    c.send(Pong(os.urandom(8)))
    c.send(Send("no_such_handler", None))
    nonce = os.urandom(8)
    c.send(Ping(nonce))
    assert c.wait_for(lambda p: Pong(nonce) in p.messages())
    assert raw_session_alive(c)


# -- T18 -----------------------------------------------------------------------------------


def test_T18_handler_exceptions_reach_the_peer_as_a_type_name_only(env, record):
    c = env.raw()
    c.handshake()
    leaks = [b"SECRET", b"Traceback", b".py", b"line ", b"/home", b"7f3a"]
    with env.prober() as probe:
        for rid, kind in enumerate(["RuntimeError", "SystemExit", "KeyboardInterrupt",
                                    "BaseException"], start=1):
            c.send(Call(rid, "raise", kind))
            answer = c.answer(rid)
            assert answer == Error(rid, "handler_error", kind)
            raw = next(p for p in c.payloads if decode_or_none(p) == answer)
            assert not [m for m in leaks if m in raw], raw
        assert raw_session_alive(c)
        # A handler sleeping does not delay a call or a ping on the same link.
        c.send(Call(100, "slow", 1.0))
        t0 = time.monotonic()
        c.send(Call(101, "echo", "quick"))
        assert c.answer(101) == Reply(101, "quick")
        nonce = os.urandom(8)
        c.send(Ping(nonce))
        assert c.wait_for(lambda p: Pong(nonce) in p.messages())
        beside_slow = time.monotonic() - t0
    assert beside_slow < 0.2
    assert env.target.alive()
    assert "SECRET-MARKER-7f3a" in env.target.log(), "the detail is not logged locally"
    probe.check()
    c.close()
    delta = env.recovered()
    record(f"T18 RuntimeError/SystemExit/KeyboardInterrupt/BaseException with a secret "
           f"message: peer got [2, id, 'handler_error', <type name>] only, node alive, detail "
           f"in the local log; echo+ping beside a 1 s handler answered in "
           f"{beside_slow * 1000:.0f} ms; after: {delta}")


# -- T20 -----------------------------------------------------------------------------------


def _flood_calls(c, n: int, name: str, args: object, first_rid: int = 1) -> None:
    batch = bytearray()
    for rid in range(first_rid, first_rid + n):
        batch += c.session.seal(encode_message(Call(rid, name, args)))
        if len(batch) > 60_000:
            c.sock.sendall(batch)
            batch.clear()
    c.sock.sendall(batch)


def test_T20_calls_beyond_the_per_peer_cap_are_busy_and_others_unaffected(make_env, record):
    env = make_env(max_calls_per_peer=8)
    c = env.raw()
    c.handshake()
    n = 2000
    with env.prober() as probe:
        t0 = time.monotonic()
        _flood_calls(c, n, "slow", 0.2)
        assert c.wait_for(lambda p: len(p.payloads) >= n, timeout_s=10), len(c.payloads)
        answered_s = time.monotonic() - t0
        msgs = c.messages()
        busy = sum(1 for m in msgs if type(m) is Error and m.code == BUSY)
        done = sum(1 for m in msgs if type(m) is Reply and m.result == "done")
        assert busy + done == n and done >= 8
        assert wait_until(lambda: env.target.stats()["calls"].get("slow", 0) >= done, 5)
        # And 5000 sends in one write, 20 times the queue: the reader stops reading
        # while the queue is full (TCP holds the rest back), so none is lost, and the
        # link answers once they are through.
        rss0 = env.target.resources().rss_kib
        sends = 5000
        batch = b"".join(c.session.seal(encode_message(Send("slow", 0.0001)))
                         for _ in range(sends))
        t0 = time.monotonic()
        c.sock.sendall(batch)
        assert raw_session_alive(c, timeout_s=30)
        # The echo overtakes at most the queue (256) of sends still waiting.
        assert wait_until(lambda: env.target.stats()["calls"]["slow"] == done + sends, 10)
        sends_s = time.monotonic() - t0
        rss_grown = env.target.resources().rss_kib - rss0
    assert env.target.stats()["slow_max"] <= 8
    probe.check()
    c.close()
    delta = env.recovered(timeout_s=5)
    record(f"T20 {n} pipelined calls to a 0.2 s handler, cap 8: {done} ran (never more than "
           f"8 at once), {busy} got busy, all answered in {answered_s:.2f} s; {sends} sends "
           f"in one write: all {sends} ran, in {sends_s:.1f} s, RSS +{rss_grown} KiB meanwhile; "
           f"probe worst {probe.worst * 1000:.0f} ms; after: {delta}")


def test_T20_one_paired_peer_cannot_starve_the_others_with_default_limits(env, record):
    """C keeps 32 calls to a slow handler in progress; D (another paired peer) sends
    two echo calls at a time. D's calls must not wait for C's."""
    c, d = env.raw(), env.raw(env.d, src="127.0.0.3")
    c.handshake()
    d.handshake()
    _flood_calls(c, 64, "slow", 0.6)
    assert c.wait_for(lambda p: len(p.payloads) >= 32, timeout_s=5)  # the busy ones
    worst = 0.0
    for k in range(3):
        t0 = time.monotonic()
        d.sock.sendall(d.session.seal(encode_message(Call(2 * k + 1, "echo", k)))
                       + d.session.seal(encode_message(Call(2 * k + 2, "echo", k))))
        for rid in (2 * k + 1, 2 * k + 2):
            d.answer(rid, timeout_s=3)
        worst = max(worst, time.monotonic() - t0)
    record(f"T20 defaults: C keeps 32 calls to a 0.6 s handler in progress; D's echo "
           f"calls waited up to {worst * 1000:.0f} ms")
    assert worst < 0.5


def test_T20_one_paired_peer_cannot_pile_up_links(env, record):
    base = env.target.resources()
    peers = []
    for i in range(60):
        peer = env.raw(src=spread(i))
        peer.handshake()
        peers.append(peer)

    def held() -> int:
        return sum(1 for link in env.target.command("links")
                   if link["peer"] == str(env.c.peer_id) and not link["closed"])

    # The newest link forces out the oldest retiring one at once, unless that one
    # is still routing what came with its message 3: then as soon as it is done.
    assert wait_until(lambda: held() <= 2, 2), held()
    grown = env.target.resources().delta(base)
    record(f"T20 one paired peer opened 60 authenticated links in a row: the target held "
           f"{held()} of them ({grown})")
    assert grown.threads <= 4


def test_T20_queued_sends_from_one_peer_hold_bounded_memory(env, record):
    c = env.raw()
    c.handshake()
    c.sock.settimeout(20)
    rss0 = env.target.resources().rss_kib
    padded = encode_message(Send("slow", [0.005, b"x" * 262_144]))  # 256 KiB each
    for _ in range(6):
        c.sock.sendall(b"".join(c.session.seal(padded) for _ in range(50)))
    assert raw_session_alive(c, timeout_s=5)
    grown = env.target.resources().rss_kib - rss0
    record(f"T20 300 sends of 256 KiB to a slow handler: target RSS +{grown / MIB:.0f} MiB "
           f"while they wait")
    assert grown < 16 * MIB


#: 49,990 empty maps: ~50 KB on the wire, ~3.5 MB once decoded (issue 17's inflation).
_INFLATING = [{}] * 49_990


def test_T20_queued_work_is_charged_what_it_holds_not_its_wire_bytes(env, record):
    """Sends of ~49,990 empty maps each (~50 KB on the wire, ~3.5 MB once decoded) to a
    slow handler: queued work stays encoded and is charged what it holds once decoded,
    and one peer's work stays on one warm worker thread, so the target's RSS grows by
    at most twice its per-peer byte budget (4 MiB), at its peak while they are queued.
    It grew by ~300 MiB when the queue held decoded messages, and by ~13.5 MiB while
    each send woke a different worker (each thread keeps what its decodes freed in a
    malloc arena of its own)."""
    c = env.raw()
    c.handshake()
    c.sock.settimeout(20)
    rss0 = env.target.resources().rss_kib
    inflating = encode_message(Send("slow", [0.2, _INFLATING]))
    assert len(inflating) < 60_000
    with Sampler(env.target.pid) as sampler:
        for _ in range(3):
            c.sock.sendall(b"".join(c.session.seal(inflating) for _ in range(40)))
        assert raw_session_alive(c, timeout_s=30)
        assert wait_until(lambda: env.target.stats()["calls"]["slow"] >= 2, timeout_s=10)
    grown = sampler.max_rss_kib - rss0
    record(f"T20 120 sends of 50 KB that decode to 3.5 MB each, to a slow handler: "
           f"target RSS +{grown / MIB:.1f} MiB at most (budget 4 MiB)")
    assert grown < 8 * MIB  # twice the budget


def test_T20_queued_calls_are_charged_what_they_hold_not_their_wire_bytes(env, record):
    """The same for calls: ~50 KB calls that decode to ~3.5 MB each, to a slow handler.
    A call this large is checked on arrival but built only on a worker, charged a bound
    of what it will hold first, so the budget (4 MiB) holds one such call at a time:
    the others that come meanwhile are answered busy without ever being built, and
    every call is answered. RSS grew by 11-16 MiB while such calls ran on the reading
    thread (each overrunning one handed reading to a new thread, which built the next
    calls before the budget could refuse them, each thread in a malloc arena of its
    own). How many run and how many are refused depends on how fast they arrive; that
    no two ever run at once does not."""
    c = env.raw()
    c.handshake()
    c.sock.settimeout(20)
    rss0 = env.target.resources().rss_kib
    args = [0.2, _INFLATING]
    assert len(encode_message(Call(1, "slow", args))) < 60_000
    with Sampler(env.target.pid) as sampler:
        for k in range(3):
            _flood_calls(c, 40, "slow", args, first_rid=1 + 40 * k)
        assert raw_session_alive(c, timeout_s=30)

        def answered() -> list:
            return [m for m in c.messages() if 1 <= getattr(m, "request_id", 0) <= 120]

        assert c.wait_for(lambda p: len(answered()) >= 120, timeout_s=30), len(answered())
    grown = sampler.max_rss_kib - rss0
    msgs = answered()
    busy = sum(1 for m in msgs if type(m) is Error and m.code == BUSY)
    done = sum(1 for m in msgs if type(m) is Reply and m.result == "done")
    stats = env.target.stats()
    record(f"T20 120 calls of 50 KB that decode to 3.5 MB each, to a slow handler: "
           f"{done} ran (at most {stats['slow_max']} at once), {busy} busy, target RSS "
           f"+{grown / MIB:.1f} MiB at most (budget 4 MiB)")
    assert busy + done == 120 and done >= 1 and busy >= 1
    assert stats["slow_max"] == 1  # two would hold 7 MB: over the budget
    assert grown < 8 * MIB  # twice the budget


@pytest.mark.parametrize("name,payload", [
    ("bye-newline", [6, "bye\n2099-01-01 00:00:00,000 WARNING MainThread peernet: forged"]),
    ("bye-escapes", [6, "\x1b]0;pwned\x07\x1b[2J"]),
    ("detail-newline", [2, 1, "handler_error", "E\nWARNING forged"]),
])
def test_peer_text_cannot_forge_log_lines_or_reach_a_terminal_raw(env, record, name, payload):
    """A paired peer's bye reason or error detail with a line break or terminal escapes
    ends its link as a protocol error, and the node's log gains no line of its making.
    The log is read once the target has written its own line about the link's end,
    which is where a bye reason used to be copied raw (a whole forged WARNING line)."""
    c = env.raw()
    c.handshake()
    c.send_payload(cbor.encode(payload))
    assert not raw_session_alive(c, timeout_s=2)
    closed = f"link with {c.identity.peer_id.short} closed"
    assert wait_until(lambda: closed in env.target.log(), timeout_s=5), env.target.log()[-500:]
    log = env.target.log()
    assert "forged" not in log and "pwned" not in log and "\x1b" not in log
    assert all(line[:4].isdigit() for line in log.splitlines() if line.strip()), log[-500:]
    record(f"T17 {name}: link closed as a protocol error, log has no injected line")


def test_a_send_to_an_unexposed_handler_is_dropped_silently(env, record):
    """protocol.md: a send names no reply, so one to a handler the target does not
    expose gets nothing back (no error, no bye), and the link stays up."""
    c = env.raw()
    c.handshake()
    for i in range(3):
        c.send(Send("not_exposed", i))
    assert raw_session_alive(c, timeout_s=5)  # the echo behind them is answered
    msgs = c.messages()
    assert [type(m).__name__ for m in msgs] == ["Reply"], msgs  # only the echo's
    assert c.closed_at is None
    record("a send to an unexposed handler: no reply, no error, link up")


@pytest.mark.timeout(30)
def test_a_retired_link_whose_peer_never_says_superseded_closes_after_the_bound(
        make_env, record):
    """The node keeps the newer of two links from the same initiator and says
    Bye(superseded) on the old one at once. A peer that never answers loses the old
    link call_timeout + 1 s later (6 s with the default call_timeout of 5 s; 1 s
    here), not before (calls in flight get their answers) and not never."""
    call_timeout = 1.0
    env = make_env(call_timeout=call_timeout)
    old = env.raw()
    old.handshake()
    new = env.raw()
    new.handshake()
    t0 = time.monotonic()
    assert old.wait_for(lambda p: any(type(m) is Bye and m.reason == "superseded"
                                      for m in p.messages()), timeout_s=5)
    closed_after = old.wait_closed(timeout_s=call_timeout + 5)
    assert closed_after is not None, "the retired link was never closed"
    total = time.monotonic() - t0
    assert call_timeout + 1.0 - 0.3 <= total <= call_timeout + 1.0 + 2.0, total
    assert raw_session_alive(new, timeout_s=5)  # the link kept is unharmed
    record(f"a peer that never says superseded: old link closed {total:.2f} s after the "
           f"new one (bound call_timeout + 1 s = {call_timeout + 1:.1f} s)")
