"""The store: one SQLite file in the state dir holding everything that must survive a crash.

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

Only this module writes SQL. Its methods are synchronous and meant to run on
one thread (:class:`AsyncStore`), so the event loop never waits on the disk or
on another program's lock. ``synchronous=NORMAL`` in WAL mode: a commit survives
the death of the process (SIGKILL); only a power loss can take the last ones.

The file of version 0.1 (``outbox.sqlite3``, an outbox without accounts or
sessions) is migrated on open: its pending entries and matches are copied in.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from cwhook.config.schema import DEFAULT_ACCOUNT
from cwhook.kernel import clock as clocks
from cwhook.kernel import items, logs
from cwhook.kernel.event import Event
from cwhook.sources.payload import safe_text
from cwhook.state import journal
from cwhook.system import statedir

log = logs.get("cwhook.state.store")

FILE_NAME = "cwhook.sqlite3"
LEGACY_OUTBOX = "outbox.sqlite3"
SCHEMA_VERSION = 2  # 2: the decision journal
BUSY_TIMEOUT_MS = 2000  # for direct use (tests, the CLI); the daemon's loop never waits
LOCK_WAIT = 2.0  # how long a call on the loop keeps retrying a locked database
LOCK_RETRY = 0.02
CHECKPOINT_EVERY = 2.0
WAL_LIMIT = 1024 * 1024  # bytes: a WAL past this is checkpointed at once, and cut back to it after
WAL_POLL = 0.1  # how often the checkpoint task looks at the WAL's size
SIDE_FILES = ("-wal", "-shm", "-journal")
GROUP_WINDOW = 0.002  # seconds a group commit waits for more events
MAX_MATCHES = 5000
WATCHED_VERBS = ("stop", "history_add")
WATCHED_KEPT = 3600.0  # the rules' one-hour window
SET_ASIDE_AFTER = 3  # attempts that failed for a reason that is not Trakt's
LONGEST_RETRY = 300.0  # no retry is set further ahead than this (cwhook/trakt/delivery.py's MAX_DEFER)
MAX_BIRTHS = 100_000  # outbox entries whose steady birth time is kept (beyond: aged by the wall clock)

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
CREATE TABLE IF NOT EXISTS matches (
    identity TEXT PRIMARY KEY,
    form TEXT NOT NULL,
    used_at REAL NOT NULL
);
"""


@dataclass
class _Delta:
    """How a transaction changes the counts /healthz shows (applied once it committed)."""

    outbox: dict[str, int] = field(default_factory=dict)
    aside: int = 0
    inbox: int = 0

    def add(self, account: str, n: int) -> None:
        self.outbox[account] = self.outbox.get(account, 0) + n

    def __bool__(self) -> bool:
        return bool(self.aside or self.inbox or any(self.outbox.values()))


class StoreUnavailable(Exception):
    """The store cannot take the write right now (disk full, locked, unwritable)."""


class AlreadyRunning(Exception):
    """Another process holds the database's lock: another daemon uses this state dir."""


