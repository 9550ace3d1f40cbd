"""What a lesson's stream sends: log events as the contract's SSE events (contracts §4).

Pure: no I/O. `StreamView.of(state)` is built from the lesson as folded when the reader
connected, so catch-up can leave out what a full replay would not show:

* the partials of a beat already complete (its `beat_complete` carries the whole content),
  and the partials of a beat's attempts before its latest restart;
* plan revisions before the lock (the first `plan_ready` is `plan.locked`, carrying the
  plan as locked); revisions after it are sent as further `plan_ready` events, with their
  `revision_num` and the ords they `superseded` (a reader drops what it has of those);
* everything of a beat that a later revision superseded (its partials, its
  `beat_complete`, its audio): a catching-up reader only gets the beats a full replay shows;
* generation errors that a later beat start has moved past are sent but do not end the
  stream.

Events appended after the reader connected are all rendered. Ids are the lesson_seq of the
log event (`{lesson_id}-evt-{seq:05d}`), so they only increase.

Beat events carry the plan `revision` they belong to. The log does not store it: a beat
event belongs to the latest plan.revised before it (its position decides). A catching-up
reader only gets current beats, whose revision the folded state knows; live events take the
revision of the latest plan.revised the view has rendered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from commands.errors import ErrorCode, InvalidInput, error_body
from commands.lesson_model import LessonState
from eventstore.events import (
    AudioReady,
    BeatCompleted,
    BeatPartial,
    ErrorRaised,
    LessonAbandoned,
    LessonCompleted,
    PlanLocked,
    PlanRevised,
)
from eventstore.store import StoredEvent

# SSE event names (contracts §4).
PLAN_READY, BEAT_PARTIAL, BEAT_COMPLETE = "plan_ready", "beat_partial", "beat_complete"
AUDIO_READY, LESSON_COMPLETE = "audio_ready", "lesson_complete"
ERROR, HEARTBEAT = "error", "heartbeat"

NOT_IN_LESSON = 1 << 62  # catch-up from: never (a beat no longer in the plan)

_CURSOR = re.compile(r"(?P<lesson>[0-9A-Za-z]{1,64})-evt-(?P<seq>[0-9]{1,9})", re.ASCII)


def event_id(lesson_id: str, seq: int) -> str:
    return f"{lesson_id}-evt-{seq:05d}"


def parse_cursor(lesson_id: str, raw: str | None, field_name: str) -> int:
    """The seq a Last-Event-ID names (0 when absent); InvalidInput when malformed."""
    if raw is None or raw.strip() == "":
        return 0
    m = _CURSOR.fullmatch(raw.strip())
    if m is None:
        raise InvalidInput(field_name, f"must look like {lesson_id}-evt-00007; got {raw[:80]!r}")
    if m["lesson"] != lesson_id:
        raise InvalidInput(field_name, "names an event of another lesson")
    return int(m["seq"])


@dataclass(frozen=True)
class Frame:
    """One SSE event: its name, its data, and its id (None: does not move the cursor)."""

    name: str
    data: dict[str, Any]
    id: str | None = None


@dataclass
class StreamView:
    lesson_id: str
    connect_head: int  # the lesson's seq when the reader connected
    locked_seq: int
    catch_up_from: dict[int, int] = field(default_factory=dict)  # beat ord → first seq sent
    plan: dict[str, Any] | None = None  # the latest plan revision seen
    locked_plan: dict[str, Any] | None = None
    stop_on_error_from: int = 1  # an `error` at or after this seq ends the stream
    beat_revision: dict[int, int] = field(default_factory=dict)  # ord → revision, at connect
    live_revision: int = 0  # the latest revision rendered live (or known at connect)

    @classmethod
    def of(cls, state: LessonState) -> StreamView:
        return cls(
            lesson_id=state.lesson_id,
            connect_head=state.version,
            locked_seq=state.locked_seq,
            catch_up_from={b.ord: b.catch_up_from for b in state.beats},
            plan=state.plan,
            locked_plan=state.locked_plan,
            stop_on_error_from=state.last_start_seq + 1,
            beat_revision={b.ord: b.revision or state.revision_num for b in state.beats},
            live_revision=state.revision_num,
        )

    def _skipped(self, seq: int, ord: int, live: bool) -> bool:
        """Catch-up leaves out what a full replay would not show of beat `ord`."""
        return not live and seq < self.catch_up_from.get(ord, NOT_IN_LESSON)

    def _revision(self, ord: int, live: bool) -> int:
        return self.live_revision if live else self.beat_revision.get(ord, self.live_revision)

    def render(self, e: StoredEvent) -> tuple[Frame | None, bool]:
        """(the frame to send or None, whether the stream ends after it)."""
        seq = e.lesson_seq or 0
        p = e.payload
        eid = event_id(self.lesson_id, seq)
        live = seq > self.connect_head
        match e.type:
            case PlanLocked.TYPE:
                if live or self.locked_plan is None:
                    self.locked_plan = self.plan
                data = {
                    "plan": self.locked_plan or {},
                    "total_beats": p["total_beats"],
                    "revision_num": p["revision_num"],
                }
                return Frame(PLAN_READY, data, eid), False
            case PlanRevised.TYPE:
                if live:
                    self.plan = p["plan"]
                    self.live_revision = p["revision_num"]
                if seq < self.locked_seq:
                    return None, False  # before the lock: plan.locked carries it
                data = {
                    "plan": p["plan"],
                    "total_beats": len(p["plan"].get("beats", [])),
                    "revision_num": p["revision_num"],
                    "superseded": p.get("superseded", []),
                }
                return Frame(PLAN_READY, data, eid), False
            case BeatPartial.TYPE:
                if self._skipped(seq, p["ord"], live):
                    return None, False
                data = {
                    "ord": p["ord"],
                    "content_delta": p["content_delta"],
                    "status": "streaming",
                    "revision": self._revision(p["ord"], live),
                }
                if p.get("reset"):
                    data["reset"] = True
                return Frame(BEAT_PARTIAL, data, eid), False
            case BeatCompleted.TYPE:
                if self._skipped(seq, p["ord"], live):
                    return None, False
                data = {
                    "ord": p["ord"],
                    "content_json": p["content_json"],
                    "narration_text": p["narration_text"],
                    "audio_url": p.get("audio_url"),
                    "revision": self._revision(p["ord"], live),
                }
                return Frame(BEAT_COMPLETE, data, eid), False
            case AudioReady.TYPE:
                if self._skipped(seq, p["beat_ord"], live):
                    return None, False
                data = {"beat_ord": p["beat_ord"], "audio_url": p["audio_url"]}
                return Frame(AUDIO_READY, data, eid), False
            case LessonCompleted.TYPE:
                data = {"duration_ms": p["duration_ms"], "model_costs": p["model_costs"]}
                return Frame(LESSON_COMPLETE, data, eid), True
            case LessonAbandoned.TYPE:
                data = error_body(
                    ErrorCode.CONFLICT,
                    "This lesson was abandoned.",
                    recoverable=False,
                    trace_id=e.metadata.get("trace_id", ""),
                )
                return Frame(ERROR, data, eid), True
            case ErrorRaised.TYPE:
                data = error_body(
                    p["code"],
                    p["message"],
                    recoverable=p["recoverable"],
                    trace_id=p["trace_id"],
                    retry_after_ms=p.get("retry_after_ms"),
                )
                # An old error that generation has since moved past is history, not the end;
                # a missing narration clip never ends the lesson.
                ends = seq >= self.stop_on_error_from and p.get("source") != "narration"
                return Frame(ERROR, data, eid), ends
            case _:
                return None, False
