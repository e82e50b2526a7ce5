"""The daemon's edge towards hostile clients: connections, timeouts, protocol errors, body memory.

aiohttp parses HTTP; this module decides how long a connection may take and what it is
answered when aiohttp itself gives up:

- ``Runner`` (an ``AppRunner``) raises the open-file soft limit to the hard limit, and serves
  the app through ``EdgeServer``/``EdgeProtocol``.
- ``EdgeProtocol`` (aiohttp's ``RequestHandler``) closes a connection whose request headers
  do not arrive within ``header_timeout`` (408, JSON) and one whose body stalls for
  ``body_stall``; idle keep-alive connections close after ``idle_timeout`` (aiohttp's own
  keep-alive timer). It answers aiohttp's protocol errors (malformed request line or header,
  unsupported Content-Encoding) in JSON, logs them as one ``request`` line, and never quotes
  the request line (it holds the token).
- ``EdgeServer`` counts connections. Over capacity (the open-file limit less a reserve), the
  oldest idle connections are closed first; with none idle, the newcomer gets 503 JSON. The
  event loop's ``accept() out of system resource`` errors are handled the same way. Either
  logs ``connections_short`` at most once a minute.
- ``BodyBudget`` caps the bytes of all request bodies held in memory at once: a request
  waits for room, then gets 503.

The timeouts have hidden environment overrides (``_CWHOOK_EDGE_<FIELD>``) so that tests can
use seconds instead of the real values.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import resource
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from cwhook import logs

log = logs.get("cwhook.http")

ENCODINGS = ("", "identity", "gzip", "deflate")  # what request bodies may be encoded with
WARN_EVERY = 60.0  # seconds between two connections_short warnings, or two silent_connections lines
SILENT_GATHER = 5.0  # seconds from the first silent connection to its summary line
BACKLOG = 128
ENV_PREFIX = "_CWHOOK_EDGE_"
_REASON = re.compile(r"[A-Za-z][A-Za-z '\-,.]{0,79}")


@dataclass(frozen=True)
class Limits:
    idle_timeout: float = 15.0  # a keep-alive connection without a request
    header_timeout: float = 10.0  # from connect, or a request's first byte, to its last header
    body_stall: float = 30.0  # no byte of a body being received for this long
    body_deadline: float = 60.0  # the part of a body cwhook reads arrives within this
    max_raw_body: int = 1 << 20  # raw (non-multipart) bodies, and the JSON part of a multipart one
    body_budget: int = 16 << 20  # bytes of all bodies being received at once
    budget_wait: float = 10.0  # a request waits this long for room in the budget, then 503
    max_connections: int = 4096  # lowered further to fit the open-file limit
    reserved_fds: int = 256  # descriptors kept for accept batches, SQLite, Trakt, logs

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        """The defaults, with hidden test overrides such as ``_CWHOOK_EDGE_IDLE_TIMEOUT=1``."""
        env = os.environ if env is None else env
        changes: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            kind = int if isinstance(getattr(cls, f.name), int) else float
            try:
                value = kind(raw)
            except ValueError:
                continue
            if value > 0:
                changes[f.name] = value
        return replace(cls(), **changes)

    def capacity(self, open_files: int) -> int:
        """How many connections may be open at once with this many descriptors."""
        return max(16, min(self.max_connections, open_files - self.reserved_fds))


LIMITS: web.AppKey[Limits] = web.AppKey("edge_limits", Limits)
# Where the edge counts the connections it closes on its own, by reason ("silent": no byte
# before header_timeout); the app points it at its counters for /metrics.
COUNTS: web.AppKey[Counter[str]] = web.AppKey("edge_counts", Counter)


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit in force after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("open_files_limit", soft=soft, hard=hard, error=str(exc),
                        note="could not raise the soft limit; set LimitNOFILE in the unit")
            return soft
        log.info("open_files_limit", raised_from=soft, soft=target, hard=hard)
        return target
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


# --- answers written without aiohttp ------------------------------------------------------


def raw_response(status: int, reason: str, body: dict[str, Any], extra: str = "") -> bytes:
    """A complete HTTP/1.1 response that closes the connection (for when aiohttp has no request)."""
    data = json.dumps(body).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n{extra}\r\n")
    return head.encode("latin-1") + data


HEADER_TIMEOUT_ANSWER = raw_response(408, "Request Timeout",
                                     {"error": "timeout", "detail": "the request headers took too long"})
BUSY_ANSWER = raw_response(503, "Service Unavailable", {"error": "busy"}, "Retry-After: 5\r\n")


# What aiohttp's parser could not take, in words (first match wins; order: most specific first).
_PROTOCOL_DETAILS: tuple[tuple[type[BaseException], str], ...] = (
    (http_exceptions.LineTooLong, "request line or header too long"),
    (http_exceptions.BadStatusLine, "malformed request line"),
    (http_exceptions.InvalidHeader, "malformed header"),
    (http_exceptions.InvalidURLError, "malformed URL"),
    (http_exceptions.TransferEncodingError, "malformed Transfer-Encoding"),
    (http_exceptions.ContentLengthError, "malformed Content-Length"),
)


def protocol_error(status: int, exc: BaseException | None) -> tuple[int, dict[str, str]]:
    """The JSON answer to what aiohttp could not parse; never quotes the request itself."""
    if status >= 500:
        return 500, {"error": "internal"}
    if isinstance(exc, http_exceptions.ContentEncodingError):
        return 400, {"error": "bad_payload",
                     "detail": "unsupported or corrupt Content-Encoding (gzip and deflate are accepted)"}
    detail = next((text for kind, text in _PROTOCOL_DETAILS if isinstance(exc, kind)), "malformed request")
    # llhttp's reason is the first line ("Invalid header token:"); the request it quotes
    # (token included) comes on the lines after it and is never repeated.
    reason = str(getattr(exc, "message", "") or "").split("\n", 1)[0].strip().rstrip(":")
    if _REASON.fullmatch(reason):
        detail += f" ({reason})"
    return 400, {"error": "bad_request", "detail": detail}


def json_error(status: int, body: dict[str, str], headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def http_exception_answer(exc: web.HTTPException) -> web.Response:
    """aiohttp's own answers (404, 405 ...) in JSON, keeping the headers that matter
    (``Allow`` of a 405, ``Retry-After``). The one converter: the app's middleware and the
    safety net both use it."""
    code = (exc.reason or "error").lower().replace(" ", "_")
    keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    return json_error(exc.status, {"error": code}, keep)


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

# The request headers aiohttp or cwhook interprets. Each must appear at most once, hold only
# printable ASCII (tab included) and stay short; aiohttp itself bounds every line at 8 KiB.
# Any other header is never read, so anything goes there.
READ_HEADERS = ("Host", "Expect", "Connection", "Upgrade", "Content-Type", "Content-Length",
                "Content-Encoding", "Transfer-Encoding", "Accept")
MAX_READ_HEADER = 1024
_PRINTABLE = re.compile(r"[\t\x20-\x7e]*")


def header_problem(request: web.BaseRequest) -> tuple[int, dict[str, str]] | None:
    """What is wrong with a header cwhook or aiohttp reads (a JSON 4xx), or None.

    Never quotes the value. ``Expect`` other than ``100-continue`` is 417, as aiohttp
    answers it, but in JSON (aiohttp's own answer quotes the value and fails on non-ASCII).
    """
    headers = request.headers
    for name in READ_HEADERS:
        values = headers.getall(name, ())
        if not values:
            continue
        if len(values) > 1:
            return 400, {"error": "bad_request", "detail": f"malformed {name} header (repeated)"}
        value = values[0]
        if len(value) > MAX_READ_HEADER:
            return 400, {"error": "bad_request", "detail": f"malformed {name} header (too long)"}
        if not _PRINTABLE.fullmatch(value):
            return 400, {"error": "bad_request",
                         "detail": f"malformed {name} header (a byte that is not printable ASCII)"}
    expect = headers.get("Expect")
    if expect is not None and expect.strip().lower() != "100-continue":
        return 417, {"error": "expectation_failed", "detail": "only Expect: 100-continue is supported"}
    return None


def safety_net(handler: Handler) -> Handler:
    """The outermost handler: hostile headers get a JSON 4xx, and whatever escapes the app is
    still answered in JSON."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        problem = header_problem(request)
        if problem is not None:
            status, body = problem
            log.info("request", status=status, outcome="protocol_error", detail=body["detail"],
                     remote=request.remote)
            no_linger(request)
            answer = json_error(status, body)
            answer.force_close()
            return answer
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return http_exception_answer(exc)
        except Exception as exc:
            log.error("request_error", error=type(exc).__name__, remote=request.remote)
            return json_error(500, {"error": "internal"})

    return handle


# --- connections ----------------------------------------------------------------------------


class EdgeProtocol(RequestHandler):
    """aiohttp's per-connection handler, with header/body timeouts and JSON protocol errors.

    The state read here (``_messages``, ``_request_in_progress``, ``_reading_paused``,
    ``_force_close``, ``_lingering_time``) is aiohttp's own; tests/test_edge_* pin it.
    """

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.edge = manager
        self.last_active = 0.0
        self.evicted = False
        self.heard = False  # a byte arrived on this connection
        self._payload: Any = None  # the body of the latest request
        self._header_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None

    # state

    def _between_requests(self) -> bool:
        return self._payload is None or bool(self._payload.is_eof())

    @property
    def idle(self) -> bool:
        """No request being handled or received (a request's headers may be on their way)."""
        return (not self._request_in_progress and not self._messages and self._between_requests()
                and not self._force_close)

    def no_linger(self) -> None:
        """Close right after the answer instead of reading the rest of the body."""
        self._lingering_time = 0.0

    def evict(self) -> None:
        self.evicted = True
        self.force_close()

    # events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.last_active = self._loop.time()
        if not self.edge.admit(self):
            if self.transport is not None:
                self.transport.write(BUSY_ANSWER)
            self.force_close()
            return
        self._start_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.edge.gone(self)
        for timer in (self._header_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._stall_timer = None
        self._payload = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data:
            self.heard = True
            self.last_active = self._loop.time()
            if self._header_timer is None and self._between_requests():
                self._start_header_timer()  # the first byte of the next request
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:  # a request's headers are complete
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if self._messages:
                self._payload = self._messages[-1][1]
                if not self._payload.is_eof() and self._stall_timer is None:
                    self._stall_timer = self._loop.call_at(
                        self.last_active + self.edge.limits.body_stall, self._check_stall)

    def _start_header_timer(self) -> None:
        self._header_timer = self._loop.call_later(self.edge.limits.header_timeout, self._header_timeout)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport is None or self._force_close or not self.idle:
            return
        if self.heard:
            log.info("request", status=408, outcome="header_timeout", remote=self._peer())
        else:  # a connection that never sent a byte: counted, and summed up once a minute
            self.edge.silent_closed()
        self.transport.write(HEADER_TIMEOUT_ANSWER)
        self.force_close()

    def _check_stall(self) -> None:
        self._stall_timer = None
        payload = self._payload
        if payload is None or payload.is_eof() or self.transport is None or self._force_close:
            return
        now = self._loop.time()
        if self._reading_paused:  # cwhook is not reading (waiting for room in the budget)
            self.last_active = now
        due = self.last_active + self.edge.limits.body_stall
        if now >= due:
            log.info("body_stalled", remote=self._peer(), stalled_s=round(now - self.last_active, 1),
                     note="closed the connection")
            self.force_close()
            return
        self._stall_timer = self._loop.call_at(due, self._check_stall)

    def _peer(self) -> str | None:
        info = self.transport.get_extra_info("peername") if self.transport is not None else None
        return str(info[0]) if isinstance(info, tuple) and info else None

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's "Unhandled exception": a body that cannot be decoded is the client's fault."""
        exc = kw.get("exc_info")
        if isinstance(exc, (RequestPayloadError, ConnectionError)):
            log.debug("connection_error", error=type(exc).__name__, remote=self._peer())
            return
        log.error("http_error", error=type(exc).__name__ if isinstance(exc, BaseException) else None,
                  remote=self._peer(), exc_info=exc if isinstance(exc, BaseException) else None)

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


class EdgeServer(web.Server):
    """aiohttp's connection factory, with a bound on the connections open at once."""

    def __init__(self, inner: web.Server, limits: Limits, capacity: int,
                 counts: Counter[str] | None = None) -> None:
        super().__init__(safety_net(inner.request_handler), request_factory=inner.request_factory,
                         handler_cancellation=inner.handler_cancellation, loop=inner._loop,
                         **inner._kwargs)
        self.limits = limits
        self.capacity = capacity
        self.counts: Counter[str] = Counter() if counts is None else counts  # connections closed, by reason
        self.live: set[EdgeProtocol] = set()
        self.batch = max(1, capacity // 32)
        self._warned_at: float | None = None
        self._closed_idle = 0
        self._refused = 0
        self._silent = 0  # silent connections closed since the last summary
        self._silent_logged_at: float | None = None
        self._silent_timer: asyncio.TimerHandle | None = None

    def __call__(self) -> RequestHandler:
        return EdgeProtocol(self, loop=self._loop, **self._kwargs)

    def admit(self, proto: EdgeProtocol) -> bool:
        """Room for one more connection: close the oldest idle ones when full; False to refuse."""
        self.live.add(proto)
        if len(self.live) <= self.capacity:
            return True
        if self.relieve(exclude=proto):
            return True
        self.live.discard(proto)
        self._refused += 1
        self._warn("connections are at the limit and none is idle; refused a new one")
        return False

    def relieve(self, exclude: EdgeProtocol | None = None, batch: int | None = None,
                why: str = "connections are at the limit") -> int:
        """Close a batch of the oldest idle connections; how many were closed."""
        idle = sorted((p for p in self.live if p is not exclude and p.idle), key=lambda p: p.last_active)
        victims = idle[:batch or self.batch]
        for proto in victims:
            self.live.discard(proto)
            proto.evict()
        self._closed_idle += len(victims)
        if victims:
            self._warn(f"{why}; closed the oldest idle ones")
        return len(victims)

    def gone(self, proto: EdgeProtocol) -> None:
        self.live.discard(proto)

    def silent_closed(self) -> None:
        """A connection closed at ``header_timeout`` without a byte: one summary line a minute.

        The first summary comes ``SILENT_GATHER`` seconds after the first such connection (a
        burst is one line), the next ones no sooner than ``WARN_EVERY`` after the previous."""
        self.counts["silent"] += 1
        self._silent += 1
        if self._silent_timer is None:
            now = self._loop.time()
            due = now + SILENT_GATHER
            if self._silent_logged_at is not None:
                due = max(due, self._silent_logged_at + WARN_EVERY)
            self._silent_timer = self._loop.call_at(due, self.log_silent)

    def log_silent(self) -> None:
        """The summary of silent connections (also at shutdown, so that none goes unmentioned)."""
        if self._silent_timer is not None:
            self._silent_timer.cancel()
            self._silent_timer = None
        if not self._silent:
            return
        self._silent_logged_at = self._loop.time()
        log.info("silent_connections", closed=self._silent, total=self.counts["silent"],
                 note=f"connections that sent nothing within {self.limits.header_timeout:g} s were closed")
        self._silent = 0

    async def shutdown(self, timeout: float | None = None) -> None:
        self.log_silent()
        await super().shutdown(timeout)

    def _warn(self, note: str) -> None:
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY:
            return
        self._warned_at = now
        log.warning("connections_short", open=len(self.live), capacity=self.capacity,
                    closed_idle=self._closed_idle, refused=self._refused, note=note)
        self._closed_idle = self._refused = 0

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
            self._warn(f"{why}; no idle connection to close")
        return True


class Runner(web.AppRunner):
    """``AppRunner`` serving through ``EdgeServer``, with the open-file limit raised first."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        self.limits = app.get(LIMITS) or Limits.from_env()
        kwargs.setdefault("access_log", None)
        super().__init__(app, handle_signals=False, keepalive_timeout=self.limits.idle_timeout, **kwargs)
        self.capacity = self.limits.max_connections
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    async def setup(self) -> None:
        self.capacity = self.limits.capacity(raise_open_file_limit())
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_error)
        await super().setup()

    async def cleanup(self) -> None:
        await super().cleanup()
        if self._loop is not None:
            self._loop.set_exception_handler(self._previous)

    async def _make_server(self) -> web.Server:
        inner = await super()._make_server()
        return EdgeServer(inner, self.limits, self.capacity, self.app.get(COUNTS))

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        server = self.server
        if isinstance(server, EdgeServer) and server.loop_error(loop, context):
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)


# --- memory for bodies ----------------------------------------------------------------------------


class Busy(Exception):
    """No room for this body under the budget within the wait."""


class BodyBudget:
    """Bytes of all request bodies held at once; takers wait in line for room."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[bool]]] = deque()

    async def take(self, n: int, wait: float) -> bool:
        """Room for ``n`` more bytes: True at once or once there is room, False after ``wait``."""
        if not self._waiters and self.used + n <= self.capacity:
            self.used += n
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiters.append((n, fut))
        timer = loop.call_later(wait, self._expire, fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():
                self.give(n)
            raise
        finally:
            timer.cancel()

    def give(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _expire(self, fut: asyncio.Future[bool]) -> None:
        if not fut.done():
            fut.set_result(False)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.used + n > self.capacity:
                return
            self._waiters.popleft()
            self.used += n
            fut.set_result(True)


BUDGET: web.AppKey[BodyBudget] = web.AppKey("edge_budget", BodyBudget)


class Lease:
    """One request's share of the budget, given back when the request is done."""

    def __init__(self, budget: BodyBudget, wait: float) -> None:
        self.budget = budget
        self.wait = wait
        self.held = 0

    async def grow_to(self, total: int) -> None:
        if total <= self.held:
            return
        more = total - self.held
        if not await self.budget.take(more, self.wait):
            raise Busy()
        self.held = total

    def release(self) -> None:
        if self.held:
            self.budget.give(self.held)
            self.held = 0


def install(app: web.Application, limits: Limits | None = None) -> None:
    """Give the app its limits and its body budget (before the app starts)."""
    limits = limits or Limits.from_env()
    app[LIMITS] = limits
    app[BUDGET] = BodyBudget(limits.body_budget)


def no_linger(request: web.BaseRequest) -> None:
    proto = request.protocol
    if isinstance(proto, EdgeProtocol):
        proto.no_linger()
