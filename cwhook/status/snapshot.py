"""One status snapshot of the daemon, rendered three ways (pure).

``build`` makes a ``Snapshot`` from the store's stats, each Trakt account's auth
and client state, and the event counters; nothing in it reads the disk, so it
is ready while SQLite is locked. Its renderers:

* ``to_healthz``: the JSON of ``GET /healthz``;
* cwhook/status/metrics.py: ``GET /metrics`` (prometheus_client reads the snapshot at
  scrape time);
* ``to_text``: what ``cwhook status`` prints for a person, from the snapshot
  read back from ``/healthz`` (``from_healthz``).

Each account (docs/configuration.md, Households) has its own block; the ``trakt`` block of ``/healthz``
keeps describing the account named ``default``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeGuard

from cwhook.config.schema import DEFAULT_ACCOUNT
from cwhook.kernel import clock as clocks
from cwhook.kernel import hint
from cwhook.kernel.termtext import visible
from cwhook.kernel.vocab import PROBLEMS, Problem
from cwhook.status.health import Counters, problems

# What to do about each problem /healthz may report (vocab.PROBLEMS: the order it lists them).
FIXES: dict[Problem, str] = {
    "config_refused": "the config file on disk is refused and the daemon runs on its previous settings; "
                      "fix the file (`cwhook check-config` lists the problems)",
    "trakt_not_authorized": "nothing is sent to Trakt until you log in: with your Trakt app's client_id "
                            "and client_secret under `trakt:` in the config file, run `cwhook auth` "
                            "(as the service user)",
    "trakt_needs_auth": "Trakt refused the refresh token; the outbox is kept: run `cwhook auth` "
                        "(as the service user)",
    "trakt_refresh_retrying": "the last token refresh failed for a passing reason (rate limit, outage, a "
                              "proxy's page); the refresh token is still good and the refresh is retried, "
                              "honouring Retry-After; the outbox is kept and resumes once it succeeds",
    "trakt_unreachable": "the last Trakt call failed (outage, rate limit or network); nothing is lost, "
                         "the outbox retries: check the network and https://status.trakt.tv",
    "trakt_answer_not_trakt": "the last Trakt call got an answer that is not Trakt's API (a redirect, whose "
                              "Location `last_error` shows, an HTML page, broken or oversized JSON): a "
                              "captive portal, a proxy or a wrong trakt.api_url. Nothing was counted as sent; "
                              "the entry is retried, then set aside (`cwhook outbox`)",
    "outbox_aging": "a Trakt action has waited more than 15 minutes; `cwhook recent` shows each one's "
                    "last error",
    "outbox_set_aside": "an outbox entry is no longer tried: it failed 3 times for a reason that is not "
                        "Trakt's, or cwhook cannot tell whether Trakt already has that play. `cwhook outbox` "
                        "lists them with the reason; `cwhook outbox retry`, `send` or `drop` resolves them",
    "tokens_not_saved": "a refreshed Trakt token could not be written to the config file; it is used from "
                        "memory and the write is retried every minute: make the config directory writable "
                        "by the service user",
    "store_unavailable": "an event could not be stored and was answered 503 (disk full, state.dir not "
                         "writable, or the database locked by another program): free space or fix "
                         "state.dir",
    "account_removed_with_pending": "an account left the config file with Trakt actions still waiting; "
                                    "they are kept and delivered if it comes back: put it back, or "
                                    "ignore this",
}
OTHER_FIX = "see docs/troubleshooting.md"


def refused_text(path: Path, summary: str) -> str:
    """/healthz's ``config_refused``: problem codes and lines (``yaml_indentation at line 31``),
    never words of the file (which may hold secrets), and where to read the rest."""
    return (f"{path.name}: {summary}. The daemon keeps its previous settings; "
            f"`{hint.command('check-config', path)}` shows each problem and its fix; it is read again "
            "when it changes, on SIGHUP and every minute")


class AuthView(Protocol):
    """What the snapshot reads of an account's auth (cwhook.trakt.auth.TraktAuth)."""

    @property
    def authorized(self) -> bool: ...
    @property
    def expires_at(self) -> int: ...
    needs_auth: str | None
    unsaved: str | None
    refresh_retrying: str | None


class ClientView(Protocol):
    """What the snapshot reads of an account's Trakt client (cwhook.trakt.client.TraktClient)."""

    last_success_at: float | None
    last_error: str | None
    unreachable: bool
    not_trakt: bool


class StatsView(Protocol):
    """What the snapshot reads of the store (cwhook.state.store.Stats)."""

    @property
    def pending(self) -> int: ...
    @property
    def set_aside(self) -> int: ...
    @property
    def inbox(self) -> int: ...
    @property
    def oldest_born(self) -> float | None: ...  # steady time (cwhook/kernel/clock.py)
    @property
    def by_account(self) -> tuple[tuple[str, int, float | None], ...]: ...  # (name, pending, oldest_born)


