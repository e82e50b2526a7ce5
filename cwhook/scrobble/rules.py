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
``next_deadline()`` passes, and gets back ``Decision`` objects
(cwhook/scrobble/decision.py). A decision names the event, a reason code (logged
on one line) and, when something must go to Trakt, a ``Send`` (start, pause,
stop or rate with a progress percent).

State is kept per viewing session (source + user + player + item), bounded in
number and dropped when idle. Each session is in one phase (idle, playing, held,
near_end, watched): cwhook/scrobble/phases.py has the phases, the sessions, and
the table of the moves each action may make. The account's memory
(cwhook/scrobble/memory.py) keeps the items watched in the last hour, and the
recent ratings and marks. One ``Rules`` serves one Trakt account
(docs/configuration.md, "Households: several Trakt accounts"), so "the same
user" of rule 6 is the account: whichever of its media-server users (Anna on
Plex, anna on Jellyfin, the shared `Family`) played the item.

Rules, in the order they apply to one event; the numbers are those of
docs/rules.md, "How cwhook decides what to send", and the code below follows
this order.

Before any session:

* Plex's own streaming catalogue: with ``ignore_plex_vod`` its items are dropped
  (``vod_ignored``); otherwise they scrobble like any item.
* Ratings pass through, the same one for the item within ``RATING_WINDOW`` once
  (cwhook/scrobble/memory.py).
* Marks by hand (Jellyfin/Emby): ``manual_marks_disabled`` without
  ``sync_manual_marks``; with it, sent to the Trakt history (memory.py).

In the session, before its phase is consulted:

* Jellyfin progress: a report whose paused flag agrees with the session's last
  action (paused after a pause, playing after anything else) only records the
  position (``progress_noted``); one that differs, or the first of a session,
  becomes a pause (flag set) or a start (flag cleared).
* Rule 7, duplicates: the same action with the same progress on the same
  session within one second is dropped (``duplicate``). Webhooks get retried.
* Rule 1, unknown progress: the session's last known progress is used.

A start:

* Rule 2's exception: below 5 % on a finished session (watched, or last at or
  above ``stop_pause_threshold``), it begins a new viewing (note ``new_viewing``).
* Rule 6, one watched stop per viewing: on a watched viewing it is dropped
  (``already_watched``).
* Rule 3: while a pause is held, it cancels both (``pause_cancelled``, nothing
  sent: Trakt still has the start before the pause).
* Rule 4: at or above ``suppress_start_at`` it is dropped
  (``suppressed_near_end``); when that was the session's first sign of life
  (resumed at the credits), the session is near_end.
* Repeated starts: where Trakt was last told the session plays, at about the
  position it should have reached by now (within ``ALREADY_PLAYING_PERCENT``,
  from the runtime and the time since), it is dropped (``already_playing``):
  Plex repeats play/resume, clients retry, and each would cost a POST. A start
  elsewhere (a seek) is sent.
* Otherwise it is sent (at 0 when no progress is known), within 0..100 (rule 8).

A pause, a stop or a Plex scrobble:

* Rule 5: a Plex scrobble is a stop at max(progress, 90).
* Rule 1: with no progress known it is dropped (``no_progress``): Trakt needs
  a percent.
* Rule 2, regress clamp: more than ``regress_tolerance_percent`` below the
  session's last progress, it is raised to it (note ``regress_clamped``).
* Rule 6: on a watched viewing it is dropped (``already_watched``).
* Rule 4: on a near_end session, a pause or stop is dropped the same way (note
  ``started_near_end``): nothing was watched in it. A scrobble still counts.
* Rule 6, elsewhere: for an hour after a watched stop of the same user and item
  (by any of its names, cwhook.kernel.items) in another session, a pause or a
  stop below the threshold is dropped (``already_watched``, note
  ``watched_elsewhere``): a stale report from a device the user left would put
  the item back under "continue watching". Not when this session began a new
  viewing below 5 % after the watched stop.
* A pause, rules 5 and 3: at or above ``force_stop_at`` it is a watched stop at
  once (``promoted_to_stop``); otherwise held for ``pause_debounce_seconds``
  (``debounced``). A stop or scrobble supersedes a held pause (note
  ``pause_superseded``).
* A stop, rules 8 and 5: below 1 % it is never sent (``below_minimum``; Trakt
  would answer 422); below ``stop_pause_threshold`` it is sent as a pause
  (``demoted_to_pause``); otherwise it is a watched stop.
* A watched stop, rule 6: when the user's item was scrobbled within the hour
  and this session began no new viewing since, ``already_watched`` (note
  ``watched_elsewhere``); otherwise sent (at least 1 %), and the item is
  remembered for the hour. Either way the viewing is watched.

