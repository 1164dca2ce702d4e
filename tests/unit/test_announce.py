"""The signed announce packet and the receive filter, without sockets."""

from __future__ import annotations

import struct

import pytest

from peernet.errors import ProtocolError
from peernet.identity import Identity
from peernet._proto.announce import (
    ANNOUNCE_LEN,
    AnnounceFilter,
    TokenBucket,
    decode_announce,
    encode_announce,
    next_counter,
)

ALICE = Identity.from_seed(b"\x01" * 32)
BOB = Identity.from_seed(b"\x02" * 32)
MALLORY = Identity.from_seed(b"\x03" * 32)


def packet(who=ALICE, *, port=4242, counter=1000, interval_s=5.0, address="10.0.0.1",
           key=None):
    return encode_announce(who.sign, key or who.peer_id, port=port, counter=counter,
                           interval_s=interval_s, address=address)


def test_round_trip_and_layout():
    raw = packet()
    assert len(raw) == ANNOUNCE_LEN == 132
    assert raw[:4] == b"PNET" and raw[4] == 2 and raw[5] == 0
    assert struct.unpack(">H", raw[6:8]) == (4242,)
    assert raw[8:40] == ALICE.peer_id.bytes
    a = decode_announce(raw)
    assert (a.peer_id, a.port, a.counter, a.interval_s, a.address) == (
        ALICE.peer_id, 4242, 1000, 5.0, "10.0.0.1")
    assert a.verify()


def test_ipv6_address_round_trips():
    assert decode_announce(packet(address="2001:db8::7")).address == "2001:db8::7"


@pytest.mark.parametrize("mutate", [
    lambda p: p[:-1],  # truncated
    lambda p: p + b"\0",  # trailing byte
    lambda p: b"PNEX" + p[4:],
    lambda p: p[:4] + b"\x01" + p[5:],  # the original's unsigned version
    lambda p: p[:4] + b"\x03" + p[5:],
    lambda p: p[:5] + b"\x01" + p[6:],  # a reserved flag
    lambda p: p[:6] + b"\0\0" + p[8:],  # port 0
    lambda p: p[:48] + struct.pack(">I", 99) + p[52:],  # interval below 100 ms
    lambda p: p[:48] + struct.pack(">I", 3_600_001) + p[52:],
    lambda p: p[:52] + bytes(16) + p[68:],  # unspecified address
    lambda p: b"",
    lambda p: b"PNET\x01" + p[5:39],  # the original's 39-byte packet
])
def test_malformed_packets_are_refused(mutate):
    with pytest.raises(ProtocolError):
        decode_announce(mutate(packet()))


def test_any_flipped_bit_in_the_signed_part_fails_verification():
    raw = packet()
    for byte in range(6, 132):  # past magic/version/flags, which the parser checks
        flipped = bytearray(raw)
        flipped[byte] ^= 0x10
        try:
            a = decode_announce(bytes(flipped))
        except ProtocolError:
            continue
        assert not a.verify(), byte


def test_the_encoder_refuses_nonsense():
    with pytest.raises(ValueError):
        packet(port=0)
    with pytest.raises(ValueError):
        packet(interval_s=0.01)


def test_counter_is_the_clock_but_always_increases():
    assert next_counter(0, 5_000) == 5_000
    assert next_counter(5_000, 5_000) == 5_001
    assert next_counter(9_000, 1_000) == 9_001  # the clock went backwards


