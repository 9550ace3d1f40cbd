"""The bodies of the in-lesson endpoints (ask, attempt, adjust, plan iterate, whiteboard).

Pure functions: each takes the parsed JSON object and returns a normalised input or raises
InvalidInput naming the field (the error envelope's `field`), before anything is appended.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from commands.errors import InvalidInput
from commands.plan import LEVELS

MAX_QUESTION_CHARS = 2000
MAX_ANSWER_CHARS = 2000
MAX_FEEDBACK_CHARS = 2000
MAX_CHIP_CHARS = 60
MAX_AXES = 8
MAX_AXIS_CHARS = 40
MAX_IMAGE_BYTES = 2 * 1024 * 1024  # decoded
# Base64 of MAX_IMAGE_BYTES plus room for the other fields and JSON: web/ lets the
# whiteboard route read bodies this large (the rest keep OMNITUTOR_MAX_BODY_BYTES).
WHITEBOARD_BODY_BYTES = (MAX_IMAGE_BYTES + 2) // 3 * 4 + 16 * 1024
DIRECTIONS = ("easier", "harder")
LEVEL_ORDER = ("pop", "hs", "ug", "grad")

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


def _fields(body: Mapping[str, Any], allowed: frozenset[str], why: str = "") -> None:
    for name in sorted(set(body) - allowed):
        raise InvalidInput(name, why or f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _text(body: Mapping[str, Any], name: str, limit: int, *, required: bool) -> str | None:
    if name not in body or (body[name] is None and not required):
        if required:
            raise InvalidInput(name, "is required")
        return None
    value = body[name]
    if not isinstance(value, str):
        raise InvalidInput(name, f"must be a string, got {_type(value)}")
    if _CONTROL.search(value):
        raise InvalidInput(name, "must not contain control characters")
    value = value.strip()
    if not value:
        raise InvalidInput(name, "must not be empty")
    if len(value) > limit:
        raise InvalidInput(name, f"must be at most {limit} characters, got {len(value)}")
    return value


def _ord(body: Mapping[str, Any], name: str, *, required: bool) -> int | None:
    if name not in body or (body[name] is None and not required):
        if required:
            raise InvalidInput(name, "is required")
        return None
    value = body[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInput(name, f"must be a beat ord (an integer from 1), got {value!r}")
    return value


def _type(value: object) -> str:
    return "null" if value is None else type(value).__name__


# ---- ask ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AskInput:
    question: str
    beat_ord: int | None


def validate_ask(body: Mapping[str, Any]) -> AskInput:
    _fields(body, frozenset({"question", "beat_ord"}))
    question = _text(body, "question", MAX_QUESTION_CHARS, required=True)
    assert question is not None  # required
    return AskInput(question, _ord(body, "beat_ord", required=False))


# ---- attempt -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptInput:
    beat_ord: int
    answer: str | None  # a free answer (graded by the fast tier) …
    option: int | str | None  # … or a choice of a test beat: its index from 0, or its text


def validate_attempt(body: Mapping[str, Any]) -> AttemptInput:
    _fields(body, frozenset({"beat_ord", "answer", "option"}))
    beat_ord = _ord(body, "beat_ord", required=True)
    assert beat_ord is not None  # required
    if ("answer" in body) == ("option" in body):
        raise InvalidInput("answer", "give exactly one of answer or option")
    if "answer" in body:
        return AttemptInput(beat_ord, _text(body, "answer", MAX_ANSWER_CHARS, required=True), None)
    option = body["option"]
    if isinstance(option, bool) or not isinstance(option, int | str):
        raise InvalidInput("option", f"must be a choice's index or text, got {_type(option)}")
    if isinstance(option, int) and option < 0:
        raise InvalidInput("option", "must be a choice's index from 0")
    if isinstance(option, str):
        option = _text(body, "option", MAX_ANSWER_CHARS, required=True) or ""
    return AttemptInput(beat_ord, None, option)


# ---- adjust ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdjustInput:
    level: str | None  # easier | harder | pop | hs | ug | grad
    axes: tuple[str, ...]
    feedback: str | None
    current_beat_ord: int | None
    regenerate_beat: int | None


def validate_adjust(body: Mapping[str, Any]) -> AdjustInput:
    if "regenerate_beat" in body:
        _fields(body, frozenset({"regenerate_beat"}), "is not allowed with regenerate_beat")
        return AdjustInput(None, (), None, None, _ord(body, "regenerate_beat", required=True))
    _fields(body, frozenset({"level", "axes", "feedback", "current_beat_ord"}))
    level = _text(body, "level", 40, required=False)
    if level is not None:
        level = " ".join(level.lower().split())
        if level not in DIRECTIONS and level not in LEVELS:
            allowed = ", ".join((*DIRECTIONS, *sorted(LEVELS)))
            raise InvalidInput("level", f"must be one of {allowed}; got {body['level']!r}")
        level = level if level in DIRECTIONS else LEVELS[level]
    axes = _axes(body.get("axes"))
    feedback = _text(body, "feedback", MAX_FEEDBACK_CHARS, required=False)
    if level is None and not axes and feedback is None:
        raise InvalidInput("level", "say what to change: level, axes or feedback")
    return AdjustInput(level, axes, feedback, _ord(body, "current_beat_ord", required=False), None)


def _axes(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_AXES:
        raise InvalidInput("axes", f"must be a list of at most {MAX_AXES} strings")
    out = []
    for i, item in enumerate(value):
        axis = _text({f"axes[{i}]": item}, f"axes[{i}]", MAX_AXIS_CHARS, required=True)
        assert axis is not None  # required
        out.append(axis)
    return tuple(out)


def resolve_level(current: str, wanted: str | None) -> tuple[str, str | None]:
    """(the level after an adjust, its direction): easier/harder move one step, clamped."""
    if wanted is None:
        return current, None
    if wanted not in DIRECTIONS:
        return wanted, None
    at = LEVEL_ORDER.index(current) if current in LEVEL_ORDER else LEVEL_ORDER.index("ug")
    step = -1 if wanted == "easier" else 1
    return LEVEL_ORDER[min(max(at + step, 0), len(LEVEL_ORDER) - 1)], wanted


# ---- plan iterate ------------------------------------------------------------------------


@dataclass(frozen=True)
class IterateInput:
    lesson_id: str
    feedback: str | None
    chip: str | None


def is_iterate_body(body: Mapping[str, Any]) -> bool:
    """POST /v1/plan with a lesson_id iterates that lesson's plan."""
    return "lesson_id" in body


