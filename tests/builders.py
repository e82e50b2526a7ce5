"""What several test modules build the same way: events, webhook payloads, an app runtime, waits.

Plain functions and constants (no fixtures), so a test module imports them from here and never from
another test module (tests/test_tests.py holds that).
"""

from __future__ import annotations

import ast
import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cwhook.config.schema import parse_config
from cwhook.ingest.app import Busy, Runtime
from cwhook.kernel.event import Event, Ids
from cwhook.scrobble import preview
from cwhook.sources.registry import SOURCES
from cwhook.state.journal import Arrived, Noted
from cwhook.state.store import NewEntry, Store
from cwhook.status.health import Counters
from tests.conftest import Daemon, config_text, fixture_json
from tests.faketrakt import FakeTrakt

# --- events ------------------------------------------------------------------------------------

_MOVIE = Event(source="plex", action="stop", kind="movie", title="Guardians of the Galaxy", year=2014,
               ids=Ids(imdb="tt2015381"))
_EPISODE = Event(source="jellyfin", action="start", kind="episode", title="Pilot", ids=Ids(tvdb=349232),
                 show_title="Breaking Bad", show_year=2008, season=1, number=1)


def movie(**fields: Any) -> Event:
    """A Plex stop of Guardians of the Galaxy (2014, imdb tt2015381), with ``fields`` changed."""
    return replace(_MOVIE, **fields)


def episode(**fields: Any) -> Event:
    """A Jellyfin start of Breaking Bad S01E01 "Pilot" (tvdb 349232), with ``fields`` changed."""
    return replace(_EPISODE, **fields)


def counted_movie(i: int, at: float, **fields: Any) -> Event:
    """Numbered movie i as FakeTrakt.add_movies knows it (imdb tt9000000+i), stopped by alice."""
    return movie(title=f"Counted Movie {i}", year=2001, ids=Ids(imdb=f"tt{9000000 + i}"), user_name="alice",
                 player_id="p", item_key=str(i), received_at=at, **fields)


# --- payloads ----------------------------------------------------------------------------------

PATHS = {name: source.path for name, source in SOURCES.items()}  # the one route table


def multipart(parts: list[tuple[str, bytes, str | None]], boundary: str = "XyZ-boundary-123",
              typed: bool = True, preamble: bytes = b"") -> tuple[bytes, str]:
    """A multipart/form-data body of (name, data, filename) parts and its Content-Type; ``typed`` gives
    each part a Content-Type (image/jpeg for a file, else application/json)."""
    out = preamble
    for name, data, filename in parts:
        out += f"--{boundary}\r\n".encode()
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"Content-Disposition: {disp}\r\n".encode()
        if typed:
            out += b"Content-Type: " + (b"image/jpeg" if filename else b"application/json") + b"\r\n"
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def plex_body(event: str, offset_ms: int | None, name: str = "plex_media.scrobble_movie.json",
              **meta: object) -> bytes:
    """A Plex sample fixture as ``event`` at ``offset_ms`` (None: no viewOffset), Metadata updated."""
    data = fixture_json(name)
    data["event"] = event
    if offset_ms is None:
        data["Metadata"].pop("viewOffset", None)
    else:
        data["Metadata"]["viewOffset"] = offset_ms
    data["Metadata"].update(meta)
    return json.dumps(data).encode()


def plex_stop(i: int, percent: float = 95.0, title: str | None = None) -> bytes:
    """A Plex stop of numbered movie i (its own session) at ``percent``."""
    return json.dumps({
        "event": "media.stop", "user": True, "owner": True,
        "Account": {"id": 1, "title": "alice"},
        "Server": {"title": "srv", "uuid": "srv-uuid"},
        "Player": {"local": True, "title": "tv", "uuid": "player-1"},
        "Metadata": {"type": "movie", "title": title or f"Counted Movie {i}", "year": 2001,
                     "ratingKey": str(50000 + i), "Guid": [{"id": f"imdb://tt{9000000 + i}"}],
                     "viewOffset": int(7_200_000 * percent / 100), "duration": 7_200_000},
    }).encode()


# --- the fake Trakt and a daemon process -------------------------------------------------------

FAST_ENV = {"CWHOOK_POST_INTERVAL": "0"}


def authorized(fake: FakeTrakt, **kw: object) -> dict[str, object]:
    """daemon_factory keywords for a daemon already authorized against ``fake``."""
    access, refresh, expires = fake.issue_tokens()
    return {"trakt_url": fake.url, "access_token": access, "refresh_token": refresh,
            "expires_at": expires, **kw}


