"""The ``peernet`` command (also ``python -m peernet``).

For now it shows this machine's identity; pairing, listening, chat and calls from the
terminal come with the full command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import PeerNetError
from .identity import load_or_create
from .node import default_data_dir

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="peernet",
        description="Default-deny peer-to-peer messaging. Each machine has an id (its "
                    "public key); peers that pair with each other can call what the "
                    "other exposes.",
    )
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="where the identity and trust list live (default: "
                         "$PEERNET_DATA_DIR or ~/.local/share/peernet)")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("id", help="show this machine's peer id (created on first use)")
    return ap


def main(argv: list[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    data_dir = opts.data_dir or default_data_dir()
    try:
        identity = load_or_create(data_dir)
    except (PeerNetError, OSError) as exc:
        print(f"peernet: {exc}", file=sys.stderr)
        return EXIT_ERROR
    pid = identity.peer_id
    print(pid)
    print(f"short id: {pid.short}")
    print(f"to pair, the other side runs: node.pair(\"{pid}\")")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
