"""Complete handshakes that must still fail, and concurrent ones that must not mix up.

security.md T6 (untrusted keys, both roles), T7 (expected-peer mismatch), T8 (replayed
handshake), T10b (self-connection, both roles), T14 (trust is live at message 3, unpair
closes links), T21/T22 (concurrent handshakes, message 3 and a call in one write).
"""

from __future__ import annotations

import socket
import threading
import time

from peernet._proto.messages import Call, Reply, encode_message
from peernet._proto.session import LocalCredentials, Session
from peernet.identity import Identity
from tests.conftest import wait_until

from .harness import (
    MIB,
    RawPeer,
    attacker_socket,
    closed_within,
    read_exact,
    spread,
)

MSG2_WIRE = 2 + 195
INCR = encode_message(Call(1, "incr", []))


class LinkWatcher:
    """Polls the target's link table while an attack runs; collects every proven peer."""

    def __init__(self, target) -> None:
        self.target = target
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="link-watcher", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for link in self.target.command("links"):
                if link["peer"]:
                    self.seen.add(link["peer"])
            self._stop.wait(0.01)

    def __enter__(self) -> LinkWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- T6: untrusted static keys -------------------------------------------------------------


def test_T6_untrusted_initiator_is_refused_at_message3(env, record):
    stranger = Identity.generate()
    times = []
    with env.prober() as probe, LinkWatcher(env.target) as watcher:
        for i in range(10):
            peer = env.raw(stranger, src=spread(i))
            peer.hello()  # message 2 reveals the target's static key: inherent to XX
            t0 = time.monotonic()
            peer.sock.sendall(peer.session.data_to_send() + peer.transport(b"\x01" + INCR))
            elapsed = peer.wait_closed(1.0)
            assert elapsed is not None, "an untrusted initiator was kept"
            times.append(time.monotonic() - t0)
            assert peer.received_after_msg2 == 0, "the target said something after message 2"
            peer.close()
    assert str(stranger.peer_id) not in watcher.seen
    assert str(stranger.peer_id) not in env.target.command("peers")
    assert env.target.stats()["counter"] == 0
    probe.check()
    delta = env.recovered()
    record(f"T6 untrusted initiator x10: closed {max(times) * 1000:.0f} ms after message 3 "
           f"(+ a sealed incr), zero bytes after message 2, never registered; probe worst "
           f"{probe.worst * 1000:.0f} ms; after: {delta}")


