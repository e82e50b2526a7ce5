"""The Trakt HTTP client: headers, the tenacity retry policy, 1 POST/s, token refresh.

Retry policy (docs/durability.md, "One event's way" and "Trakt tokens"):
* 429 waits ``Retry-After`` seconds and retries;
* 5xx (520-522 included), timeouts and network errors back off exponentially
  with jitter;
* 408 is transient too;
* 401 refreshes the access token once and retries once;
* 409 (already scrobbled) counts as success; 404 and 422 are final (404 lets
  the caller try another way of naming the item); 420/423 stop that action and
  are logged as errors; 403 (the API key, not the item) is kept and retried like
  an outage; any other 4xx is final.
When the attempts run out the error goes back to the caller (the outbox keeps
the action and tries again later), so nothing is lost to a long outage.

A success is a 2xx from Trakt's API whose JSON body has the shape Trakt documents
for that call (``trakt_bodies.answer_ok``). Anything else — a redirect (never
followed), an HTML page from a captive portal or a proxy, broken JSON, a 2xx of
the wrong shape, a 4xx whose body is not JSON, an answer over ``MAX_ANSWER``
bytes — is ``NotTrakt``: never counted as sent (docs/durability.md, "Answers
that are not Trakt's"). A POST that Trakt does not deduplicate (``/sync/history``)
is never repeated inside one call after a failure that may have reached Trakt:
the caller asks the history first.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)

from cwhook import __version__
from cwhook.kernel import logs
from cwhook.trakt import bodies as tb

log = logs.get("cwhook.trakt.client")

POST_INTERVAL = 1.05  # Trakt allows 1 POST per second per user; keep a small margin


MAX_RETRY_AFTER = 600.0
CALL_TIMEOUT = 15.0  # seconds one Trakt call may take, answer included
MAX_ANSWER = 1 << 20  # bytes of a Trakt answer read at most (Trakt's answers are a few KB)
NOT_IDEMPOTENT = ("/sync/history",)  # POSTs Trakt does not deduplicate: a repeat is a second play


class TraktError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


class TransientError(TraktError):
    """Worth retrying: 5xx, network trouble, timeouts."""


class RateLimited(TransientError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(429, f"rate limited, retry after {retry_after:g}s")
        self.retry_after = retry_after


class NotFound(TraktError):
    """404: Trakt has no such item; try another form."""


class FinalError(TraktError):
    """Not worth retrying (422, 420, 423, other 4xx)."""


class AppRefused(TraktError):
    """403: Trakt does not know the API app (trakt.client_id); kept and retried, never final."""


class AuthError(TraktError):
    """401 that a refresh could not cure: needs `cwhook auth`."""


class NotSent(TransientError):
    """The connection could not be made: the request never left (safe to repeat any call)."""


class NotTrakt(TraktError):
    """An answer that is not Trakt's API answering this call: a redirect, an HTML page, broken
    or oversized JSON, a body of the wrong shape. Never a success, never a final refusal."""


async def read_answer(resp: aiohttp.ClientResponse, limit: int = MAX_ANSWER) -> bytes:
    """The answer's body, at most ``limit`` bytes (``NotTrakt`` beyond: an endless or huge
    answer holds no memory). Broken framing raises aiohttp's payload error at once."""
    if resp.content_length is not None and resp.content_length > limit:
        raise NotTrakt(resp.status, f"answer of {resp.content_length} bytes is not Trakt's "
                                    f"(over {limit // 1024} KiB)")
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise NotTrakt(resp.status, f"answer over {limit // 1024} KiB is not Trakt's")
    return bytes(body)


def parse_json(raw: bytes) -> tuple[bool, Any]:
    """(parsed, data): an empty body parses as None."""
    if not raw.strip():
        return True, None
    try:
        return True, json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        return False, None


def _snippet(raw: bytes) -> str:
    text = raw[:60].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else " " for c in text).strip()


@dataclass
class Response:
    status: int
    data: Any


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    initial: float = 1.0
    maximum: float = 30.0
    jitter: float = 1.0

    def scaled(self, factor: float) -> RetryPolicy:
        """The same tries with back-offs ``factor`` times as long (below 1 only in tests)."""
        return RetryPolicy(self.attempts, self.initial * factor, self.maximum * factor, self.jitter * factor)


