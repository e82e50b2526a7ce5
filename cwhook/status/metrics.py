"""``GET /metrics``: the status snapshot and the event counters in Prometheus' format.

Made with prometheus_client on a registry of the daemon's own (never the
library's global one). At scrape time a collector reads one status snapshot
(cwhook/status/snapshot.py): the gauges (queue, outbox, Trakt authorization) and the
counters kept in ``cwhook.status.health.Counters`` (the same numbers ``/healthz``
totals). Two histograms are observed as things happen: how long a webhook
waited for its answer, and how long each Trakt request took. The library's
process and platform collectors add ``process_*`` and ``python_info``.

Labels never carry personal data or secrets: servers, outcomes, reason codes,
account names (chosen by the admin in the config file), Trakt endpoint
templates (``/search/{id_type}/{id}``, never a path with ids or a query) and
HTTP statuses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from cwhook.config.schema import SERVERS
from cwhook.kernel.vocab import CLOSE_REASONS, OUTCOMES, REASONS
from cwhook.status.health import Counters
from cwhook.status.snapshot import Snapshot

ACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TRAKT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)

# Trakt paths as called -> the template that labels them. Anything else is "other".
_TEMPLATES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"/search/(imdb|tmdb|tvdb|trakt|tvrage)/[^/]+"), "/search/{id_type}/{id}"),
    (re.compile(r"/search/[a-z,]+"), "/search/{type}"),
    (re.compile(r"/sync/history/[a-z]+/[^/]+"), "/sync/history/{type}/{id}"),
)
_FIXED = frozenset({
    "/scrobble/start", "/scrobble/pause", "/scrobble/stop",
    "/sync/history", "/sync/history/remove", "/sync/ratings", "/sync/ratings/remove",
    "/sync/watchlist/remove", "/oauth/token", "/oauth/device/code", "/oauth/device/token",
})


def endpoint(path: str) -> str:
    """The label of a Trakt path: its template, without ids or query."""
    bare = path.split("?", 1)[0].split("#", 1)[0].rstrip("/") or "/"
    if bare in _FIXED:
        return bare
    for pattern, template in _TEMPLATES:
        if pattern.fullmatch(bare):
            return template
    return "other"


class SnapshotCollector(Collector):
    """Reads one snapshot per scrape: its gauges and its counters."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families are built at scrape time; names are not known in advance

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        yield from _counters(s)
        yield from _gauges(s)


def _counters(s: Snapshot) -> Iterator[Metric]:
    c = s.counts
    webhooks = CounterMetricFamily("cwhook_webhooks", "Webhook requests answered, by server and outcome.",
                                   labels=["server", "outcome"])
    seen = {(server, outcome): n for server, outcome, n in c.webhooks}
    # every server and outcome (the closed vocabulary) is a series from the start, 0 until it happens
    for key in sorted(set(seen) | {(srv, out) for srv in SERVERS for out in OUTCOMES}):
        webhooks.add_metric(list(key), seen.get(key, 0))
    yield webhooks

    ignored = CounterMetricFamily("cwhook_ignored", "Webhooks answered 200 ignored, by server and reason.",
                                  labels=["server", "reason"])
    for server, reason, n in c.ignored_reasons:
        ignored.add_metric([server, reason], n)
    yield ignored

    decisions = CounterMetricFamily("cwhook_decisions", "Decisions of the scrobble rules, by reason.",
                                    labels=["reason"])
    made = dict(c.decisions)
    for reason in sorted(set(made) | set(REASONS)):
        decisions.add_metric([reason], made.get(reason, 0))
    yield decisions

    requests = CounterMetricFamily("cwhook_trakt_requests",
                                   "HTTP requests to Trakt, by account, endpoint template and status "
                                   "(network_error: no answer).", labels=["account", "endpoint", "status"])
    for account, path, status, n in c.trakt_requests:
        requests.add_metric([account, path, status], n)
    yield requests

    closed = CounterMetricFamily("cwhook_connections_closed",
                                 "Connections the daemon closed on its own, by reason (silent: sent no byte "
                                 "before the header timeout; body_memory, body_slots: a slow body dropped "
                                 "for memory or for a connection, answered 503 busy).", labels=["reason"])
    done = dict(c.connections)
    for reason in sorted(set(done) | set(CLOSE_REASONS)):
        closed.add_metric([reason], done.get(reason, 0))
    yield closed

    deliveries = CounterMetricFamily("cwhook_deliveries",
                                     "Outbox entries done: sent (Trakt accepted), failed (refused for good or "
                                     "set aside), dry_run (logged, not sent).", labels=["result"])
    for result, n in (("sent", c.sent), ("failed", c.failed), ("dry_run", c.would_send)):
        deliveries.add_metric([result], n)
    yield deliveries


