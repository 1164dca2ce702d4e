"""Tests for peernet._proto.noise: Noise_XX_25519_ChaChaPoly_SHA256, revision 34.

1. Published vectors (cacophony, snow, noise-c), replayed byte for byte.
2. Interop with the independent ``noiseprotocol`` package, in both roles.
3. Negative cases from reference/security.md section 2 (N1-N15) and T23.
4. Properties (hypothesis): junk in raises only HandshakeError; payloads round-trip.

Everything is deterministic: fixed keys, hypothesis derandomized, no sleeps.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
from pathlib import Path

import nacl.bindings
import nacl.public
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import peernet._proto.noise as noise_mod
from peernet._proto.noise import (
    DH_LEN,
    MAX_MESSAGE_LEN,
    PROTOCOL_NAME,
    TAG_LEN,
    CipherState,
    HandshakeState,
    public_key,
)
from peernet.errors import HandshakeError, ProtocolError


@pytest.fixture(autouse=True, params=["pynacl", "cryptography"])
def aead_backend(request, monkeypatch):
    """Every test here runs once per AEAD backend: they must give identical bytes."""
    if request.param == "cryptography":
        pytest.importorskip("cryptography")
        monkeypatch.setattr(noise_mod, "make_aead", noise_mod.cryptography_aead)
    else:
        monkeypatch.setattr(noise_mod, "make_aead", noise_mod.pynacl_aead)
    return request.param


def test_both_aead_backends_give_the_same_bytes_and_refuse_the_same_forgeries():
    pytest.importorskip("cryptography")
    key, nonce = bytes(range(32)), bytes(12)
    seal_a, open_a = noise_mod.pynacl_aead(key)
    seal_b, open_b = noise_mod.cryptography_aead(key)
    for size in (0, 1, 64, 65519):
        plaintext = bytes(size)
        ct = seal_a(nonce, plaintext, b"ad")
        assert seal_b(nonce, plaintext, b"ad") == ct
        assert open_b(nonce, ct, b"ad") == open_a(nonce, ct, b"ad") == plaintext
        bad = ct[:-1] + bytes([ct[-1] ^ 1])
        for open_ in (open_a, open_b):
            with pytest.raises(noise_mod._AEAD_FAILURES):
                open_(nonce, bad, b"ad")

VECTORS_FILE = (Path(__file__).resolve().parents[1] / "vectors"
                / "noise_xx_25519_chachapoly_sha256.json")
VECTORS = json.loads(VECTORS_FILE.read_text())["vectors"]

# Fixed keys keep every test deterministic (ephemeral injection is test-only).
S_I = hashlib.sha256(b"initiator static").digest()
S_R = hashlib.sha256(b"responder static").digest()
E_I = hashlib.sha256(b"initiator ephemeral").digest()
E_R = hashlib.sha256(b"responder ephemeral").digest()
PROLOGUE = b"peernet/1 test"

P = 2**255 - 19
# Low-order / non-canonical points libsodium refuses (reference/security.md section 2.2).
LOW_ORDER_POINTS = [
    bytes(32),                                         # 0
    (1).to_bytes(32, "little"),                        # 1 (order 4)
    (P - 1).to_bytes(32, "little"),                    # order 2
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    P.to_bytes(32, "little"),                          # non-canonical 0
    (P + 1).to_bytes(32, "little"),                    # non-canonical 1
    ((P - 1) | (1 << 255)).to_bytes(32, "little"),     # p - 1 with the high bit set
]


@pytest.fixture(autouse=True, scope="module")
def _libsodium_never_sees_short_buffers():
    """Wrap the module's DH and AEAD-decrypt bindings: no call may pass a short buffer
    (PyNaCl does not length-check; libsodium would read past the end)."""
    real_dh, real_dec = noise_mod._scalarmult, noise_mod._aead_decrypt

    def dh(n: bytes, p: bytes) -> bytes:
        assert len(n) == 32 and len(p) == 32, "short buffer reached crypto_scalarmult"
        return real_dh(n, p)

    def dec(c: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes:
        assert len(c) >= 16, "short ciphertext reached PyNaCl"
        return real_dec(c, ad, nonce, key)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(noise_mod, "_scalarmult", dh)
        mp.setattr(noise_mod, "_aead_decrypt", dec)
        yield


# --- helpers ------------------------------------------------------------------------


def make_pair(prologue: bytes = PROLOGUE, *, resp_prologue: bytes | None = None):
    init = HandshakeState(True, S_I, E_I, prologue)
    resp = HandshakeState(False, S_R, E_R, prologue if resp_prologue is None else resp_prologue)
    return init, resp


def run_handshake(init: HandshakeState, resp: HandshakeState, payloads=(b"", b"", b"")):
    """Run all three messages, returning the messages and the payloads as received."""
    m1 = init.write_message(payloads[0])
    got1 = resp.read_message(m1)
    m2 = resp.write_message(payloads[1])
    got2 = init.read_message(m2)
    m3 = init.write_message(payloads[2])
    got3 = resp.read_message(m3)
    return (m1, m2, m3), (got1, got2, got3)


def transport_pair():
    init, resp = make_pair()
    run_handshake(init, resp)
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    return i_send, i_recv, r_send, r_recv


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def assert_dead(hs: HandshakeState) -> None:
    """Every call on a failed HandshakeState raises HandshakeError."""
    assert not hs.complete
    for call in (lambda: hs.write_message(b""), lambda: hs.read_message(bytes(96)),
                 hs.split, lambda: hs.handshake_hash):
        with pytest.raises(HandshakeError):
            call()
    assert hs.remote_static is None


# --- 1. published vectors -----------------------------------------------------------


def test_vector_file_has_independent_sources():
    sources = {v["_source"]["path"] for v in VECTORS}
    assert len(VECTORS) >= 2 and len(sources) >= 2
    for v in VECTORS:
        src = v["_source"]
        assert src["repository"] and len(src["commit"]) == 40 and src["path"]
        assert v.get("protocol_name", v.get("name")) == PROTOCOL_NAME.decode()
        assert not v.get("init_psks") and not v.get("resp_psks")


@pytest.mark.parametrize("vector", VECTORS, ids=[v["_source"]["path"] for v in VECTORS])
def test_published_vector(vector):
    hx = bytes.fromhex
    init = HandshakeState(True, hx(vector["init_static"]), hx(vector["init_ephemeral"]),
                          hx(vector["init_prologue"]))
    resp = HandshakeState(False, hx(vector["resp_static"]), hx(vector["resp_ephemeral"]),
                          hx(vector["resp_prologue"]))
    messages = vector["messages"]
    assert len(messages) > 3
    # Handshake: messages alternate, initiator first.
    for n, msg in enumerate(messages[:3]):
        writer, reader = (init, resp) if n % 2 == 0 else (resp, init)
        ciphertext = writer.write_message(hx(msg["payload"]))
        assert ciphertext.hex() == msg["ciphertext"], f"handshake message {n + 1}"
        assert reader.read_message(ciphertext) == hx(msg["payload"])
    assert init.complete and resp.complete
    assert init.remote_static == public_key(hx(vector["resp_static"]))
    assert resp.remote_static == public_key(hx(vector["init_static"]))
    assert init.handshake_hash == resp.handshake_hash
    if "handshake_hash" in vector:
        assert init.handshake_hash.hex() == vector["handshake_hash"]
    # Transport: keep alternating, so both directions are exercised.
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    directions = set()
    for n, msg in enumerate(messages[3:], start=3):
        send, recv = (i_send, r_recv) if n % 2 == 0 else (r_send, i_recv)
        directions.add(n % 2)
        ciphertext = send.encrypt(hx(msg["payload"]))
        assert ciphertext.hex() == msg["ciphertext"], f"transport message {n + 1}"
        assert recv.decrypt(ciphertext) == hx(msg["payload"])
    assert directions == {0, 1}


# --- 2. interop with noiseprotocol --------------------------------------------------


def _their_side(initiator: bool, static: bytes, prologue: bytes):
    from noise.connection import Keypair, NoiseConnection

    conn = NoiseConnection.from_name(PROTOCOL_NAME)
    conn.set_as_initiator() if initiator else conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    conn.set_prologue(prologue)
    conn.start_handshake()
    return conn


@pytest.mark.parametrize("we_initiate", [True, False], ids=["we-initiate", "we-respond"])
def test_interop_with_noiseprotocol(we_initiate):
    prologue = b"peernet/1 interop"
    payloads = [b"hello from 1", b"payload two \x00\xff" * 7, b"third" * 100]
    ours = HandshakeState(we_initiate, S_I if we_initiate else S_R, prologue=prologue)
    theirs = _their_side(not we_initiate, S_R if we_initiate else S_I, prologue)
    for n, payload in enumerate(payloads):
        our_turn = (n % 2 == 0) == we_initiate
        if our_turn:
            assert bytes(theirs.read_message(ours.write_message(payload))) == payload
        else:
            assert ours.read_message(bytes(theirs.write_message(payload))) == payload
    assert ours.complete and theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    assert ours.remote_static == public_key(S_R if we_initiate else S_I)
    send, recv = ours.split()
    for i in range(5):
        out = b"ours %d " % i + bytes(range(256)) * i
        assert theirs.decrypt(send.encrypt(out)) == out
        back = b"theirs %d" % i * (i + 1)
        assert recv.decrypt(theirs.encrypt(back)) == back


# --- 3. negative and white-box checks -----------------------------------------------

# (message index, first byte, last byte) of each region in XX messages with payloads
# of 8 bytes: msg1 = e | payload; msg2 = e | Enc(s) | Enc(payload); msg3 = Enc(s) | Enc(payload).
_P = b"payload!"
_REGIONS = {
    "msg2-ephemeral": (1, 0, 31),
    "msg2-static": (1, 32, 79),
    "msg2-payload": (1, 80, 80 + len(_P) + TAG_LEN - 1),
    "msg3-static": (2, 0, 47),
    "msg3-payload": (2, 48, 48 + len(_P) + TAG_LEN - 1),
}
_FLIPS = [(name, idx, bit) for name, (_, lo, hi) in _REGIONS.items()
          for idx in sorted({lo, (lo + hi) // 2, hi}) for bit in (0, 7)]


@pytest.mark.parametrize("region,index,bit", _FLIPS)
def test_flipped_bit_in_authenticated_message_fails_reader(region, index, bit):
    msg_no = _REGIONS[region][0]
    init, resp = make_pair()
    m1 = init.write_message(_P)
    resp.read_message(m1)
    m2 = resp.write_message(_P)
    if msg_no == 1:
        # Includes bit 255 of e, which X25519 ignores: h still covers the raw bytes.
        with pytest.raises(HandshakeError):
            init.read_message(flip(m2, index, bit))
        assert_dead(init)
        return
    init.read_message(m2)
    m3 = init.write_message(_P)
    with pytest.raises(HandshakeError):
        resp.read_message(flip(m3, index, bit))
    assert_dead(resp)


@pytest.mark.parametrize("index", [0, 15, 31, 32, 35, 32 + len(_P) - 1])
@pytest.mark.parametrize("bit", [0, 7])
def test_flipped_bit_in_message_1_is_caught_at_message_2(index, bit):
    # Message 1 has no key yet, so the responder cannot notice the change; the
    # tampered bytes went into its h, so the initiator's first AEAD (message 2) fails.
    init, resp = make_pair()
    m1 = init.write_message(_P)
    assert len(m1) == DH_LEN + len(_P)
    resp.read_message(flip(m1, index, bit))
    with pytest.raises(HandshakeError):
        init.read_message(resp.write_message(_P))
    assert_dead(init)


def test_wrong_prologue_fails_at_first_aead():
    init, resp = make_pair(b"peernet/1", resp_prologue=b"peernet/2")
    resp.read_message(init.write_message())
    with pytest.raises(HandshakeError):
        init.read_message(resp.write_message())
    assert_dead(init)


def test_empty_prologue_is_still_mixed():
    # N6: MixHash(prologue) happens even for b"", and h starts as the unpadded name (N7).
    hs = HandshakeState(True, S_I)
    assert len(PROTOCOL_NAME) == 32
    assert hs._ss.h == hashlib.sha256(PROTOCOL_NAME).digest()
    assert hs._ss.ck == PROTOCOL_NAME


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_low_order_ephemeral_in_message_1(point):
    init, resp = make_pair()
    resp.read_message(point + b"junk")  # no DH happens while reading "e"
    with pytest.raises(HandshakeError):
        resp.write_message(b"never sent")  # ee fails: no message 2 is produced
    assert_dead(resp)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_low_order_ephemeral_in_message_2(point):
    init, _ = make_pair()
    init.write_message()
    with pytest.raises(HandshakeError):
        init.read_message(point + bytes(48 + 16))
    assert_dead(init)  # in particular, no message 3 (which would reveal our static key)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS[:5], ids=lambda p: p.hex()[:8])
@pytest.mark.parametrize("malicious", ["responder", "initiator"])
def test_low_order_static_key_is_refused(point, malicious):
    # A peer that encrypts a low-order "static key" properly still fails at es / se.
    init, resp = make_pair()
    (init if malicious == "initiator" else resp)._s_pub = point
    resp.read_message(init.write_message())
    m2 = resp.write_message()
    if malicious == "responder":
        with pytest.raises(HandshakeError):
            init.read_message(m2)
        assert_dead(init)
        return
    init.read_message(m2)
    with pytest.raises(HandshakeError):
        resp.read_message(init.write_message())
    assert_dead(resp)


_TRUNCATIONS = [(0, n) for n in (0, 5, 31)] + \
    [(1, n) for n in (0, 5, 31, 32, 32 + 15, 32 + 47, 32 + 48, 95)] + \
    [(2, n) for n in (0, 5, 31, 32, 47, 48, 48 + 15, 63)]


@pytest.mark.parametrize("msg_no,length", _TRUNCATIONS)
def test_truncated_messages(msg_no, length):
    init, resp = make_pair()
    msgs, _ = run_handshake(*make_pair())  # a genuine transcript to cut from
    if msg_no == 0:
        victim = resp
    else:
        resp.read_message(init.write_message())
        if msg_no == 1:
            victim = init
        else:
            init.read_message(resp.write_message())
            init.write_message()
            victim = resp
    with pytest.raises(HandshakeError):
        victim.read_message(msgs[msg_no][:length])
    assert_dead(victim)


def test_message_sizes_with_empty_payloads():
    msgs, payloads = run_handshake(*make_pair())
    assert [len(m) for m in msgs] == [32, 96, 64]
    assert payloads == (b"", b"", b"")


def test_oversize_handshake_messages():
    _, resp = make_pair()
    with pytest.raises(HandshakeError):
        resp.read_message(bytes(MAX_MESSAGE_LEN + 1))
    assert_dead(resp)
    init, _ = make_pair()
    with pytest.raises(HandshakeError):
        init.write_message(bytes(MAX_MESSAGE_LEN - DH_LEN + 1))
    assert_dead(init)
    # The largest legal message 1 goes through.
    init, resp = make_pair()
    m1 = init.write_message(bytes(MAX_MESSAGE_LEN - DH_LEN))
    assert len(m1) == MAX_MESSAGE_LEN
    assert resp.read_message(m1) == bytes(MAX_MESSAGE_LEN - DH_LEN)


def test_oversize_handshake_message_2_and_3_on_write():
    init, resp = make_pair()
    resp.read_message(init.write_message())
    with pytest.raises(HandshakeError):
        resp.write_message(bytes(MAX_MESSAGE_LEN - 96 + 1))
    init, resp = make_pair()
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    with pytest.raises(HandshakeError):
        init.write_message(bytes(MAX_MESSAGE_LEN - 64 + 1))


def test_out_of_turn_calls():
    init, resp = make_pair()
    with pytest.raises(HandshakeError):
        init.read_message(bytes(32))
    assert_dead(init)
    with pytest.raises(HandshakeError):
        resp.write_message()
    assert_dead(resp)

    init, resp = make_pair()
    init.write_message()
    with pytest.raises(HandshakeError):
        init.write_message()  # twice in a row
    assert_dead(init)


def test_calls_after_completion_are_refused():
    init, resp = make_pair()
    run_handshake(init, resp)
    for hs in (init, resp):
        with pytest.raises(HandshakeError):
            hs.write_message()
        with pytest.raises(HandshakeError):
            hs.read_message(bytes(64))


def test_split_rules_and_key_erasure():
    init, resp = make_pair()
    with pytest.raises(HandshakeError):
        init.split()  # before anything
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    with pytest.raises(HandshakeError):
        init.split()  # one message short
    with pytest.raises(HandshakeError):
        init.handshake_hash
    resp.read_message(init.write_message())
    for hs in (init, resp):
        assert hs.complete
        assert hs._e is None and hs._s is None and hs._re is None  # N11
        h = hs.handshake_hash
        hs.split()
        assert hs._ss is None  # ck gone
        assert hs.handshake_hash == h  # h kept for channel binding
        with pytest.raises(HandshakeError):
            hs.split()  # a second split would reuse keys with nonce 0


def test_failure_deletes_state():
    init, resp = make_pair()
    resp.read_message(init.write_message())
    with pytest.raises(HandshakeError):
        init.read_message(bytes(96))
    assert init._ss is None and init._e is None and init._s is None
    assert_dead(init)


def test_remote_static_only_after_authentication():
    init, resp = make_pair()
    resp.read_message(init.write_message())
    assert init.remote_static is None and resp.remote_static is None
    m2 = resp.write_message(b"x")
    with pytest.raises(HandshakeError):
        init.read_message(flip(m2, len(m2) - 1))  # static decrypts, payload tag fails
    assert init.remote_static is None
    init, resp = make_pair()
    run_handshake(init, resp)
    assert init.remote_static == public_key(S_R) == resp.local_static
    assert resp.remote_static == public_key(S_I) == init.local_static


def test_fresh_ephemeral_when_not_injected():
    a = HandshakeState(True, S_I).write_message()
    b = HandshakeState(True, S_I).write_message()
    assert len(a) == len(b) == 32 and a != b


def test_bad_arguments():
    with pytest.raises(ValueError):
        HandshakeState(True, bytes(31))
    with pytest.raises(ValueError):
        HandshakeState(True, S_I, bytes(33))
    with pytest.raises(TypeError):
        HandshakeState(True, "x" * 32)  # type: ignore[arg-type]
    hs = HandshakeState(False, S_R)
    with pytest.raises(TypeError):
        hs.read_message("not bytes")  # type: ignore[arg-type]
    assert hs.read_message(bytearray(32)) == b""  # bytes-like is fine
    with pytest.raises(ValueError):
        public_key(b"short")
    with pytest.raises(ValueError):
        CipherState(bytes(31))


def test_public_key_matches_pynacl():
    assert public_key(S_I) == bytes(nacl.public.PrivateKey(S_I).public_key)


def test_hkdf_is_rfc5869_with_ck_as_salt():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    ck, ikm = hashlib.sha256(b"ck").digest(), hashlib.sha256(b"ikm").digest()
    o1, o2 = noise_mod._hkdf(ck, ikm)
    expected = HKDF(algorithm=hashes.SHA256(), length=64, salt=ck, info=b"").derive(ikm)
    assert o1 + o2 == expected
    assert o1 == hmac.new(hmac.new(ck, ikm, "sha256").digest(), b"\x01", "sha256").digest()


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ck=st.binary(min_size=32, max_size=32), ikm=st.binary(max_size=200))
def test_hkdf_written_over_hashlib_matches_hmac_digest(ck, ikm):
    """_hkdf writes HMAC out over hashlib (faster than three hmac.digest calls): it must
    give hmac's bytes for every input length a handshake can bring (and more)."""
    temp = hmac.digest(ck, ikm, "sha256")
    first = hmac.digest(temp, b"\x01", "sha256")
    assert noise_mod._hkdf(ck, ikm) == (first, hmac.digest(temp, first + b"\x02", "sha256"))