def count(fake: FakeTrakt, acked: set[int]) -> tuple[list[int], list[int]]:
    """(lost, doubled) numbered movies."""
    counts = fake.history_counts()
    lost = [i for i in sorted(acked) if counts.get(f"movie:{900000 + i}", 0) == 0]
    doubled = [i for i in sorted(acked) if counts.get(f"movie:{900000 + i}", 0) > 1]
    return lost, doubled


# --- the app and the store, in process ---------------------------------------------------------

@dataclass
class QueueRuntime(Runtime):
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)


def runtime(extra: str = "", queue_size: int = 100, max_body: int | None = None) -> QueueRuntime:
    """An app runtime whose inbox commit is a bounded queue (full: Busy)."""
    text = config_text(8787, Path("/tmp/state"), plex_extra=extra)
    if max_body:
        text = text.replace("  port: 8787", f"  port: 8787\n  max_body_bytes: {max_body}")
    cfg = parse_config(text, Path("/tmp/cwhook.yml"))
    counters = Counters()
    queue: asyncio.Queue[Event] = asyncio.Queue(queue_size)

    async def ingest(event: Event) -> None:
        """Stands in for the daemon's inbox commit: queues the event, or is busy when full."""
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            raise Busy() from None

    return QueueRuntime(cfg, counters, lambda: {"status": "ok"}, ingest, queue, preview=preview.answer)


def decide(store: Store, event: Event, reason: str, verbs: tuple[str, ...] = (), inbox: bool = True,
           account: str = "default") -> list[int]:
    """One decision about ``event`` with its ``verbs`` queued, as the worker would commit it."""
    inbox_id = store.ingest([event])[0] if inbox else None
    entries = [NewEntry(v, event, event.progress or 0.0, event.received_at, account=account) for v in verbs]
    noted = [Noted(inbox_id, Arrived.of(event), reason, account, ("a_note",), event.progress,
                   tuple(range(len(entries))))]
    return store.decide(entries, inbox_id or 0, (), noted)


LEGACY_SCHEMA = """
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at REAL NOT NULL, verb TEXT NOT NULL,
    progress REAL NOT NULL, event TEXT NOT NULL, extra TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL DEFAULT 0, last_error TEXT);
CREATE TABLE matches (identity TEXT PRIMARY KEY, form TEXT NOT NULL, used_at REAL NOT NULL);
"""

# --- waits -------------------------------------------------------------------------------------


async def eventually(predicate: Callable[[], Any], timeout: float = 10, interval: float = 0.01) -> Any:
    """conftest.wait_for for a test on the event loop: polls ``predicate`` without blocking the loop
    until it is truthy (returned) or ``timeout`` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def still(predicate: Callable[[], Any], for_s: float, interval: float = 0.05) -> None:
    """Assert ``predicate`` stays truthy for ``for_s`` seconds: for "nothing more happens" after a wait
    on what should happen (fails as soon as it stops holding, instead of sleeping then looking once)."""
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        assert predicate(), "condition stopped holding"
        time.sleep(interval)
    assert predicate(), "condition stopped holding"



def settled(d: Daemon) -> bool:
    """Nothing is left for the daemon to send: every acknowledged webhook decided (the inbox) and every
    call it decided made (the outbox; a follow-up is added as the entry it follows is removed). What a
    test then sees at the fake Trakt is all it will see, short of a timer still running in memory."""
    health = d.health()
    return health["inbox"]["undecided"] == 0 and health["outbox"]["pending"] == 0


def sleep_past(started: float, window_s: float, margin_s: float = 0.3) -> None:
    """Sleep until ``window_s`` (plus a margin) has passed since ``started`` (time.monotonic()): for a
    test whose point is that a window expires, without sleeping again what the test already waited."""
    time.sleep(max(0.0, started + window_s + margin_s - time.monotonic()))


def parse_python(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse``, tried again when CPython 3.11 trips over its own AST depth counter: the
    counter is shared by the threads of a process (CPython gh-106905, fixed in 3.12), so a parse
    in another thread of the test worker at the same moment raises SystemError "AST constructor
    recursion depth mismatch" though the source is fine."""
    for _ in range(5):
        try:
            return ast.parse(source, filename)
        except SystemError:
            continue
    return ast.parse(source, filename)
