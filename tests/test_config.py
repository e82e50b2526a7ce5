from __future__ import annotations

from pathlib import Path

import pytest

from cwhook.config import ConfigError, load_config, parse_config, resolve_config_path
from cwhook.configfile import example_config_text

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
    assert cfg.state_dir == (ROOT / "state").resolve() or cfg.state_dir.name == "state"


def test_top_level_example_is_the_packaged_one() -> None:
    assert (ROOT / "config.example.yml").read_text() == example_config_text()


def test_every_schema_key_is_documented_with_a_comment() -> None:
    text = example_config_text()
    lines = text.splitlines()
    from cwhook.config import SCHEMA

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
        assert documented or dotted.startswith(("webhooks.jellyfin", "webhooks.emby")), dotted


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
        "server.hots (line 3): unknown key (known: host, port, public_url, max_body_bytes)",
        "server.port (line 2): must be a whole number between 1 and 65535",
        "webhooks.jelly (line 7): unknown key (known: plex, jellyfin, emby)",
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


def test_config_path_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CWHOOK_CONFIG", "/env/path.yml")
    assert resolve_config_path("/arg.yml") == Path("/arg.yml")
    assert resolve_config_path(None) == Path("/env/path.yml")
    monkeypatch.delenv("CWHOOK_CONFIG")
    assert resolve_config_path(None) == Path("cwhook.yml")
