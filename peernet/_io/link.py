"""One TCP connection to one peer, and the thread that serves it.

The link's thread does everything that reads: it dials (outbound links), runs the
handshake under an absolute deadline, then reads frames, decrypts and decodes them
(through the sans-IO :class:`~peernet._proto.session.Session`) and routes each message:

- replies and errors complete the caller's Future in this link's reply table;
- pings are answered with pongs right here, so no handler can delay them;
- calls and sends go to the mesh (its owner), which asks the scheduler where each
  runs: right here, one after another in arrival order (the mesh runs them between
  :meth:`enter_inline` and :meth:`leave_inline`: one call, or a read's run of sends),
  saving a thread hand-off each way, or on the scheduler's workers when this reader
  must not (see below). Once the link is ending, nothing more of the current read is
  routed.

A handler running on the reader must not stall the link: if it has not finished
within a few tens of milliseconds (or it calls this same peer back), the mesh hands
the reading over to a new thread (:meth:`take_over_reading`), which first passes what
is left of the current read to the scheduler, and the old thread exits once its
handler returns. So replies, pongs and the calls behind a slow handler wait for at
most that long, and never for the handler itself.

Once calls are made on a link, a caller can read its own reply: the link's thread
then waits in epoll on a one-shot registration that the caller disarms while it
reads (the reading baton: :meth:`start_call`), so a reply wakes only its caller.

Writes happen on whichever thread is writing, under the link's write lock: seal and
send together, so the nonce order is the wire order. After the handshake the socket
is blocking (a reader waits in ``recv`` alone), but no write blocks in the kernel: it
sends with ``MSG_DONTWAIT`` and waits for room at most ``io_timeout_s``, so a peer that
stops reading makes the write fail and the link end, instead of blocking callers.

However the link ends, its thread closes the socket, fails every pending call with
:class:`ConnectionLost` at once, and tells the mesh; nothing else is affected.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time
from concurrent.futures import Future
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .._proto.channel import (
    Answered,
    CallIn,
    Channel,
    Ended,
    LinkEnded,
    PeerRetired,
    PongIn,
    Refused,
)
from .._proto.messages import Bulk, Call, Send
from .._proto.session import Event, MessageReceived, Session, SessionClosed, SessionState
from ..errors import ConnectionLost, MessageTooLarge, PeerUnavailable, ProtocolError
from .replies import settle
from .spares import Run, Spares

if TYPE_CHECKING:
    from ..ids import PeerId

__all__ = ["Link", "LinkOwner", "connect_by"]

log = logging.getLogger(__name__)

_RECV_BUFFER = 65536 + 2  # one maximal frame per read
_CONNECT_IN_PROGRESS = {errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK}
_DIAL_POLL_S = 0.1  # how quickly close() can interrupt a dial in progress
#: How long an initiator holds handshake message 3 for the call that is waiting for the
#: link (so both leave in one write) before it sends message 3 alone.
_FIRST_FLIGHT_S = 0.005


class LinkOwner(Protocol):
    """What a link needs from its node."""

    def link_handshake_over(self, link: Link) -> None: ...
    def link_invite(self, link: Link, sock: socket.socket, ready: bytes, deadline: float,
                    early: list[bytes]) -> bool: ...
    def link_first_flight(self, link: Link) -> bool: ...
    def link_established(self, link: Link) -> list[tuple[Link, bool]] | None: ...
    def link_message(self, link: Link, box: list[Call | Send], *, inline: bool,
                     payload: bytes) -> None: ...
    def link_read_done(self, link: Link) -> None: ...
    def link_retired(self, link: Link) -> None: ...
    def link_closed(self, link: Link) -> None: ...


def _writable(sock: socket.socket, timeout_s: float) -> bool:
    """poll(), not select(): select() fails for descriptors numbered 1024 and up."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(timeout_s * 1000))


# After the handshake a link's socket is blocking (no timeout), so a reader waits in
# recv() alone, without the poll() CPython makes before every recv() on a socket with a
# timeout. Writes never block in the kernel: they send with MSG_DONTWAIT, and only what
# did not fit waits for room, up to the link's io_timeout (then the link ends).
_DONTWAIT = socket.MSG_DONTWAIT


#: The receive buffer of a link to this host (loopback). Left to the kernel, it grows
#: to hundreds of KiB, and a burst of small messages then arrives one TCP segment per
#: write, each waking the reader for a few messages (measured: 62k sends/s, 0.18
#: context switches per send, both processes on one CPU). Bounded like this, the
#: sender's kernel coalesces what the reader has not taken yet into large segments
#: (101k sends/s, 0.04 switches); bulk (1 MiB messages) is unchanged, and on loopback
#: the round trip is microseconds, so the window never limits throughput. Links over
#: a network keep the kernel's autotuning, which a long round trip needs.
_LOOPBACK_RCVBUF_B = 64 * 1024


