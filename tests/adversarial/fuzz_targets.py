"""Fuzz targets for every parser a peer's bytes reach, shared by the bounded run in
test_fuzz.py and the long run in fuzz_long.py (``scripts/fuzz``).

Two kinds, for each layer:

* **Properties** over hypothesis strategies (``PROPERTIES``): structure-aware inputs
  (a model of the frame reader, CBOR built from random heads, messages of every kind
  with random fields, whole handshakes with mutated messages and API calls out of turn,
  open sessions fed mutated traffic in random chunks, mutated announces).
* **Byte-level entry points** (``BYTE_TARGETS``): ``fn(data: bytes)``, for coverage-guided
  fuzzing with atheris, and for plain random bytes under hypothesis.

Each asserts the layer's contract: only the documented exception escapes
(``ProtocolError``, of which ``HandshakeError`` is one), and whatever is accepted is
exactly what an honest peer sent. What tests/unit already covers (random bytes into the
decoders, mutated fixed transcripts, single bit flips) is not repeated here.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Callable

from hypothesis import strategies as st

from peernet._proto import cbor
from peernet._proto.announce import ANNOUNCE_LEN, AnnounceFilter, decode_announce, encode_announce
from peernet._proto.framing import MAX_FRAME_LEN, Deframer
from peernet._proto.messages import (
    ERROR_CODES,
    Bye,
    Call,
    Error,
    Ping,
    Pong,
    Reply,
    Send,
    decode_message,
    encode_for_link,
    encode_message,
)
from peernet._proto.noise import HandshakeState
from peernet._proto.session import (
    MAX_FRAGMENT,
    PROLOGUE,
    LocalCredentials,
    MessageReceived,
    Session,
    SessionClosed,
    SessionState,
)
from peernet._proto.invite import (KIND_LONG, KIND_SHORT, InviteHello, InviterExchange,
                                   JoinerExchange, parse_code)
from peernet.errors import HandshakeError, InvalidInviteCode, InviteRejected, ProtocolError
from tests.accel import under_both
from tests.helpers import check_event_invariants, make_pair, pump, seeded_identity

# -- 1. the frame reader -----------------------------------------------------------------


def _reference_frames(stream: bytes, limits: list[tuple[int, int]]):
    """What a correct reader returns for ``stream``: frames in order, then ("error", i)
    if frame i's header is out of its limits, or ("partial",) if the stream ends early."""
    out, pos, i = [], 0, 0
    while True:
        lo, hi = limits[min(i, len(limits) - 1)]
        if len(stream) - pos < 2:
            return out, None
        n = int.from_bytes(stream[pos:pos + 2], "big")
        if not lo <= n <= hi:
            return out, i
        if len(stream) - pos - 2 < n:
            return out, None
        out.append(stream[pos + 2:pos + 2 + n])
        pos += 2 + n
        i += 1


def _read_as_chunks(d: Deframer, stream: bytes, cuts: list[int], take) -> tuple[list[bytes], bool]:
    """Feed ``stream`` to ``d`` in reads of the sizes ``cuts`` (cycled); after each read,
    ``take(d, got)`` appends what it can take. Returns (bodies, whether it raised)."""
    got: list[bytes] = []
    pos = k = 0
    while pos < len(stream):
        chunk = stream[pos:pos + cuts[k % len(cuts)]]
        pos += len(chunk)
        k += 1
        d.feed(chunk)
        try:
            take(d, got)
        except ProtocolError:
            return got, True
        finally:
            assert d.buffered <= 2 + MAX_FRAME_LEN + len(chunk)
    return got, False


def _assert_as_the_reference(got, raised, expected, error_at) -> None:
    assert got == expected[:len(got)]
    if raised:
        assert error_at == len(got)
    else:
        assert got == expected and error_at is None


def prop_deframer_frames_match_a_reference_reader(args) -> None:
    """frames() (fixed limits, a read's bodies in one call) returns what the reference
    reader does, and raises only after every body before the bad header."""
    stream, limits, cuts = args
    lo, hi = limits[0]
    expected, error_at = _reference_frames(stream, [(lo, hi)])

    def take(d: Deframer, got: list[bytes]) -> None:
        while bodies := d.frames():
            got += bodies

    got, raised = _read_as_chunks(Deframer(min_frame_len=lo, max_frame_len=hi),
                                  stream, cuts, take)
    _assert_as_the_reference(got, raised, expected, error_at)


