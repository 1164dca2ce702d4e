"""A bystander for the namespace lab: prints every UDP datagram it hears on a port.

    python -m tests.procs.udp_sniffer PORT [--group ADDR --on IP]

Binds 0.0.0.0:PORT (shared, like a discovery node would), joins multicast group ADDR on
the interface with address IP if asked, prints ``READY`` and then one JSON line per
datagram: ``{"from": source ip, "port": source port, "hex": the bytes}``, until killed.
Tests read what a host on the LAN that asked for nothing gets to see.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--group")
    ap.add_argument("--on")
    opts = ap.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", opts.port))
    if opts.group:
        membership = struct.pack("4s4s", socket.inet_aton(opts.group), socket.inet_aton(opts.on))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    print("READY", flush=True)
    while True:
        data, (source, port) = sock.recvfrom(65535)
        print(json.dumps({"from": source, "port": port, "hex": data.hex()}), flush=True)


if __name__ == "__main__":
    main()
