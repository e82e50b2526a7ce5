"""The event loop's side of the store (cwhook/state/store.py): short transactions on the loop,
grouped commits for the webhooks, checkpoints on a thread of their own."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from cwhook.kernel import logs
from cwhook.kernel.event import Event
from cwhook.state import journal
from cwhook.state.connection import WAL_LIMIT
from cwhook.state.schema import StoreBusy, StoreUnavailable

if TYPE_CHECKING:
    from cwhook.state.store import Store

log = logs.get("cwhook.state.store")

LOCK_WAIT = 2.0  # how long a call on the loop keeps retrying a locked database
# A locked database is tried again after 1 ms, then 2, 4, ... up to 20 ms between tries. The lock
# is most often the daemon's own checkpoint past WAL_LIMIT, which holds writers back for a few
# milliseconds: a first wait of 20 ms made the slowest hundredth of the answers under load 20 ms
# slower (docs/performance.md). Another program's lock (`cwhook outbox retry`) is polled every 20 ms.
LOCK_RETRY_FIRST = 0.001
LOCK_RETRY = 0.02
CHECKPOINT_EVERY = 2.0
WAL_POLL = 0.1  # how often the checkpoint task looks at the WAL's size


T = TypeVar("T")


class AsyncStore:
    """The event loop's side of the store.

    Calls run on the loop itself as short transactions: in WAL mode with
    ``synchronous=NORMAL`` a commit is a write to the WAL, no fsync, well under a
    millisecond. The connection never waits on a lock: a call that finds the database
    locked by another program is tried again after a short asyncio sleep, for up to
    ``LOCK_WAIT`` seconds, then fails with ``StoreUnavailable`` (so /healthz and the
    webhooks keep answering meanwhile). The slow part of WAL, the checkpoint that
    copies pages into the database file and fsyncs it, runs on a thread with its own
    connection. (Running every call on a thread instead cost a third of the endpoint's
    throughput in GIL hand-offs.)

    ``ingest`` is a group commit: the events of every request that reached it in the same
    turn of the loop are committed together, on the loop's next turn. (It used to wait 2 ms for
    more: under load the loop then sat idle a fifth of the time with every connection waiting on
    the timer, docs/performance.md; a busy loop gathers a batch by itself.)
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        store.on_the_loop()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cwhook-checkpoint")
        # each event with its future, its callback and when it arrived (loop time)
        self._batch: list[tuple[Event, asyncio.Future[int], Callable[[int, Event], None], float]] = []
        self._ignored: list[journal.IgnoredRow] = []
        self._flushing: asyncio.Task[None] | None = None
        self.on_outside_change: Callable[[], None] | None = None  # e.g. `cwhook outbox retry` ran

    async def call(self, fn: Callable[..., T], *args: Any, since: float | None = None) -> T:
        """``fn(*args)`` on the loop, tried again while the database is locked, until LOCK_WAIT
        has passed since ``since`` (loop time; default now): a webhook that waited behind an
        earlier commit's retries waits no longer in all."""
        try:
            return fn(*args)
        except StoreBusy:
            pass
        loop = asyncio.get_running_loop()
        deadline = (loop.time() if since is None else since) + LOCK_WAIT
        wait = LOCK_RETRY_FIRST
        while True:
            await asyncio.sleep(wait)
            wait = min(LOCK_RETRY, wait * 2)
            try:
                return fn(*args)
            except StoreBusy:
                if loop.time() >= deadline:
                    self.store.problem = "the state database is locked by another program"
                    raise StoreUnavailable(self.store.problem) from None

    async def ingest(self, event: Event, on_committed: Callable[[int, Event], None]) -> int:
        """Commit one event (grouped with others); ``on_committed`` runs in commit order."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._batch.append((event, fut, on_committed, loop.time()))
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush())
        return await fut

    def journal_ignored(self, row: journal.IgnoredRow) -> None:
        """An event answered 200 ignored goes to the journal with the next group commit
        (nobody waits for it; lost if that commit fails)."""
        self._ignored.append(row)
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            # Let the requests of this turn of the loop join this commit: one commit for
            # many events is most of the endpoint's speed, and waiting any longer only idles.
            await asyncio.sleep(0)
            while self._batch or self._ignored:
                batch, self._batch = self._batch, []
                ignored, self._ignored = self._ignored, []
                try:
                    ids = await self.call(self.store.ingest, [e for e, _, _, _ in batch], ignored,
                                          since=min((t for _, _, _, t in batch), default=None))
                except Exception as exc:
                    error = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(repr(exc))
                    for _, fut, _, _ in batch:
                        if not fut.done():
                            fut.set_exception(error)
                    continue
                for (event, fut, on_committed, _), seq in zip(batch, ids, strict=True):
                    on_committed(seq, event)
                    if not fut.done():
                        fut.set_result(seq)
        finally:
            self._flushing = None

    async def checkpoints(self, every: float = CHECKPOINT_EVERY) -> None:
        """Copy the WAL into the database file every ``every`` seconds, and at once when it has
        grown past WAL_LIMIT (a burst), off the loop."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(min(every, WAL_POLL))
            if loop.time() - last < every and self.store.wal_size() <= WAL_LIMIT:
                continue
            last = loop.time()
            try:
                await loop.run_in_executor(self._pool, self.store.checkpoint)
            except sqlite3.Error as exc:  # locked or full: the next one catches up
                log.debug("checkpoint_skipped", error=str(exc))
            with contextlib.suppress(sqlite3.Error):
                if self.store.notice_outside_changes() and self.on_outside_change is not None:
                    self.on_outside_change()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.store.close()
