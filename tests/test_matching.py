"""Issue 14, end to end in one process: real-shaped payloads through the parsers, the rules,
the outbox and the sender, against the fake Trakt; each test asserts the exact Trakt calls.

Anime by absolute number (HAMA guids, an Absolute-Series-Scanner library, a Jellyfin library
without seasons), multi-episode files (Jellyfin and Emby), one viewing across two devices,
starts that repeat themselves, Plex's own streaming catalogue, and marks made by hand.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cwhook.config.schema import ScrobbleConfig
from cwhook.kernel.event import Event, Ignored
from cwhook.scrobble.rules import Decision, Rules
from cwhook.sources import emby, jellyfin, plex
from cwhook.state.store import AsyncStore, NewEntry, Store
from cwhook.status.health import Counters
from cwhook.trakt.client import NotFound, RetryPolicy, TraktClient
from cwhook.trakt.delivery import Lane, Options
from tests.conftest import fixture_json
from tests.faketrakt import FakeTrakt

PARSERS = {"plex": plex.parse, "jellyfin": jellyfin.parse, "emby": emby.parse}
FAST = RetryPolicy(attempts=3, initial=0.05, maximum=0.2, jitter=0.01)
R = "reconstructed/"


class Pipeline:
    """What the daemon does with one webhook after another, with the rules' clock in our hands."""

    def __init__(self, fake: FakeTrakt, tmp: Path, settings: ScrobbleConfig | None = None) -> None:
        self.token, _, _ = fake.issue_tokens()
        self.fake = fake
        self.rules = Rules(settings or ScrobbleConfig(pause_debounce_seconds=5))
        self.outbox = Store(tmp / "state")
        self.db = AsyncStore(self.outbox)
        self.client = TraktClient(fake.url, lambda: ("test-client-id", self.token), None, FAST,
                                  post_interval=0)  # the 1 POST/s pacing is tested elsewhere
        self.sender = Lane("default", self.client, self.db, Counters(), lambda: Options(), lambda: None)
        self.decisions: list[Decision] = []

    def post(self, server: str, payload: dict[str, Any], at: float) -> list[Decision]:
        event = PARSERS[server]("application/json", json.dumps(payload).encode(), at)
        assert isinstance(event, Event), event
        return self._store(self.rules.tick(at) + self.rules.handle(event, at))

    def tick(self, at: float) -> list[Decision]:
        return self._store(self.rules.tick(at))

    def _store(self, decisions: list[Decision]) -> list[Decision]:
        for d in decisions:
            if d.send is not None:
                self.outbox.decide([NewEntry(d.send.verb, d.send.event, d.send.progress, time.time())], 0)[0]
        self.decisions += decisions
        return decisions

    async def deliver(self) -> None:
        for _ in range(50):
            heads = self.outbox.heads("default")
            if not heads:
                return
            entry = heads[0]
            await self.sender.deliver_one(entry)
        raise AssertionError("the outbox did not drain")

    def calls(self) -> list[tuple[Any, ...]]:
        """Every call: (method, path[?query], body without progress, progress, status)."""
        out: list[tuple[Any, ...]] = []
        for c in self.fake.calls:
            path = c.path + (f"?{c.query}" if c.query else "")
            body = dict(c.body) if isinstance(c.body, dict) else c.body
            progress = body.pop("progress", None) if isinstance(body, dict) else None
            out.append((c.method, path, body, progress, c.status))
        return out

    def reasons(self) -> list[str]:
        return [d.reason for d in self.decisions]

    async def close(self) -> None:
        await self.client.close()
        self.db.close()


@pytest.fixture
async def pipe(fake_trakt: FakeTrakt, tmp_path: Path) -> Any:
    fake_trakt.rate_limit = False
    p = Pipeline(fake_trakt, tmp_path)
    yield p
    await p.close()


