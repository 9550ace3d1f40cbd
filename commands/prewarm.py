"""Cache upkeep (contracts §5): the nightly plan pre-warm, the purge and the global flush.

* ``prewarm(top)``: the `top` most-asked plan keys of the current fast model whose cached
  plan is missing or expires within a day are generated again, one at a time (low priority:
  one model call in flight, and the systemd unit runs at Nice=19 / idle I/O), stopping at
  the daily spend cap. Fresh keys cost nothing. Each model call is a session-level
  ``model_run.recorded`` (purpose ``prewarm``), so it counts toward the cap.
* ``purge_expired``: expired cache rows, in batches.
* ``flush``: every cache row (plans and beats). Never assets: they are content-addressed,
  cached forever, and not in this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from commands import moderation, providers, spendcap
from commands.errors import CommandError
from commands.lesson_model import plan_json, run_event
from commands.plan import (
    PLAN_CACHE_DAYS,
    PlanInput,
    beat_to_cache,
    cache_put,
    output_texts,
    plan_cache_key,
    plan_request,
)
from commands.providers import Provider
from eventstore.errors import translate_errors
from eventstore.events import ModelRunRecorded
from eventstore.ids import new_trace_id
from eventstore.queries import load_queries
from eventstore.store import EventMeta, EventStore, NewEvent

_Q = load_queries(Path(__file__).parent / "sql" / "cache.sql")
Pool = AsyncConnectionPool[AsyncConnection[Any]]


@dataclass(frozen=True)
class PrewarmReport:
    considered: int = 0
    fresh: int = 0
    generated: int = 0
    failed: int = 0
    stopped_at_cap: bool = False


async def prewarm(
    pool: Pool,
    store: EventStore,
    provider: Provider,
    *,
    fast_model: str,
    cap_usd: Decimal,
    forced: bool = False,
    top: int = 100,
    on_progress: Callable[[str], None] = lambda _: None,
) -> PrewarmReport:
    with translate_errors():
        async with pool.connection() as conn:
            cur = await conn.execute(_Q["prewarm_candidates"], {"model": fast_model, "top": top})
            candidates = await cur.fetchall()
    report = PrewarmReport(considered=len(candidates))
    for index, (key, request_json, asks, fresh) in enumerate(candidates, 1):
        if fresh:
            report = replace(report, fresh=report.fresh + 1)
            continue
        if (await spendcap.spend_status(pool, cap_usd, forced)).full:
            on_progress("  the daily spend cap is reached; stopping")
            return replace(report, stopped_at_cap=True)
        data = PlanInput(**request_json)
        if plan_cache_key(data, fast_model) != key:
            # The key function changed since this row was written: it cannot be refilled.
            report = replace(report, failed=report.failed + 1)
            continue
        ok = await _generate(pool, store, provider, key, data)
        report = replace(report, generated=report.generated + ok, failed=report.failed + (not ok))
        on_progress(f"  [{index}/{len(candidates)}] {data.topic!r} ({asks} asks): "
                    + ("generated" if ok else "failed"))  # fmt: skip
    return report


async def _generate(
    pool: Pool, store: EventStore, provider: Provider, key: str, data: PlanInput
) -> bool:
    trace_id = new_trace_id()
    meta = EventMeta(trace_id=trace_id)
    request = plan_request(data.subject, data.topic, data.level, data.intent)
    try:
        result = await provider.plan(request)
    except providers.ProviderError as e:
        await store.append_unordered([NewEvent.of(_run(r, trace_id), meta) for r in e.runs])
        return False
    await store.append_unordered([NewEvent.of(_run(r, trace_id), meta) for r in result.runs])
    plan, beat1 = result.value
    try:
        await moderation.screen(
            provider, output_texts(plan, beat1), "output", store=store, meta=meta
        )
    except CommandError:
        return False
    model = result.runs[-1].model if result.runs else provider.name
    payload = {"plan": plan_json(plan), "beat1": beat_to_cache(beat1)}
    await cache_put(pool, key, model, payload, PLAN_CACHE_DAYS)
    return True


def _run(run: providers.ModelRun, trace_id: str) -> ModelRunRecorded:
    return run_event(replace(run, purpose="prewarm"), trace_id)


async def _delete_in_batches(pool: Pool, query: str, batch: int) -> int:
    total = 0
    while True:
        with translate_errors():
            async with pool.connection() as conn:
                cur = await conn.execute(_Q[query], {"batch": batch})
                deleted = cur.rowcount
        total += deleted
        if deleted < batch:
            return total


async def purge_expired(pool: Pool, batch: int = 5000) -> int:
    return await _delete_in_batches(pool, "purge_expired", batch)


async def flush(pool: Pool, batch: int = 5000) -> int:
    return await _delete_in_batches(pool, "flush_batch", batch)
