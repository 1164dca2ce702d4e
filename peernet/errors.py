"""Every exception peernet raises, in one place.

All of them derive from :class:`PeerNetError`, so ``except peernet.PeerNetError`` catches
anything the library raises on purpose. Where a builtin means the same thing, the class
inherits it too (``CallTimeout`` is a ``TimeoutError``, ``InvalidPeerId`` a ``ValueError``,
``EncodeError`` a ``TypeError``), so code written against the builtins keeps working.

This module imports nothing else from peernet, so every layer may use it.
"""

from __future__ import annotations

__all__ = [
    "PeerNetError",
    "InvalidPeerId",
    "PeerLookupError",
    "UnknownPeer",
    "AmbiguousPeer",
    "InvalidHandlerName",
    "EncodeError",
    "MessageTooLarge",
    "ProtocolError",
    "HandshakeError",
    "KeyFileError",
    "InsecureKeyFile",
    "TrustStoreError",
    "DataDirLocked",
    "InsecureDataDir",
    "NodeClosed",
    "PortInUse",
    "NotPaired",
    "CallError",
    "PeerUnavailable",
    "ConnectionLost",
    "CallTimeout",
    "NoSuchHandler",
    "Forbidden",
    "RemoteError",
    "Busy",
    "ControlError",
    "NodeNotRunning",
    "InviteError",
    "InvalidInviteCode",
    "InviteRejected",
    "InviteExpired",
    "InviteNotFound",
    "InviteAmbiguous",
    "InviteTimeout",
]


class PeerNetError(Exception):
    """Base class of every error peernet raises on purpose."""


# --- bad input from the local program ----------------------------------------------


class InvalidPeerId(PeerNetError, ValueError):
    """A peer id could not be parsed; the message says what is wrong with it."""


class PeerLookupError(InvalidPeerId, LookupError):
    """A text that is not a peer id did not name exactly one paired peer by its label.

    ``candidates`` holds the ``(PeerId, label)`` pairs the message names: the peers the
    text matches (ambiguous) or the labels closest to it (unknown). Still an
    ``InvalidPeerId`` (what such a text raised before labels were accepted) and also a
    ``LookupError``.
    """

    def __init__(self, message: str, candidates: tuple[tuple[object, str], ...] = ()) -> None:
        super().__init__(message)
        self.candidates = candidates


class UnknownPeer(PeerLookupError):
    """The text is neither a peer id nor the label of a paired peer."""


class AmbiguousPeer(PeerLookupError):
    """The text is the label of more than one paired peer (labels that look alike,
    stored by an older version): use the id instead."""


class InvalidHandlerName(PeerNetError, ValueError):
    """A handler name is not a short ``[A-Za-z][A-Za-z0-9_.:-]{0,63}`` string."""


class EncodeError(PeerNetError, TypeError):
    """A value cannot travel: it is not CBOR data (None, bool, int, float, str, bytes,
    list/tuple, dict with str keys), or it is nested too deeply."""


class MessageTooLarge(PeerNetError, ValueError):
    """An encoded message is bigger than the node's ``max_message_size``."""


# --- bad input from the network ----------------------------------------------------


class ProtocolError(PeerNetError):
    """Bytes from a peer broke the protocol (malformed CBOR, bad shape, bad frame).

    The connection that produced them is closed; nothing else is affected.
    """


class HandshakeError(ProtocolError):
    """The Noise handshake failed: tampered or malformed message, low-order key,
    untrusted or unexpected peer, or a bad identity binding."""


# --- files on disk -----------------------------------------------------------------


class KeyFileError(PeerNetError):
    """The identity key file is corrupt, truncated or inconsistent. It is never
    overwritten; move it away (or restore a backup) to continue."""


class InsecureKeyFile(KeyFileError):
    """The identity key file (or its directory) can be read by other users."""


class TrustStoreError(PeerNetError):
    """The trust store file is corrupt. It is never emptied or overwritten."""


class InsecureDataDir(PeerNetError, PermissionError):
    """The data dir is not owned by this user, or other users may write to it: they could
    swap the trust list or the key. Nothing in it was used."""


class DataDirLocked(PeerNetError):
    """Another live node already uses this ``data_dir``."""


# --- using a node ------------------------------------------------------------------


