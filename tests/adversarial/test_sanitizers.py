"""The accelerator's C code under ASan and UBSan: the corpus and the differential fuzz
targets, against a sanitizer build (tests/adversarial/sanitized.py).

Runs wherever the accelerator can be built (a C compiler and Python's headers: CI, a
developer's machine), and fails there if the compiler has no ASan runtime; skips only
where the accelerator cannot be built at all (tests/accel.py).
"""

from __future__ import annotations

import pytest

from tests.accel import accelerator

from . import sanitized

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def asan_build(tmp_path_factory):
    accelerator()  # fail or skip as the accelerator itself does
    runtime = sanitized.runtime()
    assert runtime is not None, f"{sanitized.compiler()} has no AddressSanitizer runtime"
    return sanitized.build(tmp_path_factory.mktemp("asan")), runtime


def test_the_sanitizer_catches_a_heap_overflow(asan_build):
    """The harness would see a bug: a deliberate overflow in the child aborts it."""
    result = sanitized.run(*asan_build, "--canary", timeout_s=60)
    assert result.returncode != 0
    assert "heap-buffer-overflow" in result.stderr


def test_corpus_and_differential_fuzz_under_asan_and_ubsan(asan_build):
    result = sanitized.run(*asan_build, "--examples", "200", timeout_s=200)
    report = result.stdout + result.stderr[-4000:]
    assert result.returncode == 0, report
    assert "AddressSanitizer" not in result.stderr and "runtime error" not in result.stderr
    assert "ok:" in result.stdout, report
