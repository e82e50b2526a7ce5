"""The three payload parsers over every real sample, plus edge cases."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cwhook.kernel.event import BadPayload, Event, Ids, Ignored
from cwhook.sources import emby, jellyfin, plex
from cwhook.sources.plex import HamaGuid, parse_hama_guid, parse_legacy_guid
from cwhook.sources.registry import SOURCES
from tests.conftest import fixture_bytes, fixture_json

PARSERS = {name: source.parse for name, source in SOURCES.items()}

# fixture -> expected fields of the Event (or the ignore reason)
CASES: list[tuple[str, dict[str, Any] | str]] = [
    ("plex_media.scrobble_movie.json", dict(
        action="scrobble", kind="movie", title="Big Trouble in Little China", year=1986,
        ids=Ids(imdb="tt0090728", tmdb=6978, tvdb=1876), progress=None, duration_s=5940.0,
        user_name="title", user_id="1", server_id="27a04b118b1bf1f25f8e99306785453623e18b67")),
    ("plex_media.scrobble_episode.json", dict(
        action="scrobble", kind="episode", title="The World's Strongest Senior",
        ids=Ids(imdb="tt14765720", tmdb=3087250, tvdb=8530933), show_title="范马刃牙",
        show_ids=Ids(), season=1, number=1, duration_s=1500.0, user_name="播放",
        user_id="31646104", player_id="wu0uoa1ujfq90t0c5p9f7fw0", item_key="40294")),
    ("plex_media.pause_episode_legacy-tvdb-agent.json", dict(
        action="pause", kind="episode", ids=Ids(), show_title="Futurama", show_ids=Ids(tvdb=73871),
        season=2, number=15, progress=None, user_name="testyboi", user_uuid="asdf")),
    ("plex_media.stop_movie_legacy-imdb-agent.json", dict(
        action="stop", kind="movie", title="Barry Lyndon", year=1975, ids=Ids(imdb="tt0072684"),
        progress=None, duration_s=11040.0, player_id="uwatm8")),
    ("plex_media.rate_movie.json", dict(
        action="rate", kind="movie", title="The Harder They Fall", year=1956, ids=Ids(), rating=10)),
    ("plex_media.play_clip_trailer.json", "media_type_not_supported"),
    ("plex_media.play_track_plex-docs-example.json", "media_type_not_supported"),
    ("jellyfin_PlaybackStop_movie.json", dict(
        action="stop", kind="movie", title="The Menu", year=2022,
        ids=Ids(imdb="tt9764362", tmdb=593643), progress=100.0, paused=False,
        user_name="jellyfin", user_id="50e1109a03fd4e13a3a5dd9bb27e08ec",
        item_key="9871a124b152901edc3aafa0f374d14e", server_id="e7f44197df844fc4a503f7366b746adc")),
    ("reconstructed/jellyfin_PlaybackProgress_episode_paused.RECONSTRUCTED.json", dict(
        action="progress", kind="episode", title="Pilot", year=None, show_title="Breaking Bad",
        show_year=2008, season=1, number=1, ids=Ids(imdb="tt0959621", tmdb=62085, tvdb=349232),
        paused=True, user_name="alice")),
    ("reconstructed/jellyfin_PlaybackStop_episode.RECONSTRUCTED.json", dict(
        action="stop", kind="episode", show_title="Breaking Bad", season=1, number=1, progress=100.0)),
    ("reconstructed/jellyfin_template_scrobbler.rendered_PlaybackStop_episode.RECONSTRUCTED.json", dict(
        action="stop", kind="episode", show_title="Breaking Bad", show_year=2008, season=1, number=1,
        ids=Ids(imdb="tt0959621", tmdb=62085, tvdb=349232), progress=100.0, paused=False,
        # dashed template Guids normalize to the Send-All-Properties form
        user_id="f5be1b729aac4ad3a5eea0264d12a524", item_key="b67f1b7fdf783febee0a45b7dca2efdb")),
    ("reconstructed/jellyfin_UserDataSaved_movie.RECONSTRUCTED.json", dict(
        action="mark_watched", kind="movie", title="Guardians of the Galaxy", year=2014,
        ids=Ids(imdb="tt2015381", tmdb=118340), progress=None, user_name="alice",
        user_id="f5be1b729aac4ad3a5eea0264d12a524", item_key="6a2f3c9d8e7b4a1f0c5d9e8f7a6b5c4d")),
    ("reconstructed/jellyfin_PlaybackStop_episode_double.RECONSTRUCTED.json", dict(
        action="stop", kind="episode", show_title="Breaking Bad", show_year=2008, season=1, number=1,
        number_end=2, number_abs=None, progress=100.0, duration_s=6378.024)),
    ("reconstructed/emby_playback.stop_episode_double.RECONSTRUCTED.json", dict(
        action="stop", kind="episode", show_title="Futurama", season=2, number=15, number_end=16,
        ids=Ids(imdb="tt0584424", tvdb=76546), progress=100.0, duration_s=2640.0)),
    ("reconstructed/emby_item.markplayed_episode.RECONSTRUCTED.json", dict(
        action="mark_watched", kind="episode", show_title="Breaking Bad", season=1, number=1,
        ids=Ids(imdb="tt0959621", tmdb=62085, tvdb=349232), progress=None, player_id=None,
        user_name="alice")),
    ("reconstructed/plex_media.play_episode_hama-tvdb4.RECONSTRUCTED.json", dict(
        action="start", kind="episode", show_title="One Piece", show_ids=Ids(tvdb=81797), ids=Ids(),
        season=None, number=None, number_abs=1000, vod=False)),
    ("reconstructed/plex_media.stop_episode_ass-hama-anidb.RECONSTRUCTED.json", dict(
        action="stop", kind="episode", show_title="One Piece", show_ids=Ids(), ids=Ids(),
        season=1, number=1001, number_abs=1001)),
    ("reconstructed/plex_media.scrobble_movie_vod.RECONSTRUCTED.json", dict(
        action="scrobble", kind="movie", title="The Harder They Fall", year=1956, ids=Ids(), vod=True)),
    ("emby_playback.start_episode.json", dict(
        action="start", kind="episode", title="第 11 集", year=2023, ids=Ids(tmdb=4533239),
        show_title="长风渡", season=1, number=11, user_name="admin",
        player_id="30239450-1748-4855-9799-de3544fc2744", item_key="240252")),
    ("emby_playback.stop_movie.json", dict(
        action="stop", kind="movie", title="2 Fast 2 Furious", year=2003,
        ids=Ids(imdb="tt0322259", tmdb=584, tvdb=20800))),
    ("reconstructed/emby_playback.pause_episode.RECONSTRUCTED.json", dict(
        action="pause", kind="episode", show_title="Breaking Bad", season=1, number=1)),
    ("reconstructed/emby_playback.stop_episode.RECONSTRUCTED.json", dict(
        action="stop", kind="episode", progress=100.0, user_name="alice")),
    ("reconstructed/emby_item.rate_episode.RECONSTRUCTED.json", "event_not_handled"),
    ("reconstructed/tautulli_play_movie.RECONSTRUCTED.json", dict(
        action="start", kind="movie", title="Guardians of the Galaxy", year=2014,
        ids=Ids(imdb="tt2015381", tmdb=118340), user_name="anna", user_id="1234567")),
    ("reconstructed/tautulli_watched_episode.RECONSTRUCTED.json", dict(
        action="scrobble", kind="episode", ids=Ids(), show_title="Breaking Bad",
        show_ids=Ids(imdb="tt0903747", tmdb=1396, tvdb=81189), season=1, number=1)),
]


def source_of(name: str) -> str:
    return name.split("/")[-1].split("_")[0]


@pytest.mark.parametrize(("name", "expected"), CASES, ids=[c[0] for c in CASES])
def test_real_samples(name: str, expected: dict[str, Any] | str) -> None:
    source = source_of(name)
    result = PARSERS[source]("application/json", fixture_bytes(name), 123.0)
    if isinstance(expected, str):
        assert isinstance(result, Ignored), result
        assert result.reason == expected
        return
    assert isinstance(result, Event), result
    assert result.source == source and result.received_at == 123.0
    for key, value in expected.items():
        assert getattr(result, key) == value, key


def test_every_fixture_is_in_the_table() -> None:
    from tests.conftest import FIXTURES

    names = {str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("*.json")
             if p.parent.name != "trakt"}
    assert names == {c[0] for c in CASES}


def test_progress_from_ticks_and_ms() -> None:
    emby_stop = fixture_json("emby_playback.stop_movie.json")
    ev = emby.parse("application/json", json.dumps(emby_stop).encode())
    assert isinstance(ev, Event)
    assert ev.progress == pytest.approx(4824965410 / 64558720000 * 100)
    assert ev.duration_s == pytest.approx(6455.872)
    data = fixture_json("plex_media.scrobble_movie.json")
    data["Metadata"]["viewOffset"] = 2970000
    ev = plex.parse("application/json", json.dumps(data).encode())
    assert isinstance(ev, Event) and ev.progress == pytest.approx(50.0)


def test_plex_multipart_payload_form_and_urlencoded() -> None:
    raw = fixture_bytes("plex_media.scrobble_movie.json")
    from urllib.parse import urlencode

    ev = plex.parse("application/x-www-form-urlencoded", urlencode({"payload": raw.decode()}).encode())
    assert isinstance(ev, Event) and ev.title == "Big Trouble in Little China"
    # movary's .http posts it unescaped: payload=<json>
    ev = plex.parse("application/x-www-form-urlencoded", b"payload=" + raw.replace(b"+", b"%2B"))
    assert isinstance(ev, Event) and ev.ids.imdb == "tt0090728"


def test_emby_form_data_field() -> None:
    raw = fixture_bytes("emby_playback.stop_movie.json")
    from urllib.parse import quote

    ev = emby.parse("application/x-www-form-urlencoded", b"data=" + quote(raw).encode())
    assert isinstance(ev, Event) and ev.title == "2 Fast 2 Furious"
    with pytest.raises(BadPayload, match="no 'data' field"):
        emby.parse("application/x-www-form-urlencoded", b"payload=%7B%7D")


def test_jellyfin_text_plain_and_generic_form() -> None:
    raw = fixture_bytes("jellyfin_PlaybackStop_movie.json")
    ev = jellyfin.parse("text/plain; charset=utf-8", raw)
    assert isinstance(ev, Event) and ev.title == "The Menu"
    # Generic Form: every value flattened to a string, urlencoded
    from urllib.parse import urlencode

    flat = {k: str(v) for k, v in json.loads(raw).items()}
    ev2 = jellyfin.parse("application/x-www-form-urlencoded", urlencode(flat).encode())
    assert isinstance(ev2, Event)
    assert (ev2.title, ev2.ids, ev2.progress, ev2.user_id) == (ev.title, ev.ids, ev.progress, ev.user_id)


def test_jellyfin_nested_provider_ids_any_case_and_string_numbers() -> None:
    body = {"notificationtype": "PlaybackStart", "ItemType": "episode", "SeriesName": "Breaking Bad",
            "SeasonNumber": "01", "EpisodeNumber": "001", "ProviderIds": {"TVDB": "349232", "Imdb": "959621"},
            "RunTimeTicks": "100", "PlaybackPositionTicks": "50", "IsPaused": "False",
            "NotificationUsername": "Alice", "DeviceId": "d1", "ItemId": "i1"}
    ev = jellyfin.parse("text/plain", json.dumps(body).encode())
    assert isinstance(ev, Event)
    assert ev.ids == Ids(imdb="tt0959621", tvdb=349232)
    assert (ev.season, ev.number, ev.progress, ev.paused) == (1, 1, 50.0, False)


def test_jellyfin_double_escaped_quotes_in_titles() -> None:
    body = {"NotificationType": "PlaybackStart", "ItemType": "Movie", "Name": 'The \\"Big\\" One',
            "Provider_imdb": "tt1"}
    ev = jellyfin.parse("application/json", json.dumps(body).encode())
    assert isinstance(ev, Event) and ev.title == 'The "Big" One'


def test_jellyfin_stop_at_zero_means_unknown() -> None:
    body = {"NotificationType": "PlaybackStop", "ItemType": "Movie", "Name": "X", "Provider_imdb": "tt1",
            "RunTimeTicks": 1000, "PlaybackPositionTicks": 0, "PlayedToCompletion": False}
    ev = jellyfin.parse("application/json", json.dumps(body).encode())
    assert isinstance(ev, Event) and ev.progress is None


@pytest.mark.parametrize(
    ("guid", "ids", "show_ids", "season", "number"),
    [
        ("com.plexapp.agents.imdb://tt0072684?lang=en", Ids(imdb="tt0072684"), Ids(), None, None),
        ("com.plexapp.agents.themoviedb://12345?lang=de", Ids(tmdb=12345), Ids(), None, None),
        ("com.plexapp.agents.thetvdb://73871/2/15?lang=en", Ids(), Ids(tvdb=73871), 2, 15),
        ("com.plexapp.agents.themoviedb://1396/1/1?lang=en", Ids(), Ids(tmdb=1396), 1, 1),
        ("com.plexapp.agents.hama://anidb-123/1/2?lang=en", Ids(), Ids(), None, None),
        ("com.plexapp.agents.none://abc", Ids(), Ids(), None, None),
        ("plex://movie/5d7768313c3c2a001fbcd1f0", Ids(), Ids(), None, None),
        ("local://1234", Ids(), Ids(), None, None),
        ("imdb://tt123", Ids(imdb="tt0000123"), Ids(), None, None),
        ("tmdb://55", Ids(tmdb=55), Ids(), None, None),
        (None, Ids(), Ids(), None, None),
    ],
)
def test_plex_legacy_guids(guid: str | None, ids: Ids, show_ids: Ids, season: int | None,
                           number: int | None) -> None:
    assert parse_legacy_guid(guid) == (ids, show_ids, season, number)


def test_plex_modern_guid_without_ids_falls_back_to_title() -> None:
    data = fixture_json("plex_media.rate_movie.json")
    data["event"] = "media.play"
    ev = plex.parse("application/json", json.dumps(data).encode())
    assert isinstance(ev, Event) and ev.ids == Ids() and ev.title == "The Harder They Fall"
    assert ev.year == 1956


def test_plex_rating_cleared_and_scaled() -> None:
    data = fixture_json("plex_media.rate_movie.json")
    for top, user, expected in [("10", 10.0, 10), ("7", None, 7), (None, 6.4, 6), ("0", 0.0, None),
                                (None, -1.0, None), (None, None, None), ("15", None, 10)]:
        data.pop("rating", None)
        data["Metadata"].pop("userRating", None)
        if top is not None:
            data["rating"] = top
        if user is not None:
            data["Metadata"]["userRating"] = user
        ev = plex.parse("application/json", json.dumps(data).encode())
        assert isinstance(ev, Event) and ev.rating == expected, (top, user)


def test_plex_show_and_season_ratings() -> None:
    data = fixture_json("plex_media.rate_movie.json")
    data["Metadata"].update(type="show", title="Futurama", guid="com.plexapp.agents.thetvdb://73871?lang=en")
    ev = plex.parse("application/json", json.dumps(data).encode())
    assert isinstance(ev, Event) and ev.kind == "show" and ev.ids == Ids(tvdb=73871)
    data["Metadata"].update(type="season", index=2, parentTitle="Futurama", title="Season 2")
    ev = plex.parse("application/json", json.dumps(data).encode())
    assert isinstance(ev, Event) and ev.kind == "season" and ev.season == 2
    assert ev.show_title == "Futurama"
    # shows are rated, never scrobbled
    data["event"] = "media.play"
    assert plex.parse("application/json", json.dumps(data).encode()) == Ignored(
        "media_type_not_supported", "Plex item type 'season' is not scrobbled to Trakt")


@pytest.mark.parametrize("event", ["library.new", "library.on.deck", "admin.database.backup",
                                   "device.new", "playback.started"])
def test_plex_non_playback_events_ignored(event: str) -> None:
    body = json.dumps({"event": event, "Metadata": {"type": "movie"}}).encode()
    result = plex.parse("application/json", body)
    assert isinstance(result, Ignored) and result.reason == "event_not_handled"


def test_nothing_to_identify() -> None:
    assert plex.parse("application/json", json.dumps(
        {"event": "media.play", "Metadata": {"type": "movie"}}).encode()) == Ignored(
        "no_ids", "movie has no ids and no title")
    r = plex.parse("application/json", json.dumps(
        {"event": "media.play", "Metadata": {"type": "episode", "title": "x"}}).encode())
    assert isinstance(r, Ignored) and r.reason == "no_ids"
    r = emby.parse("application/json", json.dumps(
        {"Event": "playback.start", "Item": {"Type": "Episode", "Name": "x"}}).encode())
    assert isinstance(r, Ignored) and r.reason == "no_ids"
    r = jellyfin.parse("application/json", json.dumps(
        {"NotificationType": "PlaybackStart", "ItemType": "Audio", "Name": "song"}).encode())
    assert isinstance(r, Ignored) and r.reason == "media_type_not_supported"


BAD = [
    (b"", "empty body"),
    (b"   ", "empty body"),
    (b"not json", "not JSON"),
    (b"[1, 2]", "not an object"),
    (b'"str"', "not an object"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (b'{"a":' * 100 + b"1" + b"}" * 100, "no '"),  # deep but harmless: just not a payload
    (b"{\"event\": ", "not JSON"),
]


@pytest.mark.parametrize("parser", list(PARSERS))
@pytest.mark.parametrize(("body", "detail"), BAD, ids=[d for _, d in BAD])
def test_bad_bodies(parser: str, body: bytes, detail: str) -> None:
    with pytest.raises(BadPayload, match=detail):
        PARSERS[parser]("application/json", body)


@pytest.mark.parametrize(("parser", "body", "detail"), [
    ("plex", {"no": "event"}, "no 'event'"),
    ("plex", {"event": "media.play"}, "no 'Metadata'"),
    ("plex", {"event": "media.play", "Metadata": "x"}, "no 'Metadata'"),
    ("jellyfin", {"Name": "x"}, "no 'NotificationType'"),
    ("emby", {"Item": {}}, "no 'Event'"),
    ("emby", {"Event": "playback.start", "Item": [1]}, "no 'Item'"),
])
def test_wrong_shape(parser: str, body: dict[str, Any], detail: str) -> None:
    with pytest.raises(BadPayload, match=detail):
        PARSERS[parser]("application/json", json.dumps(body).encode())


@pytest.mark.parametrize("parser", list(PARSERS))
def test_wrong_types_never_crash(parser: str) -> None:
    weird: list[Any] = [None, True, 1.5, -3, "x", [], {}, [{}], {"a": None}, "1e400", "nan", 10**30]
    bases = {
        "plex": fixture_json("plex_media.scrobble_episode.json"),
        "jellyfin": fixture_json("reconstructed/jellyfin_PlaybackProgress_episode_paused.RECONSTRUCTED.json"),
        "emby": fixture_json("reconstructed/emby_playback.pause_episode.RECONSTRUCTED.json"),
        "tautulli": fixture_json("reconstructed/tautulli_watched_episode.RECONSTRUCTED.json"),
    }
    base = bases[parser]

    def walk(obj: Any, path: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        out = [path] if path else []
        if isinstance(obj, dict):
            for k, v in obj.items():
                out += walk(v, (*path, k))
        return out

    for path in walk(base, ()):
        for value in weird:
            data = json.loads(json.dumps(base))
            target = data
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
            try:
                result = PARSERS[parser]("application/json", json.dumps(data).encode())
            except BadPayload:
                continue
            assert isinstance(result, (Event, Ignored))
            if isinstance(result, Event):
                assert result.progress is None or 0 <= result.progress <= 100
                json.dumps(result.summary())


def test_plex_legacy_grandparent_guid_gives_show_ids() -> None:
    data = fixture_json("plex_media.scrobble_episode.json")
    data["Metadata"].pop("Guid")
    data["Metadata"]["grandparentGuid"] = "com.plexapp.agents.thetvdb://398109?lang=en"
    ev = plex.parse("application/json", json.dumps(data).encode())
    assert isinstance(ev, Event) and ev.ids == Ids() and ev.show_ids == Ids(tvdb=398109)
    assert (ev.season, ev.number) == (1, 1)


def test_jellyfin_notification_type_any_case() -> None:
    body = {"NotificationType": "playbackstop", "ItemType": "Movie", "Name": "X", "Provider_imdb": "tt1",
            "PlayedToCompletion": "True"}
    ev = jellyfin.parse("text/plain", json.dumps(body).encode())
    assert isinstance(ev, Event) and ev.action == "stop" and ev.progress == 100.0


# --- anime numbering, multi-episode files, streaming catalogue, marks by hand ------------


@pytest.mark.parametrize(
    ("guid", "expected", "numbering"),
    [
        ("com.plexapp.agents.hama://tvdb4-81797/25/1000?lang=en",
         HamaGuid("tvdb", "4", Ids(tvdb=81797), 25, 1000), "absolute"),
        ("hama://tvdb4-81797/25/1000", HamaGuid("tvdb", "4", Ids(tvdb=81797), 25, 1000), "absolute"),
        ("com.plexapp.agents.hama://tvdb3-74796/5/100?lang=en",
         HamaGuid("tvdb", "3", Ids(tvdb=74796), 5, 100), "absolute"),
        ("com.plexapp.agents.hama://tvdb5-331753/2/30?lang=en",
         HamaGuid("tvdb", "5", Ids(tvdb=331753), 2, 30), "absolute"),
        # specials keep their season numbering in every mode
        ("com.plexapp.agents.hama://tvdb4-74796/0/3?lang=en",
         HamaGuid("tvdb", "4", Ids(tvdb=74796), 0, 3), "season"),
        ("com.plexapp.agents.hama://tvdb-305074/3/41?lang=en",
         HamaGuid("tvdb", "", Ids(tvdb=305074), 3, 41), "season"),
        ("com.plexapp.agents.hama://tvdb2-275039/2/5?lang=en",
         HamaGuid("tvdb", "2", Ids(tvdb=275039), 2, 5), "season"),
        ("com.plexapp.agents.hama://anidb-69/1/1000?lang=en", HamaGuid("anidb", "", Ids(), 1, 1000), "both"),
        ("com.plexapp.agents.hama://anidb2-7251/1/3?lang=en", HamaGuid("anidb", "2", Ids(), 1, 3), "season"),
        ("com.plexapp.agents.hama://anidb-15619?lang=en", HamaGuid("anidb", "", Ids(), None, None), "season"),
        ("com.plexapp.agents.hama://tsdb-1396/1/1?lang=en", HamaGuid("tsdb", "", Ids(tmdb=1396), 1, 1), "season"),
        ("com.plexapp.agents.hama://imdb-tt0245429?lang=en",
         HamaGuid("imdb", "", Ids(imdb="tt0245429"), None, None), "season"),
    ],
)
def test_hama_guids(guid: str, expected: HamaGuid, numbering: str) -> None:
    parsed = parse_hama_guid(guid)
    assert parsed == expected and parsed.numbering == numbering


@pytest.mark.parametrize("guid", [None, "", "plex://episode/615580a9fa828e7f1a0caabd",
                                  "com.plexapp.agents.thetvdb://73871/2/15?lang=en", "hama://", "hama://tvdb4"])
def test_not_hama_guids(guid: str | None) -> None:
    assert parse_hama_guid(guid) is None


def test_plex_hama_modes_in_payloads() -> None:
    data = fixture_json("reconstructed/plex_media.play_episode_hama-tvdb4.RECONSTRUCTED.json")
    ev = plex.parse("application/json", json.dumps(data).encode())
    assert isinstance(ev, Event) and ev.label() == "One Piece #1000"
    assert ev.summary()["number_abs"] == 1000
    # without grandparentGuid (older servers) the episode guid still names the show
    data["Metadata"].pop("grandparentGuid")
    ev = plex.parse("application/json", json.dumps(data).encode())
    assert isinstance(ev, Event) and ev.show_ids == Ids(tvdb=81797) and ev.number_abs == 1000
    # tvdb mode: TVDB seasons, an ordinary episode by show id and season/number
    data["Metadata"].update(guid="com.plexapp.agents.hama://tvdb-81797/21/108?lang=en", parentIndex=21,
                            index=108)
    ev = plex.parse("application/json", json.dumps(data).encode())
    assert isinstance(ev, Event)
    assert (ev.show_ids, ev.season, ev.number, ev.number_abs) == (Ids(tvdb=81797), 21, 108, None)
    # a special in an absolute mode keeps its season numbering
    data["Metadata"].update(guid="com.plexapp.agents.hama://tvdb4-81797/0/3?lang=en", parentIndex=0,
                            index=3)
    ev = plex.parse("application/json", json.dumps(data).encode())
    assert isinstance(ev, Event) and (ev.season, ev.number, ev.number_abs) == (0, 3, None)
    # an AniDB-only episode without a show title cannot be named at all
    data["Metadata"].update(guid="com.plexapp.agents.hama://anidb-69/1/5?lang=en", parentIndex=1, index=5)
    data["Metadata"].pop("grandparentTitle")
    result = plex.parse("application/json", json.dumps(data).encode())
    assert isinstance(result, Ignored) and result.reason == "no_ids"


def test_plex_vod_detection() -> None:
    data = fixture_json("reconstructed/plex_media.scrobble_movie_vod.RECONSTRUCTED.json")
    ev = plex.parse("application/json", json.dumps(data).encode())
    assert isinstance(ev, Event) and ev.vod and ev.summary()["vod"] is True
    data["Server"]["uuid"] = "8c2f4e1a9b3d7c6e5f0a1b2c3d4e5f6a7b8c9d0e"
    data["Metadata"]["source"] = "provider://tv.plex.provider.vod"
    assert getattr(plex.parse("application/json", json.dumps(data).encode()), "vod", None) is True
    del data["Metadata"]["source"]
    # no provider mark, a plex:// guid and no library: the catalogue too
    assert getattr(plex.parse("application/json", json.dumps(data).encode()), "vod", None) is True
    data["Metadata"]["librarySectionID"] = 1
    assert getattr(plex.parse("application/json", json.dumps(data).encode()), "vod", None) is False
    for name in ("plex_media.scrobble_movie.json", "plex_media.scrobble_episode.json",
                 "plex_media.stop_movie_legacy-imdb-agent.json", "plex_media.rate_movie.json"):
        ev = plex.parse("application/json", fixture_bytes(name))
        assert isinstance(ev, Event) and not ev.vod, name


def test_jellyfin_and_emby_multi_episode_numbers() -> None:
    data = fixture_json("reconstructed/jellyfin_PlaybackStop_episode_double.RECONSTRUCTED.json")
    ev = jellyfin.parse("text/plain", json.dumps(data).encode())
    assert isinstance(ev, Event) and ev.label() == "Breaking Bad S01E01-E02"
    assert ev.summary()["number_end"] == 2
    # template bodies: strings; a bogus end (not after the first, or far away) is ignored
    for end, expected in [("2", 2), ("1", None), ("0", None), ("10", 10), ("11", None), ("x", None)]:
        data["EpisodeNumberEnd"] = end
        ev = jellyfin.parse("text/plain", json.dumps(data).encode())
        assert isinstance(ev, Event) and ev.number_end == expected, end
    emby_data = fixture_json("reconstructed/emby_playback.stop_episode_double.RECONSTRUCTED.json")
    emby_data["Item"]["IndexNumberEnd"] = None
    ev = emby.parse("application/json", json.dumps(emby_data).encode())
    assert isinstance(ev, Event) and ev.number_end is None and ev.number == 15


def test_mediabrowser_episode_without_season_is_absolute() -> None:
    data = fixture_json("reconstructed/jellyfin_PlaybackStop_episode.RECONSTRUCTED.json")
    data.update(SeriesName="One Piece", Year=1999, EpisodeNumber=1000, Name="Episode 1000")
    for key in ("SeasonNumber", "SeasonNumber00", "SeasonNumber000", "Provider_tvdb", "Provider_imdb",
                "Provider_tmdb"):
        data.pop(key)
    ev = jellyfin.parse("text/plain", json.dumps(data).encode())
    assert isinstance(ev, Event)
    assert (ev.season, ev.number, ev.number_abs, ev.label()) == (None, None, 1000, "One Piece #1000")
    emby_data = fixture_json("reconstructed/emby_playback.stop_episode.RECONSTRUCTED.json")
    emby_data["Item"].pop("ParentIndexNumber")
    emby_data["Item"]["ProviderIds"] = {}
    ev = emby.parse("application/json", json.dumps(emby_data).encode())
    assert isinstance(ev, Event) and (ev.season, ev.number, ev.number_abs) == (None, None, 1)


def test_manual_marks() -> None:
    data = fixture_json("reconstructed/jellyfin_UserDataSaved_movie.RECONSTRUCTED.json")
    data["Played"] = False
    ev = jellyfin.parse("text/plain", json.dumps(data).encode())
    assert isinstance(ev, Event) and ev.action == "mark_unwatched"
    data["Played"] = "True"  # a template renders booleans as strings
    ev = jellyfin.parse("text/plain", json.dumps(data).encode())
    assert isinstance(ev, Event) and ev.action == "mark_watched"
    # user data saved for any other reason is not a mark made by hand
    for reason in ("PlaybackFinished", "PlaybackProgress", "UpdateUserRating", "Import", None):
        data["SaveReason"] = reason
        result = jellyfin.parse("text/plain", json.dumps(data).encode())
        assert isinstance(result, Ignored) and result.reason == "event_not_handled", reason
    data.update(SaveReason="TogglePlayed", Played=None)
    assert isinstance(jellyfin.parse("text/plain", json.dumps(data).encode()), Ignored)
    emby_data = fixture_json("reconstructed/emby_item.markplayed_episode.RECONSTRUCTED.json")
    emby_data["Event"] = "item.markunplayed"
    ev = emby.parse("application/json", json.dumps(emby_data).encode())
    assert isinstance(ev, Event) and ev.action == "mark_unwatched" and ev.progress is None
    # a whole series or season marked is not an item Trakt scrobbles here
    emby_data["Item"]["Type"] = "Series"
    result = emby.parse("application/json", json.dumps(emby_data).encode())
    assert isinstance(result, Ignored) and result.reason == "media_type_not_supported"


def test_guids_are_worked_out_once_and_kept_within_bounds() -> None:
    """A guid's meaning is kept (one server sends the same guids again and again), for guids of a
    guid's size and a bounded number of them (cwhook/sources/plex.py, ``_kept``)."""
    guid = "com.plexapp.agents.thetvdb://73871/2/15?lang=en"
    for parse in (parse_legacy_guid, parse_hama_guid):
        parse.cache_clear()  # type: ignore[attr-defined]
    first = parse_legacy_guid(guid)
    assert parse_legacy_guid(guid) is first and first == parse_legacy_guid.__wrapped__(guid)  # type: ignore[attr-defined]
    assert parse_legacy_guid.cache_info().currsize == 1  # type: ignore[attr-defined]
    long = "com.plexapp.agents.imdb://tt0072684?" + "x" * plex.MAX_GUID_TEXT
    assert parse_legacy_guid(long) == (Ids(imdb="tt0072684"), Ids(), None, None)
    assert parse_hama_guid("hama://tvdb4-81797/25/1000?" + "x" * plex.MAX_GUID_TEXT) is not None
    assert parse_legacy_guid.cache_info().currsize == 1  # type: ignore[attr-defined]
    assert parse_hama_guid.cache_info().currsize == 0  # type: ignore[attr-defined]
    for n in range(plex.GUIDS_KEPT + 50):
        assert parse_legacy_guid(f"tmdb://{n + 1}") == (Ids(tmdb=n + 1), Ids(), None, None)
    assert parse_legacy_guid.cache_info().currsize == plex.GUIDS_KEPT  # type: ignore[attr-defined]


_GUID_PIECES = st.sampled_from(["com.plexapp.agents.", "hama://", "tvdb", "thetvdb", "themoviedb", "imdb",
                                "tmdb", "anidb", "4", "2", "-", "://", "/", "?lang=en", "tt0072684",
                                "81797", "25", "0", "HAMA", "plex://episode/"])


@given(st.lists(_GUID_PIECES | st.text(max_size=3), max_size=12).map("".join))
def test_a_kept_guid_means_what_the_parse_says(guid: str) -> None:
    for parse in (parse_legacy_guid, parse_hama_guid):
        assert parse(guid) == parse.__wrapped__(guid) == parse(guid)  # type: ignore[attr-defined]
