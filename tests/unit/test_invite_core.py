"""The invite core in memory (issue 21): code formats, the message-3 hello, the SPAKE2
exchange state machines with every failure path, and the session's invite mode."""

from __future__ import annotations

import hashlib
import itertools
import os

import pytest

from peernet.errors import InvalidInviteCode, InviteExpired, InviteRejected, ProtocolError
from peernet.ids import PeerId
from peernet._proto import invite as core
from peernet._proto.invite import (
    HELLO_LEN,
    KIND_LONG,
    KIND_SHORT,
    InviteHello,
    InviterExchange,
    JoinerExchange,
    LongCode,
    ShortCode,
    WrongCode,
    encode_refusal,
    parse_code,
)
from peernet._proto.keys import Identity
from peernet._proto.session import (
    HandshakeCompleted,
    LocalCredentials,
    Session,
    SessionClosed,
    SessionState,
)
from peernet._proto.wordlist import WORDS

JOINER = PeerId(bytes(range(32)))
INVITER = PeerId(bytes(range(1, 33)))
H = hashlib.sha256(b"a handshake").digest()


def lev(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


# --- the word list --------------------------------------------------------------------


def test_the_word_list_has_256_distinct_words_one_typo_apart_at_least():
    assert len(WORDS) == 256 == len(set(WORDS))
    assert all(w.isascii() and w.isalpha() and w.islower() and 4 <= len(w) <= 7 for w in WORDS)
    assert len({w[:3] for w in WORDS}) == 256  # the first three letters pick the word
    assert min(lev(a, b) for a, b in itertools.combinations(WORDS, 2)) >= 2


# --- codes ------------------------------------------------------------------------------


def test_short_codes_round_trip_and_forgive_case_and_spaces():
    code = ShortCode(7, (WORDS.index("amber"), WORDS.index("orbit")))
    assert code.text == "7-amber-orbit" and str(code) == "7-amber-orbit"
    for typed in ("7-amber-orbit", " 7 Amber ORBIT ", "7 amber-orbit", "7--amber--orbit"):
        assert parse_code(typed) == code
    for n, a, b in ((1, 0, 255), (65535, 17, 17)):
        assert parse_code(ShortCode(n, (a, b)).text) == ShortCode(n, (a, b))
    assert code.password == b"peernet/1 invite short 7-amber-orbit"


@pytest.mark.parametrize("typed, says", [
    ("7-ambr-orbit", "did you mean 'amber'"),
    ("7-amber-orbiit", "did you mean 'orbit'"),
    ("7-amber", "got 1 word"),
    ("7-amber-orbit-acorn", "got 3 words"),
    ("0-amber-orbit", "must be 1..65535"),
    ("70000-amber-orbit", "must be 1..65535"),
    ("amber-orbit", "neither a short code"),
    ("", "empty"),
    ("7-amber-xylophone", "not in the word list"),
    ("\u00b2-amber-orbit", "must be 1..65535"),  # a digit to str.isdigit, not to int()
    ("1\u2075-amber-orbit", "must be 1..65535"),
])
def test_malformed_short_codes_say_what_is_wrong(typed, says):
    with pytest.raises(InvalidInviteCode, match=says):
        parse_code(typed)


def long_code(**changes) -> LongCode:
    fields = dict(inviter=INVITER, invite_id=bytes(range(16, 24)), secret=bytes(range(16)),
                  port=4321,
                  addresses=("192.168.1.9", "10.0.0.5"))
    fields.update(changes)
    return LongCode(**fields)


def test_long_codes_round_trip_with_their_addresses():
    for addresses in (("127.0.0.1",), ("192.168.1.9", "10.0.0.5", "::1", "fe80::1")):
        code = long_code(addresses=addresses)
        text = code.text
        assert text.startswith("pninv1") and text == text.lower()
        assert parse_code(text) == code
        assert parse_code(text.upper()) == code  # the QR code's alphanumeric form
        assert parse_code(text[:40] + "\n  " + text[40:]) == code  # a line break pasted
    assert len(long_code(addresses=("::1",) * 4).text) == 217  # the longest


def test_every_single_typo_in_a_long_code_is_caught_and_located():
    text = long_code().text
    for position in range(len("pninv1"), len(text)):
        for replacement in "qpzry":
            if text[position] == replacement:
                continue
            typo = text[:position] + replacement + text[position + 1:]
            with pytest.raises(InvalidInviteCode, match=f"position {position + 1}"):
                parse_code(typo)


@pytest.mark.parametrize("mangle, says", [
    (lambda t: t[:-1], "checksum"),
    (lambda t: t.replace("pninv1", "pninx1"), "not a long code|neither"),
    (lambda t: "pninv1" + t[6:20], "checksum|not a long code"),
])
def test_malformed_long_codes_are_refused(mangle, says):
    with pytest.raises(InvalidInviteCode, match=says):
        parse_code(mangle(long_code().text))


def test_a_long_code_with_another_version_or_trailing_bytes_is_refused():
    from peernet.ids import bech32m_encode, convertbits

    payload = _long_payload()
    for bad, says in ((b"\x03" + payload[1:], "unsupported long code version 3"),
                      (b"\x01" + payload[1:], "version 1"), (payload + b"\x00", "trailing"),
                      (payload[:-3], "malformed address"), (payload[:40], "truncated")):
        text = bech32m_encode("pninv", convertbits(bad, 8, 5, pad=True))
        with pytest.raises(InvalidInviteCode, match=says):
            parse_code(text)


def _long_payload() -> bytes:
    from peernet.ids import bech32m_decode, convertbits

    _, data = bech32m_decode(long_code().text, max_length=400)
    return bytes(convertbits(data, 5, 8, pad=False))


def test_codes_hide_their_secrets_in_repr():
    code = long_code()
    assert code.secret.hex() not in repr(code) and "secret" not in repr(code)
    assert "invite_id" not in repr(code) and code.invite_id.hex() not in repr(code)
    assert "invite_id" not in repr(InviteHello.for_code(code))
    short = ShortCode(7, (4, 200))
    assert WORDS[4] not in repr(short) and WORDS[200] not in repr(short)


def test_the_hello_is_eleven_exact_bytes_naming_a_number_or_an_id():
    hello = InviteHello.for_code(ShortCode(7, (4, 168)))
    raw = hello.encode()
    assert raw == bytes.fromhex("010201000000000000" "0007") and len(raw) == HELLO_LEN == 11
    assert InviteHello.decode(raw) == hello == InviteHello(KIND_SHORT, nameplate=7)
    code = long_code()
    long = InviteHello.for_code(code)
    assert long.encode() == bytes.fromhex("010202") + code.invite_id
    assert InviteHello.decode(long.encode()) == long and long.nameplate == 0
    for bad in (raw[:10], raw + b"\0", b"\x02" + raw[1:],
                raw[:1] + b"\x01" + raw[2:],  # version 1 (5 bytes, a number for both kinds)
                bytes.fromhex("0101020007"),
                raw[:2] + b"\x03" + raw[3:], raw[:-2] + b"\0\0",  # nameplate 0
                raw[:3] + b"\x01" + raw[4:]):  # a short hello's padding must be zero
        with pytest.raises(ProtocolError):
            InviteHello.decode(bad)
    for kind, number, invite_id in ((KIND_SHORT, 0, b""), (KIND_SHORT, 7, bytes(8)),
                                    (KIND_LONG, 7, bytes(8)), (KIND_LONG, 0, bytes(7)),
                                    (3, 7, b"")):
        with pytest.raises(ValueError):
            InviteHello(kind, number, invite_id)


# --- the exchange -----------------------------------------------------------------------


def pair_of(password_j: bytes, password_i: bytes, *, h_j: bytes = H, h_i: bytes = H,
            joiner_label: str | None = "laptop", inviter_label: str | None = "kitchen pi"):
    joiner = JoinerExchange(password_j, handshake_hash=h_j, joiner=JOINER, inviter=INVITER,
                            label=joiner_label)
    inviter = InviterExchange(password_i, handshake_hash=h_i, joiner=JOINER, inviter=INVITER,
                              label=inviter_label)
    return joiner, inviter


def run(joiner: JoinerExchange, inviter: InviterExchange) -> list[bytes]:
    """Both sides to the end; every message on the wire, in order."""
    wire = [joiner.start()]
    while not joiner.done:
        wire.append(inviter.receive(wire[-1]))
        reply = joiner.receive(wire[-1])
        if reply is not None:
            wire.append(reply)
    return wire


def test_the_exchange_pairs_both_sides_with_their_proposed_labels():
    joiner, inviter = pair_of(b"pw", b"pw")
    wire = run(joiner, inviter)
    assert [m[0] for m in wire] == [1, 2, 3, 4, 5, 6]
    assert [len(m) for m in wire] == [34, 34, 33, 33 + len("kitchen pi"), 1 + len("laptop"), 1]
    assert joiner.done and inviter.done
    assert joiner.peer_label == "kitchen pi" and inviter.peer_label == "laptop"


def test_no_labels_and_the_longest_labels_travel():
    joiner, inviter = pair_of(b"pw", b"pw", joiner_label=None, inviter_label="é" * 100)
    run(joiner, inviter)
    assert joiner.peer_label == "é" * 100 and inviter.peer_label is None
    with pytest.raises(ValueError):
        pair_of(b"pw", b"pw", joiner_label="x" * 401)


def test_a_wrong_code_fails_at_the_inviter_before_it_confirms_anything():
    joiner, inviter = pair_of(b"guess", b"right")
    j1 = joiner.start()
    i1 = inviter.receive(j1)
    j2 = joiner.receive(i1)
    with pytest.raises(WrongCode):
        inviter.receive(j2)
    assert not inviter.done and inviter.peer_label is None
    with pytest.raises(ProtocolError):  # burned: nothing more goes through
        inviter.receive(j2)
    with pytest.raises(InviteRejected) as caught:  # what the joiner is told
        joiner.receive(encode_refusal("wrong_code"))
    assert caught.value.reason == "wrong_code" and not joiner.done


def test_a_man_in_the_middle_relaying_between_two_sessions_fails():
    """Two Noise sessions have two handshake hashes (and the relay's own PeerId in
    each): relaying the PAKE messages gives both sides different keys."""
    h1, h2 = hashlib.sha256(b"joiner-relay").digest(), hashlib.sha256(b"relay-inviter").digest()
    joiner, inviter = pair_of(b"pw", b"pw", h_j=h1, h_i=h2)
    with pytest.raises(WrongCode):
        run(joiner, inviter)
    assert not joiner.done and not inviter.done


def test_the_pake_is_bound_to_both_peer_ids():
    other = PeerId(bytes(range(2, 34)))
    joiner = JoinerExchange(b"pw", handshake_hash=H, joiner=other, inviter=INVITER, label=None)
    inviter = InviterExchange(b"pw", handshake_hash=H, joiner=JOINER, inviter=INVITER,
                              label=None)
    with pytest.raises(WrongCode):
        run(joiner, inviter)


def test_a_replayed_exchange_fails_in_a_new_session():
    joiner, inviter = pair_of(b"pw", b"pw")
    wire = run(joiner, inviter)
    fresh = InviterExchange(b"pw", handshake_hash=hashlib.sha256(b"new").digest(),
                            joiner=JOINER, inviter=INVITER, label=None)
    fresh.receive(wire[0])  # the recorded J1 is a valid PAKE message...
    with pytest.raises(WrongCode):  # ...but its confirmation is for the old handshake
        fresh.receive(wire[2])


def test_an_inviter_that_cannot_prove_the_code_gets_nothing_from_the_joiner():
    joiner, _ = pair_of(b"pw", b"pw")
    impostor = InviterExchange(b"other", handshake_hash=H, joiner=JOINER, inviter=INVITER,
                               label="evil")
    i1 = impostor.receive(joiner.start())
    j2 = joiner.receive(i1)
    assert j2[0] == core.MSG_JOINER_CONFIRM
    forged = bytes([core.MSG_INVITER_CONFIRM]) + os.urandom(32) + b"evil"
    with pytest.raises(InviteRejected, match="could not prove") as caught:
        joiner.receive(forged)
    assert caught.value.reason == "wrong_code"
    assert joiner.peer_label is None and not joiner.done


def test_a_reflected_message_is_refused():
    joiner, inviter = pair_of(b"pw", b"pw")
    j1 = joiner.start()
    with pytest.raises(ProtocolError):  # J1 sent back as if it were the inviter's
        joiner.receive(bytes([core.MSG_INVITER_PAKE]) + j1[1:])
    with pytest.raises(ProtocolError):  # the inviter's own message fed to it
        inviter.receive(bytes([core.MSG_JOINER_PAKE]) + b"B" + j1[2:])


@pytest.mark.parametrize("step, message", [
    (0, b""),
    (0, b"\x01" + b"A" * 32),  # short
    (0, b"\x01" + b"A" + bytes(33)),  # long
    (0, b"\x01" + b"A" + bytes(32)),  # not a group element of the right kind
    (0, b"\x01" + b"A" + b"\x01" * 32),  # not on the curve
    (0, b"\x03" + bytes(32)),  # a confirmation first
    (0, b"\x00\x01\x02"),  # a CBOR call, say
    (1, b"\x03" + bytes(31)),
    (1, b"\x01" + b"A" * 33),  # the PAKE message again
    (2, b"\x05" + b"\xff\xfe"),  # a label that is not UTF-8
    (2, b"\x05" + b"x" * 401),
    (2, b"\x06"),
])
def test_every_malformed_joiner_message_fails_the_inviter(step, message):
    joiner, inviter = pair_of(b"pw", b"pw")
    sent = [joiner.start()]
    for _ in range(step):
        reply = joiner.receive(inviter.receive(sent[-1]))
        assert reply is not None
        sent.append(reply)
    with pytest.raises(ProtocolError):
        inviter.receive(message)
    assert not inviter.done


@pytest.mark.parametrize("step, message", [
    (0, b"\x02" + b"B" * 32),
    (0, b"\x02" + b"A" + bytes(32)),
    (0, b"\x04" + bytes(32)),
    (1, b"\x04" + bytes(20)),
    (1, b"\x04" + bytes(32 + 401)),
    (2, b"\x06\x00"),
    (2, b"\x04" + bytes(32)),
    (0, b"\x7f\x09"),  # an unknown refusal
    (0, b"\x7f"),
])
def test_every_malformed_inviter_message_fails_the_joiner(step, message):
    joiner, inviter = pair_of(b"pw", b"pw")
    out = joiner.start()
    for _ in range(step):
        out = joiner.receive(inviter.receive(out))
    with pytest.raises((ProtocolError, InviteRejected)):
        joiner.receive(message)
    assert not joiner.done


@pytest.mark.parametrize("reason, error", [
    ("used", InviteRejected), ("burned", InviteRejected), ("cancelled", InviteRejected),
    ("busy", InviteRejected), ("wrong_code", InviteRejected), ("expired", InviteExpired),
])
def test_refusals_become_clear_errors_at_any_step(reason, error):
    for step in range(3):
        joiner, inviter = pair_of(b"pw", b"pw")
        out = joiner.start()
        for _ in range(step):
            out = joiner.receive(inviter.receive(out))
        with pytest.raises(error) as caught:
            joiner.receive(encode_refusal(reason))
        if error is InviteRejected:
            assert caught.value.reason == reason


def test_the_spake2_module_is_imported_only_when_an_invite_is_used():
    import subprocess
    import sys

    probe = "import sys, peernet; n = peernet.Node; print('spake2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=30)
    assert out.stdout.strip() == "False", out.stderr


# --- the session's invite mode --------------------------------------------------------


def creds(seed: int) -> LocalCredentials:
    return LocalCredentials.from_identity(Identity.from_seed(bytes([seed]) * 32))


def handshake(initiator: Session, responder: Session) -> list:
    """Run both sessions until one stops; the responder's events."""
    events: list = []
    data = initiator.data_to_send()
    while data:
        events += responder.receive_data(data)
        back = responder.data_to_send()
        if not back:
            break
        initiator.receive_data(back)
        data = initiator.data_to_send()
    return events


def test_an_invite_hello_gets_past_message3_only_through_the_gate():
    joiner, inviter = creds(1), creds(2)
    hello = InviteHello(KIND_SHORT, 7).encode()
    seen = []

    def gate(peer, raw):
        seen.append((peer, raw))
        return True

    j = Session(joiner, initiator=True, is_trusted=lambda p: False,
                expected_peer=inviter.peer_id, invite=hello)
    r = Session(inviter, initiator=False, is_trusted=lambda p: False, invite_gate=gate)
    events = handshake(j, r)
    assert isinstance(events[-1], HandshakeCompleted)
    assert seen == [(joiner.peer_id, hello)]
    assert r.invite == hello and j.invite == hello
    assert j.state is SessionState.OPEN and r.state is SessionState.OPEN
    assert j.handshake_hash == r.handshake_hash


@pytest.mark.parametrize("gate", [None, lambda p, h: False, lambda p, h: 1 / 0])
def test_a_hello_without_an_open_invite_is_refused_at_message3(gate):
    joiner, inviter = creds(1), creds(2)
    j = Session(joiner, initiator=True, is_trusted=lambda p: False,
                expected_peer=inviter.peer_id, invite=InviteHello(KIND_LONG, invite_id=bytes(8)).encode())
    r = Session(inviter, initiator=False, is_trusted=lambda p: True, invite_gate=gate)
    events = handshake(j, r)
    assert isinstance(events[-1], SessionClosed) and r.state is SessionState.CLOSED
    assert r.invite is None and r.refused_peer is None  # not "an unpaired key knocked"


def test_the_joiner_still_checks_whom_it_dialled():
    joiner, inviter, other = creds(1), creds(2), creds(3)
    j = Session(joiner, initiator=True, is_trusted=lambda p: False,
                expected_peer=other.peer_id, invite=InviteHello(KIND_LONG, invite_id=bytes(8)).encode())
    r = Session(inviter, initiator=False, is_trusted=lambda p: False,
                invite_gate=lambda p, h: True)
    handshake(j, r)
    assert j.state is SessionState.CLOSED and "answered" in (j.close_reason or "")


def test_a_normal_dial_never_sends_a_hello_and_a_trusted_key_needs_no_gate():
    joiner, inviter = creds(1), creds(2)
    j = Session(joiner, initiator=True, is_trusted=lambda p: True,
                expected_peer=inviter.peer_id)
    r = Session(inviter, initiator=False, is_trusted=lambda p: True,
                invite_gate=lambda p, h: pytest.fail("no hello was sent"))
    assert isinstance(handshake(j, r)[-1], HandshakeCompleted)
    assert r.invite is None and j.invite is None


def test_a_hello_of_the_wrong_length_is_a_malformed_payload():
    joiner, inviter = creds(1), creds(2)
    j = Session(joiner, initiator=True, is_trusted=lambda p: False,
                expected_peer=inviter.peer_id, invite=InviteHello(KIND_SHORT, 7).encode() + b"\0")
    r = Session(inviter, initiator=False, is_trusted=lambda p: False,
                invite_gate=lambda p, h: True)
    events = handshake(j, r)
    assert isinstance(events[-1], SessionClosed) and "malformed" in events[-1].reason


# --- nameplates in announces and mDNS records ---------------------------------------------

from peernet._proto.announce import (  # noqa: E402
    ANNOUNCE_LEN,
    MAX_ANNOUNCE_LEN,
    AnnounceFilter,
    decode_announce,
    encode_announce,
    is_solicitation,
)
from peernet._proto.mdns_record import build_txt, decode_txt  # noqa: E402

ANNOUNCER = Identity.from_seed(bytes(range(32)))


def announce(nameplates=(), **changes) -> bytes:
    fields = dict(port=4321, counter=1718000000123, interval_s=5.0, address="192.168.1.9",
                  nameplates=nameplates)
    fields.update(changes)
    return encode_announce(ANNOUNCER.sign, ANNOUNCER.peer_id, **fields)


def test_an_announce_carries_open_nameplates_signed_and_nothing_else():
    plain = announce()
    packet = announce((7, 65535))
    assert len(plain) == ANNOUNCE_LEN and len(packet) == ANNOUNCE_LEN + 1 + 4
    assert packet[5] == 0x02 and plain[5] == 0
    assert packet[68:73] == bytes([2, 0, 7, 0xFF, 0xFF])
    assert packet[:68] == plain[:5] + b"\x02" + plain[6:68]  # the rest is the same packet
    parsed = decode_announce(packet)
    assert parsed.nameplates == (7, 65535) and parsed.verify()
    assert decode_announce(plain).nameplates == ()
    assert len(announce((1, 2, 3, 4))) == MAX_ANNOUNCE_LEN == 141
    assert not is_solicitation(packet)  # byte 5 = 0x01 would be a solicitation
    accepted = AnnounceFilter(PeerId(bytes(32))).accept(packet, "192.168.1.9", 0.0)
    assert accepted is not None and accepted.nameplates == (7, 65535)


def test_a_tampered_nameplate_list_does_not_verify_or_parse():
    packet = bytearray(announce((7,)))
    packet[70] = 8  # 7 -> 8: the signature covers the list
    assert not decode_announce(bytes(packet)).verify()
    for bad in (announce((7,))[:-1], announce((7,)) + b"\0",
                announce((7,))[:68] + b"\x00" + announce((7,))[69:],  # n = 0
                announce((7,))[:68] + b"\x05" + announce((7,))[69:]):  # n = 5
        with pytest.raises(ProtocolError):
            decode_announce(bad)
    with pytest.raises(ProtocolError):  # flag 0x02 on a 132-byte packet
        decode_announce(announce()[:5] + b"\x02" + announce()[6:])
    with pytest.raises(ValueError):
        announce((7, 7))
    with pytest.raises(ValueError):
        announce((1, 2, 3, 4, 5))
    with pytest.raises(ValueError):
        announce((0,))


def test_an_mdns_record_carries_open_nameplates_signed():
    txt = build_txt(ANNOUNCER.sign, ANNOUNCER.peer_id, port=4321, seq=7,
                    addresses=["192.168.1.9"], nameplates=(7, 12))
    assert txt["inv"] == "7,12" and list(txt)[-1] == "inv"
    assert decode_txt(txt, 4321).nameplates == (7, 12)
    assert "inv" not in build_txt(ANNOUNCER.sign, ANNOUNCER.peer_id, port=4321, seq=7,
                                  addresses=["192.168.1.9"])
    for forged in ("7", "7,13", "12,7", "", "7,,12", "07,12", "7,12,70000", "7,7"):
        with pytest.raises(ProtocolError):
            decode_txt({**txt, "inv": forged}, 4321)
    stripped = dict(txt)
    del stripped["inv"]  # removing the invites breaks the signature too
    with pytest.raises(ProtocolError):
        decode_txt(stripped, 4321)
