"""POST /v1/plan: validate the setup intent, plan the lesson with beat 1, open its log.

Validation is pure (`validate_plan_body`): every field of the contract's body is checked,
unknown fields are refused, and each failure is an InvalidInput naming the field with a
dotted path (`intent.advanced.tone`). Accepted values are normalised (trimmed, lower case,
aliases folded) so that the plan cache key is the same for the same intent however it was
typed. The allowed values are listed in docs/lessons.md.

The use case itself (guardrails, the plan cache of contracts §5, the fast-tier call on a
miss, one append of the lesson's opening) is `create_plan` in commands/handlers/lessons.py.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from commands.errors import InvalidInput
from commands.providers import BeatContent, Plan, PlanRequest
from eventstore.database import Pool
from eventstore.errors import translate_errors
from eventstore.events import JSON
from eventstore.queries import load_queries

_Q = load_queries(Path(__file__).parent / "sql" / "lessons.sql")

PLAN_CACHE_DAYS = 7
BEAT_CACHE_DAYS = 30
TOPIC_MAX = 200
FREE_TEXT_MAX = 2000
SUBJECT_RE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
SUBJECT_MAX = 40

WHY = ("homework", "exam", "curiosity", "work", "teaching", "refresher", "project")
STYLES = (
    "problem-driven",
    "conceptual",
    "visual",
    "story-driven",
    "exam-prep",
    "socratic",
    "hands-on",
    "balanced",
)
PACES = ("slow", "balanced", "fast")
TONES = ("friendly", "formal", "playful", "encouraging", "concise", "socratic")
OUTPUTS = ("flashcards", "notes", "slides", "video", "quiz", "summary", "mindmap")
ANCHORS = (
    "none",
    "everyday",
    "sports",
    "music",
    "games",
    "cooking",
    "nature",
    "history",
    "technology",
    "space",
    "art",
)
# intent.level → lessons.level_at_start (pop | hs | ug | grad). The contract's example maps
# "first time" to an undergraduate plan ("30 min · undergrad · …").
LEVELS: dict[str, str] = {
    "pop": "pop",
    "curious": "pop",
    "just curious": "pop",
    "no background": "pop",
    "hs": "hs",
    "high school": "hs",
    "beginner": "hs",
    "ug": "ug",
    "undergrad": "ug",
    "first time": "ug",
    "some background": "ug",
    "refresher": "ug",
    "grad": "grad",
    "graduate": "grad",
    "advanced": "grad",
    "expert": "grad",
}
LEVEL_LABELS = {"pop": "popular", "hs": "high school", "ug": "undergrad", "grad": "graduate"}
DEFAULT_LEVEL = "first time"
MIN_MINUTES, MAX_MINUTES = 5, 180
_TIME_RE = re.compile(r"(\d{1,3})\s*(min|mins|minutes|m|h|hr|hrs|hour|hours)?")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

BODY_FIELDS = frozenset({"subject", "topic", "intent"})
INTENT_FIELDS = frozenset({"why", "level", "time", "style", "free_text", "advanced"})
ADVANCED_FIELDS = frozenset({"pace", "tone", "outputs", "anchor"})


@dataclass(frozen=True)
class PlanInput:
    """A valid POST /v1/plan body, normalised."""

    subject: str
    topic: str
    intent: JSON  # only the fields given, normalised
    level: str  # pop | hs | ug | grad


def _words(value: str) -> str:
    return " ".join(value.split())


def _unknown(obj: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        prefix = f"{where}." if where else ""
        raise InvalidInput(f"{prefix}{extra[0]}", f"unknown field (allowed: {sorted(allowed)})")


def _string(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a string, got {_type(value)}")
    if _CONTROL.search(value):
        raise InvalidInput(field, "must not contain control characters")
    return value


def _choice(value: object, field: str, allowed: tuple[str, ...]) -> str:
    text = _words(_string(value, field)).lower()
    if text not in allowed:
        raise InvalidInput(field, f"must be one of {', '.join(allowed)}; got {value!r}")
    return text


def _type(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _minutes(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        minutes = value
    elif isinstance(value, str):
        m = _TIME_RE.fullmatch(_words(value).lower())
        if m is None:
            raise InvalidInput("intent.time", f"must look like '30 min' or '1 hour'; got {value!r}")
        minutes = int(m.group(1)) * (60 if (m.group(2) or "m").startswith("h") else 1)
    else:
        raise InvalidInput("intent.time", f"must be a string like '30 min', got {_type(value)}")
    if not MIN_MINUTES <= minutes <= MAX_MINUTES:
        raise InvalidInput(
            "intent.time", f"must be {MIN_MINUTES} to {MAX_MINUTES} minutes; got {minutes}"
        )
    return f"{minutes} min"


def _advanced(value: object) -> JSON:
    if not isinstance(value, dict):
        raise InvalidInput("intent.advanced", f"must be an object, got {_type(value)}")
    _unknown(value, ADVANCED_FIELDS, "intent.advanced")
    out: JSON = {}
    if "pace" in value:
        out["pace"] = _choice(value["pace"], "intent.advanced.pace", PACES)
    if "tone" in value:
        out["tone"] = _choice(value["tone"], "intent.advanced.tone", TONES)
    if "anchor" in value:
        out["anchor"] = _choice(value["anchor"], "intent.advanced.anchor", ANCHORS)
    if "outputs" in value:
        outputs = value["outputs"]
        if not isinstance(outputs, list):
            raise InvalidInput("intent.advanced.outputs", f"must be a list, got {_type(outputs)}")
        chosen: list[str] = []
        for i, item in enumerate(outputs):
            name = _choice(item, f"intent.advanced.outputs[{i}]", OUTPUTS)
            if name in chosen:
                raise InvalidInput(f"intent.advanced.outputs[{i}]", f"{name!r} is listed twice")
            chosen.append(name)
        out["outputs"] = chosen
    return out


def validate_plan_body(body: Mapping[str, Any]) -> PlanInput:
    """The contract's POST /v1/plan body, checked field by field (pure)."""
    _unknown(body, BODY_FIELDS, "")
    if "subject" not in body:
        raise InvalidInput("subject", "is required")
    subject = _string(body["subject"], "subject").strip()
    if len(subject) > SUBJECT_MAX or not SUBJECT_RE.fullmatch(subject):
        raise InvalidInput(
            "subject",
            "must be a subject code or a lower_snake name of letters and digits "
            f"(at most {SUBJECT_MAX} characters); got {body['subject']!r}",
        )
    if "topic" not in body:
        raise InvalidInput("topic", "is required")
    topic = _words(_string(body["topic"], "topic"))
    if not 1 <= len(topic) <= TOPIC_MAX:
        raise InvalidInput("topic", f"must be 1 to {TOPIC_MAX} characters; got {len(topic)}")
    raw = body.get("intent", {})
    if not isinstance(raw, dict):
        raise InvalidInput("intent", f"must be an object, got {_type(raw)}")
    _unknown(raw, INTENT_FIELDS, "intent")
    intent: JSON = {}
    if "why" in raw:
        intent["why"] = _choice(raw["why"], "intent.why", WHY)
    level_text = DEFAULT_LEVEL
    if "level" in raw:
        level_text = _choice(raw["level"], "intent.level", tuple(LEVELS))
        intent["level"] = level_text
    if "time" in raw:
        intent["time"] = _minutes(raw["time"])
    if "style" in raw:
        intent["style"] = _choice(raw["style"], "intent.style", STYLES)
    if "free_text" in raw:
        free_text = _string(raw["free_text"], "intent.free_text").strip()
        if len(free_text) > FREE_TEXT_MAX:
            raise InvalidInput(
                "intent.free_text",
                f"must be at most {FREE_TEXT_MAX} characters; got {len(free_text)}",
            )
        intent["free_text"] = free_text
    if "advanced" in raw:
        intent["advanced"] = _advanced(raw["advanced"])
    return PlanInput(subject=subject, topic=topic, intent=intent, level=LEVELS[level_text])