def plex_at(name: str, event: str | None = None, percent: float | None = None,
            player: str | None = None) -> dict[str, Any]:
    data = fixture_json(name)
    if event is not None:
        data["event"] = event
    if percent is not None:
        data["Metadata"]["viewOffset"] = round(data["Metadata"]["duration"] * percent / 100)
    if player is not None:
        data["Player"]["uuid"] = player
    return data


ONE_PIECE = {"title": "One Piece", "ids": {"tvdb": 81797}}


# --- the fake Trakt, as the real one -------------------------------------------------------


async def test_fake_trakt_matches_absolute_numbers_only_as_such(pipe: Pipeline) -> None:
    show = {"ids": {"tvdb": 81797}}
    for episode, status in [({"season": 25, "number": 1000}, 404),  # the arc is no Trakt season
                            ({"season": 1, "number": 1000}, 404),  # nor is season 1 of an ASS library
                            ({"number_abs": 1000}, 201),
                            ({"season": 21, "number": 108}, 201),
                            ({"number_abs": 5000}, 404)]:
        try:
            resp = await pipe.client.request("POST", "/scrobble/start", {"show": show, "episode": episode,
                                                                          "progress": 1})
        except NotFound:
            assert status == 404, episode
        else:
            assert resp.status == status, episode
    answer = pipe.fake.calls[2].answer
    assert answer["episode"] == {"season": 21, "number": 108, "number_abs": 1000,
                                 "ids": {"trakt": 91, "tvdb": 8790411}}


# --- anime by absolute number ------------------------------------------------------------------


async def test_hama_tvdb4_episode_by_show_id_and_absolute_number(pipe: Pipeline) -> None:
    name = R + "plex_media.play_episode_hama-tvdb4.RECONSTRUCTED.json"
    pipe.post("plex", plex_at(name), 0)
    pipe.post("plex", plex_at(name, "media.stop", 97), 1400)
    await pipe.deliver()
    assert pipe.calls() == [
        ("POST", "/scrobble/start", {"show": ONE_PIECE, "episode": {"number_abs": 1000}}, 1.04, 201),
        # the start's answer named the episode: what follows goes by its Trakt id
        ("POST", "/scrobble/stop", {"episode": {"ids": {"trakt": 91}}}, 97, 201),
    ]
    assert pipe.fake.history[0][0] == "episode:91"
    # a rating of it later can be sent to /sync, which has no absolute numbers
    rated = plex_at(name, "media.rate")
    rated["rating"] = "8"
    pipe.post("plex", rated, 1500)
    await pipe.deliver()
    assert pipe.calls()[-1] == ("POST", "/sync/ratings", {"episodes": [
        {"ids": {"trakt": 91}, "rating": 8, "rated_at": pipe.calls()[-1][2]["episodes"][0]["rated_at"]}]},
        None, 201)


async def test_hama_show_unknown_by_id_found_by_title(pipe: Pipeline) -> None:
    name = R + "plex_media.play_episode_hama-tvdb4.RECONSTRUCTED.json"
    data = plex_at(name, "media.scrobble", 92)
    for key in ("guid", "parentGuid", "grandparentGuid"):  # an id Trakt does not know
        data["Metadata"][key] = data["Metadata"][key].replace("81797", "99999999")
    pipe.post("plex", data, 0)
    await pipe.deliver()
    assert pipe.calls() == [
        ("POST", "/scrobble/stop", {"show": {"title": "One Piece", "ids": {"tvdb": 99999999}},
                                    "episode": {"number_abs": 1000}}, 92, 404),
        ("GET", "/search/tvdb/99999999?type=show", None, None, 200),
        ("GET", "/search/show?query=One Piece", None, None, 200),
        ("POST", "/scrobble/stop", {"show": {"ids": {"trakt": 5}}, "episode": {"number_abs": 1000}}, 92, 201),
    ]


