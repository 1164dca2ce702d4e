"""Invites: pairing two nodes in one step (``Node.invite`` / ``Node.join``, issue 21).

The inviter opens an :class:`Invite` and shows its codes; the joiner types one into
``Node.join``. The protocol (codes, the hello in handshake message 3, SPAKE2 bound to
the Noise handshake and both PeerIds, key confirmation both ways) is the pure core in
``peernet/_proto/invite.py``; the sockets are ``peernet/_io/invite_link.py``. This
module is the node's side: the :class:`InviteBook` holds the open invites and their
rules, serves the inviter's side of an exchange (for the mesh) and runs the joiner's.

Rules (guides/security.md explains why each holds):

- an invite is used at most once; the first exchange to reach it claims it, and any
  failure after that (a wrong code, a broken or silent connection) **burns** it;
- it expires after ``ttl_s``; ``Invite.cancel()`` and ``Node.close()`` end it too;
- while it is open, an unpaired key that names it in handshake message 3 gets an
  invite-only link: no handler, one exchange, then the link closes; a key that names
  no open invite is refused at message 3 as before. A short-code attempt (16 bits) is
  taken only from the LAN the short code's number is announced on (the discovery
  sources' ``on_lan``), a long-code attempt must name the invite's 64-bit id;
- the long code's secret is never logged, and neither code is in any ``repr``;
- each side stores the other under the label the other proposed (checked by the
  label rules; on a clash ``"label 2"`` and so on, and the note says so); an existing
  label is kept. Labels stay editable (``Node.pair(peer, label=...)``).
"""

from __future__ import annotations

import hmac
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from ._proto.invite import (
    INVITE_ID_LEN,
    KIND_SHORT,
    MAX_NAMEPLATE,
    Code,
    InviteHello,
    InviterExchange,
    JoinerExchange,
    LongCode,
    ShortCode,
    WrongCode,
    encode_refusal,
    parse_code,
)
from ._proto.session import LocalCredentials
from ._io.invite_link import Dials, Pipe, dial_invite
from .errors import (
    ConnectionLost,
    InviteAmbiguous,
    InviteError,
    InviteExpired,
    InviteNotFound,
    InviteRejected,
    InviteTimeout,
    NodeClosed,
    PeerUnavailable,
    ProtocolError,
)
from .ids import PeerId
from .trust import TrustStore, mixed_scripts, normalize_label

if TYPE_CHECKING:
    from ._io.timers import TimerHandle, Timers

__all__ = ["Invite", "InviteBook", "JoinResult", "MAX_OPEN_INVITES"]

log = logging.getLogger(__name__)

#: Open invites per node: as many nameplates as an announce can carry.
MAX_OPEN_INVITES = 4
MAX_TTL_S = 24 * 3600.0
#: Dead invites remembered, so a late joiner hears why (used, burned, expired...).
_TOMBSTONES = 64
#: How long a short-code search waits for more answers after the first one, so that a
#: second invite with the same number is seen (solicitations repeat at 0.25 s).
_SETTLE_S = 0.3
#: How long a short-code search listens at most before "no such invite nearby".
_SEARCH_S = 3.0
#: How long invite() listens for nearby nameplates before it picks one.
_LOOK_AROUND_S = 0.3


@dataclass(frozen=True)
class JoinResult:
    """What a join did: the inviter's id, the label stored for it here, and a note when
    that is not the label it proposed."""

    peer: PeerId
    label: str | None
    note: str | None


