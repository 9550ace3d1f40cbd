"""Generating beats 2..N: one worker per lesson, owned through a lease in Postgres.

* **Ownership.** A lesson whose stream was opened has a row in `lesson_generation`
  (schema v12). Every process runs a `Supervisor` that claims free or lapsed leases
  (`FOR UPDATE SKIP LOCKED`), runs one `LessonWorker` per claimed lesson, and renews all its
  leases in one statement every `lease_renew_s`. A lease it fails to renew (lapsed, taken
  over, or the lesson abandoned) stops that worker at once. When a process dies its leases
  lapse after `lease_ttl_s` and another process's supervisor takes the lessons over.
* **Resuming.** A worker folds the lesson's log and starts at the first beat without
  `beat.completed`. A beat that was begun and not finished restarts with a `beat.partial`
  marked `reset` (readers drop what they had of it).
* **Safety.** Every append names the seq it expects to follow and every decision is made
  by the pure functions of commands/lessons.py on the state it follows, so two workers that
  both believe they own a lesson cannot both complete a beat: the loser's append conflicts,
  it re-reads the log, and the decision it makes on the fresh state refuses (Superseded).
* **Streaming.** Token deltas are buffered and appended as one `beat.partial` per
  `partial_interval_s` (500 ms by default); the last piece goes in the same batch as
  `beat.completed`, and the lesson's `lesson.completed` joins the last beat's batch.
* **Model trouble.** A rate limit waits `retry_after_ms` and tries again; an outage of the
  streaming tier falls back to the fast tier (contracts §11). When every attempt failed the
  beat gets `beat.failed` and an `error` event (recoverable): generation stops until the
  stream is opened again, which re-arms the lease. Every call becomes `model_run.recorded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from commands import lesson_log, moderation, providers
from commands.errors import CommandError, ErrorCode
from commands.lesson_model import (
    NEW,
    LessonState,
    RevisionSuperseded,
    Superseded,
    decide_complete_beat,
    decide_complete_lesson,
    decide_fail_beat,
    decide_lock,
    decide_partial,
    decide_start_beat,
    fold,
    run_event,
)
from commands.narration import Narrator, narrated
from commands.plan import (
    BEAT_CACHE_DAYS,
    beat_cache_key,
    beat_from_cache,
    beat_to_cache,
    cache_get,
    cache_put,
    plan_request,
)
from commands.providers import Provider, Tier
from commands.providers.prices import contract_model_name
from eventstore.batching import Batcher
from eventstore.database import Pool, autocommit
from eventstore.errors import StoreError, translate_errors
from eventstore.events import ABANDONED, COMPLETE, DRAFT, CacheHit, DomainEvent
from eventstore.ids import new_id, new_trace_id
from eventstore.queries import load_queries
from eventstore.store import EventMeta, EventStore

_Q = load_queries(Path(__file__).parent / "sql" / "lessons.sql")
log = structlog.get_logger(__name__)

# Runs once, in the worker that completed the lesson, before its lease is released.
CompletionHook = Callable[[LessonState], Awaitable[None]]
MAX_RATE_LIMIT_WAITS = 5

MAX_RETRY_AFTER_S = 30.0


@dataclass(frozen=True)
class GenerationConfig:
    """Built from Settings by commands/bootstrap.py (the defaults are written there once)."""

    partial_interval_s: float
    lease_ttl_s: float
    lease_renew_s: float
    poll_s: float
    max_lessons: int
    # Contract model names per tier, as recorded in beat.started and the beat cache key.
    models: dict[Tier, str] = field(default_factory=dict)
    # Tiers tried in turn for one beat: the streaming tier, then the fast tier as the
    # fallback for an outage (contracts §11), twice.
    tiers: tuple[Tier, ...] = (Tier.STREAMING, Tier.FAST, Tier.FAST)

    def model(self, tier: Tier) -> str:
        return self.models.get(tier, "offline")


def tier_models(provider_kind: str, model_ids: dict[Tier, str]) -> dict[Tier, str]:
    if provider_kind == "offline":
        return dict.fromkeys(Tier, "offline")
    return {tier: contract_model_name(model_id) for tier, model_id in model_ids.items()}


def _now() -> datetime:
    return datetime.now(UTC)


# ---- leases --------------------------------------------------------------------------------


class Leases:
    """The `lesson_generation` table: one owner per lesson at a time."""

    def __init__(self, pool: Pool, owner: str, ttl_s: float) -> None:
        self.pool = pool
        self.owner = owner
        self.ttl_s = ttl_s
        # Every stream opened asks; the requests arriving together share one statement.
        self._requests: Batcher[str, bool] = Batcher(
            self._request_all, concurrency=1, name="lease-request"
        )

    async def _rows(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with translate_errors():
            async with autocommit(self.pool) as conn:  # each lease query is one statement
                cur = await conn.execute(query, params)
                return await cur.fetchall() if cur.description else []

    async def request(self, lesson_id: str) -> bool:
        """Ask for the lesson to be generated (idempotent; re-arms a failed one); whether a
        supervisor could claim it now."""
        return await self._requests.get(lesson_id)

    async def _request_all(self, lesson_ids: Sequence[str]) -> dict[str, bool]:
        rows = await self._rows(_Q["lease_request"], {"lesson_ids": sorted(lesson_ids)})
        claimable = {r[0] for r in rows}
        return {lesson_id: lesson_id in claimable for lesson_id in lesson_ids}

    async def aclose(self) -> None:
        await self._requests.aclose()

    async def claim(self, limit: int, lesson_id: str | None = None) -> list[str]:
        rows = await self._rows(
            _Q["lease_claim"],
            {"owner": self.owner, "ttl_s": self.ttl_s, "limit": limit, "lesson_id": lesson_id},
        )
        return [r[0] for r in rows]

    async def renew(self, lesson_ids: Sequence[str]) -> set[str]:
        if not lesson_ids:
            return set()
        rows = await self._rows(
            _Q["lease_renew"],
            {"owner": self.owner, "ttl_s": self.ttl_s, "lesson_ids": list(lesson_ids)},
        )
        return {r[0] for r in rows}

    async def finish(self, lesson_id: str, state: str) -> None:
        await self._rows(
            _Q["lease_finish"], {"lesson_id": lesson_id, "owner": self.owner, "state": state}
        )

    async def abandon(self, lesson_id: str) -> None:
        await self._rows(_Q["lease_abandon"], {"lesson_id": lesson_id})


# ---- one lesson ----------------------------------------------------------------------------


class LessonWorker:
    """Generates one lesson's remaining beats; returns the lease's final state."""

    def __init__(
        self,
        lesson_id: str,
        store: EventStore,
        pool: Pool,
        provider: Provider,
        config: GenerationConfig,
        narrator: Narrator | None = None,
        on_complete: CompletionHook | None = None,
    ) -> None:
        self.lesson_id = lesson_id
        self.on_complete = on_complete
        self.store = store
        self.pool = pool
        self.provider = provider
        self.config = config
        self.narrator = narrator
        self.trace_id = new_trace_id()
        self.meta = EventMeta(trace_id=self.trace_id)
        self.state = LessonState(lesson_id=lesson_id)

    async def refresh(self) -> None:
        events = [e async for e in self.store.read_lesson(self.lesson_id, self.state.version)]
        self.state = fold(events, self.state)
        if self.state.user_id and self.meta.user_id is None:
            self.meta = EventMeta(
                trace_id=self.trace_id,
                user_id=self.state.user_id,
                session_id=self.state.session_id,
            )

    async def commit(self, decide: Callable[[LessonState], list[DomainEvent]]) -> None:
        """Decide on the current state and append (the shared loop: on a conflict it folds
        what it missed and decides again, which is how a revision or an abandon is noticed)."""
        _, self.state = await lesson_log.commit(
            self.store,
            self.state,
            decide,
            self.meta,
            on_conflict=Superseded("the lesson kept changing under this worker"),
        )

    async def run(self) -> str:
        await self.refresh()
        structlog.contextvars.bind_contextvars(lesson_id=self.lesson_id, trace_id=self.trace_id)
        if self.state.status == NEW:
            return "done"  # nothing to generate: no such lesson
        if self.state.status == DRAFT:
            await self.commit(decide_lock)
        was_complete = self.state.status == COMPLETE
        while True:
            if self.state.status == COMPLETE:
                if not was_complete and self.on_complete is not None:
                    await self.on_complete(self.state)  # e.g. the intent's pre-ordered outputs
                return "done"
            if self.state.status == ABANDONED:
                return "abandoned"
            beat = self.state.next_beat()
            if beat is None:
                if self.narrator is not None:
                    await self.narrator.settle(self.lesson_id)  # audio_ready before the end
                await self.commit(lambda s: decide_complete_lesson(s, _now()))
                continue
            try:
                if not await self.generate(beat.ord):
                    return "failed"
            except RevisionSuperseded:
                # A plan revision replaced this beat: its append no longer fitted the log.
                # Read what it missed (the new plan) and go on under it.
                log.info("plan revised mid-beat; continuing", ord=beat.ord)
                await self.refresh()
                continue

    async def generate(self, ord: int) -> bool:
        """Generate beat `ord` to completion; False when every attempt failed."""
        state = self.state
        if state.plan is None:
            raise Superseded("the lesson has no plan to generate from")
        revision = state.revision_num
        stream_model = self.config.model(Tier.STREAMING)
        key = beat_cache_key(state.plan, ord, state.level, stream_model)
        beat_id = state.beat(ord).beat_id or new_id()
        structlog.contextvars.bind_contextvars(beat_id=beat_id)  # this worker task's lines
        cached = await cache_get(self.pool, key)
        if cached is not None:
            await self.commit(lambda s: decide_start_beat(s, ord, beat_id, cached[0], revision))
            attempt = self.state.beat(ord).attempt
            content = beat_from_cache(cached[1])
            hit = CacheHit(key_kind="beat", model=cached[0])
            await self.complete(
                ord,
                content,
                lambda s: decide_complete_beat(s, ord, attempt, content, prefix=[hit], now=_now()),
            )
            return True
        plan = state.plan_object()
        request = plan_request(state.subject, state.topic, state.level, state.intent)
        # Derivations need hard reasoning: the deep tier first, then the usual fallbacks.
        deep = [Tier.DEEP] if state.beat(ord).kind == "derivation" else []
        tiers = [*deep, *self.config.tiers]
        rate_limit_waits = 0
        failure: providers.ProviderError | None = None
        while tiers:
            tier = tiers[0]
            model = self.config.model(tier)
            await self.commit(
                partial(decide_start_beat, ord=ord, beat_id=beat_id, model=model, revision=revision)
            )
            attempt = self.state.beat(ord).attempt
            partials = Coalescer(self, ord, attempt, self.config.partial_interval_s)
            try:
                result = await self.provider.beat(plan, ord, request, partials.add, tier=tier)
            except providers.RateLimited as e:
                failure = e
                await self.record(e.runs, ord)
                rate_limit_waits += 1
                if rate_limit_waits > MAX_RATE_LIMIT_WAITS:
                    break
                await asyncio.sleep(min(e.retry_after_ms / 1000, MAX_RETRY_AFTER_S))
                continue
            except providers.ModelUnavailable as e:
                failure = e
                await self.record(e.runs, ord)
                log.warning("model unavailable; falling back", tier=tier, ord=ord, error=str(e))
                tiers.pop(0)
                continue
            except providers.ProviderError as e:  # invalid output twice, or refused
                failure = e
                await self.record(e.runs, ord)
                break
            runs = [run_event(r, self.trace_id, beat_ord=ord) for r in result.runs]
            try:
                await self.screen_output(result.value)
            except CommandError as e:
                # The beat cost money whatever the verdict: record its runs, then fail it.
                await self.record(result.runs, ord)
                await self.fail(ord, None, refusal=e)
                return False
            await self.complete(
                ord,
                result.value,
                partial(
                    decide_complete_beat,
                    ord=ord,
                    attempt=attempt,
                    content=result.value,
                    final_delta=partials.pending,
                    prefix=runs,
                    now=_now(),
                ),
            )
            await cache_put(self.pool, key, model, beat_to_cache(result.value), BEAT_CACHE_DAYS)
            return True
        await self.fail(ord, failure)
        return False

    async def complete(
        self,
        ord: int,
        content: providers.BeatContent,
        decide: Callable[[LessonState], list[DomainEvent]],
    ) -> None:
        """Append a beat's completion, then hand its narration to the narrator (the hook of
        commands/narration.py: a clip already stored rides in beat.completed)."""
        narrator = self.narrator if self.narrator is not None and self.narrator.enabled else None
        if narrator is None:
            await self.commit(decide)
            return
        audio_url = await narrator.cached(content.narration_text)
        await self.commit(lambda s: narrated(decide(s), audio_url, hold_completion=True))
        if audio_url is None:
            narrator.beat_completed(self.lesson_id, ord, content.narration_text, self.meta)

    async def screen_output(self, content: providers.BeatContent) -> None:
        """Output moderation (contracts §10): a generated beat is scanned before it is kept."""
        body = str(content.content_json.get("body", ""))
        await moderation.screen(
            self.provider,
            {"beat": f"{content.narration_text}\n{body}"},
            "output",
            store=self.store,
            meta=self.meta,
            lesson_id=self.lesson_id,
        )

    async def record(self, runs: Sequence[providers.ModelRun], ord: int) -> None:
        events = [run_event(r, self.trace_id, beat_ord=ord) for r in runs]
        if events:
            await self.commit(lambda s: list(events))

    async def fail(
        self,
        ord: int,
        error: providers.ProviderError | None,
        refusal: CommandError | None = None,
    ) -> None:
        if refusal is None:
            outage = providers.ModelUnavailable("no tier answered")
            refusal = providers.as_command_error(error or outage)
        code, message, retry = stream_error(refusal)
        attempt = self.state.beat(ord).attempt
        await self.commit(
            lambda s: decide_fail_beat(
                s,
                ord,
                attempt,
                code=code,
                message=message,
                trace_id=self.trace_id,
                retry_after_ms=retry,
            )
        )


def stream_error(error: CommandError) -> tuple[str, str, int | None]:
    """(code, message, retry_after_ms) of the stream's recoverable `error` when generation
    gives up on a beat for now; reconnecting re-arms it."""
    match error.code:
        case ErrorCode.RATE_LIMITED:
            message = "Tutor is thinking too hard. Reconnect in a moment to continue."
            return str(error.code), message, error.retry_after_ms
        case ErrorCode.MODEL_UNAVAILABLE if error.retry_after_ms is not None:  # an outage
            message = "The tutor's model is unavailable right now. Reconnect soon to continue."
            return str(error.code), message, 5000
        case ErrorCode.MODEL_UNAVAILABLE | ErrorCode.INTERNAL:  # unusable or refused output
            message = "The tutor could not write this part of the lesson. Reconnect to try again."
            return str(ErrorCode.MODEL_UNAVAILABLE), message, None
        case _:  # moderation refused the beat
            return str(error.code), error.message, error.retry_after_ms


class Coalescer:
    """Buffers a beat's token deltas into one beat.partial per interval."""

    def __init__(self, worker: LessonWorker, ord: int, attempt: int, interval_s: float) -> None:
        self.worker = worker
        self.ord = ord
        self.attempt = attempt
        self.interval_s = interval_s
        self.pending = ""
        self._last = time.monotonic()

    async def add(self, delta: str) -> None:
        self.pending += delta
        now = time.monotonic()
        if now - self._last >= self.interval_s and self.pending:
            text, self.pending = self.pending, ""
            self._last = now
            await self.worker.commit(lambda s: decide_partial(s, self.ord, self.attempt, text))