def _frames_stream(draw) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 19)) == 0:  # a raw header, possibly out of limits
            parts.append(draw(st.binary(min_size=2, max_size=2)))
        else:
            body = draw(st.binary(min_size=0, max_size=300))
            parts.append(len(body).to_bytes(2, "big") + body)
    return b"".join(parts) + draw(st.binary(max_size=4))


_limits = st.tuples(st.sampled_from([0, 1, 1, 1, 17, 32]),
                    st.sampled_from([17, 300, 512, MAX_FRAME_LEN, MAX_FRAME_LEN]))
deframer_inputs = st.tuples(
    st.composite(lambda draw: _frames_stream(draw))(),
    st.lists(_limits, min_size=1, max_size=4).map(lambda ls: [(lo, max(lo, hi)) for lo, hi in ls]),
    st.lists(st.integers(1, 97), min_size=1, max_size=6),
)


def prop_deframer_matches_a_reference_reader(args) -> None:
    stream, limits, cuts = args
    expected, error_at = _reference_frames(stream, limits)

    def take(d: Deframer, got: list[bytes]) -> None:
        while True:
            lo, hi = limits[min(len(got), len(limits) - 1)]
            d.min_frame_len, d.max_frame_len = lo, hi  # limits change between frames
            body = d.next_frame()
            if body is None:
                return
            got.append(body)

    d = Deframer(min_frame_len=limits[0][0], max_frame_len=limits[0][1])
    got, raised = _read_as_chunks(d, stream, cuts, take)
    _assert_as_the_reference(got, raised, expected, error_at)


def bytes_deframer(data: bytes) -> None:
    if len(data) < 3:
        return
    d = Deframer(min_frame_len=data[0] % 40, max_frame_len=max(data[0] % 40, data[1] * 257))
    step = 1 + data[2] % 64
    whole_reads = data[2] & 0x80  # the session's transport path: frames() per read
    body = data[3:]
    try:
        for i in range(0, len(body), step):
            d.feed(body[i:i + step])
            if whole_reads:
                for frame in d.frames():
                    assert d.min_frame_len <= len(frame) <= d.max_frame_len
                continue
            while (frame := d.next_frame()) is not None:
                assert d.min_frame_len <= len(frame) <= d.max_frame_len
    except ProtocolError:
        pass


# -- 2. the CBOR profile ----------------------------------------------------------------


def _head(major: int, value: int, width: int | None) -> bytes:
    if width is None:
        width = (0 if value < 24 else 1 if value < 0x100 else 2 if value < 0x10000
                 else 4 if value < 2**32 else 8)
    if width == 0:
        return bytes([major << 5 | min(value, 23)])
    return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[width]]) + value.to_bytes(width, "big")


@st.composite
def cbor_items(draw, depth: int = 0) -> bytes:
    """A CBOR item built from random heads: mostly well formed, sometimes not (tags,
    indefinite lengths, breaks, reserved values, non-shortest heads, lies about lengths)."""
    roll = draw(st.integers(0, 99))
    width = draw(st.sampled_from([None] * 9 + [0, 1, 2, 4, 8]))
    if roll < 20:
        value = draw(st.integers(0, 2**64 - 1) | st.integers(0, 30))
        if width is not None and value >= 1 << (8 * max(width, 1)):
            width = None
        return _head(draw(st.sampled_from([0, 1])), value, width)
    if roll < 35:
        major = draw(st.sampled_from([2, 3]))
        body = draw(st.binary(max_size=20)) if major == 2 else draw(st.text(max_size=10)).encode(
            "utf-8", "surrogatepass")
        n = len(body) + draw(st.sampled_from([0] * 8 + [1, -1]))
        return _head(major, max(n, 0), width if width is None or len(body) < 256 else None) + body
    if roll < 60 and depth < 20:
        items = draw(st.lists(cbor_items(depth + 1), max_size=4))
        n = len(items) + draw(st.sampled_from([0] * 8 + [1, -1]))
        return _head(4, max(n, 0), None) + b"".join(items)
    if roll < 75 and depth < 20:
        pairs = draw(st.lists(st.tuples(
            st.one_of(st.text(max_size=3).map(lambda t: _head(3, len(t.encode()), None)
                                              + t.encode()), cbor_items(depth + 1)),
            cbor_items(depth + 1)), max_size=3))
        return _head(5, len(pairs), None) + b"".join(k + v for k, v in pairs)
    if roll < 80:
        return _head(6, draw(st.integers(0, 300)), None) + draw(cbor_items(depth + 1))
    if roll < 90:
        return draw(st.sampled_from([b"\xf4", b"\xf5", b"\xf6", b"\xf7", b"\xf8\x20", b"\xff",
                                     b"\x9f\x01\xff", b"\x5f\x41a\xff", b"\x1c", b"\xfc"]))
    return draw(st.sampled_from([b"\xf9", b"\xfa", b"\xfb"])) + draw(
        st.binary(min_size=2, max_size=8))


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


