"""Keeping secrets out of every log line (pure helpers plus two logging hooks).

The webhook token is the query string of a webhook URL, so anything that quotes a
request (an access log, aiohttp's parse errors) would leak it. Three nets:

- ``safe_path``: the path cwhook's access log writes: the query, whatever follows an
  encoded ``%3F``, and any long or token-shaped segment are replaced by ``<redacted>``.
- ``redact_text``: for text cwhook does not write itself (aiohttp's and asyncio's own log
  records, tracebacks): queries and token-shaped words are cut, and the known secrets.
- the known secrets (webhook tokens, Trakt tokens and client secret, from the live config)
  are scrubbed from every log line, raw or percent-encoded.

A ``Scrubber`` is the processor ``logs.configure`` puts in the chain: it sees every event of
both structlog and the standard library. The composition root makes it and tells it where the
current secrets come from (the live config's).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote

REDACTED = "<redacted>"
MAX_SEGMENT = 15  # longer path segments are redacted (cwhook's own are shorter)
MIN_SECRET = 4  # shorter "secrets" would match everywhere; they are not scrubbed
_QUERY = re.compile(r"(?:\?|%3[fF])[^\s\"'<>]*")
# A run of URL-safe characters at least 20 long with a letter and a digit: a token, whoever's.
_TOKENISH = re.compile(r"(?<![A-Za-z0-9_\-])(?=[A-Za-z0-9_\-]*[0-9])(?=[A-Za-z0-9_\-]*[A-Za-z])"
                       r"[A-Za-z0-9_\-]{20,}(?![A-Za-z0-9_\-])")
# A word as it may appear in a URL, percent-escapes included.
_WORD = re.compile(r"[A-Za-z0-9%_\-.~+=]+")

def scrub_secrets(text: str, secrets: list[str]) -> str:
    """``text`` without any of ``secrets``, also where they are percent-encoded."""
    if not secrets:
        return text
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    if "%" not in text:
        return text

    def word(m: re.Match[str]) -> str:
        plain = unquote(m.group(0))
        return REDACTED if any(s in plain for s in secrets) else m.group(0)

    return _WORD.sub(word, text)


def redact_text(text: str, secrets: list[str]) -> str:
    """Text from outside cwhook (aiohttp, asyncio, tracebacks) made safe to log."""
    text = scrub_secrets(text, secrets)
    text = _QUERY.sub("?" + REDACTED, text)
    return _TOKENISH.sub(REDACTED, text)


@functools.lru_cache(maxsize=256)  # a daemon sees a handful of paths (hostile ones only churn it)
def safe_path(raw_path: str) -> str:
    """A raw request path for the access log: no query, no encoded query, no token-like segment."""
    out: list[str] = []
    for segment in raw_path.split("/"):
        plain = unquote(segment)
        cut = plain.find("?")
        if cut >= 0:
            head = plain[:cut]
            out.append((head if _plain_ok(head) else REDACTED) + "?" + REDACTED)
            break
        out.append(segment if _plain_ok(plain) and _plain_ok(segment) else REDACTED)
    return "/".join(out)


def _plain_ok(segment: str) -> bool:
    return len(segment) <= MAX_SEGMENT and segment.isprintable() and not _TOKENISH.search(segment)


# --- hooks ------------------------------------------------------------------------------------


class Scrubber:
    """The logging hook: scrubs every string value of a log event (ours, or a standard-library record's).

    cwhook's own lines lose the known secrets; what aiohttp and asyncio log (they quote
    request lines) and tracebacks are redacted in full (queries, token-shaped words).
    """

    def __init__(self, provider: Callable[[], Iterable[str]] = tuple) -> None:
        self._provider = provider
        self._given: object = None  # what the provider gave last, and its secrets as ``current`` gives them
        self._current: list[str] = []

    def use(self, provider: Callable[[], Iterable[str]]) -> None:
        """Where the current secrets come from (called on every log line: keep it cheap)."""
        self._provider = provider
        self._given = None

    def current(self) -> list[str]:
        """The secrets, and each one case-folded too: a value made from a user's name (a session
        key) holds it folded."""
        given = self._provider()
        if given is not self._given or not isinstance(given, tuple):  # a config's are a tuple: kept
            kept = [s for s in given if s and len(s) >= MIN_SECRET]
            self._current = list(dict.fromkeys([*kept, *(s.casefold() for s in kept)]))
            self._given = given
        return self._current

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        secrets = self.current()
        foreign = "_record" in event
        if not foreign and "exception" not in event:
            if not secrets:
                return event
            # Most lines hold no secret: one look at all their text (a secret across the separator
            # would only send the line through the scrub below, which finds it is not there). A
            # line with a value holding others (a body to send) always goes through the scrub.
            values = event.values()
            if set(map(type, values)) <= _PLAIN:
                text = "\x00".join([v for v in values if type(v) is str])
                if "%" not in text and not any(s in text for s in secrets):
                    return event
        for key, value in event.items():
            if isinstance(value, str) and (foreign or key == "exception"):
                event[key] = redact_text(value, secrets)
            elif secrets:
                event[key] = _scrub_within(value, secrets)
        return event


_PLAIN = frozenset((str, int, float, bool, type(None)))  # a line of only these values: one look at its text


def _scrub_within(value: Any, secrets: list[str]) -> Any:
    """``value`` with its text scrubbed: a string, or a copy of dicts, lists and tuples within each
    other (anything else as it is)."""
    if isinstance(value, str):
        return scrub_secrets(value, secrets)
    if isinstance(value, dict):
        return {_scrub_within(k, secrets): _scrub_within(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub_within(v, secrets) for v in value]
    return value
