"""``Settings``: every tunable of a node, checked once, frozen, in one place.

``Node(**keywords)`` builds one (``node.settings``); nothing else keeps a copy that could
drift from it. Field names are the ``Node`` keywords; times are seconds (floats), sizes
bytes, counts ints. See :class:`~peernet.Node` for what each one does.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ._proto.session import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["Settings", "check_seconds"]


def check_seconds(name: str, value: Any) -> float:
    """``value`` as a positive, finite number of seconds, or ValueError naming ``name``."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r:.80}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r:.80}")
    return seconds


def _count(name: str, value: Any) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r:.80}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """A node's tunables (see :class:`~peernet.Node` for each). Frozen: a live node's
    settings cannot be changed, so no part of it can disagree with another."""

    call_timeout: float = 5.0
    handshake_timeout: float = 10.0
    io_timeout: float = 10.0
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    handler_workers: int = 16
    max_calls_per_peer: int = 32
    max_sends_per_peer: int = 256
    max_preauth: int = 64
    max_preauth_per_ip: int = 8
    close_timeout: float = 5.0
    heartbeat_interval: float = 30.0
    heartbeat_timeout: float = 60.0
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    network_poll_interval: float = 5.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            checked = _count(field.name, value) if field.type == "int" else check_seconds(
                field.name, value)
            object.__setattr__(self, field.name, checked)  # 1 -> 1.0 for the seconds
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be longer than heartbeat_interval")

    @property
    def max_queued_bytes_per_peer(self) -> int:
        """What one peer's queued calls and sends may hold: 4 x ``max_message_size``."""
        return 4 * self.max_message_size