def test_hmac_pads_refuse_a_key_longer_than_a_block():
    noise_mod._hmac_pads(bytes(64))
    with pytest.raises(ValueError):
        noise_mod._hmac_pads(bytes(65))


# --- transport ciphers (N1, N2, N4, N9, T23) ----------------------------------------


def test_transport_directions():
    i_send, i_recv, r_send, r_recv = transport_pair()
    frame = i_send.encrypt(b"to responder")
    with pytest.raises(ProtocolError):
        i_recv.decrypt(frame)  # the initiator cannot read its own frame (no reflection)
    with pytest.raises(ProtocolError):
        r_send.decrypt(frame)
    assert i_recv.nonce == 0
    assert r_recv.decrypt(frame) == b"to responder"
    back = r_send.encrypt(b"to initiator")
    with pytest.raises(ProtocolError):
        r_recv.decrypt(back)
    assert i_recv.decrypt(back) == b"to initiator"


def test_transport_nonce_encoding():
    # Section 12.3: 4 zero bytes then the 64-bit nonce little-endian.
    i_send, _, _, r_recv = transport_pair()
    n = 2**64 - 2
    i_send.nonce = n
    frame = i_send.encrypt(b"edge", b"ad")
    nonce = bytes(4) + n.to_bytes(8, "little")
    assert frame == nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        b"edge", b"ad", nonce, i_send._k)
    r_recv.nonce = n
    assert r_recv.decrypt(frame, b"ad") == b"edge"


