"""The sans-IO secure session (peernet._proto.session): handshake, identity binding,
trust, READY, fragmentation, and what happens to anything malformed or hostile.

Hostile peers are built by hand from :class:`HandshakeState`, so each test controls
exactly one thing that is wrong.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519

from peernet._proto.framing import frame
from peernet._proto.noise import TAG_LEN, HandshakeState
from peernet._proto.session import (
    _BINDING,
    _BINDING_CONTEXT,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_FRAGMENT,
    PROLOGUE,
    PROTOCOL_VERSION,
    HandshakeCompleted,
    LocalCredentials,
    MessageReceived,
    Session,
    SessionClosed,
    SessionState,
)
from peernet.errors import MessageTooLarge, PeerNetError, ProtocolError
from peernet.identity import Identity
from peernet.ids import PeerId

from tests.helpers import (
    check_event_invariants,
    feed_chunks,
    make_pair,
    open_pair,
    pump,
    record_transcript,
    seeded_identity,
    split_frames,
)

FLAG_MORE, FLAG_END, FLAG_READY = 0x00, 0x01, 0x02


def kinds(events):
    return [type(e) for e in events]


def assert_closed(session, events, *, count=1):
    """``events`` ends with the session's one SessionClosed and the session is closed."""
    assert events, "expected a SessionClosed event"
    assert isinstance(events[-1], SessionClosed), events
    assert kinds(events).count(SessionClosed) == 1
    assert isinstance(events[-1].reason, str) and events[-1].reason
    assert session.state is SessionState.CLOSED
    assert session.close_reason == events[-1].reason
    assert session.data_to_send() == b""


def binding(identity: Identity, *, version=PROTOCOL_VERSION, port=0, ed=None, sig=None,
            static=None) -> bytes:
    """An identity payload; every field can be overridden to make it wrong."""
    static = identity.x25519_public if static is None else static
    if sig is None:
        sig = identity.sign(_BINDING_CONTEXT + static)
    ed = identity.peer_id.bytes if ed is None else ed
    return _BINDING.pack(version, port, ed, sig)


def strip(wire: bytes) -> bytes:
    """The body of one frame."""
    assert int.from_bytes(wire[:2], "big") == len(wire) - 2
    return wire[2:]


class HandResponder:
    """A responder driven by hand: it says whatever payload the test gives it."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.hs = HandshakeState(False, identity.x25519_private, prologue=PROLOGUE)
        self.send = self.recv = None

    def message2(self, message1_wire: bytes, payload: bytes) -> bytes:
        assert self.hs.read_message(strip(message1_wire)) == b""
        return frame(self.hs.write_message(payload))

    def read_message3(self, message3_wire: bytes) -> bytes:
        payload = self.hs.read_message(strip(message3_wire))
        self.send, self.recv = self.hs.split()
        return payload

    def transport(self, plaintext: bytes) -> bytes:
        return frame(self.send.encrypt(plaintext))


class HandInitiator:
    """An initiator driven by hand."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.hs = HandshakeState(True, identity.x25519_private, prologue=PROLOGUE)
        self.send = self.recv = None

    def message1(self, payload: bytes = b"") -> bytes:
        return frame(self.hs.write_message(payload))

    def message3(self, message2_wire: bytes, payload: bytes) -> bytes:
        self.responder_payload = self.hs.read_message(strip(message2_wire))
        out = frame(self.hs.write_message(payload))
        self.send, self.recv = self.hs.split()
        return out

    def transport(self, plaintext: bytes) -> bytes:
        return frame(self.send.encrypt(plaintext))

    def open(self, plaintext_wire: bytes) -> bytes:
        return self.recv.decrypt(strip(plaintext_wire))


def trust_all(peer: PeerId) -> bool:
    return True


def responder_against_hand_initiator(initiator_identity=None, responder_identity=None,
                                     is_trusted=trust_all):
    """A real responder that has answered message 1 of a hand-driven initiator."""
    i_id = initiator_identity or Identity.generate()
    r_id = responder_identity or Identity.generate()
    responder = Session(LocalCredentials.from_identity(r_id), initiator=False,
                        is_trusted=is_trusted, listen_port=4040)
    hand = HandInitiator(i_id)
    assert responder.receive_data(hand.message1()) == []
    message2 = responder.data_to_send()
    assert len(message2) == 2 + 195
    return responder, hand, message2, i_id, r_id


def initiator_against_hand_responder(responder_identity=None, expected_peer=None,
                                     is_trusted=trust_all):
    """A real initiator whose message 1 a hand-driven responder has read."""
    r_id = responder_identity or Identity.generate()
    i_id = Identity.generate()
    initiator = Session(LocalCredentials.from_identity(i_id), initiator=True,
                        is_trusted=is_trusted,
                        expected_peer=expected_peer or r_id.peer_id, listen_port=7000)
    hand = HandResponder(r_id)
    return initiator, hand, initiator.data_to_send(), i_id, r_id


# =====================================================================================
# Happy path
# =====================================================================================


def test_handshake_step_by_step():
    pair = make_pair(initiator_port=1111, responder_port=2222)
    i, r = pair.initiator, pair.responder
    assert i.state is SessionState.HANDSHAKING and r.state is SessionState.HANDSHAKING

    message1 = i.data_to_send()
    assert len(message1) == 2 + 32
    with pytest.raises(ProtocolError):  # no keys yet: nothing can be sealed
        i.seal(b"too early")
    assert i.data_to_send() == b""  # data_to_send drains
    assert r.receive_data(message1) == []
    message2 = r.data_to_send()
    assert len(message2) == 2 + 195

    assert i.receive_data(message2) == []
    # Message 3 is out, but the initiator is not connected until READY arrives. It may
    # already seal: its first call travels with message 3, in the same write.
    assert i.state is SessionState.AWAITING_READY
    message3 = i.data_to_send()
    assert len(message3) == 2 + 163
    first = i.seal(b"first call")

    r_events = r.receive_data(message3 + first)
    assert r_events == [HandshakeCompleted(pair.initiator_id, 1111, r.handshake_hash),
                        MessageReceived(b"first call")]
    assert r.state is SessionState.OPEN
    ready = r.data_to_send()
    assert len(ready) == 2 + TAG_LEN + 1  # one READY byte, sealed

    i_events = i.receive_data(ready)
    assert i_events == [HandshakeCompleted(pair.responder_id, 2222, i.handshake_hash)]
    assert i.state is SessionState.OPEN
    assert i.handshake_hash == r.handshake_hash
    assert len(i.handshake_hash) == 32
    assert i.peer_id == pair.responder_id and r.peer_id == pair.initiator_id
    assert i.peer_listen_port == 2222 and r.peer_listen_port == 1111
    assert i.data_to_send() == b"" and r.data_to_send() == b""


