"""Trakt request bodies and lookup paths built from events (pure).

An item can be named to Trakt in more than one way; ``item_forms`` lists them
best first: a movie by its ids (plus title and year), an episode by its own ids,
by its show (title, year, ids) with season and number, or by its show with its
absolute number (``number_abs``, anime). The client tries them in order when
Trakt answers 404, then falls back to searches (``id_searches``, ``text_search``,
each turned into forms by ``forms_from_search``).

/sync bodies (history, ratings, watchlist) have no way to name an episode by its
absolute number: such a form raises ``NotExpressible`` there and the client goes
on to the next form. Once a scrobble matched an absolute form, the episode's
Trakt id from the answer is what is remembered (``remembered_form``), so later
/sync calls for it can name it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote, urlencode

from cwhook.kernel.event import Event, Ids

Body = dict[str, Any]

MOVIE_ID_KEYS = ("trakt", "imdb", "tmdb")  # Trakt's movie ids have no tvdb


class NotExpressible(ValueError):
    """This form cannot be written in that kind of body (an absolute number in /sync)."""


def _ids(ids: Ids, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    found = ids.as_dict()
    return {k: v for k, v in found.items() if keys is None or k in keys}


def _titled(title: str | None, year: int | None, ids: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if title:
        out["title"] = title
    if year:
        out["year"] = year
    if ids:
        out["ids"] = ids
    return out


def _show(event: Event) -> dict[str, Any] | None:
    show = _titled(event.show_title, event.show_year, _ids(event.show_ids))
    return show if show.get("ids") or show.get("title") else None


def show_form(event: Event) -> Body | None:
    show = _show(event)
    if event.season is None or event.number is None or show is None:
        return None
    return {"show": show, "episode": {"season": event.season, "number": event.number}}


def absolute_form(event: Event) -> Body | None:
    show = _show(event)
    if event.number_abs is None or show is None:
        return None
    return {"show": show, "episode": {"number_abs": event.number_abs}}


def item_forms(event: Event) -> list[Body]:
    """Ways to name the event's item to /scrobble, best first.

    An episode: by its own ids (not for a multi-episode file, whose ids name one
    of its episodes at best), by its show with season and number, by its show
    with its absolute number.
    """
    if event.kind == "movie":
        movie = _titled(event.title, event.year, _ids(event.ids, MOVIE_ID_KEYS))
        return [{"movie": movie}] if movie else []
    if event.kind == "episode":
        forms: list[Body] = []
        if event.ids and event.number_end is None:
            forms.append({"episode": {"ids": _ids(event.ids)}})
        for form in (show_form(event), absolute_form(event)):
            if form is not None:
                forms.append(form)
        return forms
    return []


def scrobble_body(form: Body, progress: float) -> Body:
    return {**form, "progress": round(max(0.0, min(100.0, progress)), 2)}


def iso(ts: float) -> str:
    moment = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def is_absolute(form: Body) -> bool:
    episode = form.get("episode")
    return isinstance(episode, dict) and "number_abs" in episode


def remembered_form(form: Body, answer: Any) -> Body:
    """What to remember for an item once ``form`` matched: the form itself, except an
    absolute form, replaced by the episode's Trakt id from the answer when it has one."""
    if not is_absolute(form) or not isinstance(answer, dict):
        return form
    episode = answer.get("episode")
    ids = episode.get("ids") if isinstance(episode, dict) else None
    trakt_id = ids.get("trakt") if isinstance(ids, dict) else None
    if isinstance(trakt_id, int) and not isinstance(trakt_id, bool):
        return {"episode": {"ids": {"trakt": trakt_id}}}
    return form


def _sync_item(form: Body, extra: dict[str, Any]) -> Body:
    """A /sync body (plural keys) for one scrobble form, with ``extra`` on the leaf."""
    if is_absolute(form):
        raise NotExpressible("/sync cannot name an episode by its absolute number")
    if "movie" in form:
        return {"movies": [{**form["movie"], **extra}]}
    if "show" in form and "episode" in form:
        ep = form["episode"]
        return {"shows": [{**form["show"], "seasons": [
            {"number": ep["season"], "episodes": [{"number": ep["number"], **extra}]}]}]}
    if "episode" in form:
        return {"episodes": [{**form["episode"], **extra}]}
    if "show" in form:
        return {"shows": [{**form["show"], **extra}]}
    raise ValueError("not an item form")


def history_body(form: Body, watched_at: float) -> Body:
    """/sync/history: a watched stop delivered late, with its real time."""
    return _sync_item(form, {"watched_at": iso(watched_at)})


def history_remove_body(form: Body) -> Body:
    """/sync/history/remove: every play of the item (marked unwatched by hand)."""
    return _sync_item(form, {})


def watchlist_remove_body(form: Body) -> Body:
    return _sync_item(form, {})


def rating_forms(event: Event) -> list[Body]:
    """Ways to name a rated item to /sync/ratings (movies, shows, seasons, episodes)."""
    if event.kind in ("movie", "episode"):
        return item_forms(event)
    show = _titled(event.show_title or event.title, event.show_year or event.year,
                   _ids(event.show_ids) or (_ids(event.ids) if event.kind == "show" else {}))
    if not show:
        return []
    if event.kind == "show":
        return [{"show": show}]
    if event.season is None:
        return []
    return [{"show": show, "season": event.season}]


