"""The offline tutor: deterministic, local, free; the default when no API key is set.

Same input, same output: every choice is derived from a SHA-256 of the request, never from
``random`` or ``hash()`` (which is salted per process). It reports model ``"offline"`` in
every :class:`~commands.providers.ModelRun`, costs 0, and counts tokens as whitespace-split
words of the prompt it would have sent and of the JSON it returns.

Plans follow the intent: the time budget ("30 min", "1 hour") sets the number of beats and
their ``est_min`` (which add up to the budget exactly); a problem-driven style gets more
problem beats, a conceptual one more concept and derivation beats; the last beat is a test.

Moderation is a local keyword/regex classifier, :func:`classify`:

| category      | refuses                                         | e.g.                   |
|---------------|-------------------------------------------------|------------------------|
| self_harm     | how to kill or hurt oneself, suicide methods,   | "how to kill myself"   |
|               | wanting to die                                  |                        |
| csam          | sexual or nude content together with a minor    | "nude photos of kids"  |
| explicit_harm | making bombs or weapons of mass harm; intent to | "how to build a bomb   |
|               | kill, hurt, poison or shoot people              | to hurt people"        |
| doxxing       | finding a person's home address, phone number,  | "find the home address |
|               | SSN, or where someone lives                     | of Jane Doe"           |

It matches intent phrases, not topics: "the chemistry of explosives in mining history",
"suicide prevention in public health" or "how to kill a zombie process" pass. Categories are
checked in the order of the table, so "how to kill myself" is self_harm, not explicit_harm.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from commands.providers import (
    Adjustment,
    BeatBrief,
    BeatContent,
    DeltaCallback,
    Drawing,
    Grade,
    LessonBrief,
    ModelRun,
    Plan,
    PlanBeat,
    PlanRequest,
    ProviderConfig,
    Result,
    Tier,
    Verdict,
    media,
    prompts,
)
from commands.providers.prices import OFFLINE_MODEL

__all__ = [
    "OfflineProvider",
    "build_beat",
    "build_drawing_comment",
    "build_grade",
    "build_plan",
    "build_revised_plan",
    "classify",
    "count_tokens",
]

DEFAULT_MINUTES = 20
MIN_MINUTES = 5
MAX_MINUTES = 180
MINUTES_PER_BEAT = 4.5  # 30 min → 7 beats, the contract's example lesson
MAX_TOPIC_CHARS = 80


# ---- moderation -------------------------------------------------------------------------

_I = re.IGNORECASE
_VX = re.IGNORECASE | re.VERBOSE

# Phrases that turn a topic into a request for instructions or a statement of intent.
_HOW = r"""
    (how \s+ (to|do \s+ i|can \s+ i|could \s+ i|would \s+ i|should \s+ i)
    | ways? \s+ to | best \s+ way \s+ to | steps \s+ to | help \s+ me
    | teach \s+ me \s+ (how \s+)? to
    | i \s+ (want|need|plan|am \s+ going) \s+ to | i'm \s+ going \s+ to)
"""
_PEOPLE = r"""
    (people|someone|somebody|a \s+ person|persons|others|him|her|them
    |children|kids|a \s+ child|the \s+ (teacher|class|school|crowd)
    |my \s+ (teacher|classmate|family|wife|husband|mom|mother|dad|father|brother|sister
             |neighbou?r|boss|ex|friend)s?)
"""
_MINOR = r"""
    (child|children|kids?|minors?|underage|preteens?|schoolgirls?|schoolboys?
    |\d{1,2} [-\s]? (year|yr)s? [-\s]? old)
"""
_SEXUAL = r"""
    (porn\w*|nudes?|naked|erotic\w*|sexy
    |sexual \s+ (content|images?|photos?|pictures?|acts?|story|stories|roleplay)
    |explicit \s+ (images?|photos?|pictures?|content))
"""

CATEGORY_PATTERNS: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...] = (
    (
        "self_harm",
        (
            re.compile(
                _HOW + r".{0,40} \b (kill|hurt|harm|cut|starve|poison) \s+ my \s* self \b", _VX
            ),
            re.compile(
                _HOW
                + r""".{0,40} \b (commit \s+ suicide|suicide|end \s+ my \s+ life
                |end \s+ it \s+ all|self [-\s]? harm|overdose) \b""",
                _VX,
            ),
            re.compile(
                r"\b (suicide|self [-\s]? harm) \s+ (methods?|techniques?|instructions?)\b", _VX
            ),
            re.compile(
                r"""\b i \s+ (want|wanna|need) \s+ to \s+
                (die|kill \s+ myself|end \s+ my \s+ life) \b""",
                _VX,
            ),
        ),
    ),
    (
        "csam",
        (
            re.compile(r"\b (child|kiddie) \s+ porn", _VX),
            re.compile(r"\b" + _SEXUAL + r"\b .{0,60} \b" + _MINOR + r"\b", _VX),
            re.compile(r"\b" + _MINOR + r"\b .{0,60} \b" + _SEXUAL + r"\b", _VX),
        ),
    ),
    (
        "explicit_harm",
        (
            re.compile(
                r"""\b (build|make|making|assemble|construct|create) \b .{0,40}
                \b (bomb|pipe \s+ bomb|ied|explosive \s+ device|nerve \s+ agent|bio \s* weapon
                |chemical \s+ weapon|dirty \s+ bomb)s? \b""",
                _VX,
            ),
            re.compile(
                r"\b (kill|hurt|murder|poison|stab|shoot|injure|attack|maim) \s+" + _PEOPLE + r"\b",
                _VX,
            ),
            re.compile(r"\b (school|mass) \s+ shooting \s+ (plan|how|guide)", _VX),
            re.compile(
                r"""\b shoot \s+ up \s+ (a|the|my) \s+
                (school|church|mosque|synagogue|mall|office) \b""",
                _VX,
            ),
        ),
    ),
    (
        "doxxing",
        (
            re.compile(
                r"""\b (find|get|look \s* up|track \s+ down|locate|reveal|dig \s+ up|give \s+ me
                |what \s+ is|what's|tell \s+ me) \b .{0,40}
                \b (home \s+ address|house \s+ address
                |personal \s+ (address|phone|email|details|information)
                |phone \s+ number|cell \s+ number|social \s+ security (\s+ number)?|ssn) \b""",
                _VX,
            ),
            re.compile(
                r"""\b (find|track \s+ down|locate|figure \s+ out) \b .{0,30}
                \b where \s+ \w+ (\s+ \w+)? \s+ lives \b""",
                _VX,
            ),
        ),
    ),
)


def classify(text: str) -> Verdict:
    """The local moderation verdict for ``text`` (see the module docstring's table)."""
    for category, patterns in CATEGORY_PATTERNS:
        if any(p.search(text) for p in patterns):
            return Verdict(allowed=False, category=category)
    return Verdict(allowed=True, category=None)


# ---- plans --------------------------------------------------------------------------------


def _digest(*parts: str) -> int:
    joined = "\x1f".join(parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(joined).digest()[:8], "big")


def _pick(options: Sequence[str], *seed: str) -> str:
    return options[_digest(*seed) % len(options)]


def _clean(text: str, fallback: str, limit: int = MAX_TOPIC_CHARS) -> str:
    cleaned = " ".join(str(text).split())
    if len(cleaned) > limit:
        cleaned = cleaned[:limit].rstrip() + "…"
    return cleaned or fallback


def _topic(request: PlanRequest) -> str:
    return _clean(request.topic, "this topic")


def _intent_text(request: PlanRequest, key: str) -> str:
    value = request.intent.get(key)
    return _clean(value, "", 120) if isinstance(value, str) else ""


def budget_minutes(intent: dict[str, Any]) -> int:
    """Minutes from intent["time"]: "30 min", "45", "1 hour", "1.5 h"; default 20."""
    raw = intent.get("time")
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        minutes = float(raw)
    elif isinstance(raw, str) and (
        m := re.search(r"(\d+(?:\.\d+)?)\s*(hours?|hrs?|h(?![a-z]))?", raw, _I)
    ):
        minutes = float(m.group(1)) * (60 if m.group(2) else 1)
    else:
        minutes = DEFAULT_MINUTES
    if not math.isfinite(minutes):
        minutes = DEFAULT_MINUTES
    return int(min(max(round(minutes), MIN_MINUTES), MAX_MINUTES))


def _style(request: PlanRequest) -> str:
    """One of problem | concept | exam | balanced."""
    style = _intent_text(request, "style").lower()
    if "problem" in style or "practice" in style or "exercise" in style:
        return "problem"
    if "exam" in style or "test" in style or "quiz" in style:
        return "exam"
    if "concept" in style or "theory" in style or "intuition" in style or "deep" in style:
        return "concept"
    return "balanced"


_MATHY = (
    "physics",
    "math",
    "maths",
    "mathematics",
    "chemistry",
    "engineering",
    "statistics",
    "economics",
    "computer",
)


def _kinds(n: int, style: str, subject: str) -> list[str]:
    """Beat kinds for an n-beat lesson: concept first, test last, the middle by style."""
    mathy = any(word in subject.lower() for word in _MATHY)
    middle_cycle = {
        "problem": ["problem", "problem", "concept"],
        "exam": ["concept", "problem", "test"],
        "concept": ["concept", "derivation" if mathy else "concept", "problem"],
        "balanced": ["concept", "derivation" if mathy else "problem", "problem"],
    }[style]
    middle = [middle_cycle[i % len(middle_cycle)] for i in range(n - 2)]
    if style == "problem" and middle:
        middle[0] = "concept"  # a problem-driven lesson still states the idea once first
    return ["concept", *middle, "test"]


_TITLES: dict[str, tuple[str, ...]] = {
    "concept": (
        "What {t} is really about",
        "The core idea behind {t}",
        "A picture to hold {t} in your head",
        "Where {t} shows up around you",
        "The vocabulary of {t}",
        "Why {t} works the way it does",
    ),
    "derivation": (
        "Deriving the key relation of {t}",
        "Building {t} from first principles",
        "Step by step: the maths of {t}",
    ),
    "problem": (
        "Worked problem: {t} in action",
        "Your turn: a problem on {t}",
        "A classic exercise on {t}",
        "Putting {t} to work",
        "Spot the mistake: {t}",
    ),
    "test": ("Check yourself: {t}", "Quick test on {t}", "Show what you know about {t}"),
    "free": ("Open questions about {t}",),
}


def _titles(kinds: Sequence[str], topic: str) -> list[str]:
    used: dict[str, int] = {}
    titles: list[str] = []
    for kind in kinds:
        options = _TITLES[kind]
        start = _digest(topic, kind) % len(options)
        n = used.get(kind, 0)
        used[kind] = n + 1
        title = options[(start + n) % len(options)].format(t=topic)
        if n >= len(options):
            title = f"{title} ({n // len(options) + 1})"
        titles.append(title)
    return titles


def _est_minutes(total: int, n: int) -> list[int]:
    """Split ``total`` into n positive parts that add up to it exactly."""
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


_NEXT_BY_SUBJECT: dict[str, str] = {
    "physics": "applications of {t} to real systems",
    "math": "proofs and generalisations of {t}",
    "chemistry": "{t} in the lab",
    "history": "the long-term consequences of {t}",
    "english": "writing about {t}",
    "biology": "{t} across different organisms",
}


def build_plan(request: PlanRequest) -> Plan:
    """The deterministic plan for ``request``."""
    topic = _topic(request)
    total = budget_minutes(request.intent)
    n = min(max(round(total / MINUTES_PER_BEAT), prompts.MIN_BEATS), prompts.MAX_BEATS)
    style = _style(request)
    kinds = _kinds(n, style, request.subject)
    beats = tuple(
        PlanBeat(ord=i, kind=kind, title=title, est_min=est)
        for i, (kind, title, est) in enumerate(
            zip(kinds, _titles(kinds, topic), _est_minutes(total, n), strict=True), start=1
        )
    )
    level = _clean(request.level, "") or _intent_text(request, "level") or "any level"
    style_words = (
        _intent_text(request, "style")
        or {
            "problem": "problem-driven",
            "exam": "exam prep",
            "concept": "conceptual",
            "balanced": "balanced",
        }[style]
    )
    advanced = request.intent.get("advanced")
    tone = advanced.get("tone") if isinstance(advanced, dict) else None
    tone_words = _clean(tone, "friendly", 30) if isinstance(tone, str) else "friendly"
    summary = f"{total} min · {level} · {style_words} · {tone_words} tone"
    subject_key = request.subject.strip().lower()
    after = _NEXT_BY_SUBJECT.get(subject_key, "going further with {t}").format(t=topic)
    return Plan(summary=summary, beats=beats, after=after)


# ---- beats --------------------------------------------------------------------------------

_OPENERS = (
    "Let's start from something you already know.",
    "Here is the one idea to hold on to.",
    "Think of this as a small story with a clear ending.",
)


def build_beat(plan: Plan, ord: int, request: PlanRequest) -> BeatContent:
    """The deterministic content of beat ``ord`` of ``plan``."""
    if not 1 <= ord <= len(plan.beats):
        raise ValueError(f"beat ord {ord} is outside the plan's 1..{len(plan.beats)}")
    beat = plan.beats[ord - 1]
    topic = _topic(request)
    subject = _clean(request.subject, "this subject", 40)
    level = _clean(request.level, "", 40) or _intent_text(request, "level") or "any level"
    focus = _intent_text(request, "free_text")
    opener = _pick(_OPENERS, topic, str(ord))
    previous = plan.beats[ord - 2].title if ord > 1 else None
    link = (
        f"In the last beat, *{previous}*, we set the scene; now we build on it."
        if previous
        else f"This is the first step into {topic}, pitched for {level}."
    )
    focus_line = f" You asked us to keep this in mind: {focus}" if focus else ""

    key_points: list[str]
    problem: dict[str, Any] | None = None
    if beat.kind == "concept":
        body = (
            f"## {beat.title}\n\n{opener} {link}\n\n"
            f"In {subject}, **{topic}** names a pattern: when one quantity changes, another "
            f"responds in a predictable way. Before any formula, picture a concrete case and "
            f"ask what stays the same and what changes.{focus_line}\n\n"
            f"- Name the things involved in {topic}.\n"
            f"- Say in words how they depend on each other.\n"
            f"- Check the idea against an everyday example."
        )
        key_points = [
            f"{topic} describes how one thing responds to another",
            "Describe the relationship in words before writing symbols",
            "Test every idea against a concrete example",
        ]
    elif beat.kind == "derivation":
        body = (
            f"## {beat.title}\n\n{link}\n\n"
            f"We derive the central relation of **{topic}** in three moves. First, write down "
            f"what we assume. Second, express the change we care about as a small step. Third, "
            f"add up the small steps and simplify.{focus_line}\n\n"
            f"1. State the assumptions and their limits.\n"
            f"2. Write the relation for a small change.\n"
            f"3. Combine and check the units at the end."
        )
        key_points = [
            "Every derivation starts from stated assumptions",
            "Small steps make a hard relation tractable",
            "Check units and limiting cases at the end",
        ]
    elif beat.kind == "free":
        body = (
            f"## {beat.title}\n\n{link}\n\nTake a moment to ask anything about **{topic}** "
            f"that still feels unclear. Good questions here make the next lesson easier."
            f"{focus_line}"
        )
        key_points = [
            "Questions are part of learning",
            f"Note what still puzzles you about {topic}",
        ]
    else:
        is_test = beat.kind == "test"
        prompt = (
            f"Which statement best describes the main idea of {topic}?"
            if is_test
            else f"Apply the main idea of {topic} to a simple case: describe what happens, "
            "step by step, when the input doubles."
        )
        answer = f"It describes a predictable relationship at the heart of {topic}"
        problem = {
            "prompt": prompt,
            "hints": [
                "Start from the key idea of the first beat",
                "Name each quantity before relating them",
            ],
            "answer": answer
            if is_test
            else f"Work through {topic} step by step; the same rule applies at every step.",
            "solution": f"Identify the quantities, state the rule of {topic}, apply it once, "
            "then check the result against intuition.",
        }
        if is_test:
            problem["choices"] = [
                answer,
                f"It only applies to rare special cases of {subject}",
                "It is a definition with no consequences",
                "It cannot be checked by experiment or example",
            ]
        body = (
            f"## {beat.title}\n\n{link}\n\n**Problem.** {prompt}\n\n"
            f"Work it on paper first. Use the hints only if you are stuck; the solution "
            f"follows the same steps we used in the earlier beats.{focus_line}"
        )
        key_points = [
            "Read the problem twice and name the quantities",
            f"Apply the rule of {topic} one step at a time",
            "Check the answer against intuition",
        ]

    content: dict[str, Any] = {"title": beat.title, "body": body, "key_points": key_points}
    if problem is not None:
        content["problem"] = problem
    narration = " ".join(
        line.lstrip("#-0123456789. ").replace("**", "").replace("*", "")
        for line in body.splitlines()
        if line.strip()
    )
    return BeatContent(content_json=content, narration_text=narration)


def build_answer(question: str, plan: Plan, ord: int, request: PlanRequest) -> str:
    beat = plan.beats[min(max(ord, 1), len(plan.beats)) - 1]
    asked = _clean(question, "your question", 200)
    return (
        f"Good question. You asked: {asked} In the beat *{beat.title}* the key is the core "
        f"idea of {_topic(request)}: name the quantities, say how they depend on each other, "
        f"and check it against a concrete example. Try that on your question, and ask again "
        f"if a step is unclear."
    )


def _words_of(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


def build_grade(problem: dict[str, Any], answer: str) -> Grade:
    """correct when the answer says what the expected one says (case, spacing and
    punctuation aside), partial when it shares at least half of its words, else incorrect."""
    expected = str(problem.get("answer", ""))
    solution = str(problem.get("solution", ""))
    if " ".join(sorted(_words_of(answer))) == " ".join(sorted(_words_of(expected))):
        return Grade("correct", f"Correct. {solution}".strip())
    wanted = _words_of(expected)
    shared = len(wanted & _words_of(answer)) / len(wanted) if wanted else 0.0
    if shared >= 0.5:
        return Grade("partial", f"Partly there. The expected answer: {expected}. {solution}")
    return Grade("incorrect", f"Not quite. The expected answer: {expected}. {solution}")


_DIRECTION_WORDS = {"easier": "Gently", "harder": "Going deeper"}


def build_revised_plan(plan: Plan, adjustment: Adjustment) -> Plan:
    """The plan with beats after the current one retitled for the adjustment (kinds and
    minutes kept) and a summary naming it, so every revision has content of its own."""
    label = _DIRECTION_WORDS.get(adjustment.direction or "", "Revised")
    beats = tuple(
        b
        if b.ord <= adjustment.current_ord
        else PlanBeat(b.ord, b.kind, f"{label}: {b.title.split(': ', 1)[-1]}", b.est_min)
        for b in plan.beats
    )
    what = ", ".join(
        part
        for part in (
            adjustment.direction or adjustment.level,
            *adjustment.axes,
            _clean(adjustment.feedback or "", "", 60),
        )
        if part
    )
    summary = f"{plan.summary.split(' · adjusted:', 1)[0]} · adjusted: {what}"
    return Plan(summary=summary, beats=beats, after=plan.after)


def build_drawing_comment(drawing: Drawing, text: str, plan: Plan, ord: int) -> str:
    beat = plan.beats[min(max(ord, 1), len(plan.beats)) - 1]
    kind = drawing.media_type.removeprefix("image/").upper()
    note = f" You wrote: {_clean(text, '', 200)}" if text.strip() else ""
    return (
        f"Thanks for the drawing ({kind}, {len(drawing.data)} bytes).{note} For *{beat.title}*, "
        "label each quantity you drew and mark how one changes when another does."
    )


HELLO_TEXT = "Hello! I'm OmniTutor running offline. What would you like to learn today?"


# ---- the provider -------------------------------------------------------------------------


def count_tokens(text: str) -> int:
    """The offline token count: whitespace-split words."""
    return len(text.split())


def _run(purpose: str, prompt: str, output: str, started: float) -> ModelRun:
    return ModelRun(
        model=OFFLINE_MODEL,
        purpose=purpose,
        prompt_tokens=count_tokens(prompt),
        completion_tokens=count_tokens(output),
        cost_usd=Decimal("0.00000"),
        latency_ms=round((time.perf_counter() - started) * 1000),
        status="ok",
    )


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


class OfflineProvider:
    """The deterministic local tutor behind the :class:`~commands.providers.Provider` interface."""

    name = "offline"

    def __init__(self, config: ProviderConfig) -> None:
        self._pace_s = max(config.offline_pace_ms, 0) / 1000

    async def plan(self, request: PlanRequest) -> Result[tuple[Plan, BeatContent]]:
        started = time.perf_counter()
        plan = build_plan(request)
        beat1 = build_beat(plan, 1, request)
        output = _json(prompts.plan_to_json(plan, beat1))
        run = _run("plan", prompts.PLAN_SYSTEM + prompts.plan_message(request), output, started)
        return Result(value=(plan, beat1), runs=(run,))

    async def beat(
        self,
        plan: Plan,
        ord: int,
        request: PlanRequest,
        on_delta: DeltaCallback,
        tier: Tier = Tier.STREAMING,
    ) -> Result[BeatContent]:
        started = time.perf_counter()
        content = build_beat(plan, ord, request)
        # Word by word, leading whitespace attached, so the deltas join to the body exactly.
        for index, token in enumerate(re.findall(r"\s*\S+", content.content_json["body"])):
            if index and self._pace_s:
                await asyncio.sleep(self._pace_s)  # product pacing, so offline feels live
            await on_delta(token)
        output = _json(prompts.beat_to_json(content))
        prompt = prompts.BEAT_SYSTEM + prompts.beat_message(plan, ord, request)
        return Result(value=content, runs=(_run("beat", prompt, output, started),))

    async def moderate(self, text: str, stage: str) -> Result[Verdict]:
        started = time.perf_counter()
        verdict = classify(text)
        output = _json({"allowed": verdict.allowed, "category": verdict.category})
        prompt = prompts.MODERATION_SYSTEM + prompts.moderation_message(text, stage)
        return Result(value=verdict, runs=(_run("moderation", prompt, output, started),))

    async def answer(
        self, question: str, plan: Plan, ord: int, request: PlanRequest
    ) -> Result[str]:
        started = time.perf_counter()
        text = build_answer(question, plan, ord, request)
        prompt = prompts.ANSWER_SYSTEM + prompts.answer_message(question, plan, ord, request)
        return Result(value=text, runs=(_run("ask", prompt, text, started),))

    async def grade(
        self, problem: dict[str, Any], answer: str, request: PlanRequest
    ) -> Result[Grade]:
        started = time.perf_counter()
        grade = build_grade(problem, answer)
        prompt = prompts.GRADE_SYSTEM + prompts.grade_message(problem, answer, request)
        output = _json(prompts.grade_to_json(grade))
        return Result(value=grade, runs=(_run("attempt", prompt, output, started),))

    async def revise_plan(
        self, plan: Plan, adjustment: Adjustment, request: PlanRequest
    ) -> Result[Plan]:
        started = time.perf_counter()
        revised = build_revised_plan(plan, adjustment)
        prompt = prompts.REVISE_SYSTEM + prompts.revise_message(plan, adjustment, request)
        output = _json(prompts.plan_to_wire(revised))
        return Result(value=revised, runs=(_run("adjust", prompt, output, started),))

    async def comment_drawing(
        self, drawing: Drawing, text: str, plan: Plan, ord: int, request: PlanRequest
    ) -> Result[str]:
        started = time.perf_counter()
        comment = build_drawing_comment(drawing, text, plan, ord)
        prompt = prompts.DRAWING_SYSTEM + prompts.drawing_message(text, plan, ord, request)
        return Result(value=comment, runs=(_run("whiteboard", prompt, comment, started),))

    async def hello(self) -> Result[str]:
        started = time.perf_counter()
        prompt = prompts.HELLO_SYSTEM + prompts.hello_message()
        return Result(value=HELLO_TEXT, runs=(_run("hello", prompt, HELLO_TEXT, started),))

    async def diagram(self, beat: BeatBrief, request: str, tier: Tier) -> Result[str]:
        started = time.perf_counter()
        svg = media.build_diagram(beat, request)
        prompt = media.DIAGRAM_SYSTEM + media.beat_message("diagram", beat, request)
        return Result(value=svg, runs=(_run("visualize", prompt, svg, started),))

    async def simulation(self, beat: BeatBrief, request: str, tier: Tier) -> Result[dict[str, Any]]:
        started = time.perf_counter()
        spec = media.build_simulation(beat, request)
        prompt = media.SIMULATION_SYSTEM + media.beat_message("simulation", beat, request)
        return Result(value=spec, runs=(_run("animate", prompt, _json(spec), started),))

    async def makeme(self, output: str, lesson: LessonBrief, tier: Tier) -> Result[dict[str, Any]]:
        started = time.perf_counter()
        content = media.build_makeme(output, lesson)
        prompt = media.makeme_system(output) + media.makeme_message(output, lesson)
        return Result(value=content, runs=(_run("makeme", prompt, _json(content), started),))

    async def aclose(self) -> None:
        """Nothing to release; present because the interface has it."""
