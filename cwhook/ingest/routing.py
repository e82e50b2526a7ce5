"""Routing (pure): which Trakt accounts an event goes to (docs/configuration.md, Households).

Each account has a list of user patterns ``SERVER:NAME``: SERVER is a source of
cwhook/sources/registry.py (plex, jellyfin, emby, tautulli) or ``*``; NAME matches as the
whitelists do (``filters.user_matches``, by the source's ``Users``: Plex account title with
case and punctuation ignored, ``id:<n>``, ``uuid:<u>``; Tautulli user name, case ignored, or
``id:<n>``; Jellyfin/Emby user name, case ignored) or is ``*``. ``*`` alone means ``*:*``. An
event goes to every account with a matching pattern: none, one or several.

A ``Router`` is built once per config: every pattern becomes the keys it matches, so
routing an event is a few dictionary lookups however many accounts the file has
(bench/accounts.py); tests/test_households.py checks it against ``filters.user_matches``
pattern by pattern.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cwhook.kernel.event import Event
from cwhook.sources.registry import SOURCES
from cwhook.sources.users import Users

ANY = "*"
# How each source names its users (cwhook/sources/registry.py): a NAME means the same to every
# source with equal Users (Plex by folded title, id or uuid; Tautulli by name or id; the rest by name).
_FAMILIES = tuple(dict.fromkeys(source.users for source in SOURCES.values()))


class Router:
    """Every account's patterns, indexed: ``route(event)`` costs the same for 1 or 1,000 accounts."""

    def __init__(self, accounts: Mapping[str, Iterable[str]]) -> None:
        self.names = tuple(accounts)
        self._everyone: dict[str, set[int]] = {}  # server or "*" -> the accounts taking all its users
        self._index: dict[tuple[str, Users, str, str], set[int]] = {}  # (server, family, kind, value)
        for i, patterns in enumerate(accounts.values()):
            for pattern in patterns:
                self._add(i, pattern)
        # No pattern names a user (the usual one account): a server's accounts are known already.
        self._whole = None if self._index else {source: self._names(self._everyone.get(ANY, set())
                                                                    | self._everyone.get(source, set()))
                                                for source in SOURCES}

    def _add(self, account: int, pattern: str) -> None:
        text = pattern.strip()
        if text == ANY:
            self._everyone.setdefault(ANY, set()).add(account)
            return
        server, _, name = text.partition(":")
        server = server.strip().lower()
        if name.strip() == ANY:
            self._everyone.setdefault(server, set()).add(account)
            return
        for family in _FAMILIES:
            for kind, value in family.entry_keys(name):
                self._index.setdefault((server, family, kind, value), set()).add(account)

    def route(self, event: Event) -> tuple[str, ...]:
        """The names of the accounts whose users match the event, in the accounts' order."""
        if self._whole is not None:
            return self._whole[event.source]
        found: set[int] = set()
        family = SOURCES[event.source].users
        keys = family.event_keys(event)
        for server in (ANY, event.source):
            found |= self._everyone.get(server, set())
            for kind, value in keys:
                found |= self._index.get((server, family, kind, value), set())
        return self._names(found)

    def _names(self, found: set[int]) -> tuple[str, ...]:
        return tuple(self.names[i] for i in sorted(found))
