"""Prompt text, the JSON shapes the model must return, and their strict validation.

The model is asked for one JSON object per call. The shapes, defined once here:

plan (FAST tier)::

    {"summary": str, "after": str,
     "beats": [{"ord": 1, "kind": "concept", "title": str, "est_min": int}, ...],   # 3..12
     "beat1": <beat>}

beat::

    {"title": str, "body": str (markdown), "key_points": [str, ...] (1..8),
     "narration": str,
     "problem": {"prompt": str, "hints": [str, ...], "answer": str, "solution": str,
                 "choices": [str, ...]}}   # problem: problem/test beats only; choices: test only

moderation::

    {"allowed": bool, "category": null | "explicit_harm" | "csam" | "self_harm" | "doxxing"}

The user message of every call is itself a JSON object with a ``"task"`` key, so the request
is unambiguous to the model and to the fake Messages API server used in tests.

Validation is strict (unknown kinds, wrong types, bad ords, empty strings are all errors)
with one tolerance: a reply wrapped in a Markdown code fence is unwrapped, because models
do that often and the content is otherwise fine. :class:`OutputError` messages are written
to be sent back to the model in the repair turn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from commands.providers import (
    BEAT_KINDS,
    GRADE_VERDICTS,
    MODERATION_CATEGORIES,
    Adjustment,
    BeatContent,
    Grade,
    Plan,
    PlanBeat,
    PlanRequest,
    Verdict,
)

__all__ = [
    "ANSWER_SYSTEM",
    "BEAT_SYSTEM",
    "DRAWING_SYSTEM",
    "GRADE_SYSTEM",
    "HELLO_SYSTEM",
    "MODERATION_SYSTEM",
    "PLAN_SYSTEM",
    "REVISE_SYSTEM",
    "BodyDeltaExtractor",
    "OutputError",
    "answer_message",
    "beat_message",
    "beat_to_json",
    "drawing_message",
    "grade_message",
    "grade_to_json",
    "moderation_message",
    "parse_beat",
    "parse_grade",
    "parse_plan",
    "parse_revised_plan",
    "parse_verdict",
    "plan_message",
    "plan_to_json",
    "plan_to_wire",
    "repair_message",
    "revise_message",
    "validate_beat",
    "validate_plan",
]

MIN_BEATS = 3
MAX_BEATS = 12
MAX_EST_MIN = 60
MAX_KEY_POINTS = 8
PROBLEM_KINDS = frozenset({"problem", "test"})

_BEAT_SHAPE = (
    '{"title": string, "body": string (Markdown, 120-400 words), '
    '"key_points": [1 to 8 short strings], "narration": string (what the tutor says aloud, '
    'plain text, no Markdown), "problem": {"prompt": string, "hints": [strings], '
    '"answer": string, "solution": string, "choices": [2 to 6 strings]}}. '
    'Include "problem" only for kind "problem" or "test"; include "choices" only for kind '
    '"test", and then "answer" must be exactly one of the choices. '
    'Write "title" first and "body" second.'
)

PLAN_SYSTEM = (
    "You are OmniTutor, a patient expert tutor who plans short lessons. "
    "The user message is a JSON object describing the student's request. "
    "Reply with ONE JSON object and nothing else, of the shape "
    '{"summary": string, "beats": [{"ord": int, "kind": string, "title": string, '
    '"est_min": int}], "after": string, "beat1": BEAT}. '
    f"There are {MIN_BEATS} to {MAX_BEATS} beats with ord 1..N in order; kind is one of "
    f"{', '.join(BEAT_KINDS)}; est_min is 1 to {MAX_EST_MIN} and the est_min values add up "
    "to the student's time budget. Put a test beat near the end. Honour the level, style, "
    '"why" and free text of the intent. "summary" is one line like '
    '"30 min · first time · problem-driven · friendly tone"; "after" names what to learn '
    "next. BEAT is the full content of beat 1: " + _BEAT_SHAPE
)

BEAT_SYSTEM = (
    "You are OmniTutor, a patient expert tutor. The user message is a JSON object with the "
    "lesson plan and the ord of the beat to teach now. Teach only that beat, at the "
    "student's level, consistent with the beats before it. Reply with ONE JSON object and "
    "nothing else, of the shape " + _BEAT_SHAPE
)

MODERATION_SYSTEM = (
    "You are a safety classifier for an educational tutoring service. The user message is "
    'a JSON object whose "text" was written by a student ("stage": "input") or by the tutor '
    '("stage": "output"). Block only: explicit_harm (instructions or intent to hurt people, '
    "build weapons meant for harm), csam (any sexual content involving minors), self_harm "
    "(encouraging or instructing suicide or self-injury), doxxing (finding or revealing a "
    "private person's address, phone number or other personal data). Allow everything else, "
    "including history, science and medicine of hard subjects. Reply with ONE JSON object "
    'and nothing else: {"allowed": true, "category": null} or '
    '{"allowed": false, "category": "<one of the four>"}.'
)

ANSWER_SYSTEM = (
    "You are OmniTutor, a patient expert tutor in the middle of a lesson. The user message "
    "is a JSON object with the plan, the current beat and the student's question. Answer "
    "the question in at most 150 words of plain text, at the student's level, and connect "
    "it back to the current beat."
)

HELLO_SYSTEM = "You are OmniTutor, a friendly tutor. Reply with one short sentence."

GRADE_SYSTEM = (
    "You are OmniTutor grading a student's answer. The user message is a JSON object with "
    "the problem (prompt, expected answer, worked solution) and the student's answer. Judge "
    "the substance, not the wording. Reply with ONE JSON object and nothing else: "
    '{"verdict": "correct" | "partial" | "incorrect", "feedback": string (at most 80 words, '
    "addressed to the student, saying what is right and what to fix)}."
)

REVISE_SYSTEM = (
    "You are OmniTutor, a patient expert tutor adjusting a lesson that is under way. The "
    "user message is a JSON object with the current plan, the ord of the beat the student "
    "is on, and the adjustment (target level, direction, axes, feedback). Keep every beat "
    "with ord up to the current one exactly as it is, and rewrite the beats after it for "
    "the adjustment. Reply with ONE JSON object and nothing else, of the shape "
    '{"summary": string, "beats": [{"ord": int, "kind": string, "title": string, '
    f'"est_min": int}}], "after": string}}, with {MIN_BEATS} to {MAX_BEATS} beats, ords 1..N '
    f"in order, kind one of {', '.join(BEAT_KINDS)}, and a test beat near the end."
)

DRAWING_SYSTEM = (
    "You are OmniTutor, a patient expert tutor in the middle of a lesson. The student drew "
    "something on the whiteboard (the image) and may have written a note. The text part is "
    "a JSON object with the plan, the current beat and the note. Comment on the drawing in "
    "at most 120 words of plain text: what is right, what to look at again, connected to "
    "the current beat."
)


class OutputError(ValueError):
    """The model's text is not the JSON shape asked for; the message says what is wrong."""


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=False)


