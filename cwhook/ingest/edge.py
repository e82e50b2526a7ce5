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
- ``Flow`` caps the bytes of all request bodies in memory at once, aiohttp's buffers
  included: over the budget, the slowest bodies are dropped (503 busy) until there is room;
  ``Lease`` counts what the app keeps of a body. Hostile header values are refused before
  the app sees them (``header_problem``).

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
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from cwhook.kernel import logs

log = logs.get("cwhook.http")

ENCODINGS = ("", "identity", "gzip", "deflate")  # what request bodies may be encoded with
WARN_EVERY = 60.0  # seconds between two connections_short warnings, or two silent_connections lines
EVICTED_LINGER = 1.0  # seconds a dropped body's connection stays open after its 503
QUIET = 1.0  # seconds without a byte before an idle connection is closed ahead of a trickling body
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
    body_budget: int = 8 << 20  # bytes of all bodies in memory at once (aiohttp's buffers included)
    slow_body_rate: int = 32 << 10  # bytes/s: a body slower than this (after the grace) is a trickle
    slow_body_grace: float = 1.0  # seconds a body gets before its pace is judged
    read_size: int = 16 << 10  # bytes read from a socket at once; aiohttp buffers twice this per body
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


# --- aiohttp's and asyncio's private state used for the body budget (tests/test_edge_* pin it) ---


def _buffered(payload: Any) -> int:
    """Bytes in a request body's StreamReader not read yet."""
    return int(getattr(payload, "_size", 0))


def _received(payload: Any) -> int:
    return int(getattr(payload, "total_bytes", 0))


def _small_reads(transport: asyncio.BaseTransport, size: int) -> None:
    """Read at most ``size`` bytes a time from this socket (asyncio's default is 256 KiB), so
    that what one read brings is small beside the body budget."""
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = size  # type: ignore[attr-defined]


def _drop(payload: Any, exc: BaseException) -> None:
    """Free what a body's StreamReader holds, and make its reader raise ``exc``.

    The end of the body is marked too: a read woken already (its waiter done, which
    ``set_exception`` leaves alone) loops back to wait while the buffer is empty and the body
    not at its end; with the end marked it returns instead."""
    payload._buffer.clear()
    payload._buffer_offset = 0
    payload._size = 0
    payload.set_exception(exc)
    payload._eof = True


def _forgive(payload: Any) -> None:
    """Once the app has seen the exception of a dropped body: clear it and the end mark, so
    that aiohttp's lingering close reads (and throws away) the rest for a moment instead of
    taking it for an error, and the client reads its answer before the close."""
    payload._exception = None
    payload._eof = False

