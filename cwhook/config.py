"""The configuration file: schema, defaults, validation with key paths and line numbers.

Loading is strict: an unknown key, a wrong type or an out-of-range value is a
problem, and every problem is reported at once, one line each, in the form
``scrobble.force_stop_at (line 31): must be a number between 1 and 100``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SERVERS = ("plex", "jellyfin", "emby")


class ConfigError(Exception):
    """The file cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- the schema -------------------------------------------------------------
# A key's spec is (default, checker). A checker takes the YAML value and returns
# (value, None) or (None, "what is wrong").

Checked = tuple[Any, str | None]
Checker = Callable[[Any], Checked]


def _string(value: Any) -> Checked:
    if isinstance(value, (bool, dict, list)):
        return None, "must be a string"
    return str(value), None


def _url(value: Any) -> Checked:
    text, err = _string(value)
    if err:
        return None, err
    if not text.startswith(("http://", "https://")):
        return None, "must be a URL starting with http:// or https://"
    return text.rstrip("/"), None


def _optional_url(value: Any) -> Checked:
    text, err = _string(value)
    if err:
        return None, err
    if text == "":
        return "", None
    return _url(text)


def _token(value: Any) -> Checked:
    text, err = _string(value)
    if err:
        return None, err
    if text and len(text) < 16:
        return None, "must be empty (generated on first run) or at least 16 characters"
    if any(c.isspace() or c in "&#?%" for c in text):
        return None, "must not contain spaces or any of & # ? %"
    return text, None


def _bool(value: Any) -> Checked:
    if isinstance(value, bool):
        return value, None
    return None, "must be true or false"


def _int_range(lo: int, hi: int) -> Checker:
    def check(value: Any) -> Checked:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            return None, f"must be a whole number between {lo} and {hi}"
        return value, None

    return check


def _number_range(lo: float, hi: float) -> Checker:
    def check(value: Any) -> Checked:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            return None, f"must be a number between {lo:g} and {hi:g}"
        return float(value), None

    return check


def _choice(*choices: str) -> Checker:
    def check(value: Any) -> Checked:
        if not isinstance(value, str) or value.lower() not in choices:
            return None, "must be one of " + "|".join(choices)
        return value.lower(), None

    return check


def _string_list(value: Any) -> Checked:
    if not isinstance(value, list):
        return None, "must be a list, e.g. [alice, bob]"
    out = []
    for item in value:
        if isinstance(item, (bool, dict, list)) or item is None:
            return None, "must be a list of names"
        out.append(str(item))
    return tuple(out), None


def _webhook(extra: Mapping[str, tuple[Any, Checker]]) -> dict[str, tuple[Any, Checker]]:
    return {
        "enabled": (True, _bool),
        "token": ("", _token),
        "username_whitelist": ([], _string_list),
        **extra,
    }


SCHEMA: dict[str, dict[str, Any]] = {
    "server": {
        "host": ("0.0.0.0", _string),
        "port": (8787, _int_range(1, 65535)),
        "public_url": ("", _optional_url),
        "max_body_bytes": (10485760, _int_range(1024, 1 << 30)),
    },
    "webhooks": {
        "plex": _webhook(
            {"server_uuid_whitelist": ([], _string_list), "ratings": (False, _bool)}
        ),
        "jellyfin": _webhook({}),
        "emby": _webhook({}),
    },
    "scrobble": {
        "pause_debounce_seconds": (5, _number_range(0, 3600)),
        "suppress_start_at": (99, _number_range(1, 100)),
        "regress_tolerance_percent": (5, _number_range(0, 100)),
        "stop_pause_threshold": (80, _number_range(80, 100)),
        "force_stop_at": (95, _number_range(1, 100)),
        "watchlist_autoremove_movies": (False, _bool),
        "sync_manual_marks": (False, _bool),
        "ignore_plex_vod": (False, _bool),
        "dry_run": (False, _bool),
    },
    "trakt": {
        "api_url": ("https://api.trakt.tv", _url),
        "oauth_url": ("https://auth.trakt.tv", _url),
        "client_id": ("", _string),
        "client_secret": ("", _string),
        "access_token": ("", _string),
        "refresh_token": ("", _string),
        "expires_at": (0, _int_range(0, 1 << 62)),
    },
    "state": {"dir": ("./state", _string)},
    "logging": {
        "level": ("info", _choice("debug", "info", "warning", "error")),
        "format": ("auto", _choice("auto", "console", "json")),
    },
}


# --- the typed result ---------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8787
    public_url: str = ""
    max_body_bytes: int = 10485760


@dataclass(frozen=True)
class WebhookConfig:
    enabled: bool = True
    token: str = ""
    username_whitelist: tuple[str, ...] = ()
    server_uuid_whitelist: tuple[str, ...] = ()
    ratings: bool = False


