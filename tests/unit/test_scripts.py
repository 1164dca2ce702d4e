"""scripts/_venv.sh, which scripts/test, scripts/demo and scripts/bench share: it installs
quietly (pip's and setuptools' banners go to a log) and shows the log when it fails.

Run against a stand-in .venv whose python only prints what pip would, so no install
happens here."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]
BANNER = "Please be careful with folders in your working directory with the same"


def fake_project(tmp_path: Path, pip_exit: int) -> Path:
    root = tmp_path / "proj"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "_venv.sh", root / "scripts" / "_venv.sh")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(
        "#!/bin/sh\n"
        f"echo 'BuildBackendWarning: Editable installation.' >&2\n"
        f"echo '{BANNER}' >&2\n"
        f"echo 'Successfully installed peernet-py' \n"
        f"exit {pip_exit}\n")
    python.chmod(0o755)
    return root


def run_venv_sh(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f'source "{root}/scripts/_venv.sh" test'],
                          capture_output=True, text=True, timeout=20,
                          env={**os.environ, "PATH": os.environ.get("PATH", "")})


def test_an_install_prints_one_line_and_no_setuptools_banner(tmp_path):
    root = fake_project(tmp_path, pip_exit=0)
    done = run_venv_sh(root)
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert BANNER not in out and "BuildBackendWarning" not in out
    assert out.strip() == "installing peernet-py[test] into .venv (once; later runs start at once)..."
    assert BANNER in (root / ".venv" / "install.log").read_text()
    again = run_venv_sh(root)  # installed: nothing at all the second time
    assert again.returncode == 0 and again.stdout + again.stderr == ""


def test_a_failed_install_shows_its_log_and_fails(tmp_path):
    root = fake_project(tmp_path, pip_exit=1)
    done = run_venv_sh(root)
    assert done.returncode == 1
    assert BANNER in done.stderr and "install.log" in done.stderr
    assert not (root / ".venv" / ".peernet-installed").exists()
