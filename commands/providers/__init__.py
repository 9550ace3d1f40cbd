"""The model layer: one small interface in front of every language model OmniTutor calls.

Two implementations sit behind :class:`Provider`:

* ``offline`` (:mod:`commands.providers.offline`): a deterministic local tutor, the default
  when no API key is configured. It reports model ``"offline"`` and costs nothing.
* ``anthropic`` (:mod:`commands.providers.anthropic`): the official SDK, one model per
  :class:`Tier`.

Every call returns a :class:`Result` carrying the value and the :class:`ModelRun` records of
each model call it made (the repair retry included); every failure raises a
:class:`ProviderError` carrying the same records, so the caller can append one
``model_run.recorded`` event per call whether it succeeded or not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from commands import errors
from commands.errors import CommandError

__all__ = [
    "BEAT_KINDS",
    "GRADE_VERDICTS",
    "MAKEME_OUTPUTS",
    "MODERATION_CATEGORIES",
    "Adjustment",
    "BeatBrief",
    "BeatContent",
    "DeltaCallback",
    "Drawing",
    "Grade",
    "InvalidOutput",
    "LessonBrief",
    "ModelRun",
    "ModelUnavailable",
    "Plan",
    "PlanBeat",
    "PlanRequest",
    "Provider",
    "ProviderConfig",
    "ProviderError",
    "RateLimited",
    "Result",
    "Tier",
    "Verdict",
    "make_provider",
]

T = TypeVar("T")

BEAT_KINDS: tuple[str, ...] = ("concept", "derivation", "problem", "test", "free")
MODERATION_CATEGORIES: tuple[str, ...] = ("explicit_harm", "csam", "self_harm", "doxxing")
MAKEME_OUTPUTS: tuple[str, ...] = (
    "flashcards", "notes", "slides", "video", "quiz", "summary", "mindmap",
)  # fmt: skip


class Tier(StrEnum):
    """Which model class a call needs: cheap and quick, streaming prose, or hard reasoning."""

    FAST = "fast"
    STREAMING = "streaming"
    DEEP = "deep"


@dataclass(frozen=True)
class ProviderConfig:
    kind: str  # "offline" | "anthropic"
    api_key: str | None = None
    base_url: str | None = None  # None lets the SDK read ANTHROPIC_BASE_URL
    model_fast: str = "claude-haiku-4-5"
    model_streaming: str = "claude-sonnet-4-6"
    model_deep: str = "claude-opus-4-7"
    offline_pace_ms: int = 30  # delay between offline tokens; 0 = as fast as possible
    timeout_s: float = 30.0
    # SDK-internal retries per call. Kept low so an outage surfaces as ModelUnavailable
    # quickly and the caller (who owns the lesson's retry policy) decides what to do.
    max_retries: int = 1

    def model_for(self, tier: Tier) -> str:
        if tier == Tier.FAST:
            return self.model_fast
        if tier == Tier.STREAMING:
            return self.model_streaming
        return self.model_deep


@dataclass(frozen=True)
class ModelRun:
    """One model call, success or failure; becomes a ``model_run.recorded`` event."""

    model: str  # contract names: "haiku-4-5" | "sonnet-4-6" | "opus-4-7" | "offline"
    purpose: str  # plan | beat | ask | adjust | moderation | hello | attempt ...
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    latency_ms: int
    status: str  # ok | rate_limited | refused | error | timeout
    error_code: str | None = None


@dataclass(frozen=True)
class PlanBeat:
    ord: int
    kind: str  # one of BEAT_KINDS
    title: str
    est_min: int


@dataclass(frozen=True)
class Plan:
    summary: str
    beats: tuple[PlanBeat, ...]  # 3..12 beats, ords 1..N
    after: str


@dataclass(frozen=True)
class BeatContent:
    """A generated beat.

    ``content_json`` is ``{"title": str, "body": str (markdown), "key_points": [str, ...]}``;
    problem and test beats add ``"problem": {"prompt": str, "hints": [str, ...],
    "answer": str, "solution": str}`` and test beats also ``"choices": [str, ...]`` inside
    ``problem`` with ``answer`` one of them. :func:`commands.providers.prompts.validate_beat`
    is the one definition of this shape.
    """

    content_json: dict[str, Any]
    narration_text: str


@dataclass(frozen=True)
class PlanRequest:
    subject: str
    topic: str
    level: str
    intent: dict[str, Any]


@dataclass(frozen=True)
class Grade:
    """A graded attempt: correct | partial | incorrect, and what to tell the student."""

    verdict: str
    feedback: str


GRADE_VERDICTS: tuple[str, ...] = ("correct", "partial", "incorrect")


@dataclass(frozen=True)
class Adjustment:
    """What the student asked to change mid-lesson: the level (pop | hs | ug | grad, after
    easier/harder were resolved), axes they named, free feedback; beats after
    ``current_ord`` are rewritten."""

    level: str
    direction: str | None  # easier | harder | None (a level named outright, or feedback only)
    axes: tuple[str, ...]
    feedback: str | None
    current_ord: int


@dataclass(frozen=True)
class Drawing:
    """A student's whiteboard image: raw bytes and their media type (image/png …)."""

    data: bytes
    media_type: str


@dataclass(frozen=True)
class BeatBrief:
    """A generated beat as the asset calls (diagram, simulation) see it."""

    subject: str
    topic: str
    level: str
    ord: int
    kind: str
    title: str
    content_json: dict[str, Any]
    narration_text: str


