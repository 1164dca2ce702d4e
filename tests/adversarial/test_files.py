"""The key and trust files under interrupted writes and corruption (security.md T14/T15).

Permissions, symlinks, other owners, corrupt contents and failed writes are unit-tested
in tests/unit/test_identity.py and tests/unit/test_trust.py. What is added here: writers
SIGKILLed at random moments (every later load sees the old or the new content, never a
torn file), and a node process refusing to start on a corrupt trust file without
touching it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import time

import pytest

from peernet import _fs
from peernet.identity import KEY_FILE_NAME, load_or_create
from peernet.trust import TRUST_FILE_NAME, TrustStore
from tests.helpers import seeded_identity

from .harness import REPO

ROUNDS = 30


def _churn(*args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "tests.procs.churn", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=40)
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr[-2000:]


def test_T14_trust_writes_killed_at_random_leave_old_or_new_content(tmp_path, record):
    data = tmp_path / "node"
    keep, churned = seeded_identity("keep").peer_id, seeded_identity("churned").peer_id
    TrustStore.load(data).pair(keep, label="always there")
    _churn("trust", str(data), str(churned), str(ROUNDS), "14")
    states = set()
    for n in range(ROUNDS):
        snap = tmp_path / f"node.snap{n}"
        store = TrustStore.load(snap)  # never raises: never torn
        ids = {p.peer_id for p in store.list()}
        assert keep in ids and ids <= {keep, churned}, ids
        states.add(len(ids))
        assert stat.S_IMODE((snap / TRUST_FILE_NAME).stat().st_mode) == 0o600
    # Temp files of killed writers are never read; once older than any live write they
    # are swept on the next load (a fresh one may belong to a writer still working).
    leftovers = list(tmp_path.glob(f"node.snap*/.{TRUST_FILE_NAME}.*.tmp"))
    for temp in leftovers:
        old = time.time() - _fs.STALE_TEMP_AGE_S - 1
        os.utime(temp, (old, old))
    for n in range(ROUNDS):
        TrustStore.load(tmp_path / f"node.snap{n}")
    assert not list(tmp_path.glob(f"node.snap*/.{TRUST_FILE_NAME}.*.tmp"))
    record(f"T14 {ROUNDS} pair/unpair writers SIGKILLed at random: every load succeeded "
           f"(states seen: {sorted(states)} peers), mode 0600 under umask 0; "
           f"{len(leftovers)} orphaned temp files, all swept by the next load once stale")


def test_T15_key_creation_killed_at_random_leaves_no_torn_key(tmp_path, record):
    data = tmp_path / "keys"
    data.mkdir()
    _churn("identity", str(data), str(ROUNDS), "15")
    created = loaded = 0
    for sub in sorted(p for p in data.iterdir() if p.is_dir()):
        key = sub / KEY_FILE_NAME
        existed = key.exists()
        if existed:
            assert key.stat().st_size == 70
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
            before = key.read_bytes()
        identity = load_or_create(sub)  # never a KeyFileError
        if existed:
            assert key.read_bytes() == before  # loaded, not replaced
            assert identity.peer_id.bytes == before[-32:]
            loaded += 1
        else:
            created += 1
    assert loaded >= ROUNDS  # each child wrote at least one key before its kill
    record(f"T15 {ROUNDS} key creators SIGKILLed at random: {loaded} complete 0600 keys "
           f"loaded, {created} missing keys created afresh, no torn key file")


CORRUPT = {
    "truncated": lambda good: good[:3],
    "wrong shape": lambda good: b'{"version": 1, "peers": {"a": 1}}',
    "31-byte key": lambda good: b'{"version": 1, "peers": [{"id": "pn1qqqq", "label": null, '
                                b'"added_at": 1.0}]}',
}


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_T14_a_node_refuses_to_start_on_a_corrupt_trust_file_and_leaves_it(tmp_path, kind):
    data = tmp_path / "node"
    load_or_create(data)
    TrustStore.load(data).pair(seeded_identity("x").peer_id)
    path = data / TRUST_FILE_NAME
    path.write_bytes(CORRUPT[kind](path.read_bytes()))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    out = subprocess.run([sys.executable, "-m", "tests.procs.target_node", str(data)],
                         cwd=REPO, capture_output=True, text=True, timeout=20,
                         stdin=subprocess.DEVNULL)
    assert out.returncode != 0 and "READY" not in out.stdout
    assert "TrustStoreError" in out.stderr and str(path) in out.stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


# --- the data dir itself (StrictModes) ------------------------------------------------

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="playing another local user needs root (os.setuid)")


def _as_other_user(fn) -> None:
    """Run ``fn()`` in a forked child that became uid/gid 65534 (another local user)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        code = 1
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fn()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.fixture
def shared_tmp():
    """A sticky, world-writable directory, like /tmp, that other users can create in
    (pytest's own tmp_path lies below directories only we may enter)."""
    import shutil
    import tempfile
    from pathlib import Path

    shared = Path(tempfile.mkdtemp(prefix="peernet-shared-", dir="/tmp"))
    os.chmod(shared, 0o1777)
    try:
        yield shared
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_a_data_dir_others_can_write_to_is_refused(tmp_path, mode):
    import peernet

    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, mode)
    with pytest.raises(peernet.InsecureDataDir, match=rf"chmod 700 {data}"):
        peernet.Node(data, host="127.0.0.1")
    assert sorted(os.listdir(data)) == []  # nothing was created in it
    os.chmod(data, 0o755)  # readable by others is the owner's business
    with peernet.Node(data, host="127.0.0.1", network_monitor=False):
        pass


