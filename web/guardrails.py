"""The guardrails as a model-touching handler calls them (DESIGN.md, "Guardrails").

    principal = await current_principal(request)          # the key was claimed already
    await admit(request, principal, Bucket.PLAN)             # rate limit, then spend cap
    await screen_input(request, principal, provider, {"topic": topic, ...})
    result = await provider.plan(...)                        # the model call
    ... append the lesson's events ...

Each step raises a CommandError (`over_quota`, `refused`, `model_unavailable` …) that the
app turns into the error envelope, after appending the event that records it.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request

from commands import moderation, ratelimit, spendcap
from commands.providers import Provider
from commands.ratelimit import Bucket, RateLimits
from commands.sessions import Principal
from eventstore.settings import Settings
from eventstore.store import EventMeta
from web.client_ip import request_client_ip
from web.services import services


def event_meta(request: Request, principal: Principal) -> EventMeta:
    return EventMeta(
        trace_id=str(request.scope.get("state", {}).get("trace_id") or "") or None,
        user_id=principal.user_id,
        session_id=principal.session_id,
    )


def rate_limits(settings: Settings) -> RateLimits:
    return RateLimits(
        plan_anon=settings.limit_plan_anon_per_hour,
        ask_anon=settings.limit_ask_anon_per_hour,
        plan_user=settings.limit_plan_user_per_hour,
        ask_user=settings.limit_ask_user_per_hour,
        viz_anon=settings.limit_viz_anon_per_hour,
        viz_user=settings.limit_viz_user_per_hour,
    )


async def admit(
    request: Request,
    principal: Principal,
    bucket: Bucket,
    *,
    spend: bool = True,
    lesson_id: str | None = None,
) -> None:
    """Rate limit (per IP or user), then, if `spend`, the daily spend cap."""
    svc = services(request)
    meta = event_meta(request, principal)
    await ratelimit.enforce(
        svc.pool,
        svc.store,
        bucket=bucket,
        principal=principal,
        client_ip=request_client_ip(request),
        limits=rate_limits(svc.settings),
        meta=meta,
        lesson_id=lesson_id,
    )
    if spend:
        await spendcap.enforce(
            svc.pool,
            svc.store,
            cap_usd=svc.settings.daily_cap_usd,
            forced=svc.settings.over_quota_forced,
            meta=meta,
            lesson_id=lesson_id,
        )


async def screen_input(
    request: Request,
    principal: Principal,
    provider: Provider,
    texts: Mapping[str, str],
    *,
    lesson_id: str | None = None,
) -> None:
    svc = services(request)
    await moderation.screen(
        provider,
        texts,
        "input",
        store=svc.store,
        meta=event_meta(request, principal),
        lesson_id=lesson_id,
    )
