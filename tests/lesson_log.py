"""Test helpers for the read side: users and sessions (written by the command side, so the
tests insert them), lesson histories as domain events, and table digests."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from eventstore.database import create_database, drop_database, open_pool
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

_names = itertools.count()

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


async def checkpoint(pool: AsyncConnectionPool[Any], name: str) -> tuple[int, str, Any, Any]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT position, state, failed_position, error FROM projection_checkpoints "
            "WHERE name = %s",
            (name,),
        )
        row = await cur.fetchone()
    assert row is not None
    return row[0], row[1], row[2], row[3]


async def scalar(pool: AsyncConnectionPool[Any], query: str, *params: Any) -> Any:
    async with pool.connection() as conn:
        row = await (await conn.execute(query, params)).fetchone()
    return row[0] if row else None


@contextlib.asynccontextmanager
async def scratch_pool(admin_url: str, template: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A pool on a fresh database from the migrated template (one per hypothesis example)."""
    name = f"ot_h_{os.getpid()}_{next(_names)}"
    url = create_database(admin_url, name, template=template)
    try:
        async with open_pool(url, max_size=3) as pool:
            yield pool
    finally:
        drop_database(admin_url, name)
