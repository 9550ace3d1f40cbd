"""Building the lesson runtime from Settings: the model provider and the generation supervisor."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from commands.generation import CompletionHook, GenerationConfig, Supervisor, tier_models
from commands.narration import Narrator
from commands.providers import Provider, ProviderConfig, Tier, make_provider
from eventstore.settings import Settings
from eventstore.store import EventStore


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


def open_supervisor(
    settings: Settings,
    pool: AsyncConnectionPool[AsyncConnection[Any]],
    store: EventStore,
    provider: Provider,
    narrator: Narrator | None = None,
    on_complete: CompletionHook | None = None,
) -> Supervisor:
    return Supervisor(
        pool,
        store,
        provider,
        generation_config(settings),
        narrator=narrator,
        on_complete=on_complete,
    )
