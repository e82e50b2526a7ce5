"""The scrobble rules: a pure state machine from playback events to Trakt actions.

Theory of operation
-------------------
Media servers report playback loosely: Plex sends play/pause/resume/stop and its
own "scrobble" at 90 %; Jellyfin sends start/stop and a stream of progress
reports whose ``IsPaused`` flag is the only sign of a pause; Emby sends
start/pause/unpause/stop. Offsets can be stale or zero, clients flap between
pause and resume, autoplay starts the next item at the credits, and several
devices of one user may report the same item. Trakt, on its side, wants one
start when watching begins, a pause to save progress, and exactly one stop at
or above 80 % to mark an item watched.

``Rules`` sits between the two. It owns no clock and does no I/O: the worker
calls ``handle(event, now)`` for every event and ``tick(now)`` whenever
``next_deadline()`` passes, and gets back ``Decision`` objects. A decision
names the event, a reason code (logged on one line) and, when something must
go to Trakt, a ``Send`` (start, pause, stop or rate with a progress percent).

State is kept per viewing session (source + user + player + item, see
``Event.session_key``), bounded in number (least recently seen evicted first)
and dropped after ``idle_seconds`` without events. Besides sessions, small
registries remember which items were watched in the last hour, and the recent
ratings and marks; each is bounded by time and by count (``max_sessions`` items,
the oldest forgotten first), and a key longer than ``MAX_KEY`` is kept as its
digest, so memory stays bounded whatever the webhooks carry. One ``Rules``
serves one Trakt account (the worker keeps one per account, spec §8), so "the
same user" of rule 6 is the account: whichever of its media-server users
(Anna on Plex, anna on Jellyfin, the shared `Family`) played the item.

Rules, in the order they apply to one event (numbers are the spec's, §5):

* Rule 7, duplicates: the same action with the same progress on the same
  session within one second is dropped (``duplicate``). Webhooks get retried
  and Jellyfin reports progress often.
* Jellyfin progress: a progress report whose paused flag differs from the
  session's turns into a pause (flag set) or a resume/start (flag cleared);
  otherwise it only records the position (``progress_noted``).
* Rule 1, unknown progress: use the session's last known progress; a start
  with none at all starts at 0; a pause/stop with none is dropped
  (``no_progress``) because Trakt needs a percent.
* Rule 2, regress clamp: a pause/stop more than ``regress_tolerance_percent``
  below the session's last progress is raised to it (note ``regress_clamped``).
  A start below 5 % on a finished (watched) session begins a new viewing.
* Rule 6, one watched stop per viewing: once a session sent a watched stop,
  its later starts, pauses, stops and scrobbles are dropped
  (``already_watched``). For an hour after a watched stop, the same user and
  item (by any of its names: another server may name it by fewer or other ids,
  see cwhook.kernel.items and docs/rules.md) in another session is not scrobbled again, nor paused (a pause or a stop
  below the threshold: a stale report from a device the user left, which would
  put the watched item back under "continue watching"), all ``already_watched``
  with note ``watched_elsewhere``, unless that session began a new viewing
  below 5 % after the watched stop. A pause held by the debounce is checked
  again when its window ends.
* Repeated starts: a start for a session Trakt was last told is playing, at
  about the position it should have reached by now (within
  ``ALREADY_PLAYING_PERCENT``, from the runtime and the time since), is dropped
  (``already_playing``): Plex repeats play/resume, clients retry, and each
  would cost a POST. A start elsewhere (a seek) is sent.
* Rule 4, start near the end: a start at or above ``suppress_start_at`` is
  dropped (``suppressed_near_end``). When that was the session's first sign of
  life (resumed at the credits), its later pauses and stops are dropped the
  same way: nothing was watched in it. A Plex scrobble still counts.
* Rule 3, pause debounce: a pause is held for ``pause_debounce_seconds``
  (``debounced``). A resume in that window cancels both (``pause_cancelled``,
  nothing sent); a stop supersedes it (note ``pause_superseded``); otherwise
  ``tick`` sends it when the window ends (``sent``, note ``debounce_elapsed``).
* Rule 5, thresholds: a stop below ``stop_pause_threshold`` is sent as a pause
  (``demoted_to_pause``); at or above it, as a stop (``sent``, watched). A pause
  at or above ``force_stop_at`` is sent at once as a stop (``promoted_to_stop``).
  A Plex scrobble is a stop at max(progress, 90) whatever the threshold.
* Rule 8, Trakt's floor: progress is always within 0..100 and a stop below
  1 % is never sent (``below_minimum``; Trakt would answer 422).
* Ratings (``rate``) pass through, an identical rating for the same user and
  item within ``RATING_WINDOW`` seconds is sent once.
* Marks by hand (Jellyfin/Emby "mark watched/unwatched"): with
  ``sync_manual_marks`` a mark watched is added to the Trakt history
  (``history_add``; ``already_watched`` when the item was scrobbled for the user
  within the hour) and a mark unwatched removes the item's plays
  (``history_remove``); the same mark twice within ``RATING_WINDOW`` is sent
  once. Without the setting: ``manual_marks_disabled``.
* Plex's own streaming catalogue: with ``ignore_plex_vod`` its items are dropped
  (``vod_ignored``); otherwise they scrobble like any item.
* Multi-episode files (Jellyfin/Emby ``IndexNumberEnd``): the rules above run
  on the file; each resulting Send is then turned into Sends for its episodes,
  the episodes taken as equal parts of the file. A start or pause goes to the
  episode at that position, with the position within it; a watched stop sends
  every episode of the file as watched, once, each at its own position raised
  to the file's (so each counts as the file did).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import TypeVar

from cwhook.config.schema import ScrobbleConfig
from cwhook.kernel.event import Event, Ids
from cwhook.kernel.items import TraktAliases
from cwhook.kernel.vocab import SUPPRESSED, Reason, Verb

MARKS = ("mark_watched", "mark_unwatched")

NEW_VIEWING_BELOW = 5.0
WATCHED_WINDOW = 3600.0
DUPLICATE_WINDOW = 1.0
DUPLICATE_PROGRESS = 0.01
SCROBBLE_MIN = 90.0
STOP_FLOOR = 1.0
RATING_WINDOW = 600.0
ALREADY_PLAYING_PERCENT = 5.0  # a start this close to where playback should be is a repeat
SWEEP_INTERVAL = 30.0  # idle sessions and old marks are forgotten at most this often
MAX_NAMES = 8  # names per item (cwhook.kernel.items.names) the watched memory is sized for
_V = TypeVar("_V")
MAX_KEY = 200  # a longer session or item key (a title of a megabyte) is kept as its digest


@dataclass(frozen=True)
class Send:
    """One call to make to Trakt."""

    verb: Verb
    event: Event
    progress: float


@dataclass(frozen=True)
class Decision:
    event: Event
    reason: Reason
    send: Send | None = None
    progress: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def suppressed(self) -> bool:
        """The event is dropped: nothing goes to Trakt, and nothing is held."""
        return self.reason in SUPPRESSED


@dataclass
class _Pending:
    event: Event
    progress: float
    deadline: float


@dataclass
class _Session:
    last_progress: float | None = None
    last_seen: float = 0.0
    paused: bool | None = None
    watched: bool = False
    fresh_at: float | None = None  # when this viewing started below NEW_VIEWING_BELOW
    playing: tuple[float, float] | None = None  # (when, progress) Trakt was last told "start"
    near_end_only: bool = False  # the session only ever started at the credits
    pending: _Pending | None = None
    last_raw: tuple[str, float | None, float] | None = None
    notes: list[str] = field(default_factory=list)


class Rules:
    def __init__(
        self,
        settings: ScrobbleConfig,
        max_sessions: int = 2000,
        idle_seconds: float = 6 * 3600.0,
        aliases: TraktAliases | None = None,
    ) -> None:
        self.settings = settings
        # What Trakt matched items to, shared by every account's rules (items.SHARED in the daemon).
        self.aliases = aliases if aliases is not None else TraktAliases()
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._watched: dict[str, float] = {}
        self._ratings: dict[str, tuple[int | None, float]] = {}
        self._marks: dict[str, tuple[str, float]] = {}
        self._holding: set[str] = set()  # sessions that may hold a pause (checked lazily)
        self._next_sweep = 0.0

    # --- public interface ------------------------------------------------------

    def update_settings(self, settings: ScrobbleConfig) -> None:
        self.settings = settings

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def next_deadline(self) -> float | None:
        deadlines = []
        for key in list(self._holding):
            session = self._sessions.get(key)
            if session is None or session.pending is None:
                self._holding.discard(key)
            else:
                deadlines.append(session.pending.deadline)
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> list[Decision]:
        """Send held pauses whose window ended; forget idle sessions."""
        out: list[Decision] = []
        for key in list(self._holding):
            session = self._sessions.get(key)
            pending = session.pending if session is not None else None
            if session is None or pending is None:
                self._holding.discard(key)
            elif pending.deadline <= now:
                session.pending = None
                self._holding.discard(key)
                if self._watched_elsewhere(session, pending.event, now):
                    out.append(Decision(pending.event, "already_watched", progress=pending.progress,
                                        notes=("debounce_elapsed", "watched_elsewhere")))
                else:
                    out.append(self._send_pause(pending.event, pending.progress, "sent",
                                                ("debounce_elapsed",)))
        if now < self._next_sweep:
            return self._per_episode(out)
        self._next_sweep = now + SWEEP_INTERVAL
        for key in [k for k, s in self._sessions.items() if now - s.last_seen > self.idle_seconds]:
            if self._sessions[key].pending is None:
                del self._sessions[key]
        for wkey in [k for k, t in self._watched.items() if now - t > WATCHED_WINDOW]:
            del self._watched[wkey]
        for rkey in [k for k, (_, t) in self._ratings.items() if now - t > RATING_WINDOW]:
            del self._ratings[rkey]
        for mkey in [k for k, (_, t) in self._marks.items() if now - t > RATING_WINDOW]:
            del self._marks[mkey]
        return self._per_episode(out)

    def remember_watched(self, identity: str, at: float) -> None:
        """At start: an item watched before the restart (the store keeps the last hour, one
        row per name of the item)."""
        key = _compact(identity)
        if at > self._watched.get(key, float("-inf")):
            self._remember_watched((key,), at)

    def held_events(self) -> list[Event]:
        """The events whose decision is still open (pauses in their debounce window)."""
        sessions = (self._sessions.get(key) for key in self._holding)
        return [s.pending.event for s in sessions if s is not None and s.pending is not None]

    def flush_pending(self) -> list[Decision]:
        """Shutdown: send every held pause now rather than lose it."""
        out: list[Decision] = []
        for session in self._sessions.values():
            if session.pending is not None:
                p, session.pending = session.pending, None
                out.append(self._send_pause(p.event, p.progress, "sent", ("shutdown",)))
        return self._per_episode(out)

    def handle(self, event: Event, now: float) -> list[Decision]:
        if event.vod and self.settings.ignore_plex_vod:
            return [Decision(event, "vod_ignored", notes=("plex_vod",))]
        if event.action == "rate":
            return [self._rate(event, now)]
        if event.action in MARKS:
            return self._per_episode([self._mark(event, now)])
        out: list[Decision] = []
        session = self._session(_session_key(event), now, out)
        session.notes = []
        out.append(self._handle(session, event, now))
        return self._per_episode(out)

    # --- the rules ---------------------------------------------------------------

    def _handle(self, s: _Session, event: Event, now: float) -> Decision:
        action: str = event.action
        if action == "progress":
            paused = bool(event.paused)
            if s.paused is not None and paused == s.paused:
                if event.progress is not None and not s.watched:
                    s.last_progress = event.progress
                    if s.playing is not None and not paused:
                        s.playing = (now, event.progress)
                return Decision(event, "progress_noted", progress=event.progress)
            action = "pause" if paused else "start"

        # Rule 7: exact duplicates.
        raw = (action, event.progress, now)
        if s.last_raw is not None:
            last_action, last_progress, last_time = s.last_raw
            same_progress = (last_progress is None and event.progress is None) or (
                last_progress is not None and event.progress is not None
                and abs(last_progress - event.progress) <= DUPLICATE_PROGRESS
            )
            if last_action == action and same_progress and now - last_time <= DUPLICATE_WINDOW:
                return Decision(event, "duplicate", progress=event.progress)
        s.last_raw = raw

        # Rule 1: unknown progress.
        progress = event.progress
        if progress is None and s.last_progress is not None:
            progress = s.last_progress
            s.notes.append("progress_from_session")

        if action == "start":
            s.paused = False
            return self._start(s, event, 0.0 if progress is None else progress, now)

        s.paused = action == "pause"
        s.playing = None
        if action == "scrobble":
            # Plex's own watched mark: authoritative at max(progress, 90).
            progress = max(progress if progress is not None else 0.0, SCROBBLE_MIN)
        if progress is None:
            return Decision(event, "no_progress")
        progress = self._clamp_regress(s, progress)

        if s.watched:
            self._drop_pending(s)
            return Decision(event, "already_watched", progress=progress, notes=tuple(s.notes))
        if s.near_end_only and action != "scrobble":
            # Resumed at the credits and closed: nothing was watched in this session.
            return Decision(event, "suppressed_near_end", progress=progress,
                            notes=(*s.notes, "started_near_end"))
        not_watched = (action == "pause" and progress < self.settings.force_stop_at) or (
            action == "stop" and progress < self.settings.stop_pause_threshold)
        if not_watched and self._watched_elsewhere(s, event, now):
            # A stale pause from a device the user left: the item was finished elsewhere.
            self._drop_pending(s)
            return Decision(event, "already_watched", progress=progress,
                            notes=(*s.notes, "watched_elsewhere"))
        if action == "pause":
            return self._pause(s, event, progress, now)
        if action == "scrobble":
            self._drop_pending(s)
            return self._watched_stop(s, event, progress, now, "sent")
        return self._stop(s, event, progress, now)

    def _start(self, s: _Session, event: Event, progress: float, now: float) -> Decision:
        finished = s.watched or (
            s.last_progress is not None and s.last_progress >= self.settings.stop_pause_threshold
        )
        if progress < NEW_VIEWING_BELOW and finished:
            # Rule 2's exception: starting a finished item from the top is a new viewing.
            s.watched = False
            s.last_progress = None
            s.fresh_at = now  # lets this session's own stop pass the one-hour registry
            s.notes.append("new_viewing")
        if s.watched:
            return Decision(event, "already_watched", progress=progress, notes=tuple(s.notes))
        if s.pending is not None:
            # Rule 3: a resume inside the debounce window cancels the pause and itself.
            s.pending = None
            s.last_progress = progress
            if s.playing is None:
                s.playing = (now, progress)  # Trakt still has the start before the pause
            return Decision(event, "pause_cancelled", progress=progress, notes=tuple(s.notes))
        if s.last_progress is None and progress < NEW_VIEWING_BELOW:
            s.fresh_at = now
        if progress >= self.settings.suppress_start_at:
            if s.last_progress is None:
                s.near_end_only = True
            return Decision(event, "suppressed_near_end", progress=progress, notes=tuple(s.notes))
        if self._already_playing(s, event, progress, now):
            s.last_progress = progress
            return Decision(event, "already_playing", progress=progress, notes=tuple(s.notes))
        s.near_end_only = False
        s.last_progress = progress
        s.playing = (now, progress)
        return Decision(event, "sent", Send("start", event, _bound(progress)), progress,
                        tuple(s.notes))

    def _already_playing(self, s: _Session, event: Event, progress: float, now: float) -> bool:
        """Trakt was told this session plays, and this start is where it should be by now."""
        if s.playing is None:
            return False
        since, at = s.playing
        expected = at
        if event.duration_s:
            expected += max(0.0, now - since) / event.duration_s * 100.0
        return expected < 100.0 and abs(progress - expected) <= ALREADY_PLAYING_PERCENT

    def _pause(self, s: _Session, event: Event, progress: float, now: float) -> Decision:
        if progress >= self.settings.force_stop_at:
            self._drop_pending(s)
            return self._watched_stop(s, event, progress, now, "promoted_to_stop")
        s.last_progress = progress
        if self.settings.pause_debounce_seconds <= 0:
            return self._send_pause(event, progress, "sent", tuple(s.notes))
        if s.pending is not None:
            s.pending.event, s.pending.progress = event, progress
        else:
            s.pending = _Pending(event, progress, now + self.settings.pause_debounce_seconds)
            self._holding.add(_session_key(event))
        return Decision(event, "debounced", progress=progress, notes=tuple(s.notes))

    def _stop(self, s: _Session, event: Event, progress: float, now: float) -> Decision:
        self._drop_pending(s)
        if progress < STOP_FLOOR:
            return Decision(event, "below_minimum", progress=progress, notes=tuple(s.notes))
        if progress < self.settings.stop_pause_threshold:
            s.last_progress = progress
            return self._send_pause(event, progress, "demoted_to_pause", tuple(s.notes))
        return self._watched_stop(s, event, progress, now, "sent")

    def _watched_stop(
        self, s: _Session, event: Event, progress: float, now: float, reason: Reason
    ) -> Decision:
        s.last_progress = progress
        if self._watched_elsewhere(s, event, now):
            s.watched = True
            return Decision(event, "already_watched", progress=progress,
                            notes=(*s.notes, "watched_elsewhere"))
        s.watched = True
        self._remember_watched(self._names(event), now)
        progress = max(STOP_FLOOR, _bound(progress))
        return Decision(event, reason, Send("stop", event, progress), progress, tuple(s.notes))

    def _watched_elsewhere(self, s: _Session, event: Event, now: float) -> bool:
        """The user's item was scrobbled within the hour, and this session has not begun
        a new viewing (below 5 %) since."""
        seen = self._seen(event)
        if seen is None or now - seen > WATCHED_WINDOW:
            return False
        return s.fresh_at is None or s.fresh_at <= seen

    def _mark(self, event: Event, now: float) -> Decision:
        """An item marked watched or unwatched by hand in Jellyfin or Emby."""
        if not self.settings.sync_manual_marks:
            return Decision(event, "manual_marks_disabled", notes=("scrobble.sync_manual_marks",))
        keys = self._names(event)
        last = _newest(self._marks, keys)
        if last is not None and last[0] == event.action and now - last[1] <= RATING_WINDOW:
            return Decision(event, "duplicate")
        for key in keys:
            _put(self._marks, key, (event.action, now), self.max_sessions * MAX_NAMES)
        if event.action == "mark_unwatched":
            for key in keys:
                self._watched.pop(key, None)
            return Decision(event, "sent", Send("history_remove", event, 0.0), 0.0)
        seen = self._seen(event)
        if seen is not None and now - seen <= WATCHED_WINDOW:
            return Decision(event, "already_watched", progress=100.0, notes=("watched_recently",))
        self._remember_watched(keys, now)
        return Decision(event, "sent", Send("history_add", event, 100.0), 100.0)

    def _remember_watched(self, keys: tuple[str, ...], now: float) -> None:
        """Under every name of the item; bounded like sessions (a few names per item): the
        oldest entries go first."""
        for key in keys:
            _put(self._watched, key, now, self.max_sessions * MAX_NAMES)

    def _names(self, event: Event) -> tuple[str, ...]:
        return _item(event, self.aliases)

    def _seen(self, event: Event) -> float | None:
        """When the item, by any of its names, was last watched (for this account)."""
        times = [t for key in self._names(event) if (t := self._watched.get(key)) is not None]
        return max(times) if times else None

    def _rate(self, event: Event, now: float) -> Decision:
        keys = self._names(event)
        last = _newest(self._ratings, keys)
        if last is not None and last[0] == event.rating and now - last[1] <= RATING_WINDOW:
            return Decision(event, "duplicate")
        for key in keys:
            _put(self._ratings, key, (event.rating, now), self.max_sessions * MAX_NAMES)
        return Decision(event, "sent", Send("rate", event, 0.0))

    # --- multi-episode files ------------------------------------------------------

    def _per_episode(self, decisions: list[Decision]) -> list[Decision]:
        """Each Send for a multi-episode file becomes Sends for its episodes."""
        if not any(d.send is not None and d.send.event.number_end is not None for d in decisions):
            return decisions
        out: list[Decision] = []
        for d in decisions:
            out += self._split(d)
        return out

    def _split(self, d: Decision) -> list[Decision]:
        send = d.send
        if send is None or send.verb == "rate":
            return [d]
        ev = send.event
        first, last = ev.number, ev.number_end
        if ev.kind != "episode" or first is None or last is None or last <= first:
            return [d]
        if not ev.show_title and not ev.show_ids:
            return [d]  # no way to name the other episodes: the file's ids it is
        count = last - first + 1
        duration = ev.duration_s / count if ev.duration_s else None

        def episode(i: int) -> Event:
            # The file's ids name one of its episodes at best: each goes by its show.
            return replace(ev, number=first + i, number_end=None, ids=Ids(), duration_s=duration)

        notes = (*d.notes, f"episodes_{first}-{last}")
        current = min(count - 1, int(send.progress * count // 100))
        local = _bound(send.progress * count - 100.0 * current)
        if send.verb in ("start", "pause"):
            return [replace(d, send=Send(send.verb, episode(current), local), progress=local,
                            notes=notes)]
        out: list[Decision] = []
        for i in range(count):
            progress = send.progress
            if send.verb == "stop":
                own = 100.0 if i < current else local if i == current else 0.0
                progress = max(own, send.progress)
            out.append(replace(d, send=Send(send.verb, episode(i), progress), progress=progress,
                               notes=notes))
        return out

    # --- helpers -------------------------------------------------------------------

    def _clamp_regress(self, s: _Session, progress: float) -> float:
        last = s.last_progress
        if last is not None and progress < last - self.settings.regress_tolerance_percent:
            s.notes.append("regress_clamped")
            return last
        return _bound(progress)

    def _drop_pending(self, s: _Session) -> None:
        if s.pending is not None:
            s.pending = None
            s.notes.append("pause_superseded")

    def _send_pause(
        self, event: Event, progress: float, reason: Reason, notes: tuple[str, ...]
    ) -> Decision:
        progress = _bound(progress)
        return Decision(event, reason, Send("pause", event, progress), progress, notes)

    def _session(self, key: str, now: float, out: list[Decision]) -> _Session:
        session = self._sessions.get(key)
        if session is None:
            session = _Session()
            self._sessions[key] = session
            while len(self._sessions) > self.max_sessions:
                _, evicted = self._sessions.popitem(last=False)
                if evicted.pending is not None:
                    p = evicted.pending
                    out.append(self._send_pause(p.event, p.progress, "sent", ("evicted",)))
        else:
            self._sessions.move_to_end(key)
        session.last_seen = now
        return session


def _item(event: Event, aliases: TraktAliases) -> tuple[str, ...]:
    """The keys of the one-hour registries (watched, ratings, marks): every name of the item
    (cwhook.kernel.items), so that two servers naming one item differently meet. One ``Rules`` serves
    one Trakt account (spec §8), so an item is the same whichever of the account's media-server
    users played it: Anna on Plex and on Jellyfin, or `Family`, is one person to Trakt."""
    return tuple(_compact(name) for name in aliases.names(event))


def _session_key(event: Event) -> str:
    return _compact(event.session_key)


def _compact(key: str) -> str:
    """A key of bounded size: a long one becomes its digest (the same key, the same digest)."""
    if len(key) <= MAX_KEY:
        return key
    return "#" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _put(registry: dict[str, _V], key: str, value: _V, limit: int) -> None:
    """Remember ``key`` as the newest entry; beyond ``limit`` entries the oldest go first."""
    registry.pop(key, None)
    registry[key] = value
    while len(registry) > limit:
        del registry[next(iter(registry))]


def _newest(memory: dict[str, tuple[_V, float]], keys: tuple[str, ...]) -> tuple[_V, float] | None:
    """The most recent entry of ``memory`` under any of ``keys``."""
    found = [entry for key in keys if (entry := memory.get(key)) is not None]
    return max(found, key=lambda entry: entry[1]) if found else None


def _bound(progress: float) -> float:
    return max(0.0, min(100.0, progress))

