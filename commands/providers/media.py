"""Generated assets at the model layer: prompts, parsers and the offline tutor's versions.

Three calls sit beside the lesson's own: a diagram (SVG) and a simulation spec for one beat,
and a make-me output for the whole lesson. Each parser is the one definition of its output:
the SVG is sanitised (commands/svg.py), the spec validated (commands/simulation.py), a
make-me object checked by :func:`validate_makeme`. A parser raises
:class:`~commands.providers.prompts.OutputError`, which gives the model its one repair retry.

The offline builders are deterministic from the beat's own content, so the default install
draws real (if plain) diagrams, runs a real simulation and makes real flashcards.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

from commands.providers import MAKEME_OUTPUTS, BeatBrief, LessonBrief
from commands.providers.prompts import OutputError
from commands.simulation import SpecError, validate_spec
from commands.svg import InvalidSvg, extract_svg, sanitize_svg

DIAGRAM_MAX_TOKENS = 4096
SIMULATION_MAX_TOKENS = 2048
MAKEME_MAX_TOKENS = 4096

DIAGRAM_SYSTEM = (
    "You are OmniTutor's illustrator. The user message is a JSON object with one beat of a "
    "lesson and, optionally, what the student asked to see. Draw ONE clear, labelled "
    "diagram of it as a standalone SVG document (viewBox 0 0 640 400) and reply with the SVG "
    "only: shapes, paths, text, gradients and markers; no script, no style element, no "
    "images, no links, no foreignObject, no external references."
)

SIMULATION_SYSTEM = (
    "You are OmniTutor's simulation designer. The user message is a JSON object with one "
    "beat of a lesson. Design a small interactive simulation of it as ONE JSON object and "
    'nothing else: {"title", "description", "parameters": [{"name", "label", "min", "max", '
    '"default", "step", "unit"}], "state": [{"name", "initial"}], "update": {state name: '
    'expression}, "dt", "steps", "plot": {"x": "t" or a state name, "y": [state names], '
    '"x_label", "y_label"}}. Names are lower-case identifiers. Expressions use numbers, the '
    "declared names, t, dt, pi, e, + - * / ** %, and sin cos tan exp log sqrt abs min max "
    "atan2; nothing else. Each update gives a state variable's next value after dt."
)

MAKEME_SHAPES = {
    "flashcards": '{"cards": [{"front": string, "back": string}, ...]}',
    "notes": '{"sections": [{"heading": string, "body": string (Markdown)}, ...]}',
    "slides": '{"slides": [{"title": string, "bullets": [strings], "narration": string}, ...]}',
    "video": '{"slides": [{"title": string, "bullets": [strings], "narration": string}, ...]}',
    "quiz": '{"questions": [{"prompt": string, "choices": [strings], "answer": one of the '
    'choices, "explanation": string}, ...]}',
    "summary": '{"summary": string, "key_points": [strings]}',
    "mindmap": '{"root": string, "children": [{"label": string, "children": [...]}, ...]}',
}


def makeme_system(output: str) -> str:
    return (
        "You are OmniTutor. The user message is a JSON object with a finished lesson's beats. "
        f"Make the student's {output} from it. Reply with ONE JSON object and nothing else, "
        f"of the shape {MAKEME_SHAPES[output]}."
    )


def _beat_json(beat: BeatBrief) -> dict[str, Any]:
    return {
        "ord": beat.ord,
        "kind": beat.kind,
        "title": beat.title,
        "content": beat.content_json,
        "narration": beat.narration_text,
    }


def beat_message(task: str, beat: BeatBrief, request: str) -> str:
    return json.dumps(
        {
            "task": task,
            "subject": beat.subject,
            "topic": beat.topic,
            "level": beat.level,
            "beat": _beat_json(beat),
            "request": request,
        },
        ensure_ascii=False,
    )


def makeme_message(output: str, lesson: LessonBrief) -> str:
    return json.dumps(
        {
            "task": "makeme",
            "output": output,
            "subject": lesson.subject,
            "topic": lesson.topic,
            "level": lesson.level,
            "beats": [_beat_json(b) for b in lesson.beats],
        },
        ensure_ascii=False,
    )


# ---- parsers ---------------------------------------------------------------------------


def parse_diagram(text: str) -> str:
    try:
        return sanitize_svg(extract_svg(text))
    except InvalidSvg as e:
        raise OutputError(f"the SVG cannot be used: {e}") from None


def _json_object(text: str) -> dict[str, Any]:
    start, end = text.find("{"), text.rfind("}")
    try:
        value = json.loads(text[start : end + 1]) if start >= 0 else None
    except ValueError as e:
        raise OutputError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise OutputError("the reply is not one JSON object")
    return value


def parse_simulation(text: str) -> dict[str, Any]:
    try:
        return validate_spec(_json_object(text))
    except SpecError as e:
        raise OutputError(str(e)) from None


def _strings(obj: Mapping[str, Any], key: str, where: str, lo: int = 1, hi: int = 60) -> list[str]:
    value = obj.get(key)
    if (
        not isinstance(value, list)
        or not lo <= len(value) <= hi
        or not all(isinstance(v, str) and v.strip() for v in value)
    ):
        raise OutputError(f"{where}.{key}: must be a list of {lo} to {hi} non-empty strings")
    return value


def _string(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise OutputError(f"{where}.{key}: must be a non-empty string")
    return value


def _items(obj: Mapping[str, Any], key: str, hi: int = 60) -> list[Mapping[str, Any]]:
    value = obj.get(key)
    if not isinstance(value, list) or not 1 <= len(value) <= hi:
        raise OutputError(f"{key}: must be a list of 1 to {hi} objects")
    if not all(isinstance(v, Mapping) for v in value):
        raise OutputError(f"{key}: every item must be an object")
    return value


def _mindmap(node: Mapping[str, Any], where: str, depth: int) -> dict[str, Any]:
    if depth > 4:
        raise OutputError(f"{where}: deeper than 4 levels")
    children = node.get("children", [])
    if not isinstance(children, list) or not all(isinstance(c, Mapping) for c in children):
        raise OutputError(f"{where}.children: must be a list of objects")
    return {
        "label": _string(node, "label", where),
        "children": [
            _mindmap(c, f"{where}.children[{i}]", depth + 1) for i, c in enumerate(children)
        ],
    }


def validate_makeme(output: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """The make-me object in its one shape (MAKEME_SHAPES), or OutputError."""
    if output in {"slides", "video"}:
        return {
            "slides": [
                {
                    "title": _string(s, "title", f"slides[{i}]"),
                    "bullets": _strings(s, "bullets", f"slides[{i}]", 1, 8),
                    "narration": _string(s, "narration", f"slides[{i}]"),
                }
                for i, s in enumerate(_items(obj, "slides", 20))
            ]
        }
    if output == "flashcards":
        return {
            "cards": [
                {
                    "front": _string(c, "front", f"cards[{i}]"),
                    "back": _string(c, "back", f"cards[{i}]"),
                }
                for i, c in enumerate(_items(obj, "cards"))
            ]
        }
    if output == "notes":
        return {
            "sections": [
                {
                    "heading": _string(s, "heading", f"sections[{i}]"),
                    "body": _string(s, "body", f"sections[{i}]"),
                }
                for i, s in enumerate(_items(obj, "sections", 30))
            ]
        }
    if output == "quiz":
        questions = []
        for i, q in enumerate(_items(obj, "questions", 30)):
            where = f"questions[{i}]"
            choices = _strings(q, "choices", where, 2, 6)
            answer = _string(q, "answer", where)
            if answer not in choices:
                raise OutputError(f"{where}.answer: must be one of the choices")
            questions.append(
                {
                    "prompt": _string(q, "prompt", where),
                    "choices": choices,
                    "answer": answer,
                    "explanation": _string(q, "explanation", where),
                }
            )
        return {"questions": questions}
    if output == "summary":
        return {
            "summary": _string(obj, "summary", "summary"),
            "key_points": _strings(obj, "key_points", "summary", 1, 12),
        }
    if output == "mindmap":
        root = _string(obj, "root", "mindmap")
        tree = _mindmap({"label": root, "children": obj.get("children", [])}, "mindmap", 0)
        if not tree["children"]:
            raise OutputError("mindmap.children: must not be empty")
        return {"root": root, "children": tree["children"]}
    raise OutputError(f"unknown output {output!r}; expected one of {', '.join(MAKEME_OUTPUTS)}")


def parse_makeme(output: str, text: str) -> dict[str, Any]:
    return validate_makeme(output, _json_object(text))


# ---- the offline tutor's versions ------------------------------------------------------


def _points(beat: BeatBrief) -> list[str]:
    points = beat.content_json.get("key_points")
    if isinstance(points, list) and points:
        return [str(p) for p in points][:4]
    return [beat.title]


def build_diagram(beat: BeatBrief, request: str) -> str:
    """A labelled concept diagram: the beat's title, an arrow to each key point."""
    points = _points(beat)
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 640 400" role="img" '
        f'aria-label="{escape(beat.title, {chr(34): "&quot;"})}">',
        f"<title>{escape(beat.title)}</title>",
        '<defs><marker id="arrow" markerWidth="10" markerHeight="10" refX="9" refY="5" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#345"/></marker></defs>',
        '<rect x="220" y="20" width="200" height="56" rx="10" fill="#eef4ff" stroke="#345"/>',
        '<text x="320" y="54" text-anchor="middle" font-size="16">'
        f"{escape(beat.title[:32])}</text>",
    ]
    width = 600 / len(points)
    for i, point in enumerate(points):
        cx = 20 + width * i + width / 2
        parts.append(
            f'<line x1="320" y1="76" x2="{cx:.0f}" y2="200" stroke="#345" '
            'marker-end="url(#arrow)"/>'
        )
        parts.append(
            f'<rect x="{cx - width / 2 + 8:.0f}" y="204" width="{width - 16:.0f}" height="80" '
            'rx="8" fill="#fff8e6" stroke="#a70"/>'
        )
        parts.append(
            f'<text x="{cx:.0f}" y="248" text-anchor="middle" font-size="12">'
            f"{escape(point[:40])}</text>"
        )
    if request:
        parts.append(
            f'<text x="320" y="360" text-anchor="middle" font-size="11" fill="#666">'
            f"{escape(request[:80])}</text>"
        )
    parts.append("</svg>")
    return sanitize_svg("".join(parts))


