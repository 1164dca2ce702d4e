"""The 2-byte length-prefix framing (peernet._proto.framing)."""

from __future__ import annotations

import random
import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peernet._proto.framing import HEADER_LEN, MAX_FRAME_LEN, Deframer, frame
from peernet.errors import ProtocolError

BODIES = [b"\x00", b"a", b"hello", bytes(range(256)), b"x" * 1000, b"\xff" * MAX_FRAME_LEN]


def drain(d: Deframer) -> list[bytes]:
    out = []
    while (body := d.next_frame()) is not None:
        out.append(body)
    return out


# --- frame() -----------------------------------------------------------------------


def test_frame_is_big_endian_length_then_body():
    assert frame(b"abc") == b"\x00\x03abc"
    assert frame(b"x" * 258) == b"\x01\x02" + b"x" * 258
    assert frame(b"\x00" * MAX_FRAME_LEN)[:2] == b"\xff\xff"
    assert HEADER_LEN == 2 and MAX_FRAME_LEN == 65535


@pytest.mark.parametrize("n", [0, MAX_FRAME_LEN + 1, 100_000])
def test_frame_refuses_empty_and_oversize_bodies(n):
    with pytest.raises(ValueError):
        frame(b"a" * n)


# --- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("body", BODIES, ids=lambda b: f"len{len(b)}")
def test_single_frame_round_trip(body):
    d = Deframer()
    d.feed(frame(body))
    assert d.next_frame() == body
    assert d.next_frame() is None
    assert d.buffered == 0


def test_many_frames_in_one_feed():
    rng = random.Random(1)
    bodies = [rng.randbytes(rng.randint(1, 300)) for _ in range(1000)]
    d = Deframer()
    d.feed(b"".join(frame(b) for b in bodies))
    assert drain(d) == bodies
    assert d.buffered == 0


def test_next_frame_returns_none_until_a_frame_is_complete():
    d = Deframer()
    assert d.next_frame() is None
    d.feed(b"\x00")
    assert d.next_frame() is None
    d.feed(b"\x03ab")
    assert d.next_frame() is None
    assert d.buffered == 4
    d.feed(b"c\x00")
    assert d.next_frame() == b"abc"
    assert d.next_frame() is None
    assert d.buffered == 1


def test_split_at_every_byte_boundary():
    bodies = [b"first", b"\x00" * 40, b"z", bytes(range(200))]
    stream = b"".join(frame(b) for b in bodies)
    for cut in range(len(stream) + 1):
        d = Deframer()
        d.feed(stream[:cut])
        got = drain(d)
        d.feed(stream[cut:])
        got += drain(d)
        assert got == bodies, cut
        assert d.buffered == 0


def test_byte_by_byte():
    bodies = [b"a", b"bc" * 100, b"\xff" * 3]
    stream = b"".join(frame(b) for b in bodies)
    d = Deframer()
    got = []
    for i in range(len(stream)):
        d.feed(stream[i : i + 1])
        got += drain(d)
    assert got == bodies


def test_largest_frame_split_in_random_chunks():
    body = random.Random(2).randbytes(MAX_FRAME_LEN)
    stream = frame(body) + frame(b"tail")
    rng = random.Random(3)
    d = Deframer()
    got = []
    pos = 0
    while pos < len(stream):
        n = rng.randint(1, 9000)
        d.feed(stream[pos : pos + n])
        pos += n
        got += drain(d)
    assert got == [body, b"tail"]


def test_feed_accepts_bytearray_and_memoryview():
    d = Deframer()
    d.feed(bytearray(b"\x00\x02h"))
    d.feed(memoryview(b"i"))
    assert d.next_frame() == b"hi"


# --- limits ------------------------------------------------------------------------


def test_zero_length_header_raises():
    d = Deframer()
    d.feed(b"\x00\x00")
    with pytest.raises(ProtocolError):
        d.next_frame()


def test_default_minimum_refuses_an_empty_frame():
    # The default minimum is 1: an empty frame can never be a Noise message.
    d = Deframer()
    assert d.min_frame_len >= 1
    d.feed(b"\x00\x00more")
    with pytest.raises(ProtocolError):
        d.next_frame()


def test_over_limit_header_raises_before_the_body_arrives():
    d = Deframer(max_frame_len=512)
    d.feed((513).to_bytes(2, "big"))  # only the header: nothing to wait for
    with pytest.raises(ProtocolError):
        d.next_frame()


def test_under_minimum_header_raises():
    d = Deframer(min_frame_len=17)
    d.feed((16).to_bytes(2, "big") + b"x" * 16)
    with pytest.raises(ProtocolError):
        d.next_frame()


def test_limits_are_inclusive():
    d = Deframer(min_frame_len=17, max_frame_len=512)
    d.feed(frame(b"a" * 17) + frame(b"b" * 512))
    assert drain(d) == [b"a" * 17, b"b" * 512]


