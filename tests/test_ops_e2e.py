"""Operations, end to end with a real `cwhook run`: reloads that wait for a whole file, refused
files in /healthz, the service user's file rewritten by root, journald priorities, private state."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cwhook.config.file import ConfigFiles
from cwhook.service.watcher import ConfigWatcher
from tests.builders import authorized, plex_body
from tests.conftest import AS_NOBODY, NOBODY, Daemon, config_text, free_port, needs_nobody, wait_for
from tests.faketrakt import FakeTrakt

pytestmark = pytest.mark.slow


def events(d: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in d.log_events() if e.get("event") == name]


def settle(path: Path) -> None:
    then = time.time() - 5
    os.utime(path, (then, then))


IN_PLACE_WRITER = r"""
import sys, time
path, new_text, pauses = sys.argv[1], sys.argv[2].encode(), [float(p) for p in sys.argv[3].split(",")]
lines = new_text.splitlines(keepends=True)
with open(path, "r+b") as fh:  # in place, as sudoedit, nano or `cat >` do
    fh.truncate(0)
    for n, i in enumerate(range(0, len(lines), 6)):
        fh.write(b"".join(lines[i:i + 6]))
        fh.flush()
        time.sleep(pauses[n % len(pauses)])
"""


def write_in_place(path: Path, text: str, pauses: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", IN_PLACE_WRITER, str(path), text, pauses])


def test_reload_waits_for_a_slow_writer_to_finish(daemon_factory: Callable[..., Daemon],
                                                  fake_trakt: FakeTrakt) -> None:
    d = daemon_factory(**authorized(fake_trakt))
    text = d.config_path.read_text()
    writer = write_in_place(d.config_path, text.replace("pause_debounce_seconds: 1", "pause_debounce_seconds: 2"),
                            "0.4")  # six lines every 0.4 s: never still for a second until it is done
    assert writer.wait(30) == 0
    wait_for(lambda: events(d, "config_reloaded"), timeout=10)
    time.sleep(1.5)  # the point: past the second a settled file waits, no refusal nor second reload
    assert events(d, "config_refused") == []
    assert [e["changed"] for e in events(d, "config_reloaded")] == [["scrobble.pause_debounce_seconds"]]
    assert d.health()["status"] == "ok"
    assert d.stop() == 0


def test_a_truncated_file_is_refused_not_taken_for_defaults(daemon_factory: Callable[..., Daemon],
                                                             fake_trakt: FakeTrakt) -> None:
    d = daemon_factory(**authorized(fake_trakt))
    text = d.config_path.read_text()
    # The writer stops for 3 s after the first 12 lines (server, webhooks): a truncated file
    # that is valid YAML and would mean api.trakt.tv, no client id, no state dir.
    writer = write_in_place(d.config_path, text, "0.05,3")
    wait_for(lambda: events(d, "config_refused"), timeout=10)
    health = d.health()
    assert health["status"] == "degraded" and "config_refused" in health["problems"]
    assert "trakt: this section is missing" in health["config_refused"]
    assert "it is read again when it changes, on SIGHUP and every minute" in health["config_refused"]
    assert {e["problem"].split(":")[0] for e in events(d, "config_refused")} >= {"trakt", "state", "logging"}
    assert writer.wait(30) == 0
    wait_for(lambda: "config_refused" not in d.health()["problems"], timeout=10)
    assert all("trakt.api_url" not in e["changed"] for e in events(d, "config_reloaded"))
    assert d.post("plex", plex_body("media.scrobble", None))[0] == 202
    wait_for(lambda: fake_trakt.scrobbles(201))  # still the fake Trakt, still authorized
    assert d.stop() == 0


def test_a_section_removed_on_purpose_is_applied_by_sighup(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory()
    text = d.config_path.read_text()
    d.config_path.write_text(text.replace("logging:\n  level: debug\n  format: json\n", ""))
    wait_for(lambda: events(d, "config_refused"), timeout=10)
    assert d.proc is not None
    d.proc.send_signal(1)  # SIGHUP
    wait_for(lambda: "config_refused" not in d.health()["problems"], timeout=10)
    assert events(d, "config_reloaded")[-1]["reason"] == "SIGHUP"
    assert d.stop() == 0


class NobodyDaemon(Daemon):
    """`cwhook run` as the unprivileged service user (uid 65534), as systemd's User= does."""

    def start(self, wait: bool = True) -> Daemon:
        env = {k: v for k, v in os.environ.items() if k != "CWHOOK_CONFIG"}
        with open(self.log_path, "ab") as err, open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                [*AS_NOBODY, sys.executable, "-m", "cwhook", "run", "-c", str(self.config_path)],
                stdout=out, stderr=err, env=env, cwd=self.config_path.parent)
        if wait:
            self.wait_ready()
        return self


@pytest.fixture
def nobody_daemon(shared_dir: Path) -> Iterator[Daemon]:
    os.chown(shared_dir, NOBODY, NOBODY)
    os.chmod(shared_dir, 0o700)
    port = free_port()
    path = shared_dir / "cwhook.yml"
    path.write_text(config_text(port, shared_dir / "state"))
    os.chown(path, NOBODY, NOBODY)
    path.chmod(0o600)
    settle(path)
    d = NobodyDaemon(path, port)
    try:
        yield d.start()
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


