"""peernet/_text.py: peer text made safe for terminals and logs."""

from __future__ import annotations

import json

import pytest

from peernet._text import escape, escape_json, is_risky

# (raw, escape(raw), escape_json(raw)) for every kind of character that must not reach a
# terminal or log raw.
RISKY = [
    ("\x00", "\\x00", "\\u0000"),              # C0: NUL
    ("\x07", "\\x07", "\\u0007"),              # C0: BEL
    ("\x1b", "\\x1b", "\\u001b"),              # C0: ESC
    ("\n", "\\n", "\\u000a"),                  # line feed
    ("\r", "\\r", "\\u000d"),                  # carriage return
    ("\x7f", "\\x7f", "\\u007f"),              # DEL
    ("\x80", "\\x80", "\\u0080"),              # C1: first
    ("\x9b", "\\x9b", "\\u009b"),              # C1: CSI
    ("\x9f", "\\x9f", "\\u009f"),              # C1: last
    ("\u202e", "\\u202e", "\\u202e"),          # Cf: right-to-left override
    ("\u200b", "\\u200b", "\\u200b"),          # Cf: zero-width space
    ("\u00ad", "\\xad", "\\u00ad"),            # Cf: soft hyphen
    ("\U000e0041", "\\U000e0041", "\\udb40\\udc41"),  # Cf: tag character (astral)
    ("\u2028", "\\u2028", "\\u2028"),          # Zl: line separator
    ("\u2029", "\\u2029", "\\u2029"),          # Zp: paragraph separator
    ("\ud800", "\\ud800", "\\ud800"),          # Cs: lone surrogate
]


@pytest.mark.parametrize("raw, shown, shown_json", RISKY)
def test_every_risky_character_is_escaped(raw, shown, shown_json):
    assert is_risky(raw)
    assert escape(f"a{raw}b") == f"a{shown}b"
    assert escape_json(f"a{raw}b") == f"a{shown_json}b"


def test_terminal_escape_sequences_and_forged_log_lines_are_defused():
    title = "\x1b]0;pwned\x07"
    clear = "\x1b[2J"
    forged = "bye\n2099-01-01 00:00:00,000 WARNING MainThread peernet: forged"
    c1_csi = "\x9b2J"
    for text in (title, clear, forged, c1_csi, "\u202eevil"):
        for out in (escape(text), escape_json(text)):
            assert not any(is_risky(ch) for ch in out), out
            assert out.isascii() and out.isprintable(), out
    assert escape(title) == "\\x1b]0;pwned\\x07"
    assert escape(clear) == "\\x1b[2J"
    assert "\n" not in escape(forged)
    assert escape(forged).startswith("bye\\n2099")


def test_plain_text_in_any_script_is_kept():
    for text in ("hello, world", "Müller's laptop", "Пётр", "東京 pi", "tab\tkept?",
                 "\U0001f468\u200d\U0001f469\u200d\U0001f467"):
        expected = text.replace("\t", "\\t").replace("\u200d", "\\u200d")
        assert escape(text) == expected
        assert not any(is_risky(ch) for ch in escape(text))


def test_escape_json_keeps_the_json_value():
    """Escaping a JSON document's text leaves a document that parses to the same value
    (the risky characters become \\u escapes inside its strings)."""
    value = ["\x1b[2J\x9b\u202eevil\U000e0041", {"k\n": "\x07\u2028"}]
    raw = json.dumps(value, ensure_ascii=False)
    shown = escape_json(raw)
    assert shown.isprintable()
    assert json.loads(shown) == value


def test_escape_lines_keeps_line_breaks_and_escapes_the_rest():
    from peernet._text import escape_lines

    text = 'Traceback:\n  File "x.py"\nValueError: \x1b]0;t\x07\r\u202e\x9b\n'
    assert escape_lines(text) == ('Traceback:\n  File "x.py"\n'
                                  'ValueError: \\x1b]0;t\\x07\\r\\u202e\\x9b\n')


def test_a_port_must_be_an_int_and_says_so():
    """`node.connect(peer, host, "7777")` said "port must be 1..65535"."""
    from peernet._text import check_port

    assert check_port(7777) == 7777 and check_port(0, listen=True) == 0
    with pytest.raises(ValueError, match=r"^port must be an int \(1\.\.65535\), not the str "
                                         r"'7777' \(pass int\('7777'\)\)$"):
        check_port("7777")
    for bad in (7777.0, True, None):
        with pytest.raises(ValueError, match="must be an int"):
            check_port(bad)
    for bad, listen in ((0, False), (65536, False), (-1, True)):
        with pytest.raises(ValueError, match=r"must be [01]\.\.65535, got"):
            check_port(bad, listen=listen)


def test_check_host_remembers_good_hosts_only_and_boundedly():
    """check_host keeps the hosts it accepted (so a node's start and connect do not
    parse the same address again), never a refused one, and at most a few hundred."""
    from peernet import _text

    _text._CHECKED_HOSTS.clear()
    assert _text.check_host("192.0.2.7") == "192.0.2.7"
    assert _text.check_host("192.0.2.7") == "192.0.2.7"  # from the cache
    for bad in ("192.0.2.7:80", "[::1]", "a b", "x\x1b", "", "a/b"):
        with pytest.raises(ValueError):
            _text.check_host(bad)
        with pytest.raises(ValueError):
            _text.check_host(bad)  # refused again: nothing refused is remembered
    assert set(_text._CHECKED_HOSTS) == {"192.0.2.7"}
    for i in range(3 * _text._CHECKED_HOSTS_SIZE):
        _text.check_host(f"host-{i}.example")
    assert len(_text._CHECKED_HOSTS) <= _text._CHECKED_HOSTS_SIZE