def test_nonce_exhaustion_on_encrypt():
    i_send, _, _, _ = transport_pair()
    i_send.nonce = 2**64 - 2
    i_send.encrypt(b"last one")
    assert i_send.nonce == 2**64 - 1
    for _ in range(2):
        with pytest.raises(ProtocolError, match="nonce exhausted"):
            i_send.encrypt(b"one too many")
    assert i_send.nonce == 2**64 - 1  # never wraps


def test_nonce_exhaustion_on_decrypt():
    i_send, _, _, r_recv = transport_pair()
    i_send.nonce = r_recv.nonce = 2**64 - 2
    assert r_recv.decrypt(i_send.encrypt(b"last")) == b"last"
    assert r_recv.nonce == 2**64 - 1
    with pytest.raises(ProtocolError, match="nonce exhausted"):
        r_recv.decrypt(bytes(32))
    assert r_recv.nonce == 2**64 - 1


def test_failed_decrypt_leaves_nonce_unchanged():
    i_send, _, _, r_recv = transport_pair()
    frame = i_send.encrypt(b"genuine")
    for bad in (flip(frame, 0), flip(frame, len(frame) - 1), frame[:-1], frame + b"\0"):
        with pytest.raises(ProtocolError):
            r_recv.decrypt(bad)
        assert r_recv.nonce == 0
    with pytest.raises(ProtocolError):
        r_recv.decrypt(frame, b"wrong ad")
    assert r_recv.nonce == 0
    assert r_recv.decrypt(frame) == b"genuine"
    assert r_recv.nonce == 1


