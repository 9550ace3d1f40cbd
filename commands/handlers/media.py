"""Generated assets on request: visualize, animate and make-me (contracts §3, §5).

One handler per use case, each ``async def handler(cmd, deps) -> Answer``:

* ``visualize`` — an SVG diagram of a ready beat, sanitised before it is stored.
* ``animate`` — a mini-simulation spec of a ready beat (commands/simulation.py).
* ``makeme`` — flashcards, notes, slides, video, quiz, summary or mindmap of a complete
  lesson; ``video`` is a narrated slide sequence (slides plus one clip per slide).

Every result is an asset cached forever (contracts §5): visualize and animate by
``sha256(beat_id + viz_request)``, where the viz request is ``"svg:"`` or ``"simulation:"``
followed by the student's words (so a diagram and a simulation of the same beat are two
objects); make-me by ``sha256(lesson_id + output_type)``. A cached answer costs no model call.
Guardrails in the contract's order: (the idempotency key, by web/) rate limit (bucket
``viz``), then on a miss the spend cap, input moderation, the model call. Beats of kind
``derivation`` use the deep tier. The lesson's log records the model runs and one
``interaction.recorded`` per request (plus ``cache.hit`` on a hit).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import structlog

from commands import providers
from commands.assets import content_hash, key_in_url
from commands.assetstore import AssetStoreError
from commands.errors import CommandError, Conflict, InvalidInput
from commands.guardrails import admit, enforce_spend_cap, screen_input, screen_output
from commands.lesson_log import load_owned
from commands.lesson_model import LessonState, run_event
from commands.messages import Animate, Caller, MakeMe, Visualize
from commands.providers import MAKEME_OUTPUTS, BeatBrief, LessonBrief, Tier
from commands.ratelimit import Bucket
from eventstore.errors import StoreError
from eventstore.events import COMPLETE, READY, CacheHit, DomainEvent, InteractionRecorded
from eventstore.ids import new_id, new_trace_id
from eventstore.store import NewEvent

if TYPE_CHECKING:  # bootstrap builds the supervisor's completion hook from this module
    from commands.bootstrap import Deps

T = TypeVar("T")
log = structlog.get_logger(__name__)
MAX_REQUEST_CHARS = 500
DEEP_KINDS = frozenset({"derivation"})


@dataclass(frozen=True)
class AssetAnswer:
    asset_id: str
    url: str
    kind: str  # svg | simulation
    spec: dict[str, Any] | None = None
    cache_hit: bool = False

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"asset_id": self.asset_id, "url": self.url, "kind": self.kind}
        if self.spec is not None:
            body["spec"] = self.spec
        return body


@dataclass(frozen=True)
class MakeMeAnswer:
    asset_id: str
    url: str
    output: str
    content: dict[str, Any]
    cache_hit: bool = False

    def json(self) -> dict[str, Any]:
        return {
            "asset_id": self.asset_id,
            "url": self.url,
            "output": self.output,
            "content": self.content,
        }


# ---- validation (pure) -------------------------------------------------------------------


def _only(body: Mapping[str, Any], allowed: set[str]) -> None:
    for key in body:
        if key not in allowed:
            raise InvalidInput(key, f"is not a field of this request (allowed: {sorted(allowed)})")


def validate_beat_request(body: Mapping[str, Any]) -> tuple[int, str]:
    """(beat_ord, request) of a visualize or animate body."""
    _only(body, {"beat_ord", "request"})
    ord = body.get("beat_ord")
    if isinstance(ord, bool) or not isinstance(ord, int) or not 1 <= ord <= 100:
        raise InvalidInput("beat_ord", "must be a whole number from 1 to 100")
    request = body.get("request", "")
    if request is None:
        request = ""
    if not isinstance(request, str):
        raise InvalidInput("request", "must be a string")
    if len(request) > MAX_REQUEST_CHARS:
        raise InvalidInput("request", f"must be at most {MAX_REQUEST_CHARS} characters")
    return ord, " ".join(request.split())


def validate_makeme(body: Mapping[str, Any]) -> str:
    _only(body, {"output"})
    output = body.get("output")
    if output not in MAKEME_OUTPUTS:
        raise InvalidInput("output", f"must be one of {', '.join(MAKEME_OUTPUTS)}")
    return str(output)


def tier_for(kind: str) -> Tier:
    """Derivations need the deep tier (contracts §1); every other asset the streaming one."""
    return Tier.DEEP if kind in DEEP_KINDS else Tier.STREAMING


def beat_brief(state: LessonState, ord: int) -> tuple[str, BeatBrief]:
    """(beat_id, brief) of a ready beat; Conflict while it is still being written."""
    beat = state.beat(ord)
    if beat.status != READY or beat.beat_id is None:
        raise Conflict(f"beat {ord} is not ready yet; ask again once it has arrived")
    brief = BeatBrief(
        subject=state.subject,
        topic=state.topic,
        level=state.level,
        ord=ord,
        kind=beat.kind,
        title=beat.title,
        content_json=dict(beat.content_json or {}),
        narration_text=beat.narration_text or "",
    )
    return beat.beat_id, brief


# ---- shared steps ------------------------------------------------------------------------


async def _before_model(
    deps: Deps, caller: Caller, lesson_id: str, texts: Mapping[str, str]
) -> None:
    """The guardrails a cache miss passes before its model call: spend cap, moderation."""
    await enforce_spend_cap(deps, caller, lesson_id=lesson_id)
    await screen_input(deps, caller, texts, lesson_id=lesson_id)


async def _call(
    deps: Deps,
    caller: Caller,
    lesson_id: str,
    beat_ord: int | None,
    call: Callable[[], Awaitable[providers.Result[T]]],
) -> tuple[T, list[DomainEvent]]:
    """The model call; its runs as events (recorded at once when it fails)."""
    try:
        result = await call()
    except providers.ProviderError as e:
        failed = [run_event(r, caller.trace_id, beat_ord=beat_ord) for r in e.runs]
        await _record(deps, caller, lesson_id, failed)
        raise providers.as_command_error(e) from e
    runs: list[DomainEvent] = [
        run_event(r, caller.trace_id, beat_ord=beat_ord) for r in result.runs
    ]
    try:
        # Output moderation (contracts §10): what the model wrote that the student will read.
        await screen_output(deps, caller, {"output": _words(result.value)}, lesson_id=lesson_id)
    except CommandError:
        await _record(deps, caller, lesson_id, runs)  # the call cost money all the same
        raise
    return result.value, runs


def _words(value: object) -> str:
    """The readable text of a model's output: an SVG's text, a spec's or object's strings."""
    if isinstance(value, str):
        return " ".join(re.sub(r"<[^>]*>", " ", value).split())
    if isinstance(value, Mapping):
        return " ".join(_words(v) for v in value.values())
    if isinstance(value, list):
        return " ".join(_words(v) for v in value)
    return ""


async def _record(
    deps: Deps, caller: Caller, lesson_id: str, events: Sequence[DomainEvent]
) -> None:
    if events:
        meta = caller.meta()
        await deps.store.append_at_end(lesson_id, [NewEvent.of(e, meta) for e in events])


def _interaction(
    type: str, payload: dict[str, Any], response: dict[str, Any], beat_ord: int | None
) -> InteractionRecorded:
    return InteractionRecorded(
        interaction_id=new_id(),
        type=type,
        payload=payload,
        response=response,
        beat_ord=beat_ord,
    )


# ---- the handlers ------------------------------------------------------------------------


async def visualize(cmd: Visualize, deps: Deps) -> AssetAnswer:
    ord, request = validate_beat_request(cmd.body)
    _, state = await load_owned(deps.store, cmd.lesson_id, cmd.caller.user_id)
    beat_id, brief = beat_brief(state, ord)
    await admit(deps, cmd.caller, Bucket.VIZ, spend=False, lesson_id=cmd.lesson_id)
    key = content_hash(beat_id, f"svg:{request}")
    asset = await deps.assets.find(key)
    hit = asset is not None
    events: list[DomainEvent] = [CacheHit(key_kind="viz")]
    if asset is None:
        await _before_model(deps, cmd.caller, cmd.lesson_id, {"request": request})
        svg, events = await _call(
            deps,
            cmd.caller,
            cmd.lesson_id,
            ord,
            lambda: deps.provider.diagram(brief, request, tier_for(brief.kind)),
        )
        asset = await deps.assets.put(key, "diagram", svg.encode(), "image/svg+xml")
    answer = AssetAnswer(asset.id, asset.url, "svg", cache_hit=hit)
    await _record(
        deps,
        cmd.caller,
        cmd.lesson_id,
        [*events, _interaction("visualize", {"request": request}, answer.json(), ord)],
    )
    return answer


async def animate(cmd: Animate, deps: Deps) -> AssetAnswer:
    ord, request = validate_beat_request(cmd.body)
    _, state = await load_owned(deps.store, cmd.lesson_id, cmd.caller.user_id)
    beat_id, brief = beat_brief(state, ord)
    await admit(deps, cmd.caller, Bucket.VIZ, spend=False, lesson_id=cmd.lesson_id)
    key = content_hash(beat_id, f"simulation:{request}")
    asset = await deps.assets.find(key)
    hit = asset is not None
    if asset is None:
        await _before_model(deps, cmd.caller, cmd.lesson_id, {"request": request})
        spec, events = await _call(
            deps,
            cmd.caller,
            cmd.lesson_id,
            ord,
            lambda: deps.provider.simulation(brief, request, tier_for(brief.kind)),
        )
        asset = await deps.assets.put(key, "simulation", orjson.dumps(spec), "application/json")
    else:
        spec = orjson.loads(await deps.assets.store.get(asset.key))
        events = [CacheHit(key_kind="viz")]
    answer = AssetAnswer(asset.id, asset.url, "simulation", spec=spec, cache_hit=hit)
    response = {"asset_id": asset.id, "url": asset.url, "kind": "simulation"}
    await _record(
        deps,
        cmd.caller,
        cmd.lesson_id,
        [*events, _interaction("animate", {"request": request}, response, ord)],
    )
    return answer


def lesson_brief(state: LessonState) -> LessonBrief:
    if state.status != COMPLETE:
        raise Conflict("make-me outputs are made from a complete lesson; finish it first")
    beats = tuple(beat_brief(state, b.ord)[1] for b in state.beats if b.status == READY)
    return LessonBrief(state.subject, state.topic, state.level, beats)


async def makeme(cmd: MakeMe, deps: Deps) -> MakeMeAnswer:
    output = validate_makeme(cmd.body)
    _, state = await load_owned(deps.store, cmd.lesson_id, cmd.caller.user_id)
    lesson = lesson_brief(state)
    await admit(deps, cmd.caller, Bucket.VIZ, spend=False, lesson_id=cmd.lesson_id)
    return await make_output(deps, cmd.caller, cmd.lesson_id, output, lesson)


async def make_output(
    deps: Deps, caller: Caller, lesson_id: str, output: str, lesson: LessonBrief
) -> MakeMeAnswer:
    """The make-me output, from the cache or made now (also the pre-order path)."""
    key = content_hash(lesson_id, output)
    asset = await deps.assets.find(key)
    if asset is not None:
        content = orjson.loads(await deps.assets.store.get(asset.key))
        answer = MakeMeAnswer(asset.id, asset.url, output, content, cache_hit=True)
        events: list[DomainEvent] = [CacheHit(key_kind="makeme")]
    else:
        await _before_model(deps, caller, lesson_id, {})
        tier = Tier.DEEP if any(b.kind in DEEP_KINDS for b in lesson.beats) else Tier.STREAMING
        content, events = await _call(
            deps,
            caller,
            lesson_id,
            None,
            lambda: deps.provider.makeme(output, lesson, tier),
        )
        if output == "video":
            content = await _narrated_slides(deps, caller, lesson_id, content)
        asset = await deps.assets.put(key, output, orjson.dumps(content), "application/json")
        answer = MakeMeAnswer(asset.id, asset.url, output, content)
    response: dict[str, object] = {"asset_id": answer.asset_id, "url": answer.url, "output": output}
    if output == "video":
        # The slides' clips (object keys), so the purge can tell this lesson still uses a
        # clip an erased student's lesson shared (docs/privacy.md): otherwise they are
        # named only inside the video's own object.
        response["clips"] = [
            key_in_url(s["audio_url"]) for s in content["slides"] if s["audio_url"]
        ]
    await _record(
        deps,
        caller,
        lesson_id,
        [*events, _interaction("makeme", {"output": output}, response, None)],
    )
    return answer


def preordered(state: LessonState) -> list[str]:
    """The make-me outputs the setup intent asked for (`advanced.outputs`), known ones only."""
    advanced = state.intent.get("advanced")
    outputs = advanced.get("outputs") if isinstance(advanced, Mapping) else None
    if not isinstance(outputs, list):
        return []
    return [o for o in dict.fromkeys(outputs) if o in MAKEME_OUTPUTS]


async def preorder(deps: Deps, state: LessonState) -> None:
    """Make the intent's pre-ordered outputs of a lesson that just completed.

    Part of the lesson the student already started, so no rate limit; the spend cap still
    applies. A failure is logged and skipped: the student can still ask for it by hand.
    """
    outputs = preordered(state)
    if not outputs:
        return
    caller = Caller(state.user_id, state.session_id, "", new_trace_id())
    lesson = lesson_brief(state)
    for output in outputs:
        try:
            await make_output(deps, caller, state.lesson_id, output, lesson)
        except (CommandError, StoreError, AssetStoreError) as e:
            log.warning("pre-ordered output not made", output=output, error=str(e))


async def _narrated_slides(
    deps: Deps, caller: Caller, lesson_id: str, content: dict[str, Any]
) -> dict[str, Any]:
    """A video is the slides with one narration clip each (null when narration is off)."""
    slides = content["slides"]
    urls = await asyncio.gather(
        *(deps.narrator.narrate(s["narration"], caller.meta(), lesson_id=lesson_id) for s in slides)
    )
    return {
        "kind": "narrated_slides",
        "slides": [{**s, "audio_url": url} for s, url in zip(slides, urls, strict=True)],
    }
