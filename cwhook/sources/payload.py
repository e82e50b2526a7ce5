"""Reading request bodies and loosely typed payload values (pure, no I/O).

Media servers send JSON as a raw body (any Content-Type, Jellyfin defaults to
text/plain), inside a form field (Plex ``payload=``, Emby ``data=``), or as a
flat urlencoded form whose values are all strings (Jellyfin "Generic Form").
Template-rendered bodies carry numbers as strings and booleans as "True".
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import parse_qsl

import orjson

from cwhook.kernel.event import BadPayload, Ignored

# Hostile numbers are bad values, read as absent, never a crash: JSON integers longer than
# this many digits (no id, year or tick count is), and NaN/Infinity.
MAX_INT_DIGITS = 19
LONGEST_INT = 2**63 - 1
_EXACT_INT = 2**53  # every integer up to this survives a round trip through a float
# A JSON escape of a UTF-16 surrogate: the decoded text may hold a lone one, which no
# UTF-8 writer (SQLite, logs, JSON with ensure_ascii=False) can encode.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# orjson reads an integer outside 64 bits as a float, and a 20-digit one as an int, where the
# rules above read "absent": a body with a run of 19 digits anywhere goes to the standard
# decoder (found by mapping every digit to "1" and everything else to "0": C speed).
_DIGITS_AS_ONES = bytes(0x31 if 0x30 <= b <= 0x39 else 0x30 for b in range(256))
_LONG_RUN = b"1" * MAX_INT_DIGITS
_JSON_START = re.compile(rb"[\xef\xbb\xbf \t\r\n]*[{\[]")


def _int_or_none(literal: str) -> int | None:
    digits = len(literal) - literal.startswith("-")
    return int(literal) if digits <= MAX_INT_DIGITS else None


def _no_constant(_: str) -> None:
    return None


def safe_text(text: str) -> str:
    """``text`` with every lone UTF-16 surrogate replaced by U+FFFD."""
    if text.isascii():  # no surrogate, and answered from the string's header, not a scan
        return text
    return _LONE_SURROGATE.sub("\ufffd", text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {safe_text(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def loads_object(raw: bytes | str, what: str = "body") -> dict[str, Any]:
    """Parse JSON that must be an object; BadPayload says what was wrong.

    orjson decodes the common body; whatever it refuses or might read differently from the
    standard decoder with the rules above (NaN, a lone surrogate, a byte order mark, very long
    numbers, bad JSON) goes through :func:`loads_object_stdlib`, so both give the same values
    and the same errors (tests/test_decoding.py compares them).
    """
    if isinstance(raw, bytes) and _LONG_RUN not in raw.translate(_DIGITS_AS_ONES):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            return data
    return loads_object_stdlib(raw, what)


def loads_object_stdlib(raw: bytes | str, what: str = "body") -> dict[str, Any]:
    """:func:`loads_object` with the standard library's decoder alone."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BadPayload(f"{what} is not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(raw, parse_int=_int_or_none, parse_constant=_no_constant)
        if _SURROGATE_ESCAPE.search(raw):
            data = _scrub(data)
    except RecursionError:
        raise BadPayload(f"{what} is nested too deeply") from None
    except ValueError as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        pos = f" at position {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        raise BadPayload(f"{what} is not JSON: {msg}{pos}") from None
    if not isinstance(data, dict):
        raise BadPayload(f"{what} is JSON but not an object (got {type(data).__name__})")
    return data


def _looks_like_json(body: bytes) -> bool:
    """The first byte after any BOM bytes and blanks opens an object or an array (no copy made)."""
    return _JSON_START.match(body) is not None


def decode_body(
    content_type: str, body: bytes, field: str, flat_form: bool = False
) -> dict[str, Any]:
    """The JSON object a request carries.

    ``body`` is the raw body, or the content of the multipart part named ``field``
    (the HTTP shell streams multipart and hands over that part alone).
    ``flat_form``: a urlencoded form without ``field`` is itself the object.
    """
    if not body or body.isspace():  # blank (ASCII whitespace, as bytes.strip), without a copy
        raise BadPayload("empty body")
    mime = content_type.split(";", 1)[0].strip().lower()
    if not _looks_like_json(body) and (b"=" in body or mime == "application/x-www-form-urlencoded"):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadPayload(f"form body is not UTF-8 (byte {exc.start})") from None
        form = dict(parse_qsl(text, keep_blank_values=True))
        if field in form:
            return loads_object(form[field], f"form field '{field}'")
        if flat_form and form and b"=" in body:
            return form
        raise BadPayload(f"form body has no '{field}' field")
    return loads_object(body)


