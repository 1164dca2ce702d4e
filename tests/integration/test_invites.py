"""Invites end to end on loopback (issue 21): Node.invite / Node.join with both code
forms, and every way an invite must fail without pairing anybody. UDP discovery goes by
unicast to loopback targets (never broadcast)."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading

import pytest

import peernet
from peernet.errors import (
    InvalidInviteCode,
    InviteAmbiguous,
    InviteError,
    InviteExpired,
    InviteNotFound,
    InviteRejected,
    InviteTimeout,
)
from peernet._addresses import AddressBook
from peernet.identity import Identity
from peernet.invites import store_peer
from peernet.trust import TrustStore
from peernet._io.invite_link import dial_invite
from peernet._proto.invite import (KIND_LONG, KIND_SHORT, InviteHello, LongCode, ShortCode,
                                   parse_code)
from peernet._proto.messages import Call, encode_message
from peernet._proto.session import LocalCredentials
from peernet._proto.wordlist import WORDS
from tests.conftest import wait_until
from tests.integration.test_discovery import free_udp_ports, udp

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def lan(make_node):
    """``lan(n)``: n nodes that hear each other's UDP announces, each serving echo."""

    def build(n: int, **settings) -> list[peernet.Node]:
        ports = free_udp_ports(n)
        nodes = []
        for i, port in enumerate(ports):
            others = [p for p in ports if p != port]
            node = make_node(f"n{i}", discovery=udp(port, *others), **settings)
            node.expose("echo", lambda peer, args: args)
            nodes.append(node)
        return nodes

    return build


def wrong_words(code: str) -> str:
    short = parse_code(code)
    assert isinstance(short, ShortCode)
    guess = ((short.words[0] + 1) % 256, short.words[1])
    return ShortCode(short.nameplate, guess).text


def test_a_short_code_pairs_both_sides_and_the_first_call_works(lan):
    a, b = lan(2)
    inv = a.invite(label="kitchen pi")
    assert inv.short is not None and inv.status == "open" and a.invites == [inv]
    assert b.join(inv.short, label="laptop") == a.id
    assert inv.wait(5) == b.id and inv.status == "paired" and a.invites == []
    assert a.trust.get(b.id).label == "laptop" and b.trust.get(a.id).label == "kitchen pi"
    assert inv.peer == b.id and inv.peer_label == "laptop" and inv.note is None
    assert b.list_peers()[0].online  # join dialled the inviter as a paired peer
    assert b.call("kitchen pi", "echo", 1, timeout=2) == 1
    assert a.call("laptop", "echo", 2, timeout=2) == 2


def test_a_long_code_pairs_without_any_discovery(make_node):
    a, b = make_node("a"), make_node("b")
    a.expose("echo", lambda peer, args: args)
    inv = a.invite(label="server", ttl_s=60)
    assert inv.short is None  # nothing nearby could find its number
    code = parse_code(inv.long)
    assert isinstance(code, LongCode) and code.inviter == a.id and code.port == a.port
    assert code.addresses == ("127.0.0.1",)
    assert b.join(inv.long, label="client") == a.id
    assert inv.wait(5) == b.id
    assert b.call(a.id, "echo", "hi", timeout=2) == "hi"


def test_a_join_remembers_where_it_reached_the_inviter_before_any_link(make_node,
                                                                         tmp_path):
    """The joiner remembers the address the exchange proved (the one in the code it
    dialled) when the pairing succeeds, not only once its dial to the inviter as a
    peer succeeds: a `peernet invite` closes at once, and a CLI join did too, so the
    joiner's address book stayed empty. The inviter keeps only the time: nothing it
    learnt of the joiner is an address it could dial."""
    a, b = make_node("a"), make_node("b")
    b._invites._connect = lambda *args: None  # no dial after the pairing, as if it lost
    inv = a.invite(label="server", ttl_s=60)
    assert b.join(inv.long, label="client") == a.id and inv.wait(5) == b.id
    where = ("127.0.0.1", a.port)
    assert b.list_peers()[0].address == where
    a.close()
    b.close()
    joiner_book = AddressBook.load(tmp_path / "b").get(a.id)
    assert joiner_book.address == where and joiner_book.last_seen
    inviter_book = AddressBook.load(tmp_path / "a").get(b.id)
    assert inviter_book.address is None and inviter_book.last_seen  # heard, not where


