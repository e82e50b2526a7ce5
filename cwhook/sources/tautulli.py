"""Tautulli Webhook agent payloads → Event (pure).

Tautulli (a monitor that runs next to Plex) posts, for each notification trigger,
the JSON body the user wrote in its Webhook agent, with every ``{parameter}``
filled in from its notification parameters (docs/tautulli.md gives the template).
Tautulli renders each value with ``str.format``, so every value arrives as a
string, empty when Tautulli does not know it. This is how Plex is scrobbled
without Plex Pass (Plex sends its own webhooks to Plex Pass servers only).

What the parameters mean (Tautulli's plexpy/common.py and notification_handler.py):

* ``action``: the trigger without its ``on_`` prefix: play, pause, resume, stop,
  watched (and others: buffer, error, intro, ... which are not playback for us).
* ``imdb_id``, ``themoviedb_id``, ``thetvdb_id``: the movie's ids, and for an
  episode the *show's* ids (Tautulli reads them from the show's guids), never the
  episode's. An episode is therefore named by its show and its numbers.
* ``guid``: the item's own Plex guid: ``plex://...`` (no usable id: title + year),
  an old agent's ``com.plexapp.agents.imdb://tt...`` or
  ``com.plexapp.agents.thetvdb://SHOW/S/E``, or a modern ``imdb://``.
* ``view_offset`` and ``duration_ms``: milliseconds; ``progress_percent``: a whole
  percent Tautulli computes from whole seconds (used when the two are missing).
* ``live``: 1 for Live TV (not scrobbled).
"""

from __future__ import annotations

from typing import Any

from cwhook.kernel.event import BadPayload, Event, Ids, Ignored, ParseResult, make_ids
from cwhook.sources.payload import Caseless, as_float, as_int, as_str, decode_body, get_ci, percent
from cwhook.sources.plex import parse_legacy_guid

EVENTS = {
    "play": "start",
    "resume": "start",
    "pause": "pause",
    "stop": "stop",
    "watched": "scrobble",  # Tautulli's own watched mark, like Plex's media.scrobble
}
MUSIC = {"track", "album", "artist"}
PHOTO = {"photo", "picture", "photoalbum"}


def _get(data: dict[str, Any], key: str) -> str | None:
    return as_str(get_ci(data, key))


def _ignored(reason: str, detail: str, data: dict[str, Any]) -> Ignored:
    return Ignored(reason, detail, user=_user_name(data), item=_get(data, "title"))


def _user_name(data: dict[str, Any]) -> str | None:
    return _get(data, "username") or _get(data, "user")


def _progress(data: dict[str, Any]) -> tuple[float | None, float | None]:
    """(percent, duration in seconds): view_offset / duration_ms when both are known, else
    Tautulli's whole progress_percent. Tautulli writes a view offset of 0 when it has none
    (``session.get('view_offset', 0)``), so 0 is unknown: the rules then use the session's
    last progress (a start at the top starts at 0 all the same)."""
    duration_ms = as_float(get_ci(data, "duration_ms"))
    offset_ms = as_float(get_ci(data, "view_offset"))
    duration_s = duration_ms / 1000 if duration_ms and duration_ms > 0 else None
    exact = percent(offset_ms, duration_ms) if offset_ms else None
    if exact is not None:
        return exact, duration_s
    rough = as_float(get_ci(data, "progress_percent"))
    if rough is None or rough <= 0:
        return None, duration_s
    return min(100.0, rough), duration_s


def _playback(data: Caseless) -> tuple[str, str] | Ignored:
    """The action and the media type of a playback Trakt scrobbles, or why it is not one."""
    name = _get(data, "action")
    if name is None:
        raise BadPayload("no 'action' in the Tautulli payload (see docs/tautulli.md for the JSON data)")
    action = EVENTS.get(name.lower())
    if action is None:
        hint = (" (the {parameters} were not filled in: is this the Webhook agent's JSON Data?)"
                if "{" in name else "")
        return _ignored("event_not_handled",
                        f"Tautulli action {name} is not a playback event{hint}", data)
    media_type = (_get(data, "media_type") or "").lower()
    if as_int(get_ci(data, "live")) == 1:
        return _ignored("live_tv", "Tautulli reports Live TV, which Trakt does not scrobble", data)
    if media_type not in ("movie", "episode"):
        what = ("music" if media_type in MUSIC else "a photo" if media_type in PHOTO
                else "a clip or trailer" if media_type == "clip"
                else f"media type {media_type or 'unknown'!r}")
        return _ignored("media_type_not_supported",
                        f"Tautulli item is {what}, which is not scrobbled to Trakt", data)
    return action, media_type


def parse(content_type: str, body: bytes, received_at: float = 0.0) -> ParseResult:
    data = Caseless(decode_body(content_type, body, "payload"))
    playback = _playback(data)
    if isinstance(playback, Ignored):
        return playback
    action, media_type = playback
    guid = _get(data, "guid")
    guid_ids, guid_show_ids, guid_season, guid_number = parse_legacy_guid(guid)
    named = make_ids(imdb=_get(data, "imdb_id"), tmdb=_get(data, "themoviedb_id"),
                     tvdb=_get(data, "thetvdb_id"))
    title = _get(data, "title")
    year = as_int(get_ci(data, "year"))
    show_title = show_year = season = number = None
    show_ids = Ids()
    if media_type == "episode":
        # Tautulli's ids of an episode are its show's; only a modern guid names the episode.
        ids = guid_ids
        show_ids = _merge(named, guid_show_ids)
        title = _get(data, "episode_name") or title
        show_title = _get(data, "show_name")
        show_year = as_int(get_ci(data, "show_year"))
        season = as_int(get_ci(data, "season_num"))
        number = as_int(get_ci(data, "episode_num"))
        season = season if season is not None else guid_season
        number = number if number is not None else guid_number
        if not ids and not ((show_title or show_ids) and season is not None and number is not None):
            return _ignored("no_ids", "episode has no ids and no show title/season/episode", data)
    else:
        ids = _merge(named, guid_ids)
        if not ids and not title:
            return _ignored("no_ids", "movie has no ids and no title", data)

    progress, duration_s = _progress(data)
    machine = _get(data, "machine_id")
    session = _get(data, "session_key")
    return Event(
        source="tautulli",
        action=action,  # type: ignore[arg-type]
        kind=media_type,  # type: ignore[arg-type]
        title=title,
        year=year,
        ids=ids,
        show_title=show_title,
        show_year=show_year,
        show_ids=show_ids,
        season=season,
        number=number,
        progress=progress,
        duration_s=duration_s,
        user_name=_user_name(data),
        user_id=_get(data, "user_id"),
        server_id=_get(data, "server_machine_id"),
        # One playback: the player (Plex client's machine id) and Plex's session key.
        player_id="/".join(p for p in (machine, session) if p) or None,
        item_key=_get(data, "rating_key") or guid or "",
        received_at=received_at,
    )


def _merge(first: Ids, second: Ids) -> Ids:
    return Ids(imdb=first.imdb or second.imdb, tmdb=first.tmdb or second.tmdb,
               tvdb=first.tvdb or second.tvdb, trakt=first.trakt or second.trakt)
