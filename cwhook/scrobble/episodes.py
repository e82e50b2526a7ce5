"""Multi-episode files (Jellyfin/Emby ``IndexNumberEnd``): each Send becomes Sends for its episodes.

The rules run on the file; its episodes are taken as equal parts of it (docs/rules.md,
"Multi-episode files"). A start or a pause goes to the episode at that position, with the position
within it; a watched stop sends every episode of the file as watched, each at its own position
raised to the file's (so each counts as the file did).
"""

from __future__ import annotations

from dataclasses import replace

from cwhook.kernel.event import Event, Ids
from cwhook.scrobble.decision import Decision, Send, bound


def per_episode(decisions: list[Decision]) -> list[Decision]:
    """Each Send for a multi-episode file becomes Sends for its episodes."""
    if not any(d.send is not None and d.send.event.number_end is not None for d in decisions):
        return decisions
    out: list[Decision] = []
    for d in decisions:
        out += _split(d)
    return out


def _split(d: Decision) -> list[Decision]:
    send = d.send
    if send is None or send.verb == "rate":
        return [d]
    ev = send.event
    first, last = ev.number, ev.number_end
    if ev.kind != "episode" or first is None or last is None or last <= first:
        return [d]
    if not ev.show_title and not ev.show_ids:
        return [d]  # no way to name the other episodes: the file's ids it is
    count = last - first + 1
    duration = ev.duration_s / count if ev.duration_s else None

    def episode(i: int) -> Event:
        # The file's ids name one of its episodes at best: each goes by its show.
        return replace(ev, number=first + i, number_end=None, ids=Ids(), duration_s=duration)

    notes = (*d.notes, f"episodes_{first}-{last}")
    current = min(count - 1, int(send.progress * count // 100))
    local = bound(send.progress * count - 100.0 * current)
    if send.verb in ("start", "pause"):
        return [replace(d, send=Send(send.verb, episode(current), local), progress=local,
                        notes=notes)]
    out: list[Decision] = []
    for i in range(count):
        progress = send.progress
        if send.verb == "stop":
            own = 100.0 if i < current else local if i == current else 0.0
            progress = max(own, send.progress)
        out.append(replace(d, send=Send(send.verb, episode(i), progress), progress=progress,
                           notes=notes))
    return out