@dataclass(frozen=True)
class ScrobbleConfig:
    pause_debounce_seconds: float = 5.0
    suppress_start_at: float = 99.0
    regress_tolerance_percent: float = 5.0
    stop_pause_threshold: float = 80.0
    force_stop_at: float = 95.0
    watchlist_autoremove_movies: bool = False
    sync_manual_marks: bool = False  # Jellyfin/Emby "mark watched/unwatched" -> Trakt history
    ignore_plex_vod: bool = False  # drop items from Plex's own streaming catalogue
    dry_run: bool = False


@dataclass(frozen=True)
class TraktConfig:
    api_url: str = "https://api.trakt.tv"
    oauth_url: str = "https://auth.trakt.tv"
    client_id: str = ""
    client_secret: str = ""
    access_token: str = ""
    refresh_token: str = ""
    expires_at: int = 0

    @property
    def authorized(self) -> bool:
        return bool(self.access_token)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig = field(default_factory=ServerConfig)
    webhooks: dict[str, WebhookConfig] = field(
        default_factory=lambda: {name: WebhookConfig() for name in SERVERS}
    )
    scrobble: ScrobbleConfig = field(default_factory=ScrobbleConfig)
    trakt: TraktConfig = field(default_factory=TraktConfig)
    state_dir: Path = Path("state")
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def webhook(self, server: str) -> WebhookConfig:
        return self.webhooks[server]


# --- validation ---------------------------------------------------------------


def _key_lines(node: yaml.Node | None, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                path = (*prefix, str(key_node.value))
                out[path] = key_node.start_mark.line + 1
                _key_lines(value_node, path, out)


def _where(path: tuple[str, ...], lines: Mapping[tuple[str, ...], int]) -> str:
    dotted = ".".join(path)
    for n in range(len(path), 0, -1):
        line = lines.get(path[:n])
        if line is not None:
            return f"{dotted} (line {line})"
    return dotted


def _check_section(
    data: Any,
    schema: Mapping[str, Any],
    path: tuple[str, ...],
    lines: Mapping[tuple[str, ...], int],
    problems: list[str],
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = _where(path, lines) if path else "top level (line 1)"
        problems.append(f"{where}: must be a section of keys (key: value)")
        data = {}
    for key in data:
        if str(key) not in schema:
            known = ", ".join(schema)
            problems.append(f"{_where((*path, str(key)), lines)}: unknown key (known: {known})")
    for key, spec in schema.items():
        sub = (*path, key)
        if isinstance(spec, dict):
            values[key] = _check_section(data.get(key), spec, sub, lines, problems)
            continue
        default, checker = spec
        raw = data.get(key)
        if raw is None:
            values[key] = checker(default)[0]
            continue
        value, error = checker(raw)
        if error:
            problems.append(f"{_where(sub, lines)}: {error}")
        values[key] = value
    return values


def parse_config(text: str, path: Path) -> Config:
    """Validate YAML text; raise ConfigError with every problem found."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{path.name}{where}: not valid YAML: {problem}"]) from None
    lines: dict[tuple[str, ...], int] = {}
    _key_lines(node, (), lines)
    problems: list[str] = []
    values = _check_section(data, SCHEMA, (), lines, problems)
    if not problems:
        scrobble = values["scrobble"]
        if scrobble["force_stop_at"] < scrobble["stop_pause_threshold"]:
            problems.append(
                f"{_where(('scrobble', 'force_stop_at'), lines)}: must not be below "
                "scrobble.stop_pause_threshold (a pause promoted to a stop would be demoted again)"
            )
    if problems:
        raise ConfigError(problems)
    state_dir = Path(os.path.expanduser(values["state"]["dir"]))
    if not state_dir.is_absolute():
        state_dir = path.resolve().parent / state_dir
    return Config(
        path=path,
        server=ServerConfig(**values["server"]),
        webhooks={name: WebhookConfig(**values["webhooks"][name]) for name in SERVERS},
        scrobble=ScrobbleConfig(**values["scrobble"]),
        trakt=TraktConfig(**values["trakt"]),
        state_dir=state_dir,
        logging=LoggingConfig(**values["logging"]),
    )


def load_config(path: Path) -> Config:
    """Read and validate the file at ``path``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path.name}: not UTF-8 text (byte {exc.start})"]) from None
    return parse_config(text, path)


def resolve_config_path(arg: str | None) -> Path:
    """``-c PATH``, else ``$CWHOOK_CONFIG``, else ``./cwhook.yml``."""
    if arg:
        return Path(arg)
    env = os.environ.get("CWHOOK_CONFIG")
    if env:
        return Path(env)
    return Path("cwhook.yml")
