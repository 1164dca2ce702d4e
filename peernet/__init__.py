"""peernet: default-deny, peer-to-peer messaging for Python.

Nodes are addressed by public key; nothing is reachable until it is exposed; only
paired peers get past a Noise XX handshake. See README.md and guides/.
"""

from __future__ import annotations

import logging

from ._version import __version__
from .errors import *  # noqa: F403  (the hierarchy is part of the public API)
from .errors import __all__ as _errors_all
from .handlers import HandlerFailure, report_handler_error
from .ids import PeerId
from .node import Node, default_data_dir
from .peer import Nearby, Peer, PeerEvent, PeerList
from .directory import HandlerInfo, HandlerList
from .proxy import PeerProxy, RemoteHandler
from .invites import Invite
from .discovery import MdnsDiscovery, UdpDiscovery
from . import rpc
from .control import Admin, ChatLine, NodeStatus, Watch, admin

logging.getLogger("peernet").addHandler(logging.NullHandler())

__all__ = ["__version__", "Node", "PeerId", "Peer", "PeerEvent", "PeerList", "Nearby",
           "UdpDiscovery", "MdnsDiscovery", "HandlerFailure", "report_handler_error", "rpc",
           "PeerProxy", "RemoteHandler", "HandlerInfo", "HandlerList", "Invite",
           "default_data_dir", "admin", "Admin", "NodeStatus", "ChatLine", "Watch",
           *_errors_all]
