"""The server and client processes of one system (``bench.py --role server|client``)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from . import procs, profiling
from .common import Handlers, Sizes
from .workloads import WORKLOADS

#: Table order: the floor first, the system under test last.
SYSTEMS = {
    "raw-tcp": "sys_raw",
    "mp-connection": "sys_mp",
    "zmq-curve": "sys_zmq",
    "tls-tcp": "sys_tls",
    "pyro5": "sys_pyro",
    "rpyc": "sys_rpyc",
    "peernet": "sys_peernet",
    "peernet-text": "sys_peernet_text",
}
#: Workloads only some systems implement (the client has the method named here).
OPTIONAL_WORKLOADS = {"w5cold": "cold_call"}
ENCRYPTED_PEERS = ("zmq-curve", "tls-tcp")


def system_module(name: str) -> ModuleType:
    return importlib.import_module(f"benchkit.{SYSTEMS[name]}")


def server_main(system: str, opts: dict[str, Any], cpu: int | None, limit_s: float,
                profile_out: str | None) -> None:
    procs.pin(cpu)
    procs.raise_fd_limit()
    procs.hard_limit(limit_s)
    stopped = procs.stdin_closed_event()
    if profile_out:
        profiling.install()
    module = system_module(system)
    ready, shutdown = module.serve(opts, Handlers())
    procs.announce({**ready, "pid": os.getpid()})
    stopped.wait()
    shutdown()
    if profile_out:
        profiling.dump(Path(profile_out))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # daemon threads blocked in accept/recv must not delay the exit


def start_server(system: str, opts: dict[str, Any], cfg: dict[str, Any],
                 profile_out: str | None = None
                 ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    args = ["--system", system, "--opts", json.dumps(opts), "--limit-s",
            str(cfg["server_limit_s"])]
    if cfg.get("cpu_server") is not None:
        args += ["--cpu", str(cfg["cpu_server"])]
    if profile_out:
        args += ["--profile-out", profile_out]
    return procs.spawn_role("server", args)


def client_main(cfg: dict[str, Any], out_path: str) -> None:
    """Run the workloads of one system against its own server; write JSON to out_path."""
    procs.pin(cfg.get("cpu_client"))
    procs.raise_fd_limit()
    system, sizes = cfg["system"], Sizes(**cfg["sizes"])
    module = system_module(system)
    client = module.Client()
    result: dict[str, Any] = {"system": system, "security": module.SECURITY, "errors": {}}
    profile_dir = cfg.get("profile_dir")
    server = None
    try:
        for name in cfg["workloads"]:
            needs = OPTIONAL_WORKLOADS.get(name)
            if needs and not hasattr(client, needs):
                continue
            profile_out = None
            if profile_dir:  # a fresh server per workload: one profile per workload
                if server is not None:
                    procs.stop(server, grace_s=60)
                    server = None
                profile_out = str(Path(profile_dir) / f"profile-{system}-{name}.pstats")
            if server is None:
                server, ready = start_server(system, client.server_opts(), cfg, profile_out)
                client.attach(ready)
            t0 = time.monotonic()
            try:
                result[name] = WORKLOADS[name](client, sizes)
                result[name]["wall_s"] = time.monotonic() - t0
                print(f"    {system:13} {name}: {_brief(result[name])}", file=sys.stderr,
                      flush=True)
            except Exception as exc:  # noqa: BLE001 -- one failing workload, not the run
                result["errors"][name] = f"{type(exc).__name__}: {exc}"
                print(f"    {system:13} {name}: FAILED {exc!r}", file=sys.stderr, flush=True)
                traceback.print_exc()
        if server is not None:
            result["server_status_end"] = procs.proc_status(server.pid)
    finally:
        try:
            client.close()
        finally:
            if server is not None:
                procs.stop(server, grace_s=60 if profile_dir else 10)
    Path(out_path).write_text(json.dumps(result, indent=1))


def _brief(r: dict[str, Any]) -> str:
    keys = ("p50_us", "p99_us", "calls_per_s", "msgs_per_s", "received", "sent", "mb_per_s",
            "median_ms", "start_median_ms")
    return "  ".join(f"{k}={r[k]:,.1f}" if isinstance(r[k], float) else f"{k}={r[k]}"
                     for k in keys if k in r)
