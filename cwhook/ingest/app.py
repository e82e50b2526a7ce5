"""The aiohttp application: the four webhook endpoints, /healthz and /metrics.

A webhook request is answered at once: the body is read (multipart streamed,
only the JSON part kept), parsed by the pure parser of its server, filtered,
and the event put on the worker's queue. Nothing here waits on Trakt.
"""

from __future__ import annotations

import contextvars
import hmac
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

from aiohttp import web

from cwhook.config.schema import Config, ScrobbleConfig
from cwhook.ingest import dryrun, edge, errors, filters, routing
from cwhook.ingest.body import BodyTimeout, ClientGone, TooLarge, read_payload
from cwhook.kernel import logs, redact, vocab
from cwhook.kernel.event import BadPayload, Event, Ignored, ParseResult
from cwhook.kernel.vocab import Outcome
from cwhook.sources.registry import SOURCES, Source
from cwhook.state.store import StoreUnavailable
from cwhook.status.health import Counters

log = logs.get("cwhook.http")

# The app's webhook routes (POST /webhook/ROUTE): the registry's, nothing listed here.
ROUTES = {name: source.path for name, source in SOURCES.items()}
RETRY_AFTER_BUSY = "5"
RETRY_AFTER_UNAVAILABLE = "10"
DROPPED = "body dropped to make room"  # the detail of a request whose body the edge dropped
# What the handler found out, for the middleware's one log line per request.
_request_notes: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("request_notes")


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
# Each request's number in its log lines (``request_id``), counted per app from 1.
REQUEST_IDS: web.AppKey[Iterator[int]] = web.AppKey("request_ids")


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return errors.json_answer(status, body, headers)


def presented_token(raw_query: str) -> str:
    """The whole raw query string is the token; ``token=...`` is accepted too."""
    if raw_query.startswith("token="):
        return unquote(raw_query[len("token="):].split("&", 1)[0])
    return unquote(raw_query)


def token_ok(presented: str, expected: str) -> bool:
    if not expected:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "replace"), expected.encode("utf-8"))


def _routed(event: Event, router: routing.Router) -> Event | Ignored:
    """The event with the Trakt accounts it goes to, or ``no_account`` (docs/configuration.md, Households)."""
    accounts = router.route(event)
    if not accounts:
        return Ignored("no_account", f"{event.source} user {event.user_name!r} matches no Trakt "
                       "account's users (trakt.users, trakt.accounts.NAME.users)")
    return event.sent_to(accounts)


def _outcome(notes: dict[str, Any], outcome: Outcome, **more: Any) -> None:
    """What became of a webhook request, for its log line and its count (one of ``Outcome``)."""
    notes.update(outcome=outcome, **more)


async def _parsed(request: web.Request, source: Source, limit: int,
                  notes: dict[str, Any]) -> ParseResult | web.Response:
    """The body read and parsed, or the answer to a body that could not be read."""
    try:
        ctype, body = await read_payload(request, source.part, limit)
        return source.parse(ctype, body, time.time())
    except TooLarge as exc:
        _outcome(notes, "too_large", detail=str(exc))
        return errors.answer(413, "too_large", str(exc))
    except ClientGone as exc:
        _outcome(notes, "client_gone", detail=str(exc))
        return errors.answer(400, "bad_payload", "the request body was cut off")
    except edge.Busy:  # the edge dropped this body to make room: summed up in its warnings
        _outcome(notes, "busy", detail=DROPPED)
        return errors.answer(503, "busy", headers={"Retry-After": RETRY_AFTER_BUSY})
    except BodyTimeout:
        _outcome(notes, "body_timeout")
        edge.no_linger(request)
        late = errors.answer(408, "timeout", "the request body took too long")
        late.force_close()
        return late
    except BadPayload as exc:
        _outcome(notes, "bad_payload", detail=str(exc))
        return errors.answer(400, "bad_payload", str(exc))


def _ignored(rt: Runtime, server: str, result: Ignored, understood: Event | None, test: bool,
             notes: dict[str, Any]) -> web.Response:
    # A test counts as a test, not among the ignored events (/metrics, /healthz).
    _outcome(notes, "test" if test else "ignored", reason=result.reason, detail=result.detail)
    if test:
        rt.journal_ignored(server, Ignored(vocab.TEST, f"would be ignored: {result.reason}: "
                                           f"{result.detail}", result.user, result.item), understood)
        return _json(200, {"status": "ignored", "reason": result.reason, "detail": result.detail,
                           "test": True})
    rt.journal_ignored(server, result, understood)
    return _json(200, {"status": "ignored", "reason": result.reason, "detail": result.detail})


def _previewed(rt: Runtime, server: str, event: Event, config: Config, notes: dict[str, Any]) -> web.Response:
    """A test request through the rules on the side: nothing stored, nothing sent (docs/curl.md)."""
    summary = event.summary()
    line, answers = rt.preview(event, config.scrobble, time.time())
    _outcome(notes, "test")
    rt.journal_ignored(server, Ignored(vocab.TEST, line), event)
    live = rt.health().get("accounts") or {}  # an account in dry-run would only log, even for real
    return _json(200, {"status": "test", "detail": f"{dryrun.HEADER}: nothing was stored or sent",
                       "event": summary, "accounts": {
                           account: {**said, "dry_run": bool((live.get(account) or {}).get("dry_run", False))}
                           for account, said in answers.items()}})


