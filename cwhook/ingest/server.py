"""The edge's connection factory: every connection open at once, bounded by the open-file limit."""

from __future__ import annotations

import asyncio
import errno
import os
from collections import Counter
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cwhook.ingest import aiohttp_adapter as aio
from cwhook.ingest.budget import Flow
from cwhook.ingest.notices import Notices
from cwhook.ingest.protocol import EdgeProtocol

if TYPE_CHECKING:
    from aiohttp.web_protocol import RequestHandler

    from cwhook.ingest.edge import Handler, Limits

QUIET = 1.0  # seconds without a byte before an idle connection is closed ahead of a trickling body
BACKLOG = 128


class EdgeServer(web.Server):
    """aiohttp's connection factory, with a bound on the connections open at once.

    Over capacity, the oldest idle connections are closed first; with none idle, the newcomer
    gets 503 JSON. The event loop's ``accept() out of system resource`` errors are handled the
    same way."""

    def __init__(self, inner: web.Server, handler: Handler, limits: Limits, capacity: int,
                 counts: Counter[str] | None = None) -> None:
        self.loop = aio.server_loop(inner)
        super().__init__(handler, request_factory=inner.request_factory,
                         handler_cancellation=inner.handler_cancellation, loop=self.loop,
                         **aio.handler_options(inner))
        self.limits = limits
        self.capacity = capacity
        self.counts: Counter[str] = Counter() if counts is None else counts  # connections closed, by reason
        self.live: set[EdgeProtocol] = set()
        self.batch = max(1, capacity // 32)
        self.flow = Flow(self, limits)
        self.notices = Notices(self.loop, self.counts, limits.body_budget, limits.header_timeout)

    def __call__(self) -> RequestHandler:
        return EdgeProtocol(self, loop=self.loop, **aio.handler_options(self))

    def admit(self, proto: EdgeProtocol) -> bool:
        """Room for one more connection: close the oldest idle ones when full; False to refuse."""
        self.live.add(proto)
        if len(self.live) <= self.capacity:
            return True
        # idle ones quiet for a while first, then trickling bodies, then idle ones just accepted
        # (their request is likely on its way already)
        if self.relieve(exclude=proto, quiet=QUIET):
            return True
        if self.flow.evict_slow(self.batch, "body_slots"):
            self.warn("connections are at the limit and none is idle; closed the slowest bodies")
            return True
        if self.relieve(exclude=proto):
            return True
        self.live.discard(proto)
        self.notices.refused += 1
        self.warn("connections are at the limit and none is idle; refused a new one")
        return False

    def relieve(self, exclude: EdgeProtocol | None = None, batch: int | None = None,
                why: str = "connections are at the limit", quiet: float = 0.0) -> int:
        """Close a batch of the oldest idle connections (quiet for ``quiet`` s at least); how many."""
        since = self.loop.time() - quiet
        idle = sorted((p for p in self.live if p is not exclude and p.idle and p.last_active <= since),
                      key=lambda p: p.last_active)
        victims = idle[:batch or self.batch]
        for proto in victims:
            self.live.discard(proto)
            proto.evict()
        self.notices.closed_idle += len(victims)
        if victims:
            self.warn(f"{why}; closed the oldest idle ones")
        return len(victims)

    def gone(self, proto: EdgeProtocol) -> None:
        self.live.discard(proto)

    def warn(self, note: str) -> None:
        self.notices.connections_short(note, len(self.live), self.capacity)

    async def shutdown(self, timeout: float | None = None) -> None:
        self.notices.log_silent()
        await super().shutdown(timeout)

    def loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> bool:
        """Handle the loop's accept() failures for want of descriptors; False for anything else."""
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                                                           errno.ENOMEM)
                and "accept" in str(context.get("message", ""))):
            return False
        # asyncio retries accept() in a second: make room for a whole accept batch by then
        why = f"accept() failed: {os.strerror(exc.errno or 0)}"
        if not self.relieve(batch=max(self.batch, BACKLOG), why=why):
            self.warn(f"{why}; no idle connection to close")
        return True
