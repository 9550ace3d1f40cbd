"""The per-process fold cache of commands/lesson_log.py, against a real PostgreSQL.

A cached load (the cached state plus the events appended since) must always equal a fresh
fold of the whole log, whoever appended in between; a lesson deleted or transferred after it
was cached is refused like any other; and a log that went back in time (a restore) is folded
again from scratch instead of being folded onto a state it no longer holds.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from commands import lesson_log
from commands.errors import NotFound
from commands.lesson_log import FoldCache, fold_cache, load_owned, load_state
from commands.lesson_model import LessonState, decide_interaction
from eventstore.events import (
    DomainEvent,
    ErrorRaised,
    InteractionRecorded,
    LessonAbandoned,
    LessonDeleted,
    LessonTransferred,
    PlanRevised,
)
from eventstore.ids import new_id
from eventstore.store import EventMeta, EventStore, NewEvent, StoredEvent
from tests.lesson_log import append_lesson, plan, run, simple_lesson
from tests.logkit import other_process

pytestmark = pytest.mark.anyio

USER, SESSION = "user-1", "session-1"


async def fresh(store: EventStore, lesson_id: str) -> LessonState:
    _, state = await lesson_log.read_lesson(store, lesson_id)
    return state


async def new_lesson(store: EventStore, beats: int = 2) -> str:
    lesson_id = new_id()
    await append_lesson(store, lesson_id, SESSION, simple_lesson(USER, SESSION, beats)[:-1])
    return lesson_id


# Events any writer may append to a live lesson, in any order (none refers to a beat that
# might not exist): what other processes do to a lesson between two loads of this one.
later_event = st.one_of(
    st.builds(
        lambda q: InteractionRecorded(new_id(), "ask", {"question": q}, {"text": "a"}, 1),
        # jsonb holds any text but NUL.
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=20),
    ),
    st.builds(lambda cost: run(cost=cost, beat_ord=1), st.floats(0, 1, allow_nan=False)),
    st.builds(lambda n: PlanRevised(2, plan(n), "adjust", superseded=[n]), st.integers(1, 4)),
    st.just(ErrorRaised("model_unavailable", "down", True, "req_x")),
    st.just(LessonAbandoned(1)),
    st.just(LessonTransferred(USER, "user-2")),
    st.just(LessonDeleted()),
)
# A step: which store appends a batch (this process's or another's), then whether this
# process loads the lesson.
step = st.tuples(st.booleans(), st.lists(later_event, min_size=0, max_size=3), st.booleans())


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(step, min_size=1, max_size=8))
async def test_a_cached_load_equals_a_fresh_fold_whoever_appended(
    pool: AsyncConnectionPool[Any],
    db_url: str,
    steps: list[tuple[bool, list[DomainEvent], bool]],
) -> None:
    store = EventStore(pool)
    async with other_process(db_url) as elsewhere:
        lesson_id = await new_lesson(store)
        assert await load_state(store, lesson_id) == await fresh(store, lesson_id)
        for here, events, load in steps:
            writer = store if here else elsewhere
            head = await writer.lesson_head(lesson_id)
            await append_lesson(writer, lesson_id, SESSION, events, expected_seq=head)
            if load:
                assert await load_state(store, lesson_id) == await fresh(store, lesson_id)
        assert await load_state(store, lesson_id) == await fresh(store, lesson_id)


async def test_a_lesson_deleted_elsewhere_after_it_was_cached_is_refused(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    store = EventStore(pool)
    lesson_id = await new_lesson(store)
    assert (await load_owned(store, lesson_id, USER)).user_id == USER
    assert fold_cache(store).get(lesson_id) is not None
    async with other_process(db_url) as elsewhere:
        head = await elsewhere.lesson_head(lesson_id)
        await append_lesson(elsewhere, lesson_id, SESSION, [LessonDeleted()], expected_seq=head)
    with pytest.raises(NotFound):
        await load_owned(store, lesson_id, USER)


async def test_a_lesson_transferred_elsewhere_after_it_was_cached_is_refused_to_its_old_owner(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    store = EventStore(pool)
    lesson_id = await new_lesson(store)
    await load_owned(store, lesson_id, USER)
    async with other_process(db_url) as elsewhere:
        head = await elsewhere.lesson_head(lesson_id)
        moved = LessonTransferred(USER, "user-2")
        await append_lesson(elsewhere, lesson_id, SESSION, [moved], expected_seq=head)
    with pytest.raises(NotFound):
        await load_owned(store, lesson_id, USER)
    assert (await load_owned(store, lesson_id, "user-2")).user_id == "user-2"


async def test_what_a_commit_appended_is_cached_and_the_next_load_reads_only_newer_events(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    store = EventStore(pool)
    lesson_id = await new_lesson(store)
    state = await load_owned(store, lesson_id, USER)
    asked = InteractionRecorded(new_id(), "ask", {"question": "why?"}, {"text": "so"}, 1)
    _, after = await lesson_log.commit(
        store, state, lambda s: decide_interaction(s, asked), EventMeta(user_id=USER)
    )
    held = fold_cache(store).get(lesson_id)
    assert held is not None
    assert held.state is after
    assert held.state.version == state.version + 1
    # Another process appends; this one folds just that onto what it holds.
    async with other_process(db_url) as elsewhere:
        later = InteractionRecorded(new_id(), "ask", {"question": "and?"}, {"text": "so"}, 1)
        await append_lesson(elsewhere, lesson_id, SESSION, [later], expected_seq=after.version)
    loaded = await load_state(store, lesson_id)
    assert loaded == await fresh(store, lesson_id)
    assert [i.interaction_id for i in loaded.interactions][-2:] == [
        asked.interaction_id,
        later.interaction_id,
    ]


async def test_a_log_restored_to_an_earlier_point_is_folded_again_from_scratch(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    lesson_id = await new_lesson(store)
    first = InteractionRecorded(new_id(), "ask", {"question": "lost?"}, {"text": "yes"}, 1)
    head = await store.lesson_head(lesson_id)
    await append_lesson(store, lesson_id, SESSION, [first], expected_seq=head)
    assert (await load_state(store, lesson_id)).version == head + 1
    # A restore from a backup taken before `first`; then another writer appends at its seq.
    async with pool.connection() as conn:
        await conn.execute("ALTER TABLE events DISABLE TRIGGER events_no_delete")
        await conn.execute(
            "DELETE FROM events WHERE lesson_id = %s AND lesson_seq > %s", (lesson_id, head)
        )
        await conn.execute("ALTER TABLE events ENABLE TRIGGER events_no_delete")
    other = InteractionRecorded(new_id(), "ask", {"question": "instead"}, {"text": "ok"}, 1)
    await store.append(
        lesson_id, [NewEvent.of(other, EventMeta(session_id=SESSION))], expected_seq=head
    )
    loaded = await load_state(store, lesson_id)
    assert loaded == await fresh(store, lesson_id)
    assert [i.interaction_id for i in loaded.interactions][-1] == other.interaction_id
    assert first.interaction_id not in {i.interaction_id for i in loaded.interactions}


async def test_reading_after_a_known_event_pages_through_everything_newer(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    lesson_id = await new_lesson(store)
    known = [e async for e in store.read_lesson(lesson_id)][-1]
    asks = [
        InteractionRecorded(new_id(), "ask", {"question": f"q{i}"}, {"text": "a"}, 1)
        for i in range(5)
    ]
    await append_lesson(store, lesson_id, SESSION, asks, expected_seq=known.lesson_seq or 0)
    newer = await store.read_lesson_after_known(
        lesson_id, known.lesson_seq or 0, known.id, page_size=2
    )
    assert newer is not None
    assert [e.payload["payload"] for e in newer] == [{"question": f"q{i}"} for i in range(5)]
    assert await store.read_lesson_after_known(lesson_id, known.lesson_seq or 0, "other") is None


async def test_an_unknown_lesson_is_not_cached(pool: AsyncConnectionPool[Any]) -> None:
    store = EventStore(pool)
    missing = new_id()
    assert (await load_state(store, missing)).status == "new"
    assert fold_cache(store).get(missing) is None


def stored(lesson_id: str, seq: int) -> StoredEvent:
    """A stored event as a fold ends on (the cache reads only its id)."""
    return StoredEvent(new_id(), None, lesson_id, seq, None, "lesson.created", 1, {}, {}, 0)


def test_the_cache_keeps_the_lessons_used_last_and_never_an_older_state() -> None:
    cache = FoldCache(capacity=2)
    a1, a2 = LessonState(lesson_id="A", version=1), LessonState(lesson_id="A", version=2)
    b, c = LessonState(lesson_id="B", version=1), LessonState(lesson_id="C", version=1)
    cache.keep(a2, [stored("A", 2)])
    cache.keep(a1, [stored("A", 1)])  # a request that read earlier and finished later
    held = cache.get("A")
    assert held is not None
    assert held.state is a2
    cache.keep(b, [stored("B", 1)])
    cache.get("A")  # A is now used more recently than B
    cache.keep(c, [stored("C", 1)])
    assert cache.get("B") is None
    assert cache.get("A") is not None
    assert cache.get("C") is not None
    assert len(cache) == 2
