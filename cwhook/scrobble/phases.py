"""The phase of a viewing session, and the moves between phases the rules may make.

Every session is in one phase. The phase is what the rules decide by: whether this viewing was
scrobbled, whether a pause is held, whether Trakt was told it plays, whether it only ever started
at the credits. An action reaches a session's phase once the Jellyfin translation and the
duplicate rule (rule 7) have let it through (cwhook/scrobble/rules.py); ``TRANSITIONS`` then says,
for the phase and the action, every phase the session may be in afterwards, and the rules choose
one of them by the progress and the settings. ``advance`` is the only way to change a phase, and
it refuses a move the table does not list.

The phases:

IDLE      Trakt is not told this session plays, and nothing is held: a new session, or one whose
          pause or stop was sent or dropped, or whose start was not sent.
PLAYING   Trakt was told "start" (``Session.started``: when, and at what progress).
HELD      A pause waits out ``pause_debounce_seconds`` (``Session.held``, rule 3).
NEAR_END  The viewing only ever started at the credits (rule 4): its pauses and stops are dropped.
WATCHED   This viewing's watched stop is decided (rule 6): all but a new viewing is dropped.

A sent pause and a stop look alike to the rules (Trakt does not play); which one the server said
last only matters to Jellyfin's progress reports, and ``Session.last`` keeps it. Two things are
not moves: an evicted session sends its held pause and is gone, and an idle one is forgotten.

The actions: ``start``, ``pause``, ``stop``, ``scrobble`` (Plex's own watched mark), ``progress``
(a Jellyfin report that agrees with the session's last action: a position only), and the timers'
``elapse`` (the debounce window ended) and ``shutdown`` (held pauses sent before exiting).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, NamedTuple

from cwhook.kernel.event import Event


class Phase(Enum):
    IDLE = "idle"
    PLAYING = "playing"
    HELD = "held"
    NEAR_END = "near_end"
    WATCHED = "watched"


Action = Literal["start", "pause", "stop", "scrobble", "progress", "elapse", "shutdown"]

IDLE = Phase.IDLE
PLAYING = Phase.PLAYING
HELD = Phase.HELD
NEAR_END = Phase.NEAR_END
WATCHED = Phase.WATCHED

# (phase, action) -> every phase the session may be in after the rules ran. A pair that is not
# here cannot happen: the timers act only on held pauses.
TRANSITIONS: dict[tuple[Phase, Action], frozenset[Phase]] = {
    # a start is sent (PLAYING), suppressed at the credits (NEAR_END when it is the first sign
    # of life), or suppressed while an earlier position is known (stays)
    (IDLE, "start"): frozenset({PLAYING, NEAR_END, IDLE}),
    (IDLE, "pause"): frozenset({HELD, IDLE, WATCHED}),  # held; sent at once or dropped; promoted
    (IDLE, "stop"): frozenset({IDLE, WATCHED}),  # a pause (demoted) or dropped; a watched stop
    (IDLE, "scrobble"): frozenset({WATCHED}),
    (IDLE, "progress"): frozenset({IDLE}),
    # a repeat or a seek plays on; a new viewing from the top at the credits (suppress_start_at
    # below 5 %) starts near the end
    (PLAYING, "start"): frozenset({PLAYING, NEAR_END}),
    (PLAYING, "pause"): frozenset({HELD, IDLE, WATCHED}),
    (PLAYING, "stop"): frozenset({IDLE, WATCHED}),
    (PLAYING, "scrobble"): frozenset({WATCHED}),
    (PLAYING, "progress"): frozenset({PLAYING}),
    (HELD, "start"): frozenset({PLAYING}),  # a resume in the window cancels the pause and itself
    # the held pause takes the newer position (or is sent at once if the debounce was set to 0
    # meanwhile, and stays held); finished elsewhere; promoted to a watched stop
    (HELD, "pause"): frozenset({HELD, IDLE, WATCHED}),
    (HELD, "stop"): frozenset({IDLE, WATCHED}),  # the stop supersedes the held pause
    (HELD, "scrobble"): frozenset({WATCHED}),
    (HELD, "progress"): frozenset({HELD}),
    (HELD, "elapse"): frozenset({IDLE}),  # sent, or dropped when finished elsewhere meanwhile
    (HELD, "shutdown"): frozenset({IDLE}),
    (NEAR_END, "start"): frozenset({PLAYING, NEAR_END}),  # sent below the credits; or not
    (NEAR_END, "pause"): frozenset({NEAR_END}),
    (NEAR_END, "stop"): frozenset({NEAR_END}),
    (NEAR_END, "scrobble"): frozenset({WATCHED}),  # Plex's own mark still counts
    (NEAR_END, "progress"): frozenset({NEAR_END}),
    # dropped; or a new viewing from the top, sent or at the credits
    (WATCHED, "start"): frozenset({WATCHED, PLAYING, NEAR_END}),
    (WATCHED, "pause"): frozenset({WATCHED}),
    (WATCHED, "stop"): frozenset({WATCHED}),
    (WATCHED, "scrobble"): frozenset({WATCHED}),
    (WATCHED, "progress"): frozenset({WATCHED}),
}


class PhaseError(RuntimeError):
    """The rules tried a move the table does not list (a bug: the event is not decided)."""


class Last(NamedTuple):
    """The session's last action that got past the duplicate rule (rule 7)."""

    action: str
    progress: float | None
    at: float


