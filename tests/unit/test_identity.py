"""Identity: key pair, signatures, and the key file on disk (T15)."""

from __future__ import annotations

import hashlib
import os
import pickle
import stat
from pathlib import Path

import nacl.bindings
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peernet import _fs
from peernet.errors import InsecureKeyFile, KeyFileError
from peernet.identity import Identity, load_or_create, verify
from peernet.ids import PeerId

SEED = bytes(range(100, 132))


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def write_key_file(path: Path, data: bytes, file_mode: int = 0o600) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, file_mode)


def valid_key_bytes(seed: bytes = SEED) -> bytes:
    return b"PNKEY\x01" + seed + Identity.from_seed(seed).peer_id.bytes


# --- the key pair --------------------------------------------------------------------


def test_from_seed_is_deterministic():
    a, b = Identity.from_seed(SEED), Identity.from_seed(bytearray(SEED))
    assert a.peer_id == b.peer_id
    assert isinstance(a.peer_id, PeerId)
    assert Identity.generate().peer_id != Identity.generate().peer_id


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33)])
def test_from_seed_wants_32_bytes(seed):
    with pytest.raises(ValueError, match=f"got {len(seed)}"):
        Identity.from_seed(seed)
    with pytest.raises(TypeError):
        Identity.from_seed("x" * 32)  # type: ignore[arg-type]


def test_sign_and_verify():
    me = Identity.from_seed(SEED)
    signature = me.sign(b"hello")
    assert isinstance(signature, bytes) and len(signature) == 64
    assert verify(me.peer_id, b"hello", signature)
    assert verify(me.peer_id, bytearray(b"hello"), memoryview(signature))


def test_verify_rejects_without_raising():
    me, other = Identity.from_seed(SEED), Identity.generate()
    signature = me.sign(b"hello")
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify(other.peer_id, b"hello", signature)  # wrong key
    assert not verify(me.peer_id, b"hellO", signature)  # other message
    assert not verify(me.peer_id, b"hello", flipped)  # flipped bit
    assert not verify(me.peer_id, b"hello", signature[:63])  # short
    assert not verify(me.peer_id, b"hello", signature + b"\0")  # long
    assert not verify(me.peer_id, b"hello", b"")
    assert not verify(me.peer_id, "hello", signature)  # type: ignore[arg-type]
    assert not verify(me.peer_id, b"hello", None)  # type: ignore[arg-type]
    assert not verify(me.peer_id.bytes, b"hello", signature)  # type: ignore[arg-type]
    # An identity point (small order) as public key: libsodium refuses it.
    low_order = PeerId(b"\x01" + bytes(31))
    assert not verify(low_order, b"hello", bytes(64))


def test_x25519_keys_are_the_standard_conversion():
    me = Identity.from_seed(SEED)
    assert len(me.x25519_private) == 32 and len(me.x25519_public) == 32
    assert nacl.bindings.crypto_scalarmult_base(me.x25519_private) == me.x25519_public
    assert me.x25519_public == nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(
        me.peer_id.bytes
    )


@given(st.binary(min_size=32, max_size=32))
def test_our_own_x25519_key_is_libsodiums_conversion_for_every_seed(seed):
    """Identity derives its X25519 public key with the birational map in Python (no
    point validation: the key is our own); it is libsodium's result, byte for byte."""
    me = Identity.from_seed(seed)
    assert me.x25519_public == nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(
        me.peer_id.bytes)
    assert me.x25519_public == nacl.bindings.crypto_scalarmult_base(me.x25519_private)


def test_no_secret_in_repr_or_str():
    me = Identity.from_seed(SEED)
    for text in (repr(me), str(me)):
        assert me.peer_id.short in text
        for secret in (SEED, me.x25519_private):
            assert secret.hex() not in text
            assert repr(secret) not in text
        assert str(me.peer_id) not in text  # short form only


