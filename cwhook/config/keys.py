"""The table of the configuration's keys: each key's default (as written in YAML) and its check.

The ``webhooks.NAME`` sections come from cwhook/sources/registry.py: every source has the common
keys, plus its own (``webhooks.plex``: ``server_uuid_whitelist``, ``ratings``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from cwhook.config import yamlerrors
from cwhook.config.checks import (
    SERVERS,
    Checker,
    boolean,
    choice,
    int_range,
    mapping,
    number_range,
    optional_url,
    string,
    string_list,
    token,
    url,
    user_patterns,
)
from cwhook.sources.registry import COMMON_SETTINGS, SOURCES, Setting

__all__ = ["ACCOUNT_KEYS", "ACCOUNT_NAME", "DEFAULT_ACCOUNT", "SCHEMA", "SERVERS", "TOKEN_KEYS", "default",
           "iter_schema"]

DEFAULT_ACCOUNT = "default"
ACCOUNT_NAME = re.compile(r"[a-z0-9_-]{1,32}")

Spec = tuple[Any, Checker]


def _setting(default: Setting) -> Spec:
    """A source's own key (an on/off switch or a list of names) as the table holds it."""
    if isinstance(default, bool):
        return default, boolean
    return list(default), string_list


def _webhook(own: Mapping[str, Setting]) -> dict[str, Spec]:
    common: dict[str, Spec] = {
        "enabled": (True, boolean),
        "token": ("", token),
        "username_whitelist": ([], string_list),
    }
    assert tuple(common) == COMMON_SETTINGS
    return {**common, **{key: _setting(value) for key, value in own.items()}}


def _names(spec: Mapping[str, Any]) -> Iterator[str]:
    for key, sub in spec.items():
        yield key
        if isinstance(sub, dict):
            yield from _names(sub)


SCHEMA: dict[str, dict[str, Any]] = {
    "server": {
        "host": ("0.0.0.0", string),
        "port": (8787, int_range(1, 65535)),
        "public_url": ("", optional_url),
        "max_body_bytes": (10485760, int_range(1024, 1 << 30)),
        "metrics": (True, boolean),
    },
    "webhooks": {name: _webhook(source.settings) for name, source in SOURCES.items()},
    "scrobble": {
        "pause_debounce_seconds": (5, number_range(0, 3600)),
        "suppress_start_at": (99, number_range(1, 100)),
        "regress_tolerance_percent": (5, number_range(0, 100)),
        "stop_pause_threshold": (80, number_range(80, 100)),
        "force_stop_at": (95, number_range(1, 100)),
        "watchlist_autoremove_movies": (False, boolean),
        "sync_manual_marks": (False, boolean),
        "ignore_plex_vod": (False, boolean),
        "dry_run": (False, boolean),
    },
    "trakt": {
        "api_url": ("https://api.trakt.tv", url),
        "oauth_url": ("https://auth.trakt.tv", url),
        "client_id": ("", string),
        "client_secret": ("", string),
        "access_token": ("", string),
        "refresh_token": ("", string),
        "expires_at": (0, int_range(0, 1 << 62)),
        "users": (["*"], user_patterns),
        "accounts": ({}, mapping),
    },
    "state": {"dir": ("./state", string)},
    "logging": {
        "level": ("info", choice("debug", "info", "warning", "error")),
        "format": ("auto", choice("auto", "console", "json")),
    },
}


yamlerrors.KEY_NAMES.update(_names(SCHEMA))

# The keys a named account (trakt.accounts.NAME) may have: its own `users` (no default: an
# empty list is an error there) and the same token keys as the `default` account's.
TOKEN_KEYS = ("access_token", "refresh_token", "expires_at")
ACCOUNT_KEYS: dict[str, Spec] = {
    "users": ([], user_patterns),
    **{key: SCHEMA["trakt"][key] for key in TOKEN_KEYS},
}


def iter_schema(schema: Mapping[str, Any] = SCHEMA, prefix: tuple[str, ...] = ()
                ) -> Iterator[tuple[tuple[str, ...], Any, Checker]]:
    """Every key of the schema: (key path, default as written in YAML, checker)."""
    for key, spec in schema.items():
        if isinstance(spec, dict):
            yield from iter_schema(spec, (*prefix, key))
        else:
            yield (*prefix, key), spec[0], spec[1]


def default(*path: str) -> Any:
    """The checked default of one key: the single source of every default."""
    spec: Any = SCHEMA
    for key in path:
        spec = spec[key]
    value, error = spec[1](spec[0])
    assert error is None, f"the schema default of {'.'.join(path)} fails its own check"
    return value
