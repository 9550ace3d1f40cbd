"""Ask, attempt, adjust, plan iterate and whiteboard over real HTTP against a real database."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

import commands as commands_module
from eventstore.queries import load_queries
from tests.conditions import wait_for
from tests.conftest import make_settings
from tests.live import serve_app
from tests.sse import read_stream
from tests.test_lessons_flow import PLAN_BODY, client_for


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    settings = make_settings(offline_pace_ms=0, beat_partial_ms=0, limit_ask_anon_per_hour=10)
    with serve_app(settings, db_url) as base_url:
        yield base_url


@pytest.fixture
def paced_server(db_url: str) -> Iterator[str]:
    """Offline tutor at 3 ms a token: a lesson streams for a few seconds."""
    settings = make_settings(offline_pace_ms=3, beat_partial_ms=30, sse_heartbeat_s=1.0)
    with serve_app(settings, db_url) as base_url:
        yield base_url


def png(size: int = 0) -> bytes:
    """A valid 1×1 PNG, padded with a private chunk to about `size` bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
    if size:
        body += chunk(b"prVt", b"\x00" * max(size - 80, 0))
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def new_lesson(client: httpx.Client, *, finished: bool = False) -> str:
    r = client.post("/v1/plan", json=PLAN_BODY)
    assert r.status_code == 200, r.text
    lesson_id: str = r.json()["lesson_id"]
    if finished:
        assert read_stream(client, lesson_id).closed_by_server
        wait_for(lambda: client.get(f"/v1/lesson/{lesson_id}").json()["status"] == "complete")
    return lesson_id


