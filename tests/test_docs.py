"""Every Python block marked ``<!-- runnable -->`` in README.md and guides/ runs cleanly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"<!-- runnable -->\s*```python\n(.*?)```", re.DOTALL)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "guides").glob("*.md"))]:
        for i, match in enumerate(_BLOCK.finditer(doc.read_text())):
            found.append((f"{doc.relative_to(ROOT)}#{i + 1}", match.group(1)))
    return found


def test_the_readme_has_a_runnable_quick_start():
    assert any(name.startswith("README.md") for name, _ in _blocks())


@pytest.mark.parametrize("name,code", _blocks(), ids=[n for n, _ in _blocks()])
def test_doc_block_runs(name, code, tmp_path):
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, f"{name} failed:\n{out.stderr[-2000:]}"