class Invite:
    """One invite, as :meth:`peernet.Node.invite` returns it.

    ``short`` (``"7-amber-orbit"``, or None when no discovery source of the node can
    announce it) and ``long`` (``"pninv1..."``, works across networks) are the codes to
    show the other person, with ``inviter`` (this node's id: a joiner whose error names
    another id reached another node); ``expires_at`` is a Unix time. ``status`` is ``"open"``,
    ``"joining"`` (an exchange is running), ``"paired"``, ``"burned"`` (a failed
    attempt), ``"expired"`` or ``"cancelled"``. Once paired, ``peer`` is the joiner's
    id and ``peer_label`` the label it is stored under here (``note`` says why, when
    that is not the one it proposed).
    """

    def __init__(self, book: InviteBook, *, nameplate: int, short: ShortCode | None,
                 long: LongCode, label: str | None, ttl_s: float) -> None:
        self._book = book
        self.nameplate = nameplate
        self._short = short
        self._long = long
        self.label = label
        self.ttl_s = ttl_s
        self.expires_at = time.time() + ttl_s
        self._expires_mono = time.monotonic() + ttl_s
        self._status = "open"
        self.peer: PeerId | None = None
        self.peer_label: str | None = None
        self.note: str | None = None
        self._timer: TimerHandle | None = None

    @property
    def short(self) -> str | None:
        """The short code (same LAN), or None if this node cannot announce it."""
        return self._short.text if self._short is not None else None

    @property
    def long(self) -> str:
        """The long code (any network): the inviter's id, addresses and port, the
        invite's 64-bit id (a long-code attempt must name it) and a 128-bit one-time
        secret. Treat it like a password until it is used."""
        return self._long.text

    @property
    def inviter(self) -> PeerId:
        """This node's id, as the long code holds it: show it next to the codes."""
        return self._long.inviter

    @property
    def status(self) -> str:
        return self._status

    def wait(self, timeout: float | None = None) -> PeerId:
        """Wait until someone joins; return the joiner's PeerId. Raises InviteExpired,
        InviteRejected (burned by a failed attempt, or cancelled), or InviteTimeout
        when ``timeout`` seconds pass first (the invite stays open)."""
        return self._book.wait(self, timeout)

    def cancel(self) -> bool:
        """Close the invite now (True), unless it is already over or an exchange is
        running (False)."""
        return self._book.end(self, "cancelled")

    def __repr__(self) -> str:
        left = max(0.0, self.expires_at - time.time())
        when = f", expires in {left:.0f} s" if self._status == "open" else ""
        return f"<Invite {self.nameplate} {self._status}{when}; .short / .long are the codes>"


