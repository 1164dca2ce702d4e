"""Hostile CBOR inputs: every row of ``reference/security.md`` section 1.3, the section
1.4 deep-nesting cases, and the profile's own edge cases.

A plain module so that any suite can import it: the codec unit tests decode each case
directly; an attack suite can send them over a real link. Each entry of :data:`HOSTILE`
is ``(case_id, data)`` and every one of them must be refused by the strict decoder
(``ProtocolError``), quickly, under the default limits. :data:`BENIGN` holds the two
rows of the matrix the profile accepts on purpose (a float64 ``1.0`` and a valid call),
and :data:`AMPLIFY` the two rows that only a ``max_items`` below their item count
refuses.

The byte helpers build ill-formed and non-canonical encodings no encoder would emit,
following ``reference/cbor_hazards.py``. Some cases are larger than one Noise transport
message (65519 bytes of plaintext); :data:`MAX_FRAME_PLAINTEXT` and :func:`fits_in_frame`
let a wire-level suite tell them apart (those must be refused by the framing layer).
"""

from __future__ import annotations

import hashlib
import struct

__all__ = ["AMPLIFY", "AMPLIFY_ITEMS", "BENIGN", "HOSTILE", "HOSTILE_BY_ID",
           "MAX_FRAME_PLAINTEXT", "arr", "bstr", "fits_in_frame", "head", "tag", "tstr",
           "uint"]

MAX_FRAME_PLAINTEXT = 65535 - 16
"""Largest Noise transport plaintext."""

_M61 = (1 << 61) - 1  # CPython's hash modulus for int: equal hash() for 7 + k*M61


def head(major: int, val: int, force: int | None = None) -> bytes:
    """A CBOR head; ``force`` = 0/1/2/4/8 extra bytes gives a non-shortest head."""
    mt = major << 5
    size = force
    if size is None:
        size = (0 if val < 24 else 1 if val < 0x100 else 2 if val < 0x10000
                else 4 if val < 0x1_0000_0000 else 8)
    if size == 0:
        return bytes([mt | val])
    ai = {1: 24, 2: 25, 4: 26, 8: 27}[size]
    return bytes([mt | ai]) + val.to_bytes(size, "big")


def tag(n: int, payload: bytes) -> bytes:
    """Tag ``n`` wrapping an already encoded item."""
    return head(6, n) + payload


def tstr(s: str) -> bytes:
    """A definite-length text string."""
    b = s.encode()
    return head(3, len(b)) + b


def bstr(b: bytes) -> bytes:
    """A definite-length byte string."""
    return head(2, len(b)) + b


def arr(*items: bytes) -> bytes:
    """A definite-length array of already encoded items."""
    return head(4, len(items)) + b"".join(items)


def uint(n: int) -> bytes:
    """An unsigned integer in shortest form."""
    return head(0, n)


