"""The edge's summary lines, each at most once a minute: ``connections_short``, ``bodies_short``
and ``silent_connections`` (connections that never sent a byte, closed at ``header_timeout``)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from cwhook.kernel import logs

log = logs.get("cwhook.http")

WARN_EVERY = 60.0  # seconds between two connections_short warnings, or two silent_connections lines
SILENT_GATHER = 5.0  # seconds from the first silent connection to its summary line


class Notices:
    """What the edge closed or refused since its last line of each kind, and when that line was."""

    def __init__(self, loop: asyncio.AbstractEventLoop, counts: Counter[str], budget: int,
                 header_timeout: float) -> None:
        self.loop = loop
        self.counts = counts  # connections closed, by reason (for /metrics)
        self.budget = budget
        self.header_timeout = header_timeout
        self.evicted: Counter[str] = Counter()  # bodies dropped since the last warning, by reason
        self.closed_idle = 0
        self.refused = 0
        self.silent = 0  # silent connections closed since the last summary
        self.warned_at: float | None = None
        self.bodies_warned_at: float | None = None
        self.silent_logged_at: float | None = None
        self.silent_timer: asyncio.TimerHandle | None = None

    def connections_short(self, note: str, open_now: int, capacity: int) -> None:
        now = time.monotonic()
        if self.warned_at is not None and now - self.warned_at < WARN_EVERY:
            return
        self.warned_at = now
        log.warning("connections_short", open=open_now, capacity=capacity,
                    closed_idle=self.closed_idle, refused=self.refused,
                    closed_slow=self.evicted.pop("body_slots", 0), note=note)
        self.closed_idle = self.refused = 0

    def bodies_short(self, in_memory: int, receiving: int) -> None:
        """Bodies were dropped for memory: one ``bodies_short`` warning a minute at most."""
        now = time.monotonic()
        if self.bodies_warned_at is not None and now - self.bodies_warned_at < WARN_EVERY:
            return
        self.bodies_warned_at = now
        log.warning("bodies_short", budget=self.budget, in_memory=in_memory,
                    receiving=receiving, dropped=self.evicted.pop("body_memory", 0),
                    note="bodies in memory reached the budget; the slowest (then the largest) were "
                         "answered 503 busy")

    def silent_closed(self) -> None:
        """A connection closed at ``header_timeout`` without a byte: one summary line a minute.

        The first summary comes ``SILENT_GATHER`` seconds after the first such connection (a
        burst is one line), the next ones no sooner than ``WARN_EVERY`` after the previous."""
        self.counts["silent"] += 1
        self.silent += 1
        if self.silent_timer is None:
            now = self.loop.time()
            due = now + SILENT_GATHER
            if self.silent_logged_at is not None:
                due = max(due, self.silent_logged_at + WARN_EVERY)
            self.silent_timer = self.loop.call_at(due, self.log_silent)

    def log_silent(self) -> None:
        """The summary of silent connections (also at shutdown, so that none goes unmentioned)."""
        if self.silent_timer is not None:
            self.silent_timer.cancel()
            self.silent_timer = None
        if not self.silent:
            return
        self.silent_logged_at = self.loop.time()
        log.info("silent_connections", closed=self.silent, total=self.counts["silent"],
                 note=f"connections that sent nothing within {self.header_timeout:g} s were closed")
        self.silent = 0
