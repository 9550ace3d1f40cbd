"""The hard delete: erase users deleted more than N days ago (docs/privacy.md).

For each such user: the lessons they own (by the log), the shared cache entries made from
those lessons (their keys are derived from the lesson's topic, intent and plans, contracts
§5, so they are recomputed from the lesson's own events while those can still be read),
and the assets those lessons name (make-me outputs, diagrams, simulations, narration
clips: from the same events), then `lesson.erased` in each lesson and, in one transaction,
the vault rows deleted and every other row emptied or deleted, asset rows included unless
another student's lesson still uses them. After that commit the asset objects are deleted
from the store. The log itself is never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from commands.accounts import (
    append_to_lesson,
    decide_erase,
    forget_user,
    owned_lessons,
    users_to_purge,
)
from commands.assets import Assets, ErasedAssets, content_hash
from commands.assetstore import AssetStore, AssetStoreError, open_asset_store
from commands.generation import tier_models
from commands.lesson_model import fold
from commands.plan import PlanInput, beat_cache_key, plan_cache_key
from commands.providers import MAKEME_OUTPUTS, Tier
from eventstore.database import Pool
from eventstore.events import (
    ERASED_TEXT,
    AudioReady,
    BeatCompleted,
    InteractionRecorded,
    LessonCreated,
    PlanRevised,
)
from eventstore.settings import Settings
from eventstore.store import EventMeta, EventStore, StoredEvent


@dataclass(frozen=True)
class PurgeReport:
    users: int
    lessons: int
    vault_rows: int
    cache_rows: int
    asset_rows: int = 0  # deleted
    assets_kept: int = 0  # still used by another student's lesson
    files: int = 0  # objects deleted from the asset store
    files_left: int = 0  # the store refused: queued for the next run

    def summary(self) -> str:
        left = f" ({self.files_left} left for the next run)" if self.files_left else ""
        return (
            f"purged {self.users} users: {self.lessons} lessons erased, "
            f"{self.vault_rows} personal rows, {self.cache_rows} cache entries and "
            f"{self.asset_rows} asset rows deleted ({self.assets_kept} kept, used by other "
            f"lessons), {self.files} asset files deleted{left}"
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


def lesson_assets(
    events: Sequence[StoredEvent], lesson_id: str, voice_id: str, into: ErasedAssets
) -> set[str]:
    """Add the assets a lesson's events name to `into` (no I/O); returns the keys of its
    make-me videos, whose slides' clips are only named inside the video's own object.

    The log records a diagram's, simulation's and make-me output's URL in the
    interaction's response, a beat's clip in `beat.completed` or `audio.ready`, and an ask
    answer's clip in its response (`audio_url`; before that was recorded, the clip is
    found from the narration text, sha256(text + voice_id), contracts §5, under the current
    voice). Make-me keys are also recomputed (sha256(lesson_id + output)): an
    output stored by a request whose interaction was never appended is found all the same.
    """
    videos: set[str] = set()
    for output in MAKEME_OUTPUTS:
        into.add(content_hash(lesson_id, output), output)
    videos.add(into.keys[content_hash(lesson_id, "video")])
    for stored in events:
        event = stored.domain()
        if isinstance(event, BeatCompleted):
            into.add_url(event.audio_url)
            if event.narration_text != ERASED_TEXT:
                into.add_clip(event.narration_text, voice_id)
        elif isinstance(event, AudioReady):
            into.add_url(event.audio_url)
        elif isinstance(event, InteractionRecorded):
            response: Mapping[str, object] = event.response or {}
            if event.type == "ask" and response.get("narration_text") != ERASED_TEXT:
                # By the URL the ask recorded (any voice), and under the current voice for
                # answers recorded before asks logged their clip's URL.
                into.add_spoken(response.get("audio_url"), response.get("narration_text"))
                into.add_clip(response.get("narration_text"), voice_id)
            key = into.add_url(response.get("url"))
            if key is not None and event.type == "makeme" and response.get("output") == "video":
                videos.add(key)
            clips = response.get("clips")  # a video's slides' clips
            for clip in clips if isinstance(clips, list) else []:
                into.add_url(clip)
    return videos


async def video_clips(
    objects: AssetStore, videos: set[str], voice_id: str, into: ErasedAssets
) -> None:
    """Add the narration clips of these make-me videos' slides (read from the store)."""
    for key in sorted(videos):
        try:
            if not await objects.exists(key):
                continue
            video = orjson.loads(await objects.get(key))
        except (AssetStoreError, OSError, orjson.JSONDecodeError):
            continue  # unreadable: its clips are found by URL from other lessons or not at all
        slides = video.get("slides") if isinstance(video, dict) else None
        for slide in slides if isinstance(slides, list) else []:
            if isinstance(slide, dict) and slide.get("audio_url"):
                into.add_url(slide["audio_url"])
                into.add_clip(slide.get("narration"), voice_id)


@dataclass(frozen=True)
class UserPurged:
    lessons: int
    vault_rows: int
    cache_rows: int
    asset_rows: int
    assets_kept: int


async def purge_user(
    pool: Pool,
    store: EventStore,
    objects: AssetStore,
    user_id: str,
    models: set[str],
    voice_id: str,
) -> UserPurged:
    """Erase one deleted user (its asset objects are queued; `purge` deletes them)."""
    lessons = await owned_lessons(pool, user_id)
    keys: set[str] = set()
    assets = ErasedAssets()
    videos: set[str] = set()
    meta = EventMeta(user_id=user_id)
    for lesson_id in lessons:
        events = [e async for e in store.read_lesson(lesson_id)]
        # While the lesson can still be read: cache keys and assets come from its words.
        keys |= cache_keys(events, lesson_id, models)
        videos |= lesson_assets(events, lesson_id, voice_id, assets)
        await append_to_lesson(store, lesson_id, decide_erase(events), meta, events)
    await video_clips(objects, videos, voice_id, assets)
    gone = await forget_user(pool, user_id, lessons, sorted(keys), assets)
    return UserPurged(
        len(lessons), gone.vault_rows, gone.cache_rows, gone.assets.rows, gone.assets.kept
    )


async def purge(
    pool: Pool,
    store: EventStore,
    settings: Settings,
    older_than_days: int,
    on_user: Callable[[int, int], None] | None = None,
    objects: AssetStore | None = None,
) -> PurgeReport:
    """Erase every user deleted at least `older_than_days` ago; `on_user(done, total)`.

    Objects go after the rows that name them are committed away, so a reader never finds
    a row naming a missing object. A run that stopped between the two left their keys
    queued; this run deletes those first.
    """
    assets = Assets(pool, objects or open_asset_store(settings))
    deleted = await assets.delete_queued()
    files, left = deleted.deleted, deleted.left
    users = await users_to_purge(pool, older_than_days)
    models = candidate_models(settings)
    lessons = vault = cache = rows = kept = 0
    for done, user_id in enumerate(users, start=1):
        purged = await purge_user(pool, store, assets.store, user_id, models, settings.tts_voice_id)
        deleted = await assets.delete_queued()
        lessons += purged.lessons
        vault += purged.vault_rows
        cache += purged.cache_rows
        rows += purged.asset_rows
        kept += purged.assets_kept
        files += deleted.deleted
        left = deleted.left  # what is still queued after this user (all users so far)
        if on_user is not None:
            on_user(done, len(users))
    return PurgeReport(len(users), lessons, vault, cache, rows, kept, files, left)
