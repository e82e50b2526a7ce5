"""Routing (pure): which Trakt accounts an event goes to (spec §8).

Each account has a list of user patterns ``SERVER:NAME``: SERVER is plex, tautulli,
jellyfin, emby or ``*``; NAME matches as the whitelists do (``filters.user_matches``:
Plex account title with case and punctuation ignored, ``id:<n>``, ``uuid:<u>``;
Jellyfin/Emby user name, case ignored) or is ``*``. ``*`` alone means ``*:*``.
An event goes to every account with a matching pattern: none, one or several.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cwhook.ingest.filters import user_matches
from cwhook.kernel.event import Event


def pattern_matches(pattern: str, event: Event) -> bool:
    text = pattern.strip()
    if text == "*":
        return True
    server, _, name = text.partition(":")
    server = server.strip().lower()
    if server not in ("*", event.source):
        return False
    return name.strip() == "*" or user_matches(event, name)


def route(event: Event, accounts: Mapping[str, Iterable[str]]) -> tuple[str, ...]:
    """The names of the accounts whose users match the event, in the accounts' order."""
    return tuple(name for name, patterns in accounts.items()
                 if any(pattern_matches(p, event) for p in patterns))
