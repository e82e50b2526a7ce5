"""The store's inbox (every event answered 202, until the rules decided it) and the one-hour
registry of watched items, both written with the decisions that settle them."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable

from cwhook.kernel import items
from cwhook.kernel.event import Event
from cwhook.sources.payload import safe_text
from cwhook.state import journal
from cwhook.state.connection import reads
from cwhook.state.outbox import Outbox
from cwhook.state.schema import NewEntry

WATCHED_VERBS = ("stop", "history_add")
WATCHED_KEPT = 3600.0  # the rules' one-hour window


class Inbox(Outbox):
    def ingest(self, events: list[Event], ignored: Iterable[journal.IgnoredRow] = ()) -> list[int]:
        """Commit received events in one transaction; their inbox ids in order.
        ``ignored``: events answered 200 ignored, for the journal (same commit)."""
        ids = []
        with self._tx() as (db, delta):
            for event in events:
                cur = db.execute("INSERT INTO inbox (received_at, event) VALUES (?, ?)",
                                 (event.received_at, event.stored))
                ids.append(int(cur.lastrowid or 0))
            delta.inbox += len(ids)
            self.journal.ignored(db, list(ignored), time.time())
        return ids

    @reads
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
                ids.append(self._insert(db, delta, e))
                self._remember(db, e)
            marks = ",".join("?" * len(keep))
            cur = db.execute(f"DELETE FROM inbox WHERE id <= ? AND id NOT IN ({marks})", (upto, *keep))
            delta.inbox -= max(0, cur.rowcount)
            self.journal.decided(db, list(noted), ids, [(e.account, e.verb, e.progress) for e in entries],
                                 time.time())
        return ids

    @staticmethod
    def _remember(db: sqlite3.Connection, e: NewEntry) -> None:
        """Keep the rules' one-hour watched registry across restarts (docs/rules.md, rule 6)."""
        # One row per name of the item (cwhook.kernel.items): another server's name for it meets one.
        keys = [(e.account, safe_text(name)) for name in items.names(e.event)]
        if e.verb in WATCHED_VERBS:
            db.executemany("INSERT OR REPLACE INTO watched (account, identity, at) VALUES (?, ?, ?)",
                           [(*key, e.created_at) for key in keys])
            db.execute("DELETE FROM watched WHERE at < ?", (e.created_at - WATCHED_KEPT,))  # by index
        elif e.verb == "history_remove":
            db.executemany("DELETE FROM watched WHERE account = ? AND identity = ?", keys)

    @reads
    def recent_watched(self, since: float) -> list[tuple[str, str, float]]:
        """(account, item identity, when) of the watched stops decided since ``since``."""
        rows = self._db.execute("SELECT account, identity, at FROM watched WHERE at >= ? ORDER BY at",
                                (since,)).fetchall()
        return [(str(a), str(i), float(t)) for a, i, t in rows]
