"""The aiohttp application: the four webhook endpoints, /healthz and /metrics.

A webhook request is answered at once: the body is read (multipart streamed,
only the JSON part kept), parsed by the pure parser of its server, filtered,
and the event put on the worker's queue. Nothing here waits on Trakt.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hmac
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

import aiohttp
import structlog
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError

from cwhook.config.schema import Config, ScrobbleConfig
from cwhook.ingest import dryrun, edge, filters, routing
from cwhook.ingest.multipart import PartScanner
from cwhook.kernel import logs, redact, vocab
from cwhook.kernel.event import BadPayload, Event, Ignored
from cwhook.sources.registry import SOURCES
from cwhook.state.store import StoreUnavailable
from cwhook.status.health import Counters

log = logs.get("cwhook.http")

ROUTES = {name: source.path for name, source in SOURCES.items()}
CHUNK = 65536
RETRY_AFTER_BUSY = "5"
RETRY_AFTER_UNAVAILABLE = "10"
DROPPED = "body dropped to make room"  # the detail of a request whose body the edge dropped
_request_ids = itertools.count(1)
# What the handler found out, for the middleware's one log line per request.
_request_notes: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("request_notes")


class TooLarge(Exception):
    pass


class ClientGone(Exception):
    """The client closed the connection before its body was complete."""


class BodyTimeout(Exception):
    """The body did not arrive within the limits' body deadline."""


async def _chunks(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The body as it arrives (decoded), never more than ``limit`` bytes in all."""
    total = 0
    while True:
        try:
            chunk = await request.content.read(CHUNK)
        except RequestPayloadError as exc:
            edge.no_linger(request)  # the rest of the body cannot be read either
            if isinstance(exc.__cause__, ContentEncodingError):
                raise BadPayload(f"the body is not valid {request.headers.get('Content-Encoding', '')[:20]} "
                                 "data (Content-Encoding)") from None
            raise ClientGone(str(exc)) from None
        except edge.BodyEvicted:
            edge.dropped(request)
            raise edge.Busy() from None
        except (ConnectionResetError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError) as exc:
            edge.no_linger(request)
            raise ClientGone(str(exc)) from None
        if not chunk:
            if edge.was_dropped(request):  # a read woken as its body was dropped
                edge.dropped(request)
                raise edge.Busy()
            return
        total += len(chunk)
        if total > limit:
            raise TooLarge()
        yield chunk


class Busy(Exception):
    """The worker is too far behind: answered 503 busy."""


class MetricsView(Protocol):
    """What the app needs of cwhook.status.metrics.Metrics."""

    def webhook_answered(self, server: str, seconds: float) -> None: ...
    def render(self, accept: str = "") -> tuple[bytes, str]: ...


def _no_journal(server: str, ignored: Ignored, event: Event | None) -> None:
    return None


@dataclass
class Runtime:
    """What the HTTP side shares with the daemon (the daemon swaps ``config`` on reload).

    ``ingest`` commits an event to the store's inbox and queues it for the worker;
    it raises ``Busy`` or ``StoreUnavailable``, and the 202 is sent only once it returned.
    """

    config: Config
    counters: Counters
    health: Callable[[], dict[str, Any]]
    ingest: Callable[[Event], Awaitable[None]]
    _: KW_ONLY
    # A test request's answer (cwhook/scrobble/preview.py): the journal's line and what each account would send.
    preview: Callable[[Event, ScrobbleConfig, float], tuple[str, dict[str, dict[str, Any]]]]
    metrics: MetricsView | None = None  # /metrics answers 404 without it
    # An event answered 200 ignored, for the decision journal (the event when it was understood).
    journal_ignored: Callable[[str, Ignored, Event | None], None] = _no_journal
    _routing: tuple[Config, routing.Router] | None = field(default=None, init=False, repr=False)

    def router(self, config: Config) -> routing.Router:
        """The accounts' patterns indexed, built once per config (a reload brings a new one)."""
        if self._routing is None or self._routing[0] is not config:
            self._routing = (config, routing.Router(config.trakt.routes))
        return self._routing[1]


RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def presented_token(raw_query: str) -> str:
    """The whole raw query string is the token; ``token=...`` is accepted too."""
    if raw_query.startswith("token="):
        return unquote(raw_query[len("token="):].split("&", 1)[0])
    return unquote(raw_query)


def token_ok(presented: str, expected: str) -> bool:
    if not expected:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "replace"), expected.encode("utf-8"))


