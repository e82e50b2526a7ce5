"""The store: inbox, outbox lanes per session, set-aside, migration of the 0.1 outbox file."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cwhook.config.schema import ScrobbleConfig
from cwhook.kernel.event import Event, Ids
from cwhook.scrobble.rules import Rules
from cwhook.scrobble.worker import Worker
from cwhook.state import store as store_module
from cwhook.state.journal import Arrived, IgnoredRow, Noted, Result
from cwhook.state.store import (
    AlreadyRunning,
    AsyncStore,
    NewEntry,
    Stats,
    Store,
    StoreBusy,
    StoreUnavailable,
    lock_database,
)
from cwhook.status.health import Counters
from cwhook.system.statedir import StateDirError
from cwhook.trakt.client import TraktClient
from cwhook.trakt.delivery import Lane, Options
from tests.builders import LEGACY_SCHEMA, eventually, movie
from tests.faketrakt import FakeTrakt

MOVIE = movie(user_name="alice", player_id="tv", item_key="1", duration_s=7200.0)

# The schema of cwhook 0.1's outbox.sqlite3, as that version created it.
def test_state_dir_and_file_are_private(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    store.close()
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "cwhook.sqlite3").stat().st_mode & 0o777 == 0o600


def test_legacy_outbox_file_is_migrated_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    old = sqlite3.connect(str(state / "outbox.sqlite3"))
    old.executescript(LEGACY_SCHEMA)
    old.execute("INSERT INTO outbox (created_at, verb, progress, event, attempts, last_error)"
                " VALUES (?, 'stop', 95, ?, 2, '503: outage')", (1000.0, json.dumps(MOVIE.to_dict())))
    old.execute("INSERT INTO outbox (created_at, verb, progress, event) VALUES (?, 'start', 5, ?)",
                (1001.0, json.dumps(replace(MOVIE, item_key="2").to_dict())))
    old.execute("INSERT INTO matches VALUES ('movie|imdb=tt2015381', '{\"movie\": {\"ids\": {\"trakt\": 28}}}', 1)")
    old.commit()
    old.close()
    store = Store(state)
    heads = store.heads("default")
    assert [(e.verb, e.progress, e.created_at, e.attempts, e.attempted) for e in heads] == [
        ("stop", 95, 1000.0, 2, True), ("start", 5, 1001.0, 0, False)]
    assert heads[0].event == MOVIE and heads[0].session == MOVIE.session_key
    assert store.match_get("movie|imdb=tt2015381") == {"movie": {"ids": {"trakt": 28}}}
    store.close()
    assert not (state / "outbox.sqlite3").exists() and (state / "outbox.sqlite3.migrated").exists()
    store = Store(state)  # a second start migrates nothing again
    assert len(store.heads("default")) == 2
    store.close()


def test_heads_keep_order_per_session_only(tmp_path: Path) -> None:
    store = Store(tmp_path)
    a1 = store.decide([NewEntry("start", MOVIE, 5, 1)], 0)[0]
    b1 = store.decide([NewEntry("start", replace(MOVIE, item_key="2"), 5, 2)], 0)[0]
    store.decide([NewEntry("stop", MOVIE, 95, 3)], 0)[0]
    assert [e.id for e in store.heads("default")] == [a1, b1]
    store.remove(a1)
    assert [e.verb for e in store.heads("default")] == ["start", "stop"]
    assert store.heads("anna") == []


def test_set_aside_after_three_local_failures_then_the_session_goes_on(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = store.decide([NewEntry("start", MOVIE, 5, 1)], 0)[0]
    store.decide([NewEntry("stop", MOVIE, 95, 2)], 0)[0]
    assert not store.reschedule(first, 0, "503", local_failure=False)
    assert not store.reschedule(first, 0, "bug", local_failure=True)
    assert not store.reschedule(first, 0, "bug", local_failure=True)
    assert store.reschedule(first, 0, "bug", local_failure=True)
    assert [e.verb for e in store.heads("default")] == ["stop"]
    assert store.stats.set_aside == 1 and store.stats.pending == 2
    assert [e.id for e in store.set_aside_entries()] == [first]


def test_lone_surrogates_never_break_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path)
    odd = replace(MOVIE, ids=Ids(), title="Bad \ud800 title", item_key="x\udfff")
    [seq] = store.ingest([odd])
    entry_id = store.decide([NewEntry("stop", odd, 95, 1)], 0)[0]
    store.match_put(odd.identity, {"movie": {"title": "Bad \ud800"}}, 1)
    assert store.match_get(odd.identity) is not None
    assert store.undecided()[0][0] == seq and [e.id for e in store.heads("default")] == [entry_id]


def test_store_errors_are_store_unavailable(tmp_path: Path) -> None:
    store = Store(tmp_path)
    other = sqlite3.connect(str(tmp_path / "cwhook.sqlite3"), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    store._db.execute("PRAGMA busy_timeout=50")
    with pytest.raises(StoreUnavailable, match="locked by another program"):
        store.ingest([MOVIE])
    other.execute("COMMIT")
    assert store.ingest([MOVIE])


async def test_group_commit_answers_in_order(tmp_path: Path) -> None:
    db = AsyncStore(Store(tmp_path))
    seen: list[int] = []
    ids = await asyncio.gather(*[db.ingest(replace(MOVIE, item_key=str(i)), lambda s, e: seen.append(s))
                                 for i in range(50)])
    assert list(ids) == sorted(ids) == seen and len(set(ids)) == 50
    db.close()


async def test_lane_delivers_other_sessions_while_one_is_deferred(tmp_path: Path, fake_trakt: FakeTrakt) -> None:
    access, _, _ = fake_trakt.issue_tokens()
    fake_trakt.rate_limit = False
    store = Store(tmp_path)
    db = AsyncStore(store)
    client = TraktClient(fake_trakt.url, lambda: ("test-client-id", access))
    lane = Lane("default", client, db, Counters(), lambda: Options(), lambda: None)
    stuck = store.decide([NewEntry("start", replace(MOVIE, title="Unknown", ids=Ids(imdb="tt0000001"),
                                                 item_key="9"), 5, time.time())], 0)[0]
    store.reschedule(stuck, time.time() + 3600, "503")  # its session waits an hour
    store.decide([NewEntry("stop", replace(MOVIE, title="Unknown", ids=Ids(imdb="tt0000001"), item_key="9"),
                       95, time.time())], 0)[0]
    store.decide([NewEntry("stop", MOVIE, 95, time.time())], 0)[0]
    task = asyncio.create_task(lane.run())
    try:
        for _ in range(200):
            await asyncio.sleep(0.02)
            if fake_trakt.watched_stops():
                break
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
    assert [c.body["movie"]["ids"] for c in fake_trakt.scrobbles()] == [{"imdb": "tt2015381"}]
    assert [e.verb for e in store.heads("default")] == ["start"]  # the stuck session kept its order
    db.close()


async def test_a_lane_cancelled_in_the_turn_it_is_woken_stops(tmp_path: Path) -> None:
    """The hang of the test above under load: the delivery's end woke the lane in the very turn
    the test cancelled it, and asyncio.wait_for (Python 3.11) swallowed the cancellation."""
    store = Store(tmp_path)
    db = AsyncStore(store)
    client = TraktClient("http://127.0.0.1:9", lambda: ("test-client-id", "token"))
    lane = Lane("default", client, db, Counters(), lambda: Options(), lambda: None)
    stuck = store.decide([NewEntry("start", MOVIE, 5, time.time())], 0)[0]
    store.reschedule(stuck, time.time() + 3600, "503")  # the lane sleeps until then, or a wake
    task = asyncio.create_task(lane.run())
    await asyncio.sleep(0.05)
    lane.wake.set()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert task in done and task.cancelled()
    await client.close()
    db.close()


async def test_an_entry_failing_for_a_local_reason_is_set_aside(tmp_path: Path, fake_trakt: FakeTrakt,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import cwhook.trakt.delivery

    access, _, _ = fake_trakt.issue_tokens()
    store = Store(tmp_path)
    db = AsyncStore(store)
    client = TraktClient(fake_trakt.url, lambda: ("test-client-id", access))
    counters = Counters()
    lane = Lane("default", client, db, counters, lambda: Options(), lambda: None)
    store.decide([NewEntry("stop", MOVIE, 95, time.time())], 0)[0]
    real = cwhook.trakt.delivery.tb.scrobble_body

    def broken(*args: Any) -> Any:
        raise UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(cwhook.trakt.delivery.tb, "scrobble_body", broken)
    for _ in range(3):
        entry = store.heads("default")[0]
        await lane.deliver_one(entry)
    assert store.heads("default") == [] and store.stats.set_aside == 1 and counters.failed == 1
    monkeypatch.setattr(cwhook.trakt.delivery.tb, "scrobble_body", real)
    await client.close()
    db.close()
    assert os.path.exists(tmp_path / "cwhook.sqlite3")


def test_counts_kept_in_memory_match_a_recount(tmp_path: Path) -> None:
    import random

    rng = random.Random(3)
    store = Store(tmp_path)
    live: list[int] = []
    for step in range(300):
        op = rng.choice(["ingest", "decide", "add", "remove", "fail"])
        if op == "ingest":
            store.ingest([replace(MOVIE, item_key=str(step))])
        elif op == "decide":
            settled = [i for i, _ in store.undecided()[: rng.randint(0, 3)]]
            account = rng.choice(["default", "anna"])
            live += store.decide([NewEntry("stop", MOVIE, 95, step, account=account)], max(settled, default=0))
        elif op == "add":
            live.append(store.decide([NewEntry("start", replace(MOVIE, item_key=str(step % 7)), 5, step)], 0)[0])
        elif op == "remove" and live:
            store.remove(live.pop(rng.randrange(len(live))),
                         NewEntry("watchlist_remove", MOVIE, 95, step) if rng.random() < 0.2 else None)
        elif op == "fail" and live:
            store.reschedule(rng.choice(live), 0, "bug", local_failure=True)
    kept = store.stats
    store.close()
    again = Store(tmp_path).stats
    # the oldest entries' steady birth: from this process's clock, then from their wall time
    assert again.oldest_born == pytest.approx(kept.oldest_born, abs=0.5)
    assert [b for _, _, b in again.by_account] == pytest.approx([b for _, _, b in kept.by_account], abs=0.5)

    def counts(s: Stats) -> Stats:
        return dataclasses.replace(s, oldest_born=None, by_account=tuple((a, n, None) for a, n, _ in s.by_account))

    assert counts(again) == counts(kept)
    assert kept.pending > 0 and kept.set_aside > 0


ORACLE_HEADS = (
    "SELECT o.id FROM outbox o WHERE o.account = ? AND o.set_aside = 0 AND o.id = ("
    " SELECT MIN(p.id) FROM outbox p WHERE p.account = o.account AND p.session = o.session"
    " AND p.set_aside = 0) ORDER BY o.id LIMIT ?")


def test_heads_kept_in_memory_match_the_table(tmp_path: Path) -> None:
    """The lanes' session heads come from memory (no scan of the backlog): after any sequence of
    writes, by this store or by another program (`cwhook outbox`), they are the table's."""
    import random

    rng = random.Random(5)
    store, other = Store(tmp_path), Store(tmp_path)
    live: list[int] = []
    most_aside = 0
    for step in range(400):
        op = rng.choice(["decide", "add", "remove", "fail", "aside", "release", "drop", "outside"])
        account = rng.choice(["default", "anna"])
        if op == "decide":
            live += store.decide([NewEntry("stop", replace(MOVIE, item_key=str(step % 5)), 95, step,
                                           account=account)], 0)
        elif op == "add":
            live.append(store.decide([NewEntry("start", replace(MOVIE, item_key=str(step % 7)), 5, step)], 0)[0])
        elif op == "remove" and live:
            store.remove(live.pop(rng.randrange(len(live))),
                         NewEntry("watchlist_remove", MOVIE, 95, step) if rng.random() < 0.3 else None)
        elif op == "fail" and live:
            store.reschedule(rng.choice(live), 0, "bug", local_failure=True)
        elif op == "aside" and live:
            store.set_aside(rng.choice(live), "late")
        elif op in ("release", "drop", "outside"):
            aside = [e.id for e in store.set_aside_entries()]
            chosen = rng.sample(aside, min(len(aside), 2))
            if op == "release":
                store.release(chosen)
            elif op == "drop":
                store.drop(chosen, "dropped")
                live = [i for i in live if i not in chosen]
            else:  # another program releases them: noticed without being told
                other.release(chosen)
        for name in ("default", "anna"):
            limit = rng.choice([1, 3, 64])
            table = [r[0] for r in store._db.execute(ORACLE_HEADS, (name, limit))]
            assert [e.id for e in store.heads(name, limit)] == table, (step, op)
        most_aside = max(most_aside, store.stats.set_aside)
    assert most_aside >= 2 and store.stats.pending > 20
    store.close()
    other.close()


