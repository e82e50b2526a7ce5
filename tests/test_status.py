"""The status snapshot and its renderers (/healthz, `cwhook status` text), and `cwhook status`
against a real daemon: exit 0 ok, 1 degraded, 3 not running."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cwhook.cli.status import local_get
from cwhook.config.address import healthz_url, public_base_url
from cwhook.state.store import Stats
from cwhook.status import snapshot as status
from cwhook.status.health import OUTBOX_AGING, Counters
from tests.conftest import Daemon, config_text, free_port
from tests.faketrakt import FakeTrakt

NOW = 1_800_000_000.0


@dataclass
class Auth:
    authorized: bool = True
    expires_at: int = int(NOW) + 86400
    needs_auth: str | None = None
    unsaved: str | None = None
    refresh_retrying: str | None = None


@dataclass
class Client:
    last_success_at: float | None = NOW - 60
    last_error: str | None = None
    unreachable: bool = False
    not_trakt: bool = False


def snapshot(auth: Auth | None = None, client: Client | None = None, stats: Stats | None = None,
             dry_run: bool = False, **kw: Any) -> status.Snapshot:
    stats = stats or Stats()
    accounts = {"default": status.account_status("default", auth or Auth(), client or Client(), dry_run, stats,
                                                 NOW)}
    return status.build(version="9.9", started=NOW - 3600, queue_depth=0, sessions=2, stats=stats,
                        accounts=accounts, counters=kw.pop("counters", Counters()), now=NOW, **kw)


@pytest.mark.parametrize(("host", "port", "url"), [
    ("0.0.0.0", 8787, "http://127.0.0.1:8787/healthz"),  # a wildcard bind is asked on loopback
    ("", 8787, "http://127.0.0.1:8787/healthz"),  # every address, IPv4 included
    ("*", 8787, "http://127.0.0.1:8787/healthz"),
    (" 0.0.0.0 ", 8787, "http://127.0.0.1:8787/healthz"),
    ("::", 9000, "http://[::1]:9000/healthz"),  # IPv6-only sockets: 127.0.0.1 would find nothing
    ("[::]", 9000, "http://[::1]:9000/healthz"),
    ("0:0::0", 9000, "http://[::1]:9000/healthz"),
    ("::1", 9000, "http://[::1]:9000/healthz"),
    ("[::1]", 9000, "http://[::1]:9000/healthz"),  # brackets given: not doubled
    ("fd00::20", 8787, "http://[fd00::20]:8787/healthz"),
    ("127.0.0.1", 8787, "http://127.0.0.1:8787/healthz"),
    ("192.168.1.20", 8787, "http://192.168.1.20:8787/healthz"),
    ("cwhook.lan", 80, "http://cwhook.lan:80/healthz"),
    ("localhost", 8787, "http://localhost:8787/healthz"),
])
def test_healthz_url(host: str, port: int, url: str) -> None:
    assert healthz_url(host, port) == url


@pytest.mark.parametrize(("public_url", "host", "base"), [
    ("https://hooks.example.net", "0.0.0.0", "https://hooks.example.net"),  # public_url wins
    ("", "0.0.0.0", f"http://{socket.gethostname()}:8787"),  # a media server elsewhere: this machine's name
    ("", "", f"http://{socket.gethostname()}:8787"),
    ("", "::", f"http://{socket.gethostname()}:8787"),
    ("", "*", f"http://{socket.gethostname()}:8787"),
    ("", "192.168.1.20", "http://192.168.1.20:8787"),
    ("", "fd00::20", "http://[fd00::20]:8787"),
    ("", "[fd00::20]", "http://[fd00::20]:8787"),
    ("", "cwhook.lan", "http://cwhook.lan:8787"),
])
def test_public_base_url(public_url: str, host: str, base: str) -> None:
    assert public_base_url(public_url, host, 8787) == base


def test_local_commands_never_ask_the_daemon_through_a_proxy(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """http_proxy is for the outside: `cwhook status` and `cwhook accounts` ask the daemon directly."""
    from cwhook.cli.accounts import running_health
    from cwhook.config.schema import parse_config

    answer = json.dumps({"status": "ok", "accounts": {"default": {"needs_auth": "refused"}}}).encode()

    class Healthz(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dead = free_port()  # a proxy that is not there: going through it fails
        for name in ("http_proxy", "HTTP_PROXY", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{dead}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        port = server.server_address[1]
        cfg = parse_config(f"server:\n  host: 0.0.0.0\n  port: {port}\nstate:\n  dir: {tmp_path}\n",
                           tmp_path / "c.yml")
        assert running_health(cfg) == json.loads(answer)
        assert local_get(healthz_url("0.0.0.0", port), 2.0) == answer
    finally:
        server.shutdown()
        server.server_close()


def test_healthz_has_every_key_the_spec_names() -> None:
    stats = Stats(pending=3, oldest_born=NOW - 120, inbox=1, by_account=(("default", 3, NOW - 120),))
    counters = Counters()
    counters.webhook("plex", "queued")
    counters.webhook("plex", "ignored", "no_ids")
    counters.decision("duplicate")
    counters.sent = 4
    h = status.to_healthz(snapshot(stats=stats, counters=counters))
    assert h["status"] == "ok" and h["problems"] == [] and h["version"] == "9.9" and h["uptime_s"] == 3600
    assert h["outbox"] == {"pending": 3, "oldest_age_s": 120.0, "set_aside": 0}
    assert h["trakt"] == {"authorized": True, "dry_run": False, "needs_auth": None, "token_expires_in_s": 86400,
                          "last_success_at": NOW - 60, "last_error": None}
    assert h["accounts"] == {"default": {
        "authorized": True, "needs_auth": None, "dry_run": False, "token_expires_in_s": 86400, "outbox_pending": 3,
        "oldest_age_s": 120.0, "last_success_at": NOW - 60, "last_error": None, "problems": []}}
    assert h["counts"] == {"received": 2, "queued": 1, "ignored": 1, "sent": 4, "suppressed": 1, "failed": 0,
                           "would_send": 0}


@pytest.mark.parametrize(("kw", "problems"), [
    ({}, []),
    ({"auth": Auth(authorized=False, expires_at=0)}, ["trakt_not_authorized"]),
    ({"auth": Auth(needs_auth="refused")}, ["trakt_needs_auth"]),
    ({"client": Client(unreachable=True)}, ["trakt_unreachable"]),
    ({"client": Client(unreachable=True), "dry_run": True}, []),
    ({"stats": Stats(pending=1, oldest_born=NOW - OUTBOX_AGING - 1,
                     by_account=(("default", 1, NOW - OUTBOX_AGING - 1),))}, ["outbox_aging"]),
    ({"stats": Stats(pending=1, set_aside=1)}, ["outbox_set_aside"]),
    ({"auth": Auth(unsaved="read-only")}, ["tokens_not_saved"]),
    ({"store_unavailable": True}, ["store_unavailable"]),
    # Several at once come in one documented order, whatever found them first.
    ({"store_unavailable": True, "config_refused": "x (line 3): bad", "auth": Auth(unsaved="ro", needs_auth="no"),
      "stats": Stats(pending=1, set_aside=1)},
     ["config_refused", "trakt_needs_auth", "outbox_set_aside", "tokens_not_saved", "store_unavailable"]),
])
def test_problems(kw: dict[str, Any], problems: list[str]) -> None:
    s = snapshot(**kw)
    assert list(s.problems) == problems
    assert s.status == ("degraded" if problems else "ok")
    assert all(p in status.FIXES for p in problems)


def test_text_names_each_problem_with_its_fix() -> None:
    s = snapshot(auth=Auth(needs_auth="token refresh refused (400): run `cwhook auth`"),
                 client=Client(last_error="503: Trakt server error", unreachable=True),
                 stats=Stats(pending=2, oldest_born=NOW - 1000, by_account=(("default", 2, NOW - 1000),)),
                 config_refused="server.port (line 4): must be a whole number; fix the file")
    text = status.to_text(s, now=NOW)
    lines = text.splitlines()
    assert lines[0] == "cwhook 9.9: DEGRADED (up 1h 00m)"
    assert "  config_refused: server.port (line 4): must be a whole number; fix the file" in lines
    assert "  trakt_needs_auth: " + status.FIXES["trakt_needs_auth"] in lines
    assert "  outbox_aging: " + status.FIXES["outbox_aging"] in lines
    account = next(line for line in lines if line.startswith("  default: "))
    assert "needs auth (token refresh refused (400)" in account and "outbox 2 (oldest 16m)" in account
    assert "last success 1m ago" in account and "last error: 503: Trakt server error" in account
    assert "outbox: 2 pending (oldest 16m), 0 set aside; inbox: 0 undecided; queue: 0" in lines
    assert any(line.startswith("counts: received 0, queued 0") for line in lines)


def test_text_of_a_healthy_daemon() -> None:
    text = status.to_text(snapshot(), now=NOW)
    assert text.startswith("cwhook 9.9: OK (up 1h 00m)\naccounts:\n  default: authorized, token expires in 1d 0h")
    assert "problems" not in text


# --- /healthz is a faithful rendering of the snapshot: `cwhook status` reads it back ------------

names = st.sampled_from(["default", "anna", "kids-room"])
maybe_num = st.none() | st.floats(0, 1e9, allow_nan=False).map(lambda f: round(f, 1))
accounts = st.builds(status.AccountStatus, authorized=st.booleans(), needs_auth=st.none() | st.text(max_size=20),
                     dry_run=st.booleans(), token_expires_in_s=st.none() | st.integers(-10**6, 10**8),
                     outbox_pending=st.integers(0, 10**6), oldest_age_s=maybe_num, last_success_at=maybe_num,
                     last_error=st.none() | st.text(max_size=30),
                     problems=st.lists(st.sampled_from(list(status.FIXES)), unique=True).map(tuple))
counts = st.builds(status.Counts, **{k: st.integers(0, 10**9) for k in status.Counts().totals()})
snapshots = st.builds(
    status.Snapshot, version=st.text(min_size=1, max_size=10), status=st.sampled_from(["ok", "degraded"]),
    problems=st.lists(st.sampled_from([*status.FIXES, "a_future_problem"]), unique=True).map(tuple),
    uptime_s=st.floats(0, 1e9, allow_nan=False).map(lambda f: round(f, 1)), queue_depth=st.integers(0, 1000),
    sessions=st.integers(0, 2000), inbox_undecided=st.integers(0, 10**6), outbox_pending=st.integers(0, 10**6),
    outbox_oldest_age_s=maybe_num, outbox_set_aside=st.integers(0, 100),
    accounts=st.dictionaries(names, accounts, max_size=3), counts=counts,
    config_refused=st.none() | st.text(min_size=1, max_size=40))


@given(snapshots)
def test_healthz_round_trips(s: status.Snapshot) -> None:
    h = status.to_healthz(s)
    back = status.from_healthz(h)
    assert status.to_healthz(back) == h
    assert back.problems == s.problems and dict(back.accounts) == dict(s.accounts)
    status.to_text(back, now=NOW)  # renders whatever the daemon said


@given(st.dictionaries(st.text(max_size=12), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10)))
def test_any_answer_is_read_without_a_crash(data: dict[str, Any]) -> None:
    status.to_text(status.from_healthz(data), now=NOW)


def test_a_daemon_from_before_accounts_is_read() -> None:
    old = {"status": "degraded", "problems": ["trakt_unreachable"], "version": "0.1.0", "uptime_s": 5,
           "queue_depth": 0, "outbox": {"pending": 1, "oldest_age_s": 30.0},
           "trakt": {"authorized": True, "dry_run": False, "token_expires_in_s": 100, "last_success_at": None,
                     "last_error": "503: Trakt server error"},
           "counts": {"received": 1, "queued": 1, "ignored": 0, "sent": 0, "suppressed": 0, "failed": 0}}
    s = status.from_healthz(old)
    assert s.accounts["default"].outbox_pending == 1 and s.accounts["default"].last_error == "503: Trakt server error"
    assert "trakt_unreachable: " in status.to_text(s, now=NOW)


# --- `cwhook status` against a real daemon -------------------------------------------------


def cwhook_status(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cwhook", "status", "-c", str(config)], capture_output=True,
                          text=True, timeout=30)


@pytest.mark.slow
def test_status_exit_codes(daemon_factory: Callable[..., Daemon], fake_trakt: FakeTrakt, tmp_path: Path) -> None:
    # Not authorized, listening on every interface: asked on 127.0.0.1, degraded.
    port = free_port()
    text = config_text(port, tmp_path / "state").replace("host: 127.0.0.1", "host: 0.0.0.0")
    d = daemon_factory(text.replace(f"port: {port}", "port: {port}"))
    out = cwhook_status(d.config_path)
    assert out.returncode == 1, out
    assert out.stdout.startswith("cwhook ") and ": DEGRADED (up " in out.stdout.splitlines()[0]
    assert ("  trakt_not_authorized: nothing is sent to Trakt until you log in: with your Trakt app's "
            "client_id and client_secret under `trakt:` in the config file, "
            f"run `cwhook auth -c {d.config_path}`") in out.stdout
    assert "  default: not authorized, dry-run (nothing is sent); outbox 0" in out.stdout
    assert "counts: received 0, queued 0, ignored 0, sent 0, suppressed 0, failed 0" in out.stdout
    assert d.stop() == 0

    # Not running.
    out = cwhook_status(d.config_path)
    assert out.returncode == 3 and out.stdout == ""
    assert "not running: nothing answers at http://127.0.0.1:" in out.stderr

    # Authorized and healthy.
    access, refresh, expires = fake_trakt.issue_tokens()
    d = daemon_factory(trakt_url=fake_trakt.url, access_token=access, refresh_token=refresh, expires_at=expires)
    out = cwhook_status(d.config_path)
    assert out.returncode == 0, out
    assert ": OK (up " in out.stdout and "problems" not in out.stdout
    assert "  default: authorized, token expires in 23h" in out.stdout
    assert d.stop() == 0


@pytest.mark.slow
def test_status_when_something_else_answers(tmp_path: Path) -> None:
    import http.server
    import threading

    class NotCwhook(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotCwhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        path = tmp_path / "cwhook.yml"
        path.write_text(config_text(server.server_address[1], tmp_path / "state"))
        out = cwhook_status(path)
        assert out.returncode == 3 and "something that is not cwhook answers" in out.stderr
    finally:
        server.shutdown()


@pytest.mark.slow
def test_status_on_a_broken_file_still_asks_the_daemon(daemon_factory: Callable[..., Daemon],
                                                       tmp_path: Path) -> None:
    from tests.conftest import wait_for

    d = daemon_factory()
    good = d.config_path.read_text()
    # A YAML mistake far from `server:` (the file does not parse at all): host and port still read.
    d.config_path.write_text(good.replace("  level: debug", "   level: debug"))
    line = good.splitlines().index("  level: debug") + 1
    wait_for(lambda: "config_refused" in d.health()["problems"])
    out = cwhook_status(d.config_path)
    assert out.returncode == 1, out
    assert ": DEGRADED (up " in out.stdout.splitlines()[0]
    assert f"  config_refused: cwhook.yml: yaml_indentation at line {line}. The daemon keeps its previous settings" \
        in out.stdout, out.stdout
    assert out.stderr.startswith(f"cwhook: {d.config_path}: the configuration has problems:\n"
                                 f"  cwhook.yml (line {line}): not valid YAML: "), out.stderr
    assert f"asking the daemon anyway, at http://127.0.0.1:{d.port}/healthz" in out.stderr

    # The mistake is in `server:` itself: its port line is still read.
    d.config_path.write_text(good.replace("  host: 127.0.0.1", "\thost: 127.0.0.1"))
    out = cwhook_status(d.config_path)
    assert out.returncode == 1 and "config_refused" in out.stdout, out

    # Nothing of it can be read: the defaults, or --url.
    d.config_path.write_text("server: [\n")
    out = cwhook_status(d.config_path)
    # (whether anything answers on the default port of this machine is not up to the test)
    assert "asking the daemon anyway, at http://127.0.0.1:8787/healthz" in out.stderr, out
    out = subprocess.run([sys.executable, "-m", "cwhook", "status", "-c", str(d.config_path), "--url",
                          f"127.0.0.1:{d.port}"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "config_refused" in out.stdout, out
    assert d.stop() == 0


def test_address_from_a_broken_file(tmp_path: Path) -> None:
    from cwhook.cli.status import address

    path = tmp_path / "c.yml"
    for text, expected in [
        ("server:\n  host: 10.0.0.2\n  port: 9000\nlogging:\n\tlevel: x\n", ("10.0.0.2", 9000)),
        ("server:\n  host: '::1'   # comment\n  port: 9001\ntrakt: [\n", ("::1", 9001)),
        ("server:\n  port: 9002\n port: 1\n", ("0.0.0.0", 9002)),
        ("trakt:\n  port: 9003\n  [\n", ("0.0.0.0", 8787)),
        ("server:\n  port: many\n", ("0.0.0.0", 8787)),
    ]:
        path.write_text(text)
        assert address(path) == expected, text
    assert address(tmp_path / "missing.yml") == ("0.0.0.0", 8787)
