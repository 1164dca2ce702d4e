"""The handler table: name rules, expose/revoke, and how one call is dispatched."""

from __future__ import annotations

import logging

import pytest

from peernet._proto.messages import FORBIDDEN, HANDLER_ERROR, NO_SUCH_HANDLER
from peernet.errors import Forbidden, InvalidHandlerName, NoSuchHandler
from peernet.handlers import HandlerTable, Outcome, check_handler_name
from peernet.ids import PeerId

ALICE = PeerId(b"\x01" * 32)
BOB = PeerId(b"\x02" * 32)


class StrSubclass(str):
    pass


# --- names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a", "Z", "chat", "Chat2", "a_b", "a.b", "a:b", "a-b", "svc:echo.v2-beta_1", "x" * 64,
     "A" + "0" * 63],
)
def test_valid_names(name):
    assert check_handler_name(name) == name
    table = HandlerTable()
    table.expose(name, lambda peer, args: None)
    assert name in table


@pytest.mark.parametrize(
    "name",
    ["", "_private", "_", "__init__", "x" * 65, "1abc", "-a", ".a", ":a", "a b", "a/b",
     "a\\b", "a!", "a\n", "\na", "a\x00", "caf\u00e9", "\u0430bc", "a\tb", " a", "a ",
     "chat\u200b"],
)
def test_invalid_names(name):
    with pytest.raises(InvalidHandlerName):
        check_handler_name(name)
    table = HandlerTable()
    with pytest.raises(InvalidHandlerName):
        table.expose(name, lambda peer, args: None)
    with pytest.raises(InvalidHandlerName):
        table.expose(name)  # the decorator form checks the name at once
    assert len(table) == 0


@pytest.mark.parametrize("name", [None, 1, 1.5, b"chat", bytearray(b"chat"), ["chat"],
                                  StrSubclass("chat"), object()])
def test_non_str_names(name):
    with pytest.raises(InvalidHandlerName):
        check_handler_name(name)
    with pytest.raises(InvalidHandlerName):
        HandlerTable().expose(name, lambda peer, args: None)


def test_invalid_handler_name_is_a_value_error():
    with pytest.raises(ValueError):
        check_handler_name("_x")


# --- expose / revoke ---------------------------------------------------------------


def test_expose_returns_the_function():
    table = HandlerTable()

    def fn(peer, args):
        return args

    assert table.expose("echo", fn) is fn
    assert table.dispatch(ALICE, "echo", 5) == Outcome(value=5)


def test_decorator_form_returns_the_function_and_exposes_it():
    table = HandlerTable()

    @table.expose("echo")
    def echo(peer, args):
        return ["echo", args]

    assert callable(echo) and echo.__name__ == "echo"
    assert echo(ALICE, 1) == ["echo", 1]
    assert "echo" in table
    assert table.dispatch(ALICE, "echo", 2).value == ["echo", 2]


def test_decorator_form_with_authorize():
    table = HandlerTable()

    @table.expose("guarded", authorize=lambda peer: peer == ALICE)
    def guarded(peer, args):
        return "ok"

    assert table.dispatch(ALICE, "guarded", None) == Outcome(value="ok")
    assert table.dispatch(BOB, "guarded", None) == Outcome(error=FORBIDDEN)


def test_re_expose_replaces_function_and_authorize():
    table = HandlerTable()
    table.expose("h", lambda peer, args: "old", authorize=lambda peer: False)
    assert table.dispatch(ALICE, "h", None).error == FORBIDDEN
    table.expose("h", lambda peer, args: "new")
    assert table.dispatch(ALICE, "h", None) == Outcome(value="new")
    assert len(table) == 1
    assert table.names() == ["h"]


def test_revoke_returns_whether_it_was_exposed():
    table = HandlerTable()
    table.expose("h", lambda peer, args: 1)
    assert table.revoke("h") is True
    assert "h" not in table
    assert table.dispatch(ALICE, "h", None) == Outcome(error=NO_SUCH_HANDLER)
    assert table.revoke("h") is False
    assert table.revoke("never") is False


def test_names_len_contains():
    table = HandlerTable()
    for n in ["b", "a", "c"]:
        table.expose(n, lambda peer, args: None)
    assert table.names() == ["a", "b", "c"]
    assert len(table) == 3
    assert "a" in table and "d" not in table


def test_non_callable_handler_or_authorize_is_refused():
    table = HandlerTable()
    with pytest.raises(TypeError):
        table.expose("h", "not callable")
    with pytest.raises(TypeError):
        table.expose("h", lambda peer, args: 1, authorize=True)
    with pytest.raises(TypeError):
        table.expose("h", authorize="yes")
    assert len(table) == 0


# --- dispatch ----------------------------------------------------------------------


def test_dispatch_result():
    table = HandlerTable()
    table.expose("add", lambda peer, args: args[0] + args[1])
    out = table.dispatch(ALICE, "add", [2, 3])
    assert out == Outcome(value=5, error=None, detail=None)


def test_dispatch_result_none_is_a_success():
    table = HandlerTable()
    table.expose("nothing", lambda peer, args: None)
    out = table.dispatch(ALICE, "nothing", None)
    assert out.error is None and out.value is None


def test_dispatch_unknown_name():
    table = HandlerTable()
    table.expose("known", lambda peer, args: 1)
    assert table.dispatch(ALICE, "unknown", None) == Outcome(error=NO_SUCH_HANDLER)
    # Hostile names are just unknown, never an exception.
    assert table.dispatch(ALICE, "_private", None).error == NO_SUCH_HANDLER
    assert table.dispatch(ALICE, "", None).error == NO_SUCH_HANDLER