class InviteBook:
    """The invites of one node: open ones, remembered dead ones, and both sides of the
    exchange. Thread-safe (one condition guards every invite's state).

    The node passes what it has as plain values and callables: its credentials and
    trust store, the timer thread, its listening port and addresses, what its
    discovery can do (``carries_short``, ``hears_short``, ``on_lan``: is this source
    address, which reached us at that local one, on a LAN we announce on?), and
    ``announce`` (tell
    discovery the open nameplates changed), ``solicit`` (ask the LAN now),
    ``heard`` (nameplate -> announcers, from the discovery hints), ``remember`` (a
    peer was just paired here: heard now, and the address this node dialled it at, if
    it did), ``connect`` and ``wait_for_peer`` (dial a freshly paired inviter as a
    normal peer).
    """

    def __init__(self, *, credentials: LocalCredentials, trust: TrustStore, timers: Timers,
                 port: Callable[[], int], addresses: Callable[[], list[str]],
                 carries_short: Callable[[], bool], hears_short: Callable[[], bool],
                 on_lan: Callable[[str, str], bool],
                 announce: Callable[[], None], solicit: Callable[[], None],
                 heard: Callable[[], dict[int, dict[PeerId, tuple[str, int]]]],
                 remember: Callable[[PeerId, tuple[str, int] | None], None],
                 connect: Callable[[PeerId, str, int], None],
                 wait_for_peer: Callable[[PeerId, float], bool]) -> None:
        self._credentials = credentials
        self._own_id = credentials.peer_id
        self._trust = trust
        self._timers = timers
        self._port = port
        self._addresses = addresses
        self._carries_short = carries_short
        self._hears_short = hears_short
        self._on_lan = on_lan
        self._announce = announce
        self._solicit = solicit
        self._heard = heard
        self._remember = remember
        self._connect = connect
        self._wait_for_peer = wait_for_peer
        self._cond = threading.Condition()
        self._open: dict[int, Invite] = {}
        self._dead: dict[int, Invite] = {}  # ended ones, by nameplate (bounded)
        self._closed = False
        self._dials = Dials()  # the joins' sockets: close() ends them

    # -- the inviter ---------------------------------------------------------------------

    def open_nameplates(self) -> tuple[int, ...]:
        """Nameplates of open invites with a short code: what announces carry."""
        with self._cond:
            return tuple(n for n, inv in self._open.items()
                         if inv._short is not None and inv.status == "open")

    def open_invites(self) -> list[Invite]:
        with self._cond:
            return list(self._open.values())

    def invite(self, nameplate: int) -> Invite | None:
        """The invite with ``nameplate``: open, or ended not long ago."""
        with self._cond:
            return self._open.get(nameplate) or self._dead.get(nameplate)

    def open(self, label: str | None, ttl_s: float,
             addresses: Sequence[str] | None = None, short: bool = True) -> Invite:
        """Open an invite (see ``Node.invite``)."""
        label = normalize_label(label)  # TypeError / ValueError for a bad label
        if type(ttl_s) not in (int, float) or not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"ttl_s must be 0 < ttl_s <= {MAX_TTL_S:g} seconds, got {ttl_s!r}")
        if type(short) is not bool:
            raise TypeError(f"short must be True or False, got {short!r}")
        listed = list(addresses) if addresses is not None else self._addresses()
        short_ok = short and self._carries_short()
        if short_ok and self._hears_short():
            self._solicit()  # pick a number nobody nearby is showing right now
            time.sleep(_LOOK_AROUND_S)
        seen = set(self._heard())
        invite_id, secret = os.urandom(INVITE_ID_LEN), os.urandom(16)
        with self._cond:
            if self._closed:
                raise InviteError("this node is closed")
            if len(self._open) >= MAX_OPEN_INVITES:
                raise InviteError(f"at most {MAX_OPEN_INVITES} invites may be open at once; "
                                  "cancel one first")
            nameplate = _pick_nameplate(seen | set(self._open) | set(self._dead))
            try:
                long = LongCode(self._own_id, invite_id, secret, self._port(),
                                tuple(listed[:4]))
            except ValueError as exc:
                raise ValueError(f"cannot make a long code: {exc}") from None
            short_code = ShortCode.from_secret(nameplate, os.urandom(2)) if short_ok else None
            invite = Invite(self, nameplate=nameplate, short=short_code, long=long, label=label,
                            ttl_s=float(ttl_s))
            self._open[nameplate] = invite
            invite._timer = self._timers.call_later(ttl_s, lambda: self._expire(invite))
        log.info("invite %d open for %g s%s", nameplate, ttl_s, "" if short_ok else
                 " (long code only)" if not short else
                 " (long code only: no discovery source announces it)")
        if short_ok:
            self._announce()
        return invite

    def end(self, invite: Invite, status: str) -> bool:
        """End ``invite`` with ``status`` (expired, cancelled) if it is still open."""
        with self._cond:
            if self._open.get(invite.nameplate) is not invite or invite._status != "open":
                return False
            self._finish(invite, status)
        log.info("invite %d %s", invite.nameplate, status)
        self._announce()
        return True

    def _expire(self, invite: Invite) -> None:
        """On the timer thread. An exchange running at the deadline may finish (it is
        bounded by the handshake deadline); anything else ends here."""
        self.end(invite, "expired")

    def _finish(self, invite: Invite, status: str) -> None:
        """Move ``invite`` to ``status`` and out of the open table. Holds the condition."""
        invite._status = status
        self._open.pop(invite.nameplate, None)
        self._dead[invite.nameplate] = invite
        while len(self._dead) > _TOMBSTONES:
            self._dead.pop(next(iter(self._dead)))
        if invite._timer is not None:
            invite._timer.cancel()
        self._cond.notify_all()

    def wait(self, invite: Invite, timeout: float | None) -> PeerId:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while invite._status in ("open", "joining"):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise InviteTimeout(f"nobody joined invite {invite.nameplate} within "
                                        f"{timeout:g} s; it is still open")
                self._cond.wait(remaining)
            status = invite._status
        if status == "paired":
            assert invite.peer is not None
            return invite.peer
        if status == "expired":
            raise InviteExpired(f"invite {invite.nameplate} expired after {invite.ttl_s:g} s "
                                "without anyone joining")
        if status == "burned":
            raise InviteRejected(f"invite {invite.nameplate} was burned: someone tried a wrong "
                                 "code, or the exchange broke off; nobody was paired", "burned")
        raise InviteRejected(f"invite {invite.nameplate} was {status}", status)

    def close(self) -> None:
        """The node is closing: cancel every open invite (waiters wake up), and end every
        join in progress (it raises NodeClosed at once and pairs nobody)."""
        with self._cond:
            self._closed = True
            for invite in list(self._open.values()):
                if invite._status == "open":
                    self._finish(invite, "cancelled")
            self._cond.notify_all()
        self._dials.close()

    # -- the inviter's side of an exchange (the mesh calls these) -------------------------

    def _named(self, hello: InviteHello) -> Invite | None:
        """The invite ``hello`` names, open or ended not long ago: for a short code the
        one with that number, if it has a short code; for a long code the one with
        that id (only the long code holds it). Holds the condition."""
        if hello.kind == KIND_SHORT:
            found = self._open.get(hello.nameplate) or self._dead.get(hello.nameplate)
            return found if found is not None and found._short is not None else None
        for invite in itertools.chain(self._open.values(), self._dead.values()):
            if hmac.compare_digest(invite._long.invite_id, hello.invite_id):
                return invite
        return None

    def gate(self, peer: PeerId, hello: bytes, source_ip: str, local_ip: str) -> bool:
        """Message 3 named an invite: let the key in (invite-only) if that invite is
        open, or is one we can tell a late joiner about, and, for a short-code hello
        (16 bits), only if ``source_ip`` is on a LAN its number is announced on. Any
        other hello touches no invite: the handshake ends at message 3."""
        try:
            parsed = InviteHello.decode(hello)
        except ProtocolError:
            return False
        if parsed.kind == KIND_SHORT and not self._on_lan(source_ip, local_ip):
            log.info("refused a short-code attempt from %s: not on a LAN this node "
                     "announces on", source_ip)
            return False
        with self._cond:
            return self._named(parsed) is not None

    def serve(self, pipe: Pipe, hello: bytes, joiner: PeerId, address: tuple[str, int]) -> None:
        """The inviter's side, on the link's thread; the caller closes ``pipe``."""
        parsed = InviteHello.decode(hello)
        with self._cond:
            invite = self._named(parsed)
            refusal = _REFUSALS.get(invite._status if invite is not None else "paired", "")
            if invite is not None and invite._status == "open":
                if time.monotonic() >= invite._expires_mono:
                    self._finish(invite, "expired")
                    refusal = "expired"
                else:
                    invite._status = "joining"  # claimed: from here on a failure burns it
        if invite is None or refusal:
            pipe.recv()  # the joiner's first message, read before the answer (no RST)
            pipe.send(encode_refusal(refusal))
            return
        code = invite._short if parsed.kind == KIND_SHORT else invite._long
        assert code is not None  # the gate checked it
        try:
            first = pipe.recv()
            exchange = InviterExchange(code.password, handshake_hash=pipe.handshake_hash,
                                       joiner=joiner, inviter=self._own_id, label=invite.label)
            pipe.send(exchange.receive(first))
            try:
                confirmed = exchange.receive(pipe.recv())
            except WrongCode:
                _best_effort(pipe, encode_refusal("wrong_code"))
                raise
            pipe.send(confirmed)
            done = exchange.receive(pipe.recv())
            stored, note = store_peer(self._trust, joiner, exchange.peer_label)
            self._remember(joiner, None)  # its listening port may be a one-off: no address
            with self._cond:
                invite.peer, invite.peer_label, invite.note = joiner, stored, note
            # Before wait() returns: a command that exits then must not cut this short.
            _best_effort(pipe, done)
            with self._cond:
                self._finish(invite, "paired")
            log.info("invite %d: paired with %s from %s%s", invite.nameplate, joiner.short,
                     address[0], f" as {stored!r}" if stored else "")
            if note:
                log.warning("invite %d: %s: %s", invite.nameplate, joiner.short, note)
        except BaseException as exc:
            with self._cond:
                if invite._status == "joining":
                    self._finish(invite, "burned")
            log.warning("invite %d burned by an attempt from %s: %s", invite.nameplate,
                        address[0], exc if isinstance(exc, WrongCode) else type(exc).__name__)
            raise
        finally:
            self._announce()

    # -- the joiner ----------------------------------------------------------------------

    def join(self, code: str, label: str | None, timeout_s: float) -> JoinResult:
        """Join the invite ``code`` names (see ``Node.join``). Raises NodeClosed, whatever
        it was doing, once the node closes meanwhile."""
        try:
            return self._join(code, label, timeout_s)
        except Exception:
            if self._dials.closed:
                raise NodeClosed("the node closed during the join; nothing was paired here"
                                 ) from None
            raise

    def _join(self, code: str, label: str | None, timeout_s: float) -> JoinResult:
        parsed = parse_code(code)
        label = normalize_label(label)
        deadline = time.monotonic() + timeout_s
        targets = self._targets(parsed, deadline)
        hello = InviteHello.for_code(parsed).encode()
        failures = []
        for inviter, address in targets:
            try:
                pipe = dial_invite(self._credentials, address, expected=inviter, hello=hello,
                                   listen_port=self._port(), deadline=deadline,
                                   dials=self._dials)
            except PeerUnavailable as exc:  # ConnectionLost included
                failures.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            with pipe:
                peer_label = self._exchange(pipe, parsed, inviter, address, label)
            if self._dials.closed:  # the node let go of its files: store nothing now
                raise NodeClosed("the node closed during the join")
            stored, note = store_peer(self._trust, inviter, peer_label)
            # Where the inviter was proven to be: remembered now, not only once the dial
            # below succeeds (a `peernet invite` may close before it does).
            self._remember(inviter, address)
            log.info("joined %s: paired with %s%s", _which(parsed), inviter.short,
                     f" as {stored!r}" if stored else "")
            if note:
                log.warning("joined %s: %s: %s", _which(parsed), inviter.short, note)
            # Now a normal paired peer: dial it, so the first call finds a live link.
            self._connect(inviter, *address)
            self._wait_for_peer(inviter, max(0.0, deadline - time.monotonic()))
            return JoinResult(inviter, stored, note)
        raise InviteNotFound("could not reach the inviter: " + "; ".join(failures))

    def _exchange(self, pipe: Pipe, code: Code, inviter: PeerId, address: tuple[str, int],
                  label: str | None) -> str | None:
        exchange = JoinerExchange(code.password, handshake_hash=pipe.handshake_hash,
                                  joiner=self._own_id, inviter=inviter, label=label)
        try:
            pipe.send(exchange.start())
            while not exchange.done:
                reply = exchange.receive(pipe.recv())
                if reply is not None:
                    pipe.send(reply)
        except InviteRejected as exc:
            raise InviteRejected(_answered(code, inviter, address, exc), exc.reason) from None
        except InviteExpired as exc:
            raise InviteExpired(_answered(code, inviter, address, exc)) from None
        except ConnectionLost as exc:
            if exchange.sent_label:
                raise InviteError(
                    f"{inviter.short} did not confirm the last step ({exc}): it may have "
                    "paired this node, but nothing was paired here; ask for a new invite "
                    "(or pair by id)") from None
            raise InviteError(f"the invite exchange with {inviter.short} broke off ({exc}); "
                              "nothing was paired, and the invite is burned") from None
        except ProtocolError as exc:
            raise InviteError(f"{inviter.short} broke the invite protocol ({exc}); nothing "
                              "was paired") from None
        return exchange.peer_label

    def _targets(self, code: Code, deadline: float) -> list[tuple[PeerId, tuple[str, int]]]:
        if isinstance(code, LongCode):
            if code.inviter == self._own_id:
                raise InviteError("that is an invite of this very node; join it from another")
            return [(code.inviter, (address, code.port)) for address in code.addresses]
        return [self._find(code.nameplate, deadline)]

    def _find(self, nameplate: int, deadline: float) -> tuple[PeerId, tuple[str, int]]:
        """The one node nearby announcing ``nameplate`` (asks the LAN at once)."""
        if not self._hears_short():
            raise InviteNotFound(
                "a short code is found through discovery, and this node has none: use "
                "Node(discovery='udp') (or 'mdns') on both sides, or join with the long code")
        self._solicit()
        started = time.monotonic()
        give_up = min(deadline, started + _SEARCH_S)
        first_seen = None
        while True:
            if self._dials.closed:
                raise NodeClosed("the node closed during the join")
            found = {p: a for p, a in self._heard().get(nameplate, {}).items()
                     if p != self._own_id}
            now = time.monotonic()
            if found and first_seen is None:
                first_seen = now
            if (first_seen is not None and now >= first_seen + _SETTLE_S) or now >= give_up:
                break
            time.sleep(0.02)
        if not found:
            if any(p == self._own_id for p in self._heard().get(nameplate, {})):
                raise InviteError("that is an invite of this very node; join it from another")
            raise InviteNotFound(
                f"no open invite {nameplate} nearby (listened {now - started:.1f} s): check "
                "the number, that the inviter is on this network with discovery on, and "
                "that its invite is still open; or join with the long code")
        if len(found) > 1:
            names = ", ".join(p.short for p in sorted(found))
            raise InviteAmbiguous(
                f"{len(found)} nodes nearby announce an open invite {nameplate} ({names}): "
                "joining would be a guess, and a wrong guess burns someone's invite. Ask "
                "for a new code, or join with the long code", tuple(sorted(found)))
        return next(iter(found.items()))


