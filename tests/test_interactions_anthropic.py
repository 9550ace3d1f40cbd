"""Ask, attempt and whiteboard on the anthropic provider, against the local fake Messages API."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import psycopg
import pytest

from commands.providers.prompts import DRAWING_SYSTEM, GRADE_SYSTEM
from tests.conftest import make_settings
from tests.fakes.anthropic_server import FakeAnthropic, TextReply, image_blocks, server_error
from tests.live import serve_app
from tests.sse import read_stream
from tests.test_interactions_api import png
from tests.test_lessons_anthropic import runs
from tests.test_lessons_api import body_with
from tests.test_lessons_flow import client_for


@pytest.fixture
def server(db_url: str, fake_anthropic: FakeAnthropic) -> Iterator[str]:
    settings = make_settings(
        provider="anthropic",
        anthropic_api_key="sk-test",
        anthropic_base_url=fake_anthropic.base_url,
        beat_partial_ms=50,  # as in production, partials are coalesced (500 ms there)
        sse_heartbeat_s=1.0,
    )
    with serve_app(settings, db_url) as base_url:
        yield base_url


def test_ask_attempt_and_whiteboard_on_the_messages_api(
    server: str, db_url: str, fake_anthropic: FakeAnthropic
) -> None:
    with client_for(server) as client:
        body = body_with("topic", "Kepler's laws")
        body["intent"]["advanced"]["outputs"] = []  # no make-me call to take the script
        r = client.post("/v1/plan", json=body)
        assert r.status_code == 200, r.text
        lesson_id = r.json()["lesson_id"]
        assert read_stream(client, lesson_id).closed_by_server

        # ask: the fast tier answers in the context of the plan and the beat.
        fake_anthropic.script_teaching(TextReply("Because the orbit is an **ellipse**."))
        r = client.post(
            f"/v1/lesson/{lesson_id}/ask", json={"question": "Why ellipses?", "beat_ord": 2}
        )
        assert r.status_code == 200, r.text
        assert r.json()["answer"] == {
            "text": "Because the orbit is an **ellipse**.",
            "narration_text": "Because the orbit is an ellipse.",
        }
        asked = fake_anthropic.teaching_requests[-1]
        sent = json.loads(asked.messages[0]["content"])
        assert (sent["task"], sent["ord"], sent["question"]) == ("ask", 2, "Why ellipses?")
        assert sent["plan"]["beats"]

        # attempt: a free answer is graded by the fast tier's JSON verdict.
        lesson = client.get(f"/v1/lesson/{lesson_id}").json()
        problem_beat = next(b for b in lesson["beats"] if b["kind"] == "problem")
        fake_anthropic.script_teaching(
            TextReply('{"verdict": "partial", "feedback": "Close: mind the focus."}')
        )
        r = client.post(
            f"/v1/lesson/{lesson_id}/attempt",
            json={"beat_ord": problem_beat["ord"], "answer": "the sun is at the centre"},
        )
        assert r.status_code == 200, r.text
        assert (r.json()["verdict"], r.json()["feedback"]) == ("partial", "Close: mind the focus.")
        graded = fake_anthropic.teaching_requests[-1]
        assert graded.system == GRADE_SYSTEM
        assert graded.model == "claude-haiku-4-5"
        sent = json.loads(graded.messages[0]["content"])
        assert sent["student_answer"] == "the sun is at the centre"
        assert sent["problem"]["answer"] == problem_beat["content_json"]["problem"]["answer"]

        # whiteboard: the drawing goes as an image block, the note as a text block.
        drawing = png(5000)
        r = client.post(
            f"/v1/lesson/{lesson_id}/whiteboard",
            json={"image": base64.b64encode(drawing).decode(), "text": "my orbit sketch"},
        )
        assert r.status_code == 200, r.text
        assert "PNG" in r.json()["comment"]
        drawn = fake_anthropic.teaching_requests[-1]
        assert drawn.system == DRAWING_SYSTEM
        [image] = image_blocks(drawn)
        assert image["source"] == {
            "type": "base64",
            "media_type": "image/png",
            "data": base64.b64encode(drawing).decode(),
        }
        note = next(b for b in drawn.messages[0]["content"] if b["type"] == "text")
        assert json.loads(note["text"])["note"] == "my orbit sketch"

    purposes = [run["purpose"] for run in runs(db_url, lesson_id)]
    assert purposes[-3:] == ["ask", "attempt", "whiteboard"]
    assert all(run["model"] == "haiku-4-5" for run in runs(db_url, lesson_id)[-3:])


def calls_of(db_url: str, trace_id: str) -> list[tuple[str, str | None, bool]]:
    """(type, model run purpose, in the lesson's order) of a request's events, in order."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT type, payload_json->>'purpose', lesson_seq IS NOT NULL FROM events"
            " WHERE metadata_json->>'trace_id' = %s AND type <> 'error' ORDER BY insert_no",
            (trace_id,),
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def test_an_ask_records_its_moderation_runs_with_the_answer_or_on_its_way_out(
    server: str, db_url: str, fake_anthropic: FakeAnthropic
) -> None:
    allowed = TextReply(json.dumps({"allowed": True, "category": None}))
    with client_for(server) as client:
        body = body_with("topic", "Kepler's laws")
        body["intent"]["advanced"]["outputs"] = []
        r = client.post("/v1/plan", json=body)
        assert r.status_code == 200, r.text
        lesson_id = r.json()["lesson_id"]
        ask = f"/v1/lesson/{lesson_id}/ask"

        # Answered: both moderation runs go into the interaction's own append, first.
        r = client.post(ask, json={"question": "Why ellipses?"})
        assert r.status_code == 200, r.text
        assert calls_of(db_url, r.json()["trace_id"]) == [
            ("model_run.recorded", "moderation", False),
            ("model_run.recorded", "moderation", False),
            ("model_run.recorded", "ask", True),
            ("interaction.recorded", None, True),
        ]

        # The answer is refused by output moderation: every call is recorded all the same.
        fake_anthropic.script_teaching(TextReply("Because of the orbit."))
        fake_anthropic.script(
            allowed, TextReply(json.dumps({"allowed": False, "category": "csam"}))
        )
        r = client.post(ask, json={"question": "Why orbits?"})
        assert r.json()["code"] == "refused", r.text
        assert sorted(calls_of(db_url, r.json()["trace_id"])) == [
            ("model_run.recorded", "ask", False),
            ("model_run.recorded", "moderation", False),
            ("model_run.recorded", "moderation", False),
            ("safety.refused", None, False),
        ]

        # The model call fails: the question's moderation run is recorded with its runs.
        fake_anthropic.script_teaching(server_error(), server_error())
        fake_anthropic.script(allowed)
        r = client.post(ask, json={"question": "Why not circles?"})
        assert r.json()["code"] == "model_unavailable", r.text
        calls = calls_of(db_url, r.json()["trace_id"])
        assert ("model_run.recorded", "moderation", False) in calls
        assert ("model_run.recorded", "ask", False) in calls
        assert all(t != "interaction.recorded" for t, _, _ in calls)
    assert fake_anthropic.unused_replies == 0


def test_adjust_revises_the_plan_on_the_fast_tier(
    server: str, db_url: str, fake_anthropic: FakeAnthropic
) -> None:
    with client_for(server) as client:
        lesson_id = client.post("/v1/plan", json=body_with("topic", "Tides")).json()["lesson_id"]
        stream = read_stream(client, lesson_id, stop=lambda evs: evs[-1].event == "plan_ready")
        assert stream.status == 200
        r = client.post(
            f"/v1/lesson/{lesson_id}/adjust",
            json={"level": "harder", "axes": ["rigour"], "current_beat_ord": 1},
        )
        if r.status_code == 409:
            pytest.fail(f"the lesson finished before the adjust: {r.text}")
        assert r.status_code == 200, r.text
        revise = next(q for q in fake_anthropic.teaching_requests if q.task == "revise")
        sent = json.loads(revise.messages[0]["content"])
        assert sent["adjustment"]["level"] == "grad"
        assert sent["adjustment"]["axes"] == ["rigour"]
        assert r.json()["plan"]["beats"][1]["title"].startswith("Going deeper")
