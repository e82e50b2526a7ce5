"""The worker coroutine: inbox → rules → outbox, waking for the rules' timers.

Every event on the queue is already committed to the store's inbox. The worker
runs it through the rules and commits, in one transaction, the outbox rows its
decisions call for together with the inbox rows they settle. An event the rules
still hold (a pause in its debounce window) stays in the inbox until ``tick``
sends it or a later event cancels or supersedes it, so a restart replays it
(``replay``) instead of forgetting it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cwhook.config.schema import DEFAULT_ACCOUNT, ScrobbleConfig
from cwhook.kernel import clock as clocks
from cwhook.kernel import logs
from cwhook.kernel.event import Event
from cwhook.scrobble.rules import WATCHED_WINDOW, Decision, Rules
from cwhook.state.journal import Arrived, Noted
from cwhook.state.store import AsyncStore, NewEntry, StoreUnavailable
from cwhook.status.health import Counters

log = logs.get("cwhook.scrobble.worker")

MAX_IDLE_WAIT = 60.0
MAX_BATCH = 500
BATCH_WINDOW = 0.01  # seconds the worker lets events gather after the first (timers are unaffected)
COMMIT_RETRY_MAX = 5.0

Item = tuple[int, Event]  # (inbox id, event)
Routed = tuple[str, Decision]  # (Trakt account, decision)


class Worker:
    def __init__(
        self,
        queue: asyncio.Queue[Item],
        rules: Rules,
        db: AsyncStore,
        counters: Counters,
        wake_sender: Callable[[set[str]], None],
        clock: clocks.Clock | None = None,
        wall: clocks.Clock | None = None,
    ) -> None:
        self.queue = queue
        # the default account's; every other account gets its own (docs/configuration.md, Households)
        self.rules = rules
        self._rules: dict[str, Rules] = {DEFAULT_ACCOUNT: rules}
        self.db = db
        self.counters = counters
        self.wake_sender = wake_sender
        # The rules run on steady time: a wall clock set back or ahead neither holds a pause
        # nor lets it go early. Outbox rows are stamped with the wall time (docs/durability.md).
        # Given only ``clock`` (tests), the wall clock is the same one: a world without steps.
        self.clock = clock or clocks.now
        self.wall = wall or (time.time if clock is None else clock)
        # Inbox ids of the events the rules hold (pending pauses), by the event object.
        self._held: dict[int, tuple[int, Event]] = {}
        self._upto = 0  # the newest inbox id taken from the queue
        self._taken: list[Item] = []  # taken from the queue, not yet decided (see run)
        self._replayed = 0  # the newest inbox id the replay took (the queue may hold it too)
        self._caught_up = True  # False while ``catch_up`` has not read the inbox yet
        # Decisions made but not yet committed (a shutdown during a commit's retry keeps them).
        self._unsaved: tuple[list[NewEntry], list[Noted]] = ([], [])

    # --- deciding (no I/O but the log) ------------------------------------------------

    def rules_for(self, account: str) -> Rules:
        """Rules run per Trakt account: one watched stop per viewing, the one-hour dedupe."""
        rules = self._rules.get(account)
        if rules is None:
            rules = self._rules[account] = Rules(self.rules.settings, aliases=self.rules.aliases)
        return rules

    def update_settings(self, settings: ScrobbleConfig) -> None:
        for rules in self._rules.values():
            rules.update_settings(settings)

    def next_deadline(self) -> float | None:
        deadlines = [d for r in self._rules.values() if (d := r.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    @property
    def session_count(self) -> int:
        return sum(r.session_count for r in self._rules.values())

    def step(self, item: Item | None, now: float) -> list[Routed]:
        """Due timers, then the event for each of its accounts; a failing event never loses
        the timers' decisions."""
        decisions: list[Routed] = []
        for account, rules in list(self._rules.items()):
            if not rules.due(now):  # most accounts, most of the time: one look, not a tick per event
                continue
            try:
                decisions += [(account, d) for d in rules.tick(now)]
            except Exception as exc:
                log.exception("rules_error", error=repr(exc), session=None, account=account)
        if item is not None:
            _, event = item
            for account in event.accounts or (DEFAULT_ACCOUNT,):
                try:
                    decisions += [(account, d) for d in self.rules_for(account).handle(event, now)]
                except Exception as exc:  # never let one odd event stop the worker
                    log.exception("rules_error", error=repr(exc), session=event.session_key,
                                  account=account)
        return decisions

    def entries(self, decisions: list[Routed], now: float, noted: list[Noted] | None = None,
                base: int = 0) -> list[NewEntry]:
        """Log and count each decision; the outbox rows the sends need (stamped ``now``, a wall
        time). With ``noted``, the
        journal's record of each decision is added to it (``base``: entries already decided
        in the same commit)."""
        out: list[NewEntry] = []
        for account, d in decisions:
            e = d.event
            fields: dict[str, object] = {
                "reason": d.reason,
                "action": e.action,
                "source": e.source,
                "item": e.label(),
                "user": e.user_name,
                "session": e.session_key,
            }
            fields["account"] = account
            if d.progress is not None:
                fields["progress"] = round(d.progress, 2)
            if d.notes:
                fields["notes"] = list(d.notes)
            self.counters.decision(d.reason)
            sends: tuple[int, ...] = ()
            if d.send is not None:
                fields["trakt"] = d.send.verb
                sends = (base + len(out),)
                out.append(NewEntry(d.send.verb, d.send.event, d.send.progress, now, account=account))
            if noted is not None:
                inbox_id = self._held.get(id(e), (None, e))[0]
                noted.append(Noted(inbox_id, Arrived.of(e), d.reason, account=account, notes=d.notes,
                                   progress=d.progress, sends=sends))
            log.info("decision", **fields)
        return out

    def _track(self, batch: list[Item]) -> None:
        """The inbox ids of a batch's events, for the journal (``settle`` forgets the settled)."""
        for seq, event in batch:
            self._held[id(event)] = (seq, event)

    def settle(self, batch: list[Item]) -> tuple[int, set[int]]:
        """What is finally decided after this batch: every inbox row up to the newest one
        taken (rows come in order), except those the rules still hold."""
        for seq, event in batch:
            self._held[id(event)] = (seq, event)
            self._upto = max(self._upto, seq)
        held = {id(e) for r in self._rules.values() for e in r.held_events()}
        self._held = {k: v for k, v in self._held.items() if k in held}
        return self._upto, {seq for seq, _ in self._held.values()}

    # --- committing -----------------------------------------------------------------

    async def commit(self, entries: list[NewEntry], settled: tuple[int, set[int]],
                     once: bool = False, noted: list[Noted] | None = None) -> bool:
        """Store the decisions (and their journal rows); retried until the store takes them
        (they are in the inbox meanwhile)."""
        delay = 0.5
        while True:
            try:
                await self.db.call(self.db.store.decide, entries, *settled, noted or [])
            except StoreUnavailable as exc:
                log.error("store_write_failed", error=str(exc), retry_in_s=None if once else delay,
                          note="the events wait in the inbox")
                if once:
                    return False
                await asyncio.sleep(delay)
                delay = min(COMMIT_RETRY_MAX, delay * 2)
                continue
            if entries:
                self.wake_sender({e.account for e in entries})  # only these lanes have new work
            return True

    def steady_of(self, stamp: float) -> float:
        """The steady time of a stored wall time (its age never negative: see cwhook/kernel/clock.py)."""
        return clocks.steady_of(stamp, self.clock, self.wall)

    async def process(self, batch: list[Item], times: list[float] | None = None,
                      once: bool = False) -> bool:
        """Decide a batch (each event at its stored wall time ``times[i]``, else now) and commit it
        in one transaction."""
        entries: list[NewEntry] = []
        noted: list[Noted] = []
        items: list[Item | None] = [*batch] or [None]
        self._track(batch)
        with logs.gathered():  # the batch's decision lines leave in one write
            for i, item in enumerate(items):
                if times is None or item is None:
                    t, stamp = self.clock(), self.wall()
                else:
                    t, stamp = self.steady_of(times[i]), times[i]
                entries += self.entries(self.step(item, t), stamp, noted, len(entries))
        self._unsaved = (entries, noted)
        done = await self.commit(entries, self.settle(batch), once, noted)
        if done:
            self._unsaved = ([], [])
        return done

    # --- the loop ---------------------------------------------------------------------

    async def catch_up(self) -> None:
        """At start, in the worker's task (the daemon already listens): replay the inbox once
        the store can be read. While it cannot (a full disk, an unopenable file) this waits and
        tries again; the replay's commit is retried the same way (``commit``)."""
        delay = 0.5
        self._caught_up = False
        while True:
            try:
                items = await self.db.call(self.db.store.undecided)
                watched = await self.db.call(self.db.store.recent_watched, self.wall() - WATCHED_WINDOW)
                break
            except StoreUnavailable as exc:
                log.error("store_unavailable", error=str(exc), retry_in_s=delay,
                          note="the events answered 202 wait in the inbox; webhooks get 503 meanwhile")
                await asyncio.sleep(delay)
                delay = min(COMMIT_RETRY_MAX, delay * 2)
        # Events committed after the read are queued too: those the replay took are skipped there.
        self._replayed = max((seq for seq, _ in items), default=0)
        self._caught_up = True
        await self.replay(items, watched)

    def _fresh(self, batch: list[Item]) -> list[Item]:
        return [item for item in batch if item[0] > self._replayed]

    async def replay(self, items: list[Item], watched: list[tuple[str, str, float]] | None = None) -> None:
        """At start: events answered 202 but not finally decided go through fresh rules.

        Each is handled at the time it was received, so a held pause keeps its
        window; the rules' timers then catch up with the present.
        """
        if watched is None:
            watched = await self.db.call(self.db.store.recent_watched, self.wall() - WATCHED_WINDOW)
        for account, identity, at in watched:
            self.rules_for(account).remember_watched(identity, self.steady_of(at))
        times, last = [], 0.0
        for _, event in items:
            last = max(last, event.received_at)
            times.append(last)
        if items:
            await self.process(items, times)
            log.info("inbox_replayed", events=len(items))
        await self.process([])

    async def receive(self, timeout: float) -> Item | None:
        """The next event, or None when ``timeout`` seconds pass first."""
        try:
            async with asyncio.timeout(timeout):
                return await self.queue.get()
        except TimeoutError:
            return None

    async def run(self) -> None:
        while True:
            deadline = self.next_deadline()
            timeout = MAX_IDLE_WAIT if deadline is None else max(0.0, deadline - self.clock())
            first = await self.receive(min(timeout, MAX_IDLE_WAIT))
            batch: list[Item] = [] if first is None else [first]
            self._taken = batch  # a shutdown during the window below drains these too
            if first is not None and BATCH_WINDOW and not self.queue.empty():
                # A burst is arriving: let it gather, one commit for all of it. A lone event
                # goes through at once (the scrobble's latency: docs/performance.md).
                await asyncio.sleep(BATCH_WINDOW)
            # Take everything already queued in one go (one commit for all of it).
            while len(batch) < MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            self._taken = []
            await self.process(self._fresh(batch))

    async def drain(self) -> None:
        """Shutdown: everything queued goes through the rules; held pauses are sent now."""
        if not self._caught_up:
            # The inbox was never read: deciding newer events would settle (delete) older rows
            # nobody decided. Everything stays in the inbox for the next start.
            return
        batch, self._taken = self._taken, []
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        batch = self._fresh(batch)
        now, stamp = self.clock(), self.wall()
        decisions: list[Routed] = []
        for item in batch:
            decisions += self.step(item, now)
        decisions += self.step(None, now)
        for account, rules in self._rules.items():
            decisions += [(account, d) for d in rules.flush_pending()]
        self._track(batch)
        unsaved, unnoted = self._unsaved  # a commit the shutdown cut short: its decisions too
        noted: list[Noted] = list(unnoted)
        entries = [*unsaved, *self.entries(decisions, stamp, noted, len(unsaved))]
        await self.commit(entries, self.settle(batch), once=True, noted=noted)
