"""The store: one SQLite file in the state dir holding everything that must survive a crash.

Tables
------
* ``inbox``: every event answered 202, committed before the answer. A row stays
  until the rules have finally decided it; a pause held by the debounce stays
  undecided until it is sent or cancelled, so a restart replays it.
* ``outbox``: the Trakt actions that follow from the decisions, per account and
  viewing session, with their attempt state (``attempted`` is set on disk before
  each call, so a late watched stop knows to ask Trakt's history first).
* ``matches``: how Trakt knows each item (shared by all accounts, bounded).

Only this module writes SQL. Its methods are synchronous and meant to run on
one thread (:class:`StoreThread`), so the event loop never waits on the disk or
on another program's lock. ``synchronous=NORMAL`` in WAL mode: a commit survives
the death of the process (SIGKILL); only a power loss can take the last ones.

The file of version 0.1 (``outbox.sqlite3``, an outbox without accounts or
sessions) is migrated on open: its pending entries and matches are copied in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cwhook.event import Event

FILE_NAME = "cwhook.sqlite3"
LEGACY_OUTBOX = "outbox.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 2000
MAX_MATCHES = 5000
SET_ASIDE_AFTER = 3  # attempts that failed for a reason that is not Trakt's
DEFAULT_ACCOUNT = "default"

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
CREATE TABLE IF NOT EXISTS matches (
    identity TEXT PRIMARY KEY,
    form TEXT NOT NULL,
    used_at REAL NOT NULL
);
"""


class StoreUnavailable(Exception):
    """The store cannot take the write right now (disk full, locked, unwritable)."""


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
    next_attempt_at: float
    last_error: str | None


@dataclass(frozen=True)
class Stats:
    """What /healthz shows of the store; refreshed after every write."""

    pending: int = 0
    oldest_created_at: float | None = None
    set_aside: int = 0
    inbox: int = 0
    by_account: tuple[tuple[str, int, float | None], ...] = ()


def _safe_text(value: str) -> str:
    """Text SQLite can store: lone surrogates (from a hostile payload) become U+FFFD."""
    return value.encode("utf-8", "replace").decode("utf-8") if isinstance(value, str) else value


def _dump(data: Any) -> str:
    # json.dumps escapes lone surrogates as \\udXXX, so the row itself is always valid UTF-8.
    return json.dumps(data)


