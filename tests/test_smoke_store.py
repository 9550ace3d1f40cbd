from __future__ import annotations

from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from eventstore.errors import WrongExpectedSeq
from eventstore.events import BeatPartial, LessonCreated
from eventstore.store import EventMeta, EventStore, NewEvent

pytestmark = pytest.mark.anyio


def created() -> LessonCreated:
    return LessonCreated("s1", "u1", "physics", "Hooke's law", "hs", {"why": "homework"})


async def test_append_then_read(pool: AsyncConnectionPool[Any]) -> None:
    store = EventStore(pool)
    meta = EventMeta(trace_id="req_x", session_id="s1")
    first = await store.append("L1", [NewEvent.of(created(), meta)], expected_seq=0)
    assert [e.lesson_seq for e in first] == [1]
    more = [NewEvent.of(BeatPartial(2, f"d{i}"), meta) for i in range(3)]
    stored = await store.append("L1", more, expected_seq=1)
    assert [e.lesson_seq for e in stored] == [2, 3, 4]
    again = await store.append("L1", more, expected_seq=1)
    assert [e.id for e in again] == [e.id for e in stored]
    with pytest.raises(WrongExpectedSeq) as info:
        await store.append("L1", [NewEvent.of(BeatPartial(2, "x"), meta)], expected_seq=2)
    assert info.value.current_seq == 4
    with pytest.raises(WrongExpectedSeq):
        await store.append("L1", [NewEvent.of(BeatPartial(2, "x"), meta)], expected_seq=9)
    assert [e.lesson_seq async for e in store.read_lesson("L1", after_seq=2)] == [3, 4]
    assert [e async for e in store.read_all()] == []
    assert await store.sequence() == 4
    positions = [e.position async for e in store.read_all()]
    assert positions == [1, 2, 3, 4]
    assert isinstance((await anext(store.read_lesson("L1"))).domain(), LessonCreated)
