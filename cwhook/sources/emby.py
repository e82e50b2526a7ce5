"""Emby webhook payloads → Event (pure).

Emby posts multipart/form-data with a ``data`` part holding JSON (the HTTP shell
extracts it); newer servers can send raw application/json instead.
"""

from __future__ import annotations

from cwhook.kernel.event import Ignored, ParseResult
from cwhook.sources.mediabrowser import MediaBrowserItem, provider_ids, to_event
from cwhook.sources.payload import as_bool, as_dict, as_int, as_str, decode_body, event_action, required_object

EVENTS = {
    "playback.start": "start",
    "playback.unpause": "start",
    "playback.pause": "pause",
    "playback.stop": "stop",
    "item.markplayed": "mark_watched",  # marked watched by hand
    "item.markunplayed": "mark_unwatched",
}


def parse(content_type: str, body: bytes, received_at: float = 0.0) -> ParseResult:
    data = decode_body(content_type, body, "data")
    action = event_action(data, "Event", EVENTS, "Emby")
    if isinstance(action, Ignored):
        return action
    item_data = required_object(data, "Item", "Emby")
    user = as_dict(data.get("User"))
    session = as_dict(data.get("Session"))
    playback = as_dict(data.get("PlaybackInfo"))
    item = MediaBrowserItem(
        source="emby",
        action=action,  # type: ignore[arg-type]
        item_type=as_str(item_data.get("Type")),
        name=as_str(item_data.get("Name")),
        year=as_int(item_data.get("ProductionYear")),
        show_year=None,
        ids=provider_ids(item_data),
        series_name=as_str(item_data.get("SeriesName")),
        season=as_int(item_data.get("ParentIndexNumber")),
        episode=as_int(item_data.get("IndexNumber")),
        runtime_ticks=item_data.get("RunTimeTicks"),
        position_ticks=playback.get("PositionTicks"),
        played_to_completion=as_bool(playback.get("PlayedToCompletion")),
        paused=None,
        user_name=as_str(user.get("Name")),
        user_id=as_str(user.get("Id")),
        server_id=as_str(as_dict(data.get("Server")).get("Id")),
        player_id=as_str(session.get("DeviceId")) or as_str(session.get("Id")),
        item_id=as_str(item_data.get("Id")),
        episode_end=as_int(item_data.get("IndexNumberEnd")),
    )
    return to_event(item, received_at)