def test_replayed_and_reordered_frames_fail():
    i_send, _, _, r_recv = transport_pair()
    a, b = i_send.encrypt(b"a"), i_send.encrypt(b"b")
    with pytest.raises(ProtocolError):
        r_recv.decrypt(b)  # reordered
    assert r_recv.decrypt(a) == b"a"
    with pytest.raises(ProtocolError):
        r_recv.decrypt(a)  # replayed
    assert r_recv.decrypt(b) == b"b"


@pytest.mark.parametrize("length", [0, 1, 15])
def test_short_ciphertext(length):
    _, _, _, r_recv = transport_pair()
    with pytest.raises(ProtocolError, match="shorter than its authentication tag"):
        r_recv.decrypt(bytes(length))
    assert r_recv.nonce == 0


def test_transport_size_limits():
    i_send, _, _, r_recv = transport_pair()
    with pytest.raises(ProtocolError, match="at most 65535"):
        i_send.encrypt(bytes(MAX_MESSAGE_LEN - TAG_LEN + 1))
    assert i_send.nonce == 0
    with pytest.raises(ProtocolError, match="at most 65535"):
        r_recv.decrypt(bytes(MAX_MESSAGE_LEN + 1))
    big = i_send.encrypt(bytes(MAX_MESSAGE_LEN - TAG_LEN))
    assert len(big) == MAX_MESSAGE_LEN
    assert r_recv.decrypt(big) == bytes(MAX_MESSAGE_LEN - TAG_LEN)


