"""One log line per model call, with §9's model, cost_usd and cache fields.

Every model call is already a `model_run.recorded` event and every cache hit a `cache.hit`
event, appended wherever the call happened (plan, beat generation, moderation, asks…). So
the log lines are written by one EventStore listener rather than at each call site: none
can be forgotten, and each line is exactly what the log recorded.

`cache` says how the answer was obtained: `hit` (served from the plan or beat cache, no
call), `miss` (a call for something the cache keeps: a plan or a beat), `bypass` (a call
for something never cached: moderation, an ask, hello). The listener runs in the task that
appended, so the request's or the generation worker's bound fields (trace_id, lesson_id,
beat_id, user) are on the line. Inside a request it also binds the model and the request's
running cost, so the request's summary line carries them too.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from eventstore.store import StoredEvent

log = structlog.get_logger("omnitutor.model")

CACHED_PURPOSES = frozenset({"plan", "beat"})


def cache_label(purpose: str) -> str:
    return "miss" if purpose in CACHED_PURPOSES else "bypass"


def log_model_calls(stored: Sequence[StoredEvent]) -> None:
    """EventStore listener: a line per model_run.recorded and per cache.hit appended."""
    for event in stored:
        p = event.payload
        if event.type == "model_run.recorded":
            fields = {
                "model": p["model"],
                "cost_usd": p["cost_usd"],
                "cache": cache_label(p["purpose"]),
                "lesson_id": event.lesson_id,
                "purpose": p["purpose"],
                "model_status": p["status"],
                "latency_ms": p["latency_ms"],
                "prompt_tokens": p["prompt_tokens"],
                "completion_tokens": p["completion_tokens"],
            }
            if p.get("beat_ord") is not None:
                fields["beat_ord"] = p["beat_ord"]
            if p["status"] == "ok":
                log.info("model call ok", **fields)
            else:
                log.warning("model call failed", error_code=p.get("error_code"), **fields)
            _add_to_request(p["model"], float(p["cost_usd"]))
        elif event.type == "cache.hit":
            log.info(
                "cache hit",
                model=p.get("model"),
                cost_usd=0.0,
                cache="hit",
                key_kind=p["key_kind"],
                lesson_id=event.lesson_id,
            )


def _add_to_request(model: str, cost_usd: float) -> None:
    """Inside a request (a path is bound): the model and the request's cost so far."""
    bound = structlog.contextvars.get_contextvars()
    if "path" not in bound:
        return  # a generation worker: its lines are per call, not per request
    total = float(bound.get("cost_usd") or 0.0) + cost_usd
    structlog.contextvars.bind_contextvars(model=model, cost_usd=round(total, 5))
