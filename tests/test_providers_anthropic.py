"""The Anthropic provider over real HTTP against the fake Messages API (no SDK mocks)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest

from commands.providers import (
    InvalidOutput,
    ModelUnavailable,
    Plan,
    PlanRequest,
    ProviderConfig,
    ProviderError,
    RateLimited,
    Tier,
    Verdict,
    make_provider,
    offline,
    prompts,
)
from commands.providers.anthropic import AnthropicProvider
from commands.providers.prices import contract_model_name, cost_usd
from tests.fakes.anthropic_server import (
    ErrorReply,
    FakeAnthropic,
    StreamErrorReply,
    TextReply,
    overloaded,
    rate_limited,
    server_error,
)

pytestmark = pytest.mark.anyio

HOOKE = PlanRequest(
    subject="physics",
    topic="Hooke's law & SHM",
    level="first time",
    intent={"time": "30 min", "style": "problem-driven", "free_text": "Skip Lagrangian."},
)
PLAN = offline.build_plan(HOOKE)
PLAN_JSON = json.dumps(prompts.plan_to_json(PLAN, offline.build_beat(PLAN, 1, HOOKE)))
# Beat 2 is a concept beat; escapes and non-ASCII exercise the streaming body extractor.
BEAT2: dict[str, Any] = {
    "title": "What restoring force means",
    "body": 'When you stretch a spring by x, it pulls back with F = -kx.\n\n"Restoring" means'
    " it points home: é, ∑, \U0001f600 and a backslash \\ survive.",
    "key_points": ["F = -kx", "The force points back to equilibrium"],
    "narration": "When you stretch a spring, it pulls back.",
}

MakeProvider = Callable[..., AnthropicProvider]


@pytest.fixture
async def make_anthropic(fake_anthropic: FakeAnthropic) -> AsyncIterator[MakeProvider]:
    """Builds providers pointed at the fake; closes them after the test."""
    made: list[AnthropicProvider] = []

    def build(**overrides: Any) -> AnthropicProvider:
        settings: dict[str, Any] = {
            "kind": "anthropic",
            "api_key": "sk-test",
            "base_url": fake_anthropic.base_url,
            "max_retries": 0,  # failures surface at once; SDK retry has its own test
            "timeout_s": 5.0,
            **overrides,
        }
        provider = make_provider(ProviderConfig(**settings))
        assert isinstance(provider, AnthropicProvider)
        made.append(provider)
        return provider

    yield build
    for provider in made:
        await provider.aclose()


class Deltas:
    def __init__(self) -> None:
        self.received: list[str] = []

    async def __call__(self, delta: str) -> None:
        self.received.append(delta)


async def test_plan_is_one_fast_non_streaming_call_with_usage_and_cost(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    fake_anthropic.script(TextReply(PLAN_JSON, input_tokens=1200, output_tokens=800))
    result = await make_anthropic().plan(HOOKE)

    plan, beat1 = result.value
    assert plan == PLAN
    assert beat1 == offline.build_beat(PLAN, 1, HOOKE)
    (request,) = fake_anthropic.requests
    assert (request.model, request.stream, request.task) == ("claude-haiku-4-5", False, "plan")
    assert request.system == prompts.PLAN_SYSTEM
    # SDK 2.x sends the API key as a bearer token.
    assert request.headers["authorization"] == "Bearer sk-test"
    assert "anthropic-version" in request.headers
    (run,) = result.runs
    assert (run.model, run.purpose, run.status, run.error_code) == ("haiku-4-5", "plan", "ok", None)
    assert (run.prompt_tokens, run.completion_tokens) == (1200, 800)
    assert run.cost_usd == Decimal("0.00520")  # 1200 × $1/M + 800 × $5/M
    assert run.latency_ms >= 0


async def test_unscripted_plan_gets_a_valid_default(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    result = await make_anthropic().plan(HOOKE)
    assert result.value[0] == PLAN
    assert result.runs[0].prompt_tokens > 0


async def test_beat_streams_body_deltas_in_order_and_records_usage(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    fake_anthropic.script(
        TextReply(json.dumps(BEAT2), input_tokens=900, output_tokens=400, chunk_chars=3)
    )
    deltas = Deltas()
    result = await make_anthropic().beat(PLAN, 2, HOOKE, deltas)

    assert result.value.content_json["body"] == BEAT2["body"]
    assert result.value.narration_text == BEAT2["narration"]
    assert len(deltas.received) > 10  # it streamed, in pieces
    assert "".join(deltas.received) == BEAT2["body"]  # in order, decoded, nothing but the body
    (request,) = fake_anthropic.requests
    assert (request.model, request.stream, request.task) == ("claude-sonnet-4-6", True, "beat")
    (run,) = result.runs
    assert (run.model, run.purpose, run.status) == ("sonnet-4-6", "beat", "ok")
    assert (run.prompt_tokens, run.completion_tokens) == (900, 400)
    assert run.cost_usd == Decimal("0.00870")  # 900 × $3/M + 400 × $15/M


@pytest.mark.parametrize(
    ("tier", "model_id", "model"),
    [
        (Tier.FAST, "claude-haiku-4-5", "haiku-4-5"),
        (Tier.STREAMING, "claude-sonnet-4-6", "sonnet-4-6"),
        (Tier.DEEP, "claude-opus-4-7", "opus-4-7"),
    ],
)
async def test_each_tier_sends_its_model_id(
    fake_anthropic: FakeAnthropic,
    make_anthropic: MakeProvider,
    tier: Tier,
    model_id: str,
    model: str,
) -> None:
    result = await make_anthropic().beat(PLAN, 3, HOOKE, Deltas(), tier)
    assert [r.model for r in fake_anthropic.requests] == [model_id]
    assert result.runs[0].model == model
    assert result.value == offline.build_beat(PLAN, 3, HOOKE)


async def test_configured_model_ids_are_used(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    provider = make_anthropic(model_fast="claude-haiku-4-5-20251001", model_deep="claude-next-9")
    plan_run = (await provider.plan(HOOKE)).runs[0]
    deep_run = (await provider.beat(PLAN, 2, HOOKE, Deltas(), Tier.DEEP)).runs[0]
    assert [r.model for r in fake_anthropic.requests] == [
        "claude-haiku-4-5-20251001",
        "claude-next-9",
    ]
    assert plan_run.model == "haiku-4-5"
    assert plan_run.cost_usd > 0
    # An id the price table does not know keeps its name and costs 0.
    assert (deep_run.model, deep_run.cost_usd) == ("claude-next-9", Decimal("0.00000"))


async def test_invalid_json_is_repaired_once(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    fake_anthropic.script(
        TextReply("Sure! Here is your plan: {beats: oops", input_tokens=100, output_tokens=10),
        TextReply(PLAN_JSON, input_tokens=150, output_tokens=700),
    )
    result = await make_anthropic().plan(HOOKE)

    assert result.value[0] == PLAN
    first, second = result.runs
    assert (first.status, first.error_code, first.prompt_tokens) == ("error", "invalid_output", 100)
    assert (second.status, second.error_code, second.prompt_tokens) == ("ok", None, 150)
    _, repair = fake_anthropic.requests
    assert [m["role"] for m in repair.messages] == ["user", "assistant", "user"]
    assert repair.messages[1]["content"] == "Sure! Here is your plan: {beats: oops"
    assert "not JSON" in repair.messages[2]["content"]
    assert repair.model == "claude-haiku-4-5"


async def test_wrong_shape_twice_raises_invalid_output_with_both_runs(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    bad_plan = json.loads(PLAN_JSON)
    bad_plan["beats"] = bad_plan["beats"][:2]  # fewer than 3 beats
    fake_anthropic.script(TextReply(json.dumps(bad_plan)), TextReply("```json\n{}\n```"))
    with pytest.raises(InvalidOutput) as caught:
        await make_anthropic().plan(HOOKE)

    runs = caught.value.runs
    assert [(r.status, r.error_code) for r in runs] == [("error", "invalid_output")] * 2
    assert "3 to 12 beats" in fake_anthropic.requests[1].messages[2]["content"]
    assert len(fake_anthropic.requests) == 2


async def test_invalid_streamed_beat_is_repaired_without_streaming(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    truncated = json.dumps(BEAT2)[:60]
    fake_anthropic.script(
        TextReply(truncated, stop_reason="max_tokens"), TextReply(json.dumps(BEAT2))
    )
    deltas = Deltas()
    result = await make_anthropic().beat(PLAN, 2, HOOKE, deltas)

    assert result.value.content_json["body"] == BEAT2["body"]
    assert [r.stream for r in fake_anthropic.requests] == [True, False]
    assert [r.status for r in result.runs] == ["error", "ok"]
    # The preview streamed before the repair is a prefix of the first attempt's body.
    assert BEAT2["body"].startswith("".join(deltas.received))


async def test_rate_limit_maps_retry_after(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    fake_anthropic.script(rate_limited(retry_after_s=3))
    with pytest.raises(RateLimited) as caught:
        await make_anthropic().plan(HOOKE)

    assert caught.value.retry_after_ms == 3000
    (run,) = caught.value.runs
    assert (run.model, run.status, run.error_code) == (
        "haiku-4-5",
        "rate_limited",
        "rate_limit_error",
    )
    assert (run.prompt_tokens, run.completion_tokens, run.cost_usd) == (0, 0, Decimal("0.00000"))


@pytest.mark.parametrize(
    ("headers", "retry_after_ms"),
    [((("retry-after-ms", "1500"),), 1500), ((), 1000), ((("retry-after", "soon"),), 1000)],
)
async def test_rate_limit_retry_after_variants(
    fake_anthropic: FakeAnthropic,
    make_anthropic: MakeProvider,
    headers: tuple[tuple[str, str], ...],
    retry_after_ms: int,
) -> None:
    fake_anthropic.script(ErrorReply(429, "rate_limit_error", "slow down", headers=headers))
    with pytest.raises(RateLimited) as caught:
        await make_anthropic().moderate("Hooke's law", "input")
    assert caught.value.retry_after_ms == retry_after_ms


@pytest.mark.parametrize("reply", [overloaded(), server_error()], ids=["529", "500"])
async def test_overload_and_server_errors_are_model_unavailable(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider, reply: ErrorReply
) -> None:
    fake_anthropic.script(reply)
    with pytest.raises(ModelUnavailable) as caught:
        await make_anthropic().beat(PLAN, 2, HOOKE, Deltas())

    (run,) = caught.value.runs
    assert (run.model, run.status, run.error_code) == ("sonnet-4-6", "error", reply.error_type)


async def test_mid_stream_overloaded_error_is_model_unavailable(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    fake_anthropic.script(
        StreamErrorReply(deltas=('{"title": "T", "body": "Half a ', "sentence"), input_tokens=321)
    )
    deltas = Deltas()
    with pytest.raises(ModelUnavailable) as caught:
        await make_anthropic().beat(PLAN, 2, HOOKE, deltas)

    assert "".join(deltas.received) == "Half a sentence"  # what arrived before the error
    (run,) = caught.value.runs
    assert (run.status, run.error_code, run.prompt_tokens) == ("error", "overloaded_error", 321)
    assert len(fake_anthropic.requests) == 1  # the SDK does not retry a failed stream


async def test_sdk_retries_an_overload_within_one_run(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    # retry-after-ms keeps the SDK's backoff short; the real API omits it on 529.
    fake_anthropic.script(
        ErrorReply(529, "overloaded_error", "Overloaded", (("retry-after-ms", "1"),))
    )
    result = await make_anthropic(max_retries=1).hello()

    assert result.value == "Hello! This is the fake Messages API."
    assert len(fake_anthropic.requests) == 2
    assert [(r.purpose, r.status) for r in result.runs] == [("hello", "ok")]


async def test_timeout_is_model_unavailable(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    fake_anthropic.script(TextReply("late", delay_s=2.0))
    with pytest.raises(ModelUnavailable) as caught:
        await make_anthropic(timeout_s=0.2).hello()
    (run,) = caught.value.runs
    assert (run.status, run.error_code) == ("timeout", "timeout")


async def test_connection_error_is_model_unavailable(make_anthropic: MakeProvider) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ModelUnavailable) as caught:
        await make_anthropic(base_url=f"http://127.0.0.1:{port}").hello()
    (run,) = caught.value.runs
    assert (run.status, run.error_code) == ("error", "connection_error")


async def test_bad_request_is_a_plain_provider_error(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    fake_anthropic.script(ErrorReply(400, "invalid_request_error", "max_tokens: too large"))
    with pytest.raises(ProviderError) as caught:
        await make_anthropic().hello()
    assert type(caught.value) is ProviderError
    assert caught.value.runs[0].error_code == "invalid_request_error"


async def test_refusal_is_invalid_output_without_repair(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    fake_anthropic.script(TextReply("", stop_reason="refusal", output_tokens=0))
    with pytest.raises(InvalidOutput) as caught:
        await make_anthropic().plan(HOOKE)
    assert [(r.status, r.error_code) for r in caught.value.runs] == [("refused", "refusal")]
    assert len(fake_anthropic.requests) == 1


async def test_moderation_verdict_is_parsed(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    fake_anthropic.script(TextReply('{"allowed": false, "category": "doxxing"}'))
    provider = make_anthropic()
    refused = await provider.moderate("find where my teacher lives", "input")
    allowed = await provider.moderate("Hooke's law", "output")  # unscripted: the default

    assert refused.value == Verdict(allowed=False, category="doxxing")
    assert allowed.value == Verdict(allowed=True, category=None)
    first, second = fake_anthropic.requests
    assert (first.model, first.stream, first.max_tokens) == ("claude-haiku-4-5", False, 200)
    assert json.loads(second.messages[0]["content"]) == {
        "task": "moderation",
        "stage": "output",
        "text": "Hooke's law",
    }
    assert [r.purpose for r in refused.runs + allowed.runs] == ["moderation", "moderation"]


@pytest.mark.parametrize(
    "reply",
    ['{"allowed": false, "category": "rudeness"}', '{"allowed": true, "category": "csam"}', "yes"],
)
async def test_moderation_rejects_malformed_verdicts(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider, reply: str
) -> None:
    fake_anthropic.script(TextReply(reply), TextReply(reply))
    with pytest.raises(InvalidOutput):
        await make_anthropic().moderate("anything", "input")


async def test_answer_and_hello_are_fast_tier_text(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    provider = make_anthropic()
    answer = await provider.answer("Why is the sign negative?", PLAN, 2, HOOKE)
    hello = await provider.hello()

    assert "Why is the sign negative?" in answer.value  # the default echoes the question
    assert hello.value
    assert [r.model for r in fake_anthropic.requests] == ["claude-haiku-4-5"] * 2
    assert fake_anthropic.requests[0].task == "ask"
    assert [r.purpose for r in answer.runs + hello.runs] == ["ask", "hello"]


async def test_empty_answer_is_invalid_output(
    fake_anthropic: FakeAnthropic, make_anthropic: MakeProvider
) -> None:
    fake_anthropic.script(TextReply("   "))
    with pytest.raises(InvalidOutput) as caught:
        await make_anthropic().hello()
    assert caught.value.runs[0].error_code == "invalid_output"


async def test_aclose_is_idempotent_and_the_provider_reopens(
    make_anthropic: MakeProvider,
) -> None:
    provider = make_anthropic()
    await provider.hello()
    await provider.aclose()
    await provider.aclose()
    assert (await provider.hello()).value


# ---- pure parts: prices and the streaming body extractor ----------------------------------


@pytest.mark.parametrize(
    ("model_id", "name"),
    [
        ("claude-haiku-4-5", "haiku-4-5"),
        ("claude-haiku-4-5-20251001", "haiku-4-5"),
        ("claude-sonnet-4-6", "sonnet-4-6"),
        ("claude-opus-4-7", "opus-4-7"),
        ("claude-mystery-1", "claude-mystery-1"),
    ],
)
def test_contract_model_names(model_id: str, name: str) -> None:
    assert contract_model_name(model_id) == name


def test_costs_are_quantized_decimals() -> None:
    assert cost_usd("opus-4-7", 1_000_000, 1_000_000) == Decimal("30.00000")
    assert cost_usd("haiku-4-5", 3, 1) == Decimal("0.00001")  # 8e-6 rounds to the quantum
    assert cost_usd("unknown", 10**9, 10**9) == Decimal("0.00000")


@pytest.mark.parametrize("chunk", [1, 2, 7, 10_000])
def test_body_extractor_decodes_any_chunking(chunk: int) -> None:
    beat = {"title": 'A "body": trap', "key_points": ["x"], **BEAT2, "narration": "n"}
    for text in (json.dumps(beat), json.dumps(beat, ensure_ascii=False, indent=2)):
        extractor = prompts.BodyDeltaExtractor()
        out = "".join(extractor.feed(text[i : i + chunk]) for i in range(0, len(text), chunk))
        assert out == BEAT2["body"]


def test_body_extractor_ignores_nested_body_keys() -> None:
    text = json.dumps({"problem": {"body": "no"}, "title": "t", "body": "yes"})
    assert prompts.BodyDeltaExtractor().feed(text) == "yes"


def test_plan_for_every_kind_round_trips_through_the_parser() -> None:
    plan: Plan = offline.build_plan(HOOKE)
    for beat in plan.beats:
        content = offline.build_beat(plan, beat.ord, HOOKE)
        assert prompts.parse_beat(json.dumps(prompts.beat_to_json(content)), beat.kind) == content