# The request headers aiohttp or cwhook interprets. Each must appear at most once, hold only
# printable ASCII (tab included) and stay short; aiohttp itself bounds every line at 8 KiB.
# Any other header is never read, so anything goes there.
READ_HEADERS = ("Host", "Expect", "Connection", "Upgrade", "Content-Type", "Content-Length",
                "Content-Encoding", "Transfer-Encoding", "Accept", "X-Cwhook-Dry-Run")  # the last: preview
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
        self.body_started = 0.0  # when the latest request's headers were complete
        self.app_held = 0  # bytes of bodies the app holds for this connection (Lease)
        self.counted = 0  # bytes of bodies counted for this connection in the edge's budget
        self.body_evicted = False
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

    def receiving(self) -> bool:
        """A request body is on its way (not complete, not evicted)."""
        return not self.body_evicted and not self._between_requests() and self.transport is not None

    def body_rate(self, now: float) -> float:
        """Bytes a second of the body being received, since its headers were complete."""
        return _received(self._payload) / max(now - self.body_started, 1e-3)

    def in_memory(self) -> int:
        """Bytes of bodies this connection holds: aiohttp's unread buffer and what the app keeps."""
        return (_buffered(self._payload) if self._payload is not None else 0) + self.app_held

    def evict_body(self) -> None:
        """Drop the body being received: its buffer at once, the request answered 503 busy.

        The rest of the body is read and thrown away for ``EVICTED_LINGER`` seconds before the
        close, so that the client reads its 503 (a close with unread data resets the connection).
        """
        self.body_evicted = True
        self._lingering_time = EVICTED_LINGER
        _drop(self._payload, BodyEvicted("evicted: bodies in flight were short of memory or connections"))

    # events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        _small_reads(transport, self.edge.limits.read_size)
        self.last_active = self._loop.time()
        if not self.edge.admit(self):
            if self.transport is not None:
                self.transport.write(BUSY_ANSWER)
            self.force_close()
            return
        self._start_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.edge.gone(self)
        self.edge.flow.forget(self)
        for timer in (self._header_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._stall_timer = None
        self._payload = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.body_evicted:
            return  # the connection closes after its 503; nothing more is kept
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
                self.body_started = self.last_active
                if not self._payload.is_eof() and self._stall_timer is None:
                    self._stall_timer = self._loop.call_at(
                        self.last_active + self.edge.limits.body_stall, self._check_stall)
        if self._payload is not None or self.counted:
            self.edge.flow.account(self)

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
        if self._reading_paused:  # the app is not reading (busy with what it has)
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
        self.flow = Flow(self, limits)
        self.evicted: Counter[str] = Counter()  # bodies dropped since the last warning, by reason
        self._bodies_warned_at: float | None = None
        self._silent_logged_at: float | None = None
        self._silent_timer: asyncio.TimerHandle | None = None

    def __call__(self) -> RequestHandler:
        return EdgeProtocol(self, loop=self._loop, **self._kwargs)

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
            self._warn("connections are at the limit and none is idle; closed the slowest bodies")
            return True
        if self.relieve(exclude=proto):
            return True
        self.live.discard(proto)
        self._refused += 1
        self._warn("connections are at the limit and none is idle; refused a new one")
        return False

    def relieve(self, exclude: EdgeProtocol | None = None, batch: int | None = None,
                why: str = "connections are at the limit", quiet: float = 0.0) -> int:
        """Close a batch of the oldest idle connections (quiet for ``quiet`` s at least); how many."""
        since = self._loop.time() - quiet
        idle = sorted((p for p in self.live if p is not exclude and p.idle and p.last_active <= since),
                      key=lambda p: p.last_active)
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
                    closed_idle=self._closed_idle, refused=self._refused,
                    closed_slow=self.evicted.pop("body_slots", 0), note=note)
        self._closed_idle = self._refused = 0

    def note_evicted(self) -> None:
        """Bodies were dropped for memory: one ``bodies_short`` warning a minute at most."""
        now = time.monotonic()
        if self._bodies_warned_at is not None and now - self._bodies_warned_at < WARN_EVERY:
            return
        self._bodies_warned_at = now
        log.warning("bodies_short", budget=self.limits.body_budget, in_memory=self.flow.total,
                    receiving=len(self.flow.counted), dropped=self.evicted.pop("body_memory", 0),
                    note="bodies in memory reached the budget; the slowest (then the largest) were "
                         "answered 503 busy")

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
        kwargs.setdefault("read_bufsize", self.limits.read_size)  # aiohttp pauses a body at twice this
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
        now = self.server._loop.time()
        for proto in self._order([p for p in self.counted if p.receiving()], now):
            if self.total <= low:
                break
            self._evict(proto, "body_memory")
        self.server.note_evicted()

    def evict_slow(self, n: int, reason: str) -> int:
        """Drop up to ``n`` trickling bodies, the slowest first; how many were dropped."""
        now = self.server._loop.time()
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
        self.server.evicted[reason] += 1


class Lease:
    """What the app keeps of one request's body, counted in the edge's budget (``Flow``)."""

    def __init__(self, request: web.BaseRequest) -> None:
        proto = request.protocol
        self.proto = proto if isinstance(proto, EdgeProtocol) else None
        self.held = 0

    def hold(self, total: int) -> None:
        """The app now keeps ``total`` bytes of this body (never waits: the edge makes room)."""
        if self.proto is not None:
            self.proto.app_held += total - self.held
            self.held = total
            self.proto.edge.flow.account(self.proto)
        else:
            self.held = total

    def release(self) -> None:
        self.hold(0)


def install(app: web.Application, limits: Limits | None = None) -> None:
    """Give the app its limits (before the app starts)."""
    app[LIMITS] = limits or Limits.from_env()


def was_dropped(request: web.BaseRequest) -> bool:
    proto = request.protocol
    return isinstance(proto, EdgeProtocol) and proto.body_evicted and proto._payload is request.content


def dropped(request: web.BaseRequest) -> None:
    """The app saw ``BodyEvicted`` for this request (it answers 503 busy)."""
    _forgive(request.content)


def no_linger(request: web.BaseRequest) -> None:
    proto = request.protocol
    if isinstance(proto, EdgeProtocol):
        proto.no_linger()
