"""The one place cwhook reads its process environment; every other module is given the values.

Read once by the CLI (``Environment.read()``) and passed to the composition root, which hands
each value to the constructor that needs it. The names:

- ``CWHOOK_CONFIG``: the config file when ``-c`` is not given (docs/configuration.md).
- ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``, ``WATCHDOG_PID``: systemd's notify protocol and watchdog.
- ``JOURNAL_STREAM``: which stream systemd connected to the journal (syslog priorities on it).
- Test and benchmark settings, never needed in use: ``CWHOOK_POST_INTERVAL`` (Trakt's pacing,
  against a fake Trakt only), ``_CWHOOK_DELIVERY_RETRY_SCALE`` (shorter outbox retries),
  ``_CWHOOK_BACKOFF_SCALE`` (shorter back-offs of cwhook's own choosing between tries at Trakt:
  the client's within one call and the token refresh's; a ``Retry-After`` is never scaled),
  ``_CWHOOK_TRAKT_TIMEOUT`` (seconds a Trakt call may take, instead of 15),
  ``_CWHOOK_SHUTDOWN_GRACE`` (seconds a stop gives Trakt calls in flight, instead of 5),
  ``_CWHOOK_EDGE_*`` (the edge's limits, e.g. ``_CWHOOK_EDGE_IDLE_TIMEOUT=1``).

Nothing here imports the rest of cwhook: every command may read it without loading the daemon.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

EDGE_PREFIX = "_CWHOOK_EDGE_"


def _number(raw: str | None) -> float | None:
    """A non-negative number, or None (unset or not a number: the default applies)."""
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


@dataclass(frozen=True)
class Environment:
    config_path: str | None = None  # CWHOOK_CONFIG
    notify_socket: str = ""  # NOTIFY_SOCKET
    watchdog_usec: str | None = None  # WATCHDOG_USEC
    watchdog_pid: str | None = None  # WATCHDOG_PID
    journal_stream: str = ""  # JOURNAL_STREAM
    post_interval: float | None = None  # CWHOOK_POST_INTERVAL; None: Trakt's pacing
    retry_scale: float | None = None  # _CWHOOK_DELIVERY_RETRY_SCALE; None: 1
    backoff_scale: float | None = None  # _CWHOOK_BACKOFF_SCALE; None: 1
    trakt_timeout: float | None = None  # _CWHOOK_TRAKT_TIMEOUT; None: the client's 15 s
    shutdown_grace: float | None = None  # _CWHOOK_SHUTDOWN_GRACE; None: the daemon's 5 s
    edge: Mapping[str, str] = field(default_factory=dict)  # the _CWHOOK_EDGE_* variables, as set

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Environment:
        env = os.environ if environ is None else environ
        return cls(
            config_path=env.get("CWHOOK_CONFIG") or None,
            notify_socket=env.get("NOTIFY_SOCKET", ""),
            watchdog_usec=env.get("WATCHDOG_USEC"),
            watchdog_pid=env.get("WATCHDOG_PID"),
            journal_stream=env.get("JOURNAL_STREAM", ""),
            post_interval=_number(env.get("CWHOOK_POST_INTERVAL")),
            retry_scale=_number(env.get("_CWHOOK_DELIVERY_RETRY_SCALE")),
            backoff_scale=_number(env.get("_CWHOOK_BACKOFF_SCALE")),
            trakt_timeout=_number(env.get("_CWHOOK_TRAKT_TIMEOUT")) or None,
            shutdown_grace=_number(env.get("_CWHOOK_SHUTDOWN_GRACE")),
            edge={k: v for k, v in env.items() if k.startswith(EDGE_PREFIX)},
        )
