"""Entry point of scripts/bench; also the entry of its child processes (--role)."""

from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    if "--role" not in sys.argv[1:]:
        from benchkit.runner import main as run
        return run(sys.argv[1:])
    p = argparse.ArgumentParser()
    p.add_argument("--role", choices=("server", "client", "scale", "holder"), required=True)
    p.add_argument("--system")
    p.add_argument("--opts", default="{}")
    p.add_argument("--config", default="{}")
    p.add_argument("--cpu", type=int)
    p.add_argument("--limit-s", type=float, default=900.0)
    p.add_argument("--profile-out")
    p.add_argument("--out")
    a = p.parse_args()
    if a.role == "server":
        from benchkit.roles import server_main
        server_main(a.system, json.loads(a.opts), a.cpu, a.limit_s, a.profile_out)
    elif a.role == "client":
        from benchkit.roles import client_main
        client_main(json.loads(a.config), a.out)
    elif a.role == "scale":
        from benchkit.scale import scale_main
        scale_main(json.loads(a.config), a.out)
    else:
        from benchkit.scale import holder_main
        holder_main(json.loads(a.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