def test_a_wrong_code_burns_the_invite_and_pairs_nobody(lan):
    a, b = lan(2)
    inv = a.invite(label="a")
    with pytest.raises(InviteRejected) as caught:
        b.join(wrong_words(inv.short))
    assert caught.value.reason == "wrong_code"
    with pytest.raises(InviteRejected, match="burned"):
        inv.wait(5)
    assert inv.status == "burned"
    with pytest.raises(InviteRejected) as again:  # the right code is no use now
        b.join(inv.long)
    assert again.value.reason == "burned"
    assert len(a.trust) == 0 and len(b.trust) == 0
    assert wait_until(lambda: inv.nameplate not in a._invites.open_nameplates())


def test_a_third_party_racing_the_joiner_with_a_guess_pairs_nobody(lan):
    a, b, c = lan(3)
    inv = a.invite(label="a")
    guess = wrong_words(inv.short)
    # c hears the number in a's announce and guesses the words, before b types the code.
    with pytest.raises(InviteRejected):
        c.join(guess)
    with pytest.raises((InviteRejected, InviteNotFound)):  # burned, or out of the announces
        b.join(inv.short)
    assert len(a.trust) == len(b.trust) == len(c.trust) == 0

    # Racing at the same time: whoever claims the invite first decides; c never pairs.
    inv = a.invite(label="a")
    outcomes: dict[str, object] = {}

    def attempt(name, node, code):
        try:
            outcomes[name] = node.join(code)
        except peernet.PeerNetError as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=attempt, args=("c", c, wrong_words(inv.short))),
               threading.Thread(target=attempt, args=("b", b, inv.short))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert isinstance(outcomes["c"], InviteError)
    assert not a.trust.is_trusted(c.id) and len(c.trust) == 0
    if outcomes["b"] == a.id:  # b came first
        assert a.trust.is_trusted(b.id) and inv.status == "paired"
    else:
        assert isinstance(outcomes["b"], InviteError) and len(a.trust) == 0


def test_an_expired_invite_is_refused(lan):
    a, b = lan(2)
    inv = a.invite(ttl_s=0.3)
    with pytest.raises(InviteExpired):
        inv.wait(5)
    assert inv.status == "expired" and a.invites == []
    with pytest.raises(InviteExpired):
        b.join(inv.long)
    with pytest.raises(InviteNotFound):  # its number left a's announces
        b.join(inv.short, timeout=5)
    assert len(a.trust) == len(b.trust) == 0


def test_a_used_invite_is_refused_and_a_replayed_exchange_fails(make_node):
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    inv = a.invite()
    code = parse_code(inv.long)
    recorder = Recorder(("127.0.0.1", a.port))
    via = dataclasses.replace(code, port=recorder.port)
    assert b.join(via.text) == a.id and inv.wait(5) == b.id
    recorder.close()
    with pytest.raises(InviteRejected) as caught:
        c.join(inv.long)
    assert caught.value.reason == "used" and not a.trust.is_trusted(c.id)

    # The recorded bytes of b's exchange, replayed to a new invite: the handshake uses
    # fresh keys, so message 3 fails and nothing is exchanged or paired.
    inv2 = a.invite()
    with socket.create_connection(("127.0.0.1", a.port), timeout=5) as s:
        s.sendall(b"".join(recorder.sent))
        s.settimeout(5)
        received = b""
        while chunk := s.recv(4096):
            received += chunk
    assert len(received) in (0, 2 + 195)  # at most message 2, then the close: no READY
    assert inv2.status == "open" and a.trust.is_trusted(b.id) and len(a.trust) == 1


class Recorder:
    """A TCP relay on loopback that records what the client sent."""

    def __init__(self, target):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = target
        self.sent: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        client, _ = self.listener.accept()
        server = socket.create_connection(self.target)
        pumps = [threading.Thread(target=self._pump, args=(client, server, True)),
                 threading.Thread(target=self._pump, args=(server, client, False))]
        for p in pumps:
            p.start()
        for p in pumps:
            p.join(10)
        client.close()
        server.close()

    def _pump(self, src, dst, record):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            if record:
                self.sent.append(data)
            dst.sendall(data)

    def close(self):
        self.thread.join(10)
        self.listener.close()


