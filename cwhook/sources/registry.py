"""The webhook sources: one entry per media server (and Tautulli), in one place.

Each entry gives the name (the config section ``webhooks.NAME``, the households
``NAME:USER`` patterns, the ``server`` label in /metrics and the journal), the route
(``POST /webhook/ROUTE?TOKEN``), the pure parser, and the multipart part that holds
the JSON. Adding a source is a parser module, a line here, its section in
``config.SCHEMA`` (tests check they agree) and, when its users are matched otherwise
than by a case-insensitive name, a rule in ``filters.user_matches``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cwhook.kernel.event import ParseResult
from cwhook.sources import emby, jellyfin, plex, tautulli

Parser = Callable[[str, bytes, float], ParseResult]


@dataclass(frozen=True)
class Source:
    name: str
    route: str  # the path is /webhook/<route>
    parse: Parser
    part: str  # the multipart/form field holding the JSON
    what: str  # how docs and messages name it

    @property
    def path(self) -> str:
        return f"/webhook/{self.route}"


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("plex", "plextrakt", plex.parse, "payload", "Plex"),
    Source("jellyfin", "jellyfintrakt", jellyfin.parse, "payload", "Jellyfin"),
    Source("emby", "embytrakt", emby.parse, "data", "Emby"),
    Source("tautulli", "tautullitrakt", tautulli.parse, "payload", "Tautulli (Plex without Plex Pass)"),
)}