@dataclass(frozen=True)
class LessonBrief:
    """A lesson's generated beats, for make-me outputs."""

    subject: str
    topic: str
    level: str
    beats: tuple[BeatBrief, ...]


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    category: str | None  # one of MODERATION_CATEGORIES when not allowed


@dataclass(frozen=True)
class Result(Generic[T]):
    value: T
    runs: tuple[ModelRun, ...]


class ProviderError(Exception):
    """Base of every provider failure; carries the runs made before it failed."""

    def __init__(self, message: str, runs: tuple[ModelRun, ...] = ()) -> None:
        super().__init__(message)
        self.runs = runs


class RateLimited(ProviderError):
    """The model API throttled us; try again after ``retry_after_ms``."""

    def __init__(
        self, message: str, runs: tuple[ModelRun, ...] = (), *, retry_after_ms: int
    ) -> None:
        super().__init__(message, runs)
        self.retry_after_ms = retry_after_ms


class ModelUnavailable(ProviderError):
    """Overload, 5xx, connection error or timeout (also a mid-stream ``overloaded_error``)."""


class InvalidOutput(ProviderError):
    """The model's output was still not valid after one repair retry (or it refused)."""


DeltaCallback = Callable[[str], Awaitable[None]]


class Provider(Protocol):
    name: str  # "offline" | "anthropic"

    async def plan(self, request: PlanRequest) -> Result[tuple[Plan, BeatContent]]:
        """Plan plus beat 1, FAST tier, not streamed."""
        ...

    async def beat(
        self,
        plan: Plan,
        ord: int,
        request: PlanRequest,
        on_delta: DeltaCallback,
        tier: Tier = Tier.STREAMING,
    ) -> Result[BeatContent]:
        """Beat ``ord`` of ``plan``; streams text deltas of the beat body to ``on_delta``.

        The returned content is authoritative: when a repair retry was needed the deltas
        already sent are a preview of a body that was replaced.
        """
        ...

    async def moderate(self, text: str, stage: str) -> Result[Verdict]:
        """Classify student input (``stage="input"``) or model output (``"output"``)."""
        ...

    async def answer(
        self, question: str, plan: Plan, ord: int, request: PlanRequest
    ) -> Result[str]:
        """Answer a mid-lesson question about beat ``ord``, FAST tier."""
        ...

    async def grade(
        self, problem: dict[str, Any], answer: str, request: PlanRequest
    ) -> Result[Grade]:
        """Grade a free answer to a beat's ``problem`` (prompt, answer, solution), FAST tier."""
        ...

    async def revise_plan(
        self, plan: Plan, adjustment: Adjustment, request: PlanRequest
    ) -> Result[Plan]:
        """The plan rewritten after ``adjustment.current_ord`` (beats up to it unchanged),
        FAST tier."""
        ...

    async def comment_drawing(
        self, drawing: Drawing, text: str, plan: Plan, ord: int, request: PlanRequest
    ) -> Result[str]:
        """Comment on a student's drawing for beat ``ord`` (the image goes to the model as
        an image block), FAST tier."""
        ...

    async def hello(self) -> Result[str]:
        """Say hello on the FAST tier (the P0 end-to-end check)."""
        ...

    async def diagram(self, beat: BeatBrief, request: str, tier: Tier) -> Result[str]:
        """An SVG diagram of the beat, already sanitised (commands/svg.py)."""
        ...

    async def simulation(self, beat: BeatBrief, request: str, tier: Tier) -> Result[dict[str, Any]]:
        """A mini-simulation spec of the beat, validated (commands/simulation.py)."""
        ...

    async def makeme(self, output: str, lesson: LessonBrief, tier: Tier) -> Result[dict[str, Any]]:
        """A make-me output (one of MAKEME_OUTPUTS) of the lesson, validated."""
        ...

    async def aclose(self) -> None:
        """Release network resources (the SDK's connection pool); idempotent."""
        ...


def make_provider(config: ProviderConfig) -> Provider:
    """Build the provider ``config.kind`` names. Opens nothing until the first call."""
    if config.kind == "offline":
        from commands.providers.offline import OfflineProvider

        return OfflineProvider(config)
    if config.kind == "anthropic":
        if not config.api_key:
            raise ValueError(
                "the anthropic provider needs an api_key; use kind='offline' without one"
            )
        # Imported here so the offline default never pays for importing the SDK.
        from commands.providers.anthropic import AnthropicProvider

        return AnthropicProvider(config)
    raise ValueError(f"unknown provider kind {config.kind!r}; expected 'offline' or 'anthropic'")


def as_command_error(error: ProviderError) -> CommandError:
    """A provider failure as the error vocabulary's code (contracts §11): the one mapping."""
    if isinstance(error, RateLimited):
        return errors.RateLimited(
            "Tutor is thinking too hard. Try again in a sec.",
            retry_after_ms=error.retry_after_ms,
        )
    if isinstance(error, ModelUnavailable):
        return errors.ModelUnavailable(
            "The tutor's model is unavailable right now. Try again soon.", retry_after_ms=2000
        )
    if isinstance(error, InvalidOutput):
        return errors.ModelUnavailable(
            "The tutor could not put a usable answer together. Try again.", recoverable=True
        )
    return errors.Internal("The tutor's model refused the request. Try again later.")
