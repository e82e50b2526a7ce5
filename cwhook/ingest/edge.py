"""The daemon's edge towards hostile clients: connections, timeouts, protocol errors, body memory.

aiohttp parses HTTP; the edge decides how long a connection may take and what it is answered
when aiohttp itself gives up. This module holds its limits and what the app and the daemon use;
the parts are beside it in cwhook/ingest/:

- ``Runner`` (an ``AppRunner``) raises the open-file soft limit to the hard limit, and serves
  the app through ``server.EdgeServer``, whose connections are ``protocol.EdgeProtocol``.
- ``protocol.EdgeProtocol`` times a request's headers and body, and answers aiohttp's protocol
  errors in JSON without quoting the request line (it holds the token).
- ``server.EdgeServer`` counts connections. Over capacity (the open-file limit less a reserve),
  the oldest idle connections are closed first; with none idle, the newcomer gets 503 JSON.
  ``notices`` writes ``connections_short``, ``bodies_short`` and ``silent_connections`` at most
  once a minute.
- ``budget.Flow`` caps the bytes of all request bodies in memory at once, aiohttp's buffers
  included: over the budget, the slowest bodies are dropped (503 busy) until there is room;
  ``Lease`` counts what the app keeps of a body. Hostile header values are refused before
  the app sees them (``screening.header_problem``).
- ``aiohttp_adapter`` is the one module that touches aiohttp's private parts.

The timeouts have hidden environment overrides (``_CWHOOK_EDGE_<FIELD>``) so that tests can
use seconds instead of the real values.
"""

from __future__ import annotations

import asyncio
import resource
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from aiohttp import web

from cwhook.ingest import aiohttp_adapter as aio
from cwhook.ingest import errors
from cwhook.ingest.budget import BodyEvicted, Busy
from cwhook.ingest.protocol import EdgeProtocol
from cwhook.ingest.screening import READ_HEADERS, header_problem, json_error
from cwhook.ingest.server import BACKLOG, EdgeServer
from cwhook.kernel import logs

__all__ = ["BACKLOG", "COUNTS", "ENCODINGS", "LIMITS", "READ_HEADERS", "BodyEvicted", "Busy", "Lease", "Limits",
           "Runner", "dropped", "install", "no_linger", "raise_open_file_limit",
           "safety_net", "was_dropped"]

log = logs.get("cwhook.http")

ENCODINGS = ("", "identity", "gzip", "deflate")  # what request bodies may be encoded with
ENV_PREFIX = "_CWHOOK_EDGE_"


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
    read_size: int = 64 << 10  # bytes read from a socket at once; aiohttp buffers twice this per body
    max_connections: int = 4096  # lowered further to fit the open-file limit
    reserved_fds: int = 256  # descriptors kept for accept batches, SQLite, Trakt, logs

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Limits:
        """The defaults, with hidden test overrides such as ``_CWHOOK_EDGE_IDLE_TIMEOUT=1`` from
        ``env`` (the process environment, read by cwhook/service/environment.py only)."""
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


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


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
            return errors.http_exception_answer(exc)
        except Exception as exc:
            log.error("request_error", error=type(exc).__name__, remote=request.remote)
            return json_error(500, {"error": "internal"})

    return handle


class Runner(aio.ServerHookRunner):
    """``AppRunner`` serving through ``EdgeServer``, with the open-file limit raised first."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        self.limits = app.get(LIMITS) or Limits()
        kwargs.setdefault("access_log", None)
        kwargs.setdefault("read_bufsize", self.limits.read_size)  # aiohttp pauses a body at twice this
        super().__init__(app, handle_signals=False, keepalive_timeout=self.limits.idle_timeout, **kwargs)
        self.capacity = self.limits.max_connections
        self.loop: asyncio.AbstractEventLoop | None = None
        self.previous_handler: Any = None  # the loop's exception handler before setup

    async def setup(self) -> None:
        self.capacity = self.limits.capacity(raise_open_file_limit())
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self.on_loop_error)
        await super().setup()

    async def cleanup(self) -> None:
        await super().cleanup()
        if self.loop is not None:
            self.loop.set_exception_handler(self.previous_handler)

    def serve_with(self, server: web.Server) -> web.Server:
        return EdgeServer(server, safety_net(server.request_handler), self.limits, self.capacity,
                          self.app.get(COUNTS))

    def on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        server = self.server
        if isinstance(server, EdgeServer) and server.loop_error(loop, context):
            return
        if self.previous_handler is not None:
            self.previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)


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
    app[LIMITS] = limits or Limits()


def was_dropped(request: web.BaseRequest) -> bool:
    proto = request.protocol
    return isinstance(proto, EdgeProtocol) and proto.body_evicted and proto.body is request.content


def dropped(request: web.BaseRequest) -> None:
    """The app saw ``BodyEvicted`` for this request (it answers 503 busy)."""
    aio.forgive(request.content)


def no_linger(request: web.BaseRequest) -> None:
    proto = request.protocol
    if isinstance(proto, EdgeProtocol):
        proto.no_linger()
