"""The command line, run as a user would: a subprocess per command."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cwhook.state.store import FILE_NAME
from tests.conftest import AS_NOBODY, NOBODY, ROOT, TOKENS, config_text, free_port, needs_nobody
from tests.faketrakt import FakeTrakt

pytestmark = pytest.mark.slow  # every test runs the real CLI in its own process


def cwhook(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 60, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "CWHOOK_CONFIG"}
    full_env.update(env or {})
    prefix = AS_NOBODY if as_nobody else ()
    return subprocess.run([*prefix, sys.executable, "-m", "cwhook", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)


def settled(path: Path) -> Path:
    """Back-date the file: a rewrite waits for a file that changed within the last second."""
    then = time.time() - 5
    os.utime(path, (then, then))
    return path


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
    for server in ("plex", "jellyfin", "emby", "tautulli"):
        assert f"http://127.0.0.1:9000/webhook/{server}trakt?{data['webhooks'][server]['token']}" in out.stdout


def test_rotate_some_or_all(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    original = config_text(8787, tmp_path / "s")
    path.write_text(original)
    settled(path)
    out = cwhook("rotate-tokens", "-c", str(path), "emby")
    assert out.returncode == 0
    data = yaml.safe_load(path.read_text())
    assert data["webhooks"]["plex"]["token"] == TOKENS["plex"]
    assert data["webhooks"]["emby"]["token"] != TOKENS["emby"]
    assert "embytrakt?" + data["webhooks"]["emby"]["token"] in out.stdout and "plextrakt" not in out.stdout
    changed = [(a, b) for a, b in zip(original.splitlines(), path.read_text().splitlines(), strict=True)
               if a != b]
    assert len(changed) == 1
    settled(path)
    out = cwhook("rotate-tokens", "-c", str(path), "tautulli")
    assert out.returncode == 0 and "tautullitrakt?" in out.stdout and "embytrakt" not in out.stdout
    assert yaml.safe_load(path.read_text())["webhooks"]["tautulli"]["token"] != TOKENS["tautulli"]
    settled(path)
    data = yaml.safe_load(path.read_text())
    out = cwhook("rotate-tokens", "-c", str(path))
    data2 = yaml.safe_load(path.read_text())
    assert all(data2["webhooks"][s]["token"] != data["webhooks"][s]["token"]
               for s in ("plex", "jellyfin", "emby", "tautulli"))
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
    assert out.returncode == 2 and "trakt.client_id is empty" in out.stderr


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
    path.write_text(config_text(free_port(), Path("/proc/no-such-dir")))
    out = cwhook("run", "-c", str(path))
    assert out.returncode == 1
    assert out.stderr.startswith("cwhook: state.dir /proc/no-such-dir: ")
    assert f"Fix: set state.dir in {path}" in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""  # before any banner


# --- the config file: owner kept, errors that name the cause and the fix ----------------------------


@needs_nobody
def test_root_rotating_the_service_users_file_leaves_it_usable_by_that_user(shared_dir: Path) -> None:
    os.chown(shared_dir, NOBODY, NOBODY)
    os.chmod(shared_dir, 0o700)
    path = settled_config(shared_dir)
    os.chown(path, NOBODY, NOBODY)
    out = cwhook("rotate-tokens", "-c", str(path), "plex")  # as root, like `sudo cwhook rotate-tokens`
    assert out.returncode == 0, out.stderr
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o600)
    assert yaml.safe_load(path.read_text())["webhooks"]["plex"]["token"] != TOKENS["plex"]
    check = cwhook("check-config", "-c", str(path), as_nobody=True)
    assert (check.returncode, check.stdout) == (0, "config OK\n"), check.stderr
    again = cwhook("rotate-tokens", "-c", str(path), "plex", as_nobody=True)  # the lock file is usable too
    assert again.returncode == 0, again.stderr


def settled_config(directory: Path, name: str = "cwhook.yml") -> Path:
    path = directory / name
    path.write_text(config_text(8787, directory / "state"))
    path.chmod(0o600)
    return settled(path)


@needs_nobody
def test_directory_not_writable_names_the_directory_and_the_fix(shared_dir: Path) -> None:
    os.chmod(shared_dir, 0o755)  # root's directory; the file is the user's own
    path = settled_config(shared_dir)
    os.chown(path, NOBODY, NOBODY)
    before = path.read_bytes()
    out = cwhook("rotate-tokens", "-c", str(path), as_nobody=True)
    assert out.returncode == 1
    assert out.stderr.startswith(f"cwhook: cannot write {path}: the directory {shared_dir} is not writable by "
                                 "user nobody"), out.stderr
    assert ("Fix: run the command as root (`sudo cwhook ...`); or, if nobody is the user that runs the daemon, "
            f"make it writable for nobody (`sudo chown nobody {shared_dir}`)") in out.stderr
    assert ".tmp" not in out.stderr and "Traceback" not in out.stderr
    assert path.read_bytes() == before


@needs_nobody
def test_a_user_that_cannot_keep_the_owner_is_told_whom_to_run_as(shared_dir: Path) -> None:
    os.chown(shared_dir, NOBODY, NOBODY)  # nobody may write the directory, but the file is root's
    os.chmod(shared_dir, 0o755)
    path = settled_config(shared_dir)
    path.chmod(0o644)
    before = path.read_bytes()
    out = cwhook("rotate-tokens", "-c", str(path), as_nobody=True)
    assert out.returncode == 1
    assert f"cannot write {path} as user nobody: it belongs to root" in out.stderr
    assert "Fix: run the command as root" in out.stderr and "Traceback" not in out.stderr
    assert path.read_bytes() == before and path.stat().st_uid == 0


@needs_nobody
def test_unreadable_config_names_the_user_and_the_owner(shared_dir: Path) -> None:
    os.chmod(shared_dir, 0o755)
    path = settled_config(shared_dir)  # root's, 0600
    out = cwhook("check-config", "-c", str(path), as_nobody=True)
    assert out.returncode == 2
    assert out.stdout.startswith(f"{path}: cannot read it as user nobody (permission denied; the file belongs "
                                 "to root)")


@needs_nobody
def test_auth_checks_the_file_can_be_saved_before_the_login(shared_dir: Path, fake_trakt: FakeTrakt) -> None:
    os.chmod(shared_dir, 0o755)
    path = shared_dir / "c.yml"
    path.write_text(config_text(8787, shared_dir / "s", trakt_url=fake_trakt.url))
    os.chown(path, NOBODY, NOBODY)
    out = cwhook("auth", "-c", str(path), as_nobody=True)
    assert out.returncode == 1 and "is not writable by user nobody" in out.stderr
    assert fake_trakt.posts("/oauth/device/code") == []  # nobody was sent to trakt.tv for nothing


def _read_only_mount(directory: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)],
                          capture_output=True).returncode == 0


def test_read_only_file_system_names_the_directory_and_the_fix(tmp_path: Path) -> None:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if not _read_only_mount(mnt):
        pytest.skip("needs root and a tmpfs mount")
    try:
        path = settled_config(mnt)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        for command in (("rotate-tokens",), ("urls",)):  # urls writes missing tokens: none missing here
            out = cwhook(*command, "-c", str(path))
            if command == ("urls",):
                assert out.returncode == 0
                continue
            assert out.returncode == 1
            assert out.stderr == (
                f"cwhook: cannot write {path}: {mnt} is on a read-only file system; nothing was changed. "
                f"Fix: make {mnt} writable (under systemd: list it in ReadWritePaths= of the unit), or keep "
                "the config in a writable directory\n")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_duplicate_keys_and_tabs_fail_check_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("server:\n  port: 8790\n  port: 8791\n")
    out = cwhook("check-config", "-c", str(path))
    assert (out.returncode, out.stdout) == (
        2, "server.port (line 3): duplicate key (already on line 2); keep only one of them\n")
    path.write_text("server:\n  port: 8790\n\thost: x\n")
    out = cwhook("check-config", "-c", str(path))
    assert out.returncode == 2
    assert out.stdout == ("c.yml (line 3): not valid YAML: a tab character (column 1); YAML does not allow tabs "
                          "for indentation: use spaces to indent\n")


def test_port_in_use_is_said_first_and_names_server_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "c.yml"
        path.write_text(config_text(port, tmp_path / "state"))
        out = cwhook("run", "-c", str(path), timeout=30)
    assert out.returncode == 1
    assert out.stdout == ""  # no banner, no URLs before the error
    assert out.stderr == (f"cwhook: cannot listen on 127.0.0.1:{port}: the port is already in use (another "
                          f"program, or another cwhook). Fix: stop it, or set server.port in {path} to a free port\n")


def test_a_closed_pipe_is_a_silent_exit(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(config_text(8787, tmp_path / "s"))
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head -1` once it has its line: every write gets EPIPE
    try:
        out = subprocess.run([sys.executable, "-m", "cwhook", "urls", "-c", str(path)], stdout=write_end,
                             stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        os.close(write_end)
    assert (out.returncode, out.stderr) == (0, "")


def test_urls_piped_to_head(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(config_text(8787, tmp_path / "s"))
    out = subprocess.run(["bash", "-c", f"{sys.executable} -m cwhook urls -c {path} | head -1"],
                         capture_output=True, text=True, timeout=30)
    assert out.stderr == "" and out.stdout.startswith("plex: http://127.0.0.1:8787/webhook/plextrakt?")


# --- permission messages name the owner and never give the service's file away ----------------

GHOST = 54321  # a uid with no passwd entry (a service user of another machine, a restored backup)


@needs_nobody
@pytest.mark.parametrize("owner", [GHOST, 0])
def test_an_unreadable_file_names_its_owner_and_never_gives_it_to_the_caller(shared_dir: Path, owner: int) -> None:
    os.chmod(shared_dir, 0o755)
    path = settled_config(shared_dir)  # 0600
    os.chown(path, owner, owner)
    for command in ("check-config", "status", "accounts", "urls"):
        out = cwhook(command, "-c", str(path), as_nobody=True)
        said = out.stdout + out.stderr
        assert "?" not in said.split("permission denied", 1)[1].split(")")[0], said
        assert "sudo -u root" not in said and "Traceback" not in said
        if owner == GHOST:
            assert f"(permission denied; the file belongs to uid {GHOST})" in said, said
            assert f"run cwhook as uid {GHOST} (`sudo -u '#{GHOST}' cwhook ...`)" in said, said
            assert "chown" not in said, said  # the service's file stays the service's
        else:
            assert "(permission denied; the file belongs to root)" in said, said
            assert "run cwhook as root (`sudo cwhook ...`)" in said, said


@needs_nobody
def test_a_closed_directory_is_named_with_its_owner(shared_dir: Path) -> None:
    service = shared_dir / "etc"
    service.mkdir(mode=0o700)
    path = settled_config(service)
    os.chown(service, GHOST, GHOST)
    os.chown(path, GHOST, GHOST)
    os.chmod(shared_dir, 0o755)
    out = cwhook("check-config", "-c", str(path), as_nobody=True)
    assert out.returncode == 2
    assert out.stdout.startswith(f"{path}: cannot read it as user nobody (permission denied; the directory "
                                 f"{service} belongs to uid {GHOST} and is closed to nobody): run cwhook as "
                                 f"uid {GHOST} (`sudo -u '#{GHOST}' cwhook ...`)"), out.stdout
    assert "chown" not in out.stdout


@needs_nobody
def test_a_state_dir_left_to_root_leads_to_chown_not_install(shared_dir: Path) -> None:
    os.chmod(shared_dir, 0o755)
    path = settled_config(shared_dir)
    os.chown(path, NOBODY, NOBODY)
    state = shared_dir / "state"
    state.mkdir(mode=0o700)  # root ran the daemon once
    (state / FILE_NAME).write_bytes(b"")
    for command in ("check-config", "run"):
        out = cwhook(command, "-c", str(path), as_nobody=True, timeout=30)
        said = out.stdout + out.stderr
        assert out.returncode in (1, 2) and f"`sudo chown -R nobody {state}`" in said, said
        assert "install -d" not in said and "unable to open database file" not in said
    os.chown(state, NOBODY, NOBODY)  # the directory given back, a file in it still root's
    for command in ("check-config", "run"):
        out = cwhook(command, "-c", str(path), as_nobody=True, timeout=30)
        said = out.stdout + out.stderr
        assert f"cannot use {FILE_NAME} in it: it belongs to root" in said, said
        assert f"`sudo chown -R nobody {state}`" in said and "install -d" not in said


@needs_nobody
def test_check_config_says_when_state_dir_cannot_be_created(shared_dir: Path) -> None:
    os.chmod(shared_dir, 0o755)  # root's: nobody cannot create state/ in it
    path = settled_config(shared_dir)
    os.chown(path, NOBODY, NOBODY)
    out = cwhook("check-config", "-c", str(path), as_nobody=True)
    assert out.returncode == 2, out.stdout
    assert out.stdout.startswith(f"state.dir {shared_dir / 'state'}: user nobody cannot create or write it"), out.stdout
    assert not (shared_dir / "state").exists()
    os.chmod(shared_dir, 0o777)
    out = cwhook("check-config", "-c", str(path), as_nobody=True)
    assert out.stdout == "config OK\n" and not (shared_dir / "state").exists()  # checked, not created
    assert [p.name for p in shared_dir.iterdir()] == ["cwhook.yml"]


@needs_nobody
def test_accounts_on_an_unreadable_database_says_whose_it_is(shared_dir: Path) -> None:
    os.chmod(shared_dir, 0o755)
    path = settled_config(shared_dir)
    path.chmod(0o644)
    state = shared_dir / "state"
    state.mkdir(mode=0o700)
    (state / FILE_NAME).write_bytes(b"")
    out = cwhook("accounts", "-c", str(path), as_nobody=True)
    assert out.returncode == 1
    assert out.stderr.startswith(f"cwhook: {state / FILE_NAME}: cannot read it as user nobody (permission "
                                 f"denied; the directory {state} belongs to root and is closed to nobody): "
                                 "run cwhook as root (`sudo cwhook ...`)"), out.stderr
    assert "Permission denied" not in out.stderr
    out = cwhook("recent", "-c", str(path), as_nobody=True)  # the journal is in the same database
    assert "(it belongs to root): run the command as that user (`sudo cwhook recent -c " in out.stderr, out.stderr
    assert "sudo -u root" not in out.stderr
