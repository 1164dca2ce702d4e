"""PeerId and the vendored bech32m codec."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peernet import ids
from peernet.errors import InvalidPeerId
from peernet.ids import (
    CHARSET,
    PeerId,
    bech32m_decode,
    bech32m_encode,
    convertbits,
    locate_single_error,
)

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "bip350.json").read_text())
DEMO_KEY = bytes(range(32))
# From reference/ecosystem.md §3, produced with the BIP-350 reference algorithm.
DEMO_TEXT = "pn1qqqsyqcyq5rqwzqfpg9scrgwpugpzysnzs23v9ccrydpk8qarc0s92nch3"

keys = st.binary(min_size=32, max_size=32)


# --- BIP-350 vectors -----------------------------------------------------------------


def test_vector_file_names_its_source():
    source = VECTORS["_source"]
    assert source["repo"] == "bitcoin/bips"
    assert source["path"] == "bip-0350.mediawiki"
    assert len(source["commit"]) == 40
    assert len(VECTORS["valid"]) == 7
    assert len(VECTORS["invalid"]) == 14


@pytest.mark.parametrize("text", VECTORS["valid"])
def test_bip350_valid_strings_decode_and_reencode(text):
    hrp, values = bech32m_decode(text)
    assert hrp == text.lower()[: text.lower().rfind("1")]
    assert bech32m_encode(hrp, values) == text.lower()


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda case: case["reason"])
def test_bip350_invalid_strings_are_rejected(case):
    with pytest.raises(ValueError):
        bech32m_decode(case["string"])


def test_bip350_invalid_reasons_are_named():
    messages = {}
    for case in VECTORS["invalid"]:
        with pytest.raises(ValueError) as info:
            bech32m_decode(case["string"])
        messages[case["string"]] = str(info.value)
    assert "invalid character" in messages["\x201xj0phk"]
    assert "too long" in messages[VECTORS["invalid"][3]["string"]]
    assert "separator" in messages["qyrz8wqd2c9m"]
    assert "empty human-readable part" in messages["1qyrz8wqd2c9m"]
    assert "'b'" in messages["y1b0jsk6g"]
    assert "too short" in messages["in1muywd"]
    assert "checksum" in messages["M1VUXWEZ"]


def test_bech32_checksum_is_not_bech32m():
    # A valid BIP-173 (bech32) string must not pass as bech32m.
    with pytest.raises(ValueError, match="checksum"):
        bech32m_decode("a12uel5l")


def test_convertbits_rejects_bad_padding():
    with pytest.raises(ValueError, match="padding"):
        convertbits([31], 5, 8, pad=False)  # five leftover bits: too many
    with pytest.raises(ValueError, match="padding"):
        convertbits([0, 1], 5, 8, pad=False)  # two leftover bits, one of them set


# --- text form -----------------------------------------------------------------------


def test_known_answer():
    pid = PeerId(DEMO_KEY)
    assert str(pid) == DEMO_TEXT
    assert len(DEMO_TEXT) == 61
    assert pid.bytes == DEMO_KEY
    assert bytes(pid) == DEMO_KEY
    assert pid.short == "pn1qqqsyqcy"


@given(keys)
def test_round_trips(raw):
    pid = PeerId(raw)
    text = str(pid)
    assert len(text) == 61 and text.startswith("pn1") and text == text.lower()
    assert PeerId.parse(text) == pid
    assert PeerId.parse(text.upper()) == pid
    assert PeerId.parse(raw) == pid
    assert PeerId.parse(bytearray(raw)) == pid
    assert PeerId.parse(memoryview(raw)) == pid
    assert PeerId.parse(pid) is pid
    assert pid.short == text[:11]


@given(keys)
def test_the_fast_text_paths_agree_with_the_reference_bech32m(raw):
    """PeerId texts are made and read by fast paths (bytes.translate, int arithmetic);
    they give exactly what the BIP-350 reference functions give, and the careful parser
    (with its error messages) still decides everything that is not a canonical text."""
    text = bech32m_encode("pn", convertbits(raw, 8, 5, pad=True))
    assert ids._encode_key(raw) == text
    assert ids._decode_key(text) == raw
    assert ids._decode_key(text.upper()) is None  # not canonical: the careful path
    assert ids._parse_text(text.upper()) == raw
    typo = text[:20] + ("q" if text[20] != "q" else "p") + text[21:]
    assert ids._decode_key(typo) is None
    with pytest.raises(InvalidPeerId):
        ids._parse_text(typo)


def test_parse_forgives_what_people_type():
    spaced = " ".join(DEMO_TEXT[i : i + 4] for i in range(0, 61, 4))
    dashed = "-".join(DEMO_TEXT[i : i + 7] for i in range(0, 61, 7))
    for typed in (f"  {DEMO_TEXT}\n", spaced, dashed, f"\t{dashed.upper()} ", DEMO_TEXT.upper()):
        assert PeerId.parse(typed) == PeerId(DEMO_KEY)


def _message(value: object) -> str:
    with pytest.raises(InvalidPeerId) as info:
        PeerId.parse(value)  # type: ignore[arg-type]
    return str(info.value)


def test_invalid_peer_id_is_a_value_error():
    with pytest.raises(ValueError):
        PeerId.parse("nonsense")


@given(keys, st.integers(min_value=3, max_value=60), st.sampled_from(CHARSET))
def test_every_single_substitution_is_detected_and_located(raw, position, char):
    text = str(PeerId(raw))
    if text[position] == char:
        return
    typo = text[:position] + char + text[position + 1 :]
    message = _message(typo)
    assert "bad checksum" in message
    assert f"{char!r} at position {position + 1}" in message


def test_all_substitutions_of_one_id_are_located():
    for position in range(3, 61):
        for char in CHARSET.replace(DEMO_TEXT[position], ""):
            typo = DEMO_TEXT[:position] + char + DEMO_TEXT[position + 1 :]
            assert f"at position {position + 1} is probably mistyped" in _message(typo)


def test_several_typos_are_detected():
    typo = "pn1" + "q" * 58
    assert "bad checksum" in _message(typo)


def test_mixed_case_is_rejected():
    assert "mixed upper and lower case" in _message(DEMO_TEXT[:30] + DEMO_TEXT[30:].upper())


def test_wrong_prefix_names_what_was_found():
    npub = bech32m_encode("npub", convertbits(DEMO_KEY, 8, 5, pad=True))
    message = _message(npub)
    assert "wrong prefix 'npub1'" in message and "expected 'pn1'" in message
    assert "'pn1'" in _message("qqqsyqcyq5rqwzqfpg9scrgwpugpzysnzs23v9ccrydpk8qarc0s92nch3")


def test_invalid_characters_are_named():
    message = _message(DEMO_TEXT[:10] + "b" + DEMO_TEXT[11:])
    assert "invalid character 'b' at position 11" in message
    assert "invalid character 'é'" in _message(DEMO_TEXT[:10] + "é" + DEMO_TEXT[11:])
    assert "invalid character '1'" in _message(DEMO_TEXT[:10] + "1" + DEMO_TEXT[11:])


def test_wrong_text_length():
    assert "61 characters, got 60" in _message(DEMO_TEXT[:-1])
    assert "cut short? a short id" in _message(DEMO_TEXT[:11])
    assert "cut short" not in _message(DEMO_TEXT + "q")
    assert "61 characters, got 62" in _message(DEMO_TEXT + "q")
    assert "empty" in _message("   ")
    assert "too long: 5000 characters" in _message("q" * 5000)


def test_well_formed_text_of_the_wrong_data_length():
    short = bech32m_encode("pn", convertbits(DEMO_KEY[:31], 8, 5, pad=True))
    assert "decodes to 31 bytes, expected 32" in _message(short)
    long = bech32m_encode("pn", convertbits(DEMO_KEY + b"\0", 8, 5, pad=True))
    assert "decodes to 33 bytes, expected 32" in _message(long)


def test_non_canonical_padding_is_rejected():
    values = convertbits(DEMO_KEY, 8, 5, pad=True)
    values[-1] |= 1  # the last symbol carries 4 padding bits; set one
    assert ids._decode_key(bech32m_encode("pn", values)) is None
    assert "padding" in _message(bech32m_encode("pn", values))


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_wrong_byte_length(length):
    assert f"expected 32 bytes, got {length}" in _message(bytes(length))
    with pytest.raises(InvalidPeerId, match=f"expected 32 bytes, got {length}"):
        PeerId(bytes(length))


@pytest.mark.parametrize("value", [None, 42, 4.2, ["pn1"], {"id": 1}])
def test_wrong_type_is_named(value):
    assert type(value).__name__ in _message(value)


def test_constructor_refuses_text_and_other_types():
    with pytest.raises(InvalidPeerId, match="PeerId.parse"):
        PeerId(DEMO_TEXT)  # type: ignore[arg-type]
    with pytest.raises(InvalidPeerId, match="int"):
        PeerId(7)  # type: ignore[arg-type]


# --- value semantics -----------------------------------------------------------------


def test_equality_and_hash():
    a, a2, b = PeerId(DEMO_KEY), PeerId(bytearray(DEMO_KEY)), PeerId(bytes(32))
    assert a == a2 and hash(a) == hash(a2)
    assert a != b
    assert a != DEMO_KEY
    assert len({a, a2, b}) == 2
    assert {a: 1}[a2] == 1


def test_a_peer_id_and_its_canonical_text_are_interchangeable():
    # The README's `authorize=lambda peer: peer == laptop_id` with the id pasted as text.
    a, b = PeerId(DEMO_KEY), PeerId(bytes(32))
    text = str(a)
    assert a == text and text == a and not (a != text) and not (text != a)
    assert text in {a} and a in {text} and hash(a) == hash(text)
    assert {text: 1}[a] == 1 and {a: 2}[text] == 2
    assert a != str(b) and str(b) != a and a not in {str(b)}
    # Only the canonical text: the looser forms parse() forgives are not equal.
    assert a != text.upper() and a != " " + text and a != text[:-1]


def test_parsing_a_text_twice_gives_the_same_id_from_the_cache():
    first = PeerId.parse(DEMO_TEXT)
    assert PeerId.parse(DEMO_TEXT) is first
    with pytest.raises(InvalidPeerId):
        PeerId.parse(DEMO_TEXT[:-1] + ("q" if DEMO_TEXT[-1] != "q" else "p"))
    with pytest.raises(InvalidPeerId):  # still refused the second time: errors are not kept
        PeerId.parse(DEMO_TEXT[:-1] + ("q" if DEMO_TEXT[-1] != "q" else "p"))


def test_ordering_follows_raw_bytes():
    ids = [PeerId(bytes([i]) * 32) for i in (3, 1, 2)]
    assert [p.bytes[0] for p in sorted(ids)] == [1, 2, 3]
    low, high = PeerId(bytes(32)), PeerId(b"\xff" * 32)
    assert low < high and low <= high and high > low and high >= low and low <= low
    assert not high < low
    with pytest.raises(TypeError):
        _ = low < DEMO_KEY  # type: ignore[operator]
    assert low.__lt__(DEMO_KEY) is NotImplemented
    assert low.__eq__(DEMO_KEY) is NotImplemented


def test_immutable():
    pid = PeerId(DEMO_KEY)
    with pytest.raises(AttributeError):
        pid._raw = bytes(32)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        pid.bytes = bytes(32)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        pid.anything = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        del pid._raw
    assert pid.bytes == DEMO_KEY
    assert not hasattr(pid, "__dict__")


def test_copy_and_pickle_keep_the_value():
    pid = PeerId(DEMO_KEY)
    assert copy.copy(pid) is pid and copy.deepcopy(pid) is pid
    assert pickle.loads(pickle.dumps(pid)) == pid


def test_repr_shows_only_the_short_form():
    pid = PeerId(DEMO_KEY)
    assert repr(pid) == "PeerId('pn1qqqsyqcy…')"
    assert DEMO_TEXT not in repr(pid)
    assert f"{pid}" == DEMO_TEXT


def test_locate_single_error_on_valid_data_is_none():
    hrp, values = "pn", convertbits(DEMO_KEY, 8, 5, pad=True)
    checksum = bech32m_decode(DEMO_TEXT)
    assert checksum == (hrp, values)
    full = [CHARSET.index(c) for c in DEMO_TEXT[3:]]
    assert locate_single_error(hrp, full) is None
