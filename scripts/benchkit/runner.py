"""The orchestrator: rounds of every system, scale, profile, tables and JSON."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from . import report
from .common import Sizes
from .procs import BENCH_PY
from .roles import SYSTEMS
from .workloads import WORKLOADS

ROOT = Path(BENCH_PY).resolve().parent.parent
#: glibc otherwise mmaps and unmaps every fresh 1 MiB buffer (see anchors-bench.md, table D).
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
PACKAGES = ("peernet", "cbor2", "PyNaCl", "cryptography", "pyzmq", "Pyro5", "serpent", "rpyc",
            "noiseprotocol")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark peernet against raw TCP, mp-connection, zmq-curve, TLS, Pyro5 "
                    "and rpyc on loopback, in the same run and CPU placement. "
                    "See guides/performance.md.")
    p.add_argument("--quick", action="store_true",
                   help="fewer iterations, shorter runs, one round, 100 scale peers (< 2 min)")
    p.add_argument("--pin", choices=("same", "cross", "none"), default="same",
                   help="same: client and server on one CPU (default); cross: client CPU0, "
                        "server CPU1; none: the scheduler decides")
    p.add_argument("--systems", help=f"comma-separated subset of: {', '.join(SYSTEMS)} "
                                     "(default all; with --profile: peernet)")
    p.add_argument("--workloads", help="comma-separated subset of w1..w5, w5cold "
                                       "(default all; with --profile: w1,w2)")
    p.add_argument("--rounds", type=int, help="rounds, interleaved (default 3, so a median ignores one outlier round; --quick 1)")
    p.add_argument("--scale-peers", type=int, help="client nodes in the scale test "
                                                   "(default 500; --quick 100)")
    p.add_argument("--no-scale", action="store_true", help="skip the scale test")
    p.add_argument("--profile", action="store_true",
                   help="run the server (of peernet unless --systems says otherwise) under "
                        "cProfile, a fresh one per workload (default w1,w2); writes "
                        ".pstats and the top 15 by tottime next to the table")
    p.add_argument("--tuned-malloc", action="store_true",
                   help="run every child with glibc's mmap/trim thresholds raised "
                        f"({' '.join(f'{k}={v}' for k, v in TUNED_MALLOC.items())}); "
                        "W4 is an allocator benchmark without it")
    p.add_argument("--quiet-wait-s", type=float,
                   help="before each system, wait up to this long for other load on the "
                        "machine to drop below 0.3 cores (default 0: no wait)")
    p.add_argument("--out", default=str(ROOT / "bench-results"), help="output directory")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    systems = split(args.systems or ("peernet" if args.profile else ",".join(SYSTEMS)))
    workloads = split(args.workloads or ("w1,w2" if args.profile else "w1,w2,w3,w4,w5,w5cold"))
    if bad := [s for s in systems if s not in SYSTEMS]:
        raise SystemExit(f"unknown system(s) {bad}; choose from {list(SYSTEMS)}")
    if bad := [w for w in workloads if w not in WORKLOADS]:
        raise SystemExit(f"unknown workload(s) {bad}; choose from {list(WORKLOADS)}")
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.scale_peers:
        sizes = Sizes(**{**asdict(sizes), "scale_peers": args.scale_peers})
    rounds_n = args.rounds or (1 if args.quick or args.profile else 3)
    run_scale = "peernet" in systems and not args.no_scale and not args.profile
    cpu_client, cpu_server = placement(args.pin)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"bench-{stamp}{'-quick' if args.quick else ''}{'-profile' if args.profile else ''}"
    cfg = {"sizes": asdict(sizes), "cpu_client": cpu_client, "cpu_server": cpu_server,
           "workloads": workloads, "server_limit_s": 300 if args.quick else 900,
           "env": TUNED_MALLOC if args.tuned_malloc else {}}
    if args.profile:
        cfg["profile_dir"] = str(out_dir)
    client_timeout_s = 120 if args.quick else 420
    quiet_s = args.quiet_wait_s or 0.0
    meta = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": shlex.join(["scripts/bench", *argv]), "pin": args.pin,
            "cpu_client": cpu_client, "cpu_server": cpu_server, "quick": args.quick,
            "profile": args.profile, "tuned_malloc": args.tuned_malloc,
            "sizes": asdict(sizes), "machine": machine()}
    print(f"peernet bench: {', '.join(systems)}; {rounds_n} round(s); pin={args.pin}; "
          f"{'quick' if args.quick else 'full'}", flush=True)
    t_start = time.monotonic()
    rounds: list[dict[str, Any]] = []
    scale: list[dict[str, Any]] = []
    for k in range(rounds_n):
        results: dict[str, Any] = {}
        for system in systems:
            print(f"  round {k + 1}/{rounds_n}: {system}", flush=True)
            res = run_child("client", {**cfg, "system": system}, client_timeout_s, quiet_s)
            if res is not None:
                results[system] = res
        rounds.append(results)
        if run_scale:
            print(f"  round {k + 1}/{rounds_n}: scale ({sizes.scale_peers} peers)", flush=True)
            res = run_child("scale", cfg, 180 if args.quick else 600, quiet_s)
            if res is not None:
                scale.append(res)
                if "rss_per_link_kib" in res:
                    print(f"    scale: {res['rss_per_link_kib']:.1f} KiB/link, W1 p50 "
                          f"{res['w1_1']['p50_us']:.1f} → {res['w1_n']['p50_us']:.1f} µs",
                          file=sys.stderr, flush=True)
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    doc = {"meta": meta, "rounds": rounds, "scale": scale}
    if "zmq-curve" in systems and set(report.SUBJECTS) & set(systems) and not args.profile:
        doc["targets"] = report.targets(rounds, scale)
    text = report.markdown(doc)
    (out_dir / f"{base}.json").write_text(json.dumps(doc, indent=1, default=str))
    (out_dir / f"{base}.md").write_text(text + "\n")
    print()
    print(text)
    if args.profile:
        print_profiles(out_dir, systems, workloads)
    print(f"\nwritten: {out_dir / base}.md and .json ({meta['elapsed_s']:.0f} s)")
    return 0


def split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def placement(pin: str) -> tuple[int | None, int | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if pin == "none":
        return None, None
    if pin == "same":
        return cpus[0], cpus[0]
    if len(cpus) < 2:
        raise SystemExit("--pin cross needs two CPUs")
    return cpus[0], cpus[1]


def run_child(role: str, cfg: dict[str, Any], timeout_s: float,
              quiet_wait_s: float) -> dict[str, Any] | None:
    """Run one client/scale process in its own process group; kill the group afterwards,
    so its server and holders cannot outlive it whatever happened."""
    # The child and its server/holders make their temp dirs under this one, so a child
    # killed at its deadline leaves nothing behind either.
    tmp_root = Path(tempfile.mkdtemp(prefix="peernet-bench-"))
    out = tmp_root / "result.json"
    load_before = wait_for_quiet(quiet_wait_s) if quiet_wait_s > 0 else None
    ours = {c for c in (cfg["cpu_client"], cfg["cpu_server"]) if c is not None} or None
    busy0, pinned0 = cpu_busy_s(), cpu_busy_s(ours)
    usage0, t0 = children_cpu_s(), time.monotonic()
    proc = subprocess.Popen([sys.executable, BENCH_PY, "--role", role, "--config",
                             json.dumps(cfg), "--out", str(out)], start_new_session=True,
                            stdin=subprocess.DEVNULL,
                            env={**os.environ, **cfg["env"], "TMPDIR": str(tmp_root)})
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        print(f"    {role} {cfg.get('system', '')}: timed out after {timeout_s:g} s; killed",
              file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        kill_group(proc)
        raise
    finally:
        kill_group(proc)
    elapsed_s = time.monotonic() - t0
    try:
        res = json.loads(out.read_text())
    except (OSError, ValueError):
        res = None
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    if res is not None:
        ours_s = children_cpu_s() - usage0
        res["cpu"] = {
            "wall_s": round(elapsed_s, 2), "our_cores": round(ours_s / elapsed_s, 2),
            "foreign_cores": round(max(0.0, cpu_busy_s() - busy0 - ours_s) / elapsed_s, 2),
            # Load from others on the CPUs we pinned to: what actually competed with us.
            "foreign_on_our_cpus": None if ours is None else
            round(max(0.0, cpu_busy_s(ours) - pinned0 - ours_s) / elapsed_s, 2),
            "foreign_before": load_before}
    return res


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def cpu_busy_s(cpus: set[int] | None = None) -> float:
    """Busy CPU seconds so far (user+nice+system+irq+softirq): the whole machine, or
    only ``cpus``. /proc/stat is machine-wide, so it also sees load from other
    containers that ``top`` here cannot show."""
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu"):
            break
        if (name == "cpu") != (cpus is None) or (cpus is not None and int(name[3:]) not in cpus):
            continue
        user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[:7])
        total += user + nice + system + irq + softirq
    return total / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.3) -> float:
    """Wait (bounded) until other load on the machine drops; returns the last load seen."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0 = cpu_busy_s()
        time.sleep(0.5)
        load = (cpu_busy_s() - b0) / 0.5
        if load < threshold_cores or time.monotonic() >= deadline:
            return load


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime + s.ru_utime + s.ru_stime


