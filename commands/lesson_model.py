"""The lesson aggregate: its state folded from the log, and the decisions made on it.

Pure functions only (no I/O): `evolve(state, event)` folds one event into the state;
`decide_*` functions look at a state and return the events to append, or raise a
CommandError when the command makes no sense in that state. Callers (commands/plan.py,
commands/generation.py, web/) read the log, fold it, decide, and append the result with the
state's `version` as expected_seq, so a decision is only ever stored on top of the state it
was made from. That is what makes "no beat is completed twice" hold across workers: a
second worker's decision was made on a state that no longer exists, its append fails, and
re-deciding on the fresh state refuses.

Each (re)start of a beat bumps the beat's `attempt`; partials and the completion name the
attempt they belong to, so a worker that lost its lease cannot write into a beat another
worker restarted (a fencing token kept in the log itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from commands.errors import Conflict, NotFound
from commands.providers import BeatContent, ModelRun, Plan, PlanBeat
from eventstore.events import (
    ABANDONED,
    ACTIVE,
    COMPLETE,
    DRAFT,
    FAILED,
    JSON,
    PENDING,
    READY,
    STREAMING,
    AudioReady,
    BeatCompleted,
    BeatFailed,
    BeatPartial,
    BeatStarted,
    CacheHit,
    DomainEvent,
    ErrorRaised,
    InteractionRecorded,
    LessonAbandoned,
    LessonCompleted,
    LessonCreated,
    LessonDeleted,
    LessonErased,
    LessonTransferred,
    ModelRunRecorded,
    PlanLocked,
    PlanRevised,
)
from eventstore.ids import new_id
from eventstore.store import StoredEvent

NEW = "new"  # a lesson with no events yet; the other statuses are the log's (events.py)
TERMINAL = frozenset({COMPLETE, ABANDONED})


class Superseded(Conflict):
    """The decision was made on a view of the lesson that another writer has moved past."""


class RevisionSuperseded(Superseded):
    """A plan revision replaced the beat being generated: generation goes on under it."""


@dataclass(frozen=True)
class BeatState:
    ord: int
    kind: str
    title: str
    est_min: int
    status: str = PENDING
    beat_id: str | None = None
    attempt: int = 0  # bumped at every (re)start
    content_json: JSON | None = None
    narration_text: str | None = None
    audio_url: str | None = None
    partial_text: str = ""  # deltas of the current attempt; dropped once the beat is ready
    started_seq: int = 0  # seq of the event that began the current attempt (or superseded it)
    completed_seq: int = 0  # seq of beat.completed (0 while not ready)
    revision: int = 0  # the plan revision this beat's content belongs to (0: none yet)

    @property
    def catch_up_from(self) -> int:
        """The first seq of this beat's partials worth replaying to a catching-up reader:
        none of a complete beat (beat_complete carries it whole), and only the current
        attempt's of a beat being (re)generated."""
        return self.completed_seq if self.status == READY else self.started_seq


@dataclass(frozen=True)
class Interaction:
    """One interaction.recorded of the lesson (ask, attempt, adjust, whiteboard, iterate)."""

    interaction_id: str
    type: str
    beat_ord: int | None
    payload: JSON
    response: JSON | None
    created_at: datetime | None

    def json(self) -> JSON:
        return {
            "interaction_id": self.interaction_id,
            "type": self.type,
            "beat_ord": self.beat_ord,
            "payload": self.payload,
            "response": self.response,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }


