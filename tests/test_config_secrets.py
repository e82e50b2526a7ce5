"""No message about the config file quotes a secret's value (docs/configuration.md, "Secrets").

Every class of YAML mistake cwhook/config/yamlerrors.py explains is made on the line of every secret
key (a webhook token, client_secret, access_token, refresh_token, at the top and in an
account), and what `check-config`, `status`, the daemon's log, /healthz and /metrics say is
searched for any 6 characters in a row of the secret.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cwhook.cli import main as cli
from tests.conftest import Daemon, wait_for

SECRETS = {  # mixed case and digits, nothing a message could say by chance
    "plex_token": "Qx7vKp2mWz9RtL4nBc8yHd3sFg6jAe1uZk5q",
    "jellyfin_token": "Vb4Nq8Lr2Tz6Ym1Wx9Cs3Pd7Hf5Jg0Ke",
    "client_secret": "c7Fe9Bd41a7Ee2Ca6f3Q850d1Mc9e7b4a2f6d8",
    "access_token": "Ra3Tk8Wm5Zq2Lx7Vn4Bc9Yd6Hs1Jf0Gp",
    "refresh_token": "Mw6Xe1Ry8Tu3Io5Pa2Sd7Fg4Hj9Kl0Zx",
    "partner_access": "Uy2Ht7Gr4Fe9Dw1Sq6Az3Xc8Vb5Nm0Lk",
    "partner_refresh": "Op9Ij4Uh1Yg6Tf3Rd8Es5Wa2Qz7Xc0Vb",
}

TEMPLATE = """server:
  host: 127.0.0.1
  port: {port}
webhooks:
  plex:
    token: {plex_token}
    ratings: false
  jellyfin:
    token: "{jellyfin_token}"
  emby:
    enabled: false
scrobble:
  pause_debounce_seconds: 1
trakt:
  api_url: http://127.0.0.1:9
  oauth_url: http://127.0.0.1:9
  client_id: some-client-id
  client_secret: {client_secret}
  access_token: "{access_token}"
  refresh_token: '{refresh_token}'
  expires_at: 0
  accounts:
    partner:
      users: ["jellyfin:partner"]
      access_token: {partner_access}
      refresh_token: {partner_refresh}
state:
  dir: {state}
logging:
  level: debug
  format: json
