"""The worker coroutine: queue → rules → outbox, waking for the rules' timers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cwhook import logs
from cwhook.event import Event
from cwhook.health import Counters
from cwhook.outbox import Outbox
from cwhook.rules import Decision, Rules

log = logs.get("cwhook.worker")

# Decisions that hold or record rather than drop an event.
NOT_SUPPRESSED = {"sent", "demoted_to_pause", "promoted_to_stop", "debounced", "progress_noted"}
MAX_IDLE_WAIT = 60.0


class Worker:
    def __init__(
        self,
        queue: asyncio.Queue[Event],
        rules: Rules,
        outbox: Outbox,
        counters: Counters,
        wake_sender: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.rules = rules
        self.outbox = outbox
        self.counters = counters
        self.wake_sender = wake_sender
        self.clock = clock

    def apply(self, decisions: list[Decision]) -> None:
        """Log each decision on one line and store what must go to Trakt."""
        for d in decisions:
            e = d.event
            fields: dict[str, object] = {
                "reason": d.reason,
                "action": e.action,
                "source": e.source,
                "item": e.label(),
                "user": e.user_name,
                "session": e.session_key,
            }
            if d.progress is not None:
                fields["progress"] = round(d.progress, 2)
            if d.notes:
                fields["notes"] = list(d.notes)
            if d.send is not None:
                fields["trakt"] = d.send.verb
                try:
                    self.outbox.add(d.send.verb, d.send.event, d.send.progress, self.clock())
                except Exception as exc:  # disk full, state dir gone: say so loudly, keep running
                    self.counters.failed += 1
                    log.error("outbox_write_failed", error=repr(exc), **fields)
                    continue
                self.wake_sender()
            elif d.reason not in NOT_SUPPRESSED:
                self.counters.suppressed += 1
            log.info("decision", **fields)

    def step(self, event: Event | None) -> None:
        now = self.clock()
        try:
            decisions = self.rules.tick(now)
            if event is not None:
                decisions += self.rules.handle(event, now)
        except Exception as exc:  # never let one odd event stop the worker
            log.exception("rules_error", error=repr(exc),
                          session=event.session_key if event else None)
            return
        self.apply(decisions)

    async def run(self) -> None:
        while True:
            deadline = self.rules.next_deadline()
            timeout = MAX_IDLE_WAIT if deadline is None else max(0.0, deadline - self.clock())
            event: Event | None = None
            try:
                async with asyncio.timeout(min(timeout, MAX_IDLE_WAIT)):
                    event = await self.queue.get()
            except TimeoutError:
                pass
            self.step(event)
            # Take everything already queued in one go: the HTTP side can queue many
            # events per loop iteration, and the worker must keep up with it.
            for _ in range(self.queue.qsize()):
                self.step(self.queue.get_nowait())

    def drain(self) -> None:
        """Shutdown: everything queued goes through the rules; held pauses are kept."""
        while True:
            try:
                event = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            self.step(event)
        self.step(None)
        self.apply(self.rules.flush_pending())