@needs_root
def test_T14b_a_data_dir_another_user_made_is_refused_before_anything_is_trusted(shared_tmp):
    """Another user pre-creates the shared data dir (mode 0777 or even 0700): with it
    they could swap trust.json back after an unpair, delete the key, or hold the lock.
    The node refuses it, naming the owner and what to do."""
    import peernet

    for mode in (0o777, 0o700):
        data = shared_tmp / f"peernet-{mode:o}"
        _as_other_user(lambda: (os.mkdir(data), os.chmod(data, mode)))
        assert os.stat(data).st_uid == NOBODY
        with pytest.raises(peernet.InsecureDataDir, match=f"owned by uid {NOBODY}"):
            peernet.Node(data, host="127.0.0.1")
        with pytest.raises(peernet.InsecureDataDir):
            TrustStore.load(data)
        with pytest.raises(peernet.InsecureDataDir):
            load_or_create(data)


@needs_root
def test_a_symlink_another_user_owns_is_refused_even_to_our_own_dir(shared_tmp, tmp_path):
    import peernet

    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    link = shared_tmp / "data"
    _as_other_user(lambda: os.symlink(ours, link))
    with pytest.raises(peernet.InsecureDataDir, match="symbolic link owned by uid"):
        peernet.Node(link, host="127.0.0.1")


@needs_root
def test_trust_and_key_files_another_user_owns_are_refused(tmp_path):
    import peernet

    data = tmp_path / "data"
    TrustStore.load(data).pair(seeded_identity("x").peer_id)
    load_or_create(data)
    for name, error in ((TRUST_FILE_NAME, peernet.TrustStoreError),
                        (KEY_FILE_NAME, peernet.KeyFileError)):
        os.chown(data / name, NOBODY, NOBODY)
        with pytest.raises(error, match=f"owned by uid {NOBODY}"):
            peernet.Node(data, host="127.0.0.1")
        os.chown(data / name, 0, 0)


# --- the directories above the data dir (StrictModes walks the whole path) --------------


@needs_root
def test_T14c_a_data_dir_below_another_users_open_directory_is_refused(shared_tmp, monkeypatch):
    """The issue's own scenario: another user pre-creates ``/tmp/x/xdg`` with mode 0777
    (not sticky) and the victim sets XDG_DATA_HOME to it. Our ``xdg/peernet`` would be
    0700 and ours, but its owner could rename it aside, let us unpair X, and rename it
    back: X trusted again. Every directory above the data dir must be root's or ours
    and not writable by others (a sticky one like /tmp is fine): refused, naming it."""
    import peernet

    top = shared_tmp / "x"
    xdg = top / "xdg"
    _as_other_user(lambda: (os.mkdir(top), os.chmod(top, 0o777),
                            os.mkdir(xdg), os.chmod(xdg, 0o777)))
    monkeypatch.delenv("PEERNET_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
    refused = rf"the directory {top} above it is owned by uid {NOBODY}"
    with pytest.raises(peernet.InsecureDataDir, match=refused) as caught:
        peernet.Node(host="127.0.0.1")
    assert "XDG_DATA_HOME" in str(caught.value)  # says what to change
    with pytest.raises(peernet.InsecureDataDir, match=refused):
        TrustStore.load(xdg / "peernet")
    with pytest.raises(peernet.InsecureDataDir, match=refused):
        load_or_create(xdg / "peernet")
    assert os.listdir(xdg) == []  # nothing was created under it


def test_a_data_dir_below_an_open_directory_of_our_own_is_refused(tmp_path):
    """The same rule for a parent that is ours but writable by others: the fix is named."""
    import peernet

    parent = tmp_path / "open"
    parent.mkdir()
    os.chmod(parent, 0o777)
    data = parent / "data"
    with pytest.raises(peernet.InsecureDataDir,
                       match=rf"{parent} above it has mode 0777.*`chmod go-w {parent}`"):
        peernet.Node(data, host="127.0.0.1")
    assert not data.exists()
    os.chmod(parent, 0o1777)  # sticky, like /tmp: nobody else may rename our entries
    with peernet.Node(data, host="127.0.0.1", network_monitor=False):
        pass


@needs_root
def test_a_symlink_another_user_owns_above_the_data_dir_is_refused(shared_tmp, tmp_path):
    import peernet

    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    link = shared_tmp / "parent"
    _as_other_user(lambda: os.symlink(ours, link))
    with pytest.raises(peernet.InsecureDataDir,
                       match=rf"{link} on its path is a symbolic link owned by uid {NOBODY}"):
        TrustStore.load(link / "data")
    assert os.listdir(ours) == []


@needs_root
@pytest.mark.parametrize("planted", ["directory", "symlink"])
def test_a_parent_another_user_plants_between_the_check_and_mkdir_is_refused(
        shared_tmp, monkeypatch, planted):
    """The race path: ``shared/a`` is missing when looked for, and another user creates
    it (an open directory, or a symlink to one of theirs) just before our ``mkdir``. We
    must not adopt it and make the data dir inside."""
    real_mkdir = os.mkdir
    parent = shared_tmp / "a"
    data = parent / "data"
    evil = shared_tmp / "evil"
    _as_other_user(lambda: (real_mkdir(evil), os.chmod(evil, 0o777)))

    def plant() -> None:
        if planted == "directory":
            real_mkdir(parent)
            os.chmod(parent, 0o777)
        else:
            os.symlink(evil, parent)

    def racing_mkdir(path, mode=0o777, *args, **kwargs):
        if os.fspath(path) == str(parent) and not os.path.lexists(parent):
            _as_other_user(plant)
        return real_mkdir(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", racing_mkdir)
    import peernet

    with pytest.raises(peernet.InsecureDataDir, match=rf"{parent} .*uid {NOBODY}"):
        TrustStore.load(data)
    assert os.lstat(parent).st_uid == NOBODY  # the plant did happen
    assert os.listdir(evil) == [] and not os.path.lexists(data)
