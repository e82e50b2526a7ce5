"""The daemon's event counts, and when it counts as degraded (pure).

``Counters`` is the one place where what happened since start is counted: each
webhook answer by server and outcome, each ignore reason, each rules decision,
each Trakt request. ``/healthz`` (``counts``), ``/metrics`` and ``cwhook status``
are all read from it through the status snapshot (cwhook/status/snapshot.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cwhook.kernel.vocab import SUPPRESSED, Outcome, Problem

OUTBOX_AGING = 900.0  # an outbox entry older than this makes the daemon "degraded"


@dataclass
class Counters:
    webhooks: Counter[tuple[str, Outcome]] = field(default_factory=Counter)  # (server, outcome)
    ignored_reasons: Counter[tuple[str, str]] = field(default_factory=Counter)  # (server, reason)
    decisions: Counter[str] = field(default_factory=Counter)  # reason (cwhook.scrobble.rules.Reason)
    trakt_requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (account, endpoint, status)
    # closed by the edge, by reason (vocab.CloseReason; cwhook.ingest.edge counts them as plain strings)
    connections: Counter[str] = field(default_factory=Counter)
    sent: int = 0  # outbox entries Trakt accepted
    failed: int = 0  # outbox entries refused for good, or set aside
    would_send: int = 0  # dry-run: logged instead of sent

    # --- counting ---------------------------------------------------------------

    def webhook(self, server: str, outcome: Outcome, reason: str | None = None) -> None:
        """One answered webhook request (``reason``: why it was ignored)."""
        self.webhooks[(server, outcome)] += 1
        if outcome == "ignored" and reason:
            self.ignored_reasons[(server, reason)] += 1

    def decision(self, reason: str) -> None:
        self.decisions[reason] += 1

    def trakt_request(self, account: str, endpoint: str, status: str) -> None:
        self.trakt_requests[(account, endpoint, status)] += 1

    # --- the totals /healthz shows ---------------------------------------------------

    @property
    def received(self) -> int:
        return sum(self.webhooks.values())

    @property
    def queued(self) -> int:
        return sum(n for (_, outcome), n in self.webhooks.items() if outcome == "queued")

    @property
    def ignored(self) -> int:
        return sum(n for (_, outcome), n in self.webhooks.items() if outcome == "ignored")

    @property
    def suppressed(self) -> int:
        return sum(n for reason, n in self.decisions.items() if reason in SUPPRESSED)

    def as_dict(self) -> dict[str, int]:
        return {"received": self.received, "queued": self.queued, "ignored": self.ignored,
                "sent": self.sent, "suppressed": self.suppressed, "failed": self.failed,
                "would_send": self.would_send}


def problems(authorized: bool, needs_auth: str | None, unreachable: bool, dry_run: bool,
             oldest_outbox_age: float | None, refresh_retrying: bool = False,
             not_trakt: bool = False) -> list[Problem]:
    """Why one Trakt account makes the daemon degraded; empty when it is ok (the daemon-wide
    problems are added by ``status.build``)."""
    found: list[Problem] = []
    if not authorized:
        found.append("trakt_not_authorized")
    if needs_auth:
        found.append("trakt_needs_auth")
    if refresh_retrying and not needs_auth:
        found.append("trakt_refresh_retrying")
    if unreachable and not dry_run:
        found.append("trakt_unreachable")
    if not_trakt and not dry_run:
        found.append("trakt_answer_not_trakt")
    if oldest_outbox_age is not None and oldest_outbox_age > OUTBOX_AGING:
        found.append("outbox_aging")
    return found
