"""Text for a terminal: control characters from outside written as visible escapes.

Titles, user names and Trakt's error texts come from media servers and the network.
Printed raw, an ESC sequence could retitle the window or clear the screen, and a CR or
LF could forge a line of its own (``FAKE LINE ... -> sent``). Every text output meant
for a terminal (``cwhook recent``, ``status``, ``accounts``) goes through ``visible``:
C0 and C1 control characters, DEL and the bidirectional overrides become ``\\xNN`` /
``\\uNNNN``, so one record is always one line and reads as what it holds.
"""

from __future__ import annotations

import re

# C0 (tab included), DEL, C1; the bidi embeddings/overrides/isolates that reorder what follows;
# the line and paragraph separators some terminals break lines at.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def visible(text: str) -> str:
    """``text`` with every control character written as an escape (one line, nothing hidden)."""
    return _UNSAFE.sub(_escape, text)


def visible_lines(text: str) -> str:
    """Each line of a text made here escaped on its own (its own line breaks kept)."""
    return "\n".join(visible(line) for line in text.split("\n"))


def json_line(text: str) -> str:
    """A JSON text (control characters below 0x20 already escaped by ``json.dumps``) with DEL,
    C1 and the bidi controls escaped too: still valid JSON, still one line."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