_EXACT = (type(None), bool, int, float, str, bytes, list, dict)


def _check_decoded(value: object, depth: int = 0) -> int:
    assert type(value) in _EXACT, type(value)
    if isinstance(value, list):
        return 1 + max((_check_decoded(v, depth + 1) for v in value), default=0)
    if isinstance(value, dict):
        assert all(type(k) is str for k in value)
        return 1 + max((_check_decoded(v, depth + 1) for v in value.values()), default=0)
    return 0


def prop_cbor_profile(args) -> None:
    data, max_depth, max_items = args
    try:
        value = cbor.decode(data, max_depth=max_depth, max_items=max_items)
    except ProtocolError:
        return
    assert _check_decoded(value) <= max_depth
    again = cbor.encode(value, max_depth=max_depth, max_items=max_items)
    assert _same(cbor.decode(again, max_depth=max_depth, max_items=max_items), value)


cbor_inputs = st.tuples(cbor_items(), st.integers(1, 20), st.integers(1, 200))


def bytes_cbor(data: bytes) -> None:
    if not data:
        return
    prop_cbor_profile((data[1:], 1 + data[0] % 20, 1 + data[0] * 7))


# -- 3. the seven messages --------------------------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers(-2**64, 2**64 - 1)
            | st.floats(allow_nan=False) | st.text(max_size=70) | st.binary(max_size=9))
_data = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
_rid = st.integers(1, 2**64 - 1) | st.sampled_from([0, -1, 2**64 - 1, True, 1.0])
_name = st.sampled_from(["echo", "a", "a.b:c-d_1", "e" * 64]) | st.sampled_from(
    ["_x", "", "e" * 65, "a/b", "1a", b"echo", 5])
_code = st.sampled_from(sorted(ERROR_CODES)) | st.sampled_from(["nope", "", None, 3])
_text = st.none() | st.text(max_size=200) | st.text(min_size=201, max_size=202) | st.just(b"x")
_nonce = st.binary(min_size=8, max_size=8) | st.binary(max_size=12) | st.just("12345678")
#: Per kind, the fields of a well-formed message; each may be swapped for random data,
#: dropped or doubled, so both sides of every check get exercised.
_SHAPES = {0: [_rid, _name, _data], 1: [_rid, _data], 2: [_rid, _code, _text],
           3: [_name, _data], 4: [_nonce], 5: [_nonce], 6: [_text]}


@st.composite
def message_arrays(draw) -> list:
    kind = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6] * 3 + [7, -1, 0.0, "0", True]))
    fields = [draw(f) for f in _SHAPES.get(kind if type(kind) is int else 0, [])]
    for _ in range(draw(st.integers(0, 2))):
        op = draw(st.integers(0, 2))
        if op == 0 and fields:
            fields[draw(st.integers(0, len(fields) - 1))] = draw(_data)
        elif op == 1 and fields:
            fields.pop()
        else:
            fields.append(draw(_data))
    return [kind, *fields]


def prop_messages(array: list) -> None:
    data = cbor.encode(array)
    try:
        msg = decode_message(data)
    except ProtocolError:
        return
    assert type(msg) in (Call, Reply, Error, Send, Ping, Pong, Bye)
    assert decode_message(encode_message(msg)) == msg


