"""The scrobble rules: one scenario per rule, and hypothesis-driven invariants."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from random import Random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cwhook.config.schema import ScrobbleConfig
from cwhook.kernel.event import Event, Ids
from cwhook.scrobble import phases
from cwhook.scrobble import rules as rules_module
from cwhook.scrobble.phases import TRANSITIONS, Phase, PhaseError, Session
from cwhook.scrobble.rules import Decision, Rules
from tests.builders import movie

MOVIE = movie(action="start", user_name="alice", user_id="1", player_id="tv", item_key="42", duration_s=7200.0)
CFG = ScrobbleConfig()


def ev(action: str, progress: float | None, **kw: Any) -> Event:
    return replace(MOVIE, action=action, progress=progress, **kw)  # type: ignore[arg-type]


class Run:
    def __init__(self, cfg: ScrobbleConfig = CFG) -> None:
        self.rules = Rules(cfg)
        self.log: list[Decision] = []

    def __call__(self, action: str, progress: float | None, at: float, **kw: Any) -> list[Decision]:
        out = self.rules.tick(at) + self.rules.handle(ev(action, progress, **kw), at)
        self.log += out
        return out

    def tick(self, at: float) -> list[Decision]:
        out = self.rules.tick(at)
        self.log += out
        return out

    def sends(self) -> list[tuple[str, float]]:
        return [(d.send.verb, d.send.progress) for d in self.log if d.send]

    def reasons(self) -> list[str]:
        return [d.reason for d in self.log]


def test_plain_viewing() -> None:
    r = Run()
    r("start", 0.5, 0)
    r("pause", 30, 100)
    r.tick(106)
    r("start", 30, 200)
    r("stop", 97, 300)
    assert r.sends() == [("start", 0.5), ("pause", 30), ("start", 30), ("stop", 97)]
    assert r.reasons() == ["sent", "debounced", "sent", "sent", "sent"]


def test_pause_debounce_resume_cancels_both() -> None:
    r = Run()
    r("start", 10, 0)
    r("pause", 20, 10)
    r("start", 20, 12)  # within 5 s
    r.tick(100)
    assert r.sends() == [("start", 10)]
    assert r.reasons() == ["sent", "debounced", "pause_cancelled"]


def test_pause_sent_when_window_ends_and_next_deadline() -> None:
    r = Run()
    r("start", 10, 0)
    r("pause", 20, 10)
    assert r.rules.next_deadline() == 15
    assert r.tick(14.9) == []
    out = r.tick(15)
    assert [(d.reason, d.send.verb if d.send else None, d.notes) for d in out] == [
        ("sent", "pause", ("debounce_elapsed",))]
    assert r.rules.next_deadline() is None


def test_flapping_pauses_are_absorbed_and_last_progress_wins() -> None:
    r = Run()
    r("start", 10, 0)
    for i in range(10):
        r("pause", 20 + i, 10 + i * 0.4)
        r("start", 20 + i, 10.2 + i * 0.4)
    r("pause", 40, 20)
    r("pause", 41, 22)
    r.tick(30)
    assert r.sends() == [("start", 10), ("pause", 41)]


def test_stop_supersedes_held_pause() -> None:
    r = Run()
    r("start", 10, 0)
    r("pause", 50, 10)
    out = r("stop", 50, 11)
    assert out[-1].reason == "demoted_to_pause" and "pause_superseded" in out[-1].notes
    r.tick(100)
    assert r.sends() == [("start", 10), ("pause", 50)]


def test_start_near_end_suppressed() -> None:
    r = Run()
    out = r("start", 99.2, 0)
    assert out[-1].reason == "suppressed_near_end" and out[-1].send is None
    r2 = Run(replace(CFG, suppress_start_at=90))
    assert r2("start", 90, 0)[-1].reason == "suppressed_near_end"
    assert r2("start", 89.9, 5, player_id="other")[-1].reason == "sent"


def test_resumed_at_the_credits_then_closed_sends_nothing() -> None:
    r = Run()
    r("start", 99.5, 0)
    out = r("stop", 100, 30)
    assert out[-1].reason == "suppressed_near_end" and "started_near_end" in out[-1].notes
    assert r.sends() == []
    # seeking back lifts it
    r("start", 40, 60)
    r("stop", 97, 120)
    assert r.sends() == [("start", 40), ("stop", 97)]


def test_stop_below_threshold_demoted_to_pause() -> None:
    r = Run()
    r("start", 1, 0)
    out = r("stop", 79.9, 100)
    assert out[-1].reason == "demoted_to_pause" and out[-1].send is not None
    assert out[-1].send.verb == "pause"
    assert r("stop", 80, 200)[-1].reason == "sent"
    assert r.sends()[-1] == ("stop", 80)


def test_pause_at_credits_promoted_to_stop_immediately() -> None:
    r = Run()
    r("start", 50, 0)
    out = r("pause", 96, 100)
    assert out[-1].reason == "promoted_to_stop" and r.sends()[-1] == ("stop", 96)
    assert r.rules.next_deadline() is None


def test_plex_scrobble_is_stop_at_least_90() -> None:
    r = Run()
    r("start", 10, 0)
    out = r("scrobble", None, 100)
    # unknown progress: the session's last known (10) is below 90, so 90
    assert out[-1].reason == "sent" and r.sends()[-1] == ("stop", 90)
    r2 = Run()
    r2("scrobble", 93.5, 0)
    assert r2.sends() == [("stop", 93.5)]


def test_one_watched_stop_per_viewing() -> None:
    r = Run()
    r("start", 10, 0)
    r("scrobble", 90, 100)  # Plex's mark at 90 %
    r("stop", 98, 200)  # then the real stop
    r("pause", 99, 210)
    r("scrobble", 99, 220)
    assert [s for s in r.sends() if s[0] == "stop"] == [("stop", 90)]
    assert r.reasons()[-3:] == ["already_watched", "already_watched", "already_watched"]


def test_same_item_same_user_other_player_within_an_hour() -> None:
    r = Run()
    r("stop", 95, 0)
    # the same user, another device, reports the same item finished
    assert r("stop", 96, 60, player_id="phone")[-1].reason == "already_watched"
    # ...unless that device started a new viewing from the beginning
    r("start", 1, 100, player_id="tablet")
    assert r("stop", 97, 200, player_id="tablet")[-1].reason == "sent"
    # another media-server user of the same Trakt account is the same person to Trakt
    # (docs/configuration.md, Households:
    # one Rules per account; another account is not affected, see test_households.py)
    assert r("stop", 97, 300, player_id="tv", user_id="2", user_name="bob")[-1].reason == "already_watched"
    # after an hour it may be scrobbled again
    assert r("stop", 96, 3700, player_id="laptop")[-1].reason == "already_watched"  # tablet at 200
    assert r("stop", 96, 3900, player_id="laptop2")[-1].reason == "sent"


def test_rewatch_from_start_is_a_new_viewing() -> None:
    r = Run()
    r("start", 0, 0)
    r("stop", 96, 100)
    out = r("start", 0.5, 200)
    assert out[-1].reason == "sent" and "new_viewing" in out[-1].notes
    r("stop", 97, 300)
    assert [s for s in r.sends() if s[0] == "stop"] == [("stop", 96), ("stop", 97)]


def test_regress_clamp_on_stale_offsets() -> None:
    r = Run()
    r("start", 10, 0)
    r("pause", 92, 100)
    r.tick(200)
    out = r("stop", 0.0, 300)  # a zero offset on stop must not undo the watch
    assert out[-1].reason == "sent" and "regress_clamped" in out[-1].notes
    assert r.sends()[-1] == ("stop", 92)


def test_regress_within_tolerance_is_kept() -> None:
    r = Run()
    r("start", 50, 0)
    r("pause", 46, 100)
    r.tick(200)
    assert r.sends()[-1] == ("pause", 46)


def test_unknown_progress_uses_session_or_is_dropped() -> None:
    r = Run()
    assert r("stop", None, 0)[-1].reason == "no_progress"
    assert r("pause", None, 1)[-1].reason == "no_progress"
    out = r("start", None, 2)
    assert out[-1].reason == "sent" and r.sends() == [("start", 0)]
    r("start", 85, 50)
    out = r("stop", None, 100)
    assert out[-1].reason == "sent" and "progress_from_session" in out[-1].notes
    assert r.sends()[-1] == ("stop", 85)


def test_exact_duplicates_dropped() -> None:
    r = Run()
    r("start", 10, 0)
    assert r("start", 10, 0.5)[-1].reason == "duplicate"
    # outside the 1 s window: not a duplicate, but a start where playback already is
    assert r("start", 10, 2.0)[-1].reason == "already_playing"
    r("pause", 40, 10)
    assert r("pause", 40, 10.2)[-1].reason == "duplicate"


def test_stop_below_one_percent_never_sent() -> None:
    r = Run()
    assert r("stop", 0.5, 0)[-1].reason == "below_minimum"
    assert r.sends() == []


def test_jellyfin_progress_flag_changes() -> None:
    r = Run()
    jf: dict[str, Any] = {"source": "jellyfin"}
    r("start", 5, 0, **jf)
    assert r("progress", 10, 10, paused=False, **jf)[-1].reason == "progress_noted"
    assert r("progress", 20, 20, paused=True, **jf)[-1].reason == "debounced"
    assert r("progress", 20, 21, paused=True, **jf)[-1].reason == "progress_noted"
    r.tick(30)
    assert r("progress", 20, 40, paused=False, **jf)[-1].reason == "sent"
    r("progress", 60, 100, paused=False, **jf)
    r("stop", None, 120, **jf)  # stop at 0 ticks = unknown: the last progress report counts
    assert r.sends() == [("start", 5), ("pause", 20), ("start", 20), ("pause", 60)]


def test_jellyfin_progress_for_unknown_session_starts_it() -> None:
    r = Run()
    assert r("progress", 30, 0, paused=False, source="jellyfin")[-1].reason == "sent"
    assert r.sends() == [("start", 30)]


def test_debounce_zero_sends_at_once() -> None:
    r = Run(replace(CFG, pause_debounce_seconds=0))
    r("start", 10, 0)
    assert r("pause", 30, 5)[-1].reason == "sent"
    assert r.rules.next_deadline() is None


def test_ratings_pass_and_dedupe() -> None:
    r = Run()
    assert r("rate", None, 0, rating=8)[-1].reason == "sent"
    assert r("rate", None, 10, rating=8)[-1].reason == "duplicate"
    assert r("rate", None, 20, rating=9)[-1].reason == "sent"
    assert r("rate", None, 30, rating=None)[-1].reason == "sent"
    assert r("rate", None, 1000, rating=None)[-1].reason == "sent"


def test_sessions_bounded_and_expire() -> None:
    rules = Rules(CFG, max_sessions=3, idle_seconds=100)
    for i in range(5):
        rules.handle(ev("start", 1, player_id=f"p{i}"), i)
    assert rules.session_count == 3
    rules.tick(500)
    assert rules.session_count == 0


def test_eviction_sends_held_pause() -> None:
    rules = Rules(CFG, max_sessions=1)
    rules.handle(ev("start", 1, player_id="a"), 0)
    rules.handle(ev("pause", 30, player_id="a"), 1)
    out = rules.handle(ev("start", 1, player_id="b"), 2)
    assert next((d.reason, d.send.verb if d.send else None, d.notes) for d in out) == (
        "sent", "pause", ("evicted",))


def test_flush_pending_on_shutdown() -> None:
    rules = Rules(CFG)
    rules.handle(ev("start", 1), 0)
    rules.handle(ev("pause", 30), 1)
    out = rules.flush_pending()
    assert [(d.send.verb, d.send.progress) for d in out if d.send] == [("pause", 30)]
    assert rules.next_deadline() is None


# --- invariants over random sequences --------------------------------------------------

ACTIONS = ["start", "pause", "stop", "scrobble", "progress"]
step = st.tuples(
    st.sampled_from(ACTIONS),
    st.one_of(st.none(), st.floats(min_value=0, max_value=100, allow_nan=False)),
    st.floats(min_value=0, max_value=30, allow_nan=False),  # seconds since the previous event
    st.sampled_from(["tv", "phone"]),
    st.booleans(),  # paused flag for progress
)
settings_st = st.builds(
    ScrobbleConfig,
    pause_debounce_seconds=st.sampled_from([0, 1, 5, 20]),
    suppress_start_at=st.floats(min_value=50, max_value=100),
    regress_tolerance_percent=st.floats(min_value=0, max_value=20),
    stop_pause_threshold=st.floats(min_value=80, max_value=100),
    force_stop_at=st.floats(min_value=80, max_value=100),
).filter(lambda c: c.force_stop_at >= c.stop_pause_threshold)


@settings(max_examples=200, deadline=None)
@given(cfg=settings_st, steps=st.lists(step, max_size=40))
def test_a_tick_the_worker_skips_as_not_due_would_have_done_nothing(
        cfg: ScrobbleConfig, steps: list[tuple[str, float | None, float, str, bool]]) -> None:
    """The worker ticks an account's rules before an event only when ``due`` (one look per account,
    not a tick): a tick that is not due decides nothing and changes no session."""
    rules = Rules(cfg)
    now = 0.0
    skipped = 0
    for action, progress, gap, player, paused in steps:
        now += gap
        if not rules.due(now):
            before = (rules.next_deadline(), rules.session_count, rules.held_events())
            assert rules.tick(now) == [] and (rules.next_deadline(), rules.session_count,
                                              rules.held_events()) == before
            skipped += 1
        else:
            rules.tick(now)
        rules.handle(ev(action, progress, player_id=player, paused=paused), now)
    assert rules.due(now) or rules.next_deadline() is None


@settings(max_examples=400, deadline=None)
@given(cfg=settings_st, steps=st.lists(step, max_size=40))
def test_invariants(cfg: ScrobbleConfig, steps: list[tuple[str, float | None, float, str, bool]]) -> None:
    rules = Rules(cfg)
    now = 0.0
    decisions: list[tuple[float, Decision]] = []
    held: dict[str, int] = {}  # session -> held pauses not yet resolved
    for action, progress, gap, player, paused in steps:
        now += gap
        for d in rules.tick(now):
            decisions.append((now, d))
        for d in rules.handle(ev(action, progress, player_id=player, paused=paused), now):
            decisions.append((now, d))
    for d in rules.flush_pending():
        decisions.append((now, d))

    stops_per_viewing: dict[str, int] = {}
    for _, d in decisions:
        key = d.event.session_key
        if d.send is not None:
            assert 0 <= d.send.progress <= 100
            if d.send.verb == "stop":
                assert d.send.progress >= 1, "a stop below 1 % reaches Trakt"
                stops_per_viewing[key] = stops_per_viewing.get(key, 0) + 1
            if d.send.verb == "start":
                assert d.send.progress < cfg.suppress_start_at
        if d.reason == "debounced":
            held[key] = 1
        if d.send is not None and d.send.verb in ("pause", "stop"):
            held[key] = 0
        if d.reason in ("pause_cancelled", "already_watched") or "pause_superseded" in d.notes:
            held[key] = 0
        if d.reason == "new_viewing" or "new_viewing" in d.notes:
            stops_per_viewing[key] = 0
        assert stops_per_viewing.get(key, 0) <= 1, "two watched stops in one viewing"
    # every held pause was sent or cancelled (flush_pending ran at the end)
    assert rules.next_deadline() is None
    assert all(v == 0 for v in held.values()), held


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(step, max_size=30))
def test_watched_at_most_once_per_hour_without_new_viewing(
        steps: list[tuple[str, float | None, float, str, bool]]) -> None:
    """Across all devices of one user: a second watched stop within an hour needs a fresh start."""
    rules = Rules(CFG)
    now = 0.0
    last_stop: float | None = None
    fresh_since_stop: set[str] = set()
    for action, progress, gap, player, paused in steps:
        now += gap
        out = rules.tick(now) + rules.handle(ev(action, progress, player_id=player, paused=paused), now)
        for d in out:
            if "new_viewing" in d.notes or (d.reason == "sent" and d.send and d.send.verb == "start"
                                            and d.send.progress < 5):
                fresh_since_stop.add(d.event.session_key)
            if d.send is not None and d.send.verb == "stop":
                if last_stop is not None and now - last_stop <= 3600:
                    assert d.event.session_key in fresh_since_stop
                last_stop = now
                fresh_since_stop.discard(d.event.session_key)


@pytest.mark.parametrize("debounce", [1, 5])
def test_pause_resolution_timing(debounce: int) -> None:
    r = Run(replace(CFG, pause_debounce_seconds=debounce))
    r("start", 10, 0)
    r("pause", 20, 100)
    assert r.tick(100 + debounce - 0.01) == []
    assert r.tick(100 + debounce)[0].send is not None


# --- one viewing across two devices ------------------------------------------------------------


def test_stale_pause_from_the_device_left_behind_is_dropped() -> None:
    r = Run()
    r("start", 0, 0, player_id="phone")
    r("pause", 38, 1200, player_id="phone")
    r.tick(1210)
    r("start", 38, 1500, player_id="tv")
    r("stop", 97, 3000, player_id="tv")
    # the phone's stale stop at 38 % arrives after the TV's watched stop
    out = r("stop", 38, 3100, player_id="phone")
    assert out[-1].reason == "already_watched" and "watched_elsewhere" in out[-1].notes
    # ...and so does a late pause, whatever its session
    assert r("pause", 38, 3200, player_id="tablet")[-1].reason == "already_watched"
    r.tick(3300)
    assert r.sends() == [("start", 0), ("pause", 38), ("start", 38), ("stop", 97)]


def test_held_pause_is_dropped_when_the_item_is_finished_elsewhere_meanwhile() -> None:
    r = Run()
    r("start", 30, 0, player_id="phone")
    r("pause", 38, 100, player_id="phone")  # held for 5 s
    r("stop", 97, 102, player_id="tv")  # watched on the TV inside the window
    out = r.tick(106)
    assert [(d.reason, d.notes) for d in out] == [
        ("already_watched", ("debounce_elapsed", "watched_elsewhere"))]
    assert r.sends() == [("start", 30), ("stop", 97)]
    assert r.rules.next_deadline() is None


def test_pause_elsewhere_after_an_hour_or_in_a_new_viewing_is_sent() -> None:
    r = Run()
    r("start", 0, 0, player_id="phone")  # began on the phone from the top: before the TV's stop
    r("stop", 97, 100, player_id="tv")
    assert r("stop", 38, 200, player_id="phone")[-1].reason == "already_watched"
    # a rewatch started from the top after the watched stop is a new viewing
    r("start", 1, 300, player_id="tablet")
    assert r("stop", 40, 400, player_id="tablet")[-1].reason == "demoted_to_pause"
    # another media-server user of the same account counts as the same person; after the hour
    # the phone may pause again
    assert r("stop", 38, 500, player_id="phone", user_id="2", user_name="bob")[-1].reason == "already_watched"
    assert r("stop", 39, 3800, player_id="phone")[-1].reason == "demoted_to_pause"


# --- starts that repeat themselves --------------------------------------------------------------


def test_repeated_start_where_playback_already_is_dropped() -> None:
    r = Run()  # 7200 s runtime: 72 s per percent
    r("start", 10, 0)
    assert r("start", 10, 30)[-1].reason == "already_playing"  # a retry with the old offset
    # Plex repeats media.play/media.resume; by 720 s playback is at about 20 %
    out = r("start", 20.5, 720)
    assert out[-1].reason == "already_playing" and out[-1].send is None
    assert r("start", 26, 721)[-1].reason == "sent"  # 6 % ahead of where it should be: a seek
    # a seek is sent, and becomes the new reference
    assert r("start", 60, 800)[-1].reason == "sent"
    assert r("start", 60.1, 805)[-1].reason == "already_playing"
    assert r("start", 40, 900)[-1].reason == "sent"  # seek back
    assert r.sends() == [("start", 10), ("start", 26), ("start", 60), ("start", 40)]


def test_start_after_a_pause_or_past_the_end_is_sent() -> None:
    r = Run()
    r("start", 10, 0)
    r("pause", 10.5, 36)
    r.tick(60)
    assert r("start", 10.5, 100)[-1].reason == "sent"  # resume after a pause Trakt saw
    # long after the item should have ended, Trakt no longer shows it playing
    assert r("start", 10.5, 100 + 7200)[-1].reason == "sent"
    r2 = Run()
    r2("start", 95, 0)
    # 400 s later it should be past the end (95 % + 400 s of 7200 s): a start near it is new
    assert r2("start", 96, 400)[-1].reason == "sent"
    # a pause cancelled by the debounce leaves Trakt playing: a repeat is dropped
    r("pause", 20, 8000)
    assert r("start", 20, 8001)[-1].reason == "pause_cancelled"
    assert r("start", 20.1, 8005)[-1].reason == "already_playing"


def test_repeated_start_without_runtime_and_jellyfin_progress() -> None:
    r = Run()
    r("start", 10, 0, duration_s=None)
    assert r("start", 12, 600, duration_s=None)[-1].reason == "already_playing"
    assert r("start", 16, 700, duration_s=None)[-1].reason == "sent"
    # Jellyfin's progress reports keep the reference up to date
    jf: dict[str, Any] = {"source": "jellyfin", "player_id": "jf"}
    r("start", 5, 1000, **jf)
    r("progress", 80, 4300, paused=False, **jf)  # the user seeked ahead: only this report says so
    # a PlaybackStart sent again (a client retrying) where the last report put playback
    assert r("start", 80.1, 4310, **jf)[-1].reason == "already_playing"
    r("progress", 50, 4400, paused=True, **jf)
    assert r("progress", 51.4, 4401, paused=False, **jf)[-1].reason == "pause_cancelled"
    assert r("start", 51.5, 4403, **jf)[-1].reason == "already_playing"


# --- multi-episode files --------------------------------------------------------------------------

DOUBLE: dict[str, Any] = {"kind": "episode", "source": "jellyfin", "title": "Pilot / Cat's in the Bag...",
                          "ids": Ids(tvdb=349232), "show_title": "Breaking Bad", "show_year": 2008,
                          "season": 1, "number": 1, "number_end": 2, "duration_s": 6000.0}


def episode_sends(r: Run) -> list[tuple[str, int | None, float]]:
    return [(d.send.verb, d.send.event.number, d.send.progress) for d in r.log if d.send]


def test_double_episode_watched_to_the_end_scrobbles_each_once() -> None:
    r = Run()
    r("start", 0, 0, **DOUBLE)
    r("pause", 30, 1800, **DOUBLE)  # 30 % of the file: 60 % into the first episode
    r.tick(1806)
    r("start", 30, 1900, **DOUBLE)
    r("pause", 75, 4600, **DOUBLE)  # 75 %: half-way through the second
    r.tick(4606)
    r("start", 75, 4700, **DOUBLE)
    r("stop", 97, 5900, **DOUBLE)
    r("stop", 98, 5950, **DOUBLE)  # a second stop of the same viewing
    assert episode_sends(r) == [("start", 1, 0), ("pause", 1, 60), ("start", 1, 60), ("pause", 2, 50),
                                ("start", 2, 50), ("stop", 1, 100), ("stop", 2, 97)]
    for d in r.log:
        if d.send is not None:
            # each episode goes by its show: the file's ids name the first one at best
            sent = d.send.event
            assert sent.ids == Ids() and sent.number_end is None and sent.duration_s == 3000
            assert "episodes_1-2" in d.notes
    assert r.reasons()[-1] == "already_watched"


def test_double_episode_stopped_in_the_middle_is_a_pause_on_the_one_playing() -> None:
    r = Run()
    r("start", 0, 0, **DOUBLE)
    out = r("stop", 70, 4200, **DOUBLE)
    assert out[-1].reason == "demoted_to_pause"
    assert episode_sends(r) == [("start", 1, 0), ("pause", 2, 40)]
    r2 = Run()
    r2("stop", 30, 0, **DOUBLE)
    assert episode_sends(r2) == [("pause", 1, 60)]


def test_triple_episode_file_and_a_watched_pause() -> None:
    r = Run()
    triple = {**DOUBLE, "number": 4, "number_end": 6, "season": 2}
    r("start", 50, 0, **triple)  # in the middle of the second episode
    out = r("pause", 96, 100, **triple)  # at the credits: promoted to a watched stop
    assert out[0].reason == "promoted_to_stop"
    assert [round(p, 2) for _, _, p in episode_sends(r)] == [50, 100, 100, 96]
    assert [(v, n) for v, n, _ in episode_sends(r)] == [("start", 5), ("stop", 4), ("stop", 5), ("stop", 6)]


def test_multi_episode_without_show_is_sent_as_one() -> None:
    r = Run()
    r("stop", 97, 0, **{**DOUBLE, "show_title": None})
    assert episode_sends(r) == [("stop", 1, 97)]


# --- marks made by hand, Plex's catalogue ---------------------------------------------------------


def test_manual_marks_off_by_default() -> None:
    r = Run()
    out = r("mark_watched", None, 0)
    assert [(d.reason, d.send) for d in out] == [("manual_marks_disabled", None)]
    assert r("mark_unwatched", None, 1)[-1].reason == "manual_marks_disabled"


def test_manual_marks_go_to_the_history() -> None:
    r = Run(replace(CFG, sync_manual_marks=True))
    assert r("mark_watched", None, 0)[-1].reason == "sent"
    assert r("mark_watched", None, 5)[-1].reason == "duplicate"
    assert r("mark_unwatched", None, 10)[-1].reason == "sent"
    assert r.sends() == [("history_add", 100), ("history_remove", 0)]
    # once unmarked, a playback may scrobble it again
    r("start", 1, 20)
    assert r("stop", 96, 100)[-1].reason == "sent"
    # marking watched what was just scrobbled adds no second play
    out = r("mark_watched", None, 200)
    assert out[-1].reason == "already_watched" and out[-1].send is None
    # and a mark watched counts as the watch of the hour for the other devices
    r2 = Run(replace(CFG, sync_manual_marks=True))
    r2("mark_watched", None, 0)
    assert r2("stop", 40, 60, player_id="phone")[-1].reason == "already_watched"


def test_manual_mark_of_a_double_episode_marks_both() -> None:
    r = Run(replace(CFG, sync_manual_marks=True))
    r("mark_watched", None, 0, **DOUBLE)
    assert episode_sends(r) == [("history_add", 1, 100), ("history_add", 2, 100)]


def test_plex_catalogue_items_scrobble_unless_ignored() -> None:
    r = Run()
    r("scrobble", 92, 0, vod=True)
    assert r.sends() == [("stop", 92)]
    r2 = Run(replace(CFG, ignore_plex_vod=True))
    for action in ("start", "stop", "scrobble", "rate"):
        assert r2(action, 92, 0, vod=True, rating=8)[-1].reason == "vod_ignored"
    assert r2.sends() == []


# --- invariants for the new rules -------------------------------------------------------------------

multi_step = st.tuples(
    st.sampled_from(ACTIONS),
    st.one_of(st.none(), st.floats(min_value=0, max_value=100, allow_nan=False)),
    st.floats(min_value=0, max_value=600, allow_nan=False),
    st.sampled_from(["tv", "phone"]),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(multi_step, max_size=40), end=st.sampled_from([None, 2, 3]))
def test_each_episode_watched_once_and_never_paused_after(
        steps: list[tuple[str, float | None, float, str, bool]], end: int | None) -> None:
    """Whatever the devices report: within the hour after an episode's watched stop, that user
    sends it no second stop and no pause, unless a viewing began from the top since."""
    rules = Rules(CFG)
    now = 0.0
    watched_at: dict[int | None, float] = {}
    fresh: dict[str, float] = {}  # session -> when its latest viewing began below 5 %
    for action, progress, gap, player, paused in steps:
        now += gap
        item = {**DOUBLE, "number_end": end} if end else {**DOUBLE, "number_end": None}
        out = rules.tick(now) + rules.handle(ev(action, progress, player_id=player, paused=paused,
                                                **item), now)
        for d in out:
            if d.send is not None:
                assert 0 <= d.send.progress <= 100
            key = d.event.session_key
            if d.send is not None and d.send.verb == "start" and d.reason == "sent":
                # the file's position: the episode's share before it plus its own progress
                count = (end or 1)
                number = d.send.event.number or 1
                file_progress = ((number - 1) * 100 + d.send.progress) / count
                if file_progress < 5:
                    fresh[key] = now
            if "new_viewing" in d.notes:
                fresh[key] = now
            if d.send is None or d.send.verb not in ("pause", "stop"):
                continue
            number = d.send.event.number
            seen = watched_at.get(number)
            if seen is not None and now - seen <= 3600:
                assert fresh.get(key, -1.0) > seen, (d.send.verb, number, d.reason)
            if d.send.verb == "stop":
                watched_at[number] = now


def test_every_registry_is_bounded_by_count_and_long_keys_by_size() -> None:
    """Distinct sessions, items, ratings and marks beyond the bound: the oldest are forgotten,
    each registry stays at ``max_sessions`` entries, and no kept key is longer than ``MAX_KEY``."""
    from cwhook.scrobble.rules import MAX_KEY, MAX_NAMES

    rules = Rules(ScrobbleConfig(sync_manual_marks=True, pause_debounce_seconds=0), max_sessions=20)
    base = Event(source="jellyfin", action="stop", kind="movie", title="T", user_name="u", player_id="p",
                 progress=95.0)
    now = 1000.0
    for i in range(400):
        title = f"Movie {i} " + "x" * (5000 if i % 2 else 0)  # half of them with a long title
        ev = replace(base, title=title, item_key=title)
        for action, extra in (("mark_unwatched", {}), ("stop", {}), ("rate", {"rating": 7}),
                              ("mark_watched", {})):
            rules.handle(replace(ev, action=action, **extra), now)  # type: ignore[arg-type]
        now += 0.5  # all within the time windows: only the count bound can hold them
    assert 0 < len(rules._sessions) <= 20
    for registry in (rules._sessions, rules._watched, rules._ratings, rules._marks):
        assert 0 < len(registry) <= 20 * MAX_NAMES  # (a few names per item: cwhook.kernel.items)
        assert max(len(k) for k in registry) <= MAX_KEY
    # the newest are the ones kept, and a long key still finds its own entry
    newest = replace(base, title="Movie 399 " + "x" * 5000, item_key="Movie 399 " + "x" * 5000)
    [d] = rules.handle(replace(newest, action="rate", rating=7), now)
    assert d.reason == "duplicate"


# --- the phase table ------------------------------------------------------------------------------

PLAYBACK_ACTIONS = {"start", "pause", "stop", "scrobble", "progress"}


def test_each_phase_lists_what_every_action_may_do_and_only_a_held_pause_has_timers() -> None:
    for phase in Phase:
        actions = {action for (p, action) in TRANSITIONS if p is phase}
        timers = {"elapse", "shutdown"} if phase is Phase.HELD else set()
        assert actions == PLAYBACK_ACTIONS | timers, phase
    assert all(targets for targets in TRANSITIONS.values())


def test_a_move_the_table_does_not_list_is_refused() -> None:
    s = Session(phase=Phase.WATCHED)
    with pytest.raises(PhaseError, match="pause cannot move a session from watched to held"):
        phases.advance(s, "pause", Phase.HELD)
    with pytest.raises(PhaseError):
        phases.advance(Session(), "elapse", Phase.IDLE)  # no timer runs on a session holding nothing
    assert s.phase is Phase.WATCHED
    phases.advance(s, "start", Phase.PLAYING)  # a new viewing from the top
    assert s.phase is Phase.PLAYING


def test_a_viewing_goes_through_its_phases() -> None:
    r = Run()
    seen = []
    for action, progress, at in [("start", 1, 0), ("pause", 30, 100), (None, None, 106), ("start", 30, 200),
                                 ("pause", 40, 300), ("start", 40, 302), ("stop", 97, 400), ("start", 50, 500),
                                 ("start", 1, 600), ("stop", 20, 700)]:
        if action is None:
            r.tick(at)
        else:
            r(action, progress, at)
        [session] = r.rules._sessions.values()
        seen.append(session.phase.value)
    assert seen == ["playing", "held", "idle", "playing", "held", "playing", "watched", "watched", "playing",
                    "idle"]
    r2 = Run()
    r2("start", 99.5, 0)  # resumed at the credits
    r2("pause", 99.6, 10)
    assert [s.phase for s in r2.rules._sessions.values()] == [Phase.NEAR_END]
    r2("start", 50, 20)  # seeked back: a viewing after all
    assert [s.phase for s in r2.rules._sessions.values()] == [Phase.PLAYING]


def _walk(rules: Rules, rnd: Random, cfg: ScrobbleConfig) -> None:
    """A dozen events of two players of one item, the debounce switched on and off at times."""
    now = 0.0
    for _ in range(12):
        now += rnd.choice([0.5, 2, 10, 1000])
        if rnd.random() < 0.1:
            cfg = replace(cfg, pause_debounce_seconds=5 - cfg.pause_debounce_seconds)
            rules.update_settings(cfg)
        rules.tick(now)
        rules.handle(ev(rnd.choice(sorted(PLAYBACK_ACTIONS)), rnd.choice([None, 0.5, 4.0, 30.0, 85.0, 92.0, 97.0]),
                        source="jellyfin", paused=rnd.random() < 0.5, player_id=rnd.choice(["tv", "phone"])), now)
        for s in rules._sessions.values():
            # what each phase owns: a held pause in HELD only, Trakt's start in PLAYING (and in a
            # viewing restarted at the credits while Trakt still plays the old one)
            assert (s.held is not None) == (s.phase is Phase.HELD)
            assert s.phase is not Phase.PLAYING or s.started is not None
            assert s.started is None or s.phase in (Phase.PLAYING, Phase.NEAR_END)
    rules.flush_pending()


def test_the_table_is_exactly_the_moves_the_rules_make(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeded walks (the same every run) reach every move the table lists, and no other."""
    moves: set[tuple[Phase, str, Phase]] = set()

    def advance(session: Session, action: phases.Action, to: Phase) -> None:
        moves.add((session.phase, action, to))
        phases.advance(session, action, to)

    monkeypatch.setattr(rules_module, "advance", advance)
    for seed in range(3000):
        rnd = Random(seed)
        # suppress_start_at below 5 %: a new viewing from the top can start at the credits
        cfg = replace(CFG, pause_debounce_seconds=rnd.choice([0, 5]), suppress_start_at=rnd.choice([3.0, 90.0]))
        _walk(Rules(cfg), rnd, cfg)
    listed = {(phase, action, to) for (phase, action), targets in TRANSITIONS.items() for to in targets}
    assert sorted(listed - moves, key=str) == [], "listed, never made"
    assert sorted(moves - listed, key=str) == [], "made, not listed"


def test_the_docs_table_of_phases_is_the_code_s() -> None:
    """docs/rules.md, "Phases of a session": each cell names the phases an action may lead to."""
    text = (Path(__file__).parent.parent / "docs" / "rules.md").read_text(encoding="utf-8")
    section = text.split("## Phases of a session", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| `")]
    names = {phase.value: phase for phase in Phase}
    documented = {}
    for cells in rows:
        phase = names[cells[0].strip(" `")]
        for action, cell in zip(("start", "pause", "stop", "scrobble"), cells[2:], strict=True):
            documented[(phase, action)] = {names[w] for w in re.findall(r"[a-z_]+", cell) if w in names}
    assert documented == {key: set(to) for key, to in TRANSITIONS.items() if key[1] in PLAYBACK_ACTIONS - {"progress"}}