async def read_payload(request: web.Request, field: str, limit: int) -> tuple[str, bytes]:
    """(content type, bytes) of the body, or of its multipart part named ``field``.

    ``limit`` bounds a multipart body; a raw body, and the part kept from a multipart one,
    are bounded by the edge limits too (1 MiB). What is kept counts against the body budget
    shared by all requests (``edge.Busy`` when the edge dropped this body to make room).
    """
    limits = request.app[edge.LIMITS]
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in edge.ENCODINGS:
        raise BadPayload(f"unsupported Content-Encoding {encoding[:20]!r} (gzip and deflate are accepted)")
    ctype = request.headers.get("Content-Type", "")
    multipart = ctype.lower().startswith("multipart/")
    cap = limit if multipart else min(limit, limits.max_raw_body)
    if request.content_length is not None and request.content_length > cap:
        raise TooLarge()
    lease = edge.Lease(request)
    try:
        async with asyncio.timeout(limits.body_deadline):
            if not multipart:
                parts: list[bytes] = []
                size = 0
                async for chunk in _chunks(request, cap):
                    size += len(chunk)
                    parts.append(chunk)
                    lease.hold(size)
                return ctype, b"".join(parts)
            scanner = PartScanner(ctype, field)
            async for chunk in _chunks(request, cap):
                found = scanner.feed(chunk)
                if found is not None:
                    if len(found) > limits.max_raw_body:
                        raise TooLarge()
                    # The rest of the body (Plex's thumbnail) is never read into memory.
                    return "application/json", found
                if scanner.held > limits.max_raw_body:
                    raise TooLarge()
                lease.hold(scanner.held)
            return "application/json", scanner.finish()
    except TimeoutError:
        raise BodyTimeout() from None
    finally:
        lease.release()


def _routed(event: Event, router: routing.Router) -> Event | Ignored:
    """The event with the Trakt accounts it goes to, or ``no_account`` (docs/configuration.md, Households)."""
    accounts = router.route(event)
    if not accounts:
        return Ignored("no_account", f"{event.source} user {event.user_name!r} matches no Trakt "
                       "account's users (trakt.users, trakt.accounts.NAME.users)")
    return dataclasses.replace(event, accounts=accounts)


