"""The mesh: every link of one node, and what keeps them up.

``Node`` is the user's object; the mesh is what its links report to (the
:class:`~peernet._io.link.LinkOwner` callbacks) and what it asks for a link to a peer.
It dials and accepts, keeps one link per peer (retiring duplicates), serves the calls
and sends links bring (through the one :class:`~peernet._io.scheduler.Scheduler`),
heartbeats, redials with backoff, reacts to network changes, remembers good
addresses, and reports status changes to observers. It never imports the public
layer: it is given the node's credentials, a trust check, settings and the handler
table's ``dispatch`` as plain values and callables.

Locks: the registry's (the one table of links), each link's write and state locks,
the scheduler's, and ``_status_lock`` (status events in order, small tables). None is
held while another component's callback runs.
"""

from __future__ import annotations

import logging
import queue
import random
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from .._proto.backoff import Backoff
from .._proto.messages import (
    BUSY,
    BYE_NODE_CLOSING,
    BYE_UNPAIRED,
    HANDLER_ERROR,
    Bulk,
    Call,
    Deferred,
    Error,
    Reply,
    Send,
    encode_for_link,
    encode_message,
    exception_detail,
)
from .._proto.invite import MAX_INVITE_MESSAGE
from .._proto.session import LocalCredentials, Session
from .._addresses import AddressBook
from ..errors import EncodeError, MessageTooLarge, NodeClosed, PeerUnavailable
from ..ids import PeerId
from .invite_link import InviteHost, Pipe
from .link import Link
from .netmon import NetworkChange, normalize_ip
from .registry import Registry
from .scheduler import JOB_OVERHEAD_BYTES, Scheduler, held_bytes
from .spares import Spares
from .timers import Timers

__all__ = ["Mesh", "MeshSettings", "NODE_CLOSING", "PeerEvent"]

log = logging.getLogger(__name__)

#: How long a handler may run on a link's reading thread before reading moves to a new
#: thread (Link.take_over_reading): the most a slow handler can delay replies and pongs.
INLINE_BUDGET_S = 0.02
#: The small sends of one read run inline as one run, and the watch times them in
#: chunks of this many: quick handlers never hand the reading over, while a chunk of
#: slower ones that overruns the budget does (and a call behind them is not held up).
SEND_RUN_CHUNK = 64
#: Retiring links a peer may hold (see link_established) before older ones are forced.
_MAX_RETIRING_LINKS = 1
#: How long a reader waits for room in a peer's full send queue before dropping.
_SEND_ROOM_WAIT_S = 0.5
#: An unpaired key that knocks is logged at WARNING at most this often.
_REFUSAL_WARNING_EVERY_S = 60.0
_REFUSAL_WARNINGS_TRACKED = 256
#: The bye reason of a node shutting down (see link_closed).
NODE_CLOSING = BYE_NODE_CLOSING
#: How soon a change to the address book is written (changes in between coalesce).
_ADDRESS_SAVE_DELAY_S = 1.0
#: Link threads kept idle for the next link (see _io/spares.py), and for how long.
_SPARE_LINK_THREADS = 2
_SPARE_IDLE_S = 5.0

#: What ``dispatch(peer, name, args)`` returns: ``.value``, or ``.error`` + ``.detail``.
Dispatch = Callable[[PeerId, str, Any], Any]
#: ``report_unsendable(peer, name, exc)``: handler ``name``'s result for ``peer`` could
#: not be sent (``exc``: EncodeError or MessageTooLarge).
ReportUnsendable = Callable[[PeerId, str, BaseException], None]
#: (peer, new status, previous status, unix time)
PeerEvent = tuple[PeerId, str, str, float]


@dataclass(frozen=True, slots=True)
class MeshSettings:
    call_timeout_s: float
    handshake_timeout_s: float
    io_timeout_s: float
    max_message_size: int
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    backoff: Backoff
    #: Returns ``peernet`` or ``peernet --data-dir DIR``: how hints tell a person to
    #: run the CLI on this node's data dir (worked out only when a hint needs it).
    cli_command: Callable[[], str]


