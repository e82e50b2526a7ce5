"""The store's tables, the rows they hold, its errors, and the file of version 0.1 (cwhook/state/store.py).

Tables
------
* ``inbox``: every event answered 202, committed before the answer. A row stays
  until the rules have finally decided it; a pause held by the debounce stays
  undecided until it is sent or cancelled, so a restart replays it.
* ``outbox``: the Trakt actions that follow from the decisions, per account and
  viewing session, with their attempt state (``attempted`` is set on disk before
  each call, so a late watched stop knows to ask Trakt's history first).
* ``watched``: per account, the items a watched stop was decided for in the last
  hour, so the rules' one-hour dedupe survives a restart.
* ``matches``: how Trakt knows each item (shared by all accounts, bounded).
* ``journal``, ``journal_action``: the decision journal (cwhook/state/journal.py holds
  its SQL): written in the same transactions as the inbox, the decisions and
  the outbox changes it records, never in a commit of its own.

Every query the daemon makes while it runs goes through an index, so an event costs the same
with a hundred thousand entries waiting for Trakt as with none (tests/test_store.py holds the
query plans; bench/backlog.py measures it).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cwhook.config.schema import DEFAULT_ACCOUNT
from cwhook.kernel import jsontext
from cwhook.kernel.event import Event
from cwhook.kernel.records import quick_init

FILE_NAME = "cwhook.sqlite3"
LEGACY_OUTBOX = "outbox.sqlite3"
SCHEMA_VERSION = 2  # 2: the decision journal
SIDE_FILES = ("-wal", "-shm", "-journal")

SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL DEFAULT 'default',
    session TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    verb TEXT NOT NULL,
    progress REAL NOT NULL,
    event TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    local_failures INTEGER NOT NULL DEFAULT 0,
    attempted INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    set_aside INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_lane ON outbox (account, set_aside, session, id);
CREATE INDEX IF NOT EXISTS outbox_age ON outbox (account, set_aside, created_at);
CREATE INDEX IF NOT EXISTS outbox_first ON outbox (account, set_aside, id);
CREATE TABLE IF NOT EXISTS watched (
    account TEXT NOT NULL,
    identity TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (account, identity)
);
CREATE INDEX IF NOT EXISTS watched_at ON watched (at);
CREATE TABLE IF NOT EXISTS matches (
    identity TEXT PRIMARY KEY,
    form TEXT NOT NULL,
    used_at REAL NOT NULL
);
"""


@quick_init
@dataclass(frozen=True)
class NewEntry:
    """An outbox row to add."""

    verb: str  # start, pause, stop, rate, watchlist_remove
    event: Event
    progress: float
    created_at: float
    account: str = DEFAULT_ACCOUNT
    extra: dict[str, Any] | None = None


@dataclass(frozen=True)
class Entry:
    id: int
    account: str
    session: str
    created_at: float
    verb: str
    progress: float
    event: Event
    extra: dict[str, Any]
    attempts: int
    local_failures: int
    attempted: bool
    next_attempt_at: float  # steady time (cwhook/kernel/clock.py) of the process that wrote it
    last_error: str | None
    born: float = 0.0  # steady time the entry was made at, as this process knows it (its age)


@dataclass(frozen=True)
class Stats:
    """What /healthz shows of the store; refreshed after every write. The times are steady
    (cwhook/kernel/clock.py): an age is ``now() - oldest_born`` whatever the wall clock did."""

    pending: int = 0
    oldest_born: float | None = None
    set_aside: int = 0
    inbox: int = 0
    by_account: tuple[tuple[str, int, float | None], ...] = ()  # (account, pending, oldest_born)


class StoreUnavailable(Exception):
    """The store cannot take the write right now (disk full, locked, unwritable)."""


class StoreBusy(StoreUnavailable):
    """Another connection holds the write lock at this instant (worth trying again soon)."""


class AlreadyRunning(Exception):
    """Another process holds the database's lock: another daemon uses this state dir."""


def unavailable(exc: sqlite3.Error) -> StoreUnavailable:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return StoreBusy(describe(exc))
    return StoreUnavailable(describe(exc))


def describe(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return "the state database is locked by another program"
    if "full" in text:
        return "the state dir's disk is full"
    if "readonly" in text or "read-only" in text:
        return "the state dir is not writable"
    return f"the state database failed: {text}"


def dump(data: Any) -> str:
    # A lone surrogate goes through json.dumps, escaped as \\udXXX: the row is always valid UTF-8.
    return jsontext.dumps(data)


def entry_of(row: tuple[Any, ...]) -> Entry:
    """An outbox row (``SELECT *``) as an Entry (its ``born`` is the store's to fill in)."""
    (id_, account, session, created_at, verb, progress, event, extra, attempts, local_failures,
     attempted, next_at, last_error, _aside) = row
    return Entry(id=int(id_), account=account, session=session, created_at=created_at, verb=verb,
                 progress=progress, event=Event.from_dict(json.loads(event)), extra=json.loads(extra),
                 attempts=int(attempts), local_failures=int(local_failures), attempted=bool(attempted),
                 next_attempt_at=float(next_at), last_error=last_error)


def read_legacy(legacy: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The outbox rows and matches of version 0.1's file (which kept the outbox on its own)."""
    old = sqlite3.connect(str(legacy))
    try:
        tables = {r[0] for r in old.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        rows = (old.execute("SELECT created_at, verb, progress, event, extra, attempts, next_attempt_at,"
                            " last_error FROM outbox ORDER BY id").fetchall()
                if "outbox" in tables else [])
        matches = (old.execute("SELECT identity, form, used_at FROM matches").fetchall()
                   if "matches" in tables else [])
    finally:
        old.close()
    return rows, matches


def copy_legacy(db: sqlite3.Connection, rows: list[tuple[Any, ...]], matches: list[tuple[Any, ...]]) -> None:
    """Version 0.1's rows into the current tables (in the caller's transaction)."""
    for created_at, verb, progress, event, extra, attempts, next_at, error in rows:
        session = Event.from_dict(json.loads(event)).session_key
        # An old entry may have been in flight when 0.1 stopped: treat it as attempted.
        db.execute(
            "INSERT INTO outbox (account, session, created_at, verb, progress, event, extra,"
            " attempts, attempted, next_attempt_at, last_error) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (DEFAULT_ACCOUNT, session, created_at, verb, progress, event, extra, attempts,
             1 if attempts else 0, next_at, error))
    db.executemany("INSERT OR IGNORE INTO matches (identity, form, used_at) VALUES (?,?,?)", matches)
