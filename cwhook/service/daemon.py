"""`cwhook run`: the composition root. It builds the daemon's parts, hands each the values it
needs (the environment included: cwhook/service/environment.py), and runs them: start, serve
until SIGTERM or a crashed task, stop.

The parts: admission (cwhook/service/admission.py), the config watcher (watcher.py), the
token-refresh loop (refresh.py), supervision (supervision.py: lock, signals, watchdog, tasks),
and from the packages below: the HTTP app and its edge, the worker, the Trakt accounts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from typing import Any

from aiohttp import web

from cwhook import __version__
from cwhook.config.file import ConfigFiles
from cwhook.config.schema import Config, changed_keys
from cwhook.ingest import edge
from cwhook.ingest.app import Runtime, make_app
from cwhook.kernel import clock as clocks
from cwhook.kernel import items, logs
from cwhook.scrobble import preview
from cwhook.scrobble.rules import Rules
from cwhook.scrobble.worker import Item, Worker
from cwhook.service.admission import Admission
from cwhook.service.environment import Environment
from cwhook.service.refresh import RefreshLoop
from cwhook.service.supervision import Supervisor
from cwhook.service.watcher import ConfigWatcher
from cwhook.state.store import FILE_NAME, AlreadyRunning, AsyncStore, Store
from cwhook.state.tokenjournal import TokenJournal
from cwhook.status import snapshot as status
from cwhook.status.health import Counters
from cwhook.status.metrics import Metrics
from cwhook.system.listen import listen_problem
from cwhook.system.sdnotify import Notifier
from cwhook.system.statedir import check_state_file
from cwhook.trakt.accounts import Accounts, Wiring
from cwhook.trakt.client import CALL_TIMEOUT, POST_INTERVAL

log = logs.get("cwhook.service.daemon")

SHUTDOWN_GRACE = 5.0


class Daemon:
    def __init__(self, config: Config, force_dry_run: bool = False, env: Environment | None = None,
                 logging: logs.Logging | None = None, files: ConfigFiles | None = None) -> None:
        env = env if env is not None else Environment()
        self.force_dry_run = force_dry_run
        self.logging = logging if logging is not None else logs.Logging(journal_stream=env.journal_stream)
        self.files = files if files is not None else ConfigFiles()
        self.started = clocks.now()
        self.counters = Counters()
        self.queue: asyncio.Queue[Item] = asyncio.Queue()  # bounded by admission
        self.rules = Rules(config.scrobble, aliases=items.SHARED)
        self.supervisor = Supervisor(config.state_dir, Notifier(env.notify_socket, env.watchdog_usec,
                                                                env.watchdog_pid))
        try:
            self.journal = TokenJournal(config.state_dir)
            check_state_file(self.journal.path)
            # A database that cannot be opened now (full disk) is retried: the daemon listens
            # meanwhile and answers 503 (docs/durability.md, "A full disk").
            self.db = AsyncStore(Store(config.state_dir, wait_for_disk=True))
        except BaseException:
            self.supervisor.close()
            self.supervisor.release()
            raise
        self.store = self.db.store
        self.metrics = Metrics(self.counters, self.snapshot)
        wiring = Wiring(self.files, POST_INTERVAL if env.post_interval is None else env.post_interval,
                        1.0 if env.retry_scale is None else env.retry_scale,
                        1.0 if env.backoff_scale is None else env.backoff_scale,
                        env.trakt_timeout or CALL_TIMEOUT)
        self.accounts = Accounts(config, self.journal, self.db, self.counters, lambda: self.force_dry_run,
                                 observe=self.metrics.trakt_request, wiring=wiring)
        self.db.on_outside_change = self.accounts.wake  # `cwhook outbox retry|send|drop` ran
        self.worker = Worker(self.queue, self.rules, self.db, self.counters, self.accounts.wake)
        self.admission = Admission(self.db, self.queue)
        self.runtime = Runtime(config, self.counters, self.health, self.admission.ingest, metrics=self.metrics,
                               preview=preview.answer, journal_ignored=self.admission.journal_ignored)
        self.logging.scrubber.use(lambda: self.runtime.config.secrets)  # no line shows the live config's secrets
        self.watcher = ConfigWatcher(config, self.files, self._apply)
        self.refresh = RefreshLoop(self.accounts)
        self.edge_limits = edge.Limits.from_env(env.edge)
        self.shutdown_grace = SHUTDOWN_GRACE if env.shutdown_grace is None else env.shutdown_grace

    @property
    def config(self) -> Config:
        return self.watcher.config

    @property
    def dry_run(self) -> bool:
        return self.accounts.default.dry_run

    def snapshot(self) -> status.Snapshot:
        """Built from memory only (the store's stats are cached): ready while SQLite is locked.
        Ages and uptime on steady time (a wall clock set back shows no false age of 0)."""
        now, wall = clocks.now(), time.time()
        stats = self.store.stats
        accounts = {}
        for unit in self.accounts:
            st = status.account_status(unit.name, unit.auth, unit.client, unit.dry_run, stats, now, wall)
            accounts[unit.name] = st if unit.in_use else dataclasses.replace(st, problems=())
        return status.build(version=__version__, started=self.started, queue_depth=self.queue.qsize(),
                            sessions=self.worker.session_count, stats=stats, accounts=accounts,
                            counters=self.counters, config_refused=self.watcher.error,
                            store_unavailable=self.admission.store_unavailable(now),
                            removed=dict(self.accounts.orphans(stats)), now=now)

    def health(self) -> dict[str, Any]:
        return status.to_healthz(self.snapshot())

    def _apply(self, old: Config, config: Config, reason: str) -> None:
        """A good read of the config file (the watcher's): every part takes its settings."""
        self.runtime.config = config
        self.worker.update_settings(config.scrobble)
        for name in self.accounts.sync(config):
            # New tokens (`cwhook auth`): deliver what waited at once.
            asyncio.get_running_loop().create_task(self.db.call(self.store.retry_now, name))
        if config.logging != old.logging:
            self.logging.configure(config.logging.level, config.logging.format)
        if (config.server.host, config.server.port) != (old.server.host, old.server.port):
            log.warning("config_needs_restart", key="server.host/server.port")
        if config.state_dir != old.state_dir:
            log.warning("config_needs_restart", key="state.dir")
        self.accounts.wake()
        log.info("config_reloaded", reason=reason, dry_run=self.dry_run, changed=changed_keys(old, config))

    def reload(self, reason: str) -> bool:
        return self.watcher.reload(reason)

    # --- run ---------------------------------------------------------------------------

    async def run(self) -> int:
        try:
            if not await self.start():
                return 1
            await self.supervisor.stop_requested.wait()  # serve
            return await self.stop()
        finally:
            self.supervisor.release()  # after the database is closed (its own locks are per process)

    async def start(self) -> bool:
        """Listen and start every task; False (everything closed again) when the port is refused."""
        self.supervisor.handle_signals(self.watcher.request)
        # Before anything is sent: a refreshed pair that never reached the file. The inbox
        # is replayed by the worker's task, after the daemon listens (``_work``).
        self.accounts.adopt_journal()
        host, port = self.config.server.host, self.config.server.port
        self.runner = edge.Runner(make_app(self.runtime, self.edge_limits), shutdown_timeout=3.0)
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, host, port, reuse_address=True, backlog=edge.BACKLOG)
        try:
            await self.site.start()
        except OSError as exc:
            log.error("listen_failed", host=host, port=port, error=exc.strerror or str(exc),
                      fix=listen_problem(host, port, exc, self.config.path))
            await self.runner.cleanup()
            self.db.close()
            return False
        log.info("listening", host=host, port=port, version=__version__, dry_run=self.dry_run,
                 outbox_pending=self.store.stats.pending)
        self.supervisor.start({"worker": self._work(), "config-watch": self.watcher.run(),
                               "token-refresh": self.refresh.run(), "checkpoints": self.db.checkpoints()},
                              self.accounts.start)
        # What the start made (modules, config, registries) lives as long as the process: out of
        # the collector's sight, every full collection has less to walk (docs/performance.md).
        gc.freeze()
        return True

    async def _work(self) -> None:
        # The events answered 202 whose decision a crash cut short, once the store can be read
        # and written (retried meanwhile: the daemon listens, docs/durability.md), then new ones.
        await self.worker.catch_up()
        await self.worker.run()

    async def stop(self) -> int:
        """Stop accepting (requests in flight finish), stop the tasks, decide what was queued,
        give in-flight Trakt calls a few seconds (what is left stays in the outbox), close."""
        self.supervisor.stopping()
        await self.site.stop()
        await self.supervisor.cancel_tasks()
        await self.worker.drain()
        await self.accounts.stop(self.shutdown_grace)
        await self.runner.cleanup()
        left = self.store.stats.pending
        self.db.close()
        self.supervisor.close()
        log.info("stopped", outbox_pending=left)
        return self.supervisor.exit_status


def run_daemon(config: Config, force_dry_run: bool, env: Environment | None = None,
               logging: logs.Logging | None = None, files: ConfigFiles | None = None) -> int:
    async def main() -> int:
        try:
            daemon = Daemon(config, force_dry_run, env, logging, files)
        except AlreadyRunning:
            log.error("already_running", state_dir=str(config.state_dir),
                      note=f"another cwhook holds the database {config.state_dir / FILE_NAME}; stop it "
                           "or give this one its own state.dir")
            return 1
        return await daemon.run()

    return asyncio.run(main())
