"""One connection of the edge: header and body timeouts, JSON protocol errors.

``EdgeProtocol`` (aiohttp's ``RequestHandler``) closes a connection whose request headers do
not arrive within ``header_timeout`` (408, JSON) and one whose body stalls for ``body_stall``;
idle keep-alive connections close after ``idle_timeout`` (aiohttp's own keep-alive timer). It
answers aiohttp's protocol errors (malformed request line or header, unsupported
Content-Encoding) in JSON, logs them as one ``request`` line, and never quotes the request
line (it holds the token).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from cwhook.ingest import aiohttp_adapter as aio
from cwhook.ingest.budget import BodyEvicted
from cwhook.ingest.screening import BUSY_ANSWER, HEADER_TIMEOUT_ANSWER, json_error, protocol_error
from cwhook.kernel import logs

if TYPE_CHECKING:
    from cwhook.ingest.server import EdgeServer

log = logs.get("cwhook.http")

EVICTED_LINGER = 1.0  # seconds a dropped body's connection stays open after its 503


class EdgeProtocol(RequestHandler):
    """aiohttp's per-connection handler, with header/body timeouts and JSON protocol errors.

    The state of aiohttp's own it reads (between requests, closing, ...) goes through
    ``aiohttp_adapter``; its own attributes have no leading underscore, so that none can
    shadow one of aiohttp's (tests/test_edge_adapter.py checks both).
    """

    def __init__(self, manager: EdgeServer, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self.loop = loop
        self.edge = manager
        self.last_active = 0.0
        self.evicted = False
        self.heard = False  # a byte arrived on this connection
        self.body: StreamReader | None = None  # the body of the latest request
        self.body_started = 0.0  # when the latest request's headers were complete
        self.app_held = 0  # bytes of bodies the app holds for this connection (Lease)
        self.counted = 0  # bytes of bodies counted for this connection in the edge's budget
        self.body_evicted = False
        self.header_timer: asyncio.TimerHandle | None = None
        self.stall_timer: asyncio.TimerHandle | None = None

    # state

    def between_requests(self) -> bool:
        return self.body is None or bool(self.body.is_eof())

    @property
    def idle(self) -> bool:
        """No request being handled or received (a request's headers may be on their way)."""
        return (not aio.handling_request(self) and not aio.requests_waiting(self) and self.between_requests()
                and not aio.closing(self))

    def no_linger(self) -> None:
        """Close right after the answer instead of reading the rest of the body."""
        aio.linger_for(self, 0.0)

    def evict(self) -> None:
        self.evicted = True
        self.force_close()

    def receiving(self) -> bool:
        """A request body is on its way (not complete, not evicted)."""
        return not self.body_evicted and not self.between_requests() and self.transport is not None

    def body_rate(self, now: float) -> float:
        """Bytes a second of the body being received, since its headers were complete."""
        return aio.received(self.body) / max(now - self.body_started, 1e-3)

    def in_memory(self) -> int:
        """Bytes of bodies this connection holds: aiohttp's unread buffer and what the app keeps."""
        return aio.buffered(self.body) + self.app_held

    def evict_body(self) -> None:
        """Drop the body being received: its buffer at once, the request answered 503 busy.

        The rest of the body is read and thrown away for ``EVICTED_LINGER`` seconds before the
        close, so that the client reads its 503 (a close with unread data resets the connection).
        """
        self.body_evicted = True
        aio.linger_for(self, EVICTED_LINGER)
        if self.body is not None:
            aio.drop(self.body, BodyEvicted("evicted: bodies in flight were short of memory or connections"))

    # events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        aio.small_reads(transport, self.edge.limits.read_size)
        self.last_active = self.loop.time()
        if not self.edge.admit(self):
            if self.transport is not None:
                self.transport.write(BUSY_ANSWER)
            self.force_close()
            return
        self.start_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.edge.gone(self)
        self.edge.flow.forget(self)
        for timer in (self.header_timer, self.stall_timer):
            if timer is not None:
                timer.cancel()
        self.header_timer = self.stall_timer = None
        self.body = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.body_evicted:
            return  # the connection closes after its 503; nothing more is kept
        begins = False  # this read starts the next request
        if data:
            self.heard = True
            self.last_active = self.loop.time()
            begins = self.header_timer is None and self.between_requests()
        before = aio.requests_parsed(self)
        super().data_received(data)
        if aio.requests_parsed(self) != before:
            self.headers_complete()
        elif begins:
            # The next request has begun and its headers are not complete: timed from this first
            # read. (Most requests arrive whole in one read: no timer to set and cancel for them.
            # A read that ends a body begins nothing, though the connection is between requests after it.)
            self.start_header_timer()
        if self.body is not None or self.counted:
            self.edge.flow.account(self)

    def headers_complete(self) -> None:
        """A request's headers are complete: its body (if any) is timed from now."""
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        body = aio.latest_body(self)
        if body is not None:
            self.body = body
            self.body_started = self.last_active
            if not body.is_eof() and self.stall_timer is None:
                self.stall_timer = self.loop.call_at(
                    self.last_active + self.edge.limits.body_stall, self.check_stall)

    def start_header_timer(self) -> None:
        self.header_timer = self.loop.call_later(self.edge.limits.header_timeout, self.header_timed_out)

    def header_timed_out(self) -> None:
        self.header_timer = None
        if self.transport is None or aio.closing(self) or not self.idle:
            return
        if self.heard:
            log.info("request", status=408, outcome="header_timeout", remote=self.peer())
        else:  # a connection that never sent a byte: counted, and summed up once a minute
            self.edge.notices.silent_closed()
        self.transport.write(HEADER_TIMEOUT_ANSWER)
        self.force_close()

    def check_stall(self) -> None:
        self.stall_timer = None
        payload = self.body
        if payload is None or payload.is_eof() or self.transport is None or aio.closing(self):
            return
        now = self.loop.time()
        if aio.reading_paused(self):  # the app is not reading (busy with what it has)
            self.last_active = now
        due = self.last_active + self.edge.limits.body_stall
        if now >= due:
            log.info("body_stalled", remote=self.peer(), stalled_s=round(now - self.last_active, 1),
                     note="closed the connection")
            self.force_close()
            return
        self.stall_timer = self.loop.call_at(due, self.check_stall)

    def peer(self) -> str | None:
        info = self.transport.get_extra_info("peername") if self.transport is not None else None
        return str(info[0]) if isinstance(info, tuple) and info else None

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's "Unhandled exception": a body that cannot be decoded is the client's fault."""
        exc = kw.get("exc_info")
        if isinstance(exc, (RequestPayloadError, ConnectionError)):
            log.debug("connection_error", error=type(exc).__name__, remote=self.peer())
            return
        log.error("http_error", error=type(exc).__name__ if isinstance(exc, BaseException) else None,
                  remote=self.peer(), exc_info=exc if isinstance(exc, BaseException) else None)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse or handle: JSON, logged without the line."""
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already being sent")
        status, body = protocol_error(status, exc)
        if status >= 500:
            log.error("request_error", error=type(exc).__name__ if exc else "unknown", remote=request.remote)
        else:
            log.info("request", status=status, outcome="protocol_error", detail=body.get("detail"),
                     remote=request.remote)
        resp = json_error(status, body)
        resp.force_close()
        return resp
