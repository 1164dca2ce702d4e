"""The strict CBOR profile (peernet._proto.cbor): hostile input, limits, encode checks."""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import math
import struct
import threading
import time

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peernet._proto import cbor
from peernet.errors import EncodeError, ProtocolError
from tests.helpers import mutate
from tests.hostile_cbor import AMPLIFY, AMPLIFY_ITEMS, BENIGN, HOSTILE, head

# The whole module runs on both codec backends: the pure-Python reference and the
# compiled accelerator.
pytestmark = pytest.mark.usefixtures("codec_backend")

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

ALLOWED_TYPES = (type(None), bool, int, float, str, bytes, list, dict)


def same(a: object, b: object) -> bool:
    """Structural equality with exact types (tuples compare as lists, NaN equals NaN)."""
    if isinstance(a, tuple):
        a = list(a)
    if isinstance(b, tuple):
        b = list(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a)
                                                    == math.copysign(1, b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def only_allowed_types(value: object) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) not in ALLOWED_TYPES:
            return False
        if type(v) is list:
            stack.extend(v)
        elif type(v) is dict:
            if any(type(k) is not str for k in v):
                return False
            stack.extend(v.values())
    return True


def count_items(value: object) -> int:
    """Data items in ``value`` as the profile counts them (keys included)."""
    if isinstance(value, (list, tuple)):
        return 1 + sum(count_items(v) for v in value)
    if isinstance(value, dict):
        return 1 + len(value) + sum(count_items(v) for v in value.values())
    return 1


def nested(depth: int, leaf: object = 0, kind: str = "list") -> object:
    v = leaf
    for _ in range(depth):
        v = [v] if kind == "list" else {"k": v}
    return v


# --------------------------------------------------------------------- hostile input