async def test_absolute_series_scanner_library(pipe: Pipeline) -> None:
    """HAMA's AniDB mode: season 1, episodes 1..n; Trakt keeps TVDB's seasons."""
    pipe.post("plex", plex_at(R + "plex_media.stop_episode_ass-hama-anidb.RECONSTRUCTED.json"), 0)
    await pipe.deliver()
    by_title = {"title": "One Piece"}
    assert pipe.calls() == [
        ("POST", "/scrobble/stop", {"show": by_title, "episode": {"season": 1, "number": 1001}}, 95.97, 404),
        ("POST", "/scrobble/stop", {"show": by_title, "episode": {"number_abs": 1001}}, 95.97, 404),
        ("GET", "/search/show?query=One Piece", None, None, 200),
        ("POST", "/scrobble/stop", {"show": {"ids": {"trakt": 5}}, "episode": {"season": 1, "number": 1001}},
         95.97, 404),
        ("POST", "/scrobble/stop", {"show": {"ids": {"trakt": 5}}, "episode": {"number_abs": 1001}}, 95.97, 201),
    ]
    assert [k for k, _ in pipe.fake.history] == ["episode:92"]


async def test_jellyfin_anime_library_without_seasons(pipe: Pipeline) -> None:
    data = fixture_json(R + "jellyfin_PlaybackStop_episode.RECONSTRUCTED.json")
    data.update(SeriesName="One Piece", Year=1999, EpisodeNumber=1000, Name="Episode 1000")
    for key in ("SeasonNumber", "Provider_tvdb", "Provider_imdb", "Provider_tmdb"):
        data.pop(key)
    pipe.post("jellyfin", data, 0)
    await pipe.deliver()
    assert pipe.calls() == [
        ("POST", "/scrobble/stop", {"show": {"title": "One Piece", "year": 1999},
                                    "episode": {"number_abs": 1000}}, 100, 404),
        ("GET", "/search/show?query=One Piece&years=1999", None, None, 200),
        ("POST", "/scrobble/stop", {"show": {"ids": {"trakt": 5}}, "episode": {"number_abs": 1000}}, 100, 201),
    ]


# --- multi-episode files ----------------------------------------------------------------------------


async def test_jellyfin_double_episode(pipe: Pipeline) -> None:
    stop = fixture_json(R + "jellyfin_PlaybackStop_episode_double.RECONSTRUCTED.json")
    runtime = stop["RunTimeTicks"]

    def at(kind: str, percent: float, paused: bool = False) -> dict[str, Any]:
        data = {**stop, "NotificationType": kind, "IsPaused": paused,
                "PlaybackPositionTicks": round(runtime * percent / 100)}
        data.pop("PlayedToCompletion")
        return data

    pipe.post("jellyfin", at("PlaybackStart", 0), 0)
    pipe.post("jellyfin", at("PlaybackProgress", 30, paused=True), 1900)
    pipe.tick(1906)
    pipe.post("jellyfin", at("PlaybackProgress", 30), 2000)
    pipe.post("jellyfin", at("PlaybackProgress", 75, paused=True), 4800)
    pipe.tick(4806)
    pipe.post("jellyfin", at("PlaybackProgress", 75), 4900)
    pipe.post("jellyfin", stop, 6300)  # PlayedToCompletion
    pipe.post("jellyfin", stop, 6310)  # sent again: the viewing is already scrobbled
    await pipe.deliver()
    s1e1 = {"show": {"ids": {"trakt": 1}}, "episode": {"season": 1, "number": 1}}
    s1e2 = {"show": {"ids": {"trakt": 1}}, "episode": {"season": 1, "number": 2}}
    by_title = {"title": "Breaking Bad", "year": 2008}
    assert pipe.calls() == [
        # the first episode, named by its show (Jellyfin gives no series ids: found by title)
        ("POST", "/scrobble/start", {"show": by_title, "episode": {"season": 1, "number": 1}}, 0, 404),
        ("GET", "/search/show?query=Breaking Bad&years=2008", None, None, 200),
        ("POST", "/scrobble/start", s1e1, 0, 201),
        ("POST", "/scrobble/pause", s1e1, 60, 201),  # 30 % of the file = 60 % of episode 1
        ("POST", "/scrobble/start", s1e1, 60, 201),
        # 75 % of the file = half of episode 2
        ("POST", "/scrobble/pause", {"show": by_title, "episode": {"season": 1, "number": 2}}, 50, 404),
        ("GET", "/search/show?query=Breaking Bad&years=2008", None, None, 200),
        ("POST", "/scrobble/pause", s1e2, 50, 201),
        ("POST", "/scrobble/start", s1e2, 50, 201),
        # watched to the end: both episodes, each once
        ("POST", "/scrobble/stop", s1e1, 100, 201),
        ("POST", "/scrobble/stop", s1e2, 100, 201),
    ]
    assert sorted(k for k, _ in pipe.fake.history) == ["episode:16", "episode:17"]
    assert pipe.reasons()[-1] == "already_watched"


