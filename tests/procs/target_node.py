"""The node under attack, in its own process (tests/adversarial).

    python -m tests.procs.target_node DATA_DIR [--handshake-timeout S] [--nofile N]
        [--max-calls-per-peer N] [--max-preauth N] [--max-preauth-per-ip N]
        [--handler-workers N] [--log FILE]

The test prepares DATA_DIR (identity and trust list) before starting it. The node listens
on 127.0.0.1 and exposes:

- ``echo``: returns its args;
- ``incr``: adds one to a counter and returns it (replays must not move it twice);
- ``whoami``: returns the caller's PeerId as text (what the handshake proved);
- ``raise``: raises the exception named by args (default RuntimeError, with a message
  holding a marker, a path and a line number that must never reach the peer);
- ``slow``: sleeps args seconds (or ``[seconds, padding]``), counting how many calls
  per peer run at once.

It prints one line ``READY {"id": ..., "port": ..., "pid": ...}``, then answers JSON
commands on stdin, one reply line each (``{"ok": ...}`` or ``{"error": "..."}``):
``stats``, ``peers``, ``links``, ``pair``, ``unpair``, ``connect``, ``call_async`` (returns
a handle and the request id the call went out with), ``result``. It closes the node and
exits when stdin closes.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import resource
import sys
import threading
import time
from collections import Counter

import peernet
import peernet.node as _node_module

SECRET = "SECRET-MARKER-7f3a /home/u/app/secret.py line 7"

# Record the request id of each outgoing call, per thread, so a test can "leak" it to an
# attacker (security.md T16). Node looks the function up at call time.
_rid_seen = threading.local()
_original_new_request_id = _node_module.new_request_id


def _traced_new_request_id() -> int:
    rid = _original_new_request_id()
    _rid_seen.last = rid
    return rid


_node_module.new_request_id = _traced_new_request_id


class Handlers:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.counter = 0
        self.slow_now: Counter[str] = Counter()
        self.slow_max = 0

    def echo(self, peer, args):
        with self.lock:
            self.calls["echo"] += 1
        return args

    def incr(self, peer, args):
        with self.lock:
            self.calls["incr"] += 1
            self.counter += 1
            return self.counter

    def whoami(self, peer, args):
        with self.lock:
            self.calls["whoami"] += 1
        return str(peer)

    def raise_(self, peer, args):
        with self.lock:
            self.calls["raise"] += 1
        kind = {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt,
                "BaseException": BaseException}.get(args, RuntimeError)
        raise kind(SECRET)

    def slow(self, peer, args):
        key = str(peer)
        with self.lock:
            self.calls["slow"] += 1
            self.slow_now[key] += 1
            self.slow_max = max(self.slow_max, self.slow_now[key])
        try:  # args: seconds, or [seconds, padding] (padding only costs memory)
            time.sleep(float(args[0] if isinstance(args, list) else args))
        finally:
            with self.lock:
                self.slow_now[key] -= 1
        return "done"

    def stats(self) -> dict:
        with self.lock:
            return {"calls": dict(self.calls), "counter": self.counter,
                    "slow_max": self.slow_max}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("--handshake-timeout", type=float, default=10.0)
    ap.add_argument("--call-timeout", type=float, default=5.0)
    ap.add_argument("--nofile", type=int, default=None, help="RLIMIT_NOFILE soft limit")
    ap.add_argument("--max-calls-per-peer", type=int,  # the library's own default
                    default=inspect.signature(peernet.Node).parameters["max_calls_per_peer"].default)
    ap.add_argument("--max-preauth", type=int, default=64)
    ap.add_argument("--max-preauth-per-ip", type=int, default=8)
    ap.add_argument("--handler-workers", type=int, default=16)
    ap.add_argument("--log", default=None)
    opts = ap.parse_args()
    logging.basicConfig(
        filename=opts.log, level=logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    if opts.nofile is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (opts.nofile, hard))
    handlers = Handlers()
    node = peernet.Node(
        opts.data_dir, host="127.0.0.1", network_monitor=False,
        handshake_timeout=opts.handshake_timeout, call_timeout=opts.call_timeout,
        max_calls_per_peer=opts.max_calls_per_peer, max_preauth=opts.max_preauth,
        max_preauth_per_ip=opts.max_preauth_per_ip, handler_workers=opts.handler_workers,
        reconnect_initial=0.2, reconnect_max=2.0)
    try:
        node.expose("echo", handlers.echo)
        node.expose("incr", handlers.incr)
        node.expose("whoami", handlers.whoami)
        node.expose("raise", handlers.raise_)
        node.expose("slow", handlers.slow)
        # Start every handler worker now, so that the thread count an attack starts
        # from is the node's steady state (workers otherwise start on demand).
        node._mesh._sched.start_workers()
        print("READY " + json.dumps({"id": str(node.id), "port": node.port,
                                     "pid": os.getpid()}), flush=True)
        futures: dict[int, object] = {}
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd.pop("op")
            try:
                if op == "stats":
                    result = handlers.stats()
                elif op == "peers":
                    result = {str(p.id): p.status for p in node.list_peers()}
                elif op == "links":  # every link object the node holds, by peer
                    links = node._registry.all_links()
                    result = [{"peer": str(link.peer_id) if link.peer_id else None,
                               "target": str(link.target) if link.target else None,
                               "established": link.established, "closed": link.closed,
                               "outbound": link.outbound} for link in links]
                elif op == "pair":
                    result = str(node.pair(cmd["peer"]))
                elif op == "unpair":
                    result = node.unpair(cmd["peer"])
                elif op == "connect":
                    node.connect(cmd["peer"], cmd["host"], cmd["port"])
                    result = None
                elif op == "call_async":
                    _rid_seen.last = None
                    fut = node.call_async(cmd["peer"], cmd["name"], cmd.get("args"),
                                          timeout=cmd.get("timeout", 5.0))
                    futures[id(fut)] = fut
                    result = {"handle": id(fut), "rid": _rid_seen.last}
                elif op == "result":
                    fut = futures.pop(cmd["handle"])
                    try:
                        result = {"value": fut.result(cmd.get("timeout", 5.0))}
                    except Exception as exc:  # noqa: BLE001 -- reported to the test
                        result = {"raised": type(exc).__name__}
                else:
                    raise ValueError(f"unknown op {op!r}")
                reply = {"ok": result}
            except Exception as exc:  # noqa: BLE001 -- reported to the test
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)
    finally:
        node.close()


if __name__ == "__main__":
    main()
