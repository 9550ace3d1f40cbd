"""The lesson use cases: plan a lesson, read it, open its stream, abandon it.

Each handler takes its command (commands/messages.py) and the dependencies built once at
start-up (commands/bootstrap.py), runs the whole use case — guardrails in the contract's
order, decide on the folded lesson, append through the shared loop (commands/lesson_log.py)
— and returns an answer object; web/ only parses the request and renders the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from commands import lesson_log, plan, providers
from commands.bootstrap import Deps
from commands.errors import CommandError, InvalidInput
from commands.guardrails import admit, enforce_spend_cap, screen_input, screen_output
from commands.lesson_model import (
    LessonState,
    NewLesson,
    costs_by_family,
    decide_abandon,
    decide_create,
    decide_lock,
    fold,
    plan_from_json,
    plan_json,
    run_event,
)
from commands.messages import AbandonLesson, Caller, CreatePlan, OpenStream, ReadLesson
from commands.plan_requests import note_plan_request
from commands.providers import BeatContent, Plan, Tier
from commands.ratelimit import Bucket
from commands.stream_view import StreamView, parse_cursor
from eventstore.events import JSON, READY, STREAMING, AudioReady, DomainEvent
from eventstore.hub import Subscription
from eventstore.ids import new_id
from eventstore.store import InTransaction, NewEvent

# ---- POST /v1/plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanAnswer:
    lesson_id: str
    plan: Plan
    beat1_id: str
    beat1: BeatContent
    cache_hit: bool
    audio_url: str | None = None  # beat 1's clip, when narrated in time (docs/assets.md)

    def json(self) -> JSON:
        return {
            "lesson_id": self.lesson_id,
            "plan": plan_json(self.plan),
            "beat1": {
                "id": self.beat1_id,
                "content_json": self.beat1.content_json,
                "narration_text": self.beat1.narration_text,
                "audio_url": self.audio_url,  # else audio_ready announces it
            },
        }


async def create_plan(
    cmd: CreatePlan,
    deps: Deps,
    record_outcome: Callable[[PlanAnswer], InTransaction] | None = None,
) -> PlanAnswer:
    """Plan a new lesson with beat 1 (fast tier, or the plan cache) and open its log.

    `record_outcome(answer)`, if given, runs inside the transaction that appends the
    lesson's opening events: the Idempotency-Key's answer commits with them (a retry after a
    crash finds the answer or nothing done; docs/guardrails.md).
    """
    data = plan.validate_plan_body(cmd.body)
    caller = cmd.caller
    # Guardrails before any model call; the Idempotency-Key was claimed before this ran.
    await admit(deps, caller, Bucket.PLAN)
    free_text = data.intent.get("free_text")
    await screen_input(
        deps,
        caller,
        {"topic": data.topic, "intent.free_text": free_text if isinstance(free_text, str) else ""},
    )
    subject_id, topic_id = await plan.catalog_ids(deps.pool, data.subject, data.topic)
    fast_model = deps.supervisor.config.model(Tier.FAST)
    key = plan.plan_cache_key(data, fast_model)
    await note_plan_request(deps.pool, key, fast_model, dataclasses.asdict(data))  # pre-warm
    cached = await plan.cache_get(deps.pool, key)
    runs: tuple[providers.ModelRun, ...] = ()
    if cached is not None:
        model, payload = cached
        lesson_plan = plan_from_json(payload["plan"])
        beat1 = plan.beat_from_cache(payload["beat1"])
    else:
        lesson_plan, beat1, runs = await _plan_with_model(deps, caller, data)
        model = runs[-1].model if runs else deps.provider.name
    lesson_id, beat1_id = new_id(), new_id()
    lesson = NewLesson(
        user_id=caller.user_id,
        session_id=caller.session_id,
        subject=data.subject,
        topic=data.topic,
        level=data.level,
        intent=data.intent,
        subject_id=subject_id,
        topic_id=topic_id,
    )
    events = decide_create(
        LessonState(lesson_id=lesson_id),
        lesson,
        lesson_plan,
        beat1,
        beat1_id,
        model=model,
        runs=runs,
        trace_id=caller.trace_id,
        cache_hit=cached is not None,
    )
    meta = caller.meta()
    # Beat 1's clip: waited for a moment (docs/assets.md), so that when it is ready in time
    # its run and audio.ready join the lesson's opening batch and the answer (which the
    # Idempotency-Key stores with that batch) carries its URL; else audio_ready follows.
    audio_url, narrated, settled = await _first_clip(deps, beat1.narration_text, caller.trace_id)
    events += narrated
    answer = PlanAnswer(lesson_id, lesson_plan, beat1_id, beat1, cached is not None, audio_url)
    await deps.store.append(
        lesson_id,
        [NewEvent.of(e, meta) for e in events],
        expected_seq=0,
        in_transaction=record_outcome(answer) if record_outcome else None,
    )
    if cached is None:
        payload = {"plan": plan_json(lesson_plan), "beat1": plan.beat_to_cache(beat1)}
        await plan.cache_put(deps.pool, key, model, payload, plan.PLAN_CACHE_DAYS)
    structlog.contextvars.bind_contextvars(
        lesson_id=lesson_id, cache="hit" if cached is not None else "miss"
    )
    if not settled:
        # Not ready in time: the clip, still being made, is recorded when it is stored.
        deps.narrator.beat_completed(lesson_id, 1, beat1.narration_text, meta)
    return answer


async def _first_clip(
    deps: Deps, text: str, trace_id: str
) -> tuple[str | None, list[DomainEvent], bool]:
    """Beat 1's clip if it is made (or fails) within the narrator's wait: its URL, the
    events that record it (the synthesis run, audio.ready) and True; else (None, [],
    False) and it goes on being made."""
    narrator = deps.narrator
    if not narrator.enabled or not text.strip():
        return None, [], True
    making = asyncio.ensure_future(narrator.clip(text, trace_id, beat_ord=1))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(narrator.first_clip_wait_s):
            await asyncio.shield(making)
    if not making.done():
        making.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        return None, [], False
    clip = making.result()
    events: list[DomainEvent] = [clip.run] if clip.run is not None else []
    if clip.url is not None:
        events.append(AudioReady(beat_ord=1, audio_url=clip.url))
    return clip.url, events, True


async def _plan_with_model(
    deps: Deps, caller: Caller, data: plan.PlanInput
) -> tuple[Plan, BeatContent, tuple[providers.ModelRun, ...]]:
    """The fast tier plans the lesson and writes beat 1; its output is moderated.

    When no lesson comes of it (the model failed, or moderation refused the output) the
    calls still cost money: their runs are recorded at session level before the refusal.
    """
    request = plan.plan_request(data.subject, data.topic, data.level, data.intent)
    try:
        result = await deps.provider.plan(request)
    except providers.ProviderError as e:
        await _record_runs(deps, caller, e.runs)
        raise providers.as_command_error(e) from e
    lesson_plan, beat1 = result.value
    try:
        await screen_output(deps, caller, plan.output_texts(lesson_plan, beat1))
    except CommandError:
        await _record_runs(deps, caller, result.runs)
        raise
    return lesson_plan, beat1, result.runs


async def _record_runs(deps: Deps, caller: Caller, runs: tuple[providers.ModelRun, ...]) -> None:
    events = [NewEvent.of(run_event(r, caller.trace_id), caller.meta()) for r in runs]
    await deps.store.append_unordered(events)


# ---- GET /v1/lesson/{id} ---------------------------------------------------------------------


@dataclass(frozen=True)
class LessonAnswer:
    state: LessonState

    def json(self) -> JSON:
        """The plan, every beat with its status and content, the status."""
        state = self.state
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
        completed = state.ended_at if state.status == "complete" else None
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
            "completed_at": completed.isoformat() if completed else None,
            "duration_ms": state.duration_ms,
            "model_costs": costs_by_family(state),
            "interactions": [i.json() for i in state.interactions],
        }


async def read_lesson(cmd: ReadLesson, deps: Deps) -> LessonAnswer:
    """The lesson folded from its own log, so it always shows the caller's last write."""
    _bind_lesson(cmd.lesson_id)
    state = await lesson_log.load_owned(deps.store, cmd.lesson_id, cmd.caller.user_id)
    return LessonAnswer(state)