def build_simulation(beat: BeatBrief, request: str) -> dict[str, Any]:
    """A damped oscillator: the one simulation every physics-flavoured beat can show."""
    return validate_spec(
        {
            "title": f"{beat.title}: a damped oscillator",
            "description": request or "Change the stiffness, mass and damping; watch x(t).",
            "parameters": [
                {"name": "k", "label": "stiffness", "min": 0.5, "max": 20, "default": 4,
                 "step": 0.5, "unit": "N/m"},
                {"name": "m", "label": "mass", "min": 0.1, "max": 5, "default": 1,
                 "step": 0.1, "unit": "kg"},
                {"name": "c", "label": "damping", "min": 0, "max": 2, "default": 0.2,
                 "step": 0.05, "unit": "kg/s"},
            ],
            "state": [{"name": "x", "initial": "1"}, {"name": "v", "initial": "0"}],
            "update": {"x": "x + v*dt", "v": "v + (-(k/m)*x - (c/m)*v)*dt"},
            "dt": 0.01,
            "steps": 1000,
            "plot": {"x": "t", "y": ["x"], "x_label": "time (s)", "y_label": "x (m)"},
        }
    )  # fmt: skip


def build_makeme(output: str, lesson: LessonBrief) -> dict[str, Any]:
    beats = lesson.beats
    if output in {"slides", "video"}:
        obj: dict[str, Any] = {
            "slides": [
                {"title": b.title, "bullets": _points(b), "narration": b.narration_text or b.title}
                for b in beats
            ]
        }
    elif output == "flashcards":
        obj = {"cards": [{"front": b.title, "back": "; ".join(_points(b))} for b in beats]}
    elif output == "notes":
        obj = {
            "sections": [
                {"heading": b.title, "body": str(b.content_json.get("body") or b.title)}
                for b in beats
            ]
        }
    elif output == "quiz":
        questions = []
        for b in beats:
            points = _points(b)
            choices = [points[0], *[o.title for o in beats if o is not b][:3]]
            questions.append(
                {
                    "prompt": f"Which statement belongs to “{b.title}”?",
                    "choices": list(dict.fromkeys(choices)),
                    "answer": points[0],
                    "explanation": f"“{points[0]}” is a key point of {b.title}.",
                }
            )
        obj = {"questions": [q for q in questions if len(q["choices"]) >= 2] or questions[:1]}
        if len(obj["questions"][0]["choices"]) < 2:
            obj["questions"][0]["choices"].append("None of these")
    elif output == "summary":
        obj = {
            "summary": f"{lesson.topic}: " + " → ".join(b.title for b in beats),
            "key_points": [p for b in beats for p in _points(b)][:12],
        }
    else:
        obj = {
            "root": lesson.topic,
            "children": [
                {"label": b.title, "children": [{"label": p, "children": []} for p in _points(b)]}
                for b in beats
            ],
        }
    return validate_makeme(output, obj)
