"""A hostile host for the namespace lab: floods a node with UDP solicitations.

    python -m tests.procs.solicit_flood VICTIM_IP SOURCE_IP[,SOURCE_IP...] --seconds S

Sends solicitations to VICTIM_IP:4040 by unicast, round-robin from a socket bound to
each source address, as fast as it can for S seconds, and counts the answers (announces)
each socket gets back. Prints one JSON line: packets sent, answers per source, the
seconds the flood lasted, and the peers that answered.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

from peernet._proto.announce import ANNOUNCE_LEN, decode_announce, encode_solicitation

PORT = 4040


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("victim_ip")
    ap.add_argument("sources")
    ap.add_argument("--seconds", type=float, default=2.0)
    opts = ap.parse_args()
    socks = []
    for ip in opts.sources.split(","):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, 0))
        s.setblocking(False)
        socks.append(s)
    answers = [0] * len(socks)
    peers: set[str] = set()

    def drain() -> None:
        for k, s in enumerate(socks):
            while True:
                try:
                    packet = s.recv(ANNOUNCE_LEN + 1)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                answers[k] += 1
                peers.add(str(decode_announce(packet).peer_id))

    sent = 0
    started = time.monotonic()
    while time.monotonic() - started < opts.seconds:
        for s in socks:
            try:
                s.sendto(encode_solicitation(os.urandom(16)), (opts.victim_ip, PORT))
                sent += 1
            except BlockingIOError:
                pass
        if sent % 256 < len(socks):
            drain()
    duration = time.monotonic() - started
    deadline = time.monotonic() + 0.5  # answers still on their way
    while time.monotonic() < deadline:
        drain()
        time.sleep(0.01)
    print(json.dumps({"sent": sent, "answers": answers, "seconds": duration,
                      "peers": sorted(peers)}), flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
