"""Tautulli's Webhook agent: the documented template, rendered as Tautulli renders it, parsed
per trigger; one item across sources; a real daemon against the fake Trakt."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cwhook.config.schema import ScrobbleConfig, WebhookConfig, pattern_problem
from cwhook.ingest import filters, routing
from cwhook.kernel import items
from cwhook.kernel.event import Event, Ids, Ignored
from cwhook.scrobble.rules import Rules
from cwhook.sources import tautulli
from tests.builders import settled, sleep_past
from tests.conftest import Daemon, wait_for
from tests.faketrakt import FakeTrakt

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "tautulli.md"


def template() -> str:
    """The JSON Data block of docs/tautulli.md (what the user pastes)."""
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1
    return blocks[0]


# Real-looking values of Tautulli's notification parameters (plexpy/common.py), as strings.
MOVIE = {
    "action": "play", "media_type": "movie", "live": "0", "username": "anna", "user": "Anna",
    "user_id": "1234567", "machine_id": "q4ue5tp9lhy1yk1oa5x4k0fw", "session_key": "27",
    "server_machine_id": "3f2c1b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a", "rating_key": "48213",
    "guid": "plex://movie/5d7768ba96b655001fdc0408", "title": "Guardians of the Galaxy",
    "year": "2014", "show_name": "", "show_year": "", "episode_name": "", "season_num": "",
    "episode_num": "", "imdb_id": "tt2015381", "themoviedb_id": "118340", "thetvdb_id": "",
    "view_offset": "60000", "duration_ms": "7320000", "progress_percent": "1",
}
EPISODE = {
    **MOVIE, "media_type": "episode", "rating_key": "48300",
    "guid": "plex://episode/5d9c086c46115600200aa2ee", "title": "Breaking Bad - Pilot", "year": "2008",
    "show_name": "Breaking Bad", "show_year": "2008", "episode_name": "Pilot", "season_num": "1",
    "episode_num": "1", "imdb_id": "tt0903747", "themoviedb_id": "1396", "thetvdb_id": "81189",
    "view_offset": "2973000", "duration_ms": "3483000", "progress_percent": "85",
}


def render(values: dict[str, str], text: str | None = None) -> bytes:
    """As Tautulli does for the Webhook agent: JSON-load the data, format each string with the
    parameters (unknown ones empty), JSON-dump it."""
    params: dict[str, Any] = {**values}
    data = json.loads(text if text is not None else template())

    class Empty(dict[str, Any]):
        def __missing__(self, key: str) -> str:
            return ""

    filled = {k: v.format_map(Empty(params)) if isinstance(v, str) else v for k, v in data.items()}
    return json.dumps(filled).encode()


def parse(values: dict[str, str], **changes: str) -> Event | Ignored:
    return tautulli.parse("application/json", render({**values, **changes}), 1000.0)


def test_template_uses_only_tautulli_parameters_and_matches_the_example_file() -> None:
    text = template()
    assert json.loads(text) == json.loads((ROOT / "docs/examples/tautulli-template.json").read_text())
    used = set(re.findall(r"\{(\w+)\}", text))
    # Each one is in Tautulli's NOTIFICATION_PARAMETERS (plexpy/common.py).
    known = {"action", "media_type", "live", "username", "user", "user_id", "machine_id", "session_key",
             "server_machine_id", "rating_key", "guid", "title", "year", "show_name", "show_year",
             "episode_name", "season_num", "episode_num", "imdb_id", "themoviedb_id", "thetvdb_id",
             "view_offset", "duration_ms", "progress_percent"}
    assert used == known
    assert set(MOVIE) == known  # the test values fill every parameter


@pytest.mark.parametrize(("trigger", "action"), [
    ("play", "start"), ("pause", "pause"), ("resume", "start"), ("stop", "stop"), ("watched", "scrobble")])
def test_each_trigger_movie_and_episode(trigger: str, action: str) -> None:
    movie = parse(MOVIE, action=trigger)
    assert isinstance(movie, Event)
    assert (movie.source, movie.action, movie.kind, movie.title, movie.year) == (
        "tautulli", action, "movie", "Guardians of the Galaxy", 2014)
    assert movie.ids == Ids(imdb="tt2015381", tmdb=118340)
    assert movie.progress == pytest.approx(60000 / 7320000 * 100)
    assert movie.duration_s == 7320.0
    assert (movie.user_name, movie.user_id) == ("anna", "1234567")
    assert movie.player_id == "q4ue5tp9lhy1yk1oa5x4k0fw/27" and movie.item_key == "48213"
    assert movie.server_id == "3f2c1b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a"

    episode = parse(EPISODE, action=trigger)
    assert isinstance(episode, Event)
    assert (episode.action, episode.kind, episode.title, episode.year) == (action, "episode", "Pilot", 2008)
    # Tautulli's ids of an episode are its show's.
    assert episode.ids == Ids()
    assert episode.show_ids == Ids(imdb="tt0903747", tmdb=1396, tvdb=81189)
    assert (episode.show_title, episode.show_year, episode.season, episode.number) == (
        "Breaking Bad", 2008, 1, 1)
    assert episode.progress == pytest.approx(2973000 / 3483000 * 100)


def test_special_tvdb_only_and_legacy_guid_episodes() -> None:
    special = parse(EPISODE, season_num="0", episode_num="3", imdb_id="", themoviedb_id="")
    assert isinstance(special, Event)
    assert (special.season, special.number, special.show_ids) == (0, 3, Ids(tvdb=81189))
    only_tvdb = parse(EPISODE, imdb_id="", themoviedb_id="", guid="")
    assert isinstance(only_tvdb, Event) and only_tvdb.show_ids == Ids(tvdb=81189)
    legacy = parse(EPISODE, imdb_id="", themoviedb_id="", thetvdb_id="", season_num="", episode_num="",
                   guid="com.plexapp.agents.thetvdb://73871/2/15?lang=en")
    assert isinstance(legacy, Event)
    assert (legacy.show_ids, legacy.season, legacy.number) == (Ids(tvdb=73871), 2, 15)


def test_plex_guid_alone_means_title_and_year() -> None:
    movie = parse(MOVIE, imdb_id="", themoviedb_id="")
    assert isinstance(movie, Event)
    assert movie.ids == Ids() and (movie.title, movie.year) == ("Guardians of the Galaxy", 2014)
    episode = parse(EPISODE, imdb_id="", themoviedb_id="", thetvdb_id="")
    assert isinstance(episode, Event)
    assert episode.show_ids == Ids() and (episode.show_title, episode.season, episode.number) == (
        "Breaking Bad", 1, 1)
    legacy_movie = parse(MOVIE, imdb_id="", themoviedb_id="",
                         guid="com.plexapp.agents.imdb://tt0090728?lang=en")
    assert isinstance(legacy_movie, Event) and legacy_movie.ids == Ids(imdb="tt0090728")


def test_progress_falls_back_to_progress_percent() -> None:
    rough = parse(MOVIE, view_offset="", duration_ms="", progress_percent="93")
    assert isinstance(rough, Event) and rough.progress == 93.0 and rough.duration_s is None
    unknown = parse(MOVIE, view_offset="", duration_ms="", progress_percent="")
    assert isinstance(unknown, Event) and unknown.progress is None
    # Tautulli writes 0 when it has no offset: a stop at "0" keeps the session's progress.
    zero = parse(MOVIE, action="stop", view_offset="0", progress_percent="0")
    assert isinstance(zero, Event) and zero.progress is None
    rules = Rules(ScrobbleConfig())
    playing = parse(MOVIE, view_offset="6900000")
    assert isinstance(playing, Event)
    rules.handle(playing, 0)
    [stop] = rules.handle(zero, 60)
    assert stop.send is not None and stop.send.verb == "stop" and stop.progress == pytest.approx(94.26, abs=0.01)


@pytest.mark.parametrize(("changes", "reason", "says"), [
    ({"media_type": "track"}, "media_type_not_supported", "music"),
    ({"media_type": "photo"}, "media_type_not_supported", "photo"),
    ({"media_type": "clip"}, "media_type_not_supported", "clip"),
    ({"live": "1"}, "live_tv", "Live TV"),
    ({"action": "buffer"}, "event_not_handled", "buffer"),
    ({"imdb_id": "", "themoviedb_id": "", "title": ""}, "no_ids", "no ids"),
])
def test_ignored_with_a_reason(changes: dict[str, str], reason: str, says: str) -> None:
    result = parse(MOVIE, **changes)
    assert isinstance(result, Ignored) and result.reason == reason and says in result.detail


def test_unrendered_template_says_so() -> None:
    result = tautulli.parse("application/json", template().encode(), 0.0)
    assert isinstance(result, Ignored) and result.reason == "event_not_handled"
    assert "not filled in" in result.detail


def test_whitelist_and_households_patterns() -> None:
    event = parse(MOVIE)
    assert isinstance(event, Event)
    for allowed in (("Anna",), ("id:1234567",), ()):
        assert filters.check(event, WebhookConfig(username_whitelist=allowed)) is None, allowed
    refused = filters.check(event, WebhookConfig(username_whitelist=("id:7", "bob")))
    assert refused is not None and refused.reason == "user_not_allowed"
    accounts = {"default": ["plex:anna"], "anna": ["tautulli:ANNA"], "kids": ["tautulli:id:99"],
                "all": ["*:*"]}
    assert routing.Router(accounts).route(event) == ("anna", "all")
    assert pattern_problem("tautulli:id:x") is not None and pattern_problem("tautulli:id:12") is None


# --- one item across sources (docs/rules.md) ---------------------------------------------

PLEX_EPISODE = Event(source="plex", action="start", kind="episode", title="Pilot",
                     ids=Ids(imdb="tt0959621", tmdb=62085, tvdb=349232), show_title="Breaking Bad",
                     season=1, number=1, user_name="anna", player_id="tv", item_key="48300",
                     duration_s=3483.0)


def test_plex_episode_with_three_ids_and_a_jellyfin_stop_naming_two_are_one_item() -> None:
    rules = Rules(ScrobbleConfig())
    rules.handle(replace(PLEX_EPISODE, action="start", progress=1.0), 0)
    [watched] = rules.handle(replace(PLEX_EPISODE, action="stop", progress=97.0), 3000)
    assert watched.send is not None and watched.send.verb == "stop"
    jellyfin = replace(PLEX_EPISODE, source="jellyfin", ids=Ids(tmdb=62085, tvdb=349232),
                       player_id="phone", item_key="8f2e")
    [stale] = rules.handle(replace(jellyfin, action="stop", progress=40.0), 3100)
    assert stale.reason == "already_watched" and stale.send is None  # not a pause on Trakt


def test_the_watched_table_keeps_every_name_across_a_restart(tmp_path: Path) -> None:
    from cwhook.state.store import NewEntry, Store

    store = Store(tmp_path)
    store.decide([NewEntry("stop", replace(PLEX_EPISODE, action="stop", progress=97.0), 97.0, 1000.0)], 0)
    rows = store.recent_watched(0)
    store.close()
    assert {name for _, name, _ in rows} >= {"episode|tmdb=62085", "episode|tvdb=349232", "episode|imdb=tt0959621"}
    rules = Rules(ScrobbleConfig())  # a restarted daemon
    for _, name, at in rows:
        rules.remember_watched(name, at)
    jellyfin = replace(PLEX_EPISODE, source="jellyfin", ids=Ids(tmdb=62085, tvdb=349232), player_id="phone")
    [stale] = rules.handle(replace(jellyfin, action="stop", progress=40.0), 1100)
    assert stale.reason == "already_watched"


def test_names_matched_to_one_trakt_id_are_one_item() -> None:
    aliases = items.TraktAliases()
    rules = Rules(ScrobbleConfig(), aliases=aliases)
    rules.handle(replace(PLEX_EPISODE, action="start", progress=1.0), 0)
    [watched] = rules.handle(replace(PLEX_EPISODE, action="stop", progress=97.0), 3000)
    assert watched.send is not None
    tautulli_ep = parse(EPISODE, action="stop", view_offset="3400000")
    assert isinstance(tautulli_ep, Event)
    answer = {"episode": {"ids": {"trakt": 16}}}
    aliases.learn_answer(PLEX_EPISODE, answer)
    aliases.learn_answer(tautulli_ep, answer)
    [second] = rules.handle(tautulli_ep, 3050)
    assert second.reason == "already_watched" and second.send is None


def test_ratings_and_marks_meet_across_names() -> None:
    rules = Rules(ScrobbleConfig(sync_manual_marks=True))
    movie = Event(source="plex", action="rate", kind="movie", ids=Ids(imdb="tt2015381", tmdb=118340),
                  rating=8, user_name="anna")
    assert rules.handle(movie, 0)[0].reason == "sent"
    assert rules.handle(replace(movie, source="jellyfin", ids=Ids(tmdb=118340)), 10)[0].reason == "duplicate"
    mark = replace(movie, source="emby", action="mark_watched", ids=Ids(imdb="tt2015381"), rating=None)
    assert rules.handle(mark, 20)[0].reason == "sent"
    assert rules.handle(replace(mark, ids=Ids(imdb="tt2015381", tmdb=118340)), 30)[0].reason == "duplicate"


# --- a real daemon -----------------------------------------------------------------------

def authorized(fake: FakeTrakt, **kw: object) -> dict[str, object]:
    access, refresh, expires = fake.issue_tokens()
    return {"trakt_url": fake.url, "access_token": access, "refresh_token": refresh,
            "expires_at": expires, **kw}


@pytest.mark.slow
def test_viewing_through_tautulli_gives_exactly_the_expected_calls(
        daemon_factory: Callable[..., Daemon], fake_trakt: FakeTrakt) -> None:
    d = daemon_factory(**authorized(fake_trakt))
    steps = [("play", "60000"), ("pause", "1800000"), ("resume", "1800000"), ("watched", "6300000"),
             ("stop", "7100000")]
    for trigger, offset in steps:
        status, answer = d.post("tautulli", render({**MOVIE, "action": trigger, "view_offset": offset}))
        assert status == 202, answer
        assert answer["event"]["source"] == "tautulli"
        if trigger == "pause":
            paused_at = time.monotonic()
    wait_for(lambda: len(fake_trakt.scrobbles()) >= 2)
    wait_for(lambda: settled(d))
    sleep_past(paused_at, 1.0)  # the pause's debounce window (1 s in tests) passes: nothing more may arrive
    calls = fake_trakt.scrobbles()
    assert [(c.path, c.answer["action"]) for c in calls] == [("/scrobble/start", "start"),
                                                             ("/scrobble/stop", "scrobble")]
    assert calls[1].body["movie"]["ids"]["imdb"] == "tt2015381"
    decisions = [e["reason"] for e in d.log_events() if e.get("event") == "decision"]
    assert decisions == ["sent", "debounced", "pause_cancelled", "sent", "already_watched"]
    assert d.health()["counts"]["received"] == 5
    with urllib.request.urlopen(d.base + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'cwhook_webhooks_total{outcome="queued",server="tautulli"} 5.0' in text
    assert d.stop() == 0


@pytest.mark.slow
def test_same_viewing_from_plex_webhooks_and_tautulli_is_one_play(
        daemon_factory: Callable[..., Daemon], fake_trakt: FakeTrakt) -> None:
    d = daemon_factory(**authorized(fake_trakt))
    plex = {"event": "media.play", "Account": {"id": 1234567, "title": "anna"},
            "Player": {"uuid": "q4ue5tp9lhy1yk1oa5x4k0fw"}, "Server": {"uuid": "3f2c"},
            "Metadata": {"type": "episode", "ratingKey": "48300", "title": "Pilot",
                         "grandparentTitle": "Breaking Bad", "parentIndex": 1, "index": 1,
                         "librarySectionType": "show",
                         "guid": "plex://episode/5d9c086c46115600200aa2ee",
                         "Guid": [{"id": "imdb://tt0959621"}, {"id": "tmdb://62085"}, {"id": "tvdb://349232"}],
                         "viewOffset": 60000, "duration": 3483000}}

    def plex_post(event: str, offset: int) -> None:
        body = {**plex, "event": event, "Metadata": {**plex["Metadata"], "viewOffset": offset}}  # type: ignore[dict-item]
        assert d.post("plex", json.dumps(body).encode())[0] == 202

    def tautulli_post(trigger: str, offset: int) -> None:
        body = render({**EPISODE, "action": trigger, "view_offset": str(offset)})
        assert d.post("tautulli", body)[0] == 202

    plex_post("media.play", 60000)
    tautulli_post("play", 60000)
    wait_for(lambda: len(fake_trakt.scrobbles()) >= 2)  # both starts: Trakt matched both names
    plex_post("media.scrobble", 3200000)
    wait_for(lambda: len(fake_trakt.watched_stops()) >= 1)
    tautulli_post("watched", 3000000)
    plex_post("media.stop", 3400000)
    tautulli_post("stop", 3400000)
    wait_for(lambda: settled(d))  # nothing more may arrive
    assert len(fake_trakt.watched_stops()) == 1
    assert fake_trakt.posts("/scrobble/pause") == []
    decisions = [(e["source"], e["reason"]) for e in d.log_events() if e.get("event") == "decision"]
    assert decisions[-3:] == [("tautulli", "already_watched"), ("plex", "already_watched"),
                              ("tautulli", "already_watched")]
    assert d.stop() == 0


def test_the_source_registry_agrees_with_the_schema_and_the_curl_examples() -> None:
    from cwhook.config.schema import SCHEMA
    from cwhook.sources.registry import SOURCES

    assert list(SCHEMA["webhooks"]) == list(SOURCES)
    assert all(source.curl and "'U'" in source.try_it("U") for source in SOURCES.values())
    assert SOURCES["tautulli"].path == "/webhook/tautullitrakt"
