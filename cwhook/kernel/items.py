"""One item, many names (docs/rules.md, "One item across sources").

Servers name the same item differently: Plex names an episode by its imdb, tmdb
and tvdb ids, Jellyfin by tmdb and tvdb, Tautulli by its show's ids and its
numbers. Two events name one item when they share a name: an id of the same
kind (``movie|imdb=tt0133093``), the same show id with the same numbers for an
episode named by its show, or the same Trakt id once Trakt matched both.
Everything the rules remember about an item (the one-hour watched memory, the
two-device rule, ratings, marks) is kept under every name of the item.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from cwhook.kernel.event import Event

MAX_ALIASES = 10_000


def names(event: Event) -> tuple[str, ...]:
    """The names of the event's item, from the event alone: its identity first."""
    out = [event.identity]
    kind = event.kind
    out += [f"{kind}|{k}={v}" for k, v in event.ids.as_dict().items()]
    if kind == "episode" and not event.ids and event.number is not None:
        numbers = f"|{event.season}|{event.number}"
        if event.number_end is not None:
            numbers += f"-{event.number_end}"
        out += [f"episode|show.{k}={v}{numbers}" for k, v in event.show_ids.as_dict().items()]
    return tuple(dict.fromkeys(out))


class TraktAliases:
    """What Trakt matched each item identity to (``movie|trakt=N``), both ways; bounded.

    Delivery tells it (``learn``) when Trakt answers with the item's ids; the rules ask it
    (``names``) so that two names Trakt matched to one item are one item. No I/O."""

    def __init__(self, limit: int = MAX_ALIASES) -> None:
        self.limit = limit
        self._trakt: OrderedDict[str, str] = OrderedDict()  # identity -> trakt name
        self._identities: dict[str, set[str]] = {}  # trakt name -> identities

    def learn(self, identity: str, trakt_name: str) -> None:
        old = self._trakt.pop(identity, None)
        if old is not None:
            self._identities.get(old, set()).discard(identity)
        self._trakt[identity] = trakt_name
        self._identities.setdefault(trakt_name, set()).add(identity)
        while len(self._trakt) > self.limit:
            gone, name = self._trakt.popitem(last=False)
            same = self._identities.get(name)
            if same is not None:
                same.discard(gone)
                if not same:
                    del self._identities[name]

    def learn_answer(self, event: Event, answer: Any) -> None:
        """From a Trakt answer naming the item (``{"movie": {"ids": {"trakt": N}}}``)."""
        if not isinstance(answer, dict):
            return
        node = answer.get(event.kind)
        ids = node.get("ids") if isinstance(node, dict) else None
        trakt_id = ids.get("trakt") if isinstance(ids, dict) else None
        if isinstance(trakt_id, int) and not isinstance(trakt_id, bool) and trakt_id > 0:
            self.learn(event.identity, f"{event.kind}|trakt={trakt_id}")

    def names(self, event: Event) -> tuple[str, ...]:
        """The event's names, its Trakt name, and every identity matched to that Trakt name."""
        own = names(event)
        trakt_name = self._trakt.get(event.identity)
        if trakt_name is None:
            return own
        return tuple(dict.fromkeys((*own, trakt_name, *sorted(self._identities.get(trakt_name, ())))))


# The daemon's: delivery learns into it, every account's rules read it (matches are shared
# by all accounts, docs/configuration.md, Households).
SHARED = TraktAliases()
