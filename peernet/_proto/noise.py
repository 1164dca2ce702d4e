"""Noise_XX_25519_ChaChaPoly_SHA256, revision 34, on PyNaCl and hashlib (HMAC written out, RFC 2104).

Theory of operation
-------------------
Noise (https://noiseprotocol.org/noise.html, revision 34) builds a handshake from
*tokens*. The XX pattern (spec §7.5) is::

    -> e
    <- e, ee, s, es
    -> s, se

Message 1 carries the initiator's ephemeral key ``e`` in the clear (plus a cleartext
payload, since there is no key yet). Message 2 carries the responder's ephemeral key,
mixes the ephemeral-ephemeral DH into the chaining key, then sends the responder's
static key ``s`` *encrypted*, and mixes the ephemeral-static DH. Message 3 sends the
initiator's encrypted static key and mixes the static-ephemeral DH. Each party thus
learns the other's static key, and decrypting it proves the peer holds the matching
private key. Every byte sent or received is hashed into the handshake hash ``h``, which
is the AEAD associated data and the channel-binding value (§11.2).

The code follows the spec's three objects literally, with its method names as private
helpers: :class:`CipherState` (§5.1: key ``k`` and nonce ``n``), ``_SymmetricState``
(§5.2: chaining key ``ck``, hash ``h``, HKDF per §4.3, Split) and
:class:`HandshakeState` (§5.3: ``s``, ``e``, ``rs``, ``re`` and the message patterns).
Crypto functions are those of §12.1 (X25519), §12.3 (ChaChaPoly: 4 zero bytes followed
by the little-endian 64-bit nonce) and §12.5 (SHA-256).

Hardening beyond the spec's minimum (see reference/security.md §2):

* every length is checked before any DH or AEAD call: libsodium reads 32 bytes from a
  short public-key buffer (a heap over-read), and a ciphertext shorter than the tag
  makes PyNaCl raise ``ValueError``;
* low-order public keys make libsodium refuse the DH; that is one
  :class:`~peernet.errors.HandshakeError`, never a crash;
* any failure deletes the handshake state (§5): every later call raises
  ``HandshakeError``, so nothing is left half open;
* nonces are Python ints, refused at ``2**64 - 1`` (never wrapped, §5.1) and advanced
  only after a successful encryption or authenticated decryption.

This module is sans-IO: it turns bytes into bytes and never touches sockets or clocks.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import NoReturn

import nacl.exceptions
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt as _aead_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt as _aead_encrypt,
    crypto_scalarmult as _scalarmult,
    crypto_scalarmult_base as _scalarmult_base,
)
from nacl.utils import random as _random

from peernet.errors import HandshakeError, ProtocolError

try:  # Optional: the same AEAD, about 4x cheaper per small message than PyNaCl's call.
    from cryptography.exceptions import InvalidTag as _InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305 as _ChaCha
except ImportError:  # pragma: no cover -- exercised by forcing the PyNaCl backend
    # (the ignore is needed only where cryptography is installed: hence unused-ignore)
    _ChaCha = None  # type: ignore[assignment, misc, unused-ignore]

__all__ = [
    "PROTOCOL_NAME",
    "MAX_MESSAGE_LEN",
    "TAG_LEN",
    "DH_LEN",
    "HASH_LEN",
    "MAX_NONCE",
    "public_key",
    "CipherState",
    "HandshakeState",
]

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
"""The full protocol name (§8). Exactly 32 bytes, so it is used as ``h`` unhashed."""

MAX_MESSAGE_LEN = 65535
"""Largest Noise message, handshake or transport, in bytes (§3)."""

TAG_LEN = 16
"""ChaCha20-Poly1305 authentication tag length."""

DH_LEN = 32
"""X25519 public key and DH output length (§12.1)."""

HASH_LEN = 32
"""SHA-256 output length (§12.5)."""

MAX_NONCE = 2**64 - 1
"""Reserved nonce value: a CipherState whose ``nonce`` reaches it refuses to work (§5.1)."""

_MAX_PLAINTEXT = MAX_MESSAGE_LEN - TAG_LEN
_nonce_bytes = struct.Struct("<4xQ").pack  # §12.3: 32 bits of zeros, then the nonce little-endian
_sha256 = hashlib.sha256
_BLOCK = 64  # SHA-256's block size, HMAC's pad length
_IPAD = int.from_bytes(b"\x36" * _BLOCK, "big")
_OPAD = int.from_bytes(b"\x5c" * _BLOCK, "big")

# Bytes each incoming handshake message needs before its payload (XX, empty payload
# still costs a tag once a key exists): msg1 = e; msg2 = e, Enc(s), tag; msg3 = Enc(s), tag.
_MSG1_MIN = DH_LEN
_MSG2_MIN = DH_LEN + DH_LEN + TAG_LEN + TAG_LEN
_MSG3_MIN = DH_LEN + TAG_LEN + TAG_LEN
_MIN_LEN = (_MSG1_MIN, _MSG2_MIN, _MSG3_MIN)


def public_key(private: bytes) -> bytes:
    """Return the X25519 public key (base-point multiple) of a raw 32-byte private key."""
    if not isinstance(private, bytes) or len(private) != DH_LEN:
        raise ValueError("an X25519 private key is exactly 32 bytes")
    return _scalarmult_base(private)


def _dh(private: bytes | None, public: bytes | None) -> bytes:
    """DH() of §4.1/§12.1. libsodium refuses low-order points; that fails the handshake."""
    if private is None or public is None:  # a key the pattern has not produced yet
        raise HandshakeError("handshake state is missing a key")
    # Never let a short buffer reach libsodium: it would read past its end.
    if len(public) != DH_LEN:
        raise HandshakeError("DH public key has the wrong length")
    try:
        return _scalarmult(private, public)
    except nacl.exceptions.RuntimeError as exc:
        raise HandshakeError("peer sent an invalid (low-order) public key") from exc


def _hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner and outer key blocks (RFC 2104) for a key of at most one
    block; Noise only ever keys HMAC with HASHLEN (32) bytes."""
    if len(key) > _BLOCK:
        raise ValueError("HMAC key longer than a block")
    k = int.from_bytes(key.ljust(_BLOCK, b"\0"), "big")
    return (k ^ _IPAD).to_bytes(_BLOCK, "big"), (k ^ _OPAD).to_bytes(_BLOCK, "big")


