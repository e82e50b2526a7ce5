from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cwhook.kernel.event import Event, Ids
from cwhook.sources import plex
from cwhook.trakt import bodies as tb
from tests.builders import episode, movie
from tests.conftest import FIXTURES, fixture_bytes

MOVIE = movie(ids=Ids(trakt=28, imdb="tt2015381", tmdb=118340, tvdb=999))
EPISODE = episode(show_ids=Ids(trakt=1, tvdb=81189))


def trakt_example(name: str) -> dict:
    return json.loads((FIXTURES / "trakt" / name).read_text())


def test_movie_body_matches_trakt_docs_shape() -> None:
    doc = trakt_example("scrobble_start_movie.request.json")
    body = tb.scrobble_body(tb.item_forms(MOVIE)[0], 1.25)
    assert body == {"movie": {"title": "Guardians of the Galaxy", "year": 2014,
                              "ids": {"trakt": 28, "imdb": "tt2015381", "tmdb": 118340}},
                    "progress": 1.25}
    assert set(body) == set(doc) and set(body["movie"]) == set(doc["movie"])


def test_episode_forms_by_ids_then_by_show() -> None:
    forms = tb.item_forms(EPISODE)
    assert forms == [
        {"episode": {"ids": {"tvdb": 349232}}},
        {"show": {"title": "Breaking Bad", "year": 2008, "ids": {"trakt": 1, "tvdb": 81189}},
         "episode": {"season": 1, "number": 1}},
    ]
    by_show = tb.scrobble_body(forms[1], 10)
    assert by_show == trakt_example("scrobble_start_episode_by_show.request.json")


def test_episode_without_ids_or_numbers() -> None:
    assert tb.item_forms(replace(EPISODE, ids=Ids())) == tb.item_forms(EPISODE)[1:]
    assert tb.item_forms(replace(EPISODE, season=None)) == tb.item_forms(EPISODE)[:1]
    assert tb.item_forms(replace(EPISODE, ids=Ids(), show_title=None, show_ids=Ids())) == []


def test_progress_rounded_and_clamped() -> None:
    assert tb.scrobble_body({}, 33.33333)["progress"] == 33.33
    assert tb.scrobble_body({}, 120)["progress"] == 100
    assert tb.scrobble_body({}, -1)["progress"] == 0


def test_history_body_has_real_watched_at() -> None:
    body = tb.history_body(tb.item_forms(MOVIE)[0], 1700000000.25)
    assert body["movies"][0]["watched_at"] == "2023-11-14T22:13:20.250Z"
    ep = tb.history_body(tb.item_forms(EPISODE)[1], 0)
    assert ep == {"shows": [{"title": "Breaking Bad", "year": 2008, "ids": {"trakt": 1, "tvdb": 81189},
                             "seasons": [{"number": 1, "episodes": [
                                 {"number": 1, "watched_at": "1970-01-01T00:00:00.000Z"}]}]}]}
    assert tb.history_body(tb.item_forms(EPISODE)[0], 0) == {
        "episodes": [{"ids": {"tvdb": 349232}, "watched_at": "1970-01-01T00:00:00.000Z"}]}


def test_ratings_bodies_for_all_kinds() -> None:
    rated = replace(MOVIE, action="rate", rating=9)
    assert tb.ratings_body(tb.rating_forms(rated)[0], 9) == {"movies": [
        {"title": "Guardians of the Galaxy", "year": 2014,
         "ids": {"trakt": 28, "imdb": "tt2015381", "tmdb": 118340}, "rating": 9}]}
    assert tb.ratings_body(tb.rating_forms(rated)[0], None) == {"movies": [
        {"title": "Guardians of the Galaxy", "year": 2014,
         "ids": {"trakt": 28, "imdb": "tt2015381", "tmdb": 118340}}]}
    show = Event(source="plex", action="rate", kind="show", title="Futurama", ids=Ids(tvdb=73871))
    assert tb.ratings_body(tb.rating_forms(show)[0], 8) == {"shows": [
        {"title": "Futurama", "ids": {"tvdb": 73871}, "rating": 8}]}
    season = Event(source="plex", action="rate", kind="season", title="Season 2", show_title="Futurama",
                   show_ids=Ids(tvdb=73871), season=2)
    assert tb.ratings_body(tb.rating_forms(season)[0], 7) == {"shows": [
        {"title": "Futurama", "ids": {"tvdb": 73871}, "seasons": [{"number": 2, "rating": 7}]}]}
    assert tb.ratings_body(tb.rating_forms(EPISODE)[0], 15)["episodes"][0]["rating"] == 10


