"""Households (docs/configuration.md): routing users to Trakt accounts, rules per account, every account
independent."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cwhook.config.schema import ConfigError, ScrobbleConfig, parse_config
from cwhook.ingest.filters import user_matches
from cwhook.ingest.routing import Router
from cwhook.kernel.event import Event, Ids
from cwhook.scrobble.rules import Rules
from cwhook.scrobble.worker import Worker
from cwhook.sources.registry import SOURCES
from cwhook.state.store import AsyncStore, Store
from cwhook.status.health import Counters
from tests.builders import movie, settled
from tests.conftest import TOKENS, Daemon, free_port, wait_for
from tests.faketrakt import FakeTrakt

# --- routing (pure) ------------------------------------------------------------------------


def ev(source: str, name: str | None, user_id: str | None = None, uuid: str | None = None) -> Event:
    return Event(source=source, action="stop", kind="movie", title="X", ids=Ids(imdb="tt1"),  # type: ignore[arg-type]
                 user_name=name, user_id=user_id, user_uuid=uuid, player_id="p", item_key="1")


ROUTING_TABLE = [
    # pattern, event, matches
    ("*", ev("plex", "Anna"), True),
    ("*", ev("emby", None), True),
    ("*:*", ev("jellyfin", "x"), True),
    ("plex:*", ev("plex", "Anna"), True),
    ("plex:*", ev("jellyfin", "anna"), False),
    ("plex:Anna", ev("plex", "Anna"), True),
    ("plex:Anna", ev("plex", "anna!"), True),  # Plex titles: case and punctuation ignored
    ("plex:Anna", ev("plex", "Anna Maria"), False),
    ("plex:Anna", ev("jellyfin", "Anna"), False),
    ("plex:id:42", ev("plex", "Anna", user_id="42"), True),
    ("plex:id:42", ev("plex", "Anna", user_id="43"), False),
    ("plex:uuid:AbC1", ev("plex", "Anna", uuid="abc1"), True),
    ("plex:uuid:AbC1", ev("plex", "Anna", uuid=None), False),
    ("jellyfin:anna", ev("jellyfin", "Anna"), True),  # Jellyfin/Emby: case ignored
    ("jellyfin:anna", ev("jellyfin", "an-na"), False),  # ...but not punctuation
    ("jellyfin:anna", ev("emby", "anna"), False),
    ("emby:Dad", ev("emby", "dad"), True),
    ("*:dad", ev("emby", "DAD"), True),
    ("*:dad", ev("plex", "D.A.D."), True),
    ("*:dad", ev("jellyfin", None), False),
    (" plex : Anna ", ev("plex", "Anna"), True),
    ("emby:Zoë", ev("emby", "Zoe\u0308"), True),  # a decomposed ë is the same name
    ("plex:Zoë", ev("plex", "ZOE\u0308"), True),
    ("tautulli:id:42", ev("tautulli", "Anna", user_id="42"), True),  # Tautulli: Plex's user_id
    ("tautulli:id:42", ev("tautulli", "id:42", user_id="7"), False),
    ("tautulli:uuid:abc1", ev("tautulli", "UUID:ABC1", uuid="abc1"), True),  # no uuid for Tautulli: a name
    ("jellyfin:id:42", ev("jellyfin", "ID:42", user_id="42"), True),  # Jellyfin/Emby: always a name
    ("emby:uuid:x", ev("emby", "uuid:X"), True),
    ("*:id:42", ev("plex", "Anna", user_id="42"), True),
    ("*:id:42", ev("emby", "Anna", user_id="42"), False),
    ("plex:!!", ev("plex", "!!"), False),  # nothing left of a title once punctuation is gone
    ("tautulli:!!", ev("tautulli", "!!"), True),
]


def one_by_one(pattern: str, event: Event) -> bool:
    """What a pattern means, read one pattern at a time (docs/configuration.md, Households):
    the reference the indexed Router must agree with."""
    text = pattern.strip()
    if text == "*":
        return True
    server, _, name = text.partition(":")
    if server.strip().lower() not in ("*", event.source):
        return False
    return name.strip() == "*" or user_matches(event, name)


def route(event: Event, accounts: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    return Router(accounts).route(event)


@pytest.mark.parametrize(("pattern", "event", "expected"), ROUTING_TABLE)
def test_pattern_table(pattern: str, event: Event, expected: bool) -> None:
    assert one_by_one(pattern, event) is expected
    assert route(event, {"a": (pattern,)}) == (("a",) if expected else ())


SOURCES_ = st.sampled_from(list(SOURCES))
NAMES = st.sampled_from(["Anna", "anna", "an-na", "ANNA!", "Zoë", "Zoe\u0308", "id:42", "uuid:AbC1", " Dad ",
                         "D.A.D.", "*", "", "   ", "!!", "42", "abc1"])
PATTERNS = st.one_of(st.builds(lambda s, n: f"{s}:{n}", st.sampled_from(["plex", "PLEX", "jellyfin", "emby",
                                                                         "tautulli", "*", " * ", "kodi"]), NAMES),
                     NAMES, st.text(max_size=8))


@given(accounts=st.lists(st.lists(PATTERNS, max_size=4), max_size=6), source=SOURCES_,
       name=st.one_of(st.none(), NAMES, st.text(max_size=6)), user_id=st.sampled_from([None, "42", "43", ""]),
       uuid=st.sampled_from([None, "", "abc1", "ABC1", "x"]))
@settings(max_examples=400, deadline=None)
def test_the_router_agrees_with_the_patterns_one_by_one(accounts: list[list[str]], source: str, name: str | None,
                                                         user_id: str | None, uuid: str | None) -> None:
    table = {f"acc{i}": tuple(patterns) for i, patterns in enumerate(accounts)}
    event = ev(source, name, user_id=user_id, uuid=uuid)
    expected = tuple(n for n, patterns in table.items() if any(one_by_one(p, event) for p in patterns))
    assert route(event, table) == expected


def test_route_many_to_one_one_to_many_and_none() -> None:
    accounts = {"default": ("plex:Dad", "plex:Family"),
                "anna": ("plex:Anna", "jellyfin:anna", "plex:Family")}
    assert route(ev("plex", "Anna"), accounts) == ("anna",)
    assert route(ev("jellyfin", "anna"), accounts) == ("anna",)
    assert route(ev("plex", "Family"), accounts) == ("default", "anna")
    assert route(ev("plex", "Dad"), accounts) == ("default",)
    assert route(ev("plex", "Kid"), accounts) == ()
    assert route(ev("plex", "Kid"), {"default": ("*",)}) == ("default",)
    assert route(ev("plex", "Kid"), {"default": ()}) == ()


# --- the config ---------------------------------------------------------------------------


def test_single_account_file_means_what_it_meant() -> None:
    cfg = parse_config("trakt:\n  access_token: a\n", Path("c.yml"))
    accounts = cfg.trakt.all_accounts()
    assert list(accounts) == ["default"] and accounts["default"].users == ("*",)
    assert accounts["default"].access_token == "a" and accounts["default"].key == ("trakt",)


@pytest.mark.parametrize(("text", "problem"), [
    ("trakt:\n  accounts:\n    anna:\n      access_token: x\n",
     "trakt.accounts.anna.users (line 3): say who scrobbles"),
    ("trakt:\n  accounts:\n    anna:\n      users: []\n", "trakt.accounts.anna.users (line 4): say who"),
    ("trakt:\n  accounts:\n    default:\n      users: ['*']\n", "trakt.accounts.default (line 3): an account name"),
    ("trakt:\n  accounts:\n    Anna B:\n      users: ['*']\n", "trakt.accounts.Anna B (line 3): an account name"),
    ("trakt:\n  accounts:\n    anna:\n      users: ['*']\n      token: x\n",
     "trakt.accounts.anna.token (line 5): unknown key"),
    ("trakt:\n  users: ['tv:Anna']\n", "trakt.users (line 2): 'tv:Anna': the server must be one of"),
    ("trakt:\n  users: ['Anna']\n", "trakt.users (line 2): 'Anna' must look like SERVER:NAME"),
    ("trakt:\n  accounts: [anna]\n", "trakt.accounts (line 2): must be a section of accounts"),
    ("trakt:\n  accounts:\n    anna:\n      users: ['plex:']\n", "trakt.accounts.anna.users (line 4): 'plex:'"),
    ("trakt:\n  users: ['plex:An*']\n", "trakt.users (line 2): 'plex:An*': a NAME matches exactly"),
    ("trakt:\n  users: ['plex:id:abc']\n", "trakt.users (line 2): 'plex:id:abc': a Plex account id is a number"),
    ("trakt:\n  users: ['*:uuid:']\n", "trakt.users (line 2): '*:uuid:': give the Plex account uuid"),
])
def test_account_config_errors_name_the_key_and_line(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, Path("c.yml"))
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_one_bad_pattern_gives_one_message() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("trakt:\n  accounts:\n    anna:\n      users: ['tv:Anna']\n", Path("c.yml"))
    assert len(err.value.problems) == 1


def test_a_numeric_account_name_is_a_name() -> None:
    cfg = parse_config("trakt:\n  accounts:\n    123:\n      users: ['*']\n", Path("c.yml"))
    assert list(cfg.trakt.all_accounts()) == ["default", "123"]


# --- rules per account (the worker, no network) ------------------------------------------------

FILM = movie(progress=95.0, duration_s=7200.0, item_key="7")


async def test_rules_run_per_account(tmp_path: Path) -> None:
    store = Store(tmp_path)
    worker = Worker(asyncio.Queue(), Rules(ScrobbleConfig()), AsyncStore(store), Counters(), lambda accounts: None)
    anna_plex = replace(FILM, user_name="Anna", player_id="tv", accounts=("anna",))
    anna_jelly = replace(FILM, source="jellyfin", user_name="anna", player_id="phone", accounts=("anna",))
    family = replace(FILM, user_name="Family", player_id="living", accounts=("default", "anna"))
    other = replace(family, ids=Ids(imdb="tt0090728"), item_key="8")
    batch = list(zip(store.ingest([anna_plex, anna_jelly, family, other]),
                     [anna_plex, anna_jelly, family, other], strict=True))
    await worker.process(batch)
    rows = store._db.execute("SELECT account, verb, event FROM outbox ORDER BY id").fetchall()
    got = [(a, json.loads(e)["ids"]["imdb"]) for a, verb, e in rows if verb == "stop"]
    # Anna: one play of the film (Plex), the Jellyfin stop and the Family stop are the same film
    # within the hour; Dad: one play through Family; the other film once for each.
    assert sorted(got) == sorted([("anna", "tt2015381"), ("default", "tt2015381"),
                                  ("anna", "tt0090728"), ("default", "tt0090728")])
    assert store.undecided() == []


# --- end to end: a real daemon, a fake Trakt with several users ----------------------------------

HOUSEHOLD = """server:
  host: 127.0.0.1
  port: {port}
