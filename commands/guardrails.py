"""The guardrails, in the order every model-touching handler runs them (DESIGN.md).

    idempotency key   claimed by web/idempotency.py before the handler runs
    await admit(deps, caller, Bucket.PLAN)             rate limit, then the spend cap
    await screen_input(deps, caller, {"topic": …})     input moderation
    … the model call …
    await screen_output(deps, caller, {"plan": …})     output moderation
    … decide and append …

Each step raises a CommandError (`over_quota`, `refused`, `model_unavailable` …) after
appending the event that records it (`over_quota.hit`, `safety.refused`, the model runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from commands import moderation, ratelimit, spendcap
from commands.messages import Caller
from commands.ratelimit import Bucket
from eventstore.store import NewEvent

if TYPE_CHECKING:
    from commands.bootstrap import Deps


async def admit(
    deps: Deps,
    caller: Caller,
    bucket: Bucket,
    *,
    spend: bool = True,
    lesson_id: str | None = None,
) -> None:
    """Rate limit (per IP, or per user once signed in), then, if `spend`, the daily cap."""
    await ratelimit.enforce(
        deps.pool,
        deps.store,
        bucket=bucket,
        principal=caller.principal,
        client_ip=caller.client_ip,
        limits=deps.limits,
        meta=caller.meta(),
        lesson_id=lesson_id,
    )
    if spend:
        await enforce_spend_cap(deps, caller, lesson_id=lesson_id)


async def enforce_spend_cap(deps: Deps, caller: Caller, *, lesson_id: str | None = None) -> None:
    await spendcap.enforce(
        deps.pool,
        deps.store,
        cap_usd=deps.settings.daily_cap_usd,
        forced=deps.settings.over_quota_forced,
        meta=caller.meta(),
        lesson_id=lesson_id,
        checks=deps.spend,
    )


async def screen_input(
    deps: Deps,
    caller: Caller,
    texts: Mapping[str, str],
    *,
    lesson_id: str | None = None,
    passed: list[NewEvent] | None = None,
) -> None:
    await _screen(deps, caller, texts, "input", lesson_id, passed)


async def screen_output(
    deps: Deps,
    caller: Caller,
    texts: Mapping[str, str],
    *,
    lesson_id: str | None = None,
    passed: list[NewEvent] | None = None,
) -> None:
    await _screen(deps, caller, texts, "output", lesson_id, passed)


async def _screen(
    deps: Deps,
    caller: Caller,
    texts: Mapping[str, str],
    stage: Literal["input", "output"],
    lesson_id: str | None,
    passed: list[NewEvent] | None,
) -> None:
    await moderation.screen(
        deps.provider,
        texts,
        stage,
        store=deps.store,
        meta=caller.meta(),
        lesson_id=lesson_id,
        passed=passed,
    )