# ---- user messages -----------------------------------------------------------------------


def _request_json(request: PlanRequest) -> dict[str, Any]:
    return {
        "subject": request.subject,
        "topic": request.topic,
        "level": request.level,
        "intent": request.intent,
    }


def _plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "summary": plan.summary,
        "beats": [
            {"ord": b.ord, "kind": b.kind, "title": b.title, "est_min": b.est_min}
            for b in plan.beats
        ],
        "after": plan.after,
    }


def plan_message(request: PlanRequest) -> str:
    return _dumps({"task": "plan", **_request_json(request)})


def beat_message(plan: Plan, ord: int, request: PlanRequest) -> str:
    return _dumps({"task": "beat", **_request_json(request), "plan": _plan_json(plan), "ord": ord})


def moderation_message(text: str, stage: str) -> str:
    return _dumps({"task": "moderation", "stage": stage, "text": text})


def answer_message(question: str, plan: Plan, ord: int, request: PlanRequest) -> str:
    return _dumps(
        {
            "task": "ask",
            **_request_json(request),
            "plan": _plan_json(plan),
            "ord": ord,
            "question": question,
        }
    )


def grade_message(problem: Mapping[str, Any], answer: str, request: PlanRequest) -> str:
    return _dumps(
        {
            "task": "grade",
            **_request_json(request),
            "problem": {k: problem.get(k) for k in ("prompt", "answer", "solution")},
            "student_answer": answer,
        }
    )


def revise_message(plan: Plan, adjustment: Adjustment, request: PlanRequest) -> str:
    return _dumps(
        {
            "task": "revise",
            **_request_json(request),
            "plan": _plan_json(plan),
            "current_ord": adjustment.current_ord,
            "adjustment": {
                "level": adjustment.level,
                "direction": adjustment.direction,
                "axes": list(adjustment.axes),
                "feedback": adjustment.feedback,
            },
        }
    )


def drawing_message(text: str, plan: Plan, ord: int, request: PlanRequest) -> str:
    return _dumps(
        {
            "task": "whiteboard",
            **_request_json(request),
            "plan": _plan_json(plan),
            "ord": ord,
            "note": text,
        }
    )


def hello_message() -> str:
    return "Say hello."


def repair_message(error: str) -> str:
    """The follow-up turn of the one repair retry, after the bad reply as assistant turn."""
    return (
        f"That reply is not valid: {error}. Reply again with ONE corrected JSON object of "
        "the requested shape and nothing else."
    )


# ---- serialisation (offline provider and the fake server speak the same shapes) -----------


