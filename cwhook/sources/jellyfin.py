"""Jellyfin webhook plugin payloads → Event (pure).

The plugin's "Send All Properties" body is a flat JSON object; user templates
render the same keys with numbers as strings and booleans as "True"/"False";
the "Generic Form" destination posts them urlencoded. All three are read here.
There is no pause event: PlaybackProgress carries ``IsPaused`` and the rules
turn a change of that flag into a pause or a resume.
"""

from __future__ import annotations

from cwhook.kernel.event import Ignored, ParseResult
from cwhook.sources.mediabrowser import MediaBrowserItem, provider_ids, to_event
from cwhook.sources.payload import Caseless, as_bool, as_int, as_str, decode_body, event_action, get_ci


def _text(data: dict[str, object], key: str) -> str | None:
    """The plugin escapes quotes before serialising; undo the stray backslashes."""
    value = as_str(get_ci(data, key))
    return value.replace('\\"', '"') if value else value


EVENTS = {"playbackstart": "start", "playbackstop": "stop", "playbackprogress": "progress",
          "userdatasaved": "mark"}


def _manual_mark(data: dict[str, object]) -> str | Ignored:
    """UserDataSaved is sent for every change of a user's data; only "TogglePlayed" is
    a person marking the item watched (Played true) or unwatched (Played false)."""
    reason = as_str(get_ci(data, "SaveReason")) or "unknown"
    played = as_bool(get_ci(data, "Played"))
    if reason.lower() != "toggleplayed" or played is None:
        return Ignored("event_not_handled",
                       f"Jellyfin UserDataSaved ({reason}) is not a watched mark made by hand")
    return "mark_watched" if played else "mark_unwatched"


def parse(content_type: str, body: bytes, received_at: float = 0.0) -> ParseResult:
    data = Caseless(decode_body(content_type, body, "payload", flat_form=True))
    action = event_action(data, "NotificationType", EVENTS, "Jellyfin", "notification")
    if isinstance(action, Ignored):
        return action
    if action == "mark":
        marked = _manual_mark(data)
        if isinstance(marked, Ignored):
            return marked
        action = marked
    year = as_int(get_ci(data, "Year"))
    is_episode = (as_str(get_ci(data, "ItemType")) or "").lower() == "episode"
    item = MediaBrowserItem(
        source="jellyfin",
        action=action,  # type: ignore[arg-type]
        item_type=as_str(get_ci(data, "ItemType")),
        name=_text(data, "Name"),
        # For episodes the plugin overwrites Year with the series' year.
        year=None if is_episode else year,
        show_year=year if is_episode else None,
        ids=provider_ids(data, flat_prefix="Provider_"),
        series_name=_text(data, "SeriesName"),
        season=as_int(get_ci(data, "SeasonNumber")),
        episode=as_int(get_ci(data, "EpisodeNumber")),
        runtime_ticks=get_ci(data, "RunTimeTicks"),
        position_ticks=get_ci(data, "PlaybackPositionTicks"),
        played_to_completion=as_bool(get_ci(data, "PlayedToCompletion")),
        paused=as_bool(get_ci(data, "IsPaused")),
        user_name=as_str(get_ci(data, "NotificationUsername")) or as_str(get_ci(data, "Username")),
        user_id=as_str(get_ci(data, "UserId")),
        server_id=as_str(get_ci(data, "ServerId")),
        player_id=as_str(get_ci(data, "DeviceId")) or as_str(get_ci(data, "Id"))
        or as_str(get_ci(data, "DeviceName")),
        item_id=as_str(get_ci(data, "ItemId")),
        episode_end=as_int(get_ci(data, "EpisodeNumberEnd")),
    )
    return to_event(item, received_at)
