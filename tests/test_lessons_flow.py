"""The lesson flow over real HTTP against a real database: plan → stream → complete."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.live import serve_app, student_client
from tests.sse import read_stream

PLAN_BODY: dict[str, Any] = {
    "subject": "physics",
    "topic": "Hooke's law & SHM",
    "intent": {
        "why": "homework",
        "level": "first time",
        "time": "30 min",
        "style": "problem-driven",
        "free_text": "Skip Lagrangian, focus on the physical intuition.",
        "advanced": {
            "pace": "balanced",
            "tone": "friendly",
            "outputs": ["flashcards"],
            "anchor": "none",
        },
    },
}


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    settings = make_settings(offline_pace_ms=0, beat_partial_ms=0, sse_heartbeat_s=1.0)
    with serve_app(settings, db_url) as base_url:
        yield base_url


@contextmanager
def client_for(base_url: str) -> Iterator[httpx.Client]:
    """A client with a fresh anonymous session."""
    with student_client(base_url, timeout=30) as client:
        assert client.post("/v1/session").status_code == 201
        yield client


def test_plan_stream_complete(server: str) -> None:
    with client_for(server) as client:
        r = client.post("/v1/plan", json=PLAN_BODY, headers={"Idempotency-Key": "flow-1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"ok", "lesson_id", "plan", "beat1", "trace_id"}
        assert body["plan"]["summary"].startswith("30 min · undergrad")
        beats = body["plan"]["beats"]
        assert [b["ord"] for b in beats] == list(range(1, len(beats) + 1))
        assert set(body["beat1"]) == {"id", "content_json", "narration_text", "audio_url"}
        lesson_id = body["lesson_id"]

        result = read_stream(client, lesson_id)
        assert result.status == 200
        assert result.headers["content-type"].startswith("text/event-stream")
        assert result.headers["cache-control"] == "no-store"
        assert result.headers["x-accel-buffering"] == "no"
        events = result.events
        assert events[0].retry is not None
        named = [e for e in events if e.event not in {"retry", "heartbeat"}]
        assert named[0].event == "plan_ready"
        assert named[0].data["total_beats"] == len(beats)
        assert named[-1].event == "lesson_complete"
        completes = [e.data["ord"] for e in named if e.event == "beat_complete"]
        assert completes == list(range(2, len(beats) + 1))
        assert any(e.event == "beat_partial" for e in named)
        ids = [int(e.id.rsplit("-", 1)[1]) for e in named if e.id]
        assert ids == sorted(set(ids))
        assert len(ids) == len(named)

        lesson = client.get(f"/v1/lesson/{lesson_id}").json()
        assert lesson["status"] == "complete"
        assert all(b["status"] == "ready" for b in lesson["beats"])

        again = read_stream(client, lesson_id, named[-1].id)
        assert again.status == 204