@dataclass(frozen=True)
class LessonState:
    lesson_id: str = ""
    version: int = 0  # lesson_seq of the last event folded in
    status: str = NEW
    user_id: str = ""
    session_id: str = ""
    subject: str = ""
    topic: str = ""
    level: str = ""
    intent: JSON = field(default_factory=dict)
    plan: JSON | None = None  # the latest revision: {summary, beats, after}
    revision_num: int = 0
    locked_seq: int = 0  # seq of plan.locked (0: not locked)
    locked_plan: JSON | None = None  # the plan as it was locked (the first plan_ready)
    beats: tuple[BeatState, ...] = ()
    model_costs: Mapping[str, Decimal] = field(default_factory=dict)
    created_at: datetime | None = None
    locked_at: datetime | None = None
    ended_at: datetime | None = None
    ended_seq: int = 0  # seq of lesson.completed / lesson.abandoned
    duration_ms: int | None = None
    failed_seq: int = 0  # seq of the last generation error (0 when none since)
    deleted: bool = False
    revised_seq: int = 0  # seq of the latest plan.revised
    superseded: tuple[int, ...] = ()  # ords the latest revision superseded
    interactions: tuple[Interaction, ...] = ()

    def beat(self, ord: int) -> BeatState:
        for b in self.beats:
            if b.ord == ord:
                return b
        raise NotFound(f"beat {ord} is not in this lesson's plan")

    @property
    def locked(self) -> bool:
        return self.locked_seq > 0

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def last_start_seq(self) -> int:
        """seq of the latest beat (re)start: generation's errors before it are history."""
        return max((b.started_seq for b in self.beats), default=0)

    def next_beat(self) -> BeatState | None:
        """The first beat that is not ready: where generation starts or resumes."""
        return next((b for b in self.beats if b.status != READY), None)

    def plan_object(self) -> Plan:
        if self.plan is None:
            raise NotFound("this lesson has no plan")
        return plan_from_json(self.plan)


# ---- evolve --------------------------------------------------------------------------------

_State = TypeVar("_State", "LessonState", "BeatState")


def replace(state: _State, /, **changes: Any) -> _State:
    """dataclasses.replace for the states here, which have no __init__ logic to re-run.

    A fold replaces the state twice per event; dataclasses.replace rebuilds every field
    through __init__ (~7 µs for LessonState, this ~1 µs), and folding was the largest part
    of a stream open that is not the framework's (docs/lessons.md, the reconnect storm).
    """
    unknown = changes.keys() - state.__dataclass_fields__.keys()
    if unknown:
        raise TypeError(f"{type(state).__name__} has no field {sorted(unknown)[0]!r}")
    new = object.__new__(type(state))
    new.__dict__.update(state.__dict__, **changes)
    return new


def _beat_changed(state: LessonState, ord: int, **changes: Any) -> tuple[BeatState, ...]:
    return tuple(replace(b, **changes) if b.ord == ord else b for b in state.beats)


def _beats_of(
    plan: JSON, previous: Sequence[BeatState], superseded: Sequence[int], seq: int
) -> tuple[BeatState, ...]:
    """Beats of a new plan revision (at `seq`): a superseded beat starts over (pending, its
    history before `seq` left behind); any other beat keeps what it has.

    A superseded beat keeps counting attempts, so a worker still writing the old attempt
    can never match the attempt of its replacement (the fencing token survives revisions).
    """
    old = {b.ord: b for b in previous}
    out = []
    for pb in plan.get("beats", []):
        fresh = BeatState(pb["ord"], pb["kind"], pb["title"], pb["est_min"])
        before = old.get(pb["ord"])
        if before is None:
            out.append(fresh)
        elif pb["ord"] in superseded:
            out.append(replace(fresh, attempt=before.attempt, started_seq=seq))
        elif before.status == PENDING:
            out.append(replace(fresh, attempt=before.attempt, started_seq=before.started_seq))
        else:
            out.append(before)
    return tuple(out)


def evolve(state: LessonState, event: DomainEvent, ts: datetime | None = None) -> LessonState:
    """The state after `event` (which the log stored at seq state.version + 1, time `ts`)."""
    seq = state.version + 1
    # One replace per event (a replace builds the whole 27-field state): it was most of a
    # fold's time when the version and the change were two.
    return replace(state, version=seq, **_changes(state, event, seq, ts))


