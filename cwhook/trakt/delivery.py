"""Delivering outbox entries to Trakt: when to send, retries, pacing, setting aside, dry-run.

The sender takes the oldest outbox entry, turns it into Trakt calls and removes
it once Trakt accepted it or refused it for good. Transient trouble (outage,
rate limit, a refresh that could not be done yet) leaves it in the outbox with
a growing delay, so a Trakt outage of hours loses nothing.

What each verb sends is the ``SENDERS`` table, one entry per ``Verb``: a start or
pause that is stale by now is dropped, a watched stop older than ``LATE_STOP_AFTER``
goes to /sync/history with its real time. How the item is named to Trakt (forms,
searches, the remembered match, history checks) is cwhook/trakt/matching.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from cwhook.kernel import clock as clocks
from cwhook.kernel import items, logs
from cwhook.kernel.items import TraktAliases
from cwhook.kernel.vocab import Verb
from cwhook.state.journal import Result
from cwhook.state.store import LONGEST_RETRY, AsyncStore, Entry, NewEntry, StoreUnavailable
from cwhook.status.health import Counters
from cwhook.trakt import bodies as tb
from cwhook.trakt.client import AuthError, FinalError, NotFound, NotTrakt, TraktClient, TraktError
from cwhook.trakt.matching import Matcher, Outcome, Unsure

log = logs.get("cwhook.trakt.delivery")

LATE_STOP_AFTER = 600.0  # a watched stop older than this goes to /sync/history
DEFAULT_RUNTIME = 7200.0  # for staleness when the item's runtime is unknown
MAX_DEFER = LONGEST_RETRY  # 300 s; a restart after a clock set back relies on it (cwhook/state/store.py)
STORE_RETRY = 5.0  # the state file could not be written (disk full, locked): try again soon
LOCAL_RETRY = 30.0  # a failure that is not Trakt's: try again soon, set aside after 3
NOT_TRAKT_RETRY = 30.0  # an answer that is not Trakt's: again after 30 s, 60 s, then set aside


@dataclass
class Options:
    dry_run: bool = False
    watchlist_autoremove_movies: bool = False


NEEDS_AUTH_RECHECK = 60.0  # seconds
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
        retry_scale: float = 1.0,
    ) -> None:
        self.account = account
        self.retry_scale = retry_scale  # below 1 only in tests: shorter waits before a retry
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
        self.match = Matcher(client, db, self._dry, wall, aliases)

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
                # A reload with new tokens or a refresh that succeeds wakes the lane at once;
                # this is only a safety net, and no idle account wakes more than once a minute.
                await self._sleep(NEEDS_AUTH_RECHECK)
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
            delay = min(MAX_DEFER, NOT_TRAKT_RETRY * 2 ** min(entry.local_failures, 10)) * self.retry_scale
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
            delay = min(MAX_DEFER, 5.0 * 2 ** min(entry.attempts, 10)) * self.retry_scale
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

    async def deliver(self, entry: Entry, now: float) -> Outcome:
        """One attempt; ``now`` is steady time (the entry's age is measured on it)."""
        send = SENDERS.get(cast(Verb, entry.verb))  # a str from the file: an unknown one finds none
        if send is None:
            raise FinalError(0, f"unknown outbox verb {entry.verb!r}")
        return await send(self, entry, now - entry.born)


# --- what each verb sends ------------------------------------------------------------
# (lane, entry, age in steady seconds) -> the outcome; the item is named by the lane's Matcher.

Sender = Callable[[Lane, Entry, float], Awaitable[Outcome]]


async def _scrobble(lane: Lane, entry: Entry, age: float) -> Outcome:
    """start, pause: /scrobble/{verb}, unless the play is surely over by now (stale)."""
    event, match = entry.event, lane.match
    runtime = event.duration_s or DEFAULT_RUNTIME
    remaining = runtime * max(0.0, 1.0 - entry.progress / 100.0)
    if age > max(remaining, 60.0):
        return Outcome("stale", {"age_s": round(age, 1)})
    path = f"/scrobble/{entry.verb}"
    return await match.with_item(
        event, tb.item_forms(event),
        lambda form: match.post(path, tb.scrobble_body(form, entry.progress)), "sent")


async def _stop(lane: Lane, entry: Entry, age: float) -> Outcome:
    """/scrobble/stop, or /sync/history with the real time once it is late; a watched movie
    then leaves the watchlist when scrobble.watchlist_autoremove_movies is on."""
    event, when, match = entry.event, entry.created_at, lane.match
    if age <= LATE_STOP_AFTER:
        outcome = await match.with_item(
            event, tb.item_forms(event),
            lambda form: match.post("/scrobble/stop", tb.scrobble_body(form, entry.progress)), "sent")
    elif entry.attempted and await match.in_history(event, when):
        outcome = Outcome("already_in_history")
    else:
        outcome = await match.with_item(
            event, tb.item_forms(event),
            lambda form: match.post("/sync/history", tb.history_body(form, when), True), "late_history")
    if event.kind == "movie" and lane.options().watchlist_autoremove_movies:
        outcome.follow_up = NewEntry("watchlist_remove", event, entry.progress, lane.wall(),
                                     account=lane.account)
    return outcome


async def _rate(lane: Lane, entry: Entry, age: float) -> Outcome:
    """/sync/ratings, or /sync/ratings/remove for a rating taken back."""
    event, match = entry.event, lane.match
    rating = event.rating
    path = "/sync/ratings" if rating is not None else "/sync/ratings/remove"
    return await match.with_item(
        event, tb.rating_forms(event),
        lambda form: match.post(path, tb.ratings_body(form, rating, entry.created_at), True), "sent")


async def _history_add(lane: Lane, entry: Entry, age: float) -> Outcome:
    """Marked watched by hand: /sync/history, unless an earlier attempt already got there."""
    event, match = entry.event, lane.match
    if entry.attempted and await match.in_history(event, entry.created_at):
        return Outcome("already_in_history")
    return await match.with_item(
        event, tb.item_forms(event),
        lambda form: match.post("/sync/history", tb.history_body(form, entry.created_at), True), "sent")


async def _history_remove(lane: Lane, entry: Entry, age: float) -> Outcome:
    """Marked unwatched by hand: /sync/history/remove (every play of the item)."""
    event, match = entry.event, lane.match
    return await match.with_item(
        event, tb.item_forms(event),
        lambda form: match.post("/sync/history/remove", tb.history_remove_body(form), True), "sent")


async def _watchlist_remove(lane: Lane, entry: Entry, age: float) -> Outcome:
    event, match = entry.event, lane.match
    return await match.with_item(
        event, tb.item_forms(event),
        lambda form: match.post("/sync/watchlist/remove", tb.watchlist_remove_body(form), True), "sent")


# Every Verb has its sender (tests/test_delivery.py holds the table to vocab.VERBS).
SENDERS: dict[Verb, Sender] = {
    "start": _scrobble,
    "pause": _scrobble,
    "stop": _stop,
    "rate": _rate,
    "history_add": _history_add,
    "history_remove": _history_remove,
    "watchlist_remove": _watchlist_remove,
}