def validate_iterate(body: Mapping[str, Any]) -> IterateInput:
    _fields(
        body,
        frozenset({"lesson_id", "feedback", "chip"}),
        "is not allowed with lesson_id (iterating a plan takes feedback and chip only)",
    )
    lesson_id = body["lesson_id"]
    if not isinstance(lesson_id, str) or not lesson_id:
        raise InvalidInput("lesson_id", f"must be a lesson id, got {_type(lesson_id)}")
    return IterateInput(
        lesson_id,
        _text(body, "feedback", MAX_FEEDBACK_CHARS, required=False),
        _text(body, "chip", MAX_CHIP_CHARS, required=False),
    )


# ---- whiteboard --------------------------------------------------------------------------


@dataclass(frozen=True)
class WhiteboardInput:
    image: bytes
    media_type: str  # image/png | image/jpeg | image/webp, from the bytes
    text: str
    beat_ord: int | None


def image_type(data: bytes) -> str | None:
    """The media type the bytes' signature names (PNG, JPEG, WebP), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def validate_whiteboard(body: Mapping[str, Any]) -> WhiteboardInput:
    _fields(body, frozenset({"image", "text", "beat_ord"}))
    raw = body.get("image")
    if not isinstance(raw, str) or not raw:
        raise InvalidInput("image", "is required: a base64 PNG, JPEG or WebP image")
    encoded = _DATA_URL.sub("", raw, count=1)
    if len(encoded) > (MAX_IMAGE_BYTES + 2) // 3 * 4:
        raise InvalidInput("image", f"must be at most {MAX_IMAGE_BYTES} bytes decoded")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("image", "is not valid base64") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidInput("image", f"must be at most {MAX_IMAGE_BYTES} bytes decoded")
    media_type = image_type(data)
    if media_type is None:
        raise InvalidInput("image", "must be a PNG, JPEG or WebP image (checked from its bytes)")
    text = _text(body, "text", MAX_QUESTION_CHARS, required=False) or ""
    return WhiteboardInput(data, media_type, text, _ord(body, "beat_ord", required=False))