def ratings_body(form: Body, rating: int | None, rated_at: float | None = None) -> Body:
    """/sync/ratings (rating 1..10) or, with rating None, /sync/ratings/remove."""
    extra: dict[str, Any] = {}
    if rating is not None:
        extra["rating"] = max(1, min(10, int(rating)))
        if rated_at:
            extra["rated_at"] = iso(rated_at)
    if "season" in form and "show" in form and "episode" not in form:
        return {"shows": [{**form["show"], "seasons": [{"number": form["season"], **extra}]}]}
    return _sync_item(form, extra)


# --- searches -----------------------------------------------------------------------


def id_searches(event: Event) -> list[tuple[str, str]]:
    """(path, result type) for /search/{id_type}/{id}?type=…, best first."""
    out: list[tuple[str, str]] = []
    if event.kind == "movie":
        for key in ("imdb", "tmdb", "trakt"):
            value = getattr(event.ids, key)
            if value is not None:
                out.append((f"/search/{key}/{quote(str(value))}?type=movie", "movie"))
    elif event.kind == "episode":
        for key in ("tvdb", "imdb", "tmdb", "trakt"):
            value = getattr(event.ids, key)
            if value is not None:
                out.append((f"/search/{key}/{quote(str(value))}?type=episode", "episode"))
        for key in ("tvdb", "imdb", "tmdb", "trakt"):
            value = getattr(event.show_ids, key)
            if value is not None:
                out.append((f"/search/{key}/{quote(str(value))}?type=show", "show"))
    return out


_SPECIAL = set('+-&|!(){}[]^"~*?:/\\')


def escape_query(text: str) -> str:
    return "".join("\\" + c if c in _SPECIAL else c for c in text)


def text_search(event: Event) -> tuple[str, str] | None:
    """(path, result type) for /search/{movie|show}?query=…&years=…."""
    if event.kind == "movie" and event.title:
        params = {"query": escape_query(event.title)}
        if event.year:
            params["years"] = str(event.year)
        return "/search/movie?" + urlencode(params), "movie"
    if event.kind == "episode" and event.show_title:
        params = {"query": escape_query(event.show_title)}
        if event.show_year:
            params["years"] = str(event.show_year)
        return "/search/show?" + urlencode(params), "show"
    return None


def forms_from_search(event: Event, results: Any, result_type: str) -> list[Body]:
    """Turn the first usable search result into by-Trakt-id forms, best first.

    A show found for an episode gives its season/number form, then its absolute
    form: with the event's absolute number, or with the episode number of a
    season-1 episode (a library numbered absolutely puts every episode in season 1;
    for a real season-1 episode both name the same episode).
    """
    if not isinstance(results, list):
        return []
    for result in results:
        if not isinstance(result, dict) or result.get("type", result_type) != result_type:
            continue
        item = result.get(result_type)
        ids = item.get("ids") if isinstance(item, dict) else None
        trakt_id = ids.get("trakt") if isinstance(ids, dict) else None
        if not isinstance(trakt_id, int) or isinstance(trakt_id, bool):
            continue
        if result_type == "movie":
            return [{"movie": {"ids": {"trakt": trakt_id}}}]
        if result_type == "episode":
            return [{"episode": {"ids": {"trakt": trakt_id}}}]
        show = {"ids": {"trakt": trakt_id}}
        forms: list[Body] = []
        if event.season is not None and event.number is not None:
            forms.append({"show": show, "episode": {"season": event.season, "number": event.number}})
        absolute = event.number_abs
        if absolute is None and event.season == 1 and event.number_end is None:
            absolute = event.number
        if absolute is not None:
            forms.append({"show": show, "episode": {"number_abs": absolute}})
        return forms
    return []


# --- answers ------------------------------------------------------------------------

SCROBBLE_ACTIONS = ("start", "pause", "scrobble", "stop")


def answer_ok(method: str, path: str, status: int, data: Any) -> bool:
    """Is ``data`` (a 2xx or 409 answer's JSON) the shape Trakt documents for this call?

    A scrobble: an object with ``action`` and the movie or episode; a 409: an object
    (``watched_at``, ``expires_at``); /sync/history and /sync/ratings: ``added`` counts;
    the /sync removals: ``deleted`` counts; a search or a history listing: a list.
    Anything else did not come from Trakt's API (a portal, a proxy, a moved API).
    """
    route = path.split("?", 1)[0]
    if status == 409:
        return isinstance(data, dict)
    if method == "GET":
        return isinstance(data, list)
    if not isinstance(data, dict):
        return False
    if route.startswith("/scrobble/"):
        return (data.get("action") in SCROBBLE_ACTIONS
                and any(isinstance(data.get(k), dict) for k in ("movie", "episode")))
    if route.endswith("/remove"):
        return isinstance(data.get("deleted"), dict)
    if route.startswith("/sync/"):
        return isinstance(data.get("added"), dict)
    return True


def history_targets(form: Body) -> list[tuple[str, int]]:
    """What a remembered form says to look up in the history: ("movie"|"episode", Trakt id),
    or ("show", Trakt id) for an episode named by its show (then matched by season/number)."""
    out: list[tuple[str, int]] = []
    for key in ("movie", "episode", "show"):
        item = form.get(key)
        ids = item.get("ids") if isinstance(item, dict) else None
        trakt_id = ids.get("trakt") if isinstance(ids, dict) else None
        episode = form.get("episode")
        by_season = isinstance(episode, dict) and "season" in episode
        if isinstance(trakt_id, int) and not isinstance(trakt_id, bool) and (key != "show" or by_season):
            out.append((key, trakt_id))
    return out


def is_episode(item: Any, season: int, number: int) -> bool:
    """Is a history item (of a show's history) the play of this season's episode?"""
    episode = item.get("episode") if isinstance(item, dict) else None
    return isinstance(episode, dict) and episode.get("season") == season and episode.get("number") == number