def test_an_unpaired_key_reaches_no_handler_in_invite_mode(make_node, tmp_path):
    a = make_node("a")
    ran = []
    a.expose("echo", lambda peer, args: ran.append(args) or args)
    inv = a.invite()
    code = parse_code(inv.long)
    stranger = LocalCredentials.from_identity(Identity.generate())
    hello = InviteHello.for_code(code).encode()
    import time

    for name in ("echo", "peernet.directory"):
        pipe = dial_invite(stranger, ("127.0.0.1", a.port), expected=a.id, hello=hello,
                           listen_port=0, deadline=time.monotonic() + 5,
                           max_message_size=1 << 20)
        with pipe:
            assert a._registry.active_link(stranger.peer_id) is None  # not a peer link
            pipe.send(encode_message(Call(1, name, "x")))  # a call instead of the PAKE
            with pytest.raises(peernet.ConnectionLost):
                while True:  # a refusal at most, then the close; never a reply
                    assert pipe.recv()[0] == 0x7F
    assert ran == []
    assert inv.status == "burned" and not a.trust.is_trusted(stranger.peer_id)
    assert a.list_peers() == []


def test_an_invite_link_holds_no_large_message(make_node, caplog):
    """Still pre-auth: an invite link reassembles at most 1 KiB, not max_message_size."""
    import time

    caplog.set_level(logging.DEBUG, logger="peernet")
    a = make_node("a")
    inv = a.invite()
    stranger = LocalCredentials.from_identity(Identity.generate())
    hello = InviteHello.for_code(parse_code(inv.long)).encode()
    pipe = dial_invite(stranger, ("127.0.0.1", a.port), expected=a.id, hello=hello,
                       listen_port=0, deadline=time.monotonic() + 5, max_message_size=1 << 20)
    with pipe:
        pipe.send(b"\x01" + bytes(70_000))  # two fragments: closed at the first
        with pytest.raises(peernet.ConnectionLost):
            pipe.recv()
    assert wait_until(lambda: inv.status == "burned")
    assert "exceeds max_message_size" in caplog.text  # at the first fragment


def test_a_hello_for_no_open_invite_is_refused_at_message3(make_node):
    a = make_node("a")
    stranger = LocalCredentials.from_identity(Identity.generate())
    import time

    with pytest.raises(InviteRejected, match="no open invite"):
        dial_invite(stranger, ("127.0.0.1", a.port), expected=a.id,
                    hello=InviteHello(KIND_LONG, invite_id=bytes(8)).encode(), listen_port=0,
                    deadline=time.monotonic() + 5, max_message_size=1 << 20)


def test_a_scanner_cannot_find_or_burn_a_long_code_invite(make_node):
    """A long-code attempt must name the invite's 64-bit id, which only the long code
    holds. A scanner that reaches the port and names numbers (hello version 1 named the
    nameplate, 1..99 first, with either kind), the invite's number as a short code (it
    has none), or random ids, is refused at message 3 every time, touching no invite:
    the real joiner pairs afterwards."""
    import os
    import time

    a, b = make_node("a"), make_node("b")
    inv = a.invite()  # no discovery: a long code only
    scanner = LocalCredentials.from_identity(Identity.generate())
    hellos = [bytes([1, 1, kind]) + n.to_bytes(2, "big") for n in range(1, 100)
              for kind in (1, 2)]
    hellos += [bytes([1, 2, 1]) + bytes(6) + inv.nameplate.to_bytes(2, "big")]
    hellos += [bytes([1, 2, 2]) + os.urandom(8) for _ in range(16)]
    for hello in hellos:
        with pytest.raises(InviteRejected, match="refused the invite"):
            pipe = dial_invite(scanner, ("127.0.0.1", a.port), expected=a.id, hello=hello,
                               listen_port=0, deadline=time.monotonic() + 5)
            pipe.close()  # only if it got in (the test fails): this burns the invite
    assert inv.status == "open" and a._invites.open_invites() == [inv]
    assert b.join(inv.long) == a.id and inv.wait(5) == b.id


