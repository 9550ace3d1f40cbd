"""Live subscriptions (eventstore/hub.py) against a real PostgreSQL."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from eventstore.store import EventStore
from tests.logkit import collect, other_process, partial, running, until

pytestmark = pytest.mark.anyio


async def test_lesson_subscriber_gets_backlog_then_live_without_duplicate(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    store = EventStore(pool)
    await store.append("L1", [partial(i) for i in range(5)], expected_seq=0)
    async with running(store, db_url) as hub, hub.lesson("L1", after_seq=2) as sub:
        backlog = await sub.next_batch(timeout=5)
        assert [e.lesson_seq for e in backlog] == [3, 4, 5]
        # Live: appended by this process, handed over directly (no position yet).
        await store.append("L1", [partial(5), partial(6)], expected_seq=5)
        live = await collect(sub, 2)
        assert [e.lesson_seq for e in live] == [6, 7]
        # The tail delivers the same events again once numbered; they must not reappear.
        await until(lambda: hub._cursor == 7)
        assert await sub.next_batch(timeout=0.2) == []
    assert hub.subscriber_count == 0


async def test_log_subscriber_follows_numbered_events(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    store = EventStore(pool)
    await store.append("A", [partial(i) for i in range(3)], expected_seq=0)
    await store.sequence()
    async with running(store, db_url) as hub, hub.log(after_position=1) as sub:
        await store.append("B", [partial(9)], expected_seq=0)
        got = await collect(sub, 3)
        assert [e.position for e in got] == [2, 3, 4]
        assert [e.lesson_id for e in got] == ["A", "A", "B"]


async def test_other_process_appends_reach_subscribers_through_notify(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    store = EventStore(pool)
    async with (
        other_process(db_url) as their_store,
        running(their_store, db_url),
        running(store, db_url, sequencer=False, poll_s=60) as hub,
        hub.lesson("L") as lesson_sub,
        hub.log() as log_sub,
    ):
        await their_store.append("L", [partial(i) for i in range(4)], expected_seq=0)
        # No sequencer and no poll here within the deadline: only the NOTIFY can wake us.
        assert [e.lesson_seq for e in await collect(lesson_sub, 4, 10)] == [1, 2, 3, 4]
        assert [e.position for e in await collect(log_sub, 4, 10)] == [1, 2, 3, 4]


async def test_slow_subscriber_falls_back_to_the_log_and_misses_nothing(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    store = EventStore(pool)
    async with running(store, db_url) as hub:
        hub.buffer_size = 8
        async with hub.lesson("L") as slow, hub.lesson("L") as fast:
            seq = 0
            for _ in range(10):  # 50 events while `slow` reads nothing: its buffer overflows
                await store.append("L", [partial(i) for i in range(5)], expected_seq=seq)
                seq += 5
                assert len(fast._buffer) <= 8
            got_fast = await collect(fast, 50)
            assert slow._resyncs >= 1  # it overflowed and had to read the log
            got_slow = await collect(slow, 50)
        assert [e.lesson_seq for e in got_slow] == list(range(1, 51))
        assert [e.lesson_seq for e in got_fast] == list(range(1, 51))


async def test_iteration_yields_one_by_one(pool: AsyncConnectionPool[Any], db_url: str) -> None:
    store = EventStore(pool)
    await store.append("L", [partial(i) for i in range(3)], expected_seq=0)
    async with running(store, db_url) as hub, hub.lesson("L") as sub:
        seen = []
        async for event in sub:
            seen.append(event.lesson_seq)
            if len(seen) == 3:
                break
        assert seen == [1, 2, 3]


async def test_dropped_listen_connection_is_reestablished_and_nothing_is_missed(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    store = EventStore(pool)
    async with (
        other_process(db_url) as their_store,
        running(their_store, db_url),
        running(store, db_url, sequencer=False, poll_s=60) as hub,
        hub.log() as sub,
    ):
        await their_store.append("L", [partial(0)], expected_seq=0)
        assert [e.position for e in await collect(sub, 1, 10)] == [1]
        old_pid = hub.listen_pid
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
            # Appended while the hub may be disconnected: its NOTIFY can be lost.
            await their_store.append("L", [partial(1), partial(2)], expected_seq=1)
        await until(lambda: hub.listening.is_set() and hub.listen_pid != old_pid)
        assert [e.position for e in await collect(sub, 2, 10)] == [2, 3]
        await their_store.append("L", [partial(3)], expected_seq=3)
        assert [e.position for e in await collect(sub, 1, 10)] == [4]
