"""The docs cannot rot: every Python block marked ``<!-- runnable -->`` in README.md and
guides/ runs cleanly, every other Python block at least compiles, and the README links
to every guide."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docblocks import ANY_PYTHON as _ANY_PYTHON
from tests.docblocks import ROOT
from tests.docblocks import RUNNABLE as _RUNNABLE
from tests.docblocks import blocks as _blocks
from tests.docblocks import docs as _docs


def test_the_readme_has_a_runnable_quick_start():
    assert any(name.startswith("README.md") for name, _ in _blocks(_RUNNABLE))


def test_the_cookbook_has_runnable_recipes():
    runnable = [name for name, _ in _blocks(_RUNNABLE) if name.startswith("guides/cookbook.md")]
    assert len(runnable) >= 5, runnable


def test_runnable_markers_sit_right_before_a_python_block():
    """A marker followed by anything else would silently run nothing."""
    for doc in _docs():
        text = doc.read_text()
        markers = text.count("<!-- runnable -->")
        assert markers == len(_RUNNABLE.findall(text)), f"{doc.name}: a stray runnable marker"


# Run before each block: a node whose close() gave up on a handler still running (it
# waited close_timeout, 5 s, for nothing) means the recipe closes its nodes in the wrong
# order, and whoever pastes it waits at every run.
_CLOSE_CHECK = """
import sys as _sys
import peernet as _peernet
_close = _peernet.Node.close
def _checked_close(self):
    _close(self)
    running = self._mesh._sched.running
    if running:
        print(f"DOC-CHECK: close() of {self.id.short} returned with {running} of its "
              "handlers still running", file=_sys.stderr)
_peernet.Node.close = _checked_close
"""


@pytest.mark.parametrize("name,code", _blocks(_RUNNABLE), ids=[n for n, _ in _blocks(_RUNNABLE)])
def test_doc_block_runs(name, code, tmp_path):
    # TMPDIR: whatever tempfile.mkdtemp() the block leaves behind lands in tmp_path.
    env = {**os.environ, "TMPDIR": str(tmp_path), "PEERNET_DATA_DIR": str(tmp_path / "default")}
    out = subprocess.run([sys.executable, "-c", _CLOSE_CHECK + code], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, f"{name} failed:\n{out.stderr[-2000:]}"
    assert "DOC-CHECK" not in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("name,code", _blocks(_ANY_PYTHON),
                         ids=[n for n, _ in _blocks(_ANY_PYTHON)])
def test_doc_block_compiles(name, code):
    """Every ```python block, runnable or not, is valid Python."""
    try:
        compile(code, name, "exec")
    except SyntaxError as exc:
        pytest.fail(f"{name} line {exc.lineno}: {exc.msg}")


def test_the_readme_links_every_guide():
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\((guides/[^)#\s]+\.md)", readme))
    guides = {f"guides/{p.name}" for p in (ROOT / "guides").glob("*.md")}
    assert not guides - linked, f"README.md does not link {sorted(guides - linked)}"


def _distribution_name() -> str:
    match = re.search(r'^name = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert match, "pyproject.toml names no distribution"
    return match.group(1)


def test_install_lines_name_our_own_distribution():
    """`peernet` on the package index is an unrelated project: every `pip install` a
    user may copy from the docs must name ours (with or without extras)."""
    ours = _distribution_name()
    assert ours != "peernet"
    lines = [line for doc in _docs() for line in doc.read_text().splitlines()
             if re.search(r"pip install\s+[\"']?peernet", line)]
    assert lines, "README shows no install line"
    for line in lines:
        spec = re.search(r"pip install\s+[\"']?([A-Za-z0-9_.-]+)", line).group(1)
        assert spec == ours, f"install line names {spec!r}, not {ours!r}: {line}"


def _user_facing_texts() -> list[Path]:
    """Everything a user reads or runs that may name the distribution: the docs, the
    changelog, the library (its hints and errors) and the scripts (their messages)."""
    return [*_docs(), ROOT / "CHANGELOG.md", *(ROOT / "peernet").rglob("*.py"),
            *(p for p in (ROOT / "scripts").rglob("*") if p.is_file()
              and p.suffix in ("", ".py", ".sh"))]


def test_extras_hints_name_our_own_distribution():
    """`peernet[mdns]` would install the unrelated project's package: every mention of
    an extra (an install hint, an error message, a changelog line, the line scripts/test
    prints while it installs) names ours."""
    ours = _distribution_name()
    for path in _user_facing_texts():
        text = path.read_text(errors="replace")
        for hint in re.findall(r"peernet(?:-py)?(?:\[\w+\]|\$\{extras)", text):
            assert hint.startswith(ours), f"{path.relative_to(ROOT)}: {hint}"


def test_pip_lines_with_extras_are_quoted():
    """Unquoted, `pip install peernet-py[mdns]` fails in zsh (macOS's default shell)
    with "no matches found"."""
    for path in _user_facing_texts():
        for line in path.read_text(errors="replace").splitlines():
            for spec in re.findall(r"pip install\s+(\S+\[)", line):
                assert spec[0] in "\"'", f"{path.relative_to(ROOT)}: {line.strip()}"


def test_the_quick_start_waits_for_the_peer_before_it_sends():
    """`send()` never waits: straight after `connect()` it returns False. The quick
    start (what people copy) waits first, and the docs say why where send and connect
    are described."""
    readme = (ROOT / "README.md").read_text()
    quick_start = readme[readme.index("## Quick start"):readme.index("## Install")]
    assert quick_start.index(".wait_for_peer(") < quick_start.index(".send(")
    assert "`send()` never waits" in quick_start and "`wait_for_peer()` first" in quick_start
    import peernet

    assert "wait_for_peer" in peernet.Node.send.__doc__
    assert "wait_for_peer" in peernet.Node.connect.__doc__


def test_the_classroom_recipe_marks_every_student_and_the_absent_one(tmp_path):
    """Cookbook 13 (issue 20's teaching example) does what its text says: every student
    online answers through call_many, and one who is away is an exception, not a hang."""
    from tests.docblocks import python_blocks, section

    (code,) = python_blocks(section("guides/cookbook.md", 13))
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line.strip() for line in out.stdout.splitlines()]
    assert lines[:5] == ["ada: 42    right", "alan: 42    right", "grace: '42'  check",
                         "linus: 41    check", "edsger: no answer (PeerUnavailable)"]
    assert lines[5] == "2/5 right"
    assert "Answer the teacher's question." in lines[6]
