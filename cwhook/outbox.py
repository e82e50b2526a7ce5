"""The durable outbox: every Trakt action is stored in SQLite before it is tried.

An entry is removed once it is done or has finally failed; anything still in
the file after a crash, a restart or a long Trakt outage is delivered when the
daemon runs again. Entries are delivered in the order they were added.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cwhook.event import Event

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    verb TEXT NOT NULL,
    progress REAL NOT NULL,
    event TEXT NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT
)
"""


MATCHES_SCHEMA = """
CREATE TABLE IF NOT EXISTS matches (
    identity TEXT PRIMARY KEY,
    form TEXT NOT NULL,
    used_at REAL NOT NULL
)
"""
MAX_MATCHES = 5000


@dataclass(frozen=True)
class Entry:
    id: int
    created_at: float
    verb: str  # start, pause, stop, rate, watchlist_remove
    progress: float
    event: Event
    extra: dict[str, Any]
    attempts: int
    next_attempt_at: float
    last_error: str | None


class Outbox:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a crash of the process (kill -9); only a
        # power loss can lose the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)
        self._db.execute(MATCHES_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(
        self, verb: str, event: Event, progress: float, now: float,
        extra: dict[str, Any] | None = None,
    ) -> int:
        cur = self._db.execute(
            "INSERT INTO outbox (created_at, verb, progress, event, extra) VALUES (?, ?, ?, ?, ?)",
            (now, verb, progress, json.dumps(event.to_dict()), json.dumps(extra or {})),
        )
        return int(cur.lastrowid or 0)

    def head(self) -> Entry | None:
        row = self._db.execute(
            "SELECT id, created_at, verb, progress, event, extra, attempts, next_attempt_at,"
            " last_error FROM outbox ORDER BY id LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return Entry(
            id=row[0], created_at=row[1], verb=row[2], progress=row[3],
            event=Event.from_dict(json.loads(row[4])), extra=json.loads(row[5]),
            attempts=row[6], next_attempt_at=row[7], last_error=row[8],
        )

    def reschedule(self, entry_id: int, next_attempt_at: float, error: str) -> None:
        self._db.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
            " WHERE id = ?",
            (next_attempt_at, error, entry_id),
        )

    def set_extra(self, entry_id: int, extra: dict[str, Any]) -> None:
        self._db.execute("UPDATE outbox SET extra = ? WHERE id = ?", (json.dumps(extra), entry_id))

    def retry_now(self) -> None:
        self._db.execute("UPDATE outbox SET next_attempt_at = 0")

    def remove(self, entry_id: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))

    # --- how Trakt knows each item (kept across restarts, bounded) ---------------------

    def match_get(self, identity: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT form FROM matches WHERE identity = ?", (identity,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def match_put(self, identity: str, form: dict[str, Any], now: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO matches (identity, form, used_at) VALUES (?, ?, ?)",
                         (identity, json.dumps(form), now))
        self._db.execute("DELETE FROM matches WHERE identity NOT IN"
                         " (SELECT identity FROM matches ORDER BY used_at DESC LIMIT ?)", (MAX_MATCHES,))

    def pending(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def oldest_age(self, now: float) -> float | None:
        row = self._db.execute("SELECT MIN(created_at) FROM outbox").fetchone()
        return None if row[0] is None else max(0.0, now - float(row[0]))
