"""The one place the use cases' dependencies are built from Settings, once per process.

`open_deps` gives every handler the same `Deps`: the pool and event store the caller opened,
the model provider, the generation supervisor and the guardrails' limits. Handlers take a
command and these, and nothing else (commands/handlers/).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from commands.analytics import OwnedLessons
from commands.assets import Assets
from commands.assetstore import open_asset_store
from commands.generation import GenerationConfig, Supervisor, tier_models
from commands.handlers import media
from commands.lesson_model import LessonState
from commands.mailer import Mailer, open_mailer
from commands.narration import Narrator, open_narrator
from commands.providers import Provider, ProviderConfig, Tier, make_provider
from commands.ratelimit import RateLimits
from commands.sessions import Authenticator
from commands.spendcap import SpendChecks
from eventstore.database import Pool
from eventstore.hub import Hub
from eventstore.settings import Settings
from eventstore.store import EventStore


@dataclass(frozen=True)
class Deps:
    settings: Settings
    pool: Pool
    store: EventStore
    hub: Hub
    provider: Provider
    supervisor: Supervisor
    limits: RateLimits
    assets: Assets  # the asset store behind the assets table (docs/assets.md)
    narrator: Narrator  # text to speech, cached forever; disabled without a key
    mailer: Mailer  # sign-in mail: SES, or the local outbox (commands/mailer.py)
    sessions: Authenticator  # who a session cookie is, requests arriving together batched
    spend: SpendChecks  # the daily cap's check, checks made together sharing one read
    owned_lessons: OwnedLessons  # analytics batches' ownership checks, a yes kept a while


def provider_config(settings: Settings) -> ProviderConfig:
    return ProviderConfig(
        kind=settings.provider,
        api_key=settings.anthropic_api_key,
        base_url=settings.anthropic_base_url,
        model_fast=settings.model_fast,
        model_streaming=settings.model_streaming,
        model_deep=settings.model_deep,
        offline_pace_ms=settings.offline_pace_ms,
    )


def open_provider(settings: Settings) -> Provider:
    return make_provider(provider_config(settings))


def generation_config(settings: Settings) -> GenerationConfig:
    model_ids = {
        Tier.FAST: settings.model_fast,
        Tier.STREAMING: settings.model_streaming,
        Tier.DEEP: settings.model_deep,
    }
    return GenerationConfig(
        partial_interval_s=settings.beat_partial_ms / 1000,
        lease_ttl_s=settings.lease_ttl_s,
        lease_renew_s=settings.lease_renew_s,
        poll_s=settings.supervisor_poll_s,
        max_lessons=settings.max_generations,
        models=tier_models(settings.provider, model_ids),
    )


def rate_limits(settings: Settings) -> RateLimits:
    return RateLimits(
        plan_anon=settings.limit_plan_anon_per_hour,
        ask_anon=settings.limit_ask_anon_per_hour,
        plan_user=settings.limit_plan_user_per_hour,
        ask_user=settings.limit_ask_user_per_hour,
        viz_anon=settings.limit_viz_anon_per_hour,
        viz_user=settings.limit_viz_user_per_hour,
        magic_link_ip=settings.limit_magic_link_ip_per_hour,
        magic_link_email=settings.limit_magic_link_email_per_hour,
    )


@contextlib.asynccontextmanager
async def open_deps(
    settings: Settings, pool: Pool, store: EventStore, hub: Hub
) -> AsyncIterator[Deps]:
    """Build the handlers' dependencies; on exit stop generation and close the provider."""
    provider = open_provider(settings)
    assets = Assets(pool, open_asset_store(settings))
    narrator = open_narrator(settings, assets, store)
    built: list[Deps] = []

    async def preorder(state: LessonState) -> None:
        await media.preorder(built[0], state)  # the intent's outputs, when a lesson completes

    supervisor = Supervisor(
        pool,
        store,
        provider,
        generation_config(settings),
        narrator=narrator,
        on_complete=preorder,
    )
    deps = Deps(
        settings,
        pool,
        store,
        hub,
        provider,
        supervisor,
        rate_limits(settings),
        assets=assets,
        narrator=narrator,
        mailer=open_mailer(settings),
        sessions=Authenticator(
            pool, days=settings.session_days, idle_min=settings.session_idle_min
        ),
        spend=SpendChecks(pool, settings.daily_cap_usd),
        owned_lessons=OwnedLessons(),
    )
    built.append(deps)
    try:
        yield deps
    finally:
        await deps.sessions.aclose()
        await deps.spend.aclose()
        await supervisor.aclose()
        await narrator.aclose()
        await provider.aclose()