def _hkdf(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """HKDF() of §4.3 with num_outputs == 2 (XX never needs three outputs).

    HMAC-SHA256 written out over hashlib (RFC 2104), the temp key's pads made once for
    both outputs: a third less CPU than three ``hmac.digest`` calls (each of which
    sets up OpenSSL's HMAC afresh), the same bytes (tests/unit/test_noise.py)."""
    inner, outer = _hmac_pads(chaining_key)
    temp_key = _sha256(outer + _sha256(inner + input_key_material).digest()).digest()
    inner, outer = _hmac_pads(temp_key)
    first = _sha256(inner)
    second = first.copy()
    first.update(b"\x01")
    output1 = _sha256(outer + first.digest()).digest()
    second.update(output1 + b"\x02")
    output2 = _sha256(outer + second.digest()).digest()
    return output1, output2


Seal = Callable[[bytes, bytes, bytes], bytes]  # (nonce12, plaintext, ad) -> ciphertext
Open = Callable[[bytes, bytes, bytes], bytes]  # (nonce12, ciphertext, ad) -> plaintext; raises


class _AeadFailed(Exception):
    pass


def pynacl_aead(key: bytes) -> tuple[Seal, Open]:
    """ChaCha20-Poly1305 (IETF) from PyNaCl (libsodium): always available."""

    def seal(nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
        return _aead_encrypt(plaintext, ad, nonce, key)

    def open_(nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
        try:
            return _aead_decrypt(ciphertext, ad, nonce, key)
        except nacl.exceptions.CryptoError as exc:
            raise _AeadFailed from exc

    return seal, open_


def cryptography_aead(key: bytes) -> tuple[Seal, Open]:
    """The same AEAD from the ``cryptography`` package (OpenSSL), when installed. Its
    ``decrypt`` raises ``InvalidTag``, which :data:`_AEAD_FAILURES` includes, so it is
    called directly, without a wrapper per message."""
    assert _ChaCha is not None
    aead = _ChaCha(key)
    return aead.encrypt, aead.decrypt


#: What an ``Open`` raises for a forged or damaged message.
_AEAD_FAILURES: tuple[type[Exception], ...] = (
    (_AeadFailed,) if _ChaCha is None else (_AeadFailed, _InvalidTag))

#: The AEAD every new key uses: ``cryptography`` when installed, else PyNaCl. Both give
#: identical bytes (the vectors and interop tests run against each).
make_aead: Callable[[bytes], tuple[Seal, Open]] = (
    cryptography_aead if _ChaCha is not None else pynacl_aead)
AEAD_BACKEND = "cryptography" if _ChaCha is not None else "pynacl"


class CipherState:
    """A key ``k`` and a nonce ``n`` (§5.1).

    After the handshake, :meth:`HandshakeState.split` returns one CipherState per
    direction; :meth:`encrypt` and :meth:`decrypt` then turn transport plaintexts into
    Noise transport messages and back. Any failure raises
    :class:`~peernet.errors.ProtocolError`; the caller should close the session
    (TCP is ordered, so a failure means tampering or a bug).

    ``nonce`` is a plain int that tests may set near the limit; it never wraps.
    """

    __slots__ = ("_k", "nonce", "_seal", "_open")

    def __init__(self, key: bytes | None = None) -> None:
        """Create a CipherState with ``key`` (32 bytes) or, for the handshake, none."""
        if key is not None and (not isinstance(key, bytes) or len(key) != 32):
            raise ValueError("a ChaChaPoly key is exactly 32 bytes")
        self._k: bytes | None = None
        self.nonce = 0
        if key is not None:
            self._initialize_key(key)

    def __repr__(self) -> str:
        return f"<CipherState keyed={self._k is not None} nonce={self.nonce}>"

    # --- the spec's CipherState functions (§5.1) -----------------------------------

    def _initialize_key(self, key: bytes) -> None:
        """InitializeKey(key): new key, nonce back to zero."""
        self._k = key
        self._seal, self._open = make_aead(key)
        self.nonce = 0

    def _has_key(self) -> bool:
        """HasKey()."""
        return self._k is not None

    def _encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """EncryptWithAd(ad, plaintext): plaintext unchanged without a key (§5.1); with
        one, what :meth:`encrypt` does (written out there: it runs per message)."""
        if self._k is None:
            return plaintext
        return self.encrypt(plaintext, ad)

    def _decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """DecryptWithAd(ad, ciphertext); on failure ``n`` is left unchanged (§5.1);
        with a key, what :meth:`decrypt` does."""
        if self._k is None:
            return ciphertext
        return self.decrypt(ciphertext, ad)

    # --- transport messages (§5: "transport phase") --------------------------------

    def encrypt(self, plaintext: bytes, ad: bytes = b"") -> bytes:
        """Encrypt one transport message; the result is ``len(plaintext) + 16`` bytes.

        Raises :class:`~peernet.errors.ProtocolError` if the message would exceed
        65535 bytes or the nonce is exhausted.
        """
        # EncryptWithAd with a key (§5.1), written out: this runs for every message.
        n = self.nonce
        if not (0 <= n < MAX_NONCE and len(plaintext) <= _MAX_PLAINTEXT and self._k is not None):
            self._refuse(len(plaintext), _MAX_PLAINTEXT)
        ciphertext = self._seal(_nonce_bytes(n), plaintext, ad)
        self.nonce = n + 1  # only after success
        return ciphertext

    def decrypt(self, ciphertext: bytes, ad: bytes = b"") -> bytes:
        """Authenticate and decrypt one transport message, returning the plaintext.

        Raises :class:`~peernet.errors.ProtocolError` for a message over 65535 bytes,
        shorter than the 16-byte tag, failing authentication (tampered, replayed,
        reordered or from the wrong direction), or an exhausted nonce.
        """
        # DecryptWithAd with a key (§5.1), written out: this runs for every message.
        n = self.nonce
        if not (0 <= n < MAX_NONCE and TAG_LEN <= len(ciphertext) <= MAX_MESSAGE_LEN
                and self._k is not None):
            # (PyNaCl would raise ValueError("negative array length") for a short one.)
            self._refuse(len(ciphertext), MAX_MESSAGE_LEN, TAG_LEN)
        try:
            plaintext = self._open(_nonce_bytes(n), ciphertext, ad)
        except _AEAD_FAILURES as exc:
            raise ProtocolError("message failed authentication") from exc
        self.nonce = n + 1  # only after the tag checked out
        return plaintext

    def _refuse(self, n_bytes: int, max_bytes: int, min_bytes: int = 0) -> NoReturn:
        """Say why :meth:`encrypt` or :meth:`decrypt` cannot take ``n_bytes``."""
        if n_bytes > max_bytes:
            raise ProtocolError("a Noise message is at most 65535 bytes")
        if self._k is None:
            raise ProtocolError("this CipherState has no key")
        if n_bytes < min_bytes:
            raise ProtocolError("ciphertext shorter than its authentication tag")
        raise ProtocolError("nonce exhausted: the session must be closed")


class _SymmetricState:
    """``ck``, ``h`` and the handshake CipherState (§5.2)."""

    __slots__ = ("ck", "h", "_cs")

    def __init__(self, protocol_name: bytes) -> None:
        """InitializeSymmetric(protocol_name)."""
        # A name of at most HASHLEN bytes is zero-padded, a longer one hashed. Ours is
        # exactly 32 bytes, so h is the name itself.
        if len(protocol_name) <= HASH_LEN:
            self.h = protocol_name.ljust(HASH_LEN, b"\x00")
        else:
            self.h = _sha256(protocol_name).digest()
        self.ck = self.h
        self._cs = CipherState()

    def mix_key(self, input_key_material: bytes) -> None:
        """MixKey(): new ck and k from a DH output (HASHLEN is 32, so no truncation)."""
        self.ck, temp_k = _hkdf(self.ck, input_key_material)
        self._cs._initialize_key(temp_k)

    def mix_hash(self, data: bytes) -> None:
        """MixHash(): h = HASH(h || data)."""
        self.h = _sha256(self.h + data).digest()

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """EncryptAndHash(): hashes the output even when there is no key yet (N5)."""
        ciphertext = self._cs._encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """DecryptAndHash()."""
        plaintext = self._cs._decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """Split(): c1 carries initiator to responder, c2 the reverse; both at n = 0."""
        temp_k1, temp_k2 = _hkdf(self.ck, b"")
        return CipherState(temp_k1), CipherState(temp_k2)


def _as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def _private_key(value: object, what: str) -> bytes:
    key = _as_bytes(value, what)
    if len(key) != DH_LEN:
        raise ValueError(f"{what} must be a raw 32-byte X25519 private key")
    return key


class HandshakeState:
    """One side of a ``Noise_XX_25519_ChaChaPoly_SHA256`` handshake (§5.3).

    ``static_private`` is this node's raw 32-byte X25519 private key. ``prologue``
    must be identical on both sides (a mismatch fails the first AEAD, in message 2).
    ``ephemeral_private`` exists **for test vectors only**: production code must leave
    it ``None`` so that a fresh ephemeral key is drawn from the OS for every handshake
    (reusing one destroys forward secrecy, §14).

    The initiator calls ``write_message``, ``read_message``, ``write_message``; the
    responder ``read_message``, ``write_message``, ``read_message``. After that
    :attr:`complete` is true and :meth:`split` gives the transport ciphers.

    Any failure (tampering, truncation, a low-order key, a call out of turn, a wrong
    prologue) raises :class:`~peernet.errors.HandshakeError` and deletes the state:
    every later call raises ``HandshakeError`` too. Passing a non-bytes argument raises
    ``TypeError`` and leaves the state alone.
    """

    __slots__ = (
        "_initiator", "_ss", "_s", "_s_pub", "_e", "_e_pub", "_rs", "_re",
        "_step", "_failed", "_split_done", "_h",
    )

    def __init__(
        self,
        initiator: bool,
        static_private: bytes,
        ephemeral_private: bytes | None = None,
        prologue: bytes = b"",
        *,
        static_public: bytes | None = None,
    ) -> None:
        """Initialize(): XX has no pre-messages, so only the prologue is mixed in.

        ``static_public``, if the caller already has it, must be the public key of
        ``static_private``; it saves a scalar multiplication per handshake.
        """
        self._initiator = bool(initiator)
        self._s = _private_key(static_private, "static_private")
        if static_public is None:
            self._s_pub = _scalarmult_base(self._s)
        else:
            self._s_pub = _as_bytes(static_public, "static_public")
            if len(self._s_pub) != DH_LEN:
                raise ValueError("static_public must be a raw 32-byte X25519 public key")
        self._e = None if ephemeral_private is None else _private_key(
            ephemeral_private, "ephemeral_private")
        self._e_pub: bytes | None = None
        self._rs: bytes | None = None
        self._re: bytes | None = None
        self._ss: _SymmetricState | None = _SymmetricState(PROTOCOL_NAME)
        # §5.3: MixHash(prologue) always, even when empty (N6).
        self._ss.mix_hash(_as_bytes(prologue, "prologue"))
        self._step = 0  # index of the next handshake message, 3 when complete
        self._failed = False
        self._split_done = False
        self._h: bytes | None = None

    def __repr__(self) -> str:
        role = "initiator" if self._initiator else "responder"
        state = "failed" if self._failed else ("complete" if self._step == 3 else
                                               f"at message {self._step + 1}")
        return f"<HandshakeState {role} {state}>"

    # --- public API -----------------------------------------------------------------

    @property
    def initiator(self) -> bool:
        """True for the side that sends the first message."""
        return self._initiator

    @property
    def complete(self) -> bool:
        """True once all three XX messages have been written or read successfully."""
        return self._step == 3 and not self._failed

    @property
    def handshake_hash(self) -> bytes:
        """The final handshake hash ``h`` (§5.2 GetHandshakeHash), for channel binding.

        Identical on both sides of a successful handshake. Raises
        :class:`~peernet.errors.HandshakeError` before the handshake is complete.
        """
        if not self.complete:
            raise HandshakeError("the handshake hash is only final once complete")
        assert self._h is not None
        return self._h

    @property
    def remote_static(self) -> bytes | None:
        """The peer's 32-byte static public key once the message carrying it has been
        read and authenticated (message 2 for the initiator, 3 for the responder), else
        None. Check it against the trust list at once (N13)."""
        return self._rs

    @property
    def local_static(self) -> bytes:
        """This side's 32-byte static public key."""
        return self._s_pub

    def write_message(self, payload: bytes = b"") -> bytes:
        """WriteMessage(): produce the next handshake message carrying ``payload``."""
        payload = _as_bytes(payload, "payload")
        return self._guard(self._write_message, payload)

    def read_message(self, message: bytes) -> bytes:
        """ReadMessage(): consume the peer's next handshake message, return its payload."""
        message = _as_bytes(message, "message")
        return self._guard(self._read_message, message)

    def split(self) -> tuple[CipherState, CipherState]:
        """Return ``(send_cipher, recv_cipher)`` for this side (§5.2 Split).

        The initiator sends with c1 and receives with c2; the responder the reverse.
        Valid exactly once, after :attr:`complete`; afterwards only ``h`` is kept (§5).
        """
        if not self.complete:
            raise HandshakeError("split() before the handshake is complete")
        if self._split_done:
            raise HandshakeError("split() may be called only once")
        assert self._ss is not None
        c1, c2 = self._ss.split()
        self._split_done = True
        self._ss = None  # delete ck and the handshake cipher; h lives in self._h
        return (c1, c2) if self._initiator else (c2, c1)

    # --- internals ------------------------------------------------------------------

    def _guard(self, step: Callable[[bytes], bytes], data: bytes) -> bytes:
        """Run one handshake step; any failure deletes the whole state (§5)."""
        if self._failed:
            raise HandshakeError("this handshake already failed")
        try:
            return step(data)
        except Exception as exc:
            self._fail()
            if isinstance(exc, HandshakeError):
                raise
            raise HandshakeError(f"handshake failed: {exc}") from exc

    def _fail(self) -> None:
        self._failed = True
        self._ss = None
        self._s = self._e = None  # type: ignore[assignment]
        self._re = self._rs = None

    def _my_turn_to_write(self) -> bool:
        # Steps count from 0: the initiator writes messages 1 and 3, the responder 2.
        return self._step < 3 and (self._step % 2 == 0) == self._initiator

    def _generate_ephemeral(self) -> bytes:
        """The "e" token's GENERATE_KEYPAIR(), unless a test vector injected one.
        Returns the ephemeral public key."""
        if self._e is None:
            self._e = _random(DH_LEN)
        self._e_pub = e_pub = _scalarmult_base(self._e)
        return e_pub

    def _finish_message(self) -> None:
        self._step += 1
        if self._step == 3:
            assert self._ss is not None
            self._h = self._ss.h
            # No DH is left: drop the private keys and remote ephemeral now (N11).
            self._s = self._e = None  # type: ignore[assignment]
            self._re = None

    def _write_message(self, payload: bytes) -> bytes:
        if self._step >= 3:
            raise HandshakeError("the handshake is already complete")
        if not self._my_turn_to_write():
            raise HandshakeError("write_message called out of turn")
        step = self._step
        # Size first: the whole message must fit in 65535 bytes (§3).
        overhead = (DH_LEN, DH_LEN + DH_LEN + 2 * TAG_LEN, DH_LEN + 2 * TAG_LEN)[step]
        if len(payload) + overhead > MAX_MESSAGE_LEN:
            raise HandshakeError("handshake message would exceed 65535 bytes")
        ss = self._ss
        assert ss is not None
        if step == 0:  # -> e
            out = self._generate_ephemeral()
            ss.mix_hash(out)
        elif step == 1:  # <- e, ee, s, es
            out = self._generate_ephemeral()
            ss.mix_hash(out)
            ss.mix_key(_dh(self._e, self._re))             # ee
            out += ss.encrypt_and_hash(self._s_pub)        # s
            ss.mix_key(_dh(self._s, self._re))             # es (responder: s with re)
        else:  # -> s, se
            out = ss.encrypt_and_hash(self._s_pub)         # s
            ss.mix_key(_dh(self._s, self._re))             # se (initiator: s with re)
        out += ss.encrypt_and_hash(payload)  # payload; plaintext but hashed in msg 1
        self._finish_message()
        return out

    def _read_message(self, message: bytes) -> bytes:
        # Size before anything else (§3), then turn, then the pattern's minimum length:
        # no byte of a short message may reach libsodium.
        if len(message) > MAX_MESSAGE_LEN:
            raise HandshakeError("handshake message exceeds 65535 bytes")
        if self._step >= 3:
            raise HandshakeError("the handshake is already complete")
        if self._my_turn_to_write():
            raise HandshakeError("read_message called out of turn")
        step = self._step
        if len(message) < _MIN_LEN[step]:
            raise HandshakeError("handshake message is truncated")
        ss = self._ss
        assert ss is not None
        rs: bytes | None = None
        if step == 0:  # -> e
            self._re = message[:DH_LEN]
            ss.mix_hash(self._re)
            rest = message[DH_LEN:]
        elif step == 1:  # <- e, ee, s, es
            self._re = message[:DH_LEN]
            ss.mix_hash(self._re)
            ss.mix_key(_dh(self._e, self._re))                          # ee
            rs = ss.decrypt_and_hash(message[DH_LEN:2 * DH_LEN + TAG_LEN])  # s
            ss.mix_key(_dh(self._e, rs))                                # es (e with rs)
            rest = message[2 * DH_LEN + TAG_LEN:]
        else:  # -> s, se
            rs = ss.decrypt_and_hash(message[:DH_LEN + TAG_LEN])        # s
            ss.mix_key(_dh(self._e, rs))                                # se (e with rs)
            rest = message[DH_LEN + TAG_LEN:]
        payload = ss.decrypt_and_hash(rest)
        if step:
            self._rs = rs  # published only once the payload authenticated too
        self._finish_message()
        return payload
