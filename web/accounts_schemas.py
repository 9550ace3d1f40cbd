"""JSON Schemas of the account endpoints' bodies, for the OpenAPI document (web/openapi.py).

The browser events' payloads follow commands/analytics.py's SHAPES field by field (the
bounds are its constants; tests/test_openapi_accounts.py checks the two name the same
fields).
"""

from __future__ import annotations

from typing import Any

from commands import accounts, analytics

Schema = dict[str, Any]

_TS: Schema = {
    "description": "The browser's clock: epoch milliseconds, or an RFC 3339 date-time",
    "oneOf": [
        {"type": "integer", "minimum": 0, "maximum": analytics.TS_MAX_MS},
        {"type": "string", "format": "date-time", "maxLength": 40},
    ],
}


def _text(max_length: int = analytics.TEXT_MAX) -> Schema:
    return {"type": "string", "maxLength": max_length}


_SHORT = _text(analytics.SHORT_MAX)
_COUNT: Schema = {"type": "integer", "minimum": 0, "maximum": analytics.COUNT_MAX}
_ORD: Schema = {"type": "integer", "minimum": 0, "maximum": analytics.ORD_MAX}
_AXES: Schema = {
    "type": "array",
    "maxItems": analytics.AXES_MAX,
    "items": _text(analytics.AXIS_MAX),
}

# type → (required fields, optional fields); contracts §12.
_PAYLOADS: dict[str, tuple[dict[str, Schema], dict[str, Schema]]] = {
    "session.start": ({}, {"referrer": _text(), "ua": _text(), "viewport": _text(40)}),
    "discovery.search": ({"query": _text()}, {"source": _SHORT}),
    "lesson.invoke": ({"subject": _SHORT, "source": _SHORT}, {"topic": _text()}),
    "setup.skip": ({}, {}),
    "setup.submit": ({"intent": {"type": "object"}}, {}),
    "plan.shown": ({"time_to_render_ms": _COUNT}, {}),
    "plan.iterate": ({}, {"chip": _SHORT, "free_text": _text()}),
    "plan.locked": ({"total_beats": _COUNT}, {}),
    "beat.advance": ({"from_ord": _ORD, "to_ord": _ORD}, {}),
    "ask.fired": ({"beat_ord": _ORD, "q_chars": _COUNT}, {}),
    "attempt.submit": ({"beat_ord": _ORD, "verdict": _SHORT}, {}),
    "adjust.applied": (
        {"direction": {"type": "string", "enum": list(analytics.DIRECTIONS)}, "axes": _AXES},
        {},
    ),
    "visualize.fired": ({"beat_ord": _ORD}, {}),
    "animate.fired": ({"beat_ord": _ORD}, {}),
    "makeme.fired": ({"output_type": _SHORT}, {}),
    "lesson.complete": ({"duration_ms": _COUNT}, {}),
    "lesson.abandon": ({"last_beat_ord": _ORD}, {}),
}


def _event(type_: str) -> Schema:
    required, optional = _PAYLOADS[type_]
    names_lesson = analytics.SHAPES[type_].lesson
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "type",
            "ts",
            *(["lesson_id"] if names_lesson else []),
            *(["payload"] if required else []),  # absent, the payload is {}
        ],
        "properties": {
            "type": {"const": type_},
            "ts": _TS,
            "lesson_id": {"type": "string", "pattern": f"^{analytics.LESSON_ID_PATTERN}$"},
            "id": {"type": "string", "pattern": f"^{analytics.ULID_PATTERN}$"},
            "payload": {
                "type": "object",
                "additionalProperties": False,
                "required": list(required),
                "properties": {**required, **optional},
            },
        },
    }


PAYLOAD_FIELDS = {t: (set(r), set(o)) for t, (r, o) in _PAYLOADS.items()}

EVENTS_REQUEST: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["events"],
    "properties": {
        "events": {
            "type": "array",
            "minItems": 1,
            "maxItems": analytics.MAX_BATCH,
            "items": {"oneOf": [_event(t) for t in sorted(_PAYLOADS)]},
        }
    },
}
EVENTS_ANSWER: Schema = {
    "type": "object",
    "required": ["accepted"],
    "properties": {"accepted": {"type": "integer", "minimum": 1}},
}

MAGIC_LINK_REQUEST: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["email"],
    "properties": {
        "email": {
            "type": "string",
            # The plain ASCII addresses; the server also takes international ones.
            "pattern": "^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)*\\.[A-Za-z]{2,}$",
            "maxLength": accounts.EMAIL_MAX,
        }
    },
}
MAGIC_LINK_ANSWER: Schema = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string"}},
}

LIBRARY_LESSON: Schema = {
    "type": "object",
    "required": [
        "lesson_id", "subject", "topic", "status", "created_at", "completed_at",
        "total_beats", "beats_completed",
    ],
    "properties": {
        "lesson_id": {"type": "string"},
        "subject": {"type": "string"},
        "topic": {"type": "string"},
        "status": {"type": "string", "enum": ["draft", "active", "complete", "abandoned"]},
        "created_at": {"type": "string", "format": "date-time"},
        "completed_at": {"type": ["string", "null"], "format": "date-time"},
        "total_beats": {"type": ["integer", "null"]},
        "beats_completed": {"type": "integer", "minimum": 0},
    },
}  # fmt: skip
LIBRARY_ANSWER: Schema = {
    "type": "object",
    "required": ["lessons", "next_cursor"],
    "properties": {
        "lessons": {"type": "array", "items": LIBRARY_LESSON},
        "next_cursor": {"type": ["string", "null"]},
    },
}

ACCOUNT_DELETED: Schema = {
    "type": "object",
    "required": ["deleted", "lessons"],
    "properties": {"deleted": {"const": True}, "lessons": {"type": "integer", "minimum": 0}},
}
