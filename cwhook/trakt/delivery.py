"""Delivering outbox entries to Trakt: matching fallbacks, late stops, dry-run.

The sender takes the oldest outbox entry, turns it into Trakt calls and removes
it once Trakt accepted it or refused it for good. Transient trouble (outage,
rate limit, a refresh that could not be done yet) leaves it in the outbox with
a growing delay, so a Trakt outage of hours loses nothing.

Matching: an item is named by its best form first (``trakt_bodies.item_forms``);
on a 404 the next form is tried, then ``/search/{id_type}/{id}``, then a title
search. What matched is remembered per item in the outbox file (bounded), so it
survives restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cwhook.kernel import clock as clocks
from cwhook.kernel import items, logs
from cwhook.kernel.event import Event
from cwhook.kernel.items import TraktAliases
from cwhook.state.journal import Result
from cwhook.state.store import LONGEST_RETRY, AsyncStore, Entry, NewEntry, StoreUnavailable
from cwhook.status.health import Counters
from cwhook.trakt import bodies as tb
from cwhook.trakt.client import AuthError, FinalError, NotFound, NotTrakt, Response, TraktClient, TraktError

log = logs.get("cwhook.trakt.delivery")

LATE_STOP_AFTER = 600.0  # a watched stop older than this goes to /sync/history
HISTORY_LOOKBACK = 3600.0  # how far before a late stop's time its earlier attempt is looked for
DEFAULT_RUNTIME = 7200.0  # for staleness when the item's runtime is unknown
MAX_DEFER = LONGEST_RETRY  # 300 s; a restart after a clock set back relies on it (cwhook/state/store.py)
STORE_RETRY = 5.0  # the state file could not be written (disk full, locked): try again soon
LOCAL_RETRY = 30.0  # a failure that is not Trakt's: try again soon, set aside after 3
NOT_TRAKT_RETRY = 30.0  # an answer that is not Trakt's: again after 30 s, 60 s, then set aside


def _retry_scale() -> float:
    """Hidden test setting (_CWHOOK_DELIVERY_RETRY_SCALE): shortens the waits before a retry."""
    try:
        return max(0.0, float(os.environ.get("_CWHOOK_DELIVERY_RETRY_SCALE", "1")))
    except ValueError:
        return 1.0


class Unsure(Exception):
    """A late play whose earlier attempt may have reached Trakt's history, and no way to ask:
    set aside for the user to decide (docs/durability.md) rather than risk a second play."""


@dataclass
class Options:
    dry_run: bool = False
    watchlist_autoremove_movies: bool = False


@dataclass
class Outcome:
    result: str  # sent, stale, late_history, dry_run, ...
    detail: dict[str, Any] = field(default_factory=dict)
    follow_up: NewEntry | None = None  # added to the outbox as this entry is removed


Call = Callable[[tb.Body], Awaitable[Response]]


def _sync_not_found(resp: Response) -> bool:
    """/sync answers 200/201 with a not_found section instead of a 404."""
    data = resp.data
    if not isinstance(data, dict):
        return False
    missing = data.get("not_found")
    return isinstance(missing, dict) and any(
        isinstance(v, list) and v for v in missing.values()
    )


MAX_INFLIGHT = 4  # entries of different sessions delivered at once (POSTs still paced)


class Lane:
    """Delivers one Trakt account's outbox entries.

    Order is kept per viewing session: a session's next entry waits for its
    current one, but an entry that is deferred, searching or failing never holds
    back other sessions. Each entry is marked attempted on disk before its call.
    """

    def __init__(
        self,
        account: str,
        client: TraktClient,
        db: AsyncStore,
        counters: Counters,
        options: Callable[[], Options],
        needs_auth: Callable[[], str | None],
        clock: clocks.Clock = clocks.now,
        wall: clocks.Clock = time.time,
        aliases: TraktAliases = items.SHARED,
    ) -> None:
        self.account = account
        self.aliases = aliases  # what Trakt matched each item to, for the rules (docs/rules.md)
        self.client = client
        self.db = db
        self.store = db.store
        self.counters = counters
        self.options = options
        self.needs_auth = needs_auth
        self.clock = clock  # steady: retry times and ages (docs/durability.md, "Clocks")
        self.wall = wall  # the times stored and sent to Trakt
        self.wake = asyncio.Event()
        self._inflight: dict[int, asyncio.Task[None]] = {}

    def _dry(self) -> bool:
        """Nothing is really sent: dry-run, or no access token yet."""
        return self.options().dry_run or not self.client.tokens()[1]

    # --- the loop ---------------------------------------------------------------

    async def _sleep(self, timeout: float | None) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns instead of raising when
        # the task is cancelled in the turn the wake comes, and the lane would never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.wake.wait()
        self.wake.clear()

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._run_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # e.g. the state file became unreadable: retry, never die
                    log.error("sender_error", error=repr(exc), account=self.account)
                    await asyncio.sleep(5.0)
        finally:
            for task in self._inflight.values():
                task.cancel()

    @property
    def busy(self) -> bool:
        return bool(self._inflight)

    async def _run_once(self) -> None:
        while True:
            if self.needs_auth() and not self.options().dry_run:
                await self._sleep(30.0)
                continue
            heads = await self.db.call(self.store.heads, self.account, 64)
            now = self.clock()
            sessions = {e.session for e in heads if e.id in self._inflight}
            waits = []
            for entry in heads:
                if len(self._inflight) >= MAX_INFLIGHT:
                    break
                if entry.id in self._inflight or entry.session in sessions:
                    continue
                if entry.next_attempt_at > now:
                    waits.append(entry.next_attempt_at - now)
                    continue
                sessions.add(entry.session)
                task = asyncio.create_task(self.deliver_one(entry), name=f"deliver-{entry.id}")
                self._inflight[entry.id] = task
                task.add_done_callback(functools.partial(self._done, entry.id))
            await self._sleep(min(waits) if waits and len(self._inflight) < MAX_INFLIGHT else None)

    def _done(self, entry_id: int, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(entry_id, None)
        self.wake.set()

    async def deliver_one(self, entry: Entry) -> None:
        """One attempt at one entry; never raises (the store may fail at any step)."""
        try:
            await self._deliver_one(entry)
        except StoreUnavailable as exc:
            # Nothing is lost: the entry is still in the file (attempted, if Trakt was called)
            # and is tried again; a watched stop then meets Trakt's 409 or the history check.
            log.error("store_write_failed", error=str(exc), retry_in_s=STORE_RETRY, entry=entry.id)
            await asyncio.sleep(STORE_RETRY)

    async def _deliver_one(self, entry: Entry) -> None:
        ctx = {"entry": entry.id, "verb": entry.verb, "item": entry.event.label(),
               "session": entry.event.session_key, "attempt": entry.attempts + 1}
        ctx["account"] = self.account
        try:
            if not self._dry():
                # On disk before the call: after a crash, a late stop asks the history first.
                await self.db.call(self.store.mark_attempted, entry.id)
            outcome = await self.deliver(entry, self.clock())
        except (FinalError, NotFound) as exc:
            await self.db.call(self.store.remove, entry.id, None, Result("failed", exc.status or None, str(exc)))
            self.counters.failed += 1
            loud = exc.status in (420, 423)
            (log.error if loud else log.warning)("trakt_failed", error=str(exc), final=True, **ctx)
            return
        except StoreUnavailable:
            raise
        except NotTrakt as exc:  # a portal, a proxy, a redirect: retried, then set aside
            delay = min(MAX_DEFER, NOT_TRAKT_RETRY * 2 ** min(entry.local_failures, 10)) * _retry_scale()
            aside = await self.db.call(self.store.reschedule, entry.id, self.clock() + delay,
                                       f"not Trakt's answer: {exc}", True)
            if aside:
                self.counters.failed += 1
                log.error("outbox_set_aside", error=str(exc), attempts=entry.local_failures + 1,
                          note="answers that are not Trakt's; `cwhook outbox retry` once fixed", **ctx)
            else:
                log.warning("trakt_not_trakt", error=str(exc), retry_in_s=round(delay, 1), **ctx)
            return
        except Unsure as exc:
            await self.db.call(self.store.set_aside, entry.id, f"unsure: {exc}")
            self.counters.failed += 1
            log.error("outbox_unsure", error=str(exc), **ctx,
                      note="set aside rather than risk a second play: see `cwhook outbox`")
            return
        except TraktError as exc:  # transient, rate limited, or a 401 a refresh could not cure
            delay = min(MAX_DEFER, 5.0 * 2 ** min(entry.attempts, 10)) * _retry_scale()
            await self.db.call(self.store.reschedule, entry.id, self.clock() + delay, str(exc))
            log.warning("trakt_deferred", error=str(exc), retry_in_s=delay,
                        needs_auth=isinstance(exc, AuthError), **ctx)
            return
        except Exception as exc:  # not Trakt's fault: a bug, a body that cannot be encoded...
            aside = await self.db.call(self.store.reschedule, entry.id, self.clock() + LOCAL_RETRY,
                                       f"{type(exc).__name__}: {exc}", True)
            if aside:
                self.counters.failed += 1
                log.error("outbox_set_aside", error=repr(exc), attempts=entry.local_failures + 1,
                          note="the rest of the outbox goes on; see /healthz", **ctx)
            else:
                log.error("delivery_error", error=repr(exc), retry_in_s=LOCAL_RETRY, **ctx)
            return
        await self.db.call(self.store.remove, entry.id, outcome.follow_up,
                           Result(outcome.result, outcome.detail.get("status"), outcome.detail.get("note")))
        if outcome.follow_up is not None:
            self.wake.set()
        if outcome.result == "dry_run":
            self.counters.would_send += 1
        elif outcome.result != "stale":
            self.counters.sent += 1
        log.info("trakt_" + outcome.result, **ctx, **outcome.detail)

    # --- one entry ------------------------------------------------------------------

    async def deliver(self, entry: Entry, now: float) -> Outcome:
        """One attempt; ``now`` is steady time (the entry's age is measured on it)."""
        event, verb = entry.event, entry.verb
        age = now - entry.born
        if verb == "stop":
            outcome = await self._watched_stop(entry, age)
            if event.kind == "movie" and self.options().watchlist_autoremove_movies:
                outcome.follow_up = NewEntry("watchlist_remove", event, entry.progress, self.wall(),
                                             account=self.account)
            return outcome
        if verb in ("start", "pause"):
            runtime = event.duration_s or DEFAULT_RUNTIME
            remaining = runtime * max(0.0, 1.0 - entry.progress / 100.0)
            if age > max(remaining, 60.0):
                return Outcome("stale", {"age_s": round(age, 1)})
            path = f"/scrobble/{verb}"
            return await self._with_item(
                event, tb.item_forms(event),
                lambda form: self._post(path, tb.scrobble_body(form, entry.progress)), "sent")
        if verb == "rate":
            rating = event.rating
            path = "/sync/ratings" if rating is not None else "/sync/ratings/remove"
            return await self._with_item(
                event, tb.rating_forms(event),
                lambda form: self._post(path, tb.ratings_body(form, rating, entry.created_at), True),
                "sent")
        if verb in ("history_add", "history_remove"):  # marked watched/unwatched by hand
            add = verb == "history_add"
            if add and entry.attempted and await self._in_history(event, entry.created_at):
                return Outcome("already_in_history")
            return await self._with_item(
                event, tb.item_forms(event),
                lambda form: self._post("/sync/history" if add else "/sync/history/remove",
                                        tb.history_body(form, entry.created_at) if add
                                        else tb.history_remove_body(form), True),
                "sent")
        if verb == "watchlist_remove":
            return await self._with_item(
                event, tb.item_forms(event),
                lambda form: self._post("/sync/watchlist/remove", tb.watchlist_remove_body(form),
                                        True),
                "sent")
        raise FinalError(0, f"unknown outbox verb {verb!r}")

    async def _watched_stop(self, entry: Entry, age: float) -> Outcome:
        """/scrobble/stop, or /sync/history with the real time once it is late."""
        event, when = entry.event, entry.created_at
        if age <= LATE_STOP_AFTER:
            return await self._with_item(
                event, tb.item_forms(event),
                lambda form: self._post("/scrobble/stop", tb.scrobble_body(form, entry.progress)), "sent")
        if entry.attempted and await self._in_history(event, when):
            return Outcome("already_in_history")
        return await self._with_item(
            event, tb.item_forms(event),
            lambda form: self._post("/sync/history", tb.history_body(form, when), True), "late_history")

    async def _in_history(self, event: Event, since: float) -> bool:
        """Did an earlier attempt of this play (cut off by a crash or a lost answer) reach
        Trakt's history? Asked before adding it there: by the item's Trakt id (the cached
        match, else a search by its ids or title), or for an episode named by its show, in
        the show's history by season and number. ``Unsure`` when nothing can be asked."""
        if self._dry():
            return False
        # An hour back: the play may carry Trakt's clock, not ours (a host whose clock runs
        # ahead), and the rules allow no second play of the item within the hour anyway.
        start = tb.iso(since - HISTORY_LOOKBACK)
        cached = await self.db.call(self.store.match_get, event.identity)
        targets = tb.history_targets(cached) if cached else []
        for rtype, trakt_id in targets:
            if rtype != "show":
                return await self._history_has(f"/sync/history/{rtype}s/{trakt_id}?start_at={start}")
        text = tb.text_search(event)
        searches = [s for s in tb.id_searches(event) if s[1] != "show"]
        if event.kind == "movie" and text:
            searches.append(text)
        for path, rtype in searches:
            forms = await self._search(event, path, rtype, [])
            if not forms:
                continue
            trakt_id = forms[0][rtype]["ids"]["trakt"]
            return await self._history_has(f"/sync/history/{rtype}s/{trakt_id}?start_at={start}")
        if event.kind == "episode" and event.season is not None and event.number is not None:
            shows = [trakt_id for rtype, trakt_id in targets if rtype == "show"]
            if not shows:
                searches = [s for s in tb.id_searches(event) if s[1] == "show"]
                searches += [text] if text else []
                for path, rtype in searches:
                    forms = await self._search(event, path, rtype, [])
                    if forms:
                        shows.append(forms[0]["show"]["ids"]["trakt"])
                        break
            if shows:
                resp = await self.client.request(
                    "GET", f"/sync/history/shows/{shows[0]}?start_at={start}")
                return any(tb.is_episode(item, event.season, event.number) for item in resp.data)
        log.warning("history_check_impossible", item=event.label(),
                    note="no Trakt id found to check; set aside rather than risk a second play")
        raise Unsure("an earlier attempt may have reached Trakt's history and there is no Trakt "
                     "id to check it; if the play is not on trakt.tv, `cwhook outbox send` it")

    async def _history_has(self, path: str) -> bool:
        resp = await self.client.request("GET", path)
        return isinstance(resp.data, list) and bool(resp.data)

    async def _post(self, path: str, body: tb.Body, sync: bool = False) -> Response:
        if self._dry():
            log.info("trakt_would_send", method="POST", path=path, body=body)
            return Response(0, None)
        resp = await self.client.request("POST", path, body)
        if sync and _sync_not_found(resp):
            raise NotFound(404, "listed under not_found")
        return resp

    async def _with_item(self, event: Event, forms: list[tb.Body], call: Call,
                         result: str) -> Outcome:
        """Try each way of naming the item until Trakt knows it."""
        dry = self._dry()
        key = event.identity
        tried: list[str] = []
        cached = None if dry else await self.db.call(self.store.match_get, key)
        candidates = ([cached] if cached else []) + [f for f in forms if f != cached]
        for form in candidates:
            found = await self._attempt(call, form, tried)
            if found is not None:
                return await self._matched(event, form, found, result, dry)
        if dry:
            return Outcome("dry_run", {"note": "no item form to send"})
        text = tb.text_search(event)
        for path, rtype in tb.id_searches(event) + ([text] if text else []):
            for searched in await self._search(event, path, rtype, tried):
                if searched in candidates:
                    continue
                candidates.append(searched)
                found = await self._attempt(call, searched, tried)
                if found is not None:
                    return await self._matched(event, searched, found, result, dry)
        raise NotFound(404, "no match on Trakt; tried " + "; ".join(tried or ["nothing to try"]))

    async def _attempt(self, call: Call, form: tb.Body, tried: list[str]) -> Response | None:
        try:
            return await call(form)
        except NotFound:
            tried.append(_describe(form))
            return None
        except tb.NotExpressible:  # e.g. an absolute episode number in a /sync body
            tried.append(_describe(form) + " (cannot be sent there)")
            return None

    async def _search(self, event: Event, path: str, rtype: str, tried: list[str]) -> list[tb.Body]:
        try:
            resp = await self.client.request("GET", path)
        except NotFound:
            tried.append(f"GET {path}")
            return []
        forms = tb.forms_from_search(event, resp.data, rtype)
        if not forms:
            tried.append(f"GET {path} (no usable result)")
        return forms

    async def _matched(self, event: Event, form: tb.Body, resp: Response, result: str,
                       dry: bool) -> Outcome:
        if dry:
            return Outcome("dry_run")
        key = event.identity
        self.aliases.learn_answer(event, resp.data)
        with contextlib.suppress(StoreUnavailable):  # only a cache: the call itself succeeded
            await self.db.call(self.store.match_put, key, tb.remembered_form(form, resp.data), self.wall())
        detail: dict[str, Any] = {"status": resp.status}
        if isinstance(resp.data, dict) and "action" in resp.data:
            detail["trakt_action"] = resp.data["action"]
        if resp.status == 409:
            detail["note"] = "already scrobbled (409)"
        return Outcome(result, detail)


def _describe(form: tb.Body) -> str:
    parts = []
    for key in ("movie", "show", "episode"):
        value = form.get(key)
        if isinstance(value, dict):
            parts.append(f"{key} {value.get('ids') or value.get('title') or value}")
    return ", ".join(parts) or str(form)
