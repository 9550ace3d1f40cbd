"""The lesson routes: each parses the request, calls one handler, and renders its answer."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from commands.handlers import lessons, media
from commands.messages import (
    AbandonLesson,
    Animate,
    CreatePlan,
    MakeMe,
    OpenStream,
    ReadLesson,
    Visualize,
)
from web.requests import answer, body, caller, deps
from web.stream import LessonStream


async def create_plan(request: Request) -> Response:
    cmd = CreatePlan(await caller(request), await body(request))
    return answer(request, await lessons.create_plan(cmd, deps(request)))


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


async def visualize(request: Request) -> Response:
    cmd = Visualize(await caller(request), request.path_params["lesson_id"], await body(request))
    return answer(request, await media.visualize(cmd, deps(request)))


async def animate(request: Request) -> Response:
    cmd = Animate(await caller(request), request.path_params["lesson_id"], await body(request))
    return answer(request, await media.animate(cmd, deps(request)))


async def makeme(request: Request) -> Response:
    cmd = MakeMe(await caller(request), request.path_params["lesson_id"], await body(request))
    return answer(request, await media.makeme(cmd, deps(request)))


routes = [
    Route("/v1/plan", create_plan, methods=["POST"]),
    Route("/v1/lesson/{lesson_id}", get_lesson, methods=["GET"]),
    Route("/v1/lesson/{lesson_id}/stream", stream_lesson, methods=["GET"]),
    Route("/v1/lesson/{lesson_id}/abandon", abandon_lesson, methods=["POST"]),
    Route("/v1/lesson/{lesson_id}/visualize", visualize, methods=["POST"]),
    Route("/v1/lesson/{lesson_id}/animate", animate, methods=["POST"]),
    Route("/v1/lesson/{lesson_id}/makeme", makeme, methods=["POST"]),
]
