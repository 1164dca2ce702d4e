"""The bounded fuzz run: every target of fuzz_targets.py, a few hundred inputs each.

Deterministic (``derandomize``) so CI is repeatable; ``scripts/fuzz --minutes N`` runs
the same targets for longer with fresh randomness (and atheris, if installed).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.accel import accelerator

from .fuzz_targets import BYTE_TARGETS, DIFFERENTIAL, PROPERTIES

BUDGET = {"deframer": 300, "deframer-frames": 300, "cbor": 300, "messages": 300, "noise": 300, "session": 150,
          "announce": 200, "invite": 60, "cbor-diff": 600, "encode-diff": 400,
          "messages-diff": 400}


def _bounded(examples: int):
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@pytest.mark.parametrize("name", list(PROPERTIES))
def test_property(name):
    if name in DIFFERENTIAL:
        accelerator()  # fails where it should have been built, skips where it could not
    strategy, prop = PROPERTIES[name]
    _bounded(BUDGET[name])(given(strategy)(prop))()


@pytest.mark.parametrize("name", list(BYTE_TARGETS))
def test_random_bytes(name):
    if name in DIFFERENTIAL:
        accelerator()
    target = BYTE_TARGETS[name]
    _bounded(150)(given(st.binary(max_size=1500))(target))()