async def _ingested(rt: Runtime, event: Event, notes: dict[str, Any]) -> web.Response:
    """Stored and queued (202), or why not (503): the 202 only once the store has it."""
    summary = event.summary()
    try:
        await rt.ingest(event)
    except Busy:
        _outcome(notes, "busy")
        return errors.answer(503, "busy", headers={"Retry-After": RETRY_AFTER_BUSY})
    except StoreUnavailable as exc:
        _outcome(notes, "unavailable", detail=str(exc))
        return errors.answer(503, "unavailable", str(exc), {"Retry-After": RETRY_AFTER_UNAVAILABLE})
    _outcome(notes, "queued")
    return _json(202, {"status": "queued", "event": summary})


def _webhook_handler(server: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    source = SOURCES[server]

    async def handle(request: web.Request) -> web.Response:
        rt = request.app[RUNTIME]
        config = rt.config
        hook = config.webhook(server)
        notes = _request_notes.get()
        notes["server"] = server
        if not hook.enabled:
            _outcome(notes, "disabled")
            return errors.answer(404, "disabled")
        if not token_ok(presented_token(request.rel_url.raw_query_string), hook.token):
            _outcome(notes, "invalid_token")
            return errors.answer(401, "invalid_token")
        try:
            test = dryrun.requested(request.headers.get(dryrun.HEADER))
        except dryrun.BadHeader as exc:  # a typo must not send for real
            _outcome(notes, "bad_payload", detail=str(exc))
            return errors.answer(400, "bad_request", str(exc))
        result = await _parsed(request, source, config.server.max_body_bytes, notes)
        if isinstance(result, web.Response):
            return result
        understood = result if isinstance(result, Event) else None
        if understood is not None:
            result = filters.check(understood, hook) or _routed(understood, rt.router(config))
        if isinstance(result, Ignored):
            return _ignored(rt, server, result, understood, test, notes)
        notes.update(action=result.action, item=result.label(), user=result.user_name)
        if test:
            return _previewed(rt, server, result, config, notes)
        return await _ingested(rt, result, notes)

    return handle


async def healthz(request: web.Request) -> web.Response:
    return _json(200, request.app[RUNTIME].health())


async def metrics(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    if rt.metrics is None or not rt.config.server.metrics:
        return errors.answer(404, "disabled", "server.metrics is false")
    body, content_type = rt.metrics.render(request.headers.get("Accept", ""))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def _count(rt: Runtime, notes: dict[str, Any], seconds: float) -> None:
    """Every answered webhook once: by server and outcome, and how long its answer took."""
    server = notes.get("server")
    if server is None:
        return
    outcome: Outcome = notes.get("outcome", "error")  # "error": the handler failed (500)
    rt.counters.webhook(server, outcome, notes.get("reason"))
    if rt.metrics is not None:
        rt.metrics.webhook_answered(server, seconds)


def _logged_path(request: web.Request) -> str:
    """The path as the access log shows it: never the query (the token), nor a token-like segment."""
    return redact.safe_path(request.rel_url.raw_path) + ("?<redacted>" if request.rel_url.raw_query_string else "")


@web.middleware
async def access_log(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """One line per request; the query (the token) is never logged."""
    started = time.monotonic()
    ids = request.app[REQUEST_IDS]
    request_id = logs.REQUEST_ID.set(next(ids))
    notes: dict[str, Any] = {}
    _request_notes.set(notes)
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = errors.http_exception_answer(exc)
        except Exception as exc:
            log.exception("request_error", path=_logged_path(request), error=repr(exc))
            response = errors.answer(500, "internal")
        seconds = time.monotonic() - started
        _count(request.app[RUNTIME], notes, seconds)
        # a body the edge dropped is counted in its bodies_short / connections_short warnings
        # (a flood of trickles would flood the log otherwise)
        # A queued webhook is logged by its decision line (docs/troubleshooting.md, "The logs"):
        # one line per accepted event at info; its request line is at debug.
        quiet = (request.path in ("/healthz", "/metrics") or notes.get("detail") == DROPPED
                 or notes.get("outcome") == "queued")
        if not quiet or logs.enabled("debug"):
            (log.debug if quiet else log.info)(
                "request", method=request.method, path=_logged_path(request), status=response.status,
                ms=round(seconds * 1000, 1), remote=request.remote, **notes)
        return response
    finally:
        logs.REQUEST_ID.reset(request_id)


def make_app(runtime: Runtime, limits: edge.Limits | None = None) -> web.Application:
    app = web.Application(middlewares=[access_log], client_max_size=1 << 30)
    app[RUNTIME] = runtime
    app[REQUEST_IDS] = itertools.count(1)
    edge.install(app, limits)
    app[edge.COUNTS] = runtime.counters.connections
    for server, path in ROUTES.items():
        app.router.add_post(path, _webhook_handler(server))
    # GET only: a wrong method is 405 with `Allow: GET` (docs/troubleshooting.md).
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)
    return app
