from __future__ import annotations

from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from eventstore.ids import new_id
from eventstore.queries import one_row
from eventstore.store import EventStore
from projections.rebuild import Rebuild
from projections.runner import ProjectionRunner
from tests.lesson_log import (
    PROJECTED_TABLES,
    append_lesson,
    digests,
    simple_lesson,
    user_and_session,
)

pytestmark = pytest.mark.anyio

SCHEMA_SNAPSHOT = """
SELECT 'index', c.relname, i.relname, pg_get_indexdef(i.oid), true
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid
WHERE c.relname = ANY(%(tables)s)
UNION ALL
SELECT 'constraint', t.relname, k.conname, pg_get_constraintdef(k.oid), k.convalidated
FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid
LEFT JOIN pg_class p ON p.oid = k.confrelid
WHERE t.relname = ANY(%(tables)s) OR p.relname = ANY(%(tables)s)
ORDER BY 1, 2, 3
"""


async def schema(pool: AsyncConnectionPool[Any]) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cur = await conn.execute(SCHEMA_SNAPSHOT, {"tables": list(PROJECTED_TABLES)})
        rows: list[tuple[Any, ...]] = await cur.fetchall()
        return rows


async def test_rebuild_equals_live_and_keeps_the_schema(pool: AsyncConnectionPool[Any]) -> None:
    store = EventStore(pool)
    user_id, session_id = await user_and_session(pool)
    lesson_ids = [new_id() for _ in range(3)]
    for lesson_id in lesson_ids:
        await append_lesson(store, lesson_id, session_id, simple_lesson(user_id, session_id))
    await store.sequence()
    await ProjectionRunner(pool).catch_up()
    # Another table's foreign key into a projected table must survive the swap.
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO assets (id, lesson_id, type, url, mime) "
            "VALUES (%s, %s, 'audio', 'u', 'm')",
            (new_id(), lesson_ids[0]),
        )
    live, before = await digests(pool), await schema(pool)
    assert all(live.values())
    progress: list[tuple[int, int]] = []
    rebuild = Rebuild(pool, page_size=7, on_progress=lambda d, t: progress.append((d, t)))
    result = await rebuild.run()
    assert result.position == await store.head_position()
    assert await digests(pool) == live
    assert await schema(pool) == before
    assert progress[-1][0] == progress[-1][1] == result.position
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM projection_rebuilds")
        assert await cur.fetchone() == (0,)


class Interrupted(Exception):
    pass


async def test_an_interrupted_rebuild_resumes_where_it_stopped(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    user_id, session_id = await user_and_session(pool)
    for _ in range(4):
        await append_lesson(store, new_id(), session_id, simple_lesson(user_id, session_id))
    await store.sequence()
    await ProjectionRunner(pool).catch_up()
    live = await digests(pool)

    def interrupt(done: int, total: int) -> None:
        if done >= total // 2:
            raise Interrupted  # as Ctrl-C would, between two pages

    with pytest.raises(Interrupted):
        await Rebuild(pool, page_size=5, on_progress=interrupt).run()
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT min(position), count(*) FROM projection_rebuilds")
        stopped_at, rows = await one_row(cur)
    assert rows == 2
    assert stopped_at > 0
    assert await digests(pool) == live  # the live tables were never touched
    result = await Rebuild(pool, page_size=5).run()
    assert result.resumed_from == stopped_at
    assert result.positions == await store.head_position() - stopped_at
    assert await digests(pool) == live
