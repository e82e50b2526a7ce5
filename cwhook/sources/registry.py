"""The webhook sources: one entry per media server (and Tautulli), in one place.

Everything that lists the sources reads this table (docs/architecture.md, "Adding a source"):
the routes ``POST /webhook/ROUTE?TOKEN`` (cwhook/ingest/app.py), the config sections
``webhooks.NAME`` and their keys (cwhook/config/keys.py), the households' ``NAME:USER``
patterns and the whitelists (cwhook/ingest/filters.py, cwhook/ingest/routing.py), the
``cwhook urls`` lines and their try-it curl (cwhook/config/file.py), the decision journal and
the ``server`` label of /metrics. tests/test_sources.py checks that each entry has its parser's
sample payload, its doc page, its curl example in docs/curl.md and its metrics series.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cwhook.kernel.event import ParseResult
from cwhook.sources import emby, jellyfin, plex, tautulli
from cwhook.sources.users import BY_NAME, Users, fold_plex, same_user

Parser = Callable[[str, bytes, float], ParseResult]
Setting = bool | tuple[str, ...]  # an on/off switch or a list of names

# The keys every webhooks.NAME section has (their checks and defaults: cwhook/config/keys.py).
COMMON_SETTINGS = ("enabled", "token", "username_whitelist")
NO_SETTINGS: Mapping[str, Setting] = MappingProxyType({})


@dataclass(frozen=True)
class Source:
    name: str  # the config section webhooks.NAME, the NAME: of user patterns, the journal's source
    route: str  # the path is /webhook/<route>
    parse: Parser
    part: str  # the multipart/form field holding the JSON
    what: str  # how docs and messages name it
    users: Users  # how username_whitelist entries and NAME:USER patterns name its users
    user_noun: str  # how an ignore message names one of its users
    curl: str  # the arguments of `cwhook urls`'s try-it line after the URL and the dry-run header
    # Its section's own keys beyond COMMON_SETTINGS, with their defaults (cwhook.ingest.filters
    # applies server_uuid_whitelist and ratings to the sources that have them).
    settings: Mapping[str, Setting] = field(default_factory=lambda: NO_SETTINGS)

    @property
    def path(self) -> str:
        return f"/webhook/{self.route}"

    @property
    def label(self) -> str:
        """Its ``server`` label in /metrics (cwhook_webhooks, cwhook_ignored, cwhook_webhook_ack_seconds)."""
        return self.name

    @property
    def doc(self) -> str:
        """Its setup page."""
        return f"docs/{self.name}.md"

    def try_it(self, url: str) -> str:
        """A test request to ``url`` (X-Cwhook-Dry-Run, docs/curl.md): once Trakt is authorized, a
        real one would start a scrobble on the person's account."""
        return f"curl -sS -X POST '{url}' -H 'X-Cwhook-Dry-Run: 1' {self.curl}"


_JSON = "-H 'Content-Type: application/json' -d "

SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("plex", "plextrakt", plex.parse, "payload", "Plex", Users(fold_plex, ids=True, uuids=True),
           "Plex account",
           """-F 'payload={"event":"media.play","Account":{"id":1,"title":"me"},"Player":{"uuid":"curl"},"""
           """"Metadata":{"type":"movie","title":"Guardians of the Galaxy","year":2014,"""
           """"Guid":[{"id":"imdb://tt2015381"}],"viewOffset":60000,"duration":7320000}}'""",
           MappingProxyType({"server_uuid_whitelist": (), "ratings": False})),
    Source("jellyfin", "jellyfintrakt", jellyfin.parse, "payload", "Jellyfin", BY_NAME, "jellyfin user",
           _JSON + """'{"NotificationType":"PlaybackStart","NotificationUsername":"me","DeviceId":"curl","""
           """"ItemType":"Movie","Name":"Guardians of the Galaxy","Year":2014,"Provider_imdb":"tt2015381","""
           """"RunTimeTicks":73200000000,"PlaybackPositionTicks":600000000}'"""),
    Source("emby", "embytrakt", emby.parse, "data", "Emby", BY_NAME, "emby user",
           _JSON + """'{"Event":"playback.start","User":{"Name":"me"},"Session":{"DeviceId":"curl"},"""
           """"Item":{"Type":"Movie","Name":"Guardians of the Galaxy","ProductionYear":2014,"""
           """"ProviderIds":{"Imdb":"tt2015381"},"RunTimeTicks":73200000000},"""
           """"PlaybackInfo":{"PositionTicks":600000000}}'"""),
    Source("tautulli", "tautullitrakt", tautulli.parse, "payload", "Tautulli (Plex without Plex Pass)",
           Users(same_user, ids=True), "tautulli user",
           _JSON + """'{"action":"play","media_type":"movie","username":"me","user_id":"1","machine_id":"curl","""
           """"session_key":"1","title":"Guardians of the Galaxy","year":"2014","imdb_id":"tt2015381","""
           """"view_offset":"60000","duration_ms":"7320000"}'"""),
)}
