"""The in-lesson use cases: ask, attempt, adjust, plan iterate, whiteboard.

Each handler loads the caller's lesson from its log (another user's lesson is NotFound),
validates the body, runs the guardrails in the contract's order (rate limit, spend cap,
input moderation, the model call, output moderation), decides on the folded lesson and
appends through the shared loop (commands/lesson_log.py). Every interaction is an
`interaction.recorded` in the lesson's log, next to the `model_run.recorded` of its calls.
The runs of the moderation calls that passed are stored in the same statement and commit
(beside the lesson, as moderation stores them), not each in an append of its own; a request
that fails before that append stores them on its way out (_screened).

Rate limits: ask, adjust, whiteboard and a free-answer attempt (a model call each) count in
the `ask` bucket (contracts §8: in-lesson questions); an attempt by option needs no model
and counts nowhere; plan iterate is a POST /v1/plan and counts in the `plan` bucket.

Adjust: the plan is revised (plan.revised, the next revision), beats after the student's
beat are superseded, and generation is woken (supervisor.request). The worker that owns
the lesson notices at its next append, whose expected seq the revision made stale
(commands/generation.py); any process may own it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from commands import lesson_log, providers
from commands.bootstrap import Deps
from commands.errors import CommandError, Conflict, InvalidInput
from commands.guardrails import admit, screen_input, screen_output
from commands.handlers.lessons import PlanAnswer
from commands.interaction_input import (
    resolve_level,
    validate_adjust,
    validate_ask,
    validate_attempt,
    validate_iterate,
    validate_whiteboard,
)
from commands.lesson_model import (
    LessonState,
    Revision,
    decide_adjust,
    decide_interaction,
    decide_iterate,
    plan_json,
    run_event,
    student_position,
)
from commands.messages import Adjust, Ask, Attempt, Caller, IteratePlan, Whiteboard
from commands.plan import beat_cache_key, output_texts, plan_request
from commands.providers import Adjustment, Drawing, Grade, ModelRun, PlanRequest, Result, Tier
from commands.ratelimit import Bucket
from eventstore.database import autocommit
from eventstore.errors import translate_errors
from eventstore.events import (
    ACTIVE,
    DRAFT,
    JSON,
    READY,
    DomainEvent,
    InteractionRecorded,
    ModelRunRecorded,
)
from eventstore.ids import new_id
from eventstore.queries import load_queries
from eventstore.store import NewEvent

T = TypeVar("T")

# A student's interaction competes with the generator, which appends a partial every
# beat_partial_ms: it re-decides on each conflict, and gets more tries than the default.
STUDENT_RETRIES = 32

_Q = load_queries(Path(__file__).parent.parent / "sql" / "interactions.sql")


# ---- shared steps ------------------------------------------------------------------------------


async def _load(deps: Deps, caller: Caller, lesson_id: str) -> LessonState:
    structlog.contextvars.bind_contextvars(lesson_id=lesson_id)
    return await lesson_log.load_owned(deps.store, lesson_id, caller.user_id)


async def _advanced_to(deps: Deps, state: LessonState) -> int | None:
    """The beat of the student's last `beat.advance` for this lesson, if they sent one."""
    params = {
        "lesson_id": state.lesson_id,
        "session_id": state.session_id,
        "user_id": state.user_id,
    }
    with translate_errors():
        async with autocommit(deps.pool) as conn:
            cur = await conn.execute(_Q["advanced_to"], params)
            row = await cur.fetchone()
    return None if row is None else int(row[0])


async def _position(deps: Deps, state: LessonState, given: int | None, field: str) -> int:
    """The beat the request is about: the one given (checked), else where the student is."""
    if given is not None:
        if not any(b.ord == given for b in state.beats):
            raise InvalidInput(field, f"is not a beat of this lesson (1..{len(state.beats)})")
        return given
    return student_position(state, await _advanced_to(deps, state))


def _request(state: LessonState, level: str | None = None) -> PlanRequest:
    return plan_request(state.subject, state.topic, level or state.level, state.intent)


