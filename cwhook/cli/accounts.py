"""`cwhook accounts`: one line per Trakt account, read from the files (works with the daemon stopped).

Authorization comes from the config file; "needs auth" (a refresh Trakt refused) is known
only to a running daemon, so it is asked for its /healthz when it answers; outbox pending
comes from the store, opened read-only.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from cwhook.cli.status import local_get
from cwhook.config.address import healthz_url
from cwhook.config.schema import Config, unreadable
from cwhook.kernel import hint
from cwhook.kernel.termtext import visible
from cwhook.state.store import FILE_NAME
from cwhook.status.snapshot import duration
from cwhook.system.statedir import StateDirError


def pending_by_account(config: Config) -> dict[str, int]:
    path = config.state_dir / FILE_NAME
    try:
        with open(path, "rb"):  # what sqlite would meet, said the way a config file's is
            pass
    except FileNotFoundError:
        return {}
    except PermissionError as exc:
        raise StateDirError(unreadable(path, exc)) from None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            rows = db.execute("SELECT account, COUNT(*) FROM outbox GROUP BY account").fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return {}
    return {str(a): int(n) for a, n in rows}


def running_health(config: Config, timeout: float = 1.0) -> dict[str, Any] | None:
    """The running daemon's /healthz, or None when nothing (or nothing cwhook) answers."""
    try:
        data = json.loads(local_get(healthz_url(config.server.host, config.server.port), timeout))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _expiry(expires_at: int, now: float) -> str:
    if not expires_at:
        return "-"
    left = expires_at - now
    if left <= 0:
        return "expired (refreshed at the next start or call)"
    return f"expires in {duration(left)}"  # the format of `cwhook status`


def accounts_text(config: Config, health: dict[str, Any] | None = None, now: float | None = None) -> str:
    now = time.time() if now is None else now
    health = running_health(config) if health is None else health
    live = (health or {}).get("accounts") or {}
    pending = pending_by_account(config)
    lines = []
    accounts = config.trakt.all_accounts()
    for name, acc in accounts.items():
        state = "authorized" if acc.access_token else (
            f"not authorized: run `{hint.auth(name, config.path)}`")
        needs = (live.get(name) or {}).get("needs_auth")
        if needs:
            state = f"needs auth: {needs}"
        users = ", ".join(acc.users) if acc.users else "(no one)"
        lines.append(f"{name:<12} users: {users:<40} {state}; {_expiry(acc.expires_at, now)}; "
                     f"outbox pending: {pending.get(name, 0)}")
    for name, count in sorted(pending.items()):
        if name not in accounts:
            lines.append(f"{name:<12} (removed from the file) outbox pending: {count}, kept until it comes back")
    if health is None:
        lines.append("(the daemon is not answering; authorization is read from the file)")
    return "\n".join(visible(line) for line in lines)  # what the daemon said is escaped for the terminal
