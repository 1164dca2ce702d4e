"""The node's identity: an Ed25519 key pair, kept in ``data_dir/identity.key``.

The key math (:class:`Identity`, :func:`verify`) lives in ``peernet._proto.keys`` (pure,
usable by the protocol core); this module keeps the key file and re-exports both.

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

from . import _fs
from ._proto.keys import Identity, verify
from .errors import InsecureKeyFile, KeyFileError

__all__ = ["Identity", "load_or_create", "load_or_create_in", "verify", "KEY_FILE_NAME"]

logger = logging.getLogger(__name__)

KEY_FILE_NAME = "identity.key"
_MAGIC = b"PNKEY"
_VERSION = 1
_SEED_LENGTH = 32
_PUBLIC_LENGTH = 32
_FILE_LENGTH = len(_MAGIC) + 1 + _SEED_LENGTH + _PUBLIC_LENGTH  # 70
_READ_LIMIT = 4096  # read a little past 70 so "extra bytes" gets the precise message


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
    return load_or_create_in(_fs.ensure_private_dir(data_dir))


def load_or_create_in(directory: Path) -> Identity:
    """:func:`load_or_create` in a directory the caller has just made sure of with
    ``_fs.ensure_private_dir`` (a Node does, once for all the files it reads)."""
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
