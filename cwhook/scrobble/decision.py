"""What the rules answer for an event: a reason, and maybe a call to make to Trakt."""

from __future__ import annotations

from dataclasses import dataclass

from cwhook.kernel.event import Event
from cwhook.kernel.records import quick_init
from cwhook.kernel.vocab import SUPPRESSED, Reason, Verb


@quick_init
@dataclass(frozen=True)
class Send:
    """One call to make to Trakt."""

    verb: Verb
    event: Event
    progress: float


@quick_init
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


def bound(progress: float) -> float:
    """Trakt's range (rule 8): a progress within 0..100."""
    return max(0.0, min(100.0, progress))


def send_pause(event: Event, progress: float, reason: Reason, notes: tuple[str, ...]) -> Decision:
    progress = bound(progress)
    return Decision(event, reason, Send("pause", event, progress), progress, notes)
