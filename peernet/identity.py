"""The node's identity: an Ed25519 key pair, kept in ``data_dir/identity.key``.

The Ed25519 public key is the node's :class:`~peernet.ids.PeerId`; its X25519 conversion
is the Noise static key. The key file is small and binary::

    b"PNKEY" | version 0x01 | seed (32 bytes) | Ed25519 public key (32 bytes)   = 70 bytes

It is created 0600 with an atomic write, refused if other users can read it, and never
overwritten or deleted: a damaged key file is the user's to move away, because replacing
it would silently change the node's identity and break every pairing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.signing

from . import _fs
from .errors import InsecureKeyFile, KeyFileError
from .ids import PeerId

__all__ = ["Identity", "load_or_create", "verify", "KEY_FILE_NAME"]

logger = logging.getLogger(__name__)

KEY_FILE_NAME = "identity.key"
_MAGIC = b"PNKEY"
_VERSION = 1
_SEED_LENGTH = 32
_PUBLIC_LENGTH = 32
_SIGNATURE_LENGTH = 64
_FILE_LENGTH = len(_MAGIC) + 1 + _SEED_LENGTH + _PUBLIC_LENGTH  # 70
_READ_LIMIT = 4096  # read a little past 70 so "extra bytes" gets the precise message


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
        self._x25519_public = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public)

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
        if len(seed) != _SEED_LENGTH:
            raise ValueError(f"seed must be {_SEED_LENGTH} bytes, got {len(seed)}")
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


def _encode(identity: Identity) -> bytes:
    return _MAGIC + bytes([_VERSION]) + identity._seed() + identity.peer_id.bytes


def _decode(data: bytes, path: Path) -> Identity:
    def corrupt(detail: str) -> KeyFileError:
        return KeyFileError(
            f"identity key file {path} is corrupt or truncated ({detail}); it was left "
            "untouched. Restore it from a backup, or move it away to create a new "
            "identity (peers will have to pair with the new id)."
        )

    if not data[: len(_MAGIC)] == _MAGIC[: len(data)]:
        raise corrupt("it does not start with the PNKEY marker")
    if len(data) <= len(_MAGIC):
        raise corrupt(f"expected {_FILE_LENGTH} bytes, found {len(data)}")
    version = data[len(_MAGIC)]
    if version != _VERSION:
        raise corrupt(f"unknown format version {version}, this peernet reads {_VERSION}")
    if len(data) != _FILE_LENGTH:
        raise corrupt(f"expected {_FILE_LENGTH} bytes, found {len(data)}")
    start = len(_MAGIC) + 1
    seed = data[start : start + _SEED_LENGTH]
    public = data[start + _SEED_LENGTH :]
    identity = Identity.from_seed(seed)
    if identity.peer_id.bytes != public:
        raise KeyFileError(
            f"identity key file {path}: public key does not match private key; it was "
            "left untouched. Restore it from a backup, or move it away to create a new "
            "identity."
        )
    return identity


def load_or_create(data_dir: str | os.PathLike[str]) -> Identity:
    """Load this node's identity from ``data_dir``, creating it on first use.

    ``data_dir`` is created 0700 if missing. A new key is written atomically, mode 0600
    (whatever the umask). An existing key file must be a regular file of ours that
    nobody else can read or write (else :class:`~peernet.errors.InsecureKeyFile`, with
    the ``chmod`` that fixes it) and must be exactly well formed (else
    :class:`~peernet.errors.KeyFileError`). An existing file is never modified.
    """
    directory = _fs.ensure_private_dir(data_dir)
    path = directory / KEY_FILE_NAME
    _fs.sweep_stale_temps(directory, KEY_FILE_NAME)
    for _ in range(2):  # a second pass only if another process created it meanwhile
        try:
            data = _fs.read_private_file(
                path,
                max_bytes=_READ_LIMIT,
                error=KeyFileError,
                insecure_error=InsecureKeyFile,
                forbidden_mode=0o066,
                what="identity key file",
            )
        except FileNotFoundError:
            pass
        else:
            return _decode(data, path)
        identity = Identity.generate()
        try:
            # overwrite=False: if a concurrent starter won the race, use its key.
            _fs.atomic_write(path, _encode(identity), 0o600, overwrite=False)
        except FileExistsError:
            continue
        logger.info("created a new identity %s in %s", identity.peer_id.short, path)
        return identity
    raise KeyFileError(f"identity key file {path} keeps appearing and disappearing")