Timers, rule 3: a held pause is sent when its window ends (``sent``, note
``debounce_elapsed``), or dropped if its item was finished elsewhere meanwhile
(``already_watched``, note ``watched_elsewhere``); at shutdown (note
``shutdown``) and when its session is evicted (note ``evicted``) it is sent at
once.

Last, multi-episode files (Jellyfin/Emby ``IndexNumberEnd``): the rules run on
the file, and each Send becomes Sends for its episodes (cwhook/scrobble/episodes.py).
"""

from __future__ import annotations

from cwhook.config.schema import ScrobbleConfig
from cwhook.kernel.event import Event
from cwhook.kernel.items import TraktAliases
from cwhook.kernel.vocab import Reason
from cwhook.scrobble.decision import Decision, Send, bound, send_pause
from cwhook.scrobble.episodes import per_episode
from cwhook.scrobble.memory import MAX_KEY, MAX_NAMES, WATCHED_WINDOW, Memory, compact, item_keys, session_key
from cwhook.scrobble.phases import Action, Held, Last, Phase, Session, Sessions, advance

__all__ = ["MAX_KEY", "MAX_NAMES", "WATCHED_WINDOW", "Decision", "Rules", "Send"]

MARKS = ("mark_watched", "mark_unwatched")
PLAYBACK: dict[str, Action] = {"start": "start", "pause": "pause", "stop": "stop", "scrobble": "scrobble"}
NEW_VIEWING_BELOW = 5.0
DUPLICATE_WINDOW = 1.0
DUPLICATE_PROGRESS = 0.01
SCROBBLE_MIN = 90.0
STOP_FLOOR = 1.0
ALREADY_PLAYING_PERCENT = 5.0  # a start this close to where playback should be is a repeat
SWEEP_INTERVAL = 30.0  # idle sessions and old marks are forgotten at most this often

# A rule's answer: the decision, and the phase it leaves the session in (phases.TRANSITIONS).
Turn = tuple[Decision, Phase]


class Rules:
    def __init__(self, settings: ScrobbleConfig, max_sessions: int = 2000, idle_seconds: float = 6 * 3600.0,
                 aliases: TraktAliases | None = None) -> None:
        self.settings = settings
        # What Trakt matched items to, shared by every account's rules (items.SHARED in the daemon).
        self.aliases = aliases if aliases is not None else TraktAliases()
        self._sessions = Sessions(max_sessions, idle_seconds)
        self.memory = Memory(max_sessions * MAX_NAMES)  # a few names per item
        # The same dicts, by the names the tests count them by (Memory never replaces them).
        self._watched, self._ratings, self._marks = self.memory.watched, self.memory.ratings, self.memory.marks
        self._next_sweep = 0.0

    # --- public interface ------------------------------------------------------

    def update_settings(self, settings: ScrobbleConfig) -> None:
        self.settings = settings

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def handle(self, event: Event, now: float) -> list[Decision]:
        if event.vod and self.settings.ignore_plex_vod:
            return [Decision(event, "vod_ignored", notes=("plex_vod",))]
        if event.action == "rate":
            return [self.memory.rate(event, self._names(event), now)]
        if event.action in MARKS:
            if not self.settings.sync_manual_marks:
                return [Decision(event, "manual_marks_disabled", notes=("scrobble.sync_manual_marks",))]
            return per_episode([self.memory.mark(event, self._names(event), now)])
        session, evicted = self._sessions.open(session_key(event), now)
        # Rule 3: an evicted session's held pause is sent at once.
        out = [send_pause(held.event, held.progress, "sent", ("evicted",)) for held in evicted]
        session.notes = []
        out.append(self._playback(session, event, now))
        return per_episode(out)

    def next_deadline(self) -> float | None:
        return min((held.deadline for _, _, held in self._sessions.held()), default=None)

    def due(self, now: float) -> bool:
        """``tick(now)`` may have something to do (False: it would return [] and change nothing)."""
        return now >= self._next_sweep or self._sessions.may_hold()

    def tick(self, now: float) -> list[Decision]:
        """Send held pauses whose window ended; forget idle sessions."""
        out: list[Decision] = []
        for key, s, held in self._sessions.held():
            if held.deadline <= now:
                self._sessions.release(key)
                out.append(self._elapse(s, held, now))
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            self._sessions.forget_idle(now)
            self.memory.sweep(now)
        return per_episode(out)

    def held_events(self) -> list[Event]:
        """The events whose decision is still open (pauses in their debounce window)."""
        return self._sessions.held_events()

    def flush_pending(self) -> list[Decision]:
        """Shutdown: send every held pause now rather than lose it."""
        out: list[Decision] = []
        for s in self._sessions.values():
            if s.held is not None:
                out.append(send_pause(s.held.event, s.held.progress, "sent", ("shutdown",)))
                s.held = None
                advance(s, "shutdown", Phase.IDLE)
        return per_episode(out)

    def remember_watched(self, identity: str, at: float) -> None:
        """At start: an item watched before the restart (the store keeps the last hour, one
        row per name of the item)."""
        self.memory.remember_at(compact(identity), at)

    def _names(self, event: Event) -> tuple[str, ...]:
        return item_keys(event, self.aliases)

    # --- the rules, in the order of the theory of operation -------------------------

    def _playback(self, s: Session, event: Event, now: float) -> Decision:
        """One playback event: the rules before the phase, then the phase's move."""
        action = _reported(s, event)
        if action == "progress":
            decision, to = self._note(s, event, now)
        elif self._duplicate(s, action, event, now):
            return Decision(event, "duplicate", progress=event.progress)
        else:
            s.last = Last(action, event.progress, now)
            progress = event.progress
            if progress is None and s.progress is not None:  # rule 1
                progress = s.progress
                s.notes.append("progress_from_session")
            if action == "start":
                decision, to = self._start(s, event, 0.0 if progress is None else progress, now)
            else:
                decision, to = self._pause_or_stop(s, action, event, progress, now)
        advance(s, action, to)
        return decision

    def _note(self, s: Session, event: Event, now: float) -> Turn:
        """A Jellyfin progress report that agrees with the session: the position only."""
        if event.progress is not None and s.phase is not Phase.WATCHED:
            s.progress = event.progress
            if s.started is not None and not event.paused:
                s.started = (now, event.progress)
        return Decision(event, "progress_noted", progress=event.progress), s.phase

    def _duplicate(self, s: Session, action: Action, event: Event, now: float) -> bool:
        """Rule 7: the session's last action again, at the same progress, within a second."""
        last = s.last
        if last is None or last.action != action or not now - last.at <= DUPLICATE_WINDOW:
            return False
        if last.progress is None or event.progress is None:
            return last.progress is None and event.progress is None
        return abs(last.progress - event.progress) <= DUPLICATE_PROGRESS

    def _start(self, s: Session, event: Event, progress: float, now: float) -> Turn:
        phase = s.phase
        threshold = self.settings.stop_pause_threshold
        finished = phase is Phase.WATCHED or (s.progress is not None and s.progress >= threshold)
        if progress < NEW_VIEWING_BELOW and finished:
            # Rule 2's exception: starting a finished item from the top is a new viewing.
            phase = Phase.IDLE if phase is Phase.WATCHED else phase
            s.progress = None
            s.fresh_at = now  # lets this session's own stop pass the one-hour registry
            s.notes.append("new_viewing")
        if phase is Phase.WATCHED:
            return Decision(event, "already_watched", progress=progress, notes=tuple(s.notes)), Phase.WATCHED
        if phase is Phase.HELD:
            # Rule 3: a resume inside the debounce window cancels the pause and itself.
            s.held = None
            s.progress = progress
            if s.started is None:
                s.started = (now, progress)  # Trakt still has the start before the pause
            return Decision(event, "pause_cancelled", progress=progress, notes=tuple(s.notes)), Phase.PLAYING
        if s.progress is None and progress < NEW_VIEWING_BELOW:
            s.fresh_at = now
        if progress >= self.settings.suppress_start_at:
            near_end = Phase.NEAR_END if s.progress is None else phase  # the first sign of life: at the credits
            return Decision(event, "suppressed_near_end", progress=progress, notes=tuple(s.notes)), near_end
        if self._already_playing(s, event, progress, now):
            s.progress = progress
            return Decision(event, "already_playing", progress=progress, notes=tuple(s.notes)), phase
        s.progress = progress
        s.started = (now, progress)
        return Decision(event, "sent", Send("start", event, bound(progress)), progress, tuple(s.notes)), Phase.PLAYING

    def _already_playing(self, s: Session, event: Event, progress: float, now: float) -> bool:
        """Trakt was told this session plays, and this start is where it should be by now."""
        if s.started is None:
            return False
        since, at = s.started
        expected = at
        if event.duration_s:
            expected += max(0.0, now - since) / event.duration_s * 100.0
        return expected < 100.0 and abs(progress - expected) <= ALREADY_PLAYING_PERCENT

    def _pause_or_stop(self, s: Session, action: Action, event: Event, progress: float | None, now: float) -> Turn:
        """A pause, a stop or a Plex scrobble: Trakt no longer plays this session."""
        s.started = None
        if action == "scrobble":
            # Rule 5: Plex's own watched mark is authoritative at max(progress, 90).
            progress = max(progress if progress is not None else 0.0, SCROBBLE_MIN)
        if progress is None:
            return Decision(event, "no_progress"), Phase.IDLE if s.phase is Phase.PLAYING else s.phase
        progress = self._clamp_regress(s, progress)
        if s.phase is Phase.WATCHED:
            return Decision(event, "already_watched", progress=progress, notes=tuple(s.notes)), Phase.WATCHED
        if s.phase is Phase.NEAR_END and action != "scrobble":
            # Resumed at the credits and closed: nothing was watched in this session.
            return Decision(event, "suppressed_near_end", progress=progress,
                            notes=(*s.notes, "started_near_end")), Phase.NEAR_END
        not_watched = (action == "pause" and progress < self.settings.force_stop_at) or (
            action == "stop" and progress < self.settings.stop_pause_threshold)
        if not_watched and self._watched_elsewhere(s, event, now):
            # A stale pause from a device the user left: the item was finished elsewhere.
            self._drop_held(s)
            notes = (*s.notes, "watched_elsewhere")
            return Decision(event, "already_watched", progress=progress, notes=notes), Phase.IDLE
        if action == "pause":
            return self._pause(s, event, progress, now)
        if action == "scrobble":
            self._drop_held(s)
            return self._watched_stop(s, event, progress, now, "sent")
        return self._stop(s, event, progress, now)

    def _clamp_regress(self, s: Session, progress: float) -> float:
        """Rule 2: a stale offset well below the last progress is raised to it."""
        last = s.progress
        if last is not None and progress < last - self.settings.regress_tolerance_percent:
            s.notes.append("regress_clamped")
            return last
        return bound(progress)

    def _watched_elsewhere(self, s: Session, event: Event, now: float) -> bool:
        """Rule 6: the user's item was scrobbled within the hour, and this session has not
        begun a new viewing (below 5 %) since."""
        seen = self.memory.seen(self._names(event))
        if seen is None or now - seen > WATCHED_WINDOW:
            return False
        return s.fresh_at is None or s.fresh_at <= seen

    def _pause(self, s: Session, event: Event, progress: float, now: float) -> Turn:
        if progress >= self.settings.force_stop_at:  # rule 5
            self._drop_held(s)
            return self._watched_stop(s, event, progress, now, "promoted_to_stop")
        s.progress = progress
        if self.settings.pause_debounce_seconds <= 0:
            # No debounce (a pause held before the setting changed stays held).
            stays = Phase.HELD if s.phase is Phase.HELD else Phase.IDLE
            return send_pause(event, progress, "sent", tuple(s.notes)), stays
        if s.held is not None:  # rule 3: the window keeps its end, the pause its newest position
            s.held.event, s.held.progress = event, progress
        else:
            s.held = Held(event, progress, now + self.settings.pause_debounce_seconds)
            self._sessions.hold(session_key(event))
        return Decision(event, "debounced", progress=progress, notes=tuple(s.notes)), Phase.HELD

    def _drop_held(self, s: Session) -> None:
        if s.held is not None:
            s.held = None
            s.notes.append("pause_superseded")

    def _stop(self, s: Session, event: Event, progress: float, now: float) -> Turn:
        self._drop_held(s)
        if progress < STOP_FLOOR:  # rule 8
            return Decision(event, "below_minimum", progress=progress, notes=tuple(s.notes)), Phase.IDLE
        if progress < self.settings.stop_pause_threshold:  # rule 5
            s.progress = progress
            return send_pause(event, progress, "demoted_to_pause", tuple(s.notes)), Phase.IDLE
        return self._watched_stop(s, event, progress, now, "sent")

    def _watched_stop(self, s: Session, event: Event, progress: float, now: float, reason: Reason) -> Turn:
        """Rule 6: one watched stop per viewing, and one per user and item within the hour."""
        s.progress = progress
        if self._watched_elsewhere(s, event, now):
            return Decision(event, "already_watched", progress=progress,
                            notes=(*s.notes, "watched_elsewhere")), Phase.WATCHED
        self.memory.remember(self._names(event), now)
        progress = max(STOP_FLOOR, bound(progress))
        return Decision(event, reason, Send("stop", event, progress), progress, tuple(s.notes)), Phase.WATCHED

    def _elapse(self, s: Session, held: Held, now: float) -> Decision:
        """Rule 3: the held pause's window ended; sent, unless the item was finished elsewhere."""
        s.held = None
        advance(s, "elapse", Phase.IDLE)
        if self._watched_elsewhere(s, held.event, now):
            return Decision(held.event, "already_watched", progress=held.progress,
                            notes=("debounce_elapsed", "watched_elsewhere"))
        return send_pause(held.event, held.progress, "sent", ("debounce_elapsed",))


def _reported(s: Session, event: Event) -> Action:
    """What a Jellyfin progress report means: a pause or a start when its paused flag differs
    from the session's last action (or the session has none), else the position only."""
    action = PLAYBACK.get(event.action)
    if action is not None:
        return action
    paused = bool(event.paused)
    if paused == s.reported_paused:
        return "progress"
    return "pause" if paused else "start"

