"""Two peernet nodes in two processes on loopback: pair, call, send, and a dropped send.

Run it with ``scripts/demo`` (which sets up .venv first). Everything lives in a
temporary directory and only 127.0.0.1 is used.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import peernet
from peernet.identity import load_or_create


def serve(data_dir: str, friend: str) -> None:
    """The second process: 'bob', who exposes a greeting and a notebook of notes."""
    notes: list[str] = []
    with peernet.Node(data_dir, host="127.0.0.1") as bob:
        bob.pair(friend, label="alice")
        bob.expose("greet", lambda peer, name: f"hello {name}, this is bob ({bob.id.short})")
        bob.expose("note", lambda peer, text: notes.append(f"{text!r} from {peer.short}"))
        bob.expose("notes", lambda peer, args: notes)
        print("READY " + json.dumps({"port": bob.port}), flush=True)
        sys.stdin.read()  # until alice closes our stdin


def start_bob(bob_dir: Path, alice_id: peernet.PeerId) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(bob_dir), str(alice_id)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        raise SystemExit(f"bob did not start: {line!r}")
    return proc, json.loads(line[6:])["port"]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="peernet-demo-") as tmp:
        alice_dir, bob_dir = Path(tmp, "alice"), Path(tmp, "bob")
        alice_id = load_or_create(alice_dir).peer_id
        bob_id = load_or_create(bob_dir).peer_id
        print(f"alice: {alice_id}  (short {alice_id.short})")
        print(f"bob:   {bob_id}  (short {bob_id.short})")
        print("ids survive typing:", peernet.PeerId.parse(str(bob_id).upper()) == bob_id)

        bob, port = start_bob(bob_dir, alice_id)
        with peernet.Node(alice_dir, host="127.0.0.1") as alice:
            alice.pair(bob_id, label="bob")
            print("alice trusts:", [(str(p.id.short), p.label) for p in alice.list_peers()])
            alice.connect(bob_id, "127.0.0.1", port)

            t0 = time.perf_counter()
            print("call  ->", alice.call(bob_id, "greet", "alice"),
                  f"({(time.perf_counter() - t0) * 1000:.1f} ms incl. handshake)")
            try:
                alice.call(bob_id, "shell", "rm -rf /")
            except peernet.NoSuchHandler as exc:
                print("call  -> refused:", exc)
            print("send  ->", alice.send(bob_id, "note", "walkie-talkie says hi"))
            deadline = time.monotonic() + 5  # a send has no reply: ask bob what arrived
            while not (notes := alice.call(bob_id, "notes")) and time.monotonic() < deadline:
                time.sleep(0.01)
            print("bob received:", notes)

            bob.stdin.close()
            bob.wait(10)
            peer = alice.list_peers()[0]
            deadline = time.monotonic() + 5
            while peer.status == "online" and time.monotonic() < deadline:
                time.sleep(0.02)
                peer = alice.list_peers()[0]
            print("bob stopped; alice sees:", peer)
            print("send while bob is down ->", alice.send(bob_id, "note", "anyone there?"),
                  "(dropped: send never queues)")

            bob, port = start_bob(bob_dir, alice_id)
            alice.connect(bob_id, "127.0.0.1", port)
            print("bob is back; call ->", alice.call(bob_id, "greet", "alice"))
            bob.stdin.close()
            bob.wait(10)
    print("done")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        main()