def test_every_query_of_the_daemon_goes_through_an_index(tmp_path: Path) -> None:
    """What an event costs must not grow with the backlog (Trakt down for days): every statement
    of the ingest, the decisions, the lanes, the matches and /healthz's counts is a search by
    index, never a scan of the inbox, the outbox, the watched registry or the journal's actions.
    The only scans: the matches' bound (at most MAX_MATCHES rows) and the journal's prune by age
    (at most MAX_EVENTS rows, every AGE_PRUNE_EVERY seconds)."""
    store = Store(tmp_path)
    for i in range(50):  # enough rows that a scan would not be free: SQLite still chooses the index
        seq = store.ingest([replace(MOVIE, item_key=str(i % 3), ids=Ids(imdb=f"tt{i:07d}"))])[0]
        store.decide([NewEntry("stop", replace(MOVIE, ids=Ids(imdb=f"tt{i:07d}")), 95, time.time())], seq)
    store._db.execute("ANALYZE")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    now = time.time()
    [seq] = store.ingest([MOVIE], [IgnoredRow(Arrived.of(MOVIE), "unsupported_event")])
    first, second = store.decide(
        [NewEntry("stop", MOVIE, 95, now), NewEntry("start", replace(MOVIE, item_key="2"), 5, now)], seq,
        (), [Noted(seq, Arrived.of(MOVIE), "sent", sends=(0, 1))])
    store.heads("default")
    store.mark_attempted(first)
    store.reschedule(first, 0, "503: Trakt server error")
    store.set_aside(second, "late")
    store.remove(first, NewEntry("watchlist_remove", MOVIE, 95, now), Result("sent", 201))
    store.match_get(MOVIE.identity)
    store.match_put(MOVIE.identity, {"movie": {"ids": {"trakt": 1}}}, now)
    store.decide([NewEntry("history_remove", MOVIE, 0, now)], 0)
    store._db.set_trace_callback(None)
    scans = []
    for sql in statements:
        if sql.split()[0].upper() in ("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA"):
            continue
        for step in (row[3] for row in store._db.execute("EXPLAIN QUERY PLAN " + sql)):
            if step.startswith("SCAN") and not (step.startswith("SCAN matches")
                                                or sql.startswith("DELETE FROM journal WHERE at <")):
                scans.append((sql[:100], step))
    assert len(statements) > 40 and not scans
    store.close()


