"""Ingest filters (pure): whitelists and the Plex ratings switch."""

from __future__ import annotations

from cwhook.config import WebhookConfig
from cwhook.event import Event, Ignored


def _fold(name: str) -> str:
    """Plex account titles compare with case and punctuation ignored."""
    return "".join(c for c in name.casefold() if c.isalnum())


def plex_user_allowed(event: Event, whitelist: tuple[str, ...]) -> bool:
    if not whitelist:
        return True
    for entry in whitelist:
        lowered = entry.strip()
        if lowered.lower().startswith("id:"):
            if event.user_id is not None and lowered[3:].strip() == event.user_id:
                return True
        elif lowered.lower().startswith("uuid:"):
            if event.user_uuid and lowered[5:].strip().lower() == event.user_uuid.lower():
                return True
        elif event.user_name and _fold(lowered) and _fold(lowered) == _fold(event.user_name):
            return True
    return False


def check(event: Event, hook: WebhookConfig) -> Ignored | None:
    """Why an understood event is not for us, or None when it passes."""
    if event.source == "plex":
        if not plex_user_allowed(event, hook.username_whitelist):
            return Ignored("user_not_allowed",
                           f"Plex account {event.user_name!r} is not in username_whitelist")
        allowed = {u.strip().lower() for u in hook.server_uuid_whitelist}
        if allowed and (event.server_id or "").lower() not in allowed:
            return Ignored("server_not_allowed",
                           f"Plex server {event.server_id!r} is not in server_uuid_whitelist")
        if event.action == "rate" and not hook.ratings:
            return Ignored("ratings_disabled", "webhooks.plex.ratings is false")
        return None
    names = {u.strip().casefold() for u in hook.username_whitelist}
    if names and (event.user_name or "").strip().casefold() not in names:
        return Ignored("user_not_allowed",
                       f"{event.source} user {event.user_name!r} is not in username_whitelist")
    return None
