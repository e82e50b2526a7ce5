"""Trakt OAuth: the device-code login (`cwhook auth`), the pair in use and its refresh.

Refresh tokens are single-use: each refresh returns a new pair and invalidates
the old one. So only one refresh runs at a time, and the answer is first
appended to the token journal in the state dir (fsynced: a crash a millisecond
later must not lock the user out), then written to the YAML file (in place,
comments kept), then used; the writing is cwhook/trakt/tokenfiles.py's. If
the YAML write fails the new pair is still used in memory, ``unsaved`` says so
(``/healthz``: ``tokens_not_saved``) and ``save_pending`` tries again every
minute. A reload never replaces the pair in use with an older one from the file.

Only Trakt saying the refresh token is dead (``400 invalid_grant``) or refusing the
app's credentials (``401``) needs `cwhook auth`. Any other answer (429, 408, 423,
5xx, a proxy's page, no answer) is retried with back-off, honouring ``Retry-After``;
meanwhile ``refresh_retrying`` says why (``/healthz``: ``trakt_refresh_retrying``),
and ``on_refreshed`` is told when the refresh finally succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from cwhook import __version__
from cwhook.config.file import ConfigFiles
from cwhook.config.schema import DEFAULT_ACCOUNT, AccountConfig, TraktConfig
from cwhook.kernel import hint, logs
from cwhook.state.tokenjournal import Pair, TokenJournal
from cwhook.trakt.client import NotTrakt, parse_json, read_answer
from cwhook.trakt.tokenfiles import DEFAULT_KEY, TokenFiles, pair_changes

log = logs.get("cwhook.trakt.auth")

REDIRECT_URI = "urn:ietf:wg:oauth:2.0:oob"
REFRESH_MARGIN = 3600.0  # refresh this long before expiry (tokens live 24 h or 7 days)
TIMEOUT = aiohttp.ClientTimeout(total=20)
RETRY_FIRST = 5.0  # a refresh that failed for a passing reason is tried again after this...
RETRY_MAX = 300.0  # ...doubling up to this (a Retry-After wins, up to RETRY_AFTER_MAX)
RETRY_AFTER_MAX = 600.0


def _headers() -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": f"cwhook/{__version__}"}


def pair_of(data: dict[str, Any], now: float) -> Pair:
    """The pair in a token response (expires_at from created_at + expires_in)."""
    created = data.get("created_at")
    created_at = float(created) if isinstance(created, (int, float)) else now
    expires_in = data.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, (int, float)) else 86400.0
    return Pair(str(data["access_token"]), str(data.get("refresh_token") or ""),
                int(created_at + lifetime))


def token_changes(data: dict[str, Any], now: float,
                  key: tuple[str, ...] = DEFAULT_KEY) -> dict[tuple[str, ...], str | int]:
    """The YAML changes for a token response."""
    return pair_changes(pair_of(data, now), key)


@dataclass
class _Tokens:
    client_id: str
    client_secret: str
    access_token: str
    refresh_token: str
    expires_at: int
    oauth_url: str

    @classmethod
    def of(cls, trakt: TraktConfig, account: str = DEFAULT_ACCOUNT) -> _Tokens:
        """The app's credentials and one account's pair (empty if the account is gone)."""
        acc = trakt.account(account) or AccountConfig(account)
        return cls(trakt.client_id, trakt.client_secret, acc.access_token, acc.refresh_token,
                   acc.expires_at, trakt.oauth_url)

    @property
    def pair(self) -> Pair:
        return Pair(self.access_token, self.refresh_token, self.expires_at)

    def use(self, pair: Pair) -> None:
        self.access_token, self.refresh_token, self.expires_at = (
            pair.access_token, pair.refresh_token, pair.expires_at)


class TraktAuth:
    """Holds the current tokens and refreshes them one at a time; ``files`` writes them back."""

    def __init__(self, config_path: Path, trakt: TraktConfig,
                 clock: Callable[[], float] = time.time, journal: TokenJournal | None = None,
                 account: str = DEFAULT_ACCOUNT, config_files: ConfigFiles | None = None,
                 backoff_scale: float = 1.0) -> None:
        self.config_path = config_path
        self.backoff_scale = backoff_scale  # below 1 only in tests: a shorter back-off (never Retry-After)
        self.clock = clock
        self.account = account
        self.files = TokenFiles(config_path, account, journal, config_files)
        self._t = _Tokens.of(trakt, account)
        self._lock = asyncio.Lock()
        self.needs_auth: str | None = None  # why `cwhook auth` is needed, when it is
        self.unsaved: str | None = None  # why the pair in use is not in the file yet
        # Told of each refresh call: (account, path, status or "network_error", seconds).
        self.observe: Callable[[str, str, str, float], None] | None = None
        self.refresh_retrying: str | None = None  # why the last refresh failed; it is tried again
        self.on_refreshed: Callable[[], None] | None = None  # a refresh succeeded after failures
        self._failures = 0
        self._retry_at = 0.0  # (monotonic) no refresh call before this
        self._retry_task: asyncio.Task[None] | None = None

    @property
    def auth_command(self) -> str:
        return hint.auth(self.account, self.config_path)

    @property
    def _who(self) -> dict[str, str]:
        return {} if self.account == DEFAULT_ACCOUNT else {"account": self.account}

    @property
    def authorized(self) -> bool:
        return bool(self._t.access_token)

    @property
    def expires_at(self) -> int:
        return self._t.expires_at

    def tokens(self) -> tuple[str, str]:
        return self._t.client_id, self._t.access_token

    def update_from_config(self, trakt: TraktConfig) -> None:
        """A reload: the file's pair replaces the one in use only when it is not older.

        New tokens written by `cwhook auth` clear the needs-auth state; a refreshed
        pair that could not be saved is never replaced by the stale one in the file.
        """
        mine = self._t.pair
        theirs = _Tokens.of(trakt, self.account)
        # A pair we could not save yet is known to be newer than the file's, even within the
        # same second; otherwise the file wins unless it is older.
        ours_newer = mine.expires_at > theirs.expires_at or (
            self.unsaved is not None and mine.expires_at == theirs.expires_at)
        # A file whose tokens are empty or missing (half-written, or cleared by hand) is older
        # too: it never logs a running daemon out (revoke the app on trakt.tv for that).
        if mine.access_token and ours_newer and mine != theirs.pair:
            theirs.use(mine)  # ours is newer: keep it, and bring the file up to date
            if self.unsaved is None:
                self.unsaved = "the file holds an older token pair"
        elif theirs.pair != mine:
            self.needs_auth = None  # new tokens (`cwhook auth`)
            self.unsaved = None
        elif self.unsaved is not None:
            self.unsaved = None  # the file has caught up
        self._t = theirs

    def adopt_journal(self) -> bool:
        """At start: a newer pair in the journal (a crash before the YAML rewrite) wins."""
        newest = self.files.journal_newest()
        if newest is None or not newest.access_token or not newest.newer_than(self._t.pair):
            return False
        self._t.use(newest)
        self.unsaved = "recovered from the token journal"
        log.warning("trakt_tokens_recovered", expires_at=newest.expires_at, **self._who,
                    note="a refreshed pair had not reached the config file; writing it now")
        self.save_pending_sync()
        return True

    def save_pending_sync(self) -> bool:
        """Write the pair in use to the file if it is not there yet; True when saved."""
        if self.unsaved is None:
            return True
        self.unsaved = self.files.write(self._t.pair)
        return self.unsaved is None

    async def save_pending(self) -> bool:
        if self.unsaved is None:
            return True
        async with self._lock:
            return await asyncio.to_thread(self.save_pending_sync)

    def due(self, now: float) -> bool:
        t = self._t
        return bool(t.access_token and t.refresh_token and t.expires_at
                    and now >= t.expires_at - REFRESH_MARGIN and not self.needs_auth)

    async def refresh_ahead(self) -> None:
        if self.due(self.clock()):
            await self.refresh(self._t.access_token)

    def _observed(self, status: str, started: float) -> None:
        if self.observe is not None:
            self.observe(self.account, "/oauth/token", status, time.monotonic() - started)

    async def refresh(self, rejected_token: str) -> bool:
        """Renew the access token; True if a usable new one is in place."""
        async with self._lock:
            t = self._t
            if t.access_token != rejected_token and t.access_token:
                return True  # another refresh already replaced it
            if self.needs_auth:
                return False
            if not (t.refresh_token and t.client_id and t.client_secret):
                self.needs_auth = f"no refresh token or client secret: run `{self.auth_command}`"
                log.error("trakt_needs_auth", reason=self.needs_auth, **self._who)
                return False
            if self.refresh_retrying is not None and time.monotonic() < self._retry_at:
                return False  # waiting out Retry-After or the back-off; the retry is scheduled
            answer = await self._ask(t)
            if answer is None:
                return False
            status, retry_after, raw = answer
            parsed, data = parse_json(raw)
            if status == 200 and isinstance(data, dict) and data.get("access_token"):
                await self._use(t, pair_of(data, self.clock()))
                return True
            self._refused(status, parsed, data, retry_after)
            return False

    async def _ask(self, t: _Tokens) -> tuple[int, str | None, bytes] | None:
        """POST /oauth/token: (status, Retry-After, body), or None when no answer of Trakt's
        came (then it is tried again later)."""
        body = {
            "refresh_token": t.refresh_token,
            "client_id": t.client_id,
            "client_secret": t.client_secret,
            "redirect_uri": REDIRECT_URI,
            "grant_type": "refresh_token",
        }
        started = time.monotonic()
        try:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as http, http.post(
                t.oauth_url + "/oauth/token", json=body, headers=_headers(), allow_redirects=False
            ) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                raw = await read_answer(resp)
        except (TimeoutError, aiohttp.ClientError, OSError, NotTrakt) as exc:
            self._observed("not_trakt" if isinstance(exc, NotTrakt) else "network_error", started)
            self._retry_later(f"{type(exc).__name__}: {exc}", None)
            return None
        self._observed(str(status), started)
        return status, retry_after, raw

    async def _use(self, t: _Tokens, pair: Pair) -> None:
        """A new pair: journalled first of all (the old refresh token is dead now), used, saved."""
        await self.files.record(pair)
        t.use(pair)
        self.unsaved = "not written yet"
        await asyncio.to_thread(self.save_pending_sync)
        log.info("trakt_token_refreshed", expires_at=t.expires_at, **self._who)
        recovered = self.refresh_retrying is not None
        self.refresh_retrying, self._failures = None, 0
        if recovered and self.on_refreshed is not None:
            self.on_refreshed()

    def _refused(self, status: int, parsed: bool, data: Any, retry_after: str | None) -> None:
        """Trakt answered without a pair: needs `cwhook auth`, or is tried again later."""
        error = data.get("error") if isinstance(data, dict) else None
        if status == 400 and error == "invalid_grant":
            self.needs_auth = f"Trakt refused the refresh token (400 invalid_grant): run `{self.auth_command}`"
        elif status == 401 and parsed:
            self.needs_auth = (f"Trakt refused the app's credentials (401{' ' + str(error) if error else ''}): "
                               f"check trakt.client_id and trakt.client_secret, then run `{self.auth_command}`")
        if self.needs_auth:
            self.refresh_retrying = None
            log.error("trakt_needs_auth", reason=self.needs_auth, status=status, **self._who)
            return
        what = f"{status}" + (f" {error}" if isinstance(error, str) else "") + (
            "" if parsed else " (not Trakt's JSON)")
        self._retry_later(f"token refresh answered {what}", retry_after if status in (429, 503) else None)

    def _retry_later(self, reason: str, retry_after: str | None) -> None:
        """A refresh failed for a passing reason: try again after Retry-After or the back-off."""
        self._failures += 1
        delay = min(RETRY_MAX, RETRY_FIRST * 2.0 ** min(self._failures - 1, 10)) * self.backoff_scale
        delay += random.uniform(0, delay / 5)
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                delay = min(RETRY_AFTER_MAX, max(1.0, float(retry_after)))
        self.refresh_retrying = reason
        self._retry_at = time.monotonic() + delay
        log.warning("trakt_refresh_retrying", error=reason, retry_in_s=round(delay, 1),
                    attempt=self._failures, **self._who,
                    note="the refresh token is still good; the outbox waits and is kept")
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = asyncio.get_running_loop().create_task(
                self._retry(delay), name=f"refresh-retry-{self.account}")

    async def _retry(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._retry_task = None
        await self.refresh(self._t.access_token)

    def close(self) -> None:
        if self._retry_task is not None:
            self._retry_task.cancel()
            self._retry_task = None


# --- the device flow --------------------------------------------------------------

DEVICE_FINAL = {
    404: "the device code is invalid",
    409: "the device code was already used",
    410: "the code expired before it was entered",
    418: "the request was denied on trakt.tv",
}
# 401 (Trakt's answer to an unknown app or a wrong secret) and 403 (an unapproved app).
CREDENTIALS_REFUSED = ("Trakt refused the app's credentials: check trakt.client_id and trakt.client_secret "
                       "(the app's page on https://trakt.tv/oauth/applications shows both)")


class DeviceFlowError(Exception):
    pass


async def device_login(
    trakt: TraktConfig,
    out: TextIO,
    sleep: Callable[[float], Any] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
    key: tuple[str, ...] = DEFAULT_KEY,
) -> dict[tuple[str, ...], str | int]:
    """Run the device flow; return the YAML changes holding the new tokens."""
    base = trakt.oauth_url
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        async with http.post(base + "/oauth/device/code", json={"client_id": trakt.client_id},
                             headers=_headers()) as resp:
            if resp.status in (401, 403):  # said before the person is sent to trakt.tv for nothing
                raise DeviceFlowError(CREDENTIALS_REFUSED)
            if resp.status != 200:
                raise DeviceFlowError(
                    f"Trakt refused the device code request ({resp.status}); "
                    "check trakt.client_id and trakt.oauth_url")
            code = await resp.json(content_type=None)
        try:
            device_code = str(code["device_code"])
            user_code = str(code["user_code"])
            url = str(code["verification_url"])
            interval = float(code.get("interval") or 5)
            expires_in = float(code.get("expires_in") or 600)
        except (KeyError, TypeError, ValueError):
            raise DeviceFlowError("Trakt's device code answer was not understood") from None
        out.write(f"Open {url} and enter the code {user_code}\n")
        out.write(f"(waiting up to {int(expires_in // 60)} minutes; Ctrl-C to give up)\n")
        out.flush()
        deadline = clock() + expires_in
        body = {"code": device_code, "client_id": trakt.client_id,
                "client_secret": trakt.client_secret}
        while clock() < deadline:
            await sleep(interval)
            async with http.post(base + "/oauth/device/token", json=body,
                                 headers=_headers()) as resp:
                status = resp.status
                data = await resp.json(content_type=None) if status == 200 else None
            if status == 200 and isinstance(data, dict) and data.get("access_token"):
                return token_changes(data, clock(), key)
            if status == 400:
                continue  # pending: the user has not entered the code yet
            if status == 429:
                interval += 1  # slow down
                continue
            if status in (401, 403):
                raise DeviceFlowError(CREDENTIALS_REFUSED)
            if status in DEVICE_FINAL:
                raise DeviceFlowError(DEVICE_FINAL[status])
            if status >= 500:
                continue
            raise DeviceFlowError(f"unexpected answer from Trakt: {status}")
        raise DeviceFlowError(DEVICE_FINAL[410])
