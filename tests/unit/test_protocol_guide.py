"""guides/protocol.md is a specification a second implementation is written from: its
test vectors, tables and numbers are checked here against the code, so the guide cannot
drift from what peernet puts on the wire."""

from __future__ import annotations

import base64
import inspect
import logging
import re
from pathlib import Path

import pytest

import peernet
from peernet._proto import cbor
from peernet._proto.announce import decode_announce, encode_announce
from peernet._proto.channel import SUPERSEDED, Channel, error_for
from peernet._proto.framing import frame
from peernet._proto.mdns_record import _message, build_txt, decode_txt
from peernet._proto.messages import (
    BYE_REASONS,
    ERROR_CODES,
    Call,
    Ping,
    Pong,
    decode_message,
    encode_message,
)
from peernet._proto.session import HandshakeCompleted, MessageReceived, SessionClosed
from peernet.errors import MessageTooLarge, ProtocolError
from peernet.identity import Identity, verify
from peernet.ids import BECH32M_CONST, PeerId, _create_checksum, _hrp_expand, convertbits
from tests.conftest import wait_until
from tests.helpers import make_pair, open_pair

GUIDE = (Path(__file__).resolve().parents[2] / "guides" / "protocol.md").read_text()
EXAMPLE_IDENTITY = Identity.from_seed(bytes(range(32)))


def section(number: str) -> str:
    """The text of the guide's section ``number`` (e.g. "5.3"), up to the next heading
    of the same or a higher level."""
    level = "#" * (2 + number.count("."))
    match = re.search(rf"^{level} {re.escape(number)}\.? .*?$(.*?)(?=^#{{2,{len(level)}}} |\Z)",
                      GUIDE, re.MULTILINE | re.DOTALL)
    assert match, f"guides/protocol.md has no section {number}"
    return match.group(1)


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def table_keys(text: str) -> list[str]:
    """The back-quoted first cell of every table row, in order."""
    return re.findall(r"^\| `([^`]+)` \|", text, re.MULTILINE)


