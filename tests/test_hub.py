"""Live subscriptions (eventstore/hub.py) against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from eventstore.hub import Hub
from eventstore.store import EventStore, StoredEvent
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


class CountingStore(EventStore):
    """The real store, recording the lesson reads it is asked for."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        super().__init__(pool)
        self.shared_reads: list[list[str]] = []  # read_lessons: one statement each
        self.own_reads = 0  # read_lesson_page: a subscription reading for itself
        self.head_gate: asyncio.Event | None = None  # head_position waits for it when set
        self.reading_head = asyncio.Event()  # head_position is waiting at the gate

    async def read_lessons(self, lesson_ids: Sequence[str]) -> dict[str, list[StoredEvent]]:
        self.shared_reads.append(sorted(lesson_ids))
        return await super().read_lessons(lesson_ids)

    async def read_lesson_page(
        self, lesson_id: str, after_seq: int, limit: int
    ) -> list[StoredEvent]:
        self.own_reads += 1
        return await super().read_lesson_page(lesson_id, after_seq, limit)

    async def head_position(self) -> int:
        if self.head_gate is not None:
            self.reading_head.set()
            await self.head_gate.wait()
        return await super().head_position()


async def test_streams_opening_together_share_one_read_and_each_gets_the_whole_log(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    store = CountingStore(pool)
    await store.append("L", [partial(i) for i in range(7)], expected_seq=0)
    await store.append("M", [partial(i) for i in range(2)], expected_seq=0)
    async with running(store, db_url) as hub:
        await until(lambda: hub._cursor is not None)
        subs = [hub.lesson("L") for _ in range(20)] + [hub.lesson("M")]
        logs = await asyncio.gather(*(sub.read_lesson() for sub in subs))
        assert store.shared_reads == [["L", "M"]]  # one statement for all 21 opens
        for sub, log in zip(subs, logs, strict=True):
            assert [e.lesson_seq for e in log] == list(range(1, 8 if sub.lesson_id == "L" else 3))
            sub.prime(log, after=0)
        # Appended after the shared read: each subscription gets it live, once, in order.
        await store.append("L", [partial(7)], expected_seq=7)
        for sub in subs[:20]:
            assert [e.lesson_seq for e in await collect(sub, 8)] == list(range(1, 9))
        await until(lambda: hub._cursor == 10)  # the tail delivered it again: dropped
        for sub in subs[:20]:
            assert await sub.next_batch(timeout=0) == []
        assert store.own_reads == 0  # nobody went back to the log
        for sub in subs:
            await sub.close()
    assert hub.subscriber_count == 0


async def test_opens_while_the_hub_skips_ahead_are_not_sent_back_to_the_log(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    # A hub with nobody subscribed skips to the log's head; a stream that opened while the
    # head was being read used to be sent back to the log (a reconnect storm read every
    # lesson twice). Now the hub tails what it was about to skip, and nothing is missed.
    store = CountingStore(pool)
    await store.append("L", [partial(i) for i in range(3)], expected_seq=0)
    await store.sequence()
    hub = Hub(store, db_url)
    await hub.tail()  # knows where the log ends
    store.head_gate = asyncio.Event()
    skipping = asyncio.create_task(hub.tail())  # nobody subscribed: reads the head
    await store.reading_head.wait()
    sub = hub.lesson("L")
    sub.prime(await sub.read_lesson(), after=0)
    async with other_process(db_url) as theirs:  # committed after the catch-up read
        await theirs.append("L", [partial(3)], expected_seq=3)
        await theirs.sequence()
    store.head_gate.set()  # the head now includes it: skipping to it would lose it
    assert await skipping == 1  # it tailed the event instead of skipping past it
    got = await collect(sub, 4)
    assert [e.lesson_seq for e in got] == [1, 2, 3, 4]
    assert store.own_reads == 0
    await sub.close()