def _changes(s: LessonState, event: DomainEvent, seq: int, ts: datetime | None) -> dict[str, Any]:
    """The fields `event` (at `seq`) changes in `s`."""
    match event:
        case LessonCreated():
            return {
                "status": DRAFT,
                "user_id": event.user_id,
                "session_id": event.session_id,
                "subject": event.subject,
                "topic": event.topic,
                "level": event.level,
                "intent": event.intent,
                "created_at": ts,
            }
        case PlanRevised():
            return {
                "plan": event.plan,
                "revision_num": event.revision_num,
                "level": event.level or s.level,
                "beats": _beats_of(event.plan, s.beats, event.superseded, seq),
                "revised_seq": seq,
                "superseded": tuple(event.superseded),
            }
        case PlanLocked():
            return {"status": ACTIVE, "locked_seq": seq, "locked_at": ts, "locked_plan": s.plan}
        case BeatStarted():
            b = s.beat(event.ord)
            beats = _beat_changed(
                s,
                event.ord,
                status=STREAMING,
                beat_id=event.beat_id,
                attempt=b.attempt + 1,
                partial_text="",
                started_seq=seq,
                revision=s.revision_num,
            )
            return {"beats": beats}
        case BeatPartial():
            b = s.beat(event.ord)
            if event.reset:
                beats = _beat_changed(
                    s,
                    event.ord,
                    status=STREAMING,
                    attempt=b.attempt + 1,
                    partial_text=event.content_delta,
                    started_seq=seq,
                )
            else:
                text = b.partial_text + event.content_delta
                beats = _beat_changed(s, event.ord, partial_text=text)
            return {"beats": beats}
        case BeatCompleted():
            beats = _beat_changed(
                s,
                event.ord,
                status=READY,
                beat_id=event.beat_id,
                content_json=event.content_json,
                narration_text=event.narration_text,
                audio_url=event.audio_url,
                partial_text="",
                completed_seq=seq,
            )
            return {"beats": beats}
        case BeatFailed():
            return {"beats": _beat_changed(s, event.ord, status=FAILED)}
        case AudioReady():
            return {"beats": _beat_changed(s, event.beat_ord, audio_url=event.audio_url)}
        case ModelRunRecorded():
            costs = dict(s.model_costs)
            costs[event.model] = costs.get(event.model, Decimal(0)) + Decimal(str(event.cost_usd))
            return {"model_costs": costs}
        case LessonCompleted():
            return {
                "status": COMPLETE,
                "ended_at": ts,
                "ended_seq": seq,
                "duration_ms": event.duration_ms,
            }
        case LessonAbandoned():
            return {"status": ABANDONED, "ended_at": ts, "ended_seq": seq}
        case LessonDeleted() | LessonErased():
            return {"deleted": True}
        case LessonTransferred():
            return {"user_id": event.to_user_id}
        case ErrorRaised(source="generation"):
            return {"failed_seq": seq}
        case InteractionRecorded():
            done = Interaction(
                event.interaction_id, event.type, event.beat_ord, event.payload, event.response, ts
            )
            return {"interactions": (*s.interactions, done)}
        case _:
            return {}


def fold(
    events: Iterable[StoredEvent], state: LessonState | None = None, lesson_id: str = ""
) -> LessonState:
    """Fold stored events (in seq order, following `state`) into a lesson state."""
    s = state or LessonState(lesson_id=lesson_id)
    for e in events:
        if e.lesson_seq != s.version + 1:
            raise ValueError(f"event seq {e.lesson_seq} does not follow {s.version}")
        s = evolve(s, e.domain(), e.ts)
        if not s.lesson_id and e.lesson_id:
            s = replace(s, lesson_id=e.lesson_id)
    return s


# ---- decide -------------------------------------------------------------------------------


def plan_json(plan: Plan) -> JSON:
    return {
        "summary": plan.summary,
        "beats": [
            {"ord": b.ord, "kind": b.kind, "title": b.title, "est_min": b.est_min}
            for b in plan.beats
        ],
        "after": plan.after,
    }


def plan_from_json(data: Mapping[str, Any]) -> Plan:
    return Plan(
        summary=data["summary"],
        beats=tuple(
            PlanBeat(ord=b["ord"], kind=b["kind"], title=b["title"], est_min=b["est_min"])
            for b in data["beats"]
        ),
        after=data["after"],
    )


