"""Lesson endpoints over real HTTP: validation, ownership, cache, abandon, reconnects."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conditions import wait_for
from tests.conftest import make_settings
from tests.live import serve_app
from tests.sse import Sse, read_stream
from tests.test_lessons_flow import PLAN_BODY, client_for


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    settings = make_settings(offline_pace_ms=0, beat_partial_ms=0, sse_heartbeat_s=1.0)
    with serve_app(settings, db_url) as base_url:
        yield base_url


@pytest.fixture
def slow_server(db_url: str) -> Iterator[str]:
    """Offline tutor at 8 ms a token: a lesson takes seconds, so it can be interrupted."""
    settings = make_settings(offline_pace_ms=8, beat_partial_ms=100, sse_heartbeat_s=1.0)
    with serve_app(settings, db_url) as base_url:
        yield base_url


def body_with(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(PLAN_BODY)
    *parents, last = path.split(".")
    target = body
    for p in parents:
        target = target[p]
    target[last] = value
    return body


def log_types(db_url: str, lesson_id: str) -> list[str]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT type FROM events WHERE lesson_id = %s ORDER BY lesson_seq", (lesson_id,)
        ).fetchall()
    return [r[0] for r in rows]


def has_named(count: int, events: list[Sse]) -> bool:
    return len(named(events)) >= count


def named(events: list[Sse]) -> list[Sse]:
    return [e for e in events if e.event not in {"retry", "heartbeat"}]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("subject", "Physics!", "subject"),
        ("topic", "", "topic"),
        ("topic", "x" * 201, "topic"),
        ("intent.level", "wizard", "intent.level"),
        ("intent.time", "forever", "intent.time"),
        ("intent.time", "500 min", "intent.time"),
        ("intent.why", 3, "intent.why"),
        ("intent.style", "loud", "intent.style"),
        ("intent.free_text", "y" * 2001, "intent.free_text"),
        ("intent.advanced.pace", "warp", "intent.advanced.pace"),
        ("intent.advanced.tone", "rude", "intent.advanced.tone"),
        ("intent.advanced.outputs", ["flashcards", "poster"], "intent.advanced.outputs[1]"),
        ("intent.advanced.anchor", "moon", "intent.advanced.anchor"),
        ("intent.advanced.colour", "red", "intent.advanced.colour"),
        ("intent.mood", "happy", "intent.mood"),
        ("extra", 1, "extra"),
    ],
)
def test_invalid_plan_names_the_field(
    server: str, db_url: str, path: str, value: Any, field: str
) -> None:
    with client_for(server) as client:
        r = client.post("/v1/plan", json=body_with(path, value))
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_input"
    assert r.json()["field"] == field
    with psycopg.connect(db_url) as conn:
        # Only the answer's own `error` event: nothing about a lesson was written.
        count = "SELECT count(*) FROM events WHERE type <> 'error'"
        assert conn.execute(count).fetchone() == (0,)


def test_free_form_subject_and_minimal_intent(server: str) -> None:
    with client_for(server) as client:
        r = client.post("/v1/plan", json={"subject": "origami_folding", "topic": "Cranes"})
        assert r.status_code == 200, r.text
        lesson = client.get(f"/v1/lesson/{r.json()['lesson_id']}").json()
    assert lesson["subject"] == "origami_folding"
    assert lesson["level"] == "ug"
    assert lesson["status"] == "draft"


def test_identical_plan_is_served_from_the_cache(server: str, db_url: str) -> None:
    with client_for(server) as client:
        first = client.post("/v1/plan", json=body_with("topic", "Ohm's law")).json()
        second = client.post("/v1/plan", json=body_with("topic", "ohm's   LAW")).json()
    assert second["plan"] == first["plan"]
    assert second["lesson_id"] != first["lesson_id"]
    assert "model_run.recorded" in log_types(db_url, first["lesson_id"])
    types = log_types(db_url, second["lesson_id"])
    assert "cache.hit" in types
    assert "model_run.recorded" not in types
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT hits, ttl_at - created_at FROM cache").fetchall()
    assert len(row) == 1
    assert row[0][0] == 1
    assert row[0][1].days == 7


def test_other_users_lesson_and_bad_cursor(server: str) -> None:
    with client_for(server) as owner, client_for(server) as stranger:
        lesson_id = owner.post("/v1/plan", json=PLAN_BODY).json()["lesson_id"]
        for path in ("", "/stream"):
            r = stranger.get(f"/v1/lesson/{lesson_id}{path}")
            assert r.status_code == 404
            assert r.headers["content-type"] == "application/json"
            assert r.json()["code"] == "not_found"
        assert stranger.post(f"/v1/lesson/{lesson_id}/abandon").status_code == 404
        assert owner.get("/v1/lesson/01NOSUCHLESSON/stream").status_code == 404
        for bad in ("garbage", f"{lesson_id}-evt-x", "01OTHER-evt-00003", f"{lesson_id}-evt-99999"):
            r = owner.get(f"/v1/lesson/{lesson_id}/stream", headers={"Last-Event-ID": bad})
            assert r.status_code == 400, bad
            assert r.json()["code"] == "invalid_input"
        r = owner.get(f"/v1/lesson/{lesson_id}/stream", params={"last_event_id": "nope"})
        assert r.status_code == 400
        assert r.json()["field"] == "last_event_id"


def test_abandon_stops_generation(slow_server: str, db_url: str) -> None:
    with client_for(slow_server) as client:
        lesson_id = client.post("/v1/plan", json=PLAN_BODY).json()["lesson_id"]
        seen = read_stream(
            client, lesson_id, stop=lambda evs: any(e.event == "beat_partial" for e in evs)
        )
        r = client.post(f"/v1/lesson/{lesson_id}/abandon")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "abandoned"
        # The stream ends with an error saying so.
        rest = read_stream(client, lesson_id, named(seen.events)[-1].id)
        last = named(rest.events)[-1]
        assert last.event == "error"
        assert last.data["recoverable"] is False
        assert "abandoned" in last.data["message"]
        assert rest.closed_by_server
        # Nothing is appended after the abandon (the worker stopped at once).
        types = log_types(db_url, lesson_id)
        assert types[-1] == "lesson.abandoned"
        assert read_stream(client, lesson_id, last.id).status == 204
        assert client.post(f"/v1/lesson/{lesson_id}/abandon").status_code == 200
        assert log_types(db_url, lesson_id) == types


def full_replay(client: httpx.Client, lesson_id: str) -> list[Sse]:
    result = read_stream(client, lesson_id)
    assert result.closed_by_server
    return named(result.events)


def durable(events: list[Sse]) -> list[tuple[str, str | None, Any]]:
    return [
        (e.event, e.id, e.data)
        for e in events
        if e.event in {"plan_ready", "beat_complete", "lesson_complete"}
    ]


@pytest.fixture
def finished_lesson(server: str) -> Iterator[tuple[httpx.Client, str, list[Sse]]]:
    with client_for(server) as client:
        lesson_id = client.post("/v1/plan", json=PLAN_BODY).json()["lesson_id"]
        events = full_replay(client, lesson_id)
        yield client, lesson_id, events


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cuts=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=5))
def test_reconnect_anywhere_assembles_the_same_lesson(
    finished_lesson: tuple[httpx.Client, str, list[Sse]], cuts: list[int]
) -> None:
    """Drop the connection after k events, resume from the last id, again and again."""
    client, lesson_id, replay = finished_lesson
    received: list[Sse] = []
    last_id: str | None = None
    for k in cuts:
        result = read_stream(client, lesson_id, last_id, stop=partial(has_named, k))
        if result.status == 204:
            break
        received += named(result.events)
        last_id = received[-1].id if received else None
        if result.closed_by_server:
            break
    else:
        result = read_stream(client, lesson_id, last_id)
        if result.status == 200:
            received += named(result.events)
    seqs = [int(e.id.rsplit("-", 1)[1]) for e in received if e.id]
    assert len(seqs) == len(received)  # every event carries an id
    assert seqs == sorted(set(seqs))  # strictly increasing: nothing twice, in order
    assert durable(received) == durable(replay)
    assert read_stream(client, lesson_id, received[-1].id).status == 204


def test_live_reconnect_mid_beat(slow_server: str) -> None:
    """Reconnecting while beats generate: no duplicate, no gap in the durable events."""
    with client_for(slow_server) as client:
        lesson_id = client.post("/v1/plan", json=PLAN_BODY).json()["lesson_id"]
        received: list[Sse] = []
        last_id = None
        for k in (2, 5, 3, 7):
            part = read_stream(client, lesson_id, last_id, stop=partial(has_named, k))
            received += named(part.events)
            last_id = received[-1].id
        rest = read_stream(client, lesson_id, last_id)
        received += named(rest.events)
        seqs = [int(e.id.rsplit("-", 1)[1]) for e in received if e.id]
        assert seqs == sorted(set(seqs))
        assert durable(received) == durable(full_replay(client, lesson_id))
        lesson = wait_for(lambda: client.get(f"/v1/lesson/{lesson_id}").json())
        assert lesson["status"] == "complete"
