"""Ingest filters (pure): whitelists and the Plex ratings switch.

What a source's users are named by, and which of these filters it has (``server_uuid_whitelist``,
``ratings``), is its entry in cwhook/sources/registry.py.
"""

from __future__ import annotations

from cwhook.config.schema import WebhookConfig
from cwhook.kernel.event import Event, Ignored
from cwhook.sources.registry import SOURCES


def user_matches(event: Event, name: str) -> bool:
    """Does a whitelist entry (or the NAME of a SERVER:NAME pattern) name the event's user?

    Plex: the account title with case and punctuation ignored, ``id:<n>`` or
    ``uuid:<u>``; Tautulli: the Plex user name, case ignored, or ``id:<n>`` (its user_id);
    Jellyfin and Emby: the user name, case ignored.
    """
    users = SOURCES[event.source].users
    return not set(users.entry_keys(name)).isdisjoint(users.event_keys(event))


def user_allowed(event: Event, whitelist: tuple[str, ...]) -> bool:
    return not whitelist or any(user_matches(event, entry) for entry in whitelist)


def check(event: Event, hook: WebhookConfig) -> Ignored | None:
    """Why an understood event is not for us, or None when it passes."""
    source = SOURCES[event.source]
    if not user_allowed(event, hook.username_whitelist):
        return Ignored("user_not_allowed",
                       f"{source.user_noun} {event.user_name!r} is not in username_whitelist")
    if "server_uuid_whitelist" in source.settings:
        allowed = {u.strip().lower() for u in hook.server_uuid_whitelist}
        if allowed and (event.server_id or "").lower() not in allowed:
            return Ignored("server_not_allowed",
                           f"{source.what} server {event.server_id!r} is not in server_uuid_whitelist")
    if "ratings" in source.settings and event.action == "rate" and not hook.ratings:
        return Ignored("ratings_disabled", f"webhooks.{source.name}.ratings is false")
    return None