def test_the_largest_header_passes_the_default_limit():
    d = Deframer()
    assert d.max_frame_len == MAX_FRAME_LEN
    d.feed(b"\xff\xff")
    assert d.next_frame() is None  # waiting for the body, not an error


def test_raising_a_limit_between_frames_takes_effect():
    # A handshake-sized frame and a large transport frame arrive in one read.
    d = Deframer(min_frame_len=32, max_frame_len=512)
    d.feed(frame(b"h" * 100) + frame(b"t" * 1000))
    assert d.next_frame() == b"h" * 100
    d.max_frame_len = MAX_FRAME_LEN
    assert d.next_frame() == b"t" * 1000


def test_without_raising_the_limit_the_second_frame_is_refused():
    d = Deframer(min_frame_len=32, max_frame_len=512)
    d.feed(frame(b"h" * 100) + frame(b"t" * 1000))
    assert d.next_frame() == b"h" * 100
    with pytest.raises(ProtocolError):
        d.next_frame()


def test_lowering_a_limit_between_frames_takes_effect():
    d = Deframer()
    d.feed(frame(b"a" * 600) + frame(b"b" * 600))
    assert d.next_frame() == b"a" * 600
    d.max_frame_len = 512
    with pytest.raises(ProtocolError):
        d.next_frame()


def test_lowering_the_minimum_between_frames_takes_effect():
    d = Deframer(min_frame_len=32, max_frame_len=512)
    d.feed(frame(b"a" * 32) + frame(b"b" * 17))
    assert d.next_frame() == b"a" * 32
    d.min_frame_len = 17
    assert d.next_frame() == b"b" * 17


# --- memory ------------------------------------------------------------------------


def test_no_allocation_from_an_announced_length():
    d = Deframer()
    tracemalloc.start()
    try:
        d.feed(b"\xff\xff" + b"x")  # announces 65535, delivers 1
        assert d.next_frame() is None
        d.feed(b"y")
        assert d.next_frame() is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16_384, f"{peak} bytes allocated for a 4-byte partial frame"
    assert d.buffered == 4
    assert len(d._buf) == 4
    # A bytearray's size reflects its allocation: nothing close to 64 KiB was reserved.
    assert sys.getsizeof(d._buf) < 1024


def test_consumed_frames_are_released_on_the_next_feed():
    d = Deframer()
    for _ in range(200):
        d.feed(frame(b"y" * 1000) * 5 + b"\x00")  # five whole frames and half a header
        assert len(drain(d)) == 5
        d.feed(b"\x05hello")
        assert drain(d) == [b"hello"]
        # Everything was consumed: whatever is kept is only the last feed, at most.
        assert d.buffered == 0
        assert len(d._buf) <= 7


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=12),
    cuts=st.lists(st.integers(1, 5000), min_size=1, max_size=20),
)
def test_buffer_never_exceeds_one_partial_frame_plus_last_feed(sizes, cuts):
    bodies = [bytes([i % 256]) * n for i, n in enumerate(sizes)]
    stream = b"".join(frame(b) for b in bodies)
    d = Deframer()
    got = []
    pos = 0
    i = 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        i += 1
        leftover = d.buffered
        # What is held between feeds is at most one partial frame.
        assert leftover < HEADER_LEN + max(sizes)
        chunk = stream[pos : pos + n]
        pos += n
        d.feed(chunk)
        assert len(d._buf) == leftover + len(chunk)
        got += drain(d)
    assert got == bodies
    assert d.buffered == 0


# --- frames(): every complete body of a read in one call ----------------------------


def test_frames_returns_every_complete_body_and_keeps_the_partial_one():
    rng = random.Random(2)
    bodies = [rng.randbytes(rng.randint(1, 300)) for _ in range(500)]
    stream = b"".join(frame(b) for b in bodies)
    d = Deframer()
    got: list[bytes] = []
    for cut in range(0, len(stream), 777):  # cuts fall inside headers and bodies
        d.feed(stream[cut:cut + 777])
        got += d.frames()
        assert d.buffered < HEADER_LEN + 300
    assert got == bodies and d.frames() == [] and d.buffered == 0
    assert all(type(b) is bytes for b in got)


def test_frames_returns_the_bodies_before_a_bad_header_then_raises():
    d = Deframer(min_frame_len=17, max_frame_len=512)
    good = b"g" * 20
    d.feed(frame(good) + frame(good) + (600).to_bytes(2, "big") + frame(good))
    assert d.frames() == [good, good]  # what preceded the fault counts
    with pytest.raises(ProtocolError, match="600 outside 17..512"):
        d.frames()
    with pytest.raises(ProtocolError):  # and stays refused
        d.frames()


@pytest.mark.parametrize("header", [0, 16, 513, 65535])
def test_frames_raises_on_a_bad_first_header(header):
    d = Deframer(min_frame_len=17, max_frame_len=512)
    d.feed(header.to_bytes(2, "big"))
    with pytest.raises(ProtocolError):
        d.frames()