def _is_loopback(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _bound_local_rcvbuf(sock: socket.socket) -> None:
    """Fix a link's receive buffer at _LOOPBACK_RCVBUF_B if its peer is on this host
    (loopback, or our own address: both cross the loopback device). Set right after
    the handshake, before bulk data flows, so the window the peer was offered so far
    still fits. Only an optimisation: a failure (a reset link) changes nothing."""
    try:
        peer_host = sock.getpeername()[0]
        if _is_loopback(peer_host) or peer_host == sock.getsockname()[0]:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _LOOPBACK_RCVBUF_B)
    except OSError:
        pass


def _send_all(sock: socket.socket, data: bytes, timeout_s: float) -> None:
    """Send all of ``data`` within ``timeout_s``: one send() when the socket buffer has
    room (the usual case), else wait for room in poll() for the rest."""
    try:
        sent = sock.send(data, _DONTWAIT)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        _send_rest(sock, memoryview(data)[sent:], time.monotonic() + timeout_s)


def connect_by(sock: socket.socket, sockaddr: Any, deadline: float,
               stopped: Callable[[], bool]) -> None:
    """Connect ``sock`` by ``deadline`` (monotonic), in short waits so that ``stopped()``
    ends the wait early (a closing node); leaves it blocking, with TCP_NODELAY. Raises
    OSError: TimeoutError past the deadline or once stopped."""
    sock.setblocking(False)
    err = sock.connect_ex(sockaddr)
    while err in _CONNECT_IN_PROGRESS:
        remaining = deadline - time.monotonic()
        if stopped() or remaining <= 0:
            raise TimeoutError("connect timed out")
        if _writable(sock, min(remaining, _DIAL_POLL_S)):
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))
    sock.setblocking(True)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _send_rest(sock: socket.socket, view: memoryview, deadline: float) -> None:
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not _writable(sock, remaining):
            raise TimeoutError("the peer does not read: write timed out")
        try:
            view = view[sock.send(view, _DONTWAIT):]
        except BlockingIOError:
            continue


# Who reads the socket now (``Link._watch``): the link's own thread, or nobody yet with
# the link's thread parked in epoll_wait on a one-shot registration, or a caller that
# took the reading baton to read its own reply (see Link.start_call).
_THREAD_READS = 0
_PARKED = 1
_CALLER_READS = 2
_ARMED = select.EPOLLIN | select.EPOLLONESHOT
_DISARMED = select.EPOLLONESHOT  # nothing but ERR/HUP (the kernel always adds those)

_IOV_BATCH = 512  # frames per sendmsg(), well under IOV_MAX (1024 on Linux)
#: A caller holding the baton waits for its reply in a blocking recv() that returns
#: after this long at most (SO_RCVTIMEO, set once the link's thread parks: from then on
#: that thread reads only with MSG_DONTWAIT), so a reply costs one syscall, not a poll()
#: and a recv(); a deadline closer than this is waited for in poll().
_CALLER_RECV_WAIT_S = 0.25
_RCVTIMEO = struct.pack("ll", 0, int(_CALLER_RECV_WAIT_S * 1_000_000))


def _send_frames(sock: socket.socket, frames: list[bytes], timeout_s: float) -> None:
    """:func:`_send_all` for a bulk message's frames, gathered by ``sendmsg`` rather than
    joined first: joining would allocate (and fault in) a second copy of the message."""
    deadline = time.monotonic() + timeout_s
    for i in range(0, len(frames), _IOV_BATCH):
        batch = frames[i:i + _IOV_BATCH]
        try:
            sent = sock.sendmsg(batch, (), _DONTWAIT)
        except BlockingIOError:
            sent = 0
        for part in batch:  # what did not fit: wait for room, up to the timeout
            if sent >= len(part):
                sent -= len(part)
                continue
            _send_rest(sock, memoryview(part)[sent:], deadline)
            sent = 0


