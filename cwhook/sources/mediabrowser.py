"""What Jellyfin and Emby share (Emby is Jellyfin's ancestor): item types, provider
ids, 100-ns ticks, season/episode numbers. Each parser picks its own field names
into a ``MediaBrowserItem``; ``to_event`` turns that into an Event (pure).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cwhook.kernel.event import Action, Event, Ids, Ignored, ParseResult, Source, make_ids
from cwhook.kernel.records import quick_init
from cwhook.sources.payload import Caseless, as_dict, as_float, get_ci, percent

TICKS_PER_SECOND = 10_000_000
MAX_EPISODES_PER_FILE = 10  # a larger IndexNumberEnd is taken for bad metadata and ignored
_HEX = "0123456789abcdef"
KINDS = {"movie": "movie", "episode": "episode", "series": "show", "season": "season"}


def normalize_guid(value: str | None) -> str | None:
    """Jellyfin writes Guids as 32 hex digits, or dashed when a template renders them."""
    if value is None:
        return None
    compact = value.replace("-", "").lower()
    if len(compact) == 32 and not compact.strip(_HEX):  # hex digits alone, stripped at C speed
        return compact
    return value


def provider_ids(source: dict[str, Any], flat_prefix: str | None = None) -> Ids:
    """Ids from a ``ProviderIds`` object or flat ``Provider_imdb`` keys, any letter case."""
    found = as_dict(get_ci(source, "ProviderIds"))
    nested = Caseless(found) if found else None  # Jellyfin's flat body has none: nothing to look up

    def pick(name: str) -> Any:
        value = None if nested is None else get_ci(nested, name)
        if value is None and flat_prefix is not None:
            value = get_ci(source, f"{flat_prefix}{name}")
        return value

    return make_ids(imdb=pick("imdb"), tmdb=pick("tmdb"), tvdb=pick("tvdb"), trakt=pick("trakt"))


@quick_init
@dataclass(frozen=True)
class MediaBrowserItem:
    source: Source
    action: Action
    item_type: str | None
    name: str | None
    year: int | None
    show_year: int | None
    ids: Ids
    series_name: str | None
    season: int | None
    episode: int | None
    runtime_ticks: Any
    position_ticks: Any
    played_to_completion: bool | None
    paused: bool | None
    user_name: str | None
    user_id: str | None
    server_id: str | None
    player_id: str | None
    item_id: str | None
    episode_end: int | None = None  # IndexNumberEnd / EpisodeNumberEnd: a multi-episode file


def _episode_end(first: int | None, last: int | None) -> int | None:
    if first is None or last is None or not first < last < first + MAX_EPISODES_PER_FILE:
        return None
    return last


def to_event(item: MediaBrowserItem, received_at: float) -> ParseResult:
    kind = KINDS.get((item.item_type or "").lower())
    if kind not in ("movie", "episode"):
        return Ignored(
            "media_type_not_supported",
            f"{item.source} item type {item.item_type!r} is not scrobbled to Trakt",
            user=item.user_name, item=item.name,
        )
    season, number, number_abs = item.season, item.episode, None
    if kind == "episode" and season is None and number is not None:
        # No season at all: an anime library numbered absolutely.
        number, number_abs = None, number
    if kind == "episode":
        if not item.ids and not (item.series_name and (
                (season is not None and number is not None) or number_abs is not None)):
            return Ignored("no_ids", "episode has no ids and no series name/season/episode")
    elif not item.ids and not item.name:
        return Ignored("no_ids", "movie has no ids and no title")
    runtime = as_float(item.runtime_ticks)
    position = as_float(item.position_ticks)
    progress = percent(position, runtime)
    if item.action in ("mark_watched", "mark_unwatched"):
        progress = None  # a mark by hand, not a position
    elif item.action == "stop":
        if item.played_to_completion:
            progress = 100.0
        elif position == 0:
            progress = None  # Jellyfin/Emby report 0 when the position is unknown
    return Event(
        source=item.source,
        action=item.action,
        kind=kind,  # type: ignore[arg-type]
        title=item.name,
        year=item.year,
        ids=item.ids,
        show_title=item.series_name if kind == "episode" else None,
        show_year=item.show_year if kind == "episode" else None,
        season=season if kind == "episode" else None,
        number=number if kind == "episode" else None,
        number_abs=number_abs if kind == "episode" else None,
        number_end=_episode_end(number, item.episode_end) if kind == "episode" else None,
        progress=progress,
        duration_s=runtime / TICKS_PER_SECOND if runtime and runtime > 0 else None,
        paused=item.paused,
        user_name=item.user_name,
        user_id=normalize_guid(item.user_id),
        server_id=item.server_id,
        player_id=item.player_id,
        item_key=normalize_guid(item.item_id) or "",
        received_at=received_at,
    )
