"""Ingest filters (pure): whitelists and the Plex ratings switch."""

from __future__ import annotations

import unicodedata

from cwhook.config.schema import WebhookConfig
from cwhook.kernel.event import Event, Ignored


def same_user(name: str) -> str:
    """A user name as compared: Unicode-normalized (a composed and a decomposed "Zoë" are one
    name) and case-folded."""
    return unicodedata.normalize("NFC", name).strip().casefold()


def fold_plex(name: str) -> str:
    """Plex account titles compare with case and punctuation ignored."""
    return "".join(c for c in same_user(name) if c.isalnum())


def user_matches(event: Event, name: str) -> bool:
    """Does a whitelist entry (or the NAME of a SERVER:NAME pattern) name the event's user?

    Plex: the account title with case and punctuation ignored, ``id:<n>`` or
    ``uuid:<u>``; Tautulli: the Plex user name, case ignored, or ``id:<n>`` (its user_id);
    Jellyfin and Emby: the user name, case ignored.
    """
    entry = name.strip()
    if event.source == "tautulli" and entry.lower().startswith("id:"):
        return event.user_id is not None and entry[3:].strip() == event.user_id
    if event.source != "plex":
        return bool(entry) and same_user(event.user_name or "") == same_user(entry)
    if entry.lower().startswith("id:"):
        return event.user_id is not None and entry[3:].strip() == event.user_id
    if entry.lower().startswith("uuid:"):
        return bool(event.user_uuid) and entry[5:].strip().lower() == (event.user_uuid or "").lower()
    return bool(event.user_name) and bool(fold_plex(entry)) and fold_plex(entry) == fold_plex(event.user_name or "")


def plex_user_allowed(event: Event, whitelist: tuple[str, ...]) -> bool:
    return not whitelist or any(user_matches(event, entry) for entry in whitelist)


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
    if hook.username_whitelist and not any(user_matches(event, u) for u in hook.username_whitelist):
        return Ignored("user_not_allowed",
                       f"{event.source} user {event.user_name!r} is not in username_whitelist")
    return None