class Link:
    """One connection. Create it, then ``start()``; everything else is thread-safe."""

    def __init__(
        self,
        owner: LinkOwner,
        session: Session,
        *,
        sock: socket.socket | None = None,
        address: tuple[str, int],
        handshake_timeout_s: float,
        io_timeout_s: float,
        spares: Spares,
        max_depth: int = 16,
    ) -> None:
        self._owner = owner
        self._spares = spares
        self.session = session
        self._sock = sock
        #: (host, port) of the other end: the dialled address or the accepted source.
        self.address = address
        self.outbound = session.initiator
        self._handshake_timeout_s = handshake_timeout_s
        self._io_timeout_s = io_timeout_s
        self._max_depth = max_depth
        #: The message protocol (sans-IO), from the end of the handshake on; guarded
        #: by ``_state_lock``.
        self.channel: Channel | None = None
        self._wlock = threading.Lock()
        self._state_lock = threading.Lock()
        self._closing = False
        self.close_reason: str | None = None
        #: Did the link end because the peer broke the protocol?
        self.protocol_error = False
        #: The reason the peer gave when it said bye (other than "superseded"), if it did.
        self.bye_reason: str | None = None
        self.established = False
        self.started_at = time.monotonic()
        self.last_received = self.started_at
        self.rtt_s: float | None = None
        self.last_ping = self.started_at
        self._local_ip: str | None = None
        self._early: list[Event] = []  # messages that arrived with the last handshake frame
        #: Initiator: handshake message 3, held (under the write lock) for the first
        #: call to go out in the same write; see :meth:`_open_early`.
        self._unsent: bytes | None = None
        #: Initiator, from message 2 on: calls may be written (they follow message 3).
        self.open_early = False
        self._first_flight_by = 0.0
        #: Inline handlers (enter_inline): which thread reads now, a generation number (a
        #: takeover starts a new one); written under ``_state_lock``, read anywhere.
        self.reader = 0
        # What the reader's current read brought, and the index of the first event not
        # yet started: a takeover hands the rest to the next reader.
        self._batch: list[Event] = []
        self._batch_next = 0
        # Since when (monotonic) the reader has been running a handler, if it is.
        self.inline_since: float | None = None
        self._inline_thread: int | None = None  # threading.get_ident() of that reader
        #: The generation of the reader that holds its peer's send lane and a running
        #: slot for the sends of its current read (the owner's, see
        #: Mesh.link_message); the reader gives it back when that read is done.
        self.send_run: int | None = None
        self.send_run_len = 0  # sends in that run so far (the owner's)
        # The reading baton (start_call); guarded by _state_lock. The epoll and the
        # poll object exist once a caller wanted to read its own reply on this link.
        self._watch = _THREAD_READS
        self._watch_wanted = False
        self._baton_free = threading.Condition(self._state_lock)
        self._baton_waiting = False  # the link's thread waits on _baton_free
        self._baton_holder: int | None = None  # the caller's thread ident (_CALLER_READS)
        self._epoll: Any = None  # select.epoll, for the link's thread
        self._poller: Any = None  # select.poll, for a caller holding the baton
        self._fd = -1
        self._buf: bytearray | None = None  # the reading buffer, used by whoever reads
        #: The reading thread's work (a ``peernet-link`` thread runs it, maybe a spare
        #: that ran another link before).
        self.thread = Run(self._run)
        #: Every reader this link started (one that handed off may still be finishing
        #: its handler); close() joins them all.
        self.threads = [self.thread]

    # -- identity ------------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId | None:
        return self.session.peer_id

    @property
    def target(self) -> PeerId | None:
        """The peer this link is for: proven once established, else the one dialled."""
        return self.session.peer_id or self.session.expected_peer

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def work_dropped(self) -> bool:
        """Whether calls and sends this link brought in must not start any more: it
        ended, other than by handing its peer over to another link (retirement), after
        which what the peer sent on it still runs, in order, like the rest."""
        if not self._closing:
            return False
        # No lock: the scheduler asks under its own. Retirement and a channel's end are
        # decided before the link begins closing, and neither changes back.
        channel = self.channel
        return self.protocol_error or channel is None or not channel.handed_over

    def __repr__(self) -> str:
        peer = self.peer_id.short if self.peer_id else "?"
        way = "to" if self.outbound else "from"
        state = "closed" if self._closing else ("open" if self.established else "handshaking")
        return f"<Link {way} {peer} {self.address[0]}:{self.address[1]} {state}>"

    @property
    def local_ip(self) -> str | None:
        """Our address on this connection, as recorded when the handshake finished."""
        return self._local_ip

    @property
    def local_port(self) -> int | None:
        sock = self._sock
        try:
            return sock.getsockname()[1] if sock is not None else None
        except OSError:
            return None

    def start(self) -> None:
        """Run the link on a thread (a spare one if it waits). If no thread can be had
        (the process is out of threads or memory), the link ends here, on the calling
        thread, as a failed dial or handshake ends: its owner frees what it reserved
        for it (a dial in progress, a pre-auth slot) and its callers get the error."""
        try:
            self._spares.start(self.thread)
        except RuntimeError as exc:
            self._no_thread(self.thread, exc)

    def _no_thread(self, run: Run, exc: RuntimeError) -> None:
        log.error("no thread for the link %r (%s): closing it", self, exc)
        self._begin_close("no thread to run it")
        run._run()  # ends at once: nothing is dialled or read once closing

    # -- writing (any thread) ---------------------------------------------------------

    def write(self, payload: bytes | Bulk) -> None:
        """Seal and send one encoded message. Raises ConnectionLost if the link is (or
        goes) down, MessageTooLarge if the message is over the limit (link unharmed)."""
        with self._wlock:
            if self._closing:
                raise self._lost()
            try:
                if type(payload) is Bulk:
                    frames = self.session.seal_frames(payload.head, payload.body)
                    if self._unsent is not None:
                        frames.insert(0, self._take_unsent())
                    _send_frames(self._sock, frames, self._io_timeout_s)  # type: ignore
                else:
                    data = self.session.seal(payload)  # type: ignore[arg-type]
                    if self._unsent is not None:  # the first call, with message 3
                        data = self._take_unsent() + data
                    _send_all(self._sock, data, self._io_timeout_s)  # type: ignore
            except MessageTooLarge:
                raise
            except (OSError, ProtocolError) as exc:
                # A partial write would desynchronise the nonces: the link is done.
                self._begin_close(f"write failed: {exc.__class__.__name__}")
                raise self._lost() from None

    def try_write_nowait(self, payload: bytes) -> bool:
        """Write only if that cannot block (lock free, socket writable). For the timer
        thread: heartbeats must never wait behind a congested link."""
        if not self._wlock.acquire(blocking=False):
            return False
        try:
            if self._closing or self._sock is None or self._unsent is not None:
                return False
            if not _writable(self._sock, 0.0):
                return False
            try:
                _send_all(self._sock, self.session.seal(payload), self._io_timeout_s)
            except (OSError, ProtocolError) as exc:
                self._begin_close(f"write failed: {exc.__class__.__name__}")
                return False
            return True
        finally:
            self._wlock.release()

    def ping(self) -> Future[float]:
        """Send a ping; the Future gets the round-trip time in seconds."""
        fut: Future[float] = Future()
        self.write(self._locked_channel_op(lambda ch: ch.ping(os.urandom(8), time.monotonic(), fut)))
        self.last_ping = time.monotonic()
        return fut

    def ping_nowait(self) -> bool:
        """Send a heartbeat ping unless that would block; the pong updates ``rtt_s``."""
        try:
            payload = self._locked_channel_op(lambda ch: ch.ping(os.urandom(8), time.monotonic()))
        except ConnectionLost:
            return False
        self.last_ping = time.monotonic()
        return self.try_write_nowait(payload)

    def start_call(self, request_id: int, name: str, *, read_reply: bool = False
                   ) -> tuple[Future[Any] | None, bool]:
        """Expect the answer to ``request_id``: the Future it will complete, or None if
        the id is taken on this link (draw another). Raises ConnectionLost if the link
        takes no more calls (ended, or retired with its bye sent).

        With ``read_reply``, also take the reading baton for the calling thread if the
        link's thread is parked and no other call is in flight (the second value says
        whether it was taken): the caller then writes its call and reads its own reply
        (:meth:`read_reply`, which gives the baton back). Otherwise the link's thread
        delivers the reply: someone reads now, or other calls wait for replies too, and
        with several in flight one reader for all of them is cheaper (W2 measured 2.1
        context switches per call with it, 3.1 with callers taking turns to read)."""
        fut: Future[Any] = Future()
        if read_reply and self._watch != _PARKED:  # unlocked peek: no baton to take
            read_reply = False
            if self.established:
                self._watch_wanted = True  # the link's thread parks after its next read
        with self._state_lock:
            channel = self.channel
            try:
                if channel is None:
                    raise LinkEnded
                if not channel.add_call(request_id, name, fut):
                    return None, False
            except LinkEnded:
                raise self._lost() from None
            if (not read_reply or self._watch != _PARKED or self._closing
                    or channel.pending_calls > 1):
                return fut, False
            self._epoll.modify(self._fd, _DISARMED)
            self._watch = _CALLER_READS
            self._baton_holder = threading.get_ident()
            return fut, True

    def forget_call(self, request_id: int) -> None:
        """The caller gave up (timeout or cancel): drop its entry."""
        self._channel_op(lambda ch: ch.forget(request_id))

    @property
    def pending_calls(self) -> int:
        channel = self.channel
        return channel.pending_calls if channel is not None else 0

    def _locked_channel_op(self, op: Callable[[Channel], bytes]) -> bytes:
        with self._state_lock:
            if self.channel is None or self.channel.ended is not None:
                raise self._lost()
            return op(self.channel)

    def _channel_op(self, op: Callable[[Channel], object]) -> None:
        """Run ``op(channel)`` under the lock, then write what it produced and close the
        link if it ended the channel."""
        with self._state_lock:
            channel = self.channel
            if channel is None:
                return
            op(channel)
            output = channel.take_output() if channel.output else None
            ended = channel.ended
        if output or ended is not None:
            self._after_channel(output or [], ended)

    def _after_channel(self, output: list[bytes], ended: Ended | None) -> None:
        for payload in output:
            try:
                self.write(payload)
            except PeerUnavailable:
                break
        if ended is not None:
            if ended.bye_reason is not None:
                self.bye_reason = ended.bye_reason
            self._begin_close(ended.reason)

    # -- closing (any thread) ------------------------------------------------------------

    def close(self, reason: str, *, bye: bool = False) -> None:
        """End the link. With ``bye``, first tell the peer (best effort, bounded)."""
        channel = self.channel
        if bye and self.established and not self._closing and channel is not None:
            try:
                self.try_write_nowait(channel.goodbye(reason))
            except Exception:  # noqa: BLE001 -- best effort only
                pass
        self._begin_close(reason)

    def retire(self, *, force: bool = False) -> None:
        """Another link to the same peer won: stop taking new calls (the node no longer
        hands this link out), let pending calls finish, then close it with the peer.

        Each side sends Bye(superseded) once it has no calls pending on this link, and
        closes once it has both sent and received one, so no call in flight is lost.
        With ``force`` (a peer holding more links than any honest one would), it closes
        as soon as its own calls are answered and the peer's calls on it are served,
        without waiting for the peer's bye. (The protocol is :class:`Channel`'s.)
        """
        self._channel_op(lambda ch: ch.retire(force=force))

    def answer(self, payload: bytes | Bulk) -> None:
        """Send the reply (or error) to a call this link handed to the node, best
        effort: if the link is down the caller sees that. Every call routed to the node
        is answered through here exactly once (a forced retirement waits for it)."""
        try:
            self.write(payload)
        except PeerUnavailable:
            pass
        finally:
            with self._state_lock:
                channel = self.channel
                if channel is None or not channel.answered():
                    return  # the usual case: nothing more to do
                output = channel.take_output()
                ended = channel.ended
            self._after_channel(output, ended)

    def _begin_close(self, reason: str, *, protocol_error: bool = False) -> None:
        with self._state_lock:
            if self._closing:
                return
            self._closing = True
            self.close_reason = reason
            self.protocol_error = protocol_error
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader; it closes the socket
            except OSError:
                pass

    def _lost(self) -> PeerUnavailable:
        """The error for a call on this ended link (saying if the peer broke the
        protocol, so that is not mistaken for an unreachable peer). A call sent with
        handshake message 3 on a link that never came up was not delivered: the peer
        decrypts nothing before it accepts message 3, so that is PeerUnavailable,
        saying why (most often the peer has not paired us)."""
        if not self.established:
            peer = self.target.short if self.target else "?"
            return PeerUnavailable(f"could not reach {peer} at {self.address[0]}:"
                                   f"{self.address[1]} ({self.close_reason or 'closed'})")
        error = ConnectionLost(self._lost_text())
        error.protocol_error = self.protocol_error
        return error

    def _lost_text(self) -> str:
        peer = self.peer_id.short if self.peer_id else f"{self.address[0]}:{self.address[1]}"
        return f"link to {peer} lost ({self.close_reason or 'closed'})"

    # -- the link's own thread ---------------------------------------------------------

    def _run(self) -> None:
        handed_off = False
        try:
            if not self._connect_and_handshake():
                return
            # What came with the last handshake frame is a read like any other.
            early, self._early = self._early, []
            self._batch, self._batch_next = early, 0
            if not self._dispatch(early, 0, inline=True) and self.reader != 0:
                handed_off = True  # the new reader routes the rest, then early_routed
                return
            self._channel_op(Channel.early_routed)
            handed_off = not self._read_loop(0)
        except Exception:  # noqa: BLE001 -- a bug here must end this link only
            log.exception("link %r failed", self)
            self._begin_close("internal error")
        finally:
            if not handed_off:  # else the thread that took over reading tears down
                self._teardown()

    def _connect_and_handshake(self) -> bool:
        """Dial (outbound), handshake and register; tell the node it is over however it
        ended, after registration, so nobody sees "no handshake, no link" in between."""
        try:
            if self._sock is None and not self._closing:
                self._dial()
            return not self._closing and self._handshake()
        finally:
            self._owner.link_handshake_over(self)

    def _continue_reading(self, reader: int, leftover: list[Event]) -> None:
        handed_off = False
        try:
            # The old reader is stuck in a handler: what its read brought after that
            # goes to the pool, so it runs now instead of after the slow handler.
            if self._dispatch(leftover, reader, inline=False):
                self._channel_op(Channel.early_routed)  # the leftover may be early ones
                handed_off = not self._read_loop(reader)
            else:
                handed_off = self.reader != reader
        except Exception:  # noqa: BLE001
            log.exception("link %r failed", self)
            self._begin_close("internal error")
        finally:
            if not handed_off:
                self._teardown()

    def enter_inline(self) -> int:
        """The reading thread is about to run handlers itself (one call's, or a run of
        sends): from now on a takeover (:meth:`take_over_reading`) may hand the reading
        to a new thread. Returns the token for :meth:`leave_inline`, which must follow."""
        reader = self.reader
        self._inline_thread = threading.get_ident()
        self.inline_since = time.monotonic()
        return reader

    def leave_inline(self, reader: int) -> None:
        """The handlers :meth:`enter_inline` announced returned (or raised)."""
        with self._state_lock:  # atomic with take_over_reading
            if self.reader == reader:  # else a newer reader owns these now
                self.inline_since = None
                self._inline_thread = None

    def renew_inline(self, reader: int | None) -> None:
        """The reader ``reader`` starts a new stretch of its inline work (the next chunk
        of a run of sends): the watch times it from now."""
        with self._state_lock:  # atomic with take_over_reading
            if self.reader == reader and self.inline_since is not None:
                self.inline_since = time.monotonic()

    def is_inline_here(self) -> bool:
        """Is the current thread this link's reader, busy in a handler?"""
        return self._inline_thread == threading.get_ident()

    def take_over_reading(self) -> None:
        """The reader is stuck in a handler: let a new thread read from here on."""
        with self._state_lock:
            if self.inline_since is None or self._closing:
                return
            self.inline_since = None  # once per stuck handler
            self.reader += 1
            # The stuck reader is inside the event before _batch_next and, seeing the new
            # generation, will start none after it: the rest is the new reader's.
            leftover = self._batch[self._batch_next:]
            self._batch, self._batch_next = [], 0
            reader = Run(partial(self._continue_reading, self.reader, leftover))
            self.threads = [t for t in self.threads if t.is_alive()] + [reader]
            self.thread = reader
        try:
            self._spares.start(reader)
        except RuntimeError as exc:  # the new reader's work (teardown) runs here
            self._no_thread(reader, exc)

    def _dial(self) -> None:
        """Connect within the handshake deadline, in short waits so close() can stop it."""
        deadline = self.started_at + self._handshake_timeout_s
        try:
            family, socktype, proto, _, sockaddr = socket.getaddrinfo(
                self.address[0], self.address[1], type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, socktype, proto)
        except OSError as exc:
            self._begin_close(f"connect failed: {exc.__class__.__name__}")
            return
        try:
            connect_by(sock, sockaddr, deadline, lambda: self._closing)
        except OSError as exc:
            sock.close()
            self._begin_close(f"connect failed: {exc.__class__.__name__}")
            return
        with self._state_lock:
            if self._closing:  # close() raced the dial
                sock.close()
                return
            self._sock = sock

    def _handshake(self) -> bool:
        """Run the handshake under its deadline, then :meth:`_establish` the link."""
        sock = self._sock
        assert sock is not None
        session = self.session
        deadline = self.started_at + self._handshake_timeout_s
        buf = self._read_buffer()
        view = memoryview(buf)
        try:
            pending = session.data_to_send()
            while session.state is not SessionState.OPEN:
                now = time.monotonic()
                remaining = deadline - now
                if remaining <= 0:
                    self._begin_close("handshake deadline passed")
                    return False
                wait_s = remaining
                if self._unsent is not None:  # message 3 waits for the first call
                    wait_s = self._first_flight_by - now
                    if wait_s <= 0:
                        self._flush_unsent()
                        continue
                sock.settimeout(wait_s)  # one ioctl each: only once per round
                if pending:
                    sock.sendall(pending)
                    pending = b""
                try:
                    n = sock.recv_into(buf)
                except (socket.timeout, TimeoutError):
                    continue  # the deadline, or message 3's wait for a call, is up (above)
                if not n:
                    self._begin_close(self._closed_in_handshake_text())
                    return False
                for event in session.receive_data(view[:n]):
                    if isinstance(event, SessionClosed):
                        log.info("handshake with %s:%s failed: %s", *self.address, event.reason)
                        self._begin_close(f"handshake failed: {event.reason}")
                        return False
                    if isinstance(event, MessageReceived):
                        self._early.append(event)
                # The responder's READY (once message 3 checked out) is left in
                # ``pending``: _establish sends it after registering the link.
                pending = session.data_to_send()
                if session.state is SessionState.AWAITING_READY and not self.open_early:
                    self._open_early(pending)
                    pending = b""
        except (socket.timeout, TimeoutError):
            self._begin_close("handshake deadline passed")
            return False
        except OSError as exc:
            self._begin_close(f"handshake I/O error: {exc.__class__.__name__}")
            return False
        try:
            self._local_ip = sock.getsockname()[0]
        except OSError:
            pass
        if session.invite is not None:  # issue 21: an invite exchange, never a peer link
            early = [e.payload for e in self._early if isinstance(e, MessageReceived)]
            self._early.clear()
            return self._owner.link_invite(self, sock, pending, deadline, early)
        return self._establish(sock, pending, deadline)

    def _open_early(self, message3: bytes) -> None:
        """Initiator, message 2 checked (the responder is the peer we dialled, and
        trusted): calls may go out now, right behind message 3, without waiting for
        READY. A call waiting for this link takes message 3 along in its own write, so
        the handshake's end and the first call are one flight; if none is waiting, or
        none comes within :data:`_FIRST_FLIGHT_S`, message 3 goes alone. (The responder
        handles what arrives with message 3 once it accepted it; one that does not
        accept it closes without decrypting the call: see :meth:`_lost`.)"""
        assert self.session.peer_id is not None
        channel = Channel(self.session.peer_id, max_depth=self._max_depth)
        with self._state_lock:
            self.channel = channel
        with self._wlock:
            self._unsent = message3
            self.open_early = True
        self._first_flight_by = time.monotonic() + _FIRST_FLIGHT_S
        if not self._owner.link_first_flight(self):  # nobody waits: send it now
            self._flush_unsent()

    def _flush_unsent(self) -> None:
        """Send message 3 alone (no call took it along). Bounded by the handshake's own
        deadline, not by the socket's timeout of the moment (the short wait above)."""
        with self._wlock:
            data, self._unsent = self._unsent, None
            if data and self._sock is not None:
                left = self.started_at + self._handshake_timeout_s - time.monotonic()
                _send_all(self._sock, data, max(0.001, left))

    def _take_unsent(self) -> bytes:
        """Under the write lock: message 3, for the write that goes first."""
        data, self._unsent = self._unsent, None
        return data or b""

    def _establish(self, sock: socket.socket, ready: bytes, deadline: float) -> bool:
        """Register the link with the node, and only then (responder) send READY.

        The initiator counts the link as up when READY arrives, so the responder must
        have it registered before READY leaves: "connected" on either side then means
        both sides can call. The write lock is held throughout, so no call can be
        sealed on this link before READY, which holds the first send nonce. (The
        initiator's calls may already be out: see :meth:`_open_early`.)
        """
        assert self.session.peer_id is not None
        channel = self.channel
        if channel is None:
            channel = Channel(self.session.peer_id, max_depth=self._max_depth)
            with self._state_lock:
                self.channel = channel
        if self._early:
            with self._state_lock:
                channel.hold_early()  # a forced retirement waits until they are routed
        with self._wlock:
            retire = None if self._closing else self._owner.link_established(self)
            if retire is None:
                return False
            self.established = True
            try:
                sock.settimeout(None)  # blocking from now on: see _send_all
                _bound_local_rcvbuf(sock)
                if ready:
                    _send_all(sock, ready, max(0.001, deadline - time.monotonic()))
            except OSError as exc:
                self._begin_close(f"handshake I/O error: {exc.__class__.__name__}")
        # Retiring writes a bye, maybe on this very link: only with the lock released.
        for other, force in retire:
            other.retire(force=force)
        return not self._closing

    def _closed_in_handshake_text(self) -> str:
        """Why the link ended when the peer hung up mid-handshake. After message 3 (we
        proved who we are and are waiting for READY) that means the peer refused this
        node's key: almost always because it has not paired us (one-sided pairing)."""
        if self.session.state is not SessionState.AWAITING_READY:
            return "peer closed during the handshake"
        me = self.session.local_id
        return (f"{self._peer_text()} did not accept this node's key: it has not paired "
                f"this node. On {self._peer_text()}, run `peernet pair {me}` or "
                f"node.pair({str(me)!r})")

    def _read_loop(self, reader: int) -> bool:
        """Read until the link ends (True) or another thread took over reading (False)."""
        sock = self._sock
        assert sock is not None
        session = self.session
        buf = self._read_buffer()
        view = memoryview(buf)
        while not self._closing:
            if self.reader != reader:
                return False
            flags = 0
            if self._watch_wanted:
                # Calls are made on this link: wait where a caller can take over reading
                # its reply without waking this thread (start_call).
                self._park()
                flags = _DONTWAIT  # a caller may have read what woke us
            try:
                n = sock.recv_into(buf, 0, flags)  # blocking: close() shuts it down to wake it
            except BlockingIOError:
                continue
            except OSError as exc:
                self._begin_close(f"read failed: {exc.__class__.__name__}")
                return True
            if not n:
                self._begin_close("peer closed the connection")
                return True
            self.last_received = time.monotonic()
            events = session.receive_data(view[:n])
            self._batch, self._batch_next = events, 0
            if not self._dispatch(events, reader, inline=True):
                return self.reader == reader
        return True

    def _read_buffer(self) -> bytearray:
        if self._buf is None:
            self._buf = bytearray(_RECV_BUFFER)
        return self._buf

    # -- the reading baton ---------------------------------------------------------------
    #
    # A caller that waits for its reply would otherwise be woken twice per call: the
    # reply wakes the link's thread, which wakes the caller. Instead, once calls are
    # made on a link, its thread waits in epoll_wait on a one-shot registration
    # (``_PARKED``); a caller that finds it parked disarms that registration and reads
    # the socket itself until its reply is in (``_CALLER_READS``), routing whatever else
    # it reads as the link's thread would, then re-arms it. The arriving reply then wakes
    # only the caller, and the link's thread sleeps through the call. Whoever reads
    # holds the baton; the link's thread takes it back before it reads or tears down.

    def _park(self) -> None:
        """On the link's thread: wait in epoll until there is something to read, and
        return holding the baton (no caller reading)."""
        with self._state_lock:
            if self._closing:
                return
            if self._epoll is None:
                sock = self._sock
                assert sock is not None
                self._fd = sock.fileno()
                self._poller = select.poll()
                self._poller.register(self._fd, select.POLLIN)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _RCVTIMEO)
                self._epoll = select.epoll(1)
                self._epoll.register(self._fd, _ARMED)
            else:
                self._epoll.modify(self._fd, _ARMED)
            self._watch = _PARKED
            epoll = self._epoll
        epoll.poll()  # data, a shutdown (HUP), or a caller's re-arm with data waiting
        with self._state_lock:
            while self._watch == _CALLER_READS:
                self._baton_waiting = True
                self._baton_free.wait()
            self._baton_waiting = False
            self._watch = _THREAD_READS

    def read_reply(self, fut: Future[Any], deadline: float) -> None:
        """Holding the baton: read and route until ``fut`` is done, ``deadline``
        (monotonic) passes or the link ends; then hand reading back to the link's thread.
        Calls and sends from the peer read here go to the scheduler, never run here."""
        try:
            sock = self._sock
            assert sock is not None and self._buf is not None
            buf = self._buf
            view = memoryview(buf)
            poll = self._poller.poll
            while not self._closing:
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    return
                try:
                    if remaining_s > _CALLER_RECV_WAIT_S:
                        n = sock.recv_into(buf)  # at most _CALLER_RECV_WAIT_S (SO_RCVTIMEO)
                    elif poll(remaining_s * 1000):
                        n = sock.recv_into(buf, 0, _DONTWAIT)
                    else:
                        continue
                except BlockingIOError:  # the receive timeout: look at the deadline
                    continue
                except OSError as exc:
                    self._begin_close(f"read failed: {exc.__class__.__name__}")
                    return
                if not n:
                    self._begin_close("peer closed the connection")
                    return
                self.last_received = time.monotonic()
                answered = False
                for event in self.session.receive_data(view[:n]):
                    if self._closing:
                        return  # nothing after the end counts
                    if type(event) is MessageReceived:
                        if self._route(event.payload, inline=False) is fut:
                            answered = True  # the rest of this read is routed too
                    elif type(event) is SessionClosed:
                        log.warning("link to %s closed: %s", self._peer_text(), event.reason)
                        self._begin_close(event.reason, protocol_error=True)
                        return
                if answered:
                    return
        finally:
            self.end_reading()

    def end_reading(self) -> None:
        """Give the baton back: re-arm the link's thread (woken at once if data waits).
        Only the thread holding it gives it back, so a second call (a caller's cleanup
        after KeyboardInterrupt, once read_reply already did) does nothing."""
        with self._state_lock:
            if self._watch != _CALLER_READS or self._baton_holder != threading.get_ident():
                return
            self._baton_holder = None
            self._watch = _PARKED
            try:
                self._epoll.modify(self._fd, _ARMED)
            except OSError:  # pragma: no cover - the socket outlives every baton holder
                pass
            if self._baton_waiting:
                self._baton_free.notify()

    def _dispatch(self, events: list, reader: int, *, inline: bool) -> bool:
        """Route ``events`` in order; False once the link is ending or another thread
        took over reading (it has the events this one did not start)."""
        try:
            for i, event in enumerate(events):
                if self.reader != reader or self._closing:  # per event: ended means now
                    return False
                if isinstance(event, MessageReceived):
                    self._batch_next = i + 1  # before the handler: a takeover reads it
                    self._route(event.payload, inline=inline)
                    if self.protocol_error:
                        return False  # nothing after bytes that broke the protocol counts
                elif isinstance(event, SessionClosed):
                    # The session ends itself only on bytes that broke the protocol.
                    log.warning("link to %s closed: %s", self._peer_text(), event.reason)
                    self._begin_close(event.reason, protocol_error=True)
                    return False
            return True
        finally:
            if self.send_run == reader:  # this read's run of sends is over
                self._owner.link_read_done(self)

    def _peer_text(self) -> str:
        return self.peer_id.short if self.peer_id else "?"

    def _route(self, payload: bytes, *, inline: bool) -> Any:
        """Decode and handle one message; returns the token of a call it answered."""
        channel = self.channel
        assert channel is not None
        try:
            msg = channel.decode(payload)  # stateless: outside the lock
        except ProtocolError as exc:
            log.warning("closing link to %s: %s", self._peer_text(), exc)
            self._begin_close(f"protocol error: {exc}", protocol_error=True)
            return None
        if type(msg) is Send:
            # The commonest message, and one that changes no channel state (see the
            # channel's module doc): routed without its lock or an event.
            if channel.ended is None:
                # Handed over in a box the owner empties: decoded, a message can hold
                # ~70x its payload, and this frame must not keep it alive in a queue.
                box: list[Call | Send] = [msg]
                del msg
                self._owner.link_message(self, box, inline=inline, payload=payload)
            return None
        with self._state_lock:
            event = channel.handle(msg, self.last_received)  # when its bytes arrived
            output = channel.take_output() if channel.output else None
            ended = channel.ended
        del msg  # the event holds it; the box below is its only other holder
        answered = None
        match event:  # the commonest first: a peer's call, then an answer
            case CallIn(call=work):
                box = [work]  # as a send's, above
                del event, work
                self._owner.link_message(self, box, inline=inline, payload=payload)
            case Answered(token=fut, result=result):
                settle(fut, result=result)
                answered = fut
            case Refused(token=fut, error=error):
                settle(fut, error=error)
                answered = fut
            case PongIn(token=fut, rtt_s=rtt_s):
                self.rtt_s = rtt_s
                if fut is not None:
                    settle(fut, result=rtt_s)
            case PeerRetired():
                self._owner.link_retired(self)
        if output or ended is not None:
            self._after_channel(output or [], ended)
        return answered

    def _teardown(self) -> None:
        self._begin_close(self.close_reason or "closed")
        with self._wlock:  # wait out a writer still inside sendall
            self.session.close(self.close_reason or "closed")
            sock = self._sock
            self._sock = None
        if sock is not None:
            sock.close()
        if self._epoll is not None:
            self._epoll.close()
        with self._state_lock:
            channel = self.channel
            waiting = channel.close() if channel is not None else []
        for fut in waiting:  # pending calls and pings fail at once, never time out
            settle(fut, error=self._lost())
        self._owner.link_closed(self)
