"""The store's connection: opening, the single-instance lock, transactions, checkpoints, and
what it keeps in memory of the file (the counts /healthz shows, each lane's session heads).

Only the store (cwhook/state/store.py and the modules it is made of) writes SQL. Its methods are
synchronous and meant to run on one thread (cwhook/state/asyncstore.py), so the event loop never
waits on the disk or on another program's lock. ``synchronous=NORMAL`` in WAL mode: a commit
survives the death of the process (SIGKILL); only a power loss can take the last ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from cwhook.kernel import clock as clocks
from cwhook.kernel import logs
from cwhook.state import journal
from cwhook.state.schema import (
    FILE_NAME,
    LEGACY_OUTBOX,
    SCHEMA,
    SCHEMA_VERSION,
    SIDE_FILES,
    AlreadyRunning,
    Stats,
    StoreBusy,
    StoreUnavailable,
    copy_legacy,
    describe,
    read_legacy,
    unavailable,
)
from cwhook.system import statedir

log = logs.get("cwhook.state.store")

BUSY_TIMEOUT_MS = 2000  # for direct use (tests, the CLI); the daemon's loop never waits
WAL_LIMIT = 1024 * 1024  # bytes: a WAL past this is checkpointed at once, and cut back to it after
LONGEST_RETRY = 300.0  # no retry is set further ahead than this (cwhook/trakt/delivery.py's MAX_DEFER)

Head = tuple[str, str]  # (account, session)


@dataclass
class Delta:
    """How a transaction changes what the store keeps in memory (applied once it committed):
    the counts /healthz shows, and the first entry of each (account, session) not set aside."""

    outbox: dict[str, int] = field(default_factory=dict)
    aside: int = 0
    inbox: int = 0
    heads: dict[Head, int | None] = field(default_factory=dict)

    def add(self, account: str, n: int) -> None:
        self.outbox[account] = self.outbox.get(account, 0) + n

    def __bool__(self) -> bool:
        return bool(self.aside or self.inbox or any(self.outbox.values()))


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


C = TypeVar("C", bound="Connection")
P = ParamSpec("P")
R = TypeVar("R")


def reads(method: Callable[Concatenate[C, P], R]) -> Callable[Concatenate[C, P], R]:
    """A read: opens a database that could not be opened yet; SQLite trouble becomes StoreUnavailable."""
    def read(self: C, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self._ensure()
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise unavailable(exc) from exc
    read.__doc__ = method.__doc__
    return read


class Connection:
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
        self._seen_version = 0  # PRAGMA data_version when the memory last read the file
        self._outside_change = False  # read again for another program's commit, not yet told
        # Per account: each session's first entry not set aside, and a heap of (id, session) to
        # find the oldest of them without a scan (entries there no longer a head are skipped).
        self._heads: dict[str, dict[str, int]] = {}
        self._heap: dict[str, list[tuple[int, str]]] = {}
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
        # frame, so the WAL would never start again: past WAL_LIMIT, a RESTART checkpoint holds
        # the writers back for the moment it takes (the loop's calls retry; busy up to 1 s here)
        # and the next commit cuts the file back. Not TRUNCATE: it changes the loop connection's
        # PRAGMA data_version as another program's commit does, and every one would count the
        # whole outbox again (notice_outside_changes), a cost that grows with the backlog.
        mode = "RESTART" if self.wal_size() > WAL_LIMIT else "PASSIVE"
        self._checkpointer.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[tuple[sqlite3.Connection, Delta]]:
        """One write transaction; any SQLite trouble becomes StoreUnavailable."""
        self._ensure()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        delta = Delta()
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
        for (account, session), head in delta.heads.items():
            self._set_head(account, session, head)
        if delta:
            for account, n in delta.outbox.items():
                self._counts[account] = self._counts.get(account, 0) + n
            self._aside += delta.aside
            self._inbox += delta.inbox
            self._publish()

    def _failed(self, exc: sqlite3.Error) -> StoreUnavailable:
        error = unavailable(exc)
        if not isinstance(error, StoreBusy):
            self.problem = self._why(exc)
            error = StoreUnavailable(self.problem)
        return error

    def _why(self, exc: sqlite3.Error) -> str:
        """The cause in words; a full disk often reaches SQLite as a 'disk I/O error'."""
        text = describe(exc)
        if "full" not in text:
            with contextlib.suppress(OSError):
                if os.statvfs(self.path.parent).f_bavail == 0:
                    return f"the state dir's disk is full ({exc})"
        return text

    def _migrate_legacy(self, legacy: Path) -> None:
        """Version 0.1 kept the outbox in its own file: bring its rows over, once."""
        if not legacy.exists():
            return
        rows, matches = read_legacy(legacy)
        with self._tx() as (db, _):
            copy_legacy(db, rows, matches)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{legacy}{suffix}", f"{legacy}{suffix}.migrated")
        self.refresh_stats()

    # --- what is kept in memory ----------------------------------------------------------

    def _catch_up(self) -> None:
        """Read the file again when another program (``cwhook outbox``) committed to it since the
        memory last did: this connection's own commits leave PRAGMA data_version as it is."""
        if int(self._db.execute("PRAGMA data_version").fetchone()[0]) != self._seen_version:
            self.refresh_stats()
            self._outside_change = True

    def notice_outside_changes(self) -> bool:
        """Whether another program changed the file since the last call (the memory has caught up)."""
        if not self._ready:
            return False
        self._catch_up()
        changed, self._outside_change = self._outside_change, False
        return changed

    def refresh_stats(self) -> None:
        """Count everything again (at open, after another program's commit); later transactions
        keep the counts and the heads up to date."""
        db = self._db
        self._counts = {str(a): int(n) for a, n in db.execute(
            "SELECT account, COUNT(*) FROM outbox WHERE set_aside = 0 GROUP BY account")}
        self._aside = int(db.execute("SELECT COUNT(*) FROM outbox WHERE set_aside = 1").fetchone()[0])
        self._inbox = int(db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0])
        self._heads, self._heap = {}, {}
        for account, session, first in db.execute(
                "SELECT account, session, MIN(id) FROM outbox WHERE set_aside = 0 GROUP BY account, session"):
            self._set_head(str(account), str(session), int(first))
        self._seen_version = int(db.execute("PRAGMA data_version").fetchone()[0])
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

    def born(self, entry_id: int, created_at: float) -> float:
        """The steady time an outbox entry was made at (see ``_births``)."""
        born = self._births.get(entry_id)
        if born is None:
            steady, wall = self._opened
            born = steady - max(0.0, wall - created_at)
        return born

    def _set_head(self, account: str, session: str, head: int | None) -> None:
        heads = self._heads.setdefault(account, {})
        heap = self._heap.setdefault(account, [])
        if head is None:
            heads.pop(session, None)
        elif heads.get(session) != head:
            heads[session] = head
            heapq.heappush(heap, (head, session))
        if len(heap) > 2 * len(heads) + 64:  # mostly entries no longer heads: build it again
            heap[:] = [(first, s) for s, first in heads.items()]
            heapq.heapify(heap)

    def _head(self, delta: Delta, account: str, session: str) -> int | None:
        """The first entry of a session not set aside, as this transaction leaves it so far."""
        if (account, session) in delta.heads:
            return delta.heads[account, session]
        return self._heads.get(account, {}).get(session)

    def _first_heads(self, account: str, limit: int) -> list[int]:
        """The ids of the ``limit`` oldest session heads of an account, oldest first: from the
        heap, by its order, never a scan of the outbox (its cost does not grow with the backlog)."""
        self._catch_up()
        heads, heap = self._heads.get(account, {}), self._heap.get(account, [])
        taken: list[tuple[int, str]] = []
        while heap and len(taken) < limit:
            first, session = heapq.heappop(heap)
            if heads.get(session) == first and (not taken or taken[-1] != (first, session)):
                taken.append((first, session))
        for item in taken:
            heapq.heappush(heap, item)
        return [first for first, _ in taken]
