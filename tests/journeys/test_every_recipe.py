"""Every recipe a user can copy is run by some test: a plain block by tests/test_docs.py
(``<!-- runnable -->``, in a subprocess), the rest by a journey here. A new recipe with
neither fails this test, so "the docs are tested" stays true as the cookbook grows."""

from __future__ import annotations

import re
from pathlib import Path

from tests.docblocks import ROOT, section

HERE = Path(__file__).resolve().parent
JOURNEYS = {  # cookbook section -> the journey that runs it
    2: "test_flask.py",
    3: "test_django.py",
    4: "test_jupyter.py",
    9: "test_lan_recipe.py",
    14: "test_django.py",
}


def test_every_cookbook_recipe_is_run_by_a_test():
    text = (ROOT / "guides/cookbook.md").read_text()
    numbers = [int(n) for n in re.findall(r"^## (\d+)\. ", text, re.MULTILINE)]
    assert numbers == list(range(1, len(numbers) + 1))
    for number in numbers:
        runnable = "<!-- runnable -->" in section("guides/cookbook.md", number)
        journey = JOURNEYS.get(number)
        assert runnable or journey, f"cookbook recipe {number} is run by no test"
        assert not (runnable and journey), f"recipe {number}: runnable and a journey?"
        if journey:
            assert f'section("guides/cookbook.md", {number})' in (HERE / journey).read_text()


def test_the_readme_quick_start_is_run_as_written():
    """tests/test_docs.py runs it in a subprocess; it must stay marked runnable."""
    readme = (ROOT / "README.md").read_text()
    quick_start = readme[readme.index("## Quick start"):readme.index("## Install")]
    assert "<!-- runnable -->\n```python" in quick_start