# --- the WAL stays bounded; one daemon per database; no links in the state dir ---------------------


def _burst(store: Store, events: int = 3000) -> None:
    title = "A long title " * 20
    for first in range(0, events, 100):
        store.ingest([replace(MOVIE, title=title, item_key=str(i)) for i in range(first, first + 100)])


def test_the_wal_is_cut_back_after_a_checkpoint(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.on_the_loop()  # as in the daemon: no automatic checkpoint on the loop's connection
    _burst(store)
    assert store.wal_size() > store_module.WAL_LIMIT  # a burst grows it
    store.checkpoint()
    store.ingest([MOVIE])  # the next commit starts the WAL again, and cuts the file back
    assert 0 < store.wal_size() <= store_module.WAL_LIMIT
    store.close()


def test_a_checkpoint_is_not_taken_for_another_programs_change(tmp_path: Path) -> None:
    """The daemon's own checkpoints leave its counts alone (recounting grows with the backlog);
    a commit by another program (`cwhook outbox`) is noticed."""
    store = Store(tmp_path)
    store.on_the_loop()
    store.notice_outside_changes()
    for _ in range(3):
        _burst(store)
        assert store.wal_size() > store_module.WAL_LIMIT
        store.checkpoint()
        store.ingest([MOVIE])
        assert 0 < store.wal_size() <= store_module.WAL_LIMIT
        assert not store.notice_outside_changes()
    other = Store(tmp_path)
    other.ingest([replace(MOVIE, item_key="from another program")])
    other.close()
    assert store.notice_outside_changes()
    store.close()


async def test_a_big_wal_is_checkpointed_at_once_not_on_the_clock(tmp_path: Path) -> None:
    db = AsyncStore(Store(tmp_path))
    task = asyncio.create_task(db.checkpoints(every=3600.0))
    try:
        _burst(db.store)
        assert db.store.wal_size() > store_module.WAL_LIMIT
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            db.store.ingest([MOVIE])
            if db.store.wal_size() <= store_module.WAL_LIMIT:
                break
        assert db.store.wal_size() <= store_module.WAL_LIMIT
    finally:
        task.cancel()
        db.close()


def test_the_database_file_itself_is_the_single_instance_lock(tmp_path: Path) -> None:
    fd = lock_database(tmp_path)
    try:
        for lock in tmp_path.glob("*.lock"):  # a tidy-up script changes nothing
            lock.unlink()
        with pytest.raises(AlreadyRunning):
            lock_database(tmp_path)
        Store(tmp_path).close()  # the lock never stands in SQLite's way (the CLI reads the file)
    finally:
        os.close(fd)
    os.close(lock_database(tmp_path))  # free again once the holder is gone


@pytest.mark.parametrize("name", ["cwhook.sqlite3", "cwhook.sqlite3-wal", "cwhook.sqlite3-shm"])
def test_a_link_in_place_of_the_database_is_refused_and_its_target_untouched(tmp_path: Path, name: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / name).symlink_to(victim)
    with pytest.raises(StateDirError, match=rf"{name} is a symbolic link \(to {victim}\); cwhook never follows"):
        Store(state)
    if name == "cwhook.sqlite3":
        with pytest.raises(StateDirError, match="is a symbolic link"):
            lock_database(state)
    assert victim.read_bytes() == b"precious\n"


# --- the worker's start on a store that cannot be used yet ---------------------------------------


class UnreadableStore(Store):
    """An inbox that cannot be read (a full disk at start) until ``readable`` is set."""

    readable = False

    def undecided(self) -> list[tuple[int, Event]]:
        if not self.readable:
            raise StoreUnavailable("the state dir's disk is full")
        return super().undecided()


def _worker(store: Store) -> Worker:
    return Worker(asyncio.Queue(), Rules(ScrobbleConfig()), AsyncStore(store), Counters(), lambda accounts: None)


STOP = replace(MOVIE, progress=95.0)


async def test_a_shutdown_before_the_inbox_could_be_read_settles_nothing(tmp_path: Path) -> None:
    """Rows from before the start, a new event committed once the disk had room: a shutdown while
    the replay still waits for the store must not settle (delete) rows nobody decided."""
    store = UnreadableStore(tmp_path)
    store.readable = False
    old = store.ingest([replace(STOP, item_key="1", ids=Ids(imdb="tt1")),
                        replace(STOP, item_key="2", ids=Ids(imdb="tt2"))])
    worker = _worker(store)
    task = asyncio.create_task(worker.catch_up())
    await asyncio.sleep(0.05)
    [new] = store.ingest([replace(STOP, item_key="3", ids=Ids(imdb="tt3"))])
    worker.queue.put_nowait((new, replace(STOP, item_key="3", ids=Ids(imdb="tt3"))))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await worker.drain()
    store.readable = True
    assert [i for i, _ in store.undecided()] == [*old, new]  # all replayed at the next start


async def test_a_replay_that_could_not_be_committed_is_committed_by_the_shutdown(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.ingest([replace(STOP, item_key=str(i), ids=Ids(imdb=f"tt{i}")) for i in (1, 2)])
    worker = _worker(store)
    real = store.decide
    refused: list[object] = []

    def full(*a: object) -> list[int]:
        refused.append(a)
        raise StoreUnavailable("the state dir's disk is full")

    store.decide = full  # type: ignore[method-assign]
    task = asyncio.create_task(worker.catch_up())  # its commit is retried: the disk is full
    await eventually(lambda: refused)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    store.decide = real  # type: ignore[method-assign]
    await worker.drain()  # room again at the shutdown: the replay's decisions are committed with it
    assert store.undecided() == []
    rows = store._db.execute("SELECT verb, event FROM outbox ORDER BY id").fetchall()
    assert sorted(json.loads(e)["item_key"] for v, e in rows if v == "stop") == ["1", "2"]


async def test_the_wal_stays_bounded_under_a_steady_stream_of_commits(tmp_path: Path) -> None:
    """Commits that never pause: a PASSIVE checkpoint never reaches the last frame, so the WAL
    would grow until the disk is full; past WAL_LIMIT the checkpoint empties it."""
    db = AsyncStore(Store(tmp_path))
    task = asyncio.create_task(db.checkpoints())
    title = "A long title " * 150
    peak = 0
    try:
        # Far more than the bound goes through (by volume, not by time: a loaded machine is slower).
        end = time.monotonic() + 120.0
        n = 0
        while n * len(title) <= 12 * store_module.WAL_LIMIT:
            assert time.monotonic() < end, f"only {n} events written in 120 s"
            with contextlib.suppress(StoreBusy):  # the checkpoint holds the writers back a moment
                db.store.ingest([replace(MOVIE, title=title, item_key=str(n + i)) for i in range(20)])
            n += 20
            peak = max(peak, db.store.wal_size())
            await asyncio.sleep(0.002)
        assert db.store.wal_size() <= 8 * store_module.WAL_LIMIT, f"peak {peak}"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        db.close()


async def test_a_locked_database_is_tried_again_soon_then_less_often(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's own checkpoint holds writers back for milliseconds: the first retry comes after
    1 ms, not 20 (the slowest answers under load waited it out, docs/performance.md); the waits
    double up to 20 ms, and after LOCK_WAIT the call gives up as before."""
    from cwhook.state import asyncstore

    db = AsyncStore(Store(tmp_path))
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncstore.asyncio, "sleep", sleep)
    busy = [7]

    def locked_seven_times() -> str:
        if busy[0]:
            busy[0] -= 1
            raise StoreBusy("database is locked")
        return "done"

    try:
        assert await db.call(locked_seven_times) == "done"
        assert waits == [0.001, 0.002, 0.004, 0.008, 0.016, 0.02, 0.02]
        assert await db.call(lambda: "at once") == "at once" and len(waits) == 7  # no lock, no wait
        monkeypatch.setattr(asyncstore, "LOCK_WAIT", 0.0)

        def always_locked() -> None:
            raise StoreBusy("database is locked")

        with pytest.raises(StoreUnavailable):
            await db.call(always_locked)
    finally:
        db.close()


async def test_a_webhook_waits_for_a_locked_database_lock_wait_in_all_not_behind_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the outsider test: an event arriving while an earlier commit was retrying waited
    that out, then LOCK_WAIT of its own (4 s, where docs/durability.md says 2). Each waits
    LOCK_WAIT from its arrival."""
    from cwhook.state import asyncstore

    monkeypatch.setattr(asyncstore, "LOCK_WAIT", 1.0)
    db = AsyncStore(Store(tmp_path))

    def locked(*_: Any) -> list[int]:
        raise StoreBusy("database is locked")

    monkeypatch.setattr(db.store, "ingest", locked)
    loop = asyncio.get_running_loop()

    async def answered_after(delay: float) -> float:
        await asyncio.sleep(delay)
        started = loop.time()
        with pytest.raises(StoreUnavailable):
            await db.ingest(replace(MOVIE, item_key=str(delay)), lambda seq, event: None)
        return loop.time() - started

    try:
        first, second = await asyncio.gather(answered_after(0.0), answered_after(0.5))
        assert 0.95 <= first < 1.3
        assert 0.45 <= second < 1.3  # behind the first commit it would be about 1.5
    finally:
        db.close()
