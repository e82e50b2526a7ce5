"""The worker and the daemon's supervision: one failure never silently stops scrobbling."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cwhook.config import ScrobbleConfig, parse_config
from cwhook.daemon import Daemon
from cwhook.event import Event, Ids
from cwhook.health import Counters
from cwhook.outbox import Outbox
from cwhook.rules import Rules
from cwhook.worker import Worker
from tests.conftest import config_text, free_port

MOVIE = Event(source="plex", action="start", kind="movie", title="X", ids=Ids(imdb="tt1"), user_name="a",
              player_id="p", item_key="1", progress=1.0)


class BrokenOutbox(Outbox):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.broken = True

    def add(self, *args: Any, **kwargs: Any) -> int:
        if self.broken:
            raise OSError(28, "No space left on device")
        return super().add(*args, **kwargs)


def test_outbox_write_failure_is_counted_and_the_worker_goes_on(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    outbox = BrokenOutbox(tmp_path / "o.sqlite3")
    counters = Counters()
    worker = Worker(asyncio.Queue(), Rules(ScrobbleConfig()), outbox, counters, lambda: None)
    worker.step(MOVIE)
    assert counters.failed == 1 and outbox.pending() == 0
    text = capsys.readouterr()
    assert "outbox_write_failed" in text.out + text.err
    outbox.broken = False
    worker.step(replace(MOVIE, item_key="2"))
    assert outbox.pending() == 1


def test_worker_drains_everything_queued_in_one_wake(tmp_path: Path) -> None:
    async def scenario() -> int:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        outbox = Outbox(tmp_path / "o.sqlite3")
        worker = Worker(queue, Rules(ScrobbleConfig()), outbox, Counters(), lambda: None)
        for i in range(50):
            queue.put_nowait(replace(MOVIE, item_key=str(i)))
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0)  # one scheduling turn of the worker
        await asyncio.sleep(0)
        task.cancel()
        return outbox.pending()

    assert asyncio.run(scenario()) == 50


def test_a_crashed_task_stops_the_daemon_with_exit_1(tmp_path: Path) -> None:
    cfg = parse_config(config_text(free_port(), tmp_path / "state"), tmp_path / "c.yml")

    async def scenario() -> int:
        daemon = Daemon(cfg)

        async def boom() -> None:
            await asyncio.sleep(0.2)
            raise RuntimeError("bug")

        daemon.worker.run = boom  # type: ignore[method-assign]
        return await daemon.run()

    started = time.time()
    assert asyncio.run(scenario()) == 1
    assert time.time() - started < 10
