"""The webhook URLs a media server is given (each holds its token), with a try-it line per server."""

from __future__ import annotations

import secrets
from importlib import resources

from cwhook.config.address import public_base_url
from cwhook.config.schema import SERVERS, Config
from cwhook.sources.registry import SOURCES


def example_config_text() -> str:
    return resources.files("cwhook").joinpath("config.example.yml").read_text("utf-8")


def new_token() -> str:
    """A fresh webhook token: 43 URL-safe characters (256 bits)."""
    return secrets.token_urlsafe(32)


def base_url(config: Config) -> str:
    return public_base_url(config.server.public_url, config.server.host, config.server.port)


def webhook_url(config: Config, server: str) -> str:
    return f"{base_url(config)}{SOURCES[server].path}?{config.webhook(server).token}"


def urls_text(config: Config, servers: tuple[str, ...] = SERVERS) -> str:
    lines = []
    for server in servers:
        hook = config.webhook(server)
        state = "" if hook.enabled else "   (disabled in config)"
        url = webhook_url(config, server)
        lines.append(f"{server}: {url}{state}")
        lines.append("  try it: " + SOURCES[server].try_it(url))
    lines.append("(a try-it line is a test, X-Cwhook-Dry-Run: 1: its answer says what would be sent to which "
                 "Trakt account; nothing is stored or sent)")
    return "\n".join(lines)
