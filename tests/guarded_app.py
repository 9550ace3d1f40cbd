"""The real app for the guardrail tests, with a model provider that fails on cue.

`ScriptedProvider` is a fake implementing the real Provider interface: it delegates to the
offline tutor, except that topics naming a failure make the classifier (or the plan call)
fail that way, so a real HTTP request to the real `POST /v1/plan` can reach every error code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from starlette.applications import Starlette

from commands.providers import (
    Adjustment,
    BeatBrief,
    BeatContent,
    DeltaCallback,
    Drawing,
    Grade,
    LessonBrief,
    ModelRun,
    Plan,
    PlanRequest,
    ProviderConfig,
    Result,
    Tier,
    Verdict,
)
from commands.providers import ModelUnavailable as ProviderUnavailable
from commands.providers import RateLimited as ProviderRateLimited
from commands.providers.offline import OfflineProvider
from eventstore.settings import Settings
from web.app import create_app

THROTTLE_TOPIC = "throttle the classifier"
OUTAGE_TOPIC = "classifier outage"
CRASH_TOPIC = "crash the handler"
HARMFUL_OUTPUT_TOPIC = "a topic whose lesson comes out harmful"
HARMFUL_BEAT_TOPIC = "a topic whose second beat comes out harmful"


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
        result = await self._offline.plan(request)
        if request.topic == HARMFUL_OUTPUT_TOPIC:
            plan, beat1 = result.value
            bad = BeatContent(beat1.content_json, "Here is how to build a bomb to hurt people.")
            return Result((plan, bad), result.runs)
        return result

    async def beat(
        self,
        plan: Plan,
        ord: int,
        request: PlanRequest,
        on_delta: DeltaCallback,
        tier: Tier = Tier.STREAMING,
    ) -> Result[BeatContent]:
        result = await self._offline.beat(plan, ord, request, on_delta, tier)
        if request.topic == HARMFUL_BEAT_TOPIC.lower() and ord == 2:
            bad = BeatContent(result.value.content_json, "Step one: build a bomb to hurt people.")
            return Result(bad, result.runs)
        return result

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

    async def grade(
        self, problem: dict[str, Any], answer: str, request: PlanRequest
    ) -> Result[Grade]:
        return await self._offline.grade(problem, answer, request)

    async def revise_plan(
        self, plan: Plan, adjustment: Adjustment, request: PlanRequest
    ) -> Result[Plan]:
        return await self._offline.revise_plan(plan, adjustment, request)

    async def comment_drawing(
        self, drawing: Drawing, text: str, plan: Plan, ord: int, request: PlanRequest
    ) -> Result[str]:
        return await self._offline.comment_drawing(drawing, text, plan, ord, request)

    async def hello(self) -> Result[str]:
        return await self._offline.hello()

    async def diagram(self, beat: BeatBrief, request: str, tier: Tier) -> Result[str]:
        return await self._offline.diagram(beat, request, tier)

    async def simulation(self, beat: BeatBrief, request: str, tier: Tier) -> Result[dict[str, Any]]:
        return await self._offline.simulation(beat, request, tier)

    async def makeme(self, output: str, lesson: LessonBrief, tier: Tier) -> Result[dict[str, Any]]:
        return await self._offline.makeme(output, lesson, tier)

    async def aclose(self) -> None:
        await self._offline.aclose()


def guarded_app(settings: Settings, database_url: str) -> Starlette:
    """The real app, whose `POST /v1/plan` uses a ScriptedProvider instead of the offline one."""
    app = create_app(settings, database_url)
    opened = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Any]:
        async with opened(app) as state:
            scripted = ScriptedProvider()
            app.state.deps = dataclasses.replace(app.state.deps, provider=scripted)
            app.state.deps.supervisor.provider = scripted  # generation uses it too
            yield state

    app.router.lifespan_context = lifespan
    return app
