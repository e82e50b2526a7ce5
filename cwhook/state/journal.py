"""The decision journal: what happened to each event, kept in the store's SQLite file.

For every event: what arrived (server, user, item, action, progress), what the
rules decided for each Trakt account (reason code and notes), and for each
resulting Trakt action its outcome as it happens: ``pending``, ``retrying``
(with the last error), ``sent`` (with Trakt's status), ``failed`` (with the
reason), ``stale``, ``set_aside`` or ``dry_run``. Events answered 200 ignored
are kept too, with their reason.

Writing: the functions here take the store's connection *inside* the store's
own transactions (cwhook/state/store.py): journal rows are committed with the inbox
rows (events ignored at ingest), with the decisions (``Store.decide``) and with
the outbox changes (``Store.remove``/``reschedule``), so the journal costs no
commit of its own, and one INSERT per event (append-only; ``Writer``). Repeated
Jellyfin progress reports that change nothing fold into one row (``repeats``).
Bounded: the newest ``MAX_EVENTS`` rows, none older than ``MAX_AGE``.

Reading (``read``, in cwhook/state/journalread.py): ``cwhook recent`` opens the file read-only, without the
daemon's lock, so it works whether the daemon runs or not. No tokens are ever
written here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cwhook.kernel import jsontext
from cwhook.kernel.event import Event
from cwhook.kernel.records import quick_init
from cwhook.sources.payload import safe_text
from cwhook.state.journalread import Action, Entry, JournalUnreadable, open_read_only, read

MAX_EVENTS = 10_000
MAX_AGE = 30 * 86400.0
AGE_PRUNE_EVERY = 600.0  # seconds between two prunes by age (a scan: ``at`` has no index)
SESSIONS_REMEMBERED = 4096  # sessions whose newest row is known, for folding repeats

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    inbox_id INTEGER,
    at REAL NOT NULL,
    last_at REAL NOT NULL,
    repeats INTEGER NOT NULL DEFAULT 1,
    server TEXT NOT NULL,
    user TEXT,
    item TEXT,
    action TEXT,
    progress REAL,
    session TEXT,
    ignored TEXT,
    detail TEXT,
    decisions TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS journal_action (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id INTEGER NOT NULL,
    outbox_id INTEGER,
    account TEXT NOT NULL,
    verb TEXT NOT NULL,
    progress REAL,
    state TEXT NOT NULL DEFAULT 'pending',
    status INTEGER,
    detail TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_action_event ON journal_action (event_id);
CREATE INDEX IF NOT EXISTS journal_action_outbox ON journal_action (outbox_id);
"""

STATES = ("pending", "retrying", "sent", "failed", "stale", "set_aside", "dry_run")
# A delivery result (cwhook.trakt.delivery.Outcome.result) -> the state of its action.
_STATE_OF = {"sent": "sent", "late_history": "sent", "already_in_history": "sent", "stale": "stale",
             "dry_run": "dry_run", "failed": "failed"}
_NOTE_OF = {"late_history": "late: added to the history with its real time",
            "stale": "waited longer than the rest of the item: dropped",
            "already_in_history": "already in the history (an earlier attempt got through)"}
FOLDED = "progress_noted"  # repeats of this reason, with nothing sent, fold into one row


def _same_ignored(reason: str, row: tuple[Any, ...]) -> bool:
    return bool(row[1] == reason)


def _only_folded(row: tuple[Any, ...]) -> bool:
    """A journal row whose every decision is a progress report that changed nothing."""
    decisions = json.loads(row[2] or "{}")
    return row[1] is None and bool(decisions) and all(d.get("reason") == FOLDED for d in decisions.values())


def _session(key: str) -> str:
    """The folding map's key: bounded in size (a session key may hold a megabyte-long title)."""
    if len(key) <= 200:
        return key
    return "#" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _text(value: str | None) -> str | None:
    return None if value is None else safe_text(value)


@quick_init
@dataclass(frozen=True)
class Arrived:
    """What the journal keeps of an event as it arrived."""

    at: float
    server: str
    user: str | None = None
    item: str | None = None
    action: str | None = None
    progress: float | None = None
    session: str | None = None

    @classmethod
    def of(cls, event: Event) -> Arrived:
        return cls(at=event.received_at, server=event.source, user=event.user_name, item=event.label(),
                   action=event.action, progress=event.progress, session=event.session_key)


