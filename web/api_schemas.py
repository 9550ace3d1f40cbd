"""JSON Schemas of the API's bodies, for the OpenAPI document (web/openapi.py).

Where a rule already exists in code (the setup intent's allowed values and lengths in
commands/plan.py), the schema is built from it rather than written again.
"""

from __future__ import annotations

from typing import Any

from commands import interaction_input as interaction
from commands import plan

Schema = dict[str, Any]

ULID: Schema = {"type": "string", "pattern": "^[0-9A-Z]{26}$"}
NULLABLE_STRING: Schema = {"type": ["string", "null"]}
TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}


# Text a student types: no control characters (C0, DEL, C1) and no bidi overrides.
_PLAIN = "[^\\u0000-\\u001f\\u007f-\\u009f\\u202a-\\u202e\\u2066-\\u2069]"
PLAIN_TEXT: Schema = {"type": "string", "pattern": f"^{_PLAIN}*$"}


def words(max_length: int) -> Schema:
    """Plain text with at least one non-space character, at most `max_length` long."""
    return {
        "type": "string",
        "pattern": f"^{_PLAIN}*[^\\s\\u0000-\\u001f\\u007f-\\u009f]{_PLAIN}*$",
        "maxLength": max_length,
    }


def _choice(values: tuple[str, ...] | list[str]) -> Schema:
    return {"type": "string", "enum": list(values)}


PLAN_REQUEST: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["subject", "topic"],
    "properties": {
        "subject": {
            "type": "string",
            "pattern": f"^{plan.SUBJECT_RE.pattern}$",
            "maxLength": plan.SUBJECT_MAX,
        },
        "topic": words(plan.TOPIC_MAX),
        "intent": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "why": _choice(plan.WHY),
                "level": _choice(list(plan.LEVELS)),
                "time": {
                    "description": f"'30 min', '1 hour' or minutes, "
                    f"{plan.MIN_MINUTES}-{plan.MAX_MINUTES}",
                    "oneOf": [
                        {
                            "type": "string",
                            "pattern": "^([5-9]|[1-9][0-9]|1[0-7][0-9]|180) ?"
                            "(min|mins|minutes|m)?$|^[1-3] ?(h|hr|hrs|hour|hours)$",
                        },
                        {
                            "type": "integer",
                            "minimum": plan.MIN_MINUTES,
                            "maximum": plan.MAX_MINUTES,
                        },
                    ],
                },
                "style": _choice(plan.STYLES),
                "free_text": {**PLAIN_TEXT, "maxLength": plan.FREE_TEXT_MAX},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "pace": _choice(plan.PACES),
                        "tone": _choice(plan.TONES),
                        "anchor": _choice(plan.ANCHORS),
                        "outputs": {
                            "type": "array",
                            "uniqueItems": True,
                            "items": _choice(plan.OUTPUTS),
                        },
                    },
                },
            },
        },
    },
}

PLAN_BEAT: Schema = {
    "type": "object",
    "required": ["ord", "kind", "title", "est_min"],
    "properties": {
        "ord": {"type": "integer", "minimum": 1},
        "kind": _choice(["concept", "derivation", "problem", "test", "free"]),
        "title": {"type": "string"},
        "est_min": {"type": "integer"},
    },
}

PLAN: Schema = {
    "type": "object",
    "required": ["summary", "beats", "after"],
    "properties": {
        "summary": {"type": "string"},
        "beats": {"type": "array", "items": PLAN_BEAT},
        "after": {"type": "string"},
    },
}

PLAN_ANSWER: Schema = {
    "type": "object",
    "required": ["lesson_id", "plan", "beat1"],
    "properties": {
        "lesson_id": ULID,
        "plan": PLAN,
        "beat1": {
            "type": "object",
            "required": ["id", "content_json", "narration_text", "audio_url"],
            "properties": {
                "id": ULID,
                "content_json": {"type": "object"},
                "narration_text": {"type": "string"},
                "audio_url": NULLABLE_STRING,
            },
        },
    },
}

LESSON_BEAT: Schema = {
    "type": "object",
    "required": ["ord", "kind", "title", "status"],
    "properties": {
        "ord": {"type": "integer"},
        "id": {"type": ["string", "null"]},
        "kind": {"type": "string"},
        "title": {"type": "string"},
        "est_min": {"type": "integer"},
        "status": _choice(["pending", "streaming", "ready", "failed"]),
        "content_json": {"type": ["object", "null"]},
        "narration_text": NULLABLE_STRING,
        "audio_url": NULLABLE_STRING,
        "partial_text": {"type": "string"},
    },
}

