"""A stand-in `POST /v1/plan` for the guardrail tests, built from the real building blocks.

The real endpoint lives on the lessons branch; until it is merged, this handler runs the
guardrails in the order DESIGN.md fixes (the Idempotency-Key middleware has already claimed
the key): session → rate limit → spend cap → input moderation → the model call → output
moderation → append. It is mounted only in test apps.

`ScriptedProvider` is a fake implementing the real Provider interface: it delegates to the
offline tutor, except that topics naming a failure make the classifier fail that way, so a
real HTTP request can reach every error code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from commands.errors import InvalidInput, ModelUnavailable, RateLimited
from commands.moderation import model_run_event
from commands.providers import (
    BeatContent,
    DeltaCallback,
    ModelRun,
    Plan,
    PlanRequest,
    ProviderConfig,
    ProviderError,
    Result,
    Tier,
    Verdict,
)
from commands.providers import ModelUnavailable as ProviderUnavailable
from commands.providers import RateLimited as ProviderRateLimited
from commands.providers.offline import OfflineProvider
from commands.ratelimit import Bucket
from eventstore.events import LessonCreated, PlanRevised
from eventstore.ids import new_id
from eventstore.store import NewEvent
from web.app import create_app
from web.body import read_json_object
from web.guardrails import admit, event_meta, screen_input, screen_output
from web.services import services
from web.sessions import current_principal
from web.settings import Settings

THROTTLE_TOPIC = "throttle the classifier"
OUTAGE_TOPIC = "classifier outage"
CRASH_TOPIC = "crash the handler"


def _failed_run(status: str) -> ModelRun:
    return ModelRun("haiku-4-5", "moderation", 0, 0, Decimal(0), 1, status)


class ScriptedProvider:
    """The offline tutor, with failures on cue (see the module docstring)."""

    name = "offline"

    def __init__(self) -> None:
        self._offline = OfflineProvider(ProviderConfig(kind="offline", offline_pace_ms=0))

    async def plan(self, request: PlanRequest) -> Result[tuple[Plan, BeatContent]]:
        if request.topic == CRASH_TOPIC:
            raise RuntimeError("a bug in the handler")
        return await self._offline.plan(request)

    async def beat(
        self,
        plan: Plan,
        ord: int,
        request: PlanRequest,
        on_delta: DeltaCallback,
        tier: Tier = Tier.STREAMING,
    ) -> Result[BeatContent]:
        return await self._offline.beat(plan, ord, request, on_delta, tier)

    async def moderate(self, text: str, stage: str) -> Result[Verdict]:
        if text == THROTTLE_TOPIC:
            raise ProviderRateLimited("429", (_failed_run("rate_limited"),), retry_after_ms=1500)
        if text == OUTAGE_TOPIC:
            raise ProviderUnavailable("overloaded", (_failed_run("error"),))
        return await self._offline.moderate(text, stage)

    async def answer(
        self, question: str, plan: Plan, ord: int, request: PlanRequest
    ) -> Result[str]:
        return await self._offline.answer(question, plan, ord, request)

    async def hello(self) -> Result[str]:
        return await self._offline.hello()

    async def aclose(self) -> None:
        await self._offline.aclose()


def _text(body: dict[str, Any], field: str, limit: int) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(field, "must be a non-empty string")
    if len(value) > limit:
        raise InvalidInput(field, f"must be at most {limit} characters")
    return value.strip()


def plan_route(provider: ScriptedProvider) -> Route:
    async def plan(request: Request) -> Response:
        svc = services(request)
        principal = await current_principal(request)
        body = await read_json_object(request, svc.settings.max_body_bytes)
        subject, topic = _text(body, "subject", 80), _text(body, "topic", 200)
        intent = body.get("intent", {})
        if not isinstance(intent, dict):
            raise InvalidInput("intent", "must be an object")
        free_text = intent.get("free_text", "")
        free_text = free_text if isinstance(free_text, str) else ""

        await admit(request, principal, Bucket.PLAN)
        await screen_input(
            request, principal, provider, {"topic": topic, "intent.free_text": free_text}
        )
        meta = event_meta(request, principal)
        lesson_id = new_id()
        plan_request = PlanRequest(subject, topic, "hs", intent)
        try:
            result = await provider.plan(plan_request)
        except ProviderError as e:
            runs = [NewEvent.of(model_run_event(r, meta.trace_id or ""), meta) for r in e.runs]
            await svc.store.append_unordered(runs, lesson_id=lesson_id)
            if isinstance(e, ProviderRateLimited):
                raise RateLimited(
                    "Tutor is thinking too hard.", retry_after_ms=e.retry_after_ms
                ) from e
            raise ModelUnavailable("The tutor's model is unavailable.") from e
        runs = [NewEvent.of(model_run_event(r, meta.trace_id or ""), meta) for r in result.runs]
        await svc.store.append_unordered(runs, lesson_id=lesson_id)
        the_plan, beat1 = result.value
        await screen_output(
            request,
            principal,
            provider,
            {"plan.summary": the_plan.summary, "beat1.narration": beat1.narration_text},
            lesson_id=lesson_id,
        )
        plan_json = {
            "summary": the_plan.summary,
            "beats": [
                {"ord": b.ord, "kind": b.kind, "title": b.title, "est_min": b.est_min}
                for b in the_plan.beats
            ],
            "after": the_plan.after,
        }
        created = LessonCreated(principal.session_id, principal.user_id, subject, topic, "hs", {})
        await svc.store.append(
            lesson_id,
            [NewEvent.of(created, meta), NewEvent.of(PlanRevised(1, plan_json, "initial"), meta)],
            expected_seq=0,
        )
        return JSONResponse(
            {
                "ok": True,
                "lesson_id": lesson_id,
                "plan": plan_json,
                "beat1": {
                    "content_json": beat1.content_json,
                    "narration_text": beat1.narration_text,
                },
                "trace_id": meta.trace_id,
            }
        )

    return Route("/v1/plan", plan, methods=["POST"])


def guarded_app(settings: Settings, database_url: str) -> Starlette:
    app = create_app(settings, database_url)
    app.router.routes.append(plan_route(ScriptedProvider()))
    return app


@contextmanager
def serve(app: Starlette, deadline_s: float = 20.0) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread on a free port; yields its base URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        access_log=False,
        log_level="warning",
        lifespan="on",
        proxy_headers=False,  # as `omnitutor serve`: web/client_ip.py decides what to trust
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-guardrails", daemon=True)
    thread.start()
    give_up = time.monotonic() + deadline_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > give_up:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)  # polling a flag uvicorn sets; there is no event to wait on
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