def beat_to_json(beat: BeatContent) -> dict[str, Any]:
    """The wire shape of a beat: ``content_json`` plus ``narration``."""
    content = beat.content_json
    out: dict[str, Any] = {
        "title": content["title"],
        "body": content["body"],
        "key_points": list(content["key_points"]),
        "narration": beat.narration_text,
    }
    if "problem" in content:
        out["problem"] = content["problem"]
    return out


def plan_to_json(plan: Plan, beat1: BeatContent) -> dict[str, Any]:
    return {**_plan_json(plan), "beat1": beat_to_json(beat1)}


# ---- parsing and validation --------------------------------------------------------------


def _load_object(text: str) -> dict[str, Any]:
    stripped = text.strip()
    if stripped.startswith("```"):
        # Tolerate ```json ... ``` fences, nothing more.
        first_newline = stripped.find("\n")
        stripped = stripped[first_newline + 1 :] if first_newline != -1 else ""
        stripped = stripped.removesuffix("```").strip()
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError as e:
        raise OutputError(f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    if not isinstance(value, dict):
        raise OutputError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _text(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise OutputError(f"{where}.{key} must be a non-empty string")
    return value


def _int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    # bool is an int subclass; true is not a beat number.
    if not isinstance(value, int) or isinstance(value, bool):
        raise OutputError(f"{where}.{key} must be an integer")
    return value


def _texts(obj: Mapping[str, Any], key: str, where: str, lo: int, hi: int) -> list[str]:
    value = obj.get(key)
    if not isinstance(value, list) or not lo <= len(value) <= hi:
        raise OutputError(f"{where}.{key} must be a list of {lo} to {hi} strings")
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise OutputError(f"{where}.{key} must contain only non-empty strings")
    return [str(v) for v in value]


def _problem(obj: Mapping[str, Any], kind: str, where: str) -> dict[str, Any]:
    raw = obj.get("problem")
    if not isinstance(raw, dict):
        raise OutputError(f'{where}.problem must be an object for a "{kind}" beat')
    at = f"{where}.problem"
    problem: dict[str, Any] = {
        "prompt": _text(raw, "prompt", at),
        "hints": _texts(raw, "hints", at, 0, 5),
        "answer": _text(raw, "answer", at),
        "solution": _text(raw, "solution", at),
    }
    if kind == "test":
        choices = _texts(raw, "choices", at, 2, 6)
        if problem["answer"] not in choices:
            raise OutputError(f"{at}.answer must be exactly one of {at}.choices")
        problem["choices"] = choices
    elif "choices" in raw:
        raise OutputError(f'{at}.choices is only for "test" beats')
    return problem


def validate_beat(obj: Mapping[str, Any], kind: str, where: str = "beat") -> BeatContent:
    """Check a beat object (wire shape, with ``narration``) and build its BeatContent."""
    content: dict[str, Any] = {
        "title": _text(obj, "title", where),
        "body": _text(obj, "body", where),
        "key_points": _texts(obj, "key_points", where, 1, MAX_KEY_POINTS),
    }
    narration = _text(obj, "narration", where)
    if kind in PROBLEM_KINDS:
        content["problem"] = _problem(obj, kind, where)
    elif "problem" in obj:
        raise OutputError(f'{where}.problem is only for "problem" and "test" beats, not "{kind}"')
    return BeatContent(content_json=content, narration_text=narration)


def validate_plan(obj: Mapping[str, Any]) -> Plan:
    summary = _text(obj, "summary", "plan")
    after = _text(obj, "after", "plan")
    raw_beats = obj.get("beats")
    if not isinstance(raw_beats, list) or not MIN_BEATS <= len(raw_beats) <= MAX_BEATS:
        raise OutputError(f"plan.beats must be a list of {MIN_BEATS} to {MAX_BEATS} beats")
    beats: list[PlanBeat] = []
    for index, raw in enumerate(raw_beats, start=1):
        where = f"plan.beats[{index - 1}]"
        if not isinstance(raw, dict):
            raise OutputError(f"{where} must be an object")
        ord_ = _int(raw, "ord", where)
        if ord_ != index:
            raise OutputError(f"{where}.ord must be {index} (ords run 1..N in order)")
        kind = _text(raw, "kind", where)
        if kind not in BEAT_KINDS:
            raise OutputError(f"{where}.kind must be one of {', '.join(BEAT_KINDS)}")
        est_min = _int(raw, "est_min", where)
        if not 1 <= est_min <= MAX_EST_MIN:
            raise OutputError(f"{where}.est_min must be between 1 and {MAX_EST_MIN}")
        beats.append(
            PlanBeat(ord=ord_, kind=kind, title=_text(raw, "title", where), est_min=est_min)
        )
    return Plan(summary=summary, beats=tuple(beats), after=after)


def parse_plan(text: str) -> tuple[Plan, BeatContent]:
    obj = _load_object(text)
    plan = validate_plan(obj)
    raw_beat1 = obj.get("beat1")
    if not isinstance(raw_beat1, dict):
        raise OutputError("beat1 must be an object with the content of beat 1")
    return plan, validate_beat(raw_beat1, plan.beats[0].kind, "beat1")


def parse_beat(text: str, kind: str) -> BeatContent:
    return validate_beat(_load_object(text), kind)


def parse_grade(text: str) -> Grade:
    obj = _load_object(text)
    verdict = obj.get("verdict")
    if verdict not in GRADE_VERDICTS:
        raise OutputError(f"verdict must be one of {', '.join(GRADE_VERDICTS)}")
    return Grade(verdict=str(verdict), feedback=_text(obj, "feedback", "grade"))


def grade_to_json(grade: Grade) -> dict[str, Any]:
    return {"verdict": grade.verdict, "feedback": grade.feedback}


def parse_revised_plan(text: str) -> Plan:
    return validate_plan(_load_object(text))


def plan_to_wire(plan: Plan) -> dict[str, Any]:
    return _plan_json(plan)


def parse_verdict(text: str) -> Verdict:
    obj = _load_object(text)
    allowed = obj.get("allowed")
    if not isinstance(allowed, bool):
        raise OutputError("allowed must be true or false")
    category = obj.get("category")
    if allowed:
        if category is not None:
            raise OutputError("category must be null when allowed is true")
        return Verdict(allowed=True, category=None)
    if category not in MODERATION_CATEGORIES:
        raise OutputError(f"category must be one of {', '.join(MODERATION_CATEGORIES)}")
    return Verdict(allowed=False, category=str(category))


# ---- streaming ---------------------------------------------------------------------------

_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class BodyDeltaExtractor:
    """Turns raw JSON text deltas of a beat into deltas of its decoded ``"body"`` string.

    The beat arrives as JSON, but the student should see prose while it streams, not
    braces and escapes. Feed each text delta to :meth:`feed`; it returns the newly decoded
    characters of the top-level ``"body"`` value (possibly ``""``). It scans only; the
    complete text is still validated by :func:`parse_beat` at the end.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._escape = ""  # pending escape sequence after a backslash, e.g. "u00e"
        self._string_chars: list[str] = []  # current top-level key, while reading one
        self._expect_value_for: str | None = None  # key whose value comes next
        self._after_colon = False
        self._in_body = False
        self._body_done = False
        self._pending_surrogate = ""

    def feed(self, delta: str) -> str:
        out: list[str] = []
        for ch in delta:
            self._step(ch, out)
        return "".join(out)

    def _step(self, ch: str, out: list[str]) -> None:
        if self._in_string:
            self._string_char(ch, out)
            return
        if ch == '"':
            self._in_string = True
            self._string_chars = []
            self._in_body = (
                self._depth == 1
                and self._after_colon
                and self._expect_value_for == "body"
                and not self._body_done
            )
            return
        if ch in "{[":
            self._depth += 1
            self._after_colon = False
        elif ch in "}]":
            self._depth -= 1
        elif ch == ":" and self._depth == 1:
            self._after_colon = True
        elif ch == "," and self._depth == 1:
            self._expect_value_for = None
            self._after_colon = False

    def _string_char(self, ch: str, out: list[str]) -> None:
        if self._escape:
            self._escape += ch
            decoded = self._decode_escape()
            if decoded is None:
                return
            self._escape = ""
            self._emit(decoded, out)
            return
        if ch == "\\":
            self._escape = "\\"
            return
        if ch == '"':
            self._in_string = False
            if self._in_body:
                self._in_body = False
                self._body_done = True
            elif self._depth == 1 and not self._after_colon:
                self._expect_value_for = "".join(self._string_chars)
            return
        self._emit(ch, out)

    def _decode_escape(self) -> str | None:
        """The decoded text of a complete escape, or None while it is still incomplete."""
        body = self._escape[1:]
        if body[0] != "u":
            return _ESCAPES.get(body[0], body[0])
        if len(body) < 5:
            return None
        code = (
            int(body[1:5], 16) if all(c in "0123456789abcdefABCDEF" for c in body[1:5]) else 0xFFFD
        )
        if 0xD800 <= code <= 0xDBFF:
            self._pending_surrogate = chr(code)
            return ""
        if 0xDC00 <= code <= 0xDFFF and self._pending_surrogate:
            high = ord(self._pending_surrogate)
            self._pending_surrogate = ""
            return chr(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00))
        return chr(code)

    def _emit(self, text: str, out: list[str]) -> None:
        if self._in_body:
            out.append(text)
        elif self._depth == 1 and not self._after_colon:
            self._string_chars.append(text)
