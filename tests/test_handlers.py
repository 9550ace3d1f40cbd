"""The use cases without HTTP: the guardrails' order, and one log read per stream open.

Handlers are called as web/ calls them, with a command object and the dependencies that
commands/bootstrap.py builds, against a real database; the model provider records the calls
it receives, so the order of the guardrails is read off what reached it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from commands.bootstrap import Deps, open_deps
from commands.errors import OverQuota, Refused
from commands.handlers import lessons
from commands.messages import Caller, CreatePlan, OpenStream
from commands.providers import BeatContent, Plan, PlanRequest, ProviderConfig, Result, Verdict
from commands.providers.offline import OfflineProvider
from commands.sessions import open_session
from eventstore.hub import Hub
from eventstore.store import EventStore, StoredEvent
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

BODY = {"subject": "physics", "topic": "Hooke's law", "intent": {"free_text": "go slowly"}}


class RecordingProvider(OfflineProvider):
    """The offline tutor, noting every call it receives in order."""

    def __init__(self) -> None:
        super().__init__(ProviderConfig(kind="offline", offline_pace_ms=0))
        self.calls: list[str] = []

    async def moderate(self, text: str, stage: str) -> Result[Verdict]:
        self.calls.append(f"moderate {stage}")
        return await super().moderate(text, stage)

    async def plan(self, request: PlanRequest) -> Result[tuple[Plan, BeatContent]]:
        self.calls.append("plan")
        return await super().plan(request)


class CountingStore(EventStore):
    """The real store, counting reads of lessons' logs (a shared read of several counts
    once: it is one statement)."""

    lesson_reads = 0

    async def read_lesson_page(self, lesson_id: str, after_seq: int, limit: int) -> Any:
        self.lesson_reads += 1
        return await super().read_lesson_page(lesson_id, after_seq, limit)

    async def read_lessons(self, lesson_ids: Sequence[str]) -> Any:
        self.lesson_reads += 1
        return await super().read_lessons(lesson_ids)


@asynccontextmanager
async def handler_deps(
    pool: AsyncConnectionPool[Any], db_url: str, **settings: Any
) -> AsyncIterator[tuple[Deps, RecordingProvider, CountingStore]]:
    store = CountingStore(pool)
    async with open_deps(make_settings(**settings), pool, store, Hub(store, db_url)) as deps:
        provider = RecordingProvider()
        yield dataclasses.replace(deps, provider=provider), provider, store


async def new_caller(pool: AsyncConnectionPool[Any]) -> Caller:
    grant = await open_session(pool, None, {}, 30)
    return Caller.of(grant.principal, "203.0.113.9", "req_test")


async def events_of(store: EventStore, type_: str) -> list[StoredEvent]:
    return [e async for e in store.read_all() if e.type == type_]


async def test_a_plan_passes_input_moderation_then_the_model_then_output_moderation(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    async with handler_deps(pool, db_url) as (deps, provider, _):
        answer = await lessons.create_plan(CreatePlan(await new_caller(pool), BODY), deps)
    first_plan = provider.calls.index("plan")
    assert first_plan > 0
    assert set(provider.calls[:first_plan]) == {"moderate input"}
    assert provider.calls[first_plan + 1 :]
    assert set(provider.calls[first_plan + 1 :]) == {"moderate output"}
    assert answer.json()["plan"]["beats"][0]["ord"] == 1


async def test_the_rate_limit_refuses_before_the_spend_cap_and_any_model_call(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    harmful = {**BODY, "topic": "how to build a bomb to hurt people"}
    async with handler_deps(pool, db_url, limit_plan_anon_per_hour=0, over_quota_forced=True) as (
        deps,
        provider,
        store,
    ):
        with pytest.raises(OverQuota) as refused:
            await lessons.create_plan(CreatePlan(await new_caller(pool), harmful), deps)
    assert refused.value.details["bucket"] == "plan"  # the rate limit, not the spend cap
    assert provider.calls == []
    await store.sequence()
    assert [e.payload["bucket"] for e in await events_of(store, "over_quota.hit")] == ["plan"]


async def test_the_spend_cap_refuses_before_moderation_and_any_model_call(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    harmful = {**BODY, "topic": "how to build a bomb to hurt people"}
    async with handler_deps(pool, db_url, over_quota_forced=True) as (deps, provider, store):
        with pytest.raises(OverQuota) as refused:
            await lessons.create_plan(CreatePlan(await new_caller(pool), harmful), deps)
    assert refused.value.details["bucket"] == "spend"
    assert provider.calls == []
    await store.sequence()
    assert await events_of(store, "safety.refused") == []


async def test_input_moderation_refuses_before_the_model_is_asked(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    harmful = {**BODY, "topic": "how to build a bomb to hurt people"}
    async with handler_deps(pool, db_url) as (deps, provider, store):
        with pytest.raises(Refused):
            await lessons.create_plan(CreatePlan(await new_caller(pool), harmful), deps)
    assert "plan" not in provider.calls
    assert provider.calls
    assert set(provider.calls) == {"moderate input"}
    await store.sequence()
    assert [e.payload["stage"] for e in await events_of(store, "safety.refused")] == ["input"]


async def test_opening_a_stream_reads_the_lesson_log_once(
    pool: AsyncConnectionPool[Any], db_url: str
) -> None:
    async with handler_deps(pool, db_url, max_generations=0) as (deps, _, store):
        caller = await new_caller(pool)
        planned = await lessons.create_plan(CreatePlan(caller, BODY), deps)
        store.lesson_reads = 0
        opened = await lessons.open_stream(OpenStream(caller, planned.lesson_id, None), deps)
        assert isinstance(opened, lessons.StreamOpened)
        async with opened.subscription as sub:
            delivered = await sub.next_batch(timeout=5)
        assert store.lesson_reads == 1
        # A first connection starts at plan_ready: the lock, appended after the one read,
        # arrives live, right after the catch-up's end.
        assert [e.type for e in delivered] == ["plan.locked"]
        assert delivered[0].lesson_seq == opened.view.locked_seq == opened.view.connect_head
        # A reconnect from before the lock starts at the lock too (plan_ready carries the
        # plan), now from the one read, since the lock is in the log by then.
        store.lesson_reads = 0
        resumed = await lessons.open_stream(
            OpenStream(caller, planned.lesson_id, f"{planned.lesson_id}-evt-00002"), deps
        )
        assert isinstance(resumed, lessons.StreamOpened)
        async with resumed.subscription as sub:
            again = await sub.next_batch(timeout=5)
    assert store.lesson_reads == 1
    assert [(e.type, e.lesson_seq) for e in again] == [("plan.locked", delivered[0].lesson_seq)]
