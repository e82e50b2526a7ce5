"""What the commands print and the docs promise is true (issue 17 items 6, 10-12; issue 18 item 9):
hints that work as printed, `auth` that names the right key, the per-request dry run, one duration
format, the HTTP answers, and text from outside escaped before it reaches a terminal."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cwhook import __version__
from cwhook.config.schema import parse_config
from cwhook.sources.registry import SOURCES
from cwhook.status import snapshot as status
from tests.conftest import ROOT, TOKENS, Daemon, config_text, fixture_json, wait_for
from tests.faketrakt import FakeTrakt

DRY = {"X-Cwhook-Dry-Run": "1"}


def cwhook(*args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cwhook", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def plex(event: str, offset_ms: int, title: str = "Big Trouble in Little China", user: str = "Anna") -> bytes:
    data = fixture_json("plex_media.scrobble_movie.json")
    data["event"] = event
    data["Account"]["title"] = user
    data["Metadata"]["viewOffset"] = offset_ms
    data["Metadata"]["title"] = title
    return json.dumps(data).encode()


def post(d: Daemon, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    status_, data, _ = d.request("POST", f"/webhook/plextrakt?{TOKENS['plex']}", body,
                                 {"Content-Type": "application/json", **(headers or {})})
    return status_, data


def recent(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return cwhook("recent", "-c", str(d.config_path), *args)


# --- 17.11: a per-request dry run ----------------------------------------------------------------


@pytest.mark.slow
def test_a_test_request_goes_through_the_rules_and_sends_nothing(daemon_factory: Callable[..., Daemon],
                                                                 fake_trakt: FakeTrakt) -> None:
    access, refresh, expires = fake_trakt.issue_tokens()
    d = daemon_factory(trakt_url=fake_trakt.url, access_token=access, refresh_token=refresh, expires_at=expires)
    code, body = post(d, plex("media.play", 300000), DRY)
    assert code == 200 and body["status"] == "test", body
    assert body["event"]["title"] == "Big Trouble in Little China"
    [send] = body["accounts"]["default"]["would_send"]
    assert (send["action"], send["trakt"]) == ("start", "/scrobble/start")
    assert body["accounts"]["default"]["dry_run"] is False  # authorized: a real one would be sent
    # A pause: held by the debounce, then what the end of its window sends.
    code, body = post(d, plex("media.pause", 3000000), {"X-Cwhook-Dry-Run": "true"})
    assert code == 200 and body["accounts"]["default"]["reason"] == "sent"
    assert body["accounts"]["default"]["notes"] == ["debounce_elapsed"]
    assert [s["action"] for s in body["accounts"]["default"]["would_send"]] == ["pause"]
    # A value that is neither yes nor no is refused: a typo never sends for real.
    code, body = post(d, plex("media.play", 300000), {"X-Cwhook-Dry-Run": "maybe"})
    assert code == 400 and body["error"] == "bad_request" and "X-Cwhook-Dry-Run" in body["detail"]
    # An event that is not for us says so, as a test too.
    code, body = post(d, plex("media.play", 300000, user="Nobody"), DRY)
    assert code == 200 and body["status"] in ("ignored", "test")
    # Then a real one: it reaches Trakt, and it is the only thing that did (one lane, in order).
    assert post(d, plex("media.stop", int(5940000 * 0.97)))[0] == 202
    wait_for(lambda: fake_trakt.scrobbles(), timeout=20)
    wait_for(lambda: d.health()["outbox"]["pending"] == 0)
    assert [c.path for c in fake_trakt.scrobbles()] == ["/scrobble/stop"]
    h = d.health()
    assert h["counts"]["queued"] == 1 and h["inbox"]["undecided"] == 0
    # The journal shows each test as a test.
    rows = [json.loads(line) for line in recent(d, "--json").stdout.splitlines()]
    tests = [r for r in rows if r.get("ignored") == "test"]
    assert len(tests) == 3, rows
    assert "would send default: start" in tests[0]["detail"]
    lines = recent(d).stdout.splitlines()
    assert sum(" -> test: would send default: start " in line for line in lines) == 2, lines  # Nobody too
    assert lines[-1].endswith("-> default: stop 97% sent (201)"), lines


async def test_a_test_request_is_never_queued(aiohttp_client: Any) -> None:
    from cwhook.ingest.app import make_app
    from tests.builders import PATHS, runtime

    rt = runtime()
    client = await aiohttp_client(make_app(rt))
    resp = await client.post(f"{PATHS['plex']}?{TOKENS['plex']}", data=plex("media.scrobble", 5940000),
                             headers={"Content-Type": "application/json", **DRY})
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "test"
    assert body["accounts"]["default"]["would_send"][0]["trakt"] == "/scrobble/stop"
    assert rt.queue.empty() and rt.counters.queued == 0
    resp = await client.post(f"{PATHS['plex']}?{TOKENS['plex']}", data=b'{"event": "library.new"}',
                             headers={"Content-Type": "application/json", **DRY})
    assert (await resp.json())["test"] is True and rt.counters.ignored == 0  # counted as a test
    assert rt.counters.webhooks[("plex", "test")] == 2
    resp = await client.post(f"{PATHS['plex']}?{TOKENS['plex']}", data=plex("media.scrobble", 5940000),
                             headers={"Content-Type": "application/json", "X-Cwhook-Dry-Run": "0"})
    assert resp.status == 202 and rt.queue.qsize() == 1


def test_every_try_it_line_is_a_test(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(config_text(8787, tmp_path / "s"))
    out = cwhook("urls", "-c", str(path))
    tries = [line for line in out.stdout.splitlines() if "try it:" in line]
    assert len(tries) == len(SOURCES) and all("-H 'X-Cwhook-Dry-Run: 1'" in line for line in tries), tries


# --- 17.12: the HTTP answers ------------------------------------------------------------------------


async def test_a_wrong_method_is_405_with_allow(aiohttp_client: Any) -> None:
    from cwhook.ingest.app import make_app
    from tests.builders import runtime

    client = await aiohttp_client(make_app(runtime()))
    resp = await client.post("/healthz")
    assert resp.status == 405 and resp.headers.get("Allow") == "GET"
    assert await resp.json() == {"error": "method_not_allowed"}
    resp = await client.get("/webhook/plextrakt")
    assert resp.status == 405 and resp.headers.get("Allow") == "POST"
    assert await resp.json() == {"error": "method_not_allowed"}
    resp = await client.head("/healthz")
    assert resp.status == 405 and resp.headers.get("Allow") == "GET"
    resp = await client.get("/nothing-here")
    assert resp.status == 404 and await resp.json() == {"error": "not_found"}


@pytest.mark.slow
def test_aiohttps_own_answers_are_json_with_their_headers(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory()
    code, body, headers = d.request("POST", "/healthz", b"")
    assert (code, body, headers.get("Allow")) == (405, {"error": "method_not_allowed"}, "GET")
    code, body, _ = d.request("POST", f"/webhook/plextrakt?{TOKENS['plex']}", b"{}", {"Expect": "tea"})
    assert (code, body["error"]) == (417, "expectation_failed")
    code, body, _ = d.request("GET", "/nothing-here")
    assert (code, body) == (404, {"error": "not_found"})


def test_the_troubleshooting_table_lists_every_answer() -> None:
    doc = (ROOT / "docs" / "troubleshooting.md").read_text()
    table = doc[doc.index("## The HTTP answer"):doc.index("## Ignore reasons")]
    for answer in ('202 {"status": "queued"', '200 {"status": "ignored"', '200 {"status": "test"',
                   '400 {"error": "bad_payload"', '400 {"error": "bad_request"', '401 {"error": "invalid_token"}',
                   '404 {"error": "disabled"}', '404 {"error": "not_found"}', '405 {"error": "method_not_allowed"}',
                   '408 {"error": "timeout"', '413 {"error": "too_large", "detail"',
                   '417 {"error": "expectation_failed"}',
                   '503 {"error": "busy"}', '503 {"error": "unavailable"'):
        assert f"`{answer}" in table, answer


# --- 17.12: the version -----------------------------------------------------------------------------


def test_released_as_0_2_0_with_a_changelog() -> None:
    assert __version__ == "0.2.0"
    assert cwhook("--version").stdout.strip() == "cwhook 0.2.0"
    log = (ROOT / "CHANGELOG.md").read_text()
    assert "keepachangelog.com" in log
    versions = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", log, re.M)
    assert versions[:2] == ["0.2.0", "0.1.0"]
    section = log[log.index("## [0.2.0]"):log.index("## [0.1.0]")]
    for heading in ("### Added", "### Changed", "### Fixed"):
        assert heading in section


@pytest.mark.slow
def test_the_try_it_lines_run_as_tests_against_a_daemon(daemon_factory: Callable[..., Daemon],
                                                        fake_trakt: FakeTrakt) -> None:
    access, refresh, expires = fake_trakt.issue_tokens()  # authorized: a real request would scrobble
    d = daemon_factory(trakt_url=fake_trakt.url, access_token=access, refresh_token=refresh, expires_at=expires)
    out = cwhook("urls", "-c", str(d.config_path))
    tries = [line.split("try it: ", 1)[1] for line in out.stdout.splitlines() if "try it:" in line]
    assert len(tries) == len(SOURCES)
    for command in tries:
        ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
        answer = json.loads(ran.stdout)
        assert answer["status"] == "test", answer
        assert answer["accounts"]["default"]["would_send"][0]["trakt"] == "/scrobble/start"
    assert d.health()["counts"]["queued"] == 0 and fake_trakt.scrobbles() == []


# --- 17.12: `cwhook recent` --------------------------------------------------------------------------


def test_recent_lines_name_the_default_account_and_say_retrying_plainly(tmp_path: Path) -> None:
    from cwhook.cli import recent
    from cwhook.kernel.event import Ids
    from cwhook.state import journal
    from cwhook.state.journal import Arrived, Noted, Result
    from cwhook.state.store import NewEntry, Store
    from tests.builders import decide, movie

    MOVIE = movie(title="The Menu", year=2022, ids=Ids(imdb="tt9764362"), user_name="Anna", player_id="p",
                  item_key="1", progress=97.0, received_at=time.time())  # as test_journal's

    store = Store(tmp_path)
    [oid] = decide(store, MOVIE, "sent", ("stop",))
    store.reschedule(oid, 0, "503: Trakt server error")
    [entry] = journal.read(store.path)
    text = recent.line(entry)
    # "sent" only says something goes to Trakt: left out when the action says it (kept with notes).
    assert text.endswith("-> default: sent (a_note): stop 97% retrying (1 failed attempt): 503: Trakt server error")
    [plain] = store.ingest([MOVIE])
    entry_id = store.decide([NewEntry("stop", MOVIE, 97.0, 1.0)], plain, (),
                            [Noted(plain, Arrived.of(MOVIE), "sent", sends=(0,))])[0]
    store.reschedule(entry_id, 0, "503: Trakt server error")
    assert recent.line(journal.read(store.path)[-1]).endswith(
        "-> default: stop 97% retrying (1 failed attempt): 503: Trakt server error")
    store.remove(oid, None, Result("sent", 201))
    entry = journal.read(store.path)[0]
    assert recent.line(entry).endswith("stop 97% sent (201) after 2 attempts: earlier: 503: Trakt server error")


def test_recent_refuses_an_unknown_account(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(config_text(8787, tmp_path / "s"))
    out = cwhook("recent", "-c", str(path), "--account", "nosuch")
    assert out.returncode == 2 and out.stderr.startswith("cwhook: --account 'nosuch': there is no such")
    out = cwhook("recent", "-c", str(path), "--account", "default")
    assert out.returncode == 1 and "no journal yet" in out.stderr  # known, only nothing to read yet


# --- 18.9: nothing from outside reaches the terminal raw ---------------------------------------------

HOSTILE = "\x1b]0;owned\x07\x1b[2J\rFAKE LINE plex Anna X -> sent\nnext\x9b1m\u202e"


def no_control(text: str) -> bool:
    return not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e]", text)


@pytest.mark.slow
def test_hostile_titles_and_names_are_escaped_in_recent(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory()
    assert post(d, plex("media.play", 60000, title=HOSTILE, user="Ev\x1b[31mil\rX"))[0] in (200, 202)
    assert post(d, plex("media.play", 60000, title=HOSTILE), DRY)[0] == 200
    assert post(d, plex("media.play", 0, title=HOSTILE + " trailer"))[0] in (200, 202)
    wait_for(lambda: len(recent(d).stdout.splitlines()) == 3, timeout=15, interval=0.2)
    out = recent(d)
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and no_control(out.stdout), out.stdout  # one line per event, nothing raw
    assert not any(line.startswith("FAKE LINE") for line in lines)
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x0dFAKE LINE" in lines[0] and "\\u202e" in lines[0]
    js = recent(d, "--json")
    assert len(js.stdout.splitlines()) == 3 and no_control(js.stdout)
    assert json.loads(js.stdout.splitlines()[0])["item"].startswith(HOSTILE)  # --json keeps the value


def test_status_and_accounts_escape_what_the_daemon_and_the_file_say(tmp_path: Path) -> None:
    from cwhook.cli.accounts import accounts_text

    s = status.from_healthz({"status": "degraded", "problems": ["trakt_unreachable"],
                             "accounts": {"default": {"authorized": True, "last_error": HOSTILE,
                                                      "needs_auth": "x\r\x1b[2Jy", "problems": []}}})
    text = status.to_text(s, now=time.time())
    assert no_control(text) and "\\x1b]0;owned" in text and "FAKE LINE" in text
    assert all(not line.startswith("FAKE") for line in text.splitlines())
    cfg = parse_config('trakt:\n  accounts:\n    anna:\n      users: ["plex:A\\e[2Jn\\rna"]\n'
                       f"state:\n  dir: {tmp_path}\n", tmp_path / "c.yml")
    text = accounts_text(cfg, health={"accounts": {"default": {"needs_auth": HOSTILE}}}, now=time.time())
    assert no_control(text) and len(text.splitlines()) == 2 and "\\x1b[2J" in text


# --- 17.12: one duration format -----------------------------------------------------------------------


def test_accounts_and_status_write_durations_alike(tmp_path: Path) -> None:
    from cwhook.cli.accounts import accounts_text

    now = float(int(time.time()))
    for seconds, shown in ((86280, "23h 58m"), (590400, "6d 20h"), (7200, "2h 00m")):
        cfg = parse_config(f"trakt:\n  access_token: a\n  expires_at: {int(now) + seconds}\n"
                           f"state:\n  dir: {tmp_path}\n", tmp_path / "c.yml")
        assert f"expires in {shown};" in accounts_text(cfg, health={}, now=now)
        assert status.duration(seconds) == shown


# --- 17.6: every hint works as printed -------------------------------------------------------------------


def test_hints_name_the_config_file_unless_it_is_the_default(tmp_path: Path) -> None:
    from cwhook.cli.accounts import accounts_text
    from cwhook.trakt.auth import TraktAuth

    path = tmp_path / "my config.yml"
    cfg = parse_config('trakt:\n  accounts:\n    anna:\n      users: ["plex:Anna"]\n'
                       f"state:\n  dir: {tmp_path}\n", path)
    quoted = f"'{path}'"
    text = accounts_text(cfg, health={}, now=time.time())
    assert f"`cwhook auth -c {quoted}`" in text and f"`cwhook auth --account anna -c {quoted}`" in text
    s = status.from_healthz({"status": "degraded", "problems": ["trakt_not_authorized", "trakt_needs_auth:anna",
                                                                "outbox_aging", "config_refused"]})
    out = status.to_text(s, now=time.time(), config_path=path)
    assert f"run `cwhook auth -c {quoted}`" in out and f"`cwhook auth --account anna -c {quoted}`" in out
    assert f"`cwhook recent -c {quoted}`" in out and f"`cwhook check-config -c {quoted}`" in out
    assert "`cwhook auth`" not in out and "`cwhook recent`" not in out
    assert TraktAuth(Path("/etc/cwhook/cwhook.yml"), cfg.trakt, account="anna").auth_command == (
        "cwhook auth --account anna -c /etc/cwhook/cwhook.yml")
    # The default file needs no -c.
    assert TraktAuth(Path("cwhook.yml"), cfg.trakt).auth_command == "cwhook auth"
    from cwhook.cli import recent

    (tmp_path / "db").write_bytes(b"")
    told = recent._problem(tmp_path / "db", PermissionError(13, "denied"), Path("/etc/cwhook/cwhook.yml"))
    assert "cwhook recent -c /etc/cwhook/cwhook.yml`" in told


@pytest.mark.slow
def test_the_daemons_hints_name_its_file(daemon_factory: Callable[..., Daemon], fake_trakt: FakeTrakt) -> None:
    d = daemon_factory(trakt_url=fake_trakt.url)  # not authorized
    out = cwhook("status", "-c", str(d.config_path))
    assert out.returncode == 1
    assert f"run `cwhook auth -c {d.config_path}`" in out.stdout
    assert f"`cwhook recent -c {d.config_path}`" in out.stdout
    banner = d.out_path.read_text()
    assert f"`cwhook urls -c {d.config_path}`" in banner and f"`cwhook auth -c {d.config_path}`" in banner
    # A file the daemon refuses: its fix names the file too.
    text = d.config_path.read_text()
    d.config_path.write_text(text.replace("pause_debounce_seconds: 1", "pause_debounce_seconds: x"))
    refused = wait_for(lambda: d.health().get("config_refused"), timeout=90, interval=0.3)
    assert f"`cwhook check-config -c {d.config_path}`" in refused


# --- 17.10: `auth` with wrong credentials ------------------------------------------------------------------


def auth_file(tmp_path: Path, fake: FakeTrakt, **kw: str) -> Path:
    path = tmp_path / "c.yml"
    path.write_text(config_text(8787, tmp_path / "s", trakt_url=fake.url, **kw))  # type: ignore[arg-type]
    return path


@pytest.mark.slow
def test_auth_says_trakt_refused_the_apps_credentials_before_trakt_tv(tmp_path: Path,
                                                                       fake_trakt: FakeTrakt) -> None:
    path = auth_file(tmp_path, fake_trakt, client_id="wrong-id")
    out = cwhook("auth", "-c", str(path))
    assert out.returncode == 1
    assert "Trakt refused the app's credentials: check trakt.client_id and trakt.client_secret" in out.stderr
    assert "trakt.tv/activate" not in out.stdout  # nobody is sent to trakt.tv for nothing
    assert f"To try again: `cwhook auth -c {path}`" in out.stderr
    # A wrong secret: Trakt refuses the token request (401) once the code was entered.
    path = auth_file(tmp_path, fake_trakt, client_secret="wrong-secret")
    out = cwhook("auth", "-c", str(path))
    assert out.returncode == 1 and "Trakt refused the app's credentials" in out.stderr


def test_auth_names_only_the_empty_key(tmp_path: Path, fake_trakt: FakeTrakt) -> None:
    out = cwhook("auth", "-c", str(auth_file(tmp_path, fake_trakt, client_id="")))
    assert out.returncode == 2 and out.stderr.startswith("cwhook: trakt.client_id is empty in ")
    assert "client_secret" not in out.stderr
    out = cwhook("auth", "-c", str(auth_file(tmp_path, fake_trakt, client_secret="")))
    assert out.returncode == 2 and out.stderr.startswith("cwhook: trakt.client_secret is empty in ")
    assert "client_id" not in out.stderr
    out = cwhook("auth", "-c", str(auth_file(tmp_path, fake_trakt, client_id="", client_secret="")))
    assert "trakt.client_id and trakt.client_secret are empty" in out.stderr


@pytest.mark.slow
def test_auth_says_whose_login_and_writes_every_account_alike(tmp_path: Path, fake_trakt: FakeTrakt) -> None:
    path = tmp_path / "c.yml"
    path.write_text(config_text(8787, tmp_path / "s", trakt_url=fake_trakt.url)
                    + '  # more\n')
    text = path.read_text().replace('  expires_at: 0\n', '  expires_at: 0\n  users: ["plex:Dad"]\n'
                                    '  accounts:\n    anna:\n      users: ["plex:Anna"]\n')
    path.write_text(text)
    out = cwhook("auth", "-c", str(path), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Logging in the Trakt account 'default' (users: plex:Dad)" in out.stdout
    assert "as the person whose plays these are" in out.stdout
    out = cwhook("auth", "--account", "anna", "-c", str(path), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Logging in the Trakt account 'anna' (users: plex:Anna)" in out.stdout
    lines = path.read_text().splitlines()
    tokens = [line.strip() for line in lines if line.strip().startswith(("access_token:", "refresh_token:"))]
    assert len(tokens) == 4 and all(re.fullmatch(r'\w+: "[^"]+"', t) for t in tokens), tokens
    data = yaml.safe_load(path.read_text())["trakt"]
    assert data["accounts"]["anna"]["access_token"] in fake_trakt.access_tokens


# --- 17.12: every command error starts with `cwhook:` -----------------------------------------------------


@pytest.mark.slow
def test_every_command_error_starts_with_cwhook(tmp_path: Path) -> None:
    good = tmp_path / "c.yml"
    good.write_text(config_text(1, tmp_path / "s"))
    missing = str(tmp_path / "none.yml")
    cases = [("nosuch",), ("recent", "-n", "0"), ("status", "--bogus"), ("rotate-tokens", "foo", "-c", str(good)),
             ("status", "-c", missing), ("urls", "-c", missing), ("accounts", "-c", missing),
             ("recent", "-c", str(good)), ("recent", "-c", str(good), "--account", "x"),
             ("status", "-c", str(good)), ("auth", "--account", "Bad!", "-c", str(good)), ("run", "--nope")]
    for args in cases:
        out = cwhook(*args, cwd=tmp_path)
        assert out.returncode != 0, args
        first = next(line for line in out.stderr.splitlines() if not line.startswith(("usage:", " ")))
        assert first.startswith("cwhook: "), (args, out.stderr)
        assert "Traceback" not in out.stderr
