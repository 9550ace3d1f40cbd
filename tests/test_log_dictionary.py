"""Contracts §9 on every JSON log line: every key present, levels in §9's words, the
lesson and beat bound where known, model/cost_usd/cache on every line about a model call."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog

from eventstore.logconfig import CONTRACT_FIELDS, configure_logging
from tests.conftest import make_settings
from tests.live import serve_app, student_client
from tests.sse import read_stream
from tests.test_lessons_flow import PLAN_BODY

LEVELS = {"debug", "info", "warn", "error"}


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    yield stream
    structlog.reset_defaults()


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_carries_the_dictionary_through_a_whole_lesson(
    db_url: str, log_lines: io.StringIO
) -> None:
    settings = make_settings(offline_pace_ms=0, beat_partial_ms=0, log_level="info")
    with serve_app(settings, db_url) as base:
        with student_client(base, timeout=30) as first:
            assert first.post("/v1/session").status_code == 201
            plan = first.post("/v1/plan", json=PLAN_BODY).json()
            lesson_id = plan["lesson_id"]
            assert read_stream(first, lesson_id).events[-1].event == "lesson_complete"
            assert first.get(f"/v1/lesson/{lesson_id}").status_code == 200
        with student_client(base, timeout=30) as second:
            assert second.post("/v1/session").status_code == 201
            again = second.post("/v1/plan", json=PLAN_BODY).json()  # the plan cache
            assert second.post(f"/v1/lesson/{again['lesson_id']}/abandon").status_code == 200
    lines = parsed(log_lines)
    assert len(lines) > 20
    for line in lines:
        assert list(line)[: len(CONTRACT_FIELDS)] == list(CONTRACT_FIELDS), line
        assert line["level"] in LEVELS, line

    calls = [line for line in lines if line["msg"].startswith("model call")]
    assert calls
    for line in calls:
        assert line["model"] == "offline"
        assert isinstance(line["cost_usd"], float)
        assert line["cache"] in {"miss", "bypass"}
    beat_calls = [c for c in calls if c["purpose"] == "beat"]
    assert len(beat_calls) == len(plan["plan"]["beats"]) - 1  # beat 1 came with the plan
    for line in beat_calls:
        assert line["cache"] == "miss"
        assert line["lesson_id"] == lesson_id
        assert line["beat_id"] is not None
    assert {c["cache"] for c in calls if c["purpose"] == "moderation"} == {"bypass"}
    hits = [line for line in lines if line["msg"] == "cache hit"]
    assert {(h["cache"], h["lesson_id"]) for h in hits} >= {("hit", again["lesson_id"])}

    requests = {
        line["path"].split(" ")[0] + " " + line["path"].split("/")[-1]: line
        for line in lines
        if line["msg"] == "request"
    }
    assert requests["GET stream"]["lesson_id"] == lesson_id
    assert requests[f"GET {lesson_id}"]["lesson_id"] == lesson_id
    assert requests["POST abandon"]["lesson_id"] == again["lesson_id"]
    # A request that called a model carries the model and what the request spent.
    plan_line = next(
        line for line in lines if line["path"] == "POST /v1/plan" and line["msg"] == "request"
    )
    assert plan_line["model"] == "offline"
    assert plan_line["cost_usd"] is not None
    assert plan_line["cache"] == "miss"
    # A line about nothing in particular still has every key, null.
    session_line = next(
        line for line in lines if line["path"] == "POST /v1/session" and line["msg"] == "request"
    )
    assert session_line["lesson_id"] is None
    assert session_line["model"] is None


def test_levels_are_written_in_the_contracts_words(log_lines: io.StringIO) -> None:
    log = structlog.get_logger("test")
    log.warning("careful")
    log.error("broken")
    log.info("fine")
    log.debug("hidden at info")
    assert [(line["msg"], line["level"]) for line in parsed(log_lines)] == [
        ("careful", "warn"),
        ("broken", "error"),
        ("fine", "info"),
    ]
