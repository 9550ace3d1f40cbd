"""Narration: every beat's narration_text (and an ask's answer, and make-me slides) as audio.

* **Cache (contracts §5).** A clip's key is ``sha256(narration_text + voice_id)``, kept
  forever as ``assets.content_hash``: a narration already stored calls nothing, whichever
  lesson asks. Within a process, concurrent requests for one key share one synthesis.
* **Cost.** Each synthesis is a ``model_run.recorded`` (model ``elevenlabs``, purpose
  ``tts``, characters in ``prompt_tokens``, cost from the price table), so it counts
  toward the daily spend cap.
* **Beats.** Narration runs after ``beat.completed``, off the beat's critical path: the
  generation worker hands each completed beat to :meth:`Narrator.beat_completed`, which
  synthesises in a background task and appends ``audio.ready`` (the stream's
  ``audio_ready``). When the clip is already stored, the worker puts its URL in
  ``beat.completed`` instead (:func:`narrated`). The worker waits for the lesson's
  clips (:meth:`Narrator.settle`) before ``lesson.completed``, so every ``audio_ready``
  reaches the stream before ``lesson_complete`` closes it.
* **Failure.** A failed synthesis never fails the lesson: the beat keeps ``audio_url``
  null and the log gets a recoverable ``error`` with ``source="narration"``, which the
  stream shows without ending.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import structlog

from commands.assets import Asset, Assets, content_hash
from commands.providers.prices import TTS_MODEL
from commands.tts import AUDIO_MIME, ElevenLabsTTS, SpeechFailed, open_tts
from eventstore.errors import StoreError
from eventstore.events import (
    AudioReady,
    BeatCompleted,
    DomainEvent,
    ErrorRaised,
    LessonCompleted,
    ModelRunRecorded,
)
from eventstore.ids import new_id
from eventstore.settings import Settings
from eventstore.store import EventMeta, EventStore, NewEvent

log = structlog.get_logger(__name__)

NARRATION_FAILED = "Narration for part {ord} is unavailable; the lesson goes on without audio."


@dataclass(frozen=True)
class Clip:
    """The outcome of one narration request: a URL or none, and the run to record."""

    url: str | None
    run: ModelRunRecorded | None  # None when the clip came from the cache
    error: str | None = None


class Narrator:
    """Narration for one process: the TTS client, the assets table, the lesson log."""

    def __init__(
        self,
        assets: Assets,
        tts: ElevenLabsTTS | None,
        store: EventStore,
        voice_id: str,
        first_clip_wait_s: float = 0.0,
    ) -> None:
        self.assets = assets
        self.first_clip_wait_s = first_clip_wait_s  # how long a plan answer waits for beat 1
        self.tts = tts
        self.store = store
        self.voice_id = voice_id
        self._inflight: dict[str, asyncio.Future[Clip]] = {}
        self._tasks: dict[str, set[asyncio.Task[None]]] = {}

    @property
    def enabled(self) -> bool:
        return self.tts is not None

    def key(self, text: str) -> str:
        return content_hash(text, self.voice_id)

    async def cached(self, text: str) -> str | None:
        """The stored clip's URL for `text`, or None (not made yet, or narration is off)."""
        if not self.enabled or not text.strip():
            return None
        asset = await self.assets.find(self.key(text))
        return asset.url if asset else None

    async def clip(self, text: str, trace_id: str, beat_ord: int | None = None) -> Clip:
        """The clip for `text`: from the store, or synthesised once (shared by concurrent
        callers in this process); never raises for a TTS failure."""
        if self.tts is None or not text.strip():
            return Clip(None, None)
        key = self.key(text)
        pending = self._inflight.get(key)
        if pending is not None:
            shared = await asyncio.shield(pending)
            return Clip(shared.url, None, shared.error)
        future: asyncio.Future[Clip] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._make(key, text, trace_id, beat_ord)
            future.set_result(result)
            return result
        except asyncio.CancelledError:
            future.cancel()  # sharers see the cancellation, not a result
            raise
        except Exception as e:
            future.set_exception(e)
            future.exception()  # retrieved here, so a future nobody awaited does not warn
            raise
        finally:
            del self._inflight[key]

    async def _make(self, key: str, text: str, trace_id: str, beat_ord: int | None) -> Clip:
        assert self.tts is not None
        asset = await self.assets.find(key)
        if asset is not None:
            return Clip(asset.url, None)
        try:
            speech = await self.tts.synthesize(text, self.voice_id)
        except SpeechFailed as e:
            log.warning("narration failed", error=str(e), beat_ord=beat_ord)
            run = _run(
                trace_id, len(text), Decimal(0), e.latency_ms, e.status, beat_ord, "tts_failed"
            )
            return Clip(None, run, str(e))
        run = _run(trace_id, speech.characters, speech.cost_usd, speech.latency_ms, "ok", beat_ord)
        stored: Asset = await self.assets.put(key, "audio", speech.audio, AUDIO_MIME)
        return Clip(stored.url, run)

    # ---- for a use case that needs a URL now (ask, make-me) ----------------------------

    async def narrate(
        self,
        text: str,
        meta: EventMeta,
        *,
        lesson_id: str | None = None,
        beat_ord: int | None = None,
    ) -> str | None:
        """`text` as a clip's URL, or None (narration off or failed); records its run.

        The run goes into the lesson's log when a lesson is named, else session-level.
        """
        result = await self.clip(text, meta.trace_id or "", beat_ord)
        if result.run is not None:
            event = NewEvent.of(result.run, meta)
            if lesson_id is None:
                await self.store.append_unordered([event])
            else:
                await self.store.append_at_end(lesson_id, [event])
        return result.url

    # ---- beats, in the background -------------------------------------------------------

    def beat_completed(
        self, lesson_id: str, ord: int, text: str, meta: EventMeta
    ) -> asyncio.Task[None] | None:
        """Narrate a completed beat in the background; `audio.ready` follows when stored."""
        if not self.enabled or not text.strip():
            return None
        task = asyncio.create_task(
            self._narrate_beat(lesson_id, ord, text, meta), name=f"narrate-{lesson_id}-{ord}"
        )
        tasks = self._tasks.setdefault(lesson_id, set())
        tasks.add(task)

        def forget(t: asyncio.Task[None]) -> None:
            tasks.discard(t)
            if not tasks:
                self._tasks.pop(lesson_id, None)

        task.add_done_callback(forget)
        return task

    async def beat_already_completed(
        self, lesson_id: str, ord: int, text: str, meta: EventMeta, wait_s: float = 0.0
    ) -> str | None:
        """For a beat whose `beat.completed` is already stored (beat 1, for the plan answer):
        narrate it in the background (`audio.ready` follows in the log, at once when the clip
        is cached) and wait up to `wait_s` for its URL; None when it is not ready by then."""
        task = self.beat_completed(lesson_id, ord, text, meta)
        if task is not None and wait_s > 0:
            await asyncio.wait({task}, timeout=wait_s)
        return await self.cached(text)

    async def _narrate_beat(self, lesson_id: str, ord: int, text: str, meta: EventMeta) -> None:
        try:
            result = await self.clip(text, meta.trace_id or "", ord)
            events: list[DomainEvent] = [result.run] if result.run else []
            if result.url is not None:
                events.append(AudioReady(beat_ord=ord, audio_url=result.url))
            else:
                events.append(
                    ErrorRaised(
                        code="model_unavailable",
                        message=NARRATION_FAILED.format(ord=ord),
                        recoverable=True,
                        trace_id=meta.trace_id or "",
                        source="narration",
                    )
                )
            await self.store.append_at_end(lesson_id, [NewEvent.of(e, meta) for e in events])
        except StoreError as e:
            log.warning("narration not recorded", lesson_id=lesson_id, ord=ord, error=str(e))
        except Exception:
            # A narration bug must not take the lesson down with it; the clip is skipped.
            log.exception("narration crashed", lesson_id=lesson_id, ord=ord)

    async def settle(self, lesson_id: str) -> None:
        """Wait until this lesson's clips are stored or have failed."""
        while tasks := set(self._tasks.get(lesson_id, ())):
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        tasks = [t for ts in self._tasks.values() for t in ts]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.tts is not None:
            await self.tts.aclose()