async def _record_failed_runs(
    deps: Deps, caller: Caller, lesson_id: str, runs: Sequence[ModelRun]
) -> None:
    """Calls that led to no interaction still cost money: recorded beside the lesson."""
    events = [NewEvent.of(run_event(r, caller.trace_id), caller.meta()) for r in runs]
    if events:
        await deps.store.append_unordered(events, lesson_id=lesson_id)


async def _call(
    deps: Deps,
    caller: Caller,
    lesson_id: str,
    call: Awaitable[Result[T]],
    output: Callable[[T], Mapping[str, str]] | None = None,
    passed: list[NewEvent] | None = None,
) -> Result[T]:
    """The model call, then output moderation of `output(value)` (its runs added to
    `passed`, see _screened); a failure or a refusal records the runs that were made before
    it is raised."""
    try:
        result = await call
    except providers.ProviderError as e:
        await _record_failed_runs(deps, caller, lesson_id, e.runs)
        raise providers.as_command_error(e) from e
    if output is not None:
        try:
            texts = output(result.value)
            await screen_output(deps, caller, texts, lesson_id=lesson_id, passed=passed)
        except CommandError:
            await _record_failed_runs(deps, caller, lesson_id, result.runs)
            raise
    return result


def _runs(result: Result[Any] | None, caller: Caller, ord: int | None) -> list[ModelRunRecorded]:
    return [] if result is None else [run_event(r, caller.trace_id, ord) for r in result.runs]


@contextlib.asynccontextmanager
async def _screened(deps: Deps, lesson_id: str) -> AsyncIterator[list[NewEvent]]:
    """The runs of the moderation calls that passed, kept for the interaction's own append:
    one statement and one commit with it (_commit), none of their own. A request that ends
    before that append (a refusal, a failed model call, a conflict, a cancellation) appends
    them on its way out, so every call is recorded, as when moderation appended at once."""
    passed: list[NewEvent] = []
    try:
        yield passed
    finally:
        if passed:
            # Shielded: a request cancelled here still records what it spent.
            await asyncio.shield(deps.store.append_unordered(list(passed), lesson_id=lesson_id))


async def _commit(
    deps: Deps,
    caller: Caller,
    state: LessonState,
    decide: Callable[[LessonState], list[DomainEvent]],
    passed: list[NewEvent],
    retries: int = STUDENT_RETRIES,
) -> LessonState:
    """Append the decision with the runs `passed` holds (then stored: _screened lets go)."""
    _, state = await lesson_log.commit(
        deps.store, state, decide, caller.meta(), retries=retries, beside=tuple(passed)
    )
    passed.clear()
    return state


async def _record(
    deps: Deps,
    caller: Caller,
    state: LessonState,
    interaction: InteractionRecorded,
    runs: Sequence[ModelRunRecorded],
    passed: list[NewEvent],
) -> None:
    await _commit(deps, caller, state, lambda s: decide_interaction(s, interaction, runs), passed)


def narration_of(text: str) -> str:
    """What the tutor says aloud: the text without Markdown marks."""
    plain = re.sub(r"[*_`#>]+", "", text)
    return " ".join(plain.split())


# ---- POST /v1/lesson/{id}/ask ------------------------------------------------------------------


@dataclass(frozen=True)
class AskAnswer:
    interaction_id: str
    text: str
    narration_text: str
    audio_url: str | None = None  # the narration's clip; None when narration is off or failed

    def json(self) -> JSON:
        return {
            "interaction_id": self.interaction_id,
            "answer": {"text": self.text, "narration_text": self.narration_text},
            "audio_url": self.audio_url,
        }