webhooks:
  plex:
    token: "{plex}"
  jellyfin:
    token: "{jellyfin}"
  emby:
    token: "{emby}"
  tautulli:
    token: "{tautulli}"
scrobble:
  pause_debounce_seconds: 1
trakt:
  api_url: {url}
  oauth_url: {url}
  client_id: test-client-id
  client_secret: test-secret
  access_token: "{dad_access}"     # Dad
  refresh_token: "{dad_refresh}"
  expires_at: {dad_expires}
  users: ["plex:Dad", "plex:Family"]
  accounts:
    anna:   # Anna's own Trakt account
      users: ["plex:Anna", "jellyfin:anna", "plex:Family"]
      access_token: "{anna_access}"
      refresh_token: "{anna_refresh}"
      expires_at: {anna_expires}
state:
  dir: {state}
logging:
  level: debug
  format: json
"""


def plex_stop(user: str, imdb: str, title: str, player: str = "tv", percent: float = 95) -> bytes:
    return json.dumps({
        "event": "media.stop", "user": True, "owner": True, "Account": {"id": 1, "title": user},
        "Server": {"title": "srv", "uuid": "srv-uuid"}, "Player": {"local": True, "uuid": player},
        "Metadata": {"type": "movie", "title": title, "year": 2001, "ratingKey": imdb,
                     "Guid": [{"id": f"imdb://{imdb}"}], "viewOffset": int(7_200_000 * percent / 100),
                     "duration": 7_200_000}}).encode()


def jellyfin_stop(user: str, imdb: str, title: str) -> bytes:
    return json.dumps({"NotificationType": "PlaybackStop", "NotificationUsername": user, "DeviceId": "phone",
                       "ItemType": "Movie", "ItemId": imdb, "Name": title, "Year": 2001, "Provider_imdb": imdb,
                       "RunTimeTicks": 72_000_000_000, "PlaybackPositionTicks": 70_000_000_000,
                       "PlayedToCompletion": True}).encode()


@pytest.fixture
def household(tmp_path: Path, fake_trakt: FakeTrakt) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(anna_lifetime: int | None = None, env: dict[str, str] | None = None, start: bool = True) -> Daemon:
        dad = fake_trakt.issue_tokens(user="dad")
        anna = fake_trakt.issue_tokens(anna_lifetime, user="anna")
        port = free_port()
        path = tmp_path / "cwhook.yml"
        path.write_text(HOUSEHOLD.format(
            port=port, url=fake_trakt.url, state=tmp_path / "state", plex=TOKENS["plex"],
            jellyfin=TOKENS["jellyfin"], emby=TOKENS["emby"], tautulli=TOKENS["tautulli"],
            dad_access=dad[0], dad_refresh=dad[1],
            dad_expires=dad[2], anna_access=anna[0], anna_refresh=anna[1], anna_expires=anna[2]))
        d = Daemon(path, port, env=env)
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def stops_of(fake: FakeTrakt, user: str) -> list[str]:
    return [c.body["movie"]["ids"].get("imdb") for c in fake.scrobbles() if c.user == user
            and c.path == "/scrobble/stop" and c.status == 201]


FAST = {"CWHOOK_POST_INTERVAL": "0"}
GOTG, BIG, MENU = "tt2015381", "tt0090728", "tt9764362"


@pytest.mark.slow
def test_household_routing_and_per_account_dedupe(household: Callable[..., Daemon], fake_trakt: FakeTrakt) -> None:
    fake_trakt.rate_limit = False
    d = household(env=FAST)
    status, body = d.post("plex", plex_stop("Anna", GOTG, "Guardians of the Galaxy"))
    assert status == 202 and body["event"]["accounts"] == ["anna"]
    wait_for(lambda: stops_of(fake_trakt, "anna") == [GOTG])
    # Anna again on Jellyfin within the hour: the rules of her account drop it (no second call)
    assert d.post("jellyfin", jellyfin_stop("anna", GOTG, "Guardians of the Galaxy"))[0] == 202
    # the living-room user counts for both parents
    status, body = d.post("plex", plex_stop("Family", BIG, "Big Trouble in Little China", player="living"))
    assert status == 202 and body["event"]["accounts"] == ["default", "anna"]
    wait_for(lambda: stops_of(fake_trakt, "dad") == [BIG] and BIG in stops_of(fake_trakt, "anna"))
    # the kids: nobody
    status, body = d.post("plex", plex_stop("Kid", MENU, "The Menu"))
    assert status == 200 and body["reason"] == "no_account"
    wait_for(lambda: any(e.get("reason") == "already_watched" and e.get("account") == "anna"
                         for e in d.log_events()))
    wait_for(lambda: settled(d))  # nothing more is on its way
    assert stops_of(fake_trakt, "anna") == [GOTG, BIG] and stops_of(fake_trakt, "dad") == [BIG]
    assert fake_trakt.history_counts("anna") == {"movie:28": 1, "movie:1001": 1}
    assert fake_trakt.history_counts("dad") == {"movie:1001": 1}
    health = d.health()
    assert set(health["accounts"]) == {"default", "anna"} and health["status"] == "ok"
    assert health["accounts"]["anna"]["authorized"] and health["accounts"]["anna"]["outbox_pending"] == 0
    assert d.stop() == 0


@pytest.mark.slow
def test_one_account_in_an_outage_never_delays_the_other(household: Callable[..., Daemon],
                                                          fake_trakt: FakeTrakt) -> None:
    fake_trakt.rate_limit = False
    d = household(env=FAST)
    fake_trakt.user_outage_until["anna"] = time.time() + 3600
    assert d.post("plex", plex_stop("Anna", GOTG, "Guardians of the Galaxy"))[1]["event"]["accounts"] == ["anna"]
    wait_for(lambda: any(c.user == "anna" and c.status == 503 for c in fake_trakt.calls))
    started = time.time()
    assert d.post("plex", plex_stop("Dad", BIG, "Big Trouble in Little China"))[0] == 202
    wait_for(lambda: stops_of(fake_trakt, "dad") == [BIG], timeout=10)
    assert time.time() - started < 3, "Dad's play waited for Anna's outage"
    health = d.health()
    assert health["accounts"]["anna"]["outbox_pending"] == 1 and health["accounts"]["default"]["outbox_pending"] == 0
    assert "trakt_unreachable:anna" in health["problems"] and "trakt_unreachable" not in health["problems"]
    # Anna's account is taken out of the file while its play waits: kept, and said so
    text = d.config_path.read_text()
    cut = text.index("  accounts:")
    d.config_path.write_text(text[:cut] + text[text.index("state:"):])
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)  # a section that disappears is applied on SIGHUP only
    wait_for(lambda: "account_removed_with_pending:anna" in d.health()["problems"], timeout=15)
    assert d.health()["removed_accounts"] == {"anna": {"outbox_pending": 1}}
    fake_trakt.user_outage_until.clear()
    d.config_path.write_text(text)  # back: the play is delivered
    wait_for(lambda: stops_of(fake_trakt, "anna") == [GOTG], timeout=30)
    wait_for(lambda: d.health()["status"] == "ok", timeout=10)
    assert d.stop() == 0


@pytest.mark.slow
def test_pacing_is_per_account(household: Callable[..., Daemon], fake_trakt: FakeTrakt) -> None:
    """6 stops for each of two accounts at Trakt's 1 POST/s per user take about 6 s, not 12."""
    fake_trakt.add_movies(12)
    d = household()
    for i in range(6):
        d.post("plex", plex_stop("Dad", f"tt{9000000 + i}", f"Counted Movie {i}", player=f"d{i}"))
        d.post("plex", plex_stop("Anna", f"tt{9000006 + i}", f"Counted Movie {i + 6}", player=f"a{i}"))
    started = time.time()
    wait_for(lambda: len(stops_of(fake_trakt, "dad")) == 6 and len(stops_of(fake_trakt, "anna")) == 6,
             timeout=20)
    took = time.time() - started
    assert took < 9.5, f"12 stops for two accounts took {took:.1f} s"
    assert not [c for c in fake_trakt.calls if c.status == 429]
    for user in ("dad", "anna"):
        times = [c.at for c in fake_trakt.posts("/scrobble/stop") if c.user == user]
        assert min(b - a for a, b in itertools.pairwise(times)) >= 0.95
    assert d.stop() == 0


