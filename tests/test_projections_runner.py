"""The runner: exactly once, one owner at a time, poison events, skip, resume after a fix."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from eventstore.errors import StoreError
from eventstore.events import LessonCreated
from eventstore.ids import new_id
from eventstore.store import EventMeta, EventStore, NewEvent, StoredEvent
from projections import checkpoints, lesson_tables
from projections.core import Conn, Projection, Tables
from projections.errors import SkipRefused
from projections.rebuild import Rebuild
from projections.runner import ProjectionRunner
from tests.conditions import wait_for_async
from tests.lesson_log import (
    append_lesson,
    checkpoint,
    digests,
    run,
    scalar,
    simple_lesson,
    user_and_session,
)

pytestmark = pytest.mark.anyio


async def test_rows_and_checkpoint_move_together_when_a_transaction_dies_midway(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    user_id, session_id = await user_and_session(pool)
    await append_lesson(store, new_id(), session_id, simple_lesson(user_id, session_id))
    await store.sequence()

    async def apply_then_die(conn: Conn, tables: Tables, events: Sequence[StoredEvent]) -> None:
        await lesson_tables.apply(conn, tables, events)  # the rows are written…
        assert await (await conn.execute("SELECT count(*) FROM lessons")).fetchone() == (1,)
        await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")  # …then it dies

    dying = Projection(
        "lessons", lesson_tables.EVENT_TYPES, lesson_tables.PROJECTION.tables, apply_then_die,
        lesson_tables.EVENT_TYPES,
    )  # fmt: skip
    with pytest.raises(StoreError):
        await ProjectionRunner(pool, [dying]).step(dying)
    assert await scalar(pool, "SELECT count(*) FROM lessons") == 0
    assert (await checkpoint(pool, "lessons"))[:2] == (0, "running")
    await ProjectionRunner(pool, ["lessons"]).catch_up()
    assert await scalar(pool, "SELECT count(*) FROM lessons") == 1
    assert await scalar(pool, "SELECT count(*) FROM plan_revisions") == 1
    assert (await checkpoint(pool, "lessons"))[0] == await store.head_position()


def probe(table: str) -> Projection:
    """A projection that records every position it applies, with no unique key."""

    async def apply(conn: Conn, tables: Tables, events: Sequence[StoredEvent]) -> None:
        await conn.execute(
            tables.render("INSERT INTO {probe} SELECT unnest(%(p)s::bigint[])"),
            {"p": [e.position for e in events]},
        )

    return Projection("probe", frozenset({"model_run.recorded"}), ("probe",), apply)


async def test_two_runners_on_one_database_never_apply_an_event_twice(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE probe (position BIGINT NOT NULL)")
    meta = EventMeta(session_id="s")
    # Ownership off: both runners race for every page; only the checkpoint row lock stands
    # between them and a double apply.
    runners = [
        ProjectionRunner(pool, [probe("probe")], page_size=3, poll_s=0.01, exclusive=False)
        for _ in range(2)
    ]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        for _ in range(30):
            await store.append_unordered([NewEvent.of(run(), meta) for _ in range(5)])
            await store.sequence()
            for r in runners:
                r.wake()
        head = await store.head_position()

        async def caught_up() -> bool:
            return (await checkpoint(pool, "probe"))[0] >= head

        await wait_for_async(caught_up)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert await scalar(pool, "SELECT count(*) FROM probe") == 150
    assert await scalar(pool, "SELECT count(DISTINCT position) FROM probe") == 150


async def test_one_process_owns_a_projection_and_another_takes_over_when_it_dies(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    user_id, session_id = await user_and_session(pool)
    a = ProjectionRunner(pool, poll_s=0.05, lock_retry_s=0.05)
    b = ProjectionRunner(pool, poll_s=0.05, lock_retry_s=0.05)
    task_a = asyncio.create_task(a.run())

    async def a_owns_all() -> bool:
        return a.owned == {"lessons", "model_runs"}

    await wait_for_async(a_owns_all)
    task_b = asyncio.create_task(b.run())
    try:
        status = {s.name: s for s in await checkpoints.status(pool)}
        assert all(s.owner_pid is not None for s in status.values())
        await append_lesson(store, new_id(), session_id, simple_lesson(user_id, session_id))
        await store.sequence()
        a.wake()
        head = await store.head_position()

        async def at_head() -> bool:
            return all(s.position >= head for s in await checkpoints.status(pool))

        await wait_for_async(at_head)
        assert b.owned == frozenset()  # b waited: a was alive
        task_a.cancel()  # a "dies": its lock connection closes with it
        await asyncio.gather(task_a, return_exceptions=True)

        async def b_owns_all() -> bool:
            return b.owned == {"lessons", "model_runs"}

        await wait_for_async(b_owns_all)
        await append_lesson(store, new_id(), session_id, simple_lesson(user_id, session_id))
        await store.sequence()
        b.wake()
        head = await store.head_position()
        await wait_for_async(at_head)
        assert await scalar(pool, "SELECT count(*) FROM lessons") == 2
    finally:
        for t in (task_a, task_b):
            t.cancel()
        await asyncio.gather(task_a, task_b, return_exceptions=True)


async def test_a_poison_event_stops_only_its_projection_until_skipped(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    user_id, session_id = await user_and_session(pool)
    meta = EventMeta(session_id=session_id)
    await store.append_unordered([NewEvent.of(run(cost=0.5), meta)])
    # A model run whose payload misses every required field: the handler cannot apply it.
    await store.append_unordered([NewEvent("model_run.recorded", {"model": "x"}, meta)])
    await store.sequence()
    poison = await store.head_position()
    await append_lesson(store, new_id(), session_id, simple_lesson(user_id, session_id, beats=2))
    await store.append_unordered([NewEvent.of(run(cost=0.25), meta)])
    await store.sequence()
    head = await store.head_position()
    runner = ProjectionRunner(pool, page_size=100, failed_retry_s=3600)
    steps = await runner.catch_up()
    assert steps["lessons"].state == "running"
    assert (await checkpoint(pool, "lessons"))[0] == head  # the other projection went on
    position, state, failed_position, error = await checkpoint(pool, "model_runs")
    assert (position, state, failed_position) == (poison - 1, "failed", poison)
    assert "TypeError" in error
    # Everything before the poison event is applied, nothing after it.
    assert await scalar(pool, "SELECT count(*) FROM model_runs") == 1
    status = {s.name: s for s in await checkpoints.status(pool)}
    assert status["model_runs"].lag_events == head - poison + 1
    assert [f.name for f in await checkpoints.failures(pool)] == ["model_runs"]

    with pytest.raises(SkipRefused, match=f"failed at position {poison}, not {poison + 1}"):
        await checkpoints.skip(pool, "model_runs", poison + 1)
    assert (await checkpoint(pool, "model_runs"))[1] == "failed"  # refused: nothing changed
    with pytest.raises(SkipRefused, match="not failed"):
        await checkpoints.skip(pool, "lessons", poison)

    await checkpoints.skip(pool, "model_runs", poison)
    await runner.catch_up()
    assert (await checkpoint(pool, "model_runs"))[:2] == (head, "running")
    assert await scalar(pool, "SELECT count(*) FROM model_runs") == 1 + 2 + 1
    assert await checkpoints.failures(pool) == []
    # A rebuild skips the skipped event too, so it equals the live tables.
    live = await digests(pool)
    await Rebuild(pool).run()
    assert await digests(pool) == live


async def test_a_failed_projection_resumes_by_itself_after_a_fix(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    user_id, _ = await user_and_session(pool)
    missing_session = new_id()
    meta = EventMeta(session_id=missing_session)
    lesson_id = new_id()
    created = LessonCreated(missing_session, user_id, "math", "sets", "hs", {})
    await store.append(lesson_id, [NewEvent.of(created, meta)], expected_seq=0)
    await store.append_unordered([NewEvent.of(run(), meta)])
    await store.sequence()
    runner = ProjectionRunner(pool, poll_s=0.02, failed_retry_s=0.05, lock_retry_s=0.05)
    task = asyncio.create_task(runner.run())
    try:

        async def lessons_failed() -> bool:
            return (await checkpoint(pool, "lessons"))[1] == "failed"

        await wait_for_async(lessons_failed)
        assert "ForeignKeyViolation" in (await checkpoint(pool, "lessons"))[3]

        async def model_runs_went_on() -> bool:
            return bool(await scalar(pool, "SELECT count(*) FROM model_runs") == 1)

        await wait_for_async(model_runs_went_on)
        # The fix: the command side's missing session row appears.
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO sessions (id, user_id) VALUES (%s, %s)", (missing_session, user_id)
            )

        async def resumed() -> bool:
            return (await checkpoint(pool, "lessons"))[1:3] == ("running", None)

        await wait_for_async(resumed)
        assert await scalar(pool, "SELECT count(*) FROM lessons WHERE id = %s", lesson_id) == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_stop_and_start(pool: AsyncConnectionPool[Any]) -> None:
    store = EventStore(pool)
    await store.append_unordered([NewEvent.of(run(), EventMeta())])
    await store.sequence()
    await checkpoints.set_state(pool, "model_runs", "stopped")
    steps = await ProjectionRunner(pool).catch_up()
    assert steps["model_runs"].state == "stopped"
    assert await scalar(pool, "SELECT count(*) FROM model_runs") == 0
    assert not await checkpoints.wait_for(pool, 1, ["model_runs"], timeout=1)
    await checkpoints.set_state(pool, "model_runs", "running")
    await ProjectionRunner(pool).catch_up()
    assert await checkpoints.wait_for(pool, 1, timeout=1)
    assert await scalar(pool, "SELECT count(*) FROM model_runs") == 1
