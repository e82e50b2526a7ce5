"""GET /metrics: made by prometheus_client, read back by its own parser; every counter after a known
sequence of requests against a real `cwhook run`; no personal data; server.metrics: false is a 404."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from cwhook.config.schema import parse_config
from cwhook.ingest.app import Runtime, make_app
from cwhook.kernel.event import Event
from cwhook.kernel.vocab import CLOSE_REASONS, OUTCOMES, REASONS
from cwhook.scrobble import preview
from cwhook.sources.registry import SOURCES
from cwhook.state.store import Stats
from cwhook.status import metrics
from cwhook.status import snapshot as status
from cwhook.status.health import Counters
from tests.conftest import TOKENS, Daemon, config_text, fixture_json, wait_for
from tests.faketrakt import FakeTrakt

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def total(found: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in found.items()
               if n == name and all((k, want) in ls for k, want in labels.items()))


# --- endpoint templates: never a raw path --------------------------------------------------


@pytest.mark.parametrize(("path", "label"), [
    ("/scrobble/start", "/scrobble/start"),
    ("/scrobble/stop", "/scrobble/stop"),
    ("/sync/history", "/sync/history"),
    ("/sync/history/remove", "/sync/history/remove"),
    ("/sync/ratings/remove", "/sync/ratings/remove"),
    ("/sync/watchlist/remove", "/sync/watchlist/remove"),
    ("/oauth/token", "/oauth/token"),
    ("/search/imdb/tt0090728?type=movie", "/search/{id_type}/{id}"),
    ("/search/tvdb/349232?type=episode", "/search/{id_type}/{id}"),
    ("/search/movie?query=The+Menu&years=2022", "/search/{type}"),
    ("/search/show?query=%E9%95%BF%E9%A3%8E%E6%B8%A1", "/search/{type}"),
    ("/sync/history/movies/1002?start_at=2026-01-01T00:00:00.000Z", "/sync/history/{type}/{id}"),
    ("/users/anna/history", "other"),
    ("/scrobble/start/../../x", "other"),
])
def test_endpoint_labels(path: str, label: str) -> None:
    assert metrics.endpoint(path) == label


LABELS = {"/scrobble/start", "/scrobble/pause", "/scrobble/stop", "/sync/history", "/sync/history/remove",
          "/sync/ratings", "/sync/ratings/remove", "/sync/watchlist/remove", "/oauth/token", "/oauth/device/code",
          "/oauth/device/token", "/search/{id_type}/{id}", "/search/{type}", "/sync/history/{type}/{id}", "other"}


@given(st.text())
def test_an_endpoint_label_is_one_of_a_few(path: str) -> None:
    assert metrics.endpoint(path) in LABELS


# --- the collector renders a snapshot ---------------------------------------------------------


def test_every_server_outcome_and_close_reason_is_a_series_from_the_start() -> None:
    """The labels come from the vocabulary (cwhook/kernel/vocab.py): an outcome the handler can
    give is never missing from /metrics (body_timeout once was)."""
    counters = Counters()
    snap = status.build(version="1", started=0, queue_depth=0, sessions=0, stats=Stats(), accounts={},
                        counters=counters, now=1)
    found = samples(metrics.Metrics(counters, lambda: snap).render()[0].decode())
    webhooks = {(dict(ls)["server"], dict(ls)["outcome"]) for n, ls in found if n == "cwhook_webhooks_total"}
    assert webhooks == {(server, outcome) for server in SOURCES for outcome in OUTCOMES}
    assert ("jellyfin", "body_timeout") in webhooks and ("tautulli", "error") in webhooks
    closed = {dict(ls)["reason"] for n, ls in found if n == "cwhook_connections_closed_total"}
    assert closed == set(CLOSE_REASONS)


def test_a_snapshot_in_prometheus_format() -> None:
    counters = Counters()
    for outcome in ("queued", "queued", "ignored", "bad_payload"):
        counters.webhook("jellyfin", outcome, "no_ids" if outcome == "ignored" else None)
    counters.decision("sent")
    counters.decision("duplicate")
    counters.trakt_request("default", "/scrobble/stop", "201")
    counters.sent = 1
    now = time.time()
    stats = Stats(pending=2, oldest_born=now - 100, set_aside=1, by_account=(("default", 2, now - 100),))
    account = status.AccountStatus(authorized=True, dry_run=False, token_expires_in_s=3600, outbox_pending=2,
                                   oldest_age_s=100.0, problems=("trakt_unreachable",))
    snap = status.build(version="1.2", started=now - 10, queue_depth=3, sessions=1, stats=stats,
                        accounts={"default": account, "anna": status.AccountStatus()}, counters=counters, now=now)
    m = metrics.Metrics(counters, lambda: snap)
    body, content_type = m.render()
    assert content_type.startswith("text/plain; version=")
    found = samples(body.decode())
    assert value(found, "cwhook_webhooks_total", server="jellyfin", outcome="queued") == 2
    assert value(found, "cwhook_webhooks_total", server="jellyfin", outcome="bad_payload") == 1
    assert ("cwhook_webhooks_total", (("outcome", "busy"), ("server", "emby"))) in found  # known at 0
    assert value(found, "cwhook_ignored_total", server="jellyfin", reason="no_ids") == 1
    assert {dict(ls)["reason"] for n, ls in found if n == "cwhook_decisions_total"} == set(REASONS)
    assert value(found, "cwhook_decisions_total", reason="duplicate") == 1
    assert value(found, "cwhook_trakt_requests_total", account="default", endpoint="/scrobble/stop",
                 status="201") == 1
    assert value(found, "cwhook_deliveries_total", result="sent") == 1
    assert value(found, "cwhook_queue_depth") == 3
    assert value(found, "cwhook_outbox_pending", account="default") == 2
    assert value(found, "cwhook_outbox_pending", account="anna") == 0
    assert value(found, "cwhook_outbox_oldest_age_seconds", account="default") == 100
    assert value(found, "cwhook_outbox_set_aside") == 1
    assert value(found, "cwhook_trakt_authorized", account="default") == 1
    assert value(found, "cwhook_trakt_authorized", account="anna") == 0
    assert value(found, "cwhook_trakt_token_expires_in_seconds", account="default") == 3600
    assert ("cwhook_trakt_token_expires_in_seconds", (("account", "anna"),)) not in found  # unknown: no sample
    assert value(found, "cwhook_degraded") == 1
    assert value(found, "cwhook_problem", problem="trakt_unreachable") == 1
    assert value(found, "cwhook_problem", problem="outbox_set_aside") == 1
    assert value(found, "process_resident_memory_bytes") > 0
    assert ("python_info" in {n for n, _ in found})


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    counters = Counters()
    counters.webhook("plex", "queued")
    snap = status.build(version="1", started=0, queue_depth=0, sessions=0, stats=Stats(), accounts={},
                        counters=counters)
    body, content_type = metrics.Metrics(counters, lambda: snap).render(
        "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(body.decode())}
    assert any(s.value == 1 and s.labels == {"server": "plex", "outcome": "queued"}
               for s in families["cwhook_webhooks"].samples)


def test_a_trakt_request_is_counted_and_timed_by_its_template() -> None:
    counters = Counters()
    m = metrics.Metrics(counters, lambda: status.Snapshot("1", "ok", ()))
    m.trakt_request("anna", "/search/imdb/tt0090728?type=movie", "200", 0.3)
    assert counters.trakt_requests == {("anna", "/search/{id_type}/{id}", "200"): 1}
    found = samples(m.render()[0].decode())
    assert value(found, "cwhook_trakt_request_seconds_count", endpoint="/search/{id_type}/{id}") == 1
    assert "tt0090728" not in m.render()[0].decode()


@given(st.text() | st.sampled_from(["application/openmetrics-text; version=abc", "text/plain; version=x.y",
                                    "application/openmetrics-text;version=1.0.0;escaping=zzz"]))
def test_any_accept_header_gets_metrics(accept: str) -> None:
    counters = Counters()
    m = metrics.Metrics(counters, lambda: status.Snapshot("1", "ok", ()))
    body, content_type = m.render(accept)
    if content_type.startswith("application/openmetrics-text"):
        assert list(openmetrics_families(body.decode()))
    else:
        assert "cwhook_queue_depth" in {f.name for f in text_string_to_metric_families(body.decode())}


def test_each_daemon_has_its_own_registry() -> None:
    a = metrics.Metrics(Counters(), lambda: status.Snapshot("1", "ok", ()))
    b = metrics.Metrics(Counters(), lambda: status.Snapshot("1", "ok", ()))
    a.webhook_answered("plex", 0.01)
    assert value(samples(a.render()[0].decode()), "cwhook_webhook_ack_seconds_count", server="plex") == 1
    assert value(samples(b.render()[0].decode()), "cwhook_webhook_ack_seconds_count", server="plex") == 0


# --- the endpoint, in process ----------------------------------------------------------------


async def _client(enabled: bool) -> TestClient[Any, Any]:
    cfg = parse_config(config_text(8787, Path("/tmp/state")).replace(
        "  host: 127.0.0.1", f"  host: 127.0.0.1\n  metrics: {'true' if enabled else 'false'}"), Path("/tmp/x.yml"))
    counters = Counters()

    async def ingest(event: Event) -> None:
        return None

    snap = status.Snapshot("1", "ok", ())
    rt = Runtime(cfg, counters, lambda: {"status": "ok"}, ingest, preview=preview.answer,
                 metrics=metrics.Metrics(counters, lambda: snap))
    client = TestClient(TestServer(make_app(rt)))
    await client.start_server()
    return client


async def test_metrics_can_be_switched_off() -> None:
    client = await _client(enabled=False)
    try:
        resp = await client.get("/metrics")
        assert resp.status == 404 and (await resp.json())["error"] == "disabled"
    finally:
        await client.close()
    client = await _client(enabled=True)
    try:
        resp = await client.get("/metrics")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        assert "cwhook_queue_depth" in await resp.text()
    finally:
        await client.close()


# --- a real daemon ------------------------------------------------------------------------------


def plex(event: str, offset_ms: int, user: str = "Anna Privatperson", kind: str = "movie") -> bytes:
    data = fixture_json("plex_media.scrobble_movie.json")
    data["event"] = event
    data["Account"]["title"] = user
    data["Metadata"]["viewOffset"] = offset_ms
    if kind != "movie":
        data["Metadata"].update(type=kind, subtype="trailer", title="Secret Trailer Title")
    return json.dumps(data).encode()


def scrape(d: Daemon) -> str:
    with urllib.request.urlopen(d.base + "/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        return str(resp.read().decode())


@pytest.mark.slow
def test_counters_after_a_known_sequence(daemon_factory: Callable[..., Daemon], fake_trakt: FakeTrakt) -> None:
    access, refresh, _ = fake_trakt.issue_tokens()
    # The token expires within the refresh margin: the daemon refreshes it at start (/oauth/token).
    d = daemon_factory(trakt_url=fake_trakt.url, access_token=access, refresh_token=refresh,
                       expires_at=int(time.time()) + 600)
    duration = 5940000
    assert d.post("plex", plex("media.play", 30000))[0] == 202  # queued, sent
    assert d.post("plex", plex("media.play", 30000))[0] == 202  # queued, duplicate
    assert d.post("plex", plex("media.play", 30000, kind="clip"))[0] == 200  # ignored: a trailer
    assert d.post("plex", b'{"event": "library.new"}')[0] == 200  # ignored: not a playback event
    assert d.post("jellyfin", b"{not json", "text/plain")[0] == 400  # bad payload
    assert d.post("emby", b"{}", token="wrong-token-0123456789")[0] == 401
    assert d.post("plex", plex("media.stop", int(duration * 0.97)))[0] == 202  # queued, delivered
    # An episode Trakt knows by none of the forms sent: found by a search on its imdb id.
    episode = fixture_json("plex_media.scrobble_episode.json")
    episode["Metadata"]["Guid"] = [{"id": "imdb://tt14765720"}]
    assert d.post("plex", json.dumps(episode).encode())[0] == 202
    wait_for(lambda: len(fake_trakt.watched_stops()) == 2, timeout=20)
    wait_for(lambda: d.health()["outbox"]["pending"] == 0)

    text = scrape(d)
    found = samples(text)
    webhooks = {(dict(ls)["server"], dict(ls)["outcome"]): v for (n, ls), v in found.items()
                if n == "cwhook_webhooks_total" and v}
    assert webhooks == {("plex", "queued"): 4, ("plex", "ignored"): 2, ("jellyfin", "bad_payload"): 1,
                        ("emby", "invalid_token"): 1}
    assert value(found, "cwhook_ignored_total", server="plex", reason="media_type_not_supported") == 1
    assert value(found, "cwhook_ignored_total", server="plex", reason="event_not_handled") == 1
    decisions = {dict(ls)["reason"]: v for (n, ls), v in found.items() if n == "cwhook_decisions_total" and v}
    assert decisions == {"sent": 3, "duplicate": 1}
    assert value(found, "cwhook_trakt_requests_total", account="default", endpoint="/scrobble/start",
                 status="201") == 1
    assert value(found, "cwhook_trakt_requests_total", account="default", endpoint="/scrobble/stop",
                 status="201") == 2
    assert value(found, "cwhook_trakt_requests_total", account="default", endpoint="/scrobble/stop",
                 status="404") == 2  # the episode by its ids, then by its show
    assert value(found, "cwhook_trakt_requests_total", account="default", endpoint="/search/{id_type}/{id}",
                 status="200") == 1
    assert value(found, "cwhook_trakt_requests_total", account="default", endpoint="/oauth/token",
                 status="200") == 1
    assert value(found, "cwhook_trakt_request_seconds_count", endpoint="/scrobble/stop") == 4
    assert value(found, "cwhook_webhook_ack_seconds_count", server="plex") == 6
    assert value(found, "cwhook_webhook_ack_seconds_count", server="emby") == 1
    assert value(found, "cwhook_deliveries_total", result="sent") == 3
    assert value(found, "cwhook_outbox_pending", account="default") == 0
    assert value(found, "cwhook_trakt_authorized", account="default") == 1
    assert 80000 < value(found, "cwhook_trakt_token_expires_in_seconds", account="default") <= 86400
    assert value(found, "cwhook_queue_depth") == 0
    assert value(found, "process_open_fds") > 0

    # /healthz and /metrics are two renderings of the same counts.
    counts = d.health()["counts"]
    assert counts["received"] == total(found, "cwhook_webhooks_total") == 8
    assert counts["queued"] == total(found, "cwhook_webhooks_total", outcome="queued")
    assert counts["ignored"] == total(found, "cwhook_ignored_total")
    assert counts["sent"] == value(found, "cwhook_deliveries_total", result="sent")
    assert counts["suppressed"] == decisions["duplicate"]

    # No personal data and no secret anywhere in the exposition.
    config = d.config_path.read_text()
    secrets = [*TOKENS.values(), access, refresh, "test-secret", "test-client-id",
               *(line.split('"')[1] for line in config.splitlines() if "_token:" in line and '"' in line)]
    for private in ("Anna", "Privatperson", "Big Trouble", "Secret Trailer", "tt0090728", "6978", "26697",
                    "f34345234ef4523423432", "tt14765720", "范马刃牙", "Strongest", *secrets):
        assert private not in text, private
    assert d.stop() == 0


@pytest.mark.slow
def test_metrics_off_in_a_real_daemon(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory(config_text(0, Path("state")).replace("port: 0", "port: {port}").replace(
        "  host: 127.0.0.1", "  host: 127.0.0.1\n  metrics: false"))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(d.base + "/metrics", timeout=5)
    assert err.value.code == 404 and json.loads(err.value.read())["error"] == "disabled"
    assert d.health()["status"] in ("ok", "degraded")
    assert d.stop() == 0


def test_every_metric_is_documented() -> None:
    from tests.conftest import ROOT

    doc = (ROOT / "docs" / "monitoring.md").read_text()
    counters = Counters()
    counters.webhook("plex", "ignored", "no_ids")
    counters.trakt_request("default", "/scrobble/stop", "201")
    snap = status.build(version="1", started=0, queue_depth=0, sessions=0, stats=Stats(),
                        accounts={"default": status.AccountStatus(token_expires_in_s=1, last_success_at=1.0)},
                        counters=counters, config_refused="x")
    m = metrics.Metrics(counters, lambda: snap)
    m.webhook_answered("plex", 0.1)
    m.trakt_request("default", "/scrobble/stop", "201", 0.1)
    names = {f.name + ("_total" if f.type == "counter" else "")
             for f in text_string_to_metric_families(m.render()[0].decode()) if f.name.startswith("cwhook_")}
    assert len(names) >= 19
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"not in docs/monitoring.md: {missing}"