async def ask(cmd: Ask, deps: Deps) -> AskAnswer:
    """Answer a question in the context of the plan and the beat the student is on."""
    data = validate_ask(cmd.body)
    caller, lesson_id = cmd.caller, cmd.lesson_id
    state = await _load(deps, caller, lesson_id)
    ord = await _position(deps, state, data.beat_ord, "beat_ord")
    await admit(deps, caller, Bucket.ASK, lesson_id=lesson_id)
    async with _screened(deps, lesson_id) as passed:
        texts = {"question": data.question}
        await screen_input(deps, caller, texts, lesson_id=lesson_id, passed=passed)
        result: Result[str] = await _call(
            deps,
            caller,
            lesson_id,
            deps.provider.answer(data.question, state.plan_object(), ord, _request(state)),
            lambda text: {"answer": text},
            passed,
        )
        answer = AskAnswer(new_id(), result.value, narration_of(result.value))
        # Spoken before the answer is stored, so that the interaction names its clip (the
        # purge then finds it under whatever voice made it). A TTS failure never fails the
        # ask; its run is recorded with the answer.
        try:
            spoken = await deps.narrator.clip(answer.narration_text, caller.trace_id)
        except BaseException:  # cancelled: the answer's model calls still cost money
            await asyncio.shield(_record_failed_runs(deps, caller, lesson_id, result.runs))
            raise
        response = {"text": answer.text, "narration_text": answer.narration_text}
        if spoken.url is not None:
            response["audio_url"] = spoken.url
        interaction = InteractionRecorded(
            interaction_id=answer.interaction_id,
            type="ask",
            payload={"question": data.question},
            response=response,
            beat_ord=ord,
        )
        runs = [*_runs(result, caller, ord), *([spoken.run] if spoken.run else [])]
        await _record(deps, caller, state, interaction, runs, passed)
    return dataclasses.replace(answer, audio_url=spoken.url)


# ---- POST /v1/lesson/{id}/attempt --------------------------------------------------------------


@dataclass(frozen=True)
class AttemptAnswer:
    interaction_id: str
    verdict: str
    feedback: str

    def json(self) -> JSON:
        return {
            "interaction_id": self.interaction_id,
            "verdict": self.verdict,
            "feedback": self.feedback,
        }


def grade_option(problem: Mapping[str, Any], option: int | str) -> tuple[str, Grade]:
    """(the choice picked, its grade): a test beat's choice needs no model."""
    choices = problem.get("choices")
    if not isinstance(choices, list) or not choices:
        raise InvalidInput("option", "this beat has no choices; send answer instead")
    if isinstance(option, int):
        if option >= len(choices):
            raise InvalidInput("option", f"must be a choice index from 0 to {len(choices) - 1}")
        chosen = str(choices[option])
    elif option in choices:
        chosen = option
    else:
        raise InvalidInput("option", "is not one of this beat's choices")
    solution = str(problem.get("solution", ""))
    if chosen == problem.get("answer"):
        return chosen, Grade("correct", f"Correct. {solution}".strip())
    return chosen, Grade(
        "incorrect", f"Not quite: the answer is {problem.get('answer')}. {solution}"
    )


async def attempt(cmd: Attempt, deps: Deps) -> AttemptAnswer:
    """Grade an answer to a problem or test beat (by option: locally; free: fast tier)."""
    data = validate_attempt(cmd.body)
    caller, lesson_id = cmd.caller, cmd.lesson_id
    state = await _load(deps, caller, lesson_id)
    await _position(deps, state, data.beat_ord, "beat_ord")
    beat = state.beat(data.beat_ord)
    if beat.status != READY:
        raise Conflict(f"Beat {beat.ord} is not ready yet.")
    problem = (beat.content_json or {}).get("problem")
    if not isinstance(problem, dict):
        raise InvalidInput(
            "beat_ord", f"beat {beat.ord} is a {beat.kind} beat; it takes no answers"
        )
    result: Result[Grade] | None = None
    payload: JSON
    if data.option is not None:
        chosen, grade = grade_option(problem, data.option)
        payload = {"option": data.option, "choice": chosen}
    else:
        answer = data.answer or ""
        await admit(deps, caller, Bucket.ASK, lesson_id=lesson_id)
        result = await _call(
            deps, caller, lesson_id, deps.provider.grade(problem, answer, _request(state))
        )
        grade = result.value
        payload = {"answer": answer}
    answered = AttemptAnswer(new_id(), grade.verdict, grade.feedback)
    interaction = InteractionRecorded(
        interaction_id=answered.interaction_id,
        type="attempt",
        payload=payload,
        response={"verdict": grade.verdict, "feedback": grade.feedback},
        beat_ord=beat.ord,
    )
    await _record(deps, caller, state, interaction, _runs(result, caller, beat.ord), [])
    return answered


