"""Reconnect backoff: exponential, capped, with jitter. Pure: the caller passes the
random draw, so tests are deterministic and the edge uses ``random.random``.

``delay(attempt)`` for attempt 0, 1, 2, ... is ``min(base * factor**attempt, cap)``
scaled by a factor drawn uniformly from ``[1 - jitter, 1]``. Jitter spreads the redials
of peers that lost their links at the same moment (the original redialled in lock-step,
so simultaneous reconnects could collide forever).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 30.0
    #: Fraction of each delay that is random: 0.5 means a delay in [d/2, d].
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (self.base_s > 0 and self.factor >= 1 and self.cap_s >= self.base_s
                and 0 <= self.jitter <= 1):
            raise ValueError(f"invalid backoff settings: {self}")

    def delay(self, attempt: int, draw: float) -> float:
        """Seconds to wait before attempt number ``attempt`` (0-based); ``draw`` in [0, 1)."""
        if attempt < 0 or not 0 <= draw <= 1:
            raise ValueError("attempt must be >= 0 and draw in [0, 1]")
        # Cap the exponent first: factor**attempt overflows a float for large attempts.
        raw = self.cap_s
        if attempt < 64:
            raw = min(self.base_s * self.factor**attempt, self.cap_s)
        return raw * (1.0 - self.jitter * draw)