# ---- every process -------------------------------------------------------------------------


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}"


class Supervisor:
    """Claims lessons to generate, runs their workers, keeps their leases alive."""

    def __init__(
        self,
        pool: Pool,
        store: EventStore,
        provider: Provider,
        config: GenerationConfig,
        owner: str | None = None,
        narrator: Narrator | None = None,
        on_complete: CompletionHook | None = None,
    ) -> None:
        self.on_complete = on_complete
        self.store = store
        self.pool = pool
        self.provider = provider
        self.config = config
        self.narrator = narrator
        self.leases = Leases(pool, owner or worker_id(), config.lease_ttl_s)
        self.workers: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._requests: set[asyncio.Task[None]] = set()  # request_soon's, in flight

    @property
    def owner(self) -> str:
        return self.leases.owner

    def wake(self) -> None:
        self._wake.set()

    async def request(self, lesson_id: str) -> None:
        """Generation is wanted for this lesson: record it, and look for work at once if
        there is any to claim (a stream reopened on a lesson being generated adds none)."""
        if await self.leases.request(lesson_id):
            self.wake()

    def request_soon(self, lesson_id: str) -> None:
        """`request`, without waiting for it: for a caller whose answer does not depend on
        it (a stream reopened on a locked lesson; a failure is logged, and the supervisor's
        poll picks up lapsed leases anyway)."""
        task = asyncio.create_task(self._request_logged(lesson_id), name="lease-request")
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _request_logged(self, lesson_id: str) -> None:
        try:
            await self.request(lesson_id)
        except StoreError as e:
            log.warning("generation request failed", lesson_id=lesson_id, error=str(e))

    async def stop_lesson(self, lesson_id: str) -> None:
        """Stop this process's worker for the lesson (abandoned); waits until it stopped."""
        task = self.workers.get(lesson_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + self.config.lease_renew_s
        while True:
            timeout = max(0.0, min(self.config.poll_s, renew_at - loop.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if loop.time() >= renew_at:
                    renew_at = loop.time() + self.config.lease_renew_s
                    await self._renew()
                await self._claim()
            except StoreError as e:
                log.warning("supervisor pass failed", error=str(e))

    async def _renew(self) -> None:
        held = list(self.workers)
        kept = await self.leases.renew(held)
        for lesson_id in held:
            if lesson_id not in kept and lesson_id in self.workers:
                log.info("generation lease lost; stopping", lesson_id=lesson_id)
                self.workers[lesson_id].cancel()

    async def _claim(self) -> None:
        free = self.config.max_lessons - len(self.workers)
        if free <= 0 or self._closing:
            return
        for lesson_id in await self.leases.claim(free):
            self.workers[lesson_id] = asyncio.create_task(
                self._work(lesson_id), name=f"generate-{lesson_id}"
            )

    async def _work(self, lesson_id: str) -> None:
        worker = LessonWorker(
            lesson_id,
            self.store,
            self.pool,
            self.provider,
            self.config,
            self.narrator,
            self.on_complete,
        )
        outcome: str | None = None
        try:
            outcome = await worker.run()
        except asyncio.CancelledError:
            # Stopped: abandoned, lease lost, or shutting down. On shutdown hand the lesson
            # over at once instead of letting the lease lapse.
            if self._closing:
                outcome = "pending"
            raise
        except Superseded:
            with contextlib.suppress(StoreError):
                await worker.refresh()
            status = worker.state.status
            outcome = {COMPLETE: "done", ABANDONED: "abandoned"}.get(status)
            log.info("generation superseded", lesson_id=lesson_id, status=status)
        except StoreError as e:
            log.warning("generation interrupted by the database", error=str(e))
            outcome = "pending"
        except Exception:
            log.exception("generation failed", lesson_id=lesson_id)
            outcome = "failed"
        finally:
            self.workers.pop(lesson_id, None)
            if outcome is not None:
                with contextlib.suppress(StoreError):
                    await asyncio.shield(self.leases.finish(lesson_id, outcome))
            self.wake()

    async def aclose(self) -> None:
        """Stop every worker and hand their lessons back (another process takes them)."""
        self._closing = True
        tasks = [*self.workers.values(), *self._requests]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.leases.aclose()
