"""Spare link threads (peernet/_io/spares.py): a thread that finished its work waits,
bounded in number and time, to run the next piece instead of a new thread starting."""

from __future__ import annotations

import threading

import pytest

from peernet._io.spares import Run, Spares
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(30)


def spare_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_the_next_run_goes_to_the_thread_that_finished_the_last():
    spares = Spares(name="test-spare-a", keep=2, idle_s=10.0)
    try:
        ran_on: list[int] = []
        first = Run(lambda: ran_on.append(threading.get_ident()))
        spares.start(first)
        first.join(5)
        assert not first.is_alive() and first.ident == ran_on[0]
        assert wait_until(lambda: len(spares._idle) == 1)  # it waits as a spare
        second = Run(lambda: ran_on.append(threading.get_ident()))
        spares.start(second)
        second.join(5)
        assert ran_on[1] == ran_on[0] == second.ident  # the same thread, no new one
        assert len(spare_threads("test-spare-a")) == 1
    finally:
        spares.close(5)
    assert not spare_threads("test-spare-a")


def test_join_waits_for_the_work_not_the_thread():
    spares = Spares(name="test-spare-b", keep=1, idle_s=10.0)
    release = threading.Event()
    run = Run(release.wait)
    assert not run.is_alive() and run.ident is None  # not handed out yet
    try:
        spares.start(run)
        assert run.is_alive()
        run.join(0.05)
        assert run.is_alive()
        release.set()
        run.join(5)
        assert not run.is_alive()
        assert spare_threads("test-spare-b")  # the thread lives on as a spare
    finally:
        release.set()
        spares.close(5)
    assert not spare_threads("test-spare-b")


def test_spares_are_bounded_in_number_and_time():
    spares = Spares(name="test-spare-c", keep=2, idle_s=0.2)
    release = threading.Event()
    runs = [Run(release.wait) for _ in range(5)]
    try:
        for run in runs:
            spares.start(run)
        assert len(spare_threads("test-spare-c")) == 5  # busy ones are never shared
        release.set()
        for run in runs:
            run.join(5)
        assert wait_until(lambda: len(spare_threads("test-spare-c")) <= 2)  # keep
        assert wait_until(lambda: not spare_threads("test-spare-c"), timeout_s=5)  # idle_s
    finally:
        release.set()
        spares.close(5)


def test_a_run_that_raises_is_logged_and_the_thread_carries_on(caplog):
    spares = Spares(name="test-spare-d", keep=1, idle_s=10.0)
    try:
        def boom() -> None:
            raise RuntimeError("bug in a link")

        bad = Run(boom)
        spares.start(bad)
        bad.join(5)
        assert not bad.is_alive()
        assert wait_until(lambda: len(spares._idle) == 1)  # done is set before it idles
        assert any("link thread failed" in r.getMessage() for r in caplog.records)
        ran = threading.Event()
        good = Run(ran.set)
        spares.start(good)
        assert ran.wait(5) and good.ident == bad.ident
    finally:
        spares.close(5)


def test_close_ends_idle_spares_at_once_and_keeps_none_after():
    spares = Spares(name="test-spare-e", keep=2, idle_s=60.0)
    run = Run(lambda: None)
    spares.start(run)
    run.join(5)
    assert wait_until(lambda: len(spares._idle) == 1)
    spares.close(5)  # does not wait out idle_s
    assert not spare_threads("test-spare-e")
    late = Run(lambda: None)  # work after close still runs, on a thread that then ends
    spares.start(late)
    late.join(5)
    assert wait_until(lambda: not spare_threads("test-spare-e"))


def test_a_thread_that_cannot_start_leaves_nothing_behind(monkeypatch):
    """Out of threads: start() raises, no unstarted thread is kept, and close() (which
    joined every listed thread, so raised "cannot join thread before it is started")
    still ends the rest."""
    spares = Spares(name="peernet-spare-test", keep=2, idle_s=5.0)
    real_start = threading.Thread.start

    def failing_start(thread: threading.Thread) -> None:
        if thread.name == "peernet-spare-test":
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", failing_start)
    ran = threading.Event()
    with pytest.raises(RuntimeError, match="can't start new thread"):
        spares.start(Run(ran.set))
    assert spares._threads == [] and not ran.is_set()
    monkeypatch.setattr(threading.Thread, "start", real_start)
    spares.start(Run(ran.set))  # the next start works
    assert ran.wait(5)
    spares.close(5.0)
    assert not spare_threads("peernet-spare-test")
