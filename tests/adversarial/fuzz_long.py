"""The long fuzz run behind ``scripts/fuzz`` (the bounded one is test_fuzz.py).

    python -m tests.adversarial.fuzz_long [--minutes 5] [--only NAME ...] [--atheris|--asan]

Hypothesis (default): the targets of fuzz_targets.py in turn, 500 fresh random inputs
per turn, until the time is up. ``--atheris``: coverage-guided fuzzing of the byte-level
targets, one libFuzzer process per target sharing the time; crash inputs go to
``--artifacts`` (default /tmp/peernet-fuzz). ``--asan``: the differential targets (the
compiled accelerator against the pure-Python codec) against an ASan+UBSan build of the
accelerator (sanitized.py). Exits 1 on the first failure, printing the input that
reproduces it. The differential targets need the accelerator; without it they are left
out, with a note.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _hypothesis(names: list[str], seconds: float) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.adversarial.fuzz_targets import BYTE_TARGETS, PROPERTIES

    runs = []
    for name in names:
        if name in PROPERTIES:
            strategy, prop = PROPERTIES[name]
            runs.append((f"property {name}", strategy, prop))
        if name in BYTE_TARGETS:
            runs.append((f"bytes {name}", st.binary(max_size=4000), BYTE_TARGETS[name]))
    if not runs:
        print(f"no target named {names}", file=sys.stderr)
        return 2
    loose = settings(max_examples=500, deadline=None, derandomize=False, database=None,
                     suppress_health_check=list(HealthCheck))
    end = time.monotonic() + seconds
    total = 0
    rounds = 0
    while time.monotonic() < end:
        rounds += 1
        for label, strategy, fn in runs:
            if time.monotonic() >= end:
                break
            t0 = time.monotonic()
            try:
                loose(given(strategy)(fn))()
            except Exception:  # hypothesis has printed the falsifying example
                print(f"FAILED: {label} (round {rounds})", flush=True)
                raise
            total += 500
            print(f"round {rounds} {label}: 500 inputs in {time.monotonic() - t0:.1f} s",
                  flush=True)
    print(f"ok: {total} inputs over {len(runs)} targets in {seconds / 60:g} min")
    return 0


def _atheris(names: list[str], seconds: float, artifacts: Path) -> int:
    from tests.adversarial.fuzz_targets import BYTE_TARGETS

    chosen = [n for n in names if n in BYTE_TARGETS]
    if not chosen:
        print(f"no byte-level target named {names}", file=sys.stderr)
        return 2
    artifacts.mkdir(parents=True, exist_ok=True)
    each = max(5, int(seconds / len(chosen)))
    status = 0
    for name in chosen:
        corpus = artifacts / f"corpus-{name}"
        corpus.mkdir(exist_ok=True)
        print(f"atheris {name}: {each} s, corpus {corpus}", flush=True)
        result = subprocess.run(
            [sys.executable, "-m", "tests.adversarial.fuzz_long", "--atheris-child", name,
             f"-max_total_time={each}", f"-artifact_prefix={artifacts}/{name}-",
             "-rss_limit_mb=4096", str(corpus)], cwd=REPO)
        if result.returncode:
            print(f"FAILED: atheris {name} (inputs in {artifacts})", flush=True)
            status = 1
    return status


def _atheris_child(name: str, libfuzzer_args: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["peernet"]):
        import peernet._proto.announce  # noqa: F401
        import peernet._proto.cbor  # noqa: F401
        import peernet._proto.framing  # noqa: F401
        import peernet._proto.messages  # noqa: F401
        import peernet._proto.noise  # noqa: F401
        import peernet._proto.session  # noqa: F401
    from tests.adversarial.fuzz_targets import BYTE_TARGETS

    atheris.Setup([sys.argv[0], *libfuzzer_args], BYTE_TARGETS[name])
    atheris.Fuzz()


def _asan(seconds: float, artifacts: Path) -> int:
    from tests.adversarial import sanitized

    runtime = sanitized.runtime()
    if runtime is None:
        print(f"{sanitized.compiler()} has no AddressSanitizer runtime", file=sys.stderr)
        return 2
    so = sanitized.build(artifacts / "asan")
    print(f"ASan+UBSan build {so}: differential targets for {seconds / 60:g} min", flush=True)
    result = subprocess.run([sys.executable, "-m", "tests.adversarial.sanitized", "--so",
                             str(so), "--examples", "500", "--minutes", str(seconds / 60)],
                            cwd=REPO, env=sanitized.environment(runtime))
    return 1 if result.returncode else 0


def _without_missing_accelerator(names: list[str]) -> list[str]:
    from tests.adversarial.fuzz_targets import DIFFERENTIAL

    try:
        from peernet._proto import _cstrict  # noqa: F401
    except ImportError:
        left_out = sorted(set(names) & DIFFERENTIAL)
        if left_out:
            print(f"the C accelerator is not built: leaving out {', '.join(left_out)}",
                  file=sys.stderr)
        return [n for n in names if n not in DIFFERENTIAL]
    return names


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--atheris-child"]:
        _atheris_child(argv[1], argv[2:])
        return 0
    from tests.adversarial.fuzz_targets import BYTE_TARGETS, PROPERTIES

    everything = sorted(set(PROPERTIES) | set(BYTE_TARGETS))
    ap = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="total time (default 5)")
    ap.add_argument("--only", nargs="+", choices=everything, default=everything,
                    metavar="NAME", help=f"targets to run: {', '.join(everything)}")
    ap.add_argument("--atheris", action="store_true",
                    help="coverage-guided (atheris) instead of hypothesis")
    ap.add_argument("--asan", action="store_true",
                    help="the differential targets against an ASan+UBSan build of the "
                         "C accelerator (needs a C compiler with its sanitizer runtimes)")
    ap.add_argument("--artifacts", type=Path, default=Path("/tmp/peernet-fuzz"),
                    help="atheris crash inputs and corpora (default /tmp/peernet-fuzz)")
    opts = ap.parse_args(argv)
    seconds = opts.minutes * 60
    if opts.asan:
        return _asan(seconds, opts.artifacts)
    opts.only = _without_missing_accelerator(opts.only)
    if opts.atheris:
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed (pip install atheris); running hypothesis",
                  file=sys.stderr)
        else:
            return _atheris(opts.only, seconds, opts.artifacts)
    return _hypothesis(opts.only, seconds)


if __name__ == "__main__":
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    sys.exit(main())