@pytest.mark.slow
def test_refresh_of_one_account_rewrites_only_its_keys(household: Callable[..., Daemon],
                                                        fake_trakt: FakeTrakt) -> None:
    d = household(anna_lifetime=600, start=False)  # due for refresh at once
    before = d.config_path.read_text().splitlines()
    d.start()
    wait_for(lambda: fake_trakt.refresh_count == 1 and any(
        e.get("event") == "trakt_tokens_saved" for e in d.log_events()))
    after = d.config_path.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert [b.split(":")[0].strip() for _, b in changed] == ["access_token", "refresh_token", "expires_at"]
    assert all(line.startswith("      ") for _, line in changed)  # under trakt.accounts.anna
    assert "# Anna's own Trakt account" in after[before.index("    anna:   # Anna's own Trakt account")]
    assert len(before) == len(after)
    health = d.health()
    assert health["accounts"]["anna"]["token_expires_in_s"] > 3600 and not health["accounts"]["anna"]["needs_auth"]
    assert d.stop() == 0


def test_auth_account_adds_the_account_through_the_device_flow(tmp_path: Path, fake_trakt: FakeTrakt) -> None:
    path = tmp_path / "cwhook.yml"
    path.write_text(f"# mine\ntrakt:\n  api_url: {fake_trakt.url}\n  oauth_url: {fake_trakt.url}\n"
                    "  client_id: test-client-id\n  client_secret: test-secret\n  accounts: {}\n"
                    f"state:\n  dir: {tmp_path / 'state'}\n")
    fake_trakt.device_user = "bob"
    out = subprocess.run([sys.executable, "-m", "cwhook", "auth", "--account", "bob", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "added trakt.accounts.bob" in out.stdout and "users:" in out.stdout
    text = path.read_text()
    assert text.startswith("# mine\n") and "  accounts:\n    bob:\n      access_token: " in text
    token = text.split("access_token: ")[1].split()[0].strip('"')
    assert fake_trakt.token_user[token] == "bob"
    # until its users are filled in, the file says what is missing
    check = subprocess.run([sys.executable, "-m", "cwhook", "check-config", "-c", str(path)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 2 and "trakt.accounts.bob.users" in check.stdout + check.stderr
    path.write_text(text.replace("    bob:\n", "    bob:\n      users: [\"emby:bob\"]\n"))
    listing = subprocess.run([sys.executable, "-m", "cwhook", "accounts", "-c", str(path)],
                             capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].startswith("default") and "not authorized" in lines[0]
    assert lines[1].startswith("bob") and "emby:bob" in lines[1] and "authorized" in lines[1]
    assert "outbox pending: 0" in lines[1]
    bad = subprocess.run([sys.executable, "-m", "cwhook", "auth", "--account", "Bob!", "-c", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "account name" in bad.stderr


def test_accounts_lists_pending_per_account_and_removed_ones(tmp_path: Path) -> None:
    from cwhook.cli.accounts import accounts_text
    from cwhook.state.store import NewEntry

    cfg = parse_config(f"trakt:\n  access_token: a\n  expires_at: {int(time.time()) + 7200}\n"
                       "  accounts:\n    anna:\n      users: ['plex:Anna']\n"
                       f"state:\n  dir: {tmp_path}\n", tmp_path / "c.yml")
    store = Store(tmp_path)
    store.decide([NewEntry("stop", FILM, 95, 1, account="anna")], 0)[0]
    store.decide([NewEntry("stop", FILM, 95, 1, account="gone")], 0)[0]
    store.close()
    text = accounts_text(cfg, health={}, now=time.time())
    lines = text.splitlines()
    assert lines[0].startswith("default") and "authorized; expires in 1h 59m" in lines[0]
    assert lines[1].startswith("anna")
    assert f"not authorized: run `cwhook auth --account anna -c {tmp_path / 'c.yml'}`" in lines[1]
    assert "outbox pending: 1" in lines[1]
    assert lines[2].startswith("gone") and "removed from the file" in lines[2]


def test_an_old_single_account_outbox_is_migrated_to_the_default_lane(tmp_path: Path) -> None:
    # the 0.1 file format is covered in test_store.py; here: its entries land in `default`'s lane
    import sqlite3

    from tests.builders import LEGACY_SCHEMA

    MOVIE = movie(user_name="alice", player_id="tv", item_key="1", duration_s=7200.0)  # as test_store's

    (tmp_path / "state").mkdir()
    old = sqlite3.connect(str(tmp_path / "state" / "outbox.sqlite3"))
    old.executescript(LEGACY_SCHEMA)
    old.execute("INSERT INTO outbox (created_at, verb, progress, event) VALUES (1, 'stop', 95, ?)",
                (json.dumps(MOVIE.to_dict()),))
    old.commit()
    old.close()
    store = Store(tmp_path / "state")
    assert [e.account for e in store.heads("default")] == ["default"] and store.heads("anna") == []
    [(account, count, born)] = store.stats.by_account
    assert (account, count) == ("default", 1) and born == pytest.approx(1.0, abs=1.0)



WHOLE_SERVERS = st.sampled_from(["*", " * ", "*:*", "plex:*", "PLEX: *", "jellyfin:*", "emby:*", "tautulli:*",
                                 "kodi:*"])  # patterns that take all of a server's users: no index


@given(accounts=st.lists(st.lists(PATTERNS, max_size=4), max_size=6)
       | st.lists(st.lists(WHOLE_SERVERS, min_size=1, max_size=3), min_size=1, max_size=4),
       events=st.lists(st.tuples(SOURCES_, st.one_of(st.none(), NAMES)), min_size=1, max_size=8))
@settings(max_examples=200, deadline=None)
def test_one_router_routes_event_after_event_as_the_patterns_say(accounts: list[list[str]],
                                                                 events: list[tuple[str, str | None]]) -> None:
    """A router is built once per config and routes every webhook after: what it keeps between two
    events (the accounts of a server whose patterns all take everyone) never answers for another."""
    table = {f"acc{i}": tuple(patterns) for i, patterns in enumerate(accounts)}
    router = Router(table)
    for source, name in [*events, *events]:
        event = ev(source, name)
        assert router.route(event) == tuple(
            n for n, patterns in table.items() if any(one_by_one(p, event) for p in patterns))
