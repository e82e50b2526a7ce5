"""The whole daemon: a real `cwhook run` process, real HTTP, the fake Trakt on loopback."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests import builders
from tests.builders import authorized, plex_body, settled
from tests.conftest import ROOT, TOKENS, Daemon, fixture_bytes, wait_for
from tests.faketrakt import FakeTrakt

pytestmark = pytest.mark.slow


def multipart(payload: bytes, thumb: bytes = b"\xff\xd8\xff" + b"\0" * 20000) -> tuple[bytes, str]:
    return builders.multipart([("payload", payload, None), ("thumb", thumb, "thumb.jpg")], "plexboundary123")


def test_plex_viewing_scrobbled_exactly_once(daemon_factory: Callable[..., Daemon],
                                             fake_trakt: FakeTrakt) -> None:
    d = daemon_factory(**authorized(fake_trakt))
    duration = 5940000
    body, ctype = multipart(plex_body("media.play", 30000))
    status, answer = d.post("plex", body, ctype)
    assert status == 202 and answer["event"]["action"] == "start"
    assert d.post("plex", plex_body("media.scrobble", None))[0] == 202
    assert d.post("plex", plex_body("media.stop", int(duration * 0.97)))[0] == 202
    wait_for(lambda: len(fake_trakt.scrobbles()) >= 2)
    wait_for(lambda: settled(d))  # nothing more may arrive
    calls = fake_trakt.scrobbles()
    assert [(c.path, c.answer["action"]) for c in calls] == [("/scrobble/start", "start"),
                                                             ("/scrobble/stop", "scrobble")]
    assert calls[1].body["progress"] == 90
    health = d.health()
    assert health["counts"]["sent"] == 2 and health["counts"]["suppressed"] == 1
    assert health["outbox"]["pending"] == 0 and health["status"] == "ok"
    decisions = [e for e in d.log_events() if e.get("event") == "decision"]
    assert [e["reason"] for e in decisions] == ["sent", "sent", "already_watched"]
    assert d.stop() == 0


def test_jellyfin_and_emby_samples(daemon_factory: Callable[..., Daemon], fake_trakt: FakeTrakt) -> None:
    d = daemon_factory(**authorized(fake_trakt))
    assert d.post("jellyfin", fixture_bytes("jellyfin_PlaybackStop_movie.json"), "text/plain")[0] == 202
    assert d.post("emby", fixture_bytes(
        "reconstructed/emby_playback.stop_episode.RECONSTRUCTED.json"))[0] == 202
    wait_for(lambda: len(fake_trakt.watched_stops()) == 2)
    bodies = [c.body for c in fake_trakt.watched_stops()]
    assert bodies[0]["movie"]["ids"] == {"imdb": "tt9764362", "tmdb": 593643}
    assert bodies[1]["episode"]["ids"]["tvdb"] == 349232
    assert d.stop() == 0


def test_watched_scrobble_survives_outage_and_429_storm(daemon_factory: Callable[..., Daemon],
                                                        fake_trakt: FakeTrakt) -> None:
    """Trakt down (503) for 1.5 s, across the client's first tries within one call (its back-off
    at half length: 0.5-1 s, then 1-1.5 s), then three 429s (Retry-After: 1, in full): each stop
    reaches Trakt once, the outbox empties."""
    d = daemon_factory(**authorized(fake_trakt), env={"_CWHOOK_BACKOFF_SCALE": "0.5"})
    fake_trakt.outage_until = time.time() + 1.5
    assert d.post("plex", plex_body("media.scrobble", None))[0] == 202
    wait_for(lambda: fake_trakt.watched_stops(), timeout=40)
    assert [c.status for c in fake_trakt.scrobbles()][-1] == 201
    assert any(c.status == 503 for c in fake_trakt.scrobbles())
    fake_trakt.script = [429, 429, 429]
    assert d.post("emby", fixture_bytes("emby_playback.stop_movie.json").replace(
        b'"PlayedToCompletion":false', b'"PlayedToCompletion":true'))[0] == 202
    wait_for(lambda: len(fake_trakt.watched_stops()) == 2, timeout=30)
    statuses = [c.status for c in fake_trakt.scrobbles()]
    assert statuses.count(429) == 3 and statuses[-1] == 201
    assert len(fake_trakt.watched_stops()) == 2
    assert d.health()["outbox"]["pending"] == 0
    assert d.stop() == 0


def test_kill_9_during_outage_then_delivered_once(daemon_factory: Callable[..., Daemon],
                                                  fake_trakt: FakeTrakt) -> None:
    d = daemon_factory(**authorized(fake_trakt))
    fake_trakt.outage_until = time.time() + 3600
    assert d.post("plex", plex_body("media.scrobble", None))[0] == 202
    wait_for(lambda: fake_trakt.scrobbles(503))
    assert d.health()["outbox"]["pending"] == 1
    assert d.health()["status"] == "degraded"
    d.stop(signal.SIGKILL)
    fake_trakt.outage_until = 0
    d.start()
    wait_for(lambda: fake_trakt.watched_stops(), timeout=20)
    wait_for(lambda: settled(d))
    assert len(fake_trakt.watched_stops()) == 1
    assert d.health()["outbox"]["pending"] == 0
    assert d.stop() == 0


def test_burst_is_paced_at_one_post_per_second(daemon_factory: Callable[..., Daemon],
                                               fake_trakt: FakeTrakt) -> None:
    d = daemon_factory(**authorized(fake_trakt))
    samples = ["plex_media.scrobble_movie.json", "plex_media.scrobble_episode.json",
               "plex_media.stop_movie_legacy-imdb-agent.json"]
    for i, name in enumerate(samples * 2):
        body = plex_body("media.play", 1000, name, ratingKey=f"k{i}")
        assert d.post("plex", body)[0] == 202
    wait_for(lambda: len(fake_trakt.scrobbles()) >= 6, timeout=20)
    calls = fake_trakt.scrobbles()
    assert all(c.status == 201 for c in calls), [c.status for c in calls]
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    assert min(gaps) >= 1.0
    assert d.stop() == 0


def test_sigterm_drains_queue_and_held_pause_into_outbox(daemon_factory: Callable[..., Daemon],
                                                         fake_trakt: FakeTrakt) -> None:
    """SIGTERM while a start is in the client's back-off (Trakt down) and a pause is held: the
    call in flight is cut at the end of the grace (1 s here, _CWHOOK_SHUTDOWN_GRACE, instead of
    5) and both wait in the outbox for the next start."""
    d = daemon_factory(**authorized(fake_trakt), start=False, env={"_CWHOOK_SHUTDOWN_GRACE": "1"})
    text = d.config_path.read_text()
    assert "pause_debounce_seconds: 1\n" in text
    d.config_path.write_text(text.replace("pause_debounce_seconds: 1\n", "pause_debounce_seconds: 30\n"))
    d.start()
    fake_trakt.outage_until = time.time() + 3600
    assert d.post("plex", plex_body("media.play", 600000))[0] == 202
    assert d.post("plex", plex_body("media.pause", 1200000))[0] == 202  # held for 30 s
    started = time.time()
    assert d.stop() == 0
    assert time.time() - started < 15
    stopped = [e for e in d.log_events() if e.get("event") == "stopped"][-1]
    assert stopped["outbox_pending"] == 2  # the start and the held pause, kept for later
    fake_trakt.outage_until = 0
    d.start()
    wait_for(lambda: len(fake_trakt.scrobbles(201)) == 2, timeout=20)
    assert [c.path for c in fake_trakt.scrobbles(201)] == ["/scrobble/start", "/scrobble/pause"]
    assert d.stop() == 0


def test_rotated_token_takes_effect_and_old_one_gets_401(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory()
    body = plex_body("media.play", 1000)
    assert d.post("plex", body)[0] == 202
    out = subprocess.run([sys.executable, "-m", "cwhook", "rotate-tokens", "-c", str(d.config_path), "plex"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    new = yaml.safe_load(d.config_path.read_text())["webhooks"]["plex"]["token"]
    assert new != TOKENS["plex"] and new in out.stdout
    started = time.time()
    wait_for(lambda: d.post("plex", body, token=new)[0] == 202, timeout=5)
    assert time.time() - started < 5
    assert d.post("plex", body)[0] == 401
    assert d.post("emby", fixture_bytes("emby_playback.stop_movie.json"))[0] == 202  # untouched
    assert d.stop() == 0


def test_invalid_edit_refused_and_old_settings_kept(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory()
    text = d.config_path.read_text()
    d.config_path.write_text(text.replace("pause_debounce_seconds: 1", "pause_debounce_seconds: -4"))
    wait_for(lambda: any(e.get("event") == "config_refused" for e in d.log_events()), timeout=6)
    refused = next(e for e in d.log_events() if e.get("event") == "config_refused")
    assert refused["problem"].startswith("scrobble.pause_debounce_seconds (line 15):")
    assert d.post("plex", plex_body("media.play", 1000))[0] == 202
    # SIGHUP re-reads too: fix the file and ask for it
    d.config_path.write_text(text.replace("level: debug", "level: info"))
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(e.get("event") == "config_reloaded" for e in d.log_events()), timeout=6)
    assert d.stop() == 0


def test_dry_run_until_authorized(daemon_factory: Callable[..., Daemon], fake_trakt: FakeTrakt) -> None:
    d = daemon_factory(trakt_url=fake_trakt.url)  # no access token
    assert d.health()["trakt"]["dry_run"] is True
    assert d.post("plex", plex_body("media.scrobble", None))[0] == 202
    wait_for(lambda: any(e.get("event") == "trakt_would_send" for e in d.log_events()))
    would = next(e for e in d.log_events() if e.get("event") == "trakt_would_send")
    assert would["path"] == "/scrobble/stop" and would["body"]["progress"] == 90
    assert fake_trakt.calls == []
    assert d.health()["counts"]["would_send"] == 1
    assert d.stop() == 0


def test_dry_run_flag(daemon_factory: Callable[..., Daemon], fake_trakt: FakeTrakt) -> None:
    d = daemon_factory(args=("--dry-run",), **authorized(fake_trakt))
    assert d.post("plex", plex_body("media.scrobble", None))[0] == 202
    wait_for(lambda: d.health()["counts"]["would_send"] == 1)
    assert fake_trakt.calls == []
    assert d.stop() == 0


def test_expired_token_refreshed_by_the_daemon(daemon_factory: Callable[..., Daemon],
                                               fake_trakt: FakeTrakt) -> None:
    access, refresh, _ = fake_trakt.issue_tokens(lifetime=-5)
    d = daemon_factory(trakt_url=fake_trakt.url, access_token=access, refresh_token=refresh,
                       expires_at=int(time.time()) + 7 * 86400)  # the file claims it is still valid
    before = d.config_path.read_text().splitlines()
    assert d.post("plex", plex_body("media.scrobble", None))[0] == 202
    wait_for(lambda: fake_trakt.watched_stops(), timeout=15)
    after = d.config_path.read_text().splitlines()
    changed = [a.split(":")[0].strip() for a, b in zip(before, after, strict=True) if a != b]
    assert changed == ["access_token", "refresh_token", "expires_at"]
    data = yaml.safe_load("\n".join(after))
    assert data["trakt"]["refresh_token"] not in (refresh, "")
    assert fake_trakt.refresh_count == 1
    assert d.stop() == 0


def test_failed_refresh_shows_in_healthz(daemon_factory: Callable[..., Daemon],
                                         fake_trakt: FakeTrakt) -> None:
    access, _, _ = fake_trakt.issue_tokens(lifetime=-5)
    d = daemon_factory(trakt_url=fake_trakt.url, access_token=access, refresh_token="used-up",
                       expires_at=int(time.time()) + 86400)
    assert d.post("plex", plex_body("media.scrobble", None))[0] == 202
    wait_for(lambda: d.health()["trakt"]["needs_auth"], timeout=10)
    health = d.health()
    assert health["status"] == "degraded" and "trakt_needs_auth" in health["problems"]
    assert health["outbox"]["pending"] == 1
    time.sleep(1)  # the point: time passes and no second refresh is tried
    assert len(fake_trakt.posts("/oauth/token")) == 1  # no hammering
    # `cwhook auth` (here: its result) writes a new pair; the daemon resumes within seconds
    from cwhook.config.file import ConfigFiles

    access, refresh, expires = fake_trakt.issue_tokens()
    ConfigFiles().update_file(d.config_path, {("trakt", "access_token"): access, ("trakt", "refresh_token"): refresh,
                                ("trakt", "expires_at"): expires})
    wait_for(lambda: fake_trakt.watched_stops(), timeout=10)
    wait_for(lambda: d.health()["status"] == "ok", timeout=5)
    assert d.stop() == 0


def test_sd_notify_ready_watchdog_stopping(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    d = daemon_factory(start=False, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    d.start(wait=False)
    messages: list[str] = []
    deadline = time.time() + 10
    while time.time() < deadline and not any("WATCHDOG=1" in m for m in messages):
        messages.append(sock.recv(4096).decode())
    assert any(m.startswith("READY=1") for m in messages)
    d.health()  # READY came once listening
    assert d.stop() == 0
    while not any("STOPPING=1" in m for m in messages):
        messages.append(sock.recv(4096).decode())
    sock.close()


@pytest.mark.xdist_group("example-port-8787")  # a first run listens on the example's port
def test_first_run_from_empty_directory(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a first run listens on the example's port, 8787
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if probe.connect_ex(("127.0.0.1", 8787)) == 0:
            pytest.fail("port 8787 is taken by another program: this test needs the example's port free")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "cwhook", "run"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        cfg = tmp_path / "cwhook.yml"
        wait_for(lambda: (tmp_path / "state" / "cwhook.sqlite3").exists() or proc.poll() is not None,
                 timeout=15)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert cfg.exists() and (cfg.stat().st_mode & 0o777) == 0o600
    data = yaml.safe_load(cfg.read_text())
    for server, endpoint in [("plex", "plextrakt"), ("jellyfin", "jellyfintrakt"), ("emby", "embytrakt")]:
        token = data["webhooks"][server]["token"]
        assert len(token) >= 32
        assert token not in out and endpoint not in out  # stdout is no terminal: journald keeps it
    assert "cwhook urls" in out
    assert "dry-run" in out and "cwhook auth" in out
    # the file is the documented example, with tokens filled in
    example = (ROOT / "config.example.yml").read_text().splitlines()
    mine = cfg.read_text().splitlines()
    assert [a for a, b in zip(example, mine, strict=True) if a != b] == ['    token: ""'] * 4  # one per source
    assert proc.returncode == 0 or "listen_failed" in err


def test_sigterm_with_a_stuck_client_still_exits_quickly(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory()
    stuck = socket.create_connection(("127.0.0.1", d.port))
    stuck.sendall(b"POST /webhook/plextrakt?x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
    time.sleep(0.2)  # the stuck client's bytes reach the daemon (nothing to observe from here)
    started = time.time()
    assert d.stop() == 0
    assert time.time() - started < 10
    stuck.close()


def test_refresh_ahead_of_expiry_on_startup(daemon_factory: Callable[..., Daemon],
                                            fake_trakt: FakeTrakt) -> None:
    access, refresh, _ = fake_trakt.issue_tokens(lifetime=600)  # 10 minutes left: inside the margin
    d = daemon_factory(trakt_url=fake_trakt.url, access_token=access, refresh_token=refresh,
                       expires_at=int(time.time()) + 600, start=False)
    before = d.config_path.read_text().splitlines()
    d.start()
    wait_for(lambda: fake_trakt.refresh_count == 1, timeout=10)
    wait_for(lambda: yaml.safe_load(d.config_path.read_text())["trakt"]["access_token"] != access)
    after = d.config_path.read_text().splitlines()
    assert [a.split(":")[0].strip() for a, b in zip(before, after, strict=True) if a != b] == [
        "access_token", "refresh_token", "expires_at"]
    trakt = yaml.safe_load("\n".join(after))["trakt"]
    assert trakt["expires_at"] == pytest.approx(time.time() + fake_trakt.token_lifetime, abs=30)
    wait_for(lambda: (d.health()["trakt"]["token_expires_in_s"] or 0) > 3600, timeout=6)
    assert d.post("plex", plex_body("media.scrobble", None))[0] == 202
    wait_for(lambda: fake_trakt.watched_stops())
    assert fake_trakt.watched_stops()[0].headers["Authorization"] == f"Bearer {trakt['access_token']}"
    assert d.stop() == 0


@pytest.mark.parametrize("ratings", [True, False])
def test_plex_ratings_on_and_off(daemon_factory: Callable[..., Daemon], fake_trakt: FakeTrakt,
                                 ratings: bool) -> None:
    d = daemon_factory(**authorized(fake_trakt, plex_extra=f"    ratings: {str(ratings).lower()}\n"))
    status, answer = d.post("plex", fixture_bytes("plex_media.rate_movie.json"))
    if not ratings:
        assert (status, answer["reason"]) == (200, "ratings_disabled")
        wait_for(lambda: settled(d))  # answered without being queued: nothing is on its way
        assert fake_trakt.posts("/sync/ratings") == []
    else:
        assert status == 202 and answer["event"]["rating"] == 10
        # a plex:// guid without ids: found by title and year, then rated
        wait_for(lambda: [c for c in fake_trakt.posts("/sync/ratings") if c.status == 201
                          and not c.answer["not_found"]["movies"]], timeout=10)
        last = fake_trakt.posts("/sync/ratings")[-1]
        assert last.body["movies"][0]["rating"] == 10 and last.body["movies"][0]["ids"] == {"trakt": 1005}
    assert d.stop() == 0


@pytest.mark.parametrize("autoremove", [True, False])
def test_watchlist_autoremove_on_and_off(daemon_factory: Callable[..., Daemon], fake_trakt: FakeTrakt,
                                         autoremove: bool) -> None:
    d = daemon_factory(**authorized(
        fake_trakt, extra_scrobble=f"  watchlist_autoremove_movies: {str(autoremove).lower()}\n"))
    assert d.post("plex", plex_body("media.scrobble", None))[0] == 202
    wait_for(lambda: fake_trakt.watched_stops())
    wait_for(lambda: settled(d), timeout=10)  # the follow-up, if any, is paced 1 s behind the stop
    removes = fake_trakt.posts("/sync/watchlist/remove")
    if autoremove:
        assert len(removes) == 1 and removes[0].body["movies"][0]["ids"]["imdb"] == "tt0090728"
    else:
        assert removes == []
    assert d.stop() == 0


def test_healthz_fields(daemon_factory: Callable[..., Daemon], fake_trakt: FakeTrakt) -> None:
    d = daemon_factory(**authorized(fake_trakt))
    health = d.health()
    assert health["status"] == "ok" and health["problems"] == []
    assert set(health) >= {"status", "version", "uptime_s", "queue_depth", "outbox", "trakt", "counts"}
    assert set(health["outbox"]) == {"pending", "oldest_age_s", "set_aside"}
    assert set(health["trakt"]) >= {"authorized", "dry_run", "token_expires_in_s", "last_success_at",
                                    "last_error"}
    assert set(health["counts"]) >= {"received", "queued", "ignored", "sent", "suppressed", "failed"}
    assert health["trakt"]["authorized"] is True and health["trakt"]["dry_run"] is False
    assert 86000 < health["trakt"]["token_expires_in_s"] <= 86400
    text = json.dumps(health)
    assert fake_trakt.access_tokens and not any(t in text for t in fake_trakt.access_tokens)
    assert not any(t in text for t in TOKENS.values())
    d.post("plex", plex_body("media.play", 1000))
    d.post("plex", fixture_bytes("plex_media.play_clip_trailer.json"))
    wait_for(lambda: d.health()["counts"]["sent"] == 1)
    health = d.health()
    assert health["counts"]["received"] == 2 and health["counts"]["queued"] == 1
    assert health["counts"]["ignored"] == 1 and health["trakt"]["last_success_at"] is not None
    # Trakt goes away: degraded while it retries, with the error shown
    fake_trakt.outage_until = time.time() + 3600
    d.post("plex", plex_body("media.scrobble", None))
    wait_for(lambda: d.health()["status"] == "degraded", timeout=10)
    health = d.health()
    assert "trakt_unreachable" in health["problems"] and "503" in health["trakt"]["last_error"]
    assert health["outbox"]["pending"] == 1 and health["outbox"]["oldest_age_s"] is not None
    assert d.stop() == 0


def test_sigint_exits_zero_and_console_script_is_the_same_program(daemon_factory: Callable[..., Daemon]) -> None:
    import shutil

    d = daemon_factory()
    assert d.stop(signal.SIGINT) == 0
    script = shutil.which("cwhook")
    assert script is not None
    out = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    module = subprocess.run([sys.executable, "-m", "cwhook", "--version"], capture_output=True, text=True,
                            timeout=30)
    assert out.returncode == 0 and out.stdout == module.stdout


def test_second_daemon_on_the_same_state_dir_refuses(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory()
    text = d.config_path.read_text()
    other = d.config_path.with_name("other.yml")
    other.write_text(text.replace(f"port: {d.port}", "port: 9"))  # same state.dir
    out = subprocess.run([sys.executable, "-m", "cwhook", "run", "-c", str(other)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 1 and "already_running" in out.stderr
    assert d.health()["status"] in ("ok", "degraded")
    assert d.stop() == 0


def test_client_that_hangs_up_mid_body_is_no_error(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory()
    for head in [b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"event\"",
                 b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
                 b"--b\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\n{"]:
        s = socket.create_connection(("127.0.0.1", d.port))
        s.sendall(f"POST /webhook/plextrakt?{TOKENS['plex']} HTTP/1.1\r\nHost: x\r\n".encode() + head)
        time.sleep(0.2)
        s.close()
    wait_for(lambda: len([e for e in d.log_events() if e.get("outcome") == "client_gone"]) == 2)
    assert not [e for e in d.log_events() if e.get("level") == "error"]
    assert d.post("plex", plex_body("media.play", 1000))[0] == 202
    assert d.stop() == 0
