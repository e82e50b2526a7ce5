"""What a test request (header ``X-Cwhook-Dry-Run: 1``) would make cwhook send (pure).

A test goes through parsing, the whitelists and the routing like any webhook; here it
goes through the rules too, each account's on a fresh copy (as the first event of its
viewing: the daemon's own sessions are not touched). A pause held by the debounce is
followed to the end of its window, so the answer says what would finally be sent.
Nothing is stored and nothing is sent (docs/curl.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cwhook.config.schema import DEFAULT_ACCOUNT, ScrobbleConfig
from cwhook.kernel.event import Event
from cwhook.scrobble.rules import Rules, Send

HEADER = "X-Cwhook-Dry-Run"
YES = frozenset({"1", "true", "yes"})
NO = frozenset({"", "0", "false", "no"})
REASON = "test"  # the journal's reason for a test request (`cwhook recent`: "test: ...")

TRAKT_PATH = {"start": "/scrobble/start", "pause": "/scrobble/pause", "stop": "/scrobble/stop",
              "rate": "/sync/ratings", "history_add": "/sync/history", "history_remove": "/sync/history/remove"}


class BadHeader(ValueError):
    """The header has a value that is neither yes nor no: refused, never guessed."""


def requested(value: str | None) -> bool:
    """Whether a request is a test, from its ``X-Cwhook-Dry-Run`` header (absent: no)."""
    if value is None:
        return False
    v = value.strip().lower()
    if v in YES:
        return True
    if v in NO:
        return False
    raise BadHeader(f"{HEADER} must be 1 (a test: nothing is stored or sent) or 0")


@dataclass(frozen=True)
class Outcome:
    """What the rules would do with a test event for one Trakt account."""

    account: str
    reason: str
    notes: tuple[str, ...]
    sends: tuple[Send, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "notes": list(self.notes),
                "would_send": [{"action": s.verb, "progress": round(s.progress, 2),
                                "trakt": TRAKT_PATH.get(s.verb, s.verb), "item": s.event.label()}
                               for s in self.sends]}

    def text(self) -> str:
        if self.sends:
            return "; ".join(f"{s.verb} {s.progress:.0f}% ({TRAKT_PATH.get(s.verb, s.verb)})" for s in self.sends)
        return f"nothing ({self.reason})"


def preview(event: Event, settings: ScrobbleConfig, now: float) -> list[Outcome]:
    """Per account the event is routed to: the final reason, its notes, the Trakt calls."""
    out = []
    for account in event.accounts or (DEFAULT_ACCOUNT,):
        rules = Rules(settings)
        decisions = rules.handle(event, now)
        # A held pause: what the end of its window sends (a resume in it would cancel it).
        decisions += rules.tick(now + settings.pause_debounce_seconds + 1.0)
        notes = tuple(dict.fromkeys(n for d in decisions for n in d.notes))
        sends = tuple(d.send for d in decisions if d.send is not None)
        out.append(Outcome(account, decisions[-1].reason if decisions else "?", notes, sends))
    return out


def summary(outcomes: list[Outcome]) -> str:
    """One line for the journal: ``would send default: start 5% (/scrobble/start)``."""
    return "would send " + " | ".join(f"{o.account}: {o.text()}" for o in outcomes)