async def test_emby_double_episode(pipe: Pipeline) -> None:
    stop = fixture_json(R + "emby_playback.stop_episode_double.RECONSTRUCTED.json")
    mid = json.loads(json.dumps(stop))
    mid["Event"] = "playback.stop"
    mid["PlaybackInfo"].update(PlayedToCompletion=False,
                               PositionTicks=round(stop["Item"]["RunTimeTicks"] * 0.7))
    pipe.post("emby", mid, 0)  # stopped in the middle of the second episode
    resumed = json.loads(json.dumps(mid))
    resumed["Event"] = "playback.start"
    del resumed["PlaybackInfo"]["PlayedToCompletion"]
    pipe.post("emby", resumed, 100)
    pipe.post("emby", stop, 900)
    await pipe.deliver()
    s2e16 = {"show": {"ids": {"trakt": 2}}, "episode": {"season": 2, "number": 16}}
    s2e15 = {"show": {"ids": {"trakt": 2}}, "episode": {"season": 2, "number": 15}}
    futurama = {"title": "Futurama"}
    assert pipe.calls() == [
        ("POST", "/scrobble/pause", {"show": futurama, "episode": {"season": 2, "number": 16}}, 40, 404),
        ("GET", "/search/show?query=Futurama", None, None, 200),
        ("POST", "/scrobble/pause", s2e16, 40, 201),
        ("POST", "/scrobble/start", s2e16, 40, 201),
        ("POST", "/scrobble/stop", {"show": futurama, "episode": {"season": 2, "number": 15}}, 100, 404),
        ("GET", "/search/show?query=Futurama", None, None, 200),
        ("POST", "/scrobble/stop", s2e15, 100, 201),
        ("POST", "/scrobble/stop", s2e16, 100, 201),
    ]
    assert sorted(k for k, _ in pipe.fake.history) == ["episode:50", "episode:51"]


# --- one viewing across two devices, repeated starts -------------------------------------------------


async def test_two_devices_one_viewing(pipe: Pipeline) -> None:
    name = "plex_media.scrobble_episode.json"
    pipe.post("plex", plex_at(name, "media.play", 0, player="phone"), 0)
    pipe.post("plex", plex_at(name, "media.pause", 38, player="phone"), 570)
    pipe.tick(580)
    pipe.post("plex", plex_at(name, "media.resume", 38, player="tv"), 900)
    pipe.post("plex", plex_at(name, "media.stop", 97, player="tv"), 1800)
    # the phone's stale stop at 38 % arrives after the TV's watched stop
    out = pipe.post("plex", plex_at(name, "media.stop", 38, player="phone"), 1900)
    assert [(d.reason, d.notes) for d in out] == [("already_watched", ("watched_elsewhere",))]
    await pipe.deliver()
    by_ids = {"episode": {"ids": {"imdb": "tt14765720", "tmdb": 3087250, "tvdb": 8530933}}}
    assert pipe.calls() == [
        ("POST", "/scrobble/start", by_ids, 0, 201),
        ("POST", "/scrobble/pause", by_ids, 38, 201),
        ("POST", "/scrobble/start", by_ids, 38, 201),
        ("POST", "/scrobble/stop", by_ids, 97, 201),
    ]


