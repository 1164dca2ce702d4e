"""A node driven by JSON commands on stdin, one reply per line on stdout.

    python -m tests.procs.node_agent DATA_DIR [--host H] [--poll S] [--heartbeat I T]

Commands: info, pair, connect, call, link, polls. Replies are {"ok": ...} or
{"error": "..."}. Used by the namespace lab, where the test process cannot reach the
node directly.
"""

import argparse
import json
import sys

import peernet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--poll", type=float, default=0.5)
    ap.add_argument("--heartbeat", type=float, nargs=2, default=(0.5, 2.0))
    opts = ap.parse_args()
    node = peernet.Node(opts.data_dir, host=opts.host, network_poll_interval=opts.poll,
                        heartbeat_interval=opts.heartbeat[0],
                        heartbeat_timeout=opts.heartbeat[1], reconnect_initial=0.05,
                        reconnect_max=1.0, handshake_timeout=2.0)
    node.expose("echo", lambda peer, args: args)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            if op == "info":
                result = {"id": str(node.id), "port": node.port}
            elif op == "pair":
                result = str(node.pair(cmd["peer"]))
            elif op == "connect":
                result = node.connect(cmd["peer"], cmd["host"], cmd["port"])
            elif op == "call":
                result = node.call(cmd["peer"], cmd["name"], cmd.get("args"),
                                   timeout=cmd.get("timeout", 2.0))
            elif op == "link":
                link = node._registry.active_link(peernet.PeerId.parse(cmd["peer"]))
                result = None if link is None else {
                    "local": link.local_ip, "local_port": link.local_port, "key": id(link)}
            elif op == "polls":
                result = node._netmon.polls
            else:
                raise ValueError(f"unknown op {op!r}")
            reply = {"ok": result}
        except Exception as exc:  # noqa: BLE001 -- reported to the test
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    node.close()


if __name__ == "__main__":
    main()