# ---- POST /v1/lesson/{id}/abandon ------------------------------------------------------------


@dataclass(frozen=True)
class AbandonAnswer:
    lesson_id: str
    status: str

    def json(self) -> JSON:
        return {"lesson_id": self.lesson_id, "status": self.status}


async def abandon_lesson(cmd: AbandonLesson, deps: Deps) -> AbandonAnswer:
    _bind_lesson(cmd.lesson_id)
    state = await lesson_log.load_owned(deps.store, cmd.lesson_id, cmd.caller.user_id)
    _, state = await lesson_log.commit(deps.store, state, decide_abandon, cmd.caller.meta())
    # Stop generation now: here directly, elsewhere at the owner's next lease renewal (or
    # its next append, which no longer fits the log).
    await deps.supervisor.leases.abandon(state.lesson_id)
    await deps.supervisor.stop_lesson(state.lesson_id)
    return AbandonAnswer(state.lesson_id, state.status)


# ---- GET /v1/lesson/{id}/stream --------------------------------------------------------------


@dataclass(frozen=True)
class StreamOpened:
    """A live stream: the subscription (catch-up primed, already receiving) and its view.

    The caller owns the subscription and closes it (`async with opened.subscription`).
    """

    subscription: Subscription
    view: StreamView


@dataclass(frozen=True)
class StreamFinished:
    """The lesson is over and the reader has seen its end: nothing more, ever."""


