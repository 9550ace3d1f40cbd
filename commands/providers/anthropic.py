"""The Anthropic provider: the official SDK, one model id per tier.

Each call asks for one JSON object (shapes in :mod:`commands.providers.prompts`), validates
it strictly and, when it is invalid, makes ONE repair call that shows the model its reply
and the error; a second invalid reply raises :class:`InvalidOutput`. Every call made —
first attempt, repair, failure — yields a :class:`ModelRun` with the tokens the API reported,
the cost from :mod:`commands.providers.prices`, latency, status and error code.

SDK errors are translated here and nowhere else:

| SDK error                                            | raised           | run status   |
|------------------------------------------------------|------------------|--------------|
| ``RateLimitError`` (429), stream ``rate_limit_error``| RateLimited      | rate_limited |
| ``APITimeoutError``                                  | ModelUnavailable | timeout      |
| ``APIConnectionError``                               | ModelUnavailable | error        |
| 5xx, 529, stream ``overloaded_error``/``api_error``  | ModelUnavailable | error        |
| any other error event inside a 200 stream            | ModelUnavailable | error        |
| other ``APIStatusError`` (400, 401, 404 …)           | ProviderError    | error        |
| ``stop_reason == "refusal"``                         | InvalidOutput    | refused      |

A mid-stream ``event: error`` reaches us as an ``APIStatusError`` whose status is the
stream's 200; the SDK does not retry it, so it is classified by its ``error.type``.
The SDK's own retries (``ProviderConfig.max_retries``) happen inside one call and are not
visible here: such a call is one ModelRun.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import anthropic
from anthropic.types import ContentBlockParam, ImageBlockParam, MessageParam, TextBlockParam

from commands.providers import (
    Adjustment,
    BeatBrief,
    BeatContent,
    DeltaCallback,
    Drawing,
    Grade,
    InvalidOutput,
    LessonBrief,
    ModelRun,
    ModelUnavailable,
    Plan,
    PlanRequest,
    ProviderConfig,
    ProviderError,
    RateLimited,
    Result,
    Tier,
    Verdict,
    media,
    prompts,
)
from commands.providers.prices import contract_model_name, cost_usd

__all__ = ["AnthropicProvider"]

T = TypeVar("T")

DEFAULT_RETRY_AFTER_MS = 1000
PLAN_MAX_TOKENS = 4096
BEAT_MAX_TOKENS = 2048
MODERATION_MAX_TOKENS = 200
ANSWER_MAX_TOKENS = 512
GRADE_MAX_TOKENS = 300
# The image types a whiteboard drawing may have (checked from its bytes upstream).
IMAGE_MEDIA_TYPES: dict[str, Literal["image/png", "image/jpeg", "image/webp"]] = {
    "image/png": "image/png",
    "image/jpeg": "image/jpeg",
    "image/webp": "image/webp",
}
HELLO_MAX_TOKENS = 64
UNAVAILABLE_ERROR_TYPES = frozenset({"overloaded_error", "api_error", "timeout_error"})


@dataclass(frozen=True)
class _Reply:
    text: str
    run: ModelRun
    refused: bool


class AnthropicProvider:
    """:class:`~commands.providers.Provider` on the Anthropic Messages API."""

    name = "anthropic"

    def __init__(self, config: ProviderConfig) -> None:
        self._config = config
        self._client: anthropic.AsyncAnthropic | None = None

    def _client_now(self) -> anthropic.AsyncAnthropic:
        # Created on first use, inside the running event loop, never at import or build time.
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(
                api_key=self._config.api_key,
                base_url=self._config.base_url,
                max_retries=self._config.max_retries,
                timeout=self._config.timeout_s,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    # ---- the interface ------------------------------------------------------------------

    async def plan(self, request: PlanRequest) -> Result[tuple[Plan, BeatContent]]:
        return await self._json_call(
            Tier.FAST,
            "plan",
            prompts.PLAN_SYSTEM,
            prompts.plan_message(request),
            prompts.parse_plan,
            PLAN_MAX_TOKENS,
        )

    async def beat(
        self,
        plan: Plan,
        ord: int,
        request: PlanRequest,
        on_delta: DeltaCallback,
        tier: Tier = Tier.STREAMING,
    ) -> Result[BeatContent]:
        if not 1 <= ord <= len(plan.beats):
            raise ValueError(f"beat ord {ord} is outside the plan's 1..{len(plan.beats)}")
        kind = plan.beats[ord - 1].kind
        return await self._json_call(
            tier,
            "beat",
            prompts.BEAT_SYSTEM,
            prompts.beat_message(plan, ord, request),
            lambda text: prompts.parse_beat(text, kind),
            BEAT_MAX_TOKENS,
            on_delta=on_delta,
        )

    async def moderate(self, text: str, stage: str) -> Result[Verdict]:
        return await self._json_call(
            Tier.FAST,
            "moderation",
            prompts.MODERATION_SYSTEM,
            prompts.moderation_message(text, stage),
            prompts.parse_verdict,
            MODERATION_MAX_TOKENS,
        )

    async def answer(
        self, question: str, plan: Plan, ord: int, request: PlanRequest
    ) -> Result[str]:
        message = prompts.answer_message(question, plan, ord, request)
        return await self._text_call("ask", prompts.ANSWER_SYSTEM, message, ANSWER_MAX_TOKENS)

    async def grade(
        self, problem: dict[str, Any], answer: str, request: PlanRequest
    ) -> Result[Grade]:
        return await self._json_call(
            Tier.FAST,
            "attempt",
            prompts.GRADE_SYSTEM,
            prompts.grade_message(problem, answer, request),
            prompts.parse_grade,
            GRADE_MAX_TOKENS,
        )

    async def revise_plan(
        self, plan: Plan, adjustment: Adjustment, request: PlanRequest
    ) -> Result[Plan]:
        return await self._json_call(
            Tier.FAST,
            "adjust",
            prompts.REVISE_SYSTEM,
            prompts.revise_message(plan, adjustment, request),
            prompts.parse_revised_plan,
            PLAN_MAX_TOKENS,
        )

    async def comment_drawing(
        self, drawing: Drawing, text: str, plan: Plan, ord: int, request: PlanRequest
    ) -> Result[str]:
        # The Messages API's image block: base64 data with its media type, then the text.
        image: ImageBlockParam = {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": IMAGE_MEDIA_TYPES[drawing.media_type],
                "data": base64.b64encode(drawing.data).decode("ascii"),
            },
        }
        note: TextBlockParam = {
            "type": "text",
            "text": prompts.drawing_message(text, plan, ord, request),
        }
        content: list[ContentBlockParam] = [image, note]
        return await self._text_call(
            "whiteboard", prompts.DRAWING_SYSTEM, content, ANSWER_MAX_TOKENS
        )

    async def diagram(self, beat: BeatBrief, request: str, tier: Tier) -> Result[str]:
        message = media.beat_message("diagram", beat, request)
        return await self._json_call(
            tier,
            "visualize",
            media.DIAGRAM_SYSTEM,
            message,
            media.parse_diagram,
            media.DIAGRAM_MAX_TOKENS,
        )

    async def simulation(self, beat: BeatBrief, request: str, tier: Tier) -> Result[dict[str, Any]]:
        message = media.beat_message("simulation", beat, request)
        return await self._json_call(
            tier,
            "animate",
            media.SIMULATION_SYSTEM,
            message,
            media.parse_simulation,
            media.SIMULATION_MAX_TOKENS,
        )

    async def makeme(self, output: str, lesson: LessonBrief, tier: Tier) -> Result[dict[str, Any]]:
        return await self._json_call(
            tier,
            "makeme",
            media.makeme_system(output),
            media.makeme_message(output, lesson),
            lambda text: media.parse_makeme(output, text),
            media.MAKEME_MAX_TOKENS,
        )

    async def hello(self) -> Result[str]:
        message = prompts.hello_message()
        return await self._text_call("hello", prompts.HELLO_SYSTEM, message, HELLO_MAX_TOKENS)

    # ---- calls --------------------------------------------------------------------------

    async def _text_call(
        self, purpose: str, system: str, user: str | list[ContentBlockParam], max_tokens: int
    ) -> Result[str]:
        messages: list[MessageParam] = [{"role": "user", "content": user}]
        reply = await self._create(Tier.FAST, purpose, system, messages, max_tokens, ())
        text = reply.text.strip()
        if reply.refused:
            raise InvalidOutput(f"{purpose}: the model refused", (reply.run,))
        if not text:
            raise InvalidOutput(f"{purpose}: the model returned no text", (_as_invalid(reply.run),))
        return Result(value=text, runs=(reply.run,))

    async def _json_call(
        self,
        tier: Tier,
        purpose: str,
        system: str,
        user: str,
        parse: Callable[[str], T],
        max_tokens: int,
        on_delta: DeltaCallback | None = None,
    ) -> Result[T]:
        messages: list[MessageParam] = [{"role": "user", "content": user}]
        if on_delta is None:
            first = await self._create(tier, purpose, system, messages, max_tokens, ())
        else:
            first = await self._stream(tier, purpose, system, messages, max_tokens, on_delta)
        if first.refused:
            raise InvalidOutput(f"{purpose}: the model refused", (first.run,))
        try:
            return Result(value=parse(first.text), runs=(first.run,))
        except prompts.OutputError as error:
            first_run = _as_invalid(first.run)
            problem = str(error)

        # The one repair retry: the model sees its own reply and what is wrong with it. Not
        # streamed: the caller already has a preview, and the Result carries the final body.
        repair_messages: list[MessageParam] = [
            *messages,
            {"role": "assistant", "content": first.text.strip() or "(empty)"},
            {"role": "user", "content": prompts.repair_message(problem)},
        ]
        second = await self._create(
            tier, purpose, system, repair_messages, max_tokens, (first_run,)
        )
        if second.refused:
            raise InvalidOutput(f"{purpose}: the model refused", (first_run, second.run))
        try:
            return Result(value=parse(second.text), runs=(first_run, second.run))
        except prompts.OutputError as error:
            runs = (first_run, _as_invalid(second.run))
            raise InvalidOutput(
                f"{purpose}: invalid output after one repair: {error}", runs
            ) from error

    async def _create(
        self,
        tier: Tier,
        purpose: str,
        system: str,
        messages: list[MessageParam],
        max_tokens: int,
        prior_runs: tuple[ModelRun, ...],
    ) -> _Reply:
        model_id = self._config.model_for(tier)
        started = time.perf_counter()
        try:
            message = await self._client_now().messages.create(
                model=model_id, max_tokens=max_tokens, system=system, messages=messages
            )
        except anthropic.APIError as error:
            raise _translate(error, model_id, purpose, started, 0, 0, prior_runs) from error
        text = "".join(block.text for block in message.content if block.type == "text")
        refused = message.stop_reason == "refusal"
        run = _run(
            model_id,
            purpose,
            message.usage.input_tokens,
            message.usage.output_tokens,
            started,
            status="refused" if refused else "ok",
            error_code="refusal" if refused else None,
        )
        return _Reply(text=text, run=run, refused=refused)

    async def _stream(
        self,
        tier: Tier,
        purpose: str,
        system: str,
        messages: list[MessageParam],
        max_tokens: int,
        on_delta: DeltaCallback,
    ) -> _Reply:
        model_id = self._config.model_for(tier)
        started = time.perf_counter()
        extractor = prompts.BodyDeltaExtractor()
        parts: list[str] = []
        # Tracked from the events so a stream that fails midway still reports its usage.
        input_tokens = output_tokens = 0
        stop_reason: str | None = None
        try:
            async with self._client_now().messages.stream(
                model=model_id, max_tokens=max_tokens, system=system, messages=messages
            ) as stream:
                async for event in stream:
                    if event.type == "message_start":
                        input_tokens = event.message.usage.input_tokens
                        output_tokens = event.message.usage.output_tokens
                    elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                        parts.append(event.delta.text)
                        if body_delta := extractor.feed(event.delta.text):
                            await on_delta(body_delta)
                    elif event.type == "message_delta":
                        # message_delta usage is cumulative, so it replaces, not adds.
                        output_tokens = event.usage.output_tokens
                        if event.usage.input_tokens is not None:
                            input_tokens = event.usage.input_tokens
                        stop_reason = event.delta.stop_reason
        except anthropic.APIError as error:
            raise _translate(
                error, model_id, purpose, started, input_tokens, output_tokens, ()
            ) from error
        refused = stop_reason == "refusal"
        run = _run(
            model_id,
            purpose,
            input_tokens,
            output_tokens,
            started,
            status="refused" if refused else "ok",
            error_code="refusal" if refused else None,
        )
        return _Reply(text="".join(parts), run=run, refused=refused)


# ---- runs and errors ----------------------------------------------------------------------


def _run(
    model_id: str,
    purpose: str,
    prompt_tokens: int,
    completion_tokens: int,
    started: float,
    *,
    status: str,
    error_code: str | None,
) -> ModelRun:
    model = contract_model_name(model_id)
    return ModelRun(
        model=model,
        purpose=purpose,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost_usd(model, prompt_tokens, completion_tokens),
        latency_ms=round((time.perf_counter() - started) * 1000),
        status=status,
        error_code=error_code,
    )


def _as_invalid(run: ModelRun) -> ModelRun:
    """The run of a call whose reply failed validation: billed, but an error."""
    return ModelRun(
        model=run.model,
        purpose=run.purpose,
        prompt_tokens=run.prompt_tokens,
        completion_tokens=run.completion_tokens,
        cost_usd=run.cost_usd,
        latency_ms=run.latency_ms,
        status="error",
        error_code="invalid_output",
    )


def _retry_after_ms(error: anthropic.APIStatusError) -> int:
    headers = error.response.headers
    for name, scale in (("retry-after-ms", 1.0), ("retry-after", 1000.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) * scale
        except ValueError:
            continue  # an HTTP-date retry-after; the default is close enough for a retry hint
        if value >= 0:
            return round(value)
    return DEFAULT_RETRY_AFTER_MS


def _translate(
    error: anthropic.APIError,
    model_id: str,
    purpose: str,
    started: float,
    prompt_tokens: int,
    completion_tokens: int,
    prior_runs: tuple[ModelRun, ...],
) -> ProviderError:
    def failed(status: str, error_code: str) -> tuple[ModelRun, ...]:
        run = _run(
            model_id,
            purpose,
            prompt_tokens,
            completion_tokens,
            started,
            status=status,
            error_code=error_code,
        )
        return (*prior_runs, run)

    message = f"{purpose} on {model_id}: {error}"
    if isinstance(error, anthropic.APITimeoutError):
        return ModelUnavailable(message, failed("timeout", "timeout"))
    if isinstance(error, anthropic.APIConnectionError):
        return ModelUnavailable(message, failed("error", "connection_error"))
    if isinstance(error, anthropic.APIStatusError):
        error_type = error.type
        if isinstance(error, anthropic.RateLimitError) or error_type == "rate_limit_error":
            return RateLimited(
                message,
                failed("rate_limited", "rate_limit_error"),
                retry_after_ms=_retry_after_ms(error),
            )
        code = error_type or f"http_{error.status_code}"
        # A status below 400 here means an error event inside a 200 stream: the server
        # failed mid-answer, which is an outage from the caller's point of view.
        mid_stream = error.status_code < 400
        if mid_stream or error.status_code >= 500 or error_type in UNAVAILABLE_ERROR_TYPES:
            return ModelUnavailable(message, failed("error", code))
        return ProviderError(message, failed("error", code))
    return ProviderError(message, failed("error", type(error).__name__))