def _gauges(s: Snapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily("cwhook_queue_depth", "Events received and not yet through the rules.",
                            value=s.queue_depth)
    yield GaugeMetricFamily("cwhook_inbox_undecided", "Events stored in the inbox and not finally decided "
                            "(pauses held by the debounce included).", value=s.inbox_undecided)
    yield GaugeMetricFamily("cwhook_sessions", "Viewing sessions the rules keep state for.", value=s.sessions)
    yield GaugeMetricFamily("cwhook_outbox_set_aside", "Outbox entries set aside after 3 failures that were "
                            "not Trakt's.", value=s.outbox_set_aside)
    pending = GaugeMetricFamily("cwhook_outbox_pending", "Trakt actions waiting in the outbox.", labels=["account"])
    oldest = GaugeMetricFamily("cwhook_outbox_oldest_age_seconds",
                               "Age of the oldest Trakt action waiting in the outbox (0 when none waits).",
                               labels=["account"])
    authorized = GaugeMetricFamily("cwhook_trakt_authorized", "1 when the account has a Trakt token that works.",
                                   labels=["account"])
    expires = GaugeMetricFamily("cwhook_trakt_token_expires_in_seconds",
                                "Seconds until the account's Trakt access token expires (refreshed an hour "
                                "ahead).", labels=["account"])
    success = GaugeMetricFamily("cwhook_trakt_last_success_timestamp_seconds",
                                "When a Trakt call of the account last succeeded (unix time).", labels=["account"])
    for name, a in s.accounts.items():
        pending.add_metric([name], a.outbox_pending)
        oldest.add_metric([name], a.oldest_age_s or 0.0)
        authorized.add_metric([name], 1.0 if a.authorized and not a.needs_auth else 0.0)
        if a.token_expires_in_s is not None:
            expires.add_metric([name], a.token_expires_in_s)
        if a.last_success_at is not None:
            success.add_metric([name], a.last_success_at)
    yield from (pending, oldest, authorized, expires, success)
    yield GaugeMetricFamily("cwhook_degraded", "1 when /healthz says degraded.",
                            value=1.0 if s.status != "ok" else 0.0)
    problem = GaugeMetricFamily("cwhook_problem", "1 for each problem /healthz lists.", labels=["problem"])
    for name in s.problems:
        problem.add_metric([name], 1.0)
    yield problem
    info = GaugeMetricFamily("cwhook_build_info", "The running version.", labels=["version"])
    info.add_metric([s.version], 1.0)
    yield info


class Metrics:
    """The daemon's registry: the snapshot collector, two histograms, the process collectors."""

    def __init__(self, counters: Counters, snapshot: Callable[[], Snapshot]) -> None:
        # The histograms' *_created series tell nothing process_start_time_seconds does not.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # (untyped in the library)
        self.counters = counters
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(SnapshotCollector(snapshot))
        self.ack_seconds = Histogram("cwhook_webhook_ack_seconds",
                                     "Time from a webhook request's start to its answer, by server.",
                                     ["server"], buckets=ACK_BUCKETS, registry=self.registry)
        self._ack_by_server: dict[str, Histogram] = {}
        self.trakt_seconds = Histogram("cwhook_trakt_request_seconds",
                                       "Time of each HTTP request to Trakt, by endpoint template.",
                                       ["endpoint"], buckets=TRAKT_BUCKETS, registry=self.registry)

    def webhook_answered(self, server: str, seconds: float) -> None:
        child = self._ack_by_server.get(server)
        if child is None:  # labels() takes a lock and builds a key: once per server, not per request
            child = self._ack_by_server[server] = self.ack_seconds.labels(server)
        child.observe(seconds)

    def trakt_request(self, account: str, path: str, status: str, seconds: float) -> None:
        """A TraktClient/TraktAuth observer: counts the request and times it."""
        template = endpoint(path)
        self.counters.trakt_request(account, template, status)
        self.trakt_seconds.labels(template).observe(seconds)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when the scraper asks) and its content type."""
        try:
            encoder, content_type = choose_encoder(accept)
        except Exception:  # a hostile Accept header (version=abc) trips the library: plain text then
            encoder, content_type = choose_encoder("")
        return encoder(self.registry), content_type