#: What a serve() tells a joiner about an invite in each status ("" for open: go on).
_REFUSALS = {"open": "", "joining": "busy", "paired": "used", "burned": "burned",
             "expired": "expired", "cancelled": "cancelled"}


def _which(code: Code) -> str:
    """The invite a code names, for logs: a short code's number (public), never a long
    code's id (with it, anyone could burn the invite)."""
    return f"invite {code.nameplate}" if isinstance(code, ShortCode) else "a long-code invite"


def _pick_nameplate(taken: Iterable[int]) -> int:
    """A random free number, as small as possible: 1..99, else 100..999, and so on."""
    busy = set(taken)
    for low, high in ((1, 99), (100, 999), (1000, 9999), (10000, MAX_NAMEPLATE)):
        free = [n for n in range(low, high + 1) if n not in busy]
        if free:
            return free[int.from_bytes(os.urandom(4), "big") % len(free)]
    raise InviteError("no free invite number")  # pragma: no cover - 65535 taken


def _answered(code: Code, inviter: PeerId, address: tuple[str, int], exc: Exception) -> str:
    """Who refused a join, and what it said. A refusal comes before any proof that the
    node holds the code; for a short code, the node is whoever announced the number
    (anyone on the LAN can), so the person must be able to tell it from the inviter."""
    if isinstance(code, LongCode):
        return f"{inviter.short}: {exc}"
    return (f"{inviter.short} at {address[0]}, which announces invite {code.nameplate}, "
            f"answered: {exc}. If that is not the inviter's id (`peernet invite` shows it "
            "next to the codes), another node answered for it and the invite is untouched: "
            "use the long code")


