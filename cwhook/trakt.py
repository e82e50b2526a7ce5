"""The Trakt HTTP client: headers, the tenacity retry policy, 1 POST/s, token refresh.

Retry policy (spec §6):
* 429 waits ``Retry-After`` seconds and retries;
* 5xx (520-522 included), timeouts and network errors back off exponentially
  with jitter;
* 401 refreshes the access token once and retries once;
* 409 (already scrobbled) counts as success; 404 and 422 are final (404 lets
  the caller try another way of naming the item); 420/423 stop that action and
  are logged as errors; 403 (the API key, not the item) is kept and retried like
  an outage; any other 4xx is final.
When the attempts run out the error goes back to the caller (the outbox keeps
the action and tries again later), so nothing is lost to a long outage.
"""

from __future__ import annotations

import asyncio
import os
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

from cwhook import __version__, logs

log = logs.get("cwhook.trakt")

POST_INTERVAL = 1.05  # Trakt allows 1 POST per second per user; keep a small margin


def post_interval() -> float:
    """The pacing; CWHOOK_POST_INTERVAL overrides it for benchmarks against a fake Trakt only."""
    try:
        return max(0.0, float(os.environ.get("CWHOOK_POST_INTERVAL", POST_INTERVAL)))
    except ValueError:
        return POST_INTERVAL
MAX_RETRY_AFTER = 600.0


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
        timeout: float = 15.0,
        account: str = "default",
        observe: RequestObserver | None = None,
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
        self._interval = post_interval()
        self.last_success_at: float | None = None
        self.last_error: str | None = None
        self.unreachable = False  # the last call ended in an outage, a rate limit or a network error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

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
            wait = self._last_post + self._interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_post = time.monotonic()

    async def _once(self, method: str, path: str, body: Any) -> Response:
        if method == "POST":
            await self._pace()
        url = self.api_url + path
        started = time.monotonic()
        try:
            async with self._http().request(method, url, json=body, headers=self.headers()) as resp:
                try:
                    data = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    data = None
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._observed(path, "network_error", started)
            raise TransientError(0, f"network error: {type(exc).__name__}: {exc}") from None
        self._observed(path, str(status), started)
        if status in (200, 201, 204, 409):
            return Response(status, data)
        if status == 429:
            raise RateLimited(_retry_after(retry_after))
        if status >= 500:
            raise TransientError(status, "Trakt server error")
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
            return response

    async def _retrying(self, method: str, path: str, body: Any) -> Response:
        policy = self.policy

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0
            self.last_error = str(exc)
            self.unreachable = True
            log.warning("trakt_retry", path=path, error=str(exc), attempt=state.attempt_number,
                        wait_s=round(wait, 2))

        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            wait=_wait(policy),
            stop=stop_after_attempt(policy.attempts),
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt:
                return await self._once(method, path, body)
        raise AssertionError("unreachable")  # pragma: no cover
