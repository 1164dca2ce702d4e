"""A node in its own process, driven by tests.

    python node_proc.py DATA_DIR [--port N] [--pair ID] [--connect ID HOST PORT]

Prints one line ``READY {"id": ..., "port": ...}`` once listening, serves ``echo``,
``slow`` (sleeps args seconds) and ``callback`` (calls the caller's ``echo`` back), and
exits when stdin closes.
"""

import argparse
import json
import sys
import time

import peernet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--pair", action="append", default=[])
    ap.add_argument("--connect", nargs=3, action="append", default=[])
    ap.add_argument("--heartbeat", type=float, nargs=2, default=None)
    opts = ap.parse_args()
    settings = {}
    if opts.heartbeat:
        settings.update(heartbeat_interval=opts.heartbeat[0], heartbeat_timeout=opts.heartbeat[1])
    with peernet.Node(opts.data_dir, host="127.0.0.1", port=opts.port, **settings) as node:
        for peer in opts.pair:
            node.pair(peer)
        node.expose("echo", lambda peer, args: args)
        node.expose("slow", lambda peer, args: time.sleep(args) or "done")
        node.expose("callback", lambda peer, args: node.call(peer, "echo", args))
        for peer, host, port in opts.connect:
            node.connect(peer, host, int(port))
        print("READY " + json.dumps({"id": str(node.id), "port": node.port}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