def table_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| `")]


def hex_block(block: str) -> bytes:
    return bytes.fromhex("".join(block.split()))


# -- 1.1 the text form of a PeerId -----------------------------------------------------


def _labelled(block: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, v in re.findall(r"^([a-z0-9 -]+):\s+(.*)$", block,
                                                        re.MULTILINE)}


def test_bech32m_worked_example_is_what_the_code_writes():
    text = section("1.1")
    example = _labelled(code_blocks(text)[0])
    key = bytes.fromhex(example["key bytes"])
    pid = PeerId(key)
    assert str(pid) == example["text"] and len(example["text"]) == 61
    assert PeerId.parse(example["text"]).bytes == key
    assert pid.short == example["short form"]
    groups = convertbits(key, 8, 5, pad=True)
    assert len(groups) == 52
    shown = [int(n) for n in example["5-bit"].split("=")[1].split() if n.isdigit()]
    assert groups[:len(shown)] == shown
    assert groups[-1] == int(example["last group"].split("=")[1])
    assert example["data chars"] == str(pid)[3:-6]
    checksum = [int(n) for n in re.findall(r"\d+", example["checksum"].split("=")[0])]
    assert _create_checksum("pn", groups) == checksum
    assert example["checksum"].split("=")[1].strip() == str(pid)[-6:]


def test_bech32m_constants_in_the_guide_are_the_codes():
    text = section("1.1")
    assert f"`{BECH32M_CONST:#010x}`" in text
    assert str(_hrp_expand("pn")) in text
    assert "qpzry9x8gf2tvdw0s3jn54khce6mua7l" in text


# -- 3: handshake sizes, READY -----------------------------------------------------------


def test_handshake_frame_sizes_are_as_stated():
    sizes = re.search(r"message 1 = (\d+) bytes, message 2 = .*?= (\d+)\s+bytes, message 3 = "
                      r".*?= (\d+) bytes, READY = (\d+) bytes", section("3"), re.DOTALL)
    assert sizes, "the guide no longer states the frame sizes"
    stated = [int(n) for n in sizes.groups()]
    pair = make_pair(initiator_port=4321, responder_port=1234)
    i, r = pair.initiator, pair.responder
    message1 = i.data_to_send()
    r.receive_data(message1)
    message2 = r.data_to_send()
    i.receive_data(message2)
    message3 = i.data_to_send()
    events = r.receive_data(message3)
    ready = r.data_to_send()
    assert [len(m) - 2 for m in (message1, message2, message3, ready)] == stated
    # The advertised port travels in the binding (3.2).
    assert [type(e) for e in events] == [HandshakeCompleted]
    assert events[0].listen_port == 4321


def test_ready_is_mandatory_and_the_initiator_may_send_right_behind_message_3():
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    with pytest.raises(ProtocolError):
        i.seal(b"\xf6")  # before message 2 there are no keys
    r.receive_data(i.data_to_send())
    i.receive_data(r.data_to_send())
    events = r.receive_data(i.data_to_send() + i.seal(b"\xf6"))  # message 3 + a call
    assert [type(e) for e in events] == [HandshakeCompleted, MessageReceived]
    r.data_to_send()  # the READY is lost; an application message comes first instead
    events = i.receive_data(r.seal(b"\xf6"))
    assert [type(e) for e in events] == [SessionClosed]


def test_a_second_ready_ends_the_connection():
    pair = open_pair()
    again = frame(pair.responder._send.encrypt(b"\x02"))  # noqa: SLF001 -- forging one
    assert [type(e) for e in pair.initiator.receive_data(again)] == [SessionClosed]


def test_the_responder_processes_data_that_came_with_message_3():
    pair = make_pair()
    i, r = pair.initiator, pair.responder
    r.receive_data(i.data_to_send())
    i.receive_data(r.data_to_send())
    message3 = i.data_to_send()
    # An initiator that does not wait for READY (peernet's first call): data right
    # after message 3, sealed with its first send nonce.
    early = i.seal(b"\xf6")
    events = r.receive_data(message3 + early)
    assert [type(e) for e in events] == [HandshakeCompleted, MessageReceived]
    assert events[1].payload == b"\xf6"


# -- 4: the size limit ---------------------------------------------------------------------


def test_the_size_limit_counts_the_cbor_bytes_of_one_message():
    limit = 100_000  # two fragments: flag bytes and tags must not count
    pair = open_pair(responder_max_message_size=limit, initiator_max_message_size=limit + 1)
    i, r = pair.initiator, pair.responder
    events = r.receive_data(i.seal(b"\x00" * limit))
    assert [type(e) for e in events] == [MessageReceived] and len(events[0].payload) == limit
    with pytest.raises(MessageTooLarge):
        r.seal(b"\x00" * (limit + 1))  # the sender refuses over its own limit
    assert [type(e) for e in r.receive_data(i.seal(b"\x00" * (limit + 1)))] == [SessionClosed]
    assert "1 MiB = 1,048,576 bytes" in section("4")
    assert inspect.signature(peernet.Node).parameters["max_message_size"].default == 1_048_576


# -- 5: fields, error codes, pings, byes -----------------------------------------------------


def test_error_code_table_equals_the_codes_the_code_knows():
    codes = table_keys(section("5.3"))
    assert sorted(codes) == sorted(ERROR_CODES) and len(codes) == len(ERROR_CODES)


def test_error_code_table_names_the_exception_each_caller_gets():
    peer = EXAMPLE_IDENTITY.peer_id
    for row in table_rows(section("5.3")):
        code, gets = row[0].strip("`"), row[-1].strip("`")
        assert type(error_for(code, "ValueError", peer, "f")).__name__ == gets, code


def test_bad_request_is_reserved_but_accepted():
    raw = cbor.encode([2, 7, "bad_request", None])
    assert decode_message(raw).code == "bad_request"
    assert "**reserved: never sent.**" in section("5.3")


def test_bye_reason_table_equals_BYE_REASONS():
    assert tuple(table_keys(section("5.5"))) == BYE_REASONS
    assert SUPERSEDED == BYE_REASONS[0] == "superseded"


@pytest.mark.timeout(30)
def test_the_bye_reasons_nodes_send_are_the_listed_ones(make_node, caplog):
    """A node that closes, and one that unpairs, say why; both reasons are in the list
    (checked by what the receiving node logs, not by reading the source)."""
    caplog.set_level(logging.INFO, logger="peernet")
    hub, closing, unpairing = make_node("hub"), make_node("closing"), make_node("unpairing")
    for other in (closing, unpairing):
        hub.pair(other.id)
        other.pair(hub.id)
        other.connect(hub.id, "127.0.0.1", hub.port)
        assert other.wait_for_peer(hub.id, timeout=10)
    assert wait_until(lambda: sum(p.online for p in hub.list_peers()) == 2)

    def said() -> set[str]:
        return {m.group(1) for r in caplog.records
                if (m := re.search(r"peer said bye \((.*)\)", r.getMessage()))}

    closing.close()
    unpairing.unpair(hub.id)
    assert wait_until(lambda: len(said()) == 2, timeout_s=10), said()
    assert said() == {"node closing", "unpaired"} <= set(BYE_REASONS)


def test_nonce_is_exactly_8_bytes_of_a_byte_string():
    assert decode_message(cbor.encode([4, b"12345678"])) == Ping(b"12345678")
    for bad in (b"1234567", b"123456789", "12345678", 12345678):
        with pytest.raises(ProtocolError):
            decode_message(cbor.encode([4, bad]))
    assert "**exactly 8 bytes**" in section("5.1")


def test_a_ping_is_echoed_and_an_unknown_pong_is_ignored():
    channel = Channel(EXAMPLE_IDENTITY.peer_id)
    assert channel.receive(encode_message(Ping(b"abcdefgh")), 0.0) is None
    assert channel.take_output() == [encode_message(Pong(b"abcdefgh"))]
    assert channel.receive(encode_message(Pong(b"unknown!")), 0.0) is None
    assert channel.ended is None and not channel.take_output()


# -- 6: depth and items ----------------------------------------------------------------------


def _nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def test_depth_counts_the_envelope_as_level_1():
    assert "may nest at most\n  **16** levels" in section("6")
    decode_message(cbor.encode([0, 1, "f", _nested(15)], max_depth=99))
    with pytest.raises(ProtocolError):
        decode_message(cbor.encode([0, 1, "f", _nested(16)], max_depth=99))
    assert cbor.DEFAULT_MAX_DEPTH == 16


def test_items_count_as_the_guide_says():
    text = section("6")
    assert '`[3, "f", {"a": 2}]` is\n  6 items' in text and "**50,000**" in text
    raw = cbor.encode([3, "f", {"a": 2}])
    cbor.decode(raw, max_items=6)
    with pytest.raises(ProtocolError):
        cbor.decode(raw, max_items=5)
    assert cbor.DEFAULT_MAX_ITEMS == 50_000


# -- 7: discovery test vectors ----------------------------------------------------------------


def test_udp_announce_example_is_what_the_code_sends():
    text = section("7.1")
    assert str(EXAMPLE_IDENTITY.peer_id) in text
    packet = encode_announce(EXAMPLE_IDENTITY.sign, EXAMPLE_IDENTITY.peer_id, port=4321,
                             counter=1718000000123, interval_s=5.0, address="192.168.1.9")
    assert hex_block(code_blocks(text)[0]) == packet
    announce = decode_announce(packet)
    assert (announce.port, announce.counter, announce.address) == (4321, 1718000000123,
                                                                   "192.168.1.9")
    assert announce.verify()


def test_solicitation_table_example_and_limits_are_the_codes():
    """7.1.1, issue 22: the solicitation byte by byte, and every number the guide gives
    for answering and asking."""
    from peernet._proto.announce import SOLICITATION_LEN, SolicitationLimiter
    from peernet._proto.announce import encode_solicitation
    from peernet.discovery import mdns, udp

    text = GUIDE[GUIDE.index("### 7.1.1 "):GUIDE.index("### 7.2 ")]  # a ### heading too
    rows = [line.strip("|").split("|") for line in text.splitlines()
            if re.match(r"^\| \d+ \|", line)]
    layout = [(int(offset), int(length)) for offset, length, _ in rows]
    assert layout == [(0, 4), (4, 1), (5, 1), (6, 2), (8, 16), (24, 108)]
    assert sum(length for _, length in layout) == SOLICITATION_LEN == 132
    assert f"{SOLICITATION_LEN} bytes, as long as an announce" in text
    example = re.search(r"`([0-9a-f]{48})` followed by 108 zero bytes", text).group(1)
    assert encode_solicitation(bytes(range(16))) == bytes.fromhex(example) + bytes(108)
    limits = inspect.signature(SolicitationLimiter).parameters
    assert (limits["per_source_rate_per_s"].default, limits["per_source_burst"].default) == (5, 10)
    assert "**5 answers a second per source address, burst 10**" in text
    assert (limits["total_rate_per_s"].default, limits["total_burst"].default) == (50, 50)
    assert "**50 answers a second over all sources, burst 50**" in text
    assert f"at most {limits['max_sources'].default} sources tracked" in text
    assert f"receiver's own last {limits['max_own'].default}" in text
    flat = " ".join(text.split())  # the guide's line breaks move when it is reflowed
    assert udp._SOLICIT_AT_S == (0.0, 0.25, 1.0)
    assert "at once and again 0.25 s and 1 s later" in flat
    assert mdns._SOLICIT_MIN_INTERVAL_S == 1.0 and "at most once a second" in flat


def test_directory_limits_in_the_guide_are_the_codes():
    from peernet.directory import DIRECTORY_HANDLER, MAX_ENTRIES, MAX_SUMMARY

    text = section("5.7")
    assert f"**`{DIRECTORY_HANDLER}`**" in text
    assert f"at most\n  {MAX_SUMMARY} characters" in text
    assert f"at most {MAX_ENTRIES} entries" in text
    assert f"reads at most {MAX_ENTRIES} entries" in text and f"to {MAX_SUMMARY} characters" in text


def test_mdns_signed_bytes_example_is_what_the_code_signs():
    text = section("7.2")
    signed = hex_block(code_blocks(text)[0])
    assert signed == _message(EXAMPLE_IDENTITY.peer_id, 4321, 7, ["192.168.1.9", "10.0.0.5"])
    assert len(signed) == 89 and signed[:14] == b"peernet/1 mdns"
    txt = build_txt(EXAMPLE_IDENTITY.sign, EXAMPLE_IDENTITY.peer_id, port=4321, seq=7,
                    addresses=["192.168.1.9", "10.0.0.5"])
    assert f"`sig={txt['sig']}`" in text
    assert verify(EXAMPLE_IDENTITY.peer_id, signed, base64.b64decode(txt["sig"]))
    assert table_keys(text)[:6] == list(txt)  # the TXT keys, in the order sent
    assert decode_txt(txt, 4321).addresses == ("192.168.1.9", "10.0.0.5")


# -- 8: defaults -----------------------------------------------------------------------------


@pytest.mark.parametrize("row,parameter,value", [
    ("handshake deadline", "handshake_timeout", 10.0),
    ("a write that cannot complete", "io_timeout", 10.0),
    ("calls from one peer queued or running", "max_calls_per_peer", 32),
    ("sends from one peer waiting", "max_sends_per_peer", 256),
    ("default call timeout", "call_timeout", 5.0),
    ("ping on every link", "heartbeat_interval", 30.0),
    ("a link that brought no frame at all", "heartbeat_timeout", 60.0),
    ("connections in their handshake", "max_preauth", 64),
    ("connections in their handshake", "max_preauth_per_ip", 8),
    ("reconnect delay", "reconnect_initial", 0.5),
    ("reconnect delay", "reconnect_max", 30.0),
])
def test_defaults_table_matches_the_node(row, parameter, value):
    assert inspect.signature(peernet.Node).parameters[parameter].default == value
    line = next(ln for ln in section("8").splitlines() if ln.startswith(f"| {row}"))
    assert re.search(rf"(?<![\d.]){value:g}(?![\d.])", line.replace(",", "")), line


def test_retired_link_bound_is_call_timeout_plus_one_second():
    call_timeout = inspect.signature(peernet.Node).parameters["call_timeout"].default
    assert f"**{call_timeout + 1.0:.1f} s** with the defaults" in section("5.6")


# -- 7.1 and 11: invites ----------------------------------------------------------------


def test_the_announce_with_a_nameplate_is_the_one_the_code_writes():
    from peernet._proto.announce import encode_announce as encode

    blocks = [b for b in code_blocks(section("7.1")) if len(hex_block_or_empty(b)) == 135]
    assert len(blocks) == 1
    packet = encode(EXAMPLE_IDENTITY.sign, EXAMPLE_IDENTITY.peer_id, port=4321,
                    counter=1718000000123, interval_s=5.0, address="192.168.1.9",
                    nameplates=(7,))
    assert hex_block(blocks[0]) == packet
    assert decode_announce(packet).nameplates == (7,)


def hex_block_or_empty(block: str) -> bytes:
    try:
        return hex_block(block)
    except ValueError:
        return b""


def test_the_mdns_inv_example_adds_the_bytes_the_guide_says():
    text = section("7.2")
    assert "`02 0007 000c`" in text
    plain = _message(EXAMPLE_IDENTITY.peer_id, 4321, 7, ["192.168.1.9", "10.0.0.5"])
    with_inv = _message(EXAMPLE_IDENTITY.peer_id, 4321, 7, ["192.168.1.9", "10.0.0.5"],
                        (7, 12))
    assert with_inv == plain + bytes.fromhex("020007000c")
    txt = build_txt(EXAMPLE_IDENTITY.sign, EXAMPLE_IDENTITY.peer_id, port=4321, seq=7,
                    addresses=["192.168.1.9", "10.0.0.5"], nameplates=(7, 12))
    assert txt["inv"] == "7,12" and decode_txt(txt, 4321).nameplates == (7, 12)


def test_the_invite_code_examples_are_what_the_code_writes():
    from peernet._proto.invite import HELLO_LEN, KIND_SHORT, InviteHello, LongCode, parse_code
    from peernet._proto.wordlist import WORDS

    example = _labelled(code_blocks(section("12.1"))[0])
    code = LongCode(EXAMPLE_IDENTITY.peer_id, bytes(range(16, 24)), bytes(range(16)), 4321,
                    ("192.168.1.9",))
    assert code.text == example["code"] and len(code.text) == 116
    assert parse_code(example["code"]) == code
    payload = bytes.fromhex(example["payload"])
    assert bytes(convertbits(payload, 8, 5, pad=True)) == bytes(
        "qpzry9x8gf2tvdw0s3jn54khce6mua7l".index(c) for c in code.text[6:-6])
    short = parse_code(example["short"].split()[0])
    assert short.words == (4, 168) and WORDS[4] == "amber" and WORDS[168] == "orbit"
    assert short.password == b"peernet/1 invite short 7-amber-orbit"
    assert code.password == b"peernet/1 invite long " + bytes(range(16))
    assert len(payload) == 65 and payload[33:41] == bytes(range(16, 24))
    text = " ".join(section("12.3").split())
    assert "`010201000000000000` `0007`" in text and "`010202` `1011121314151617`" in text
    assert InviteHello(KIND_SHORT, 7).encode() == bytes.fromhex("0102010000000000000007")
    assert InviteHello.for_code(code).encode() == bytes.fromhex("0102021011121314151617")
    assert HELLO_LEN == 11 and "an 11-byte hello** (110 bytes;" in text
    assert "message 3 is then 174 bytes" in text  # 48 + (99 + 11 + 16)


def test_the_invite_message_table_matches_the_code():
    from peernet._proto import invite as core

    rows = table_rows(section("12.4"))
    kinds = {int(row[0].strip("`"), 16): row for row in rows}
    assert kinds.keys() == {core.MSG_JOINER_PAKE, core.MSG_INVITER_PAKE,
                            core.MSG_JOINER_CONFIRM, core.MSG_INVITER_CONFIRM,
                            core.MSG_JOINER_LABEL, core.MSG_DONE, core.MSG_REFUSED}
    reasons = re.findall(r"`(\d)` ([a-z ]+?)(?: \(|,|\.)", section("12.4"))
    assert {int(n): name.strip().replace(" ", "_") for n, name in reasons} == core.REASONS
    assert core.MAX_LABEL_BYTES == 400
