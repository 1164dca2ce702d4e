"""Scale: N peernet client nodes linked to one server node.

Measures the server's RSS per idle link, ((RSS at N links) - (RSS at 0 links)) / N from
/proc/<pid>/status VmRSS, and W1 p50 from one client at 1 link and at N links. The
measuring client runs in this process; the N - 1 idle nodes live in "holder" processes
(threads of their own), so their objects do not slow the measuring client's GC.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import procs
from .common import CALL_TIMEOUT_S, Sizes
from .roles import start_server
from .workloads import w1_latency

#: A linked client node holds ~6 fds, and peernet's dial uses select(), which fails for
#: fds >= 1024 ("filedescriptor out of range in select()"): keep each holder well below.
NODES_PER_HOLDER = 100
#: The server admits at most 8 handshakes per source address at once (max_preauth_per_ip).
DIAL_BATCH = 8


def scale_main(cfg: dict[str, Any], out_path: str) -> None:
    from peernet.identity import load_or_create

    from .sys_peernet import Client

    procs.pin(cfg.get("cpu_client"))
    procs.raise_fd_limit()
    sizes = Sizes(**cfg["sizes"])
    peers = sizes.scale_peers
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    server = client = None
    holders: list[Any] = []
    result: dict[str, Any] = {"peers": peers}
    try:
        t0 = time.monotonic()
        dirs = [tmp / f"c{i}" for i in range(peers)]
        ids = [str(load_or_create(d).peer_id) for d in dirs]
        (tmp / "ids.txt").write_text("\n".join(ids))
        server, ready = start_server("peernet", {"client_ids_file": str(tmp / "ids.txt")}, cfg)
        result["identities_s"] = time.monotonic() - t0
        time.sleep(0.5)  # let the fresh server settle before the 0-link RSS
        status0 = procs.proc_status(server.pid)

        client = Client(data_dir=dirs[0])
        client.attach(ready)
        w1_one = w1_latency(client, sizes, warmup=sizes.scale_w1_warmup,
                            calls=sizes.scale_w1_calls)
        status1 = procs.proc_status(server.pid)

        t1 = time.monotonic()
        rest = dirs[1:]
        for k in range(0, len(rest), NODES_PER_HOLDER):
            # One holder at a time: together they would exceed the per-address
            # handshake limit and fall into reconnect backoff.
            chunk = [str(d) for d in rest[k:k + NODES_PER_HOLDER]]
            holder_cfg = {"dirs": chunk, "server_id": ready["id"], "port": ready["port"],
                          "cpu": cfg.get("cpu_client"), "limit_s": cfg["server_limit_s"]}
            proc, info = procs.spawn_role("holder", ["--config", json.dumps(holder_cfg)],
                                          ready_timeout_s=300)
            holders.append(proc)
            if info["linked"] != len(chunk):
                raise RuntimeError(f"holder linked {info['linked']} of {len(chunk)}")
        result["link_all_s"] = time.monotonic() - t1
        time.sleep(0.5)
        status_n = procs.proc_status(server.pid)
        w1_n = w1_latency(client, sizes, warmup=sizes.scale_w1_warmup,
                          calls=sizes.scale_w1_calls)
        result.update({
            "rss0_kib": status0["VmRSS"], "rss1_kib": status1["VmRSS"],
            "rss_n_kib": status_n["VmRSS"], "threads0": status0["Threads"],
            "threads_n": status_n["Threads"],
            "rss_per_link_kib": (status_n["VmRSS"] - status0["VmRSS"]) / peers,
            "w1_1": w1_one, "w1_n": w1_n,
            "w1_p50_ratio": w1_n["p50_us"] / w1_one["p50_us"],
        })
    except Exception as exc:  # noqa: BLE001 -- reported in the table
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"    scale: FAILED {exc!r}", file=sys.stderr, flush=True)
    finally:
        for proc in holders:
            procs.stop(proc)
        if client is not None:
            client.close()
        if server is not None:
            procs.stop(server)
        shutil.rmtree(tmp, ignore_errors=True)
    Path(out_path).write_text(json.dumps(result, indent=1))


def holder_main(cfg: dict[str, Any]) -> None:
    """Bring up one node per dir, link each to the server, then idle until stdin closes."""
    from peernet import Node, PeerId

    from .sys_peernet import node_kwargs

    procs.pin(cfg.get("cpu"))
    procs.raise_fd_limit()
    procs.hard_limit(cfg["limit_s"])
    stopped = procs.stdin_closed_event()
    server_id = PeerId.parse(cfg["server_id"])
    nodes = []
    for d in cfg["dirs"]:
        node = Node(d, **node_kwargs())
        node.pair(server_id)
        nodes.append(node)
    linked = 0
    for k in range(0, len(nodes), DIAL_BATCH):
        batch = nodes[k:k + DIAL_BATCH]
        for node in batch:
            node.connect(server_id, "127.0.0.1", cfg["port"])
        for node in batch:
            # One call proves the server side holds the link too, not just our side.
            if node.wait_for_peer(server_id, CALL_TIMEOUT_S) and \
                    node.call(server_id, "echo", 0, timeout=CALL_TIMEOUT_S) == 0:
                linked += 1
    procs.announce({"linked": linked, "pid": os.getpid()})
    stopped.wait()
    os._exit(0)  # closing hundreds of nodes one by one would only slow the run down