def narrated(
    events: Sequence[DomainEvent], audio_url: str | None, hold_completion: bool
) -> list[DomainEvent]:
    """A beat's completion batch with the stored clip's URL in `beat.completed`, and without
    `lesson.completed` while clips may still be coming (the worker completes the lesson
    after :meth:`Narrator.settle`)."""
    out: list[DomainEvent] = []
    for e in events:
        if isinstance(e, LessonCompleted) and hold_completion:
            continue
        if isinstance(e, BeatCompleted) and audio_url is not None:
            e = dataclasses.replace(e, audio_url=audio_url)
        out.append(e)
    return out


def _run(
    trace_id: str,
    characters: int,
    cost: Decimal,
    latency_ms: int,
    status: str,
    beat_ord: int | None,
    error_code: str | None = None,
) -> ModelRunRecorded:
    return ModelRunRecorded(
        run_id=new_id(),
        model=TTS_MODEL,
        purpose="tts",
        prompt_tokens=characters,
        completion_tokens=0,
        cost_usd=float(cost),
        latency_ms=latency_ms,
        status=status,
        trace_id=trace_id,
        error_code=error_code,
        beat_ord=beat_ord,
    )


def open_narrator(settings: Settings, assets: Assets, store: EventStore) -> Narrator:
    """Narration through ElevenLabs when ELEVENLABS_API_KEY is set; otherwise disabled."""
    return Narrator(
        assets, open_tts(settings), store, settings.tts_voice_id, settings.tts_plan_wait_s
    )
