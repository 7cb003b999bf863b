"""`/metrics`: the node's log position, jobs and instances in Prometheus text, and how long requests take.

Each app has its own CollectorRegistry (never the process-wide one), so two
apps in one process, as in tests, do not see each other's series. The gauges
are read from the backend when scraped; the request histogram is fed by
`RequestTimer`, a plain ASGI middleware (not BaseHTTPMiddleware, which costs
more and wraps streams).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from appliance import clock
from appliance.api import views

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED_ROUTE = "unmatched"
INSTANCE_STATUSES = ("running", "ADMIN_down", "ADMIN_offline", "ERROR_down", "ERROR_up", "ERROR_wrongnode",
                     "ERROR_nodedown", "ERROR_nodeoffline", "USER_down")
# Control-plane requests take milliseconds; watch and tail streams take as long as the caller stays.
REQUEST_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


class _BackendCollector:
    """Gauges read from the backend at each scrape."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def collect(self):
        status = self.backend.log_status()
        state = self.backend.state()
        commit_seq = status.get("commit_seq") or 0
        applied_seq = status.get("applied_seq") or 0
        yield GaugeMetricFamily("cairn_commit_seq", "Highest log seq this member knows committed.", value=commit_seq)
        yield GaugeMetricFamily("cairn_applied_seq", "Highest log seq this member has applied.", value=applied_seq)
        yield GaugeMetricFamily("cairn_apply_lag", "Committed records not yet applied here.",
                                value=max(0, commit_seq - applied_seq))
        yield GaugeMetricFamily("cairn_is_leader", "1 when this member leads the log.",
                                value=1 if status.get("is_leader") else 0)
        yield GaugeMetricFamily("cairn_term", "The log term this member is in.", value=status.get("term") or 0)
        jobs = GaugeMetricFamily("cairn_jobs", "Jobs in the state, by status.", labels=["status"])
        counts = Counter(job.status for job in state.jobs.values())
        for job_status in views.JOB_STATUSES:
            jobs.add_metric([job_status], counts.get(job_status, 0))
        yield jobs
        instances = GaugeMetricFamily("cairn_instances", "Instances, by Ganeti status.", labels=["status"])
        counts = Counter(views.instance_status(state, instance) for instance in state.instances.values())
        for instance_status in INSTANCE_STATUSES:
            instances.add_metric([instance_status], counts.get(instance_status, 0))
        yield instances


class ApiMetrics:
    """One app's metrics: its registry, the backend's gauges and the request-time histogram."""

    def __init__(self, backend: Any) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_BackendCollector(backend))
        self.request_seconds = Histogram("cairn_api_request_seconds", "Time to answer an API request, by route.",
                                         ["route"], registry=self.registry, buckets=REQUEST_BUCKETS_S)

    def render(self) -> bytes:
        """Every series, in the Prometheus text format."""
        return generate_latest(self.registry)


class RequestTimer:
    """ASGI middleware: the time of each HTTP request, labelled with its route template (not the raw path)."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app = app
        self.histogram = metrics.request_seconds

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = clock.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            # The router records the matched route in the scope; its template keeps the label set small.
            route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
            self.histogram.labels(route).observe(clock.monotonic() - started)
