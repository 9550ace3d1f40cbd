"""Every request gets a req_+ULID trace id, in X-Trace-Id and on every log line it writes."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import orjson
import pytest
import structlog

from eventstore.logconfig import configure_logging
from tests.conftest import make_settings
from tests.live import serve_app


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    yield stream
    structlog.reset_defaults()


def test_trace_id_is_returned_and_on_the_request_log_line(
    db_url: str, log_lines: io.StringIO
) -> None:
    with serve_app(make_settings(), db_url) as base:
        r = httpx.post(base + "/v1/session")
        missing = httpx.get(base + "/v1/nowhere")
    trace_id = r.headers["x-trace-id"]
    assert trace_id.startswith("req_")
    assert len(trace_id) == 4 + 26
    lines = [orjson.loads(line) for line in log_lines.getvalue().splitlines()]
    mine = [line for line in lines if line.get("trace_id") == trace_id]
    assert mine, lines
    summary = next(line for line in mine if line["msg"] == "request")
    assert summary["path"] == "POST /v1/session"
    assert summary["user_id"] == r.json()["user_id"]
    assert summary["session_id"] == r.json()["session_id"]
    assert summary["status"] == 201
    assert isinstance(summary["latency_ms"], int)
    assert summary["level"] == "info"
    assert "ts" in summary
    other = [line for line in lines if line.get("trace_id") == missing.headers["x-trace-id"]]
    assert other
    assert other[-1]["status"] == 404
