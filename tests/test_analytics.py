"""POST /v1/event (client analytics), the `error` event of every non-2xx answer, and the
session lifecycle (idle, tab-close, sliding expiry)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from ulid import ULID

from commands.analytics import SHAPES, OwnedLessons, validate_event
from commands.errors import InvalidInput, NotFound
from eventstore.events import CLIENT_EVENT_TYPES, EVENT_CLASSES, LessonCreated
from eventstore.ids import new_id
from eventstore.store import EventStore
from tests.accounts_kit import eventually, plan, running, student
from tests.lesson_log import append_lesson, user_and_session
from web.error_events import Sampler

VALID: dict[str, dict[str, Any]] = {
    "session.start": {"referrer": "https://x.example", "ua": "Firefox", "viewport": "390x844"},
    "discovery.search": {"query": "springs", "source": "search_bar"},
    "lesson.invoke": {"subject": "physics", "topic": "springs", "source": "tile"},
    "setup.skip": {},
    "setup.submit": {"intent": {"why": "homework"}},
    "plan.shown": {"time_to_render_ms": 420},
    "plan.iterate": {"chip": "simpler", "free_text": "less maths"},
    "plan.locked": {"total_beats": 7},
    "beat.advance": {"from_ord": 2, "to_ord": 3},
    "ask.fired": {"beat_ord": 2, "q_chars": 40},
    "attempt.submit": {"beat_ord": 4, "verdict": "correct"},
    "adjust.applied": {"direction": "harder", "axes": ["depth", "pace"]},
    "visualize.fired": {"beat_ord": 2},
    "animate.fired": {"beat_ord": 2},
    "makeme.fired": {"output_type": "flashcards"},
    "lesson.complete": {"duration_ms": 600000},
    "lesson.abandon": {"last_beat_ord": 3},
}


def raw(type_: str, payload: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type_, "ts": "2026-11-29T10:00:00Z"}
    body["payload"] = VALID[type_] if payload is None else payload
    if SHAPES[type_].lesson:
        body["lesson_id"] = "01HZX5T6Y2C8P1Q9S3F4WJK7MA"
    return {**body, **extra}


@pytest.mark.parametrize("type_", sorted(CLIENT_EVENT_TYPES))
def test_each_client_type_takes_its_catalog_fields(type_: str) -> None:
    event = validate_event(0, raw(type_))
    assert event.type == type_
    assert {k: v for k, v in event.payload.items() if k != "client_ts"} == VALID[type_]


@pytest.mark.parametrize("type_", sorted(CLIENT_EVENT_TYPES))
def test_each_client_type_refuses_a_field_it_does_not_have(type_: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        validate_event(3, raw(type_, {**VALID[type_], "password": "x"}))
    assert raised.value.field == "events[3].payload.password"


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (raw("beat.advance", {"from_ord": 2}), "events[0].payload.to_ord"),
        (raw("beat.advance", {"from_ord": "2", "to_ord": 3}), "events[0].payload.from_ord"),
        (raw("ask.fired", {"beat_ord": True, "q_chars": 1}), "events[0].payload.beat_ord"),
        (
            raw("adjust.applied", {"direction": "sideways", "axes": []}),
            "events[0].payload.direction",
        ),
        (raw("adjust.applied", {"direction": "up", "axes": [1]}), "events[0].payload.axes[0]"),
        (raw("discovery.search", {"query": "x" * 2001}), "events[0].payload.query"),
        (raw("setup.submit", {"intent": "homework"}), "events[0].payload.intent"),
        ({**raw("plan.shown"), "lesson_id": None}, "events[0].lesson_id"),
        (raw("setup.skip", ts="yesterday"), "events[0].ts"),
        (raw("setup.skip", id="not-a-ulid"), "events[0].id"),
        ({"type": "setup.skip", "payload": {}}, "events[0].ts"),
        (raw("setup.skip", color="red"), "events[0].color"),
    ],
)
def test_a_bad_event_names_its_field(event: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        validate_event(0, event)
    assert raised.value.field == field


@pytest.mark.parametrize(
    "type_", [*sorted(set(EVENT_CLASSES) - CLIENT_EVENT_TYPES), "made.up", "lesson.erased"]
)
def test_server_side_types_cannot_be_sent(type_: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        validate_event(0, {"type": type_, "ts": 1, "payload": {}})
    assert raised.value.field == "events[0].type"


def stored(db_url: str, type_: str | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT id, type, lesson_id, lesson_seq, session_id FROM events"
            " WHERE %(t)s::text IS NULL OR type = %(t)s::text ORDER BY insert_no",
            {"t": type_},
        ).fetchall()


def test_a_batch_lands_once_and_a_resent_batch_is_a_no_op(db_url: str, tmp_path: Path) -> None:
    with running(db_url, tmp_path) as base, student(base) as client:
        lesson_id = plan(client)
        batch = [
            {**raw(t), "id": str(ULID()), **({"lesson_id": lesson_id} if SHAPES[t].lesson else {})}
            for t in sorted(CLIENT_EVENT_TYPES - {"lesson.abandon"})
        ]
        first = client.post("/v1/event", json={"events": batch})
        again = client.post("/v1/event", json={"events": batch})
        assert (first.status_code, first.json()["accepted"]) == (202, len(batch))
        assert (again.status_code, again.json()["accepted"]) == (202, len(batch))
        session_id = client.post("/v1/session").json()["session_id"]
    rows = [r for r in stored(db_url) if r[1] in CLIENT_EVENT_TYPES]
    assert sorted(r[0] for r in rows) == sorted(e["id"] for e in batch)
    assert all(r[3] is None and r[4] == session_id for r in rows)  # session-level rows
    assert {r[2] for r in rows if SHAPES[r[1]].lesson} == {lesson_id}


@pytest.mark.parametrize("case", ["forged", "not-mine", "too-many", "one-bad"])
def test_a_refused_batch_stores_nothing(db_url: str, tmp_path: Path, case: str) -> None:
    with running(db_url, tmp_path) as base, student(base) as client, student(base) as other:
        theirs = plan(other)
        events: list[dict[str, Any]]
        if case == "forged":
            events = [{"type": "cache.hit", "ts": 1, "payload": {"key_kind": "plan"}}]
        elif case == "not-mine":
            events = [{**raw("beat.advance"), "lesson_id": theirs}]
        elif case == "too-many":
            events = [raw("setup.skip")] * 101
        else:
            events = [raw("setup.skip"), raw("beat.advance", {"from_ord": -1, "to_ord": 0})]
        before = len(stored(db_url))
        r = client.post("/v1/event", json={"events": events})
        assert r.status_code == (404 if case == "not-mine" else 400), r.text
        assert r.json()["ok"] is False
        assert len([e for e in stored(db_url)[before:] if e[1] != "error"]) == 0


def test_every_error_answer_becomes_an_error_event(db_url: str, tmp_path: Path) -> None:
    with running(db_url, tmp_path) as base, student(base) as client:
        r = client.get("/v1/lesson/01HZX5T6Y2C8P1Q9S3F4WJK7MA")
        assert r.status_code == 404
        trace_id = r.headers["x-trace-id"]

        def errors() -> list[dict[str, Any]]:
            with psycopg.connect(db_url) as conn:
                rows = conn.execute(
                    "SELECT payload_json, metadata_json FROM events WHERE type = 'error'"
                ).fetchall()
            return [{**p, "meta": m} for p, m in rows]

        found = eventually(errors, lambda rows: len(rows) == 1)
    assert found[0]["code"] == "not_found"
    assert found[0]["trace_id"] == trace_id
    assert found[0]["meta"]["trace_id"] == trace_id
    assert "user_id" in found[0]["meta"]


def test_the_error_event_sampler_admits_a_bounded_rate() -> None:
    now = [0.0]
    sampler = Sampler(10, clock=lambda: now[0])
    admitted = sum(sampler.allow() for _ in range(100))  # a burst at one instant
    assert (admitted, sampler.dropped_total) == (10, 90)
    now[0] += 0.5  # half a second refills half the bucket
    assert sum(sampler.allow() for _ in range(100)) == 5


def session_row(db_url: str, session_id: str) -> tuple[Any, ...]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT ended_at, last_seen_at, expires_at - now(), token_hash IS NOT NULL"
            " FROM sessions WHERE id = %s",
            (session_id,),
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_a_tab_close_beacon_ends_the_visit_and_the_cookie_starts_a_new_one(
    db_url: str, tmp_path: Path
) -> None:
    with running(db_url, tmp_path) as base, student(base) as client:
        lesson_id = plan(client)
        first = client.post("/v1/session").json()
        beacon = {**raw("lesson.abandon"), "lesson_id": lesson_id}
        assert client.post("/v1/event", json={"events": [beacon]}).status_code == 202
        ended_at, *_ = session_row(db_url, first["session_id"])
        assert ended_at is not None
        # The student comes back: same user, same work, a new visit.
        assert client.get(f"/v1/lesson/{lesson_id}").status_code == 200
        again = client.post("/v1/session").json()
    assert again["user_id"] == first["user_id"]
    assert again["session_id"] != first["session_id"]
    assert session_row(db_url, first["session_id"])[3] is False  # the token moved on


def test_an_idle_session_ends_and_the_expiry_slides(db_url: str, tmp_path: Path) -> None:
    with running(db_url, tmp_path) as base, student(base) as client:
        first = client.post("/v1/session").json()
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "UPDATE sessions SET last_seen_at = now() - interval '2 minutes',"
                " expires_at = now() + interval '1 day' WHERE id = %s",
                (first["session_id"],),
            )
        assert client.get("/v1/lessons").status_code == 200
        _, _, left, _ = session_row(db_url, first["session_id"])
        assert left.days == 29  # slid back to 30 days by an ordinary authenticated request
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "UPDATE sessions SET last_seen_at = now() - interval '31 minutes' WHERE id = %s",
                (first["session_id"],),
            )
        assert client.get("/v1/lessons").status_code == 200
        second = client.post("/v1/session").json()
    ended_at, last_seen, _, has_token = session_row(db_url, first["session_id"])
    assert ended_at == last_seen  # the visit ended when it was last seen
    assert has_token is False
    assert second["user_id"] == first["user_id"]
    assert second["session_id"] != first["session_id"]


def test_an_event_id_reused_for_another_event_is_a_conflict(db_url: str, tmp_path: Path) -> None:
    with running(db_url, tmp_path) as base, student(base) as client:
        event_id = str(ULID())
        first = {**raw("discovery.search", {"query": "springs"}), "id": event_id}
        other = {**raw("discovery.search", {"query": "levers"}), "id": event_id}
        assert client.post("/v1/event", json={"events": [first]}).status_code == 202
        r = client.post("/v1/event", json={"events": [other]})
    assert (r.status_code, r.json()["code"]) == (409, "conflict")
    assert len(stored(db_url, "discovery.search")) == 1


@pytest.mark.anyio
async def test_a_lessons_owner_is_asked_of_the_log_once_and_a_stranger_every_time(
    pool: AsyncConnectionPool[Any],
) -> None:
    """OwnedLessons keeps a yes for a while (a browser names the same lesson batch after
    batch), never a no, and asks again once the yes is older than its ttl."""
    owner, session_id = await user_and_session(pool)
    stranger, _ = await user_and_session(pool)
    lesson_id = new_id()
    created = LessonCreated(session_id, owner, "physics", "springs", "hs", {})
    await append_lesson(EventStore(pool), lesson_id, session_id, [created])
    owned = OwnedLessons(ttl_s=3600)

    for _ in range(3):
        await owned.check(pool, owner, [lesson_id])
    assert owned.statements == 1
    for _ in range(2):
        with pytest.raises(NotFound, match=lesson_id):
            await owned.check(pool, stranger, [lesson_id])
    assert owned.statements == 3
    with pytest.raises(NotFound):  # one lesson of the batch is not theirs: all refused
        await owned.check(pool, owner, [lesson_id, new_id()])
    assert owned.statements == 4

    expired = OwnedLessons(ttl_s=0)
    await expired.check(pool, owner, [lesson_id])
    await expired.check(pool, owner, [lesson_id])
    assert expired.statements == 2
