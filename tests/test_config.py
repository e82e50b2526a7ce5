from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cwhook.config.schema import (
    SCHEMA,
    SERVERS,
    Config,
    ConfigError,
    LoggingConfig,
    ScrobbleConfig,
    ServerConfig,
    TraktConfig,
    WebhookConfig,
    changed_keys,
    iter_schema,
    load_config,
    lost_sections,
    parse_config,
    resolve_config_path,
)
from cwhook.config.urls import example_config_text

ROOT = Path(__file__).parent.parent


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("/etc/cwhook/cwhook.yml"))
    return info.value.problems


def test_example_is_valid_and_all_defaults() -> None:
    cfg = load_config(ROOT / "config.example.yml")
    assert cfg.server.port == 8787
    assert cfg.server.host == "0.0.0.0"
    assert cfg.scrobble.force_stop_at == 95
    assert cfg.scrobble.stop_pause_threshold == 80
    assert cfg.trakt.oauth_url == "https://auth.trakt.tv"
    assert cfg.webhook("plex").enabled and not cfg.webhook("plex").ratings
    assert cfg.state_dir == ROOT.resolve() / "state"


def test_top_level_example_is_the_packaged_one() -> None:
    assert (ROOT / "config.example.yml").read_text() == example_config_text()


def test_every_schema_key_is_documented_with_a_comment() -> None:
    text = example_config_text()
    lines = text.splitlines()
    from cwhook.config.schema import SCHEMA

    def keys(schema: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in schema.items():
            out += keys(v, prefix + k + ".") if isinstance(v, dict) else [prefix + k]
        return out

    for dotted in keys(SCHEMA):
        leaf = dotted.split(".")[-1]
        idx = [i for i, line in enumerate(lines) if line.strip().startswith(leaf + ":")]
        assert idx, f"{dotted} missing from the example"
        # a comment on the line itself or somewhere in the lines just above
        documented = any("#" in lines[i] or any(lines[j].strip().startswith("#")
                                                for j in range(max(0, i - 4), i)) for i in idx)
        # keys that repeat per server share the plex documentation
        assert documented or dotted.startswith(("webhooks.jellyfin", "webhooks.emby", "webhooks.tautulli")), dotted


def test_empty_file_is_all_defaults() -> None:
    cfg = parse_config("", Path("x.yml"))
    assert cfg.server.max_body_bytes == 10485760
    assert cfg.webhook("emby").username_whitelist == ()


def test_problem_names_key_path_and_line() -> None:
    text = "scrobble:\n  pause_debounce_seconds: 5\n  force_stop_at: 150\n"
    assert problems(text) == ["scrobble.force_stop_at (line 3): must be a number between 1 and 100"]


def test_every_problem_is_reported_at_once() -> None:
    text = (
        "server:\n  port: 99999\n  hots: 0.0.0.0\n"
        "webhooks:\n  plex:\n    ratings: yes please\n  jelly:\n    enabled: true\n"
        "logging:\n  level: loud\n"
    )
    found = problems(text)
    assert found == [
        "server.hots (line 3): unknown key (known: host, port, public_url, max_body_bytes, metrics)",
        "server.port (line 2): must be a whole number between 1 and 65535",
        "webhooks.jelly (line 7): unknown key (known: plex, jellyfin, emby, tautulli)",
        "webhooks.plex.ratings (line 6): must be true or false",
        "logging.level (line 10): must be one of debug|info|warning|error",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server: [1, 2]\n", "server (line 1): must be a section of keys (key: value)"),
        ("server:\n  port: '8787'\n", "server.port (line 2): must be a whole number between 1 and 65535"),
        ("server:\n  port: true\n", "server.port (line 2): must be a whole number between 1 and 65535"),
        ("webhooks:\n  plex:\n    token: short\n",
         "webhooks.plex.token (line 3): must be empty (generated on first run) or at least 16 characters"),
        ("webhooks:\n  emby:\n    username_whitelist: bob\n",
         "webhooks.emby.username_whitelist (line 3): must be a list, e.g. [alice, bob]"),
        ("scrobble:\n  stop_pause_threshold: 70\n",
         "scrobble.stop_pause_threshold (line 2): must be a number between 80 and 100"),
        ("scrobble:\n  force_stop_at: 85\n  stop_pause_threshold: 90\n",
         "scrobble.force_stop_at (line 2): must not be below scrobble.stop_pause_threshold "
         "(a pause promoted to a stop would be demoted again)"),
        ("trakt:\n  api_url: api.trakt.tv\n",
         "trakt.api_url (line 2): must be a URL starting with http:// or https://"),
        ("logging:\n  format: xml\n", "logging.format (line 2): must be one of auto|console|json"),
        ("nonsense: 1\n",
         "nonsense (line 1): unknown key (known: server, webhooks, scrobble, trakt, state, logging)"),
        ("- a\n- b\n", "(line 1)"),
    ],
)
def test_single_problems(text: str, expected: str) -> None:
    found = problems(text)
    assert len(found) == 1
    assert expected in found[0]


