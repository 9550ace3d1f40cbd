"""Every event type of the lesson log, in one place.

Events are facts, named in the past tense, as frozen dataclasses whose fields are the
payload (snake_case JSON). `TYPE` is the dotted name stored in `events.type` (contracts §12
plus the lesson log's own, DESIGN.md). `VERSION` is the payload shape's version: when a
shape changes, bump it and add an upcaster to `_UPCASTERS`; stored rows are never rewritten.

`to_payload` and `from_payload` are the one mapper between these classes and stored rows:
the store (eventstore/store.py) appends and reads rows, and builds a class only when a
caller asks (`NewEvent.of`, `StoredEvent.domain`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

JSON: TypeAlias = dict[str, Any]

# What the lesson log says a lesson and a beat are (lessons.status and beats.status in the
# contract's schema): the command side folds them, the projections write them.
DRAFT, ACTIVE, COMPLETE, ABANDONED = "draft", "active", "complete", "abandoned"
PENDING, STREAMING, READY, FAILED = "pending", "streaming", "ready", "failed"


@dataclass(frozen=True)
class LessonCreated:
    """A student asked for a lesson; the first event of every lesson stream."""

    TYPE: ClassVar[str] = "lesson.created"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ("topic", "intent")
    session_id: str
    user_id: str
    subject: str
    topic: str
    level: str  # pop | hs | ug | grad (lessons.level_at_start)
    intent: JSON
    subject_id: str | None = None
    topic_id: str | None = None


@dataclass(frozen=True)
class PlanRevised:
    """A plan version: the first (initial), or one after an iterate or adjust.

    `superseded` names the ords whose beats this revision replaces: what was generated of
    them before it is history (the stream's catch-up skips it, generation writes them
    again). Beats not named keep what they have. `level` is the lesson's level from this
    revision on (None: unchanged). Beat events belong to the latest revision before them
    in the log (their revision is their position, not a field).

    v1 → v2: `superseded` and `level` added (a v1 revision was always the initial one,
    before any beat but beat 1 existed, so it superseded nothing).
    """

    TYPE: ClassVar[str] = "plan.revised"
    VERSION: ClassVar[int] = 2
    PERSONAL: ClassVar[tuple[str, ...]] = ("plan", "feedback_text")
    revision_num: int
    plan: JSON  # {summary, beats: [{ord, kind, title, est_min}], after}
    triggered_by: str  # initial | iterate | adjust
    feedback_text: str | None = None
    superseded: list[int] = dataclasses.field(default_factory=list)
    level: str | None = None


@dataclass(frozen=True)
class PlanLocked:
    """The student locked the plan; generation of beats 2..N may start."""

    TYPE: ClassVar[str] = "plan.locked"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ()
    revision_num: int
    total_beats: int


@dataclass(frozen=True)
class BeatStarted:
    TYPE: ClassVar[str] = "beat.started"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ("title",)
    ord: int
    beat_id: str
    kind: str  # concept | derivation | problem | test | free
    title: str
    model: str


@dataclass(frozen=True)
class BeatPartial:
    """Coalesced token deltas of a beat being generated (about every 500 ms).

    `reset` marks the first partial of a beat restarted after its worker died: readers drop
    what they had of that beat.
    """

    TYPE: ClassVar[str] = "beat.partial"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ("content_delta",)
    ord: int
    content_delta: str
    reset: bool = False


@dataclass(frozen=True)
class BeatCompleted:
    TYPE: ClassVar[str] = "beat.completed"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ("content_json", "narration_text")
    ord: int
    beat_id: str
    kind: str
    content_json: JSON
    narration_text: str
    audio_url: str | None = None


@dataclass(frozen=True)
class BeatFailed:
    """A beat could not be generated (the lesson may retry it or end in an error)."""

    TYPE: ClassVar[str] = "beat.failed"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ()
    ord: int
    beat_id: str
    code: str
    message: str


@dataclass(frozen=True)
class AudioReady:
    TYPE: ClassVar[str] = "audio.ready"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ()
    beat_ord: int
    audio_url: str


@dataclass(frozen=True)
class LessonCompleted:
    TYPE: ClassVar[str] = "lesson.completed"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ()
    duration_ms: int
    model_costs: dict[str, float]  # contract model name → USD


@dataclass(frozen=True)
class LessonAbandoned:
    TYPE: ClassVar[str] = "lesson.abandoned"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ()
    last_beat_ord: int
    reason: str = "student"


@dataclass(frozen=True)
class LessonDeleted:
    """Soft delete: read models hide the lesson; the log keeps it (contracts §6)."""

    TYPE: ClassVar[str] = "lesson.deleted"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ()
    reason: str = "user"


@dataclass(frozen=True)
class LessonTransferred:
    """The lesson now belongs to another user: an anonymous student's work, moved into the
    account whose email they confirmed (magic link). Ownership is read from the log, so the
    move is an event of the lesson's own stream, not an UPDATE of a read model."""

    TYPE: ClassVar[str] = "lesson.transferred"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ()
    from_user_id: str
    to_user_id: str
    reason: str = "account_linked"


