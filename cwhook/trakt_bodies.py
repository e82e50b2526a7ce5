"""Trakt request bodies and lookup paths built from events (pure).

An item can be named to Trakt in more than one way; ``item_forms`` lists them
best first: a movie by its ids (plus title and year), an episode by its own ids
or by its show (title, year, ids) with season and number. The client tries them
in order when Trakt answers 404, then falls back to searches.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote, urlencode

from cwhook.event import Event, Ids

Body = dict[str, Any]

MOVIE_ID_KEYS = ("trakt", "imdb", "tmdb")  # Trakt's movie ids have no tvdb


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


def show_form(event: Event) -> Body | None:
    if event.season is None or event.number is None:
        return None
    show = _titled(event.show_title, event.show_year, _ids(event.show_ids))
    if not show.get("ids") and not show.get("title"):
        return None
    return {"show": show, "episode": {"season": event.season, "number": event.number}}


def item_forms(event: Event) -> list[Body]:
    """Ways to name the event's item to /scrobble, best first."""
    if event.kind == "movie":
        movie = _titled(event.title, event.year, _ids(event.ids, MOVIE_ID_KEYS))
        return [{"movie": movie}] if movie else []
    if event.kind == "episode":
        forms: list[Body] = []
        if event.ids:
            forms.append({"episode": {"ids": _ids(event.ids)}})
        by_show = show_form(event)
        if by_show is not None:
            forms.append(by_show)
        return forms
    return []


def scrobble_body(form: Body, progress: float) -> Body:
    return {**form, "progress": round(max(0.0, min(100.0, progress)), 2)}


def iso(ts: float) -> str:
    moment = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _sync_item(form: Body, extra: dict[str, Any]) -> Body:
    """A /sync body (plural keys) for one scrobble form, with ``extra`` on the leaf."""
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


def form_from_search(event: Event, results: Any, result_type: str) -> Body | None:
    """Turn the first usable search result into a by-Trakt-id form."""
    if not isinstance(results, list):
        return None
    for result in results:
        if not isinstance(result, dict) or result.get("type", result_type) != result_type:
            continue
        item = result.get(result_type)
        trakt_id = item.get("ids", {}).get("trakt") if isinstance(item, dict) else None
        if not isinstance(trakt_id, int):
            continue
        if result_type == "movie":
            return {"movie": {"ids": {"trakt": trakt_id}}}
        if result_type == "episode":
            return {"episode": {"ids": {"trakt": trakt_id}}}
        if event.season is None or event.number is None:
            return None
        return {"show": {"ids": {"trakt": trakt_id}},
                "episode": {"season": event.season, "number": event.number}}
    return None
