"""The log's guarantees (issue 3), against a real PostgreSQL.

Per-lesson seqs stay gap-free under racing writers; a catch-up reader never skips an event
even when a transaction holds its row open while later ones commit; the table is
append-only; re-appends are no-ops; subscribers join mid-stream without a duplicate.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pgserver  # ships the pg_dump/psql binaries
import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg import errors as pgerr
from psycopg_pool import AsyncConnectionPool

from eventstore.errors import AppendOnlyViolation, DuplicateEventId, WrongExpectedSeq
from eventstore.events import BeatPartial, InteractionRecorded, LessonCreated, ModelRunRecorded
from eventstore.ids import new_id
from eventstore.migrations import MIGRATIONS
from eventstore.migrations import pending as pending_migrations
from eventstore.store import EventMeta, EventStore, NewEvent, StoredEvent
from tests.logkit import META, collect, other_process, partial, running, until

pytestmark = pytest.mark.anyio

# One writer: (lesson index, batch size, yields before each attempt, start from a stale 0,
# retry the same batch once it has landed).
writer = st.tuples(
    st.integers(0, 2), st.integers(1, 4), st.integers(0, 3), st.booleans(), st.booleans()
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(writers=st.lists(writer, min_size=2, max_size=12))
async def test_lesson_seqs_stay_gap_free_and_unique_under_racing_writers(
    pool: AsyncConnectionPool[Any], writers: list[tuple[int, int, int, bool, bool]]
) -> None:
    store = EventStore(pool)
    run = uuid.uuid4().hex[:8]
    lessons = [f"race-{run}-{i}" for i in range(3)]
    landed: dict[str, list[list[StoredEvent]]] = {lesson: [] for lesson in lessons}
    conflicts = 0

    async def write(lesson_ix: int, size: int, yields: int, stale: bool, retry: bool) -> None:
        nonlocal conflicts
        lesson = lessons[lesson_ix]
        batch = [partial(i) for i in range(size)]
        expected = 0 if stale else await store.lesson_head(lesson)
        for _ in range(100):
            for _ in range(yields):
                await asyncio.sleep(0)  # hypothesis moves this writer around the others
            try:
                stored = await store.append(lesson, batch, expected_seq=expected)
            except WrongExpectedSeq as e:
                conflicts += 1
                stale_seq, expected = expected, e.current_seq
                assert expected != stale_seq  # the conflict names where the log really is
                continue
            break
        else:
            raise AssertionError("a writer never got its batch in")
        assert [e.lesson_seq for e in stored] == list(range(expected + 1, expected + size + 1))
        assert [e.id for e in stored] == [e.id for e in batch]
        if retry:  # a client that lost the acknowledgement sends the same batch again
            again = await store.append(lesson, batch, expected_seq=expected)
            assert [(e.id, e.lesson_seq) for e in again] == [(e.id, e.lesson_seq) for e in stored]
        landed[lesson].append(stored)

    await asyncio.gather(*(write(*w) for w in writers))
    event(f"conflicts: {min(conflicts, 5)}{'+' if conflicts >= 5 else ''}")

    for lesson in lessons:
        events = [e async for e in store.read_lesson(lesson)]
        assert [e.lesson_seq for e in events] == list(range(1, len(events) + 1))
        expected_ids = {e.id for batch in landed[lesson] for e in batch}
        assert [e.id for e in events if e.id in expected_ids] == [e.id for e in events]
        assert len(events) == len(expected_ids)
    assert sum(len(b) for batches in landed.values() for b in batches) == sum(w[1] for w in writers)


async def insert_raw(conn: psycopg.AsyncConnection[Any], lesson_id: str, seq: int) -> str:
    """Insert one event row as a writer would (position NULL), inside conn's transaction."""
    event_id = new_id()
    await conn.execute(
        "INSERT INTO events (id, lesson_id, lesson_seq, type, payload_json) "
        "VALUES (%s, %s, %s, 'beat.partial', %s::jsonb)",
        (event_id, lesson_id, seq, orjson.dumps({"ord": 1, "content_delta": "held"}).decode()),
    )
    return event_id


