"""`cwhook run`: wires the HTTP app, the worker, the sender and the reloader together."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from cwhook import __version__
from cwhook.config.file import remember
from cwhook.config.schema import Config, ConfigError, changed_keys, load_config, lost_credentials, lost_sections
from cwhook.ingest import edge
from cwhook.ingest.app import Busy, Runtime, make_app
from cwhook.kernel import clock as clocks
from cwhook.kernel import items, logs, vocab
from cwhook.kernel.event import Event, Ignored
from cwhook.scrobble import preview
from cwhook.scrobble.rules import Rules
from cwhook.scrobble.worker import Item, Worker
from cwhook.state.journal import Arrived, IgnoredRow
from cwhook.state.store import FILE_NAME, AlreadyRunning, AsyncStore, Store, StoreUnavailable, lock_database
from cwhook.state.tokenjournal import TokenJournal
from cwhook.status import snapshot as status
from cwhook.status.health import Counters
from cwhook.status.metrics import Metrics
from cwhook.system.listen import listen_problem
from cwhook.system.sdnotify import Notifier
from cwhook.system.statedir import check_state_file
from cwhook.trakt.accounts import Accounts

log = logs.get("cwhook.service.daemon")

QUEUE_SIZE = 1000
RELOAD_POLL = 1.0
RELOAD_SETTLE = 1.0  # a reload waits until the file has not changed for this long
RELOAD_SETTLE_MAX = 10.0  # ... but not longer than this, for a file that never stops changing
REFUSED_RETRY = 60.0  # a refused file is read again this often (a chown changes no mtime)
SHUTDOWN_GRACE = 5.0
TOKEN_SAVE_RETRY = 60.0
UNAVAILABLE_SHOWN_FOR = 60.0  # /healthz says store_unavailable this long after a failed commit


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size)  # ctime: chown/chmod count too


class Daemon:
    def __init__(self, config: Config, force_dry_run: bool = False) -> None:
        self.config = config
        self.force_dry_run = force_dry_run
        self.started = clocks.now()
        self.counters = Counters()
        # Bounded by admission (``_admit``), not by the queue: an event is committed
        # to the inbox first and must then always find room.
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self._admitting = 0
        self._unavailable: tuple[float, str] | None = None
        self.rules = Rules(config.scrobble, aliases=items.SHARED)
        # One daemon per database, before anything opens it (AlreadyRunning otherwise).
        self._lock_fd = lock_database(config.state_dir)
        try:
            self.journal = TokenJournal(config.state_dir)
            check_state_file(self.journal.path)
            # A database that cannot be opened now (full disk) is retried: the daemon listens
            # meanwhile and answers 503 (docs/durability.md, "A full disk").
            self.db = AsyncStore(Store(config.state_dir, wait_for_disk=True))
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.store = self.db.store
        self.metrics = Metrics(self.counters, self.snapshot)
        self.accounts = Accounts(config, self.journal, self.db, self.counters, lambda: self.force_dry_run,
                                 observe=self.metrics.trakt_request)
        self.db.on_outside_change = self.accounts.wake  # `cwhook outbox retry|send|drop` ran
        self.worker = Worker(self.queue, self.rules, self.db, self.counters, self.accounts.wake_some)
        self.runtime = Runtime(config, self.counters, self.health, self.ingest, metrics=self.metrics,
                               preview=preview.answer, journal_ignored=self.journal_ignored)
        self.notifier = Notifier()
        self._stamp = _stamp(config.path)
        self.config_error: str | None = None  # why the file on disk is refused (codes and lines), the fix
        self._refused_words: str | None = None  # ... in words, as logged
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()

    # --- ingest -------------------------------------------------------------------

    async def ingest(self, event: Event) -> None:
        """Commit the event to the inbox, then queue it: the 202 is sent only after this.

        Raises ``Busy`` when the worker is too far behind and ``StoreUnavailable``
        when the event cannot be stored.
        """
        if self.queue.qsize() + self._admitting >= QUEUE_SIZE:
            raise Busy()
        self._admitting += 1
        try:
            await self.db.ingest(event, lambda seq, e: self.queue.put_nowait((seq, e)))
        except StoreUnavailable as exc:
            self._unavailable = (clocks.now(), str(exc))
            log.error("inbox_write_failed", error=str(exc), note="answered 503; the client retries")
            raise
        finally:
            self._admitting -= 1

    def journal_ignored(self, server: str, ignored: Ignored, event: Event | None) -> None:
        arrived = (Arrived.of(event) if event is not None
                   else Arrived(time.time(), server, user=ignored.user, item=ignored.item))
        if ignored.reason == vocab.TEST:  # a test request: a line of its own, never folded
            arrived = dataclasses.replace(arrived, session=None)
        self.db.journal_ignored(IgnoredRow(arrived, ignored.reason, ignored.detail))

    # --- state ---------------------------------------------------------------------

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
        removed = dict(self.accounts.orphans(stats))
        unavailable = (self.store.problem is not None
                       or (self._unavailable is not None and now - self._unavailable[0] < UNAVAILABLE_SHOWN_FOR))
        return status.build(version=__version__, started=self.started, queue_depth=self.queue.qsize(),
                            sessions=self.worker.session_count, stats=stats, accounts=accounts,
                            counters=self.counters, config_refused=self.config_error,
                            store_unavailable=unavailable, removed=removed, now=now)

    def health(self) -> dict[str, Any]:
        return status.to_healthz(self.snapshot())

    # --- reload ----------------------------------------------------------------------

    def reload(self, reason: str) -> bool:
        try:
            config = load_config(self.config.path)
            if reason != "SIGHUP":  # a deliberate removal is applied by SIGHUP only
                lost = lost_sections(self.config, config)
                if lost:
                    raise ConfigError(lost)
            lost_app = lost_credentials(self.config, config)
            if lost_app:  # even on SIGHUP: the file is being written (tokens follow the pair rule)
                raise ConfigError(lost_app)
        except ConfigError as exc:
            words = "; ".join(exc.problems)
            if words != self._refused_words:
                for problem in exc.problems:
                    log.error("config_refused", reason=reason, problem=problem,
                              note="keeping the previous settings; the file is read again every minute")
            self._refused_words = words
            # /healthz answers anyone: codes and lines only, never words of the file (docs/configuration.md)
            self.config_error = status.refused_text(self.config.path, exc.summary())
            return False
        old = self.config
        self.config = config
        self.config_error = self._refused_words = None
        remember(config, deliberate=reason == "SIGHUP")  # SIGHUP applies removals on purpose
        self.runtime.config = config
        self.worker.update_settings(config.scrobble)
        for name in self.accounts.sync(config):
            # New tokens (`cwhook auth`): deliver what waited at once.
            asyncio.get_running_loop().create_task(self.db.call(self.store.retry_now, name))
        if config.logging != old.logging:
            logs.configure(config.logging.level, config.logging.format)
        if (config.server.host, config.server.port) != (old.server.host, old.server.port):
            log.warning("config_needs_restart", key="server.host/server.port")
        if config.state_dir != old.state_dir:
            log.warning("config_needs_restart", key="state.dir")
        self.accounts.wake()
        log.info("config_reloaded", reason=reason, dry_run=self.dry_run, changed=changed_keys(old, config))
        return True

    async def _settled_stamp(self) -> tuple[int, int, int, int] | None:
        """Wait until the file has not changed for RELOAD_SETTLE seconds (an editor may be writing it)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + RELOAD_SETTLE_MAX
        stamp = _stamp(self.config.path)
        while stamp is not None and loop.time() < give_up:
            age = time.time() - stamp[0] / 1e9
            if not -RELOAD_SETTLE < age < RELOAD_SETTLE:  # settled (or a clock far off: do not wait)
                break
            await asyncio.sleep(RELOAD_SETTLE - age)
            stamp = _stamp(self.config.path)
        return stamp

    async def _watch_config(self) -> None:
        loop = asyncio.get_running_loop()
        last_read = loop.time()
        while True:
            reason = None
            try:
                await asyncio.wait_for(self._reload.wait(), RELOAD_POLL)
                self._reload.clear()
                reason = "SIGHUP"
            except TimeoutError:
                if _stamp(self.config.path) != self._stamp:
                    reason = "file changed"
                elif self.config_error is not None and loop.time() - last_read >= REFUSED_RETRY:
                    reason = "retry"
            if reason is None:
                continue
            self._stamp = await self._settled_stamp()
            last_read = loop.time()
            self.reload(reason)

    async def _refresh_tokens(self) -> None:
        while True:
            await self.accounts.refresh()
            await asyncio.sleep(TOKEN_SAVE_RETRY)

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # --- run ---------------------------------------------------------------------------

    async def run(self) -> int:
        try:
            return await self._run()
        finally:
            os.close(self._lock_fd)  # after the database is closed (its own locks are per process)

    async def _work(self) -> None:
        # The events answered 202 whose decision a crash cut short, once the store can be read
        # and written (retried meanwhile: the daemon listens, docs/durability.md), then new ones.
        await self.worker.catch_up()
        await self.worker.run()

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)

        # Before anything is sent: a refreshed pair that never reached the file. The inbox
        # is replayed by the worker's task, after the daemon listens (``_work``).
        self.accounts.adopt_journal()

        app = make_app(self.runtime)
        runner = edge.Runner(app, shutdown_timeout=3.0)  # limits, timeouts, JSON protocol errors
        await runner.setup()
        site = web.TCPSite(runner, self.config.server.host, self.config.server.port,
                           reuse_address=True, backlog=edge.BACKLOG)
        try:
            await site.start()
        except OSError as exc:
            log.error("listen_failed", host=self.config.server.host, port=self.config.server.port,
                      error=exc.strerror or str(exc),
                      fix=listen_problem(self.config.server.host, self.config.server.port, exc,
                                         self.config.path))
            await runner.cleanup()
            self.db.close()
            return 1
        pending = self.store.stats.pending
        log.info("listening", host=self.config.server.host, port=self.config.server.port,
                 version=__version__, dry_run=self.dry_run, outbox_pending=pending)
        tasks = [
            asyncio.create_task(self._work(), name="worker"),
            asyncio.create_task(self._watch_config(), name="config-watch"),
            asyncio.create_task(self._refresh_tokens(), name="token-refresh"),
            asyncio.create_task(self.db.checkpoints(), name="checkpoints"),
        ]
        interval = self.notifier.watchdog_interval()
        if interval:
            tasks.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))
        crashed: list[str] = []

        def supervise(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                crashed.append(task.get_name())
                log.error("task_crashed", task=task.get_name(), error=repr(task.exception()),
                          note="stopping so that systemd restarts the daemon")
                self._stop.set()

        for task in [*tasks, *self.accounts.start()]:
            task.add_done_callback(supervise)
        self.notifier.notify("READY=1\nSTATUS=listening")

        await self._stop.wait()

        log.info("stopping")
        self.notifier.notify("STOPPING=1")
        await site.stop()  # stop accepting; requests in flight finish
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.worker.drain()
        # Give in-flight Trakt calls a few seconds; what is left stays in the outbox.
        await self.accounts.stop(SHUTDOWN_GRACE)
        await runner.cleanup()
        left = self.store.stats.pending
        self.db.close()
        self.notifier.close()
        log.info("stopped", outbox_pending=left)
        return 1 if crashed else 0


def run_daemon(config: Config, force_dry_run: bool) -> int:
    async def main() -> int:
        try:
            daemon = Daemon(config, force_dry_run)
        except AlreadyRunning:
            log.error("already_running", state_dir=str(config.state_dir),
                      note=f"another cwhook holds the database {config.state_dir / FILE_NAME}; stop it "
                           "or give this one its own state.dir")
            return 1
        return await daemon.run()

    return asyncio.run(main())
