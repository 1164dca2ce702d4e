"""A secure session, sans-IO: bytes in, bytes and events out.

Theory of operation
-------------------
One :class:`Session` is one side of one TCP connection. The edge feeds it whatever the
socket returned (``receive_data``), writes whatever it has to say (``data_to_send``), and
seals outgoing application messages with ``seal``. The session never touches a socket,
a clock or a thread.

1. **Handshake.** ``Noise_XX_25519_ChaChaPoly_SHA256`` with the prologue ``peernet/1``.
   Message 1 carries an empty payload. Messages 2 (responder) and 3 (initiator) each
   carry an *identity binding*: the sender's protocol version, listening port, Ed25519
   public key, and an Ed25519 signature over ``peernet/1 noise static key`` + its Noise
   static key. The receiver checks that the Ed25519 key converts to the Noise static key
   the handshake just proved possession of, and that the signature verifies, so the
   peer proves its :class:`PeerId`.
2. **Trust.** The initiator checks the responder's PeerId right after message 2 -- it must
   be the peer it meant to dial and on the trust list -- and never sends message 3 (which
   reveals its own identity) to anyone else. The responder checks the trust list when
   message 3 arrives, through a callback, so an ``unpair`` that happened mid-handshake
   counts.
3. **READY.** The responder's first transport message is a one-byte READY frame. The
   initiator reports the handshake complete only when READY arrives, so "connected" on
   either side means *both* sides accepted the link.
4. **Transport.** Every transport plaintext starts with a flag byte: ``MORE`` (a fragment,
   more follow), ``END`` (the last or only fragment of a message) or ``READY``. Messages up
   to ``max_message_size`` are split into fragments of at most 65518 bytes, and
   reassembled under the same bound.

Anything malformed, tampered, replayed, reordered, truncated, oversize or untrusted ends
the session: ``receive_data`` returns a final :class:`SessionClosed` event (after any
events that preceded the fault) and ignores input from then on. Bytes that arrive in the
same read as the last handshake message are processed at once.
"""

from __future__ import annotations

import enum
import hmac
import struct
from dataclasses import dataclass
from typing import Callable

from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519

from ..errors import HandshakeError, MessageTooLarge, ProtocolError
from .keys import Identity, verify
from ..ids import PeerId
from .framing import MAX_FRAME_LEN, Deframer, frame
from .invite import HELLO_LEN as INVITE_HELLO_LEN
from .noise import TAG_LEN, CipherState, HandshakeState

__all__ = [
    "PROLOGUE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "LocalCredentials",
    "Session",
    "SessionState",
    "HandshakeCompleted",
    "MessageReceived",
    "SessionClosed",
    "Event",
]

#: Names the protocol and its version; mixed into the handshake hash (Noise §6).
PROLOGUE = b"peernet/1"
PROTOCOL_VERSION = 1
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20

_BINDING_CONTEXT = b"peernet/1 noise static key"
_BINDING = struct.Struct(">BH32s64s")  # version, listen port, Ed25519 key, signature
#: Handshake messages are 32, 195 and 163 bytes; anything far larger is hostile.
_MAX_HANDSHAKE_FRAME = 512

_FLAG_MORE = 0x00
_FLAG_END = 0x01
_FLAG_READY = 0x02
_READY = bytes([_FLAG_READY])
#: Largest fragment body: the Noise limit minus the AEAD tag and the flag byte.
MAX_FRAGMENT = MAX_FRAME_LEN - TAG_LEN - 1


#: Identity proofs (key, static key, signature) already checked: the check is a pure
#: function of these bytes, and skipping it saves ~100 us per reconnect of a known peer.
_VERIFIED: dict[bytes, None] = {}
_VERIFIED_SIZE = 1024


