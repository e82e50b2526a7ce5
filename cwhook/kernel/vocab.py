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

# Every outcome of a webhook request: the ``request`` log line's ``outcome`` and the ``outcome``
# label of cwhook_webhooks_total, where each one is a series from the start (docs/monitoring.md).
# "error" is a request the handler failed on (answered 500 internal; a bug).
Outcome = Literal[
    "queued",  # stored and queued: 202
    "ignored",  # understood, not for us: 200 ignored
    "test",  # X-Cwhook-Dry-Run: 1, nothing stored or sent (counted apart from the ignored)
    "disabled",
    "invalid_token",
    "bad_payload",
    "too_large",
    "client_gone",  # the client hung up mid-body
    "busy",
    "body_timeout",
    "unavailable",  # the store could not take it: 503
    "error",
]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
# The outcomes of the ``request`` lines the edge writes for a request the app never saw (no
# server, so not in /metrics; docs/troubleshooting.md, "The logs").
EdgeOutcome = Literal["protocol_error", "header_timeout"]
EDGE_OUTCOMES: tuple[EdgeOutcome, ...] = get_args(EdgeOutcome)

# Why the edge closed a connection on its own (cwhook_connections_closed_total's ``reason``).
CloseReason = Literal["silent", "body_memory", "body_slots"]
CLOSE_REASONS: tuple[CloseReason, ...] = get_args(CloseReason)

# Every ``error`` code of the HTTP side's JSON answers (docs/troubleshooting.md, "The HTTP
# answer"); not_found and method_not_allowed are aiohttp's own answers in JSON.
ErrorCode = Literal[
    "bad_payload", "bad_request", "invalid_token", "disabled", "not_found", "method_not_allowed",
    "timeout", "too_large", "expectation_failed", "internal", "busy", "unavailable",
]
ERROR_CODES: tuple[ErrorCode, ...] = get_args(ErrorCode)

# Every problem /healthz may list, in the order it lists them (docs/troubleshooting.md,
# "/healthz problems"); a problem of an account other than ``default`` ends in ``:NAME``.
Problem = Literal[
    "config_refused",
    "trakt_not_authorized",
    "trakt_needs_auth",
    "trakt_refresh_retrying",
    "trakt_unreachable",
    "trakt_answer_not_trakt",
    "outbox_aging",
    "outbox_set_aside",
    "tokens_not_saved",
    "store_unavailable",
    "account_removed_with_pending",
]
PROBLEMS: tuple[Problem, ...] = get_args(Problem)
