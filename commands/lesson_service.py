"""Lesson commands and reads that web/ calls: load, open the stream, abandon, show.

Each reads the lesson's own log, folds it (commands/lessons.py), decides, and appends with
the folded version as expected_seq; on a conflict it reads what it missed and decides
again. A lesson is small (hundreds of events), so folding it on every request is cheap and
always consistent with the last write, with no projection in the way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from commands.errors import Conflict, NotFound
from commands.generation import Supervisor
from commands.lessons import (
    READY,
    STREAMING,
    LessonState,
    costs_by_family,
    decide_abandon,
    decide_lock,
    fold,
)
from eventstore.errors import WrongExpectedSeq
from eventstore.events import DomainEvent
from eventstore.store import EventMeta, EventStore, NewEvent, StoredEvent

CONFLICT_RETRIES = 8


async def read_lesson(store: EventStore, lesson_id: str) -> tuple[list[StoredEvent], LessonState]:
    events = [e async for e in store.read_lesson(lesson_id)]
    return events, fold(events, lesson_id=lesson_id)


async def load_owned(
    store: EventStore, lesson_id: str, user_id: str
) -> tuple[list[StoredEvent], LessonState]:
    """The lesson's events and state; NotFound unless it exists, is live, and is theirs."""
    if not lesson_id.isalnum() or len(lesson_id) > 64:
        raise NotFound("No lesson with this id.")
    events, state = await read_lesson(store, lesson_id)
    if state.user_id != user_id or state.deleted:
        raise NotFound("No lesson with this id.")
    return events, state


async def commit(
    store: EventStore,
    events: list[StoredEvent],
    state: LessonState,
    decide: Callable[[LessonState], list[DomainEvent]],
    meta: EventMeta,
) -> tuple[list[StoredEvent], LessonState]:
    """Decide and append on top of `state`; on a conflict fold the news and decide again.

    Returns every event of the lesson known afterwards and the state after them.
    """
    for _ in range(CONFLICT_RETRIES):
        new = decide(state)
        if not new:
            return events, state
        try:
            stored = await store.append(
                state.lesson_id, [NewEvent.of(e, meta) for e in new], expected_seq=state.version
            )
        except WrongExpectedSeq:
            missed = [e async for e in store.read_lesson(state.lesson_id, state.version)]
            events, state = events + missed, fold(missed, state)
            continue
        return events + stored, fold(stored, state)
    raise Conflict("The lesson is changing too fast; try again.")


async def open_stream(
    store: EventStore,
    supervisor: Supervisor,
    events: list[StoredEvent],
    state: LessonState,
    meta: EventMeta,
) -> tuple[list[StoredEvent], LessonState]:
    """Opening the stream locks the plan and asks for generation (any process may run it)."""
    if state.finished:
        return events, state
    # The lease row first: if this process dies before the lock, whoever claims the lesson
    # locks it; the lock's expected_seq keeps the two from both locking.
    await supervisor.request(state.lesson_id)
    return await commit(store, events, state, decide_lock, meta)


async def abandon(
    store: EventStore,
    supervisor: Supervisor,
    events: list[StoredEvent],
    state: LessonState,
    meta: EventMeta,
) -> LessonState:
    events, state = await commit(store, events, state, decide_abandon, meta)
    # Stop generation now: here directly, elsewhere at the owner's next lease renewal (or
    # its next append, which no longer fits the log).
    await supervisor.leases.abandon(state.lesson_id)
    await supervisor.stop_lesson(state.lesson_id)
    return state


def lesson_json(state: LessonState) -> dict[str, Any]:
    """GET /v1/lesson/{id}: the plan, every beat with its status and content, the status."""
    beats = []
    for b in state.beats:
        beat: dict[str, Any] = {
            "ord": b.ord,
            "id": b.beat_id,
            "kind": b.kind,
            "title": b.title,
            "est_min": b.est_min,
            "status": b.status,
            "content_json": b.content_json if b.status == READY else None,
            "narration_text": b.narration_text if b.status == READY else None,
            "audio_url": b.audio_url,
        }
        if b.status == STREAMING:
            beat["partial_text"] = b.partial_text
        beats.append(beat)
    return {
        "lesson_id": state.lesson_id,
        "status": state.status,
        "subject": state.subject,
        "topic": state.topic,
        "level": state.level,
        "intent": state.intent,
        "plan": state.plan,
        "revision_num": state.revision_num,
        "total_beats": len(state.beats),
        "beats": beats,
        "created_at": state.created_at.isoformat() if state.created_at else None,
        "completed_at": (
            state.ended_at.isoformat() if state.ended_at and state.status == "complete" else None
        ),
        "duration_ms": state.duration_ms,
        "model_costs": costs_by_family(state),
    }
