"""peernet.rpc: opt-in remote calls of an explicit allow-list, end to end on loopback.

Attacks go through the raw wire (``node.call(peer, "rpc", [...])``), as a hostile peer
would, since ``rpc.call`` already refuses malformed names before sending. The callee runs
in this process, so "no side effect" is measured directly: a canary file never appears,
no module is imported, and no attribute is looked up on a peer-supplied name.
"""

from __future__ import annotations

import functools
import os
import sys
import threading

import pytest

import peernet
from peernet import rpc
from tests.conftest import wait_until
from tests.procs import rpc_canary

pytestmark = pytest.mark.timeout(30)

CANARY_PING = "tests.procs.rpc_canary:ping"
HERE = __name__  # functions below are listed as f"{HERE}:name"


# -- functions the callee lists -------------------------------------------------------------


def add(x, y):
    return x + y


def describe(a, b=2, *, sep="-", node="n", peer="p", name="x"):
    return sep.join(str(v) for v in (a, b, node, peer, name))


def divide(x, y):
    return x / y


def make_set():
    return [1, {2, 3}]


def with_timeout(timeout):
    return timeout


received: list[object] = []


def record(value):
    received.append(value)


class Service:
    def method(self):
        return "method"


def _private():
    return "private"


@pytest.fixture(autouse=True)
def _reset():
    received.clear()
    rpc_canary.looked_up.clear()


@pytest.fixture
def linked(pair_of_nodes):
    """Two nodes with a live link both ways."""
    a, b = pair_of_nodes
    assert a.wait_for_peer(b.id, timeout=5.0)
    assert b.wait_for_peer(a.id, timeout=5.0)
    return a, b


# -- allow-list builder (set-up time, no network) -------------------------------------------


def test_allowlist_names_function_objects_and_resolves_strings_once():
    table = rpc.Allowlist([add, "os.path:join", CANARY_PING, add])
    assert table.names == tuple(sorted([f"{HERE}:add", "os.path:join", CANARY_PING]))
    assert f"{HERE}:add" in table and "os.path:join" in table and len(table) == 3
    assert "os:system" not in table and 42 not in table and ["x"] not in table


def test_allowlist_mapping_form_lists_methods_and_partials_under_chosen_names():
    svc = Service()
    table = rpc.Allowlist({"svc:method": svc.method, "calc:inc": functools.partial(add, 1)})
    assert table.names == ("calc:inc", "svc:method")


@pytest.mark.parametrize("item", [
    lambda: 1,                    # <lambda>
    Service.method,               # Service.method: dotted qualname
    Service().method,             # bound method
    _private,                     # leading underscore
    __import__,                   # builtins:__import__
    functools.partial(add, 1),    # no module-level name
    Service(),                    # not callable at all
])
def test_allowlist_refuses_objects_without_a_public_module_level_name(item):
    with pytest.raises((ValueError, TypeError)):
        rpc.Allowlist([item])


def test_allowlist_refuses_nested_functions():
    def inner():
        return None

    with pytest.raises(ValueError, match="nested"):
        rpc.Allowlist([inner])


@pytest.mark.parametrize("spec", [
    "", "os", "os:", ":system", "os:path.join", "os.path:join.__globals__", "os:__dict__",
    "x:__class__", "builtins:__import__", "os:_exit", "__future__:annotations", "os..path:join",
    "os:system ", " os:system", "os:system\n", "os::system", "os:sys-tem", "\u043es:system",
    "os/path:join", "os:1abc", "a" * 300 + ":f",
])
def test_allowlist_refuses_malformed_names(spec):
    with pytest.raises(ValueError):
        rpc.Allowlist([spec])
    with pytest.raises(ValueError):
        rpc.Allowlist({spec: add})


@pytest.mark.parametrize("spec, why", [
    ("no_such_module_xyz:f", "cannot be imported"),
    ("os:no_such_function_xyz", "no attribute"),
    ("os:sep", "not callable"),
])
def test_allowlist_refuses_unresolvable_strings_at_setup(spec, why):
    with pytest.raises(ValueError, match=why):
        rpc.Allowlist([spec])


