from __future__ import annotations

from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from eventstore.ids import new_id
from eventstore.store import EventStore
from projections.runner import ProjectionRunner
from tests.lesson_log import append_lesson, simple_lesson, user_and_session

pytestmark = pytest.mark.anyio


async def test_a_lesson_is_projected(pool: AsyncConnectionPool[Any]) -> None:
    store = EventStore(pool)
    user_id, session_id = await user_and_session(pool)
    lesson_id = new_id()
    await append_lesson(store, lesson_id, session_id, simple_lesson(user_id, session_id))
    await store.sequence()
    steps = await ProjectionRunner(pool).catch_up()
    assert {s.state for s in steps.values()} == {"running"}
    async with pool.connection() as conn:
        row = await (
            await conn.execute("SELECT status, completed_at IS NOT NULL FROM lessons")
        ).fetchone()
        assert row == ("complete", True)
        beats = await (await conn.execute("SELECT ord, status FROM beats ORDER BY ord")).fetchall()
        assert beats == [(1, "ready"), (2, "ready"), (3, "ready")]
        runs = await (
            await conn.execute(
                "SELECT count(*), count(beat_id) FROM model_runs WHERE lesson_id = %s",
                (lesson_id,),
            )
        ).fetchone()
        assert runs == (3, 3)
