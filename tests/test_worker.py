"""The worker and the daemon's supervision: nothing decided is lost, timers fire on time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cwhook.config.schema import ScrobbleConfig, parse_config
from cwhook.kernel.event import Event, Ids
from cwhook.scrobble.rules import Decision, Rules
from cwhook.scrobble.worker import Item, Worker
from cwhook.service.daemon import Daemon
from cwhook.state.store import AsyncStore, Store, StoreUnavailable
from cwhook.status.health import Counters
from tests.builders import eventually, movie
from tests.conftest import config_text, free_port

MOVIE = movie(action="start", title="X", year=None, ids=Ids(imdb="tt1"), user_name="a", player_id="p",
              item_key="1", progress=1.0, duration_s=7200.0)
PAUSE = replace(MOVIE, action="pause", progress=40.0)
RESUME = replace(MOVIE, action="start", progress=40.0)
STOP = replace(MOVIE, action="stop", progress=95.0)
SETTINGS = ScrobbleConfig(pause_debounce_seconds=5)


class BrokenStore(Store):
    """A store whose decisions cannot be committed until ``broken`` is cleared."""

    broken = True

    def decide(self, *args: Any, **kwargs: Any) -> list[int]:
        if self.broken:
            raise StoreUnavailable("the state dir's disk is full")
        return super().decide(*args, **kwargs)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TimedWorker(Worker):
    """Its waits take no real time: the fake clock jumps by the timeout the worker asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waits: list[float] = []

    async def receive(self, timeout: float) -> Item | None:
        if not self.queue.empty():
            return self.queue.get_nowait()
        self.waits.append(timeout)
        assert isinstance(self.clock, Clock)
        self.clock.now += timeout
        await asyncio.sleep(0)
        return None


def ingest(store: Store, *events: Event) -> list[Item]:
    return list(zip(store.ingest(list(events)), events, strict=True))


def outbox(store: Store) -> list[tuple[str, float, float]]:
    rows = store._db.execute("SELECT verb, progress, created_at FROM outbox ORDER BY id").fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def inbox_ids(store: Store) -> list[int]:
    return [i for i, _ in store.undecided()]


def make(tmp_path: Path, store_cls: type[Store] = Store, clock: Any = time.time,
         worker_cls: type[Worker] = Worker) -> tuple[Worker, Store]:
    store = store_cls(tmp_path / "state")
    worker = worker_cls(asyncio.Queue(), Rules(SETTINGS), AsyncStore(store), Counters(), lambda accounts: None, clock)
    return worker, store


async def test_decisions_and_settled_inbox_rows_commit_together(tmp_path: Path) -> None:
    clock = Clock()
    worker, store = make(tmp_path, clock=clock)
    items = ingest(store, replace(MOVIE, received_at=clock.now), replace(PAUSE, received_at=clock.now))
    await worker.process(items)
    # the start is decided and in the outbox; the held pause stays undecided in the inbox
    assert outbox(store) == [("start", 1.0, clock.now)]
    assert inbox_ids(store) == [items[1][0]]
    # a stop supersedes the pause: both settle with the stop's outbox row
    [stop] = ingest(store, STOP)
    await worker.process([stop])
    assert [v for v, _, _ in outbox(store)] == ["start", "stop"] and inbox_ids(store) == []


