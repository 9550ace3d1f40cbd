"""Lesson endpoints: POST /v1/plan, GET /v1/lesson/{id}, its stream, and abandon."""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from commands import lesson_service, spendcap
from commands.errors import InvalidInput
from commands.plan import Requester, create_lesson, validate_plan_body
from commands.providers import Tier
from commands.ratelimit import Bucket
from eventstore.store import EventMeta
from web.body import read_json_object
from web.guardrails import admit, screen_input
from web.services import services
from web.sessions import current_principal
from web.stream import LessonStream, StreamView, cursor_of

log = structlog.get_logger(__name__)


def _trace_id(request: Request) -> str:
    return str(request.scope["state"]["trace_id"])


async def create_plan(request: Request) -> Response:
    svc = services(request)
    principal = await current_principal(request)
    body = await read_json_object(request, svc.settings.max_body_bytes)
    data = validate_plan_body(body)
    # Guardrails (docs/guardrails.md). The Idempotency-Key was claimed by its middleware
    # before this ran; then the rate limit (plan bucket), the spend cap and input moderation,
    # all before any model call. create_lesson moderates the model's output.
    await admit(request, principal, Bucket.PLAN)
    free_text = data.intent.get("free_text")
    await screen_input(
        request,
        principal,
        svc.provider,
        {"topic": data.topic, "intent.free_text": free_text if isinstance(free_text, str) else ""},
    )
    created = await create_lesson(
        svc.pool,
        svc.store,
        svc.provider,
        svc.supervisor.config.model(Tier.FAST),
        Requester(principal.user_id, principal.session_id),
        data,
        _trace_id(request),
    )
    structlog.contextvars.bind_contextvars(
        lesson_id=created.lesson_id, cache="hit" if created.cache_hit else "miss"
    )
    plan = created.plan
    audio_url = await svc.narrator.beat_already_completed(
        created.lesson_id,
        1,
        created.beat1.narration_text,
        EventMeta(_trace_id(request), principal.user_id, principal.session_id),
        wait_s=svc.narrator.first_clip_wait_s,
    )
    return JSONResponse(
        {
            "ok": True,
            "lesson_id": created.lesson_id,
            "plan": {
                "summary": plan.summary,
                "beats": [
                    {"ord": b.ord, "kind": b.kind, "title": b.title, "est_min": b.est_min}
                    for b in plan.beats
                ],
                "after": plan.after,
            },
            "beat1": {
                "id": created.beat1_id,
                "content_json": created.beat1.content_json,
                "narration_text": created.beat1.narration_text,
                "audio_url": audio_url,  # null until synthesised; audio_ready announces it
            },
            "trace_id": _trace_id(request),
        }
    )


async def get_lesson(request: Request) -> Response:
    svc = services(request)
    principal = await current_principal(request)
    lesson_id = request.path_params["lesson_id"]
    _, state = await lesson_service.load_owned(svc.store, lesson_id, principal.user_id)
    body = {"ok": True, **lesson_service.lesson_json(state), "trace_id": _trace_id(request)}
    return JSONResponse(body)


async def abandon_lesson(request: Request) -> Response:
    svc = services(request)
    principal = await current_principal(request)
    lesson_id = request.path_params["lesson_id"]
    events, state = await lesson_service.load_owned(svc.store, lesson_id, principal.user_id)
    meta = EventMeta(_trace_id(request), principal.user_id, principal.session_id)
    state = await lesson_service.abandon(svc.store, svc.supervisor, events, state, meta)
    return JSONResponse(
        {
            "ok": True,
            "lesson_id": lesson_id,
            "status": state.status,
            "trace_id": _trace_id(request),
        }
    )


async def stream_lesson(request: Request) -> Response:
    svc = services(request)
    principal = await current_principal(request)
    lesson_id = request.path_params["lesson_id"]
    structlog.contextvars.bind_contextvars(lesson_id=lesson_id)
    events, state = await lesson_service.load_owned(svc.store, lesson_id, principal.user_id)
    cursor = cursor_of(request, lesson_id)
    if cursor > state.version:
        raise InvalidInput("Last-Event-ID", "is ahead of this lesson's stream")
    if state.finished and cursor >= state.ended_seq:
        return Response(status_code=204)  # nothing more, ever: EventSource stops here
    meta = EventMeta(_trace_id(request), principal.user_id, principal.session_id)
    if not state.locked and not state.finished:
        # Opening the stream starts generation, new spend: the daily cap applies here too.
        # A lesson already locked keeps streaming whatever the day's spend.
        await spendcap.enforce(
            svc.pool,
            svc.store,
            cap_usd=svc.settings.daily_cap_usd,
            forced=svc.settings.over_quota_forced,
            meta=meta,
            lesson_id=lesson_id,
        )
    events, state = await lesson_service.open_stream(svc.store, svc.supervisor, events, state, meta)
    view = StreamView.of(lesson_id, events, state)
    settings = svc.settings
    return LessonStream(
        svc.hub,
        view,
        max(cursor, state.locked_seq - 1),
        heartbeat_s=settings.sse_heartbeat_s,
        send_timeout_s=settings.sse_send_timeout_s,
        retry_ms=settings.sse_retry_ms,
    )


routes = [
    Route("/v1/plan", create_plan, methods=["POST"]),
    Route("/v1/lesson/{lesson_id}", get_lesson, methods=["GET"]),
    Route("/v1/lesson/{lesson_id}/stream", stream_lesson, methods=["GET"]),
    Route("/v1/lesson/{lesson_id}/abandon", abandon_lesson, methods=["POST"]),
]
