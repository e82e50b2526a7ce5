"""The daemon's two clocks (docs/durability.md, "Clocks").

* ``now()``: steady time. It is the wall time at start plus the monotonic time
  since, so it reads like a Unix time but never steps when the wall clock is set
  (NTP, a person, a virtual machine resumed). Every interval measured within the
  process runs on it: debounce windows, the rules' windows, retry delays, the
  ages /healthz shows.
* ``time.time()``: wall time, for what outlives the process or leaves it: the
  times stored in the state file, shown to a person, or sent to Trakt.

A stored wall time is turned into steady time by its age (``steady_of``), never
negative: a time "in the future" (the clock was set back since) counts as now,
so nothing waits for the wall clock to catch up; a clock set ahead meanwhile
makes things older, never held.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]

_ORIGIN = time.time() - time.monotonic()


def now() -> float:
    """Steady time, on the wall clock's scale as it was when the process started."""
    return _ORIGIN + time.monotonic()


def steady_of(stamp: float, steady: Clock = now, wall: Clock = time.time) -> float:
    """The steady time of a stored wall time: now, less its age by the wall clock (never negative)."""
    return steady() - max(0.0, wall() - stamp)
