"""The sans-IO message channel, tested in memory like h11's ConnectionPair: no sockets,
no threads, no clock (times are passed in)."""

from __future__ import annotations

import pytest

from peernet._proto.channel import (
    SUPERSEDED,
    Answered,
    CallIn,
    Channel,
    ChannelState,
    LinkEnded,
    MAX_PENDING_PINGS,
    PeerRetired,
    PongIn,
    Refused,
    SendIn,
    error_for,
)
from peernet._proto.messages import (
    BAD_REQUEST,
    BUSY,
    FORBIDDEN,
    HANDLER_ERROR,
    NO_SUCH_HANDLER,
    Bye,
    Call,
    Error,
    Pong,
    Reply,
    Send,
    decode_message,
    encode_message,
)
from peernet.errors import Busy, CallError, Forbidden, NoSuchHandler, RemoteError
from tests.helpers import seeded_identity

A_ID = seeded_identity("channel-a").peer_id
B_ID = seeded_identity("channel-b").peer_id


class ChannelPair:
    """Two channels of one link: ``a`` (whose peer is B) and ``b`` (whose peer is A).
    ``deliver`` carries payloads across; ``flush`` carries what each produced itself."""

    def __init__(self) -> None:
        self.a = Channel(B_ID)
        self.b = Channel(A_ID)
        self.now = 100.0

    def other(self, side: Channel) -> Channel:
        return self.b if side is self.a else self.a

    def deliver(self, to: Channel, message) -> object:
        payload = message if type(message) is bytes else encode_message(message)
        return to.receive(payload, self.now)

    def flush(self, side: Channel) -> list:
        """Carry ``side``'s own output to the other side; the events it caused."""
        return [self.deliver(self.other(side), p) for p in side.take_output()]

    def call(self, rid: int = 7, name: str = "echo", args: object = "x"):
        token = object()
        assert self.a.add_call(rid, name, token)
        event = self.deliver(self.b, Call(rid, name, args))
        return token, event


def test_a_call_and_its_reply():
    pair = ChannelPair()
    token, event = pair.call(args=[1, 2])
    assert event == CallIn(Call(7, "echo", [1, 2]))
    answered = pair.deliver(pair.a, Reply(7, "done"))
    assert answered == Answered(token, "done")
    assert pair.a.pending_calls == 0
    pair.b.answered()
    assert pair.a.ended is None and pair.b.ended is None


def test_unknown_late_and_duplicate_replies_are_dropped():
    pair = ChannelPair()
    token, _ = pair.call(rid=9)
    assert pair.deliver(pair.a, Reply(10, "not ours")) is None
    assert pair.deliver(pair.a, Reply(9, "ours")) == Answered(token, "ours")
    assert pair.deliver(pair.a, Reply(9, "again")) is None  # duplicate
    token2, _ = pair.call(rid=11)
    pair.a.forget(11)  # the caller timed out
    assert pair.deliver(pair.a, Reply(11, "late")) is None
    assert pair.a.ended is None


def test_unknown_late_and_duplicate_errors_are_dropped():
    pair = ChannelPair()
    token, _ = pair.call(rid=9)
    assert pair.deliver(pair.a, Error(10, FORBIDDEN, None)) is None  # never asked
    refused = pair.deliver(pair.a, Error(9, BUSY, None))
    assert type(refused) is Refused and refused.token is token
    assert pair.deliver(pair.a, Error(9, BUSY, None)) is None  # duplicate
    assert pair.deliver(pair.a, Reply(9, "after the error")) is None
    pair.call(rid=11)
    pair.a.forget(11)
    assert pair.deliver(pair.a, Error(11, HANDLER_ERROR, "ValueError")) is None  # late
    assert pair.a.ended is None and pair.a.pending_calls == 0


def test_an_error_that_settles_the_last_call_lets_a_retiring_link_say_bye():
    pair = ChannelPair()
    pair.call(rid=3)
    pair.a.retire()
    assert not pair.a.output  # our call is still pending
    pair.deliver(pair.a, Error(3, NO_SUCH_HANDLER, None))
    assert [decode_message(p) for p in pair.a.take_output()] == [Bye(SUPERSEDED)]


def test_a_taken_request_id_is_refused_so_the_caller_draws_another():
    pair = ChannelPair()
    assert pair.a.add_call(5, "echo", object())
    assert not pair.a.add_call(5, "echo", object())


@pytest.mark.parametrize("code,exc_type,text", [
    (NO_SUCH_HANDLER, NoSuchHandler, "exposes no handler 'echo'"),
    (FORBIDDEN, Forbidden, "'echo' on"),
    (BUSY, Busy, "busy"),
    (HANDLER_ERROR, RemoteError, "ValueError"),
    (BAD_REQUEST, CallError, "refused the request (bad_request)"),
])
def test_every_error_code_becomes_its_exception(code, exc_type, text):
    pair = ChannelPair()
    token, _ = pair.call()
    event = pair.deliver(pair.a, Error(7, code, "ValueError" if code == HANDLER_ERROR else None))
    assert type(event) is Refused and event.token is token
    assert type(event.error) is exc_type and text in str(event.error)


