"""The plan pre-warm, the cache purge and the global flush, against Postgres."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from commands.plan import cache_get, cache_put, plan_cache_key, validate_plan_body
from commands.plan_requests import note_plan_request
from commands.prewarm import flush, prewarm, purge_expired
from commands.providers import PlanRequest, ProviderConfig
from commands.providers.offline import OfflineProvider
from eventstore.ids import new_id
from eventstore.store import EventStore
from tests.test_lessons_flow import PLAN_BODY

pytestmark = pytest.mark.anyio


class CountingProvider(OfflineProvider):
    """The offline tutor, counting plan calls (the interface is the real one)."""

    def __init__(self) -> None:
        super().__init__(ProviderConfig(kind="offline", offline_pace_ms=0))
        self.plans: list[PlanRequest] = []

    async def plan(self, request: PlanRequest) -> Any:
        self.plans.append(request)
        return await super().plan(request)


async def asked(pool: AsyncConnectionPool[Any], topic: str, times: int) -> str:
    data = validate_plan_body({**PLAN_BODY, "topic": topic})
    key = plan_cache_key(data, "offline")
    for _ in range(times):
        await note_plan_request(pool, key, "offline", dataclasses.asdict(data))
    return key


async def test_prewarm_fills_the_top_keys_and_calls_nothing_for_fresh_ones(
    pool: AsyncConnectionPool[Any],
) -> None:
    fresh = await asked(pool, "Hooke's law", 9)
    expiring = await asked(pool, "Ohm's law", 7)
    missing = await asked(pool, "Snell's law", 5)
    rare = await asked(pool, "Kepler's laws", 1)
    await cache_put(pool, fresh, "offline", {"plan": {}, "beat1": {}}, 7)
    await cache_put(pool, expiring, "offline", {"plan": {}, "beat1": {}}, 0)
    provider = CountingProvider()
    store = EventStore(pool)
    lines: list[str] = []
    report = await prewarm(
        pool, store, provider, fast_model="offline", cap_usd=Decimal(50), top=3,
        on_progress=lines.append,
    )  # fmt: skip
    assert (report.considered, report.fresh, report.generated, report.failed) == (3, 1, 2, 0)
    assert [p.topic for p in provider.plans] == ["Ohm's law", "Snell's law"]
    assert len(lines) == 2
    for key in (expiring, missing):
        cached = await cache_get(pool, key)
        assert cached is not None
        assert cached[1]["plan"]["beats"]
    assert await cache_get(pool, rare) is None
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM events WHERE type = 'model_run.recorded' "
            "AND payload_json->>'purpose' = 'prewarm'"
        )
        assert await cur.fetchone() == (2,)
    again = await prewarm(pool, store, provider, fast_model="offline", cap_usd=Decimal(50))
    assert (again.considered, again.fresh, again.generated) == (4, 3, 1)
    assert len(provider.plans) == 3


async def test_prewarm_stops_at_the_spend_cap(pool: AsyncConnectionPool[Any]) -> None:
    await asked(pool, "Hooke's law", 2)
    provider = CountingProvider()
    report = await prewarm(
        pool, EventStore(pool), provider, fast_model="offline", cap_usd=Decimal(50), forced=True
    )
    assert report.stopped_at_cap
    assert provider.plans == []


async def test_purge_and_flush_touch_cache_rows_only(pool: AsyncConnectionPool[Any]) -> None:
    for i in range(7):
        await cache_put(pool, f"expired-{i}", "offline", {}, 0)
    await cache_put(pool, "live", "offline", {}, 7)
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO assets (id, type, url, mime, content_hash) "
            "VALUES (%s, 'audio', '/assets/a', 'audio/mpeg', 'h')",
            (new_id(),),
        )
    assert await purge_expired(pool, batch=3) == 7
    assert await cache_get(pool, "live") is not None
    assert await flush(pool, batch=3) == 1
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM cache), (SELECT count(*) FROM assets)"
        )
        assert await cur.fetchone() == (0, 1)


def test_flush_asks_for_confirmation(capsys: pytest.CaptureFixture[str]) -> None:
    from ops.cli import main

    assert main(["cache", "flush"]) == 2
    assert "--yes" in capsys.readouterr().err