@needs_nobody
def test_root_rotating_tokens_on_the_service_users_file(nobody_daemon: Daemon) -> None:
    d = nobody_daemon
    body = plex_body("media.play", 1000)
    out = subprocess.run([sys.executable, "-m", "cwhook", "rotate-tokens", "-c", str(d.config_path), "plex"],
                         capture_output=True, text=True, timeout=30)  # as root, like `sudo cwhook ...`
    assert out.returncode == 0, out.stderr
    assert d.config_path.stat().st_uid == NOBODY
    new = next(line.split("?", 1)[1] for line in out.stdout.splitlines() if line.startswith("plex: "))
    wait_for(lambda: d.post("plex", body, token=new)[0] == 202, timeout=5)
    assert d.post("plex", body)[0] == 401
    assert events(d, "config_refused") == [] and "config_refused" not in d.health()["problems"]


@needs_nobody
def test_an_unreadable_file_is_a_healthz_problem_with_the_fix_until_a_chown(nobody_daemon: Daemon) -> None:
    d = nobody_daemon
    os.chown(d.config_path, 0, 0)  # what a root-run editor or an old cwhook left behind
    wait_for(lambda: "config_refused" in d.health()["problems"], timeout=10)
    health = d.health()
    assert health["status"] == "degraded"
    assert "cannot read it as user nobody (permission denied; the file belongs to root)" in health["config_refused"]
    assert f"`sudo chown nobody {d.config_path}`" in health["config_refused"]
    refused = events(d, "config_refused")
    assert len(refused) == 1 and refused[0]["level"] == "error"
    assert d.post("plex", plex_body("media.play", 1000))[0] == 202  # running on the previous settings
    os.chown(d.config_path, NOBODY, NOBODY)  # the fix: a chown, which changes no mtime
    wait_for(lambda: "config_refused" not in d.health()["problems"], timeout=10)
    assert events(d, "config_reloaded")[-1]["changed"] == []


async def test_a_refused_file_is_read_again_every_minute(tmp_path: Path) -> None:
    """Nothing about the file changes (a chown of a parent, a group membership): the retry notices."""
    path = tmp_path / "c.yml"
    path.write_text("")
    settle(path)
    reasons: list[str] = []
    config: Any = SimpleNamespace(path=path)
    watcher = ConfigWatcher(config, ConfigFiles(), lambda old, new, reason: None, poll=0.02, refused_retry=0.2)
    watcher.error = "refused"

    def reload(reason: str) -> bool:
        reasons.append(reason)
        if len(reasons) == 3:
            watcher.error = None  # accepted at last
        return watcher.error is None

    watcher.reload = reload  # type: ignore[method-assign]
    task = asyncio.create_task(watcher.run())
    await asyncio.sleep(1.2)
    assert reasons == ["retry", "retry", "retry"]  # every REFUSED_RETRY while refused, then no more
    watcher.request()  # SIGHUP
    await asyncio.sleep(0.2)
    assert reasons[-1] == "SIGHUP"
    task.cancel()


def test_journald_gets_priorities_and_utf8(daemon_factory: Callable[..., Daemon], fake_trakt: FakeTrakt) -> None:
    d = daemon_factory(**authorized(fake_trakt), start=False)
    d.log_path.touch()
    st = d.log_path.stat()
    d.env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}  # what systemd sets for StandardError=journal
    d.start()
    assert d.post("plex", plex_body("media.play", 60000, title="范马刃牙 Amélie"))[0] == 202
    d.config_path.write_text(d.config_path.read_text().replace("pause_debounce_seconds: 1",
                                                               "pause_debounce_seconds: -1"))
    wait_for(lambda: b"config_refused" in d.log_path.read_bytes(), timeout=10)
    assert d.stop() == 0
    raw = d.log_path.read_bytes()
    assert "范马刃牙 Amélie".encode() in raw and b"\\u8303" not in raw
    lines = raw.decode().splitlines()
    assert lines and all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    by_event = {json.loads(line[3:])["event"]: line[:3] for line in lines}
    assert by_event["listening"] == "<6>" and by_event["config_refused"] == "<3>"
    assert by_event["decision"] == "<6>" and by_event["request"] == "<7>"  # a queued one: debug


def test_state_dir_is_private_whatever_the_umask(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    (state / "cwhook.sqlite3").touch()
    os.chmod(state / "cwhook.sqlite3", 0o644)  # left readable by an older version
    fresh = tmp_path / "new" / "state"
    old = os.umask(0o022)
    try:
        d = daemon_factory(config_text(0, fresh).replace("port: 0", "port: {port}"))
    finally:
        os.umask(old)
    assert d.post("plex", plex_body("media.play", 1000))[0] == 202
    wait_for(lambda: any(p.name.endswith("-wal") for p in fresh.iterdir()))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in fresh.iterdir()}
    assert modes and set(modes.values()) == {0o600}, modes
    assert d.stop() == 0
    d2 = daemon_factory(config_text(0, state).replace("port: 0", "port: {port}"))
    assert stat.S_IMODE((state / "cwhook.sqlite3").stat().st_mode) == 0o600
    assert d2.stop() == 0
