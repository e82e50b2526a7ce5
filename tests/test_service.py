"""The daemon's parts, each alone, without a process: the config watcher, admission, the shared
"the file has settled" rule, and the one module that reads the environment."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cwhook.config import settle
from cwhook.config.file import ConfigFiles
from cwhook.config.schema import Config, load_config
from cwhook.ingest.app import Busy
from cwhook.kernel import vocab
from cwhook.kernel.event import Event, Ids, Ignored
from cwhook.scrobble.worker import Item
from cwhook.service.admission import UNAVAILABLE_SHOWN_FOR, Admission
from cwhook.service.environment import Environment
from cwhook.service.watcher import ConfigWatcher
from cwhook.state.journal import IgnoredRow
from cwhook.state.store import StoreUnavailable
from tests.conftest import config_text

MOVIE = Event(source="plex", action="start", kind="movie", title="X", ids=Ids(imdb="tt1"), user_name="a",
              player_id="p", item_key="1", progress=1.0, duration_s=7200.0)


# --- the config watcher ------------------------------------------------------------------------


def write(path: Path, text: str, age: float = 5.0) -> None:
    """The file as an editor leaves it, ``age`` seconds ago (settled unless age is small)."""
    path.write_text(text)
    then = time.time() - age
    os.utime(path, (then, then))


class Watched:
    def __init__(self, tmp_path: Path, **kwargs: Any) -> None:
        self.path = tmp_path / "c.yml"
        self.text = config_text(8787, tmp_path / "state")
        write(self.path, self.text)
        self.applied: list[tuple[Config, Config, str]] = []
        self.watcher = ConfigWatcher(load_config(self.path), ConfigFiles(),
                                     lambda old, new, reason: self.applied.append((old, new, reason)), **kwargs)


def test_a_good_read_is_applied_and_becomes_the_config(tmp_path: Path) -> None:
    w = Watched(tmp_path)
    write(w.path, w.text.replace("level: debug", "level: info"))
    assert w.watcher.reload("file changed")
    [(old, new, reason)] = w.applied
    assert (old.logging.level, new.logging.level, reason) == ("debug", "info", "file changed")
    assert w.watcher.config is new and w.watcher.error is None


def test_a_read_lacking_a_section_is_refused_unless_sighup_asks(tmp_path: Path) -> None:
    w = Watched(tmp_path)
    before = w.watcher.config
    write(w.path, w.text.split("logging:")[0])  # the logging section is gone
    assert not w.watcher.reload("file changed")
    assert w.applied == [] and w.watcher.config is before
    assert w.watcher.error is not None and "logging" in w.watcher.error
    assert w.watcher.reload("SIGHUP")  # a deliberate removal
    assert w.applied[-1][2] == "SIGHUP" and w.watcher.error is None


def test_a_file_without_trakt_credentials_is_refused_even_on_sighup(tmp_path: Path) -> None:
    w = Watched(tmp_path)
    write(w.path, w.text.replace("client_secret: test-secret", "client_secret: ''"))
    assert not w.watcher.reload("SIGHUP")
    assert w.applied == [] and w.watcher.error is not None


async def test_the_watcher_reads_a_change_once_it_has_settled(tmp_path: Path) -> None:
    w = Watched(tmp_path, poll=0.02)
    task = asyncio.create_task(w.watcher.run())
    try:
        await asyncio.sleep(0.1)
        changed = time.time()
        write(w.path, w.text.replace("level: debug", "level: warning"), age=0)  # being saved now
        while not w.applied and time.time() - changed < 5:
            await asyncio.sleep(0.02)
        assert [r for _, _, r in w.applied] == ["file changed"]
        assert time.time() - changed >= settle.SETTLED * 0.9  # not before the file settled
        assert w.watcher.config.logging.level == "warning"
        w.watcher.request()  # SIGHUP: read now, whatever the file
        while len(w.applied) < 2 and time.time() - changed < 5:
            await asyncio.sleep(0.02)
        assert w.applied[-1][2] == "SIGHUP"
    finally:
        task.cancel()


def test_one_settle_rule_for_the_watcher_and_the_rewrites(tmp_path: Path) -> None:
    """A file changed just now waits SETTLED; cut without a final line break, UNTERMINATED_SETTLED;
    an old file, a gone one or one from a clock far ahead does not wait."""
    path = tmp_path / "f"
    write(path, "a: 1\n", age=0.2)
    stamp = settle.stamp(path)
    assert 0 < settle.unsettled_for(stamp) <= settle.SETTLED - 0.1
    assert settle.SETTLED < settle.unsettled_for(stamp, b"a: 1") <= settle.UNTERMINATED_SETTLED - 0.1
    write(path, "a: 1\n", age=settle.SETTLED + 0.5)
    assert settle.unsettled_for(settle.stamp(path)) == 0
    assert settle.unsettled_for(None) == 0
    write(path, "a: 1\n", age=-3600)  # modified "in an hour": a clock set back
    assert settle.unsettled_for(settle.stamp(path)) == 0
    files = ConfigFiles()
    fresh = settle.stamp(path)
    write(path, "a: 2\n", age=0)
    assert not files.settled(path, settle.stamp(path))
    files.own_write[os.path.realpath(path)] = settle.stamp(path)  # but our own write needs no wait
    assert files.settled(path, settle.stamp(path)) and fresh != settle.stamp(path)


# --- admission ---------------------------------------------------------------------------------


class StubStore:
    """The AsyncStore's two calls admission makes; records what the queue held at commit time."""

    def __init__(self, queue: asyncio.Queue[Item]) -> None:
        self.queue = queue
        self.store = SimpleNamespace(problem=None)
        self.committed: list[tuple[Event, int]] = []
        self.ignored: list[IgnoredRow] = []
        self.fail: str | None = None
        self.gate: asyncio.Event | None = None

    async def ingest(self, event: Event, on_committed: Any) -> int:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise StoreUnavailable(self.fail)
        self.committed.append((event, self.queue.qsize()))
        on_committed(len(self.committed), event)
        return len(self.committed)

    def journal_ignored(self, row: IgnoredRow) -> None:
        self.ignored.append(row)


