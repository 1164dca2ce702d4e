"""Code blocks out of the docs, shared by tests/test_docs.py (plain blocks) and
tests/journeys/ (the recipes that need Flask, Django or a notebook).

A block whose first line is a comment naming a path (``# myapp/models.py``) is a file of
a recipe; ``files_of()`` returns those by path, so a journey writes exactly what the
guide shows. Anything after the path on that line (``# mysite/settings.py: add at the
end``) is a note for the reader.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["ROOT", "RUNNABLE", "ANY_PYTHON", "docs", "blocks", "section", "python_blocks",
           "files_of"]

ROOT = Path(__file__).resolve().parent.parent
RUNNABLE = re.compile(r"<!-- runnable -->\s*```python\n(.*?)```", re.DOTALL)
ANY_PYTHON = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
_FILE_HEADER = re.compile(r"# ([\w./-]+\.py)\b")


def docs() -> list[Path]:
    """README.md and every guide, in a stable order."""
    return [ROOT / "README.md", *sorted((ROOT / "guides").glob("*.md"))]


def blocks(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    """Every block ``pattern`` finds in the docs, as ``("README.md#1", code)``."""
    found = []
    for doc in docs():
        for i, match in enumerate(pattern.finditer(doc.read_text())):
            found.append((f"{doc.relative_to(ROOT)}#{i + 1}", match.group(1)))
    return found


def section(doc: str, number: int) -> str:
    """The text of section ``## {number}. ...`` of ``doc`` (a path relative to the repo),
    up to the next ``## `` heading."""
    text = (ROOT / doc).read_text()
    match = re.search(rf"^## {number}\. .*?(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert match, f"{doc} has no section {number}"
    return match.group(0)


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of ``text``, in order."""
    return ANY_PYTHON.findall(text)


def files_of(text: str) -> dict[str, str]:
    """The blocks of ``text`` that open with a ``# path.py`` comment, by path."""
    files = {}
    for code in python_blocks(text):
        match = _FILE_HEADER.match(code)
        if match:
            files[match.group(1)] = code
    return files