def run_event(run: ModelRun, trace_id: str, beat_ord: int | None = None) -> ModelRunRecorded:
    return ModelRunRecorded(
        run_id=new_id(),
        model=run.model,
        purpose=run.purpose,
        prompt_tokens=run.prompt_tokens,
        completion_tokens=run.completion_tokens,
        cost_usd=float(run.cost_usd),
        latency_ms=run.latency_ms,
        status=run.status,
        trace_id=trace_id,
        error_code=run.error_code,
        beat_ord=beat_ord,
    )


@dataclass(frozen=True)
class NewLesson:
    """What POST /v1/plan decided to create (validated by commands/plan.py)."""

    user_id: str
    session_id: str
    subject: str
    topic: str
    level: str
    intent: JSON
    subject_id: str | None
    topic_id: str | None


def decide_create(
    state: LessonState,
    lesson: NewLesson,
    plan: Plan,
    beat1: BeatContent,
    beat1_id: str,
    *,
    model: str,
    runs: Sequence[ModelRun],
    trace_id: str,
    cache_hit: bool,
) -> list[DomainEvent]:
    """A new lesson with its first plan revision and beat 1, in one batch."""
    if state.status != NEW:
        raise Conflict("this lesson already exists")
    first = plan.beats[0]
    events: list[DomainEvent] = [
        LessonCreated(
            session_id=lesson.session_id,
            user_id=lesson.user_id,
            subject=lesson.subject,
            topic=lesson.topic,
            level=lesson.level,
            intent=lesson.intent,
            subject_id=lesson.subject_id,
            topic_id=lesson.topic_id,
        ),
        PlanRevised(revision_num=1, plan=plan_json(plan), triggered_by="initial"),
        BeatStarted(ord=1, beat_id=beat1_id, kind=first.kind, title=first.title, model=model),
        BeatCompleted(
            ord=1,
            beat_id=beat1_id,
            kind=first.kind,
            content_json=beat1.content_json,
            narration_text=beat1.narration_text,
        ),
    ]
    if cache_hit:
        events.append(CacheHit(key_kind="plan", model=model))
    events.extend(run_event(r, trace_id, beat_ord=None) for r in runs)
    return events


def decide_lock(state: LessonState) -> list[DomainEvent]:
    """Lock the plan when the stream first opens; nothing once it is locked or over."""
    if state.status == NEW:
        raise NotFound("no such lesson")
    if state.status != DRAFT or state.locked:
        return []
    return [PlanLocked(revision_num=state.revision_num, total_beats=len(state.beats))]


def _require_active(state: LessonState) -> None:
    if state.status != ACTIVE:
        raise Superseded(f"the lesson is {state.status}, not active")


def decide_start_beat(
    state: LessonState, ord: int, beat_id: str, model: str, revision: int | None = None
) -> list[DomainEvent]:
    """Begin beat `ord`: beat.started the first time, a reset partial on a restart.

    `revision` is the plan revision the caller prepared the beat from: if the plan has been
    revised since, its preparation (the plan it sends the model, the cache key) is stale.
    """
    _require_active(state)
    if revision is not None and revision != state.revision_num:
        raise RevisionSuperseded(f"the plan was revised to {state.revision_num}")
    b = state.beat(ord)
    if b.status == READY:
        raise Superseded(f"beat {ord} is already complete")
    if b.status == PENDING:
        return [BeatStarted(ord=ord, beat_id=beat_id, kind=b.kind, title=b.title, model=model)]
    return [BeatPartial(ord=ord, content_delta="", reset=True)]


def _require_attempt(state: LessonState, ord: int, attempt: int) -> BeatState:
    _require_active(state)
    b = state.beat(ord)
    if b.status != STREAMING or b.attempt != attempt:
        if b.started_seq == state.revised_seq and b.status == PENDING:
            raise RevisionSuperseded(f"beat {ord} was superseded by a plan revision")
        raise Superseded(f"beat {ord} attempt {attempt} was superseded")
    return b


