"""Issue 20, end to end on loopback through the public API: labels wherever a peer is
taken, peer proxies, the handler directory, call_many, and the asyncio facade."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

import peernet
from peernet import rpc
from peernet.directory import MAX_ENTRIES, MAX_SUMMARY, parse_directory
from peernet.handlers import is_reserved
from peernet._proto.messages import is_valid_handler_name
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

QUIET = dict(network_monitor=False)


def linked(make_node, *names, directory=True):
    """A caller node and callees that pair each other (labels = names), all linked."""
    me = make_node("me", **QUIET)
    others = []
    for name in names:
        other = make_node(name, directory=directory, **QUIET)
        other.pair(me.id, label="me")
        me.pair(other.id, label=name)
        me.connect(name, "127.0.0.1", other.port)
        others.append(other)
    for name in names:
        assert me.wait_for_peer(name, timeout=10)
    return me, others


def echo(peer, args):
    """Return what was sent."""
    return args


# -- 1. labels -------------------------------------------------------------------------------


def test_labels_work_wherever_a_peer_is_taken(make_node):
    me = make_node("me", **QUIET)
    pi = make_node("pi", **QUIET)
    got = []
    pi.expose("echo", echo)
    pi.expose("note", lambda peer, args: got.append(args))
    rpc.serve(pi, {"calc:add": lambda x, y: x + y})
    pi.pair(me.id, label="me")
    me.pair(pi.id, label="kitchen pi")

    me.connect("kitchen pi", "127.0.0.1", pi.port)
    assert me.wait_for_peer("Kitchen  PI", timeout=10)  # compared like the look-alike rule
    assert me.resolve("kitchen pi") == pi.id
    assert me.call("kitchen pi", "echo", 1) == 1
    assert me.call_async("kitchen pi", "echo", 2).result(5) == 2
    assert me.send("kitchen pi", "note", 3)
    assert wait_until(lambda: got == [3])
    assert me.peer("kitchen pi").echo(4) == 4
    assert rpc.call(me, "kitchen pi", "calc:add", 2, 3) == 5
    assert rpc.cast(me, "kitchen pi", "calc:add", 2, 3)
    assert "echo" in me.handlers_of("kitchen pi").names
    assert me.call_many(["kitchen pi"], "echo", 5) == {pi.id: 5}
    assert asyncio.run(me.acall("kitchen pi", "echo", 6)) == 6
    assert asyncio.run(me.asend("kitchen pi", "note", 7))
    assert asyncio.run(me.await_peer("kitchen pi", timeout=5))
    assert me.unpair("kitchen pi")
    with pytest.raises(peernet.UnknownPeer):
        me.call("kitchen pi", "echo")  # unpaired: the label is gone with it


def test_pair_takes_a_label_to_rename_a_paired_peer(make_node):
    me = make_node("me", **QUIET)
    pi = make_node("pi", **QUIET)
    me.pair(pi.id, label="kitchen pi")
    assert me.pair("Kitchen Pi", label="pi") == pi.id  # the label names the peer: renamed
    assert me.resolve("pi") == pi.id and me.trust.get(pi.id).label == "pi"
    assert len(me.trust) == 1
    with pytest.raises(peernet.UnknownPeer, match="did you mean 'pi'"):
        me.pair("pie", label="x")  # a label can never pair anyone new
    with pytest.raises(peernet.InvalidPeerId, match="checksum"):
        me.pair(str(pi.id)[:-1] + ("q" if str(pi.id)[-1] != "q" else "p"))


def test_ids_win_over_labels(make_node):
    me, (b, c) = linked(make_node, "b", "c")
    b.expose("who", lambda peer, args: "b")
    c.expose("who", lambda peer, args: "c")
    me.pair(b.id, label=str(c.id))  # a label that is another peer's id text
    assert me.call(str(c.id), "who") == "c"
    assert me.call(c.id, "who") == "c"


def test_ambiguous_labels_raise_naming_every_candidate(make_node, tmp_path):
    # pair() refuses look-alike labels, but a trust list written by an older version
    # (or by hand) may hold them: resolving one must refuse, never pick.
    one, two = make_node("one", **QUIET), make_node("two", **QUIET)
    data_dir = tmp_path / "me"
    data_dir.mkdir(mode=0o700)
    (data_dir / "trust.json").write_text(json.dumps({"version": 1, "peers": [
        {"id": str(one.id), "label": "pi", "added_at": 1.0},
        {"id": str(two.id), "label": "Pi", "added_at": 2.0}]}))
    (data_dir / "trust.json").chmod(0o600)
    me = peernet.Node(data_dir, host="127.0.0.1", **QUIET)
    try:
        for use in (lambda: me.call("pi", "echo"), lambda: me.send("PI", "echo"),
                    lambda: me.peer("pi"), lambda: me.call_many(["pi"], "echo"),
                    lambda: me.unpair("pi")):
            with pytest.raises(peernet.AmbiguousPeer) as info:
                use()
            assert isinstance(info.value, LookupError)
            assert isinstance(info.value, peernet.InvalidPeerId)
            assert one.id.short in str(info.value) and two.id.short in str(info.value)
            assert {pid for pid, _ in info.value.candidates} == {one.id, two.id}
        assert len(me.trust) == 2  # the refused unpair removed nothing
        assert me.resolve(str(one.id)) == one.id  # ids still work
    finally:
        me.close()


def test_unknown_labels_raise_with_close_matches_and_typed_ids_keep_their_message(make_node):
    me, _ = linked(make_node, "thermostat")
    with pytest.raises(peernet.UnknownPeer, match="did you mean 'thermostat'") as info:
        me.call("thermostatt", "echo")
    assert isinstance(info.value, LookupError) and isinstance(info.value, peernet.PeerNetError)
    typo = str(me.id)[:-1] + ("q" if str(me.id)[-1] != "q" else "p")
    with pytest.raises(peernet.InvalidPeerId, match="checksum") as info:
        me.call(typo, "echo")
    assert not isinstance(info.value, peernet.UnknownPeer)


def test_a_short_id_is_not_taken_but_names_the_whole_id_of_the_paired_peer(make_node):
    """Listings show short ids; one pasted where a peer is taken is refused (no prefix
    matching), with the whole id of the one paired peer it starts, ready to paste."""
    me = make_node("me")
    a, b = make_node("a"), make_node("b")
    me.pair(a.id, label="pi")
    me.pair(b.id)
    for peer, named in ((a, "paired peer 'pi'"), (b, "the paired peer starting so")):
        with pytest.raises(peernet.InvalidPeerId) as info:
            me.unpair(peer.id.short)
        assert f"{named} has the whole id {peer.id}" in str(info.value)
        assert "cut short" in str(info.value)
    with pytest.raises(peernet.InvalidPeerId) as info:
        me.call(str(me.id)[:12], "echo")  # starts no paired peer's id
    assert "has the whole id" not in str(info.value)
    assert me.trust.is_trusted(a.id) and me.trust.is_trusted(b.id)


# -- 3. the handler directory ---------------------------------------------------------------


def test_an_unpaired_key_cannot_list_handlers(make_node):
    b = make_node("b", **QUIET)
    asked = []
    b.expose("status", echo, authorize=lambda peer: asked.append(peer) or True)
    stranger = make_node("stranger", **QUIET)
    with pytest.raises(peernet.NotPaired):
        stranger.handlers_of(b.id)  # not even sent: it is not paired here either
    stranger.pair(b.id, label="b")  # one-sided: b never paired the stranger
    stranger.connect("b", "127.0.0.1", b.port)
    with pytest.raises(peernet.PeerUnavailable):
        stranger.handlers_of("b", timeout=1.0)  # the handshake refuses it
    with pytest.raises(peernet.PeerUnavailable):
        stranger.call("b", "peernet.directory", timeout=0.5)
    assert asked == []  # b's directory never ran for it (it would have asked authorize)


def test_the_directory_hides_a_handler_whose_authorize_refuses_the_asker(make_node):
    server = make_node("server", **QUIET)
    admin, guest = make_node("admin", **QUIET), make_node("guest", **QUIET)
    for client in (admin, guest):
        server.pair(client.id, label=client.data_dir.name)
        client.pair(server.id, label="server")
        client.connect("server", "127.0.0.1", server.port)

    @server.expose("status")
    def status(peer, args):
        """Is the server up?

        Longer text that is not listed."""
        return "ok"

    @server.expose("restart", authorize=lambda peer: peer == admin.id)
    def restart(peer, args):
        """Restart the service."""

    def broken(peer):
        raise RuntimeError("policy bug")

    server.expose("broken", echo, authorize=broken)
    server.expose("truthy", echo, authorize=lambda peer: "yes")  # only True allows

    assert [(h.name, h.doc) for h in admin.handlers_of("server")] == [
        ("restart", "Restart the service."), ("status", "Is the server up?")]
    assert guest.handlers_of("server").names == ["status"]
    assert "restart" not in dir(guest.peer("server"))
    with pytest.raises(peernet.Forbidden):  # hidden, not secret (guides/security.md)
        guest.call("server", "restart")
    assert admin.handlers_of("server").names == ["restart", "status"]  # no built-ins listed


def test_directory_false_refuses_directory_requests(make_node):
    me, (pi,) = linked(make_node, "pi", directory=False)
    pi.expose("temperature", echo)
    with pytest.raises(peernet.NoSuchHandler, match="directory=False"):
        me.handlers_of("pi")
    with pytest.raises(peernet.NoSuchHandler):
        me.call("pi", "peernet.directory")
    proxy = me.peer("pi")
    assert "temperature" not in dir(proxy)
    with pytest.raises(peernet.NoSuchHandler) as info:
        proxy.temperatur()
    assert info.value.suggestions == ()  # nothing to suggest from, and no harm done
    assert proxy.temperature(1) == 1


def test_reserved_names_cannot_be_exposed_but_are_valid_on_the_wire(make_node):
    node = make_node("n", **QUIET)
    for name in ("peernet.directory", "peernet.anything", "PeerNet.directory"):
        assert is_valid_handler_name(name) and is_reserved(name)
        with pytest.raises(peernet.InvalidHandlerName, match="reserved"):
            node.expose(name, echo)
    node.expose("peernetwork", echo)  # only the 'peernet.' namespace is reserved
    assert node.settings and "peernet.directory" not in repr(node)


def test_no_such_handler_names_close_matches_from_the_directory(make_node):
    me, (pi,) = linked(make_node, "pi")
    pi.expose("temperature", echo)
    pi.expose("humidity", echo)
    pi.expose("temper_secret", echo, authorize=lambda peer: False)
    with pytest.raises(peernet.NoSuchHandler, match="did you mean 'temperature'\\?") as info:
        me.call("pi", "temprature")
    assert info.value.suggestions == ("temperature",)  # the hidden handler is not named
    with pytest.raises(peernet.NoSuchHandler) as info:
        me.call("pi", "zzzz")
    assert info.value.suggestions == () and "did you mean" not in str(info.value)


def test_a_directory_that_never_answers_costs_at_most_a_second_and_masks_nothing(make_node):
    me, (pi,) = linked(make_node, "pi")
    release = threading.Event()
    pi.expose("temperature", echo, authorize=lambda peer: release.wait(10) or True)
    try:
        started = time.monotonic()
        with pytest.raises(peernet.NoSuchHandler) as info:
            me.call("pi", "temprature", timeout=5.0)
        assert time.monotonic() - started < 2.5  # the directory fetch gave up after 1 s
        assert info.value.suggestions == () and "exposes no handler" in str(info.value)
    finally:
        release.set()


def test_directory_text_from_a_peer_is_bounded_and_escaped(make_node):
    me, (pi,) = linked(make_node, "pi")

    def hostile(peer, args):  # a peer whose directory is what an attacker would send
        return {"handlers": [[f"h{i:05}", "\x1b[2J\u202e" + "x" * 1000]
                             for i in range(600)], "truncated": False}

    pi._handlers.install_builtin("peernet.directory", hostile)
    listed = me.handlers_of("pi")
    assert len(listed) == MAX_ENTRIES and listed.truncated
    assert all(len(h.doc) <= MAX_SUMMARY + 20 and "\x1b" not in h.doc and "\u202e" not in h.doc
               for h in listed)
    assert "\x1b" not in repr(listed) and "\x1b" not in listed._repr_html_()
    for reply in (None, [], {"handlers": "x"}, {"handlers": [["_bad", ""]]},
                  {"handlers": [["ok", 5]]}, {"handlers": [["a", "b", "c"]]}):
        with pytest.raises(peernet.CallError, match="malformed"):
            parse_directory(reply, pi.id)


def test_the_callee_lists_first_docstring_lines_only_cut_short(make_node):
    me, (pi,) = linked(make_node, "pi")

    def long_doc(peer, args):
        pass

    long_doc.__doc__ = "\n\n   " + "w" * 500 + "\nsecond line"
    pi.expose("long", long_doc)
    pi.expose("bare", lambda peer, args: None)
    docs = {h.name: h.doc for h in me.handlers_of("pi")}
    assert docs["bare"] == "" and len(docs["long"]) == MAX_SUMMARY
    assert "second" not in docs["long"]


# -- 2. proxies ------------------------------------------------------------------------------


def test_proxy_arg_mapping_rules(make_node):
    me, (pi,) = linked(make_node, "pi")
    calls = []
    pi.expose("echo", lambda peer, args: calls.append(args) or args)
    pi.expose("sensor.read", echo)
    proxy = me.peer("pi")
    assert proxy.echo() is None                      # no args -> None
    assert proxy.echo("C") == "C"                    # one positional -> that value
    assert proxy.echo([1, 2]) == [1, 2]
    assert proxy.echo(25, 17) == [25, 17]            # several positional -> a list
    assert proxy.echo(x=1, y=2) == {"x": 1, "y": 2}  # keywords only -> a dict
    assert proxy.echo(timeout=3) == {"timeout": 3}   # no keyword is the proxy's own
    before = len(calls)
    with pytest.raises(TypeError, match="not both"):
        proxy.echo(1, y=2)                           # both -> refused, nothing sent
    assert len(calls) == before
    assert proxy["sensor.read"](7) == 7              # any handler name by item
    assert proxy.echo.send(8) is True
    assert proxy.echo.call_async(9).result(5) == 9
    assert asyncio.run(proxy.echo.acall(a=1)) == {"a": 1}
    assert proxy.call("echo", [1], timeout=2) == [1]
    with pytest.raises(AttributeError):
        proxy._private
    with pytest.raises(AttributeError):
        proxy.__wrapped__
    with pytest.raises(peernet.InvalidHandlerName):
        proxy["_x"]


def test_proxy_status_wait_repr_and_timeout(make_node):
    me = make_node("me", **QUIET)
    pi = make_node("pi", **QUIET)
    pi.pair(me.id, label="me")
    me.pair(pi.id, label="<b>pi</b>")
    proxy = me.peer("<b>pi</b>", timeout=0.5)
    assert proxy.id == pi.id and proxy.label == "<b>pi</b>"
    assert proxy.status == "unknown" and not proxy.online
    assert dir(proxy)  # offline: no fetch, no error
    assert "<b>pi</b>" not in proxy._repr_html_()  # the label is escaped
    me.connect(proxy.id, "127.0.0.1", pi.port)
    assert proxy.wait(10) and proxy.status == "online"
    assert "online" in repr(proxy) and pi.id.short in repr(proxy)
    release = threading.Event()
    pi.expose("slow", lambda peer, args: release.wait(10))
    try:
        started = time.monotonic()
        with pytest.raises(peernet.CallTimeout):
            proxy.slow()  # the proxy's timeout, 0.5 s
        assert time.monotonic() - started < 3
    finally:
        release.set()
    me.unpair(pi.id)
    assert proxy.status == "unpaired"


def test_dir_of_a_proxy_lists_the_handlers_it_may_call(make_node):
    me, (pi,) = linked(make_node, "pi")
    pi.expose("temperature", echo)
    pi.expose("sensor.read", echo)   # not an identifier: not an attribute
    pi.expose("reboot", echo, authorize=lambda peer: False)
    names = dir(me.peer("pi"))
    assert "temperature" in names and "call" in names
    assert "reboot" not in names and "sensor.read" not in names
    html = me.peer("pi")._repr_html_()
    assert "temperature" in html and "reboot" not in html


# -- 4. call_many ----------------------------------------------------------------------------


def test_call_many_over_20_peers_with_one_silent_peer(make_node):
    me = make_node("me", **QUIET)
    release = threading.Event()
    students = []
    for i in range(20):
        node = make_node(f"s{i}", **QUIET)
        if i == 7:
            node.expose("answer", lambda peer, args: release.wait(30))  # silent
        else:
            node.expose("answer", lambda peer, args, i=i: args + i)
        node.pair(me.id)
        me.pair(node.id, label=f"s{i}")
        me.connect(node.id, "127.0.0.1", node.port)
        students.append(node)
    try:
        assert all(me.wait_for_peer(s.id, timeout=10) for s in students)
        timeout = 4.0
        started = time.monotonic()
        arrivals = {}
        for pid, value in me.call_many_iter(None, "answer", 100, timeout=timeout):
            arrivals[pid] = (time.monotonic() - started, value)
        assert len(arrivals) == 20
        silent = students[7].id
        assert isinstance(arrivals[silent][1], peernet.CallTimeout)
        others = {pid: v for pid, v in arrivals.items() if pid != silent}
        assert sorted(v for _, v in others.values()) == sorted(100 + i for i in range(20)
                                                              if i != 7)
        assert max(t for t, _ in others.values()) < timeout / 2  # well under the timeout
        assert arrivals[silent][0] < timeout + 1.0

        results = me.call_many([s.id for s in students], "answer", 1, timeout=1.0)
        assert list(results) == [s.id for s in students]  # the order asked for
        assert isinstance(results[silent], peernet.CallTimeout)
        assert all(results[s.id] == 1 + i for i, s in enumerate(students) if i != 7)
    finally:
        release.set()


def test_call_many_bounds_concurrency_and_returns_failures_as_values(make_node):
    me, nodes = linked(make_node, *[f"w{i}" for i in range(6)])
    lock, active, peak = threading.Lock(), [0], [0]

    def work(peer, args):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        threading.Event().wait(0.1)  # hold the slot a moment
        with lock:
            active[0] -= 1
        return args

    for node in nodes:
        node.expose("work", work)
    nodes[5].revoke("work")
    results = me.call_many([f"w{i}" for i in range(6)], "work", "x", max_concurrency=2)
    assert peak[0] <= 2
    assert [results[n.id] for n in nodes[:5]] == ["x"] * 5
    assert isinstance(results[nodes[5].id], peernet.NoSuchHandler)
    with pytest.raises(TypeError):
        me.call_many("w1", "work")  # one peer, not a list of them
    with pytest.raises(peernet.UnknownPeer):
        me.call_many(["w1", "nobody"], "work")
    with pytest.raises(peernet.EncodeError):
        me.call_many(None, "work", {1, 2})


def test_call_many_with_none_asks_the_online_peers_only(make_node):
    me, (a, b) = linked(make_node, "a", "b")
    offline = make_node("off", **QUIET)
    me.pair(offline.id, label="off")
    for node in (a, b):
        node.expose("ping", lambda peer, args: "pong")
    assert me.call_many(None, "ping") == {a.id: "pong", b.id: "pong"}


# -- 5. asyncio ------------------------------------------------------------------------------


def test_an_acall_cancelled_mid_flight_leaves_no_pending_entry(make_node):
    me, (pi,) = linked(make_node, "pi")
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow(peer, args):
        started.set()
        release.wait(10)
        finished.set()
        return "late"

    pi.expose("slow", slow)
    pi.expose("echo", echo)
    link = me._registry.active_link(pi.id)

    async def main():
        task = asyncio.create_task(me.acall("pi", "slow", timeout=30))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, started.wait, 10)
        assert link.pending_calls == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert link.pending_calls == 0  # removed at once, not when the timeout fires
        release.set()
        assert await loop.run_in_executor(None, finished.wait, 10)
        assert await me.acall("pi", "echo", "fresh") == "fresh"  # the late reply was dropped

    asyncio.run(main())
    assert link.pending_calls == 0 and me._registry.active_link(pi.id) is link


def test_cancelling_a_call_async_future_drops_its_pending_entry(make_node):
    me, (pi,) = linked(make_node, "pi")
    release = threading.Event()
    pi.expose("slow", lambda peer, args: release.wait(10))
    link = me._registry.active_link(pi.id)
    try:
        fut = me.call_async("pi", "slow", timeout=30)
        assert link.pending_calls == 1
        assert fut.cancel()
        assert link.pending_calls == 0
    finally:
        release.set()


def test_a_call_cancelled_while_its_link_is_being_set_up_is_never_sent(make_node):
    """Cancelled (an asyncio task, a call_async Future) before any link was up: the
    waiting ends at once and the call is not sent when the link comes up later."""
    me = make_node("me", **QUIET)
    pi = make_node("pi", **QUIET)
    ran = []
    pi.expose("work", lambda peer, args: ran.append(args) or args)
    pi.pair(me.id, label="me")
    me.pair(pi.id, label="pi")
    with socket.socket() as blackhole:  # accepts TCP, never answers the handshake
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen()
        me.connect("pi", "127.0.0.1", blackhole.getsockname()[1])
        fut = me.call_async("pi", "work", "future", timeout=30)

        async def main():
            task = asyncio.create_task(me.acall("pi", "work", "task", timeout=30))
            await asyncio.sleep(0)  # the task runs up to its await: the call is started
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert fut.cancel()
        waiting = lambda: [t for t in threading.enumerate() if t.name == "peernet-call"]  # noqa: E731
        assert wait_until(lambda: not waiting(), timeout_s=3)  # not held for 30 s
        pi.connect("me", "127.0.0.1", me.port)  # now a link comes up (pi dials in)
        assert me.wait_for_peer("pi", timeout=10)
        assert me.call("pi", "work", "after") == "after"
        assert pi.call("me", "peernet.directory") is not None  # one more round trip
    assert ran == ["after"]


def test_acall_and_friends_under_asyncio_run_and_a_loop_already_running(make_node):
    me, (pi,) = linked(make_node, "pi")
    pi.expose("temperature", lambda peer, args: 21.5)

    async def session():
        assert await me.await_peer("pi", timeout=5)
        assert await me.acall("pi", "temperature") == 21.5
        assert await me.asend("pi", "temperature") is True
        with pytest.raises(peernet.NoSuchHandler, match="did you mean 'temperature'"):
            await me.acall("pi", "temprature")
        results = await asyncio.gather(*(me.acall("pi", "temperature") for _ in range(20)))
        return results

    assert asyncio.run(session()) == [21.5] * 20
    # A loop that is already running in another thread (as in a Jupyter kernel or a
    # FastAPI server): the coroutines run on it as they are.
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, name="test-loop")
    runner.start()
    try:
        assert asyncio.run_coroutine_threadsafe(session(), loop).result(20) == [21.5] * 20
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()


def test_await_peer_waits_without_blocking_the_loop(make_node):
    me = make_node("me", **QUIET)
    pi = make_node("pi", **QUIET)
    pi.pair(me.id)
    me.pair(pi.id, label="pi")
    nowhere = make_node("nowhere", **QUIET)
    me.pair(nowhere.id, label="nowhere")  # paired, no address: it never comes up

    async def main():
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        me.connect("pi", "127.0.0.1", pi.port)
        assert await me.await_peer("pi", timeout=10)
        started = time.monotonic()
        assert await me.await_peer("nowhere", timeout=0.3) is False
        assert time.monotonic() - started < 2
        stop.set()
        await tick_task
        return ticks

    assert asyncio.run(main()) > 0
    with pytest.raises(peernet.NotPaired):
        asyncio.run(me.await_peer(make_node("stranger", **QUIET).id))
