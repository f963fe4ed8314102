"""Text that is safe to print on a terminal.

Titles, messages, tool output and errors come from agents and other clients; printed raw they
could clear the screen, set the window title, write the clipboard (OSC 52), plant hyperlinks
(OSC 8), reorder text with bidi overrides, or forge lines. :func:`printable` shows every such
character as a visible escape instead.
"""

from __future__ import annotations

import re

_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_UNSAFE = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029{_BIDI}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\x1b": "\\e"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with control, C1 and bidi-override characters (newlines too) shown as escapes.

    Tabs are kept. Split a multi-line body into lines first if its line breaks should stay.
    """
    return _UNSAFE.sub(_escape, text)


__all__ = ["printable"]