def event_action(data: dict[str, Any], key: str, events: dict[str, str], server: str,
                 what: str = "event") -> str | Ignored:
    """The action a payload's event name maps to, or why it is ignored."""
    name = as_str(get_ci(data, key))
    if name is None:
        raise BadPayload(f"no '{key}' in the {server} payload")
    action = events.get(name.lower())
    if action is None:
        return Ignored("event_not_handled", f"{server} {what} {name} is not a playback event")
    return action


def required_object(data: dict[str, Any], key: str, server: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise BadPayload(f"no '{key}' object in the {server} payload")
    return value


# --- loose values --------------------------------------------------------------


def as_str(value: Any) -> str | None:
    if type(value) is str:  # most values: what the last line does, without the calls
        text = value.strip()
        if not text.isascii():
            text = _LONE_SURROGATE.sub("\ufffd", text)
        return text or None
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    if isinstance(value, int) and abs(value) > LONGEST_INT:
        return None
    text = safe_text(str(value).strip())
    return text or None


def as_float(value: Any) -> float | None:
    if type(value) is float:  # what the lines below make of a float, without the calls
        return value if math.isfinite(value) else None
    if type(value) is int and -_EXACT_INT <= value <= _EXACT_INT:  # a finite float, exactly
        return float(value)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except (ValueError, OverflowError):
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def as_int(value: Any) -> int | None:
    if type(value) is int and -_EXACT_INT <= value <= _EXACT_INT:  # float() keeps it exactly: as below
        return value
    number = as_float(value)
    if number is None or not number.is_integer() or abs(number) > 2**62:
        return None
    return int(number)


def as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no", ""):
            return False
    if isinstance(value, (int, float)):
        return bool(value)
    return None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class Caseless(dict[str, Any]):
    """A JSON object whose keys ``get_ci`` folds once, not on every lookup (a Jellyfin payload
    has a hundred keys and its parser asks for thirty, most of them absent)."""

    __slots__ = ("_spelling",)
    _spelling: dict[str, str]

    def spelling(self) -> dict[str, str]:
        """Lowered key -> the key as written, the first key of each spelling winning (as the scan
        below). One server sends the same keys in the same order every time: the map is made once
        per such layout (``_SPELLINGS``), not once per payload."""
        try:
            return self._spelling
        except AttributeError:
            layout = tuple(self)
            spelling = _SPELLINGS.get(layout)
            if spelling is None:
                # In reverse, so that the first spelling is written last and wins.
                spelling = {k.lower(): k for k in reversed(layout)}
                # Kept only for a layout of a media server's size: a hostile body of a megabyte
                # of keys must not stay in memory, MAX_LAYOUTS times over.
                if len(layout) <= MAX_LAYOUT_KEYS and sum(map(len, layout)) <= MAX_LAYOUT_TEXT:
                    if len(_SPELLINGS) >= MAX_LAYOUTS:
                        _SPELLINGS.clear()
                    _SPELLINGS[layout] = spelling
            self._spelling = spelling
            return spelling


_ABSENT = object()
MAX_LAYOUTS = 64  # key layouts whose spelling map is kept (one per stream count of a server's items)
MAX_LAYOUT_KEYS = 400  # a Jellyfin payload has about 80 keys, 120 with every stream listed
MAX_LAYOUT_TEXT = 16384  # characters of all the keys of a layout kept
_SPELLINGS: dict[tuple[str, ...], dict[str, str]] = {}


def get_ci(data: dict[str, Any], key: str) -> Any:
    """``data[key]`` with the key's letter case ignored."""
    value = data.get(key, _ABSENT)
    if value is not _ABSENT:
        return value
    if isinstance(data, Caseless):
        written = data.spelling().get(key.lower())
        return None if written is None else data[written]
    lowered = key.lower()
    for k, v in data.items():
        if isinstance(k, str) and k.lower() == lowered:
            return v
    return None


def percent(position: float | None, total: float | None) -> float | None:
    """Progress percent, clamped to 0..100; None when it cannot be known."""
    if position is None or total is None or total <= 0 or position < 0:
        return None
    return max(0.0, min(100.0, position / total * 100.0))