def test_rated_at_from_real_plex_sample() -> None:
    ev = plex.parse("application/json", fixture_bytes("plex_media.rate_movie.json"))
    assert isinstance(ev, Event)
    body = tb.ratings_body(tb.rating_forms(ev)[0], ev.rating, 1700000000)
    assert body == {"movies": [{"title": "The Harder They Fall", "year": 1956, "rating": 10,
                                "rated_at": "2023-11-14T22:13:20.000Z"}]}


def test_searches() -> None:
    assert tb.id_searches(MOVIE) == [("/search/imdb/tt2015381?type=movie", "movie"),
                                     ("/search/tmdb/118340?type=movie", "movie"),
                                     ("/search/trakt/28?type=movie", "movie")]
    assert tb.id_searches(EPISODE) == [("/search/tvdb/349232?type=episode", "episode"),
                                       ("/search/tvdb/81189?type=show", "show"),
                                       ("/search/trakt/1?type=show", "show")]
    assert tb.text_search(MOVIE) == ("/search/movie?query=Guardians+of+the+Galaxy&years=2014", "movie")
    assert tb.text_search(replace(EPISODE, show_title="Marvel's Agents: S.H.I.E.L.D.", show_year=None)) == (
        "/search/show?query=Marvel%27s+Agents%5C%3A+S.H.I.E.L.D.", "show")


def test_forms_from_search_takes_the_first_usable_result_of_the_type() -> None:
    results = [{"type": "show", "show": {"ids": {"trakt": 5}}},
               {"type": "movie", "movie": {"ids": {"trakt": 28}}}]
    assert tb.forms_from_search(MOVIE, results, "movie") == [{"movie": {"ids": {"trakt": 28}}}]
    assert tb.forms_from_search(EPISODE, results, "show")[0] == {
        "show": {"ids": {"trakt": 5}}, "episode": {"season": 1, "number": 1}}
    assert tb.forms_from_search(EPISODE, [], "episode") == []
    assert tb.forms_from_search(EPISODE, {"x": 1}, "episode") == []
    assert tb.forms_from_search(EPISODE, [{"type": "episode", "episode": {"ids": {"trakt": "x"}}}],
                                "episode") == []


# --- absolute numbers and multi-episode files ----------------------------------------------

ANIME = Event(source="plex", action="start", kind="episode", title="Episode 1000", show_title="One Piece",
              show_year=1999, show_ids=Ids(tvdb=81797), number_abs=1000)


def test_absolute_form_matches_trakt_docs_shape() -> None:
    doc = trakt_example("scrobble_start_episode_absolute.request.json")
    [form] = tb.item_forms(ANIME)
    body = tb.scrobble_body(form, 10)
    assert body == {"show": {"title": "One Piece", "year": 1999, "ids": {"tvdb": 81797}},
                    "episode": {"number_abs": 1000}, "progress": 10}
    assert set(body) == set(doc) - {"sharing"} and body["episode"].keys() == doc["episode"].keys()


def test_episode_forms_with_season_and_absolute_number() -> None:
    # AniDB-numbered (season 1, numbered 1..n): the season form first, then the absolute one
    anidb = replace(ANIME, show_ids=Ids(), show_year=None, season=1, number=1001, number_abs=1001)
    assert tb.item_forms(anidb) == [
        {"show": {"title": "One Piece"}, "episode": {"season": 1, "number": 1001}},
        {"show": {"title": "One Piece"}, "episode": {"number_abs": 1001}}]
    assert tb.item_forms(replace(ANIME, show_title=None, show_ids=Ids())) == []


def test_multi_episode_file_is_not_named_by_its_ids() -> None:
    double = replace(EPISODE, number_end=2)
    assert tb.item_forms(double) == tb.item_forms(EPISODE)[1:]