async def test_reader_sees_every_event_once_in_order_despite_a_transaction_held_open(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    store = EventStore(pool)
    committed: list[str] = []
    async with running(store, db_url, poll_s=0.2) as hub, hub.log() as follower:
        seen: list[StoredEvent] = []
        polled: list[StoredEvent] = []

        async def follow() -> None:
            while True:
                seen.extend(await follower.next_batch())

        async def poll_catch_up() -> None:
            """A projection-style reader: remembers the last position and asks for more."""
            cursor = 0
            while True:
                page = await store.read_all_page(cursor, 50)
                polled.extend(page)
                cursor = page[-1].position or cursor if page else cursor
                await asyncio.sleep(0.005)

        async def write(lesson: str, count: int) -> None:
            for i in range(count):
                stored = await store.append(lesson, [partial(i)], expected_seq=i)
                committed.extend(e.id for e in stored)

        readers = [asyncio.create_task(follow()), asyncio.create_task(poll_catch_up())]
        try:
            held = await psycopg.AsyncConnection.connect(db_url)
            async with held:
                held_id = await insert_raw(held, "held-lesson", 1)  # position NULL, not committed
                await asyncio.gather(*(write(f"w{i}", 15) for i in range(6)))
                # Later transactions committed and were numbered while the first stayed open.
                await until(lambda: len(seen) >= 90)
                assert held_id not in {e.id for e in seen}
                numbered_while_held = max(e.position or 0 for e in seen)
                await held.commit()
                committed.append(held_id)
            await asyncio.gather(*(write(f"v{i}", 10) for i in range(4)))
            await until(lambda: len(seen) >= len(committed) and len(polled) >= len(committed))
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    for reader in (seen, polled):
        assert Counter(e.id for e in reader) == Counter(committed)  # each exactly once
        assert [e.position for e in reader] == list(range(1, len(committed) + 1))
    held_event = next(e for e in seen if e.id == held_id)
    assert (held_event.position or 0) > numbered_while_held


async def test_update_delete_and_truncate_on_events_fail(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    store = EventStore(pool)
    await store.append("L", [partial(0), partial(1)], expected_seq=0)
    await store.sequence()
    with psycopg.connect(db_url, autocommit=True) as conn:
        for statement in (
            "UPDATE events SET type = 'x'",
            "UPDATE events SET payload_json = '{}'",
            "UPDATE events SET position = position + 100",
            "UPDATE events SET position = NULL",
            "DELETE FROM events",
            "TRUNCATE events",
        ):
            with pytest.raises(pgerr.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
        # The one change allowed is the sequencer's: NULL → a position, nothing else.
        held = await store.append("M", [partial(2)], expected_seq=0)
        with pytest.raises(pgerr.InsufficientPrivilege):
            conn.execute("UPDATE events SET position = 99, type = 'y' WHERE id = %s", (held[0].id,))
        conn.execute("UPDATE events SET position = 99 WHERE id = %s", (held[0].id,))
        rows = conn.execute("SELECT type, position FROM events ORDER BY insert_no").fetchall()
    assert rows == [("beat.partial", 1), ("beat.partial", 2), ("beat.partial", 99)]
    # Through the store's boundary the driver error becomes the domain's.
    from eventstore.errors import translate_errors

    with pytest.raises(AppendOnlyViolation), translate_errors():
        async with pool.connection() as aconn:
            await aconn.execute("DELETE FROM events")


async def test_reappending_the_same_ids_is_a_no_op(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    store = EventStore(pool)
    meta = EventMeta(trace_id="req_1", session_id="s1")
    batch = [
        NewEvent.of(LessonCreated("s1", "u1", "physics", "springs", "hs", {}), meta),
        NewEvent.of(BeatPartial(1, "hello"), meta),
    ]
    first = await store.append("L", batch, expected_seq=0)
    again = await store.append("L", batch, expected_seq=0)
    assert again == first
    await store.sequence()
    numbered = await store.append("L", batch, expected_seq=0)  # now with positions
    assert [(e.id, e.lesson_seq, e.position) for e in numbered] == [
        (first[0].id, 1, 1),
        (first[1].id, 2, 2),
    ]
    loose = [NewEvent("session.start", {"ref": "x"}, META)]
    assert await store.append_unordered(loose) == await store.append_unordered(loose)
    with psycopg.connect(db_url) as conn:
        count = conn.execute("SELECT count(*) FROM events").fetchone()
    assert count == (3,)
    assert await store.sequence() == 1  # the re-appends wrote nothing to number

    changed = [NewEvent(batch[1].type, {"ord": 1, "content_delta": "other"}, id=batch[1].id)]
    with pytest.raises(DuplicateEventId, match="other content"):
        await store.append("L", changed, expected_seq=1)
    with pytest.raises(DuplicateEventId, match="only part of the batch"):
        await store.append("L", [batch[1], partial(9)], expected_seq=1)
    assert await store.lesson_head("L") == 2


async def test_a_session_level_batch_refused_for_one_reused_id_still_reports_what_it_stored(
    pool: AsyncConnectionPool[Any],
) -> None:
    """The new events of such a batch are committed before the reused id is checked, so the
    append listeners (the sequencer's wake-up, the metrics) must hear of them all the same."""
    store = EventStore(pool)
    heard: list[StoredEvent] = []
    store.on_append(heard.extend)
    kept = NewEvent("session.start", {"ref": "a"}, META)
    await store.append_unordered([kept])
    fresh = NewEvent("session.start", {"ref": "b"}, META)
    reused = NewEvent("session.start", {"ref": "other"}, META, id=kept.id)
    with pytest.raises(DuplicateEventId, match="other content"):
        await store.append_unordered([fresh, reused])
    assert [e.id for e in heard] == [kept.id, fresh.id]
    assert await store.sequence() == 2


async def test_events_beside_a_batch_land_first_in_its_commit_or_not_at_all(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    store = EventStore(pool)
    heard: list[StoredEvent] = []
    store.on_append(heard.extend)
    meta = EventMeta(trace_id="req_1", session_id="s1", user_id="u1")
    await store.append("L", [partial(0)], expected_seq=0)

    def run() -> NewEvent:
        return NewEvent.of(
            ModelRunRecorded(new_id(), "offline", "moderation", 1, 1, 0.0, 0, "ok", "req_1"), meta
        )

    asked = NewEvent.of(InteractionRecorded(new_id(), "ask", {"question": "why?"}, None, 1), meta)
    beside = [run(), run()]
    stored = await store.append("L", [partial(1), asked], expected_seq=1, beside=beside)
    assert [(e.id, e.lesson_seq) for e in stored] == [(stored[0].id, 2), (asked.id, 3)]
    assert stored[1].payload["payload"] == {"question": "why?"}  # its personal field, revealed
    # Listeners hear of both.
    assert {e.id for e in heard} >= {e.id for e in stored} | {e.id for e in beside}

    # A stale expected_seq stores nothing: neither the batch, nor what is beside it, nor
    # their vault rows.
    late = NewEvent.of(InteractionRecorded(new_id(), "ask", {"question": "late"}, None, 1), meta)
    with pytest.raises(WrongExpectedSeq):
        await store.append("L", [late], expected_seq=1, beside=[run()])
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT id, lesson_seq FROM events WHERE lesson_id = 'L' ORDER BY insert_no"
        ).fetchall()
        vault = conn.execute("SELECT event_id FROM personal_data").fetchall()
    # The runs beside went in just before the batch, as if appended first.
    assert [r[0] for r in rows[1:]] == [beside[0].id, beside[1].id, stored[0].id, asked.id]
    assert [r[1] for r in rows] == [1, None, None, 2, 3]
    assert {v[0] for v in vault} == {stored[0].id, asked.id, rows[0][0]}


async def test_subscriber_starting_mid_stream_gets_backlog_then_live_without_a_seam(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    store = EventStore(pool)
    async with running(store, db_url) as hub:

        async def write() -> None:
            seq = 0
            while seq < 300:
                size = 1 + seq % 3
                await store.append("L", [partial(i) for i in range(size)], expected_seq=seq)
                seq += size

        writer = asyncio.create_task(write())
        try:
            await until(_head_at_least(store, "L", 60))
            async with hub.lesson("L", after_seq=25) as lesson_sub, hub.log(40) as log_sub:
                first = await lesson_sub.next_batch(timeout=5)
                assert first[0].lesson_seq == 26  # the backlog comes first
                await writer  # the rest arrives live while we read
                final_seq = await store.lesson_head("L")
                lesson_events = first + await collect(lesson_sub, final_seq - 25 - len(first))
                await store.sequence()
                log_events = await collect(log_sub, await store.head_position() - 40)
                assert await lesson_sub.next_batch(timeout=0.3) == []
                assert await log_sub.next_batch(timeout=0.3) == []
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
    assert [e.lesson_seq for e in lesson_events] == list(range(26, final_seq + 1))
    assert [e.position for e in log_events] == list(range(41, final_seq + 1))


def _head_at_least(store: EventStore, lesson: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await store.lesson_head(lesson) >= n

    return check


PG_BIN = Path(pgserver.__file__).parent / "pginstall" / "bin"


def dump_and_restore(source_url: str, target_url: str, dump_file: Path) -> None:
    """pg_dump a database and restore it with psql, as an operator would (logical copy)."""
    subprocess.run(
        [PG_BIN / "pg_dump", "--no-owner", "--no-privileges", "-f", dump_file, source_url],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [PG_BIN / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", dump_file, target_url],
        check=True,
        capture_output=True,
    )


async def test_catch_up_and_appends_see_every_event_in_order_after_dump_and_restore(
    pool: AsyncConnectionPool[Any], db_url: str, empty_db_url: str, tmp_path: Path
) -> None:
    store = EventStore(pool)
    for lesson in ("A", "B", "C"):
        for seq in range(0, 20, 4):
            await store.append(lesson, [partial(i) for i in range(4)], expected_seq=seq)
    await store.sequence()
    # Committed but not yet numbered when the dump is taken (the sequencer had not run).
    pending = await store.append("A", [partial(20), partial(21)], expected_seq=20)
    pending += await store.append("D", [partial(0)], expected_seq=0)
    before = [e async for e in store.read_all()]
    assert [e.position for e in before] == list(range(1, 61))

    await asyncio.to_thread(dump_and_restore, db_url, empty_db_url, tmp_path / "log.sql")

    async with other_process(empty_db_url) as restored:
        with psycopg.connect(empty_db_url) as conn:
            assert pending_migrations(conn, MIGRATIONS) == []
            with pytest.raises(pgerr.InsufficientPrivilege):
                conn.execute("DELETE FROM events")
        assert [e async for e in restored.read_all()] == before
        assert await restored.sequence() == 3  # numbered after the restore, after the rest
        tail = [e async for e in restored.read_all(after_position=60)]
        assert [(e.id, e.position) for e in tail] == [(e.id, 61 + i) for i, e in enumerate(pending)]
        # New appends continue each lesson's seqs and the global order.
        more = await restored.append("A", [partial(22)], expected_seq=22)
        more += await restored.append("E", [partial(0)], expected_seq=0)
        with pytest.raises(WrongExpectedSeq):
            await restored.append("B", [partial(99)], expected_seq=3)
        async with running(restored, empty_db_url) as hub, hub.log() as follower:
            everything = await collect(follower, 65)
        assert [e.position for e in everything] == list(range(1, 66))
        assert [e.id for e in everything] == [e.id for e in before + pending + more]
        assert [e.lesson_seq async for e in restored.read_lesson("A")] == list(range(1, 24))


async def test_read_all_reads_ahead_and_stops_cleanly_when_the_reader_does(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    for seq in range(0, 25, 5):
        await store.append("L", [partial(i) for i in range(5)], expected_seq=seq)
    await store.sequence()
    assert [e.position async for e in store.read_all(3, page_size=4)] == list(range(4, 26))
    reader = store.read_all(0, page_size=4)
    first = [await anext(reader) for _ in range(5)]  # the second page is being read ahead
    await reader.aclose()  # type: ignore[attr-defined]  # an async generator underneath
    assert [e.position for e in first] == [1, 2, 3, 4, 5]
    assert await store.head_position() == 25  # the pool is intact
