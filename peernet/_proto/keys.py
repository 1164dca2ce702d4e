"""Key math, pure: an Ed25519 identity, its X25519 (Noise static) conversion, and
signature checks. No files here: ``peernet.identity`` keeps the key file."""

from __future__ import annotations

import nacl.bindings
import nacl.exceptions
import nacl.signing

from ..ids import PeerId

__all__ = ["Identity", "SEED_LENGTH", "verify"]

SEED_LENGTH = 32
_SIGNATURE_LENGTH = 64
_P = 2**255 - 19  # the field of Curve25519 and Ed25519


def x25519_public_of(ed25519_public: bytes) -> bytes:
    """The X25519 public key of *our own* Ed25519 public key: the birational map
    u = (1 + y) / (1 - y) mod p (RFC 7748, section 4.1), which is what libsodium's
    ``crypto_sign_ed25519_pk_to_curve25519`` computes after validating the point. A
    key we derived from our own seed needs no validation, and this costs a quarter of
    that call (one modular inverse). Never use it on a peer's key: those are checked
    by libsodium (``Session._verify_binding``)."""
    y = int.from_bytes(ed25519_public, "little") & ((1 << 255) - 1)
    return ((1 + y) * pow(1 - y, -1, _P) % _P).to_bytes(32, "little")


class Identity:
    """An Ed25519 key pair: this node's identity.

    Build one with :meth:`generate`, :meth:`from_seed` or :func:`load_or_create`. The
    private key never appears in ``repr``, ``str`` or any exception message.
    """

    __slots__ = ("_signing_key", "_peer_id", "_x25519_private", "_x25519_public")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        """Wrap a PyNaCl signing key (prefer the classmethod constructors)."""
        if not isinstance(signing_key, nacl.signing.SigningKey):
            raise TypeError(
                f"expected nacl.signing.SigningKey, got {type(signing_key).__name__}"
            )
        self._signing_key = signing_key
        public = signing_key.verify_key.encode()
        self._peer_id = PeerId(public)
        # libsodium's secret key is seed || public; the conversion wants all 64 bytes.
        secret64 = signing_key.encode() + public
        self._x25519_private = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(secret64)
        self._x25519_public = x25519_public_of(public)

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity."""
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity whose Ed25519 seed (private key) is the 32 bytes ``seed``."""
        if not isinstance(seed, (bytes, bytearray, memoryview)):
            raise TypeError(f"seed must be 32 bytes, got {type(seed).__name__}")
        seed = bytes(seed)
        if len(seed) != SEED_LENGTH:
            raise ValueError(f"seed must be {SEED_LENGTH} bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def peer_id(self) -> PeerId:
        """This identity's PeerId (its Ed25519 public key)."""
        return self._peer_id

    @property
    def x25519_private(self) -> bytes:
        """The X25519 private key (32 bytes) converted from the Ed25519 key: the Noise
        static key. Secret."""
        return self._x25519_private

    @property
    def x25519_public(self) -> bytes:
        """The X25519 public key (32 bytes) matching :attr:`x25519_private`."""
        return self._x25519_public

    def sign(self, message: bytes) -> bytes:
        """A 64-byte detached Ed25519 signature of ``message``."""
        return bytes(self._signing_key.sign(bytes(message)).signature)

    def _seed(self) -> bytes:
        return bytes(self._signing_key.encode())

    def __repr__(self) -> str:
        return f"Identity({self._peer_id.short}…)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would copy the private key into whatever stores the pickle; a node
        # that needs its identity elsewhere should load it from its data_dir.
        raise TypeError("an Identity holds a private key and cannot be pickled")


def verify(peer_id: PeerId, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` is ``peer_id``'s valid Ed25519 signature of ``message``.

    Never raises: any malformed input (wrong types, wrong lengths, a public key that is
    not a usable curve point) is simply not a valid signature.
    """
    if not isinstance(peer_id, PeerId):
        return False
    if not isinstance(message, (bytes, bytearray, memoryview)):
        return False
    if not isinstance(signature, (bytes, bytearray, memoryview)):
        return False
    signature = bytes(signature)
    if len(signature) != _SIGNATURE_LENGTH:
        return False
    try:
        nacl.signing.VerifyKey(peer_id.bytes).verify(bytes(message), signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True