def test_pump_gives_exactly_one_handshake_completed_per_side():
    pair = make_pair(initiator_port=0, responder_port=65535)
    ev_i, ev_r = pump(pair.initiator, pair.responder)
    assert len(ev_i) == 1 and len(ev_r) == 1
    assert ev_i[0].peer_id == pair.responder_id and ev_i[0].listen_port == 65535
    assert ev_r[0].peer_id == pair.initiator_id and ev_r[0].listen_port == 0
    assert ev_i[0].handshake_hash == ev_r[0].handshake_hash
    # Quiet afterwards: nothing more to say, no more events.
    assert pump(pair.initiator, pair.responder) == ([], [])


def test_handshake_hashes_differ_between_sessions():
    a = open_pair()
    b = open_pair()
    assert a.initiator.handshake_hash != b.initiator.handshake_hash


def test_messages_both_ways():
    pair = open_pair()
    i, r = pair.initiator, pair.responder
    assert r.receive_data(i.seal(b"ping")) == [MessageReceived(b"ping")]
    assert i.receive_data(r.seal(b"pong")) == [MessageReceived(b"pong")]
    assert r.receive_data(i.seal(b"")) == [MessageReceived(b"")]
    batch = i.seal(b"1") + i.seal(b"2") + i.seal(b"3")
    assert r.receive_data(batch) == [MessageReceived(b"1"), MessageReceived(b"2"),
                                     MessageReceived(b"3")]
    assert i.data_to_send() == b"" and r.data_to_send() == b""


