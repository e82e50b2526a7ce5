"""The decision journal: written in the store's own transactions, bounded, read back read-only by
`cwhook recent` (with the daemon stopped, or running)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cwhook.cli import recent
from cwhook.kernel.event import Ids
from cwhook.state import journal
from cwhook.state.journal import Arrived, IgnoredRow, Noted, Result
from cwhook.state.store import FILE_NAME, NewEntry, Store
from tests.builders import decide, movie
from tests.conftest import Daemon, fixture_json, wait_for
from tests.faketrakt import FakeTrakt

MOVIE = movie(title="The Menu", year=2022, ids=Ids(imdb="tt9764362"), user_name="Anna", player_id="p",
              item_key="1", progress=97.0, received_at=time.time())


def read(store: Store, **kw: Any) -> list[journal.Entry]:
    return journal.read(store.path, kw.pop("limit", 100), **kw)


def test_a_decision_and_its_action_through_retries_to_sent(tmp_path: Path) -> None:
    store = Store(tmp_path)
    [oid] = decide(store, MOVIE, "sent", ("stop",))
    [e] = read(store)
    assert (e.server, e.user, e.item, e.action, e.progress) == ("plex", "Anna", "The Menu (2022)", "stop", 97.0)
    assert e.decisions == {"default": {"reason": "sent", "notes": ["a_note"], "progress": 97.0}}
    assert [(a.verb, a.state, a.attempts) for a in e.actions] == [("stop", "pending", 0)]

    store.reschedule(oid, 0, "503: Trakt server error")
    [a] = read(store)[0].actions
    assert (a.state, a.detail, a.attempts) == ("retrying", "503: Trakt server error", 1)
    assert recent.action_text(a) == "stop 97% retrying (1 failed attempt): 503: Trakt server error"

    store.remove(oid, None, Result("sent", 201))
    [a] = read(store)[0].actions
    assert (a.state, a.status, a.attempts, a.detail) == ("sent", 201, 2, "earlier: 503: Trakt server error")
    assert recent.action_text(a) == "stop 97% sent (201) after 2 attempts: earlier: 503: Trakt server error"


@pytest.mark.parametrize(("result", "state", "text"), [
    (Result("failed", 404, "404: no match on Trakt; tried movie {'imdb': 'tt9764362'}"), "failed",
     "stop 97% failed (404): no match on Trakt; tried movie {'imdb': 'tt9764362'}"),
    (Result("stale"), "stale", "stop 97% stale: waited longer than the rest of the item: dropped"),
    (Result("dry_run"), "dry_run", "stop 97% dry run"),
    (Result("late_history", 201), "sent", "stop 97% sent (201): late: added to the history with its real time"),
])
def test_final_states(tmp_path: Path, result: Result, state: str, text: str) -> None:
    store = Store(tmp_path)
    [oid] = decide(store, MOVIE, "sent", ("stop",))
    store.remove(oid, None, result)
    [a] = read(store)[0].actions
    assert a.state == state and recent.action_text(a) == text


def test_set_aside_after_three_local_failures(tmp_path: Path) -> None:
    store = Store(tmp_path)
    [oid] = decide(store, MOVIE, "sent", ("stop",))
    for _ in range(3):
        store.reschedule(oid, 0, "UnicodeEncodeError: surrogates not allowed", local_failure=True)
    [a] = read(store)[0].actions
    assert (a.state, a.attempts, a.detail) == ("set_aside", 3, "UnicodeEncodeError: surrogates not allowed")
    assert recent.action_text(a) == ("stop 97% set aside (3 failed attempts): "
                                     "UnicodeEncodeError: surrogates not allowed")


def test_a_follow_up_joins_its_event(tmp_path: Path) -> None:
    store = Store(tmp_path)
    [oid] = decide(store, MOVIE, "sent", ("stop",))
    store.remove(oid, NewEntry("watchlist_remove", MOVIE, 97.0, 1.0), Result("sent", 201))
    assert [(a.verb, a.state) for a in read(store)[0].actions] == [("stop", "sent"), ("watchlist_remove", "pending")]


def test_a_held_pause_decided_again_keeps_one_row(tmp_path: Path) -> None:
    """The debounce holds a pause (`debounced`); when its window ends the same inbox row is
    decided again (`sent`): one journal line says what finally happened."""
    store = Store(tmp_path)
    pause = replace(MOVIE, action="pause", progress=40.0)
    [inbox_id] = store.ingest([pause])
    store.decide([], inbox_id, {inbox_id}, [Noted(inbox_id, Arrived.of(pause), "debounced", progress=40.0)])
    entry = NewEntry("pause", pause, 40.0, 2.0)
    store.decide([entry], inbox_id, (), [Noted(inbox_id, Arrived.of(pause), "sent", notes=("debounce_elapsed",),
                                               progress=40.0, sends=(0,))])
    [e] = read(store)
    assert e.decisions["default"] == {"reason": "sent", "notes": ["debounce_elapsed"], "progress": 40.0}
    assert [a.verb for a in e.actions] == ["pause"]


def test_several_accounts_decide_one_event(tmp_path: Path) -> None:
    store = Store(tmp_path)
    [inbox_id] = store.ingest([MOVIE])
    entries = [NewEntry("stop", MOVIE, 97.0, 1.0, account="anna")]
    store.decide(entries, inbox_id, (), [
        Noted(inbox_id, Arrived.of(MOVIE), "already_watched", "default", ("watched_elsewhere",)),
        Noted(inbox_id, Arrived.of(MOVIE), "sent", "anna", sends=(0,))])
    [e] = read(store)
    assert set(e.decisions) == {"default", "anna"} and [a.account for a in e.actions] == ["anna"]
    assert read(store, account="anna") == [e] and read(store, account="dad") == []
    assert recent.line(e).endswith("-> default: already_watched (watched_elsewhere) | anna: stop 97% pending")


def test_repeated_progress_reports_fold_into_one_row(tmp_path: Path) -> None:
    store = Store(tmp_path)
    progress = replace(MOVIE, source="jellyfin", action="progress", progress=10.0)
    for i in range(5):
        decide(store, replace(progress, progress=10.0 + i, received_at=MOVIE.received_at + 10 * i), "progress_noted")
    decide(store, replace(MOVIE, source="jellyfin", action="stop", received_at=MOVIE.received_at + 60), "sent",
           ("stop",))
    rows = read(store)
    assert [(r.action, r.repeats) for r in rows] == [("progress", 5), ("stop", 1)]
    assert rows[0].progress == 14.0 and rows[0].last_at == MOVIE.received_at + 40
    assert "(x5, last " in recent.line(rows[0])


def test_ignored_events_are_kept_and_repeats_fold(tmp_path: Path) -> None:
    store = Store(tmp_path)
    now = time.time()
    a = Arrived(now, "plex", "Kid", "Peppa Pig S01E01", "start", 3.0, "plex|7|tv|99")
    store.ingest([], [IgnoredRow(a, "user_not_allowed", "Plex account 'Kid' is not in username_whitelist")] * 3)
    store.ingest([], [IgnoredRow(Arrived(now + 1, "plex"), "event_not_handled", "library.new")])
    rows = read(store)
    assert [(r.ignored, r.repeats) for r in rows] == [("user_not_allowed", 3), ("event_not_handled", 1)]
    assert recent.line(rows[1]).endswith("plex -  -> ignored: event_not_handled (library.new)")


def test_bounded_to_the_newest_events_and_30_days(tmp_path: Path) -> None:
    store = Store(tmp_path)
    now = time.time()
    rows = [IgnoredRow(Arrived(now - 40 * 86400 + i, "emby", item=f"old {i}"), "no_ids") for i in range(5)]
    store.ingest([], rows)
    assert len(read(store)) == 0  # older than 30 days: gone at once
    [oid] = decide(store, replace(MOVIE, received_at=now), "sent", ("stop",))
    rows = [IgnoredRow(Arrived(now + i * 1e-3, "emby", item=f"item {i}"), "no_ids") for i in range(10_050)]
    store.ingest([], rows[:6000])
    store.ingest([], rows[6000:])
    count = store._db.execute("SELECT COUNT(*) FROM journal").fetchone()[0]
    assert count == journal.MAX_EVENTS
    newest = read(store, limit=3)
    assert [r.item for r in newest] == ["item 10047", "item 10048", "item 10049"]
    # The pruned decision's action went with it; its outbox entry still finishes without trouble.
    assert store._db.execute("SELECT COUNT(*) FROM journal_action").fetchone()[0] == 0
    store.remove(oid, None, Result("sent", 201))


def test_filters(tmp_path: Path) -> None:
    store = Store(tmp_path)
    decide(store, MOVIE, "sent", ("stop",))
    decide(store, replace(MOVIE, source="jellyfin", user_name="anna", title="长风渡", year=2023,
                          received_at=MOVIE.received_at + 1), "duplicate")
    decide(store, replace(MOVIE, user_name="Ben", received_at=MOVIE.received_at + 2), "already_watched")
    assert [r.user for r in read(store, user="ANNA")] == ["Anna", "anna"]
    assert [r.user for r in read(store, user="jellyfin:anna")] == ["anna"]
    assert [r.item for r in read(store, item="风")] == ["长风渡 (2023)"]
    assert [r.item for r in read(store, item="the menu")] == ["The Menu (2022)", "The Menu (2022)"]
    assert [r.user for r in read(store, limit=2)] == ["anna", "Ben"]  # the newest, newest last


def test_reading_takes_no_lock_and_creates_no_file(tmp_path: Path) -> None:
    store = Store(tmp_path)
    decide(store, MOVIE, "sent", ("stop",))
    store._db.execute("BEGIN IMMEDIATE")  # the daemon in the middle of a write
    assert len(read(store)) == 1
    store._db.execute("ROLLBACK")
    store.close()
    before = sorted(os.listdir(tmp_path))
    assert before == [FILE_NAME]
    assert len(journal.read(tmp_path / FILE_NAME)) == 1
    assert sorted(os.listdir(tmp_path)) == before  # no -wal/-shm left by whoever ran `cwhook recent`


def test_a_file_of_the_previous_version_gets_a_journal(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / FILE_NAME)
    db.executescript("""
        CREATE TABLE inbox (id INTEGER PRIMARY KEY AUTOINCREMENT, received_at REAL NOT NULL, event TEXT NOT NULL);
        CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL DEFAULT 'default',
            session TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, verb TEXT NOT NULL, progress REAL NOT NULL,
            event TEXT NOT NULL, extra TEXT NOT NULL DEFAULT '{}', attempts INTEGER NOT NULL DEFAULT 0,
            local_failures INTEGER NOT NULL DEFAULT 0, attempted INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0, last_error TEXT, set_aside INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE matches (identity TEXT PRIMARY KEY, form TEXT NOT NULL, used_at REAL NOT NULL);
        PRAGMA user_version=1;
    """)
    db.execute("INSERT INTO inbox (received_at, event) VALUES (?, ?)", (1.0, json.dumps(MOVIE.to_dict())))
    db.commit()
    db.close()
    store = Store(tmp_path)
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == 2
    [(inbox_id, event)] = store.undecided()
    assert event == MOVIE
    store.decide([], inbox_id, (), [Noted(inbox_id, Arrived.of(event), "already_watched")])
    assert [r.decisions["default"]["reason"] for r in read(store)] == ["already_watched"]


def test_no_journal_yet(tmp_path: Path) -> None:
    from io import StringIO

    from cwhook.config.schema import parse_config

    config = parse_config(f"state:\n  dir: {tmp_path / 'nothing'}\n", tmp_path / "c.yml")
    out, err = StringIO(), StringIO()
    assert recent.cmd_recent(config, 20, None, None, None, False, out, err) == 1
    assert "no journal yet" in err.getvalue() and "state.dir" in err.getvalue()


# --- a real daemon, then `cwhook recent` with the daemon stopped ---------------------------------


def plex(event: str, offset_ms: int, **meta: Any) -> bytes:
    data = fixture_json("plex_media.scrobble_movie.json")
    data["event"] = event
    data["Account"]["title"] = "Anna"
    data["Metadata"]["viewOffset"] = offset_ms
    data["Metadata"].update(meta)
    return json.dumps(data).encode()


def cwhook_recent(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cwhook", "recent", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=30)


def recent_json(config: Path, *args: str) -> list[dict[str, Any]]:
    out = cwhook_recent(config, "--json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def read_back(config: Path, *filters: tuple[str, ...]) -> tuple[subprocess.CompletedProcess[str], list[Any]]:
    """`cwhook recent` as text, and as JSON with each of ``filters``: commands run side by side."""
    with ThreadPoolExecutor(4) as pool:
        asked = [pool.submit(recent_json, config, *args) for args in filters]
        return cwhook_recent(config), [f.result() for f in asked]


def actions(row: dict[str, Any]) -> list[dict[str, Any]]:
    return list(row["decisions"]["default"]["actions"])


@pytest.mark.slow
def test_a_real_sequence_read_back_with_the_daemon_stopped(daemon_factory: Callable[..., Daemon],
                                                         fake_trakt: FakeTrakt) -> None:
    access, refresh, expires = fake_trakt.issue_tokens()
    d = daemon_factory(trakt_url=fake_trakt.url, access_token=access, refresh_token=refresh, expires_at=expires,
                       env={"_CWHOOK_DELIVERY_RETRY_SCALE": "0.5"})  # the outbox retries after 2.5 s, not 5
    duration = 5940000
    assert d.post("plex", plex("media.play", 60000))[0] == 202  # start: sent
    wait_for(lambda: fake_trakt.scrobbles())
    assert d.post("plex", plex("media.pause", 600000))[0] == 202  # held by the debounce...
    assert d.post("plex", plex("media.resume", 600000))[0] == 202  # ...cancelled by the resume
    assert d.post("plex", plex("media.play", 0, type="clip", subtype="trailer", title="A Trailer"))[0] == 200
    # Trakt is down: the client's own retries give up (four 429s, then a 503), the outbox retries later.
    fake_trakt.script = [429, 429, 429, 429, 503]
    assert d.post("plex", plex("media.stop", int(duration * 0.97)))[0] == 202

    # While it waits, `cwhook recent` (daemon running) shows the action retrying with Trakt's last error.
    def retrying() -> list[dict[str, Any]]:
        rows = recent_json(d.config_path, "-n", "1")
        return [a for a in actions(rows[-1]) if a["state"] == "retrying"] if rows and "decisions" in rows[-1] else []

    wait_for(lambda: fake_trakt.scrobbles(503), timeout=30)  # the client gave up: the outbox waits
    [waiting] = wait_for(retrying, timeout=10, interval=0.05)
    assert waiting["detail"] == "503: Trakt server error" and waiting["attempts"] == 1
    wait_for(lambda: fake_trakt.watched_stops(), timeout=30)
    wait_for(lambda: d.health()["outbox"]["pending"] == 0)
    assert d.stop() == 0
    assert not (d.config_path.parent / "state" / f"{FILE_NAME}-wal").exists()

    rows = recent_json(d.config_path)
    assert [(r["action"], r.get("ignored") or r["decisions"]["default"]["reason"]) for r in rows] == [
        ("start", "sent"), ("pause", "debounced"), ("start", "pause_cancelled"), (None, "media_type_not_supported"),
        ("stop", "sent")]
    start, pause, resume, trailer, stop = rows
    assert all(r["server"] == "plex" and r["user"] == "Anna" for r in rows)
    assert start["item"] == "Big Trouble in Little China (1986)"
    assert [(a["verb"], a["state"], a["status"]) for a in actions(start)] == [("start", "sent", 201)]
    assert actions(pause) == [] and actions(resume) == [] and resume["progress"] == pytest.approx(10.1, abs=0.01)
    assert trailer["item"] == "A Trailer" and "clip" in trailer["detail"]
    [sent] = actions(stop)
    assert (sent["verb"], sent["state"], sent["status"], sent["attempts"]) == ("stop", "sent", 201, 2)
    assert sent["detail"] == "earlier: 503: Trakt server error" and sent["progress"] == 97.0
    assert [r["at"] for r in rows] == sorted(r["at"] for r in rows)  # newest last

    out, (last_two, trailers, annas, bens, defaults) = read_back(d.config_path, ("-n", "2"), ("--item", "trailer"),
        ("--user", "plex:anna"), ("--user", "Ben"), ("--account", "default"))
    lines = out.stdout.splitlines()
    assert len(lines) == 5 and out.returncode == 0
    assert lines[1].endswith("pause 10.1%  -> default: debounced") and lines[2].endswith("-> default: pause_cancelled")
    assert lines[3].endswith("plex Anna  A Trailer  -> ignored: media_type_not_supported "
                             "(Plex item type 'clip' (trailer) is not scrobbled to Trakt)")
    assert lines[4].endswith("stop 97%  -> default: stop 97% sent (201) after 2 attempts: "
                             "earlier: 503: Trakt server error")
    assert [r["action"] for r in last_two] == [None, "stop"]
    assert len(trailers) == 1
    assert len(annas) == 5
    assert bens == []
    assert len(defaults) == 4  # the trailer was decided for nobody
    text = d.config_path.read_text()
    for secret in (access, refresh, "test-secret"):
        assert secret in text and secret not in out.stdout


@pytest.mark.slow
def test_recent_after_a_kill_9(daemon_factory: Callable[..., Daemon], fake_trakt: FakeTrakt) -> None:
    access, refresh, expires = fake_trakt.issue_tokens()
    d = daemon_factory(trakt_url=fake_trakt.url, access_token=access, refresh_token=refresh, expires_at=expires)
    assert d.post("plex", plex("media.play", 60000))[0] == 202
    wait_for(lambda: recent_json(d.config_path), interval=0.2)
    d.stop(signal.SIGKILL)
    [row] = recent_json(d.config_path)  # read through the write-ahead log the killed daemon left
    assert row["decisions"]["default"]["reason"] == "sent"


@pytest.mark.slow
def test_recent_usage_errors(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "cwhook", "recent", "-n", "0"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=30)
    assert out.returncode == 2 and "must be a whole number of at least 1" in out.stderr


def test_every_reason_and_state_a_line_shows_is_explained() -> None:
    from cwhook.kernel.vocab import REASONS
    from tests.conftest import ROOT

    doc = (ROOT / "docs" / "troubleshooting.md").read_text()
    assert [r for r in REASONS if f"| `{r}` |" not in doc] == []
    start = doc.index("## Start here: `cwhook recent`")
    explained = doc[start:doc.index("## The logs")]
    assert [s for s in journal.STATES if f"`{s.replace('_', ' ')}`" not in explained] == []


# --- the worker hands the journal what it decided ------------------------------------------------


async def test_the_worker_journals_a_held_pause_to_its_end(tmp_path: Path) -> None:
    """A pause held by the debounce, replayed after a crash, then sent at shutdown: one line."""
    import asyncio

    from cwhook.config.schema import ScrobbleConfig
    from cwhook.scrobble.rules import Rules
    from cwhook.scrobble.worker import Worker
    from cwhook.state.store import AsyncStore
    from cwhook.status.health import Counters

    def worker(store: Store) -> Worker:
        return Worker(asyncio.Queue(), Rules(ScrobbleConfig(pause_debounce_seconds=60)), AsyncStore(store),
                      Counters(), lambda accounts: None)

    now = time.time()
    start = replace(MOVIE, action="start", progress=10.0, received_at=now)
    pause = replace(MOVIE, action="pause", progress=40.0, received_at=now + 1)
    store = Store(tmp_path)
    items = list(zip(store.ingest([start, pause]), [start, pause], strict=True))
    await worker(store).process(items)
    assert [(r.action, r.decisions["default"]["reason"]) for r in read(store)] == [("start", "sent"),
                                                                                  ("pause", "debounced")]
    store.close()  # a crash: the held pause is still in the inbox

    store = Store(tmp_path)
    again = worker(store)
    await again.replay(store.undecided())
    assert [r.decisions["default"]["reason"] for r in read(store)] == ["sent", "debounced"]
    await again.drain()  # shutdown: the held pause is sent now
    rows = read(store)
    assert len(rows) == 2
    assert rows[1].decisions["default"] == {"reason": "sent", "notes": ["shutdown"], "progress": 40.0}
    assert [(a.verb, a.state) for a in rows[1].actions] == [("pause", "pending")]
    assert store.undecided() == []


def test_the_folding_map_is_bounded_by_count_and_key_size() -> None:
    """Sessions whose keys hold a long title: the map keeps SESSIONS_REMEMBERED of them, each
    key of bounded size, and a repeat still folds into its session's row."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript(journal.SCHEMA)
    writer = journal.Writer()
    for i in range(journal.SESSIONS_REMEMBERED + 100):
        arrived = Arrived(1000.0 + i, "plex", user="u", item="x", action="pause", session=f"s{i}|" + "t" * 5000)
        writer.ignored(db, [IgnoredRow(arrived, "duplicate", None)], 1000.0 + i)
    assert len(writer._newest) == journal.SESSIONS_REMEMBERED
    assert max(len(k) for k in writer._newest) <= 200
    last = journal.SESSIONS_REMEMBERED + 99
    again = Arrived(9999.0, "plex", user="u", item="x", action="pause", session=f"s{last}|" + "t" * 5000)
    writer.ignored(db, [IgnoredRow(again, "duplicate", None)], 9999.0)
    assert db.execute("SELECT repeats FROM journal ORDER BY id DESC LIMIT 1").fetchone()[0] == 2  # folded
