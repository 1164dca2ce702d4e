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
