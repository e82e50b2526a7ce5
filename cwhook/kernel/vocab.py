"""The closed vocabularies every package shares: one source each (docs/architecture.md).

The strings are what the logs, the decision journal, ``/metrics`` and the docs carry; a test
checks that each value is in the docs and in the metrics.
"""

from __future__ import annotations

from typing import Literal, get_args

# Every Trakt call an outbox entry can make (the outbox's ``verb`` column, the logs' ``action``).
# The rules decide the first six; watchlist_remove follows a watched movie stop when
# scrobble.watchlist_autoremove_movies is on (cwhook/trakt/delivery.py).
Verb = Literal["start", "pause", "stop", "rate", "history_add", "history_remove", "watchlist_remove"]
VERBS: tuple[Verb, ...] = get_args(Verb)

# Every reason a decision can give: a closed set the rules own (docs/troubleshooting.md
# explains each; the logs, the journal and /metrics carry them as these strings).
Reason = Literal[
    "sent",  # something goes to Trakt (Decision.send)
    "debounced",  # a pause held for pause_debounce_seconds; decided again when its window ends
    "pause_cancelled",
    "demoted_to_pause",
    "promoted_to_stop",
    "progress_noted",
    "suppressed_near_end",
    "already_watched",
    "already_playing",
    "duplicate",
    "no_progress",
    "below_minimum",
    "manual_marks_disabled",
    "vod_ignored",
]
REASONS: tuple[Reason, ...] = get_args(Reason)
# The reasons that keep or send the event; every other one drops it (counted as "suppressed").
KEPT: frozenset[Reason] = frozenset(
    {"sent", "demoted_to_pause", "promoted_to_stop", "debounced", "progress_noted"})
SUPPRESSED: frozenset[Reason] = frozenset(REASONS) - KEPT

# The decision journal's reason for a test request (header X-Cwhook-Dry-Run; `cwhook recent`: "test: ...").
TEST = "test"
