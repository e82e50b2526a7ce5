"""Trakt accounts at run time: one unit per account, built once from the config (docs/configuration.md, Households).

Each account is independent: its own tokens and refresh (written back under its own
keys, one refresh at a time, its own token journal entries), needs-auth state,
dry-run when it has no access token, Trakt client (so its own 1 POST/s pacing:
Trakt's limit is per user) and outbox lane. One account's outage, 429 storm or
lost login never delays another's.

``Accounts.sync`` applies a (re)loaded config: new accounts get a unit and a lane,
changed ones take the file's tokens (never an older pair than the one in use), and
an account removed from the file stops its lane but keeps its outbox entries, which
``/healthz`` reports and which are delivered if the account comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from cwhook.config.file import ConfigFiles
from cwhook.config.schema import DEFAULT_ACCOUNT, AccountConfig, Config
from cwhook.kernel import clock as clocks
from cwhook.kernel import logs
from cwhook.state.store import AsyncStore, Stats, StoreUnavailable
from cwhook.state.tokenjournal import TokenJournal
from cwhook.status.health import Counters
from cwhook.trakt.auth import TraktAuth
from cwhook.trakt.client import CALL_TIMEOUT, POST_INTERVAL, RequestObserver, RetryPolicy, TraktClient
from cwhook.trakt.delivery import Lane, Options

log = logs.get("cwhook.trakt.accounts")


@dataclass(frozen=True)
class Wiring:
    """What the composition root hands every account besides its config."""

    files: ConfigFiles = field(default_factory=ConfigFiles)  # the daemon's one memory of its config file
    post_interval: float = POST_INTERVAL  # Trakt's 1 POST/s per user; 0 only against a fake Trakt
    retry_scale: float = 1.0  # below 1 only in tests: shorter waits before an outbox retry
    backoff_scale: float = 1.0  # below 1 only in tests: shorter back-offs of the client and the refresh
    timeout: float = CALL_TIMEOUT  # shorter only in tests: seconds one Trakt call may take


class Account:
    def __init__(self, cfg: AccountConfig, config: Config, journal: TokenJournal, db: AsyncStore,
                 counters: Counters, force_dry_run: Callable[[], bool],
                 observe: RequestObserver | None = None, wiring: Wiring | None = None) -> None:
        wiring = wiring or Wiring()
        self.name = cfg.name
        self.cfg = cfg
        self.config = config
        self._force_dry_run = force_dry_run
        self.auth = TraktAuth(config.path, config.trakt, journal=journal, account=cfg.name,
                              config_files=wiring.files, backoff_scale=wiring.backoff_scale)
        self.auth.observe = observe
        self.client = TraktClient(config.trakt.api_url, self.auth.tokens, self.auth.refresh,
                                  RetryPolicy().scaled(wiring.backoff_scale), wiring.timeout, account=cfg.name,
                                  observe=observe, post_interval=wiring.post_interval)
        self.lane = Lane(cfg.name, self.client, db, counters, self.options, lambda: self.auth.needs_auth,
                         retry_scale=wiring.retry_scale)
        self.task: asyncio.Task[None] | None = None
        self._db = db
        self._resuming: asyncio.Task[None] | None = None
        self.auth.on_refreshed = self._refreshed

    def _refreshed(self) -> None:
        """A refresh succeeded after failing: what waited for it is delivered at once."""
        self._resuming = asyncio.get_running_loop().create_task(self._resume(), name=f"resume-{self.name}")

    async def _resume(self) -> None:
        with contextlib.suppress(StoreUnavailable):  # then the entries keep their own times
            await self._db.call(self._db.store.retry_now, self.name)
        self.lane.wake.set()

    @property
    def dry_run(self) -> bool:
        return self._force_dry_run() or self.config.scrobble.dry_run or not self.auth.authorized

    @property
    def in_use(self) -> bool:
        """An account nobody is routed to (e.g. `default` with `users: []`) raises no alarms."""
        return bool(self.cfg.users)

    def options(self) -> Options:
        return Options(dry_run=self.dry_run,
                       watchlist_autoremove_movies=self.config.scrobble.watchlist_autoremove_movies)

    def update(self, cfg: AccountConfig, config: Config) -> bool:
        """A reload; True when the file brought new tokens (deliver what waited at once)."""
        old = (self.cfg.access_token, self.cfg.refresh_token)
        self.cfg, self.config = cfg, config
        self.auth.update_from_config(config.trakt)
        self.client.api_url = config.trakt.api_url.rstrip("/")
        self.lane.wake.set()
        return (cfg.access_token, cfg.refresh_token) != old


class Accounts:
    """The registry: every configured account's unit, by name, `default` first."""

    def __init__(self, config: Config, journal: TokenJournal, db: AsyncStore, counters: Counters,
                 force_dry_run: Callable[[], bool], observe: RequestObserver | None = None,
                 wiring: Wiring | None = None) -> None:
        self.observe = observe
        self.wiring = wiring or Wiring()
        self.journal = journal
        self.db = db
        self.counters = counters
        self.force_dry_run = force_dry_run
        self.units: dict[str, Account] = {}
        self._running = False
        self.sync(config)

    @property
    def default(self) -> Account:
        return self.units[DEFAULT_ACCOUNT]

    def __iter__(self) -> Iterator[Account]:
        return iter(self.units.values())

    def wake(self, names: Iterable[str] | None = None) -> None:
        """Wake the lanes of these accounts (new outbox entries: the others sleep on), or all."""
        for name in self.units if names is None else names:
            unit = self.units.get(name)
            if unit is not None:
                unit.lane.wake.set()

    def sync(self, config: Config) -> list[str]:
        """Apply a config; the names of accounts whose tokens the file changed."""
        wanted = config.trakt.all_accounts()
        renewed = []
        for name, cfg in wanted.items():
            unit = self.units.get(name)
            if unit is None:
                unit = self.units[name] = Account(cfg, config, self.journal, self.db, self.counters,
                                                  self.force_dry_run, self.observe, self.wiring)
                if self._running:
                    self._start(unit)
                    log.info("account_added", account=name, users=list(cfg.users))
            elif unit.update(cfg, config):
                renewed.append(name)
        for name in [n for n in self.units if n not in wanted]:
            unit = self.units.pop(name)
            if unit.task is not None:
                unit.task.cancel()
            unit.auth.close()
            asyncio.get_running_loop().create_task(unit.client.close())
            log.warning("account_removed", account=name,
                        note="its pending outbox entries are kept and delivered if it comes back")
        return renewed

    def adopt_journal(self) -> None:
        for unit in self.units.values():
            unit.auth.adopt_journal()

    def _start(self, unit: Account) -> None:
        unit.task = asyncio.get_running_loop().create_task(unit.lane.run(), name=f"lane-{unit.name}")

    def start(self) -> list[asyncio.Task[None]]:
        self._running = True
        for unit in self.units.values():
            self._start(unit)
        return [u.task for u in self.units.values() if u.task is not None]

    async def refresh(self) -> None:
        """Save pairs that could not be saved yet, then refresh those due (each account alone)."""
        for unit in list(self.units.values()):
            try:
                await unit.auth.save_pending()
                await unit.auth.refresh_ahead()
            except Exception as exc:
                log.error("trakt_refresh_error", error=repr(exc), account=unit.name)

    async def stop(self, grace: float) -> None:
        """Give in-flight Trakt calls ``grace`` seconds; what is left stays in the outbox."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while loop.time() < deadline and await self._deliverable():
            await asyncio.sleep(0.05)
        tasks = [u.task for u in self.units.values() if u.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for unit in self.units.values():
            unit.auth.close()
            await unit.client.close()

    async def _deliverable(self) -> bool:
        now = clocks.now()  # retry times are steady (cwhook/kernel/clock.py)
        for unit in self.units.values():
            if unit.auth.needs_auth:
                continue
            if unit.lane.busy:
                return True
            try:
                heads = await self.db.call(self.db.store.heads, unit.name, 64)
            except StoreUnavailable:  # nothing can be delivered from a store that cannot be read
                continue
            if any(e.next_attempt_at <= now for e in heads):
                return True
        return False

    def orphans(self, stats: Stats) -> list[tuple[str, int]]:
        """Accounts no longer in the file that still have pending entries."""
        return [(name, count) for name, count, _ in stats.by_account if name not in self.units]

