"""Admission: an event is committed to the inbox, then queued for the worker; the 202 waits for it.

Ignored events are journalled here too (``cwhook recent`` shows them). Admission is bounded
here, not by the queue: an event committed to the inbox must then always find room in it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from cwhook.ingest.app import Busy
from cwhook.kernel import clock as clocks
from cwhook.kernel import logs, vocab
from cwhook.kernel.event import Event, Ignored
from cwhook.scrobble.worker import Item
from cwhook.state.journal import Arrived, IgnoredRow
from cwhook.state.store import AsyncStore, StoreUnavailable

log = logs.get("cwhook.service.admission")

QUEUE_SIZE = 1000
UNAVAILABLE_SHOWN_FOR = 60.0  # /healthz says store_unavailable this long after a failed commit


class Admission:
    def __init__(self, db: AsyncStore, queue: asyncio.Queue[Item], limit: int = QUEUE_SIZE,
                 clock: clocks.Clock = clocks.now) -> None:
        self.db = db
        self.queue = queue
        self.limit = limit
        self.clock = clock
        self._admitting = 0
        self._failed: tuple[float, str] | None = None  # the last commit that failed: when, why

    async def ingest(self, event: Event) -> None:
        """Commit the event to the inbox, then queue it: the 202 is sent only after this.

        Raises ``Busy`` when the worker is too far behind and ``StoreUnavailable``
        when the event cannot be stored.
        """
        if self.queue.qsize() + self._admitting >= self.limit:
            raise Busy()
        self._admitting += 1
        try:
            await self.db.ingest(event, lambda seq, e: self.queue.put_nowait((seq, e)))
        except StoreUnavailable as exc:
            self._failed = (self.clock(), str(exc))
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

    def store_unavailable(self, now: float) -> bool:
        """The store cannot be used now, or a commit failed a short while ago."""
        return (self.db.store.problem is not None
                or (self._failed is not None and now - self._failed[0] < UNAVAILABLE_SHOWN_FOR))
