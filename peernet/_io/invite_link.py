"""The socket side of an invite exchange (issue 21): sealed messages over one
connection, under an absolute deadline, on the caller's thread.

An invite link is never a peer link: it carries the handful of messages of
:mod:`peernet._proto.invite` and then closes. On the inviter's side the link thread
that ran the handshake hands the socket here (``Mesh.link_invite``) instead of
registering the link, so nothing on it can reach a handler, the heartbeat never pings
it, and the pre-auth slot it took at ``accept`` is held until the exchange is over. On
the joiner's side :func:`dial_invite` connects and runs the initiator's handshake
itself, on the thread that called ``Node.join``: no thread, no registry entry. Its
sockets are tracked in a :class:`Dials`, so that closing the node ends a join at once
(it may wait on its inviter for as long as the caller's timeout) instead of leaving it
running, and pairing, after the node is gone.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Protocol

from .._proto.invite import MAX_INVITE_MESSAGE
from .._proto.session import (
    LocalCredentials,
    MessageReceived,
    Session,
    SessionClosed,
    SessionState,
)
from ..errors import ConnectionLost, InviteRejected, NodeClosed, PeerUnavailable
from .link import connect_by

if TYPE_CHECKING:
    from ..ids import PeerId

__all__ = ["Dials", "InviteHost", "Pipe", "dial_invite"]

_RECV_BUFFER = 65536 + 2


class InviteHost(Protocol):
    """What the mesh asks about invites (the node's invite book implements it)."""

    def gate(self, peer: PeerId, hello: bytes, source_ip: str, local_ip: str) -> bool:
        """Message 3 carried ``hello``: may ``peer`` (unpaired, most likely), which
        connected from ``source_ip`` to our ``local_ip``, go on, into an invite-only
        link? Called on the link's thread; must not block."""
        ...

    def serve(self, pipe: Pipe, hello: bytes, peer: PeerId, address: tuple[str, int]) -> None:
        """Run the inviter's side of the exchange on ``pipe`` (which the caller closes)."""
        ...


class Dials:
    """The joiner's invite sockets of one node, from before their connect until their
    pipe closes. :meth:`close` (the node is closing) shuts every one down, which wakes a
    read or a connect waiting on it, and refuses new ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self.closed = False

    @property
    def busy(self) -> bool:
        """A join is dialling or exchanging now."""
        with self._lock:
            return bool(self._socks)

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            if not self.closed:
                self._socks.add(sock)
                return
        sock.close()
        raise NodeClosed("the node is closed")

    def discard(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.discard(sock)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            socks = list(self._socks)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected yet: the connect loop sees ``closed``


class Pipe:
    """Whole messages in and out of one socket through its open ``session``; every
    operation ends by the absolute ``deadline`` (monotonic). Errors are ConnectionLost.
    ``dials``: where the socket is tracked (the joiner's side), until :meth:`close`."""

    def __init__(self, sock: socket.socket, session: Session, deadline: float,
                 early: list[bytes] | None = None, dials: Dials | None = None) -> None:
        self._sock = sock
        self._session = session
        self._deadline = deadline
        self._inbox: list[bytes] = list(early or ())
        self._buf = bytearray(_RECV_BUFFER)
        self._dials = dials

    @property
    def handshake_hash(self) -> bytes:
        return self._session.handshake_hash

    @property
    def peer_id(self) -> PeerId:
        assert self._session.peer_id is not None
        return self._session.peer_id

    def _remaining(self) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise ConnectionLost("the invite exchange ran out of time")
        return remaining

    def send_raw(self, data: bytes) -> None:
        """Bytes the session produced itself (the responder's READY)."""
        if data:
            self._sock.settimeout(self._remaining())
            try:
                self._sock.sendall(data)
            except OSError as exc:
                raise ConnectionLost(f"invite link write failed: {type(exc).__name__}") from None

    def send(self, payload: bytes) -> None:
        self.send_raw(self._session.seal(payload))

    def recv(self) -> bytes:
        """The next whole message; ConnectionLost if the peer closed, broke the
        protocol or the deadline passed first."""
        while not self._inbox:
            self._sock.settimeout(self._remaining())
            try:
                n = self._sock.recv_into(self._buf)
            except (socket.timeout, TimeoutError):
                raise ConnectionLost("the invite exchange ran out of time") from None
            except OSError as exc:
                raise ConnectionLost(f"invite link read failed: {type(exc).__name__}") from None
            if not n:
                raise ConnectionLost("the other side closed the invite link")
            for event in self._session.receive_data(memoryview(self._buf)[:n]):
                if isinstance(event, MessageReceived):
                    self._inbox.append(event.payload)
                elif isinstance(event, SessionClosed):
                    raise ConnectionLost(f"invite link broke the protocol: {event.reason}")
        return self._inbox.pop(0)

    def close(self) -> None:
        self._session.close()
        if self._dials is not None:
            self._dials.discard(self._sock)
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> Pipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dial_invite(credentials: LocalCredentials, address: tuple[str, int], *,
                expected: PeerId, hello: bytes, listen_port: int, deadline: float,
                max_message_size: int = MAX_INVITE_MESSAGE,
                dials: Dials | None = None) -> Pipe:
    """Connect to ``address`` and run the joiner's handshake with ``hello`` in message 3,
    until the inviter's READY. Raises PeerUnavailable (cannot connect, or someone other
    than ``expected`` answers: HandshakeError), InviteRejected (the inviter closed after
    message 3: no such invite open there), ConnectionLost, or NodeClosed (``dials`` was
    closed before the dial; once it is closed during one, any of the others)."""
    dials = dials if dials is not None else Dials()
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise PeerUnavailable("no time left to dial the inviter")
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            address[0], address[1], type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise PeerUnavailable(f"could not connect to {address[0]}:{address[1]} "
                              f"({type(exc).__name__})") from None
    dials.add(sock)
    try:
        connect_by(sock, sockaddr, deadline, lambda: dials.closed)
    except OSError as exc:
        dials.discard(sock)
        sock.close()
        raise PeerUnavailable(f"could not connect to {address[0]}:{address[1]} "
                              f"({type(exc).__name__})") from None
    session = Session(credentials, initiator=True, is_trusted=lambda peer: False,
                      expected_peer=expected, listen_port=listen_port,
                      max_message_size=max_message_size, invite=hello)
    pipe = Pipe(sock, session, deadline, dials=dials)
    try:
        buf = bytearray(_RECV_BUFFER)
        while session.state is not SessionState.OPEN:
            pipe.send_raw(session.data_to_send())
            sock.settimeout(pipe._remaining())
            try:
                n = sock.recv_into(buf)
            except (socket.timeout, TimeoutError):
                raise ConnectionLost("the inviter did not finish the handshake in time") from None
            except OSError as exc:  # a reset after message 3 is a refusal too
                if session.state is not SessionState.AWAITING_READY:
                    raise ConnectionLost(f"handshake failed: {type(exc).__name__}") from None
                n = 0
            if not n:
                if session.state is SessionState.AWAITING_READY:
                    raise InviteRejected(
                        f"{expected.short} refused the invite: it has no open invite that "
                        "the code names (used, burned, expired, cancelled, or never made; "
                        "a short code is taken only from the inviter's own network)")
                raise ConnectionLost("the inviter closed the connection during the handshake")
            for event in session.receive_data(memoryview(buf)[:n]):
                if isinstance(event, SessionClosed):  # e.g. someone else answers there
                    raise PeerUnavailable(f"handshake with {address[0]}:{address[1]} failed: "
                                          f"{event.reason}")
                if isinstance(event, MessageReceived):  # came in the read with READY
                    pipe._inbox.append(event.payload)
    except BaseException:
        pipe.close()
        raise
    return pipe

