"""GET /metrics: the service's numbers for ops, in the Prometheus text format.

Written by `prometheus-client` into a registry of this app's own (two apps in one process,
as in the tests, never share counters). Two kinds of figures:

* counted as they happen in this process: requests by route template, method and status,
  their latency, SSE streams open now, events appended by type, lessons this process is
  generating;
* read from the database at scrape time, because they belong to the whole service, not to
  one process: projection lag (events and seconds behind the log's head) and today's model
  spend against the daily cap.

Only loopback and `OMNITUTOR_TRUSTED_PROXIES` may read it; anyone else gets the same 404 as
a route that does not exist. The caller is judged by `web.client_ip`, so a request relayed
by nginx (a trusted proxy) from the internet is refused: it is the original client that
counts, not the proxy.
"""

from __future__ import annotations

import collections
import ipaddress
import time
from collections.abc import Callable, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from commands.errors import ErrorCode
from eventstore.store import StoredEvent
from projections import checkpoints
from web.client_ip import request_client_ip
from web.errors import ApiError
from web.requests import deps

UNMATCHED = "unmatched"  # no route: one label value, never the raw path (unbounded)


class Metrics:
    """Every metric of one app, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "omnitutor_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "omnitutor_http_request_duration_seconds",
            "Time to answer (for a stream: how long it stayed open), by route template.",
            ["route", "method"],
            registry=r,
        )
        self.sse_open = Gauge(
            "omnitutor_sse_streams_open", "Lesson streams open in this process.", registry=r
        )
        self.events_appended = Counter(
            "omnitutor_events_appended",
            "Events this process appended to the log, by type.",
            ["type"],
            registry=r,
        )
        self.generating = Gauge(
            "omnitutor_lessons_generating",
            "Lessons this process is generating now.",
            registry=r,
        )
        self.projection_lag_events = Gauge(
            "omnitutor_projection_lag_events",
            "Events between the log's head and the projection's checkpoint.",
            ["projection"],
            registry=r,
        )
        self.projection_lag_seconds = Gauge(
            "omnitutor_projection_lag_seconds",
            "Age of the oldest event the projection has not applied.",
            ["projection"],
            registry=r,
        )
        self.spend_today = Gauge(
            "omnitutor_model_spend_today_usd",
            "Model spend of the current UTC day (model_runs), in US dollars.",
            registry=r,
        )
        self.spend_cap = Gauge(
            "omnitutor_model_spend_cap_usd", "The daily spend cap, in US dollars.", registry=r
        )

    def count_appended(self, stored: Sequence[StoredEvent]) -> None:
        """EventStore listener: called after each append commits. One increment per type in
        the batch: a label lookup per event was 5 % of the server's time under ingestion."""
        for type_, n in collections.Counter(event.type for event in stored).items():
            self.events_appended.labels(type=type_).inc(n)

    def watch_generations(self, count: Callable[[], int]) -> None:
        self.generating.set_function(lambda: float(count()))


class HttpMetrics:
    """ASGI middleware: counts every answer by route template and status, and open streams."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # nothing sent at all is a failure
        streaming = False

        async def observe(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                media = Headers(raw=message.get("headers", [])).get("content-type", "")
                if media.startswith("text/event-stream"):
                    streaming = True
                    self.metrics.sse_open.inc()
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            if streaming:
                self.metrics.sse_open.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope["method"]
            self.metrics.requests.labels(route=template, method=method, status=str(status)).inc()
            self.metrics.latency.labels(route=template, method=method).observe(
                time.perf_counter() - started
            )


def _may_read(request: Request) -> bool:
    settings = deps(request).settings
    try:
        addr = ipaddress.ip_address(request_client_ip(request))
    except ValueError:
        return False
    if addr.is_loopback:
        return True
    return any(addr.version == net.version and addr in net for net in settings.trusted_proxies)


async def metrics_endpoint(request: Request) -> Response:
    if not _may_read(request):
        raise ApiError(ErrorCode.NOT_FOUND, f"no route for {request.method} {request.url.path}")
    svc = deps(request)
    metrics: Metrics = request.app.state.metrics
    for p in await checkpoints.status(svc.pool):
        metrics.projection_lag_events.labels(projection=p.name).set(p.lag_events)
        metrics.projection_lag_seconds.labels(projection=p.name).set(p.lag_s)
    spend = await svc.spend.status()  # the process's running total, not a whole-day sum
    metrics.spend_today.set(float(spend.spent_usd))
    metrics.spend_cap.set(float(spend.cap_usd))
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics_endpoint, methods=["GET"])]