async def open_stream(cmd: OpenStream, deps: Deps) -> StreamOpened | StreamFinished:
    """Open the lesson's stream with one read of its log.

    The subscription starts receiving before that read, so the read is its catch-up and
    whatever is appended afterwards arrives live. The read is the hub's, shared by every
    stream of the lesson opening at the same moment and batched with other lessons' (a
    reconnect storm costs a statement per batch). Opening a lesson that is not locked yet
    locks its plan and asks for generation; that is new spend, so the daily cap applies.
    """
    lesson_id = cmd.lesson_id
    _bind_lesson(lesson_id)
    lesson_log.check_lesson_id(lesson_id)
    subscription = deps.hub.lesson(lesson_id)
    try:
        events = await subscription.read_lesson()
        state = fold(events, lesson_id=lesson_id)
        lesson_log.check_owner(state, cmd.caller.user_id)
        cursor = parse_cursor(lesson_id, cmd.last_event_id, cmd.cursor_field)
        if cursor > state.version:
            raise InvalidInput(cmd.cursor_field, "is ahead of this lesson's stream")
        if state.finished and cursor >= state.ended_seq:
            await subscription.close()
            return StreamFinished()
        if not state.finished and not state.locked:
            await enforce_spend_cap(deps, cmd.caller, lesson_id=lesson_id)
            # The lease row first: if this process dies before the lock, whoever claims the
            # lesson locks it; the lock's expected_seq keeps the two from both locking.
            await deps.supervisor.request(lesson_id)
            _, state = await lesson_log.commit(deps.store, state, decide_lock, cmd.caller.meta())
        elif not state.finished:
            # A lesson already locked keeps streaming whatever the day's spend; asking for
            # its generation again (re-arming a failed one) changes nothing the stream sends.
            deps.supervisor.request_soon(lesson_id)
        # The first connection starts at plan_ready (plan.locked), never before it.
        subscription.prime(events, after=max(cursor, state.locked_seq - 1))
        return StreamOpened(subscription, StreamView.of(state))
    except BaseException:
        await subscription.close()
        raise


def _bind_lesson(lesson_id: str) -> None:
    structlog.contextvars.bind_contextvars(lesson_id=lesson_id)