"""


def _value(line: str) -> str:
    return line.split(":", 1)[1].strip()


def _key(line: str) -> str:
    return line.split(":", 1)[0]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _with_value(line: str, value: str) -> str:
    return f"{_key(line)}: {value}"


def _bare(line: str) -> str:
    return _value(line).strip("\"'")


# Each mistake rewrites the secret's line (and may touch its neighbours): lines, index -> lines.
Mistake = Callable[[list[str], int], list[str]]


def _replace(fn: Callable[[str], str | list[str]]) -> Mistake:
    def apply(lines: list[str], i: int) -> list[str]:
        new = fn(lines[i])
        return [*lines[:i], *([new] if isinstance(new, str) else new), *lines[i + 1:]]
    return apply


MISTAKES: dict[str, Mistake] = {
    # a tab in the indentation, or before the value
    "tab": _replace(lambda s: "\t" + s.lstrip(" ")),
    "tab_before_value": _replace(lambda s: f"{_key(s)}:\t{_value(s)}"),
    # indentation: more or less than the lines around it (each branch of yamlerrors._bad_indent)
    "indent_plus_1": _replace(lambda s: " " + s),
    "indent_plus_2": _replace(lambda s: "  " + s),
    "dedent_1": _replace(lambda s: s[1:]),
    "dedent_2": _replace(lambda s: s[2:]),
    "dedent_all": _replace(lambda s: s.lstrip(" ")),
    "first_key_odd": lambda lines, i: [*lines[:i], " " * 2 + lines[i], *lines[i + 1:]]
    if _indent(lines[i - 1]) < _indent(lines[i]) else [*lines[:i], "  " + lines[i], *lines[i + 1:]],
    # a missing colon, a missing space after it, a second colon, a list dash
    "missing_colon": _replace(lambda s: f"{_key(s)} {_value(s)}"),
    "no_space_after_colon": _replace(lambda s: f"{_key(s)}:{_bare(s)}"),
    "second_colon": _replace(lambda s: _with_value(s, _bare(s) + ": x")),
    "list_dash": _replace(lambda s: " " * _indent(s) + "- " + s.lstrip(" ")),
    # quotes and brackets never closed, or closed too early
    "unclosed_double_quote": _replace(lambda s: _with_value(s, '"' + _bare(s))),
    "unclosed_single_quote": _replace(lambda s: _with_value(s, "'" + _bare(s))),
    "stray_quote": _replace(lambda s: _with_value(s, f'"{_bare(s)[:8]}"{_bare(s)[8:]}"')),
    "unclosed_list": _replace(lambda s: _with_value(s, "[" + _bare(s))),
    "unclosed_mapping": _replace(lambda s: _with_value(s, "{" + _bare(s))),
    # characters that cannot start a value, aliases, anchors, tags
    "at_sign": _replace(lambda s: _with_value(s, "@" + _bare(s))),
    "backtick": _replace(lambda s: _with_value(s, "`" + _bare(s))),
    "alias": _replace(lambda s: _with_value(s, "*" + _bare(s))),
    "duplicate_anchor": _replace(lambda s: [_with_value(s, f"&{_bare(s)} x"),
                                            " " * _indent(s) + f"other: &{_bare(s)} y"]),
    "tag": _replace(lambda s: _with_value(s, "!" + _bare(s))),
    # the value wrapped onto the next line, at several indentations
    "wrapped_col0": _replace(lambda s: [f"{_key(s)}:", _bare(s)]),
    "wrapped_same": _replace(lambda s: [f"{_key(s)}:", " " * _indent(s) + _bare(s)]),
    "wrapped_half": _replace(lambda s: [_with_value(s, _bare(s)[:10]), _bare(s)[10:]]),
    "wrapped_half_deeper": _replace(lambda s: [_with_value(s, _bare(s)[:10]), " " * (_indent(s) + 2) + "- "
                                               + _bare(s)[10:] + ": x"]),
    # duplicate keys (accepted by PyYAML, refused by cwhook)
    "duplicate_key": _replace(lambda s: [s, s]),
    "pasted_as_key": _replace(lambda s: " " * _indent(s) + _bare(s) + ": x"),
    "pasted_twice_as_key": _replace(lambda s: [" " * _indent(s) + _bare(s) + ": x"] * 2),
    "value_as_key": _replace(lambda s: [f"{_key(s)}:", " " * (_indent(s) + 2) + _bare(s) + ": x"]),
}

SECRET_LINES = {name: f"{{{name}}}" for name in SECRETS}


def good_text(port: int, state: Path) -> str:
    return TEMPLATE.format(port=port, state=state, **SECRETS)


def broken(text: str, secret: str, mistake: str) -> str:
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if SECRETS[secret] in line)
    return "\n".join(MISTAKES[mistake](lines, index)) + "\n"


def leaks(output: str) -> list[str]:
    """Every 6 characters in a row of any secret found in ``output``."""
    return [f"{name}: {secret[i:i + 6]!r}" for name, secret in SECRETS.items()
            for i in range(len(secret) - 5) if secret[i:i + 6] in output]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_check_config_never_quotes_a_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            secret: str, mistake: str) -> None:
    path = tmp_path / "cwhook.yml"
    path.write_text(broken(good_text(8787, tmp_path / "state"), secret, mistake))
    code, output = run_cli(capsys, "check-config", "-c", str(path))
    assert leaks(output) == [], output
    if code == 2:  # what `run`, `urls`, `auth`... print on stderr before they stop
        urls_code, said = run_cli(capsys, "urls", "-c", str(path))
        assert urls_code == 2 and leaks(said) == [], said
    assert code == 2 or mistake in ("duplicate_anchor", "second_colon", "no_space_after_colon", "value_as_key",
                                    "wrapped_same", "wrapped_col0", "wrapped_half") or output == "config OK\n"


def test_every_class_of_mistake_is_refused_somewhere() -> None:
    """The matrix is not vacuous: every mistake makes the file refused for some secret line."""
    from cwhook.config.schema import ConfigError, parse_config

    for mistake in MISTAKES:
        refused = 0
        for secret in SECRETS:
            try:
                parse_config(broken(good_text(8787, Path("/tmp/s")), secret, mistake), Path("c.yml"))
            except ConfigError:
                refused += 1
        assert refused, mistake


def test_the_issues_example_masks_the_token_and_names_its_line() -> None:
    from cwhook.config.schema import ConfigError, parse_config

    text = good_text(8787, Path("/tmp/s")).replace('  access_token: "Ra3T', '   access_token: "Ra3T')
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("cwhook.yml"))
    assert info.value.problems == [
        "cwhook.yml (line 19): not valid YAML: `access_token: ***` is indented more than line 18 above it, "
        "which already has a value: indent it like the other keys of its section"]
    assert info.value.summary() == "yaml_indentation at line 19"


# --- against a real daemon: the file broken by a reload ------------------------------------


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    from tests.conftest import free_port

    port = free_port()
    path = tmp_path / "cwhook.yml"
    path.write_text(good_text(port, tmp_path / "state"))
    d = Daemon(path, port)
    try:
        yield d.start()
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def _events(d: Daemon, name: str) -> int:
    return sum(1 for e in d.log_events() if e.get("event") == name)


def _reload(d: Daemon, text: str) -> None:
    """Write ``text`` (back-dated: settled at once) and SIGHUP; wait until the daemon has read it."""
    before = _events(d, "config_refused") + _events(d, "config_reloaded")
    d.config_path.write_text(text)
    then = time.time() - 10
    os.utime(d.config_path, (then, then))
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: _events(d, "config_refused") + _events(d, "config_reloaded") > before, timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("secret", ["plex_token", "client_secret", "access_token", "partner_refresh"])
def test_no_secret_in_healthz_status_or_log_when_a_reload_is_refused(
        daemon: Daemon, capsys: pytest.CaptureFixture[str], secret: str) -> None:
    d = daemon
    good = d.config_path.read_text()
    refused = 0
    for mistake in MISTAKES:
        text = broken(good, secret, mistake)
        _reload(d, text)
        health = d.health()
        with urllib.request.urlopen(d.base + "/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        code, status_out = run_cli(capsys, "status", "-c", str(d.config_path))
        _, check_out = run_cli(capsys, "check-config", "-c", str(d.config_path))
        for where, output in (("healthz", json.dumps(health)), ("metrics", metrics), ("status", status_out),
                              ("check-config", check_out), ("log", d.logs())):
            assert leaks(output) == [], (mistake, where, output)
        if "config_refused" in health["problems"]:
            refused += 1
            assert code == 1, status_out
            assert "config_refused" in status_out
            assert health["config_refused"].startswith("cwhook.yml: "), health
        _reload(d, good)
        wait_for(lambda: "config_refused" not in d.health()["problems"])
    assert refused >= len(MISTAKES) // 2
    assert d.stop() == 0


@pytest.mark.parametrize(("code", "owner", "shown"), [
    ('token: "Qx7vKp2mWz9RtL4nBc8yHd3sFg6jAe1uZk5q', None, "token: ***"),  # the issue's example
    ("refresh_token Mw6Xe1Ry8Tu3Io5Pa2Sd7Fg4Hj9Kl0Zx", None, "refresh_token ***"),  # no colon
    ("client_secret:c7Fe9Bd41a7Ee2Ca6f3Q850d1Mc9e7b4a2f6d8", None, "client_secret: ***"),  # no space
    ("- access_token: x", None, "- access_token: ***"),
    ("Client_Secret: x", None, "Client_Secret: ***"),  # any case, any section
    ("acess_token: Ra3Tk8Wm5Zq2Lx7Vn4Bc9Yd6Hs1Jf0Gp", None, "acess_token: ***"),  # misspelt
    ("Op9Ij4Uh1Yg6Tf3Rd8Es5Wa2Qz7Xc0Vb", "access_token", "***"),  # the rest of a secret's value
    ("Op9Ij4Uh1Yg6Tf3Rd8Es5Wa2Qz7Xc0Vb", None, "Op9…"),  # a line no key vouches for
    ("Op9Ij4Uh1Yg6Tf3Rd8Es5Wa2Qz7Xc0Vb", "plex", "Op9…"),
    ("tokn: AbCdEfGhIjKlMnOpQrStUvWxYz", None, "tokn: AbC…"),  # a credential drawn without a digit
    ("host x", None, "host x"),  # a schema key without its colon: quoted
    ("- plex:Anna", "users", "- plex:Anna"),  # a user pattern: quoted
    ("port: 8790", None, "port: 8790"),
    ("api_url: https://api.trakt.tv/a/b", None, "api_url: https://api.trakt.tv/a/b"),
])
def test_excerpt(code: str, owner: str | None, shown: str) -> None:
    from cwhook.config.yamlerrors import excerpt

    assert excerpt(code, owner) == shown


def test_clip_quoted_keeps_pyyaml_words_and_cuts_the_files() -> None:
    from cwhook.config.yamlerrors import clip_quoted

    assert clip_quoted("expected <block end>, but found '<block mapping start>'") == \
        "expected <block end>, but found '<block mapping start>'"
    assert clip_quoted("found character '\\t' that cannot start any token") == \
        "found character '\\t' that cannot start any token"
    assert clip_quoted("found undefined alias 'Qx7vKp2mWz9RtL4n'") == "found undefined alias 'Qx7…'"
    assert clip_quoted('the tag "!Qx7vKp2mWz9RtL4n"') == 'the tag "!Qx…"'
