"""Test helpers for the read side: users and sessions (written by the command side, so the
tests insert them), lesson histories as domain events, and table digests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from eventstore.events import (
    BeatCompleted,
    BeatStarted,
    DomainEvent,
    InteractionRecorded,
    LessonCompleted,
    LessonCreated,
    ModelRunRecorded,
    PlanLocked,
    PlanRevised,
)
from eventstore.ids import new_id
from eventstore.store import EventMeta, EventStore, NewEvent, StoredEvent

PROJECTED_TABLES = (
    "lessons",
    "plan_revisions",
    "beats",
    "interactions",
    "model_runs",
    "model_run_beats",
)


async def user_and_session(pool: AsyncConnectionPool[Any]) -> tuple[str, str]:
    user_id, session_id = new_id(), new_id()
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO users (id, anon_id) VALUES (%s, %s)", (user_id, new_id()))
        await conn.execute(
            "INSERT INTO sessions (id, user_id) VALUES (%s, %s)", (session_id, user_id)
        )
    return user_id, session_id


def plan(beats: int, summary: str = "a plan") -> dict[str, Any]:
    return {
        "summary": summary,
        "beats": [
            {"ord": i, "kind": "concept", "title": f"beat {i}", "est_min": 3}
            for i in range(1, beats + 1)
        ],
        "after": "next topic",
    }


def run(
    model: str = "haiku-4-5",
    cost: float = 0.00123,
    beat_ord: int | None = None,
    purpose: str = "beat",
) -> ModelRunRecorded:
    return ModelRunRecorded(
        run_id=new_id(),
        model=model,
        purpose=purpose,
        prompt_tokens=100,
        completion_tokens=50,
        cost_usd=cost,
        latency_ms=300,
        status="ok",
        trace_id=f"req_{new_id()}",
        beat_ord=beat_ord,
    )


def simple_lesson(user_id: str, session_id: str, beats: int = 3) -> list[DomainEvent]:
    events: list[DomainEvent] = [
        LessonCreated(session_id, user_id, "physics", "Hooke's law", "hs", {"why": "homework"}),
        PlanRevised(1, plan(beats), "initial"),
        PlanLocked(1, beats),
    ]
    for i in range(1, beats + 1):
        beat_id = new_id()
        events += [
            BeatStarted(i, beat_id, "concept", f"beat {i}", "sonnet-4-6"),
            BeatCompleted(i, beat_id, "concept", {"text": f"beat {i}"}, f"say {i}"),
            run(beat_ord=i),
            InteractionRecorded(new_id(), "ask", {"q": f"why {i}?"}, {"a": "because"}, i),
        ]
    events.append(LessonCompleted(1234, {"sonnet": 0.01}))
    return events


async def append_lesson(
    store: EventStore,
    lesson_id: str,
    session_id: str,
    events: Sequence[DomainEvent],
    expected_seq: int = 0,
) -> list[StoredEvent]:
    meta = EventMeta(trace_id=f"req_{new_id()}", session_id=session_id)
    return await store.append(
        lesson_id, [NewEvent.of(e, meta) for e in events], expected_seq=expected_seq
    )


async def digests(
    pool: AsyncConnectionPool[Any], tables: Sequence[str] = PROJECTED_TABLES, suffix: str = ""
) -> dict[str, str | None]:
    """md5 of every row's text, in primary-key order, per table."""
    out: dict[str, str | None] = {}
    async with pool.connection() as conn:
        for table in tables:
            query = sql.SQL(
                "SELECT md5(string_agg(t::text, '' ORDER BY t::text)) FROM {} AS t"
            ).format(sql.Identifier(table + suffix))
            row = await (await conn.execute(query)).fetchone()
            out[table] = row[0] if row else None
    return out