def _same_message(a: object, b: object) -> bool:
    """Equal records, counting NaN equal to NaN (a float in args or a result)."""
    return type(a) is type(b) and _same([getattr(a, f.name) for f in dataclasses.fields(a)],
                                        [getattr(b, f.name) for f in dataclasses.fields(b)])


def bytes_messages(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except ProtocolError:
        return
    assert _same_message(decode_message(encode_message(msg)), msg)


# -- 4. the Noise handshake -------------------------------------------------------------

_OPS = ["deliver"] * 6 + ["deliver-mutated"] * 2 + ["junk", "write-out-of-turn",
                                                     "read-out-of-turn", "split", "hash"]


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, val in ops:
        p = pos % (len(buf) + 1)
        if kind == 0 and buf:
            buf[p % len(buf)] ^= 1 << (val % 8)
        elif kind == 1:
            buf.insert(p, val)
        elif kind == 2 and buf:
            del buf[p % len(buf)]
        elif kind == 3:
            del buf[p:]
    return bytes(buf)


noise_programs = st.lists(st.tuples(
    st.sampled_from(_OPS),
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 300), st.integers(0, 255)),
             min_size=1, max_size=3),
    st.binary(max_size=120)), max_size=6)


def prop_noise_program(program) -> None:
    """Drive an XX handshake with a random mix of honest, mutated, junk and out-of-turn
    calls. Only HandshakeError escapes; a side that failed stays failed; both sides
    complete only if every message they read was the honest one, and then they agree on
    the handshake hash and the transport keys."""
    init = HandshakeState(True, seeded_identity("fz-i").x25519_private, prologue=PROLOGUE)
    resp = HandshakeState(False, seeded_identity("fz-r").x25519_private, prologue=PROLOGUE)
    sides = [init, resp]
    tampered = False
    turn = 0  # the side whose message is next in an honest run
    for op, ops, junk in program:
        writer, reader = sides[turn], sides[1 - turn]
        dead_before = [hs._failed for hs in sides]  # noqa: SLF001 -- the contract
        try:
            if op in ("deliver", "deliver-mutated"):
                if init.complete and resp.complete:
                    continue
                msg = writer.write_message(junk[:40])
                turn = 1 - turn
                if op == "deliver-mutated":
                    honest, msg = msg, _mutate(msg, ops)
                    reader.read_message(msg)
                    tampered |= msg != honest
                else:
                    reader.read_message(msg)
            elif op == "junk":
                reader.read_message(junk)
                tampered = True  # accepted: only message 1 can be (it has no key yet)
            elif op == "write-out-of-turn":
                reader.write_message(junk[:10])
            elif op == "read-out-of-turn":
                writer.read_message(junk)
            elif op == "split":
                writer.split()
            else:
                _ = writer.handshake_hash
        except HandshakeError:
            pass
        for hs, was_dead in zip(sides, dead_before):
            if was_dead:
                assert hs._failed and not hs.complete  # noqa: SLF001
    if init.complete and resp.complete:
        assert not tampered
        assert init.handshake_hash == resp.handshake_hash
        if not (init._split_done or resp._split_done):  # noqa: SLF001 -- "split" ran
            i_send, _ = init.split()
            _, r_recv = resp.split()
            assert r_recv.decrypt(i_send.encrypt(b"ok")) == b"ok"


def bytes_noise(data: bytes) -> None:
    """Message ``data[0] % 3 + 1`` of a real handshake replaced by ``data[1:]``."""
    if not data:
        return
    step = data[0] % 3
    init = HandshakeState(True, seeded_identity("fz-i").x25519_private, prologue=PROLOGUE)
    resp = HandshakeState(False, seeded_identity("fz-r").x25519_private, prologue=PROLOGUE)
    order = [(init, resp), (resp, init), (init, resp)]
    try:
        for i, (w, r) in enumerate(order):
            msg = w.write_message(b"")
            r.read_message(data[1:] if i == step else msg)
    except HandshakeError:
        return


# -- 5. the session state machine after a good handshake ----------------------------------