def test_sync_bodies_cannot_name_an_absolute_number() -> None:
    [form] = tb.item_forms(ANIME)
    for build in (lambda: tb.history_body(form, 0), lambda: tb.history_remove_body(form),
                  lambda: tb.ratings_body(form, 8), lambda: tb.watchlist_remove_body(form)):
        with pytest.raises(tb.NotExpressible):
            build()


def test_remembered_form_after_an_absolute_match() -> None:
    [form] = tb.item_forms(ANIME)
    answer = {"action": "start", "episode": {"season": 21, "number": 108, "number_abs": 1000,
                                             "ids": {"trakt": 91, "tvdb": 8790411}}}
    assert tb.remembered_form(form, answer) == {"episode": {"ids": {"trakt": 91}}}
    assert tb.remembered_form(form, None) == form
    assert tb.remembered_form(form, {"episode": {"ids": {"trakt": True}}}) == form
    movie_form = tb.item_forms(MOVIE)[0]
    assert tb.remembered_form(movie_form, {"movie": {"ids": {"trakt": 28}}}) == movie_form
    # what is remembered can go to /sync
    assert tb.history_body(tb.remembered_form(form, answer), 0) == {
        "episodes": [{"ids": {"trakt": 91}, "watched_at": "1970-01-01T00:00:00.000Z"}]}


def test_history_remove_body() -> None:
    assert tb.history_remove_body(tb.item_forms(MOVIE)[0]) == {"movies": [
        {"title": "Guardians of the Galaxy", "year": 2014,
         "ids": {"trakt": 28, "imdb": "tt2015381", "tmdb": 118340}}]}


def test_forms_from_a_show_search() -> None:
    results = [{"type": "show", "show": {"ids": {"trakt": 5}}}]
    show = {"ids": {"trakt": 5}}
    # an absolute-only episode
    assert tb.forms_from_search(ANIME, results, "show") == [
        {"show": show, "episode": {"number_abs": 1000}}]
    # a season-1 episode may be an absolute number in disguise: tried second
    s1 = replace(EPISODE, season=1, number=1000)
    assert tb.forms_from_search(s1, results, "show") == [
        {"show": show, "episode": {"season": 1, "number": 1000}},
        {"show": show, "episode": {"number_abs": 1000}}]
    # ...but not in a later season
    s2 = replace(EPISODE, season=2, number=13)
    assert tb.forms_from_search(s2, results, "show") == [
        {"show": show, "episode": {"season": 2, "number": 13}}]
    assert tb.forms_from_search(s2, [{"type": "show", "show": {"ids": {"trakt": True}}}], "show") == []
    assert tb.forms_from_search(s2, [], "show") == []


def test_only_trakts_documented_answers_count_as_success() -> None:
    from cwhook.trakt.bodies import answer_ok

    scrobbled = {"id": 3373536622, "action": "scrobble", "progress": 99.9,
                 "movie": {"title": "Guardians of the Galaxy", "ids": {"trakt": 28}}}
    assert answer_ok("POST", "/scrobble/stop", 201, scrobbled)
    assert answer_ok("POST", "/scrobble/stop", 409, {"watched_at": "x", "expires_at": "y"})
    assert answer_ok("POST", "/sync/history", 201, {"added": {"movies": 1}, "not_found": {}})
    assert answer_ok("POST", "/sync/watchlist/remove", 200, {"deleted": {"movies": 1}})
    assert answer_ok("GET", "/search/imdb/tt1?type=movie", 200, [])
    for method, path, status, data in [
        ("POST", "/scrobble/stop", 200, None),  # a captive portal's empty 200 (or 204)
        ("POST", "/scrobble/stop", 201, {"moved": True}),  # somebody's JSON, not Trakt's
        ("POST", "/scrobble/stop", 201, {"action": "scrobble"}),  # no item
        ("POST", "/scrobble/stop", 409, "conflict"),
        ("POST", "/sync/history", 201, {"deleted": {}}),
        ("POST", "/sync/history/remove", 200, {"added": {}}),
        ("GET", "/sync/history/movies/28", 200, {"error": "portal"}),
    ]:
        assert not answer_ok(method, path, status, data), (method, path, data)
