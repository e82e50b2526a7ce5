"""The command line, run as a user would: a subprocess per command."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TOKENS, config_text
from tests.faketrakt import FakeTrakt


def cwhook(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "CWHOOK_CONFIG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "cwhook", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)


def test_version() -> None:
    from cwhook import __version__

    out = cwhook("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"cwhook {__version__}"


@pytest.mark.parametrize("args", [(), ("frobnicate",), ("run", "--bogus"), ("rotate-tokens", "kodi"),
                                  ("check-config", "-c")])
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    out = cwhook(*args)
    assert out.returncode == 2
    assert "usage: cwhook" in out.stderr
    assert "Traceback" not in out.stderr


def test_check_config_example() -> None:
    out = cwhook("check-config", "-c", str(ROOT / "config.example.yml"))
    assert (out.returncode, out.stdout) == (0, "config OK\n")


def test_check_config_problems(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("server:\n  port: 0\nscrobble:\n  force_stop_at: 101\n  typo: 1\n")
    out = cwhook("check-config", "-c", str(path))
    assert out.returncode == 2
    assert out.stdout.splitlines() == [
        "server.port (line 2): must be a whole number between 1 and 65535",
        "scrobble.typo (line 5): unknown key (known: pause_debounce_seconds, suppress_start_at, "
        "regress_tolerance_percent, stop_pause_threshold, force_stop_at, watchlist_autoremove_movies, "
        "sync_manual_marks, ignore_plex_vod, dry_run)",
        "scrobble.force_stop_at (line 4): must be a number between 1 and 100",
    ]
    assert "Traceback" not in out.stderr


def test_config_path_from_env_and_default(tmp_path: Path) -> None:
    (tmp_path / "cwhook.yml").write_text("server:\n  port: 1234\n")
    assert cwhook("check-config", cwd=tmp_path).stdout == "config OK\n"
    other = tmp_path / "other.yml"
    other.write_text("server:\n  port: nope\n")
    out = cwhook("check-config", cwd=tmp_path, env={"CWHOOK_CONFIG": str(other)})
    assert out.returncode == 2 and "server.port (line 2)" in out.stdout
    out = cwhook("check-config", "-c", str(tmp_path / "missing.yml"))
    assert out.returncode == 2 and "no such file" in out.stdout


def test_urls_with_public_url_and_curl_examples(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(config_text(8787, tmp_path / "s").replace(
        "  port: ", "  public_url: https://hooks.example.net/\n  port: "))
    out = cwhook("urls", "-c", str(path))
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0] == f"plex: https://hooks.example.net/webhook/plextrakt?{TOKENS['plex']}"
    assert lines[2] == f"jellyfin: https://hooks.example.net/webhook/jellyfintrakt?{TOKENS['jellyfin']}"
    assert lines[4] == f"emby: https://hooks.example.net/webhook/embytrakt?{TOKENS['emby']}"
    assert all(line.strip().startswith("try it: curl") for line in lines[1::2])


def test_urls_fills_empty_tokens(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("# mine\nserver:\n  host: 127.0.0.1\n  port: 9000\n")
    out = cwhook("urls", "-c", str(path))
    assert out.returncode == 0
    data = yaml.safe_load(path.read_text())
    assert path.read_text().startswith("# mine\nserver:\n  host: 127.0.0.1\n  port: 9000\n")
    for server in ("plex", "jellyfin", "emby"):
        assert f"http://127.0.0.1:9000/webhook/{server}trakt?{data['webhooks'][server]['token']}" in out.stdout


def test_rotate_some_or_all(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    original = config_text(8787, tmp_path / "s")
    path.write_text(original)
    out = cwhook("rotate-tokens", "-c", str(path), "emby")
    assert out.returncode == 0
    data = yaml.safe_load(path.read_text())
    assert data["webhooks"]["plex"]["token"] == TOKENS["plex"]
    assert data["webhooks"]["emby"]["token"] != TOKENS["emby"]
    assert "embytrakt?" + data["webhooks"]["emby"]["token"] in out.stdout and "plextrakt" not in out.stdout
    changed = [(a, b) for a, b in zip(original.splitlines(), path.read_text().splitlines(), strict=True)
               if a != b]
    assert len(changed) == 1
    out = cwhook("rotate-tokens", "-c", str(path))
    data2 = yaml.safe_load(path.read_text())
    assert all(data2["webhooks"][s]["token"] != data["webhooks"][s]["token"]
               for s in ("plex", "jellyfin", "emby"))
    # quoting styles of the file were kept
    text = path.read_text()
    assert '    token: "' in text and "    token: '" in text


def test_bad_config_on_run_is_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("server:\n  port: 70000\n")
    out = cwhook("run", "-c", str(path))
    assert out.returncode == 2
    assert "server.port (line 2): must be a whole number between 1 and 65535" in out.stderr
    assert "Traceback" not in out.stderr


def test_unwritable_config_is_a_clear_message(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores file modes; a directory path stands in for an unreadable file
        out = cwhook("check-config", "-c", str(tmp_path))
        assert out.returncode == 2 and "cannot read" in out.stdout
        return
    path = tmp_path / "c.yml"  # pragma: no cover - only as a normal user
    path.write_text("")
    path.chmod(0)
    out = cwhook("urls", "-c", str(path))
    assert out.returncode != 0 and "Traceback" not in out.stderr


# --- cwhook auth against the fake Trakt ----------------------------------------------------


def auth_config(tmp_path: Path, fake: FakeTrakt, client_id: str = "test-client-id") -> Path:
    path = tmp_path / "c.yml"
    path.write_text(config_text(8787, tmp_path / "s", trakt_url=fake.url, client_id=client_id))
    return path


def test_auth_device_flow_pending_slow_down_success(tmp_path: Path, fake_trakt: FakeTrakt) -> None:
    fake_trakt.device_script = [400, 400, 429, 400, 200]
    path = auth_config(tmp_path, fake_trakt)
    before = path.read_text().splitlines()
    out = cwhook("auth", "-c", str(path), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "https://trakt.tv/activate" in out.stdout and "5055CC52" in out.stdout
    assert fake_trakt.device_polls == 5
    polls = [c.at for c in fake_trakt.posts("/oauth/device/token")]
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert gaps[3] >= 1.9  # the interval grew after 429 (slow down)
    after = path.read_text().splitlines()
    changed = [a.split(":")[0].strip() for a, b in zip(before, after, strict=True) if a != b]
    assert changed == ["access_token", "refresh_token", "expires_at"]
    trakt = yaml.safe_load(path.read_text())["trakt"]
    assert trakt["access_token"] in fake_trakt.access_tokens
    assert trakt["refresh_token"] in fake_trakt.refresh_tokens


@pytest.mark.parametrize(("status", "message"), [(418, "denied"), (410, "expired"), (409, "already used"),
                                                 (404, "invalid")])
def test_auth_final_answers(tmp_path: Path, fake_trakt: FakeTrakt, status: int, message: str) -> None:
    fake_trakt.device_script = [400, status]
    path = auth_config(tmp_path, fake_trakt)
    before = path.read_text()
    out = cwhook("auth", "-c", str(path))
    assert out.returncode == 1 and message in out.stderr
    assert path.read_text() == before


def test_auth_needs_client_credentials(tmp_path: Path, fake_trakt: FakeTrakt) -> None:
    path = auth_config(tmp_path, fake_trakt, client_id="")
    out = cwhook("auth", "-c", str(path))
    assert out.returncode == 2 and "client_id and trakt.client_secret are empty" in out.stderr


def test_auth_wrong_client_id(tmp_path: Path, fake_trakt: FakeTrakt) -> None:
    path = auth_config(tmp_path, fake_trakt, client_id="wrong")
    out = cwhook("auth", "-c", str(path))
    assert out.returncode == 1 and "check trakt.client_id" in out.stderr


def test_auth_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(config_text(8787, tmp_path / "s", trakt_url="http://127.0.0.1:9"))
    out = cwhook("auth", "-c", str(path))
    assert out.returncode == 1 and "cannot reach Trakt" in out.stderr and "Traceback" not in out.stderr


def test_unusable_state_dir_is_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(config_text(8787, Path("/proc/no-such-dir")))
    out = cwhook("run", "-c", str(path))
    assert out.returncode == 1
    assert "cannot open the outbox in /proc/no-such-dir" in out.stderr and "Traceback" not in out.stderr