session_programs = st.lists(st.tuples(
    st.booleans(),                                   # direction: initiator -> responder?
    st.sampled_from([0, 1, 100, MAX_FRAGMENT, MAX_FRAGMENT + 1, 2 * MAX_FRAGMENT + 5]),
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 10**6), st.integers(1, 255)),
             max_size=2),                             # mutations of the sealed bytes
    st.lists(st.integers(1, 9000), min_size=1, max_size=4),  # read sizes
), min_size=1, max_size=6)


def _mutate_stream(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for kind, pos, val in ops:
        if not buf:
            break
        p = pos % len(buf)
        if kind == 0:
            buf[p] ^= val
        elif kind == 1:
            del buf[p:p + val]
        elif kind == 2:
            buf[p:p] = bytes([val]) * (val % 7 + 1)
        elif kind == 3:
            del buf[p:]
        elif kind == 4:
            buf += buf[p:p + 40]  # a replayed tail
        else:
            buf[p:p] = b"\x00\x05" + bytes(5)  # an injected short frame
    return bytes(buf)


def prop_session_program(program) -> None:
    pair = make_pair(max_message_size=3 * MAX_FRAGMENT)
    pump(pair.initiator, pair.responder)
    sessions = {True: pair.initiator, False: pair.responder}
    sent: dict[bool, list[bytes]] = {True: [], False: []}      # by sender
    got: dict[bool, list] = {True: [], False: []}              # by receiver
    for i, (forward, size, ops, cuts) in enumerate(program):
        sender, receiver = sessions[forward], sessions[not forward]
        payload = bytes([i % 251]) * size
        try:
            wire = sender.seal(payload)
        except ProtocolError:
            assert sender.state is SessionState.CLOSED
            continue
        sent[forward].append(payload)
        wire = _mutate_stream(wire, ops)
        pos = k = 0
        while pos < len(wire):
            n = cuts[k % len(cuts)]
            got[not forward] += receiver.receive_data(wire[pos:pos + n])
            pos += n
            k += 1
    for to_initiator in (True, False):
        events = got[to_initiator]
        session = sessions[to_initiator]
        check_event_invariants_after_open(session, events)
        delivered = [e.payload for e in events if isinstance(e, MessageReceived)]
        assert delivered == sent[not to_initiator][:len(delivered)]


def check_event_invariants_after_open(session: Session, events: list) -> None:
    kinds = [type(e) for e in events]
    assert kinds.count(SessionClosed) <= 1
    if SessionClosed in kinds:
        assert kinds[-1] is SessionClosed and session.state is SessionState.CLOSED
    assert set(kinds) <= {MessageReceived, SessionClosed}


def bytes_session(data: bytes) -> None:
    """Arbitrary bytes to an open responder and an open initiator, in 1..256-byte reads."""
    if not data:
        return
    pair = make_pair(deterministic=True)
    pump(pair.initiator, pair.responder)
    step = 1 + data[0]
    for session in (pair.responder, pair.initiator):
        events = []
        for i in range(1, len(data), step):
            events += session.receive_data(data[i:i + step])
        assert not any(isinstance(e, MessageReceived) for e in events)


def bytes_session_handshake(data: bytes) -> None:
    """Arbitrary bytes to a fresh responder: nothing is delivered, nothing escapes."""
    creds = LocalCredentials.from_identity(seeded_identity("fz-r"))
    session = Session(creds, initiator=False, is_trusted=lambda peer: True)
    events = session.receive_data(data)
    check_event_invariants(session, events)
    assert not any(isinstance(e, MessageReceived) for e in events)


# -- 6. the announce decoder and filter ---------------------------------------------------

_ANNOUNCER = seeded_identity("fz-announcer")
_GENUINE = encode_announce(_ANNOUNCER.sign, _ANNOUNCER.peer_id, port=4242, counter=7,
                           interval_s=5.0, address="10.0.0.9")

announce_mutations = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 200),
                                        st.integers(0, 255)), min_size=1, max_size=4)


def prop_announce(ops) -> None:
    packet = _mutate(_GENUINE, ops)
    try:
        decode_announce(packet)
    except ProtocolError:
        pass
    accepted = AnnounceFilter(seeded_identity("fz-me").peer_id).accept(packet, "10.0.0.9", 1.0)
    assert (accepted is not None) == (packet == _GENUINE)


