"""Callee-side canary for tests/integration/test_rpc.py.

``ping`` is what the tests allow-list. ``touch`` is never allow-listed: if a peer ever
gets it to run, the canary file appears. The module ``__getattr__`` records every lookup
of a name this module does not define, so a ``getattr`` on a peer-supplied name shows up
in ``looked_up``.
"""

from __future__ import annotations

from pathlib import Path

looked_up: list[str] = []


def ping(value: object = None) -> list[object]:
    return ["pong", value]


def touch(path: str) -> None:
    Path(path).touch()


def __getattr__(name: str) -> object:
    looked_up.append(name)
    raise AttributeError(name)