def _knock(node: peernet.Node, hello: bytes):
    """A stranger's invite attempt on loopback: its pipe (READY came), or the refusal."""
    import time

    stranger = LocalCredentials.from_identity(Identity.generate())
    return dial_invite(stranger, ("127.0.0.1", node.port), expected=node.id, hello=hello,
                       listen_port=0, deadline=time.monotonic() + 5)


def test_a_short_code_attempt_from_off_the_lan_is_refused_at_message3(make_node):
    """A short code has 16 bits, so an attempt with one is taken only from a LAN the
    inviter announces its number on (its discovery's subnets: the one test UDP
    solicitations are answered by). Here the inviter's UDP discovery has no interface
    that 127.0.0.1 is on: a stranger naming the number from there is refused at
    message 3, touching nothing, and the long code still works from there."""
    a, b = make_node("a", discovery=peernet.UdpDiscovery(
        port=0, bind_host="127.0.0.1", interfaces=["inv2-no-such-if"])), make_node("b")
    inv = a.invite()
    assert inv.short is not None  # it announces (on no interface: nothing leaves the host)
    assert not a._discoveries[1].on_lan("127.0.0.1", "127.0.0.1")
    for attempt in range(3):
        with pytest.raises(InviteRejected, match="refused the invite"):
            _knock(a, InviteHello.for_code(parse_code(inv.short)).encode()).close()
    assert inv.status == "open"
    assert b.join(inv.long) == a.id and inv.wait(5) == b.id


def test_an_invite_without_a_short_code_on_request(lan, make_node):
    """node.invite(short=False): no short code even with discovery on, its number is not
    announced, an attempt naming it is refused at message 3; the long code works."""
    a, b = lan(2)
    inv = a.invite(short=False)
    assert inv.short is None and inv.nameplate not in a._invites.open_nameplates()
    with pytest.raises(InviteRejected, match="refused the invite"):
        _knock(a, InviteHello(KIND_SHORT, inv.nameplate).encode()).close()
    with pytest.raises(InviteNotFound):
        b.join(ShortCode(inv.nameplate, (1, 2)).text, timeout=1)
    assert inv.status == "open"
    with pytest.raises(TypeError):
        a.invite(short="no")
    assert b.join(inv.long) == a.id and inv.wait(5) == b.id
    remote = peernet.admin(a.data_dir).invite(short=False)
    assert remote.short is None and remote.long.startswith("pninv1")


def test_the_secrets_never_reach_the_logs(lan, caplog):
    a, b = lan(2)
    caplog.set_level(logging.DEBUG, logger="peernet")
    inv = a.invite(label="a")
    short, long = inv.short, inv.long
    secret = parse_code(long).secret
    b.join(short)
    inv2 = a.invite()
    b.join(inv2.long)
    inv3 = a.invite()
    with pytest.raises(InviteRejected):
        b.join(wrong_words(inv3.short))
    text = caplog.text
    assert "invite" in text  # the log did see the invites
    for code in (inv, inv2, inv3):
        parsed = parse_code(code.long)
        assert code.long not in text and code.long.upper() not in text
        assert parsed.secret.hex() not in text and repr(parsed.secret) not in text
        assert parsed.invite_id.hex() not in text and repr(parsed.invite_id) not in text
        words = code.short.split("-", 1)[1]
        assert words not in text
        assert code.long not in repr(code) and words not in repr(code)
    assert secret.hex() not in text


def test_cancel_and_close_end_invites(make_node):
    a, b = make_node("a"), make_node("b")
    inv = a.invite()
    assert inv.cancel() and not inv.cancel() and inv.status == "cancelled"
    with pytest.raises(InviteRejected) as caught:
        inv.wait(1)
    assert caught.value.reason == "cancelled"
    with pytest.raises(InviteRejected) as caught:
        b.join(inv.long)
    assert caught.value.reason == "cancelled"
    open_one = a.invite()
    with pytest.raises(InviteTimeout):
        open_one.wait(0.05)
    waited: list[object] = []
    waiter = threading.Thread(target=lambda: waited.append(_outcome(open_one.wait)))
    waiter.start()
    a.close()
    waiter.join(5)
    assert isinstance(waited[0], InviteRejected) and open_one.status == "cancelled"


