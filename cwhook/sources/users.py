"""How a source's users are named in a whitelist entry or a household pattern (pure).

A name is compared Unicode-normalized and case-folded (``same_user``); Plex account titles
also ignore punctuation (``fold_plex``). A source whose payloads carry an account id also
takes ``id:<n>``, and Plex, which also sends the account's uuid, ``uuid:<u>``
(docs/configuration.md, Households). Each registry entry names its ``Users``;
``cwhook.ingest.filters`` and ``cwhook.ingest.routing`` read them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass


def same_user(name: str) -> str:
    """A user name as compared: Unicode-normalized (a composed and a decomposed "Zoë" are one
    name) and case-folded."""
    return unicodedata.normalize("NFC", name).strip().casefold()


def fold_plex(name: str) -> str:
    """Plex account titles compare with case and punctuation ignored."""
    return "".join(c for c in same_user(name) if c.isalnum())


@dataclass(frozen=True)
class Users:
    """The whitelist semantics of one source: sources with equal ``Users`` read a NAME alike."""

    fold: Callable[[str], str]  # how a name compares (same_user or fold_plex)
    ids: bool = False  # ``id:<n>`` names the user by the payload's account id
    uuids: bool = False  # ``uuid:<u>`` names the user by the payload's account uuid


BY_NAME = Users(same_user)  # Jellyfin, Emby: the user name, case ignored