def plan_request(subject: str, topic: str, level: str, intent: JSON) -> PlanRequest:
    return PlanRequest(subject=subject, topic=topic, level=LEVEL_LABELS[level], intent=intent)


def _sha256(*parts: object) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


def plan_cache_key(data: PlanInput, model: str) -> str:
    """sha256(subject + topic + intent signature) (contracts §5), per fast-tier model.

    The intent signature is the normalised intent as canonical JSON; the topic is compared
    without case. The model is part of the key so that one model's plans are never served
    as another's.
    """
    return _sha256("plan", model, data.subject, data.topic.casefold(), data.intent)


def beat_cache_key(plan: JSON, ord: int, level: str, model: str) -> str:
    """sha256(plan id + ord + level) (contracts §5): the plan is identified by its content."""
    return _sha256("beat", model, plan, ord, level)


# ---- the cache table ---------------------------------------------------------------------


async def cache_get(pool: Pool, key: str) -> tuple[str, JSON] | None:
    with translate_errors():
        async with pool.connection() as conn:
            row = await (await conn.execute(_Q["cache_get"], {"key": key})).fetchone()
    return (row[0], row[1]) if row else None


async def cache_put(pool: Pool, key: str, model: str, payload: JSON, days: int) -> None:
    params = {"key": key, "model": model, "payload": orjson.dumps(payload).decode(), "days": days}
    with translate_errors():
        async with pool.connection() as conn:
            await conn.execute(_Q["cache_put"], params)


def beat_to_cache(beat: BeatContent) -> JSON:
    return {"content_json": beat.content_json, "narration_text": beat.narration_text}


def beat_from_cache(payload: Mapping[str, Any]) -> BeatContent:
    return BeatContent(
        content_json=payload["content_json"], narration_text=payload["narration_text"]
    )


# ---- the catalog ---------------------------------------------------------------------------


async def catalog_ids(pool: Pool, subject: str, topic: str) -> tuple[str | None, str | None]:
    """The canonical subject's id and, if the topic is a canonical one of it, the topic's."""
    with translate_errors():
        async with pool.connection() as conn:
            row = await (await conn.execute(_Q["subject_id"], {"code": subject})).fetchone()
            if row is None:
                return None, None
            params = {"subject_id": row[0], "name": topic}
            topic_row = await (await conn.execute(_Q["canonical_topic_id"], params)).fetchone()
    return row[0], topic_row[0] if topic_row else None


def output_texts(plan: Plan, beat1: BeatContent) -> dict[str, str]:
    """What the model wrote that a student will read, by field, for output moderation."""
    body = beat1.content_json.get("body")
    return {
        "plan": "\n".join([plan.summary, *(b.title for b in plan.beats), plan.after]),
        "beat1.body": body if isinstance(body, str) else "",
        "beat1.narration": beat1.narration_text,
    }
