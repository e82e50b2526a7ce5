"""The sender and Trakt client against the fake Trakt: retries, refresh, matching, outbox rules."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cwhook.config.schema import TraktConfig
from cwhook.kernel import clock as clocks
from cwhook.kernel import logs
from cwhook.kernel.event import Event, Ids
from cwhook.sources import emby, plex
from cwhook.state.store import AsyncStore, Entry, NewEntry, Store
from cwhook.status.health import Counters
from cwhook.trakt.auth import TraktAuth
from cwhook.trakt.client import RetryPolicy, TraktClient
from cwhook.trakt.delivery import Lane, Options
from tests.builders import episode, movie
from tests.conftest import fixture_bytes
from tests.faketrakt import FakeTrakt

MOVIE = movie(user_name="alice", duration_s=7200.0)
EPISODE = episode(duration_s=3480.0)
FAST = RetryPolicy(attempts=4, initial=0.05, maximum=0.2, jitter=0.01)

CONFIG = """# trakt settings
trakt:
  client_id: test-client-id   # app
  client_secret: test-secret
  access_token: "{access}"
  refresh_token: "{refresh}"   # single use
  expires_at: {expires}
logging:
  level: info
"""


class Rig:
    def __init__(self, fake: FakeTrakt, tmp: Path, lifetime: int | None = None, access: str | None = None,
                 refresh: str | None = None, options: Options | None = None,
                 policy: RetryPolicy = FAST, timeout: float = 15.0) -> None:
        a, r, e = fake.issue_tokens(lifetime)
        self.access = access if access is not None else a
        self.refresh = refresh if refresh is not None else r
        self.path = tmp / "cwhook.yml"
        self.path.write_text(CONFIG.format(access=self.access, refresh=self.refresh, expires=e))
        trakt = TraktConfig(api_url=fake.url, oauth_url=fake.url, client_id="test-client-id",
                            client_secret="test-secret", access_token=self.access,
                            refresh_token=self.refresh, expires_at=e)
        self.auth = TraktAuth(self.path, trakt)
        self.client = TraktClient(fake.url, self.auth.tokens, self.auth.refresh, policy, timeout=timeout)
        self.store = Store(tmp / "state")
        self.db = AsyncStore(self.store)
        self.counters = Counters()
        self.opts = options or Options()
        self.lane = Lane("default", self.client, self.db, self.counters, lambda: self.opts,
                         lambda: self.auth.needs_auth)

    def add(self, verb: str, event: Event, progress: float, at: float | None = None) -> None:
        self.store.decide([NewEntry(verb, event, progress, time.time() if at is None else at)], 0)[0]

    def head(self) -> Entry | None:
        heads = self.store.heads("default")
        return heads[0] if heads else None

    def pending(self) -> int:
        return self.store.stats.pending

    async def drain(self, limit: int = 20) -> None:
        for _ in range(limit):
            entry = self.head()
            if entry is None or entry.next_attempt_at > time.time():
                return
            await self.lane.deliver_one(entry)

    async def close(self) -> None:
        await self.client.close()
        self.db.close()


@pytest.fixture
async def rig(fake_trakt: FakeTrakt, tmp_path: Path) -> Any:
    r = Rig(fake_trakt, tmp_path)
    yield r
    await r.close()


async def test_start_then_watched_stop(rig: Rig, fake_trakt: FakeTrakt) -> None:
    rig.add("start", replace(MOVIE, action="start"), 1.25)
    rig.add("stop", MOVIE, 97.5)
    await rig.drain()
    calls = fake_trakt.scrobbles()
    assert [(c.path, c.status, c.answer["action"]) for c in calls] == [
        ("/scrobble/start", 201, "start"), ("/scrobble/stop", 201, "scrobble")]
    assert calls[0].body == {"movie": {"title": "Guardians of the Galaxy", "year": 2014,
                                       "ids": {"imdb": "tt2015381"}}, "progress": 1.25}
    headers = calls[0].headers
    assert headers["trakt-api-version"] == "2" and headers["trakt-api-key"] == "test-client-id"
    assert headers["Authorization"] == f"Bearer {rig.access}"
    assert headers["User-Agent"].startswith("cwhook/")
    assert calls[1].at - calls[0].at >= 1.0  # 1 POST per second
    assert rig.counters.sent == 2 and rig.pending() == 0


async def test_409_counts_as_success(rig: Rig, fake_trakt: FakeTrakt) -> None:
    rig.add("stop", MOVIE, 97.5)
    rig.add("stop", replace(MOVIE, player_id="other"), 98)
    await rig.drain()
    assert [c.status for c in fake_trakt.scrobbles()] == [201, 409]
    assert rig.counters.sent == 2 and rig.counters.failed == 0 and rig.pending() == 0


async def test_outage_retried_with_backoff(rig: Rig, fake_trakt: FakeTrakt) -> None:
    fake_trakt.script = [503, 502, 520]
    rig.add("stop", MOVIE, 90)
    await rig.drain()
    assert [c.status for c in fake_trakt.scrobbles()] == [503, 502, 520, 201]
    assert rig.pending() == 0


async def test_long_outage_keeps_the_entry(rig: Rig, fake_trakt: FakeTrakt) -> None:
    fake_trakt.outage_until = time.time() + 3600
    rig.add("stop", MOVIE, 90)
    await rig.drain()
    entry = rig.head()
    assert entry is not None and entry.attempts == 1 and entry.next_attempt_at > time.time()
    assert "503" in (entry.last_error or "")
    assert len(fake_trakt.scrobbles()) == FAST.attempts
    assert rig.client.last_error is not None


async def test_connection_drops_are_retried(rig: Rig, fake_trakt: FakeTrakt) -> None:
    fake_trakt.drop = 2
    rig.add("stop", MOVIE, 90)
    await rig.drain()
    assert [c.status for c in fake_trakt.scrobbles()] == [-1, -1, 201]


async def test_slow_answer_times_out_and_is_retried(fake_trakt: FakeTrakt, tmp_path: Path) -> None:
    rig = Rig(fake_trakt, tmp_path, timeout=0.5)
    fake_trakt.slow_calls, fake_trakt.slow_delay = 1, 2.0
    rig.add("stop", MOVIE, 90)
    started = time.time()
    await rig.drain()
    assert time.time() - started < 5
    assert rig.pending() == 0 and len(fake_trakt.watched_stops()) == 1
    assert len(fake_trakt.scrobbles()) == 2  # the slow one was abandoned, the retry went through
    await rig.close()


async def test_429_waits_retry_after(rig: Rig, fake_trakt: FakeTrakt) -> None:
    fake_trakt.script = [429]
    rig.add("stop", MOVIE, 90)
    await rig.drain()
    calls = fake_trakt.scrobbles()
    assert [c.status for c in calls] == [429, 201]
    assert calls[1].at - calls[0].at >= 1.0  # Retry-After: 1


@pytest.mark.parametrize(("status", "loud"), [(422, False), (420, True), (423, True), (400, False)])
async def test_final_errors_drop_the_entry(rig: Rig, fake_trakt: FakeTrakt, status: int, loud: bool,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")  # JSON lines on stderr, whatever an earlier test configured
    fake_trakt.script = [status]
    rig.add("stop", MOVIE, 90)
    await rig.drain()
    assert len(fake_trakt.scrobbles()) == 1 and rig.pending() == 0
    assert rig.counters.failed == 1
    out = capsys.readouterr()
    lines = [json.loads(line) for line in (out.out + out.err).splitlines() if line.startswith("{")]
    failed = [line for line in lines if line["event"] == "trakt_failed"]
    assert len(failed) == 1 and failed[0]["level"] == ("error" if loud else "warning")


async def test_expired_token_refreshed_and_written_back(fake_trakt: FakeTrakt, tmp_path: Path) -> None:
    rig = Rig(fake_trakt, tmp_path, lifetime=-10)  # the access token already expired
    before = rig.path.read_text().splitlines()
    rig.add("start", replace(MOVIE, action="start"), 5)
    await rig.drain()
    await rig.close()
    calls = fake_trakt.scrobbles()
    assert [c.status for c in calls] == [401, 201]
    assert fake_trakt.refresh_count == 1 and rig.refresh in fake_trakt.used_refresh_tokens
    after = rig.path.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert [a.split(":")[0] for a, _ in changed] == ["  access_token", "  refresh_token", "  expires_at"]
    assert after[5].endswith("   # single use")  # comments kept
    new_access = calls[1].headers["Authorization"].removeprefix("Bearer ")
    assert f'access_token: "{new_access}"' in after[4]


async def test_refresh_ahead_of_expiry_24h_and_7d(fake_trakt: FakeTrakt, tmp_path: Path) -> None:
    for lifetime in (86400, 7 * 86400):
        fake_trakt.token_lifetime = lifetime
        rig = Rig(fake_trakt, tmp_path, lifetime=1800)  # expires in 30 min: inside the margin
        assert rig.auth.due(time.time())
        await rig.auth.refresh_ahead()
        assert not rig.auth.due(time.time())
        assert rig.auth.expires_at == pytest.approx(time.time() + lifetime, abs=5)
        await rig.close()
    far = Rig(fake_trakt, tmp_path, lifetime=86400)
    assert not far.auth.due(time.time())
    await far.close()


async def test_concurrent_401s_refresh_once(fake_trakt: FakeTrakt, tmp_path: Path) -> None:
    import asyncio

    rig = Rig(fake_trakt, tmp_path, lifetime=-10)
    token = rig.auth.tokens()[1]
    results = await asyncio.gather(*[rig.auth.refresh(token) for _ in range(5)])
    assert results == [True] * 5 and fake_trakt.refresh_count == 1
    await rig.close()


async def test_failed_refresh_needs_auth_and_keeps_outbox(fake_trakt: FakeTrakt, tmp_path: Path) -> None:
    rig = Rig(fake_trakt, tmp_path, lifetime=-10, refresh="not-a-valid-refresh-token")
    rig.add("stop", MOVIE, 90)
    await rig.drain()
    assert rig.auth.needs_auth and "cwhook auth" in rig.auth.needs_auth
    assert rig.pending() == 1
    # no hammering: further 401s do not try to refresh again
    assert await rig.auth.refresh(rig.auth.tokens()[1]) is False
    assert len(fake_trakt.posts("/oauth/token")) == 1
    # `cwhook auth` writes new tokens; the reload clears the state and delivery resumes
    access, refresh, expires = fake_trakt.issue_tokens()
    rig.auth.update_from_config(TraktConfig(api_url=fake_trakt.url, oauth_url=fake_trakt.url,
                                            client_id="test-client-id", client_secret="test-secret",
                                            access_token=access, refresh_token=refresh, expires_at=expires))
    assert rig.auth.needs_auth is None
    rig.store._db.execute("UPDATE outbox SET next_attempt_at = 0")
    await rig.drain()
    assert rig.pending() == 0 and fake_trakt.watched_stops()
    await rig.close()


async def test_episode_by_ids_then_show_then_search(rig: Rig, fake_trakt: FakeTrakt) -> None:
    # Emby sample: only the episode's tmdb id (Trakt matches episodes by trakt/tvdb), show without ids
    ev = emby.parse("application/json", fixture_bytes("emby_playback.start_episode.json"))
    assert isinstance(ev, Event)
    rig.add("start", ev, 50)
    await rig.drain()
    paths = [(c.method, c.path, c.status) for c in fake_trakt.calls]
    assert paths == [("POST", "/scrobble/start", 404), ("POST", "/scrobble/start", 404),
                     ("GET", "/search/tmdb/4533239", 200), ("POST", "/scrobble/start", 201)]
    assert fake_trakt.calls[-1].body["episode"] == {"ids": {"trakt": 70}}
    # cached: the next action for the item goes straight to the match
    rig.add("pause", ev, 60)
    await rig.drain()
    assert fake_trakt.calls[-1].body["episode"] == {"ids": {"trakt": 70}}
    assert len(fake_trakt.calls) == 5
    # remembered across a restart: a new lane on the same state file
    rig.db.close()
    rig.store = Store(rig.store.path.parent)
    rig.db = AsyncStore(rig.store)
    fresh = Lane("default", rig.client, rig.db, rig.counters, lambda: rig.opts, lambda: None)
    rig.add("stop", ev, 95)
    entry = rig.head()
    assert entry is not None
    await fresh.deliver_one(entry)
    assert len(fake_trakt.calls) == 6 and fake_trakt.calls[-1].body["episode"] == {"ids": {"trakt": 70}}


def test_match_memory_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cwhook.state.store

    monkeypatch.setattr(cwhook.state.store, "MAX_MATCHES", 3)
    outbox = Store(tmp_path)
    for i in range(5):
        outbox.match_put(f"movie|imdb=tt{i}", {"movie": {"ids": {"trakt": i}}}, float(i))
    assert [outbox.match_get(f"movie|imdb=tt{i}") is not None for i in range(5)] == [False, False, True, True, True]
    assert outbox.match_get("movie|imdb=tt4") == {"movie": {"ids": {"trakt": 4}}}
    outbox.close()


async def test_legacy_tvdb_show_form(rig: Rig, fake_trakt: FakeTrakt) -> None:
    ev = plex.parse("application/json", fixture_bytes("plex_media.pause_episode_legacy-tvdb-agent.json"))
    assert isinstance(ev, Event)
    rig.add("pause", ev, 40)
    await rig.drain()
    call = fake_trakt.scrobbles()[0]
    assert call.status == 201 and call.body["show"]["ids"] == {"tvdb": 73871}
    assert call.body["episode"] == {"season": 2, "number": 15}


async def test_plex_guid_without_ids_found_by_title_and_year(rig: Rig, fake_trakt: FakeTrakt) -> None:
    ev = plex.parse("application/json", fixture_bytes("plex_media.rate_movie.json"))
    assert isinstance(ev, Event)
    rig.add("start", replace(ev, action="start"), 3)
    await rig.drain()
    calls = [(c.method, c.path, c.query, c.status) for c in fake_trakt.calls]
    assert calls == [("POST", "/scrobble/start", "", 404),
                     ("GET", "/search/movie", "query=The Harder They Fall&years=1956", 200),
                     ("POST", "/scrobble/start", "", 201)]


async def test_no_match_is_final_and_says_what_was_tried(rig: Rig, fake_trakt: FakeTrakt,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    ev = replace(MOVIE, title="No Such Film", year=1900, ids=Ids(imdb="tt9999999"))
    rig.add("stop", ev, 90)
    await rig.drain()
    assert rig.pending() == 0 and rig.counters.failed == 1
    text = capsys.readouterr()
    combined = text.out + text.err
    assert "no match on Trakt" in combined and "/search/imdb/tt9999999" in combined


async def test_stale_start_dropped_and_late_stop_goes_to_history(rig: Rig, fake_trakt: FakeTrakt) -> None:
    now = time.time()
    rig.add("start", replace(MOVIE, action="start"), 10, at=now - 7200)  # 2 h old, 1 h 48 min left
    rig.add("pause", replace(MOVIE, action="pause", duration_s=None), 50, at=now - 5 * 3600)
    rig.add("stop", MOVIE, 95, at=now - 1800)
    await rig.drain()
    assert fake_trakt.scrobbles() == []
    [history] = fake_trakt.posts("/sync/history")
    assert history.status == 201
    watched_at = history.body["movies"][0]["watched_at"]
    assert watched_at == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 1800)) + watched_at[19:]
    assert rig.counters.sent == 1


async def test_late_stop_after_an_unanswered_attempt_checks_history_first(rig: Rig, fake_trakt: FakeTrakt) -> None:
    rig.add("stop", MOVIE, 95)
    entry = rig.head()
    assert entry is not None
    # one attempt gets no answer (dropped connection), the retries hit an outage
    fake_trakt.drop = 1
    fake_trakt.outage_until = time.time() + 3600
    await rig.lane.deliver_one(entry)
    entry = rig.head()
    assert entry is not None and entry.attempted
    # Trakt did record the unanswered one; twenty minutes later Trakt is back
    rig.store._db.execute("UPDATE outbox SET next_attempt_at = 0")
    rig.lane.clock = lambda: clocks.now() + 1200
    fake_trakt.history.append(("movie:28", entry.created_at + 1))
    fake_trakt.outage_until = 0
    await rig.drain()
    assert fake_trakt.posts("/sync/history") == [] and rig.pending() == 0
    gets = [c.path for c in fake_trakt.calls if c.method == "GET"]
    assert gets == ["/search/imdb/tt2015381", "/sync/history/movies/28"]
    assert len(fake_trakt.history) == 1


async def test_late_stop_not_in_history_is_added(rig: Rig, fake_trakt: FakeTrakt) -> None:
    rig.add("stop", MOVIE, 95, time.time() - 1200)
    rig.store._db.execute("UPDATE outbox SET attempted = 1")
    await rig.drain()
    [history] = fake_trakt.posts("/sync/history")
    assert history.status == 201 and [k for k, _ in fake_trakt.history] == ["movie:28"]


async def test_recent_start_is_not_stale(rig: Rig, fake_trakt: FakeTrakt) -> None:
    rig.add("start", replace(MOVIE, action="start"), 10, at=time.time() - 600)
    await rig.drain()
    assert [c.status for c in fake_trakt.scrobbles()] == [201]


@pytest.mark.parametrize("enabled", [True, False])
async def test_watchlist_autoremove(fake_trakt: FakeTrakt, tmp_path: Path, enabled: bool) -> None:
    rig = Rig(fake_trakt, tmp_path, options=Options(watchlist_autoremove_movies=enabled))
    rig.add("stop", MOVIE, 95)
    rig.add("stop", EPISODE, 95)
    await rig.drain()
    removes = fake_trakt.posts("/sync/watchlist/remove")
    if enabled:
        assert [c.body for c in removes] == [{"movies": [{"title": "Guardians of the Galaxy", "year": 2014,
                                                          "ids": {"imdb": "tt2015381"}}]}]
    else:
        assert removes == []
    await rig.close()


async def test_ratings_and_removal(rig: Rig, fake_trakt: FakeTrakt) -> None:
    ev = replace(MOVIE, action="rate", rating=8)
    rig.add("rate", ev, 0)
    rig.add("rate", replace(ev, rating=None), 0)
    await rig.drain()
    [rate] = [c for c in fake_trakt.posts("/sync/ratings") if c.path == "/sync/ratings"]
    [remove] = fake_trakt.posts("/sync/ratings/remove")
    assert rate.body["movies"][0]["rating"] == 8 and "rated_at" in rate.body["movies"][0]
    assert "rating" not in remove.body["movies"][0]


async def test_sync_not_found_falls_back(rig: Rig, fake_trakt: FakeTrakt) -> None:
    # the fake, like Trakt's contract, matches episodes by trakt/tvdb ids only
    ev = replace(EPISODE, action="rate", rating=9, ids=Ids(tmdb=62085), show_ids=Ids(tvdb=81189))
    rig.add("rate", ev, 0)
    await rig.drain()
    posts = fake_trakt.posts("/sync/ratings")
    assert len(posts) == 2 and posts[1].body["shows"][0]["seasons"][0]["episodes"][0]["rating"] == 9
    assert posts[0].answer["not_found"]["episodes"] and not posts[1].answer["not_found"]["shows"]


async def test_dry_run_sends_nothing(fake_trakt: FakeTrakt, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    rig = Rig(fake_trakt, tmp_path, options=Options(dry_run=True))
    rig.add("stop", MOVIE, 95)
    await rig.drain()
    assert fake_trakt.calls == [] and rig.pending() == 0 and rig.counters.would_send == 1
    out = capsys.readouterr()
    assert "trakt_would_send" in out.out + out.err
    await rig.close()


async def test_history_check_allows_for_a_clock_that_runs_ahead(rig: Rig, fake_trakt: FakeTrakt) -> None:
    """The earlier attempt landed with Trakt's time, 90 s before this host's clock says."""
    rig.add("stop", MOVIE, 95, time.time() - 1200)
    rig.store._db.execute("UPDATE outbox SET attempted = 1")
    fake_trakt.history.append(("movie:28", time.time() - 1200 - 90))
    await rig.drain()
    assert fake_trakt.posts("/sync/history") == [] and rig.pending() == 0
    assert len(fake_trakt.history) == 1


async def test_a_refused_api_key_keeps_the_entry(fake_trakt: FakeTrakt, tmp_path: Path) -> None:
    """403 is about the app (trakt.client_id), not the item: never final, nothing dropped."""
    rig = Rig(fake_trakt, tmp_path)
    fake_trakt.client_id = "another-app"
    rig.add("stop", MOVIE, 95)
    await rig.drain(limit=1)
    entry = rig.head()
    assert entry is not None and entry.attempts == 1 and "client_id" in (entry.last_error or "")
    assert rig.counters.failed == 0
    fake_trakt.client_id = "test-client-id"
    rig.store._db.execute("UPDATE outbox SET next_attempt_at = 0")
    await rig.drain()
    assert rig.pending() == 0 and len(fake_trakt.watched_stops()) == 1
    await rig.close()
