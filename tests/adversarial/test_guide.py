"""guides/security.md names a test for every claim: each named test must exist."""

from __future__ import annotations

import re

from .harness import REPO

_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def test_every_test_the_security_guide_names_exists():
    guide = (REPO / "guides" / "security.md").read_text()
    refs = _REF.findall(guide)
    assert len(refs) >= 30
    missing = [f"{path}::{name}" for path, name in refs
               if not re.search(rf"^def {name}\(", (REPO / path).read_text(), re.MULTILINE)]
    assert not missing, missing
