"""The store: one SQLite file in the state dir holding everything that must survive a crash.

Made of: cwhook/state/schema.py (the tables, the rows, the file of version 0.1),
cwhook/state/connection.py (opening, the lock, transactions, checkpoints, what is kept in
memory), cwhook/state/outbox.py, cwhook/state/inbox.py (with the watched registry), the matches
below, and cwhook/state/asyncstore.py (the event loop's side). The decision journal's SQL is in
cwhook/state/journal.py, written in the store's transactions.

The file of version 0.1 (``outbox.sqlite3``, an outbox without accounts or sessions) is migrated
on open: its pending entries and matches are copied in.
"""

from __future__ import annotations

import json
from typing import Any

from cwhook.sources.payload import safe_text
from cwhook.state.asyncstore import AsyncStore
from cwhook.state.connection import LONGEST_RETRY, WAL_LIMIT, lock_database, reads
from cwhook.state.inbox import Inbox
from cwhook.state.schema import (
    FILE_NAME,
    AlreadyRunning,
    Entry,
    NewEntry,
    Stats,
    StoreBusy,
    StoreUnavailable,
    dump,
)

__all__ = ["FILE_NAME", "LONGEST_RETRY", "WAL_LIMIT", "AlreadyRunning", "AsyncStore", "Entry", "NewEntry",
           "Stats", "Store", "StoreBusy", "StoreUnavailable", "lock_database"]

MAX_MATCHES = 5000


class Store(Inbox):
    """The whole store: inbox, outbox, watched registry, matches, journal (one connection)."""

    # --- how Trakt knows each item (kept across restarts, bounded) ---------------------

    @reads
    def match_get(self, identity: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT form FROM matches WHERE identity = ?",
                               (safe_text(identity),)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def match_put(self, identity: str, form: dict[str, Any], now: float) -> None:
        with self._tx() as (db, _):
            db.execute("INSERT OR REPLACE INTO matches (identity, form, used_at) VALUES (?, ?, ?)",
                       (safe_text(identity), dump(form), now))
            db.execute("DELETE FROM matches WHERE identity NOT IN"
                       " (SELECT identity FROM matches ORDER BY used_at DESC LIMIT ?)", (MAX_MATCHES,))