def test_keyless_cipher_refuses_transport():
    cs = CipherState()
    with pytest.raises(ProtocolError, match="no key"):
        cs.encrypt(b"plaintext would leak")
    with pytest.raises(ProtocolError, match="no key"):
        cs.decrypt(bytes(16))


def test_module_is_sans_io():
    tree = ast.parse(Path(noise_mod.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"socket", "threading", "time", "select", "asyncio"}


# --- 4. properties ------------------------------------------------------------------

_FAST = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


def _state_at(step: int) -> HandshakeState:
    """A HandshakeState whose next call is read_message of message ``step + 1``."""
    init, resp = make_pair()
    if step == 0:
        return resp
    resp.read_message(init.write_message())
    if step == 1:
        return init
    init.read_message(resp.write_message())
    init.write_message()
    return resp


@_FAST
@given(step=st.integers(0, 2), junk=st.binary(max_size=300))
def test_junk_raises_only_handshake_error(step, junk):
    hs = _state_at(step)
    try:
        hs.read_message(junk)
    except HandshakeError:
        assert_dead(hs)
    else:
        # Only message 1 (no key yet) can accept arbitrary bytes.
        assert step == 0 and len(junk) >= DH_LEN


@_FAST
@given(step=st.integers(1, 2), data=st.data())
def test_any_single_bit_flip_is_detected(step, data):
    msgs, _ = run_handshake(*make_pair(), payloads=(b"p1", b"p2", b"p3"))
    victim = _state_at(step)
    index = data.draw(st.integers(0, len(msgs[step]) - 1))
    bit = data.draw(st.integers(0, 7))
    with pytest.raises(HandshakeError):
        victim.read_message(flip(msgs[step], index, bit))


@_FAST
@given(
    payloads=st.tuples(*[st.binary(max_size=200)] * 3),
    prologue=st.binary(max_size=40),
    frames=st.lists(st.tuples(st.booleans(), st.binary(max_size=500)), max_size=8),
)
def test_round_trip(payloads, prologue, frames):
    init, resp = make_pair(prologue)
    _, received = run_handshake(init, resp, payloads)
    assert received == payloads
    assert init.handshake_hash == resp.handshake_hash
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    for from_initiator, plaintext in frames:
        send, recv = (i_send, r_recv) if from_initiator else (r_send, i_recv)
        frame = send.encrypt(plaintext)
        assert len(frame) == len(plaintext) + TAG_LEN
        assert recv.decrypt(frame) == plaintext


def test_a_static_public_key_passed_in_gives_the_same_handshake():
    """Session passes its precomputed public key (saving a scalar multiplication per
    handshake); the messages must be byte-identical to deriving it here."""
    derived = run_handshake(*make_pair())[0]
    init = HandshakeState(True, S_I, E_I, PROLOGUE, static_public=public_key(S_I))
    resp = HandshakeState(False, S_R, E_R, PROLOGUE, static_public=public_key(S_R))
    assert run_handshake(init, resp)[0] == derived
    with pytest.raises(ValueError):
        HandshakeState(True, S_I, static_public=b"\x00" * 31)


def test_node_credentials_hold_the_public_key_of_their_static_key():
    from peernet._proto.session import LocalCredentials
    from peernet.identity import Identity

    for _ in range(5):
        creds = LocalCredentials.from_identity(Identity.generate())
        assert creds.static_public == public_key(creds.static_private)
