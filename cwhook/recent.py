"""`cwhook recent`: the decision journal, one line per event, newest last.

It reads the state file read-only and takes no lock, so it works while the
daemon runs and while it is stopped. The lines are made here (pure); the rows
come from cwhook/journal.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from cwhook import journal
from cwhook.config import Config, user_name
from cwhook.store import FILE_NAME

DEFAULT_ACCOUNT = "default"


def _pct(value: float | None) -> str:
    if value is None:
        return "?%"
    return f"{value:.0f}%" if abs(value - round(value)) < 0.05 else f"{value:.1f}%"


def _clock(ts: float, day: bool = True) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" if day else "%H:%M:%S", time.localtime(ts))


def action_text(a: journal.Action) -> str:
    """``stop 97% sent (201)``, ``pause 40% retrying after 3 failed attempts: 503: Trakt server error``."""
    text = f"{a.verb} {_pct(a.progress)} {a.state.replace('_', ' ')}"
    if a.status is not None and a.state in ("sent", "failed"):
        text += f" ({a.status})"
    if a.state in ("retrying", "set_aside"):
        text += f" after {a.attempts} failed attempt{'s' if a.attempts != 1 else ''}"
    elif a.attempts > 1:
        text += f" after {a.attempts} attempts"
    detail = a.detail
    if detail and a.status is not None and detail.startswith(f"{a.status}: "):
        detail = detail[len(f"{a.status}: "):]
    if detail:
        text += f": {detail}"
    return text


def line(e: journal.Entry) -> str:
    """One readable line for one event."""
    head = f"{_clock(e.at)}  {e.server} {e.user or '-'}"
    if e.item:
        head += f"  {e.item}"
    if e.action is not None:
        head += f"  {e.action}" + (f" {_pct(e.progress)}" if e.progress is not None else "")
    if e.repeats > 1:
        head += f" (x{e.repeats}, last {_clock(e.last_at, day=False)})"
    if e.ignored is not None:
        return f"{head}  -> ignored: {e.ignored}" + (f" ({e.detail})" if e.detail else "")
    parts = []
    named = set(e.decisions) != {DEFAULT_ACCOUNT}
    for account, d in e.decisions.items():
        text = str(d.get("reason", "?"))
        notes = d.get("notes") or []
        if notes:
            text += f" ({', '.join(str(n) for n in notes)})"
        acts = [action_text(a) for a in e.actions if a.account == account]
        if acts:
            text += ": " + "; ".join(acts)
        parts.append(f"{account}: {text}" if named else text)
    return f"{head}  -> " + (" | ".join(parts) if parts else "?")


def _problem(path: Path, exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return (f"no journal yet: {path} does not exist. The daemon creates it at its first start; "
                "check state.dir in the config file")
    if isinstance(exc, PermissionError) or (isinstance(exc, sqlite3.Error) and not os.access(path, os.R_OK)):
        try:
            owner = user_name(path.stat().st_uid)
        except OSError:
            owner = user_name(path.parent.stat().st_uid) if path.parent.exists() else "the service user"
        return (f"cannot read {path} as user {user_name()} (it belongs to {owner}): run the command as "
                f"that user (`sudo -u {owner} cwhook recent ...`)")
    return f"cannot read the journal in {path}: {exc}"


def cmd_recent(config: Config, limit: int, user: str | None, item: str | None, account: str | None,
               as_json: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    path = config.state_dir / FILE_NAME
    try:
        entries = journal.read(path, limit, user, item, account)
    except (OSError, sqlite3.Error) as exc:
        err.write(f"cwhook: {_problem(path, exc)}\n")
        return 1
    for e in entries:
        if as_json:
            data: dict[str, Any] = e.to_dict()
            out.write(json.dumps(data, ensure_ascii=False) + "\n")
        else:
            out.write(line(e) + "\n")
    if not entries and not as_json:
        err.write("nothing in the journal" + (" matches" if user or item or account else " yet") + "\n")
    return 0