class SessionState(enum.Enum):
    HANDSHAKING = "handshaking"
    #: Initiator only: message 3 sent, waiting for the responder's READY.
    AWAITING_READY = "awaiting_ready"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """Both sides accepted the link; ``peer_id`` is proven by the handshake."""

    peer_id: PeerId
    #: The TCP port the peer listens on (0 when it does not listen).
    listen_port: int
    handshake_hash: bytes


@dataclass(slots=True)  # not frozen: one is made per message, and frozen costs ~0.1 us
class MessageReceived:
    """One complete application message (CBOR bytes, not yet decoded)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The session ended; ``reason`` is for logs (it never holds peer data)."""

    reason: str


Event = HandshakeCompleted | MessageReceived | SessionClosed


@dataclass(frozen=True, slots=True)
class LocalCredentials:
    """What a session needs of this node's identity, computed once per node."""

    peer_id: PeerId
    static_private: bytes
    static_public: bytes
    #: Ed25519 signature binding the Noise static key to ``peer_id``.
    binding_signature: bytes

    @classmethod
    def from_identity(cls, identity: Identity) -> LocalCredentials:
        static_public = identity.x25519_public
        return cls(
            peer_id=identity.peer_id,
            static_private=identity.x25519_private,
            static_public=static_public,
            binding_signature=identity.sign(_BINDING_CONTEXT + static_public),
        )

    def binding(self, listen_port: int) -> bytes:
        return _BINDING.pack(
            PROTOCOL_VERSION, listen_port, self.peer_id.bytes, self.binding_signature
        )

    def __repr__(self) -> str:
        return f"LocalCredentials({self.peer_id!r})"