def test_allowlist_refuses_a_single_string_or_function_and_odd_items():
    with pytest.raises(TypeError):
        rpc.Allowlist("os.path:join")
    with pytest.raises(TypeError):
        rpc.Allowlist(add)
    with pytest.raises(TypeError):
        rpc.Allowlist([42])
    with pytest.raises(TypeError):
        rpc.Allowlist([b"os.path:join"])
    with pytest.raises(TypeError, match="not callable"):
        rpc.Allowlist({"calc:x": 3})


def test_allowlist_refuses_two_callables_under_one_name():
    assert rpc.Allowlist([add, f"{HERE}:add"]).names == (f"{HERE}:add",)  # same object

    def impostor(x, y):
        return None

    impostor.__qualname__ = "add"  # names itself f"{HERE}:add" but is another function
    with pytest.raises(ValueError, match="two different"):
        rpc.Allowlist([add, impostor])
    with pytest.raises(ValueError, match="two different"):
        rpc.Allowlist([impostor, f"{HERE}:add"])


def test_serve_checks_the_handler_name(make_node):
    node = make_node()
    with pytest.raises(peernet.InvalidHandlerName):
        rpc.serve(node, [add], handler="_rpc")


# -- caller-side checks: nothing is sent --------------------------------------------------


@pytest.fixture
def spy(linked):
    """b's "rpc" handler records every request that arrives; returns (a, b, seen)."""
    a, b = linked
    seen: list[object] = []
    b.expose("rpc", lambda peer, request: seen.append(request) or ["ok", None])
    yield a, b, seen
    # A marker cast last: sends are handled in order, so once it is seen, any earlier
    # send would have been too.
    assert rpc.cast(a, b.id, "marker:end")
    assert wait_until(lambda: seen and seen[-1] == ["marker:end", [], {}])
    assert seen == [["marker:end", [], {}]], "a refused request reached the peer"


@pytest.mark.parametrize("name", ["os", "os:path.join", "os:__dict__", "__import__",
                                  "builtins:__import__", "", "os:system;"])
def test_call_and_cast_refuse_malformed_names_before_sending(spy, name):
    a, b, _ = spy
    with pytest.raises(ValueError):
        rpc.call(a, b.id, name)
    with pytest.raises(ValueError):
        rpc.cast(a, b.id, name)


@pytest.mark.parametrize("name", [None, 42, b"os:system", ["os:system"]])
def test_call_and_cast_refuse_non_str_names(spy, name):
    a, b, _ = spy
    with pytest.raises(TypeError):
        rpc.call(a, b.id, name)
    with pytest.raises(TypeError):
        rpc.cast(a, b.id, name)


def test_call_refuses_private_kwargs_and_non_cbor_args_before_sending(spy):
    a, b, _ = spy
    with pytest.raises(ValueError):
        rpc.call(a, b.id, f"{HERE}:describe", 1, _secret=1)
    with pytest.raises(ValueError):
        rpc.cast(a, b.id, f"{HERE}:describe", 1, **{"a b": 1})
    with pytest.raises(peernet.EncodeError):
        rpc.call(a, b.id, f"{HERE}:add", {1, 2}, 3)
    with pytest.raises(peernet.EncodeError):
        rpc.cast(a, b.id, f"{HERE}:add", 1, y=object())


# -- happy paths ------------------------------------------------------------------------------


def test_call_runs_listed_function_objects_and_strings(linked):
    a, b = linked
    table = rpc.serve(b, [add, "os.path:join", CANARY_PING])
    assert isinstance(table, rpc.Allowlist)
    assert rpc.call(a, b.id, f"{HERE}:add", 2, 3) == 5
    assert rpc.call(a, b.id, "os.path:join", "x", "y", timeout=5.0) == os.path.join("x", "y")
    assert rpc.call(a, b.id, CANARY_PING, b"\x00") == ["pong", b"\x00"]
    assert rpc.call(a, str(b.id), f"{HERE}:add", (1,), [2]) == [1, 2]  # a tuple arrives as a list


