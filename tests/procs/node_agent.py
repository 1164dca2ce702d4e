"""A node driven by JSON commands on stdin, one reply per line on stdout.

    python -m tests.procs.node_agent DATA_DIR [--host H] [--poll S] [--heartbeat I T]
        [--discovery udp|mdns|mdns-browse ...] [--interval S] [--udp-port P]
        [--udp-target P]

``mdns-browse``: mDNS that publishes nothing, only browses and asks (what a one-shot
command runs).

Commands: info, pair, connect, call, link, links, polls, peers, candidates, nearby, udp,
mdns, invite, invite_wait, join, knock (a short-code invite attempt without the exchange: did
the inviter let it past message 3?).
Replies are {"ok": ...} or
{"error": "..."}. Used by the namespace lab, where the test process cannot reach the
node directly.
"""

import argparse
import json
import sys
import time

import peernet


def _count_mdns_names() -> None:
    """Let the mdns command tell how many distinct service names the browser reported,
    so a test can wait until a flood was heard in full before it goes on."""
    try:
        from peernet.discovery.mdns import MdnsDiscovery
    except ImportError:
        return
    original = MdnsDiscovery._on_change

    def on_change(self, zeroconf, service_type, name, state_change):
        original(self, zeroconf, service_type, name, state_change)
        self.__dict__.setdefault("heard_names", set()).add(name)

    MdnsDiscovery._on_change = on_change


def _count_links(node: peernet.Node) -> dict[str, int]:
    """Count the links the node's mesh accepts per peer (both ways, retired duplicates
    included), so a test can tell that no link was made while it looked away."""
    mesh = node._mesh
    established = mesh.link_established
    counts: dict[str, int] = {}

    def counting(link):
        retire = established(link)
        if retire is not None:
            counts[str(link.peer_id)] = counts.get(str(link.peer_id), 0) + 1
        return retire

    mesh.link_established = counting
    return counts


def _knock(node: peernet.Node, host: str, port: int, peer: str, nameplate: int) -> str:
    """"ready" if the inviter at host:port let a short-code hello naming ``nameplate``
    past message 3 (then closing burns its invite), else the error's type name."""
    from peernet._io.invite_link import dial_invite
    from peernet._proto.invite import KIND_SHORT, InviteHello
    from peernet._proto.session import LocalCredentials

    try:
        pipe = dial_invite(LocalCredentials.from_identity(node._identity), (host, port),
                           expected=peernet.PeerId.parse(peer),
                           hello=InviteHello(KIND_SHORT, nameplate).encode(), listen_port=0,
                           deadline=time.monotonic() + 5)
    except peernet.PeerNetError as exc:
        return type(exc).__name__
    pipe.close()
    return "ready"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--poll", type=float, default=0.5)
    ap.add_argument("--heartbeat", type=float, nargs=2, default=(0.5, 2.0))
    ap.add_argument("--discovery", nargs="*", default=[])
    ap.add_argument("--interval", type=float, default=0.5, help="announce interval, s")
    ap.add_argument("--udp-port", type=int, default=4040)
    ap.add_argument("--udp-target", type=int, default=None,
                    help="announce by unicast to 127.0.0.1:PORT instead of broadcasting")
    opts = ap.parse_args()
    _count_mdns_names()
    discovery = []
    for kind in opts.discovery:
        if kind == "udp":
            loopback = {} if opts.udp_target is None else {
                "bind_host": "127.0.0.1", "targets": [("127.0.0.1", opts.udp_target)]}
            discovery.append(peernet.UdpDiscovery(port=opts.udp_port, interval_s=opts.interval,
                                                  **loopback))
        elif kind == "mdns-browse":
            discovery.append(peernet.MdnsDiscovery(register=False))
        else:
            discovery.append(kind)
    node = peernet.Node(opts.data_dir, host=opts.host, network_poll_interval=opts.poll,
                        heartbeat_interval=opts.heartbeat[0],
                        heartbeat_timeout=opts.heartbeat[1], reconnect_initial=0.05,
                        reconnect_max=1.0, handshake_timeout=2.0, discovery=discovery)
    started = time.monotonic()
    established = _count_links(node)
    node.expose("echo", lambda peer, args: args)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            if op == "info":
                result = {"id": str(node.id), "port": node.port, "started": started}
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
                    "local": link.local_ip, "local_port": link.local_port, "key": id(link),
                    "remote": list(link.address)}
            elif op == "links":  # all of them: live, dialling, retiring; and how many ever
                pid = peernet.PeerId.parse(cmd["peer"])
                entry = node._registry.get(pid)
                result = {"links": len(node._registry.links_of(pid)),
                          "dialing": entry is not None and entry.dialing is not None,
                          "established": established.get(cmd["peer"], 0)}
            elif op == "polls":
                result = node._netmon.polls
            elif op == "peers":
                result = {str(p.id): {"status": p.status, "address": p.address}
                          for p in node.list_peers()}
            elif op == "candidates":
                entry = node._registry.get(peernet.PeerId.parse(cmd["peer"]))
                result = {} if entry is None else dict(entry.candidates)
            elif op == "nearby":
                result = [{"id": str(n.id), "address": n.address, "source": n.source}
                          for n in node.list_nearby()]
            elif op == "invite":  # opens one; invite_wait waits for the last one opened
                invite = node.invite(cmd.get("label"), cmd.get("ttl_s", 600.0),
                                     short=cmd.get("short", True))
                result = {"short": invite.short, "long": invite.long,
                          "nameplate": invite.nameplate}
            elif op == "invite_wait":
                try:
                    result = str(invite.wait(cmd.get("timeout", 10.0)))
                except peernet.PeerNetError as exc:
                    result = {"failed": type(exc).__name__, "status": invite.status}
            elif op == "join":
                result = str(node.join(cmd["code"], cmd.get("label"), cmd.get("timeout", 10.0)))
            elif op == "knock":
                result = _knock(node, cmd["host"], cmd["port"], cmd["peer"], cmd["nameplate"])
            elif op == "udp":  # counters of the UDP discovery, if any
                udp = next(d for d in node._discoveries if d.source == "udp")
                result = {"sent": udp.sent, "received": udp.received, "dropped": udp.dropped,
                          "answered": udp.answered, "unanswered": udp.unanswered}
            elif op == "mdns":  # what the mDNS discovery heard and holds
                mdns = next(d for d in node._discoveries if d.source == "mdns")
                with mdns._cond:
                    pending = len(mdns._pending)
                result = {"heard": len(getattr(mdns, "heard_names", ())), "pending": pending,
                          "tracked": len(mdns._tracked), "resolved": mdns.resolved}
            else:
                raise ValueError(f"unknown op {op!r}")
            reply = {"ok": result}
        except Exception as exc:  # noqa: BLE001 -- reported to the test
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    node.close()


if __name__ == "__main__":
    main()