class Session:
    """One side of one connection. See the module docstring for the protocol.

    :param initiator: True on the side that dialled.
    :param is_trusted: called with the remote PeerId at the point the handshake decides
        (after message 2 on the initiator, message 3 on the responder); only ``True``
        lets the handshake continue.
    :param expected_peer: initiator only: the PeerId it meant to dial. Required there.
    :param listen_port: our listening port, told to the peer (0 if we do not listen).
    :param max_message_size: bound on one reassembled application message, both ways.
    :param invite: initiator only (issue 21): an invite hello to append to the identity
        binding of message 3. The link is then an invite exchange: the responder's PeerId
        is still checked against ``expected_peer``, but not against the trust list.
    :param invite_gate: responder only: called with the proven PeerId and the hello when
        message 3 carries one; only ``True`` accepts the link, as an invite exchange
        (the trust list is not consulted). Without a gate a hello is refused.
    """

    def __init__(
        self,
        credentials: LocalCredentials,
        *,
        initiator: bool,
        is_trusted: Callable[[PeerId], bool],
        expected_peer: PeerId | None = None,
        listen_port: int = 0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        ephemeral_private: bytes | None = None,
        invite: bytes | None = None,
        invite_gate: Callable[[PeerId, bytes], bool] | None = None,
    ) -> None:
        if initiator and expected_peer is None:
            raise ValueError("an initiator must say which peer it dials")
        if not 0 <= listen_port <= 0xFFFF:
            raise ValueError(f"listen_port out of range: {listen_port}")
        self.initiator = initiator
        self.state = SessionState.HANDSHAKING
        self.peer_id: PeerId | None = None
        self.peer_listen_port = 0
        self.handshake_hash = b""
        self.close_reason: str | None = None
        self.max_message_size = max_message_size
        self._credentials = credentials
        self._is_trusted = is_trusted
        #: Initiator only: the PeerId this session dialled.
        self.expected_peer = expected_peer
        self._listen_port = listen_port
        self._hs: HandshakeState | None = HandshakeState(
            initiator, credentials.static_private, ephemeral_private, PROLOGUE,
            static_public=credentials.static_public,
        )
        self._deframer = Deframer(min_frame_len=32, max_frame_len=_MAX_HANDSHAKE_FRAME)
        self._outgoing = bytearray()
        self._send: CipherState | None = None
        self._recv: CipherState | None = None
        self._fragments: list[bytes] = []
        self._fragment_bytes = 0
        self._answered_msg1 = False  # responder: message 2 written, expecting message 3
        #: A proven PeerId the trust check refused (the handshake then closed): lets
        #: the edge tell "an unpaired peer knocked" from other handshake failures.
        self.refused_peer: PeerId | None = None
        #: The port the refused peer said it listens on (0: none), from its message 3
        #: payload (sealed under keys that need its static key, so it is the key
        #: holder's word): where to dial it if it is paired later.
        self.refused_listen_port = 0
        #: The invite hello of an invite exchange (issue 21), on both sides; None on a
        #: normal link. Such a link must never carry calls: the edge hands it over.
        self.invite = invite if initiator else None
        self._invite_gate = invite_gate
        if initiator:
            self._outgoing += frame(self._hs.write_message(b""))

    # -- edge-facing API ------------------------------------------------------------

    @property
    def local_id(self) -> PeerId:
        """This side's own PeerId."""
        return self._credentials.peer_id

    def data_to_send(self) -> bytes:
        """Bytes the session produced on its own (handshake messages, READY).

        The edge must write these before anything sealed later, because they use the
        same send nonce sequence.
        """
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes from the socket; returns the events they complete, in order."""
        events: list[Event] = []
        if self.state is SessionState.CLOSED:
            return events
        try:
            deframer = self._deframer
            deframer.feed(data)
            while self._hs is not None:  # one frame at a time: the limits change after
                body = deframer.next_frame()
                if body is None:
                    return events
                self._handshake_frame(body, events)
            while bodies := deframer.frames():
                self._transport_frames(bodies, events)
        except ProtocolError as exc:  # HandshakeError included
            self._close(str(exc), events)
        return events

    def seal(self, payload: bytes) -> bytes:
        """Encrypt one application message into wire bytes (one or more frames).

        Callers must seal and write under one lock: the nonce order is the wire order.
        Raises :class:`MessageTooLarge` over ``max_message_size``, and
        :class:`ProtocolError` when the session is not open or the nonce is exhausted.
        """
        n = len(payload)
        state = self.state
        if (n <= MAX_FRAGMENT and n <= self.max_message_size  # the common case: one
                and (state is SessionState.OPEN or state is SessionState.AWAITING_READY)):
            body = self._send.encrypt(b"\x01" + payload)  # type: ignore[union-attr]
            return len(body).to_bytes(2, "big") + body  # frame(), inline
        self._check_sendable(n)
        if n <= MAX_FRAGMENT:
            return frame(self._send.encrypt(b"\x01" + payload))  # type: ignore[union-attr]
        return b"".join(self._fragments_of(payload, b""))

    def seal_frames(self, head: bytes, body: bytes) -> list[bytes]:
        """:meth:`seal` of ``head + body``, as a list of frames, without joining the two
        or the frames: for a writer that gathers them (``writev``), so a large message
        is never copied into a second contiguous buffer. Same checks and wire bytes."""
        self._check_sendable(len(head) + len(body))
        return self._fragments_of(head, body)

    def _check_sendable(self, n: int) -> None:
        # The initiator may send once message 3 is written (AWAITING_READY): its first
        # messages can then travel with message 3 (see guides/protocol.md, section 3).
        if self.state is not SessionState.OPEN and self.state is not SessionState.AWAITING_READY:
            raise ProtocolError(f"session is {self.state.value}, cannot send")
        if n > self.max_message_size:
            raise MessageTooLarge(
                f"message of {n} bytes exceeds max_message_size ({self.max_message_size})"
            )

    def _fragments_of(self, head: bytes, body: bytes) -> list[bytes]:
        """Seal ``head + body`` as fragments of MAX_FRAGMENT bytes, the last one shorter.
        The first fragment takes all of ``head`` (short: a message's envelope) and the
        start of ``body``; every byte is copied once, into its fragment's plaintext."""
        send = self._send
        assert send is not None
        if len(head) >= MAX_FRAGMENT:  # not a short envelope: no need to keep it apart
            head, body = b"", head + body
        view = memoryview(body)
        frames = []
        start = -len(head)  # where in body the next fragment starts (< 0: inside head)
        while True:
            end = start + MAX_FRAGMENT
            flag = b"\x01" if end >= len(body) else b"\x00"
            plain = flag + head + view[:end] if start < 0 else flag + view[start:end]
            frames.append(frame(send.encrypt(plain)))
            if end >= len(body):
                return frames
            start = end

    def close(self, reason: str = "closed locally") -> None:
        """Mark the session closed; later input is ignored and ``seal`` refuses."""
        if self.state is not SessionState.CLOSED:
            self._close(reason, [])

    # -- handshake --------------------------------------------------------------------

    def _handshake_frame(self, body: bytes, events: list[Event]) -> None:
        hs = self._hs
        assert hs is not None
        payload = hs.read_message(body)
        if self.initiator:
            # Message 2: the responder's identity. Decide before saying anything more.
            peer, port = self._verify_binding(payload, hs.remote_static)
            if peer != self.expected_peer:
                assert self.expected_peer is not None
                raise HandshakeError(
                    f"dialled {self.expected_peer.short} but {peer.short} answered"
                )
            if self.invite is None:  # an invite exchange: the PAKE authenticates it
                self._check_trusted(peer, port)
            payload = self._credentials.binding(self._listen_port) + (self.invite or b"")
            self._outgoing += frame(hs.write_message(payload))
            self._finish_handshake(peer, port)
            self.state = SessionState.AWAITING_READY
        elif not self._answered_msg1:
            # Message 1: only an ephemeral key; a payload would be off-protocol.
            if payload:
                raise HandshakeError("unexpected payload in handshake message 1")
            self._outgoing += frame(hs.write_message(self._credentials.binding(self._listen_port)))
            self._answered_msg1 = True
        else:
            # Message 3: the initiator's identity, checked against the live trust list
            # (or, with an invite hello after it, against the open invites).
            hello = payload[_BINDING.size:]
            peer, port = self._verify_binding(payload[:_BINDING.size] if hello else payload,
                                              hs.remote_static, hello_len=len(hello))
            if hello:
                self._check_invite(peer, hello)
            else:
                self._check_trusted(peer, port)
            self._finish_handshake(peer, port)
            self.state = SessionState.OPEN
            assert self._send is not None
            self._outgoing += frame(self._send.encrypt(_READY))
            events.append(HandshakeCompleted(peer, port, self.handshake_hash))

    def _finish_handshake(self, peer: PeerId, port: int) -> None:
        hs = self._hs
        assert hs is not None and hs.complete
        self._send, self._recv = hs.split()
        self.handshake_hash = hs.handshake_hash
        self.peer_id = peer
        self.peer_listen_port = port
        self._hs = None
        self._deframer.min_frame_len = TAG_LEN + 1
        self._deframer.max_frame_len = MAX_FRAME_LEN

    def _verify_binding(self, payload: bytes, remote_static: bytes | None,
                        hello_len: int = 0) -> tuple[PeerId, int]:
        if remote_static is None or len(payload) != _BINDING.size or hello_len not in (
                0, INVITE_HELLO_LEN):
            raise HandshakeError("malformed identity payload")
        version, port, ed_public, signature = _BINDING.unpack(payload)
        if version != PROTOCOL_VERSION:
            raise HandshakeError(f"unsupported protocol version {version}")
        peer = PeerId(ed_public)
        proof = ed_public + remote_static + signature
        if proof not in _VERIFIED:  # a reconnecting peer presents the same proof
            try:
                converted = crypto_sign_ed25519_pk_to_curve25519(ed_public)
            except Exception:  # libsodium refuses small-order and non-canonical points
                raise HandshakeError("identity key is not a valid Ed25519 key") from None
            if not hmac.compare_digest(converted, remote_static):
                raise HandshakeError("identity key does not match the handshake's static key")
            # The conversion is two-to-one (the sign of x is lost); the signature pins
            # the exact Ed25519 key the peer claims.
            if not verify(peer, _BINDING_CONTEXT + remote_static, signature):
                raise HandshakeError(f"bad identity signature from {peer.short}")
            if len(_VERIFIED) >= _VERIFIED_SIZE:
                _VERIFIED.clear()  # atomic, so safe between threads; refilled as used
            _VERIFIED[proof] = None
        if peer == self._credentials.peer_id:
            raise HandshakeError("connected to ourselves")
        return peer, port

    def _check_invite(self, peer: PeerId, hello: bytes) -> None:
        gate = self._invite_gate
        try:
            accepted = gate is not None and gate(peer, hello) is True
        except Exception:  # noqa: BLE001 -- a broken gate must deny, never crash
            accepted = False
        if not accepted:
            raise HandshakeError(f"{peer.short} asked for an invite that is not open")
        self.invite = hello

    def _check_trusted(self, peer: PeerId, port: int) -> None:
        try:
            trusted = self._is_trusted(peer)
        except Exception:  # noqa: BLE001 -- a broken trust check must deny, never crash
            raise HandshakeError(f"trust check for {peer.short} failed") from None
        if trusted is not True:
            self.refused_peer, self.refused_listen_port = peer, port
            raise HandshakeError(f"{peer.short} is not paired")

    # -- transport --------------------------------------------------------------------

    def _transport_frames(self, bodies: list[bytes], events: list[Event]) -> None:
        """Decrypt and take ``bodies`` in order. This runs for every message received:
        a whole message in one frame, on an open session, is handled in the loop; the
        rest (READY, fragments, unknown flags) by :meth:`_transport_plain`."""
        decrypt = self._recv.decrypt  # type: ignore[union-attr]
        whole = self.state is SessionState.OPEN and not self._fragments
        limit = self.max_message_size + 1  # the flag byte and the message
        for body in bodies:
            plain = decrypt(body)
            if whole and plain[0] == _FLAG_END and len(plain) <= limit:
                events.append(MessageReceived(plain[1:]))
            else:
                self._transport_plain(plain, events)
                whole = self.state is SessionState.OPEN and not self._fragments

    def _transport_plain(self, plain: bytes, events: list[Event]) -> None:
        flag = plain[0]
        if self.state is SessionState.AWAITING_READY:
            if flag != _FLAG_READY or len(plain) != 1:
                raise ProtocolError("expected READY as the responder's first message")
            self.state = SessionState.OPEN
            assert self.peer_id is not None
            events.append(HandshakeCompleted(self.peer_id, self.peer_listen_port, self.handshake_hash))
            return
        if flag == _FLAG_END:
            if not self._fragments:
                if len(plain) - 1 > self.max_message_size:
                    raise ProtocolError("message exceeds max_message_size")
                events.append(MessageReceived(plain[1:]))
                return
            self._add_fragment(plain)
            message = b"".join(self._fragments)
            self._fragments.clear()
            self._fragment_bytes = 0
            events.append(MessageReceived(message))
        elif flag == _FLAG_MORE:
            if len(plain) == 1:
                raise ProtocolError("empty fragment")
            self._add_fragment(plain)
        else:
            raise ProtocolError(f"unknown transport flag {flag:#04x}")

    def _add_fragment(self, plain: bytes) -> None:
        self._fragment_bytes += len(plain) - 1
        if self._fragment_bytes > self.max_message_size:
            raise ProtocolError("message exceeds max_message_size")
        self._fragments.append(plain[1:])

    def _close(self, reason: str, events: list[Event]) -> None:
        self.state = SessionState.CLOSED
        self.close_reason = reason
        # Forget keys and partial data at once; nothing may use them any more.
        self._hs = None
        self._send = self._recv = None
        self._fragments.clear()
        self._outgoing.clear()
        events.append(SessionClosed(reason))
