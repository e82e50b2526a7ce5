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

TRAKT_PATH = {"start": "/scrobble/start", "pause": "/scrobble/pause", "stop": "/scrobble/stop",
              "rate": "/sync/ratings", "history_add": "/sync/history", "history_remove": "/sync/history/remove"}


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


def answer(event: Event, settings: ScrobbleConfig, now: float) -> tuple[str, dict[str, dict[str, Any]]]:
    """What the HTTP side needs for a test request: the journal's line and each account's answer."""
    outcomes = preview(event, settings, now)
    return summary(outcomes), {o.account: o.to_dict() for o in outcomes}