@dataclass(frozen=True)
class LessonErased:
    """The owner's personal data was purged (docs/privacy.md): read models drop the lesson's
    rows; its events stay, their personal fields read as erased."""

    TYPE: ClassVar[str] = "lesson.erased"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ()
    reason: str = "account_purged"


@dataclass(frozen=True)
class InteractionRecorded:
    """Anything the student did mid-lesson: ask, hint, attempt, adjust, visualize, ..."""

    TYPE: ClassVar[str] = "interaction.recorded"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ("payload", "response")
    interaction_id: str
    type: str
    payload: JSON
    response: JSON | None = None
    beat_ord: int | None = None


@dataclass(frozen=True)
class ModelRunRecorded:
    """One model call (success or failure); model_runs and the daily spend fold these."""

    TYPE: ClassVar[str] = "model_run.recorded"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ()
    run_id: str
    model: str  # haiku-4-5 | sonnet-4-6 | opus-4-7 | offline | elevenlabs
    purpose: str  # plan | beat | ask | adjust | moderation | tts | hello ...
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float  # exact to 5 decimals (NUMERIC(10,5) in model_runs)
    latency_ms: int
    status: str  # ok | rate_limited | refused | error | timeout
    trace_id: str
    error_code: str | None = None
    beat_ord: int | None = None


@dataclass(frozen=True)
class SafetyRefused:
    TYPE: ClassVar[str] = "safety.refused"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ()
    stage: str  # input | output
    category: str  # explicit_harm | csam | self_harm | doxxing
    field: str | None = None


@dataclass(frozen=True)
class OverQuotaHit:
    TYPE: ClassVar[str] = "over_quota.hit"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ()
    scope: str  # ip | user | global
    bucket: str  # plan | ask | spend
    retry_after_ms: int


@dataclass(frozen=True)
class CacheHit:
    TYPE: ClassVar[str] = "cache.hit"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ()
    key_kind: str  # plan | beat | tts | viz | makeme
    model: str | None = None


@dataclass(frozen=True)
class ErrorRaised:
    """An error returned to a client (contracts §12 `error`), or one that ended a stream."""

    TYPE: ClassVar[str] = "error"
    VERSION: ClassVar[int] = 1
    PERSONAL: ClassVar[tuple[str, ...]] = ()
    code: str
    message: str
    recoverable: bool
    trace_id: str
    retry_after_ms: int | None = None
    # What failed: "generation" (the lesson cannot go on until the stream is reopened) or
    # "narration" (one clip is missing; the lesson goes on). Added with a default, so
    # payloads stored before it read as "generation", which is what they were.
    source: str = "generation"


