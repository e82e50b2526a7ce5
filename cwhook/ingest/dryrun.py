"""Test requests (header ``X-Cwhook-Dry-Run: 1``): how the HTTP side recognizes one.

What a test would send is the rules' answer (cwhook/scrobble/preview.py), handed to the app by
the composition root; nothing is stored and nothing is sent (docs/curl.md).
"""

from __future__ import annotations

HEADER = "X-Cwhook-Dry-Run"
YES = frozenset({"1", "true", "yes"})
NO = frozenset({"", "0", "false", "no"})



class BadHeader(ValueError):
    """The header has a value that is neither yes nor no: refused, never guessed."""


def requested(value: str | None) -> bool:
    """Whether a request is a test, from its ``X-Cwhook-Dry-Run`` header (absent: no)."""
    if value is None:
        return False
    v = value.strip().lower()
    if v in YES:
        return True
    if v in NO:
        return False
    raise BadHeader(f"{HEADER} must be 1 (a test: nothing is stored or sent) or 0")
