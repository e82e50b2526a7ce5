"""Plex webhook payloads → Event (pure).

Plex posts multipart/form-data with a ``payload`` part holding JSON (the HTTP
shell extracts it); urlencoded ``payload=`` and raw JSON are accepted too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from cwhook.kernel.event import NO_IDS, Event, Ids, Ignored, ParseResult, make_ids
from cwhook.kernel.records import quick_init
from cwhook.sources.payload import (
    as_dict,
    as_float,
    as_int,
    as_str,
    decode_body,
    event_action,
    percent,
    required_object,
)

EVENTS = {
    "media.play": "start",
    "media.resume": "start",
    "media.pause": "pause",
    "media.stop": "stop",
    "media.scrobble": "scrobble",
    "media.rate": "rate",
}
PLAYBACK_KINDS = {"movie", "episode"}
RATE_KINDS = {"movie", "episode", "show", "season"}

_LEGACY = re.compile(r"^com\.plexapp\.agents\.(?P<agent>[a-z]+)://(?P<rest>[^?]*)")
_MODERN = re.compile(r"^(?P<agent>imdb|tmdb|tvdb)://(?P<id>[^?/]+)")
_HAMA = re.compile(
    r"^(?:com\.plexapp\.agents\.)?hama://(?P<source>[a-z]+?)(?P<mode>[0-9]?)-(?P<id>[^/?]+)"
    r"(?:/(?P<season>[0-9]+)/(?P<episode>[0-9]+))?",
    re.IGNORECASE,
)
VOD_PROVIDER = "tv.plex.provider.vod"
_LEGACY_KEYS = {"imdb": "imdb", "themoviedb": "tmdb", "thetvdb": "tvdb", "tvdb": "tvdb", "tmdb": "tmdb"}
_HAMA_KEYS = {"tvdb": "tvdb", "tmdb": "tmdb", "tsdb": "tmdb", "imdb": "imdb"}
_AVATAR = re.compile(r"/users/([0-9A-Za-z]+)/avatar")
_NO_GUID = (NO_IDS, NO_IDS, None, None)


def _guid_list_ids(metadata: Mapping[str, Any]) -> Ids:
    found: dict[str, str] = {}
    guids = metadata.get("Guid")
    for entry in guids if isinstance(guids, list) else []:
        gid = as_str(as_dict(entry).get("id")) if isinstance(entry, dict) else as_str(entry)
        m = _MODERN.match(gid or "")
        if m:
            found.setdefault(m.group("agent"), m.group("id"))
    return make_ids(imdb=found.get("imdb"), tmdb=found.get("tmdb"), tvdb=found.get("tvdb"))


# A server sends the same few guids again and again (one item's play, pauses and stop; its
# show's guid on every episode): what a guid means is worked out once and kept, for guids of a
# guid's size. Results are frozen records, shared safely. Bounded in number by the cache, in size
# by MAX_GUID_TEXT: a hostile guid of a megabyte is parsed every time, never kept.
GUIDS_KEPT = 1024
MAX_GUID_TEXT = 256

_T = TypeVar("_T")


def _kept(parse: Callable[[str | None], _T]) -> Callable[[str | None], _T]:
    cached = functools.lru_cache(maxsize=GUIDS_KEPT)(parse)

    @functools.wraps(parse)
    def lookup(guid: str | None) -> _T:
        if guid is None or len(guid) > MAX_GUID_TEXT:
            return parse(guid)
        return cached(guid)

    lookup.cache_info = cached.cache_info  # type: ignore[attr-defined]
    lookup.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return lookup


@_kept
def parse_legacy_guid(guid: str | None) -> tuple[Ids, Ids, int | None, int | None]:
    """Ids from an old-agent guid: (item ids, show ids, season, episode).

    ``com.plexapp.agents.imdb://tt0072684?lang=en`` is a movie's imdb id;
    ``com.plexapp.agents.thetvdb://73871/2/15?lang=en`` is a show's tvdb id plus
    season 2, episode 15 (not an episode id); themoviedb works the same way.
    Modern ``imdb://``, ``tmdb://``, ``tvdb://`` guids are item ids.
    """
    if not guid:
        return _NO_GUID
    m = _LEGACY.match(guid)
    if not m:
        modern = _MODERN.match(guid)
        if modern:
            return make_ids(**{modern.group("agent"): modern.group("id")}), NO_IDS, None, None
        return _NO_GUID
    agent, parts = m.group("agent"), m.group("rest").split("/")
    if agent not in _LEGACY_KEYS:
        return _NO_GUID
    ids = make_ids(**{_LEGACY_KEYS[agent]: parts[0]})
    if len(parts) >= 3:
        return NO_IDS, ids, as_int(parts[1]), as_int(parts[2])
    return ids, NO_IDS, None, None


@quick_init
@dataclass(frozen=True)
class HamaGuid:
    """A guid of the HAMA agent (used with the Absolute Series Scanner for anime).

    ``hama://tvdb4-81797/25/1000``: source ``tvdb``, mode ``4``, id 81797, then
    the season (an arc in mode 4) and the episode as Plex shows them. What the
    numbers mean depends on the mode (HAMA's README):

    * ``tvdb-``, ``tvdb2-``: TVDB seasons, episodes numbered within the season;
    * ``tvdb3-``, ``tvdb4-``, ``tvdb5-``: episodes numbered absolutely, the season
      is TVDB's (3), an arc (4) or TVDB's absolute order (5): only the absolute
      number means anything to Trakt;
    * ``anidb-``: one AniDB entry numbered 1..n in season 1 (absolute within the
      entry); ``anidb2-`` and later map to TVDB season numbering. AniDB ids mean
      nothing to Trakt.

    Season 0 holds specials in every mode, numbered within the season.
    """

    source: str
    mode: str
    ids: Ids  # what Trakt can use: the show's ids on an episode guid, else the item's
    season: int | None
    episode: int | None

    @property
    def numbering(self) -> Literal["season", "absolute", "both"]:
        if self.season == 0:
            return "season"
        if self.source == "tvdb" and self.mode in ("3", "4", "5"):
            return "absolute"
        if self.source == "anidb" and self.mode == "" and self.season == 1:
            return "both"
        return "season"


@_kept
def parse_hama_guid(guid: str | None) -> HamaGuid | None:
    m = _HAMA.match(guid or "")
    if not m:
        return None
    source, value = m.group("source").lower(), m.group("id")
    key = _HAMA_KEYS.get(source)
    ids = make_ids(**{key: value}) if key else NO_IDS
    return HamaGuid(source, m.group("mode"), ids, as_int(m.group("season")),
                    as_int(m.group("episode")))


def is_vod(data: Mapping[str, Any], metadata: Mapping[str, Any]) -> bool:
    """Played from Plex's own streaming catalogue rather than from a library."""
    # Only a text can name the provider (as_str of a number never does; its strip and its
    # surrogate replacement cannot make or break the match).
    marks = (as_dict(data.get("Server")).get("uuid"), metadata.get("source"),
             metadata.get("providerIdentifier"), metadata.get("librarySectionKey"), metadata.get("key"))
    for mark in marks:  # a loop, not any() over a generator: a third of the cost
        if isinstance(mark, str) and VOD_PROVIDER in mark.lower():
            return True
    guid = as_str(metadata.get("guid")) or ""
    no_library = metadata.get("librarySectionType") is None and metadata.get("librarySectionID") is None
    return guid.startswith("plex://") and no_library


def _rating(data: Mapping[str, Any], metadata: Mapping[str, Any]) -> int | None:
    """Plex rates 0..10 (5 stars = 10); 0, negative or missing means cleared."""
    value = as_float(data.get("rating"))
    if value is None:
        value = as_float(metadata.get("userRating"))
    if value is None or value <= 0:
        return None
    return max(1, min(10, round(value)))


def parse(content_type: str, body: bytes, received_at: float = 0.0) -> ParseResult:
    data = decode_body(content_type, body, "payload")
    action = event_action(data, "event", EVENTS, "Plex")
    if isinstance(action, Ignored):
        return action
    metadata = required_object(data, "Metadata", "Plex")
    kind = as_str(metadata.get("type"))
    account = as_dict(data.get("Account"))
    allowed = RATE_KINDS if action == "rate" else PLAYBACK_KINDS
    if kind not in allowed:
        detail = f"Plex item type {kind!r}"
        if as_str(metadata.get("subtype")):
            detail += f" ({metadata.get('subtype')})"
        return Ignored("media_type_not_supported", detail + " is not scrobbled to Trakt",
                       user=as_str(account.get("title")), item=as_str(metadata.get("title")))

    guid = as_str(metadata.get("guid"))
    placed = _placement(kind, metadata, guid)
    if isinstance(placed, Ignored):
        return placed
    player = as_dict(data.get("Player"))
    server = as_dict(data.get("Server"))
    duration_ms = as_float(metadata.get("duration"))
    view_offset = as_float(metadata.get("viewOffset"))
    account_id = as_str(account.get("id"))
    return Event(
        source="plex",
        action=action,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        title=as_str(metadata.get("title")),
        year=as_int(metadata.get("year")),
        **placed,
        progress=percent(view_offset, duration_ms),
        duration_s=duration_ms / 1000 if duration_ms and duration_ms > 0 else None,
        user_name=as_str(account.get("title")),
        user_id=account_id,
        user_uuid=account_uuid(as_str(account.get("thumb"))),
        server_id=as_str(server.get("uuid")),
        player_id=as_str(player.get("uuid")) or as_str(player.get("title")),
        item_key=as_str(metadata.get("ratingKey")) or guid or "",
        rating=_rating(data, metadata) if action == "rate" else None,
        received_at=received_at,
        vod=is_vod(data, metadata),
    )


def _placement(kind: str, metadata: dict[str, Any], guid: str | None) -> dict[str, Any] | Ignored:
    """The item's ids and, for an episode or a season, its show and numbers (Event's fields)."""
    legacy = parse_legacy_guid(guid)
    hama = parse_hama_guid(guid)
    ids = _guid_list_ids(metadata) or legacy[0]
    if kind == "episode":
        return _episode(metadata, ids, legacy, hama)
    if kind == "season":
        show_title = as_str(metadata.get("parentTitle"))
        show_ids = legacy[1]
        if not (show_ids or show_title):
            return Ignored("no_ids", "season has no show ids and no show title")
        return {"ids": ids, "show_title": show_title, "show_ids": show_ids, "season": as_int(metadata.get("index"))}
    ids = ids or (hama.ids if hama is not None else NO_IDS)
    if not ids and not as_str(metadata.get("title")):
        return Ignored("no_ids", f"{kind} has no ids and no title")
    return {"ids": ids}


def _episode(metadata: dict[str, Any], ids: Ids, legacy: tuple[Ids, Ids, int | None, int | None],
             hama: HamaGuid | None) -> dict[str, Any] | Ignored:
    _, legacy_show_ids, legacy_season, legacy_number = legacy
    show_title = as_str(metadata.get("grandparentTitle"))
    season = as_int(metadata.get("parentIndex"))
    number = as_int(metadata.get("index"))
    number_abs = None
    grandparent = as_str(metadata.get("grandparentGuid"))
    show_hama = parse_hama_guid(grandparent)
    show_ids = (legacy_show_ids or parse_legacy_guid(grandparent)[0]
                or (hama.ids if hama else NO_IDS) or (show_hama.ids if show_hama else NO_IDS))
    if hama is not None:
        legacy_season, legacy_number = hama.season, hama.episode
    season = season if season is not None else legacy_season
    number = number if number is not None else legacy_number
    numbering = hama.numbering if hama is not None else "season"
    if numbering != "season" and number is not None:
        number_abs = number
        if numbering == "absolute":  # the season is an arc: not a Trakt season
            season = number = None
    has_numbers = (season is not None and number is not None) or number_abs is not None
    if not ids and not ((show_title or show_ids) and has_numbers):
        return Ignored("no_ids", "episode has no ids and no show title/season/number")
    return {"ids": ids, "show_title": show_title, "show_ids": show_ids, "season": season, "number": number,
            "number_abs": number_abs}


def account_uuid(thumb: str | None) -> str | None:
    """Plex account thumbs look like https://plex.tv/users/<uuid>/avatar?c=..."""
    m = _AVATAR.search(thumb or "")
    return m.group(1) if m else None