def _bignum(n: int) -> bytes:
    return tag(2, bstr(n.to_bytes((n.bit_length() + 7) // 8 or 1, "big")))


def _deep(n: int, opener: bytes, closer: bytes = b"") -> bytes:
    return opener * n + b"\x00" + closer * n


def _stringref_bomb() -> bytes:
    refs = [tag(25, uint(0))] * 10000
    return tag(256, head(4, 1 + len(refs)) + tstr("A" * 30000) + b"".join(refs))


def _sharedref_dag(levels: int = 60) -> bytes:
    parts = [tag(28, arr(uint(0)))]
    for k in range(1, levels):
        parts.append(tag(28, arr(tag(29, uint(k - 1)), tag(29, uint(k - 1)))))
    return head(4, len(parts)) + b"".join(parts)


def _hash_flood(nkeys: int = 4500) -> bytes:
    return head(5, nkeys) + b"".join(_bignum(7 + k * _M61) + b"\x00"
                                     for k in range(1, nkeys + 1))


def _set_flood(n: int = 4500) -> bytes:
    return tag(258, head(4, n) + b"".join(_bignum(7 + k * _M61) for k in range(1, n + 1)))


def _h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- security.md section 1.3, row by row (same ids and bytes as cbor_hazards.py) ------
_MATRIX: list[tuple[str, bytes]] = [
    ("tag0-datetime", _h("c074323031332d30332d32315432303a30343a30305a")),
    ("tag1-epoch", _h("c11a514b67b0")),
    ("tag1-epoch-huge", tag(1, b"\xfb" + struct.pack(">d", 1e300))),
    ("tag2-bignum", _h("c249010000000000000000")),
    ("tag3-negbignum", _h("c349010000000000000000")),
    ("tag4-decimal", _h("c48221196ab3")),
    ("tag4-decimal-hugeexp", tag(4, arr(uint(10**18), uint(1)))),
    ("tag5-bigfloat", _h("c5822003")),
    ("tag30-fraction", _h("d81e820103")),
    ("tag30-div0", tag(30, arr(uint(1), uint(0)))),
    ("tag35-regex", _h("d82363612b62")),
    ("tag36-mime", tag(36, tstr("From: a@b\nSubject: x\n\nbody"))),
    ("tag37-uuid", tag(37, bstr(bytes(16)))),
    ("tag52-ipv4", tag(52, bstr(b"\x7f\x00\x00\x01"))),
    ("tag54-ipv6", tag(54, bstr(bytes(15) + b"\x01"))),
    ("tag100-date", _h("d864194e20")),
    ("tag258-set", _h("d9010283010203")),
    ("tag260-ipaddr", _h("d90104447f000001")),
    ("tag261-ipnet", _h("d90105a1440a00000008")),
    ("tag1004-date", tag(1004, tstr("2020-01-01"))),
    ("tag43000-complex", _h("d9a7f882f93c00f93c00")),
    ("tag55799-selfdesc", _h("d9d9f701")),
    ("tag-unknown", _h("d9270f01")),
    ("undefined", b"\xf7"),
    ("simple-100", b"\xf8\x64"),
    ("simple-f81f", b"\xf8\x1f"),
    ("cyclic-28-29", _h("d81c81d81d00")),
    ("cyclic-reencode", _h("d81c81d81d00")),
    ("sharedref-dag", _sharedref_dag()),
    ("sharedref-dag-repr", _sharedref_dag()),
    ("stringref-bomb", _stringref_bomb()),
    ("set-of-ipnet-/0", tag(258, tag(261, _h("a14400000000") + b"\x00"))),
    ("deep-array-1e5", _deep(100000, b"\x81")),
    ("deep-array-65k", _deep(65000, b"\x81")),
    ("deep-map-1e5", _deep(100000, b"\xa1\x00")),
    ("deep-tag-1e5", _deep(100000, b"\xc6")),
    ("deep-shareable-1e5", _deep(100000, b"\xd8\x1c")),
    ("deep-indef-1e5", _deep(100000, b"\x9f", b"\xff")),
    ("deep-array-300-walk", _deep(300, b"\x81")),
    ("huge-bstr-2^63", b"\x5b" + (1 << 63).to_bytes(8, "big") + b"abcde"),
    ("huge-bstr-2^64-1", b"\x5b" + b"\xff" * 8 + b"abcde"),
    ("huge-tstr-2^32", b"\x7b" + (1 << 32).to_bytes(8, "big") + b"abc"),
    ("huge-array-2^32", b"\x9b" + (1 << 32).to_bytes(8, "big") + b"\x01\x02\x03"),
    ("huge-array-2^64-1", b"\x9b" + b"\xff" * 8 + b"\x01"),
    ("huge-map-2^32", b"\xbb" + (1 << 32).to_bytes(8, "big") + b"\x01\x02"),
    ("huge-set-2^32", b"\xd9\x01\x02\x9b" + (1 << 32).to_bytes(8, "big") + b"\x01"),
    ("bignum-64k-str", tag(2, bstr(b"\xff" * 60000))),
    ("decimal-64k-mantissa", tag(4, arr(uint(0), tag(2, bstr(b"\xff" * 60000))))),
    ("fraction-2x30k", tag(30, arr(tag(2, bstr(hashlib.shake_256(b"n").digest(30000))),
                                   tag(2, bstr(hashlib.shake_256(b"d").digest(30000)))))),
    ("hash-flood-map", _hash_flood()),
    ("hash-flood-set", _set_flood()),
    ("regex-nested-groups", tag(35, tstr("(" * 3000 + ")" * 3000))),
    ("regex-6000-alts", tag(35, tstr("(?:" + "|".join(f"a{i}b" for i in range(6000)) + ")"))),
    ("mime-7000-headers", tag(36, tstr("".join(f"X{i}: a\n" for i in range(7000)) + "\nbody"))),
    ("indef-array", _h("9f0102ff")),
    ("indef-bstr-32k-chunks", b"\x5f" + b"\x41\x00" * 32000 + b"\xff"),
    ("indef-tstr-32k-chunks", b"\x7f" + b"\x61a" * 32000 + b"\xff"),
    ("dup-keys", _h("a2616101616102")),
    ("equal-keys-1-1.0-true", _h("a3016178f93c006179f5617a")),
    ("array-as-key", _h("a182010201")),
    ("map-as-key", _h("a1a1010201")),
    ("unhashable-sharedref-key", _h("82d81c80a1d81d0001")),
    ("nan-keys", _h("a2f97e0001f97e0002")),
    ("noncanon-int", b"\x1b" + (1).to_bytes(8, "big")),
    ("noncanon-len", b"\x7b" + (1).to_bytes(8, "big") + b"a"),
    ("trailing-bytes", b"\x01\x02"),
    ("trailing-message", _h("8401006161") + b"\x80" + _h("8401016162") + b"\x80"),
    ("bad-utf8", b"\x62\xff\xfe"),
    ("lone-break", b"\xff"),
    ("regex-from-int", _h("d823c249010000000000000000")),
    ("tag100-overflow", _h("d8641a8401007b")),
]

# --- security.md section 1.4: more deep shapes, and just past the default limit (16) --
_DEEP: list[tuple[str, bytes]] = [
    ("deep-array-1e6", _deep(1_000_000, b"\x81")),
    ("deep-map-text-1e5", _deep(100000, b"\xa1\x61k")),
    ("deep-mixed-1e5", _deep(50000, b"\x81\xa1\x61k")),
    ("deep-array-17", _deep(17, b"\x81")),
    ("deep-map-17", _deep(17, b"\xa1\x61k")),
    ("deep-array-17-wide", b"\x82\x00" * 17 + b"\x00"),
    ("deep-indef-map-1e5", _deep(100000, b"\xbf\x61k", b"\xff")),
    ("deep-array-1e5-truncated", b"\x81" * 100000),
]

# --- the profile's own edge cases ---------------------------------------------------
_PROFILE: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("truncated-array", b"\x83\x01\x02"),
    ("truncated-map-value", _h("a16161")),
    ("truncated-head-1", b"\x18"),
    ("truncated-head-8", b"\x1b\x00\x00"),
    ("truncated-float", b"\xfb\x3f\xf0"),
    ("truncated-tstr", b"\x65abc"),
    ("reserved-ai-28", b"\x1c"),
    ("reserved-ai-29", b"\x3d"),
    ("reserved-ai-30", b"\x5e"),
    ("reserved-ai-28-array", b"\x9c"),
    ("indef-map", _h("bf616101ff")),
    ("indef-int-31", b"\x1f"),
    ("indef-negint-31", b"\x3f"),
    ("break-in-array", b"\x82\x01\xff"),
    ("simple-0", b"\xe0"),
    ("simple-19", b"\xf3"),
    ("simple-f8-20", b"\xf8\x20"),
    ("reserved-fc", b"\xfc"),
    ("reserved-fd", b"\xfd"),
    ("reserved-fe", b"\xfe"),
    ("undefined-in-array", b"\x81\xf7"),
    ("noncanon-int-1byte", b"\x18\x17"),
    ("noncanon-int-2byte", b"\x19\x00\xff"),
    ("noncanon-int-4byte", b"\x1a\x00\x00\xff\xff"),
    ("noncanon-negint", b"\x38\x00"),
    ("noncanon-bstr-len", b"\x58\x01a"),
    ("noncanon-array-len", b"\x98\x01\x00"),
    ("noncanon-map-len", b"\xb8\x01\x61a\x00"),
    ("noncanon-key-len", b"\xa1\x78\x01a\x00"),
    ("int-key", _h("a10102")),
    ("negint-key", _h("a12002")),
    ("bytes-key", _h("a1416100")),
    ("float-key", _h("a1f93c0000")),
    ("bool-key", _h("a1f500")),
    ("null-key", _h("a1f600")),
    ("tagged-key", _h("a1c0616100")),
    ("dup-keys-nonascii", b"\xa2" + tstr("é") + b"\x01" + tstr("é") + b"\x02"),
    ("dup-keys-nested", b"\x81\xa3" + tstr("x") + b"\x01" + tstr("y") + b"\x02" + tstr("x")
     + b"\x03"),
    ("bad-utf8-key", b"\xa1\x62\xff\xfe\x00"),
    ("bad-utf8-surrogate", b"\x63\xed\xa0\x80"),
    ("bad-utf8-overlong", b"\x62\xc0\xaf"),
    ("bad-utf8-nested", b"\x82\x00\x81\x61\x80"),
    ("tag-in-array", b"\x82\x00\xc1\x00"),
    ("tag-deep-inside", b"\x81" * 10 + b"\xc2\x41\x01"),
    ("huge-array-2^32-4byte", b"\x9a\xff\xff\xff\xff\x00"),
    ("huge-map-1byte", b"\xb8\xff\x61a"),
    ("huge-bstr-in-array", b"\x82\x5a\xff\xff\xff\xff\x00"),
    ("too-many-items", head(4, 100_001) + b"\x00" * 100_001),
    ("too-many-items-nested", head(4, 2) + (head(4, 50_000) + b"\x00" * 50_000) * 2),
    ("trailing-zero", b"\x80\x00"),
    ("trailing-break", b"\x80\xff"),
]

HOSTILE: list[tuple[str, bytes]] = _MATRIX + _DEEP + _PROFILE
"""Every input the strict decoder must refuse, as ``(case_id, data)``."""

HOSTILE_BY_ID: dict[str, bytes] = dict(HOSTILE)
"""The same cases keyed by id."""

AMPLIFY: list[tuple[str, bytes]] = [
    ("amplify-65k-arrays", head(4, 65000) + b"\x80" * 65000),
    ("amplify-65k-maps", head(4, 65000) + b"\xa0" * 65000),
]
"""The two section 1.3 amplification rows. They are inside the profile: 65001 items,
about 5 MiB of Python objects from 65 kB, tens of milliseconds. The default
``max_items=100_000`` accepts them; any ``max_items`` up to 65000 refuses them."""

AMPLIFY_ITEMS = 65001
"""Number of data items in each :data:`AMPLIFY` case."""

BENIGN: list[tuple[str, bytes]] = [
    ("noncanon-float", b"\xfb" + struct.pack(">d", 1.0)),
    ("valid-message", _h("840001646563686f8162" + "6869")),
]
"""Rows of the security matrix the profile accepts on purpose."""

assert len(HOSTILE_BY_ID) == len(HOSTILE), "duplicate case ids"


def fits_in_frame(data: bytes) -> bool:
    """True if ``data`` fits in one Noise transport message's plaintext."""
    return len(data) <= MAX_FRAME_PLAINTEXT
