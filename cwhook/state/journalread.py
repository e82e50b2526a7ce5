"""Reading the decision journal (``cwhook recent``): cwhook/state/journal.py writes it.

``read`` opens the store's file read-only, without the daemon's lock, so it works whether the
daemon runs or not.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cwhook.config.schema import SERVERS

# --- reading (`cwhook recent`) ------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    account: str
    verb: str
    progress: float | None
    state: str
    status: int | None
    detail: str | None
    attempts: int
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"account": self.account, "verb": self.verb, "progress": self.progress, "state": self.state,
                "status": self.status, "detail": self.detail, "attempts": self.attempts,
                "updated_at": self.updated_at}


@dataclass(frozen=True)
class Entry:
    """One event of the journal, with what was decided and done about it."""

    id: int
    at: float
    last_at: float
    repeats: int
    server: str
    user: str | None
    item: str | None
    action: str | None
    progress: float | None
    ignored: str | None
    detail: str | None
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    actions: tuple[Action, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "at": self.at, "server": self.server, "user": self.user, "item": self.item, "action": self.action,
            "progress": None if self.progress is None else round(self.progress, 2),
        }
        if self.repeats > 1:
            out.update(repeats=self.repeats, last_at=self.last_at)
        if self.ignored is not None:
            out.update(ignored=self.ignored, detail=self.detail)
        else:
            out["decisions"] = {
                name: {**d, "actions": [a.to_dict() for a in self.actions if a.account == name]}
                for name, d in self.decisions.items()}
        return out


class JournalUnreadable(Exception):
    """The state file cannot be opened or read; the message says why and what to do."""


def open_read_only(path: Path) -> sqlite3.Connection:
    """The store's file, read-only: no lock taken, nothing written, no file created.

    While a write-ahead log exists (the daemon runs, or was killed), SQLite reads
    through it and its index, which are there already. Without one (the daemon
    stopped and folded it into the file), the file alone is the whole database:
    it is opened ``immutable``, so that SQLite creates no ``-wal``/``-shm`` files
    (owned by whoever runs the command) in the service's state dir.
    """
    if not path.exists():
        raise FileNotFoundError(path)
    wal = path.with_name(path.name + "-wal")
    mode = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    db = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True, timeout=2.0)
    db.execute("PRAGMA query_only=1")
    return db


def read(path: Path, limit: int = 20, user: str | None = None, item: str | None = None,
         account: str | None = None) -> list[Entry]:
    """The newest ``limit`` events that match, oldest first."""
    db = open_read_only(path)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "journal" not in tables:
            return []
        db.create_function("fold", 1, lambda v: v.casefold() if isinstance(v, str) else v, deterministic=True)
        where, args = [], []
        if user:
            server, _, name = user.rpartition(":")
            if server in SERVERS:
                where.append("server = ?")
                args.append(server)
            else:
                name = user
            where.append("fold(user) = ?")
            args.append(name.casefold())
        if item:
            where.append("instr(fold(item), ?) > 0")
            args.append(item.casefold())
        sql = ("SELECT id, at, last_at, repeats, server, user, item, action, progress, ignored, detail, decisions,"
               " inbox_id FROM journal" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id")
        # The rows of one event (same inbox id: decided again later) merge into one entry, the
        # later decisions winning.
        merged: dict[object, tuple[Entry, list[int]]] = {}
        for row in db.execute(sql, args):
            key = row[0] if row[12] is None else ("inbox", row[12])
            decisions = json.loads(row[11] or "{}")
            if key in merged:
                entry, ids = merged[key]
                merged[key] = (replace(entry, decisions={**entry.decisions, **decisions}), [*ids, row[0]])
            else:
                merged[key] = (Entry(id=row[0], at=row[1], last_at=row[2], repeats=row[3], server=row[4],
                                     user=row[5], item=row[6], action=row[7], progress=row[8], ignored=row[9],
                                     detail=row[10], decisions=decisions), [row[0]])
        chosen = sorted(merged.values(), key=lambda m: (m[0].at, m[0].id))
        if account is not None:
            chosen = [m for m in chosen if account in m[0].decisions]
        chosen = chosen[-limit:]
        owner = {row_id: i for i, (_, ids) in enumerate(chosen) for row_id in ids}
        actions: list[list[Action]] = [[] for _ in chosen]
        row_ids = list(owner)
        for i in range(0, len(row_ids), 500):
            part = row_ids[i:i + 500]
            for r in db.execute("SELECT event_id, account, verb, progress, state, status, detail, attempts,"
                                f" updated_at FROM journal_action WHERE event_id IN ({','.join('?' * len(part))})"
                                " ORDER BY id", part):
                actions[owner[r[0]]].append(Action(*r[1:]))
        return [replace(entry, actions=tuple(acts)) for (entry, _), acts in zip(chosen, actions, strict=True)]
    finally:
        db.close()
