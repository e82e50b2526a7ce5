"""The configuration file: schema, defaults, validation with key paths and line numbers.

Loading is strict: an unknown key, a wrong type or an out-of-range value is a
problem, and every problem is reported at once, one line each, in the form
``scrobble.force_stop_at (line 31): must be a number between 1 and 100``.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from cwhook.config import yamlerrors
from cwhook.config.yamlerrors import duplicate_keys, explain, safe_name, sections
from cwhook.sources.registry import SOURCES

SERVERS = tuple(SOURCES)  # webhooks.<server> (cwhook/sources/registry.py)
DEFAULT_ACCOUNT = "default"
ACCOUNT_NAME = re.compile(r"[a-z0-9_-]{1,32}")


_LINE = re.compile(r"\(lines? (\d+)")


class Problem(str):
    """One problem with the file, in words (this str), with a code and the line to fix.

    The words may quote the file (never a secret's value: cwhook/config/yamlerrors.py); the code
    and the line are what an unauthenticated reader (/healthz) may see."""

    code: str
    line: int | None
    public: bool  # the words quote nothing of the file (its path, users, section names): /healthz may show them

    def __new__(cls, text: str, code: str = "invalid_value", line: int | None = None,
                public: bool = False) -> Problem:
        self = super().__new__(cls, text)
        self.code = code
        self.public = public
        if line is None:
            found = _LINE.search(text)
            line = int(found.group(1)) if found else None
        self.line = line
        return self


class ConfigError(Exception):
    """The file cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.details = [p if isinstance(p, Problem) else Problem(p) for p in problems]

    def summary(self) -> str:
        """The problems as codes and lines only (``yaml_indentation at line 31``): no words of the file."""
        return "; ".join(dict.fromkeys(
            f"{p.code}: {p}" if p.public else p.code + (f" at line {p.line}" if p.line is not None else "")
            for p in self.details))


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


def pattern_problem(pattern: str) -> str | None:
    """What is wrong with a user pattern (``SERVER:NAME`` or ``*``), or None."""
    if pattern == "*":
        return None
    if pattern.strip() == "*":
        return f"{pattern!r} has spaces around the *: write it *"
    server, sep, name = pattern.partition(":")
    if not sep or not name.strip():
        return f"{pattern!r} must look like SERVER:NAME (e.g. plex:Anna, jellyfin:anna, *:*)"
    if " - " in name or name.endswith(" -"):
        return (f"{pattern!r} reads as two list items run together: a `- ` item indented under the one "
                "above it continues that item. Start every `- ` of the list at the same indentation")
    again = re.search(rf"(?i)(?:^|\s)((?:{'|'.join(SERVERS)}|\*):)", name)
    if again:
        return (f"{pattern!r} has a second server prefix ({again.group(1)}): one pattern is one "
                "SERVER:NAME; put each in its own list item")
    if pattern != pattern.strip() or server != server.strip() or name != name.strip():
        return (f"{pattern!r} has spaces at the start or end of its server or name: write it "
                f"{server.strip()}:{name.strip()!s} (a name matches exactly, spaces and all)")
    server, name = server.strip().lower(), name.strip()
    if server not in (*SERVERS, "*"):
        return f"{pattern!r}: the server must be one of {', '.join(SERVERS)} or *"
    if "*" in name and name != "*":
        return f"{pattern!r}: a NAME matches exactly (no wildcards); use {server}:* for every user"
    if server in ("plex", "tautulli", "*") and name.lower().startswith("id:") \
            and not name[3:].strip().isdigit():
        return f"{pattern!r}: a Plex account id is a number, e.g. {server}:id:1234567"
    if server in ("plex", "*") and name.lower().startswith("uuid:") and not name[5:].strip():
        return f"{pattern!r}: give the Plex account uuid after uuid:"
    return None


def _user_patterns(value: Any) -> Checked:
    names, err = _string_list(value)
    if err:
        return None, 'must be a list of SERVER:NAME patterns, e.g. ["plex:Anna", "jellyfin:anna"]'
    for pattern in names:
        problem = pattern_problem(pattern)
        if problem:
            return None, problem
    return names, None


LIST_CHECKERS = (_string_list, _user_patterns)


def _mapping(value: Any) -> Checked:
    if not isinstance(value, dict):
        return None, "must be a section of accounts by name (name: {users: [...], ...})"
    return value, None


def _webhook(extra: Mapping[str, tuple[Any, Checker]]) -> dict[str, tuple[Any, Checker]]:
    return {
        "enabled": (True, _bool),
        "token": ("", _token),
        "username_whitelist": ([], _string_list),
        **extra,
    }


def _names(spec: Mapping[str, Any]) -> Iterator[str]:
    for key, sub in spec.items():
        yield key
        if isinstance(sub, dict):
            yield from _names(sub)


SCHEMA: dict[str, dict[str, Any]] = {
    "server": {
        "host": ("0.0.0.0", _string),
        "port": (8787, _int_range(1, 65535)),
        "public_url": ("", _optional_url),
        "max_body_bytes": (10485760, _int_range(1024, 1 << 30)),
        "metrics": (True, _bool),
    },
    "webhooks": {
        "plex": _webhook(
            {"server_uuid_whitelist": ([], _string_list), "ratings": (False, _bool)}
        ),
        "jellyfin": _webhook({}),
        "emby": _webhook({}),
        "tautulli": _webhook({}),
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
        "users": (["*"], _user_patterns),
        "accounts": ({}, _mapping),
    },
    "state": {"dir": ("./state", _string)},
    "logging": {
        "level": ("info", _choice("debug", "info", "warning", "error")),
        "format": ("auto", _choice("auto", "console", "json")),
    },
}


yamlerrors.KEY_NAMES.update(_names(SCHEMA))


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


# --- the typed result ---------------------------------------------------------
# The dataclass defaults are read from SCHEMA, so a test that builds
# ScrobbleConfig() gets exactly what the daemon gets from an empty file.


@dataclass(frozen=True)
class ServerConfig:
    host: str = default("server", "host")
    port: int = default("server", "port")
    public_url: str = default("server", "public_url")
    max_body_bytes: int = default("server", "max_body_bytes")
    metrics: bool = default("server", "metrics")  # GET /metrics answers (false: 404)


@dataclass(frozen=True)
class WebhookConfig:
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


# The keys a named account (trakt.accounts.NAME) may have: its own `users` (no default: an
# empty list is an error there) and the same token keys as the `default` account's.
TOKEN_KEYS = ("access_token", "refresh_token", "expires_at")
ACCOUNT_KEYS: dict[str, tuple[Any, Checker]] = {
    "users": ([], _user_patterns),
    **{key: SCHEMA["trakt"][key] for key in TOKEN_KEYS},
}


@dataclass(frozen=True)
class AccountConfig:
    """One Trakt account: who scrobbles to it and its tokens (spec §8)."""

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

    @property
    def authorized(self) -> bool:
        return bool(self.access_token)

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

    def webhook(self, server: str) -> WebhookConfig:
        return self.webhooks[server]


# --- validation ---------------------------------------------------------------


def _key_lines(node: yaml.Node | None, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    """The line of each key, and of each list item (under its list's path and ``#INDEX``)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                path = (*prefix, str(key_node.value))
                out[path] = key_node.start_mark.line + 1
                _key_lines(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*prefix, f"#{i}")] = item.start_mark.line + 1


def _where(path: tuple[str, ...], lines: Mapping[tuple[str, ...], int]) -> str:
    dotted = ".".join(safe_name(key) for key in path)
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
            problems.append(Problem(f"{_where((*path, str(key)), lines)}: unknown key (known: {known})",
                                    "unknown_key"))
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
            where = _where(sub, lines)
            if checker in LIST_CHECKERS and isinstance(raw, list):  # name the item's own line
                bad = next((i for i, item in enumerate(raw) if checker([item])[1]), None)
                if bad is not None and (*sub, f"#{bad}") in lines:
                    where = f"{'.'.join(sub)} (line {lines[(*sub, f'#{bad}')]})"
            problems.append(f"{where}: {error}")
        values[key] = value
    return values


def _check_accounts(raw: Mapping[Any, Any], lines: Mapping[tuple[str, ...], int],
                    problems: list[str]) -> dict[str, AccountConfig]:
    """trakt.accounts.NAME: a valid name, known keys, and `users` given (it has no default)."""
    out: dict[str, AccountConfig] = {}
    for key, section in raw.items():
        # YAML reads `123:` as a number: the name is what the user wrote
        name = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
        path = ("trakt", "accounts", str(name))
        if not isinstance(name, str) or not ACCOUNT_NAME.fullmatch(name) or name == DEFAULT_ACCOUNT:
            problems.append(f"{_where(path, lines)}: an account name is 1-32 of a-z 0-9 _ - "
                            f"and not {DEFAULT_ACCOUNT!r} (the top-level trakt tokens are that one)")
            continue
        values = _check_section(section, ACCOUNT_KEYS, path, lines, problems)
        given = section.get("users") if isinstance(section, dict) else None
        if not values["users"]:
            if not given:  # (a bad list has had its own message)
                problems.append(f"{_where((*path, 'users'), lines)}: say who scrobbles to this account, "
                                'e.g. users: ["plex:Anna", "jellyfin:anna"]')
            continue
        out[name] = AccountConfig(name, **values)
    return out


def parse_config(text: str, path: Path) -> Config:
    """Validate YAML text; raise ConfigError with every problem found."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line, explanation, code = explain(exc, text)
        where = f" (line {line})" if line else ""
        raise ConfigError([Problem(f"{path.name}{where}: not valid YAML: {explanation}", code, line)]) from None
    lines: dict[tuple[str, ...], int] = {}
    _key_lines(node, (), lines)
    problems: list[str] = []
    for key_path, line, first in duplicate_keys(node):
        problems.append(Problem(f"{'.'.join(map(safe_name, key_path))} (line {line}): duplicate key (already "
                                f"on line {first}); keep only one of them", "duplicate_key", line))
    values = _check_section(data, SCHEMA, (), lines, problems)
    accounts = _check_accounts(values["trakt"]["accounts"] or {}, lines, problems)
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
    if not state_dir.is_absolute():  # relative to the file where the user sees it (a symlink's directory)
        state_dir = Path(os.path.abspath(path)).parent / state_dir
    return Config(
        path=path,
        server=ServerConfig(**values["server"]),
        webhooks={name: WebhookConfig(**values["webhooks"][name]) for name in SERVERS},
        scrobble=ScrobbleConfig(**values["scrobble"]),
        trakt=TraktConfig(**{**values["trakt"], "accounts": accounts}),
        state_dir=state_dir,
        logging=LoggingConfig(**values["logging"]),
        sections=sections(node),
    )


def lost_sections(before: Config, after: Config) -> list[str]:
    """Problems for the sections ``before``'s file had and ``after``'s lacks (outermost only)."""
    gone = before.sections - after.sections
    outermost = sorted(p for p in gone if not any(p[:n] in gone for n in range(1, len(p))))
    return [Problem(f"{'.'.join(p)}: this section is missing, but the file had it at the last good read "
                    "(a file caught half-written or truncated?); restore it. To remove it on purpose, "
                    "reload with SIGHUP (`systemctl reload cwhook`)", "missing_section", public=True)
            for p in outermost]


def lost_credentials(before: Config, after: Config) -> list[str]:
    """The Trakt app's id and secret never go from set to empty on a reload: that is a file
    caught half-written (say, `systemctl reload` while an editor saves), and every call
    would fail. To clear them on purpose, restart."""
    return [Problem(f"trakt.{key}: empty now, but it was set at the last good read (a file caught "
                    "half-written?); restore it, or restart the daemon to clear it on purpose", "credentials_lost",
                    public=True)
            for key in ("client_id", "client_secret")
            if getattr(before.trakt, key) and not getattr(after.trakt, key)]


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
        if f.name not in ("path", "sections"):
            walk(getattr(old, f.name), getattr(new, f.name), ("state", "dir") if f.name == "state_dir" else (f.name,))
    return out


def user_name(uid: int | None = None) -> str:
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def owner_name(uid: int) -> str:
    """A user as a message names it: the name, or ``uid 1234`` when it has no passwd entry."""
    name = user_name(uid)
    return f"uid {uid}" if name == str(uid) else name


def run_as(uid: int, command: str = "cwhook ...") -> str:
    """How to run a command as that user (``sudo``, never ``sudo -u root``)."""
    if uid == 0:
        return f"sudo {command}"
    name = user_name(uid)
    return f"sudo -u {name} {command}" if name != str(uid) else f"sudo -u '#{uid}' {command}"


def owning(path: Path) -> tuple[int, Path]:
    """The owner of ``path``, or when it cannot be looked at, of the directory that hides it
    (the nearest one that can be): (uid, which path that is)."""
    p = Path(os.path.abspath(path))
    while True:
        try:
            return os.stat(p).st_uid, p
        except OSError:
            if p == p.parent:
                return 0, p
            p = p.parent


def ownership_fix(path: Path, access: str, runner: str, mode: str = "r") -> tuple[str, str, str]:
    """(who we are, whose ``path`` is, in words, the fix in words).

    Never "give the file to me" when it belongs to another user: that is the service's file
    and the service could no longer use it. Run as its owner instead; a file of root's
    (root ran a command once) may be given to us, when we are the user that runs the daemon."""
    me_uid = os.geteuid()
    me = owner_name(me_uid)
    uid, where = owning(path)
    owner = owner_name(uid)
    if uid == me_uid:
        fix = f"make it {access} {me} (`chmod u+{mode} {where}`)"
    elif uid == 0:
        fix = (f"run {runner} root (`{run_as(0)}`); or, if {me} is the user that runs the daemon, "
               f"make it {access} {me} (`sudo chown {me_uid if me.startswith('uid ') else me} {where}`)")
    else:
        fix = f"run {runner} {owner} (`{run_as(uid)}`)"
    if where != Path(os.path.abspath(path)):
        return me, f"the directory {where} belongs to {owner} and is closed to {me}", fix
    return me, f"it belongs to {owner}", fix


def unreadable(path: Path, exc: OSError) -> str:
    if not isinstance(exc, PermissionError):
        return f"{path}: cannot read: {exc.strerror or exc}"
    me, whose, fix = ownership_fix(path, "readable by", "cwhook as")
    whose = whose.replace("it belongs", "the file belongs", 1)
    return f"{path}: cannot read it as user {me} (permission denied; {whose}): {fix}"


def load_config(path: Path) -> Config:
    """Read and validate the file at ``path``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([Problem(f"{path}: no such file", "no_such_file", public=True)]) from None
    except OSError as exc:
        raise ConfigError([Problem(unreadable(path, exc), "unreadable", public=True)]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(f"{path.name}: not UTF-8 text (byte {exc.start})", "not_utf8",
                                   public=True)]) from None
    return parse_config(text, path)


def resolve_config_path(arg: str | None) -> Path:
    """``-c PATH``, else ``$CWHOOK_CONFIG``, else ``./cwhook.yml``."""
    if arg:
        return Path(arg)
    env = os.environ.get("CWHOOK_CONFIG")
    if env:
        return Path(env)
    return Path("cwhook.yml")