class RawResponder:
    """A listener on 127.0.0.3 that answers the target's dial as ``identity``."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.3", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]

    def answer_one(self) -> tuple[bytes, float]:
        """Accept a dial, answer message 1 with message 2; return (whatever came after
        message 2, seconds until the dialler closed)."""
        self.listener.settimeout(3)
        conn, _ = self.listener.accept()
        with conn:
            session = Session(LocalCredentials.from_identity(self.identity), initiator=False,
                              is_trusted=lambda peer: True)
            first = read_exact(conn, 2 + 32, 2.0)
            assert len(first) == 34, first
            session.receive_data(first)
            conn.sendall(session.data_to_send())
            result = closed_within(conn, 1.0)
        assert result.closed, "the dialler did not close"
        return result.received, result.elapsed_s

    def close(self) -> None:
        self.listener.close()


def _dial_and_answer(env, dialled, answering: Identity) -> tuple[bytes, float]:
    responder = RawResponder(answering)
    try:
        env.target.command("connect", peer=str(dialled), host="127.0.0.3", port=responder.port)
        return responder.answer_one()
    finally:
        env.target.command("unpair", peer=str(dialled))  # stop its redials
        responder.close()


def test_T6_target_never_sends_message3_to_an_untrusted_responder(env, record):
    stranger = Identity.generate()
    # The API cannot even dial an unpaired key ...
    try:
        env.target.command("connect", peer=str(stranger.peer_id), host="127.0.0.3", port=9)
    except RuntimeError as exc:
        assert "NotPaired" in str(exc)
    else:
        raise AssertionError("connect() to an unpaired peer was accepted")
    # ... and an untrusted key answering at a paired peer's address gets no message 3.
    with env.prober() as probe:
        after, elapsed = _dial_and_answer(env, env.d.peer_id, stranger)
    assert after == b"", "the target sent message 3 (its identity) to a stranger"
    probe.check()
    delta = env.recovered()
    record(f"T6 untrusted responder at a paired peer's address: no message 3, EOF after "
           f"{elapsed * 1000:.0f} ms; after: {delta}")


def test_T7_a_trusted_peer_answering_for_another_gets_no_message3(env, record):
    """The target dials D; C (also trusted) answers: a mismatch, refused before message 3."""
    with env.prober() as probe:
        after, elapsed = _dial_and_answer(env, env.d.peer_id, env.c)
    assert after == b""
    peers = env.target.command("peers")
    assert peers.get(str(env.c.peer_id)) != "online"
    assert all(link["peer"] not in (str(env.c.peer_id), str(env.d.peer_id))
               for link in env.target.command("links"))
    probe.check()
    delta = env.recovered()
    record(f"T7 trusted C answering a dial to D: no message 3, EOF after "
           f"{elapsed * 1000:.0f} ms, nothing registered; after: {delta}")


# -- T8: a recorded handshake replayed ----------------------------------------------------


def test_T8_replayed_handshake_and_calls_fail_at_message3(env, record):
    proxy = env.proxy()
    a = env.node_a()
    a.connect(env.target.id, "127.0.0.1", proxy.port)
    assert a.call(env.target.id, "incr", timeout=5) == 1
    assert a.call(env.target.id, "incr") == 2
    recorded = proxy.connections[0].frames["up"]  # msg1, msg3, call, call
    assert len(recorded) == 4 and len(recorded[1]) == 2 + 163
    worst = 0.0
    with env.prober() as probe:
        for i in range(5):
            with attacker_socket(env.target.port, spread(i)) as s:
                s.sendall(recorded[0])
                assert len(read_exact(s, MSG2_WIRE)) == MSG2_WIRE  # a fresh message 2
                t0 = time.monotonic()
                s.sendall(b"".join(recorded[1:]))
                result = closed_within(s, 1.0)
            assert result.closed and result.received == b""
            worst = max(worst, time.monotonic() - t0)
    assert env.target.stats()["counter"] == 2
    probe.check()
    assert a.call(env.target.id, "incr") == 3  # the real peer is unaffected
    delta = env.recovered()
    record(f"T8 recorded msg1/msg3/2 incr calls replayed x5: closed {worst * 1000:.0f} ms "
           f"after message 3, counter unchanged; after: {delta}")


# -- T10b: the node talking to itself -------------------------------------------------------


def test_T10_self_connection_is_refused_in_both_roles(env, record):
    # Initiator role: the target dials a relay that leads back to its own listener.
    relay = env.proxy()
    env.target.command("connect", peer=str(env.d.peer_id), host="127.0.0.1", port=relay.port)
    assert wait_until(lambda: relay.connections and relay.connections[0].done.is_set(), 3)
    conn = relay.connections[0]
    env.target.command("unpair", peer=str(env.d.peer_id))
    assert len(conn.frames["up"]) == 1, "message 3 went out to ourselves"
    assert len(conn.frames["down"]) == 1 and len(conn.frames["down"][0]) == MSG2_WIRE
    # Responder role: a peer holding the target's own key (a copied data dir) is refused.
    twin = RawPeer(env.target.identity, env.target.id, env.target.port)
    try:
        twin.hello()
        twin.sock.sendall(twin.session.data_to_send())
        assert twin.wait_closed(1.0) is not None
        assert twin.received_after_msg2 == 0
    finally:
        twin.close()
    assert all(link["peer"] != str(env.target.id) for link in env.target.command("links"))
    delta = env.recovered()
    record(f"T10b self-connection: refused after message 2 as initiator (no message 3), "
           f"after message 3 as responder (no READY); after: {delta}")


# -- T14: trust is read live ----------------------------------------------------------------


def test_T14_trust_is_checked_at_message3_and_unpair_closes_live_links(env, record):
    # Unpaired between message 2 and message 3: refused.
    peer = env.raw(env.c)
    peer.hello()
    env.target.command("unpair", peer=str(env.c.peer_id))
    peer.sock.sendall(peer.session.data_to_send())
    assert peer.wait_closed(1.0) is not None and peer.received_after_msg2 == 0
    # Paired between message 2 and message 3: accepted.
    peer = env.raw(env.c, src="127.0.0.3")
    peer.hello()
    env.target.command("pair", peer=str(env.c.peer_id))
    peer.finish()
    peer.send(Call(9, "whoami", None))
    assert peer.answer(9) == Reply(9, str(env.c.peer_id))
    # Unpaired while linked: the link goes at once.
    t0 = time.monotonic()
    env.target.command("unpair", peer=str(env.c.peer_id))
    assert peer.wait_closed(1.0) is not None
    closed_s = time.monotonic() - t0
    delta = env.recovered()
    record(f"T14 trust read live at message 3 (unpair/pair mid-handshake honoured); unpair "
           f"closed the live link in {closed_s * 1000:.0f} ms; after: {delta}")


# -- T21/T22: concurrent handshakes --------------------------------------------------------


def test_T22_concurrent_handshakes_never_mix_up_identities(env, record):
    """2 trusted peers x 20 concurrent connections, each sending message 3 and a whoami
    call in one write (T21): every answer names the caller, and comes promptly."""
    # 2 x 20 stays inside the default pre-auth cap (64 handshakes at once); past it the
    # acceptor closes the extra connections by design (T2), which is tested elsewhere.
    per_peer = 20
    results: list[tuple[str, object, float]] = []
    errors: list[str] = []
    go = threading.Barrier(2 * per_peer)

    def one(identity: Identity, i: int) -> None:
        try:
            peer = RawPeer(identity, env.target.id, env.target.port, spread(i))
        except OSError as exc:
            errors.append(repr(exc))
            go.abort()
            return
        try:
            go.wait(5)
            peer.hello(timeout_s=5)
            t0 = time.monotonic()
            peer.finish(early=[encode_message(Call(i + 1, "whoami", None))], timeout_s=5)
            answer = peer.answer(i + 1, 5)
            results.append((str(identity.peer_id), answer, time.monotonic() - t0))
        except Exception as exc:  # noqa: BLE001 -- collected and asserted below
            errors.append(f"{i}: {exc!r}")
        finally:
            peer.close()

    threads = [threading.Thread(target=one, args=(env.c if i % 2 else env.d, i),
                                name=f"dialer-{i}") for i in range(2 * per_peer)]
    with env.prober() as probe:
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert not errors, errors[:5]
    assert len(results) == 2 * per_peer
    for caller, answer, _ in results:
        assert isinstance(answer, Reply) and answer.result == caller
    worst = max(r[2] for r in results)
    assert worst < 1.0
    probe.check()
    delta = env.recovered()
    assert delta.rss_kib < 10 * MIB
    record(f"T21/T22 2 peers x {per_peer} concurrent handshakes, msg3+whoami in one write: "
           f"every answer is the caller's own id; worst msg3->answer {worst * 1000:.0f} ms; "
           f"probe worst {probe.worst * 1000:.0f} ms; after: {delta}")
