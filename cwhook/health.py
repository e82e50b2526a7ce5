"""What /healthz reports: the counters, and when the daemon counts as degraded (pure)."""

from __future__ import annotations

from dataclasses import dataclass

OUTBOX_AGING = 900.0  # an outbox entry older than this makes the daemon "degraded"


@dataclass
class Counters:
    received: int = 0
    queued: int = 0
    ignored: int = 0
    sent: int = 0
    suppressed: int = 0
    failed: int = 0
    would_send: int = 0  # dry-run: logged instead of sent

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def problems(authorized: bool, needs_auth: str | None, unreachable: bool, dry_run: bool,
             oldest_outbox_age: float | None, config_refused: bool = False) -> list[str]:
    """Why the daemon is degraded; empty when it is ok."""
    found = []
    if config_refused:
        found.append("config_refused")
    if not authorized:
        found.append("trakt_not_authorized")
    if needs_auth:
        found.append("trakt_needs_auth")
    if unreachable and not dry_run:
        found.append("trakt_unreachable")
    if oldest_outbox_age is not None and oldest_outbox_age > OUTBOX_AGING:
        found.append("outbox_aging")
    return found
