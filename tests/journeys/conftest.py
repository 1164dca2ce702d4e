"""Fixtures for the journeys: a clean environment for the user's commands, and a stack
that ends every process (and process group) a journey started, however it ends."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.journeys.harness import Device, Proc


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user's shell: no framework settings leaking in from ours,
    temporary files and the default data dir in tmp_path, output not buffered (so a
    line's arrival time is when it was written)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLASK_", "DJANGO_", "PEERNET_", "JPY_", "PYTEST_"))}
    env.update(TMPDIR=str(tmp_path), PEERNET_DATA_DIR=str(tmp_path / "default"),
               PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    return env


class Processes:
    """What a journey started; ``stop_all()`` ends each one's group."""

    def __init__(self) -> None:
        self._stoppers: list = []

    def start(self, args: list[str], *, cwd: Path, env: dict[str, str],
              stdin: bool = False) -> Proc:
        proc = Proc(args, cwd=cwd, env=env, stdin=stdin)
        self._stoppers.append(proc.stop)
        return proc

    def device(self, data_dir: Path, *, cwd: Path, env: dict[str, str]) -> Device:
        device = Device(data_dir, cwd=cwd, env=env)
        self._stoppers.append(device.stop)
        return device

    def stop_all(self) -> None:
        for stop in reversed(self._stoppers):
            stop()
        self._stoppers.clear()


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    try:
        yield started
    finally:
        started.stop_all()