@pytest.mark.parametrize(
    "size, frames",
    [(MAX_FRAGMENT, 1), (MAX_FRAGMENT + 1, 2), (2 * MAX_FRAGMENT, 2),
     (2 * MAX_FRAGMENT + 1, 3),
     (DEFAULT_MAX_MESSAGE_SIZE, -(-DEFAULT_MAX_MESSAGE_SIZE // MAX_FRAGMENT))],
)
def test_fragmentation_round_trip(size, frames):
    pair = open_pair()
    payload = random.Random(size).randbytes(size)
    for sender, receiver in [(pair.initiator, pair.responder),
                             (pair.responder, pair.initiator)]:
        wire = sender.seal(payload)
        parts = split_frames(wire)
        assert len(parts) == frames
        assert all(len(p) <= 2 + 65535 for p in parts)
        assert receiver.receive_data(wire) == [MessageReceived(payload)]


@pytest.mark.parametrize("head_len", [0, 1, 9, MAX_FRAGMENT - 1, MAX_FRAGMENT, MAX_FRAGMENT + 3])
@pytest.mark.parametrize("body_len", [0, 1, 4096, MAX_FRAGMENT - 9, MAX_FRAGMENT,
                                      3 * MAX_FRAGMENT + 17])
def test_seal_frames_of_head_and_body_is_seal_of_their_join(head_len, body_len):
    """The link seals a bulk message as its envelope and body, unjoined: the frames
    must be cut exactly where seal() of the joined message cuts them."""
    rng = random.Random(head_len * 7 + body_len)
    head, body = rng.randbytes(head_len), rng.randbytes(body_len)
    one, two = open_pair(), open_pair()
    frames = one.initiator.seal_frames(head, body)
    assert all(type(f) is bytes for f in frames)
    joined = two.initiator.seal(head + body)
    assert [len(f) for f in frames] == [len(f) for f in split_frames(joined)]
    assert one.responder.receive_data(b"".join(frames)) == [MessageReceived(head + body)]


def test_seal_frames_refuses_like_seal_and_consumes_nothing():
    pair = open_pair(max_message_size=100_000)
    i, r = pair.initiator, pair.responder
    with pytest.raises(MessageTooLarge):
        i.seal_frames(b"h" * 10, b"b" * (100_000 - 9))
    assert r.receive_data(b"".join(i.seal_frames(b"h", b"b" * 70_000))) == [
        MessageReceived(b"h" + b"b" * 70_000)]
    i.close()
    with pytest.raises(ProtocolError):
        i.seal_frames(b"h", b"b")


def test_max_message_size_round_trips_with_a_custom_limit():
    pair = open_pair(max_message_size=200_000)
    payload = b"m" * 200_000
    assert pair.responder.receive_data(pair.initiator.seal(payload)) == [
        MessageReceived(payload)]


@pytest.mark.parametrize("limit", [DEFAULT_MAX_MESSAGE_SIZE, 200_000, 1000])
def test_seal_refuses_one_byte_over_the_limit(limit):
    pair = open_pair(max_message_size=limit)
    i, r = pair.initiator, pair.responder
    with pytest.raises(MessageTooLarge):
        i.seal(b"x" * (limit + 1))
    assert issubclass(MessageTooLarge, PeerNetError)
    # Nothing was consumed: the session still works and the nonces still line up.
    assert i.state is SessionState.OPEN
    assert r.receive_data(i.seal(b"after")) == [MessageReceived(b"after")]


def test_oversize_single_frame_closes_the_receiver():
    pair = open_pair(initiator_max_message_size=5000, responder_max_message_size=1000)
    i, r = pair.initiator, pair.responder
    assert r.receive_data(i.seal(b"a" * 1000)) == [MessageReceived(b"a" * 1000)]
    events = r.receive_data(i.seal(b"a" * 1001))
    assert kinds(events) == [SessionClosed]
    assert_closed(r, events)


def test_oversize_reassembly_closes_the_receiver():
    pair = open_pair(initiator_max_message_size=1_000_000,
                     responder_max_message_size=100_000)
    i, r = pair.initiator, pair.responder
    assert r.receive_data(i.seal(b"b" * 100_000)) == [MessageReceived(b"b" * 100_000)]
    events = r.receive_data(i.seal(b"b" * 100_001))
    assert kinds(events) == [SessionClosed]
    assert_closed(r, events)


def test_oversize_reassembly_closes_as_soon_as_the_limit_is_passed():
    pair = open_pair(initiator_max_message_size=1_000_000,
                     responder_max_message_size=100_000)
    i, r = pair.initiator, pair.responder
    parts = split_frames(i.seal(b"c" * 600_000))
    assert len(parts) == 10
    assert r.receive_data(parts[0]) == []  # 65518 bytes: still within the limit
    events = r.receive_data(parts[1])  # 131036 > 100000: no waiting for the rest
    assert kinds(events) == [SessionClosed]
    assert_closed(r, events)
    assert feed_chunks(r, parts[2:]) == []


# =====================================================================================
# Coalesced and split input
# =====================================================================================


def test_message3_coalesced_with_transport_frames_W7():
    """Message 3 and the first transport frames in one read: all processed at once."""
    responder, hand, message2, i_id, _ = responder_against_hand_initiator()
    message3 = hand.message3(message2, binding(i_id, port=9))
    big = b"B" * 65000  # a frame far over the 512-byte handshake ceiling
    wire = (message3 + hand.transport(b"\x01one") + hand.transport(b"\x01" + big)
            + hand.transport(b"\x00frag-") + hand.transport(b"\x01ment"))
    events = responder.receive_data(wire)
    assert events == [
        HandshakeCompleted(i_id.peer_id, 9, responder.handshake_hash),
        MessageReceived(b"one"),
        MessageReceived(big),
        MessageReceived(b"frag-ment"),
    ]
    assert hand.open(responder.data_to_send()) == b"\x02"  # READY still goes out


def test_ready_coalesced_with_messages_reaches_the_initiator_in_order():
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    r.receive_data(i.data_to_send())
    i.receive_data(r.data_to_send())
    assert kinds(r.receive_data(i.data_to_send())) == [HandshakeCompleted]
    wire = r.data_to_send() + r.seal(b"hello") + r.seal(b"w" * (MAX_FRAGMENT + 7))
    events = i.receive_data(wire)
    assert kinds(events) == [HandshakeCompleted, MessageReceived, MessageReceived]
    assert events[1].payload == b"hello" and events[2].payload == b"w" * (MAX_FRAGMENT + 7)


TO_RESPONDER = [b"", b"a", b"x" * 700, bytes(range(256)) * 300, b"q" * (MAX_FRAGMENT + 1)]
TO_INITIATOR = [b"r", b"y" * (2 * MAX_FRAGMENT), b""]


@pytest.fixture(scope="module")
def transcript():
    t = record_transcript(TO_RESPONDER, TO_INITIATOR, initiator_port=5, responder_port=6)
    assert kinds(t.responder_events) == [HandshakeCompleted] + [MessageReceived] * 5
    assert [e.payload for e in t.responder_events[1:]] == TO_RESPONDER
    assert [e.payload for e in t.initiator_events[1:]] == TO_INITIATOR
    return t


def test_whole_initiator_stream_in_one_read(transcript):
    """Message 1, message 3 and every transport frame in one receive_data call."""
    r = transcript.fresh_pair().responder
    assert r.receive_data(transcript.to_responder) == transcript.responder_events


def test_whole_responder_stream_in_one_read(transcript):
    """Message 2, READY and every transport frame in one call."""
    i = transcript.fresh_pair().initiator
    assert i.receive_data(transcript.to_initiator) == transcript.initiator_events


@pytest.mark.parametrize("seed", range(12))
def test_random_chunking_gives_the_same_events(seed, transcript):
    rng = random.Random(seed)
    for side, stream, reference in [
        ("responder", transcript.to_responder, transcript.responder_events),
        ("initiator", transcript.to_initiator, transcript.initiator_events),
    ]:
        session = getattr(transcript.fresh_pair(), side)
        top = rng.choice([3, 40, 700, 20_000, 140_000])
        chunks, pos = [], 0
        while pos < len(stream):
            n = rng.randint(1, top)
            chunks.append(stream[pos : pos + n])
            pos += n
        assert feed_chunks(session, chunks) == reference, (side, top)
        assert session.state is SessionState.OPEN


def test_input_is_copied_from_a_reused_receive_buffer(transcript):
    """The edge hands in memoryview slices of one recv buffer it reuses: the session
    must copy what it keeps, so overwriting the buffer later changes nothing."""
    for side, stream, reference in [
        ("responder", transcript.to_responder, transcript.responder_events),
        ("initiator", transcript.to_initiator, transcript.initiator_events),
    ]:
        session = getattr(transcript.fresh_pair(), side)
        buf = bytearray(1000)
        view = memoryview(buf)
        events = []
        for pos in range(0, len(stream), 777):
            chunk = stream[pos : pos + 777]
            buf[: len(chunk)] = chunk
            events += session.receive_data(view[: len(chunk)])
            buf[:] = b"\xee" * len(buf)  # the next recv overwrites the buffer
        assert events == reference, side


def test_handshake_split_at_every_byte_boundary():
    t = record_transcript([b"hi", b"there"], [b"back"])
    for side, stream, reference in [("responder", t.to_responder, t.responder_events),
                                    ("initiator", t.to_initiator, t.initiator_events)]:
        for cut in range(1, len(stream)):
            session = getattr(t.fresh_pair(), side)
            events = session.receive_data(stream[:cut]) + session.receive_data(stream[cut:])
            assert events == reference, (side, cut)


def test_byte_by_byte():
    t = record_transcript([b"one", b"two" * 50], [b"three"])
    for side, stream, reference in [("responder", t.to_responder, t.responder_events),
                                    ("initiator", t.to_initiator, t.initiator_events)]:
        session = getattr(t.fresh_pair(), side)
        events = feed_chunks(session, [stream[k : k + 1] for k in range(len(stream))])
        assert events == reference


# =====================================================================================
# Trust
# =====================================================================================


def test_untrusted_responder_never_gets_message3():
    pair = make_pair(initiator_trusts_responder=False)
    i, r = pair.initiator, pair.responder
    r.receive_data(i.data_to_send())
    events = i.receive_data(r.data_to_send())
    assert kinds(events) == [SessionClosed]
    assert_closed(i, events)
    assert i.data_to_send() == b""  # message 3 (our identity) is never produced
    assert r.state is SessionState.HANDSHAKING
    assert i.peer_id is None


def test_responder_that_is_not_the_expected_peer_never_gets_message3():
    other = Identity.generate()
    pair = make_pair(expected_peer=other.peer_id)
    pair.initiator_trust.pair(other.peer_id)  # both trusted: only the identity is wrong
    i, r = pair.initiator, pair.responder
    r.receive_data(i.data_to_send())
    events = i.receive_data(r.data_to_send())
    assert_closed(i, events)
    assert kinds(events) == [SessionClosed]
    assert i.data_to_send() == b""
    assert r.state is SessionState.HANDSHAKING


def test_initiator_requires_expected_peer():
    creds = LocalCredentials.from_identity(Identity.generate())
    with pytest.raises(ValueError):
        Session(creds, initiator=True, is_trusted=trust_all)


def test_untrusted_initiator_is_refused_after_message3_without_ready():
    pair = make_pair(responder_trusts_initiator=False)
    i, r = pair.initiator, pair.responder
    r.receive_data(i.data_to_send())
    assert i.receive_data(r.data_to_send()) == []
    events = r.receive_data(i.data_to_send())
    assert kinds(events) == [SessionClosed]  # no HandshakeCompleted
    assert_closed(r, events)
    assert r.data_to_send() == b""  # no READY
    assert i.state is SessionState.AWAITING_READY
    assert pump(i, r) == ([], [])


@pytest.mark.parametrize("verdict", [1, "yes", None, False, [True]])
def test_only_true_from_the_trust_callback_counts(verdict):
    pair = make_pair(responder_is_trusted=lambda peer: verdict)
    ev_i, ev_r = pump(pair.initiator, pair.responder)
    assert ev_i == []
    assert_closed(pair.responder, ev_r)
    pair = make_pair(initiator_is_trusted=lambda peer: verdict)
    ev_i, ev_r = pump(pair.initiator, pair.responder)
    assert ev_r == []
    assert_closed(pair.initiator, ev_i)


def test_trust_callbacks_are_asked_about_the_right_peer_once():
    asked_i, asked_r = [], []
    pair = make_pair(initiator_is_trusted=lambda p: asked_i.append(p) or True,
                     responder_is_trusted=lambda p: asked_r.append(p) or True)
    i, r = pair.initiator, pair.responder
    r.receive_data(i.data_to_send())
    assert asked_r == [] and asked_i == []  # nobody is known after message 1
    i.receive_data(r.data_to_send())
    assert asked_i == [pair.responder_id] and asked_r == []
    r.receive_data(i.data_to_send())
    assert asked_r == [pair.initiator_id]
    i.receive_data(r.data_to_send())
    assert asked_i == [pair.responder_id]


def test_responder_trust_check_is_live_unpair_mid_handshake():
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    r.receive_data(i.data_to_send())  # message 1 answered while still paired
    assert pair.responder_trust.unpair(pair.initiator_id) is True
    i.receive_data(r.data_to_send())
    events = r.receive_data(i.data_to_send())
    assert kinds(events) == [SessionClosed]
    assert r.data_to_send() == b""


def test_responder_trust_check_is_live_pair_mid_handshake():
    pair = make_pair(responder_trusts_initiator=False)
    i, r = pair.initiator, pair.responder
    r.receive_data(i.data_to_send())
    pair.responder_trust.pair(pair.initiator_id)
    i.receive_data(r.data_to_send())
    assert kinds(r.receive_data(i.data_to_send())) == [HandshakeCompleted]


def test_connecting_to_ourselves_is_refused():
    me = Identity.generate()
    pair = make_pair(initiator_identity=me, responder_identity=me)
    pair.initiator_trust.pair(me.peer_id)
    pair.responder_trust.pair(me.peer_id)
    ev_i, ev_r = pump(pair.initiator, pair.responder)
    assert kinds(ev_i) == [SessionClosed]
    assert ev_r == []
    assert pair.responder.state is SessionState.HANDSHAKING  # never saw message 3


def test_responder_refuses_an_initiator_with_its_own_identity():
    me = Identity.generate()
    responder, hand, message2, _, _ = responder_against_hand_initiator(
        initiator_identity=me, responder_identity=me)
    events = responder.receive_data(hand.message3(message2, binding(me)))
    assert kinds(events) == [SessionClosed]
    assert_closed(responder, events)


# =====================================================================================
# Hand-built identity payloads
# =====================================================================================


def test_hand_responder_with_a_correct_binding_is_accepted():
    """Control for the hostile-responder tests: the harness itself works."""
    initiator, hand, message1, i_id, r_id = initiator_against_hand_responder()
    assert initiator.receive_data(hand.message2(message1, binding(r_id, port=4321))) == []
    assert initiator.state is SessionState.AWAITING_READY
    payload = hand.read_message3(initiator.data_to_send())
    assert payload == binding(i_id, port=7000)
    events = initiator.receive_data(hand.transport(b"\x02"))
    assert events == [HandshakeCompleted(r_id.peer_id, 4321, initiator.handshake_hash)]


def test_hand_initiator_with_a_correct_binding_is_accepted():
    responder, hand, message2, i_id, r_id = responder_against_hand_initiator()
    events = responder.receive_data(hand.message3(message2, binding(i_id, port=1234)))
    assert events == [HandshakeCompleted(i_id.peer_id, 1234, responder.handshake_hash)]
    assert hand.responder_payload == binding(r_id, port=4040)
    assert hand.open(responder.data_to_send()) == b"\x02"


def _flip_sign(ed: bytes) -> bytes:
    b = bytearray(ed)
    b[31] ^= 0x80
    return bytes(b)


def bad_payloads():
    """(name, builder) pairs: builder(identity, other) -> (payload, claimed PeerId)."""
    return [
        ("empty", lambda me, other: (b"", me.peer_id)),
        ("one byte short", lambda me, other: (binding(me)[:-1], me.peer_id)),
        ("one byte long", lambda me, other: (binding(me) + b"\x00", me.peer_id)),
        ("twice", lambda me, other: (binding(me) * 2, me.peer_id)),
        ("version 0", lambda me, other: (binding(me, version=0), me.peer_id)),
        ("version 2", lambda me, other: (binding(me, version=2), me.peer_id)),
        ("version 255", lambda me, other: (binding(me, version=255), me.peer_id)),
        # Another valid Ed25519 key that even signed our Noise key: it still does not
        # convert to the static key the handshake proved.
        ("someone else's key", lambda me, other: (
            _BINDING.pack(PROTOCOL_VERSION, 0, other.peer_id.bytes,
                          other.sign(_BINDING_CONTEXT + me.x25519_public)),
            other.peer_id)),
        ("someone else's whole binding", lambda me, other: (binding(other), other.peer_id)),
        ("signature flipped", lambda me, other: (
            binding(me, sig=bytes([binding(me)[35] ^ 1]) + binding(me)[36:]), me.peer_id)),
        ("signature zero", lambda me, other: (binding(me, sig=bytes(64)), me.peer_id)),
        ("signature by someone else", lambda me, other: (
            binding(me, sig=other.sign(_BINDING_CONTEXT + me.x25519_public)), me.peer_id)),
        ("signature without context", lambda me, other: (
            binding(me, sig=me.sign(me.x25519_public)), me.peer_id)),
        ("signature over another static key", lambda me, other: (
            binding(me, sig=me.sign(_BINDING_CONTEXT + other.x25519_public)), me.peer_id)),
        # The Ed25519 -> X25519 map forgets the sign of x: the twin key converts to the
        # same Noise key, and only the signature tells them apart.
        ("sign-flipped twin key", lambda me, other: (
            binding(me, ed=_flip_sign(me.peer_id.bytes)),
            PeerId(_flip_sign(me.peer_id.bytes)))),
        ("all-zero key", lambda me, other: (binding(me, ed=bytes(32)), PeerId(bytes(32)))),
        ("identity point key", lambda me, other: (
            binding(me, ed=b"\x01" + bytes(31)), PeerId(b"\x01" + bytes(31)))),
        ("non-canonical key", lambda me, other: (
            binding(me, ed=b"\xff" * 32), PeerId(b"\xff" * 32))),
    ]


BAD_PAYLOADS = bad_payloads()


def test_twin_key_premise():
    me = Identity.generate()
    twin = _flip_sign(me.peer_id.bytes)
    assert twin != me.peer_id.bytes
    assert crypto_sign_ed25519_pk_to_curve25519(twin) == me.x25519_public


@pytest.mark.parametrize("name, build", BAD_PAYLOADS, ids=[n for n, _ in BAD_PAYLOADS])
def test_initiator_refuses_bad_identity_payload_in_message2(name, build):
    r_id = Identity.generate()
    other = Identity.generate()
    payload, claimed = build(r_id, other)
    # The initiator dialled exactly the claimed peer and trusts everyone, so only the
    # payload itself can be the reason to refuse.
    initiator, hand, message1, _, _ = initiator_against_hand_responder(
        responder_identity=r_id, expected_peer=claimed)
    events = initiator.receive_data(hand.message2(message1, payload))
    assert kinds(events) == [SessionClosed]
    assert_closed(initiator, events)
    assert initiator.data_to_send() == b""  # no message 3
    assert initiator.peer_id is None


@pytest.mark.parametrize("name, build", BAD_PAYLOADS, ids=[n for n, _ in BAD_PAYLOADS])
def test_responder_refuses_bad_identity_payload_in_message3(name, build):
    i_id = Identity.generate()
    other = Identity.generate()
    payload, _ = build(i_id, other)
    responder, hand, message2, _, _ = responder_against_hand_initiator(initiator_identity=i_id)
    events = responder.receive_data(hand.message3(message2, payload))
    assert kinds(events) == [SessionClosed]  # no HandshakeCompleted
    assert_closed(responder, events)
    assert responder.data_to_send() == b""  # no READY
    assert responder.peer_id is None


@pytest.mark.parametrize("name, build", BAD_PAYLOADS, ids=[n for n, _ in BAD_PAYLOADS])
def test_a_verified_binding_remembered_never_admits_a_bad_one(name, build):
    """Checked bindings are remembered (a reconnect skips ~100 us of checks): that must
    hold only for the exact bytes, never for a variant from the same peer."""
    i_id, other = Identity.generate(), Identity.generate()
    good, hand, message2, _, _ = responder_against_hand_initiator(initiator_identity=i_id)
    events = good.receive_data(hand.message3(message2, binding(i_id)))
    assert kinds(events) == [HandshakeCompleted]
    for _ in range(2):  # the second good handshake is served from memory
        again, hand, message2, _, _ = responder_against_hand_initiator(initiator_identity=i_id)
        assert kinds(again.receive_data(hand.message3(message2, binding(i_id)))) == \
            [HandshakeCompleted]
    payload, _ = build(i_id, other)
    responder, hand, message2, _, _ = responder_against_hand_initiator(initiator_identity=i_id)
    events = responder.receive_data(hand.message3(message2, payload))
    assert kinds(events) == [SessionClosed]
    assert responder.peer_id is None


def test_nonempty_payload_in_message1_is_refused():
    responder = Session(LocalCredentials.from_identity(Identity.generate()),
                        initiator=False, is_trusted=trust_all)
    hand = HandInitiator(Identity.generate())
    events = responder.receive_data(hand.message1(b"hello"))
    assert kinds(events) == [SessionClosed]
    assert_closed(responder, events)
    assert responder.data_to_send() == b""  # no message 2


# =====================================================================================
# Tampering and misbehaving transport
# =====================================================================================


def _flip(data: bytes, index: int, bit: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 1 << bit
    return bytes(b)


def _run_tampered_handshake(which: int, index: int, bit: int):
    """Run a handshake, flipping one bit in the body of frame ``which`` (0: message 1,
    1: message 2, 2: message 3, 3: READY). Returns (pair, events_i, events_r)."""
    pair = make_pair(deterministic=True)
    i, r = pair.initiator, pair.responder
    ev_i, ev_r = [], []
    route = [(i, r, ev_r), (r, i, ev_i), (i, r, ev_r), (r, i, ev_i)]
    for step, (src, dst, sink) in enumerate(route):
        wire = src.data_to_send()
        if not wire:
            break
        if step == which:
            wire = _flip(wire, 2 + index, bit)
        sink += dst.receive_data(wire)
    return pair, ev_i, ev_r


@pytest.mark.parametrize("which, length", [(0, 32), (1, 195), (2, 163), (3, 17)],
                         ids=["message1", "message2", "message3", "ready"])
def test_one_flipped_bit_in_a_handshake_message_closes(which, length):
    for index in range(length):
        for bit in {index % 8, 7 - index % 8}:
            pair, ev_i, ev_r = _run_tampered_handshake(which, index, bit)
            i, r = pair.initiator, pair.responder
            if which in (0, 1, 3):  # detected by the initiator
                assert kinds(ev_i) == [SessionClosed], (index, bit)
                assert i.state is SessionState.CLOSED
            if which in (0, 1):  # ... before it says who it is
                assert ev_r == [] and r.state is SessionState.HANDSHAKING
            if which == 2:
                assert kinds(ev_r) == [SessionClosed], (index, bit)
                assert ev_i == [] and i.state is SessionState.AWAITING_READY
            if which == 3:
                assert kinds(ev_r) == [HandshakeCompleted]  # it sent READY in good faith
            assert i.data_to_send() == b"" and r.data_to_send() == b""


def test_one_flipped_bit_in_a_transport_frame_closes():
    t = record_transcript([b"hello, tamper me"])
    last = t.to_responder_frames[-1]
    prefix = t.to_responder[: len(t.to_responder) - len(last)]
    for index in range(2, len(last)):  # every body byte; the header is tested elsewhere
        r = t.fresh_pair().responder
        assert kinds(r.receive_data(prefix)) == [HandshakeCompleted]
        events = r.receive_data(_flip(last, index, index % 8))
        assert kinds(events) == [SessionClosed], index
        assert_closed(r, events)


@pytest.mark.parametrize("fault", ["tampered", "short header", "oversize", "bad flag"])
def test_messages_before_a_fault_in_the_same_read_count(fault):
    # One read often brings many frames: those before the bad one are delivered, in
    # order, then the close, and nothing after it.
    pair = open_pair(initiator_max_message_size=5000, responder_max_message_size=1000)
    i, r = pair.initiator, pair.responder
    good = i.seal(b"one") + i.seal(b"two")
    if fault == "tampered":
        bad = _flip(i.seal(b"three"), 5, 1)
    elif fault == "short header":
        bad = (5).to_bytes(2, "big") + b"x" * 5
    elif fault == "oversize":
        bad = i.seal(b"a" * 1001)
    else:
        bad = frame(i._send.encrypt(b"\x07three"))
    events = r.receive_data(good + bad + i.seal(b"after"))
    assert events[:2] == [MessageReceived(b"one"), MessageReceived(b"two")]
    assert kinds(events) == [MessageReceived, MessageReceived, SessionClosed]
    assert_closed(r, events)


def test_replayed_transport_frame_closes():
    pair = open_pair()
    i, r = pair.initiator, pair.responder
    f1 = i.seal(b"pay me once")
    assert r.receive_data(f1) == [MessageReceived(b"pay me once")]
    events = r.receive_data(f1)
    assert kinds(events) == [SessionClosed]
    assert_closed(r, events)


def test_reordered_transport_frames_close():
    pair = open_pair()
    i, r = pair.initiator, pair.responder
    f1, f2 = i.seal(b"first"), i.seal(b"second")
    events = r.receive_data(f2 + f1)
    assert kinds(events) == [SessionClosed]
    assert_closed(r, events)


def test_dropped_transport_frame_closes():
    pair = open_pair()
    i, r = pair.initiator, pair.responder
    f1, _f2, f3 = i.seal(b"1"), i.seal(b"2"), i.seal(b"3")
    assert r.receive_data(f1) == [MessageReceived(b"1")]
    events = r.receive_data(f3)
    assert kinds(events) == [SessionClosed]


def test_dropped_fragment_closes():
    pair = open_pair()
    i, r = pair.initiator, pair.responder
    parts = split_frames(i.seal(b"z" * (2 * MAX_FRAGMENT + 5)))
    assert len(parts) == 3
    events = r.receive_data(parts[0] + parts[2])
    assert kinds(events) == [SessionClosed]


@pytest.mark.parametrize("cut", [1, 2, 16])
def test_truncated_transport_frame_closes(cut):
    pair = open_pair()
    i, r = pair.initiator, pair.responder
    body = strip(i.seal(b"a message long enough to cut"))
    events = r.receive_data(frame(body[:-cut]))  # a consistent header, a short body
    assert kinds(events) == [SessionClosed]
    assert_closed(r, events)


def test_reflected_frame_closes():
    """A frame the responder sealed itself, bounced back at it."""
    pair = open_pair()
    r = pair.responder
    events = r.receive_data(r.seal(b"echo"))
    assert kinds(events) == [SessionClosed]


@pytest.mark.parametrize("length", [0, 1, 16])
def test_frame_shorter_than_a_tag_plus_flag_after_handshake_closes(length):
    pair = open_pair()
    for session in (pair.initiator, pair.responder):
        events = session.receive_data(length.to_bytes(2, "big") + b"\x00" * length)
        assert kinds(events) == [SessionClosed]
        assert_closed(session, events)


def test_short_frame_while_awaiting_ready_closes():
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    r.receive_data(i.data_to_send())
    i.receive_data(r.data_to_send())
    assert i.state is SessionState.AWAITING_READY
    events = i.receive_data((16).to_bytes(2, "big") + bytes(16))
    assert kinds(events) == [SessionClosed]


def _responder_after_message1():
    pair = make_pair()
    pair.responder.receive_data(pair.initiator.data_to_send())
    pair.responder.data_to_send()
    return pair.responder


@pytest.mark.parametrize("where", ["responder at message 1", "initiator at message 2",
                                   "responder at message 3"])
@pytest.mark.parametrize("length", [513, 1000, 65535, 0, 1, 31])
def test_handshake_frame_length_outside_limits_closes(where, length):
    if where == "responder at message 1":
        session = make_pair().responder
    elif where == "initiator at message 2":
        session = make_pair().initiator
        session.data_to_send()
    else:
        session = _responder_after_message1()
    # Only the header: the session must not wait for (or allocate) the announced body.
    events = session.receive_data(length.to_bytes(2, "big"))
    assert kinds(events) == [SessionClosed]
    assert_closed(session, events)


def test_initiator_refuses_a_message_before_ready():
    initiator, hand, message1, _, r_id = initiator_against_hand_responder()
    initiator.receive_data(hand.message2(message1, binding(r_id)))
    hand.read_message3(initiator.data_to_send())
    events = initiator.receive_data(hand.transport(b"\x01not ready yet"))
    assert kinds(events) == [SessionClosed]  # no HandshakeCompleted, no message
    assert initiator.peer_id is not None  # identity was known, but never reported


@pytest.mark.parametrize("ready", [b"\x02extra", b"\x00", b"\x01", b"\x03"])
def test_initiator_refuses_a_malformed_ready(ready):
    initiator, hand, message1, _, r_id = initiator_against_hand_responder()
    initiator.receive_data(hand.message2(message1, binding(r_id)))
    hand.read_message3(initiator.data_to_send())
    events = initiator.receive_data(hand.transport(ready))
    assert kinds(events) == [SessionClosed]


def test_second_ready_closes():
    initiator, hand, message1, _, r_id = initiator_against_hand_responder()
    initiator.receive_data(hand.message2(message1, binding(r_id)))
    hand.read_message3(initiator.data_to_send())
    events = initiator.receive_data(hand.transport(b"\x02") + hand.transport(b"\x02"))
    assert kinds(events) == [HandshakeCompleted, SessionClosed]


@pytest.mark.parametrize(
    "plaintexts",
    [[b"\x02"],  # READY from the initiator
     [b"\x03data"], [b"\xffdata"],  # unknown flags
     [b"\x00"],  # an empty MORE fragment
     [b"\x00abc", b"\x02"]],  # READY in the middle of a fragmented message
    ids=["ready-from-initiator", "flag-3", "flag-ff", "empty-more", "ready-mid-message"],
)
def test_responder_refuses_bad_transport_flags(plaintexts):
    responder, hand, message2, i_id, _ = responder_against_hand_initiator()
    assert kinds(responder.receive_data(hand.message3(message2, binding(i_id)))) == [
        HandshakeCompleted]
    events = responder.receive_data(b"".join(hand.transport(p) for p in plaintexts))
    assert kinds(events) == [SessionClosed]
    assert_closed(responder, events)


def test_hand_fragments_reassemble_and_empty_end_fragment_is_fine():
    responder, hand, message2, i_id, _ = responder_against_hand_initiator()
    responder.receive_data(hand.message3(message2, binding(i_id)))
    wire = hand.transport(b"\x00ab") + hand.transport(b"\x00cd") + hand.transport(b"\x01")
    assert responder.receive_data(wire) == [MessageReceived(b"abcd")]
    assert responder.receive_data(hand.transport(b"\x01")) == [MessageReceived(b"")]


def test_reassembly_limit_counts_many_small_fragments():
    i_id = Identity.generate()
    responder = Session(LocalCredentials.from_identity(Identity.generate()),
                        initiator=False, is_trusted=trust_all, max_message_size=1000)
    hand = HandInitiator(i_id)
    responder.receive_data(hand.message1())
    responder.receive_data(hand.message3(responder.data_to_send(), binding(i_id)))
    ok = b"".join(hand.transport(b"\x00" + b"k" * 100) for _ in range(10))
    assert responder.receive_data(ok + hand.transport(b"\x01")) == [
        MessageReceived(b"k" * 1000)]
    events = responder.receive_data(
        b"".join(hand.transport(b"\x00" + b"k" * 100) for _ in range(11)))
    assert kinds(events) == [SessionClosed]


# X25519 low-order points: DH with them is refused by libsodium.
LOW_ORDER = [bytes(32), b"\x01" + bytes(31),
             bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")]


@pytest.mark.parametrize("point", LOW_ORDER, ids=["zero", "one", "order8"])
def test_low_order_ephemeral_in_message1_closes_the_responder(point):
    responder = make_pair().responder
    events = responder.receive_data(frame(point))
    assert kinds(events) == [SessionClosed]
    assert_closed(responder, events)


@pytest.mark.parametrize("point", LOW_ORDER, ids=["zero", "one", "order8"])
def test_low_order_ephemeral_in_message2_closes_the_initiator(point):
    initiator = make_pair().initiator
    initiator.data_to_send()
    events = initiator.receive_data(frame(point + bytes(195 - 32)))
    assert kinds(events) == [SessionClosed]
    assert_closed(initiator, events)


def _raising_trust(peer):
    raise RuntimeError("trust database unavailable")


@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_trust_callback_that_raises_fails_closed(side):
    """A broken trust policy must deny (like a raising ``authorize``): the session ends
    with SessionClosed and forgets its handshake state, instead of the exception
    escaping receive_data and leaving the session half way through the handshake."""
    pair = make_pair(**{f"{side}_is_trusted": _raising_trust})
    ev_i, ev_r = pump(pair.initiator, pair.responder)
    session, events = (pair.initiator, ev_i) if side == "initiator" else (pair.responder, ev_r)
    assert kinds(events) == [SessionClosed]
    assert_closed(session, events)
    assert HandshakeCompleted not in kinds(ev_i + ev_r)


def test_replayed_message1_closes_the_responder():
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    message1 = i.data_to_send()
    r.receive_data(message1)
    r.data_to_send()
    events = r.receive_data(message1)
    assert kinds(events) == [SessionClosed]
    assert r.data_to_send() == b""


def test_replayed_message2_closes_the_initiator():
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    r.receive_data(i.data_to_send())
    message2 = r.data_to_send()
    i.receive_data(message2)
    events = i.receive_data(message2)
    assert kinds(events) == [SessionClosed]
    assert i.data_to_send() == b""  # message 3 is withdrawn with the session


# =====================================================================================
# After close
# =====================================================================================


def test_after_session_closed_input_is_ignored_and_seal_refuses():
    pair = open_pair()
    i, r = pair.initiator, pair.responder
    good = i.seal(b"valid")
    events = r.receive_data(b"\x00\x05short")
    assert_closed(r, events)
    reason = r.close_reason
    assert r.receive_data(good) == []
    assert r.receive_data(b"\x00\x00") == []
    assert r.receive_data(b"") == []
    with pytest.raises(ProtocolError):
        r.seal(b"anything")
    assert r.data_to_send() == b""
    assert r.close_reason == reason
    r.close("again")  # idempotent, keeps the first reason
    assert r.close_reason == reason


def test_local_close():
    pair = open_pair()
    i, r = pair.initiator, pair.responder
    good = i.seal(b"valid")
    r.close("bye")
    assert r.state is SessionState.CLOSED and r.close_reason == "bye"
    assert r.receive_data(good) == []
    with pytest.raises(ProtocolError):
        r.seal(b"x")


def test_close_during_handshake_withdraws_pending_output():
    pair = make_pair()
    i = pair.initiator
    i.close()
    assert i.data_to_send() == b""
    assert i.receive_data(pair.responder.data_to_send()) == []


@pytest.mark.parametrize("state", ["handshaking", "awaiting_ready"])
def test_seal_before_the_keys_refuses(state):
    """Nothing is sealed before a side has its transport keys: the initiator once it
    wrote message 3 (its first calls may travel with it), the responder only once it
    accepted message 3."""
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    if state == "awaiting_ready":
        r.receive_data(i.data_to_send())
        i.receive_data(r.data_to_send())
        assert r.receive_data(i.data_to_send() + i.seal(b"x"))[-1] == MessageReceived(b"x")
    else:
        with pytest.raises(ProtocolError):
            i.seal(b"x")
        with pytest.raises(ProtocolError):
            r.seal(b"x")


def test_a_responder_that_refuses_message_3_never_opens_what_came_with_it():
    """A call sent with message 3 to a responder that has unpaired us: the trust check
    fails on message 3 and the session ends there; the call is never decrypted."""
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    r._is_trusted = lambda peer: False
    r.receive_data(i.data_to_send())
    i.receive_data(r.data_to_send())
    events = r.receive_data(i.data_to_send() + i.seal(b"call"))
    assert len(events) == 1 and isinstance(events[0], SessionClosed)
    assert r.refused_peer == pair.initiator_id
    assert not any(isinstance(e, MessageReceived) for e in events)


def test_a_refused_initiator_leaves_the_port_it_listens_on():
    """The port in the refused key's signed binding is kept with it (issue 19's open
    item): where to dial that key if it is paired later."""
    pair = make_pair(responder_trusts_initiator=False, initiator_port=40123)
    i, r = pair.initiator, pair.responder
    r.receive_data(i.data_to_send())
    i.receive_data(r.data_to_send())
    r.receive_data(i.data_to_send())
    assert (r.refused_peer, r.refused_listen_port) == (pair.initiator_id, 40123)
    assert r.peer_id is None  # nothing else of it: the handshake ended there


def test_listen_port_is_validated():
    creds = LocalCredentials.from_identity(Identity.generate())
    for port in (-1, 65536):
        with pytest.raises(ValueError):
            Session(creds, initiator=False, is_trusted=trust_all, listen_port=port)


# =====================================================================================
# Property tests: hostile input never raises
# =====================================================================================

_I_CREDS = LocalCredentials.from_identity(seeded_identity("fuzz-initiator"))
_R_CREDS = LocalCredentials.from_identity(seeded_identity("fuzz-responder"))

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

chunk_sizes = st.lists(st.integers(1, 600), min_size=1, max_size=8)


def _fresh(initiator: bool) -> Session:
    if initiator:
        s = Session(_I_CREDS, initiator=True, is_trusted=trust_all,
                    expected_peer=_R_CREDS.peer_id)
        s.data_to_send()
        return s
    return Session(_R_CREDS, initiator=False, is_trusted=trust_all)


def _feed(session: Session, data: bytes, sizes: list[int]):
    events = []
    pos = k = 0
    while pos < len(data):
        n = sizes[k % len(sizes)]
        k += 1
        events += session.receive_data(data[pos : pos + n])  # must not raise
        pos += n
    return events


@FUZZ
@given(data=st.binary(max_size=1500), sizes=chunk_sizes, initiator=st.booleans(),
       prefix=st.sampled_from([b"", b"\x00\x20", b"\x00\xc3", b"\x00\xa3", b"\x00\x11"]))
def test_random_bytes_never_raise(data, sizes, initiator, prefix):
    session = _fresh(initiator)
    events = _feed(session, prefix + data, sizes)
    check_event_invariants(session, events)
    # Random bytes cannot authenticate: no handshake completes, nothing is delivered.
    assert session.state in (SessionState.HANDSHAKING, SessionState.CLOSED)
    assert MessageReceived not in kinds(events)
    assert HandshakeCompleted not in kinds(events)
    if session.state is SessionState.CLOSED:
        assert session.receive_data(b"\x00\x20" + bytes(32)) == []


@pytest.fixture(scope="module")
def fuzz_transcript():
    return record_transcript([b"hello", b"x" * 600, b""], [b"y" * 100, b"z"])


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 40)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=20)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("dup-frame"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("swap-frames"), st.integers(0, 10**6), st.just(0)),
)


def _mutate(stream: bytes, frames: list[bytes], ops) -> bytes:
    frames = list(frames)
    data = bytearray(stream)
    for op, pos, arg in ops:
        if op in ("dup-frame", "swap-frames"):
            k = pos % len(frames)
            if op == "dup-frame":
                frames.insert(k, frames[k])
            else:
                j = (k + 1) % len(frames)
                frames[k], frames[j] = frames[j], frames[k]
            data = bytearray(b"".join(frames))
            continue
        if not data:
            break
        p = pos % len(data)
        if op == "flip":
            data[p] ^= arg
        elif op == "delete":
            del data[p : p + arg]
        elif op == "insert":
            data[p:p] = arg
        elif op == "truncate":
            del data[p:]
        frames = [bytes(data)]  # frame structure no longer known
    return bytes(data)


@FUZZ
@given(ops=st.lists(_mutation, min_size=1, max_size=3), sizes=chunk_sizes,
       initiator=st.booleans())
def test_mutated_transcripts_never_raise(fuzz_transcript, ops, sizes, initiator):
    t = fuzz_transcript
    if initiator:
        stream, frames, reference = t.to_initiator, t.to_initiator_frames, t.initiator_events
    else:
        stream, frames, reference = t.to_responder, t.to_responder_frames, t.responder_events
    session = getattr(t.fresh_pair(), "initiator" if initiator else "responder")
    mutated = _mutate(stream, frames, ops)
    events = _feed(session, mutated, sizes)
    check_event_invariants(session, events)
    # Authenticity: whatever was delivered before the session closed is exactly what the
    # real peer sent, in order (a prefix of the unmutated run).
    delivered = [e for e in events if not isinstance(e, SessionClosed)]
    assert delivered == reference[: len(delivered)]
    if mutated == stream:
        assert events == reference
    if session.state is SessionState.CLOSED:
        assert session.receive_data(stream) == []
