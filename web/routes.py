"""The lesson routes: each parses the request, calls one handler, and renders its answer."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from commands.errors import ErrorCode
from commands.handlers import interactions, lessons, media
from commands.interaction_input import is_iterate_body
from commands.messages import (
    AbandonLesson,
    Adjust,
    Animate,
    Ask,
    Attempt,
    CreatePlan,
    IteratePlan,
    MakeMe,
    OpenStream,
    ReadLesson,
    Visualize,
    Whiteboard,
)
from web import api_schemas as schemas
from web import media_schemas
from web.body import limit_for
from web.idempotency import answer_recorder
from web.openapi import Spec, api
from web.requests import answer, body, caller, deps
from web.stream import LessonStream


@api(
    Spec(
        "Plan a lesson from a setup intent (fast tier), with beat 1",
        request=schemas.PLAN_REQUEST,
        response=schemas.PLAN_ANSWER,
        idempotency="required",
        errors=(ErrorCode.CONFLICT, ErrorCode.REFUSED, ErrorCode.OVER_QUOTA,
                ErrorCode.RATE_LIMITED, ErrorCode.MODEL_UNAVAILABLE),
        links={
            "lesson": {"operationId": "get_get_lesson",
                       "parameters": {"lesson_id": "$response.body#/lesson_id"}},
            "stream": {"operationId": "get_stream_lesson",
                       "parameters": {"lesson_id": "$response.body#/lesson_id"}},
            "abandon": {"operationId": "post_abandon_lesson",
                        "parameters": {"lesson_id": "$response.body#/lesson_id"}},
        },
    )
)  # fmt: skip
async def create_plan(request: Request) -> Response:
    who, data = await caller(request), await body(request)
    if is_iterate_body(data):  # {lesson_id, feedback?, chip?}: a new plan for a draft
        iterated = await interactions.iterate_plan(IteratePlan(who, data), deps(request))
        return answer(request, iterated)
    cmd = CreatePlan(who, data)

    def render(result: lessons.PlanAnswer) -> bytes:
        return bytes(answer(request, result).body)

    # The Idempotency-Key's answer commits with the lesson's events (crash-safe retry); the
    # answer sent is the same rendering, byte for byte.
    result = await lessons.create_plan(
        cmd, deps(request), record_outcome=answer_recorder(request, render)
    )
    return answer(request, result)


@api(
    Spec(
        "The lesson folded from its log: status, plan, beats",
        response=schemas.LESSON_ANSWER,
        errors=(ErrorCode.NOT_FOUND,),
    )
)
async def get_lesson(request: Request) -> Response:
    cmd = ReadLesson(await caller(request), request.path_params["lesson_id"])
    return answer(request, await lessons.read_lesson(cmd, deps(request)))


@api(
    Spec(
        "Abandon the lesson: generation stops, streams end with a final error",
        response=schemas.ABANDON_ANSWER,
        errors=(ErrorCode.NOT_FOUND, ErrorCode.CONFLICT),
    )
)
async def abandon_lesson(request: Request) -> Response:
    cmd = AbandonLesson(await caller(request), request.path_params["lesson_id"])
    return answer(request, await lessons.abandon_lesson(cmd, deps(request)))


@api(
    Spec(
        "The lesson's log as Server-Sent Events (contracts §4)",
        response=schemas.STREAM,
        media_type="text/event-stream",
        other_statuses=(204,),
        headers={"Last-Event-ID": {"type": "string", "pattern": "^[0-9A-Za-z]+-evt-[0-9]+$"}},
        query={"last_event_id": {"type": "string"}},
        errors=(ErrorCode.NOT_FOUND, ErrorCode.OVER_QUOTA),
        description="204 when the lesson is over and the cursor is at its end.",
    )
)
async def stream_lesson(request: Request) -> Response:
    header = request.headers.get("last-event-id")
    cmd = OpenStream(
        await caller(request),
        request.path_params["lesson_id"],
        header if header is not None else request.query_params.get("last_event_id"),
        "Last-Event-ID" if header is not None else "last_event_id",
    )
    opened = await lessons.open_stream(cmd, deps(request))
    if isinstance(opened, lessons.StreamFinished):
        return Response(status_code=204)  # nothing more, ever: EventSource stops here
    return LessonStream(opened.subscription, opened.view, deps(request).settings)


_ASSET_ERRORS = (
    ErrorCode.NOT_FOUND,
    ErrorCode.CONFLICT,
    ErrorCode.REFUSED,
    ErrorCode.OVER_QUOTA,
    ErrorCode.RATE_LIMITED,
    ErrorCode.MODEL_UNAVAILABLE,
)


@api(
    Spec(
        "An SVG diagram of a ready beat, sanitised, cached forever",
        request=media_schemas.BEAT_ASSET_REQUEST,
        response=media_schemas.VISUALIZE_ANSWER,
        idempotency="required",
        errors=_ASSET_ERRORS,
    )
)
async def visualize(request: Request) -> Response:
    cmd = Visualize(await caller(request), request.path_params["lesson_id"], await body(request))
    return answer(request, await media.visualize(cmd, deps(request)))


@api(
    Spec(
        "A mini-simulation of a ready beat as a declarative spec, cached forever",
        request=media_schemas.BEAT_ASSET_REQUEST,
        response=media_schemas.ANIMATE_ANSWER,
        idempotency="required",
        errors=_ASSET_ERRORS,
    )
)
async def animate(request: Request) -> Response:
    cmd = Animate(await caller(request), request.path_params["lesson_id"], await body(request))
    return answer(request, await media.animate(cmd, deps(request)))


@api(
    Spec(
        "A make-me output of a complete lesson, cached forever",
        request=media_schemas.MAKEME_REQUEST,
        response=media_schemas.MAKEME_ANSWER,
        idempotency="required",
        errors=_ASSET_ERRORS,
    )
)
async def makeme(request: Request) -> Response:
    cmd = MakeMe(await caller(request), request.path_params["lesson_id"], await body(request))
    return answer(request, await media.makeme(cmd, deps(request)))


_IN_LESSON = (ErrorCode.NOT_FOUND, ErrorCode.REFUSED, ErrorCode.OVER_QUOTA,
              ErrorCode.RATE_LIMITED, ErrorCode.MODEL_UNAVAILABLE)  # fmt: skip


@api(
    Spec(
        "Ask a question mid-lesson; the tutor answers about the student's beat",
        request=schemas.ASK_REQUEST,
        response=schemas.ASK_ANSWER,
        errors=_IN_LESSON,
    )
)
async def ask(request: Request) -> Response:
    cmd = Ask(await caller(request), request.path_params["lesson_id"], await body(request))
    return answer(request, await interactions.ask(cmd, deps(request)))


@api(
    Spec(
        "Answer a problem or test beat (by option: no model; free: the fast tier grades)",
        request=schemas.ATTEMPT_REQUEST,
        response=schemas.ATTEMPT_ANSWER,
        errors=(*_IN_LESSON, ErrorCode.CONFLICT),
    )
)
async def attempt(request: Request) -> Response:
    cmd = Attempt(await caller(request), request.path_params["lesson_id"], await body(request))
    return answer(request, await interactions.attempt(cmd, deps(request)))


@api(
    Spec(
        "Revise the plan after the student's beat (or regenerate one beat); streams re-stream",
        request=schemas.ADJUST_REQUEST,
        response=schemas.ADJUST_ANSWER,
        idempotency="required",
        errors=(*_IN_LESSON, ErrorCode.CONFLICT),
        description="409 on a draft (iterate it with POST /v1/plan) or a finished lesson.",
    )
)
async def adjust(request: Request) -> Response:
    cmd = Adjust(await caller(request), request.path_params["lesson_id"], await body(request))
    return answer(request, await interactions.adjust(cmd, deps(request)))


@api(
    Spec(
        "Show the tutor a drawing (sent to the model as an image); it comments",
        request=schemas.WHITEBOARD_REQUEST,
        response=schemas.WHITEBOARD_ANSWER,
        errors=(*_IN_LESSON, ErrorCode.PAYLOAD_TOO_LARGE),
    )
)
async def whiteboard(request: Request) -> Response:
    data = await body(request, limit=limit_for(request.url.path, 0))
    cmd = Whiteboard(await caller(request), request.path_params["lesson_id"], data)
    return answer(request, await interactions.whiteboard(cmd, deps(request)))


routes = [
    Route("/v1/plan", create_plan, methods=["POST"]),
    Route("/v1/lesson/{lesson_id}", get_lesson, methods=["GET"]),
    Route("/v1/lesson/{lesson_id}/stream", stream_lesson, methods=["GET"]),
    Route("/v1/lesson/{lesson_id}/abandon", abandon_lesson, methods=["POST"]),
    Route("/v1/lesson/{lesson_id}/ask", ask, methods=["POST"]),
    Route("/v1/lesson/{lesson_id}/attempt", attempt, methods=["POST"]),
    Route("/v1/lesson/{lesson_id}/adjust", adjust, methods=["POST"]),
    Route("/v1/lesson/{lesson_id}/whiteboard", whiteboard, methods=["POST"]),
    Route("/v1/lesson/{lesson_id}/visualize", visualize, methods=["POST"]),
    Route("/v1/lesson/{lesson_id}/animate", animate, methods=["POST"]),
    Route("/v1/lesson/{lesson_id}/makeme", makeme, methods=["POST"]),
]