async def test_plex_repeated_play_and_resume(pipe: Pipeline) -> None:
    name = "plex_media.scrobble_episode.json"  # 1500 s: 15 s per percent
    pipe.post("plex", plex_at(name, "media.play", 10), 0)
    pipe.post("plex", plex_at(name, "media.resume", 10), 3)  # Plex says it again
    pipe.post("plex", plex_at(name, "media.resume", 13.5), 60)  # a client retrying, a minute on
    pipe.post("plex", plex_at(name, "media.play", 50), 70)  # a seek
    await pipe.deliver()
    assert pipe.reasons() == ["sent", "already_playing", "already_playing", "sent"]
    assert [(c[1], c[3]) for c in pipe.calls()] == [("/scrobble/start", 10), ("/scrobble/start", 50)]


# --- Plex's own streaming catalogue --------------------------------------------------------------------


async def test_plex_catalogue_item_scrobbles_by_title_and_year(pipe: Pipeline) -> None:
    pipe.post("plex", plex_at(R + "plex_media.scrobble_movie_vod.RECONSTRUCTED.json"), 0)
    await pipe.deliver()
    assert pipe.calls() == [
        ("POST", "/scrobble/stop", {"movie": {"title": "The Harder They Fall", "year": 1956}}, 91.74, 404),
        ("GET", "/search/movie?query=The Harder They Fall&years=1956", None, None, 200),
        ("POST", "/scrobble/stop", {"movie": {"ids": {"trakt": 1005}}}, 91.74, 201),
    ]


async def test_plex_catalogue_item_ignored_when_asked(fake_trakt: FakeTrakt, tmp_path: Path) -> None:
    pipe = Pipeline(fake_trakt, tmp_path, ScrobbleConfig(ignore_plex_vod=True))
    out = pipe.post("plex", plex_at(R + "plex_media.scrobble_movie_vod.RECONSTRUCTED.json"), 0)
    assert [d.reason for d in out] == ["vod_ignored"]
    # a library item of the same server is not concerned
    pipe.post("plex", plex_at("plex_media.scrobble_movie.json"), 10)
    await pipe.deliver()
    assert [(c[1], c[4]) for c in pipe.calls()] == [("/scrobble/stop", 201)]
    await pipe.close()


# --- marks made by hand ----------------------------------------------------------------------------------


async def test_marks_by_hand_ignored_by_default(pipe: Pipeline) -> None:
    pipe.post("jellyfin", fixture_json(R + "jellyfin_UserDataSaved_movie.RECONSTRUCTED.json"), 0)
    pipe.post("emby", fixture_json(R + "emby_item.markplayed_episode.RECONSTRUCTED.json"), 1)
    await pipe.deliver()
    assert pipe.reasons() == ["manual_marks_disabled", "manual_marks_disabled"]
    assert pipe.calls() == []


