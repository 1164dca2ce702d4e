"""The accelerator under AddressSanitizer and UndefinedBehaviorSanitizer.

:func:`build` compiles ``peernet/_proto/_cstrict.c`` with ``-fsanitize=address,undefined``
(and ``PEERNET_CSTRICT_EXACT_COPY``, so the decoder reads an exact-size heap copy of its
input and a read one byte past the end is caught too) into a directory of its own. The
child (``python -m tests.adversarial.sanitized --so PATH``) runs with libasan preloaded
and ``PYTHONMALLOC=malloc``, so every allocation is ASan's; it loads that build in place
of the accelerator and drives it with the hostile corpus, deep nesting and the
differential fuzz targets (``fuzz_targets.DIFFERENTIAL``). Any sanitizer report aborts
it with a non-zero status.

Used by tests/adversarial/test_sanitizers.py (a bounded, deterministic run in every
suite) and by ``scripts/fuzz --asan --minutes N`` (fresh random inputs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "peernet" / "_proto" / "_cstrict.c"
FLAGS = ["-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
         "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         "-DPEERNET_CSTRICT_EXACT_COPY", "-Wall", "-Werror"]


def compiler() -> str:
    return (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]


def runtime() -> Path | None:
    """The ASan runtime to preload, if the compiler has one."""
    out = subprocess.run([compiler(), "-print-file-name=libasan.so"], capture_output=True,
                         text=True, timeout=30)
    path = Path(out.stdout.strip())
    return path.resolve() if out.returncode == 0 and path.is_absolute() and path.exists() \
        else None


def build(dest: Path) -> Path:
    """Compile the sanitizer build into ``dest``; returns the module's path."""
    dest.mkdir(parents=True, exist_ok=True)
    so = dest / ("_cstrict" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run([compiler(), *FLAGS, f"-I{sysconfig.get_paths()['include']}",
                    str(SOURCE), "-o", str(so)], check=True, capture_output=True, text=True,
                   timeout=120)
    return so


def environment(asan_runtime: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update({
        "LD_PRELOAD": str(asan_runtime),
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "PYTHONMALLOC": "malloc",  # every object on ASan's heap, redzones and all
        "PEERNET_PURE": "1",  # never load the regular build; the child swaps this one in
    })
    return env


def run(so: Path, asan_runtime: Path, *args: str,
        timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.adversarial.sanitized", "--so",
                           str(so), *args], cwd=REPO, env=environment(asan_runtime),
                          capture_output=True, text=True, timeout=timeout_s)


# --------------------------------------------------------------------------- the child


def _load(so: Path) -> None:
    """Make the sanitizer build the accelerator of this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("peernet._proto._cstrict", so)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["peernet._proto._cstrict"] = module
    import peernet._proto
    from peernet._proto import cbor

    peernet._proto._cstrict = module  # type: ignore[attr-defined]
    cbor._accel = module
    maps = Path("/proc/self/maps").read_text()
    assert "libasan" in maps and str(so) in maps, "the sanitizer build is not loaded"
    assert "peernet/_proto/_cstrict" not in maps, "the regular build is loaded too"


def _corpus() -> int:
    from peernet._proto import cbor
    from peernet._proto.messages import decode_message
    from tests.accel import under_both
    from tests.hostile_cbor import AMPLIFY, BENIGN, HOSTILE

    count = 0
    for _, data in HOSTILE + BENIGN + AMPLIFY:
        for limits in ((16, 50_000), (1000, 10**7), (0, 0), (3, 10)):
            for fn in (cbor.decode, decode_message):
                pure, compiled = under_both(fn, data, max_depth=limits[0],
                                            max_items=limits[1])
                assert pure == compiled, (data[:40].hex(), limits)
                count += 1
    # Deep nesting, both ways, far past the default limits.
    deep = b"\x81" * 60_000 + b"\x00"
    value = cbor._accel.decode(deep, 10**6, 10**7)
    assert cbor._accel.encode(value, 10**6, 10**7) == deep
    return count + 1


def _fuzz(examples: int, seconds: float) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.adversarial.fuzz_targets import BYTE_TARGETS, DIFFERENTIAL, PROPERTIES

    runs = [(PROPERTIES[n][0], PROPERTIES[n][1]) for n in sorted(DIFFERENTIAL)
            if n in PROPERTIES]
    runs += [(st.binary(max_size=400), BYTE_TARGETS[n]) for n in sorted(DIFFERENTIAL)
             if n in BYTE_TARGETS]
    total = 0
    deadline = time.monotonic() + seconds
    while True:
        for strategy, target in runs:
            rules = settings(max_examples=examples, deadline=None, database=None,
                             derandomize=seconds == 0,
                             suppress_health_check=list(HealthCheck))
            rules(given(strategy)(target))()
            total += examples
        if time.monotonic() >= deadline:
            return total


def _canary() -> None:
    """Overflow a heap block on purpose: proves ASan is live in this process."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    block = libc.malloc(8)
    ctypes.memmove(block, b"x" * 16, 16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--so", type=Path, required=True, help="the sanitizer build")
    ap.add_argument("--canary", action="store_true",
                    help="overflow a heap block on purpose (must abort)")
    ap.add_argument("--examples", type=int, default=300,
                    help="inputs per target per pass (default 300)")
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="repeat passes with fresh random inputs for this long "
                         "(default 0: one deterministic pass)")
    opts = ap.parse_args(argv)
    _load(opts.so.resolve())
    if opts.canary:
        _canary()
        return 0
    corpus = _corpus()
    fuzzed = _fuzz(opts.examples, opts.minutes * 60)
    print(f"ok: {corpus} corpus checks and {fuzzed} differential inputs under ASan+UBSan")
    return 0


if __name__ == "__main__":
    sys.exit(main())