def test_strings_are_resolved_once_at_setup(linked, monkeypatch):
    a, b = linked
    rpc.serve(b, [CANARY_PING])
    monkeypatch.setattr(rpc_canary, "ping", lambda value=None: "replaced later")
    assert rpc.call(a, b.id, CANARY_PING, 1) == ["pong", 1]


def test_call_passes_keyword_arguments_including_node_peer_and_name(linked):
    a, b = linked
    rpc.serve(b, [describe])
    assert rpc.call(a, b.id, f"{HERE}:describe", 1) == "1-2-n-p-x"
    assert rpc.call(a, b.id, f"{HERE}:describe", 1, b=3, sep="+", node="N", peer="P",
                    name="X") == "1+3+N+P+X"


def test_timeout_and_handler_are_call_options_and_reach_the_function_positionally(linked):
    a, b = linked
    rpc.serve(b, [with_timeout], handler="tools")
    assert rpc.call(a, b.id, f"{HERE}:with_timeout", 7, timeout=5.0, handler="tools") == 7
    with pytest.raises(peernet.NoSuchHandler):
        rpc.call(a, b.id, f"{HERE}:with_timeout", 7)  # nothing served under "rpc"


def test_call_times_out_on_a_slow_function(linked):
    a, b = linked
    release = threading.Event()
    rpc.serve(b, {"slow:wait": lambda: release.wait(10.0)})
    try:
        with pytest.raises(peernet.CallTimeout):
            rpc.call(a, b.id, "slow:wait", timeout=0.2)
    finally:
        release.set()


def test_exceptions_in_the_function_arrive_as_remote_error_with_the_type_name_only(linked):
    a, b = linked
    rpc.serve(b, [divide, add])
    with pytest.raises(peernet.RemoteError) as info:
        rpc.call(a, b.id, f"{HERE}:divide", 1, 0)
    assert info.value.type_name == "ZeroDivisionError"
    with pytest.raises(peernet.RemoteError) as info:
        rpc.call(a, b.id, f"{HERE}:add", 1)  # wrong arity: a TypeError on the callee
    assert info.value.type_name == "TypeError"
    assert rpc.call(a, b.id, f"{HERE}:divide", 1, 2) == 0.5


def test_a_result_that_is_not_cbor_data_is_a_clear_remote_error_and_the_callee_lives_on(linked):
    a, b = linked
    rpc.serve(b, [make_set, add])
    with pytest.raises(peernet.RemoteError) as info:
        rpc.call(a, b.id, f"{HERE}:make_set")
    assert info.value.type_name == "EncodeError"
    assert rpc.call(a, b.id, f"{HERE}:add", 1, 1) == 2


def test_an_unencodable_result_from_a_plain_handler_is_also_a_remote_error(linked):
    """What Node._serve_call does on its own, for a handler that is not rpc's."""
    a, b = linked
    b.expose("plain", lambda peer, args: {1, 2})
    with pytest.raises(peernet.RemoteError) as info:
        a.call(b.id, "plain")
    assert info.value.type_name == "EncodeError"


def test_cast_is_delivered_and_returns_true(linked):
    a, b = linked
    rpc.serve(b, [record])
    assert rpc.cast(a, b.id, f"{HERE}:record", "one") is True
    assert rpc.cast(a, b.id, f"{HERE}:record", value="two") is True
    assert wait_until(lambda: received == ["one", "two"])


def test_cast_to_an_offline_peer_returns_false(make_node):
    a, b = make_node("a"), make_node("b")
    a.pair(b.id)
    rpc.serve(b, [record])
    assert rpc.cast(a, b.id, f"{HERE}:record", 1) is False