def events_of(db_url: str, lesson_id: str) -> list[tuple[str, dict[str, Any]]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            # Personal fields live in the vault (eventstore/personal.py): merged back here.
            "SELECT e.type, e.payload_json || coalesce(p.fields, '{}') FROM events AS e"
            " LEFT JOIN personal_data AS p ON p.event_id = e.id"
            " WHERE e.lesson_id = %s ORDER BY e.insert_no",
            (lesson_id,),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def beat_of_kind(client: httpx.Client, lesson_id: str, kind: str) -> dict[str, Any]:
    lesson = client.get(f"/v1/lesson/{lesson_id}").json()
    return next(b for b in lesson["beats"] if b["kind"] == kind and b["status"] == "ready")


# ---- ask -------------------------------------------------------------------------------------


def test_ask_answers_in_context_and_is_listed(server: str, db_url: str) -> None:
    with client_for(server) as client:
        lesson_id = new_lesson(client)
        r = client.post(f"/v1/lesson/{lesson_id}/ask", json={"question": "Why is k constant?"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"ok", "interaction_id", "answer", "audio_url", "trace_id"}
        assert body["audio_url"] is None
        assert "Why is k constant?" in body["answer"]["text"]
        assert "*" not in body["answer"]["narration_text"]
        lesson = client.get(f"/v1/lesson/{lesson_id}").json()
    [listed] = lesson["interactions"]
    assert listed["interaction_id"] == body["interaction_id"]
    assert listed["type"] == "ask"
    assert listed["beat_ord"] == 1
    assert listed["payload"] == {"question": "Why is k constant?"}
    assert listed["response"]["text"] == body["answer"]["text"]
    assert listed["created_at"]
    types = [t for t, p in events_of(db_url, lesson_id)]
    assert types[-2:] == ["model_run.recorded", "interaction.recorded"]
    with psycopg.connect(db_url) as conn:
        wait_for(
            lambda: conn.execute(
                "SELECT type FROM interactions WHERE id = %s", (body["interaction_id"],)
            ).fetchone(),
            what="the interactions projection",
        )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"question": ""}, "question"),
        ({"question": "   "}, "question"),
        ({"question": "x" * 2001}, "question"),
        ({"question": 3}, "question"),
        ({}, "question"),
        ({"question": "ok?", "beat_ord": 99}, "beat_ord"),
        ({"question": "ok?", "beat_ord": 0}, "beat_ord"),
        ({"question": "ok?", "mood": "happy"}, "mood"),
    ],
)
def test_bad_ask_names_the_field_and_appends_nothing(
    server: str, db_url: str, body: dict[str, Any], field: str
) -> None:
    with client_for(server) as client:
        lesson_id = new_lesson(client)
        before = events_of(db_url, lesson_id)
        r = client.post(f"/v1/lesson/{lesson_id}/ask", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_input"
    assert r.json()["field"] == field
    assert r.json()["trace_id"]
    assert events_of(db_url, lesson_id) == before


def test_ask_refusals_and_ownership(server: str, db_url: str) -> None:
    with client_for(server) as client, client_for(server) as stranger:
        lesson_id = new_lesson(client)
        r = client.post(f"/v1/lesson/{lesson_id}/ask", json={"question": "how to kill myself"})
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "refused"
        types = [t for t, _ in events_of(db_url, lesson_id)]
        assert "safety.refused" in types
        assert "interaction.recorded" not in types
        for path, body in (
            ("ask", {"question": "hi?"}),
            ("attempt", {"beat_ord": 1, "option": 0}),
            ("adjust", {"level": "easier"}),
            ("whiteboard", {"image": b64(png())}),
        ):
            r = stranger.post(f"/v1/lesson/{lesson_id}/{path}", json=body)
            assert r.status_code == 404, (path, r.text)
            assert r.json()["code"] == "not_found"


def test_ask_limit_is_exact_under_30_concurrent_asks(server: str, db_url: str) -> None:
    with client_for(server) as client:
        lesson_id = new_lesson(client)

        def ask(i: int) -> int:
            r = client.post(f"/v1/lesson/{lesson_id}/ask", json={"question": f"question {i}?"})
            return r.status_code

        with ThreadPoolExecutor(30) as pool:
            statuses = list(pool.map(ask, range(30)))
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 20, statuses
    answered = [t for t, _ in events_of(db_url, lesson_id) if t == "interaction.recorded"]
    assert len(answered) == 10


def test_spend_cap_refuses_asks(db_url: str) -> None:
    with (
        serve_app(make_settings(offline_pace_ms=0), db_url) as open_url,
        client_for(open_url) as client,
    ):
        lesson_id = new_lesson(client)
        cookies = client.cookies
    with (
        serve_app(make_settings(over_quota_forced=True), db_url) as capped_url,
        httpx.Client(base_url=capped_url, cookies=cookies) as client,
    ):
        r = client.post(f"/v1/lesson/{lesson_id}/ask", json={"question": "still there?"})
    assert r.status_code == 429, r.text
    assert r.json()["code"] == "over_quota"
    assert "interaction.recorded" not in [t for t, _ in events_of(db_url, lesson_id)]


# ---- attempt ---------------------------------------------------------------------------------


def test_attempts_by_option_and_free_answer(server: str, db_url: str) -> None:
    with client_for(server) as client:
        lesson_id = new_lesson(client, finished=True)
        test_beat = beat_of_kind(client, lesson_id, "test")
        problem = test_beat["content_json"]["problem"]
        right = problem["choices"].index(problem["answer"])
        url = f"/v1/lesson/{lesson_id}/attempt"
        r = client.post(url, json={"beat_ord": test_beat["ord"], "option": right})
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"ok", "interaction_id", "verdict", "feedback", "trace_id"}
        assert r.json()["verdict"] == "correct"
        wrong = problem["choices"][(right + 1) % len(problem["choices"])]
        r = client.post(url, json={"beat_ord": test_beat["ord"], "option": wrong})
        assert r.json()["verdict"] == "incorrect"
        runs_before = [t for t, _ in events_of(db_url, lesson_id)].count("model_run.recorded")
        # A free answer is graded by the fast tier (a finished lesson still takes attempts).
        problem_beat = beat_of_kind(client, lesson_id, "problem")
        expected = problem_beat["content_json"]["problem"]["answer"]
        r = client.post(url, json={"beat_ord": problem_beat["ord"], "answer": expected.upper()})
        assert r.json()["verdict"] == "correct", r.text
        r = client.post(url, json={"beat_ord": problem_beat["ord"], "answer": "bananas"})
        assert r.json()["verdict"] == "incorrect"
        concept = beat_of_kind(client, lesson_id, "concept")
        for body, field in (
            ({"beat_ord": concept["ord"], "answer": "x"}, "beat_ord"),
            ({"beat_ord": problem_beat["ord"], "option": 0}, "option"),
            ({"beat_ord": test_beat["ord"], "option": 9}, "option"),
            ({"beat_ord": test_beat["ord"], "option": 0, "answer": "x"}, "answer"),
            ({"beat_ord": test_beat["ord"]}, "answer"),
            ({"option": 0}, "beat_ord"),
        ):
            r = client.post(url, json=body)
            assert (r.status_code, r.json().get("field")) == (400, field), (body, r.text)
        verdicts = [
            i["response"]["verdict"]
            for i in client.get(f"/v1/lesson/{lesson_id}").json()["interactions"]
            if i["type"] == "attempt"
        ]
    assert verdicts == ["correct", "incorrect", "correct", "incorrect"]
    runs = [t for t, _ in events_of(db_url, lesson_id)].count("model_run.recorded")
    assert runs == runs_before + 2  # options cost no model call


