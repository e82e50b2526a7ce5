"""No secret in any log line: the access log's path, aiohttp's own records, structlog lines (pure + hooks)."""

from __future__ import annotations

import io
import json
import logging
from urllib.parse import quote

import pytest

from cwhook.kernel import logs, redact

TOKEN = "AbCdEf0123456789_-xYz9876543210qwertyUIOP12"


@pytest.fixture(autouse=True)
def _restore() -> object:
    yield None
    logs.configure("info", "json")


def encodings(token: str) -> list[str]:
    every = "".join(f"%{b:02X}" for b in token.encode())
    return [token, quote(token, safe=""), every, every.lower()]


@pytest.mark.parametrize(("raw", "logged"), [
    ("/webhook/plextrakt", "/webhook/plextrakt"),
    ("/healthz", "/healthz"),
    (f"/webhook/plextrakt%3F{TOKEN}", "/webhook/plextrakt?<redacted>"),
    (f"/webhook/plextrakt%3f{TOKEN}/more", "/webhook/plextrakt?<redacted>"),
    (f"/webhook/{TOKEN}", "/webhook/<redacted>"),
    ("/webhook/" + "".join(f"%{b:02x}" for b in TOKEN.encode()), "/webhook/<redacted>"),
    ("/webhook/short%3Fx", "/webhook/short?<redacted>"),
    ("/a/%00b", "/a/<redacted>"),
    ("/" + "x" * 16, "/<redacted>"),
])
def test_safe_path(raw: str, logged: str) -> None:
    assert redact.safe_path(raw) == logged


def test_redact_text_cuts_queries_tokens_and_known_secrets() -> None:
    line = f"Bad status line 'POST /webhook/plextrakt?{TOKEN} HTTP/1.1\\x00'"
    assert TOKEN not in redact.redact_text(line, [])
    assert redact.redact_text(f"GET /x%3F{TOKEN} HTTP/1.1", []) == "GET /x?<redacted> HTTP/1.1"
    assert redact.redact_text(f"segment /webhook/{TOKEN} here", []) == "segment /webhook/<redacted> here"
    # a short secret is no token-shaped word: only knowing it removes it
    for form in encodings("s3cr3t!"):
        assert "s3cr3t" not in redact.redact_text(f"path /webhook/{form} x", ["s3cr3t!"]).replace("<redacted>", "")
    assert redact.redact_text("plain words, nothing secret: 42", []) == "plain words, nothing secret: 42"


def test_structlog_lines_never_carry_a_known_secret() -> None:
    out = io.StringIO()
    logs.configure("debug", "json", out, scrubber=redact.Scrubber(lambda: (TOKEN, "", "ab")))
    log = logs.get("t")
    for form in encodings(TOKEN):
        log.info("something", detail=f"value {form} end", other=form)
    try:
        raise ValueError(f"boom /webhook/plextrakt?{TOKEN}")
    except ValueError:
        log.exception("failed")
    text = out.getvalue()
    for form in encodings(TOKEN):
        assert form not in text
    assert text.count("<redacted>") >= 9
    assert json.loads(text.splitlines()[0])["detail"] == "value <redacted> end"


class _Text(str):
    """A str subclass, as some messages are (a config problem)."""


def test_the_scrub_follows_the_live_secrets_and_writes_text_subclasses_as_text() -> None:
    """A line whose text holds no secret skips the per-value scrub; the secrets are read again
    when the provider gives another tuple (a reload); a str subclass is still written as text."""
    out = io.StringIO()
    secrets: list[tuple[str, ...]] = [(TOKEN,)]
    logs.configure("info", "json", out, scrubber=redact.Scrubber(lambda: secrets[0]))
    log = logs.get("t")
    log.info("plain", detail="nothing secret here", n=3)
    log.info("problem", problem=_Text("logging: this section is missing"))
    secrets[0] = (TOKEN, "NewSecret-0123456789")
    log.info("after_reload", detail="NewSecret-0123456789 and " + TOKEN)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["detail"] == "nothing secret here" and lines[0]["n"] == 3
    assert lines[1]["problem"] == "logging: this section is missing"
    assert lines[2]["detail"] == "<redacted> and <redacted>"


def test_standard_library_records_are_redacted_tracebacks_included() -> None:
    out = io.StringIO()
    logs.configure("debug", "json", out)
    logger = logging.getLogger("aiohttp.server")
    logger.error("Error handling request %s", f"POST /webhook/plextrakt?{TOKEN} HTTP/1.1")
    try:
        raise RuntimeError(f"Bad status line 'GET /webhook/embytrakt%3F{TOKEN}'")
    except RuntimeError as exc:
        logger.error("Unhandled exception", exc_info=exc)
    text = out.getvalue()
    assert TOKEN not in text and "Unhandled exception" in text and "RuntimeError" in text


def test_the_live_secrets_include_every_account_and_webhook() -> None:
    from pathlib import Path

    from cwhook.config.schema import parse_config

    text = ("webhooks:\n  plex:\n    token: plextok-1234567890ab\ntrakt:\n  client_secret: csecret-1\n"
            "  access_token: main-access\n  accounts:\n    anna:\n      users: ['plex:anna']\n"
            "      access_token: anna-access\n      refresh_token: anna-refresh\n")
    secrets = parse_config(text, Path("c.yml")).secrets
    for value in ("plextok-1234567890ab", "csecret-1", "main-access", "anna-access", "anna-refresh"):
        assert value in secrets


def test_a_secret_inside_a_nested_value_or_case_folded_is_scrubbed_too() -> None:
    """Found by the outsider test: a body to send (dry-run's ``trakt_would_send``) holds values within
    values, and a session key holds a user's name case-folded."""
    out = io.StringIO()
    logs.configure("info", "json", out, scrubber=redact.Scrubber(lambda: (TOKEN,)))
    log = logs.get("t")
    log.info("trakt_would_send", body={"movie": {"title": f"a {TOKEN} b", "ids": {"imdb": "tt1"}},
                                       "list": [TOKEN, ("x", quote(TOKEN, safe=""))], "n": 3})
    log.info("decision", session=f"jellyfin|{TOKEN.casefold()}|p|1")
    text = out.getvalue()
    for form in (*encodings(TOKEN), TOKEN.casefold()):
        assert form not in text
    first, second = (json.loads(line) for line in text.splitlines())
    assert first["body"] == {"movie": {"title": "a <redacted> b", "ids": {"imdb": "tt1"}},
                             "list": ["<redacted>", ["x", "<redacted>"]], "n": 3}
    assert second["session"] == "jellyfin|<redacted>|p|1"
