"""Kill writers of the data dir at random moments (security.md T14/T15, interrupted writes).

    python -m tests.procs.churn trust DATA_DIR PEER_ID ROUNDS SEED
    python -m tests.procs.churn identity DATA_DIR ROUNDS SEED

Each round forks a child (this process has no threads, so forking is safe) that writes
as fast as it can under ``umask(0)`` -- ``trust``: ``pair(PEER_ID)`` / ``unpair(PEER_ID)``
on DATA_DIR's trust store; ``identity``: ``load_or_create`` in fresh sub-directories
``DATA_DIR/rROUND-K`` -- then SIGKILLs it 0-20 ms after its first write. For ``trust``, a copy of
DATA_DIR as the kill left it goes to ``DATA_DIR.snapROUND``. The test checks every copy
and sub-directory afterwards. Prints ``done`` at the end.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import sys
import time
from pathlib import Path

from peernet.identity import load_or_create
from peernet.trust import TrustStore


def _child_trust(data_dir: Path, peer: str, ready: int) -> None:
    store = TrustStore.load(data_dir)
    while True:
        store.pair(peer, label="churn")
        store.unpair(peer)
        _signal(ready)


def _child_identity(data_dir: Path, round_no: int, ready: int) -> None:
    k = 0
    while True:
        load_or_create(data_dir / f"r{round_no}-{k}")
        k += 1
        _signal(ready)


def _signal(fd: int) -> None:
    """Tell the parent the first write is done (once), so the kill lands mid-churn even
    on a loaded machine."""
    try:
        os.write(fd, b"x")
        os.close(fd)
    except OSError:
        pass


def main() -> None:
    mode, data_dir = sys.argv[1], Path(sys.argv[2])
    if mode == "trust":
        peer, rounds, seed = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    else:
        peer, rounds, seed = "", int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    for round_no in range(rounds):
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: write until killed
            try:
                os.close(ready_r)
                os.umask(0)
                if mode == "trust":
                    _child_trust(data_dir, peer, ready_w)
                else:
                    _child_identity(data_dir, round_no, ready_w)
            finally:
                os._exit(1)
        os.close(ready_w)
        select.select([ready_r], [], [], 10)  # its first write is done
        os.close(ready_r)
        time.sleep(rng.uniform(0.0, 0.02))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if mode == "trust":
            shutil.copytree(data_dir, data_dir.with_name(f"{data_dir.name}.snap{round_no}"),
                            symlinks=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
