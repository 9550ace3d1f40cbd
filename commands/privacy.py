"""The hard delete: erase users deleted more than N days ago (docs/privacy.md).

For each such user: the lessons they own (by the log), the shared cache entries made from
those lessons (their keys are derived from the lesson's topic, intent and plans, contracts
§5, so they are recomputed from the lesson's own events while those can still be read),
then `commands.accounts.purge_user`: `lesson.erased` in each lesson, the vault rows deleted,
every other row emptied or deleted. The log itself is never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from commands.accounts import Pool, owned_lessons, purge_user, users_to_purge
from commands.generation import tier_models
from commands.lessons import fold
from commands.plan import PlanInput, beat_cache_key, plan_cache_key
from commands.providers import Tier
from eventstore.events import LessonCreated, PlanRevised
from eventstore.settings import Settings
from eventstore.store import EventStore


@dataclass(frozen=True)
class PurgeReport:
    users: int
    lessons: int
    vault_rows: int
    cache_rows: int

    def summary(self) -> str:
        return (
            f"purged {self.users} users: {self.lessons} lessons erased, "
            f"{self.vault_rows} personal rows and {self.cache_rows} cache entries deleted"
        )


def candidate_models(settings: Settings) -> set[str]:
    """Every model name a cache key of this deployment can carry (either provider)."""
    ids = {
        Tier.FAST: settings.model_fast,
        Tier.STREAMING: settings.model_streaming,
        Tier.DEEP: settings.model_deep,
    }
    return {m for kind in ("offline", "anthropic") for m in tier_models(kind, ids).values()}


async def cache_keys(store: EventStore, lesson_ids: Iterable[str], models: set[str]) -> set[str]:
    """The plan and beat cache keys the lessons' requests and plans map to (contracts §5)."""
    keys: set[str] = set()
    for lesson_id in lesson_ids:
        events = [e async for e in store.read_lesson(lesson_id)]
        state = fold(events, lesson_id=lesson_id)
        for stored in events:
            event = stored.domain()
            if isinstance(event, LessonCreated):
                data = PlanInput(event.subject, event.topic, event.intent, event.level)
                keys.update(plan_cache_key(data, m) for m in models)
            elif isinstance(event, PlanRevised):
                beats = event.plan.get("beats")
                count = len(beats) if isinstance(beats, list) else 0
                for ord_ in range(1, count + 1):
                    keys.update(beat_cache_key(event.plan, ord_, state.level, m) for m in models)
    return keys


async def purge(
    pool: Pool,
    store: EventStore,
    settings: Settings,
    older_than_days: int,
    on_user: Callable[[int, int], None] | None = None,
) -> PurgeReport:
    """Erase every user deleted at least `older_than_days` ago; `on_user(done, total)`."""
    users = await users_to_purge(pool, older_than_days)
    models = candidate_models(settings)
    lessons = vault = cache = 0
    for done, user_id in enumerate(users, start=1):
        owned: Sequence[str] = await owned_lessons(pool, user_id)
        keys = await cache_keys(store, owned, models)
        forgotten, cache_rows = await purge_user(pool, store, user_id, sorted(keys), owned)
        lessons += len(owned)
        vault += forgotten
        cache += cache_rows
        if on_user is not None:
            on_user(done, len(users))
    return PurgeReport(len(users), lessons, vault, cache)
