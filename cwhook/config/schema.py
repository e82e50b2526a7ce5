"""The configuration file: schema, defaults, validation with key paths and line numbers.

Code outside cwhook/config/ imports the configuration's names from here; they live in
``checks`` (the checks of values), ``keys`` (the table of keys and defaults, the webhooks
sections from cwhook/sources/registry.py), ``model`` (the typed result), ``load`` (reading
and validating the file) and ``owners`` (whose file it is, for the messages).
"""

from __future__ import annotations

from pathlib import Path

from cwhook.config.checks import pattern_problem
from cwhook.config.keys import (
    ACCOUNT_KEYS,
    ACCOUNT_NAME,
    DEFAULT_ACCOUNT,
    SCHEMA,
    SERVERS,
    TOKEN_KEYS,
    default,
    iter_schema,
)
from cwhook.config.load import ConfigError, Problem, load_config, lost_credentials, lost_sections, parse_config
from cwhook.config.model import (
    AccountConfig,
    Config,
    LoggingConfig,
    ScrobbleConfig,
    ServerConfig,
    TraktConfig,
    WebhookConfig,
    changed_keys,
)
from cwhook.config.owners import owner_name, ownership_fix, owning, run_as, unreadable, user_name

__all__ = [
    "ACCOUNT_KEYS",
    "ACCOUNT_NAME",
    "DEFAULT_ACCOUNT",
    "SCHEMA",
    "SERVERS",
    "TOKEN_KEYS",
    "AccountConfig",
    "Config",
    "ConfigError",
    "LoggingConfig",
    "Problem",
    "ScrobbleConfig",
    "ServerConfig",
    "TraktConfig",
    "WebhookConfig",
    "changed_keys",
    "default",
    "iter_schema",
    "load_config",
    "lost_credentials",
    "lost_sections",
    "owner_name",
    "ownership_fix",
    "owning",
    "parse_config",
    "pattern_problem",
    "resolve_config_path",
    "run_as",
    "unreadable",
    "user_name",
]


def resolve_config_path(arg: str | None, env: str | None = None) -> Path:
    """``-c PATH``, else ``$CWHOOK_CONFIG`` (``env``: cwhook/service/environment.py reads it),
    else ``./cwhook.yml``."""
    if arg:
        return Path(arg)
    if env:
        return Path(env)
    return Path("cwhook.yml")
