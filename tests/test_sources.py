"""The source registry is the one list of sources (docs/architecture.md, "Adding a source").

Each entry must come with what the recipe asks for (its parser's sample payload, its doc page,
its curl example in docs/curl.md, its metrics series), and a fifth entry alone must be enough
for the config, the whitelists, the routing, the routes and `cwhook urls` to know it.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import textwrap
from typing import get_args

import pytest

from cwhook.config.schema import SCHEMA, SERVERS, WebhookConfig, default
from cwhook.kernel.event import Event
from cwhook.kernel.event import Source as SourceName
from cwhook.sources.registry import COMMON_SETTINGS, SOURCES, Source
from cwhook.status import metrics
from cwhook.status import snapshot as status
from cwhook.status.health import Counters
from tests.conftest import FIXTURES, ROOT, TOKENS

NAMES = list(SOURCES)


def test_every_list_of_sources_is_the_registry() -> None:
    assert tuple(SOURCES) == SERVERS
    assert get_args(SourceName) == tuple(SOURCES)  # the kernel's Literal (below sources: it cannot import it)
    assert list(TOKENS) == NAMES  # the test daemons configure every source
    assert len({s.route for s in SOURCES.values()}) == len(SOURCES)


@pytest.mark.parametrize("name", NAMES)
def test_its_config_section_is_the_common_keys_and_its_own(name: str) -> None:
    source = SOURCES[name]
    assert list(SCHEMA["webhooks"][name]) == [*COMMON_SETTINGS, *source.settings]
    for key, value in source.settings.items():
        assert default("webhooks", name, key) == value
    # the typed section has a field for every key any source has
    assert {f.name for f in dataclasses.fields(WebhookConfig)} >= {*COMMON_SETTINGS, *source.settings}


@pytest.mark.parametrize("name", NAMES)
def test_its_parser_understands_its_sample_payload(name: str) -> None:
    samples = sorted(FIXTURES.rglob(f"{name}_*.json"))
    assert samples, f"no sample payload tests/fixtures/**/{name}_*.json"
    events = [SOURCES[name].parse("application/json", p.read_bytes(), 0.0) for p in samples]
    understood = [e for e in events if isinstance(e, Event)]
    assert understood and all(e.source == name for e in understood)


@pytest.mark.parametrize("name", NAMES)
def test_it_has_a_doc_page_that_gives_its_route(name: str) -> None:
    page = ROOT / SOURCES[name].doc
    assert page.is_file(), f"{SOURCES[name].doc} is missing"
    assert SOURCES[name].path in page.read_text()


@pytest.mark.parametrize("name", NAMES)
def test_docs_curl_shows_a_test_request_to_it(name: str) -> None:
    """curl.md has a dry-run example for it (tests/test_docs.py runs them all against a daemon)."""
    doc = (ROOT / "docs" / "curl.md").read_text()
    var = f"${name.upper()}_TOKEN"
    assert re.search(rf"^export .*\b{name.upper()}_TOKEN=", doc, re.M), f"curl.md does not export {var}"
    examples = [line for line in doc.splitlines() if line.startswith("curl ") and f"{SOURCES[name].path}?{var}" in line
                and "X-Cwhook-Dry-Run: 1" in line and line.endswith('# expect 200 {"status": "test"}')]
    assert examples, f"curl.md has no test request to {SOURCES[name].path}"


def test_its_metrics_series_exist_from_the_start() -> None:
    text = metrics.Metrics(Counters(), lambda: status.Snapshot("1", "ok", ())).render()[0].decode()
    for source in SOURCES.values():
        assert f'cwhook_webhooks_total{{outcome="queued",server="{source.label}"}} 0.0' in text


def test_its_try_it_line_is_a_test_request() -> None:
    for source in SOURCES.values():
        line = source.try_it("http://h:1/x?t")
        assert line.startswith("curl -sS -X POST 'http://h:1/x?t' -H 'X-Cwhook-Dry-Run: 1' ")
        assert line.endswith(source.curl)


FIFTH = """
import dataclasses, json, sys
from pathlib import Path
from cwhook.sources import registry
from cwhook.sources.users import Users, same_user

registry.SOURCES["kodi"] = registry.Source(
    "kodi", "koditrakt", registry.SOURCES["jellyfin"].parse, "payload", "Kodi", Users(same_user, ids=True),
    "kodi user", "-d '{}'", {"ratings": False})

from cwhook.config import urls
from cwhook.config.schema import ConfigError, WebhookConfig, parse_config
from cwhook.ingest import filters
from cwhook.ingest.app import ROUTES
from cwhook.ingest.routing import Router
from cwhook.kernel.event import Event

config = parse_config('''
webhooks:
  kodi:
    token: kodi-token-0123456789
    username_whitelist: [Anna]
trakt:
  users: ["kodi:id:7"]
  accounts:
    bob: {users: ["kodi:bob"]}
''', Path("/tmp/c.yml"))
try:
    parse_config("webhooks: {kodi: {colour: red}}", Path("/tmp/c.yml"))
except ConfigError as exc:
    unknown = str(exc)
anna = Event(source="kodi", action="rate", kind="movie", title="t", user_name="ANNA", user_id="7")
bob = Event(source="kodi", action="start", kind="movie", title="t", user_name="Bob")
json.dump({
    "route": ROUTES["kodi"],
    "token": config.webhook("kodi").token,
    "unknown": unknown,
    "anna": filters.check(dataclasses.replace(anna, action="start"), config.webhook("kodi")) is None,
    "rating": filters.check(anna, config.webhook("kodi")).detail,
    "bob": filters.check(bob, config.webhook("kodi")).reason,
    "routes": [Router(config.trakt.routes).route(e) for e in (anna, bob)],
    "urls": urls.urls_text(config, ("kodi",)),
}, sys.stdout)
"""


def test_a_fifth_source_is_one_registry_line() -> None:
    """A source added to the registry alone has its config section, whitelist, households, route
    and `cwhook urls` line (the import order puts it in before anything reads the registry)."""
    import json

    out = subprocess.run([sys.executable, "-c", textwrap.dedent(FIFTH)], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["route"] == "/webhook/koditrakt"
    assert found["token"] == "kodi-token-0123456789"
    assert "webhooks.kodi.colour (line 1): unknown key (known: enabled, token, username_whitelist, ratings)" \
        in found["unknown"]
    assert found["anna"] is True  # whitelisted by name, whatever the case
    assert found["rating"] == "webhooks.kodi.ratings is false"  # its own switch, from its registry line
    assert found["bob"] == "user_not_allowed"
    assert found["routes"] == [["default"], ["bob"]]
    assert "kodi: http://" in found["urls"] and "/webhook/koditrakt?kodi-token-0123456789" in found["urls"]
    assert "try it: curl -sS -X POST" in found["urls"] and found["urls"].count("-d '{}'") == 1


def test_a_source_entry_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SOURCES["plex"].route = "x"  # type: ignore[misc]
    assert isinstance(SOURCES["plex"], Source)
