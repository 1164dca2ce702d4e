"""A machine without a C compiler installs peernet and passes the codec suites on the
pure-Python backend.

The package is built from a copy of the source with ``PATH`` holding no compiler (so
setuptools' optional build of the accelerator fails, as it would there), offline (no
build isolation, no index), into a target directory. That install must import with
``BACKEND == "python"``, and the codec tests, run against it from a copy of tests/,
must pass with their accelerator half skipped for want of a compiler.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
CODEC_SUITES = ["tests/unit/test_cbor.py", "tests/unit/test_messages.py",
                "tests/unit/test_cstrict.py"]


def _without_compiler(tmp_path: Path, **extra: str) -> dict[str, str]:
    empty = tmp_path / "no-compiler-bin"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("CC", "CFLAGS", "LDSHARED", "PEERNET_PURE", "PEERNET_REQUIRE_ACCEL",
                        "PYTHONPATH")
           and not k.startswith("PYTEST")}
    env["PATH"] = str(empty)  # no gcc, cc or clang to be found
    env.update(extra)
    return env


def test_without_a_compiler_the_pure_backend_installs_and_passes(tmp_path):
    src, site, run = tmp_path / "src", tmp_path / "site", tmp_path / "run"
    skip = shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "peernet", src / "peernet", ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    env = _without_compiler(tmp_path)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
         "--no-index", "--target", str(site), "-v", str(src)],
        env=env, capture_output=True, text=True, timeout=240)
    log = built.stdout + built.stderr
    assert built.returncode == 0, log[-4000:]
    assert 'building extension "peernet._proto._cstrict" failed' in log  # and went on
    assert not list((site / "peernet").rglob("_cstrict*.so"))
    assert (site / "peernet" / "_proto" / "_cstrict.pyi").exists()
    assert not (site / "peernet" / "_proto" / "_cstrict.c").exists()

    shutil.copytree(ROOT / "tests", run / "tests", ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", run / "pyproject.toml")  # pytest's settings
    env = _without_compiler(tmp_path, PYTHONPATH=str(site))
    probe = subprocess.run(
        [sys.executable, "-c", "import peernet, peernet._proto.cbor as c; "
                               "print(c.BACKEND, peernet.__file__)"],
        cwd=run, env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    backend, where = probe.stdout.split()
    assert backend == "python" and where.startswith(str(site))

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
         "no:randomly", "-rs", *CODEC_SUITES],
        cwd=run, env=env, capture_output=True, text=True, timeout=240)
    report = tests.stdout[-3000:] + tests.stderr[-2000:]
    assert tests.returncode == 0, report
    assert " passed" in tests.stdout and " failed" not in tests.stdout, report
    assert "no C compiler or Python headers here" in tests.stdout, report  # C half skipped