@dataclass(frozen=True)
class AccountStatus:
    authorized: bool = False
    needs_auth: str | None = None
    dry_run: bool = True
    token_expires_in_s: int | None = None
    outbox_pending: int = 0
    oldest_age_s: float | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Counts:
    """A still copy of the counters: totals (in /healthz) and by label (in /metrics)."""

    received: int = 0
    queued: int = 0
    ignored: int = 0
    sent: int = 0
    suppressed: int = 0
    failed: int = 0
    would_send: int = 0
    webhooks: tuple[tuple[str, str, int], ...] = ()  # (server, outcome, n)
    ignored_reasons: tuple[tuple[str, str, int], ...] = ()  # (server, reason, n)
    decisions: tuple[tuple[str, int], ...] = ()  # (reason, n)
    trakt_requests: tuple[tuple[str, str, str, int], ...] = ()  # (account, endpoint, status, n)
    connections: tuple[tuple[str, int], ...] = ()  # (reason, n): closed by the edge

    @classmethod
    def of(cls, c: Counters) -> Counts:
        return cls(**c.as_dict(),
                   webhooks=tuple(sorted((s, o, n) for (s, o), n in c.webhooks.items())),
                   ignored_reasons=tuple(sorted((s, r, n) for (s, r), n in c.ignored_reasons.items())),
                   decisions=tuple(sorted(c.decisions.items())),
                   trakt_requests=tuple(sorted((a, e, s, n) for (a, e, s), n in c.trakt_requests.items())),
                   connections=tuple(sorted(c.connections.items())))

    def totals(self) -> dict[str, int]:
        return {"received": self.received, "queued": self.queued, "ignored": self.ignored,
                "sent": self.sent, "suppressed": self.suppressed, "failed": self.failed,
                "would_send": self.would_send}


@dataclass(frozen=True)
class Snapshot:
    version: str
    status: str  # ok | degraded
    problems: tuple[str, ...]
    uptime_s: float = 0.0
    queue_depth: int = 0
    sessions: int = 0
    inbox_undecided: int = 0
    outbox_pending: int = 0  # every entry, set aside ones included
    outbox_oldest_age_s: float | None = None
    outbox_set_aside: int = 0
    accounts: Mapping[str, AccountStatus] = field(default_factory=dict)
    removed_accounts: Mapping[str, int] = field(default_factory=dict)  # name -> outbox pending
    counts: Counts = field(default_factory=Counts)
    config_refused: str | None = None  # why the file on disk is refused, with the fix

    @property
    def default(self) -> AccountStatus:
        """The account the ``trakt`` block describes."""
        return self.accounts.get(DEFAULT_ACCOUNT) or AccountStatus()


# --- building -------------------------------------------------------------------------


def _age(now: float, since: float | None) -> float | None:
    return None if since is None else round(max(0.0, now - since), 1)


def account_status(name: str, auth: AuthView, client: ClientView, dry_run: bool, stats: StatsView,
                   now: float, wall: float | None = None) -> AccountStatus:
    """One Trakt account's block: its auth, its client's last call, its part of the outbox.
    ``now`` is steady time (ages), ``wall`` the wall time (the token's expiry; default ``now``)."""
    pending, oldest = 0, None
    for account, count, created in stats.by_account:
        if account == name:
            pending, oldest = count, created
    age = _age(now, oldest)
    found = problems(auth.authorized, auth.needs_auth, client.unreachable, dry_run, age,
                     auth.refresh_retrying is not None, client.not_trakt)
    if auth.unsaved is not None:
        found.append("tokens_not_saved")
    expires = auth.expires_at
    return AccountStatus(
        authorized=auth.authorized, needs_auth=auth.needs_auth, dry_run=dry_run,
        token_expires_in_s=int(expires - (now if wall is None else wall)) if expires else None,
        outbox_pending=pending, oldest_age_s=age,
        last_success_at=client.last_success_at, last_error=client.last_error,
        problems=tuple(found))


def known(name: str) -> TypeGuard[Problem]:
    """``name`` is a problem code of this version (a newer daemon may report others)."""
    return name in PROBLEMS


def _ordered(found: Iterable[str]) -> tuple[str, ...]:
    order: dict[str, int] = {name: i for i, name in enumerate(PROBLEMS)}
    unique = list(dict.fromkeys(found))
    return tuple(sorted(unique, key=lambda p: (order.get(p.split(":")[0], len(order)), unique.index(p))))


