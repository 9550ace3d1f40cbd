"""The hard delete: erase users deleted more than N days ago (docs/privacy.md).

For each such user: the lessons they own (by the log), the shared cache entries made from
those lessons (their keys are derived from the lesson's topic, intent and plans, contracts
§5, so they are recomputed from the lesson's own events while those can still be read),
then `lesson.erased` in each lesson and, in one transaction, the vault rows deleted and
every other row emptied or deleted. The log itself is never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from commands.accounts import (
    append_to_lesson,
    decide_erase,
    forget_user,
    owned_lessons,
    users_to_purge,
)
from commands.generation import tier_models
from commands.lesson_model import fold
from commands.plan import PlanInput, beat_cache_key, plan_cache_key
from commands.providers import Tier
from eventstore.database import Pool
from eventstore.events import LessonCreated, PlanRevised
from eventstore.settings import Settings
from eventstore.store import EventMeta, EventStore, StoredEvent


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


def cache_keys(events: Sequence[StoredEvent], lesson_id: str, models: set[str]) -> set[str]:
    """The plan and beat cache keys a lesson's request and plans map to (contracts §5)."""
    keys: set[str] = set()
    level = fold(events, lesson_id=lesson_id).level
    for stored in events:
        event = stored.domain()
        if isinstance(event, LessonCreated):
            data = PlanInput(event.subject, event.topic, event.intent, event.level)
            keys.update(plan_cache_key(data, m) for m in models)
        elif isinstance(event, PlanRevised):
            beats = event.plan.get("beats")
            count = len(beats) if isinstance(beats, list) else 0
            for ord_ in range(1, count + 1):
                keys.update(beat_cache_key(event.plan, ord_, level, m) for m in models)
    return keys


async def purge_user(
    pool: Pool, store: EventStore, user_id: str, models: set[str]
) -> tuple[int, int, int]:
    """Erase one deleted user; returns (lessons, vault rows, cache rows)."""
    lessons = await owned_lessons(pool, user_id)
    keys: set[str] = set()
    meta = EventMeta(user_id=user_id)
    for lesson_id in lessons:
        events = [e async for e in store.read_lesson(lesson_id)]
        keys |= cache_keys(events, lesson_id, models)  # while the lesson can still be read
        await append_to_lesson(store, lesson_id, decide_erase(events), meta, events)
    vault, cache = await forget_user(pool, user_id, lessons, sorted(keys))
    return len(lessons), vault, cache


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
        erased, forgotten, cache_rows = await purge_user(pool, store, user_id, models)
        lessons += erased
        vault += forgotten
        cache += cache_rows
        if on_user is not None:
            on_user(done, len(users))
    return PurgeReport(len(users), lessons, vault, cache)