def bytes_announce(data: bytes) -> None:
    packet = (data + bytes(ANNOUNCE_LEN))[:ANNOUNCE_LEN] if data[:1] == b"\x00" else data
    try:
        decode_announce(packet)
    except ProtocolError:
        pass
    f = AnnounceFilter(seeded_identity("fz-me").peer_id)
    assert f.accept(packet, "10.0.0.9", 1.0) is None or packet == _GENUINE


# -- 7. invites: codes and the exchange ------------------------------------------------------

_INV_H = bytes(range(32))
_INV_JOINER = seeded_identity("fz-joiner").peer_id
_INV_INVITER = seeded_identity("fz-inviter").peer_id


def _inviter() -> InviterExchange:
    return InviterExchange(b"pw", handshake_hash=_INV_H, joiner=_INV_JOINER,
                           inviter=_INV_INVITER, label="inviter")


invite_mutations = st.tuples(st.integers(0, 2), st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 60), st.integers(0, 255)), min_size=1,
    max_size=3))


def prop_invite_exchange(args) -> None:
    """A live exchange with one joiner message mutated in flight: the inviter fails with
    ProtocolError (WrongCode included), unless the mutation left the PAKE message and
    the confirmation as they were (only the label, sent after both, may differ)."""
    which, ops = args
    joiner = JoinerExchange(b"pw", handshake_hash=_INV_H, joiner=_INV_JOINER,
                            inviter=_INV_INVITER, label="joiner")
    inviter = _inviter()
    out: bytes | None = joiner.start()
    intact = True
    try:
        for i in range(3):
            assert out is not None
            sent = _mutate(out, ops) if i == which else out
            intact = intact and (sent == out or i == 2)
            reply = inviter.receive(sent)
            out = joiner.receive(reply)
    except (ProtocolError, InviteRejected):
        assert not inviter.done or which == 2
        return
    assert inviter.done and intact


def bytes_invite_code(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        code = parse_code(text)
    except InvalidInviteCode:
        return
    assert parse_code(code.text) == code


_HELLOS = (InviteHello(KIND_SHORT, nameplate=7).encode(),
           InviteHello(KIND_LONG, invite_id=bytes(8)).encode())


def bytes_invite_hello(data: bytes) -> None:
    """A valid hello (short or long, by the first byte) with the rest XORed over it and
    anything beyond its length appended: only ProtocolError escapes, and what decodes
    encodes to the same bytes."""
    if not data:
        return
    template, mask = _HELLOS[data[0] & 1], data[1:]
    raw = bytes(t ^ m for t, m in zip(template, mask.ljust(len(template), b"\0")))
    raw += mask[len(template):]
    try:
        hello = InviteHello.decode(raw)
    except ProtocolError:
        return
    assert hello.encode() == raw


def bytes_invite_inviter(data: bytes) -> None:
    """Random bytes as up to three joiner messages (each prefixed by a length byte)."""
    inviter = _inviter()
    at = 0
    try:
        while at < len(data):
            n = data[at]
            inviter.receive(data[at + 1:at + 1 + n])
            at += 1 + n
    except ProtocolError:
        pass
    assert not inviter.done


# -- 8. the compiled codec against the pure-Python reference -------------------------------
# Each target runs the public codec call under both backends (tests/accel.py) and asserts
# the same outcome: the same value (floats compared bit for bit, records field by field),
# or the same exception class and message. Under ASan/UBSan (sanitized.py) the same
# targets drive the sanitizer build of the accelerator.


class _Level(enum.IntEnum):
    LOW = 1


class _Label(str):
    pass


_limits = st.tuples(st.sampled_from([16, 16, 0, 1, 2, 3, 5, 20, 64]),
                    st.sampled_from([50_000, 50_000, 0, 1, 2, 4, 5, 7, 30, 200]))
_diff_scalars = (
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1)
    | st.sampled_from([2**64, -(2**64) - 1, 2**63, -(2**63) - 1, 10**30])
    | st.floats() | st.text(max_size=12) | st.binary(max_size=12)
    | st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)  # lone surrogates
    | st.binary(max_size=6).map(bytearray) | st.just(_Level.LOW)
    | st.text(max_size=4).map(_Label) | st.sampled_from([{1, 2}, 1j, memoryview(b"mv")]))