def test_identity_cannot_be_pickled():
    with pytest.raises(TypeError, match="private key"):
        pickle.dumps(Identity.from_seed(SEED))


# --- load_or_create: creation --------------------------------------------------------


def test_creates_private_dir_and_key_file_regardless_of_umask(tmp_path, umask0):
    data_dir = tmp_path / "a" / "b" / "node"
    me = load_or_create(data_dir)
    key = data_dir / "identity.key"
    assert mode(data_dir) == 0o700
    assert mode(tmp_path / "a") == 0o700  # parents we created are private too
    assert mode(key) == 0o600
    assert os.stat(key).st_uid == os.geteuid()
    data = key.read_bytes()
    assert len(data) == 70 and data[:6] == b"PNKEY\x01"
    assert data[38:] == me.peer_id.bytes
    assert leftovers(data_dir) == []


def test_reload_gives_the_same_identity(tmp_path):
    first = load_or_create(tmp_path)
    digest = sha256(tmp_path / "identity.key")
    second = load_or_create(str(tmp_path))
    assert second.peer_id == first.peer_id
    assert second.x25519_private == first.x25519_private
    assert sha256(tmp_path / "identity.key") == digest


def test_existing_directory_mode_is_left_alone(tmp_path):
    data_dir = tmp_path / "shared"
    data_dir.mkdir()
    os.chmod(data_dir, 0o750)
    load_or_create(data_dir)
    assert mode(data_dir) == 0o750


def test_data_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "node").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        load_or_create(tmp_path / "node")
    with pytest.raises(NotADirectoryError):
        load_or_create(tmp_path / "node" / "deeper")


def test_loads_a_known_key_file(tmp_path):
    write_key_file(tmp_path / "identity.key", valid_key_bytes())
    assert load_or_create(tmp_path).peer_id == Identity.from_seed(SEED).peer_id


# --- load_or_create: refusals --------------------------------------------------------


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_readable_or_writable_by_others_is_refused(tmp_path, file_mode):
    key = tmp_path / "identity.key"
    write_key_file(key, valid_key_bytes(), file_mode)
    digest = sha256(key)
    with pytest.raises(InsecureKeyFile) as info:
        load_or_create(tmp_path)
    assert f"chmod 600 {key}" in str(info.value)
    assert sha256(key) == digest and mode(key) == file_mode


def test_symlink_is_refused(tmp_path):
    real = tmp_path / "elsewhere.key"
    write_key_file(real, valid_key_bytes())
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    (data_dir / "identity.key").symlink_to(real)
    with pytest.raises(InsecureKeyFile, match="symbolic link"):
        load_or_create(data_dir)
    assert (data_dir / "identity.key").is_symlink()
    assert real.read_bytes() == valid_key_bytes()


def test_dangling_symlink_is_refused_not_followed(tmp_path):
    target = tmp_path / "planted.key"
    (tmp_path / "identity.key").symlink_to(target)
    with pytest.raises(InsecureKeyFile, match="symbolic link"):
        load_or_create(tmp_path)
    assert not target.exists()  # we did not create a key through the link


def test_a_directory_in_place_of_the_key_is_refused(tmp_path):
    (tmp_path / "identity.key").mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_or_create(tmp_path)


def test_file_of_another_user_is_refused(tmp_path, monkeypatch):
    write_key_file(tmp_path / "identity.key", valid_key_bytes())
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(tmp_path).st_uid + 1)
    # The directory would be refused first (tests/adversarial/test_files.py); here the
    # file's own check is under test.
    monkeypatch.setattr("peernet._fs.check_private_dir", lambda directory: None)
    with pytest.raises(InsecureKeyFile, match="owned by uid"):
        load_or_create(tmp_path)


