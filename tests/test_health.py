from __future__ import annotations

import pytest

from cwhook.status.health import OUTBOX_AGING, Counters, problems


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, []),
    ({"authorized": False}, ["trakt_not_authorized"]),
    ({"needs_auth": "run cwhook auth"}, ["trakt_needs_auth"]),
    ({"unreachable": True}, ["trakt_unreachable"]),
    ({"unreachable": True, "dry_run": True}, []),  # nothing is sent in dry-run: Trakt's state does not matter
    ({"oldest_outbox_age": OUTBOX_AGING + 1}, ["outbox_aging"]),
    ({"oldest_outbox_age": OUTBOX_AGING - 1}, []),
    ({"authorized": False, "oldest_outbox_age": 10_000.0},
     ["trakt_not_authorized", "outbox_aging"]),
])
def test_problems(kwargs: dict[str, object], expected: list[str]) -> None:
    args: dict[str, object] = {"authorized": True, "needs_auth": None, "unreachable": False, "dry_run": False,
                               "oldest_outbox_age": None, **kwargs}
    assert problems(**args) == expected  # type: ignore[arg-type]


def test_counters_as_dict() -> None:
    """The /healthz totals are sums of the labelled counts /metrics shows: one source."""
    c = Counters()
    c.webhook("plex", "queued")
    c.webhook("jellyfin", "queued")
    c.webhook("plex", "ignored", "no_ids")
    c.webhook("emby", "bad_payload")
    c.decision("sent")
    c.decision("debounced")  # held, not dropped
    c.decision("duplicate")
    c.decision("pause_cancelled")
    c.failed += 1
    assert c.as_dict() == {"received": 4, "queued": 2, "ignored": 1, "sent": 0, "suppressed": 2, "failed": 1,
                           "would_send": 0}
    assert c.ignored_reasons == {("plex", "no_ids"): 1}
