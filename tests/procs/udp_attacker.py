"""A hostile host for the namespace lab: replays, forges and floods UDP announces.

    python -m tests.procs.udp_attacker MY_IP VICTIM_IP CAPTURE_IP [--flood N] [--watch S]

It listens on the announce port to capture a genuine announce from CAPTURE_IP, then
sends to the
victim (by unicast; the lab is its own network): the captured packet replayed from
MY_IP; a packet naming the captured peer at MY_IP:tarpit signed with the attacker's
own key; an announce of the attacker's own (unpaired) key at MY_IP:tarpit; and, with
--flood, N mixed packets as fast as it can. A tarpit TCP listener counts connections
for --watch seconds. Prints one JSON line: what it sent and the connections it saw.
"""

from __future__ import annotations

import argparse
import json
import socket
import time

from peernet.identity import Identity
from peernet._proto.announce import ANNOUNCE_LEN, decode_announce, encode_announce

PORT = 4040


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("my_ip")
    ap.add_argument("victim_ip")
    ap.add_argument("capture_ip")
    ap.add_argument("--flood", type=int, default=0)
    ap.add_argument("--watch", type=float, default=2.0)
    opts = ap.parse_args()
    me = Identity.generate()

    listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listen.bind(("0.0.0.0", PORT))
    listen.settimeout(5)
    while True:
        packet, (src, _) = listen.recvfrom(ANNOUNCE_LEN + 1)
        if src == opts.capture_ip:
            break
    listen.close()
    captured = decode_announce(packet)

    tarpit = socket.socket()
    tarpit.bind((opts.my_ip, 0))
    tarpit.listen(64)
    tarpit.setblocking(False)
    tarpit_port = tarpit.getsockname()[1]

    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.bind((opts.my_ip, 0))
    victim = (opts.victim_ip, PORT)
    forged = encode_announce(me.sign, captured.peer_id, port=tarpit_port, counter=2**62,
                             interval_s=0.5, address=opts.my_ip)
    stranger = encode_announce(me.sign, me.peer_id, port=tarpit_port, counter=1,
                               interval_s=60.0, address=opts.my_ip)
    for p in (packet, forged, stranger):
        out.sendto(p, victim)
    flood_started = time.monotonic()
    for i in range(opts.flood):
        kind = i % 3
        if kind == 0:
            p = packet  # replays
        elif kind == 1:
            p = forged
        else:
            p = b"PNET\x02" + bytes(127)
        out.sendto(p, victim)
    flood_s = time.monotonic() - flood_started

    connections = 0
    deadline = time.monotonic() + opts.watch
    while time.monotonic() < deadline:
        try:
            conn, _ = tarpit.accept()
            connections += 1
            conn.close()
        except BlockingIOError:
            time.sleep(0.01)
    print(json.dumps({"replayed_peer": str(captured.peer_id), "stranger": str(me.peer_id),
                      "tarpit_port": tarpit_port, "flood_s": flood_s,
                      "connections": connections}), flush=True)


if __name__ == "__main__":
    main()
