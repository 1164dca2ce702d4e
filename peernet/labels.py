"""Labels wherever a peer is taken: ``node.call("pi", ...)`` as well as ``node.call(pi_id, ...)``.

Rules (:func:`resolve_peer`), in order:

1. A :class:`~peernet.PeerId`, 32 raw bytes, or a text that parses as a peer id is that
   id. **Ids win over labels**: a label can never shadow an id.
2. Any other text is looked up among the labels of *paired* peers, compared the way the
   trust store compares labels for look-alikes (NFKC, case folded, invisible characters
   dropped, runs of white space as one): ``"pi"``, ``"Pi"`` and ``" pi "`` are the same
   label. Exactly one match resolves to that peer's id.
3. More than one match (possible only for labels stored by an older version, which did
   not refuse look-alikes) raises :class:`~peernet.AmbiguousPeer` naming every match.
4. No match raises :class:`~peernet.UnknownPeer` naming the closest labels; a text
   that looks like a mistyped id (it starts with ``pn1``) raises the id parser's own
   :class:`~peernet.InvalidPeerId`, which says which character is wrong (and, for the
   start of an id, such as a short id, the whole id of the one paired peer it starts).

No prefix or partial matching: what a label means never changes because another peer
was paired. Labels are this node's own names for its peers (set by ``pair()``); peers
cannot see them, and set one only by proposing it in an invite exchange, held to the
same rules (and never a peer id: ``invites.store_peer``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import AmbiguousPeer, InvalidPeerId, UnknownPeer
from .ids import PeerId
from .trust import label_skeleton

if TYPE_CHECKING:
    from .trust import TrustStore

__all__ = ["PeerLike", "Terms", "resolve_peer"]

#: What every method that takes a peer accepts: a PeerId, its text, 32 raw bytes, or
#: the label of a paired peer.
PeerLike = PeerId | str | bytes

_MAX_NAMED = 8  # candidates named in an error message


@dataclass(frozen=True)
class Terms:
    """How a lookup error tells the person what to do, in the terms of what they typed
    in: Python (the default), or the command line's."""

    #: No paired peer has a label: how to give one.
    give_label: str = "pair(peer_id, label=...) gives one"
    #: Where the ids are shown.
    show_ids: str = "node.list_peers() shows them"


def resolve_peer(trust: TrustStore, peer: PeerLike, terms: Terms = Terms()) -> PeerId:
    """The PeerId that ``peer`` means on a node whose trust store is ``trust``.

    See the module doc for the rules. Raises :class:`~peernet.InvalidPeerId` (or its
    subclasses :class:`~peernet.UnknownPeer` and :class:`~peernet.AmbiguousPeer`, which
    are also ``LookupError``\\ s), whose hints use ``terms``.
    """
    if type(peer) is PeerId:
        return peer
    try:
        return PeerId.parse(peer)
    except InvalidPeerId as exc:
        if type(peer) is not str:
            raise
        id_error = exc
    text = peer
    try:
        wanted = label_skeleton(text)
    except (TypeError, ValueError):  # pragma: no cover - label_skeleton takes any str
        raise id_error from None
    labelled = [(t.peer_id, t.label) for t in trust.list() if t.label is not None]
    matches = [(pid, label) for pid, label in labelled if label_skeleton(label) == wanted]
    shown = _shown(text)
    if len(matches) == 1:
        return matches[0][0]
    if matches:
        names = ", ".join(f"{label!r} ({pid.short}…)" for pid, label in matches[:_MAX_NAMED])
        raise AmbiguousPeer(
            f"the label {shown} names {len(matches)} paired peers: {names}; "
            f"use the id instead ({terms.show_ids})",
            tuple(matches[:_MAX_NAMED]))
    if text.strip().casefold().startswith("pn1") or not wanted:
        # A mistyped id: the parser says which character is wrong. A short id (or any
        # start of an id) is not taken, but the one paired peer it starts is named.
        raise _name_the_peer_it_starts(id_error, text, trust) from None
    by_skeleton = {label_skeleton(label): (pid, label) for pid, label in labelled}
    close = difflib.get_close_matches(wanted, list(by_skeleton), n=3, cutoff=0.6)
    candidates = tuple(by_skeleton[c] for c in close)
    if candidates:
        hint = "did you mean " + " or ".join(repr(label) for _, label in candidates) + "?"
    elif labelled:
        hint = "labels: " + ", ".join(repr(label) for _, label in labelled[:_MAX_NAMED]) + (
            ", ..." if len(labelled) > _MAX_NAMED else "")
    else:
        hint = f"no paired peer has a label ({terms.give_label})"
    raise UnknownPeer(f"{shown} is neither a peer id nor the label of a paired peer; {hint}",
                      candidates)


def _name_the_peer_it_starts(error: InvalidPeerId, text: str,
                             trust: TrustStore) -> InvalidPeerId:
    """``error``, plus the whole id of the one paired peer whose id starts with
    ``text`` (a short id copied from ``peernet peers``), so it can be pasted."""
    start = text.strip().lower()
    if len(start) <= len("pn1"):
        return error
    starting = [t for t in trust.list() if str(t.peer_id).startswith(start)]
    if len(starting) != 1:
        return error
    named = (f"paired peer {starting[0].label!r}" if starting[0].label else
             "the paired peer starting so")
    return InvalidPeerId(f"{error}; {named} has the whole id {starting[0].peer_id}")


def _shown(text: str) -> str:
    """``text`` for an error message: repr'd (so escaped) and cut short."""
    return repr(text if len(text) <= 60 else text[:60] + "…")
