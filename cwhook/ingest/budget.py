"""The memory all request bodies may take at once (``Limits.body_budget``), aiohttp's buffers included."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cwhook.ingest.edge import Limits
    from cwhook.ingest.protocol import EdgeProtocol
    from cwhook.ingest.server import EdgeServer


class Busy(Exception):
    """This body was dropped to make room: answered 503 busy."""


class BodyEvicted(ConnectionError):
    """The body being received was dropped to make room (``Flow``): the request gets 503 busy."""


class Flow:
    """Bytes of all request bodies in memory, aiohttp's buffers included, under ``body_budget``.

    Each connection receiving a body is counted: aiohttp's unread buffer plus what the app
    keeps of it (``Lease``). When a read takes the total over the budget, bodies are dropped
    (``evict_body``: answered 503 busy, their buffer freed at once) until it is back under
    three quarters of it: trickles first (slower than ``slow_body_rate`` after
    ``slow_body_grace``), the slowest first, then those the app keeps most of. A webhook is a few
    kilobytes that arrive in milliseconds, so it is neither. Over the connection limit with
    none idle, the slowest trickles make room the same way (``evict_slow``).
    """

    def __init__(self, server: EdgeServer, limits: Limits) -> None:
        self.server = server
        self.limits = limits
        self.total = 0
        self.counted: set[EdgeProtocol] = set()

    def account(self, proto: EdgeProtocol) -> None:
        now = proto.in_memory()
        self.total += now - proto.counted
        proto.counted = now
        if now:
            self.counted.add(proto)
        else:
            self.counted.discard(proto)
        if self.total > self.limits.body_budget:
            self.relieve()

    def forget(self, proto: EdgeProtocol) -> None:
        self.total -= proto.counted
        proto.counted = 0
        self.counted.discard(proto)

    def _order(self, protos: list[EdgeProtocol], now: float) -> list[EdgeProtocol]:
        """Trickles first (the slowest first), then the others (those holding most first)."""
        grace, floor = self.limits.slow_body_grace, self.limits.slow_body_rate

        def key(p: EdgeProtocol) -> tuple[int, float]:
            rate = p.body_rate(now)
            if now - p.body_started >= grace and rate < floor:
                return 0, rate
            return 1, -p.app_held  # what the app keeps; aiohttp's buffer of a fast body is read at once

        return sorted(protos, key=key)

    def relieve(self) -> None:
        """Over the budget: recount everyone, then drop bodies until under 3/4 of it."""
        for proto in list(self.counted):  # aiohttp's lingering reads are not seen as they happen
            fresh = proto.in_memory()
            self.total += fresh - proto.counted
            proto.counted = fresh
            if not fresh:
                self.counted.discard(proto)
        low = self.limits.body_budget * 3 // 4
        if self.total <= self.limits.body_budget:
            return
        now = self.server.loop.time()
        for proto in self._order([p for p in self.counted if p.receiving()], now):
            if self.total <= low:
                break
            self._evict(proto, "body_memory")
        self.server.notices.bodies_short(self.total, len(self.counted))

    def evict_slow(self, n: int, reason: str) -> int:
        """Drop up to ``n`` trickling bodies, the slowest first; how many were dropped."""
        now = self.server.loop.time()
        grace, floor = self.limits.slow_body_grace, self.limits.slow_body_rate
        slow = [p for p in self.server.live if p.receiving() and now - p.body_started >= grace
                and p.body_rate(now) < floor]
        victims = self._order(slow, now)[:n]
        for proto in victims:
            self._evict(proto, reason)
        return len(victims)

    def _evict(self, proto: EdgeProtocol, reason: str) -> None:
        proto.evict_body()
        self.forget(proto)
        self.server.counts[reason] += 1
        self.server.notices.evicted[reason] += 1