def test_token_bucket():
    bucket = TokenBucket(2.0, 3, now_s=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped


def accept(f, raw, source="10.0.0.1", now=0.0):
    return f.accept(raw, source, now)


def test_filter_accepts_a_genuine_announce():
    f = AnnounceFilter(BOB.peer_id)
    a = accept(f, packet())
    assert a is not None and a.peer_id == ALICE.peer_id and f.dropped == {}


@pytest.mark.parametrize("raw, source, reason", [
    (packet(key=ALICE.peer_id, who=MALLORY), "10.0.0.1", "signature"),  # re-signed
    (packet(), "10.0.0.66", "address"),  # replayed from another host
    (packet(BOB), "10.0.0.1", "own"),
    (b"PNET\x01" + bytes(34), "10.0.0.1", "malformed"),
])
def test_filter_drops_with_a_reason(raw, source, reason):
    f = AnnounceFilter(BOB.peer_id)
    assert accept(f, raw, source) is None
    assert f.dropped == {reason: 1}


def test_replayed_and_stale_counters_are_dropped_until_the_sender_expires():
    f = AnnounceFilter(BOB.peer_id)
    assert accept(f, packet(counter=10)) is not None
    assert accept(f, packet(counter=10), now=1.0) is None  # replay
    assert accept(f, packet(counter=9), now=1.0) is None  # older
    assert f.dropped == {"stale": 2}
    assert accept(f, packet(counter=11), now=2.0) is not None
    # Not heard for three intervals: a sender whose clock went back is heard again.
    assert accept(f, packet(counter=5), now=2.0 + 15.1) is not None


def test_rate_limit_per_source_comes_before_the_signature_check():
    f = AnnounceFilter(BOB.peer_id, per_source_rate_per_s=1.0, per_source_burst=3)
    forged = packet(key=ALICE.peer_id, who=MALLORY)
    for _ in range(10):
        accept(f, forged, now=0.0)
    assert f.dropped == {"signature": 3, "rate_source": 7}
    assert accept(f, packet(), source="10.0.0.1", now=0.0) is None  # same source, still limited
    assert accept(f, packet(counter=2), now=1.0) is not None  # a token came back


def test_total_rate_limit_caps_signature_checks_across_sources():
    f = AnnounceFilter(BOB.peer_id, total_rate_per_s=5.0)
    forged = packet(key=ALICE.peer_id, who=MALLORY)
    for i in range(20):
        accept(f, forged, source=f"10.0.1.{i}", now=0.0)
    assert f.dropped == {"signature": 5, "rate_total": 15}


def test_tables_stay_bounded_under_a_flood_of_sources_and_keys():
    f = AnnounceFilter(BOB.peer_id, max_sources=16, max_senders=8, total_rate_per_s=1e9)
    for i in range(200):
        who = Identity.from_seed(i.to_bytes(32, "big"))
        src = f"10.{i // 250}.{i % 250}.1"
        assert accept(f, packet(who, address=src), source=src) is not None
    assert len(f._sources) == 16 and len(f._senders) == 8


# -- the solicitation ---------------------------------------------------------------------

from peernet._proto.announce import (  # noqa: E402
    SOLICITATION_LEN,
    SolicitationLimiter,
    decode_solicitation,
    encode_solicitation,
    is_solicitation,
)

NONCE = bytes(range(16))


def test_solicitation_layout_byte_by_byte():
    raw = encode_solicitation(NONCE)
    assert len(raw) == SOLICITATION_LEN == ANNOUNCE_LEN == 132  # no amplification in bytes
    assert raw[:4] == b"PNET" and raw[4] == 2 and raw[5] == 1 and raw[6:8] == b"\0\0"
    assert raw[8:24] == NONCE and raw[24:] == bytes(108)
    assert decode_solicitation(raw) == NONCE
    assert is_solicitation(raw) and not is_solicitation(packet())
    # It names nobody: no key, no address, no port; only the random nonce.
    assert raw.replace(NONCE, b"") == b"PNET\x02\x01\x00\x00" + bytes(108)


@pytest.mark.parametrize("mutate", [
    lambda p: p[:-1], lambda p: p + b"\0", lambda p: b"XNET" + p[4:],
    lambda p: p[:4] + b"\x03" + p[5:], lambda p: p[:5] + b"\x02" + p[6:],
    lambda p: p[:6] + b"\0\x01" + p[8:], lambda p: p[:-1] + b"\x01",
])
def test_bad_solicitations_are_refused(mutate):
    with pytest.raises(ProtocolError):
        decode_solicitation(mutate(encode_solicitation(NONCE)))
    assert SolicitationLimiter().allow(mutate(encode_solicitation(NONCE)), "10.0.0.1", 0.0) is False


def test_an_old_receiver_drops_a_solicitation_as_malformed():
    with pytest.raises(ProtocolError):
        decode_announce(encode_solicitation(NONCE))
    with pytest.raises(ValueError):
        encode_solicitation(b"short")


def test_solicitations_are_rate_limited_per_source_and_overall():
    lim = SolicitationLimiter()  # 5/s burst 10 per source; 50/s burst 50 overall
    raw = encode_solicitation(NONCE)
    assert sum(lim.allow(raw, "10.0.0.9", 0.0) for _ in range(100)) == 10
    assert lim.dropped["rate_source"] == 90
    assert sum(lim.allow(raw, "10.0.0.9", 1.0) for _ in range(100)) == 5  # refilled 5/s
    # Many sources (a spoofer): the overall bucket caps the total.
    lim = SolicitationLimiter()
    answered = sum(lim.allow(raw, f"10.1.{i // 250}.{i % 250}", 0.0) for i in range(1000))
    assert answered == 50 and lim.dropped["rate_total"] == 950
    answered = sum(lim.allow(raw, f"10.2.{i // 250}.{i % 250}", 2.0) for i in range(1000))
    assert answered == 50  # 2 s at 50/s, capped by the burst
    assert lim.answered == 100


def test_solicitation_tables_are_bounded_and_own_nonces_ignored():
    lim = SolicitationLimiter(max_sources=8, max_own=2)
    raw = encode_solicitation(NONCE)
    for i in range(100):
        lim.allow(raw, f"10.0.0.{i}", i * 1.0)
    assert len(lim._sources) == 8
    lim.sent(NONCE)
    assert lim.allow(raw, "10.0.0.200", 500.0) is False and lim.dropped["own"] == 1
    lim.sent(b"a" * 16)
    lim.sent(b"b" * 16)  # NONCE is forgotten: only the last 2 are kept
    assert len(lim._own) == 2
    assert lim.allow(raw, "10.0.0.201", 500.0) is True
