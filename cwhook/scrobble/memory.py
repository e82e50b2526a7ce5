"""What one account's rules remember besides sessions, and the two rules that need nothing else.

Three registries: the items watched in the last hour (rule 6, docs/rules.md "One viewing across two
devices"), the recent ratings and the recent marks by hand. Each is bounded by time and by count
(``limit`` entries, the oldest forgotten first), and a key longer than ``MAX_KEY`` is kept as its
digest, so memory stays bounded whatever the webhooks carry.

An item is kept under every one of its names (cwhook.kernel.items; docs/rules.md "One item across
sources"), so that two servers naming one item differently meet. One ``Rules`` serves one Trakt
account (docs/configuration.md, "Households: several Trakt accounts"), so an item is the same
whichever of the account's media-server users played it: Anna on Plex and on Jellyfin, or
`Family`, is one person to Trakt.
"""

from __future__ import annotations

import hashlib
from typing import TypeVar

from cwhook.kernel.event import Event
from cwhook.kernel.items import TraktAliases
from cwhook.scrobble.decision import Decision, Send

WATCHED_WINDOW = 3600.0
RATING_WINDOW = 600.0
MAX_NAMES = 8  # names per item (cwhook.kernel.items.names) the registries are sized for
MAX_KEY = 200  # a longer session or item key (a title of a megabyte) is kept as its digest
_V = TypeVar("_V")


class Memory:
    """The watched items, ratings and marks of one account, by item name (each dict is kept for
    the life of the object: ``Rules`` shows them to the tests)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.watched: dict[str, float] = {}
        self.ratings: dict[str, tuple[int | None, float]] = {}
        self.marks: dict[str, tuple[str, float]] = {}

    def rate(self, event: Event, keys: tuple[str, ...], now: float) -> Decision:
        """Ratings pass through; the same rating of the item within RATING_WINDOW is sent once."""
        last = _newest(self.ratings, keys)
        if last is not None and last[0] == event.rating and now - last[1] <= RATING_WINDOW:
            return Decision(event, "duplicate")
        for key in keys:
            _put(self.ratings, key, (event.rating, now), self.limit)
        return Decision(event, "sent", Send("rate", event, 0.0))

    def mark(self, event: Event, keys: tuple[str, ...], now: float) -> Decision:
        """An item marked by hand in Jellyfin or Emby (``sync_manual_marks`` is on): a mark watched
        is added to the Trakt history (``history_add``; ``already_watched`` when the item was
        scrobbled within the hour), a mark unwatched removes the item's plays (``history_remove``);
        the same mark for the item within RATING_WINDOW is sent once."""
        last = _newest(self.marks, keys)
        if last is not None and last[0] == event.action and now - last[1] <= RATING_WINDOW:
            return Decision(event, "duplicate")
        for key in keys:
            _put(self.marks, key, (event.action, now), self.limit)
        if event.action == "mark_unwatched":
            for key in keys:
                self.watched.pop(key, None)
            return Decision(event, "sent", Send("history_remove", event, 0.0), 0.0)
        seen = self.seen(keys)
        if seen is not None and now - seen <= WATCHED_WINDOW:
            return Decision(event, "already_watched", progress=100.0, notes=("watched_recently",))
        self.remember(keys, now)
        return Decision(event, "sent", Send("history_add", event, 100.0), 100.0)

    def seen(self, keys: tuple[str, ...]) -> float | None:
        """When the item, by any of its names, was last watched."""
        times = [t for key in keys if (t := self.watched.get(key)) is not None]
        return max(times) if times else None

    def remember_at(self, key: str, at: float) -> None:
        """At start: a name of an item watched before the restart (the newest time wins)."""
        if at > self.watched.get(key, float("-inf")):
            self.remember((key,), at)

    def remember(self, keys: tuple[str, ...], now: float) -> None:
        """A watched item, under every name of it."""
        for key in keys:
            _put(self.watched, key, now, self.limit)

    def sweep(self, now: float) -> None:
        """Forget what is older than its window."""
        for wkey in [k for k, t in self.watched.items() if now - t > WATCHED_WINDOW]:
            del self.watched[wkey]
        for rkey in [k for k, (_, t) in self.ratings.items() if now - t > RATING_WINDOW]:
            del self.ratings[rkey]
        for mkey in [k for k, (_, t) in self.marks.items() if now - t > RATING_WINDOW]:
            del self.marks[mkey]


def item_keys(event: Event, aliases: TraktAliases) -> tuple[str, ...]:
    """The registries' keys for the event's item: every name of it."""
    return tuple(compact(name) for name in aliases.names(event))


def session_key(event: Event) -> str:
    return compact(event.session_key)


def compact(key: str) -> str:
    """A key of bounded size: a long one becomes its digest (the same key, the same digest)."""
    if len(key) <= MAX_KEY:
        return key
    return "#" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _put(registry: dict[str, _V], key: str, value: _V, limit: int) -> None:
    """Remember ``key`` as the newest entry; beyond ``limit`` entries the oldest go first."""
    registry.pop(key, None)
    registry[key] = value
    while len(registry) > limit:
        del registry[next(iter(registry))]


def _newest(memory: dict[str, tuple[_V, float]], keys: tuple[str, ...]) -> tuple[_V, float] | None:
    """The most recent entry of ``memory`` under any of ``keys``."""
    found = [entry for key in keys if (entry := memory.get(key)) is not None]
    return max(found, key=lambda entry: entry[1]) if found else None