def test_error_for_names_the_peer_and_the_handler():
    exc = error_for(FORBIDDEN, None, B_ID, "reboot")
    assert isinstance(exc, Forbidden) and B_ID.short in str(exc) and "reboot" in str(exc)


def test_sends_are_events_and_are_never_answered():
    pair = ChannelPair()
    assert pair.deliver(pair.b, Send("note", {"k": 1})) == SendIn(Send("note", {"k": 1}))
    assert not pair.b.output


def test_ping_is_answered_by_the_channel_and_the_pong_measures_the_round_trip():
    pair = ChannelPair()
    token = object()
    ping = pair.a.ping(b"12345678", now=100.0, token=token)
    assert pair.deliver(pair.b, ping) is None
    pair.now = 100.25
    (event,) = pair.flush(pair.b)
    assert event == PongIn(token, 0.25)
    assert pair.deliver(pair.a, Pong(b"12345678")) is None  # answered already
    assert pair.deliver(pair.a, Pong(b"unknown!")) is None


def test_only_the_newest_pings_are_remembered():
    channel = Channel(B_ID)
    for i in range(MAX_PENDING_PINGS + 4):
        channel.ping(i.to_bytes(8, "big"), now=float(i))
    assert channel.receive(encode_message(Pong((0).to_bytes(8, "big"))), 50.0) is None
    newest = (MAX_PENDING_PINGS + 3).to_bytes(8, "big")
    assert type(channel.receive(encode_message(Pong(newest)), 50.0)) is PongIn


def test_retirement_with_nothing_pending_exchanges_byes_and_ends_both_sides():
    pair = ChannelPair()
    pair.a.retire()
    assert pair.a.state is ChannelState.BYE_SENT
    assert [decode_message(p) for p in pair.a.take_output()] == [Bye(SUPERSEDED)]
    event = pair.deliver(pair.b, Bye(SUPERSEDED))
    assert event == PeerRetired()
    assert pair.b.ended is not None and pair.b.ended.reason == SUPERSEDED  # sent and got one
    pair.flush(pair.b)
    assert pair.a.ended is not None and pair.a.ended.reason == SUPERSEDED
    assert pair.a.ended.bye_reason is None
    assert pair.a.handed_over and pair.b.handed_over  # the peer goes on, on another link


def test_only_retirement_hands_the_peer_over():
    pair = ChannelPair()
    assert not pair.a.handed_over  # open
    pair.deliver(pair.a, Bye("node closing"))
    assert pair.a.ended is not None and not pair.a.handed_over
    channel = Channel(B_ID)
    channel.close()  # the link went away (a timeout, a reset), never retired
    assert not channel.handed_over
    # Retired, then the connection went before the peer's bye was read (it closed with
    # our data unread, which is a reset): still handed over.
    channel = Channel(B_ID)
    channel.retire()
    assert channel.state is ChannelState.BYE_SENT and channel.handed_over
    channel.close()
    assert channel.handed_over
    # Retired, then a protocol error or the peer's goodbye: not.
    pair = ChannelPair()
    pair.a.retire()
    assert pair.a.receive(b"\xff", 0.0) is None and not pair.a.handed_over
    pair = ChannelPair()
    pair.a.retire()
    pair.deliver(pair.a, Bye("node closing"))
    assert not pair.a.handed_over


def test_retirement_waits_for_our_own_pending_calls():
    pair = ChannelPair()
    token, _ = pair.call(rid=3)
    pair.a.retire()
    assert pair.a.state is ChannelState.RETIRING and not pair.a.output
    assert pair.a.add_call(4, "echo", object())  # a caller already holding the link
    pair.deliver(pair.a, Reply(3, "one"))
    assert not pair.a.output  # call 4 still pending
    pair.a.forget(4)  # ... until its caller gives up
    assert [decode_message(p) for p in pair.a.take_output()] == [Bye(SUPERSEDED)]
    with pytest.raises(LinkEnded):
        pair.a.add_call(5, "echo", object())


def test_the_peer_retiring_the_link_retires_ours_and_the_bye_waits_for_our_calls():
    pair = ChannelPair()
    token = object()
    assert pair.b.add_call(1, "echo", token)
    assert pair.deliver(pair.b, Bye(SUPERSEDED)) == PeerRetired()
    assert pair.b.state is ChannelState.RETIRING and not pair.b.output
    assert pair.deliver(pair.b, Reply(1, "ok")) == Answered(token, "ok")
    assert pair.b.ended is not None  # its bye went out, and it had the peer's already
    assert [decode_message(p) for p in pair.b.take_output()] == [Bye(SUPERSEDED)]