class Mesh:
    """Every link of one node. Built by ``Node``; see the module docstring."""

    def __init__(self, *, credentials: LocalCredentials, is_trusted: Callable[[PeerId], bool],
                 settings: MeshSettings, dispatch: Dispatch,
                 report_unsendable: ReportUnsendable, scheduler: Scheduler, timers: Timers,
                 registry: Registry, addresses: AddressBook,
                 invites: InviteHost | None = None,
                 knocked: Callable[[PeerId, tuple[str, int]], None] | None = None) -> None:
        self._credentials = credentials
        self._is_trusted = is_trusted
        self._settings = settings
        self._dispatch = dispatch
        self._report_unsendable = report_unsendable
        self._sched = scheduler
        self._timers = timers
        self._registry = registry
        self._addresses = addresses
        self._invites = invites  # issue 21: open invites decide invite-only links
        #: Told of each refused key that said where it listens (source IP, that port).
        self._knocked = knocked
        self._acceptor: Any = None  # set by listening(); has .port and .release(ip)
        self._closed = False
        self._status_lock = threading.Lock()
        self._refusals_warned: dict[PeerId, float] = {}
        self._address_save_pending = False
        self._inline_watch = False
        self._inline_lock = threading.Lock()
        self._observers: list[Callable[[PeerEvent], None]] = []
        self._events: queue.SimpleQueue[PeerEvent | None] = queue.SimpleQueue()
        self._events_thread: threading.Thread | None = None
        self._spares = Spares(name="peernet-link", keep=_SPARE_LINK_THREADS,
                              idle_s=_SPARE_IDLE_S)
        for pid, remembered in addresses.items():
            registry.remember(pid, remembered.address, remembered.last_seen)
        timers.call_later(self._heartbeat_period(), self._heartbeat_tick)

    def listening(self, acceptor: Any) -> None:
        """The acceptor is up: its port is what handshakes advertise."""
        self._acceptor = acceptor

    @property
    def port(self) -> int:
        return self._acceptor.port if self._acceptor is not None else 0

    # -- what the node asks ------------------------------------------------------------

    def dial(self, pid: PeerId) -> None:
        """Dial ``pid`` in the background unless it has a link or a dial in progress."""
        if self._closed:
            return
        address = self._registry.begin_dial(pid)
        if address is None:
            return
        link = self._new_link(self._new_session(initiator=True, expected=pid), address)
        if self._registry.dial_started(pid, link):
            # Before start: once started, the link's thread may finish the handshake
            # and report "online" first, and "connecting" would never be seen.
            self._report_status()
            link.start()

    def dial_hinted(self, pid: PeerId, changed: bool, source: str) -> None:
        """A hint named a paired peer: the user's own ``connect`` dials now, as does a new
        address; a repeated hint waits for the reconnect backoff (a rate limit). A new
        address from discovery (signed by the peer, sent from that address) also ends a
        dial still trying another one, which may be stale (the peer restarted on another
        port, or got another IP): the redial tries the new one first."""
        if source == "manual":
            self.dial(pid)
            return
        if changed:
            stale = self._registry.stale_dial(pid, source)
            if stale is not None:
                stale.close("a fresher address was announced")
        self._schedule_redial(pid, restart=changed)

    def redial_remembered(self) -> None:
        for pid, remembered in self._addresses.items():
            if remembered.address is not None:
                self.dial(pid)

    def link_for(self, pid: PeerId, deadline: float, *, searching: bool,
                 abandoned: Future[Any] | None = None) -> Link:
        """A link to call ``pid`` on, dialling and waiting until ``deadline`` (monotonic)
        if needed; PeerUnavailable if none came. A dial still in its handshake will do
        once it is :attr:`Link.open_early`: the call goes out with message 3.
        ``searching``: discovery may still find an address (a new one, too: a known
        address that refuses may be stale, as after the peer restarted on another
        port), so an idle wait is not an answer. ``abandoned``: see
        :meth:`Registry.wait_for_link`."""
        link = self._registry.active_link(pid)
        if link is not None:
            return link
        self.dial(pid)
        link = self._registry.wait_for_link(pid, deadline, give_up_when_idle=not searching,
                                            abandoned=abandoned, for_call=True)
        if link is not None:
            return link
        if self._closed:
            raise NodeClosed("this node is closed")
        entry = self._registry.get(pid)
        if entry is None or entry.address is None:
            raise PeerUnavailable(
                f"no live link to {pid.short} and no known address; "
                f"use node.connect(peer, host, port) first"
            )
        why = f" ({entry.last_error})" if entry.last_error else ""
        raise PeerUnavailable(
            f"could not reach {pid.short} at {entry.address[0]}:{entry.address[1]}{why}"
        )

    def paired_by_invite(self, peer: PeerId, dialled: tuple[str, int] | None) -> None:
        """An invite exchange just paired ``peer``, over a handshake that proved its key:
        it was heard now. ``dialled`` (the joiner's side: the address in the code, or
        in the announce, that this node dialled) is remembered as a dial's address is,
        before any link is up (a CLI join closes at once). The inviter learns nothing it
        could dial: the joiner's source port is ephemeral, and the port it listens on
        may be a one-off (a CLI join's), so only the time."""
        now = time.time()
        self._registry.remember(peer, dialled, now)
        if dialled is not None:
            self._addresses.reached(peer, dialled, now)
        else:
            self._addresses.seen(peer, now)
        self._schedule_address_save()

    def accept(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """The acceptor's hand-off of a new connection."""
        if self._closed:
            sock.close()
            self._acceptor.release(address[0])
            return
        self._registry.inbound_started()  # ended by link_handshake_over
        self._new_link(self._new_session(initiator=False, inbound=(address, sock)), address,
                       sock).start()

    def drop_peer(self, peer: PeerId) -> None:
        """``peer`` was unpaired: none of its work starts from now on (inline or
        queued), then forget it and close its links at once."""
        self._sched.revoke(peer)
        self._registry.forget(peer)
        self._addresses.forget(peer)
        self._schedule_address_save()
        # The table has every link, including handshakes past message 2 and retiring
        # duplicates; inbound handshakes not yet at message 3 meet the live trust check.
        for link in self._registry.all_links():
            if link.target == peer:
                link.close(BYE_UNPAIRED, bye=True)

    def on_network_change(self, change: NetworkChange) -> None:
        """Close only the links whose local address vanished; redial offline peers now."""
        log.info("network changed: +%s -%s", sorted(change.added), sorted(change.removed))
        for link in self._registry.all_links():
            local = link.local_ip
            if local is not None and normalize_ip(local) in change.removed:
                link.close("local address vanished")
        for entry in self._registry.entries():
            self._schedule_redial(entry.peer_id, restart=True)

    def subscribe(self, callback: Callable[[PeerEvent], None]) -> Callable[[], None]:
        """Deliver status changes to ``callback`` on the ``peernet-events`` thread."""
        with self._status_lock:
            self._observers.append(callback)
            if self._events_thread is None:
                self._events_thread = threading.Thread(
                    target=self._deliver_events, name="peernet-events", daemon=True)
                self._events_thread.start()

        def unsubscribe() -> None:
            with self._status_lock:
                if callback in self._observers:
                    self._observers.remove(callback)

        return unsubscribe

    def close(self, left: Callable[[], float]) -> None:
        """Say bye on every link, join every link thread, the scheduler and the events
        thread, and save the address book (``left()``: seconds still allowed)."""
        self._closed = True
        self._registry.close()  # waiters for a link (wait_for_peer, calls) return now
        self._spares.stop()  # link threads that end now just end, without a hand-off
        links = self._registry.all_links()
        for link in links:
            link.close(NODE_CLOSING, bye=True)
        me = threading.get_ident()
        for link in links:
            for reader in list(link.threads):
                if reader.ident is not None and reader.ident != me:
                    reader.join(left())
        self._spares.close(left())
        self._sched.close(left())

    def finish(self, left: Callable[[], float]) -> None:
        """After the timer thread stopped: save the address book, end event delivery."""
        self._addresses.save()  # what the last links taught us, before the lock goes
        if self._events_thread is not None:
            self._events.put(None)
            if self._events_thread is not threading.current_thread():
                self._events_thread.join(left())

    # -- LinkOwner: what links report (from link threads) ------------------------------

    def link_handshake_over(self, link: Link) -> None:
        """The handshake ended, and the link is registered if it succeeded."""
        if not link.outbound:
            self._acceptor.release(link.address[0])
            self._registry.inbound_over()
            refused = link.session.refused_peer
            if refused is not None:
                self._warn_refused(refused, link.address)
                port = link.session.refused_listen_port
                if port and self._knocked is not None:
                    self._knocked(refused, (link.address[0], port))

    def link_invite(self, link: Link, sock: socket.socket, ready: bytes, deadline: float,
                    early: list[bytes]) -> bool:
        """An invite exchange passed its handshake (issue 21): run it here, on the link's
        thread, within the handshake deadline, then let the link close. It is never
        registered, so no handler is reachable from it; returns False (no peer link)."""
        if self._invites is None or self._closed or link.closed or link.peer_id is None:
            return False
        link.session.max_message_size = MAX_INVITE_MESSAGE  # still pre-auth: stay small
        pipe = Pipe(sock, link.session, deadline, early)  # the link closes the socket
        try:
            pipe.send_raw(ready)
            self._invites.serve(pipe, link.session.invite or b"", link.peer_id, link.address)
        except Exception as exc:  # noqa: BLE001 -- the exchange reports its own outcome
            log.debug("invite exchange with %s ended: %s", link.peer_id.short, exc)
        return False

    def link_first_flight(self, link: Link) -> bool:
        """A dial checked message 2: is a call waiting to go out with message 3?"""
        return self._registry.first_flight(link)

    def link_established(self, link: Link) -> list[tuple[Link, bool]] | None:
        """Register an authenticated link. Runs under the link's write lock (before the
        responder's READY goes out), so it only decides: returns None to refuse the
        link, else the links the link must retire once the lock is released, each with
        whether to force it."""
        peer = link.peer_id
        assert peer is not None
        if self._closed or not self._is_trusted(peer):
            return None
        self._sched.admit(peer)  # paired (again): its work may run
        if not link.outbound and link.session.peer_listen_port:
            self._registry.set_address(peer, (link.address[0], link.session.peer_listen_port),
                                       "inbound")
        loser = self._registry.add_link(link)
        if link.outbound:  # an address we dialled and that proved to be the peer
            self._addresses.reached(peer, link.address, time.time())
            self._schedule_address_save()
        retire: list[tuple[Link, bool]] = []
        if loser is not None:
            log.debug("two links to %s; retiring %r", peer.short, loser)
            retire.append((loser, False))
            self._timers.call_later(self._settings.call_timeout_s + 1.0,
                                    lambda: loser.close("superseded"))
            # An honest peer has at most one link retiring (a simultaneous dial, a
            # reconnect); one that keeps opening links loses the older ones as soon as
            # their calls are answered, so it cannot pile up threads and descriptors.
            for extra in self._registry.excess_retiring(peer, keep=_MAX_RETIRING_LINKS):
                retire.append((extra, True))
        log.info("link %s %s is up", "to" if link.outbound else "from", peer.short)
        self._report_status()
        return retire

    def link_message(self, link: Link, box: list[Call | Send], *, inline: bool,
                     payload: bytes) -> None:
        """Run a peer's call or send here on the reader (``inline``, when the scheduler
        has a slot for it), or queue it. Queued work keeps only the encoded ``payload``
        (decoded when it runs) and is charged what it holds once decoded. A large one
        (its args came Deferred, unbuilt) always goes to a worker, charged the bound
        the channel measured, and is built there: a reader never builds what the
        peer's budget did not allow, nor spreads that memory over reader threads."""
        peer = link.peer_id
        assert peer is not None
        message = box.pop()  # now the only reference: see the dels below
        small = type(message.args) is not Deferred
        if inline and link.send_run is not None and link.send_run == link.reader:
            # This reader's earlier sends of this read hold the peer's send lane and a
            # running slot, and the reader counts as running a handler since the first:
            # one claim and one watch for a run of sends, and only a check for each.
            if small and type(message) is Send:
                if self._sched.may_start(peer, link):
                    link.send_run_len += 1
                    if link.send_run_len % SEND_RUN_CHUNK == 0:
                        link.renew_inline(link.send_run)  # the watch times each chunk
                    self._serve_send(peer, message)
                return  # else the link ended or the peer was revoked: dropped, as a claim
            self.link_read_done(link)  # anything else runs after the run, on its own claim
        # (A run held by an older reader, stuck in a handler, is its to end: what comes
        # now queues behind it, in order.)
        if inline and small:
            if isinstance(message, Call):  # (isinstance: the else is then a Send for mypy)
                if self._sched.claim_call(peer, link):
                    try:
                        self._run_inline(link, self._serve_call, link, peer, message)
                    finally:
                        self._sched.release_call(peer)
                    return
            elif self._sched.claim_send(peer, link):
                # None of the peer's sends is queued or running: this one runs here, in
                # order; the sends after it in this read share its claim and its watch
                # (until link_read_done), timed in chunks of SEND_RUN_CHUNK: a chunk
                # that overruns the inline budget hands the reading over, as one slow
                # handler does. Sends that arrive meanwhile queue behind it.
                # The generation enter_inline saw: if the watchdog took over reading
                # just after, this reader still ends its run (Link._dispatch).
                link.send_run = self._enter_inline(link)
                link.send_run_len = 1
                self._serve_send(peer, message)
                return
        # Queued: charged what it will hold decoded (a small message was decoded on
        # arrival, at most ~100 bytes a byte: measured; a large one: the channel's bound).
        args = message.args
        cost = (args.held_bound + JOB_OVERHEAD_BYTES if type(args) is Deferred
                else self._cost(payload, args))
        del args
        task = partial(self._serve_queued, link, payload)
        if type(message) is Call:
            rid = message.request_id
            del message  # decoded, it holds far more than the payload: not while queued
            if not self._sched.submit_call(peer, link, task, cost=cost):
                link.answer(encode_message(Error(rid, BUSY, None)))
        else:
            del message  # not held while waiting for room, nor while queued
            if not self._sched.submit_send(peer, link, task, cost=cost,
                                           wait_s=_SEND_ROOM_WAIT_S):
                log.debug("dropped a send from %s: its queue is full", peer.short)

    def _run_inline(self, link: Link, fn: Callable[..., None], *args: Any) -> None:
        """Run one call's handler on ``link``'s reading thread, watched: a handler that
        overruns hands the reading to a new thread (_check_inline)."""
        reader = self._enter_inline(link)
        try:
            fn(*args)
        finally:
            link.leave_inline(reader)

    def _enter_inline(self, link: Link) -> int:
        # In this order: a check that ran before inline_since was set and found nothing
        # to watch has cleared _inline_watch by now, or re-scans (_check_inline).
        reader = link.enter_inline()
        if not self._inline_watch:  # else a check is scheduled already
            self._watch_inline()
        return reader

    def link_read_done(self, link: Link) -> None:
        """The reader is done with its run of sends (its read ended, or something other
        than a small send came): give back the claim and the watch they shared."""
        reader = link.send_run
        if reader is not None:
            link.send_run = None
            link.leave_inline(reader)  # a no-op if a newer reader took over meanwhile
            self._sched.release_send(link.peer_id)  # type: ignore[arg-type]

    def _cost(self, payload: bytes, args: Any) -> int:
        """What queued work is charged: what it holds when it runs (decoded), or its
        encoded size if larger (a bytes body decodes to about itself)."""
        held = held_bytes(args, self._settings.max_message_size * 4)
        return max(len(payload), held) + JOB_OVERHEAD_BYTES

    def _watch_inline(self) -> None:
        """A reader is about to run a handler: make sure someone checks it does not
        stall (see _check_inline)."""
        if self._inline_watch:  # the usual case; re-checked under the lock below
            return
        with self._inline_lock:
            if self._inline_watch:
                return
            self._inline_watch = True
        self._timers.call_later(INLINE_BUDGET_S, self._check_inline)

    def link_retired(self, link: Link) -> None:
        self._registry.retire(link)

    def link_closed(self, link: Link) -> None:
        if link.established and link.peer_id is not None and not link.outbound \
                and link.bye_reason == NODE_CLOSING:
            # It shut down and will dial us when it is back; the port it listened on
            # may have been a one-off (a CLI call), so do not redial it. Forgotten
            # before the link leaves the table: whoever sees the peer offline sees this.
            self._registry.remove_address(link.peer_id, "inbound")
        self._registry.drop_link(link)
        self._sched.drop(link)  # its queued work dies with it (and re-checks, if handed out)
        if link.established and link.peer_id is not None:
            log.info("link with %s closed: %r", link.peer_id.short, link.close_reason)
            if self._is_trusted(link.peer_id):
                self._addresses.seen(link.peer_id,
                                     time.time() - (time.monotonic() - link.last_received))
                self._schedule_address_save()
        # Whatever ended -- a live link, or a dial that failed at any stage -- try again
        # later if the peer is still paired, has an address and has no other link.
        if link.target is not None and not self._closed:
            self._schedule_redial(link.target)
        self._report_status()

    # -- serving -----------------------------------------------------------------------

    def _serve_call(self, link: Link, peer: PeerId, call: Call) -> None:
        outcome = self._dispatch(peer, call.name, call.args)
        if outcome.error is None:
            try:
                payload = encode_for_link(Reply(call.request_id, outcome.value))
                if len(payload) > self._settings.max_message_size:
                    self._check_size(payload)
            except (EncodeError, MessageTooLarge) as exc:  # the handler's bug: shown here
                self._report_unsendable(peer, call.name, exc)
                payload = encode_message(Error(call.request_id, HANDLER_ERROR,
                                              exception_detail(exc)))
        else:
            payload = encode_message(Error(call.request_id, outcome.error, outcome.detail))
        link.answer(payload)

    def _serve_send(self, peer: PeerId, send: Send) -> None:
        outcome = self._dispatch(peer, send.name, send.args)
        if outcome.error is not None:
            log.debug("send %r from %s: %s", send.name, peer.short, outcome.error)

    def _serve_queued(self, link: Link, payload: bytes) -> None:
        """Run a queued call or send: decode it again, args and all (it was checked on
        arrival, and charged what this builds)."""
        assert link.channel is not None
        message = link.channel.decode_all(payload)
        assert isinstance(message, (Call, Send))
        self._serve(link, message)

    def _serve(self, link: Link, message: Call | Send) -> None:
        assert link.peer_id is not None
        if type(message) is Call:
            self._serve_call(link, link.peer_id, message)
        else:
            self._serve_send(link.peer_id, message)  # type: ignore[arg-type]

    def _check_size(self, payload: bytes | Bulk) -> None:
        if len(payload) > self._settings.max_message_size:
            raise MessageTooLarge(
                f"message of {len(payload)} bytes exceeds max_message_size "
                f"({self._settings.max_message_size})")

    # -- links -------------------------------------------------------------------------

    def _new_session(self, *, initiator: bool, expected: PeerId | None = None,
                     inbound: tuple[tuple[str, int], socket.socket] | None = None) -> Session:
        invites, gate = self._invites, None
        if invites is not None and inbound is not None:
            (source_ip, _), sock = inbound

            def gate(peer: PeerId, hello: bytes) -> bool:  # where it came from, and to
                return invites.gate(peer, hello, source_ip, sock.getsockname()[0])

        return Session(
            self._credentials,
            initiator=initiator,
            is_trusted=self._is_trusted,
            expected_peer=expected,
            listen_port=self.port,
            max_message_size=self._settings.max_message_size,
            invite_gate=gate,
        )

    def _new_link(self, session: Session, address: tuple[str, int],
                  sock: socket.socket | None = None) -> Link:
        link = Link(self, session, sock=sock, address=address,
                    handshake_timeout_s=self._settings.handshake_timeout_s,
                    io_timeout_s=self._settings.io_timeout_s, spares=self._spares)
        if sock is not None:  # a dial is tracked by dial_started
            self._registry.track(link)
        return link

    def _warn_refused(self, peer: PeerId, address: tuple[str, int]) -> None:
        """One-sided pairing is the commonest first mistake: say which key knocked and
        how to let it in, once a minute per key (keys are free, so the table is bounded)."""
        now = time.monotonic()
        with self._status_lock:
            last = self._refusals_warned.pop(peer, None)
            if last is not None and now - last < _REFUSAL_WARNING_EVERY_S:
                self._refusals_warned[peer] = last
                return
            self._refusals_warned[peer] = now
            while len(self._refusals_warned) > _REFUSAL_WARNINGS_TRACKED:
                self._refusals_warned.pop(next(iter(self._refusals_warned)))
        log.warning("refused a connection from %s (port %d): %s is not paired with this "
                    "node. If you trust it, pair it: `%s pair %s` or node.pair(%r)",
                    address[0], address[1], peer.short, self._settings.cli_command(), peer,
                    str(peer))

    def _check_inline(self) -> None:
        """On the timer thread: hand reading over from readers stuck in a handler."""
        now = time.monotonic()
        links = self._registry.all_links()
        with self._inline_lock:
            busy = False
            for link in links:
                since = link.inline_since
                if since is not None:
                    busy = True
                    if now - since >= INLINE_BUDGET_S:
                        link.take_over_reading()
            self._inline_watch = busy and not self._closed
            if self._inline_watch:
                self._timers.call_later(INLINE_BUDGET_S, self._check_inline)
                return
        # A reader may have entered inline after its link was scanned and seen the flag
        # still set (Mesh._enter_inline): now that it is clear, look once more.
        if not self._closed and any(link.inline_since is not None
                                    for link in self._registry.all_links()):
            self._watch_inline()

    # -- liveness, reconnects, addresses, events ---------------------------------------

    def _heartbeat_period(self) -> float:
        s = self._settings
        return max(0.02, min(s.heartbeat_interval_s, s.heartbeat_timeout_s) / 4)

    def _heartbeat_tick(self) -> None:
        """On the timer thread: ping links that are due, end links that went silent."""
        if self._closed:
            return
        try:
            now = time.monotonic()
            for link in self._registry.all_links():
                if not link.established or link.closed:
                    continue
                silent_s = now - link.last_received
                if silent_s > self._settings.heartbeat_timeout_s:
                    log.warning("no traffic from %s for %.1f s; declaring the link dead",
                                link.peer_id.short if link.peer_id else "?", silent_s)
                    link.close("heartbeat timeout")
                elif now - link.last_ping >= self._settings.heartbeat_interval_s:
                    link.ping_nowait()
        finally:  # one bad tick must not end liveness for the node
            self._timers.call_later(self._heartbeat_period(), self._heartbeat_tick)

    def _schedule_redial(self, pid: PeerId, *, restart: bool = False) -> None:
        """Dial ``pid`` again after its backoff delay (``restart``: now, backoff reset)."""
        if self._closed or not self._is_trusted(pid):
            return
        self._registry.schedule_redial(pid, self._settings.backoff, random.random(),
                                       self.dial, restart=restart)

    def _schedule_address_save(self) -> None:
        """Save the address book soon, on the timer thread: a burst of link events costs
        one write, and no link thread waits for the disk."""
        with self._status_lock:
            if self._address_save_pending or self._closed:
                return
            self._address_save_pending = True
        self._timers.call_later(_ADDRESS_SAVE_DELAY_S, self._save_addresses)

    def _save_addresses(self) -> None:
        with self._status_lock:
            self._address_save_pending = False
        self._addresses.save()

    def _report_status(self) -> None:
        with self._status_lock:  # so events from different threads queue in order
            changes = self._registry.status_changes()
            if not changes or not self._observers:
                return
            at = time.time()
            for pid, old, new in changes:
                self._events.put((pid, new, old, at))

    def _deliver_events(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            with self._status_lock:
                observers = list(self._observers)
            for callback in observers:
                try:
                    callback(event)
                except Exception:  # noqa: BLE001 -- an observer must not stop the others
                    log.exception("on_peer_change callback failed")
