"""Pure test helpers for the sans-IO protocol core: no sockets, no threads, no clocks.

``make_pair()`` builds two identities, their trust lists and an initiator/responder
:class:`~peernet._proto.session.Session` pair; ``pump()`` shuttles the bytes each side
wants to send until both are quiet and returns the events each side saw.

``make_pair(deterministic=True)`` derives identities and ephemeral keys from fixed seeds,
so two pairs built that way produce byte-identical transcripts: a recorded stream can be
replayed (split, coalesced or mutated) into a fresh session that behaves exactly like the
one that produced it. ``record_transcript()`` builds such a recording.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from peernet._proto.framing import HEADER_LEN
from peernet._proto.session import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Event,
    HandshakeCompleted,
    LocalCredentials,
    MessageReceived,
    Session,
    SessionClosed,
    SessionState,
)
import peernet
from peernet.identity import Identity, load_or_create
from peernet.trust import TrustStore
from peernet.ids import PeerId

__all__ = [
    "Pair",
    "Transcript",
    "make_pair",
    "pump",
    "open_pair",
    "seeded_identity",
    "split_frames",
    "chunked",
    "feed_chunks",
    "record_transcript",
    "check_event_invariants",
    "prepaired",
]

_UNSET = object()


def seeded_identity(name: str) -> Identity:
    """A deterministic identity derived from ``name`` (test use only)."""
    return Identity.from_seed(hashlib.sha256(b"peernet-test-identity:" + name.encode()).digest())


def _seeded_key(name: str) -> bytes:
    return hashlib.sha256(b"peernet-test-ephemeral:" + name.encode()).digest()


@dataclass
class Pair:
    """Two sessions and everything they were built from."""

    initiator: Session
    responder: Session
    initiator_identity: Identity
    responder_identity: Identity
    initiator_trust: TrustStore
    responder_trust: TrustStore
    initiator_credentials: LocalCredentials
    responder_credentials: LocalCredentials

    @property
    def initiator_id(self) -> PeerId:
        return self.initiator_identity.peer_id

    @property
    def responder_id(self) -> PeerId:
        return self.responder_identity.peer_id


def make_pair(
    *,
    initiator_trusts_responder: bool = True,
    responder_trusts_initiator: bool = True,
    initiator_identity: Identity | None = None,
    responder_identity: Identity | None = None,
    expected_peer: PeerId | None | object = _UNSET,
    initiator_port: int = 0,
    responder_port: int = 0,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    initiator_max_message_size: int | None = None,
    responder_max_message_size: int | None = None,
    deterministic: bool = False,
    initiator_is_trusted=None,
    responder_is_trusted=None,
) -> Pair:
    """Build an initiator/responder Session pair, handshake not started.

    By default each side trusts the other (through an in-memory TrustStore whose
    ``is_trusted`` is the session's live callback) and the initiator expects the
    responder. ``expected_peer`` overrides what the initiator dials;
    ``*_is_trusted`` override the trust callbacks entirely. ``deterministic=True``
    uses fixed identities and ephemeral keys (see the module docstring); identities
    passed explicitly still win.
    """
    if deterministic:
        initiator_identity = initiator_identity or seeded_identity("initiator")
        responder_identity = responder_identity or seeded_identity("responder")
        i_eph: bytes | None = _seeded_key("initiator")
        r_eph: bytes | None = _seeded_key("responder")
    else:
        initiator_identity = initiator_identity or Identity.generate()
        responder_identity = responder_identity or Identity.generate()
        i_eph = r_eph = None
    i_trust = TrustStore.in_memory()
    r_trust = TrustStore.in_memory()
    if initiator_trusts_responder:
        i_trust.pair(responder_identity.peer_id, label="responder")
    if responder_trusts_initiator:
        r_trust.pair(initiator_identity.peer_id, label="initiator")
    i_creds = LocalCredentials.from_identity(initiator_identity)
    r_creds = LocalCredentials.from_identity(responder_identity)
    if expected_peer is _UNSET:
        expected_peer = responder_identity.peer_id
    initiator = Session(
        i_creds,
        initiator=True,
        is_trusted=initiator_is_trusted or i_trust.is_trusted,
        expected_peer=expected_peer,  # type: ignore[arg-type]
        listen_port=initiator_port,
        max_message_size=(max_message_size if initiator_max_message_size is None
                          else initiator_max_message_size),
        ephemeral_private=i_eph,
    )
    responder = Session(
        r_creds,
        initiator=False,
        is_trusted=responder_is_trusted or r_trust.is_trusted,
        listen_port=responder_port,
        max_message_size=(max_message_size if responder_max_message_size is None
                          else responder_max_message_size),
        ephemeral_private=r_eph,
    )
    return Pair(
        initiator, responder, initiator_identity, responder_identity,
        i_trust, r_trust, i_creds, r_creds,
    )


def pump(a: Session, b: Session, *, max_rounds: int = 64) -> tuple[list[Event], list[Event]]:
    """Shuttle ``data_to_send()`` between ``a`` and ``b`` until neither has anything to
    say; return ``(events seen by a, events seen by b)``.

    Only bytes the sessions produce on their own move (handshake messages, READY);
    sealed application messages are the caller's to deliver.
    """
    events_a: list[Event] = []
    events_b: list[Event] = []
    for _ in range(max_rounds):
        out_a = a.data_to_send()
        if out_a:
            events_b += b.receive_data(out_a)
        out_b = b.data_to_send()
        if out_b:
            events_a += a.receive_data(out_b)
        if not out_a and not out_b:
            return events_a, events_b
    raise AssertionError(f"sessions still talking after {max_rounds} rounds")


def open_pair(**kwargs) -> Pair:
    """``make_pair(**kwargs)`` with the handshake done; both sides asserted OPEN."""
    pair = make_pair(**kwargs)
    ev_i, ev_r = pump(pair.initiator, pair.responder)
    assert [type(e) for e in ev_i] == [HandshakeCompleted], ev_i
    assert [type(e) for e in ev_r] == [HandshakeCompleted], ev_r
    assert pair.initiator.state is SessionState.OPEN
    assert pair.responder.state is SessionState.OPEN
    return pair


def split_frames(stream: bytes) -> list[bytes]:
    """Split a well-formed byte stream into whole frames (header included)."""
    frames = []
    pos = 0
    while pos < len(stream):
        n = int.from_bytes(stream[pos : pos + HEADER_LEN], "big")
        frames.append(stream[pos : pos + HEADER_LEN + n])
        pos += HEADER_LEN + n
    assert pos == len(stream), "stream does not end on a frame boundary"
    return frames


def chunked(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    """Cut ``data`` into consecutive chunks of the given sizes (cycled), last one short."""
    sizes = [max(1, s) for s in sizes] or [len(data) or 1]
    out = []
    pos = 0
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        out.append(data[pos : pos + size])
        pos += size
        i += 1
    return out


def feed_chunks(session: Session, chunks: Iterable[bytes]) -> list[Event]:
    """Feed each chunk to ``session`` and return all events, in order."""
    events: list[Event] = []
    for chunk in chunks:
        events += session.receive_data(chunk)
    return events


@dataclass
class Transcript:
    """What each side of a deterministic pair wrote, in wire order.

    ``to_responder`` is everything the initiator wrote (message 1, message 3, sealed
    messages); ``to_initiator`` everything the responder wrote (message 2, READY, sealed
    messages). ``*_frames`` are the same bytes cut into frames, and ``*_events`` the
    events each side saw when the bytes were delivered frame by frame.
    """

    to_responder: bytes
    to_initiator: bytes
    to_responder_frames: list[bytes] = field(default_factory=list)
    to_initiator_frames: list[bytes] = field(default_factory=list)
    responder_events: list[Event] = field(default_factory=list)
    initiator_events: list[Event] = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)

    def fresh_pair(self) -> Pair:
        """A new deterministic pair that will reproduce this transcript."""
        return make_pair(deterministic=True, **self.kwargs)


def record_transcript(
    to_responder: Sequence[bytes] = (),
    to_initiator: Sequence[bytes] = (),
    **kwargs,
) -> Transcript:
    """Run a deterministic handshake, then seal ``to_responder`` messages on the initiator
    and ``to_initiator`` messages on the responder, and record every byte each side wrote.
    """
    pair = make_pair(deterministic=True, **kwargs)
    i, r = pair.initiator, pair.responder
    wrote_i: list[bytes] = []
    wrote_r: list[bytes] = []
    ev_i: list[Event] = []
    ev_r: list[Event] = []
    while True:
        out_i = i.data_to_send()
        if out_i:
            wrote_i.append(out_i)
            ev_r += r.receive_data(out_i)
        out_r = r.data_to_send()
        if out_r:
            wrote_r.append(out_r)
            ev_i += i.receive_data(out_r)
        if not out_i and not out_r:
            break
    assert i.state is SessionState.OPEN and r.state is SessionState.OPEN
    for payload in to_responder:
        sealed = i.seal(payload)
        wrote_i.append(sealed)
        ev_r += r.receive_data(sealed)
    for payload in to_initiator:
        sealed = r.seal(payload)
        wrote_r.append(sealed)
        ev_i += i.receive_data(sealed)
    stream_i = b"".join(wrote_i)
    stream_r = b"".join(wrote_r)
    return Transcript(
        stream_i, stream_r, split_frames(stream_i), split_frames(stream_r), ev_r, ev_i,
        dict(kwargs),
    )


def check_event_invariants(session: Session, events: Sequence[Event]) -> None:
    """Assert what must hold for any input: at most one HandshakeCompleted, before any
    message; a SessionClosed only as the last event, exactly when the session is closed;
    messages only once the handshake completed."""
    kinds = [type(e) for e in events]
    assert kinds.count(HandshakeCompleted) <= 1, events
    assert kinds.count(SessionClosed) <= 1, events
    if SessionClosed in kinds:
        assert kinds[-1] is SessionClosed, events
        assert session.state is SessionState.CLOSED
        assert isinstance(events[-1].reason, str) and events[-1].reason
        assert session.close_reason == events[-1].reason
    else:
        assert session.state is not SessionState.CLOSED
    if MessageReceived in kinds:
        assert HandshakeCompleted in kinds
        assert kinds.index(HandshakeCompleted) < kinds.index(MessageReceived), events
    if HandshakeCompleted in kinds and session.state is not SessionState.CLOSED:
        assert session.state is SessionState.OPEN
    if session.state is SessionState.OPEN:
        assert HandshakeCompleted in kinds


def mutate(data: bytes, draw, max_ops: int = 4) -> bytes:
    """Apply 1..max_ops random edits (flip a bit, set/insert/delete a byte, truncate,
    duplicate a run) to ``data``; ``draw`` is hypothesis's ``st.data()``."""
    from hypothesis import strategies as st

    buf = bytearray(data)
    for _ in range(draw.draw(st.integers(1, max_ops))):
        op = draw.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        pos = draw.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw.draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = draw.draw(st.integers(0, 255))
        elif op == "insert":
            buf.insert(pos, draw.draw(st.integers(0, 255)))
        elif op == "delete" and buf:
            del buf[pos]
        elif op == "truncate":
            del buf[pos:]
        elif op == "dup":
            buf[pos:pos] = buf[pos:pos + 8]
    return bytes(buf)


def prepaired(tmp_path: Path, names: list[str], *, pairs=None) -> dict[str, peernet.PeerId]:
    """Data dirs whose identities trust each other (every pair, or ``pairs``) before any
    node starts."""
    ids = {name: load_or_create(tmp_path / name).peer_id for name in names}
    for a, b in pairs or [(a, b) for a in names for b in names if a != b]:
        TrustStore.load(tmp_path / a).pair(ids[b], label=b)
    return ids