def _is_peer_id(text: str) -> bool:
    try:
        PeerId.parse(text)
    except ValueError:
        return False
    return True


def _best_effort(pipe: Pipe, payload: bytes) -> None:
    try:
        pipe.send(payload)
    except ConnectionLost:
        pass


def store_peer(trust: TrustStore, peer: PeerId, proposed: str | None
               ) -> tuple[str | None, str | None]:
    """Pair ``peer`` under the label it proposed for itself: ``(label stored, note)``.

    A peer already paired keeps the label it has (labels are the user's own). A
    proposed label that breaks the label rules, or is a peer id (which would name that
    other peer: ids win over labels), is dropped; one that looks like another
    peer's label becomes ``"label 2"`` (or 3 ...). The note (None when the proposal was
    taken as it was) says what happened, with the peer's text escaped by ``repr``.
    """
    existing = trust.get(peer)
    if existing is not None and existing.label:
        trust.pair(peer)
        note = None if proposed in (None, existing.label) else (
            f"already paired as {existing.label!r}; kept that label")
        return existing.label, note
    try:
        wanted = normalize_label(proposed)
    except (TypeError, ValueError) as exc:
        trust.pair(peer)
        return None, f"its proposed label was not taken ({exc})"
    if wanted is None:
        trust.pair(peer)
        return None, None
    if _is_peer_id(wanted):  # ids win over labels: it would name that peer, not this one
        trust.pair(peer)
        return None, f"its proposed label {wanted!r} is a peer id; not taken"
    last_error = ""
    # A suffix can make a clash unique, never a word that mixes scripts acceptable.
    candidates = [wanted] + ([] if mixed_scripts(wanted) else
                             [f"{wanted} {n}" for n in range(2, 10)])
    for candidate in candidates:
        try:
            entry = trust.pair(peer, candidate)
        except ValueError as exc:
            last_error = str(exc)
            continue
        note = None if candidate == wanted else (
            f"its proposed label {wanted!r} looks like another peer's; stored as {candidate!r}")
        return entry.label, note
    trust.pair(peer)
    return None, f"its proposed label {wanted!r} was not taken ({last_error})"