def test_serving_again_replaces_the_allow_list_and_revoke_stops_it(linked):
    a, b = linked
    rpc.serve(b, [add])
    assert rpc.call(a, b.id, f"{HERE}:add", 1, 2) == 3
    rpc.serve(b, [divide])
    with pytest.raises(peernet.NoSuchHandler, match="no such function"):
        rpc.call(a, b.id, f"{HERE}:add", 1, 2)
    assert rpc.call(a, b.id, f"{HERE}:divide", 4, 2) == 2
    assert b.revoke("rpc") is True
    with pytest.raises(peernet.NoSuchHandler):
        rpc.call(a, b.id, f"{HERE}:divide", 4, 2)


# -- who may call what ---------------------------------------------------------------------


def test_authorize_runs_per_peer_and_only_true_allows(linked):
    a, b = linked
    verdict: list[object] = [False]
    seen: list[peernet.PeerId] = []

    def authorize(peer):
        seen.append(peer)
        return verdict[0]

    rpc.serve(b, [add], authorize=authorize)
    for value in (False, None, 1, "yes", [True]):
        verdict[0] = value
        with pytest.raises(peernet.Forbidden):
            rpc.call(a, b.id, f"{HERE}:add", 1, 2)
    verdict[0] = True
    assert rpc.call(a, b.id, f"{HERE}:add", 1, 2) == 3
    assert set(seen) == {a.id}


def test_a_typo_is_no_such_function_for_an_authorized_caller_and_forbidden_otherwise(linked):
    a, b = linked
    allowed = [True]
    rpc.serve(b, [add], authorize=lambda peer: allowed[0])
    with pytest.raises(peernet.NoSuchHandler) as caught:
        rpc.call(a, b.id, f"{HERE}:ad", 1, 2)
    assert "no such function" in str(caught.value) and f"{HERE}:ad" in str(caught.value)
    assert not isinstance(caught.value, peernet.Forbidden)
    allowed[0] = False  # an unauthorized caller learns nothing about what exists
    with pytest.raises(peernet.Forbidden):
        rpc.call(a, b.id, f"{HERE}:ad", 1, 2)
    with pytest.raises(peernet.Forbidden):
        rpc.call(a, b.id, f"{HERE}:add", 1, 2)


def test_an_authorize_that_raises_forbids(linked):
    a, b = linked
    rpc.serve(b, [add], authorize=lambda peer: 1 / 0)
    with pytest.raises(peernet.Forbidden):
        rpc.call(a, b.id, f"{HERE}:add", 1, 2)


def test_granting_on_one_side_gives_the_other_side_nothing(linked):
    a, b = linked
    rpc.serve(b, [add])
    assert rpc.call(a, b.id, f"{HERE}:add", 1, 2) == 3
    with pytest.raises(peernet.NoSuchHandler):  # a serves nothing
        rpc.call(b, a.id, f"{HERE}:add", 1, 2)
    rpc.serve(a, [divide])
    with pytest.raises(peernet.NoSuchHandler):  # b's add is not on a's list
        rpc.call(b, a.id, f"{HERE}:add", 1, 2)
    with pytest.raises(peernet.NoSuchHandler):  # a's divide is not on b's list
        rpc.call(a, b.id, f"{HERE}:divide", 1, 2)
    assert rpc.call(b, a.id, f"{HERE}:divide", 1, 2) == 0.5


# -- attacks, over the raw wire ------------------------------------------------------------


def raw(a, b, request):
    """What a hostile peer can do: any CBOR as the rpc handler's args."""
    return a.call(b.id, "rpc", request)