async def test_a_commit_that_fails_is_retried_and_loses_nothing(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    worker, store = make(tmp_path, BrokenStore)
    items = ingest(store, MOVIE)
    task = asyncio.create_task(worker.process(items))
    printed: list[str] = []

    def failure_logged() -> bool:
        captured = capsys.readouterr()
        printed.append(captured.out + captured.err)
        return "store_write_failed" in "".join(printed)

    await eventually(failure_logged)
    assert not task.done() and inbox_ids(store) == [items[0][0]] and outbox(store) == []
    BrokenStore.broken = False
    try:
        assert await asyncio.wait_for(task, 5)
    finally:
        BrokenStore.broken = True
    assert [v for v, _, _ in outbox(store)] == ["start"] and inbox_ids(store) == []


async def test_held_pause_is_sent_when_the_window_ends_not_later(tmp_path: Path) -> None:
    clock = Clock()
    worker, store = make(tmp_path, clock=clock, worker_cls=TimedWorker)
    assert isinstance(worker, TimedWorker)
    [item] = ingest(store, PAUSE)
    worker.queue.put_nowait(item)
    received = clock.now
    task = asyncio.create_task(worker.run())
    for _ in range(50):
        await asyncio.sleep(0.01)
        if outbox(store):
            break
    task.cancel()
    # the worker asked to wake exactly at the end of the debounce window, and sent the pause then
    assert worker.waits[0] == pytest.approx(5.0)
    assert outbox(store) == [("pause", 40.0, pytest.approx(received + 5.0))]
    assert inbox_ids(store) == []


async def test_a_failing_event_does_not_lose_the_timers_decisions(tmp_path: Path) -> None:
    clock = Clock()
    worker, store = make(tmp_path, clock=clock)
    [held] = ingest(store, PAUSE)
    await worker.process([held])
    assert outbox(store) == [] and inbox_ids(store) == [held[0]]

    def boom(event: Event, now: float) -> list[Decision]:
        raise RuntimeError("bug in a rule")

    worker.rules.handle = boom  # type: ignore[method-assign]
    clock.now += 6
    [odd] = ingest(store, replace(MOVIE, item_key="2"))
    await worker.process([odd])
    assert outbox(store) == [("pause", 40.0, clock.now)]
    assert inbox_ids(store) == []  # the odd event is decided too (as an error), not replayed forever


async def test_replay_after_a_crash_keeps_the_held_pause_and_its_window(tmp_path: Path) -> None:
    clock = Clock()
    worker, store = make(tmp_path, clock=clock)
    t0 = clock.now
    items = ingest(store, replace(MOVIE, received_at=t0), replace(PAUSE, received_at=t0 + 60))
    await worker.process(items[:1])
    # the process dies here: the pause was answered 202 but never decided
    store.close()
    clock.now = t0 + 62
    worker, store = make(tmp_path, clock=clock)
    await worker.replay(store.undecided())
    assert outbox(store) == [("start", 1.0, t0)] and len(inbox_ids(store)) == 1  # still in its window
    assert worker.rules.next_deadline() == pytest.approx(t0 + 65)
    clock.now = t0 + 66
    await worker.process([])
    assert outbox(store)[-1] == ("pause", 40.0, t0 + 66) and inbox_ids(store) == []


async def test_replay_of_a_pause_whose_window_passed_sends_it_at_once(tmp_path: Path) -> None:
    clock = Clock()
    worker, store = make(tmp_path, clock=clock)
    ingest(store, replace(PAUSE, received_at=clock.now - 3600))
    await worker.replay(store.undecided())
    assert [v for v, _, _ in outbox(store)] == ["pause"] and inbox_ids(store) == []


async def test_worker_drains_everything_queued_in_one_wake(tmp_path: Path) -> None:
    worker, store = make(tmp_path)
    items = ingest(store, *[replace(MOVIE, item_key=str(i)) for i in range(50)])
    for item in items:
        worker.queue.put_nowait(item)
    task = asyncio.create_task(worker.run())
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(outbox(store)) == 50:
            break
    task.cancel()
    assert len(outbox(store)) == 50 and inbox_ids(store) == []


async def test_drain_at_shutdown_sends_held_pauses(tmp_path: Path) -> None:
    worker, store = make(tmp_path)
    [held] = ingest(store, PAUSE)
    await worker.process([held])
    [start] = ingest(store, replace(MOVIE, item_key="9"))
    worker.queue.put_nowait(start)
    await worker.drain()
    assert sorted(v for v, _, _ in outbox(store)) == ["pause", "start"] and inbox_ids(store) == []


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


async def test_the_one_hour_watched_registry_survives_a_restart(tmp_path: Path) -> None:
    """A scrobble at 90 %, a restart, then the same viewing's stop at 97 %: one play, not two
    (while Trakt is down both would otherwise go to /sync/history, which does not deduplicate)."""
    clock = Clock()
    worker, store = make(tmp_path, clock=clock)
    scrobble = replace(MOVIE, action="scrobble", progress=90.0, received_at=clock.now)
    await worker.process(ingest(store, scrobble), [clock.now])
    assert [v for v, _, _ in outbox(store)] == ["stop"]
    store.close()
    clock.now += 90
    worker, store = make(tmp_path, clock=clock)  # a fresh process: no session state
    await worker.replay(store.undecided())
    stop = replace(MOVIE, action="stop", progress=97.0, received_at=clock.now)
    await worker.process(ingest(store, stop))
    assert [v for v, _, _ in outbox(store)] == ["stop"]
    # after the hour, or for a new viewing from the top, it counts again
    clock.now += 3600
    await worker.process(ingest(store, replace(stop, player_id="tv2", received_at=clock.now)))
    assert [v for v, _, _ in outbox(store)] == ["stop", "stop"]


async def test_a_decision_wakes_only_the_lanes_of_its_accounts(tmp_path: Path) -> None:
    """With many accounts, a webhook for one of them must not wake every sender (each would read
    its outbox: docs/performance.md, many accounts)."""
    woken: list[set[str]] = []
    store = Store(tmp_path / "state")
    worker = Worker(asyncio.Queue(), Rules(SETTINGS), AsyncStore(store), Counters(), woken.append, time.time)
    items = ingest(store, replace(MOVIE, accounts=("anna", "dad")), replace(MOVIE, item_key="other",
                                                                              ids=Ids(imdb="tt7"), accounts=("kid",)))
    await worker.process(items)
    assert woken == [{"anna", "dad", "kid"}]
    [stop] = ingest(store, replace(STOP, accounts=("anna",)))
    await worker.process([stop])
    assert woken[-1] == {"anna"}


class _Writes:
    """A stderr that keeps each write apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


async def test_a_batch_writes_its_decision_lines_in_one_write(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A line per decision, every one of them, in the order decided: in one system call per batch
    (cwhook/kernel/logs.py, ``gathered``)."""
    import json
    import sys

    from cwhook.kernel import logs

    out = _Writes()
    monkeypatch.setattr(sys, "stderr", out)
    logs.configure("info", "json")
    try:
        worker, store = make(tmp_path)
        items = ingest(store, *[replace(MOVIE, item_key=str(i)) for i in range(30)])
        await worker.process(items)
    finally:
        logs.configure("info", "json")
    decided = [w for w in out.writes if '"decision"' in w]
    assert len(decided) == 1
    lines = [json.loads(line) for line in decided[0].splitlines()]
    assert [(line["event"], line["session"].rsplit("|", 1)[1]) for line in lines] == [
        ("decision", str(i)) for i in range(30)]
