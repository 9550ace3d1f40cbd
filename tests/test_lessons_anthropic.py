"""The lesson flow on the anthropic provider, against the local fake Messages API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from commands.providers.prompts import MODERATION_SYSTEM
from tests.conftest import make_settings
from tests.fakes.anthropic_server import FakeAnthropic, StreamErrorReply, rate_limited
from tests.live import serve_app
from tests.sse import read_stream
from tests.test_lessons_api import body_with, named
from tests.test_lessons_flow import client_for


@pytest.fixture
def server(db_url: str, fake_anthropic: FakeAnthropic) -> Iterator[str]:
    settings = make_settings(
        provider="anthropic",
        anthropic_api_key="sk-test",
        anthropic_base_url=fake_anthropic.base_url,
        beat_partial_ms=0,
        sse_heartbeat_s=1.0,
    )
    with serve_app(settings, db_url) as base_url:
        yield base_url


def runs(db_url: str, lesson_id: str | None = None) -> list[dict[str, Any]]:
    """The lesson's teaching model runs (the guardrails' moderation runs left out)."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT payload_json FROM events WHERE type = 'model_run.recorded'"
            " AND payload_json->>'purpose' <> 'moderation'"
            " AND (%(l)s::text IS NULL OR lesson_id = %(l)s) ORDER BY insert_no",
            {"l": lesson_id},
        ).fetchall()
    return [r[0] for r in rows]


def beat_events(db_url: str, lesson_id: str) -> list[tuple[str, dict[str, Any]]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT type, payload_json FROM events WHERE lesson_id = %s AND type LIKE 'beat.%%'"
            " ORDER BY lesson_seq",
            (lesson_id,),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def test_full_flow_streams_and_records_usage(
    server: str, db_url: str, fake_anthropic: FakeAnthropic
) -> None:
    with client_for(server) as client:
        r = client.post("/v1/plan", json=body_with("topic", "Kepler's laws"))
        assert r.status_code == 200, r.text
        lesson_id = r.json()["lesson_id"]
        total = len(r.json()["plan"]["beats"])
        events = named(read_stream(client, lesson_id).events)
    assert events[-1].event == "lesson_complete"
    assert any(e.event == "beat_partial" for e in events)
    requests = fake_anthropic.teaching_requests
    assert not requests[0].stream
    assert requests[0].model == "claude-haiku-4-5"
    assert all(r.stream and r.model == "claude-sonnet-4-6" for r in requests[1:])
    assert len(requests) == total  # the plan (with beat 1), then beats 2..N
    recorded = runs(db_url, lesson_id)
    assert [r["model"] for r in recorded] == ["haiku-4-5"] + ["sonnet-4-6"] * (total - 1)
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 for r in recorded)
    assert all(r["status"] == "ok" and r["trace_id"].startswith("req_") for r in recorded)
    screened = [r for r in fake_anthropic.requests if r.system == MODERATION_SYSTEM]
    assert screened, "the student's input was not screened"
    assert all(r.model == "claude-haiku-4-5" and not r.stream for r in screened)
    costs = events[-1].data["model_costs"]
    assert set(costs) == {"haiku", "sonnet"}  # by family, as contracts §4 shows
    assert costs["sonnet"] > 0
    total = sum(r["cost_usd"] for r in runs(db_url, lesson_id))
    assert sum(costs.values()) == pytest.approx(total, abs=1e-4)


def test_mid_stream_overload_falls_back_to_the_fast_tier(
    server: str, db_url: str, fake_anthropic: FakeAnthropic
) -> None:
    with client_for(server) as client:
        lesson_id = client.post("/v1/plan", json=body_with("topic", "Tides")).json()["lesson_id"]
        fake_anthropic.script_teaching(
            StreamErrorReply(deltas=('{"title": "Tides", "body": "The moon pulls ', "the sea"))
        )
        events = named(read_stream(client, lesson_id).events)
    assert events[-1].event == "lesson_complete"
    beat2 = [e.data for e in events if e.event == "beat_partial" and e.data["ord"] == 2]
    assert beat2[0]["content_delta"].startswith("The moon pulls")
    assert any(p.get("reset") for p in beat2)  # the retry restarted the beat
    assert [e.data["ord"] for e in events if e.event == "beat_complete"].count(2) == 1
    requests = fake_anthropic.teaching_requests
    assert requests[2].model == "claude-haiku-4-5"  # the fallback for beat 2
    failed = [r for r in runs(db_url, lesson_id) if r["status"] != "ok"]
    assert [(r["model"], r["error_code"], r["beat_ord"]) for r in failed] == [
        ("sonnet-4-6", "overloaded_error", 2)
    ]
    completed = [p["ord"] for t, p in beat_events(db_url, lesson_id) if t == "beat.completed"]
    assert completed == sorted(set(completed))


def test_rate_limit_waits_and_retries(
    server: str, db_url: str, fake_anthropic: FakeAnthropic
) -> None:
    with client_for(server) as client:
        lesson_id = client.post("/v1/plan", json=body_with("topic", "Friction")).json()["lesson_id"]
        # Two 429s: the SDK's own retry takes the first, the lesson's retry policy the second.
        fake_anthropic.script_teaching(rate_limited(1), rate_limited(1))
        events = named(read_stream(client, lesson_id).events)
    assert events[-1].event == "lesson_complete"
    limited = [r for r in runs(db_url, lesson_id) if r["status"] == "rate_limited"]
    assert len(limited) == 1
    assert limited[0]["error_code"] == "rate_limit_error"


def test_plan_rate_limited_answers_with_retry_after(
    server: str, db_url: str, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script_teaching(rate_limited(2), rate_limited(2))
    with client_for(server) as client:
        r = client.post("/v1/plan", json=body_with("topic", "Buoyancy"))
    assert r.status_code == 503
    body = r.json()
    assert body["code"] == "rate_limited"
    assert body["retry_after_ms"] == 2000
    assert body["recoverable"] is True
    assert [run["status"] for run in runs(db_url)] == ["rate_limited"]