DomainEvent: TypeAlias = (
    LessonCreated
    | PlanRevised
    | PlanLocked
    | BeatStarted
    | BeatPartial
    | BeatCompleted
    | BeatFailed
    | AudioReady
    | LessonCompleted
    | LessonAbandoned
    | LessonDeleted
    | LessonTransferred
    | LessonErased
    | InteractionRecorded
    | ModelRunRecorded
    | SafetyRefused
    | OverQuotaHit
    | CacheHit
    | ErrorRaised
)

EVENT_CLASSES: Mapping[str, type[DomainEvent]] = {
    cls.TYPE: cls
    for cls in (
        LessonCreated,
        PlanRevised,
        PlanLocked,
        BeatStarted,
        BeatPartial,
        BeatCompleted,
        BeatFailed,
        AudioReady,
        LessonCompleted,
        LessonAbandoned,
        LessonDeleted,
        LessonTransferred,
        LessonErased,
        InteractionRecorded,
        ModelRunRecorded,
        SafetyRefused,
        OverQuotaHit,
        CacheHit,
        ErrorRaised,
    )
}

# Contracts §12: analytics events the browser may send (POST /v1/event). They are stored
# session-level (no lesson_seq) and never read as lesson-log events.
CLIENT_EVENT_TYPES: frozenset[str] = frozenset(
    {
        "session.start",
        "discovery.search",
        "lesson.invoke",
        "setup.skip",
        "setup.submit",
        "plan.shown",
        "plan.iterate",
        "plan.locked",
        "beat.advance",
        "ask.fired",
        "attempt.submit",
        "adjust.applied",
        "visualize.fired",
        "animate.fired",
        "makeme.fired",
        "lesson.complete",
        "lesson.abandon",
    }
)

# Personal fields of the client-side types (contracts §12): text the student typed. Like the
# PERSONAL fields of the lesson log's own types, they are kept apart from the event and can
# be forgotten (eventstore/personal.py, docs/privacy.md).
CLIENT_PERSONAL_FIELDS: Mapping[str, tuple[str, ...]] = {
    "discovery.search": ("query",),
    "lesson.invoke": ("topic",),
    "setup.submit": ("intent",),
    "plan.iterate": ("free_text",),
}

# What an erased personal field reads as. Every personal field is text or a JSON object (or
# optional), so these three cover them; a reader of an erased lesson sees a well-formed event.
ERASED_TEXT = "[erased]"


def personal_fields(type_: str) -> tuple[str, ...]:
    """The names of the personal fields of an event type (none for most types)."""
    cls = EVENT_CLASSES.get(type_)
    if cls is not None:
        return cls.PERSONAL
    return CLIENT_PERSONAL_FIELDS.get(type_, ())


def _erased_value(cls: type[DomainEvent], name: str) -> Any:
    annotation = str(cls.__dataclass_fields__[name].type)
    if "None" in annotation:
        return None
    if annotation.startswith(("JSON", "dict")):
        return {}
    return ERASED_TEXT


# (type, stored version) → function from that version's payload to the next version's.
_UPCASTERS: dict[tuple[str, int], Callable[[JSON], JSON]] = {
    (PlanRevised.TYPE, 1): lambda p: {**p, "superseded": [], "level": None},
}


class UnknownEventType(ValueError):
    pass


def to_payload(event: DomainEvent) -> JSON:
    return dataclasses.asdict(event)


def from_payload(type_: str, version: int, payload: Mapping[str, Any]) -> DomainEvent:
    """Build the current dataclass from a stored payload of any version."""
    cls = EVENT_CLASSES.get(type_)
    if cls is None:
        raise UnknownEventType(type_)
    data = dict(payload)
    while version < cls.VERSION:
        data = _UPCASTERS[(type_, version)](data)
        version += 1
    for name in cls.PERSONAL:
        if name not in data:  # forgotten (docs/privacy.md): the field reads as erased
            data[name] = _erased_value(cls, name)
    return cls(**data)
