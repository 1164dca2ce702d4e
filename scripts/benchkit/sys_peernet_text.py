"""peernet-text: peernet as most user code drives it, the peer's id passed as its pn1...
text (from a config file, the CLI, a recipe) on every call and send, not as a PeerId."""

from __future__ import annotations

from . import sys_peernet
from .sys_peernet import SECURITY, serve  # noqa: F401 -- the same server

__all__ = ["SECURITY", "serve", "Client"]


class Client(sys_peernet.Client):
    ids_as_text = True
