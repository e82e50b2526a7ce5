"""`cwhook recent`: the decision journal, one line per event, newest last.

It reads the state file read-only and takes no lock, so it works while the
daemon runs and while it is stopped. The lines are made here (pure); the rows
come from cwhook/state/journal.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from cwhook.config.schema import Config, owner_name, owning, run_as
from cwhook.kernel import hint
from cwhook.kernel.termtext import json_line, visible
from cwhook.kernel.vocab import TEST
from cwhook.state import journal
from cwhook.state.store import FILE_NAME


def _pct(value: float | None) -> str:
    if value is None:
        return "?%"
    return f"{value:.0f}%" if abs(value - round(value)) < 0.05 else f"{value:.1f}%"


def _clock(ts: float, day: bool = True) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" if day else "%H:%M:%S", time.localtime(ts))


def action_text(a: journal.Action) -> str:
    """``stop 97% sent (201)``, ``pause 40% retrying (3 failed attempts): 503: Trakt server error``."""
    text = f"{a.verb} {_pct(a.progress)} {a.state.replace('_', ' ')}"
    if a.status is not None and a.state in ("sent", "failed"):
        text += f" ({a.status})"
    if a.state in ("retrying", "set_aside"):
        text += f" ({a.attempts} failed attempt{'s' if a.attempts != 1 else ''})"
    elif a.attempts > 1:
        text += f" after {a.attempts} attempts"
    detail = a.detail
    if detail and a.status is not None and detail.startswith(f"{a.status}: "):
        detail = detail[len(f"{a.status}: "):]
    if detail:
        text += f": {detail}"
    return text


def line(e: journal.Entry) -> str:
    """One readable line for one event (what came from outside escaped: see cwhook/kernel/termtext.py)."""
    return visible(_line(e))


def _line(e: journal.Entry) -> str:
    head = f"{_clock(e.at)}  {e.server} {e.user or '-'}"
    if e.item:
        head += f"  {e.item}"
    if e.action is not None:
        head += f"  {e.action}" + (f" {_pct(e.progress)}" if e.progress is not None else "")
    if e.repeats > 1:
        head += f" (x{e.repeats}, last {_clock(e.last_at, day=False)})"
    if e.ignored == TEST:  # a request with X-Cwhook-Dry-Run: nothing was stored or sent
        return f"{head}  -> test: {e.detail or '?'}"
    if e.ignored is not None:
        return f"{head}  -> ignored: {e.ignored}" + (f" ({e.detail})" if e.detail else "")
    parts = []
    for account, d in e.decisions.items():
        reason = str(d.get("reason", "?"))
        notes = d.get("notes") or []
        acts = [action_text(a) for a in e.actions if a.account == account]
        # "sent" only says that something goes to Trakt: its actions say what became of it.
        text = "" if reason == "sent" and acts and not notes else reason
        if notes:
            text += f" ({', '.join(str(n) for n in notes)})"
        if acts:
            text += (": " if text else "") + "; ".join(acts)
        parts.append(f"{account}: {text}")  # every account named, the default one too
    return f"{head}  -> " + (" | ".join(parts) if parts else "?")


def _problem(path: Path, exc: BaseException, config_path: Path | None = None) -> str:
    if isinstance(exc, FileNotFoundError):
        return (f"no journal yet: {path} does not exist. The daemon creates it at its first start; "
                "check state.dir in the config file")
    if isinstance(exc, PermissionError) or (isinstance(exc, sqlite3.Error) and not os.access(path, os.R_OK)):
        uid, _ = owning(path)  # the file's owner, or that of the directory that hides it
        return (f"cannot read {path} as user {owner_name(os.geteuid())} (it belongs to {owner_name(uid)}): run "
                f"the command as that user (`{run_as(uid, hint.command('recent', config_path))}`)")
    return f"cannot read the journal in {path}: {exc}"


EXIT_USAGE = 2


def cmd_recent(config: Config, limit: int, user: str | None, item: str | None, account: str | None,
               as_json: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    path = config.state_dir / FILE_NAME
    in_file = account is None or account in config.trakt.all_accounts()
    try:
        entries = journal.read(path, limit, user, item, account)
        # An account removed from the file is known while the journal has events of it.
        known = in_file or bool(entries) or bool(journal.read(path, 1, account=account))
    except FileNotFoundError as exc:
        if not in_file:
            known, entries = False, []
        else:
            err.write(f"cwhook: {_problem(path, exc, config.path)}\n")
            return 1
    except (OSError, sqlite3.Error) as exc:
        err.write(f"cwhook: {_problem(path, exc, config.path)}\n")
        return 1
    if not known:
        names = ", ".join(config.trakt.all_accounts()) or "none"
        err.write(f"cwhook: --account {visible(repr(account))}: there is no such Trakt account in {config.path} "
                  f"nor in the journal (accounts: {names})\n")
        return EXIT_USAGE
    for e in entries:
        if as_json:
            data: dict[str, Any] = e.to_dict()
            out.write(json_line(json.dumps(data, ensure_ascii=False)) + "\n")
        else:
            out.write(line(e) + "\n")
    if not entries and not as_json:
        err.write("nothing in the journal" + (" matches" if user or item or account else " yet") + "\n")
    return 0