def _outcome(fn):
    try:
        return fn()
    except peernet.PeerNetError as exc:
        return exc


def test_two_invites_nearby_with_the_same_number_are_an_error(lan, monkeypatch):
    a, c, b = lan(3)
    monkeypatch.setattr("peernet.invites._pick_nameplate", lambda taken: 7)
    first, second = a.invite(), c.invite()
    assert first.nameplate == second.nameplate == 7
    with pytest.raises(InviteAmbiguous) as caught:
        b.join(first.short)
    assert set(caught.value.peers) == {a.id, c.id}
    assert first.status == second.status == "open"  # nobody's invite was burned
    assert b.join(second.long) == c.id


def test_an_invite_picks_a_number_no_one_nearby_shows(lan):
    a, b = lan(2)
    taken = {b.invite().nameplate for _ in range(4)}
    assert wait_until(lambda: set(a._hints.invites()) == taken)
    assert all(a.invite().nameplate not in taken for _ in range(4))
    with pytest.raises(InviteError, match="at most 4"):
        a.invite()


def test_a_short_code_needs_discovery_and_bad_input_is_refused(make_node):
    a, b = make_node("a"), make_node("b")
    inv = a.invite()
    with pytest.raises(InviteNotFound, match="discovery"):
        b.join("7-amber-orbit")
    with pytest.raises(InvalidInviteCode):
        b.join("pninv1notacode")
    with pytest.raises(InviteError, match="this very node"):
        a.join(inv.long)
    with pytest.raises(ValueError):
        a.invite(ttl_s=0)
    with pytest.raises(ValueError):
        a.invite(label="bad\u200blabel")
    with pytest.raises(ValueError):
        b.join(inv.long, label="x\u202e")
    assert inv.status == "open"


def test_an_unreachable_inviter_is_not_found(make_node):
    a, b = make_node("a"), make_node("b")
    code = parse_code(a.invite().long)
    a.close()
    with pytest.raises(InviteNotFound, match="could not reach"):
        b.join(code.text, timeout=3)


def test_labels_fall_back_on_a_clash_and_say_so(tmp_path):
    trust = TrustStore.in_memory()
    pi, other, evil = (Identity.generate().peer_id for _ in range(3))
    trust.pair(other, label="kitchen")
    assert store_peer(trust, pi, "Kitchen") == (
        "Kitchen 2", "its proposed label 'Kitchen' looks like another peer's; stored as "
        "'Kitchen 2'")
    assert trust.get(pi).label == "Kitchen 2"
    label, note = store_peer(trust, evil, "evil\u202egood")
    assert label is None and "not taken" in note and trust.is_trusted(evil)
    assert store_peer(trust, pi, "whatever") == (
        "Kitchen 2", "already paired as 'Kitchen 2'; kept that label")
    assert store_peer(trust, Identity.generate().peer_id, None) == (None, None)
    # The fallback is decided by the label, not by words in an error message (which
    # quote the peer's text): a clash with a label that reads "mixes" is suffixed too.
    trust.pair(other, label="mixes")
    assert store_peer(trust, evil, "mixes")[0] == "mixes 2"
    label, note = store_peer(trust, Identity.generate().peer_id, "pаypal")
    assert label is None and "mixes Latin and Cyrillic" in note


def test_a_proposed_label_that_is_a_peer_id_is_not_taken():
    """Ids win over labels, so a label that is another peer's id would name that peer
    wherever it is used: `peernet join` would even print `call it with: peernet call
    <that id>`, sending the person's first call to someone else."""
    trust = TrustStore.in_memory()
    victim, inviter = (Identity.generate().peer_id for _ in range(2))
    trust.pair(victim, label="nas")
    for proposed in (str(victim), f"  {str(victim).upper()} "):
        label, note = store_peer(trust, inviter, proposed)
        assert label is None and "peer id" in note and trust.get(inviter).label is None