LESSON_ANSWER: Schema = {
    "type": "object",
    "required": ["lesson_id", "status", "plan", "beats"],
    "properties": {
        "lesson_id": ULID,
        "status": _choice(["draft", "active", "complete", "abandoned"]),
        "subject": {"type": "string"},
        "topic": {"type": "string"},
        "level": {"type": "string"},
        "intent": {"type": "object"},
        "plan": {"oneOf": [PLAN, {"type": "null"}]},
        "revision_num": {"type": "integer"},
        "total_beats": {"type": "integer"},
        "beats": {"type": "array", "items": LESSON_BEAT},
        "created_at": TIMESTAMP,
        "completed_at": TIMESTAMP,
        "duration_ms": {"type": ["integer", "null"]},
        "model_costs": {"type": "object", "additionalProperties": {"type": "number"}},
        "interactions": {"type": "array", "items": {"$ref": "#/components/schemas/interaction"}},
    },
}

INTERACTION: Schema = {
    "type": "object",
    "required": ["interaction_id", "type", "beat_ord", "payload", "response", "created_at"],
    "properties": {
        "interaction_id": ULID,
        "type": _choice(["ask", "attempt", "adjust", "whiteboard", "iterate"]),
        "beat_ord": {"type": ["integer", "null"]},
        "payload": {"type": "object"},
        "response": {"type": ["object", "null"]},
        "created_at": TIMESTAMP,
    },
}

BEAT_ORD: Schema = {"type": "integer", "minimum": 1}

ITERATE_REQUEST: Schema = {
    "type": "object",
    "description": "A body with lesson_id iterates that draft lesson's plan (409 once started).",
    "additionalProperties": False,
    "required": ["lesson_id"],
    "properties": {
        "lesson_id": ULID,
        "feedback": words(interaction.MAX_FEEDBACK_CHARS),
        "chip": words(interaction.MAX_CHIP_CHARS),
    },
}

ASK_REQUEST: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["question"],
    "properties": {"question": words(interaction.MAX_QUESTION_CHARS), "beat_ord": BEAT_ORD},
}

ASK_ANSWER: Schema = {
    "type": "object",
    "required": ["interaction_id", "answer", "audio_url"],
    "properties": {
        "interaction_id": ULID,
        "answer": {
            "type": "object",
            "required": ["text", "narration_text"],
            "properties": {"text": {"type": "string"}, "narration_text": {"type": "string"}},
        },
        "audio_url": NULLABLE_STRING,
    },
}

ATTEMPT_REQUEST: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["beat_ord"],
    "properties": {
        "beat_ord": BEAT_ORD,
        "answer": words(interaction.MAX_ANSWER_CHARS),
        "option": {
            "description": "a test beat's choice: its index from 0, or its text",
            "oneOf": [{"type": "integer", "minimum": 0}, words(interaction.MAX_ANSWER_CHARS)],
        },
    },
    "oneOf": [{"required": ["answer"]}, {"required": ["option"]}],
}

ATTEMPT_ANSWER: Schema = {
    "type": "object",
    "required": ["interaction_id", "verdict", "feedback"],
    "properties": {
        "interaction_id": ULID,
        "verdict": _choice(["correct", "partial", "incorrect"]),
        "feedback": {"type": "string"},
    },
}

ADJUST_REQUEST: Schema = {
    "oneOf": [
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "level": _choice([*interaction.DIRECTIONS, *plan.LEVELS]),
                "axes": {
                    "type": "array",
                    "maxItems": interaction.MAX_AXES,
                    "items": words(interaction.MAX_AXIS_CHARS),
                },
                "feedback": words(interaction.MAX_FEEDBACK_CHARS),
                "current_beat_ord": BEAT_ORD,
            },
            "anyOf": [{"required": ["level"]}, {"required": ["axes"]}, {"required": ["feedback"]}],
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["regenerate_beat"],
            "properties": {"regenerate_beat": BEAT_ORD},
        },
    ]
}

ADJUST_ANSWER: Schema = {
    "type": "object",
    "required": ["plan", "revision_num", "current_beat_ord"],
    "properties": {
        "plan": PLAN,
        "revision_num": {"type": "integer", "minimum": 2},
        "current_beat_ord": BEAT_ORD,
    },
}

WHITEBOARD_REQUEST: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["image"],
    "properties": {
        "image": {
            "type": "string",
            "contentEncoding": "base64",
            "description": f"PNG, JPEG or WebP (from its bytes), at most "
            f"{interaction.MAX_IMAGE_BYTES} bytes decoded",
        },
        "text": words(interaction.MAX_QUESTION_CHARS),
        "beat_ord": BEAT_ORD,
    },
}