# ---- POST /v1/lesson/{id}/adjust ---------------------------------------------------------------


@dataclass(frozen=True)
class AdjustAnswer:
    plan: JSON
    revision_num: int
    current_beat_ord: int

    def json(self) -> JSON:
        return {
            "plan": self.plan,
            "revision_num": self.revision_num,
            "current_beat_ord": self.current_beat_ord,
        }


def _check_adjustable(state: LessonState) -> None:
    """Refuse before any spend; decide_adjust checks again on the state it appends to."""
    if state.status == DRAFT:
        raise Conflict("This lesson has not started; change its plan with POST /v1/plan.")
    if state.status != ACTIVE:
        raise Conflict(f"This lesson is {state.status}; it can no longer be adjusted.")


async def adjust(cmd: Adjust, deps: Deps) -> AdjustAnswer:
    """Revise the plan after the student's beat (or regenerate one beat) and re-stream."""
    data = validate_adjust(cmd.body)
    caller, lesson_id = cmd.caller, cmd.lesson_id
    state = await _load(deps, caller, lesson_id)
    _check_adjustable(state)
    payload: JSON
    result: Result[Any] | None = None
    async with _screened(deps, lesson_id) as passed:
        if data.regenerate_beat is not None:
            ord = await _position(deps, state, data.regenerate_beat, "regenerate_beat")
            current = await _position(deps, state, None, "current_beat_ord")
            await admit(deps, caller, Bucket.ASK, lesson_id=lesson_id)
            revision = Revision(
                plan=state.plan or {}, triggered_by="adjust", feedback_text=None, only_ord=ord
            )
            # Contracts §5: explicit regeneration invalidates that one beat's cached content.
            model = deps.supervisor.config.model(Tier.STREAMING)
            await _cache_delete(deps, beat_cache_key(state.plan or {}, ord, state.level, model))
            payload = {"regenerate_beat": ord}
        else:
            current = await _position(deps, state, data.current_beat_ord, "current_beat_ord")
            if current >= len(state.beats):
                raise InvalidInput(
                    "current_beat_ord", "is the last beat: nothing after it to adjust"
                )
            await admit(deps, caller, Bucket.ASK, lesson_id=lesson_id)
            texts = {
                "feedback": data.feedback or "",
                **{f"axes[{i}]": a for i, a in enumerate(data.axes)},
            }
            await screen_input(deps, caller, texts, lesson_id=lesson_id, passed=passed)
            level, direction = resolve_level(state.level, data.level)
            adjustment = Adjustment(level, direction, data.axes, data.feedback, current)
            result = await _call(
                deps,
                caller,
                lesson_id,
                deps.provider.revise_plan(state.plan_object(), adjustment, _request(state, level)),
                lambda plan: {"plan": " | ".join([plan.summary, *(b.title for b in plan.beats)])},
                passed,
            )
            revision = Revision(
                plan=plan_json(result.value),
                triggered_by="adjust",
                feedback_text=data.feedback,
                level=level if level != state.level else None,
                current_ord=current,
            )
            payload = {
                "level": data.level,
                "axes": list(data.axes),
                "feedback": data.feedback,
                "current_beat_ord": current,
            }
        interaction = InteractionRecorded(
            interaction_id=new_id(),
            type="adjust",
            payload=payload,
            response={"current_beat_ord": current},
            beat_ord=current,
        )
        runs = _runs(result, caller, None)
        state = await _commit(
            deps,
            caller,
            state,
            lambda s: decide_adjust(s, revision, _with_revision(interaction, s), runs),
            passed,
        )
    # Whoever owns the generation notices the revision at its next append; this makes sure
    # someone owns it (a worker that had stopped on an error is re-armed).
    await deps.supervisor.request(lesson_id)
    return AdjustAnswer(state.plan or {}, state.revision_num, current)


def _with_revision(interaction: InteractionRecorded, state: LessonState) -> InteractionRecorded:
    """The interaction's response names the revision it made (the next one of `state`)."""
    response = {**(interaction.response or {}), "revision_num": state.revision_num + 1}
    return dataclasses.replace(interaction, response=response)