def fix_for(problem: str, config_path: Path | None = None) -> str:
    """What to do about a problem (``NAME:account`` problems share their NAME's fix); the
    commands in it name ``config_path`` when it is not the default file."""
    name, _, account = problem.partition(":")
    fix = FIXES[name] if known(name) else OTHER_FIX
    for args in ("check-config", "recent"):
        fix = fix.replace(f"`cwhook {args}`", f"`{hint.command(args, config_path)}`")
    fix = fix.replace("`cwhook auth`", f"`{hint.auth(account or DEFAULT_ACCOUNT, config_path)}`")
    if account:
        fix += f" (account {account})"
    return fix


def build(*, version: str, started: float, queue_depth: int, sessions: int, stats: StatsView,
          accounts: Mapping[str, AccountStatus], counters: Counters, config_refused: str | None = None,
          store_unavailable: bool = False, removed: Mapping[str, int] | None = None,
          now: float | None = None) -> Snapshot:
    """``started`` and ``now`` are steady times (cwhook/kernel/clock.py), like the store's."""
    now = clocks.now() if now is None else now
    daemon: list[Problem] = []  # listed in the order of vocab.PROBLEMS (``_ordered``)
    if config_refused:
        daemon.append("config_refused")
    if stats.set_aside:
        daemon.append("outbox_set_aside")
    if store_unavailable:
        daemon.append("store_unavailable")
    found: list[str] = [*daemon]
    for name, account in accounts.items():  # another account's problems are named for it
        found += [p if name == DEFAULT_ACCOUNT else f"{p}:{name}" for p in account.problems]
    removed_pending: Problem = "account_removed_with_pending"
    found += [f"{removed_pending}:{name}" for name in sorted(removed or {})]
    ordered = _ordered(found)
    return Snapshot(
        version=version, status="degraded" if ordered else "ok", problems=ordered,
        uptime_s=round(now - started, 1), queue_depth=queue_depth, sessions=sessions,
        inbox_undecided=stats.inbox, outbox_pending=stats.pending,
        outbox_oldest_age_s=_age(now, stats.oldest_born), outbox_set_aside=stats.set_aside,
        accounts=dict(sorted(accounts.items(), key=lambda kv: (kv[0] != DEFAULT_ACCOUNT, kv[0]))),
        removed_accounts=dict(sorted((removed or {}).items())), counts=Counts.of(counters),
        config_refused=config_refused)


# --- /healthz -------------------------------------------------------------------------


def _account_dict(a: AccountStatus) -> dict[str, Any]:
    return {"authorized": a.authorized, "needs_auth": a.needs_auth, "dry_run": a.dry_run,
            "token_expires_in_s": a.token_expires_in_s, "outbox_pending": a.outbox_pending,
            "oldest_age_s": a.oldest_age_s, "last_success_at": a.last_success_at,
            "last_error": a.last_error, "problems": list(a.problems)}


def to_healthz(s: Snapshot) -> dict[str, Any]:
    d = s.default
    return {
        "status": s.status,
        "problems": list(s.problems),
        **({"config_refused": s.config_refused} if s.config_refused else {}),
        "version": s.version,
        "uptime_s": s.uptime_s,
        "queue_depth": s.queue_depth,
        "sessions": s.sessions,
        "outbox": {"pending": s.outbox_pending, "oldest_age_s": s.outbox_oldest_age_s,
                   "set_aside": s.outbox_set_aside},
        "inbox": {"undecided": s.inbox_undecided},
        "trakt": {"authorized": d.authorized, "dry_run": d.dry_run, "needs_auth": d.needs_auth,
                  "token_expires_in_s": d.token_expires_in_s, "last_success_at": d.last_success_at,
                  "last_error": d.last_error},
        "accounts": {name: _account_dict(a) for name, a in s.accounts.items()},
        **({"removed_accounts": {name: {"outbox_pending": n} for name, n in s.removed_accounts.items()}}
           if s.removed_accounts else {}),
        "counts": s.counts.totals(),
    }


