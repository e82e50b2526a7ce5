"""The store's outbox: the Trakt actions waiting to be made, per account and viewing session.

Order is kept within a session only: a delivery lane takes the first entry of each session
(``heads``), the store keeps those in memory, changed in the same transactions as the rows.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from cwhook.kernel import clock as clocks
from cwhook.sources.payload import safe_text
from cwhook.state import journal
from cwhook.state.connection import Connection, Delta, reads
from cwhook.state.schema import Entry, NewEntry, dump, entry_of

SET_ASIDE_AFTER = 3  # attempts that failed for a reason that is not Trakt's
MAX_BIRTHS = 100_000  # outbox entries whose steady birth time is kept (beyond: aged by the wall clock)


class Outbox(Connection):
    def _insert(self, db: sqlite3.Connection, delta: Delta, e: NewEntry) -> int:
        session = safe_text(e.event.session_key)
        cur = db.execute(
            "INSERT INTO outbox (account, session, created_at, verb, progress, event, extra)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (e.account, session, e.created_at, e.verb, e.progress, e.event.stored, dump(e.extra or {})))
        entry_id = int(cur.lastrowid or 0)
        delta.add(e.account, 1)
        if self._head(delta, e.account, session) is None:  # ids only grow: the first of its session
            delta.heads[e.account, session] = entry_id
        self._births[entry_id] = clocks.steady_of(e.created_at, self.clock, self.wall)
        if len(self._births) > MAX_BIRTHS:
            del self._births[next(iter(self._births))]
        return entry_id

    def _gone(self, db: sqlite3.Connection, delta: Delta, entry_id: int, account: str, session: str) -> None:
        """An entry left the lane (done, or set aside): if it was its session's first, the next
        one is (by index)."""
        if self._head(delta, account, session) == entry_id:
            self._recheck(db, delta, account, session)

    @staticmethod
    def _recheck(db: sqlite3.Connection, delta: Delta, account: str, session: str) -> None:
        row = db.execute("SELECT MIN(id) FROM outbox WHERE account = ? AND set_aside = 0 AND session = ?",
                         (account, session)).fetchone()
        delta.heads[account, session] = None if row[0] is None else int(row[0])

    def _entry(self, row: tuple[Any, ...]) -> Entry:
        entry = entry_of(row)
        return dataclasses.replace(entry, born=self.born(entry.id, entry.created_at))

    @reads
    def heads(self, account: str, limit: int = 64) -> list[Entry]:
        """The first entry of each viewing session of an account, oldest first.

        Order is kept within a session only; entries set aside are skipped.
        """
        ids = self._first_heads(account, limit)
        rows = self._db.execute(f"SELECT * FROM outbox WHERE id IN ({','.join('?' * len(ids))})"
                                " AND set_aside = 0 ORDER BY id", ids).fetchall()
        return [self._entry(r) for r in rows]

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
            row = db.execute("SELECT set_aside, account, attempts, session FROM outbox WHERE id = ?",
                             (entry_id,)).fetchone()
            if cur.rowcount > 0 and row is not None:
                delta.add(str(row[1]), -1)
                delta.aside += 1
                self._gone(db, delta, entry_id, str(row[1]), str(row[3]))
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
            row = db.execute("SELECT account, set_aside, attempts, session FROM outbox WHERE id = ?",
                             (entry_id,)).fetchone()
            event_id = None
            if row is not None:
                db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))
                self._births.pop(entry_id, None)
                if row[1]:
                    delta.aside -= 1
                else:
                    delta.add(str(row[0]), -1)
                    self._gone(db, delta, entry_id, str(row[0]), str(row[3]))
                event_id = self.journal.result(db, entry_id, int(row[2]) + 1, result, now)
            if then_add is not None:
                added = self._insert(db, delta, then_add)
                if event_id is not None:
                    self.journal.follow_up(db, event_id, added, then_add.account, then_add.verb,
                                           then_add.progress, now)

    @reads
    def set_aside_entries(self) -> list[Entry]:
        rows = self._db.execute("SELECT * FROM outbox WHERE set_aside = 1 ORDER BY id").fetchall()
        return [self._entry(r) for r in rows]

    def set_aside(self, entry_id: int, why: str) -> None:
        """No longer tried until the user says (``cwhook outbox``): e.g. a late play whose
        earlier attempt may have reached Trakt's history, which cannot be checked."""
        with self._tx() as (db, delta):
            cur = db.execute("UPDATE outbox SET set_aside = 1, attempts = attempts + 1, last_error = ?"
                             " WHERE id = ? AND set_aside = 0", (safe_text(why), entry_id))
            row = db.execute("SELECT account, attempts, session FROM outbox WHERE id = ?",
                             (entry_id,)).fetchone()
            if cur.rowcount > 0 and row is not None:
                delta.add(str(row[0]), -1)
                delta.aside += 1
                self._gone(db, delta, entry_id, str(row[0]), str(row[2]))
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