WHITEBOARD_ANSWER: Schema = {
    "type": "object",
    "required": ["interaction_id", "comment"],
    "properties": {"interaction_id": ULID, "comment": {"type": "string"}},
}

ABANDON_ANSWER: Schema = {
    "type": "object",
    "required": ["lesson_id", "status"],
    "properties": {"lesson_id": ULID, "status": _choice(["abandoned"])},
}

SESSION_REQUEST: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "client_meta": {
            "type": "object",
            "description": "What the browser says of itself (user agent, viewport …).",
            "propertyNames": PLAIN_TEXT,
            "additionalProperties": {
                "oneOf": [PLAIN_TEXT, {"type": ["number", "boolean", "null"]}]
            },
        }
    },
}

SESSION_ANSWER: Schema = {
    "type": "object",
    "required": ["user_id", "session_id", "created", "expires_at"],
    "properties": {
        "user_id": ULID,
        "session_id": ULID,
        "created": {"type": "boolean"},
        "expires_at": {"type": "string", "format": "date-time"},
    },
}

HEALTH: Schema = {
    "type": "object",
    "required": ["ok", "ts"],
    "properties": {"ok": {"const": True}, "ts": {"type": "integer"}},
}

READY: Schema = {
    "type": "object",
    "required": ["ok", "ts", "checks"],
    "properties": {
        "ok": {"const": True},
        "ts": {"type": "integer"},
        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

# The stream's events (contracts §4): `event: <name>` then `data: <JSON>` per frame.
SSE_EVENTS: dict[str, Schema] = {
    "plan_ready": {
        "type": "object",
        "required": ["plan", "total_beats"],
        "properties": {
            "plan": PLAN,
            "total_beats": {"type": "integer"},
            "revision_num": {"type": "integer"},
            "superseded": {
                "type": "array",
                "items": {"type": "integer"},
                "description": "ords whose beats this revision replaces: drop what you have",
            },
        },
    },
    "beat_partial": {
        "type": "object",
        "required": ["ord", "content_delta", "status"],
        "properties": {
            "ord": {"type": "integer"},
            "content_delta": {"type": "string"},
            "status": {"const": "streaming"},
            "reset": {"type": "boolean"},
            "revision": {"type": "integer", "description": "the plan revision of this beat"},
        },
    },
    "beat_complete": {
        "type": "object",
        "required": ["ord", "content_json", "narration_text", "audio_url"],
        "properties": {
            "ord": {"type": "integer"},
            "content_json": {"type": "object"},
            "narration_text": {"type": "string"},
            "audio_url": NULLABLE_STRING,
            "revision": {"type": "integer", "description": "the plan revision of this beat"},
        },
    },
    "audio_ready": {
        "type": "object",
        "required": ["beat_ord", "audio_url"],
        "properties": {"beat_ord": {"type": "integer"}, "audio_url": {"type": "string"}},
    },
    "lesson_complete": {
        "type": "object",
        "required": ["duration_ms", "model_costs"],
        "properties": {
            "duration_ms": {"type": "integer"},
            "model_costs": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    },
    "error": {
        "type": "object",
        "required": ["code", "message", "recoverable", "trace_id"],
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "recoverable": {"type": "boolean"},
            "retry_after_ms": {"type": "integer"},
            "trace_id": {"type": "string"},
        },
    },
    "heartbeat": {"type": "object", "required": ["ts"], "properties": {"ts": {"type": "integer"}}},
}


def _sse_event(name: str, data: Schema) -> Schema:
    """One frame: `event: <name>`, `data: <JSON of this shape>`, and its `id:` if any."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data,
            },
            "id": {"type": "string", "pattern": "^[0-9A-Za-z]+-evt-[0-9]{5,}$"},
            "retry": {"type": "integer"},
        },
    }


STREAM: Schema = {
    "description": "Server-Sent Events, one schema per frame. Every frame but a heartbeat has "
    "`id: {lesson_id}-evt-{seq:05d}`; the first frame only sets `retry:`. Resume with "
    "Last-Event-ID (or ?last_event_id=).",
    "anyOf": [
        *(_sse_event(name, data) for name, data in SSE_EVENTS.items()),
        {
            "type": "object",
            "required": ["retry"],
            "properties": {"retry": {"type": "integer"}},
        },
    ],
}

COMPONENTS: dict[str, Schema] = {
    **{f"sse_{name}": s for name, s in SSE_EVENTS.items()},
    "interaction": INTERACTION,
}