def _get(data: Any, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = data.get(key, default) if isinstance(data, dict) else default
    if isinstance(value, bool) and kind is not bool and not (isinstance(kind, tuple) and bool in kind):
        return default
    return value if isinstance(value, kind) else default


def _opt_num(data: Any, key: str) -> Any:
    return _get(data, key, (int, float), None)


def _account_from(data: Any) -> AccountStatus:
    return AccountStatus(
        authorized=_get(data, "authorized", bool, False), needs_auth=_get(data, "needs_auth", str, None),
        dry_run=_get(data, "dry_run", bool, True), token_expires_in_s=_get(data, "token_expires_in_s", int, None),
        outbox_pending=_get(data, "outbox_pending", int, 0), oldest_age_s=_opt_num(data, "oldest_age_s"),
        last_success_at=_opt_num(data, "last_success_at"), last_error=_get(data, "last_error", str, None),
        problems=tuple(p for p in _get(data, "problems", list, []) if isinstance(p, str)))


def from_healthz(data: dict[str, Any]) -> Snapshot:
    """The snapshot a /healthz answer describes (what `cwhook status` prints).

    Tolerant: a daemon of another version may lack keys or have more.
    """
    outbox, inbox, trakt = data.get("outbox"), data.get("inbox"), data.get("trakt")
    accounts = {str(name): _account_from(a) for name, a in _get(data, "accounts", dict, {}).items()}
    if "accounts" not in data and isinstance(trakt, dict):  # a daemon from before accounts
        accounts[DEFAULT_ACCOUNT] = _account_from(
            {**trakt, "outbox_pending": _get(outbox, "pending", int, 0),
             "oldest_age_s": _opt_num(outbox, "oldest_age_s")})
    counts = _get(data, "counts", dict, {})
    totals = {k: _get(counts, k, int, 0) for k in Counts().totals()}
    status = _get(data, "status", str, "degraded")
    return Snapshot(
        version=_get(data, "version", str, "?"), status=status,
        problems=tuple(p for p in _get(data, "problems", list, []) if isinstance(p, str)),
        uptime_s=_get(data, "uptime_s", (int, float), 0.0), queue_depth=_get(data, "queue_depth", int, 0),
        sessions=_get(data, "sessions", int, 0), inbox_undecided=_get(inbox, "undecided", int, 0),
        outbox_pending=_get(outbox, "pending", int, 0), outbox_oldest_age_s=_opt_num(outbox, "oldest_age_s"),
        outbox_set_aside=_get(outbox, "set_aside", int, 0), accounts=accounts, counts=Counts(**totals),
        removed_accounts={str(n): _get(v, "outbox_pending", int, 0)
                          for n, v in _get(data, "removed_accounts", dict, {}).items()},
        config_refused=_get(data, "config_refused", str, None))


# --- `cwhook status` ------------------------------------------------------------------


def duration(seconds: float) -> str:
    """A short human duration: 45s, 12m, 3h 05m, 2d 4h."""
    s = int(abs(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _account_line(name: str, a: AccountStatus, now: float) -> str:
    if a.needs_auth:
        state = f"needs auth ({a.needs_auth})"
    elif a.authorized:
        state = "authorized"
        if a.token_expires_in_s is not None:
            state += (f", token expires in {duration(a.token_expires_in_s)}" if a.token_expires_in_s > 0
                      else ", token expired (refreshed when next used)")
    else:
        state = "not authorized"
    if a.dry_run:
        state += ", dry-run (nothing is sent)"
    parts = [state, f"outbox {a.outbox_pending}"
             + (f" (oldest {duration(a.oldest_age_s)})" if a.oldest_age_s is not None else "")]
    if a.last_success_at is not None:
        parts.append(f"last success {duration(now - a.last_success_at)} ago")
    if a.last_error:
        parts.append(f"last error: {a.last_error}")
    return f"  {name}: " + "; ".join(parts)


def to_text(s: Snapshot, now: float | None = None, config_path: Path | None = None) -> str:
    """What `cwhook status` prints: overall state, each problem with its fix, a line per account,
    the outbox and the counts. Every line is escaped for the terminal (cwhook/kernel/termtext.py): the
    daemon's texts quote Trakt's answers and the file."""
    now = time.time() if now is None else now
    lines = [f"cwhook {s.version}: {s.status.upper()} (up {duration(s.uptime_s)})"]
    if s.problems:
        lines.append("problems:")
        for p in s.problems:
            fix = s.config_refused if p == "config_refused" and s.config_refused else fix_for(p, config_path)
            lines.append(f"  {p}: {fix}")
    lines.append("accounts:" if s.accounts else "accounts: none")
    for name, account in s.accounts.items():
        lines.append(_account_line(name, account, now))
    for name, pending in s.removed_accounts.items():
        lines.append(f"  {name}: removed from the config file; outbox {pending}, kept until it comes back")
    oldest = f" (oldest {duration(s.outbox_oldest_age_s)})" if s.outbox_oldest_age_s is not None else ""
    lines.append(f"outbox: {s.outbox_pending} pending{oldest}, {s.outbox_set_aside} set aside; "
                 f"inbox: {s.inbox_undecided} undecided; queue: {s.queue_depth}")
    c = s.counts
    lines.append(f"counts: received {c.received}, queued {c.queued}, ignored {c.ignored}, sent {c.sent}, "
                 f"suppressed {c.suppressed}, failed {c.failed}"
                 + (f", would send {c.would_send}" if c.would_send else ""))
    lines.append(f"what happened to each event: `{hint.command('recent', config_path)}`")
    return "".join(visible(line) + "\n" for line in lines)
