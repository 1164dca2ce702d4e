"""Length-prefixed framing: a 2-byte big-endian length, then one Noise message.

Noise messages are at most 65535 bytes (spec §3) and the spec recommends exactly this
16-bit prefix (§13), so an oversize frame cannot even be expressed: the largest header
announces 65535. What remains to police is the low end (an empty frame, or one too short
to hold an AEAD tag) and, during the handshake, a much lower ceiling, which the caller
passes as ``max_frame_len``.

The deframer never allocates from a length it was told: it only slices bytes that have
already arrived, and it holds at most one partial frame, so its buffer stays below
``2 + 65535`` bytes plus whatever one ``feed()`` added.
"""

from __future__ import annotations

from ..errors import ProtocolError

__all__ = ["HEADER_LEN", "MAX_FRAME_LEN", "Deframer", "frame"]

HEADER_LEN = 2
#: The Noise maximum message length; also the largest length a 2-byte header can carry.
MAX_FRAME_LEN = 65535


def frame(body: bytes) -> bytes:
    """Prefix ``body`` (one Noise message) with its 2-byte big-endian length."""
    n = len(body)
    if not 0 < n <= MAX_FRAME_LEN:
        raise ValueError(f"frame body must be 1..{MAX_FRAME_LEN} bytes, got {n}")
    return n.to_bytes(2, "big") + body


class Deframer:
    """Splits a byte stream into frame bodies, one at a time.

    ``feed(data)`` appends bytes; ``next_frame()`` returns the next complete body or
    ``None``. A frame outside ``min_frame_len..max_frame_len`` raises
    :class:`ProtocolError`. The limits are plain attributes: the session changes them
    between frames, because the last handshake message and the first transport frame
    may arrive in the same read and obey different limits.
    """

    __slots__ = ("_buf", "_pos", "min_frame_len", "max_frame_len")

    def __init__(self, *, min_frame_len: int = 1, max_frame_len: int = MAX_FRAME_LEN) -> None:
        self._buf = bytearray()
        self._pos = 0  # read offset; compacted lazily so a burst of frames costs one copy
        self.min_frame_len = min_frame_len
        self.max_frame_len = max_frame_len

    @property
    def buffered(self) -> int:
        """Bytes held that have not been returned as frames yet."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> bytes | None:
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < HEADER_LEN:
            return None
        n = (buf[pos] << 8) | buf[pos + 1]
        if n < self.min_frame_len or n > self.max_frame_len:
            raise ProtocolError(
                f"frame length {n} outside {self.min_frame_len}..{self.max_frame_len}"
            )
        start = pos + HEADER_LEN
        if len(buf) - start < n:
            return None
        self._pos = start + n
        return bytes(buf[start : self._pos])

    def frames(self) -> list[bytes]:
        """Every complete body buffered now, in order (``[]`` if none): one call per read
        instead of one per frame. A frame outside the limits raises, but only once the
        bodies before it were returned (it stays buffered, so the next call raises):
        what preceded a fault still counts. The limits must not change between these
        frames (the session uses this only once the handshake is over)."""
        buf = self._buf
        pos = self._pos
        end = len(buf)
        lo, hi = self.min_frame_len, self.max_frame_len
        bodies: list[bytes] = []
        while end - pos >= HEADER_LEN:
            n = (buf[pos] << 8) | buf[pos + 1]
            if n < lo or n > hi:
                if bodies:
                    break
                raise ProtocolError(f"frame length {n} outside {lo}..{hi}")
            start = pos + HEADER_LEN
            if end - start < n:
                break
            pos = start + n
            bodies.append(bytes(buf[start:pos]))
        self._pos = pos
        return bodies
