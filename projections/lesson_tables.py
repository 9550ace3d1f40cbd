"""The lessons projection: lessons, plan_revisions, beats and interactions from lesson streams.

Choices where the contract is silent:

* A lesson is `draft` from lesson.created, `active` from plan.locked, and ends `complete`
  (lesson.completed) or `abandoned` (lesson.abandoned); the first ending wins. plan_json is
  the latest plan.revised; every revision is a plan_revisions row whose id is its event id.
* A beat row is the slot (lesson, ord). It appears when the log first mentions that beat
  (beat.started, or beat.completed / beat.failed for a beat generated without streaming, as
  beat 1 is) — the plan's outline lives in lessons.plan_json, so no `pending` rows are
  written ahead. Its id is the first beat_id the log gave the slot; a regenerated beat (after
  an adjust, or a worker restart) reuses the row and goes back to `streaming`. Partial
  deltas are not projected: the SSE stream reads them from the log.
* lesson.deleted soft-deletes the lesson, its beats and its interactions (deleted_at); rows
  written for it later are born deleted.
* lesson.transferred moves the lesson to its new owner (user_id). lesson.erased (the owner's
  personal data was purged, docs/privacy.md) deletes the lesson's rows from all four tables;
  an erased lesson has no further events.
* Every timestamp is the event's, so a rebuild gives identical rows.

Every handler raises EventNotApplicable for an event that contradicts the model (a plan for a
lesson never created); the runner stops the projection there (a poison event).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from eventstore.events import (
    ABANDONED,
    ACTIVE,
    COMPLETE,
    DRAFT,
    FAILED,
    READY,
    STREAMING,
    AudioReady,
    BeatCompleted,
    BeatFailed,
    BeatStarted,
    InteractionRecorded,
    LessonAbandoned,
    LessonCompleted,
    LessonCreated,
    LessonDeleted,
    LessonErased,
    LessonTransferred,
    PlanLocked,
    PlanRevised,
)
from eventstore.queries import load_queries
from eventstore.store import StoredEvent
from projections.core import Conn, Projection, Tables, json_text
from projections.errors import EventNotApplicable

_Q = load_queries(Path(__file__).parent / "sql" / "lessons.sql")

ENDED = frozenset({COMPLETE, ABANDONED})
EMPTY_JSON = "{}"


@dataclass(slots=True)
class LessonRow:
    id: str
    session_id: str
    user_id: str
    subject: str
    topic: str
    status: str
    level_at_start: str
    intent_json: str
    plan_json: str | None
    created_at: datetime
    completed_at: datetime | None
    deleted_at: datetime | None
    subject_id: str | None
    topic_id: str | None
    locked_revision: int | None
    total_beats: int | None
    updated_at: datetime | None


@dataclass(slots=True)
class BeatRow:
    id: str
    lesson_id: str
    ord: int
    kind: str
    content_json: str
    narration_text: str | None
    audio_url: str | None
    viz_url: str | None
    status: str
    created_at: datetime
    deleted_at: datetime | None
    title: str | None
    model: str | None
    error_code: str | None
    error_message: str | None
    updated_at: datetime | None


@dataclass(slots=True)
class PlanRevisionRow:
    id: str
    lesson_id: str
    revision_num: int
    plan_json: str
    triggered_by: str
    feedback_text: str | None
    created_at: datetime


@dataclass(slots=True)
class InteractionRow:
    id: str
    lesson_id: str
    beat_id: str | None
    type: str
    payload_json: str
    response_json: str | None
    ts: datetime
    deleted_at: datetime | None


LESSON_COLUMNS = tuple(LessonRow.__dataclass_fields__)
BEAT_COLUMNS = tuple(BeatRow.__dataclass_fields__)
REVISION_COLUMNS = tuple(PlanRevisionRow.__dataclass_fields__)
INTERACTION_COLUMNS = tuple(InteractionRow.__dataclass_fields__)


@dataclass
class LessonsState:
    """The rows one page of events touches, folded in memory, then written back at once."""

    lessons: dict[str, LessonRow] = field(default_factory=dict)
    beats: dict[tuple[str, int], BeatRow] = field(default_factory=dict)
    dirty_lessons: dict[str, None] = field(default_factory=dict)  # an ordered set
    dirty_beats: dict[tuple[str, int], None] = field(default_factory=dict)
    revisions: list[PlanRevisionRow] = field(default_factory=list)
    interactions: list[InteractionRow] = field(default_factory=list)
    deleted: dict[str, datetime] = field(default_factory=dict)
    erased: dict[str, None] = field(default_factory=dict)  # an ordered set


def evolve(state: LessonsState, event: StoredEvent) -> None:
    """Apply one lesson-stream event to the in-memory rows (pure: no I/O)."""
    lesson_id = event.lesson_id
    if lesson_id is None:
        raise EventNotApplicable(f"{event.type} event {event.id} names no lesson")
    domain = event.domain()
    ts = event.ts
    if isinstance(domain, LessonCreated):
        if lesson_id in state.lessons:
            raise EventNotApplicable(f"lesson {lesson_id} is created a second time")
        state.lessons[lesson_id] = LessonRow(
            id=lesson_id,
            session_id=domain.session_id,
            user_id=domain.user_id,
            subject=domain.subject,
            topic=domain.topic,
            status=DRAFT,
            level_at_start=domain.level,
            intent_json=json_text(domain.intent),
            plan_json=None,
            created_at=ts,
            completed_at=None,
            deleted_at=None,
            subject_id=domain.subject_id,
            topic_id=domain.topic_id,
            locked_revision=None,
            total_beats=None,
            updated_at=ts,
        )
        state.dirty_lessons[lesson_id] = None
        return
    if isinstance(domain, LessonErased):
        state.lessons.pop(lesson_id, None)
        state.dirty_lessons.pop(lesson_id, None)
        for key in [k for k in state.beats if k[0] == lesson_id]:
            del state.beats[key]
            state.dirty_beats.pop(key, None)
        state.revisions = [r for r in state.revisions if r.lesson_id != lesson_id]
        state.interactions = [i for i in state.interactions if i.lesson_id != lesson_id]
        state.deleted.pop(lesson_id, None)
        state.erased[lesson_id] = None
        return
    lesson = state.lessons.get(lesson_id)
    if lesson is None:
        raise EventNotApplicable(f"{event.type} for lesson {lesson_id}, which was never created")
    lesson.updated_at = ts
    state.dirty_lessons[lesson_id] = None
    if isinstance(domain, PlanRevised):
        lesson.plan_json = json_text(domain.plan)
        state.revisions.append(
            PlanRevisionRow(
                id=event.id,
                lesson_id=lesson_id,
                revision_num=domain.revision_num,
                plan_json=lesson.plan_json,
                triggered_by=domain.triggered_by,
                feedback_text=domain.feedback_text,
                created_at=ts,
            )
        )
    elif isinstance(domain, PlanLocked):
        if lesson.status == DRAFT:
            lesson.status = ACTIVE
        lesson.locked_revision = domain.revision_num
        lesson.total_beats = domain.total_beats
    elif isinstance(domain, BeatStarted):
        beat = _slot(state, lesson, domain.ord, domain.beat_id, domain.kind, ts)
        beat.kind, beat.title, beat.model = domain.kind, domain.title, domain.model
        beat.status = STREAMING
        beat.content_json, beat.narration_text, beat.audio_url = EMPTY_JSON, None, None
        beat.error_code = beat.error_message = None
        beat.updated_at = ts
    elif isinstance(domain, BeatCompleted):
        beat = _slot(state, lesson, domain.ord, domain.beat_id, domain.kind, ts)
        beat.kind, beat.status = domain.kind, READY
        beat.content_json = json_text(domain.content_json)
        beat.narration_text = domain.narration_text
        if domain.audio_url is not None:
            beat.audio_url = domain.audio_url
        beat.error_code = beat.error_message = None
        beat.updated_at = ts
    elif isinstance(domain, BeatFailed):
        kind = _planned_kind(lesson, domain.ord)
        beat = _slot(state, lesson, domain.ord, domain.beat_id, kind, ts)
        beat.status = FAILED
        beat.error_code, beat.error_message = domain.code, domain.message
        beat.updated_at = ts
    elif isinstance(domain, AudioReady):
        existing = state.beats.get((lesson_id, domain.beat_ord))
        if existing is not None:  # audio for a beat never started has nothing to attach to
            existing.audio_url = domain.audio_url
            existing.updated_at = ts
            state.dirty_beats[(lesson_id, domain.beat_ord)] = None
    elif isinstance(domain, LessonCompleted):
        if lesson.status not in ENDED:
            lesson.status, lesson.completed_at = COMPLETE, ts
    elif isinstance(domain, LessonAbandoned):
        if lesson.status not in ENDED:
            lesson.status = ABANDONED
    elif isinstance(domain, LessonTransferred):
        lesson.user_id = domain.to_user_id
    elif isinstance(domain, LessonDeleted):
        if lesson.deleted_at is None:
            lesson.deleted_at = ts
            state.deleted[lesson_id] = ts
            for key, beat in state.beats.items():
                if key[0] == lesson_id and beat.deleted_at is None:
                    beat.deleted_at = ts
                    state.dirty_beats[key] = None
    elif isinstance(domain, InteractionRecorded):
        slot = None if domain.beat_ord is None else state.beats.get((lesson_id, domain.beat_ord))
        state.interactions.append(
            InteractionRow(
                id=domain.interaction_id,
                lesson_id=lesson_id,
                beat_id=slot.id if slot is not None else None,
                type=domain.type,
                payload_json=json_text(domain.payload),
                response_json=None if domain.response is None else json_text(domain.response),
                ts=ts,
                deleted_at=lesson.deleted_at,
            )
        )
    else:  # pragma: no cover - EVENT_TYPES below lists exactly the types handled above
        raise EventNotApplicable(f"the lessons projection does not read {event.type}")


def _slot(
    state: LessonsState, lesson: LessonRow, ord_: int, beat_id: str, kind: str, ts: datetime
) -> BeatRow:
    key = (lesson.id, ord_)
    beat = state.beats.get(key)
    if beat is None:
        beat = BeatRow(
            id=beat_id,
            lesson_id=lesson.id,
            ord=ord_,
            kind=kind,
            content_json=EMPTY_JSON,
            narration_text=None,
            audio_url=None,
            viz_url=None,
            status=STREAMING,
            created_at=ts,
            deleted_at=lesson.deleted_at,
            title=None,
            model=None,
            error_code=None,
            error_message=None,
            updated_at=ts,
        )
        state.beats[key] = beat
    state.dirty_beats[key] = None
    return beat


def _planned_kind(lesson: LessonRow, ord_: int) -> str:
    """The kind the plan gives beat `ord_` (a beat that failed before it ever started)."""
    plan: Any = orjson.loads(lesson.plan_json) if lesson.plan_json else {}
    beats = plan.get("beats") if isinstance(plan, dict) else None
    for beat in beats if isinstance(beats, list) else []:
        if isinstance(beat, dict) and beat.get("ord") == ord_ and isinstance(beat.get("kind"), str):
            return str(beat["kind"])
    return "free"


def _columns(rows: Sequence[object], names: Sequence[str]) -> dict[str, list[Any]]:
    return {name: [getattr(r, name) for r in rows] for name in names}


async def apply(conn: Conn, tables: Tables, events: Sequence[StoredEvent]) -> None:
    """Load the rows the page touches, fold the events over them, write the changes back."""
    if not events:
        return
    ids = sorted({e.lesson_id for e in events if e.lesson_id is not None})
    state = LessonsState()
    cur = await conn.execute(tables.render(_Q["load_lessons"]), {"ids": ids})
    for r in await cur.fetchall():
        state.lessons[r[0]] = LessonRow(*r)
    cur = await conn.execute(tables.render(_Q["load_beats"]), {"ids": ids})
    for r in await cur.fetchall():
        beat = BeatRow(*r)
        state.beats[(beat.lesson_id, beat.ord)] = beat
    for event in events:
        evolve(state, event)
    await write(conn, tables, state)


async def write(conn: Conn, tables: Tables, state: LessonsState) -> None:
    if state.dirty_lessons:
        rows = [state.lessons[k] for k in state.dirty_lessons]
        await conn.execute(tables.render(_Q["upsert_lessons"]), _columns(rows, LESSON_COLUMNS))
    if state.dirty_beats:
        beats = [state.beats[k] for k in state.dirty_beats]
        await conn.execute(tables.render(_Q["upsert_beats"]), _columns(beats, BEAT_COLUMNS))
    if state.revisions:
        await conn.execute(
            tables.render(_Q["insert_plan_revisions"]),
            _columns(state.revisions, REVISION_COLUMNS),
        )
    if state.interactions:
        await conn.execute(
            tables.render(_Q["insert_interactions"]),
            _columns(state.interactions, INTERACTION_COLUMNS),
        )
    if state.deleted:
        await conn.execute(
            tables.render(_Q["soft_delete_interactions"]),
            {"lesson_id": list(state.deleted), "deleted_at": list(state.deleted.values())},
        )
    if state.erased:
        for query in ("erase_interactions", "erase_plan_revisions", "erase_beats", "erase_lessons"):
            await conn.execute(tables.render(_Q[query]), {"ids": list(state.erased)})


EVENT_TYPES = frozenset(
    {
        LessonCreated.TYPE,
        PlanRevised.TYPE,
        PlanLocked.TYPE,
        BeatStarted.TYPE,
        BeatCompleted.TYPE,
        BeatFailed.TYPE,
        AudioReady.TYPE,
        LessonCompleted.TYPE,
        LessonAbandoned.TYPE,
        LessonDeleted.TYPE,
        LessonTransferred.TYPE,
        LessonErased.TYPE,
        InteractionRecorded.TYPE,
    }
)

PROJECTION = Projection(
    name="lessons",
    event_types=EVENT_TYPES,
    tables=("lessons", "plan_revisions", "beats", "interactions"),
    apply=apply,
    lesson_stream_types=EVENT_TYPES,
)
