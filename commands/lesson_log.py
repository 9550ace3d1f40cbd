"""A lesson's own log: read it, fold it, check who owns it, and append decisions to it.

A lesson is small (hundreds of events), so folding it on every request is cheap and always
consistent with the last write, with no projection in the way. `commit` is the one
append-and-retry loop every writer of a lesson uses (handlers and the generation worker):
decide on the folded state, append with that state's version as expected_seq, and on a
conflict fold what was missed and decide again.
"""

from __future__ import annotations

from collections.abc import Callable

from commands.errors import Conflict, NotFound
from commands.lesson_model import LessonState, fold
from eventstore.errors import WrongExpectedSeq
from eventstore.events import DomainEvent
from eventstore.store import EventMeta, EventStore, NewEvent, StoredEvent

CONFLICT_RETRIES = 8
NO_SUCH_LESSON = "No lesson with this id."


def check_lesson_id(lesson_id: str) -> None:
    """Ids are ULIDs; anything else cannot name a lesson (and never reaches the database)."""
    if not lesson_id.isascii() or not lesson_id.isalnum() or len(lesson_id) > 64:
        raise NotFound(NO_SUCH_LESSON)


async def read_lesson(store: EventStore, lesson_id: str) -> tuple[list[StoredEvent], LessonState]:
    events = [e async for e in store.read_lesson(lesson_id)]
    return events, fold(events, lesson_id=lesson_id)


def check_owner(state: LessonState, user_id: str) -> None:
    """NotFound unless the lesson exists, is live, and is theirs (others' look absent)."""
    if state.user_id != user_id or state.deleted:
        raise NotFound(NO_SUCH_LESSON)


async def load_owned(
    store: EventStore, lesson_id: str, user_id: str
) -> tuple[list[StoredEvent], LessonState]:
    """The lesson's events and state; NotFound unless it exists, is live, and is theirs."""
    check_lesson_id(lesson_id)
    events, state = await read_lesson(store, lesson_id)
    check_owner(state, user_id)
    return events, state


async def commit(
    store: EventStore,
    state: LessonState,
    decide: Callable[[LessonState], list[DomainEvent]],
    meta: EventMeta,
    *,
    on_conflict: Exception | None = None,
) -> tuple[list[StoredEvent], LessonState]:
    """Decide on `state` and append; on a conflict fold what was missed and decide again.

    Returns the events that became known (missed ones, then the appended ones) and the state
    after them. After CONFLICT_RETRIES conflicts in a row, raises `on_conflict` (a Conflict
    by default): the lesson is changing faster than this writer can decide.
    """
    known: list[StoredEvent] = []
    for _ in range(CONFLICT_RETRIES):
        new = decide(state)
        if not new:
            return known, state
        try:
            stored = await store.append(
                state.lesson_id, [NewEvent.of(e, meta) for e in new], expected_seq=state.version
            )
        except WrongExpectedSeq:
            missed = [e async for e in store.read_lesson(state.lesson_id, state.version)]
            known.extend(missed)
            state = fold(missed, state)
            continue
        known.extend(stored)
        return known, fold(stored, state)
    raise on_conflict or Conflict("The lesson is changing too fast; try again.")