@quick_init
@dataclass(frozen=True)
class Noted:
    """One decision of the rules, for one account, as the worker hands it to ``Store.decide``."""

    inbox_id: int | None
    arrived: Arrived
    reason: str
    account: str = "default"
    notes: tuple[str, ...] = ()
    progress: float | None = None
    sends: tuple[int, ...] = ()  # indexes into the outbox entries of the same ``decide`` call


@quick_init
@dataclass(frozen=True)
class IgnoredRow:
    """An event answered 200 ignored at ingest (``arrived`` holds what was understood of it)."""

    arrived: Arrived
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Result:
    """How one outbox entry ended (``Store.remove``): a delivery result and Trakt's status."""

    result: str  # sent, late_history, already_in_history, stale, dry_run, failed
    status: int | None = None
    detail: str | None = None


# --- writing (inside the store's transactions) -----------------------------------------


class Writer:
    """The journal's SQL, on the store's connection, in the store's transactions.

    Append-only: per event one INSERT into a table indexed by its row id alone (no
    lookup, no unique index: the journal must not slow the endpoint down). An event
    decided again later (a pause held by the debounce, then sent or dropped when its
    window ends; an event replayed after a crash) gets a further row with the same
    inbox id, and ``read`` merges the rows of one event into one entry.
    """

    def __init__(self, max_events: int = MAX_EVENTS, max_age: float = MAX_AGE) -> None:
        self.max_events = max_events
        self.max_age = max_age
        self._newest: OrderedDict[str, int] = OrderedDict()  # session -> its newest row (for folding)
        self._age_pruned = float("-inf")

    def _insert(self, db: sqlite3.Connection, a: Arrived, inbox_id: int | None, ignored: str | None,
                detail: str | None, decisions: str) -> int:
        cur = db.execute(
            "INSERT INTO journal (inbox_id, at, last_at, server, user, item, action, progress, session, ignored,"
            " detail, decisions) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (inbox_id, a.at, a.at, a.server, _text(a.user), _text(a.item), a.action, a.progress, _text(a.session),
             ignored, _text(detail), decisions))
        row_id = int(cur.lastrowid or 0)
        if a.session is not None:
            key = _session(a.session)
            self._newest[key] = row_id
            self._newest.move_to_end(key)
            if len(self._newest) > SESSIONS_REMEMBERED:
                self._newest.popitem(last=False)
        return row_id

    def ignored(self, db: sqlite3.Connection, rows: Sequence[IgnoredRow], now: float) -> None:
        written = False
        for row in rows:
            a = row.arrived
            if self._fold(db, a, functools.partial(_same_ignored, row.reason)) is None:
                self._insert(db, a, None, row.reason, row.detail, "{}")
                written = True
        if written:
            self.prune(db, now)

    def decided(self, db: sqlite3.Connection, noted: Sequence[Noted], outbox_ids: Sequence[int],
                verbs: Sequence[tuple[str, str, float]], now: float) -> None:
        """Decisions and the actions they put in the outbox (``verbs[i]``: account, verb, progress
        of the entry whose id is ``outbox_ids[i]``). The decisions of one event in one call (one per
        account, one per episode of a multi-episode file) make one row."""
        events: dict[object, tuple[Noted, dict[str, dict[str, Any]], list[int]]] = {}
        for n in noted:
            decision: dict[str, Any] = {"reason": n.reason}
            if n.notes:
                decision["notes"] = list(n.notes)
            if n.progress is not None:
                decision["progress"] = round(n.progress, 2)
            _, decisions, sends = events.setdefault(n.inbox_id if n.inbox_id is not None else id(n), (n, {}, []))
            decisions[n.account] = decision
            sends += n.sends
        written = False
        for first, decisions, sends in events.values():
            a = first.arrived
            event_id = None
            if not sends and all(d["reason"] == FOLDED for d in decisions.values()):
                event_id = self._fold(db, a, _only_folded)
            if event_id is None:
                event_id = self._insert(db, a, first.inbox_id, None, None, jsontext.dumps(decisions))
                written = True
            for i in sends:
                account, verb, progress = verbs[i]
                db.execute(
                    "INSERT INTO journal_action (event_id, outbox_id, account, verb, progress, updated_at)"
                    " VALUES (?,?,?,?,?,?)", (event_id, outbox_ids[i], account, verb, progress, now))
        if written:
            self.prune(db, now)

    def _fold(self, db: sqlite3.Connection, a: Arrived, same: Callable[[tuple[Any, ...]], bool]) -> int | None:
        """Fold a repeat into its session's newest row when ``same`` says that row tells the same
        (and nothing was sent for it): the row's id, or None when a row of its own is needed."""
        newest = None if a.session is None else self._newest.get(_session(a.session))
        if newest is None:
            return None
        row = db.execute("SELECT id, ignored, decisions, action FROM journal WHERE id = ?", (newest,)).fetchone()
        if row is None or row[3] != a.action or not same(row):
            return None
        if db.execute("SELECT 1 FROM journal_action WHERE event_id = ? LIMIT 1", (row[0],)).fetchone():
            return None
        db.execute("UPDATE journal SET repeats = repeats + 1, last_at = MAX(last_at, ?), progress = ?"
                   " WHERE id = ?", (a.at, a.progress, row[0]))
        return int(row[0])

    def result(self, db: sqlite3.Connection, outbox_id: int, attempts: int, result: Result | None,
               now: float) -> int | None:
        """An outbox entry is done: its action's final state. The journal row's id (for a follow-up)."""
        row = db.execute("SELECT event_id FROM journal_action WHERE outbox_id = ?", (outbox_id,)).fetchone()
        if row is None:
            return None
        if result is not None:
            detail = result.detail or _NOTE_OF.get(result.result)
            # Without a word of its own, an outcome keeps the error of the attempt before it.
            db.execute("UPDATE journal_action SET state = ?, status = ?,"
                       " detail = COALESCE(?, 'earlier: ' || detail), attempts = ?, updated_at = ?"
                       " WHERE outbox_id = ?",
                       (_STATE_OF.get(result.result, result.result), result.status, _text(detail), attempts,
                        now, outbox_id))
        return int(row[0])

    def follow_up(self, db: sqlite3.Connection, event_id: int, outbox_id: int, account: str, verb: str,
                  progress: float, now: float) -> None:
        """An action the delivery of another one added (a watchlist removal after a watched movie)."""
        db.execute("INSERT INTO journal_action (event_id, outbox_id, account, verb, progress, updated_at)"
                   " VALUES (?,?,?,?,?,?)", (event_id, outbox_id, account, verb, progress, now))

    def retrying(self, db: sqlite3.Connection, outbox_id: int, attempts: int, error: str, set_aside: bool,
                 now: float) -> None:
        db.execute("UPDATE journal_action SET state = ?, detail = ?, attempts = ?, updated_at = ?"
                   " WHERE outbox_id = ?",
                   ("set_aside" if set_aside else "retrying", _text(error), attempts, now, outbox_id))

    def prune(self, db: sqlite3.Connection, now: float) -> None:
        """Keep the newest ``max_events`` events (after every write that added one: by index),
        none older than ``max_age`` (every ``AGE_PRUNE_EVERY`` seconds: a scan)."""
        newest = db.execute("SELECT MAX(id) FROM journal").fetchone()[0]
        if newest is None:
            return
        # Row ids only grow (AUTOINCREMENT): the newest max_events are among the last max_events ids.
        removed = db.execute("DELETE FROM journal WHERE id <= ?", (newest - self.max_events,)).rowcount
        if not now - AGE_PRUNE_EVERY < self._age_pruned <= now:
            self._age_pruned = now
            removed += db.execute("DELETE FROM journal WHERE at < ?", (now - self.max_age,)).rowcount
        if removed > 0:
            # By index: actions of events older than the oldest kept (an odd one left over from an
            # event pruned by age out of order goes with the next ones; nobody reads it).
            db.execute("DELETE FROM journal_action WHERE event_id < (SELECT MIN(id) FROM journal)")

__all__ = ["Action", "Arrived", "Entry", "IgnoredRow", "JournalUnreadable", "Noted", "Result", "Writer",
           "open_read_only", "read"]
