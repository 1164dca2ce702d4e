"""Request ids: unpredictable, never 0, never handed out twice, not shared with a fork."""

from __future__ import annotations

import os
import threading

import pytest

from peernet._io import replies
from peernet._io.replies import new_request_id

pytestmark = pytest.mark.timeout(30)


def test_ids_from_many_threads_are_distinct_64_bit_values():
    got: list[list[int]] = [[] for _ in range(8)]

    def draw(k: int) -> None:
        got[k] = [new_request_id() for _ in range(5000)]

    threads = [threading.Thread(target=draw, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [rid for ids in got for rid in ids]
    assert len(every) == 40_000 and len(set(every)) == 40_000
    assert all(0 < rid < 2**64 for rid in every)
    assert max(every).bit_length() >= 60  # spread over the whole range, not a counter


def test_a_forked_child_does_not_reuse_the_parents_drawn_ids():
    new_request_id()  # the parent now holds a batch of drawn ids
    upcoming = list(replies._pool)
    assert upcoming
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.write(write_end, str(new_request_id()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child_id = int(os.read(read_end, 64))
    os.close(read_end)
    os.waitpid(pid, 0)
    assert child_id not in upcoming