def test_yaml_syntax_error_has_line() -> None:
    found = problems("server:\n  port: 1\n   bad: [\n")
    assert len(found) == 1 and "not valid YAML" in found[0] and "(line" in found[0]


def test_null_values_take_defaults() -> None:
    cfg = parse_config("server:\n  port:\nwebhooks:\n  emby:\n", Path("x.yml"))
    assert cfg.server.port == 8787
    assert cfg.webhook("emby").enabled


def test_state_dir_relative_to_config_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.yml"
    path.parent.mkdir()
    path.write_text("state:\n  dir: ./st\n")
    assert load_config(path).state_dir == (tmp_path / "sub" / "st").resolve()
    path.write_text("state:\n  dir: /var/lib/cwhook\n")
    assert load_config(path).state_dir == Path("/var/lib/cwhook")


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_bytes(b"server:\n  host: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


def test_config_path_resolution() -> None:
    """``-c`` first, then $CWHOOK_CONFIG (as cwhook/service/environment.py read it), then ./cwhook.yml."""
    assert resolve_config_path("/arg.yml", "/env/path.yml") == Path("/arg.yml")
    assert resolve_config_path(None, "/env/path.yml") == Path("/env/path.yml")
    assert resolve_config_path(None, None) == Path("cwhook.yml")


# --- one source for every default ------------------------------------------------------------


def checked_defaults() -> dict[str, Any]:
    """Dotted key -> the default the daemon uses (the schema's, after its check)."""
    return {".".join(path): checker(default)[0] for path, default, checker in iter_schema()}


def test_dataclass_defaults_are_the_schema_defaults() -> None:
    empty = parse_config("", Path("x.yml"))
    assert ServerConfig() == empty.server
    assert ScrobbleConfig() == empty.scrobble
    assert TraktConfig() == empty.trakt
    assert LoggingConfig() == empty.logging
    assert all(WebhookConfig() == empty.webhook(s) for s in ("plex",))
    assert Config(Path("x.yml")).webhooks == empty.webhooks
    assert Config(Path("x.yml")).state_dir.name == empty.state_dir.name


def test_example_file_values_are_the_schema_defaults() -> None:
    data = yaml.safe_load(example_config_text())
    wrong = []
    for dotted, expected in checked_defaults().items():
        node: Any = data
        for key in dotted.split("."):
            assert isinstance(node, dict) and key in node, f"{dotted} is missing from config.example.yml"
            node = node[key]
        checker = dict((".".join(p), c) for p, _, c in iter_schema())[dotted]
        if checker(node)[0] != expected:
            wrong.append(f"{dotted}: example says {node!r}, the schema's default is {expected!r}")
    assert not wrong, "config.example.yml disagrees with the schema:\n" + "\n".join(wrong)


ROW = re.compile(r"^\| `([a-z_.<>]+)` \| `([^`]*)` \|")


def test_configuration_doc_defaults_are_the_schema_defaults() -> None:
    rows: dict[str, str] = {}
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        m = ROW.match(line)
        if m:
            for server in SERVERS if "<server>" in m.group(1) else ("",):
                rows[m.group(1).replace("<server>", server)] = m.group(2)
    checkers = {".".join(p): c for p, _, c in iter_schema()}
    problems = []
    for dotted, expected in checked_defaults().items():
        if dotted not in rows:
            problems.append(f"{dotted}: no row in the table of docs/configuration.md")
            continue
        documented = checkers[dotted](yaml.safe_load(rows[dotted]) if rows[dotted] else "")[0]
        if documented != expected:
            problems.append(f"{dotted}: documented default {rows[dotted]!r}, the schema's is {expected!r}")
    for dotted in rows:
        if dotted not in checkers:
            problems.append(f"{dotted}: documented, but not a key of the schema")
    assert not problems, "docs/configuration.md disagrees with the schema:\n" + "\n".join(problems)


def test_the_default_checks_would_catch_a_changed_schema_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SCHEMA["scrobble"], "force_stop_at", (96, SCHEMA["scrobble"]["force_stop_at"][1]))
    with pytest.raises(AssertionError, match=r"scrobble\.force_stop_at"):
        test_example_file_values_are_the_schema_defaults()
    with pytest.raises(AssertionError, match=r"scrobble\.force_stop_at"):
        test_configuration_doc_defaults_are_the_schema_defaults()


