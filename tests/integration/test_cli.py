import os
import stat
import subprocess
import sys

import peernet


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "peernet", *args], capture_output=True,
                          text=True, timeout=30, env=env)


def test_id_creates_and_shows_a_stable_identity(tmp_path):
    first = run("--data-dir", str(tmp_path / "d"), "id")
    assert first.returncode == 0, first.stderr
    pid = peernet.PeerId.parse(first.stdout.splitlines()[0])
    again = run("--data-dir", str(tmp_path / "d"), "id")
    assert again.stdout == first.stdout
    assert pid.short in first.stdout


def test_data_dir_from_the_environment(tmp_path):
    env = {**os.environ, "PEERNET_DATA_DIR": str(tmp_path / "env")}
    out = run("id", env=env)
    assert out.returncode == 0 and (tmp_path / "env" / "identity.key").exists()


def test_an_insecure_key_file_is_a_one_line_error(tmp_path):
    assert run("--data-dir", str(tmp_path / "d"), "id").returncode == 0
    key = tmp_path / "d" / "identity.key"
    key.chmod(0o644)
    out = run("--data-dir", str(tmp_path / "d"), "id")
    assert out.returncode == 1
    assert out.stderr.startswith("peernet: ") and len(out.stderr.strip().splitlines()) == 1
    assert stat.S_IMODE(key.stat().st_mode) == 0o644  # refused, not "fixed" behind our back


def test_help_and_usage_errors():
    assert run("--help").returncode == 0
    assert run("bogus").returncode == 2