def _webhook_handler(server: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    parser, field = SOURCES[server].parse, SOURCES[server].part

    async def handle(request: web.Request) -> web.Response:
        rt = request.app[RUNTIME]
        config = rt.config
        hook = config.webhook(server)
        notes = _request_notes.get()
        notes["server"] = server
        if not hook.enabled:
            notes["outcome"] = "disabled"
            return _json(404, {"error": "disabled"})
        if not token_ok(presented_token(request.rel_url.raw_query_string), hook.token):
            notes["outcome"] = "invalid_token"
            return _json(401, {"error": "invalid_token"})
        try:
            test = dryrun.requested(request.headers.get(dryrun.HEADER))
        except dryrun.BadHeader as exc:  # a typo must not send for real
            notes.update(outcome="bad_payload", detail=str(exc))
            return _json(400, {"error": "bad_request", "detail": str(exc)})
        try:
            ctype, body = await read_payload(request, field, config.server.max_body_bytes)
            result = parser(ctype, body, time.time())
        except TooLarge:
            notes["outcome"] = "too_large"
            return _json(413, {"error": "too_large"})
        except ClientGone as exc:
            notes.update(outcome="client_gone", detail=str(exc))
            return _json(400, {"error": "bad_payload", "detail": "the request body was cut off"})
        except edge.Busy:  # the edge dropped this body to make room: summed up in its warnings
            notes.update(outcome="busy", detail=DROPPED)
            return _json(503, {"error": "busy"}, {"Retry-After": RETRY_AFTER_BUSY})
        except BodyTimeout:
            notes["outcome"] = "body_timeout"
            edge.no_linger(request)
            late = _json(408, {"error": "timeout", "detail": "the request body took too long"})
            late.force_close()
            return late
        except BadPayload as exc:
            notes.update(outcome="bad_payload", detail=str(exc))
            return _json(400, {"error": "bad_payload", "detail": str(exc)})
        understood = result if isinstance(result, Event) else None
        if understood is not None:
            result = filters.check(understood, hook) or _routed(understood, rt.router(config))
        if isinstance(result, Ignored):
            # A test counts as a test, not among the ignored events (/metrics, /healthz).
            notes.update(outcome="test" if test else "ignored", reason=result.reason, detail=result.detail)
            if test:
                rt.journal_ignored(server, Ignored(vocab.TEST, f"would be ignored: {result.reason}: "
                                                   f"{result.detail}", result.user, result.item), understood)
                return _json(200, {"status": "ignored", "reason": result.reason, "detail": result.detail,
                                   "test": True})
            rt.journal_ignored(server, result, understood)
            return _json(200, {"status": "ignored", "reason": result.reason,
                               "detail": result.detail})
        summary = result.summary()
        notes.update(action=result.action, item=result.label(), user=result.user_name)
        if test:  # through the rules on the side: nothing stored, nothing sent (docs/curl.md)
            line, answers = rt.preview(result, config.scrobble, time.time())
            notes["outcome"] = "test"
            rt.journal_ignored(server, Ignored(vocab.TEST, line), result)
            live = rt.health().get("accounts") or {}  # an account in dry-run would only log, even for real
            return _json(200, {"status": "test", "detail": f"{dryrun.HEADER}: nothing was stored or sent",
                               "event": summary, "accounts": {
                                   account: {**said, "dry_run": bool((live.get(account) or {})
                                                                     .get("dry_run", False))}
                                   for account, said in answers.items()}})
        try:
            await rt.ingest(result)
        except Busy:
            notes["outcome"] = "busy"
            return _json(503, {"error": "busy"}, {"Retry-After": RETRY_AFTER_BUSY})
        except StoreUnavailable as exc:
            notes.update(outcome="unavailable", detail=str(exc))
            return _json(503, {"error": "unavailable", "detail": str(exc)},
                         {"Retry-After": RETRY_AFTER_UNAVAILABLE})
        notes["outcome"] = "queued"
        return _json(202, {"status": "queued", "event": summary})

    return handle


async def healthz(request: web.Request) -> web.Response:
    return _json(200, request.app[RUNTIME].health())


async def metrics(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    if rt.metrics is None or not rt.config.server.metrics:
        return _json(404, {"error": "disabled", "detail": "server.metrics is false"})
    body, content_type = rt.metrics.render(request.headers.get("Accept", ""))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def _count(rt: Runtime, notes: dict[str, Any], seconds: float) -> None:
    """Every answered webhook once: by server and outcome, and how long its answer took."""
    server = notes.get("server")
    if server is None:
        return
    rt.counters.webhook(server, notes.get("outcome", "error"), notes.get("reason"))
    if rt.metrics is not None:
        rt.metrics.webhook_answered(server, seconds)


@web.middleware
async def access_log(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """One line per request; the query (the token) is never logged."""
    started = time.monotonic()
    path = redact.safe_path(request.rel_url.raw_path) + (
        "?<redacted>" if request.rel_url.raw_query_string else "")
    structlog.contextvars.bind_contextvars(request_id=next(_request_ids))
    notes: dict[str, Any] = {}
    _request_notes.set(notes)
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = edge.http_exception_answer(exc)
        except Exception as exc:
            log.exception("request_error", path=path, error=repr(exc))
            response = _json(500, {"error": "internal"})
        seconds = time.monotonic() - started
        _count(request.app[RUNTIME], notes, seconds)
        # a body the edge dropped is counted in its bodies_short / connections_short warnings
        # (a flood of trickles would flood the log otherwise)
        # A queued webhook is logged by its decision line (docs/troubleshooting.md, "The logs"):
        # one line per accepted event at info; its request line is at debug.
        quiet = (request.path in ("/healthz", "/metrics") or notes.get("detail") == DROPPED
                 or notes.get("outcome") == "queued")
        level = log.debug if quiet else log.info
        level("request", method=request.method, path=path, status=response.status,
              ms=round(seconds * 1000, 1), remote=request.remote, **notes)
        return response
    finally:
        structlog.contextvars.unbind_contextvars("request_id")


def _secrets(config: Config) -> tuple[str, ...]:
    """What no log line may show: webhook tokens, every Trakt account's tokens, the client secret."""
    trakt = config.trakt
    tokens = [t for a in trakt.all_accounts().values() for t in (a.access_token, a.refresh_token)]
    return (*(config.webhook(server).token for server in ROUTES), *tokens, trakt.client_secret)


def _secrets_of(runtime: Runtime) -> Callable[[], tuple[str, ...]]:
    """The current config's secrets, gathered once per config (every log line asks for them)."""
    seen: list[tuple[Config, tuple[str, ...]]] = []

    def current() -> tuple[str, ...]:
        config = runtime.config
        if not seen or seen[0][0] is not config:
            seen[:] = [(config, _secrets(config))]
        return seen[0][1]
    return current


def make_app(runtime: Runtime) -> web.Application:
    app = web.Application(middlewares=[access_log], client_max_size=1 << 30)
    app[RUNTIME] = runtime
    edge.install(app)
    app[edge.COUNTS] = runtime.counters.connections
    redact.set_secrets(_secrets_of(runtime))
    for server, path in ROUTES.items():
        app.router.add_post(path, _webhook_handler(server))
    # GET only: a wrong method is 405 with `Allow: GET` (docs/troubleshooting.md).
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)
    return app
