"""Benchmark: what an event costs the store as the outbox backlog grows (Trakt down).

    python bench/backlog.py [--pending 1000,50000] [--sessions 10] [--measure 3000]

Drives the store itself (``AsyncStore`` on an event loop, with its checkpoint task running), as
the daemon does while Trakt is down: each batch of events is committed to the inbox (the 202),
then decided into the outbox (the worker's commit, one stop per event, ``--sessions`` viewing
sessions in turn), then a delivery lane looks at its heads and puts every due one off for a
minute (Trakt's 503). Nothing is ever delivered, so the outbox only grows.

Why the store and not a real daemon: the question is the cost that grows with the backlog, and
that cost is in the store's SQL; a daemon behind HTTP on a shared two-core machine adds noise
(the parsers, the network, the rules) that is the same at 1,000 and at 50,000 pending, and
takes many minutes to fill 50,000 entries.

For each target: the backlog is filled up to ``pending`` entries, then ``--measure`` more events
are timed. Prints events/s at each backlog, the WAL's largest size during the run and its size at
the end, and the database file's size.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cwhook.kernel import clock as clocks
from cwhook.kernel.event import Event, Ids
from cwhook.state.store import AsyncStore, NewEntry, Store

BATCH = 20  # events per group commit (a burst of webhooks answered in one turn of the loop)
ACCOUNT = "default"

MOVIE = Event(source="plex", action="stop", kind="movie", title="A Film", year=2014,
              ids=Ids(imdb="tt2015381"), user_name="alice", player_id="tv", item_key="1",
              duration_s=7200.0)


class Run:
    def __init__(self, db: AsyncStore, sessions: int) -> None:
        self.db = db
        self.store = db.store
        self.sessions = sessions
        self.n = 0
        self.wal_max = 0

    def event(self) -> Event:
        self.n += 1
        # A film of its own each time (the watched registry grows), in one of a few sessions
        # (a session's entries wait behind its head).
        return replace(MOVIE, ids=Ids(imdb=f"tt{self.n:07d}"), title=f"Film {self.n}",
                       item_key=str(self.n % self.sessions), received_at=time.time())

    async def batch(self, size: int) -> None:
        events = [self.event() for _ in range(size)]
        seqs = await asyncio.gather(*(self.db.ingest(e, lambda _s, _e: None) for e in events))
        now = time.time()
        entries = [NewEntry("stop", e, 95.0, now, ACCOUNT) for e in events]
        await self.db.call(self.store.decide, entries, max(seqs))
        await self.lane()
        self.wal_max = max(self.wal_max, self.store.wal_size())

    async def lane(self) -> None:
        """A delivery lane's wake with Trakt down: its heads, every due one put off."""
        heads = await self.db.call(self.store.heads, ACCOUNT, 64)
        now = clocks.now()
        for entry in heads:
            if entry.next_attempt_at <= now:
                await self.db.call(self.store.mark_attempted, entry.id)
                await self.db.call(self.store.reschedule, entry.id, now + 60.0, "503: Trakt server error")

    async def fill(self, pending: int) -> None:
        while self.store.stats.pending < pending:
            await self.batch(min(BATCH * 10, pending - self.store.stats.pending))

    async def rate(self, events: int) -> float:
        start = time.perf_counter()
        for _ in range(events // BATCH):
            await self.batch(BATCH)
        return (events // BATCH) * BATCH / (time.perf_counter() - start)


async def main(targets: list[int], sessions: int, measure: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        db = AsyncStore(Store(state))
        checkpoints = asyncio.create_task(db.checkpoints())
        run = Run(db, sessions)
        rows = []
        try:
            for pending in targets:
                await run.fill(pending)
                run.wal_max = 0
                rate = await run.rate(measure)
                rows.append((pending, rate, run.wal_max))
            await asyncio.sleep(2.5)  # a checkpoint on the clock
            wal_end = db.store.wal_size()
            size = os.stat(state / "cwhook.sqlite3").st_size
        finally:
            checkpoints.cancel()
            db.close()
    print(f"{'pending':>8} {'events/s':>9} {'WAL max MB':>11}")
    for pending, rate, wal in rows:
        print(f"{pending:>8} {rate:>9.0f} {wal / 1e6:>11.1f}")
    print(f"end: WAL {wal_end / 1e6:.1f} MB, database {size / 1e6:.1f} MB, {run.n} events; "
          f"ratio {rows[-1][1] / rows[0][1]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pending", default="1000,50000")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--measure", type=int, default=3000)
    args = parser.parse_args()
    asyncio.run(main([int(p) for p in args.pending.split(",")], args.sessions, args.measure))
