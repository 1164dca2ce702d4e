"""Text that came from a peer (or a file), made safe for terminals and logs.

A paired peer controls strings that reach a person: an error detail, a bye reason, a
call's result, a chat line. Raw, they could move the cursor, retitle the window, clear
the screen, forge a whole log line (a newline), or reorder what is shown (bidi
overrides). Everything here escapes exactly the characters that can do that: C0 and
C1 controls (category Cc, which includes ESC, BEL, CSI U+009B, line breaks), format
characters (Cf: zero-width joiners, bidi controls, tag characters, the soft hyphen),
line and paragraph separators, and lone surrogates.
"""

from __future__ import annotations

import unicodedata

__all__ = ["escape", "escape_json", "escape_lines", "is_risky"]

_RISKY = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def is_risky(ch: str) -> bool:
    """True for one character a terminal or log must not get raw."""
    return unicodedata.category(ch) in _RISKY


def escape(text: str) -> str:
    """``text`` with every risky character written as a Python escape (``\\x1b``,
    ``\\u202e``, ``\\U000e0041``). Plain text, including non-Latin letters, is kept."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(ascii(ch)[1:-1] if is_risky(ch) else ch for ch in text)


def escape_lines(text: str) -> str:
    """:func:`escape` that keeps line breaks (``\\n``): for multi-line text such as a
    traceback, whose lines may quote peer text (an exception message)."""
    return "\n".join(escape(line) for line in text.split("\n"))


def escape_json(text: str) -> str:
    """:func:`escape` for JSON text: risky characters become ``\\uXXXX`` escapes (as
    surrogate pairs beyond the BMP), so the output is still the same JSON value."""
    if text.isascii() and text.isprintable():
        return text
    out = []
    for ch in text:
        if not is_risky(ch):
            out.append(ch)
            continue
        code = ord(ch)
        if code > 0xFFFF:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)
