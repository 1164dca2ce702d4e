"""The compiled codec (``peernet._proto._cstrict``) in tests: switching backends, and
whether a missing accelerator is a failure or a skip.

The rule: where a C compiler and Python's headers are present (a developer's machine),
``pip install -e .`` must have built the accelerator, so a test that needs it *fails*
when it is missing; CI (``.ci/run``) sets ``PEERNET_REQUIRE_ACCEL=1`` to make that so
whatever is found. Only where a compiler or the headers are missing (a user's machine,
or the no-compiler install test) does it skip. The pure-Python backend is never skipped.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

import pytest

from peernet._proto import cbor
from peernet.errors import ProtocolError

__all__ = ["BACKENDS", "accelerator", "backend", "build_environment", "compiler",
           "outcome", "under_both"]

BACKENDS = ("python", "c")


def compiler() -> str | None:
    """The C compiler setuptools would run (``$CC`` or Python's build ``CC``), if on PATH."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc)


def build_environment() -> str | None:
    """What makes the accelerator buildable here (a compiler and ``Python.h``), or None."""
    cc = compiler()
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if cc is None or not headers.exists():
        return None
    return f"a C compiler ({cc}) and Python's headers"


def accelerator() -> ModuleType:
    """The accelerator module (whatever ``PEERNET_PURE`` says); fails the test if it
    should have been built here, skips it if it could not have been."""
    try:
        from peernet._proto import _cstrict
    except ImportError as exc:
        why = build_environment()
        if os.environ.get("PEERNET_REQUIRE_ACCEL") == "1":
            why = why or "PEERNET_REQUIRE_ACCEL=1 (CI)"
        if why:
            pytest.fail(f"the C accelerator is missing although {why} are here ({exc}); "
                        "rebuild it with `.venv/bin/pip install -e .` and read its output")
        pytest.skip("no C compiler or Python headers here: only the pure-Python codec")
    return _cstrict


@contextmanager
def backend(name: str) -> Iterator[None]:
    """Run the codec (cbor and messages) on backend ``name`` inside the block."""
    accel = accelerator() if name == "c" else None
    saved = cbor._accel
    cbor._accel = accel
    try:
        yield
    finally:
        cbor._accel = saved


def outcome(fn: Callable[..., object], *args: object, **kwargs: object) -> tuple:
    """What a codec call did, comparable across backends: ``("ok", exact value)``, or
    the exception's type, message and whether it chains another (it must not)."""
    try:
        return ("ok", _exact(fn(*args, **kwargs)))
    except (ProtocolError, TypeError, ValueError) as exc:  # EncodeError is a TypeError
        return ("raised", type(exc).__name__, str(exc),
                exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__))


def under_both(fn: Callable[..., object], *args: object, **kwargs: object) -> tuple:
    """``outcome`` of ``fn`` under the pure backend and under the accelerator."""
    with backend("python"):
        pure = outcome(fn, *args, **kwargs)
    with backend("c"):
        compiled = outcome(fn, *args, **kwargs)
    return pure, compiled


def _exact(value: object) -> object:
    """A comparable form of a decoded value or a record: types kept, floats as their bit
    patterns (so NaN payloads and -0.0 count), bytes-like results as bytes."""
    import dataclasses
    import struct

    t = type(value)
    if t is float:
        return ("float", struct.pack(">d", value))  # type: ignore[arg-type]
    if t is list:
        return ("list", [_exact(v) for v in value])  # type: ignore[attr-defined]
    if t is dict:
        return ("dict", [(k, _exact(v)) for k, v in value.items()])  # type: ignore[attr-defined]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (t.__name__, [_exact(getattr(value, f.name)) for f in dataclasses.fields(value)])
    if t.__name__ == "Bulk":
        return ("bytes", bytes(value))  # type: ignore[call-overload]
    return (t.__name__, value)
