"""Moderation (screen) and the spend cap as building blocks, on the real database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from commands import moderation, spendcap
from commands.errors import ModelUnavailable, OverQuota, RateLimited, Refused
from commands.providers import ProviderConfig, Result, Verdict
from commands.providers.offline import OfflineProvider
from eventstore.events import ModelRunRecorded
from eventstore.store import EventMeta, EventStore, NewEvent, model_spend_since
from tests.guarded_app import OUTAGE_TOPIC, THROTTLE_TOPIC, ScriptedProvider

pytestmark = pytest.mark.anyio

META = EventMeta(trace_id="req_test", user_id="u1", session_id="s1")


async def logged(store: EventStore) -> list[tuple[str, dict[str, Any]]]:
    await store.sequence()
    return [(e.type, e.payload) async for e in store.read_all()]


async def test_clean_texts_pass_and_each_classifier_call_is_recorded(
    pool: AsyncConnectionPool[Any],
) -> None:
    store = EventStore(pool)
    provider = OfflineProvider(ProviderConfig(kind="offline", offline_pace_ms=0))
    texts = {"topic": "Hooke's law", "free_text": "focus on intuition", "blank": "  "}
    await moderation.screen(provider, texts, "input", store=store, meta=META)
    events = await logged(store)
    assert [t for t, _ in events] == ["model_run.recorded"] * 2  # blank fields are skipped
    assert {p["purpose"] for _, p in events} == {"moderation"}
    assert {p["trace_id"] for _, p in events} == {"req_test"}


@pytest.mark.parametrize("stage", ["input", "output"])
async def test_a_refusal_names_stage_category_and_field(
    pool: AsyncConnectionPool[Any], stage: str
) -> None:
    store = EventStore(pool)
    provider = OfflineProvider(ProviderConfig(kind="offline", offline_pace_ms=0))
    texts = {"topic": "Optics", "free_text": "find the home address of Jane Doe"}
    with pytest.raises(Refused) as info:
        await moderation.screen(provider, texts, stage, store=store, meta=META, lesson_id="L1")
    assert info.value.details == {"reason": "safety", "field": "free_text"}
    events = await logged(store)
    refusals = [p for t, p in events if t == "safety.refused"]
    assert refusals == [{"stage": stage, "category": "doxxing", "field": "free_text"}]
    assert sum(t == "model_run.recorded" for t, _ in events) == 2


async def test_the_classifier_failing_fails_closed(pool: AsyncConnectionPool[Any]) -> None:
    store = EventStore(pool)
    provider = ScriptedProvider()
    with pytest.raises(RateLimited) as throttled:
        await moderation.screen(
            provider, {"topic": THROTTLE_TOPIC}, "input", store=store, meta=META
        )
    assert throttled.value.retry_after_ms == 1500
    with pytest.raises(ModelUnavailable):
        await moderation.screen(provider, {"topic": OUTAGE_TOPIC}, "input", store=store, meta=META)
    statuses = [p["status"] for t, p in await logged(store) if t == "model_run.recorded"]
    assert statuses == ["rate_limited", "error"]  # the failed calls are recorded too


async def test_a_verdict_without_category_is_still_a_refusal(
    pool: AsyncConnectionPool[Any],
) -> None:
    class Refuses(ScriptedProvider):
        async def moderate(self, text: str, stage: str) -> Result[Verdict]:
            return Result(Verdict(False, None), ())

    with pytest.raises(Refused):
        await moderation.screen(Refuses(), {"q": "x"}, "input", store=EventStore(pool), meta=META)


def test_full_for_the_day_counts_hours_to_utc_midnight() -> None:
    at = datetime(2026, 5, 10, 19, 30, tzinfo=UTC)
    error = spendcap.full_for_the_day(at)
    assert error.message == "Tutor is full for the day · come back in 5 hours."
    assert error.retry_after_ms == 4.5 * 3600 * 1000
    late = spendcap.full_for_the_day(datetime(2026, 5, 10, 23, 59, tzinfo=UTC))
    assert late.message.endswith("come back in 1 hour.")
    assert spendcap.until_reset(at.astimezone(tz=None)) == timedelta(hours=4, minutes=30)


async def test_spend_counts_todays_model_runs_only(pool: AsyncConnectionPool[Any]) -> None:
    store = EventStore(pool)
    run = ModelRunRecorded("r", "haiku-4-5", "plan", 10, 10, 0.02, 5, "ok", "t")
    await store.append_unordered([NewEvent.of(run, META), NewEvent.of(run, META)])
    async with pool.connection() as conn:  # yesterday's (UTC) runs do not count today
        await conn.execute(
            "INSERT INTO events (id, type, payload_json, ts) VALUES "
            "('old', 'model_run.recorded', '{\"cost_usd\": 99}', "
            "date_trunc('day', now(), 'UTC') - interval '1 second')"
        )
    status = await spendcap.spend_status(pool, Decimal("0.05"))
    assert status.spent_usd == Decimal("0.04")
    assert not status.full
    await spendcap.enforce(pool, store, cap_usd=Decimal("0.05"), forced=False, meta=META)
    with pytest.raises(OverQuota):
        await spendcap.enforce(pool, store, cap_usd=Decimal("0.04"), forced=False, meta=META)
    await spendcap.set_flag(pool, True, "by hand")
    status = await spendcap.spend_status(pool, Decimal(50))
    assert (status.full, status.why, status.flag_reason) == (True, "flag", "by hand")
    await spendcap.set_flag(pool, False)
    assert not (await spendcap.spend_status(pool, Decimal(50))).full


async def test_checks_made_together_share_a_read_and_each_sees_what_was_set_before_it(
    pool: AsyncConnectionPool[Any],
) -> None:
    checks = spendcap.SpendChecks(pool, Decimal(50))
    together = await asyncio.gather(*(checks.status() for _ in range(20)))
    assert [s.full for s in together] == [False] * 20
    assert checks.reads == 1
    await spendcap.set_flag(pool, True, "by hand")  # committed before the next check asks
    status = await checks.status()
    assert (status.full, status.why, status.flag_reason) == (True, "flag", "by hand")
    store = EventStore(pool)
    with pytest.raises(OverQuota):
        await spendcap.enforce(
            pool, store, cap_usd=Decimal(50), forced=False, meta=META, checks=checks
        )
    await spendcap.set_flag(pool, False)
    assert not (await checks.status()).full
    assert checks.reads == 4
    await checks.aclose()


_SPEND_STEP = st.one_of(
    st.tuples(st.just("run"), st.integers(0, 500)),  # a model run costing n/1000 dollars
    st.tuples(st.just("number"), st.just(0)),  # a sequencer pass
    st.tuples(st.just("check"), st.just(0)),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(_SPEND_STEP, min_size=1, max_size=20))
async def test_the_running_total_always_equals_the_whole_days_sum(
    pool: AsyncConnectionPool[Any], steps: list[tuple[str, int]]
) -> None:
    """Checks read only what is new since the last one (SpendTally), yet each sees exactly
    the sum of every run of the day so far, numbered or not yet: nothing counted twice as
    runs get their positions between checks, nothing missed."""
    store = EventStore(pool)
    checks = spendcap.SpendChecks(pool, Decimal(10**9))
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        for kind, cost in [*steps, ("check", 0)]:
            if kind == "run":
                run = ModelRunRecorded("r", "haiku-4-5", "ask", 1, 1, cost / 1000, 1, "ok", "t")
                await store.append_unordered([NewEvent.of(run, META)])
            elif kind == "number":
                await store.sequence()
            else:
                async with pool.connection() as conn:
                    whole = await model_spend_since(conn, midnight)
                assert (await checks.status()).spent_usd == whole
    finally:
        await checks.aclose()
