"""A lesson's own log: read it, fold it, check who owns it, and append decisions to it.

Every request decides on the lesson as the log holds it now, with no projection in the way.
Folding the whole log on every request grew with the lesson (an ask re-read and re-folded
every earlier ask), so each process keeps the latest folded state of the lessons it used
last (`FoldCache`, per store): a load reads only the events appended after the cached
version, by any writer in any process, and folds them on. The log is append-only, so a
cached state plus the newer events is exactly the fresh fold; ownership and deletion come
from those events, so a lesson deleted or transferred elsewhere is refused as before. The
read also checks that the log still holds the cached last event, and folds from scratch if
the database went back in time (a restore, a failover to a lagging replica).

`commit` is the one append-and-retry loop every writer of a lesson uses (handlers and the
generation worker): decide on the folded state, append with that state's version as
expected_seq, and on a conflict fold what was missed and decide again. What it appended
becomes the cached state.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from commands.errors import Conflict, NotFound
from commands.lesson_model import LessonState, fold
from eventstore.errors import WrongExpectedSeq
from eventstore.events import DomainEvent
from eventstore.store import EventMeta, EventStore, NewEvent, StoredEvent

CONFLICT_RETRIES = 8
NO_SUCH_LESSON = "No lesson with this id."
# Lessons whose folded state a process keeps. A lesson's state is tens of KB (its plan,
# beats' content, interactions); lessons in use at once per process are far fewer.
FOLD_CACHE_LESSONS = 256


@dataclass(frozen=True)
class Folded:
    """A lesson's state, and the id of the event at its version (the log must still hold
    that event there for newer events to fold onto this state)."""

    state: LessonState
    last_event_id: str


class FoldCache:
    """The latest folded states of the lessons used last in this process (LRU)."""

    def __init__(self, capacity: int = FOLD_CACHE_LESSONS) -> None:
        self.capacity = capacity
        self._lessons: OrderedDict[str, Folded] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lessons)

    def get(self, lesson_id: str) -> Folded | None:
        folded = self._lessons.get(lesson_id)
        if folded is not None:
            self._lessons.move_to_end(lesson_id)
        return folded

    def keep(self, state: LessonState, events: Sequence[StoredEvent]) -> None:
        """Keep `state`, just folded through `events` (its last ones), unless a newer state
        is kept already (concurrent requests finish in any order)."""
        if not events or not state.lesson_id:
            return
        held = self._lessons.get(state.lesson_id)
        if held is None or held.state.version <= state.version:
            self._lessons[state.lesson_id] = Folded(state, events[-1].id)
        self._lessons.move_to_end(state.lesson_id)
        while len(self._lessons) > self.capacity:
            self._lessons.popitem(last=False)

    def drop(self, lesson_id: str) -> None:
        self._lessons.pop(lesson_id, None)


# One cache per store: a process (or a test) may hold stores of different databases.
_caches: weakref.WeakKeyDictionary[EventStore, FoldCache] = weakref.WeakKeyDictionary()


def fold_cache(store: EventStore) -> FoldCache:
    cache = _caches.get(store)
    if cache is None:
        cache = _caches[store] = FoldCache()
    return cache


def check_lesson_id(lesson_id: str) -> None:
    """Ids are ULIDs; anything else cannot name a lesson (and never reaches the database)."""
    if not lesson_id.isascii() or not lesson_id.isalnum() or len(lesson_id) > 64:
        raise NotFound(NO_SUCH_LESSON)


async def read_lesson(store: EventStore, lesson_id: str) -> tuple[list[StoredEvent], LessonState]:
    """The lesson's whole log and its fold (for a reader that needs the events too)."""
    events = [e async for e in store.read_lesson(lesson_id)]
    return events, fold(events, lesson_id=lesson_id)


async def load_state(store: EventStore, lesson_id: str) -> LessonState:
    """The lesson's state as the log holds it now: the cached fold, and the events appended
    since (one read), or the whole log folded when nothing usable is cached."""
    cache = fold_cache(store)
    held = cache.get(lesson_id)
    if held is not None:
        newer = await store.read_lesson_after_known(
            lesson_id, held.state.version, held.last_event_id
        )
        if newer is not None:
            state = fold(newer, held.state)
            cache.keep(state, newer)
            return state
        cache.drop(lesson_id)  # the log no longer holds what was folded: start over
    events, state = await read_lesson(store, lesson_id)
    cache.keep(state, events)
    return state


def check_owner(state: LessonState, user_id: str) -> None:
    """NotFound unless the lesson exists, is live, and is theirs (others' look absent)."""
    if state.user_id != user_id or state.deleted:
        raise NotFound(NO_SUCH_LESSON)


async def load_owned(store: EventStore, lesson_id: str, user_id: str) -> LessonState:
    """The lesson's state; NotFound unless it exists, is live, and is theirs."""
    check_lesson_id(lesson_id)
    state = await load_state(store, lesson_id)
    check_owner(state, user_id)
    return state


async def commit(
    store: EventStore,
    state: LessonState,
    decide: Callable[[LessonState], list[DomainEvent]],
    meta: EventMeta,
    *,
    on_conflict: Exception | None = None,
    retries: int = CONFLICT_RETRIES,
    beside: Sequence[NewEvent] = (),
) -> tuple[list[StoredEvent], LessonState]:
    """Decide on `state` and append; on a conflict fold what was missed and decide again.

    Returns the events that became known (missed ones, then the appended ones) and the state
    after them. After `retries` conflicts in a row, raises `on_conflict` (a Conflict by
    default): the lesson is changing faster than this writer can decide. `beside` (events
    without a lesson_seq, such as the runs of the moderation calls the decision rests on)
    are stored in the decision's own commit, or on their own if it decides nothing; once
    this returns they are stored.
    """
    known: list[StoredEvent] = []
    for _ in range(retries):
        new = decide(state)
        if not new:
            await store.append_unordered(beside, lesson_id=state.lesson_id)
            return known, state
        try:
            stored = await store.append(
                state.lesson_id,
                [NewEvent.of(e, meta) for e in new],
                expected_seq=state.version,
                beside=beside,
            )
        except WrongExpectedSeq:
            missed = [e async for e in store.read_lesson(state.lesson_id, state.version)]
            known.extend(missed)
            state = fold(missed, state)
            continue
        known.extend(stored)
        state = fold(stored, state)
        fold_cache(store).keep(state, stored)
        return known, state
    raise on_conflict or Conflict("The lesson is changing too fast; try again.")