async def test_marks_by_hand_go_to_the_history(fake_trakt: FakeTrakt, tmp_path: Path) -> None:
    fake_trakt.rate_limit = False
    pipe = Pipeline(fake_trakt, tmp_path, ScrobbleConfig(sync_manual_marks=True))
    marked = fixture_json(R + "jellyfin_UserDataSaved_movie.RECONSTRUCTED.json")
    pipe.post("jellyfin", marked, 0)
    await pipe.deliver()
    assert [k for k, _ in fake_trakt.history] == ["movie:28"]
    pipe.post("jellyfin", {**marked, "Played": False}, 60)
    await pipe.deliver()
    assert fake_trakt.history == []
    episode = fixture_json(R + "emby_item.markplayed_episode.RECONSTRUCTED.json")
    pipe.post("emby", episode, 120)
    pipe.post("emby", {**episode, "Event": "item.markunplayed"}, 180)
    await pipe.deliver()
    calls = pipe.calls()
    watched_at = [c[2][k][0].pop("watched_at") for c, k in ((calls[0], "movies"), (calls[2], "episodes"))]
    assert watched_at[0].endswith("Z") and watched_at[0] != watched_at[1]
    guardians = {"title": "Guardians of the Galaxy", "year": 2014, "ids": {"imdb": "tt2015381", "tmdb": 118340}}
    pilot = {"ids": {"imdb": "tt0959621", "tmdb": 62085, "tvdb": 349232}}
    assert calls == [
        ("POST", "/sync/history", {"movies": [guardians]}, None, 201),
        ("POST", "/sync/history/remove", {"movies": [guardians]}, None, 200),
        ("POST", "/sync/history", {"episodes": [pilot]}, None, 201),
        ("POST", "/sync/history/remove", {"episodes": [pilot]}, None, 200),
    ]
    assert fake_trakt.history == []
    await pipe.close()


def test_marks_are_not_playback() -> None:
    """A Jellyfin UserDataSaved from playback itself never reaches the rules."""
    data = fixture_json(R + "jellyfin_UserDataSaved_movie.RECONSTRUCTED.json")
    result = jellyfin.parse("text/plain", json.dumps({**data, "SaveReason": "PlaybackFinished"}).encode())
    assert isinstance(result, Ignored)
    ev = jellyfin.parse("text/plain", json.dumps(data).encode())
    assert isinstance(ev, Event) and replace(ev, action="stop").session_key == ev.session_key


async def test_absolute_episode_never_matched_cannot_go_to_sync(pipe: Pipeline,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A rating for an anime episode Trakt never saw scrobbled: /sync has no absolute numbers
    and nothing names the episode otherwise, so it fails for good, saying why, without a crash."""
    rated = plex_at(R + "plex_media.play_episode_hama-tvdb4.RECONSTRUCTED.json", "media.rate")
    rated["rating"] = "8"
    pipe.post("plex", rated, 0)
    await pipe.deliver()
    assert pipe.calls() == [
        ("GET", "/search/tvdb/81797?type=show", None, None, 200),
        ("GET", "/search/show?query=One Piece", None, None, 200),
    ]
    assert pipe.sender.counters.failed == 1 and pipe.outbox.stats.pending == 0
    out = capsys.readouterr()
    assert "no match on Trakt" in out.out + out.err and "cannot be sent there" in out.out + out.err


async def test_absolute_files_under_plex_tvdb_agent(pipe: Pipeline) -> None:
    """Absolutely numbered files with Plex's own TVDB agent land in season 1 (S01E1000): the
    show is known, the number is not a season-1 one, so it is tried as an absolute number."""
    data = plex_at("plex_media.pause_episode_legacy-tvdb-agent.json", "media.stop")
    data["Metadata"].update(guid="com.plexapp.agents.thetvdb://81797/1/1000?lang=en", grandparentTitle="One Piece",
                            parentIndex=1, index=1000, duration=1440000, viewOffset=1400000)
    pipe.post("plex", data, 0)
    await pipe.deliver()
    assert pipe.calls() == [
        ("POST", "/scrobble/stop", {"show": ONE_PIECE, "episode": {"season": 1, "number": 1000}}, 97.22, 404),
        ("GET", "/search/tvdb/81797?type=show", None, None, 200),
        ("POST", "/scrobble/stop", {"show": {"ids": {"trakt": 5}}, "episode": {"season": 1, "number": 1000}},
         97.22, 404),
        ("POST", "/scrobble/stop", {"show": {"ids": {"trakt": 5}}, "episode": {"number_abs": 1000}}, 97.22, 201),
    ]