def test_invites_through_the_control_endpoint_of_running_nodes(lan):
    """Issue 21 item 4: peernet.admin(data_dir).invite() / .join() run in the node."""
    a, b = lan(2)
    site, laptop = peernet.admin(a.data_dir), peernet.admin(b.data_dir)
    invite = site.invite(label="site", ttl_s=60)
    assert invite.short is not None and invite.long.startswith("pninv1")
    assert [i.nameplate for i in a.invites] == [invite.nameplate]
    assert laptop.join(invite.short, label="laptop") == a.id
    assert invite.wait(5) == b.id and invite.peer_label == "laptop"
    assert b.trust.get(a.id).label == "site" and b.call("site", "echo", 1, timeout=2) == 1

    second = site.invite()
    with pytest.raises(InviteTimeout):
        second.wait(0.2)
    assert second.cancel() and not second.cancel()
    with pytest.raises(InviteRejected) as caught:
        second.wait(1)
    assert caught.value.reason == "cancelled"
    with pytest.raises(InviteRejected) as caught:
        laptop.join(second.long)
    assert caught.value.reason == "cancelled"


class _SilentInviter:
    """A loopback address where a join hangs: at ``connect`` (a listener whose one-slot
    backlog is full, so the kernel drops the SYN) or at ``handshake`` (accepted in the
    backlog, never answered). The long code names it with a fresh key."""

    def __init__(self, stage: str) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.filler: socket.socket | None = None
        if stage == "connect":
            self.filler = socket.create_connection(self.listener.getsockname(), timeout=5)
        port = self.listener.getsockname()[1]
        self.code = LongCode(Identity.generate().peer_id, bytes(8), bytes(16), port,
                             ("127.0.0.1",)).text

    def close(self) -> None:
        if self.filler is not None:
            self.filler.close()
        self.listener.close()


@pytest.mark.parametrize("stage", ["connect", "handshake"])
@pytest.mark.parametrize("through", ["api", "control"])
def test_close_ends_a_join_in_progress_at_once(make_node, stage, through):
    """A join waiting on its inviter (up to its timeout: an hour here) ends when the node
    closes, so close() neither waits for it nor leaves its thread running, and nothing
    is paired after the node let go of its data dir."""
    import time

    b = make_node("b")
    silent = _SilentInviter(stage)
    joiner = peernet.admin(b.data_dir) if through == "control" else b
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(
        _outcome(lambda: joiner.join(silent.code, timeout=3600))))
    try:
        thread.start()
        assert wait_until(lambda: b._invites._dials.busy)  # the join is dialling
        started = time.monotonic()
        b.close()
        closed_in = time.monotonic() - started
        thread.join(5)
        assert not thread.is_alive() and closed_in < 2.0, closed_in
        assert isinstance(outcome[0], (peernet.NodeClosed, peernet.ControlError)), outcome
        assert len(b.trust) == 0
    finally:
        silent.close()
        thread.join(5)


def test_a_node_posing_as_the_inviter_is_named_and_the_real_invite_survives(make_node,
                                                                             monkeypatch):
    """Anyone on the LAN can announce an invite's number. A joiner that hears only that
    node dials it, and its refusal ("wrong code") is not authenticated: the joiner's
    error must name the node that answered (so the person can tell it is not the
    inviter), and the real invite stays open for the real join."""
    pa, pm, pb = free_udp_ports(3)
    a = make_node("a", discovery=udp(pa))  # announces where nobody listens
    m = make_node("m", discovery=udp(pm, pb))
    b = make_node("b", discovery=udp(pb, pm))
    real = a.invite(label="a")
    monkeypatch.setattr("peernet.invites._pick_nameplate", lambda taken: real.nameplate)
    m.invite(label="a")  # the same number, other words
    with pytest.raises(InviteRejected) as caught:
        b.join(real.short)
    assert caught.value.reason == "wrong_code"
    assert m.id.short in str(caught.value) and f"invite {real.nameplate}" in str(caught.value)
    assert real.status == "open" and len(b.trust) == 0
    assert b.join(real.long) == a.id