def lock_database(state_dir: Path) -> int:
    """One daemon per database: an exclusive ``flock`` on the database file itself, held while
    the daemon runs (a lock file beside it could be deleted by a tidy-up script). flock and
    SQLite's own POSIX locks do not interact on Linux. AlreadyRunning if another holds it."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = statedir.open_state_file(state_dir / FILE_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except statedir.UnsafeStateFile as exc:
        raise statedir.StateDirError(str(exc)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(str(state_dir / FILE_NAME)) from None
    return fd


class StoreBusy(StoreUnavailable):
    """Another connection holds the write lock at this instant (worth trying again soon)."""


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


P = ParamSpec("P")
R = TypeVar("R")


def _reads(method: Callable[Concatenate[Store, P], R]) -> Callable[Concatenate[Store, P], R]:
    """A read: opens a database that could not be opened yet; SQLite trouble becomes StoreUnavailable."""
    def read(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self._ensure()
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc
    read.__doc__ = method.__doc__
    return read


def _dump(data: Any) -> str:
    # json.dumps escapes lone surrogates as \\udXXX, so the row itself is always valid UTF-8.
    return json.dumps(data)


class Store:
    """``wait_for_disk``: a database that cannot be opened now (full disk) is not an error:
    every call raises StoreUnavailable and tries to open it again (the daemon listens meanwhile)."""

    def __init__(self, state_dir: Path, clock: clocks.Clock = clocks.now,
                 wall: clocks.Clock = time.time, wait_for_disk: bool = False) -> None:
        self.clock, self.wall = clock, wall
        # The ages of outbox entries: from the steady clock for those made by this process;
        # for older ones (and beyond MAX_BIRTHS), from their wall time as the clock read at start.
        self._births: dict[int, float] = {}
        self._opened = (clock(), wall())
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / FILE_NAME
        self._legacy = state_dir / LEGACY_OUTBOX
        for name in (FILE_NAME, *(FILE_NAME + s for s in SIDE_FILES)):
            statedir.check_state_file(state_dir / name)  # never a link planted in the state dir
        self.journal = journal.Writer()
        self._checkpointer: sqlite3.Connection | None = None
        self._loop_side = False
        self._ready = False
        self.problem: str | None = None  # why the last write failed; cleared by the next commit
        self.stats = Stats()
        self._counts: dict[str, int] = {}
        self._aside = 0
        self._inbox = 0
        self._data_version = 0
        self._db = self._connect()
        try:
            self._prepare()
        except sqlite3.Error as exc:
            if not wait_for_disk:
                self._db.close()
                raise
            self.problem = self._why(exc)
            log.error("store_unavailable", error=self.problem,
                      note="listening anyway: webhooks get 503 until the database opens; tried again at every use")

    def _connect(self) -> sqlite3.Connection:
        existed = self.path.exists()
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                             timeout=BUSY_TIMEOUT_MS / 1000)
        if not existed:
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o600)
        return db

    def _prepare(self) -> None:
        """Pragmas, schema, migration, counts. Writes nothing to a database already at the
        current schema (so it opens on a full disk that still holds its WAL index)."""
        db = self._db
        db.execute(f"PRAGMA busy_timeout={0 if self._loop_side else BUSY_TIMEOUT_MS}")
        if self._loop_side:
            db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)  # IF NOT EXISTS: writes nothing when the tables are there
        db.executescript(journal.SCHEMA)
        if int(db.execute("PRAGMA user_version").fetchone()[0]) != SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._ready = True
        try:
            self._migrate_legacy(self._legacy)
            self.refresh_stats()
            self._data_version = int(db.execute("PRAGMA data_version").fetchone()[0])
        except BaseException:
            self._ready = False
            raise
        with contextlib.suppress(sqlite3.Error, StoreUnavailable), self._tx() as (tx, _):
            self.journal.prune(tx, time.time())
            # Retry times are an earlier process's steady time: one further ahead than any retry
            # is set means the wall clock was set back since. Due now, not held for the step.
            tx.execute("UPDATE outbox SET next_attempt_at = ? WHERE next_attempt_at > ?",
                       (self.clock(), self.clock() + LONGEST_RETRY))

    def _ensure(self) -> None:
        """Open the database now if it could not be opened before (StoreUnavailable if still not)."""
        if self._ready:
            return
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        try:
            self._db = self._connect()
            self._prepare()
        except sqlite3.Error as exc:
            self.problem = self._why(exc)
            raise StoreUnavailable(self.problem) from exc
        log.info("store_opened", note="the state database could be opened again")

    @property
    def ready(self) -> bool:
        return self._ready

    def close(self) -> None:
        self._db.close()
        if self._checkpointer is not None:
            self._checkpointer.close()

    def on_the_loop(self) -> None:
        """Used from the event loop: never wait on a lock, and leave checkpoints to ``checkpoint``."""
        self._loop_side = True
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA busy_timeout=0")
            self._db.execute("PRAGMA wal_autocheckpoint=0")

    def wal_size(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def checkpoint(self) -> None:
        """Copy the WAL into the database file (from the checkpoint thread, its own connection).
        Once a checkpoint is complete the next commit starts the WAL again from its beginning and
        cuts the file back to WAL_LIMIT (``journal_size_limit``); a WAL past WAL_LIMIT is copied
        and emptied at once: the WAL never fills the disk."""
        if not self._ready:
            return
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(str(self.path), isolation_level=None,
                                                 check_same_thread=False, timeout=1.0)
            self._checkpointer.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
        # Under a steady stream of commits a PASSIVE checkpoint never catches up with the last
        # frame, so the WAL would never start again: past WAL_LIMIT, a TRUNCATE checkpoint holds
        # the writers back for the moment it takes (the loop's calls retry; busy up to 1 s here).
        mode = "TRUNCATE" if self.wal_size() > WAL_LIMIT else "PASSIVE"
        self._checkpointer.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[tuple[sqlite3.Connection, _Delta]]:
        """One write transaction; any SQLite trouble becomes StoreUnavailable."""
        self._ensure()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        delta = _Delta()
        try:
            yield self._db, delta
            self._db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._failed(exc) from exc
            raise
        self.problem = None
        if delta:
            for account, n in delta.outbox.items():
                self._counts[account] = self._counts.get(account, 0) + n
            self._aside += delta.aside
            self._inbox += delta.inbox
            self._publish()

    def _failed(self, exc: sqlite3.Error) -> StoreUnavailable:
        error = _unavailable(exc)
        if not isinstance(error, StoreBusy):
            self.problem = self._why(exc)
            error = StoreUnavailable(self.problem)
        return error

    def _why(self, exc: sqlite3.Error) -> str:
        """The cause in words; a full disk often reaches SQLite as a 'disk I/O error'."""
        text = _describe(exc)
        if "full" not in text:
            with contextlib.suppress(OSError):
                if os.statvfs(self.path.parent).f_bavail == 0:
                    return f"the state dir's disk is full ({exc})"
        return text

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
        with self._tx() as (db, _):
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
        self.refresh_stats()

    # --- inbox ------------------------------------------------------------------------

    def ingest(self, events: list[Event], ignored: Iterable[journal.IgnoredRow] = ()) -> list[int]:
        """Commit received events in one transaction; their inbox ids in order.
        ``ignored``: events answered 200 ignored, for the journal (same commit)."""
        ids = []
        with self._tx() as (db, delta):
            for event in events:
                cur = db.execute("INSERT INTO inbox (received_at, event) VALUES (?, ?)",
                                 (event.received_at, _dump(event.to_dict())))
                ids.append(int(cur.lastrowid or 0))
            delta.inbox += len(ids)
            self.journal.ignored(db, list(ignored), time.time())
        return ids

    @_reads
    def undecided(self) -> list[tuple[int, Event]]:
        rows = self._db.execute("SELECT id, event FROM inbox ORDER BY id").fetchall()
        return [(int(r[0]), Event.from_dict(json.loads(r[1]))) for r in rows]

    def decide(self, entries: Iterable[NewEntry], upto: int, held: Iterable[int] = (),
               noted: Iterable[journal.Noted] = ()) -> list[int]:
        """The outbox rows that follow from decisions and, at once, the inbox rows they settle:
        every row up to ``upto`` (the worker takes rows in order) but those still ``held``;
        and the journal's record of the decisions (``noted``; its ``sends`` index ``entries``)."""
        ids = []
        keep = sorted(set(held))
        entries = list(entries)
        with self._tx() as (db, delta):
            for e in entries:
                ids.append(self._insert(db, e))
                delta.add(e.account, 1)
                self._remember(db, e)
            marks = ",".join("?" * len(keep))
            cur = db.execute(f"DELETE FROM inbox WHERE id <= ? AND id NOT IN ({marks})", (upto, *keep))
            delta.inbox -= max(0, cur.rowcount)
            self.journal.decided(db, list(noted), ids, [(e.account, e.verb, e.progress) for e in entries],
                                 time.time())
        return ids

    @staticmethod
    def _remember(db: sqlite3.Connection, e: NewEntry) -> None:
        """Keep the rules' one-hour watched registry across restarts (spec §5 rule 6)."""
        # One row per name of the item (cwhook.kernel.items): another server's name for it meets one.
        keys = [(e.account, safe_text(name)) for name in items.names(e.event)]
        if e.verb in WATCHED_VERBS:
            db.executemany("INSERT OR REPLACE INTO watched (account, identity, at) VALUES (?, ?, ?)",
                           [(*key, e.created_at) for key in keys])
            db.execute("DELETE FROM watched WHERE at < ?", (e.created_at - WATCHED_KEPT,))
        elif e.verb == "history_remove":
            db.executemany("DELETE FROM watched WHERE account = ? AND identity = ?", keys)

    @_reads
    def recent_watched(self, since: float) -> list[tuple[str, str, float]]:
        """(account, item identity, when) of the watched stops decided since ``since``."""
        rows = self._db.execute("SELECT account, identity, at FROM watched WHERE at >= ? ORDER BY at",
                                (since,)).fetchall()
        return [(str(a), str(i), float(t)) for a, i, t in rows]

    # --- outbox -----------------------------------------------------------------------

    def _insert(self, db: sqlite3.Connection, e: NewEntry) -> int:
        cur = db.execute(
            "INSERT INTO outbox (account, session, created_at, verb, progress, event, extra)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (e.account, safe_text(e.event.session_key), e.created_at, e.verb, e.progress,
             _dump(e.event.to_dict()), _dump(e.extra or {})))
        entry_id = int(cur.lastrowid or 0)
        self._births[entry_id] = clocks.steady_of(e.created_at, self.clock, self.wall)
        if len(self._births) > MAX_BIRTHS:
            del self._births[next(iter(self._births))]
        return entry_id

    def born(self, entry_id: int, created_at: float) -> float:
        """The steady time an outbox entry was made at (see ``_births``)."""
        born = self._births.get(entry_id)
        if born is None:
            steady, wall = self._opened
            born = steady - max(0.0, wall - created_at)
        return born

    def _entry(self, row: tuple[Any, ...]) -> Entry:
        entry = _entry(row)
        return dataclasses.replace(entry, born=self.born(entry.id, entry.created_at))

    def add(self, entry: NewEntry) -> int:
        with self._tx() as (db, delta):
            delta.add(entry.account, 1)
            return self._insert(db, entry)

    @_reads
    def heads(self, account: str, limit: int = 64) -> list[Entry]:
        """The first entry of each viewing session of an account, oldest first.

        Order is kept within a session only; entries set aside are skipped.
        """
        rows = self._db.execute(
            "SELECT o.* FROM outbox o WHERE o.account = ? AND o.set_aside = 0 AND o.id = ("
            " SELECT MIN(p.id) FROM outbox p WHERE p.account = o.account AND p.session = o.session"
            " AND p.set_aside = 0) ORDER BY o.id LIMIT ?", (account, limit)).fetchall()
        return [self._entry(r) for r in rows]

    @_reads
    def get(self, entry_id: int) -> Entry | None:
        row = self._db.execute("SELECT * FROM outbox WHERE id = ?", (entry_id,)).fetchone()
        return None if row is None else self._entry(row)

    def mark_attempted(self, entry_id: int) -> None:
        with self._tx() as (db, _):
            db.execute("UPDATE outbox SET attempted = 1 WHERE id = ?", (entry_id,))

    def reschedule(self, entry_id: int, next_attempt_at: float, error: str,
                   local_failure: bool = False) -> bool:
        """Try again later; True when the entry is now set aside (too many local failures)."""
        with self._tx() as (db, delta):
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?,"
                " local_failures = local_failures + ? WHERE id = ?",
                (next_attempt_at, safe_text(error), 1 if local_failure else 0, entry_id))
            cur = db.execute("UPDATE outbox SET set_aside = 1 WHERE id = ? AND set_aside = 0"
                             " AND local_failures >= ?", (entry_id, SET_ASIDE_AFTER))
            row = db.execute("SELECT set_aside, account, attempts FROM outbox WHERE id = ?",
                             (entry_id,)).fetchone()
            if cur.rowcount > 0 and row is not None:
                delta.add(str(row[1]), -1)
                delta.aside += 1
            if row is not None:
                self.journal.retrying(db, entry_id, int(row[2]), error, bool(row[0]), time.time())
        return bool(row and row[0])

    def retry_now(self, account: str | None = None) -> None:
        with self._tx() as (db, _):
            if account is None:
                db.execute("UPDATE outbox SET next_attempt_at = 0")
            else:
                db.execute("UPDATE outbox SET next_attempt_at = 0 WHERE account = ?", (account,))

    def remove(self, entry_id: int, then_add: NewEntry | None = None,
               result: journal.Result | None = None) -> None:
        """The entry is done (``result``: how, for the journal); ``then_add`` follows it."""
        now = time.time()
        with self._tx() as (db, delta):
            row = db.execute("SELECT account, set_aside, attempts FROM outbox WHERE id = ?",
                             (entry_id,)).fetchone()
            event_id = None
            if row is not None:
                db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))
                self._births.pop(entry_id, None)
                if row[1]:
                    delta.aside -= 1
                else:
                    delta.add(str(row[0]), -1)
                event_id = self.journal.result(db, entry_id, int(row[2]) + 1, result, now)
            if then_add is not None:
                added = self._insert(db, then_add)
                delta.add(then_add.account, 1)
                if event_id is not None:
                    self.journal.follow_up(db, event_id, added, then_add.account, then_add.verb,
                                           then_add.progress, now)

    @_reads
    def set_aside_entries(self) -> list[Entry]:
        rows = self._db.execute("SELECT * FROM outbox WHERE set_aside = 1 ORDER BY id").fetchall()
        return [self._entry(r) for r in rows]

    def set_aside(self, entry_id: int, why: str) -> None:
        """No longer tried until the user says (``cwhook outbox``): e.g. a late play whose
        earlier attempt may have reached Trakt's history, which cannot be checked."""
        with self._tx() as (db, delta):
            cur = db.execute("UPDATE outbox SET set_aside = 1, attempts = attempts + 1, last_error = ?"
                             " WHERE id = ? AND set_aside = 0", (safe_text(why), entry_id))
            row = db.execute("SELECT account, attempts FROM outbox WHERE id = ?", (entry_id,)).fetchone()
            if cur.rowcount > 0 and row is not None:
                delta.add(str(row[0]), -1)
                delta.aside += 1
                self.journal.retrying(db, entry_id, int(row[1]), why, True, time.time())

    def release(self, entry_ids: Iterable[int], unchecked: bool = False) -> list[int]:
        """Set-aside entries go back to the outbox, tried at once (the user's
        ``cwhook outbox retry``); ``unchecked`` also forgets that an earlier attempt may have
        reached Trakt (``cwhook outbox send``: the user checked that the play is not there)."""
        done = []
        with self._tx() as (db, _):
            for entry_id in entry_ids:
                cur = db.execute(
                    "UPDATE outbox SET set_aside = 0, local_failures = 0, next_attempt_at = 0"
                    + (", attempted = 0" if unchecked else "") + " WHERE id = ? AND set_aside = 1",
                    (entry_id,))
                if cur.rowcount:
                    done.append(entry_id)
                    db.execute("UPDATE journal_action SET state = 'retrying' WHERE outbox_id = ?", (entry_id,))
        self.refresh_stats()
        return done

    def drop(self, entry_ids: Iterable[int], why: str) -> list[int]:
        """Set-aside entries removed for good (``cwhook outbox drop``), journaled as failed."""
        done = []
        with self._tx() as (db, _):
            for entry_id in entry_ids:
                row = db.execute("SELECT attempts FROM outbox WHERE id = ? AND set_aside = 1",
                                 (entry_id,)).fetchone()
                if row is None:
                    continue
                db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))
                self.journal.result(db, entry_id, int(row[0]), journal.Result("failed", None, why),
                                    time.time())
                done.append(entry_id)
        self.refresh_stats()
        return done

    def notice_outside_changes(self) -> bool:
        """Another program (``cwhook outbox``) committed to the file: count again; True if so."""
        if not self._ready:
            return False
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        changed = self._data_version != version
        self._data_version = version
        if changed:
            self.refresh_stats()
        return changed

    def refresh_stats(self) -> None:
        """Count everything again (at open); later transactions keep the counts up to date."""
        db = self._db
        self._counts = {str(a): int(n) for a, n in db.execute(
            "SELECT account, COUNT(*) FROM outbox WHERE set_aside = 0 GROUP BY account")}
        self._aside = int(db.execute("SELECT COUNT(*) FROM outbox WHERE set_aside = 1").fetchone()[0])
        self._inbox = int(db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0])
        self._publish()

    def _publish(self) -> None:
        """A fresh Stats for /healthz: counts kept in memory, the oldest entry by index: the first
        made (by id: made in this process before a wall clock set back) or the earliest stamped
        (replayed or from an earlier process), whichever is older in steady time."""
        per = []
        for account in sorted(self._counts):
            count = self._counts[account]
            if count <= 0:
                continue
            rows = [self._db.execute(f"SELECT id, created_at FROM outbox WHERE account = ? AND set_aside = 0"
                                     f" ORDER BY {order} LIMIT 1", (account,)).fetchone()
                    for order in ("id", "created_at")]
            born = [self.born(int(r[0]), float(r[1])) for r in rows if r is not None]
            per.append((account, count, min(born) if born else None))
        oldest = [r[2] for r in per if r[2] is not None]
        self.stats = Stats(pending=sum(r[1] for r in per) + self._aside,
                           oldest_born=min(oldest) if oldest else None,
                           set_aside=self._aside, inbox=self._inbox, by_account=tuple(per))

    # --- how Trakt knows each item (kept across restarts, bounded) ---------------------

    @_reads
    def match_get(self, identity: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT form FROM matches WHERE identity = ?",
                               (safe_text(identity),)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def match_put(self, identity: str, form: dict[str, Any], now: float) -> None:
        with self._tx() as (db, _):
            db.execute("INSERT OR REPLACE INTO matches (identity, form, used_at) VALUES (?, ?, ?)",
                       (safe_text(identity), _dump(form), now))
            db.execute("DELETE FROM matches WHERE identity NOT IN"
                       " (SELECT identity FROM matches ORDER BY used_at DESC LIMIT ?)", (MAX_MATCHES,))


def _entry(row: tuple[Any, ...]) -> Entry:
    (id_, account, session, created_at, verb, progress, event, extra, attempts, local_failures,
     attempted, next_at, last_error, _aside) = row
    return Entry(id=int(id_), account=account, session=session, created_at=created_at, verb=verb,
                 progress=progress, event=Event.from_dict(json.loads(event)), extra=json.loads(extra),
                 attempts=int(attempts), local_failures=int(local_failures), attempted=bool(attempted),
                 next_attempt_at=float(next_at), last_error=last_error)


def _unavailable(exc: sqlite3.Error) -> StoreUnavailable:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return StoreBusy(_describe(exc))
    return StoreUnavailable(_describe(exc))


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


class AsyncStore:
    """The event loop's side of the store.

    Calls run on the loop itself as short transactions: in WAL mode with
    ``synchronous=NORMAL`` a commit is a write to the WAL, no fsync, well under a
    millisecond. The connection never waits on a lock: a call that finds the database
    locked by another program is tried again after a short asyncio sleep, for up to
    ``LOCK_WAIT`` seconds, then fails with ``StoreUnavailable`` (so /healthz and the
    webhooks keep answering meanwhile). The slow part of WAL, the checkpoint that
    copies pages into the database file and fsyncs it, runs on a thread with its own
    connection. (Running every call on a thread instead cost a third of the endpoint's
    throughput in GIL hand-offs.)

    ``ingest`` is a group commit: the events of every request answered in the same
    turn of the loop are committed together.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        store.on_the_loop()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cwhook-checkpoint")
        self._batch: list[tuple[Event, asyncio.Future[int], Callable[[int, Event], None]]] = []
        self._ignored: list[journal.IgnoredRow] = []
        self._flushing: asyncio.Task[None] | None = None
        self.on_outside_change: Callable[[], None] | None = None  # e.g. `cwhook outbox retry` ran

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT
        while True:
            try:
                return fn(*args)
            except StoreBusy:
                if loop.time() >= deadline:
                    self.store.problem = "the state database is locked by another program"
                    raise StoreUnavailable(self.store.problem) from None
                await asyncio.sleep(LOCK_RETRY)

    async def ingest(self, event: Event, on_committed: Callable[[int, Event], None]) -> int:
        """Commit one event (grouped with others); ``on_committed`` runs in commit order."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._batch.append((event, fut, on_committed))
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush())
        return await fut

    def journal_ignored(self, row: journal.IgnoredRow) -> None:
        """An event answered 200 ignored goes to the journal with the next group commit
        (nobody waits for it; lost if that commit fails)."""
        self._ignored.append(row)
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            # Let the requests of the next moment join this commit: one commit for many
            # events is most of the endpoint's speed (a 202 waits GROUP_WINDOW at most).
            await asyncio.sleep(GROUP_WINDOW)
            while self._batch or self._ignored:
                batch, self._batch = self._batch, []
                ignored, self._ignored = self._ignored, []
                try:
                    ids = await self.call(self.store.ingest, [e for e, _, _ in batch], ignored)
                except Exception as exc:
                    error = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(repr(exc))
                    for _, fut, _ in batch:
                        if not fut.done():
                            fut.set_exception(error)
                    continue
                for (event, fut, on_committed), seq in zip(batch, ids, strict=True):
                    on_committed(seq, event)
                    if not fut.done():
                        fut.set_result(seq)
        finally:
            self._flushing = None

    async def checkpoints(self, every: float = CHECKPOINT_EVERY) -> None:
        """Copy the WAL into the database file every ``every`` seconds, and at once when it has
        grown past WAL_LIMIT (a burst), off the loop."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(min(every, WAL_POLL))
            if loop.time() - last < every and self.store.wal_size() <= WAL_LIMIT:
                continue
            last = loop.time()
            try:
                await loop.run_in_executor(self._pool, self.store.checkpoint)
            except sqlite3.Error as exc:  # locked or full: the next one catches up
                log.debug("checkpoint_skipped", error=str(exc))
            with contextlib.suppress(sqlite3.Error):
                if self.store.notice_outside_changes() and self.on_outside_change is not None:
                    self.on_outside_change()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.store.close()
