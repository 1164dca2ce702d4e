"""Another mDNS responder on the host, as the kernel treats it: the first to bind.

    python -m tests.procs.unicast_thief IP PORT

Binds IP:PORT shared (SO_REUSEADDR, SO_REUSEPORT, as zeroconf binds its sockets) and
makes the port's reuse group hand it every unicast datagram (a reuseport BPF program
that always picks the group's first socket, its own): RFC 6762 section 15.1, "unicast
... will be received only by the first Multicast DNS Responder process running on a
system", made deterministic instead of the kernel's hash. Prints ``READY``, then one
JSON line per datagram: ``{"from": [ip, port]}``, until killed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = 51
BPF_RET_K = 0x06


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ip")
    ap.add_argument("port", type=int)
    opts = ap.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((opts.ip, opts.port))
    program = ctypes.create_string_buffer(struct.pack("HBBI", BPF_RET_K, 0, 0, 0))  # ret 0
    fprog = struct.pack("HL", 1, ctypes.addressof(program))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    print("READY", flush=True)
    while True:
        _, source = sock.recvfrom(65535)
        print(json.dumps({"from": list(source)}), flush=True)


if __name__ == "__main__":
    main()
