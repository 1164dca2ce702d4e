"""One authenticated link's message protocol, sans-IO: payloads in, events and payloads out.

Theory of operation
-------------------
A :class:`Channel` sits above the :class:`~peernet._proto.session.Session` of one link:
the session turns frames into whole application messages (CBOR bytes), the channel
gives them meaning. It never touches a socket, a thread, a clock or a Future; the edge
(``_io/link.py``) feeds it, writes what it produces, and serialises access (one lock).

1. **Calls out.** :meth:`Channel.add_call` records a request id with the caller's own
   token (the edge's Future); the reply or error for that id comes back from
   :meth:`receive` as :class:`Answered` or :class:`Refused` carrying the token. A reply
   for an id this channel is not waiting for (unknown, late, duplicate, meant for
   another link) is dropped. Ids are scoped to the channel, so no peer can answer a call
   made to another. :meth:`forget` drops an id the caller gave up on.
2. **Calls and sends in** come out as :class:`CallIn` / :class:`SendIn`. Each CallIn is
   *served* until the edge reports :meth:`answered` (exactly once per CallIn). A Send
   changes no state here: while the channel has not ended (:attr:`ended`), an edge may
   route one it decoded itself, without taking its lock for :meth:`handle`. One
   longer than :data:`DEFER_ARGS_OVER` bytes is checked completely, but its ``args``
   are left unbuilt (:class:`~peernet._proto.messages.Deferred`, with a bound of what
   they will hold): the edge charges that bound and builds them where the work runs
   (:meth:`decode_all`), so decoding never costs what no budget allowed.
3. **Liveness.** :meth:`ping` returns a Ping to write and remembers its nonce with the
   time it was sent (the edge passes the time in); the matching Pong comes back as
   :class:`PongIn` with the round-trip time. At most :data:`MAX_PENDING_PINGS` are
   remembered (a dying link keeps the newest). A Ping from the peer is answered
   automatically: the Pong is queued for :meth:`take_output`.
4. **Retirement** of a duplicate link (both sides keep the link whose initiator has the
   smaller PeerId; see ``guides/protocol.md``): :meth:`retire` stops new calls once this
   side's own calls are answered, then queues ``Bye("superseded")``; the channel ends
   when it has both sent and received that bye, so nothing in flight is lost. A peer's
   ``Bye("superseded")`` retires it from the other side (event :class:`PeerRetired`). A
   *forced* retirement (a peer holding more links than an honest one would) ends as soon
   as this side's calls are answered and the peer's calls on it are served, without
   waiting for the peer's bye. States: OPEN -> RETIRING -> BYE_SENT -> ENDED.
5. **The end.** Any other bye, a protocol error, or the retirement dance ends the
   channel: :attr:`end_reason` is then set and the edge closes the link (after writing
   :meth:`take_output`). :meth:`close` fails what is pending: it returns the tokens.

Wire error codes map to exceptions in one table, :data:`ERROR_TYPES`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import (
    Busy,
    CallError,
    Forbidden,
    NoSuchHandler,
    ProtocolError,
    RemoteError,
)
from .._text import escape
from ..ids import PeerId
from . import cbor
from .messages import (
    BUSY,
    BYE_SUPERSEDED,
    FORBIDDEN,
    HANDLER_ERROR,
    NO_SUCH_HANDLER,
    Bye,
    Call,
    Error,
    Message,
    Ping,
    Pong,
    Reply,
    Send,
    decode_message,
    encode_message,
)

__all__ = [
    "Answered", "CallIn", "Channel", "ChannelEvent", "ChannelState", "ERROR_TYPES",
    "DEFER_ARGS_OVER", "Ended", "MAX_PENDING_PINGS", "PeerRetired", "PongIn", "Refused", "SUPERSEDED",
    "SendIn", "error_for",
]

#: Bye reason that starts (or answers) the two-sided retirement of a duplicate link.
SUPERSEDED = BYE_SUPERSEDED
MAX_PENDING_PINGS = 16
#: Calls and sends longer than this (encoded bytes) come out with Deferred args.
DEFER_ARGS_OVER = 4096

#: Wire error code -> the exception a caller gets. ``bad_request`` and any code without
#: an entry become a plain CallError.
ERROR_TYPES: dict[str, type[CallError]] = {
    NO_SUCH_HANDLER: NoSuchHandler,
    FORBIDDEN: Forbidden,
    BUSY: Busy,
    HANDLER_ERROR: RemoteError,
}


#: Wire error code -> how the exception's message reads, from (peer, name).
_ERROR_TEXT: dict[str, Callable[[PeerId, str | None], str]] = {
    NO_SUCH_HANDLER: lambda peer, name: (f"{peer.short} exposes no handler {name!r}" if name
                                         else f"{peer.short}: no such handler"),
    FORBIDDEN: lambda peer, name: f"{_what(peer, name)}: forbidden",
    BUSY: lambda peer, name: f"{peer.short} is busy with our earlier calls; try again later",
}


def _what(peer: PeerId, name: str | None) -> str:
    return f"{name!r} on {peer.short}" if name else peer.short


def error_for(code: str, detail: str | None, peer: PeerId, name: str | None) -> CallError:
    """The exception for a wire ``Error`` that answered call ``name`` made to ``peer``:
    the class from :data:`ERROR_TYPES` (a plain CallError for ``bad_request`` and any
    code it does not list)."""
    kind = ERROR_TYPES.get(code)
    if kind is RemoteError:  # decode_message let only a type name through; belt and braces
        return RemoteError(escape(detail or "Exception"))
    if kind is None:
        return CallError(f"{_what(peer, name)}: the peer refused the request ({code})")
    return kind(_ERROR_TEXT[code](peer, name))


class ChannelState(enum.Enum):
    OPEN = "open"
    #: Another link won: no new calls; our bye goes out once our calls are answered.
    RETIRING = "retiring"
    #: Our bye is out: waiting for the peer's (or, forced, for our served calls).
    BYE_SENT = "bye_sent"
    ENDED = "ended"


_RETIRING = ChannelState.RETIRING  # looked up on every answer


# Events are made for every message: plain slotted records, not frozen (a frozen
# dataclass's __init__ pays an object.__setattr__ call per field).
@dataclass(slots=True)
class CallIn:
    call: Call


@dataclass(slots=True)
class SendIn:
    send: Send


@dataclass(slots=True)
class Answered:
    token: Any
    result: Any


@dataclass(slots=True)
class Refused:
    token: Any
    error: CallError


@dataclass(slots=True)
class PongIn:
    token: Any
    rtt_s: float


@dataclass(frozen=True, slots=True)
class PeerRetired:
    """The peer retired this link: the edge stops handing it out for new calls."""


ChannelEvent = CallIn | SendIn | Answered | Refused | PongIn | PeerRetired


#: Why a channel ended whose link went away without a reason of the channel's own.
_CLOSED = "closed"


class LinkEnded(Exception):
    """:meth:`Channel.add_call` on a channel that takes no more calls."""


@dataclass(frozen=True, slots=True)
class Ended:
    """Why the channel ended, and the reason the peer gave if it said bye."""

    reason: str
    bye_reason: str | None = None


class Channel:
    """The message protocol of one link. Not thread-safe: the edge holds a lock."""

    def __init__(self, peer: PeerId, *, max_depth: int = cbor.DEFAULT_MAX_DEPTH) -> None:
        self.peer = peer
        self.state = ChannelState.OPEN
        self._max_depth = max_depth
        self._pending: dict[int, tuple[str, Any]] = {}  # rid -> (handler name, token)
        self._pings: dict[bytes, tuple[float, Any]] = {}  # nonce -> (sent at, token)
        self._serving = 0  # CallIns not yet answered()
        self._bye_received = False
        self._retired = False  # retire() ran: see handed_over
        self._forced = False
        self._early_done = True  # see hold_early()
        #: Payloads the channel produced on its own (pongs, byes), in order, for the edge
        #: to write: read it (it is empty unless there is something), then take_output().
        self.output: list[bytes] = []
        self.ended: Ended | None = None

    # -- calls out ---------------------------------------------------------------------

    def add_call(self, request_id: int, name: str, token: Any) -> bool:
        """Expect an answer to ``request_id``; False if that id is taken (draw another).
        Raises :class:`LinkEnded` once our bye is out or the channel ended."""
        if self.state is ChannelState.BYE_SENT or self.state is ChannelState.ENDED:
            raise LinkEnded
        if request_id in self._pending:
            return False
        self._pending[request_id] = (name, token)
        return True

    def forget(self, request_id: int) -> None:
        """The caller gave up on ``request_id`` (timeout, cancel): a late answer is dropped."""
        self._pending.pop(request_id, None)
        if self.state is ChannelState.RETIRING:
            self._maybe_bye()

    @property
    def pending_calls(self) -> int:
        return len(self._pending)

    # -- liveness ----------------------------------------------------------------------

    def ping(self, nonce: bytes, now: float, token: Any = None) -> bytes:
        """A Ping to write; its Pong comes back as PongIn(token, rtt)."""
        self._pings[nonce] = (now, token)
        if len(self._pings) > MAX_PENDING_PINGS:  # a dying link: keep the newest
            self._pings.pop(next(iter(self._pings)))
        return encode_message(Ping(nonce))

    # -- incoming ----------------------------------------------------------------------

    def receive(self, payload: bytes, now: float) -> ChannelEvent | None:
        """Take one application message. Returns its event, if it has one for the edge;
        a protocol error ends the channel (see :attr:`ended`) and returns None."""
        try:
            msg = self.decode(payload)
        except ProtocolError as exc:
            self._end(f"protocol error: {exc}")
            return None
        return self.handle(msg, now)

    def decode(self, payload: bytes) -> Message:
        """The strict decode of one message (stateless: an edge may run it outside its
        lock); a call or send over :data:`DEFER_ARGS_OVER` bytes keeps its args
        Deferred. Raises :class:`~peernet.errors.ProtocolError`, which must end the link."""
        return decode_message(payload, max_depth=self._max_depth, defer_over=DEFER_ARGS_OVER)

    def decode_all(self, payload: bytes) -> Message:
        """:meth:`decode` with every part built (a deferred call's or send's args)."""
        return decode_message(payload, max_depth=self._max_depth)

    def handle(self, msg: Message, now: float) -> ChannelEvent | None:
        """:meth:`receive` for a message already decoded by :meth:`decode`."""
        if self.ended is not None:
            return None
        match msg:  # the commonest kinds first: class patterns are tried in order
            case Reply(request_id=rid, result=result):
                waiting = self._pending.pop(rid, None)  # None: unknown, late or forged
                if waiting is None:
                    return None
                if self.state is _RETIRING:
                    self._maybe_bye()
                return Answered(waiting[1], result)
            case Call():
                self._serving += 1
                return CallIn(msg)
            case Send():
                return SendIn(msg)
            case Error(request_id=rid, code=code, detail=detail):
                waiting = self._pending.pop(rid, None)
                if waiting is None:
                    return None
                if self.state is _RETIRING:
                    self._maybe_bye()
                return Refused(waiting[1], error_for(code, detail, self.peer, waiting[0]))
            case Ping(nonce=nonce):
                self.output.append(encode_message(Pong(nonce)))
                return None
            case Pong(nonce=nonce):
                sent = self._pings.pop(nonce, None)
                return None if sent is None else PongIn(sent[1], max(0.0, now - sent[0]))
            case Bye(reason=reason):
                return self._on_bye(reason)
        raise AssertionError(f"not a message: {type(msg).__name__}")  # decode makes only these

    def answered(self) -> bool:
        """The answer to one CallIn was written (or could not be). Returns whether the
        edge has something to do now: output to write, or the channel ended."""
        self._serving -= 1
        if self._forced:
            self._maybe_end_forced()
        return bool(self.output) or self.ended is not None

    def hold_early(self) -> None:
        """Messages that came with the handshake are not routed yet: a forced retirement
        must not end the channel before they are (see :meth:`early_routed`)."""
        self._early_done = False

    def early_routed(self) -> None:
        self._early_done = True
        self._maybe_end_forced()

    # -- retirement and the end ------------------------------------------------------

    def retire(self, *, force: bool = False) -> None:
        """Another link to the same peer won (see the module doc)."""
        if self.ended is not None:
            return
        if self.state is not ChannelState.OPEN and (self._forced or not force):
            return
        self._forced = self._forced or force
        if self.state is ChannelState.OPEN:
            self.state = ChannelState.RETIRING
            self._retired = True
        self._maybe_bye()
        self._maybe_end_forced()  # already in BYE_SENT: forcing may end it now

    def goodbye(self, reason: str) -> bytes:
        """A Bye to write before closing the link for ``reason`` (cut to fit)."""
        return encode_message(Bye(reason[:200]))

    @property
    def handed_over(self) -> bool:
        """Whether the channel was retired (another link to the same peer won) and
        nothing else ended it: not a protocol error, not the peer's goodbye. Its end,
        if it came, was the retirement's own, or the connection closing under it (a
        peer may close as soon as it has both byes, and unread data makes that a
        reset). The peer carries on over the other link, so what it sent here is
        still its to have run."""
        if not self._retired:
            return False
        return self.ended is None or self.ended.reason in (SUPERSEDED, _CLOSED)

    def take_output(self) -> list[bytes]:
        """:attr:`output`, emptied."""
        out, self.output = self.output, []
        return out

    def close(self) -> list[Any]:
        """The link is gone: end the channel and return every pending call's token."""
        if self.ended is None:
            self.ended = Ended(_CLOSED)
        self.state = ChannelState.ENDED
        tokens = [token for _, token in self._pending.values()]
        self._pending.clear()
        pongs = [token for _, token in self._pings.values() if token is not None]
        self._pings.clear()
        return tokens + pongs

    def _on_bye(self, reason: str) -> PeerRetired | None:
        if reason != SUPERSEDED:
            self._end(f"peer said bye ({reason})", bye_reason=reason)
            return None
        self._bye_received = True
        if self.state is ChannelState.BYE_SENT:
            self._end(SUPERSEDED)
            return None
        self.retire()
        return PeerRetired()

    def _maybe_bye(self) -> None:
        if self.state is not ChannelState.RETIRING or self._pending:
            return
        self.state = ChannelState.BYE_SENT
        self.output.append(encode_message(Bye(SUPERSEDED)))
        if self._bye_received:
            self._end(SUPERSEDED)
        else:
            self._maybe_end_forced()

    def _maybe_end_forced(self) -> None:
        if (self._forced and self.state is ChannelState.BYE_SENT and self._serving == 0
                and self._early_done):
            self._end(SUPERSEDED)

    def _end(self, reason: str, *, bye_reason: str | None = None) -> None:
        if self.ended is None:
            self.ended = Ended(reason, bye_reason)
        self.state = ChannelState.ENDED