def _started_id(beat: BeatState) -> str:
    """A streaming beat's id, which its beat.started gave it."""
    if beat.beat_id is None:
        raise Superseded(f"beat {beat.ord} was never started")
    return beat.beat_id


def decide_partial(state: LessonState, ord: int, attempt: int, delta: str) -> list[DomainEvent]:
    _require_attempt(state, ord, attempt)
    return [BeatPartial(ord=ord, content_delta=delta)] if delta else []


def decide_complete_beat(
    state: LessonState,
    ord: int,
    attempt: int,
    content: BeatContent,
    *,
    final_delta: str = "",
    prefix: Sequence[DomainEvent] = (),
    now: datetime,
) -> list[DomainEvent]:
    """Finish beat `ord` (after its last partial); finish the lesson if it was the last.

    `prefix` (model runs, a cache hit) goes first in the same batch; the lesson's
    model_costs in lesson.completed include any runs in it.
    """
    b = _require_attempt(state, ord, attempt)
    events: list[DomainEvent] = [*prefix]
    if final_delta:
        events.append(BeatPartial(ord=ord, content_delta=final_delta))
    events.append(
        BeatCompleted(
            ord=ord,
            beat_id=_started_id(b),
            kind=b.kind,
            content_json=content.content_json,
            narration_text=content.narration_text,
        )
    )
    after = state
    for e in events:
        after = evolve(after, e, now)
    return events + decide_complete_lesson(after, now)


def decide_complete_lesson(state: LessonState, now: datetime) -> list[DomainEvent]:
    if state.status != ACTIVE or any(b.status != READY for b in state.beats):
        return []
    started = state.locked_at or state.created_at or now
    duration_ms = max(0, round((now - started).total_seconds() * 1000))
    return [LessonCompleted(duration_ms=duration_ms, model_costs=costs_by_family(state))]


def costs_by_family(state: LessonState) -> dict[str, float]:
    """USD per model family ("haiku", "sonnet", "opus", "offline"), as contracts §4 shows
    lesson_complete's model_costs; model_runs keep the full names (haiku-4-5, …)."""
    families: dict[str, Decimal] = {}
    for model, cost in state.model_costs.items():
        family = model.split("-", 1)[0]
        families[family] = families.get(family, Decimal(0)) + cost
    return {f: float(c.quantize(Decimal("0.00001"))) for f, c in sorted(families.items())}


def decide_fail_beat(
    state: LessonState,
    ord: int,
    attempt: int,
    *,
    code: str,
    message: str,
    trace_id: str,
    retry_after_ms: int | None = None,
    prefix: Sequence[DomainEvent] = (),
) -> list[DomainEvent]:
    """Generation gives up on beat `ord` for now: the stream shows a recoverable error."""
    b = _require_attempt(state, ord, attempt)
    return [
        *prefix,
        BeatFailed(ord=ord, beat_id=_started_id(b), code=code, message=message),
        ErrorRaised(
            code=code,
            message=message,
            recoverable=True,
            trace_id=trace_id,
            retry_after_ms=retry_after_ms,
        ),
    ]


def decide_abandon(state: LessonState) -> list[DomainEvent]:
    """The student gave up; idempotent on an abandoned lesson, refused on a finished one."""
    if state.status == NEW:
        raise NotFound("no such lesson")
    if state.status == ABANDONED:
        return []
    if state.status == COMPLETE:
        raise Conflict("This lesson is already complete.")
    done = [b.ord for b in state.beats if b.status == READY]
    return [LessonAbandoned(last_beat_ord=max(done, default=0))]


# ---- revisions and interactions ---------------------------------------------------------------


def decide_interaction(
    state: LessonState,
    interaction: InteractionRecorded,
    runs: Sequence[ModelRunRecorded] = (),
) -> list[DomainEvent]:
    """Record an ask, attempt or whiteboard (finished lessons too: they are for review)."""
    if state.status == NEW or state.deleted:
        raise NotFound("No lesson with this id.")
    return [*runs, interaction]


