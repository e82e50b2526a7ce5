"""Loading the configuration file: validation with key paths and line numbers.

Loading is strict: an unknown key, a wrong type or an out-of-range value is a
problem, and every problem is reported at once, one line each, in the form
``scrobble.force_stop_at (line 31): must be a number between 1 and 100``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cwhook.config.checks import LIST_CHECKERS
from cwhook.config.keys import ACCOUNT_KEYS, ACCOUNT_NAME, DEFAULT_ACCOUNT, SCHEMA, SERVERS
from cwhook.config.model import (
    AccountConfig,
    Config,
    LoggingConfig,
    ScrobbleConfig,
    ServerConfig,
    TraktConfig,
    WebhookConfig,
)
from cwhook.config.owners import unreadable
from cwhook.config.yamlerrors import duplicate_keys, explain, key_paths, safe_name, sections

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
        # Every reader of the node before the data is made from it: making it flattens merge
        # keys (``<<``) in the node itself.
        lines: dict[tuple[str, ...], int] = {}
        _key_lines(node, (), lines)
        duplicates = duplicate_keys(node)
        found_sections, keys = sections(node), key_paths(node)
        data = _data_of(node)
    except yaml.YAMLError as exc:
        line, explanation, code = explain(exc, text)
        where = f" (line {line})" if line else ""
        raise ConfigError([Problem(f"{path.name}{where}: not valid YAML: {explanation}", code, line)]) from None
    problems: list[str] = []
    for key_path, line, first in duplicates:
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
        sections=found_sections,
        source=text,
        keys=keys,
    )


def _data_of(node: yaml.Node | None) -> Any:
    """What ``yaml.safe_load`` gives for the document ``node`` was composed from, without
    parsing the text again."""
    if node is None:
        return None
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


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