@dataclass
class Held:
    """A pause held by the debounce (rule 3): the latest pause of the window, and its end."""

    event: Event
    progress: float
    deadline: float


@dataclass
class Session:
    """One viewing session (source + user + player + item): its phase and what the rules
    remember of it."""

    phase: Phase = IDLE
    progress: float | None = None  # the last known progress (rules 1 and 2)
    seen: float = 0.0  # the last event (an idle session is forgotten)
    fresh_at: float | None = None  # when this viewing started below NEW_VIEWING_BELOW
    started: tuple[float, float] | None = None  # (when, progress) Trakt was last told "start"
    held: Held | None = None  # in HELD only
    last: Last | None = None
    notes: list[str] = field(default_factory=list)  # the current event's notes

    @property
    def reported_paused(self) -> bool | None:
        """What the server last said: paused (a pause) or not (anything else); None before."""
        return None if self.last is None else self.last.action == "pause"


def advance(session: Session, action: Action, to: Phase) -> None:
    """Move ``session`` to the phase the rules chose for ``action``, if the table allows it."""
    allowed = TRANSITIONS.get((session.phase, action), frozenset())
    if to not in allowed:
        raise PhaseError(f"{action} cannot move a session from {session.phase.value} to {to.value}")
    session.phase = to


class Sessions:
    """One account's sessions, by key: bounded in number (the least recently seen evicted first)
    and an idle one forgotten, with an index of those that hold a pause."""

    def __init__(self, limit: int, idle_seconds: float) -> None:
        self.limit = limit
        self.idle_seconds = idle_seconds
        self._by_key: OrderedDict[str, Session] = OrderedDict()
        self._holding: set[str] = set()  # keys of sessions that may hold a pause (checked lazily)

    def __len__(self) -> int:
        return len(self._by_key)

    def may_hold(self) -> bool:
        """Some session may hold a pause (False: none does)."""
        return bool(self._holding)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_key)

    def values(self) -> Iterator[Session]:
        return iter(self._by_key.values())

    def open(self, key: str, now: float) -> tuple[Session, list[Held]]:
        """The session of ``key``, new or not, and the held pauses of the sessions it evicted."""
        evicted: list[Held] = []
        session = self._by_key.get(key)
        if session is None:
            session = self._by_key[key] = Session()
            while len(self._by_key) > self.limit:
                _, gone = self._by_key.popitem(last=False)
                if gone.held is not None:
                    evicted.append(gone.held)
        else:
            self._by_key.move_to_end(key)
        session.seen = now
        return session, evicted

    def hold(self, key: str) -> None:
        self._holding.add(key)

    def release(self, key: str) -> None:
        self._holding.discard(key)

    def held(self) -> list[tuple[str, Session, Held]]:
        """The sessions holding a pause, and their pauses (the index is pruned as it is read)."""
        out = []
        for key in list(self._holding):
            session = self._by_key.get(key)
            if session is None or session.held is None:
                self._holding.discard(key)
            else:
                out.append((key, session, session.held))
        return out

    def held_events(self) -> list[Event]:
        sessions = (self._by_key.get(key) for key in self._holding)
        return [s.held.event for s in sessions if s is not None and s.held is not None]

    def forget_idle(self, now: float) -> None:
        """Sessions without events for ``idle_seconds`` (a held pause keeps its session)."""
        for key in [k for k, s in self._by_key.items() if now - s.seen > self.idle_seconds]:
            if self._by_key[key].phase is not HELD:
                del self._by_key[key]