CORRUPTIONS = {
    "empty": b"",
    "truncated to 3 bytes": b"PNK",
    "magic only": b"PNKEY",
    "truncated": valid_key_bytes()[:69],
    "extra byte": valid_key_bytes() + b"\n",
    "garbage": bytes(range(70)),
    "wrong version": b"PNKEY\x02" + valid_key_bytes()[6:],
    "hex text": valid_key_bytes().hex().encode(),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corrupt_key_file_is_refused_and_untouched(tmp_path, name):
    key = tmp_path / "identity.key"
    write_key_file(key, CORRUPTIONS[name])
    digest = sha256(key)
    with pytest.raises(KeyFileError) as info:
        load_or_create(tmp_path)
    message = str(info.value)
    assert not isinstance(info.value, InsecureKeyFile)
    assert "corrupt or truncated" in message and str(key) in message
    assert "left untouched" in message
    assert SEED.hex() not in message
    assert sha256(key) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.key"]


def test_mismatched_public_key_is_refused_and_untouched(tmp_path):
    key = tmp_path / "identity.key"
    other_public = Identity.generate().peer_id.bytes
    write_key_file(key, b"PNKEY\x01" + SEED + other_public)
    digest = sha256(key)
    with pytest.raises(KeyFileError, match="public key does not match private key") as info:
        load_or_create(tmp_path)
    assert SEED.hex() not in str(info.value)
    assert sha256(key) == digest


def test_big_file_is_refused(tmp_path):
    key = tmp_path / "identity.key"
    write_key_file(key, valid_key_bytes() * 1000)
    with pytest.raises(KeyFileError):
        load_or_create(tmp_path)
    assert key.read_bytes() == valid_key_bytes() * 1000


# --- atomic writes -------------------------------------------------------------------


def _failing_replace(*args, **kwargs):
    raise OSError(28, "No space left on device (simulated)")


def test_failed_replace_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch):
    key = tmp_path / "identity.key"
    write_key_file(key, valid_key_bytes())
    monkeypatch.setattr(os, "replace", _failing_replace)
    with pytest.raises(OSError, match="simulated"):
        _fs.atomic_write(key, b"new content")
    assert key.read_bytes() == valid_key_bytes()
    assert leftovers(tmp_path) == []


def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch):
    key = tmp_path / "identity.key"
    write_key_file(key, valid_key_bytes())
    monkeypatch.setattr(os, "fsync", _failing_replace)
    with pytest.raises(OSError, match="simulated"):
        _fs.atomic_write(key, b"new content")
    assert key.read_bytes() == valid_key_bytes()
    assert leftovers(tmp_path) == []


def test_failed_create_leaves_no_key_file(tmp_path, monkeypatch):
    # The first write publishes with a hard link (never clobbers); patch both ways out.
    monkeypatch.setattr(os, "replace", _failing_replace)
    monkeypatch.setattr(os, "link", _failing_replace)
    with pytest.raises(OSError, match="simulated"):
        load_or_create(tmp_path)
    assert sorted(os.listdir(tmp_path)) == []


def test_create_never_clobbers_a_key_that_appeared_meanwhile(tmp_path, monkeypatch):
    # Another process writes its key between our "missing" check and our publish.
    theirs = valid_key_bytes()
    real_link = os.link

    def racing_link(src, dst, *args, **kwargs):
        write_key_file(Path(dst), theirs)
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", racing_link)
    me = load_or_create(tmp_path)
    assert me.peer_id == Identity.from_seed(SEED).peer_id
    assert (tmp_path / "identity.key").read_bytes() == theirs
    assert leftovers(tmp_path) == []


def test_atomic_write_mode_is_exact_under_any_umask(tmp_path):
    old = os.umask(0o077)
    try:
        _fs.atomic_write(tmp_path / "f", b"x", 0o640)
    finally:
        os.umask(old)
    assert mode(tmp_path / "f") == 0o640
    with pytest.raises(FileExistsError):
        _fs.atomic_write(tmp_path / "f", b"y", overwrite=False)
    assert (tmp_path / "f").read_bytes() == b"x"
    assert leftovers(tmp_path) == []
