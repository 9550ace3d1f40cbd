"""GET /metrics over real HTTP: the Prometheus text format, what it counts, who may read it."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from projections.catalog import BY_NAME
from tests.conditions import wait_for
from tests.conftest import make_settings
from tests.live import serve_app, student_client
from tests.sse import read_stream
from tests.test_lessons_flow import PLAN_BODY

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base_url: str, **headers: str) -> Samples:
    r = httpx.get(base_url + "/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@contextmanager
def server_for(db_url: str, **overrides: Any) -> Iterator[str]:
    settings: dict[str, Any] = {"offline_pace_ms": 0, "beat_partial_ms": 0}
    settings.update(overrides)
    with serve_app(make_settings(**settings), db_url) as base_url:
        yield base_url


def test_metrics_count_requests_events_and_read_lag_and_spend(db_url: str) -> None:
    with server_for(db_url) as base, student_client(base, timeout=30) as client:
        assert client.post("/v1/session").status_code == 201
        plan = client.post("/v1/plan", json=PLAN_BODY)
        assert plan.status_code == 200
        lesson_id = plan.json()["lesson_id"]
        total = len(plan.json()["plan"]["beats"])
        stream = read_stream(client, lesson_id)
        assert stream.events[-1].event == "lesson_complete"
        assert client.get("/no/such/route").status_code == 404

        # Generation winds down and the projections catch up just after the stream ends.
        def settled() -> Samples | None:
            s = scrape(base)
            lags = [value(s, "omnitutor_projection_lag_events", projection=n) for n in BY_NAME]
            idle = value(s, "omnitutor_lessons_generating") == 0
            return s if idle and all(lag == 0 for lag in lags) else None

        found = wait_for(settled, what="generation idle and projections caught up")
        assert found is not None
        s = found
        requests = "omnitutor_http_requests_total"
        assert value(s, requests, route="/v1/session", method="POST", status="201") == 1
        assert value(s, requests, route="/v1/plan", method="POST", status="200") == 1
        stream_route = "/v1/lesson/{lesson_id}/stream"
        assert value(s, requests, route=stream_route, method="GET", status="200") == 1
        # An unknown path is one label value, never the raw path (bounded cardinality).
        assert value(s, requests, route="unmatched", method="GET", status="404") == 1
        assert not any("/no/such/route" in str(labels) for _, labels in s)
        appended = "omnitutor_events_appended_total"
        assert value(s, appended, type="lesson.created") == 1
        assert value(s, appended, type="beat.completed") == total
        assert value(s, appended, type="lesson.completed") == 1
        for name in BY_NAME:
            assert value(s, "omnitutor_projection_lag_seconds", projection=name) is not None
        assert value(s, "omnitutor_model_spend_cap_usd") == 50
        spend = value(s, "omnitutor_model_spend_today_usd")
        assert spend is not None
        assert spend >= 0
        assert value(s, "omnitutor_sse_streams_open") == 0
        count = "omnitutor_http_request_duration_seconds_count"
        assert value(s, count, route=stream_route, method="GET") == 1


def test_open_streams_are_counted_while_open(db_url: str) -> None:
    # A slow tutor keeps the stream open while the test looks.
    with server_for(db_url, offline_pace_ms=50) as base, student_client(base, timeout=30) as c:
        assert c.post("/v1/session").status_code == 201
        lesson_id = c.post("/v1/plan", json=PLAN_BODY).json()["lesson_id"]
        with c.stream("GET", f"/v1/lesson/{lesson_id}/stream") as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept: dropping the iterator closes the response
            assert next(lines) == "retry: 1000"  # the stream is open on the server
            assert value(scrape(base), "omnitutor_sse_streams_open") == 1
        wait_for(lambda: value(scrape(base), "omnitutor_sse_streams_open") == 0)
        c.post(f"/v1/lesson/{lesson_id}/abandon")


@pytest.mark.parametrize(
    ("forwarded_for", "status"),
    [
        (None, 200),  # loopback itself
        ("10.1.2.3", 200),  # a trusted proxy's own address
        ("203.0.113.9", 404),  # the internet, relayed by the trusted proxy
        ("10.1.2.3, 203.0.113.9", 404),
    ],
)
def test_only_loopback_and_trusted_proxies_may_read_metrics(
    db_url: str, forwarded_for: str | None, status: int
) -> None:
    proxies = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"))
    with server_for(db_url, trusted_proxies=proxies) as base:
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        r = httpx.get(base + "/metrics", headers=headers)
        assert r.status_code == status
        if status == 404:
            # Indistinguishable from a route that does not exist.
            body = r.json()
            assert body["code"] == "not_found"
            assert body["message"] == "no route for GET /metrics"
            assert "omnitutor_" not in r.text
