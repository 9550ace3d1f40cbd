"""Moderation (contracts §10): student input and model output pass a safety classifier.

`screen()` asks the provider's classifier about each non-blank text (concurrently; one
call per field, so a refusal names the field), records every classifier call as a
`model_run.recorded` event (purpose "moderation"), and on a refusal appends
`safety.refused {stage, category, field}` and raises Refused (`refused`, reason "safety").
The caller makes its main-model call only after `screen()` returned, so a refusal never
costs one.

It fails closed: when the classifier itself cannot answer, the request fails with
`model_unavailable` (or `rate_limited`), never passes unscreened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from commands.errors import ModelUnavailable, RateLimited, Refused
from commands.lesson_model import run_event
from commands.providers import ModelRun, Provider, ProviderError, Verdict
from commands.providers import RateLimited as ProviderRateLimited
from eventstore.events import SafetyRefused
from eventstore.store import EventMeta, EventStore, NewEvent

STAGES = ("input", "output")
REFUSAL_MESSAGE = "I can't teach that one. Want to try something else?"


async def screen(
    provider: Provider,
    texts: Mapping[str, str],
    stage: str,
    *,
    store: EventStore,
    meta: EventMeta,
    lesson_id: str | None = None,
    passed: list[NewEvent] | None = None,
) -> None:
    """Pass every text through the classifier, or raise Refused (after recording why).

    With `passed`, the runs of texts that all pass are added to it instead of appended: the
    caller stores them in its own append (lesson_log.commit's `beside`), and appends them on
    their own if it never gets there. A refusal or a failure is appended here, as always.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    fields = [(name, text) for name, text in texts.items() if text and text.strip()]
    if not fields:
        return
    outcomes = await asyncio.gather(
        *(provider.moderate(text, stage) for _, text in fields), return_exceptions=True
    )
    runs: list[ModelRun] = []
    refusal: tuple[str, Verdict] | None = None
    failure: ProviderError | None = None
    for (name, _), outcome in zip(fields, outcomes, strict=True):
        if isinstance(outcome, ProviderError):
            runs.extend(outcome.runs)
            failure = failure or outcome
        elif isinstance(outcome, BaseException):
            raise outcome  # a bug, not a classifier verdict: let it surface as internal
        else:
            runs.extend(outcome.runs)
            if not outcome.value.allowed and refusal is None:
                refusal = (name, outcome.value)
    trace_id = meta.trace_id or ""
    events = [NewEvent.of(run_event(run, trace_id), meta) for run in runs]
    if refusal is not None:
        name, verdict = refusal
        category = verdict.category or "explicit_harm"
        events.append(NewEvent.of(SafetyRefused(stage, category, name), meta))
    if refusal is None and failure is None and passed is not None:
        passed.extend(events)
        return
    await store.append_unordered(events, lesson_id=lesson_id)
    if refusal is not None:
        raise Refused(REFUSAL_MESSAGE, details={"reason": "safety", "field": refusal[0]})
    if isinstance(failure, ProviderRateLimited):
        raise RateLimited(
            "Tutor is thinking too hard. Try again in a sec.",
            retry_after_ms=failure.retry_after_ms,
        )
    if failure is not None:
        raise ModelUnavailable(
            "The safety check is unavailable right now. Try again soon.", retry_after_ms=2000
        )