@pytest.mark.parametrize("data", [c[1] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_input_is_refused_quickly(data):
    t0 = time.perf_counter()
    with pytest.raises(ProtocolError):
        cbor.decode(data)
    assert time.perf_counter() - t0 < 0.5


# Refused only because of the default limits; every other case is refused whatever the
# limits, so raising them cannot let it through.
LIMIT_ONLY = ("deep-array-17", "deep-map-17", "deep-array-17-wide", "deep-array-300-walk",
              "too-many-items", "too-many-items-nested")
NOT_LIMIT_ONLY = [c for c in HOSTILE if c[0] not in LIMIT_ONLY]


@pytest.mark.parametrize("data", [c[1] for c in NOT_LIMIT_ONLY],
                         ids=[c[0] for c in NOT_LIMIT_ONLY])
def test_hostile_input_is_refused_under_generous_limits_too(data):
    with pytest.raises(ProtocolError):
        cbor.decode(data, max_depth=1000, max_items=10**7)


@pytest.mark.parametrize("case_id, data", BENIGN, ids=[c[0] for c in BENIGN])
def test_benign_matrix_rows_are_accepted(case_id, data):
    expected = {"noncanon-float": 1.0, "valid-message": [0, 1, "echo", ["hi"]]}[case_id]
    assert same(cbor.decode(data), expected)


@pytest.mark.parametrize("data", [c[1] for c in AMPLIFY], ids=[c[0] for c in AMPLIFY])
def test_amplification_is_bounded_by_max_items(data):
    t0 = time.perf_counter()
    with pytest.raises(ProtocolError, match="items"):  # the default refuses it
        cbor.decode(data)
    assert time.perf_counter() - t0 < 0.5
    assert len(cbor.decode(data, max_items=AMPLIFY_ITEMS)) == AMPLIFY_ITEMS - 1
    with pytest.raises(ProtocolError, match="items"):
        cbor.decode(data, max_items=AMPLIFY_ITEMS - 1)


def test_invalid_utf8_passes_the_prevalidator_and_cbor2_refuses_it():
    # The pre-validator leaves UTF-8 checking to cbor2's strict text decoding.
    for data in (b"\x62\xff\xfe", b"\x63\xed\xa0\x80", b"\xa1\x62\xc0\xaf\x00"):
        cbor._prevalidate(data, 16, 100)
        with pytest.raises(cbor2.CBORDecodeError):
            cbor2.loads(data)
        with pytest.raises(ProtocolError, match="UTF-8"):
            cbor.decode(data)


def test_decoder_options_refuse_tags_even_without_the_prevalidator():
    # Defence in depth: the cbor2 options alone refuse every built-in and unknown tag.
    for data in (bytes.fromhex("c11a514b67b0"), bytes.fromhex("d9d9f701"),
                 bytes.fromhex("d81c81d81d00"), bytes.fromhex("d9270f01"),
                 bytes.fromhex("c249010000000000000000"), bytes.fromhex("9f0102ff"),
                 bytes.fromhex("a2616101616102"), bytes.fromhex("a10102")):
        with pytest.raises(cbor2.CBORDecodeError):
            cbor2.loads(data, max_depth=16, **cbor._STRICT)


def test_error_messages_do_not_repeat_the_data():
    secret = "hunter2-secret"
    cases = [
        b"\xa2" + cbor.encode(secret) + b"\x01" + cbor.encode(secret) + b"\x02",  # dup key
        cbor.encode([secret]) + b"\x00",  # trailing
        b"\x82" + cbor.encode(secret) + b"\x62\xff\xfe",  # bad utf-8 after the secret
        b"\x82" + cbor.encode(secret) + b"\xc1\x00",  # tag
    ]
    for data in cases:
        with pytest.raises(ProtocolError) as info:
            cbor.decode(data)
        assert secret not in str(info.value)
        assert info.value.__cause__ is None


def test_decode_accepts_bytes_like_and_refuses_other_types():
    assert cbor.decode(bytearray(b"\x81\x01")) == [1]
    assert cbor.decode(memoryview(b"\x81\x01")) == [1]
    for bad in ("\x01", 1, None, [1]):
        with pytest.raises(ProtocolError):
            cbor.decode(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------- valid values


VALID = [
    None, True, False, 0, 1, -1, 23, 24, -24, -25, 255, 256, 65535, 65536, 2**32 - 1,
    2**32, 2**64 - 1, -(2**64), 1.5, -0.0, 1e300, "", "héllo ☃ 𝄞", b"", b"\x00\xff",
    [], {}, [1, [2, [3]]], {"a": {"b": [None, True, 1.25]}}, ["x" * 70000],
    {"k" * 300: b"v" * 300},
]


@pytest.mark.parametrize("value", VALID, ids=range(len(VALID)))
def test_valid_values_round_trip(value):
    data = cbor.encode(value)
    assert same(cbor.decode(data), value)
    assert data == cbor2.dumps(value)  # exact types go to cbor2 untouched


def test_nan_and_infinities_are_allowed():
    out = cbor.decode(cbor.encode([math.nan, math.inf, -math.inf]))
    assert math.isnan(out[0]) and out[1] == math.inf and out[2] == -math.inf


def test_all_float_widths_decode():
    assert cbor.decode(b"\xf9\x3c\x00") == 1.0
    assert cbor.decode(b"\xfa\x3f\xc0\x00\x00") == 1.5
    assert cbor.decode(b"\xfb" + struct.pack(">d", 1.0)) == 1.0  # wider than needed: OK
    assert math.isnan(cbor.decode(b"\xf9\x7e\x00"))


def test_decoded_types_are_exact_builtins():
    data = cbor.encode({"a": [None, True, 1, -1, 1.5, "s", b"b", [], {}], "t": (1, 2)})
    out = cbor.decode(data)
    assert only_allowed_types(out)
    assert type(out["t"]) is list


@pytest.mark.parametrize("value", [
    0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1,
    -1, -24, -25, -256, -257, -65537, -(2**32) - 1, -(2**64),
])
def test_encoder_emits_shortest_integer_heads(value):
    data = cbor.encode(value)
    major = 0 if value >= 0 else 1
    assert data == head(major, value if value >= 0 else -1 - value)
    assert cbor.decode(data) == value


@pytest.mark.parametrize("length", [0, 23, 24, 255, 256, 65535, 65536])
def test_encoder_emits_shortest_length_heads(length):
    for value, major in (("a" * length, 3), (b"a" * length, 2), ([0] * length, 4),
                         ({f"{i:06}": 0 for i in range(length)}, 5)):
        data = cbor.encode(value, max_items=200_000)
        assert data.startswith(head(major, length))
        assert same(cbor.decode(data, max_items=200_000), value)


# --------------------------------------------------------------- profile violations


@pytest.mark.parametrize("major, val", [
    (0, 0), (0, 23), (0, 24), (0, 255), (0, 65535), (0, 2**32 - 1),
    (1, 0), (1, 255), (2, 1), (3, 1), (4, 1), (5, 1),
])
def test_non_shortest_heads_are_refused(major, val):
    if major in (2, 3):
        tail = b"a" * val
    elif major == 4:
        tail = b"\x00" * val
    elif major == 5:
        tail = b"\x61a\x00" * val
    else:
        tail = b""
    shortest = len(head(major, val)) - 1
    assert cbor.decode(head(major, val) + tail) is not None  # the shortest form is fine
    for width in (1, 2, 4, 8):
        if width > shortest:
            with pytest.raises(ProtocolError, match="non-shortest"):
                cbor.decode(head(major, val, force=width) + tail)


def test_trailing_bytes_are_refused():
    for data in (b"\x01\x02", b"\x80\x80", cbor.encode({"a": 1}) + b"\xa0",
                 cbor.encode("x") + b"\x00" * 100):
        with pytest.raises(ProtocolError, match="trailing"):
            cbor.decode(data)


def test_duplicate_keys_are_refused():
    with pytest.raises(ProtocolError, match="duplicate"):
        cbor.decode(bytes.fromhex("a2616101616102"))
    with pytest.raises(ProtocolError, match="duplicate"):
        cbor.decode(b"\x81\xa3\x61a\x01\x61b\x02\x61a\x03")
    # the same key in two different maps is fine
    assert cbor.decode(b"\x82\xa1\x61a\x01\xa1\x61a\x02") == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("key", [b"\x01", b"\x20", b"\x41a", b"\xf4", b"\xf6", b"\xf9\x3c\x00",
                                 b"\x80", b"\xa0"])
def test_non_text_keys_are_refused(key):
    with pytest.raises(ProtocolError, match="key"):
        cbor.decode(b"\xa1" + key + b"\x00")


def test_empty_input_is_refused():
    with pytest.raises(ProtocolError, match="empty"):
        cbor.decode(b"")


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("max_depth", [0, 1, 2, 5, 16])
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_depth_limit_is_exact_both_ways(max_depth, kind):
    ok = nested(max_depth, kind=kind)
    too_deep = nested(max_depth + 1, kind=kind)
    data = cbor.encode(ok, max_depth=max_depth)
    assert cbor.decode(data, max_depth=max_depth) == ok
    with pytest.raises(EncodeError, match="nested deeper"):
        cbor.encode(too_deep, max_depth=max_depth)
    with pytest.raises(ProtocolError, match="nested deeper"):
        cbor.decode(cbor2.dumps(too_deep), max_depth=max_depth)


def test_depth_defaults_are_16():
    assert cbor.decode(cbor.encode(nested(16))) == nested(16)
    with pytest.raises(EncodeError):
        cbor.encode(nested(17))
    with pytest.raises(ProtocolError):
        cbor.decode(cbor2.dumps(nested(17)))


@pytest.mark.parametrize("value", [[1, 2, 3], {"a": [1, {"b": 2}]}, [[], [[]], {}]])
def test_item_limit_is_exact_both_ways(value):
    # Items: every data item, keys included, the top-level one too.
    count = count_items(value)
    data = cbor.encode(value, max_items=count)
    assert cbor.decode(data, max_items=count) == value
    with pytest.raises(EncodeError, match="items"):
        cbor.encode(value, max_items=count - 1)
    with pytest.raises(ProtocolError, match="items"):
        cbor.decode(data, max_items=count - 1)


def test_deep_values_are_refused_quickly_both_ways():
    deep = 0
    for _ in range(100_000):
        deep = [deep]
    t0 = time.perf_counter()
    with pytest.raises(EncodeError, match="nested deeper than 16"):
        cbor.encode(deep)
    with pytest.raises(EncodeError, match="nested deeper than 1000"):
        cbor.encode(deep, max_depth=1000)
    with pytest.raises(ProtocolError, match="nested deeper"):
        cbor.decode(b"\x81" * 100_000 + b"\x00")
    with pytest.raises(ProtocolError, match="nested deeper"):
        cbor.decode(b"\x81" * 100_000 + b"\x00", max_depth=1000)
    assert time.perf_counter() - t0 < 0.5


def test_deep_values_are_safe_in_a_thread_with_a_small_stack():
    # cbor2's encoder recurses in C (security.md 1.4): only our iterative walk stands
    # between a deep value and a segfault in a small-stack thread.
    deep: object = 0
    for _ in range(20_000):
        deep = [deep, {"k": 1}]
    results: list[str] = []

    def work() -> None:
        for call in (lambda: cbor.encode(deep), lambda: cbor.encode(deep, max_depth=150),
                     lambda: cbor.decode(b"\x81" * 20_000 + b"\x00", max_depth=150)):
            try:
                call()
            except (EncodeError, ProtocolError) as exc:
                results.append(type(exc).__name__)

    old = threading.stack_size(256 * 1024)
    try:
        t = threading.Thread(target=work)
        t.start()
    finally:
        threading.stack_size(old)
    t.join(10)
    assert results == ["EncodeError", "EncodeError", "ProtocolError"]


# --------------------------------------------------------------------- encode checks


class Color(enum.IntEnum):
    RED = 1


class Mood(enum.StrEnum):
    HAPPY = "happy"


class MyFloat(float):
    pass


class MyBytes(bytes):
    pass


class SneakyList(list):
    def __iter__(self):  # must not be called: the encoder reads the list itself
        raise AssertionError("overridden __iter__ called")


class SneakyDict(dict):
    def items(self):
        raise AssertionError("overridden items called")

    def __iter__(self):
        raise AssertionError("overridden __iter__ called")


def test_subclasses_are_sent_as_plain_builtins():
    value = {
        "int": Color.RED, "str": Mood.HAPPY, "float": MyFloat(2.5), "bytes": MyBytes(b"x"),
        "list": SneakyList([1, 2]), "dict": SneakyDict(a=1), "tuple": (1, (2,)),
        "odict": collections.OrderedDict(b=2), "bytearray": bytearray(b"ba"),
        "memoryview": memoryview(b"mv"), Mood.HAPPY: "str-subclass key",
    }
    out = cbor.decode(cbor.encode(value))
    assert out == {"int": 1, "str": "happy", "float": 2.5, "bytes": b"x", "list": [1, 2],
                   "dict": {"a": 1}, "tuple": [1, [2]], "odict": {"b": 2},
                   "bytearray": b"ba", "memoryview": b"mv", "happy": "str-subclass key"}
    assert only_allowed_types(out)
    # cbor2 alone would turn a memoryview into an array of ints: we send bytes.
    assert cbor.encode(memoryview(b"ab")) == cbor2.dumps(b"ab")


@pytest.mark.parametrize("value, type_name", [
    ({1, 2}, "set"), (frozenset(), "frozenset"), (object(), "object"), (1j, "complex"),
    (decimal.Decimal("123.456"), "Decimal"), (datetime.datetime(2020, 1, 2), "datetime"),
    (cbor2.CBORTag(1, 2), "CBORTag"), (cbor2.undefined, "UndefinedType"), (len, "builtin"),
    (ValueError("x"), "ValueError"),
])
def test_encode_refuses_non_cbor_types(value, type_name):
    with pytest.raises(EncodeError,
                       match=f"^value: {type_name}.* is not CBOR data(; send .* instead)?$"):
        cbor.encode(value)
    with pytest.raises(EncodeError, match=f"^args\\[1\\]\\[\"k\"\\]: {type_name}"):
        cbor.encode([0, {"k": value}], name="args")


@pytest.mark.parametrize("value", [2**64, -(2**64) - 1, 10**100, -(10**100)])
def test_encode_refuses_ints_beyond_64_bits(value):
    with pytest.raises(EncodeError, match="64 bits") as info:
        cbor.encode({"n": [value]})
    assert str(info.value).startswith('value["n"][0]: int')
    assert str(value) not in str(info.value)


def test_encode_refuses_non_str_keys():
    for key in (1, b"k", None, 1.5, (1, 2), True):
        with pytest.raises(EncodeError, match="dict key of type") as info:
            cbor.encode({"outer": {key: "v"}})
        assert str(info.value).startswith('value["outer"]: dict key of type '
                                          f"{type(key).__name__}")


def test_encode_refuses_cycles():
    a: list = [1]
    a.append(a)
    d: dict = {"x": []}
    d["x"].append(d)
    t = ([],)
    t[0].append(t)
    for value, where in ((a, "value[1]"), (d, 'value["x"][0]'), (t, "value[0][0]")):
        with pytest.raises(EncodeError, match="cycle") as info:
            cbor.encode(value, max_depth=10**6)
        assert str(info.value).startswith(where + ":")
    shared = [1, 2]
    assert cbor.decode(cbor.encode([shared, shared])) == [[1, 2], [1, 2]]  # no cycle


def test_encode_refuses_lone_surrogates_with_a_path():
    with pytest.raises(EncodeError, match=r'^args\["t"\]\[0\]: str is not valid Unicode'):
        cbor.encode({"t": ["ok\ud800"]}, name="args")
    with pytest.raises(EncodeError, match=r"^value: dict key is not valid Unicode"):
        cbor.encode({"\udc00": 1})
    with pytest.raises(EncodeError, match=r"^value: str is not valid Unicode"):
        cbor.encode("\ud800")


def test_encode_messages_name_type_and_path_never_the_value():
    with pytest.raises(EncodeError) as info:
        cbor.encode({"x": [0, 0, 0, {"very-secret"}]}, name="args")
    assert str(info.value) == ('args["x"][3]: set is not CBOR data; send a list '
                               '(sorted(s), if order should not matter) instead')
    long_key = "k" * 100
    with pytest.raises(EncodeError) as info:
        cbor.encode({long_key: decimal.Decimal("98765.4321")})
    assert "98765" not in str(info.value) and long_key not in str(info.value)
    assert isinstance(info.value, TypeError)


def test_released_memoryview_is_refused():
    mv = memoryview(b"abc")
    mv.release()
    with pytest.raises(EncodeError, match="released"):
        cbor.encode([mv])


def test_prepare_returns_the_value_itself_when_nothing_needs_converting():
    value = {"a": [1, "b", None, 2.5, b"c", (1,)]}
    assert cbor.prepare(value) is value
    assert cbor.prepare([Color.RED]) == [1]


# ----------------------------------------------------------------------- property tests

scalars = (st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.binary(max_size=20))
values = st.recursive(
    scalars,
    lambda children: (st.lists(children, max_size=5) | st.tuples(children, children)
                      | st.dictionaries(st.text(max_size=8), children, max_size=5)),
    max_leaves=40)


@FUZZ
@given(values)
def test_valid_values_round_trip_property(value):
    data = cbor.encode(value, max_depth=64)
    assert same(cbor.decode(data, max_depth=64), value)
    # The slow path (used for subclasses) yields exactly what the fast path sends.
    assert cbor2.dumps(cbor._normalize(value, 64, 10**6, "v", check_text=True)) == data


@FUZZ
@given(st.binary(max_size=80))
def test_random_bytes_raise_only_protocol_error(data):
    try:
        out = cbor.decode(data)
    except ProtocolError:
        return
    assert only_allowed_types(out)
    assert same(cbor.decode(cbor.encode(out)), out)


@FUZZ
@given(values, st.data())
def test_mutated_encodings_raise_only_protocol_error(value, draw):
    data = mutate(cbor.encode(value, max_depth=64), draw)
    try:
        out = cbor.decode(data)
    except ProtocolError:
        return
    # Whatever the decoder accepts is exactly one item of the profile, and the encoder
    # accepts it back with the same limits.
    assert only_allowed_types(out)
    assert same(cbor.decode(cbor.encode(out)), out)


@pytest.mark.parametrize("value, hint", [
    (datetime.datetime(2020, 1, 2), "an ISO 8601 string (d.isoformat())"),
    (datetime.date(2020, 1, 2), "an ISO 8601 string"),
    ({1, 2}, "a list"), (frozenset({1}), "a list"),
    (decimal.Decimal("1.5"), "a string (str(d))"),
    (1j, "a [real, imag] list"),
])
def test_common_non_cbor_types_say_what_to_send_instead(value, hint):
    with pytest.raises(EncodeError) as caught:
        cbor.encode({"when": value}, name="args")
    assert "is not CBOR data; send " in str(caught.value)
    assert hint in str(caught.value)


def test_a_type_without_a_known_substitute_gets_no_hint():
    with pytest.raises(EncodeError, match=r"object is not CBOR data$"):
        cbor.encode(object())


# --- check(): everything decode() checks, nothing built, a bound of what it would hold ---

INFLATING = {
    "empty maps": [{}] * 40000,
    "empty lists": [[]] * 40000,
    "one-entry maps of empty maps": [{"ab": {}}] * 13000,
    "two-entry maps": [{"ab": {}, "cd": {}}] * 8000,
    "nested lists": [[[[]]]] * 10000,
    "big ints": [2**63] * 40000,
    "short texts": ["ab"] * 40000,
    "astral text": ["a" * 3000 + "\U0001F600"] * 10,
    "a big map": {f"k{i}": f"v{i}" for i in range(20000)},
    "1 MiB of bytes": [b"x" * (1 << 20)],
}


@pytest.mark.parametrize("value", INFLATING.values(), ids=INFLATING.keys())
def test_check_bounds_what_decoding_builds(value):
    """The bound check() returns is at least the peak memory decode() allocates (traced),
    for the shapes that inflate most per encoded byte."""
    import gc
    import tracemalloc

    data = cbor2.dumps(value)
    bound = cbor.check(data, max_items=10**6)
    gc.collect()
    tracemalloc.start()
    try:
        decoded = cbor.decode(data, max_items=10**6)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoded == value
    assert peak <= bound <= 4 * max(peak, len(data)) + 8192, (peak, bound)


@pytest.mark.parametrize("data", [c[1] for c in HOSTILE] + [b"\x62\xff\xfe", b"\xa1\x62\xff\xfe\x00"],
                         ids=lambda d: d[:8].hex())
def test_check_refuses_what_decode_refuses(data):
    try:
        cbor.decode(data)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            cbor.check(data)
    else:
        assert cbor.check(data) >= len(data)
