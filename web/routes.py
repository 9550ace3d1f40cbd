"""The lesson routes: each parses the request, calls one handler, and renders its answer."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from commands.handlers import interactions, lessons
from commands.interaction_input import is_iterate_body
from commands.messages import (
    AbandonLesson,
    Adjust,
    Ask,
    Attempt,
    CreatePlan,
    IteratePlan,
    OpenStream,
    ReadLesson,
    Whiteboard,
)
from web.body import limit_for
from web.requests import answer, body, caller, deps
from web.stream import LessonStream


async def create_plan(request: Request) -> Response:
    who, data = await caller(request), await body(request)
    if is_iterate_body(data):  # {lesson_id, feedback?, chip?}: a new plan for a draft
        return answer(
            request, await interactions.iterate_plan(IteratePlan(who, data), deps(request))
        )
    return answer(request, await lessons.create_plan(CreatePlan(who, data), deps(request)))


async def get_lesson(request: Request) -> Response:
    cmd = ReadLesson(await caller(request), request.path_params["lesson_id"])
    return answer(request, await lessons.read_lesson(cmd, deps(request)))


async def abandon_lesson(request: Request) -> Response:
    cmd = AbandonLesson(await caller(request), request.path_params["lesson_id"])
    return answer(request, await lessons.abandon_lesson(cmd, deps(request)))


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


async def ask(request: Request) -> Response:
    cmd = Ask(await caller(request), request.path_params["lesson_id"], await body(request))
    return answer(request, await interactions.ask(cmd, deps(request)))


async def attempt(request: Request) -> Response:
    cmd = Attempt(await caller(request), request.path_params["lesson_id"], await body(request))
    return answer(request, await interactions.attempt(cmd, deps(request)))


async def adjust(request: Request) -> Response:
    cmd = Adjust(await caller(request), request.path_params["lesson_id"], await body(request))
    return answer(request, await interactions.adjust(cmd, deps(request)))


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
]
