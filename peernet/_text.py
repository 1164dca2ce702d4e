"""Text that came from a peer (or a file), made safe for terminals and logs.

A paired peer controls strings that reach a person: an error detail, a bye reason, a
call's result, a chat line. Raw, they could move the cursor, retitle the window, clear
the screen, forge a whole log line (a newline), or reorder what is shown (bidi
overrides). Everything here escapes exactly the characters that can do that: C0 and
C1 controls (category Cc, which includes ESC, BEL, CSI U+009B, line breaks), format
characters (Cf: zero-width joiners, bidi controls, tag characters, the soft hyphen),
line and paragraph separators, and lone surrogates. :func:`check_host` keeps such
text out of host names in the first place (a host is shown wherever a peer's address
is).
"""

from __future__ import annotations

import ipaddress
import unicodedata

__all__ = ["check_host", "check_port", "escape", "escape_json", "escape_lines", "is_risky"]

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


#: A DNS name is at most 253 characters; an IPv6 address with a scope id is shorter.
_MAX_HOST_CHARS = 253
#: Hosts that passed check_host (parsing an address with ``ipaddress`` costs a few µs,
#: and a node checks the same few hosts at every start and connect). Bounded: cleared
#: when full (atomic, so safe between threads) and refilled as used.
_CHECKED_HOSTS: dict[str, None] = {}
_CHECKED_HOSTS_SIZE = 256


def check_host(host: object) -> str:
    """``host`` if it is a host name or IP address to dial, else ValueError.

    The one check for a host a person (``Node.connect``, ``peernet.admin``, ``--to``,
    a UDP target) or a file hands over: no port, brackets or slash, and nothing a
    terminal or log would act on (no control, format or separator characters, also
    not in an IPv6 scope id, which ``ipaddress`` takes as it comes). A host is shown
    in ``list_peers()``, ``peernet peers`` and log lines, so it must be plain text.
    """
    if type(host) is str and host in _CHECKED_HOSTS:
        return host
    if type(host) is not str or not host:
        raise ValueError(f"host must be a host name or IP address, got {host!r:.80}")
    if len(host) > _MAX_HOST_CHARS or not host.isprintable() or " " in host:
        raise ValueError(f"host must be a host name or IP address of at most "
                         f"{_MAX_HOST_CHARS} printable characters without spaces, "
                         f"got {host!r:.80}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if ":" in host or "[" in host or "/" in host:
            raise ValueError(
                f"host must be a host name or IP address without a port, got {host!r:.80}; "
                "pass the port separately: node.connect(peer, '192.0.2.7', 7777)") from None
    if len(_CHECKED_HOSTS) >= _CHECKED_HOSTS_SIZE:
        _CHECKED_HOSTS.clear()
    _CHECKED_HOSTS[host] = None
    return host


def check_port(port: object, *, listen: bool = False) -> int:
    """``port`` if it is a TCP port number (an int: 1..65535 to dial, 0..65535 to
    ``listen`` on, where 0 means any free one), else ValueError saying which."""
    low = 0 if listen else 1
    if type(port) is not int:
        digits = isinstance(port, str) and port.strip().isdigit()
        raise ValueError(f"port must be an int ({low}..65535), not the {type(port).__name__} "
                         f"{port!r:.80}" + (f" (pass int({port!r}))" if digits else ""))
    if not low <= port <= 0xFFFF:
        raise ValueError(f"port must be {low}..65535, got {port}")
    return port
