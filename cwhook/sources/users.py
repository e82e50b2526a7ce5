"""How a source's users are named in a whitelist entry or a household pattern (pure).

A name is compared Unicode-normalized and case-folded (``same_user``); Plex account titles
also ignore punctuation (``fold_plex``). A source whose payloads carry an account id also
takes ``id:<n>``, and Plex, which also sends the account's uuid, ``uuid:<u>``
(docs/configuration.md, Households). Each registry entry names its ``Users``;
``cwhook.ingest.filters`` and ``cwhook.ingest.routing`` read them.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from cwhook.kernel.event import Event

Key = tuple[str, str]  # (kind, value): ("name", folded name), ("id", account id), ("uuid", lowered uuid)


@functools.lru_cache(maxsize=1024)  # a household has a few names: folded once each, not per webhook
def same_user(name: str) -> str:
    """A user name as compared: Unicode-normalized (a composed and a decomposed "Zoë" are one
    name) and case-folded."""
    return unicodedata.normalize("NFC", name).strip().casefold()


@functools.lru_cache(maxsize=1024)
def fold_plex(name: str) -> str:
    """Plex account titles compare with case and punctuation ignored."""
    return "".join(c for c in same_user(name) if c.isalnum())


@dataclass(frozen=True)
class Users:
    """The whitelist semantics of one source: sources with equal ``Users`` read a NAME alike."""

    fold: Callable[[str], str]  # how a name compares (same_user or fold_plex)
    ids: bool = False  # ``id:<n>`` names the user by the payload's account id
    uuids: bool = False  # ``uuid:<u>`` names the user by the payload's account uuid

    def entry_keys(self, name: str) -> list[Key]:
        """What a whitelist entry, or a pattern's NAME, names: ``(kind, value)`` pairs, none for
        an entry that names nobody (empty once folded)."""
        entry = name.strip()
        lower = entry.lower()
        if self.ids and lower.startswith("id:"):
            return [("id", entry[3:].strip())]
        if self.uuids and lower.startswith("uuid:"):
            return [("uuid", entry[5:].strip().lower())]
        folded = self.fold(entry)
        return [("name", folded)] if folded else []

    def event_keys(self, event: Event) -> list[Key]:
        """What an event's user is known by, as ``(kind, value)`` pairs: an entry names the user
        when it shares one (the one reading of names for whitelists and households)."""
        keys: list[Key] = []
        if self.ids and event.user_id is not None:
            keys.append(("id", event.user_id))
        if self.uuids and event.user_uuid:
            keys.append(("uuid", event.user_uuid.lower()))
        folded = self.fold(event.user_name or "")
        if folded:
            keys.append(("name", folded))
        return keys


BY_NAME = Users(same_user)  # Jellyfin, Emby: the user name, case ignored