# ---- adjust and iterate ----------------------------------------------------------------------


def revisions(db_url: str, lesson_id: str) -> list[dict[str, Any]]:
    return [p for t, p in events_of(db_url, lesson_id) if t == "plan.revised"]


def test_adjust_is_idempotent_and_refused_when_it_cannot_apply(
    paced_server: str, db_url: str
) -> None:
    server = paced_server
    with client_for(server) as client:
        draft = new_lesson(client)
        r = client.post(f"/v1/lesson/{draft}/adjust", json={"level": "easier"})
        assert r.status_code == 409, r.text
        r = httpx.post(f"{server}/v1/lesson/{draft}/adjust", json={"level": "easier"})
        assert r.status_code in {400, 401}  # no Idempotency-Key (nor session): refused

        lesson_id = new_lesson(client)
        stream = read_stream(client, lesson_id, stop=lambda evs: evs[-1].event == "beat_partial")
        assert stream.events[-1].data["ord"] == 2
        key = {"Idempotency-Key": "adjust-once"}
        body = {"level": "easier", "feedback": "slower please", "current_beat_ord": 1}
        first = client.post(f"/v1/lesson/{lesson_id}/adjust", json=body, headers=key)
        again = client.post(f"/v1/lesson/{lesson_id}/adjust", json=body, headers=key)
        assert first.status_code == 200, first.text
        assert again.json() == first.json()
        assert first.json()["revision_num"] == 2
        assert first.json()["current_beat_ord"] == 1
        assert [r["revision_num"] for r in revisions(db_url, lesson_id)] == [1, 2]
        adjusted = revisions(db_url, lesson_id)[-1]
        assert adjusted["triggered_by"] == "adjust"
        assert adjusted["feedback_text"] == "slower please"
        assert adjusted["level"] == "hs"
        assert adjusted["superseded"] == list(range(2, len(adjusted["plan"]["beats"]) + 1))
        assert read_stream(client, lesson_id).closed_by_server
        done = wait_for(
            lambda: (
                (lesson := client.get(f"/v1/lesson/{lesson_id}").json())["status"] == "complete"
                and lesson
            )
        )
        assert done["revision_num"] == 2
        assert all(b["status"] == "ready" for b in done["beats"])
        r = client.post(f"/v1/lesson/{lesson_id}/adjust", json={"level": "harder"})
        assert r.status_code == 409
        assert r.json()["code"] == "conflict"
        bad_bodies: list[tuple[dict[str, Any], str]] = [
            ({"level": "wizard"}, "level"),
            ({"axes": "pace"}, "axes"),
            ({"regenerate_beat": 2, "feedback": "x"}, "feedback"),
            ({"feedback": "y" * 2001}, "feedback"),
        ]
        for bad, field in bad_bodies:
            r = client.post(f"/v1/lesson/{draft}/adjust", json=bad)
            assert (r.status_code, r.json().get("field")) == (400, field), bad