_diff_keys = st.text(max_size=5) | st.text(max_size=3).map(_Label) | st.integers(0, 3)
diff_values = st.recursive(
    _diff_scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.lists(inner, max_size=3).map(tuple)
                   | st.dictionaries(_diff_keys, inner, max_size=4)),
    max_leaves=24)


def _valid_then_mutated(draw) -> bytes:
    value = draw(diff_values)
    try:
        data = cbor.encode(value, max_depth=64, max_items=10**6)
    except (TypeError, ValueError):
        data = b"\x80"
    return _mutate(data, draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 300),
                                                 st.integers(0, 255)), max_size=3)))


diff_bytes = (cbor_items() | st.composite(_valid_then_mutated)() | st.binary(max_size=60))


def prop_cbor_diff(args) -> None:
    data, (max_depth, max_items) = args
    pure, compiled = under_both(cbor.decode, data, max_depth=max_depth, max_items=max_items)
    assert pure == compiled


def prop_encode_diff(args) -> None:
    value, (max_depth, max_items) = args
    pure, compiled = under_both(cbor.encode, value, max_depth=max_depth, max_items=max_items)
    assert pure == compiled


def _message_inputs(draw):
    array = draw(message_arrays())
    data = cbor.encode(array, max_depth=64, max_items=10**6)
    if draw(st.booleans()):
        data = _mutate(data, draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 80),
                                                     st.integers(0, 255)), max_size=3)))
    return array, data, draw(_limits)


def prop_messages_diff(args) -> None:
    array, data, (max_depth, max_items) = args
    pure, compiled = under_both(decode_message, data, max_depth=max_depth,
                                max_items=max_items)
    assert pure == compiled
    kind = array[0]
    if type(kind) is int and 0 <= kind <= 6:
        cls = (Call, Reply, Error, Send, Ping, Pong, Bye)[kind]
        fields = array[1:]
        if len(fields) == len(dataclasses.fields(cls)):  # type: ignore[arg-type]
            pure, compiled = under_both(encode_for_link, cls(*fields), max_depth=max_depth,
                                        max_items=max_items)
            assert pure == compiled


def bytes_cbor_diff(data: bytes) -> None:
    if data:
        prop_cbor_diff((data[1:], (data[0] % 20, data[0] * 7)))


def bytes_messages_diff(data: bytes) -> None:
    pure, compiled = under_both(decode_message, data)
    assert pure == compiled


# -- registries ---------------------------------------------------------------------------

PROPERTIES: dict[str, tuple[st.SearchStrategy, Callable[[object], None]]] = {
    "deframer": (deframer_inputs, prop_deframer_matches_a_reference_reader),
    "deframer-frames": (deframer_inputs, prop_deframer_frames_match_a_reference_reader),
    "cbor": (cbor_inputs, prop_cbor_profile),
    "messages": (message_arrays(), prop_messages),
    "noise": (noise_programs, prop_noise_program),
    "session": (session_programs, prop_session_program),
    "announce": (announce_mutations, prop_announce),
    "invite": (invite_mutations, prop_invite_exchange),
    "cbor-diff": (st.tuples(diff_bytes, _limits), prop_cbor_diff),
    "encode-diff": (st.tuples(diff_values, _limits), prop_encode_diff),
    "messages-diff": (st.composite(_message_inputs)(), prop_messages_diff),
}

BYTE_TARGETS: dict[str, Callable[[bytes], None]] = {
    "deframer": bytes_deframer,
    "cbor": bytes_cbor,
    "messages": bytes_messages,
    "noise": bytes_noise,
    "session": bytes_session,
    "session-handshake": bytes_session_handshake,
    "announce": bytes_announce,
    "invite-code": bytes_invite_code,
    "invite-hello": bytes_invite_hello,
    "invite-inviter": bytes_invite_inviter,
    "cbor-diff": bytes_cbor_diff,
    "messages-diff": bytes_messages_diff,
}

#: Targets that compare the compiled accelerator with the pure-Python reference: they
#: need the accelerator (tests/accel.py says when its absence fails or skips).
DIFFERENTIAL = frozenset({"cbor-diff", "encode-diff", "messages-diff"})

__all__ = ["BYTE_TARGETS", "DIFFERENTIAL", "PROPERTIES"]
