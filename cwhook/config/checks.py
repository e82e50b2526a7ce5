"""The checks of the configuration's values: each takes the YAML value and returns
(value, None) or (None, "what is wrong") (cwhook/config/keys.py pairs them with the keys)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cwhook.sources.registry import SOURCES

Checked = tuple[Any, str | None]
Checker = Callable[[Any], Checked]

SERVERS = tuple(SOURCES)  # webhooks.<server> and the SERVER of SERVER:NAME (cwhook/sources/registry.py)
ID_SERVERS = tuple(name for name, source in SOURCES.items() if source.users.ids)  # SERVER:id:<n>
UUID_SERVERS = tuple(name for name, source in SOURCES.items() if source.users.uuids)  # SERVER:uuid:<u>


def string(value: Any) -> Checked:
    if isinstance(value, (bool, dict, list)):
        return None, "must be a string"
    return str(value), None


def url(value: Any) -> Checked:
    text, err = string(value)
    if err:
        return None, err
    if not text.startswith(("http://", "https://")):
        return None, "must be a URL starting with http:// or https://"
    return text.rstrip("/"), None


def optional_url(value: Any) -> Checked:
    text, err = string(value)
    if err:
        return None, err
    if text == "":
        return "", None
    return url(text)


def token(value: Any) -> Checked:
    text, err = string(value)
    if err:
        return None, err
    if text and len(text) < 16:
        return None, "must be empty (generated on first run) or at least 16 characters"
    if any(c.isspace() or c in "&#?%" for c in text):
        return None, "must not contain spaces or any of & # ? %"
    return text, None


def boolean(value: Any) -> Checked:
    if isinstance(value, bool):
        return value, None
    return None, "must be true or false"


def int_range(lo: int, hi: int) -> Checker:
    def check(value: Any) -> Checked:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            return None, f"must be a whole number between {lo} and {hi}"
        return value, None

    return check


def number_range(lo: float, hi: float) -> Checker:
    def check(value: Any) -> Checked:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            return None, f"must be a number between {lo:g} and {hi:g}"
        return float(value), None

    return check


def choice(*choices: str) -> Checker:
    def check(value: Any) -> Checked:
        if not isinstance(value, str) or value.lower() not in choices:
            return None, "must be one of " + "|".join(choices)
        return value.lower(), None

    return check


def string_list(value: Any) -> Checked:
    if not isinstance(value, list):
        return None, "must be a list, e.g. [alice, bob]"
    out = []
    for item in value:
        if isinstance(item, (bool, dict, list)) or item is None:
            return None, "must be a list of names"
        out.append(str(item))
    return tuple(out), None


def pattern_problem(pattern: str) -> str | None:
    """What is wrong with a user pattern (``SERVER:NAME`` or ``*``), or None."""
    if pattern == "*":
        return None
    if pattern.strip() == "*":
        return f"{pattern!r} has spaces around the *: write it *"
    server, sep, name = pattern.partition(":")
    if not sep or not name.strip():
        return f"{pattern!r} must look like SERVER:NAME (e.g. plex:Anna, jellyfin:anna, *:*)"
    if " - " in name or name.endswith(" -"):
        return (f"{pattern!r} reads as two list items run together: a `- ` item indented under the one "
                "above it continues that item. Start every `- ` of the list at the same indentation")
    again = re.search(rf"(?i)(?:^|\s)((?:{'|'.join(SERVERS)}|\*):)", name)
    if again:
        return (f"{pattern!r} has a second server prefix ({again.group(1)}): one pattern is one "
                "SERVER:NAME; put each in its own list item")
    if pattern != pattern.strip() or server != server.strip() or name != name.strip():
        return (f"{pattern!r} has spaces at the start or end of its server or name: write it "
                f"{server.strip()}:{name.strip()!s} (a name matches exactly, spaces and all)")
    server, name = server.strip().lower(), name.strip()
    if server not in (*SERVERS, "*"):
        return f"{pattern!r}: the server must be one of {', '.join(SERVERS)} or *"
    if "*" in name and name != "*":
        return f"{pattern!r}: a NAME matches exactly (no wildcards); use {server}:* for every user"
    if server in (*ID_SERVERS, "*") and name.lower().startswith("id:") and not name[3:].strip().isdigit():
        return f"{pattern!r}: a Plex account id is a number, e.g. {server}:id:1234567"
    if server in (*UUID_SERVERS, "*") and name.lower().startswith("uuid:") and not name[5:].strip():
        return f"{pattern!r}: give the Plex account uuid after uuid:"
    return None


def user_patterns(value: Any) -> Checked:
    names, err = string_list(value)
    if err:
        return None, 'must be a list of SERVER:NAME patterns, e.g. ["plex:Anna", "jellyfin:anna"]'
    for pattern in names:
        problem = pattern_problem(pattern)
        if problem:
            return None, problem
    return names, None


LIST_CHECKERS = (string_list, user_patterns)


def mapping(value: Any) -> Checked:
    if not isinstance(value, dict):
        return None, "must be a section of accounts by name (name: {users: [...], ...})"
    return value, None