def test_handler_receives_the_callers_peer_id_and_args():
    table = HandlerTable()
    seen = []
    table.expose("rec", lambda peer, args: seen.append((peer, args)) or "done")
    args = {"k": [1, b"\x00", None]}
    assert table.dispatch(BOB, "rec", args).value == "done"
    assert seen == [(BOB, args)]
    assert seen[0][0] is BOB
    assert seen[0][1] is args


@pytest.mark.parametrize(
    "verdict, allowed",
    [(True, True), (False, False), (1, False), ("yes", False), (None, False),
     ([True], False), (1.0, False)],
)
def test_only_true_from_authorize_allows(verdict, allowed):
    table = HandlerTable()
    calls = []
    asked = []

    def authorize(peer):
        asked.append(peer)
        return verdict

    table.expose("h", lambda peer, args: calls.append(args) or "ran", authorize=authorize)
    out = table.dispatch(ALICE, "h", 7)
    assert asked == [ALICE]
    if allowed:
        assert out == Outcome(value="ran")
        assert calls == [7]
    else:
        assert out == Outcome(error=FORBIDDEN)
        assert calls == []


def test_authorize_runs_before_every_call():
    table = HandlerTable()
    allowed = {ALICE}
    table.expose("h", lambda peer, args: "ok", authorize=lambda peer: peer in allowed)
    assert table.dispatch(ALICE, "h", None).value == "ok"
    allowed.clear()
    assert table.dispatch(ALICE, "h", None).error == FORBIDDEN
    allowed.add(ALICE)
    assert table.dispatch(ALICE, "h", None).value == "ok"


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_authorize_raising_is_forbidden_and_logged(exc_type, caplog):
    table = HandlerTable()
    calls = []

    def authorize(peer):
        raise exc_type("policy exploded")

    table.expose("h", lambda peer, args: calls.append(1), authorize=authorize)
    with caplog.at_level(logging.DEBUG, logger="peernet"):
        out = table.dispatch(ALICE, "h", None)
    assert out == Outcome(error=FORBIDDEN)
    assert calls == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors, "a raising authorize must be logged"
    assert errors[0].name.startswith("peernet")
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is exc_type


def test_handler_value_error_gives_type_name_only(caplog):
    table = HandlerTable()

    def handler(peer, args):
        raise ValueError("secret detail /home/alice/.ssh/id_rsa")

    table.expose("boom", handler)
    with caplog.at_level(logging.DEBUG, logger="peernet"):
        out = table.dispatch(ALICE, "boom", None)
    assert out == Outcome(value=None, error=HANDLER_ERROR, detail="ValueError")
    assert "secret" not in repr(out)
    assert ".ssh" not in repr(out)
    assert "Traceback" not in repr(out)
    # The message and traceback go to the local log instead.
    assert "secret detail /home/alice/.ssh/id_rsa" in caplog.text
    assert "Traceback" in caplog.text
    records = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert records and records[0].name.startswith("peernet")


@pytest.mark.parametrize(
    "exc",
    [SystemExit(3), KeyboardInterrupt(), BaseException("bare"), GeneratorExit(),
     ZeroDivisionError("x"), RecursionError()],
    ids=lambda e: type(e).__name__,
)
def test_handler_raising_anything_is_handler_error_and_nothing_propagates(exc, caplog):
    table = HandlerTable()

    def handler(peer, args):
        raise exc

    table.expose("boom", handler)
    with caplog.at_level(logging.DEBUG, logger="peernet"):
        out = table.dispatch(ALICE, "boom", None)  # must not raise
    assert out == Outcome(error=HANDLER_ERROR, detail=type(exc).__name__)
    assert any(r.levelno >= logging.ERROR for r in caplog.records)


def test_custom_exception_detail_is_its_class_name():
    class QuotaExceeded(Exception):
        pass

    table = HandlerTable()
    table.expose("q", lambda peer, args: (_ for _ in ()).throw(QuotaExceeded("over")))
    assert table.dispatch(ALICE, "q", None) == Outcome(error=HANDLER_ERROR,
                                                       detail="QuotaExceeded")


def test_table_keeps_working_after_a_handler_failure():
    table = HandlerTable()
    table.expose("bad", lambda peer, args: 1 / 0)
    table.expose("good", lambda peer, args: "fine")
    assert table.dispatch(ALICE, "bad", None).error == HANDLER_ERROR
    assert table.dispatch(ALICE, "good", None).value == "fine"


def test_a_handler_may_refuse_by_raising_forbidden_and_its_message_stays_home():
    from peernet.errors import Forbidden

    table = HandlerTable()

    def picky(peer, args):
        raise Forbidden("secret reason: /etc/shadow")

    table.expose("picky", picky)
    outcome = table.dispatch(PeerId(bytes(32)), "picky", None)
    assert outcome == Outcome(error=FORBIDDEN)
    assert outcome.detail is None


@pytest.mark.parametrize("exc_type", [Forbidden, NoSuchHandler])
def test_a_refusal_quoting_the_peers_args_is_logged_escaped(exc_type, caplog):
    """A handler may refuse with the peer's own text in the message: the log line gets it
    escaped (no forged line, no terminal escape)."""
    table = HandlerTable()

    def picky(peer, args):
        raise exc_type(f"no such room {args}")

    table.expose("room", picky)
    hostile = "x\n2099-01-01 WARNING forged \x1b[2J\u202e"
    with caplog.at_level(logging.INFO, logger="peernet"):
        table.dispatch(ALICE, "room", hostile)
    (record,) = [r for r in caplog.records if "room" in r.getMessage()]
    text = record.getMessage()
    assert "\n" not in text and "\x1b" not in text and "\u202e" not in text
    assert "\\n2099-01-01 WARNING forged \\x1b[2J\\u202e" in text