@dataclass(frozen=True)
class Revision:
    """A plan revision a handler prepared: which plan, why, and which beats it replaces.

    `current_ord` is the beat the student is on; for an adjust, beats after it are
    superseded (contracts §5). `only_ord` names one beat to regenerate instead.
    """

    plan: JSON
    triggered_by: str  # adjust | iterate
    feedback_text: str | None
    level: str | None = None
    current_ord: int = 0
    only_ord: int | None = None


def superseded_ords(state: LessonState, revision: Revision) -> list[int]:
    if revision.only_ord is not None:
        return [revision.only_ord]
    ords = {b.ord for b in state.beats} | {int(b["ord"]) for b in revision.plan["beats"]}
    return sorted(o for o in ords if o > revision.current_ord)


def kept_plan(state: LessonState, revision: Revision) -> JSON:
    """The revised plan with every beat up to `current_ord` exactly as the lesson has it."""
    old = {int(b["ord"]): b for b in (state.plan or {}).get("beats", [])}
    beats = [
        old[int(b["ord"])] if int(b["ord"]) <= revision.current_ord and int(b["ord"]) in old else b
        for b in revision.plan["beats"]
    ]
    return {**revision.plan, "beats": beats}


def decide_adjust(
    state: LessonState,
    revision: Revision,
    interaction: InteractionRecorded,
    runs: Sequence[ModelRunRecorded] = (),
) -> list[DomainEvent]:
    """The next plan revision of an active lesson, mid-stream.

    Whichever is appended first wins the race with the last beat: once `lesson.completed`
    is in the log there is nothing to adjust (Conflict); once `plan.revised` is, the beat
    generation was finishing no longer fits the log and is written again.
    """
    if state.status == NEW or state.deleted:
        raise NotFound("No lesson with this id.")
    if state.status == DRAFT:
        raise Conflict("This lesson has not started; change its plan with POST /v1/plan.")
    if state.status != ACTIVE:
        raise Conflict(f"This lesson is {state.status}; it can no longer be adjusted.")
    plan = kept_plan(state, revision)
    return [
        *runs,
        PlanRevised(
            revision_num=state.revision_num + 1,
            plan=plan,
            triggered_by=revision.triggered_by,
            feedback_text=revision.feedback_text,
            superseded=superseded_ords(state, revision),
            level=revision.level,
        ),
        interaction,
    ]


def decide_iterate(
    state: LessonState,
    plan: Plan,
    beat1: BeatContent,
    beat1_id: str,
    *,
    model: str,
    feedback_text: str | None,
    interaction: InteractionRecorded,
    runs: Sequence[ModelRunRecorded] = (),
) -> list[DomainEvent]:
    """A new plan (and beat 1) for a lesson whose stream never opened; Conflict after."""
    if state.status == NEW or state.deleted:
        raise NotFound("No lesson with this id.")
    if state.status != DRAFT or state.locked:
        raise Conflict("This lesson has started; adjust it instead of iterating its plan.")
    new_plan = plan_json(plan)
    ords = {b.ord for b in state.beats} | {b.ord for b in plan.beats}
    first = plan.beats[0]
    return [
        *runs,
        PlanRevised(
            revision_num=state.revision_num + 1,
            plan=new_plan,
            triggered_by="iterate",
            feedback_text=feedback_text,
            superseded=sorted(ords),
        ),
        BeatStarted(ord=1, beat_id=beat1_id, kind=first.kind, title=first.title, model=model),
        BeatCompleted(
            ord=1,
            beat_id=beat1_id,
            kind=first.kind,
            content_json=beat1.content_json,
            narration_text=beat1.narration_text,
        ),
        interaction,
    ]


def student_position(state: LessonState, advanced_to: int | None) -> int:
    """The beat the student is on: the last `beat.advance` they sent, else the last beat
    completed (beat 1 at least)."""
    if advanced_to is not None and any(b.ord == advanced_to for b in state.beats):
        return advanced_to
    done = [b.ord for b in state.beats if b.status == READY]
    return max(done, default=1)