def admission(limit: int = 1000, clock: Any = time.monotonic) -> tuple[Admission, StubStore, asyncio.Queue[Item]]:
    queue: asyncio.Queue[Item] = asyncio.Queue()
    db = StubStore(queue)
    return Admission(db, queue, limit=limit, clock=clock), db, queue  # type: ignore[arg-type]


async def test_an_event_is_queued_only_once_committed() -> None:
    adm, db, queue = admission()
    await adm.ingest(MOVIE)
    assert db.committed == [(MOVIE, 0)]  # the queue was still empty when the commit happened
    assert queue.get_nowait() == (1, MOVIE)


async def test_busy_counts_the_queue_and_the_events_being_committed() -> None:
    adm, db, queue = admission(limit=2)
    db.gate = asyncio.Event()
    first = asyncio.create_task(adm.ingest(MOVIE))
    second = asyncio.create_task(adm.ingest(replace(MOVIE, item_key="2")))
    await asyncio.sleep(0)
    with pytest.raises(Busy):  # two in flight, none queued yet: the third would not find room
        await asyncio.wait_for(adm.ingest(replace(MOVIE, item_key="3")), 2)
    db.gate.set()
    await asyncio.gather(first, second)
    assert queue.qsize() == 2
    with pytest.raises(Busy):
        await adm.ingest(replace(MOVIE, item_key="3"))
    queue.get_nowait()
    await adm.ingest(replace(MOVIE, item_key="3"))
    assert [e.item_key for e, _ in db.committed] == ["1", "2", "3"]


async def test_a_failed_commit_raises_and_shows_for_a_while() -> None:
    now = [100.0]
    adm, db, queue = admission(clock=lambda: now[0])
    assert not adm.store_unavailable(now[0])
    db.fail = "disk full"
    with pytest.raises(StoreUnavailable):
        await adm.ingest(MOVIE)
    assert queue.empty()
    assert adm.store_unavailable(now[0] + UNAVAILABLE_SHOWN_FOR - 1)
    assert not adm.store_unavailable(now[0] + UNAVAILABLE_SHOWN_FOR + 1)
    db.store.problem = "the state database is locked by another program"
    assert adm.store_unavailable(now[0] + UNAVAILABLE_SHOWN_FOR + 1)


async def test_ignored_events_are_journalled_a_test_request_never_folded() -> None:
    adm, db, _ = admission()
    adm.journal_ignored("plex", Ignored(vocab.TEST), MOVIE)
    adm.journal_ignored("plex", Ignored("no_account", user="bob", item="X"), None)
    test, other = db.ignored
    assert MOVIE.session_key is not None  # folded with its session, were it not a test
    assert test.reason == vocab.TEST and test.arrived.session is None
    assert (other.reason, other.arrived.server, other.arrived.user, other.arrived.item) == (
        "no_account", "plex", "bob", "X")


# --- the environment ---------------------------------------------------------------------------


def test_the_environment_is_read_in_one_place() -> None:
    env = Environment.read({"CWHOOK_CONFIG": "/etc/cwhook/cwhook.yml", "NOTIFY_SOCKET": "@sd",
                            "WATCHDOG_USEC": "2000000", "JOURNAL_STREAM": "8:9",
                            "CWHOOK_POST_INTERVAL": "0", "_CWHOOK_DELIVERY_RETRY_SCALE": "junk",
                            "_CWHOOK_EDGE_IDLE_TIMEOUT": "1.5", "HOME": "/root"})
    assert (env.config_path, env.notify_socket, env.watchdog_usec, env.watchdog_pid, env.journal_stream) == (
        "/etc/cwhook/cwhook.yml", "@sd", "2000000", None, "8:9")
    assert (env.post_interval, env.retry_scale, dict(env.edge)) == (0.0, None, {"_CWHOOK_EDGE_IDLE_TIMEOUT": "1.5"})
    assert Environment.read({}) == Environment()
    # the test settings that shorten the product's waits (tests/test_durability.py, test_clock.py)
    waits = Environment.read({"_CWHOOK_BACKOFF_SCALE": "0.1", "_CWHOOK_TRAKT_TIMEOUT": "3",
                              "_CWHOOK_SHUTDOWN_GRACE": "1"})
    assert (waits.backoff_scale, waits.trakt_timeout, waits.shutdown_grace) == (0.1, 3.0, 1.0)
