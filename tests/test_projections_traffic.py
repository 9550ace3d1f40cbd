"""A rebuild while lessons are being written and read: the API's reads answer throughout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from eventstore.ids import new_id
from eventstore.store import EventStore, Sequencer
from projections import reads
from projections.checkpoints import wait_for
from projections.rebuild import Rebuild
from projections.runner import ProjectionRunner
from tests.lesson_log import append_lesson, digests, simple_lesson, user_and_session

pytestmark = pytest.mark.anyio


async def test_rebuild_during_traffic_serves_reads_throughout(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    user_id, session_id = await user_and_session(pool)
    first = new_id()
    await append_lesson(store, first, session_id, simple_lesson(user_id, session_id))
    for _ in range(20):
        await append_lesson(store, new_id(), session_id, simple_lesson(user_id, session_id))
    await store.sequence()
    runner = ProjectionRunner(pool, poll_s=0.02, lock_retry_s=0.05)
    await runner.catch_up()
    sequencer = Sequencer(store, poll_s=0.02, on_sequenced=runner.wake)
    background = [asyncio.create_task(runner.run()), asyncio.create_task(sequencer.run())]
    stop = asyncio.Event()
    reads_done: list[int] = []
    written: list[str] = []

    async def reader() -> None:
        while not stop.is_set():
            lesson = await reads.lesson_summary(pool, first, user_id)
            assert lesson is not None
            assert lesson["status"] == "complete"
            assert [b["ord"] for b in lesson["beats"]] == [1, 2, 3]
            page = await reads.list_lessons(pool, user_id, limit=5)
            assert len(page.lessons) == 5
            reads_done.append(1)
            await asyncio.sleep(0)

    async def writer() -> None:
        while not stop.is_set():
            lesson_id = new_id()
            await append_lesson(store, lesson_id, session_id, simple_lesson(user_id, session_id))
            written.append(lesson_id)
            await asyncio.sleep(0.01)

    traffic = [asyncio.create_task(reader()), asyncio.create_task(writer())]
    try:
        result = await Rebuild(pool, page_size=20).run()
        assert result.position > 0
        stop.set()
        await asyncio.gather(*traffic)  # re-raises any failed read
    finally:
        stop.set()
        for t in [*traffic, *background]:
            t.cancel()
        # Bounded: on Python 3.11 a task cancelled inside psycopg's wait can stay cancelling.
        await asyncio.wait([*traffic, *background], timeout=5)
    assert len(reads_done) > 10
    assert written
    # Read-your-writes, then: the live tables equal another fresh rebuild.
    await store.sequence()
    await runner.catch_up()
    assert await wait_for(pool, await store.head_position(), timeout=5)
    lesson = await reads.lesson_summary(pool, written[-1])
    assert lesson is not None
    assert len(lesson["beats"]) == 3
    live = await digests(pool)
    await Rebuild(pool).run()
    assert await digests(pool) == live