class NodeClosed(PeerNetError, RuntimeError):
    """The node was closed; it cannot be used any more."""


class PortInUse(PeerNetError, OSError):
    """The node's TCP port is taken (another node or program listens on it). Pick
    another ``port``, or ``port=0`` for a free one."""

    def __str__(self) -> str:
        return str(self.strerror)


class NotPaired(PeerNetError, LookupError):
    """The peer is not on this node's trust list: ``pair()`` it first."""


class CallError(PeerNetError):
    """Base class of the ways a ``call()`` can fail."""


class PeerUnavailable(CallError, ConnectionError):
    """No live authenticated link to the peer could be had within the timeout."""


class ConnectionLost(PeerUnavailable):
    """The link dropped while the call was pending. Pending calls fail at once with
    this; they never wait out their timeout. :attr:`protocol_error` tells a link that
    ended because the peer broke the protocol (a broken or hostile peer, which was
    reachable) from one that was lost."""

    #: True when the link ended because the peer broke the protocol.
    protocol_error: bool = False


class CallTimeout(CallError, TimeoutError):
    """The peer did not answer within the timeout (the remote handler may still run)."""


class NoSuchHandler(CallError):
    """The peer exposes no handler by that name.

    ``suggestions`` holds close matches from the peer's handler directory ("did you
    mean ...?"), when a blocking call could fetch it; otherwise it is empty."""

    suggestions: tuple[str, ...] = ()


class Forbidden(CallError):
    """The peer's ``authorize`` refused this call."""


class Busy(CallError):
    """The peer had too many calls from us in progress and refused this one."""


class RemoteError(CallError):
    """The remote handler raised. Only the exception's type name crosses the wire
    (``type_name``); the message and traceback stay in the callee's log."""

    def __init__(self, type_name: str, message: str | None = None) -> None:
        self.type_name = type_name
        self.message = message
        text = f"remote handler raised {type_name}"
        super().__init__(f"{text}: {message}" if message else text)


# --- controlling a running node (peernet.admin) ----------------------------------------


class ControlError(PeerNetError):
    """The control endpoint of a running node refused a request (``kind`` says why:
    ``BadRequest``, ``RequestTooLarge``, ``AccessDenied``, ``TooManyWatchers``, ...),
    answered something unreadable, or the connection to it broke. Also raised by
    ``Node(...)`` when it cannot serve its endpoint (``control=False`` turns it off)."""

    def __init__(self, message: str, kind: str = "ControlError") -> None:
        super().__init__(message)
        self.kind = kind


class NodeNotRunning(ControlError):
    """No node serves a control endpoint on that data dir: none runs there, or the one
    that does was started with ``control=False`` (the message says which)."""


# --- invite codes (Node.invite / Node.join) ------------------------------------------


class InviteError(PeerNetError):
    """Base class of the ways an invite or a join can fail."""


class InvalidInviteCode(InviteError, ValueError):
    """The text is not an invite code; the message says what is wrong with it (an
    unknown word, a mistyped character of a long code, a missing number)."""


class InviteRejected(InviteError):
    """The invite did not pair anyone: a wrong code was tried (which burns the invite),
    or the invite was already used, burned or cancelled. ``reason`` says which:
    ``"wrong_code"``, ``"used"``, ``"burned"``, ``"cancelled"``, ``"busy"`` or
    ``"refused"`` (the inviter closed the connection without saying why)."""

    def __init__(self, message: str, reason: str = "refused") -> None:
        super().__init__(message)
        self.reason = reason


class InviteExpired(InviteError):
    """The invite's time to live ran out before anyone joined."""


class InviteNotFound(InviteError, LookupError):
    """No open invite with that code could be found nearby, or its inviter could not be
    reached at the addresses in a long code."""


class InviteAmbiguous(InviteError, LookupError):
    """Two nodes nearby announce an open invite with that number: joining would be a
    guess, and a wrong guess burns someone's invite. Ask for a new code (or use the
    long one). ``peers`` holds the announcing PeerIds."""

    def __init__(self, message: str, peers: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.peers = peers


class InviteTimeout(InviteError, TimeoutError):
    """``Invite.wait(timeout)`` returned before anyone joined: the invite is still open."""
