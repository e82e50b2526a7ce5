"""Supervision: one daemon per state directory (the lock), signals, the systemd watchdog and
notifications, and the daemon's tasks: one that ends with an error stops the daemon with exit
status 1, so that systemd restarts it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from cwhook.kernel import logs
from cwhook.state.store import lock_database
from cwhook.system.sdnotify import Notifier

log = logs.get("cwhook.service.supervision")


class Supervisor:
    def __init__(self, state_dir: Path, notifier: Notifier) -> None:
        # One daemon per database, before anything opens it (AlreadyRunning otherwise).
        self._lock_fd: int | None = lock_database(state_dir)
        self.notifier = notifier
        self.stop_requested = asyncio.Event()
        self.crashed: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []

    def release(self) -> None:
        """Give up the state directory (after the database is closed: its own locks are per process)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def handle_signals(self, reload: Callable[[], None]) -> None:
        """SIGTERM and SIGINT stop the daemon, SIGHUP calls ``reload``."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, reload)

    def start(self, jobs: dict[str, Coroutine[Any, Any, None]],
              more: Callable[[], list[asyncio.Task[None]]]) -> None:
        """Run ``jobs`` as named tasks (the watchdog too, when systemd asks for it), then start the
        ``more`` (the Trakt lanes), and watch them all: any that fails stops the daemon."""
        self.tasks = [asyncio.create_task(job, name=name) for name, job in jobs.items()]
        interval = self.notifier.watchdog_interval()
        if interval:
            self.tasks.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))
        for task in [*self.tasks, *more()]:
            task.add_done_callback(self._supervise)
        self.notifier.notify("READY=1\nSTATUS=listening")

    def _supervise(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.crashed.append(task.get_name())
            log.error("task_crashed", task=task.get_name(), error=repr(task.exception()),
                      note="stopping so that systemd restarts the daemon")
            self.stop_requested.set()

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def stopping(self) -> None:
        log.info("stopping")
        self.notifier.notify("STOPPING=1")

    async def cancel_tasks(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def close(self) -> None:
        self.notifier.close()

    @property
    def exit_status(self) -> int:
        return 1 if self.crashed else 0