async def _cache_delete(deps: Deps, key: str) -> None:
    with translate_errors():
        async with deps.pool.connection() as conn:
            await conn.execute(_Q["cache_delete"], {"key": key})


# ---- POST /v1/plan {lesson_id, feedback?, chip?} -----------------------------------------------


async def iterate_plan(cmd: IteratePlan, deps: Deps) -> PlanAnswer:
    """A new plan and beat 1 for a lesson still in draft, answered like a first plan."""
    data = validate_iterate(cmd.body)
    caller = cmd.caller
    state = await _load(deps, caller, data.lesson_id)
    if state.status != DRAFT or state.locked:
        raise Conflict("This lesson has started; adjust it instead of iterating its plan.")
    await admit(deps, caller, Bucket.PLAN, lesson_id=state.lesson_id)
    async with _screened(deps, state.lesson_id) as passed:
        texts = {"feedback": data.feedback or "", "chip": data.chip or ""}
        await screen_input(deps, caller, texts, lesson_id=state.lesson_id, passed=passed)
        wishes = " ".join(w for w in (data.chip, data.feedback) if w)
        free_text = " ".join(str(w) for w in (state.intent.get("free_text"), wishes) if w)
        intent = {**state.intent, "free_text": free_text} if free_text else state.intent
        request = plan_request(state.subject, state.topic, state.level, intent)
        result = await _call(
            deps,
            caller,
            state.lesson_id,
            deps.provider.plan(request),
            lambda value: output_texts(*value),
            passed,
        )
        new_plan, beat1 = result.value
        beat1_id = new_id()
        model = result.runs[-1].model if result.runs else deps.provider.name
        interaction = InteractionRecorded(
            interaction_id=new_id(),
            type="iterate",
            payload={"feedback": data.feedback, "chip": data.chip},
            response={"plan": plan_json(new_plan)},
        )
        runs = _runs(result, caller, None)
        await _commit(
            deps,
            caller,
            state,
            lambda s: decide_iterate(
                s,
                new_plan,
                beat1,
                beat1_id,
                model=model,
                feedback_text=wishes or None,
                interaction=interaction,
                runs=runs,
            ),
            passed,
            retries=lesson_log.CONFLICT_RETRIES,
        )
    return PlanAnswer(state.lesson_id, new_plan, beat1_id, beat1, cache_hit=False)


# ---- POST /v1/lesson/{id}/whiteboard -----------------------------------------------------------


@dataclass(frozen=True)
class WhiteboardAnswer:
    interaction_id: str
    comment: str

    def json(self) -> JSON:
        return {"interaction_id": self.interaction_id, "comment": self.comment}


async def whiteboard(cmd: Whiteboard, deps: Deps) -> WhiteboardAnswer:
    """The tutor comments on a drawing (sent to the model as an image block)."""
    data = validate_whiteboard(cmd.body)
    caller, lesson_id = cmd.caller, cmd.lesson_id
    state = await _load(deps, caller, lesson_id)
    ord = await _position(deps, state, data.beat_ord, "beat_ord")
    await admit(deps, caller, Bucket.ASK, lesson_id=lesson_id)
    async with _screened(deps, lesson_id) as passed:
        await screen_input(deps, caller, {"text": data.text}, lesson_id=lesson_id, passed=passed)
        drawing = Drawing(data.image, data.media_type)
        result: Result[str] = await _call(
            deps,
            caller,
            lesson_id,
            deps.provider.comment_drawing(
                drawing, data.text, state.plan_object(), ord, _request(state)
            ),
            lambda text: {"comment": text},
            passed,
        )
        answer = WhiteboardAnswer(new_id(), result.value)
        interaction = InteractionRecorded(
            interaction_id=answer.interaction_id,
            type="whiteboard",
            # The image itself is kept as an asset once assets land; the log names it by hash.
            payload={
                "text": data.text,
                "media_type": data.media_type,
                "bytes": len(data.image),
                "sha256": hashlib.sha256(data.image).hexdigest(),
            },
            response={"comment": answer.comment},
            beat_ord=ord,
        )
        await _record(deps, caller, state, interaction, _runs(result, caller, ord), passed)
    return answer