# --- duplicate keys, tabs, indentation ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server:\n  port: 8790\n  port: 8791\n",
         "server.port (line 3): duplicate key (already on line 2); keep only one of them"),
        ("webhooks:\n  plex:\n    enabled: true\n  plex:\n    enabled: false\n",
         "webhooks.plex (line 4): duplicate key (already on line 2); keep only one of them"),
        ("server:\n  host: a\nlogging:\n  level: info\nserver:\n  port: 1\n",
         "server (line 5): duplicate key (already on line 1); keep only one of them"),
    ],
)
def test_duplicate_keys_are_errors(text: str, expected: str) -> None:
    assert problems(text) == [expected]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        # a tab in the indentation, anywhere on the line, before a value
        ("server:\n\thost: x\n", 2, "a tab character (column 1); YAML does not allow tabs for indentation: "
                                      "use spaces to indent"),
        ("server:\n  host: x\n\t port: 1\n", 3, "use spaces to indent"),
        ("server:\n  host: x\t# c\n", 2, "a tab character (column 10)"),
        # a dedented key: that line, and how the lines around it are indented
        ("server:\n  host: x\n port: 8790\nlogging:\n  level: info\n", 3,
         "`port: 8790` is indented 1 space, but the lines under `server` above it are indented 2 spaces"),
        ("webhooks:\n  plex:\n    enabled: true\n   token: abc\n  emby:\n    enabled: true\n", 4,
         "`token: ***` is indented 3 spaces, but the lines under `plex` above it are indented 4 spaces"),
        ("trakt:\n  client_id: abc\n  client_secret: def\n access_token: ''\n refresh_token: ''\n", 4,
         "`access_token: ***` is indented 1 space"),
        # the section's first key is the odd one out: PyYAML stops a line later, we name it
        ("webhooks:\n  plex:\n      enabled: true\n    token: abcdefabcdefabcdef\n    ratings: false\n", 3,
         "`enabled: true` is indented 6 spaces, but the next key of `plex` (line 4) is indented 4 spaces"),
        ("server:\n host: x\n  port: 1\n", 2,
         "`host: x` is indented 1 space, but the next key of `server` (line 3) is indented 2 spaces"),
        ("server:\n  host: x\n    port: 8790\n", 3, "is indented more than line 2 above it, which already has a value"),
        ("server:\n  host x\n  port: 1\n", 2,
         "`host x` is not `key: value`: a colon (followed by a space) is missing?"),
        ("server:\n  host: \"abc\n  port: 1\n", 2, "the quoted value starting on line 2 is never closed"),
        ("webhooks:\n  plex:\n    username_whitelist: [a, b\n  emby:\n    enabled: true\n", 3,
         "the [ list starting on line 3 is not closed"),
        ("server:\n  host: @x\n", 2, "put the value in quotes"),
    ],
)
def test_yaml_mistakes_name_the_line_and_the_fix(text: str, line: int, words: str) -> None:
    found = problems(text)
    assert len(found) == 1
    assert found[0].startswith(f"cwhook.yml (line {line}): not valid YAML: "), found[0]
    assert words in found[0]
    assert "<block" not in found[0] and "expected" not in found[0]


EXAMPLE_KEY_LINES = [i for i, line in enumerate(example_config_text().splitlines())
                     if re.match(r"^ +[a-z_]+:", line)]


@settings(max_examples=60, deadline=None)
@given(index=st.sampled_from(EXAMPLE_KEY_LINES))
def test_a_tab_anywhere_in_the_example_is_named_at_its_line(index: int) -> None:
    lines = example_config_text().splitlines()
    lines[index] = "\t" + lines[index].lstrip(" ")
    found = problems("\n".join(lines) + "\n")
    assert len(found) == 1 and found[0].startswith(f"cwhook.yml (line {index + 1}): not valid YAML: a tab")


def _dedentable(lines: list[str]) -> list[int]:
    """Key lines that follow a sibling key at the same indentation (so a dedent by one is the mistake)."""
    out = []
    content = [i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]
    for prev, i in itertools.pairwise(content):
        indent = len(lines[i]) - len(lines[i].lstrip(" "))
        if re.match(r"^ +[a-z_]+:", lines[i]) and indent == len(lines[prev]) - len(lines[prev].lstrip(" ")):
            out.append(i)
    return out


@settings(max_examples=60, deadline=None)
@given(index=st.sampled_from(_dedentable(example_config_text().splitlines())))
def test_a_key_dedented_by_one_in_the_example_is_named_at_its_line(index: int) -> None:
    lines = example_config_text().splitlines()
    lines[index] = lines[index][1:]
    found = problems("\n".join(lines) + "\n")
    assert len(found) == 1 and found[0].startswith(f"cwhook.yml (line {index + 1}): not valid YAML: "), found


