"""The configuration as the code reads it: frozen dataclasses whose defaults are the table's
(cwhook/config/keys.py), so a test that builds ScrobbleConfig() gets exactly what the daemon
gets from an empty file."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from cwhook.config.keys import DEFAULT_ACCOUNT, SERVERS, default


@dataclass(frozen=True)
class ServerConfig:
    host: str = default("server", "host")
    port: int = default("server", "port")
    public_url: str = default("server", "public_url")
    max_body_bytes: int = default("server", "max_body_bytes")
    metrics: bool = default("server", "metrics")  # GET /metrics answers (false: 404)


@dataclass(frozen=True)
class WebhookConfig:
    """One webhooks.NAME section: the common keys and every source's own (each defaults to
    Plex's: a source without the key never reads it, cwhook/ingest/filters.py)."""

    enabled: bool = default("webhooks", "plex", "enabled")
    token: str = default("webhooks", "plex", "token")
    username_whitelist: tuple[str, ...] = default("webhooks", "plex", "username_whitelist")
    server_uuid_whitelist: tuple[str, ...] = default("webhooks", "plex", "server_uuid_whitelist")
    ratings: bool = default("webhooks", "plex", "ratings")


@dataclass(frozen=True)
class ScrobbleConfig:
    pause_debounce_seconds: float = default("scrobble", "pause_debounce_seconds")
    suppress_start_at: float = default("scrobble", "suppress_start_at")
    regress_tolerance_percent: float = default("scrobble", "regress_tolerance_percent")
    stop_pause_threshold: float = default("scrobble", "stop_pause_threshold")
    force_stop_at: float = default("scrobble", "force_stop_at")
    watchlist_autoremove_movies: bool = default("scrobble", "watchlist_autoremove_movies")
    sync_manual_marks: bool = default("scrobble", "sync_manual_marks")  # Jellyfin/Emby marks -> history
    ignore_plex_vod: bool = default("scrobble", "ignore_plex_vod")  # Plex's own streaming catalogue
    dry_run: bool = default("scrobble", "dry_run")


@dataclass(frozen=True)
class AccountConfig:
    """One Trakt account: who scrobbles to it and its tokens (docs/configuration.md, Households)."""

    name: str
    users: tuple[str, ...] = ()
    access_token: str = ""
    refresh_token: str = ""
    expires_at: int = 0

    @property
    def key(self) -> tuple[str, ...]:
        """Where its tokens live in the YAML file."""
        return ("trakt",) if self.name == DEFAULT_ACCOUNT else ("trakt", "accounts", self.name)


@dataclass(frozen=True)
class TraktConfig:
    api_url: str = default("trakt", "api_url")
    oauth_url: str = default("trakt", "oauth_url")
    client_id: str = default("trakt", "client_id")
    client_secret: str = default("trakt", "client_secret")
    access_token: str = default("trakt", "access_token")
    refresh_token: str = default("trakt", "refresh_token")
    expires_at: int = default("trakt", "expires_at")
    users: tuple[str, ...] = default("trakt", "users")
    accounts: dict[str, AccountConfig] = field(default_factory=dict)

    def all_accounts(self) -> dict[str, AccountConfig]:
        """Every account, `default` (the top-level tokens) first."""
        return {DEFAULT_ACCOUNT: AccountConfig(DEFAULT_ACCOUNT, self.users, self.access_token,
                                               self.refresh_token, self.expires_at), **self.accounts}

    def account(self, name: str) -> AccountConfig | None:
        return self.all_accounts().get(name)

    @functools.cached_property
    def routes(self) -> dict[str, tuple[str, ...]]:
        """Each account's user patterns, by name (what routing needs, built once per config)."""
        return {name: acc.users for name, acc in self.all_accounts().items()}


@dataclass(frozen=True)
class LoggingConfig:
    level: str = default("logging", "level")
    format: str = default("logging", "format")


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig = field(default_factory=ServerConfig)
    webhooks: dict[str, WebhookConfig] = field(
        default_factory=lambda: {name: WebhookConfig() for name in SERVERS}
    )
    scrobble: ScrobbleConfig = field(default_factory=ScrobbleConfig)
    trakt: TraktConfig = field(default_factory=TraktConfig)
    state_dir: Path = Path(default("state", "dir"))
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Key paths of the sections (non-empty mappings) the file had: a later read
    # that lacks one of them is probably a file caught half-written.
    sections: frozenset[tuple[str, ...]] = frozenset()
    # The text this config was parsed from and its key paths: the key record
    # (cwhook/config/keyrecord.py) reuses them when the file still holds that text, instead of
    # parsing it again (a start read the file three times; 1,000 accounts made that a third of it).
    source: str = field(default="", compare=False, repr=False)
    keys: frozenset[tuple[str, ...]] = field(default=frozenset(), compare=False, repr=False)

    def webhook(self, server: str) -> WebhookConfig:
        return self.webhooks[server]

    @functools.cached_property
    def secrets(self) -> tuple[str, ...]:
        """What no log line may show: the webhook tokens, every Trakt account's tokens, the client
        secret (gathered once per config: every log line asks for them)."""
        trakt = self.trakt
        tokens = [t for a in trakt.all_accounts().values() for t in (a.access_token, a.refresh_token)]
        return (*(hook.token for hook in self.webhooks.values()), *tokens, trakt.client_secret)


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted key paths whose values differ (names only: values may be secrets)."""
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: tuple[str, ...]) -> None:
        if is_dataclass(a) and type(a) is type(b):
            for f in fields(a):
                walk(getattr(a, f.name), getattr(b, f.name), (*prefix, f.name))
        elif isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), (*prefix, str(key)))
        elif a != b:
            out.append(".".join(prefix))

    for f in fields(Config):
        if f.compare and f.name not in ("path", "sections"):  # not the text read, nor its key paths
            walk(getattr(old, f.name), getattr(new, f.name), ("state", "dir") if f.name == "state_dir" else (f.name,))
    return out
