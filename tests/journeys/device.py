"""A device for the journeys: a peernet node in its own process, on 127.0.0.1.

    python -m tests.journeys.device DATA_DIR

It exposes ``echo`` and ``temperature`` (``{"celsius": 21.5}``), prints one line
``READY {"id": ..., "port": ...}``, then answers JSON commands on stdin, one reply line
each (``{"ok": ...}`` or ``{"error": "TypeName: text"}``): ``pair`` (peer), ``connect``
(peer, host, port), ``wait`` (peer, timeout: wait_for_peer) and ``call`` (peer, name,
args, timeout). It closes its node and exits when stdin closes.
"""

from __future__ import annotations

import json
import sys

import peernet

CELSIUS = 21.5


def _run(node: peernet.Node, cmd: dict) -> object:
    op = cmd["op"]
    if op == "pair":
        return str(node.pair(cmd["peer"], label=cmd.get("label")))
    if op == "connect":
        return node.connect(cmd["peer"], cmd["host"], cmd["port"])
    if op == "wait":
        return node.wait_for_peer(cmd["peer"], timeout=cmd.get("timeout", 10.0))
    if op == "call":
        return node.call(cmd["peer"], cmd["name"], cmd.get("args"), timeout=cmd.get("timeout", 5.0))
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    with peernet.Node(sys.argv[1], host="127.0.0.1", network_monitor=False) as node:
        node.expose("echo", lambda peer, args: args)
        node.expose("temperature", lambda peer, args: {"celsius": CELSIUS})
        print("READY " + json.dumps({"id": str(node.id), "port": node.port}), flush=True)
        for line in sys.stdin:
            try:
                reply = {"ok": _run(node, json.loads(line))}
            except Exception as exc:  # noqa: BLE001 -- every failure goes back to the test
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
