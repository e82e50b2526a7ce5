"""Wall-clock steps: a real `cwhook run` whose wall clock is set back and ahead (libfaketime),
its monotonic clock untouched, counted per item at the fake Trakt.

Debounce windows, retry delays and ages run on steady time (cwhook/kernel/clock.py); stored times
are wall times whose age is never negative, so a step in either direction, while the daemon
runs or while it is down, neither holds nor loses an entry (docs/durability.md, "Clocks").
"""

from __future__ import annotations

import glob
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cwhook.kernel import clock as clocks
from cwhook.state.store import NewEntry, Store
from tests.builders import movie, settled, sleep_past
from tests.conftest import Daemon, config_text, free_port, wait_for
from tests.faketrakt import FakeTrakt

LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)  # Debian's
HOUR = 3600
DEBOUNCE = 3
MOVIE = movie(action="start", user_name="a", player_id="p", item_key="1", duration_s=7200.0)


def plex(event: str, i: int, percent: float) -> bytes:
    """A Plex event for numbered movie i (its own session)."""
    return json.dumps({
        "event": event, "user": True, "owner": True,
        "Account": {"id": 1, "title": "alice"},
        "Server": {"title": "srv", "uuid": "srv-uuid"},
        "Player": {"local": True, "title": "tv", "uuid": "player-1"},
        "Metadata": {"type": "movie", "title": f"Counted Movie {i}", "year": 2001,
                     "ratingKey": str(50000 + i), "Guid": [{"id": f"imdb://tt{9000000 + i}"}],
                     "viewOffset": int(7_200_000 * percent / 100), "duration": 7_200_000},
    }).encode()