def test_forced_retirement_ends_once_the_peers_calls_are_served_without_its_bye():
    pair = ChannelPair()
    pair.deliver(pair.a, Call(8, "slow", None))  # B's call, being served by A
    pair.a.retire(force=True)
    assert pair.a.state is ChannelState.BYE_SENT and pair.a.ended is None
    pair.a.answered()
    assert pair.a.ended is not None and pair.a.ended.reason == SUPERSEDED


def test_forced_retirement_waits_for_messages_that_came_with_the_handshake():
    channel = Channel(B_ID)
    channel.hold_early()
    channel.retire(force=True)
    assert channel.ended is None
    channel.early_routed()
    assert channel.ended is not None


def test_a_plain_retire_never_forces_and_a_second_retire_changes_nothing():
    pair = ChannelPair()
    pair.call(rid=2)
    pair.a.retire()
    pair.a.retire()
    assert pair.a.state is ChannelState.RETIRING
    pair.a.retire(force=True)  # upgrading to forced is allowed
    pair.deliver(pair.a, Reply(2, None))
    assert pair.a.ended is not None


def test_any_other_bye_ends_the_channel_with_the_peers_reason():
    pair = ChannelPair()
    token, _ = pair.call()
    assert pair.deliver(pair.a, Bye("node closing")) is None
    assert pair.a.ended.reason == "peer said bye (node closing)"
    assert pair.a.ended.bye_reason == "node closing"
    assert pair.a.close() == [token]


def test_nothing_after_the_peers_bye_is_routed():
    """A peer that said bye (not superseded) is gone: calls, sends and answers it sends
    after that never reach a handler or a caller."""
    pair = ChannelPair()
    token, _ = pair.call(rid=4)
    assert pair.deliver(pair.a, Bye("unpaired")) is None
    for late in (Call(5, "echo", 1), Send("note", 1), Reply(4, "late"),
                 Error(4, BUSY, None), Bye(SUPERSEDED)):
        assert pair.deliver(pair.a, late) is None
    assert not pair.a.output
    assert pair.a.close() == [token]


def test_a_protocol_error_ends_the_channel():
    channel = Channel(B_ID)
    assert channel.receive(b"\xff\x00", 1.0) is None
    assert channel.ended is not None and channel.ended.reason.startswith("protocol error")
    assert channel.receive(encode_message(Reply(1, 1)), 1.0) is None  # ignored from then on


def test_close_returns_every_waiter_and_refuses_new_calls():
    channel = Channel(B_ID)
    call, ping = object(), object()
    channel.add_call(1, "echo", call)
    channel.ping(b"abcdefgh", 1.0, ping)
    channel.ping(b"heartbt!", 1.0)  # a heartbeat: nobody waits on it
    assert set(channel.close()) == {call, ping}
    with pytest.raises(LinkEnded):
        channel.add_call(2, "echo", object())


def test_goodbye_is_a_bye_the_peer_accepts_cut_to_the_limit():
    channel = Channel(B_ID)
    assert decode_message(channel.goodbye("node closing")) == Bye("node closing")
    assert decode_message(channel.goodbye("x" * 500)) == Bye("x" * 200)


def test_retire_on_an_ended_channel_says_nothing():
    for end in ("bye", "protocol error", "closed"):
        pair = ChannelPair()
        if end == "bye":
            pair.deliver(pair.a, Bye("node closing"))
        elif end == "protocol error":
            pair.a.receive(b"\xff", 1.0)
        else:
            pair.a.close()
        reason = pair.a.ended
        pair.a.retire()
        pair.a.retire(force=True)
        assert not pair.a.output and pair.a.ended == reason
        assert pair.a.state is ChannelState.ENDED


def test_a_large_call_or_send_comes_in_with_its_args_unbuilt():
    """Over DEFER_ARGS_OVER bytes, args are checked but left Deferred (with a bound of
    what they hold) for the edge to build where the work runs; decode_all builds them."""
    from peernet._proto.channel import DEFER_ARGS_OVER
    from peernet._proto.messages import Deferred

    pair = ChannelPair()
    big = ["x" * DEFER_ARGS_OVER]
    token = object()
    assert pair.a.add_call(7, "echo", token)
    payload = encode_message(Call(7, "echo", big))
    event = pair.b.receive(payload, 1.0)
    assert type(event) is CallIn and event.call.request_id == 7
    assert type(event.call.args) is Deferred and event.call.args.held_bound > len(payload)
    assert pair.b.decode_all(payload) == Call(7, "echo", big)
    send = pair.b.receive(encode_message(Send("note", big)), 1.0)
    assert type(send) is SendIn and type(send.send.args) is Deferred
    small = pair.b.receive(encode_message(Call(8, "echo", "x")), 1.0)
    assert small == CallIn(Call(8, "echo", "x"))
    # A large *reply* is the caller's own: built as it comes.
    assert pair.deliver(pair.a, Reply(7, big)) == Answered(token, big)
