"""cProfile over every thread of a process (cProfile alone sees only the thread that
enabled it, and peernet's work happens on its link and handler threads).

Timed with each thread's CPU clock, so a thread blocked in recv() or queue.get() costs
nothing: tottime shows where the CPU goes, not where threads wait.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import threading
import time
from pathlib import Path

_profiles: list[cProfile.Profile] = []


def install() -> None:
    """Profile every thread started from now on, from its first line to its last."""
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        profile = cProfile.Profile(time.thread_time)
        _profiles.append(profile)
        profile.enable()
        try:
            original(self)
        finally:
            profile.disable()

    threading.Thread.run = run  # type: ignore[method-assign]


def dump(path: Path, top_n: int = 15) -> str:
    """Merge all threads' stats into ``path`` (.pstats) and return the top by tottime."""
    stats: pstats.Stats | None = None
    for profile in _profiles:
        profile.create_stats()  # also disables it, should the thread still be alive
        if not profile.stats:  # type: ignore[attr-defined]
            continue
        if stats is None:
            stats = pstats.Stats(profile)
        else:
            stats.add(profile)
    if stats is None:
        return "(no profile data)"
    stats.dump_stats(str(path))
    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(top_n)
    text = out.getvalue()
    more = io.StringIO()
    pstats.Stats(str(path), stream=more).sort_stats("cumulative").print_stats(30)
    path.with_suffix(".txt").write_text(text + "\n\nBy cumulative time:\n" + more.getvalue())
    return text