def test_iterate_a_draft_plan_then_conflict_once_started(server: str, db_url: str) -> None:
    with client_for(server) as client:
        lesson_id = new_lesson(client)
        r = client.post("/v1/plan", json={"lesson_id": lesson_id, "feedback": "more examples"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"ok", "lesson_id", "plan", "beat1", "trace_id"}
        assert body["lesson_id"] == lesson_id
        assert "more examples" in body["beat1"]["content_json"]["body"]
        lesson = client.get(f"/v1/lesson/{lesson_id}").json()
        assert lesson["revision_num"] == 2
        assert lesson["beats"][0]["id"] == body["beat1"]["id"]
        assert [i["type"] for i in lesson["interactions"]] == ["iterate"]
        r = client.post("/v1/plan", json={"lesson_id": lesson_id, "topic": "other"})
        assert (r.status_code, r.json()["field"]) == (400, "topic")
        assert read_stream(client, lesson_id).closed_by_server
        r = client.post("/v1/plan", json={"lesson_id": lesson_id, "chip": "shorter"})
        assert r.status_code == 409, r.text
    assert revisions(db_url, lesson_id)[-1]["triggered_by"] == "iterate"


# ---- whiteboard ------------------------------------------------------------------------------


def test_whiteboard_comments_on_a_drawing(server: str, db_url: str) -> None:
    with client_for(server) as client:
        lesson_id = new_lesson(client)
        url = f"/v1/lesson/{lesson_id}/whiteboard"
        big = png(1_500_000)  # far over the default 64 KiB body limit, under 2 MB
        r = client.post(url, json={"image": b64(big), "text": "my spring diagram"})
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"ok", "interaction_id", "comment", "trace_id"}
        assert "PNG" in r.json()["comment"]
        before = events_of(db_url, lesson_id)
        for body, field in (
            ({"image": b64(b"GIF89a" + b"\x00" * 20)}, "image"),
            ({"image": "not base64!"}, "image"),
            ({"image": b64(png(2 * 1024 * 1024 + 10))}, "image"),
            ({"text": "no image"}, "image"),
            ({"image": b64(png()), "beat_ord": 42}, "beat_ord"),
        ):
            r = client.post(url, json=body)
            assert (r.status_code, r.json().get("field")) == (400, field), r.text[:200]
        assert events_of(db_url, lesson_id) == before
        r = client.post(url, json={"image": b64(png()), "text": "how to kill myself"})
        assert r.json()["code"] == "refused"
        # Other routes keep the default limit.
        r = client.post(f"/v1/lesson/{lesson_id}/ask", json={"question": "x" * 70_000})
        assert r.status_code == 413
    [drawn] = [p for t, p in events_of(db_url, lesson_id) if t == "interaction.recorded"]
    assert drawn["type"] == "whiteboard"
    assert drawn["payload"]["media_type"] == "image/png"
    assert drawn["payload"]["bytes"] == len(big)


def test_the_students_beat_comes_from_their_last_beat_advance(server: str) -> None:
    with client_for(server) as client:
        lesson_id = new_lesson(client, finished=True)
        moves = [
            {
                "type": "beat.advance",
                "ts": 1_780_000_000_000 + i,
                "lesson_id": lesson_id,
                "payload": {"from_ord": i + 1, "to_ord": i + 2},
            }
            for i in range(2)
        ]
        r = client.post("/v1/event", json={"events": moves})
        assert r.status_code == 202, r.text
        r = client.post(f"/v1/lesson/{lesson_id}/ask", json={"question": "where am I?"})
        assert r.status_code == 200, r.text
        listed = client.get(f"/v1/lesson/{lesson_id}").json()["interactions"]
        [asked] = [i for i in listed if i["type"] == "ask"]  # make-me outputs are listed too
    assert asked["beat_ord"] == 3


def test_where_the_student_is_is_found_without_scanning_the_log(db_url: str) -> None:
    """advanced_to reads one lesson's beat.advance rows down their index, however many
    events the log holds (it was a scan of every event: 34 ms at 500,000)."""
    queries = load_queries(Path(commands_module.__file__).parent / "sql" / "interactions.sql")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (id, session_id, lesson_id, type, payload_json, metadata_json)"
            " SELECT 'e' || g, 's' || (g % 200), 'L' || (g % 200),"
            "        CASE WHEN g % 3 = 0 THEN 'beat.advance' ELSE 'ask.fired' END,"
            "        jsonb_build_object('from_ord', 1, 'to_ord', 1 + g % 5), '{}'"
            " FROM generate_series(1, 20000) AS g"
        )
        conn.execute("ANALYZE events")
        params = {"lesson_id": "L3", "session_id": "s3", "user_id": "u3"}
        assert conn.execute(queries["advanced_to"], params).fetchone() == (
            4,
        )  # the last, e19803: 1 + 19803 % 5
        plan = "\n".join(
            row[0] for row in conn.execute("EXPLAIN " + queries["advanced_to"], params).fetchall()
        )
    assert "idx_events_beat_advance" in plan
    assert "Seq Scan" not in plan