def attacks(canary):
    touch = f"touch {canary}"
    names = [
        "os:system", "builtins:eval", "builtins:exec", "__import__", "builtins:__import__",
        "importlib:import_module", "os:__dict__", "x:__class__", f"{HERE}:__class__",
        "os:path.join", "os.path:join.__globals__", f"{HERE}:add.__globals__",
        "tests.procs.rpc_canary:touch", "tests.procs.rpc_canary:secret",
        "tests.procs.rpc_canary:__getattr__", "tests.procs.rpc_canary:ping.__globals__",
        "tests.procs.rpc_canary:ping\n", " tests.procs.rpc_canary:ping",
        "tests.procs.rpc_canary\uff1aping", "TESTS.procs.rpc_canary:ping",
        "colorsys:hls_to_rgb", "this:s", "subprocess:run", "", ":", "os", "a" * 10_000,
    ]
    requests = []
    for name in names:
        for arg in (touch, canary, "colorsys"):
            requests.append([name, [arg], {}])
    for name in [None, 42, 1.5, True, b"os:system", ["os:system"], {"os": "system"}]:
        requests.append([name, [touch], {}])
    requests += [
        None, "os:system", 42, b"", {}, {"name": "os:system"}, [], ["os:system"],
        ["os:system", [touch]], ["os:system", [touch], {}, None],
        [CANARY_PING, [touch], {}, "extra"], [CANARY_PING, touch, {}],
        [CANARY_PING, {"value": 1}, {}], [CANARY_PING, [], []], [CANARY_PING, [], None],
        [CANARY_PING, [], {"_value": 1}], [CANARY_PING, [], {"__class__": 1}],
        [CANARY_PING, [], {"value ": 1}], [CANARY_PING, [], {"": 1}],
    ]
    return requests


def test_attacks_are_refused_with_no_side_effect(linked, tmp_path, monkeypatch):
    a, b = linked
    canary = tmp_path / "canary"
    monkeypatch.chdir(tmp_path)  # so even a relative path a broken callee touched lands here
    files_before = set(tmp_path.iterdir())
    assert not {"colorsys", "this"} & set(sys.modules)
    rpc.serve(b, [CANARY_PING])
    # Warm up both paths, so lazy imports of the library itself do not count.
    assert rpc.call(a, b.id, CANARY_PING, 1) == ["pong", 1]
    with pytest.raises(peernet.NoSuchHandler):
        raw(a, b, ["os:system", [], {}])
    with pytest.raises(peernet.Forbidden):
        raw(a, b, [None, [], {}])
    rpc_canary.looked_up.clear()
    modules_before = set(sys.modules)

    for request in attacks(str(canary)):
        # A name not on the list is "no such function"; anything malformed, forbidden.
        with pytest.raises((peernet.Forbidden, peernet.NoSuchHandler)):
            raw(a, b, request)

    assert not canary.exists() and set(tmp_path.iterdir()) == files_before
    assert set(sys.modules) == modules_before
    assert rpc_canary.looked_up == []
    assert rpc.call(a, b.id, CANARY_PING, 2) == ["pong", 2]  # the callee is fine


def test_attacks_by_cast_have_no_side_effect(linked, tmp_path, monkeypatch):
    a, b = linked
    canary = tmp_path / "canary"
    monkeypatch.chdir(tmp_path)
    files_before = set(tmp_path.iterdir())
    rpc.serve(b, [CANARY_PING, record])
    modules_before = set(sys.modules)
    for request in attacks(str(canary)):
        assert a.send(b.id, "rpc", request) is True
    # Sends from one peer are handled in order: once this one ran, all the above did.
    assert rpc.cast(a, b.id, f"{HERE}:record", "done")
    assert wait_until(lambda: received == ["done"])
    assert not canary.exists() and set(tmp_path.iterdir()) == files_before
    assert set(sys.modules) == modules_before
    assert rpc_canary.looked_up == []


def test_an_unauthorised_peer_cannot_reach_even_listed_functions(linked, tmp_path):
    a, b = linked
    canary = tmp_path / "canary"
    rpc.serve(b, ["tests.procs.rpc_canary:touch"], authorize=lambda peer: 1)  # truthy, not True
    with pytest.raises(peernet.Forbidden):
        rpc.call(a, b.id, "tests.procs.rpc_canary:touch", str(canary))
    assert not canary.exists()