class Store:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / FILE_NAME
        existed = self.path.exists()
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
        if not existed:
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o600)
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._migrate_legacy(state_dir / LEGACY_OUTBOX)
        self.stats = Stats()
        self.refresh_stats()

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; any SQLite trouble becomes StoreUnavailable."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreUnavailable(_describe(exc)) from exc
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreUnavailable(_describe(exc)) from exc
            raise
        self.refresh_stats()

    def _migrate_legacy(self, legacy: Path) -> None:
        """Version 0.1 kept the outbox in its own file: bring its rows over, once."""
        if not legacy.exists():
            return
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
        with self._tx() as db:
            for created_at, verb, progress, event, extra, attempts, next_at, error in rows:
                session = Event.from_dict(json.loads(event)).session_key
                # An old entry may have been in flight when 0.1 stopped: treat it as attempted.
                db.execute(
                    "INSERT INTO outbox (account, session, created_at, verb, progress, event, extra,"
                    " attempts, attempted, next_attempt_at, last_error) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (DEFAULT_ACCOUNT, session, created_at, verb, progress, event, extra, attempts,
                     1 if attempts else 0, next_at, error))
            db.executemany("INSERT OR IGNORE INTO matches (identity, form, used_at) VALUES (?,?,?)",
                           matches)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{legacy}{suffix}", f"{legacy}{suffix}.migrated")

    # --- inbox ------------------------------------------------------------------------

    def ingest(self, events: list[Event]) -> list[int]:
        """Commit received events in one transaction; their inbox ids in order."""
        ids = []
        with self._tx() as db:
            for event in events:
                cur = db.execute("INSERT INTO inbox (received_at, event) VALUES (?, ?)",
                                 (event.received_at, _dump(event.to_dict())))
                ids.append(int(cur.lastrowid or 0))
        return ids

    def undecided(self) -> list[tuple[int, Event]]:
        rows = self._db.execute("SELECT id, event FROM inbox ORDER BY id").fetchall()
        return [(int(r[0]), Event.from_dict(json.loads(r[1]))) for r in rows]

    def decide(self, entries: Iterable[NewEntry], settled: Iterable[int]) -> list[int]:
        """The outbox rows that follow from decisions, and the inbox rows they settle, at once."""
        ids = []
        with self._tx() as db:
            for e in entries:
                ids.append(self._insert(db, e))
            db.executemany("DELETE FROM inbox WHERE id = ?", [(i,) for i in settled])
        return ids

    # --- outbox -----------------------------------------------------------------------

    @staticmethod
    def _insert(db: sqlite3.Connection, e: NewEntry) -> int:
        cur = db.execute(
            "INSERT INTO outbox (account, session, created_at, verb, progress, event, extra)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (e.account, _safe_text(e.event.session_key), e.created_at, e.verb, e.progress,
             _dump(e.event.to_dict()), _dump(e.extra or {})))
        return int(cur.lastrowid or 0)

    def add(self, entry: NewEntry) -> int:
        with self._tx() as db:
            return self._insert(db, entry)

    def heads(self, account: str, limit: int = 64) -> list[Entry]:
        """The first entry of each viewing session of an account, oldest first.

        Order is kept within a session only; entries set aside are skipped.
        """
        rows = self._db.execute(
            "SELECT o.* FROM outbox o WHERE o.account = ? AND o.set_aside = 0 AND o.id = ("
            " SELECT MIN(p.id) FROM outbox p WHERE p.account = o.account AND p.session = o.session"
            " AND p.set_aside = 0) ORDER BY o.id LIMIT ?", (account, limit)).fetchall()
        return [_entry(r) for r in rows]

    def get(self, entry_id: int) -> Entry | None:
        row = self._db.execute("SELECT * FROM outbox WHERE id = ?", (entry_id,)).fetchone()
        return None if row is None else _entry(row)

    def mark_attempted(self, entry_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET attempted = 1 WHERE id = ?", (entry_id,))

    def reschedule(self, entry_id: int, next_attempt_at: float, error: str,
                   local_failure: bool = False) -> bool:
        """Try again later; True when the entry is now set aside (too many local failures)."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?,"
                " local_failures = local_failures + ? WHERE id = ?",
                (next_attempt_at, _safe_text(error), 1 if local_failure else 0, entry_id))
            db.execute("UPDATE outbox SET set_aside = 1 WHERE id = ? AND local_failures >= ?",
                       (entry_id, SET_ASIDE_AFTER))
            row = db.execute("SELECT set_aside FROM outbox WHERE id = ?", (entry_id,)).fetchone()
        return bool(row and row[0])

    def set_extra(self, entry_id: int, extra: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET extra = ? WHERE id = ?", (_dump(extra), entry_id))

    def retry_now(self, account: str | None = None) -> None:
        with self._tx() as db:
            if account is None:
                db.execute("UPDATE outbox SET next_attempt_at = 0")
            else:
                db.execute("UPDATE outbox SET next_attempt_at = 0 WHERE account = ?", (account,))

    def remove(self, entry_id: int, then_add: NewEntry | None = None) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))
            if then_add is not None:
                self._insert(db, then_add)

    def set_aside_entries(self) -> list[Entry]:
        rows = self._db.execute("SELECT * FROM outbox WHERE set_aside = 1 ORDER BY id").fetchall()
        return [_entry(r) for r in rows]

    def refresh_stats(self) -> None:
        db = self._db
        per = db.execute("SELECT account, COUNT(*), MIN(created_at) FROM outbox WHERE set_aside = 0"
                         " GROUP BY account ORDER BY account").fetchall()
        aside = db.execute("SELECT COUNT(*) FROM outbox WHERE set_aside = 1").fetchone()[0]
        inbox = db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0]
        oldest = [float(r[2]) for r in per if r[2] is not None]
        self.stats = Stats(
            pending=sum(int(r[1]) for r in per) + int(aside),
            oldest_created_at=min(oldest) if oldest else None,
            set_aside=int(aside), inbox=int(inbox),
            by_account=tuple((str(r[0]), int(r[1]), None if r[2] is None else float(r[2])) for r in per))

    # --- how Trakt knows each item (kept across restarts, bounded) ---------------------

    def match_get(self, identity: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT form FROM matches WHERE identity = ?",
                               (_safe_text(identity),)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def match_put(self, identity: str, form: dict[str, Any], now: float) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO matches (identity, form, used_at) VALUES (?, ?, ?)",
                       (_safe_text(identity), _dump(form), now))
            db.execute("DELETE FROM matches WHERE identity NOT IN"
                       " (SELECT identity FROM matches ORDER BY used_at DESC LIMIT ?)", (MAX_MATCHES,))


def _entry(row: tuple[Any, ...]) -> Entry:
    (id_, account, session, created_at, verb, progress, event, extra, attempts, local_failures,
     attempted, next_at, last_error, _aside) = row
    return Entry(id=int(id_), account=account, session=session, created_at=created_at, verb=verb,
                 progress=progress, event=Event.from_dict(json.loads(event)), extra=json.loads(extra),
                 attempts=int(attempts), local_failures=int(local_failures), attempted=bool(attempted),
                 next_attempt_at=float(next_at), last_error=last_error)


def _describe(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return "the state database is locked by another program"
    if "full" in text:
        return "the state dir's disk is full"
    if "readonly" in text or "read-only" in text:
        return "the state dir is not writable"
    return f"the state database failed: {text}"


T = TypeVar("T")


class StoreThread:
    """Runs every store call on one thread, so the event loop never blocks on SQLite.

    ``ingest`` is a group commit: events arriving while a commit is under way are
    committed together in the next one, so throughput holds without one fsync-ish
    commit per request.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cwhook-store")
        self._batch: list[tuple[Event, asyncio.Future[int]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args))

    async def ingest(self, event: Event, on_committed: Callable[[int, Event], None]) -> int:
        """Commit one event (grouped with others); ``on_committed`` runs in commit order."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._batch.append((event, fut))
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush(on_committed))
        return await fut

    async def _flush(self, on_committed: Callable[[int, Event], None]) -> None:
        try:
            while self._batch:
                batch, self._batch = self._batch, []
                try:
                    ids = await self.call(self.store.ingest, [e for e, _ in batch])
                except Exception as exc:
                    error = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(repr(exc))
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(error)
                    continue
                for (event, fut), seq in zip(batch, ids, strict=True):
                    on_committed(seq, event)
                    if not fut.done():
                        fut.set_result(seq)
        finally:
            self._flushing = None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.store.close()