def _wait(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    """tenacity wait: Retry-After for 429, else exponential back-off with jitter."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited):
            return min(MAX_RETRY_AFTER, max(exc.retry_after, 1.0))
        exponent = min(state.attempt_number - 1, 30)
        backoff = min(policy.maximum, policy.initial * 2.0**exponent)
        return backoff + random.uniform(0, policy.jitter)

    return wait


def _retry_after(value: str | None) -> float:
    try:
        return max(1.0, float(value)) if value else 10.0
    except ValueError:
        return 10.0


TokenGetter = Callable[[], tuple[str, str]]  # (client_id, access_token)
Refresher = Callable[[str], Awaitable[bool]]  # given the rejected token; True if renewed
# Told of every HTTP attempt: (account, path as called, status or "network_error", seconds).
RequestObserver = Callable[[str, str, str, float], None]


class TraktClient:
    def __init__(
        self,
        api_url: str,
        tokens: TokenGetter,
        refresh: Refresher | None = None,
        policy: RetryPolicy | None = None,
        timeout: float = CALL_TIMEOUT,
        account: str = "default",
        observe: RequestObserver | None = None,
        post_interval: float = POST_INTERVAL,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.account = account  # the Trakt account these calls are made for (/metrics labels)
        self.observe = observe
        self.tokens = tokens
        self.refresh = refresh
        self.policy = policy or RetryPolicy()
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._post_lock = asyncio.Lock()
        self._last_post = 0.0
        self._interval = post_interval  # the pacing; 0 only for benchmarks against a fake Trakt
        self.last_success_at: float | None = None
        self.last_error: str | None = None
        self.unreachable = False  # the last call ended in an outage, a rate limit or a network error
        self.not_trakt = False  # the last call got an answer that is not Trakt's (NotTrakt)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            sent = aiohttp.TraceConfig()
            sent.on_request_headers_sent.append(self._headers_sent)
            self._session = aiohttp.ClientSession(timeout=self.timeout, trace_configs=[sent])
        return self._session

    async def _headers_sent(self, _session: aiohttp.ClientSession, _ctx: Any,
                            params: aiohttp.TraceRequestHeadersSentParams) -> None:
        """A POST left only now: the next one is paced from here, not from when it was let go
        (a pause in between, such as a garbage collection, would bring two to Trakt too close)."""
        if params.method == "POST":
            self._last_post = max(self._last_post, time.monotonic())

    def headers(self) -> dict[str, str]:
        client_id, token = self.tokens()
        return {
            "Content-Type": "application/json",
            "trakt-api-version": "2",
            "trakt-api-key": client_id,
            "Authorization": f"Bearer {token}",
            "User-Agent": f"cwhook/{__version__}",
        }

    async def _pace(self) -> None:
        """At most one POST per POST_INTERVAL; callers queue on the lock."""
        async with self._post_lock:
            while (wait := self._last_post + self._interval - time.monotonic()) > 0:
                await asyncio.sleep(wait)  # again if the last POST left later than it was let go
            self._last_post = time.monotonic()

    async def _once(self, method: str, path: str, body: Any) -> Response:
        if method == "POST":
            await self._pace()
        url = self.api_url + path
        started = time.monotonic()
        try:
            async with self._http().request(method, url, json=body, headers=self.headers(),
                                            allow_redirects=False) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                location = resp.headers.get("Location")
                raw = b"" if 300 <= status < 400 else await read_answer(resp)
        except NotTrakt as exc:
            self._observed(path, "not_trakt", started)
            raise exc from None
        except aiohttp.ClientConnectorError as exc:
            self._observed(path, "network_error", started)
            raise NotSent(0, f"network error: {type(exc).__name__}: {exc}") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._observed(path, "network_error", started)
            raise TransientError(0, f"network error: {type(exc).__name__}: {exc}") from None
        self._observed(path, str(status), started)
        if 300 <= status < 400:
            # Never followed: a POST turned into a GET elsewhere is no scrobble.
            raise NotTrakt(status, f"redirected to {location or '(no Location)'}; "
                                   "check trakt.api_url and any proxy in between")
        parsed, data = parse_json(raw)
        if 200 <= status < 300 or status == 409:
            if parsed and tb.answer_ok(method, path, status, data):
                return Response(status, data)
            raise NotTrakt(status, "the answer is not Trakt's (" + (
                f"not JSON: {_snippet(raw)!r}" if not parsed else "not the shape Trakt gives") + ")")
        if status == 429:
            raise RateLimited(_retry_after(retry_after))
        if status >= 500 or status == 408:
            raise TransientError(status, "Trakt server error" if status >= 500 else "request timeout")
        if not parsed:
            # Trakt answers its refusals with JSON (or nothing): an HTML 400/418 is a proxy's.
            raise NotTrakt(status, f"the answer is not Trakt's (not JSON: {_snippet(raw)!r})")
        if status == 401:
            raise AuthError(401, "access token rejected")
        if status == 403:
            # The app, not the item: a wrong trakt.client_id. Nothing is dropped for it.
            raise AppRefused(403, "Trakt refused the API key: check trakt.client_id")
        if status == 404:
            raise NotFound(404, "not found on Trakt")
        if status == 420:
            raise FinalError(420, "account limit exceeded (VIP needed)")
        if status == 423:
            raise FinalError(423, "account locked")
        if status == 422:
            raise FinalError(422, "validation error")
        raise FinalError(status, "refused")

    def _observed(self, path: str, status: str, started: float) -> None:
        if self.observe is not None:
            self.observe(self.account, path, status, time.monotonic() - started)

    async def request(self, method: str, path: str, body: Any = None) -> Response:
        """One call with retries; a 401 triggers one refresh and one more try."""
        refreshed = False
        while True:
            try:
                response = await self._retrying(method, path, body)
            except TraktError as exc:
                if not isinstance(exc, AuthError):
                    self.last_error = str(exc)
                    self.unreachable = isinstance(exc, TransientError)
                    self.not_trakt = isinstance(exc, NotTrakt)
                    raise
                _, token = self.tokens()
                if refreshed or self.refresh is None or not await self.refresh(token):
                    self.last_error = "401: access token rejected"
                    raise
                refreshed = True
                continue
            self.last_success_at = time.time()
            self.last_error = None
            self.unreachable = False
            self.not_trakt = False
            return response

    async def _retrying(self, method: str, path: str, body: Any) -> Response:
        policy = self.policy
        # A POST Trakt does not deduplicate is repeated only when it cannot have reached Trakt.
        repeat = (NotSent, RateLimited) if method == "POST" and path in NOT_IDEMPOTENT \
            else (TransientError,)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0
            self.last_error = str(exc)
            self.unreachable = True
            log.warning("trakt_retry", path=path, error=str(exc), attempt=state.attempt_number,
                        wait_s=round(wait, 2))

        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(repeat),
            wait=_wait(policy),
            stop=stop_after_attempt(policy.attempts),
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt:
                return await self._once(method, path, body)
        raise AssertionError("unreachable")  # pragma: no cover