# --- reload guards -------------------------------------------------------------------------------

FULL = "server:\n  port: 1234\ntrakt:\n  api_url: http://fake\n  client_id: abc\nlogging:\n  level: debug\n"


def test_sections_and_lost_sections() -> None:
    before = parse_config(FULL, Path("c.yml"))
    assert before.sections == {("server",), ("trakt",), ("logging",)}
    truncated = parse_config(FULL.split("logging:")[0], Path("c.yml"))
    assert lost_sections(before, truncated) == [
        "logging: this section is missing, but the file had it at the last good read (a file caught "
        "half-written or truncated?); restore it. To remove it on purpose, reload with SIGHUP "
        "(`systemctl reload cwhook`)"]
    cut = parse_config("server:\n  port: 1234\n", Path("c.yml"))
    assert [p.split(":")[0] for p in lost_sections(before, cut)] == ["logging", "trakt"]
    assert lost_sections(before, parse_config(FULL + "scrobble:\n  dry_run: true\n", Path("c.yml"))) == []
    nested = parse_config("webhooks:\n  plex:\n    ratings: true\n", Path("c.yml"))
    assert nested.sections == {("webhooks",), ("webhooks", "plex")}
    assert [p.split(":")[0] for p in lost_sections(nested, parse_config("", Path("c.yml")))] == ["webhooks"]


def test_changed_keys_names_keys_never_values() -> None:
    before = parse_config(FULL, Path("c.yml"))
    after = parse_config(FULL.replace("port: 1234", "port: 1235").replace("client_id: abc", "client_id: xyz")
                         + "webhooks:\n  plex:\n    token: abcdefghijklmnopqrstuvwxyz\n", Path("c.yml"))
    assert changed_keys(before, after) == ["server.port", "webhooks.plex.token", "trakt.client_id"]
    assert changed_keys(before, before) == []


def test_unreadable_file_names_the_user_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yml"
    path.write_text("")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "cannot read it as user" in info.value.problems[0] and "`chmod u+r " in info.value.problems[0]


# --- user patterns YAML reads differently from what was meant ------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    # a list item indented under the one above it continues it: one string
    ("trakt:\n  accounts:\n    partner:\n      users:\n        - jellyfin:partner\n         - jellyfin:kid\n",
     "trakt.accounts.partner.users (line 5): 'jellyfin:partner - jellyfin:kid' reads as two list items run "
     "together"),
    ("trakt:\n  users:\n  - plex:Dad\n  - jellyfin:partner\n    - jellyfin:kid\n",
     "trakt.users (line 4): 'jellyfin:partner - jellyfin:kid' reads as two list items"),
    # a second SERVER: prefix
    ('trakt:\n  users: ["plex:Dad", "plex:jellyfin:kid"]\n',
     "trakt.users (line 2): 'plex:jellyfin:kid' has a second server prefix (jellyfin:)"),
    ("trakt:\n  users:\n    - plex:Dad\n    - jellyfin:anna emby:anna\n",
     "trakt.users (line 4): 'jellyfin:anna emby:anna' has a second server prefix (emby:)"),
    # spaces at either end of the server or the name
    ('trakt:\n  users:\n    - plex:Dad\n    - "jellyfin:kid "\n', "trakt.users (line 4): 'jellyfin:kid ' has spaces"),
    ('trakt:\n  users: [" plex:Dad"]\n', "trakt.users (line 2): ' plex:Dad' has spaces"),
    ('trakt:\n  users: ["plex: Dad"]\n', "trakt.users (line 2): 'plex: Dad' has spaces"),
    ('trakt:\n  users: ["plex :Dad"]\n', "trakt.users (line 2): 'plex :Dad' has spaces"),
    ('trakt:\n  users: [" * "]\n', "trakt.users (line 2): ' * ' has spaces around the *"),
])
def test_a_pattern_yaml_read_otherwise_than_meant_is_an_error_at_its_line(text: str, expected: str) -> None:
    found = problems(text)
    assert len(found) == 1 and found[0].startswith(expected), found


@pytest.mark.parametrize("users", ['["*"]', '["*:*"]', '["plex:id:123", "plex:uuid:abc"]',
                                   '["plex:Anna Maria", "jellyfin:anna-maria", "emby:x-y"]'])
def test_ordinary_patterns_still_pass(users: str) -> None:
    parse_config(f"trakt:\n  users: {users}\n", Path("c.yml"))
