"""Concurrent single-event appends share INSERTs (eventstore/store.py, _SharedAppends) and
nothing about an append changes for its caller: each lands once at its own seq, a stale
expected_seq still fails alone, an idempotent retry still returns the stored event."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from eventstore import store as store_module
from eventstore.errors import WrongExpectedSeq
from eventstore.queries import load_queries
from eventstore.store import EventStore, StoredEvent
from tests.logkit import partial

pytestmark = pytest.mark.anyio


async def test_concurrent_single_appends_commit_together_each_at_its_own_seq(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    run = uuid.uuid4().hex[:8]
    lessons = [f"shared-{run}-{i}" for i in range(20)]
    heard: list[StoredEvent] = []
    store.on_append(heard.extend)
    results = await asyncio.gather(
        *(store.append(lesson, [partial(i)], expected_seq=0) for i, lesson in enumerate(lessons))
    )
    assert [(r[0].lesson_id, r[0].lesson_seq) for r in results] == [(x, 1) for x in lessons]
    assert sorted(e.id for e in heard) == sorted(r[0].id for r in results)
    # Gathered before any statement went out, they shared one: one transaction, one ts.
    assert len({r[0].ts for r in results}) == 1
    for i, lesson in enumerate(lessons):
        stored = [e async for e in store.read_lesson(lesson)]
        assert [(e.lesson_seq, e.payload) for e in stored] == [(1, partial(i).payload)]


async def test_a_stale_append_fails_alone_and_a_retry_returns_the_stored_event(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    run = uuid.uuid4().hex[:8]
    taken, retried = f"taken-{run}", f"retried-{run}"
    await store.append(taken, [partial(0)], expected_seq=0)
    again = partial(1)
    first = await store.append(retried, [again], expected_seq=0)
    fresh = [f"fresh-{run}-{i}" for i in range(10)]
    refused = partial(2)
    outcomes = await asyncio.gather(
        store.append(taken, [refused], expected_seq=0),  # stale: seq 1 is taken
        store.append(retried, [again], expected_seq=0),  # the same event again
        *(store.append(lesson, [partial(3)], expected_seq=0) for lesson in fresh),
        return_exceptions=True,
    )
    stale, retry, *landed = outcomes
    assert isinstance(stale, WrongExpectedSeq)
    assert stale.current_seq == 1
    assert isinstance(retry, list)
    assert [e.id for e in retry] == [first[0].id]
    assert all(isinstance(r, list) and r[0].lesson_seq == 1 for r in landed)
    for lesson in (taken, retried, *fresh):
        assert [e.lesson_seq async for e in store.read_lesson(lesson)] == [1]
    # The vault rows go in the shared statement with the events, only for those that landed.
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE event_id = %s),"
            " count(*) FILTER (WHERE event_id = ANY(%s)) FROM personal_data",
            (refused.id, [r[0].id for r in landed if isinstance(r, list)]),
        )
        assert await cur.fetchone() == (0, len(fresh))


def test_each_rows_guard_is_an_index_probe_even_on_a_new_database(db_url: str) -> None:
    """A new database's statistics say the log is empty, and a prepared statement keeps its
    generic plan: a guard answered by hashing the whole log would scan it on every append."""
    queries = load_queries(Path(store_module.__file__).parent / "sql" / "store.sql")
    params = {
        "ids": ["e1", "e2"],
        "session_ids": ["s", "s"],
        "lesson_ids": ["L1", "L2"],
        "expected_seqs": [3, 0],
        "types": ["beat.partial"] * 2,
        "versions": [1, 1],
        "payloads": ["{}", "{}"],
        "metadata": ["{}", "{}"],
        "vault": "[]",
    }
    with psycopg.connect(db_url) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN (COSTS OFF) " + queries["append_shared"], params
            ).fetchall()
        )
        conn.rollback()
    assert "hashed SubPlan" not in plan
    assert "Index Only Scan using events_lesson_seq_key" in plan