class SteppedDaemon:
    """`cwhook run` under libfaketime: ``step(seconds)`` sets its wall clock that far from the true
    time (FAKETIME_NO_CACHE: read on every call); CLOCK_MONOTONIC is left alone."""

    def __init__(self, tmp: Path, fake: FakeTrakt) -> None:
        self.fake = fake
        self.rc = tmp / "faketime.rc"
        self.step(0)
        port = free_port()
        access, refresh, expires = fake.issue_tokens()
        text = config_text(port, tmp / "state", fake.url, access, refresh, expires)
        text = text.replace("pause_debounce_seconds: 1", f"pause_debounce_seconds: {DEBOUNCE}")
        path = tmp / "cwhook.yml"
        path.write_text(text)
        assert LIBFAKETIME is not None
        self.env = {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": str(self.rc),
                    "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                    "CWHOOK_POST_INTERVAL": "0", "_CWHOOK_BACKOFF_SCALE": "0.05"}
        self.daemon = Daemon(path, port, env=self.env)

    def step(self, seconds: int) -> None:
        self.rc.write_text(f"{seconds:+d}\n")

    def start(self) -> Daemon:
        self.daemon = Daemon(self.daemon.config_path, self.daemon.port, env=self.env)
        return self.daemon.start()

    def post(self, body: bytes) -> None:
        status, _ = self.daemon.post("plex", body)
        assert status == 202

    def kill(self) -> None:
        assert self.daemon.proc is not None
        self.daemon.proc.send_signal(signal.SIGKILL)
        self.daemon.proc.wait(10)

    def logged(self, event: str, **fields: Any) -> bool:
        return any(e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
                   for e in self.daemon.log_events())

    def sent(self, path: str, i: int) -> int:
        """How many calls to ``path`` Trakt accepted for movie i."""
        imdb = f"tt{9000000 + i}"
        return sum(1 for c in self.fake.posts(path) if c.status in (200, 201)
                   and imdb in json.dumps(c.body))

    def in_history(self, i: int) -> int:
        return self.fake.history_counts().get(f"movie:{900000 + i}", 0)


@pytest.fixture
def stepped(tmp_path: Path) -> Iterator[SteppedDaemon]:
    if LIBFAKETIME is None:
        pytest.fail("libfaketime is not installed (Debian's `libfaketime`; .ci/run installs it)")
    fake = FakeTrakt().start()
    fake.rate_limit = False
    fake.add_movies(10)
    rig = SteppedDaemon(tmp_path, fake)
    try:
        yield rig
    finally:
        if rig.daemon.proc is not None and rig.daemon.proc.poll() is None:
            rig.daemon.proc.kill()
            rig.daemon.proc.wait()
        fake.stop()


def defer_next_delivery(fake: FakeTrakt) -> None:
    """The next delivery fails with 503 through all of the client's tries (their back-off at 1/20,
    under a second: _CWHOOK_BACKOFF_SCALE): deferred 5 s, the retry delay the steps must not move."""
    fake.script = [503] * 5


def debounced(stepped: SteppedDaemon, i: int) -> None:
    """Wait until the rules hold movie i's pause (the step must come after it)."""
    wait_for(lambda: stepped.logged("decision", reason="debounced", item=f"Counted Movie {i} (2001)"))


@pytest.mark.slow
def test_a_held_pause_is_sent_when_the_clock_is_set_back(stepped: SteppedDaemon) -> None:
    stepped.start()
    stepped.post(plex("media.play", 1, 30))
    stepped.post(plex("media.pause", 1, 40))
    debounced(stepped, 1)
    stepped.step(-HOUR)
    wait_for(lambda: stepped.sent("/scrobble/pause", 1), timeout=DEBOUNCE + 10)
    wait_for(lambda: settled(stepped.daemon))
    assert (stepped.sent("/scrobble/start", 1), stepped.sent("/scrobble/pause", 1)) == (1, 1)


@pytest.mark.slow
def test_a_clock_set_ahead_does_not_end_a_pause_window(stepped: SteppedDaemon) -> None:
    """A resume within the window cancels the pause, whatever the wall clock did meanwhile."""
    stepped.start()
    stepped.post(plex("media.play", 2, 30))
    stepped.post(plex("media.pause", 2, 40))
    paused_at = time.monotonic()
    debounced(stepped, 2)
    stepped.step(HOUR)
    stepped.post(plex("media.resume", 2, 40))
    wait_for(lambda: stepped.logged("decision", reason="pause_cancelled", item="Counted Movie 2 (2001)"))
    sleep_past(paused_at, DEBOUNCE, margin_s=1.0)  # the point: the window's end passes, nothing is sent
    assert (stepped.sent("/scrobble/start", 2), stepped.sent("/scrobble/pause", 2)) == (1, 0)


@pytest.mark.slow
def test_a_deferred_stop_and_its_age_when_the_clock_is_set_back(stepped: SteppedDaemon) -> None:
    """/healthz shows the true age, and the retry comes when its delay ends, not an hour later."""
    stepped.start()
    defer_next_delivery(stepped.fake)
    posted = time.monotonic()
    stepped.post(plex("media.stop", 3, 95))
    wait_for(lambda: stepped.logged("trakt_deferred", item="Counted Movie 3 (2001)"), timeout=40)
    stepped.step(-HOUR)
    age = stepped.daemon.health()["outbox"]["oldest_age_s"]
    assert age is not None and age >= time.monotonic() - posted - 2
    wait_for(lambda: stepped.in_history(3), timeout=20)
    wait_for(lambda: settled(stepped.daemon))
    assert (stepped.sent("/scrobble/stop", 3), stepped.in_history(3)) == (1, 1)
    assert stepped.daemon.health()["outbox"]["pending"] == 0


@pytest.mark.slow
def test_a_stop_made_before_a_clock_set_ahead_is_not_late(stepped: SteppedDaemon) -> None:
    """Seconds old whatever the wall clock says: scrobbled, not added to the history as an old play."""
    stepped.start()
    defer_next_delivery(stepped.fake)
    stepped.post(plex("media.stop", 4, 95))
    wait_for(lambda: stepped.logged("trakt_deferred", item="Counted Movie 4 (2001)"), timeout=40)
    stepped.step(HOUR)
    wait_for(lambda: stepped.in_history(4), timeout=20)
    wait_for(lambda: settled(stepped.daemon))
    assert (stepped.sent("/scrobble/stop", 4), stepped.in_history(4)) == (1, 1)
    assert stepped.fake.posts("/sync/history") == []


@pytest.mark.slow
@pytest.mark.parametrize("step", [-HOUR, HOUR])
def test_wall_clock_stepped_while_the_daemon_is_down(stepped: SteppedDaemon, step: int) -> None:
    """Killed with a pause held and a stop waiting for its retry; restarted with the clock an hour
    off: each reaches Trakt once, soon."""
    stepped.start()
    defer_next_delivery(stepped.fake)
    stepped.post(plex("media.stop", 5, 95))
    wait_for(lambda: stepped.logged("trakt_deferred", item="Counted Movie 5 (2001)"), timeout=40)
    stepped.post(plex("media.play", 6, 30))
    stepped.post(plex("media.pause", 6, 40))
    debounced(stepped, 6)
    stepped.kill()
    stepped.step(step)
    stepped.start()
    wait_for(lambda: stepped.in_history(5) and stepped.sent("/scrobble/pause", 6), timeout=20)
    wait_for(lambda: settled(stepped.daemon))
    assert (stepped.in_history(5), stepped.sent("/scrobble/pause", 6)) == (1, 1)
    assert stepped.daemon.health()["outbox"]["pending"] == 0


# --- the pieces, without a process -------------------------------------------------------------


class Clocks:
    """A steady and a wall clock in the test's hands."""

    def __init__(self) -> None:
        self.steady = 1_000_000.0
        self.offset = 0.0  # wall minus steady

    def now(self) -> float:
        return self.steady

    def wall(self) -> float:
        return self.steady + self.offset


def test_a_stored_time_in_the_future_counts_as_now() -> None:
    c = Clocks()
    assert clocks.steady_of(c.wall() - 30, c.now, c.wall) == c.now() - 30
    c.offset = -HOUR  # set back: a time stored before it is "in the future"
    assert clocks.steady_of(c.now() - 30, c.now, c.wall) == c.now()


def test_outbox_ages_follow_the_steady_clock(tmp_path: Path) -> None:
    c = Clocks()
    store = Store(tmp_path, clock=c.now, wall=c.wall)
    store.decide([NewEntry("stop", MOVIE, 95, c.wall())], 0)[0]
    c.steady += 20
    c.offset = -HOUR
    store.decide([NewEntry("stop", MOVIE, 95, c.wall())], 0)[0]  # made after the step: stamped an hour "earlier"
    [first] = store.heads("default")
    assert c.now() - first.born == 20
    assert c.now() - (store.stats.oldest_born or 0) == 20  # the first made, not the earliest stamped
    store.close()
    # a restart: the earlier process's entries are aged by their wall time, never below 0
    again = Store(tmp_path, clock=c.now, wall=c.wall)
    assert c.now() - (again.stats.oldest_born or 0) == 0
    again.close()


def test_a_retry_time_from_before_a_clock_set_back_is_due_at_start(tmp_path: Path) -> None:
    c = Clocks()
    store = Store(tmp_path, clock=c.now, wall=c.wall)
    first = store.decide([NewEntry("stop", MOVIE, 95, c.wall())], 0)[0]
    store.reschedule(first, c.now() + 60, "503")
    store.close()
    c.steady -= HOUR  # the wall clock was set back: the next process's steady time starts there
    again = Store(tmp_path, clock=c.now, wall=c.wall)
    [entry] = again.heads("default")
    assert entry.next_attempt_at <= c.now()
    again.close()