def machine() -> dict[str, Any]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    extra = {"OpenSSL (ssl)": ssl.OPENSSL_VERSION}
    try:
        import zmq
        extra["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10,
                                check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = "?"
    info = {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "git": commit, "versions": versions, **extra}
    info["summary"] = (f"{info['nproc']} vCPU {model}, Linux {info['kernel']}, Python "
                       f"{info['python']}, peernet at {commit}")
    info["packages"] = ", ".join(f"{k} {v}" for k, v in {**versions, **extra}.items())
    return info


def print_profiles(out_dir: Path, systems: list[str], workloads: list[str]) -> None:
    for system in systems:
        for wl in workloads:
            txt = out_dir / f"profile-{system}-{wl}.txt"
            if txt.exists():
                print(f"\n=== cProfile of the {system} server during {wl.upper()} "
                      f"(all threads, thread CPU time, top 15 by tottime; more in {txt})")
                print(txt.read_text().split("\n\nBy cumulative time:")[0].strip())
    if shutil.which("py-spy"):
        print("py-spy is installed; to sample a live server instead:\n"
              "  py-spy record --threads --idle -o profile.svg --pid <server pid>")
    else:
        print("For a sampling profile instead, `pip install py-spy` and run\n"
              "  py-spy record --threads -o profile.svg --pid <server pid>")
