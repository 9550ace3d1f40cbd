"""A fake Anthropic Messages API: a real HTTP server on 127.0.0.1 that the official SDK talks to.

The SDK (2.x) sends requests through ``httpx2``, which transport mocks such as respx cannot
intercept, so tests point ``ProviderConfig.base_url`` at this server instead. It speaks the
wire format of ``POST /v1/messages``: a JSON message, or with ``"stream": true`` the SSE
sequence ``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``
(``text_delta``) …, ``content_block_stop``, ``message_delta`` (cumulative usage),
``message_stop``; errors as ``{"type": "error", "error": {"type", "message"}}``.

Tests script replies in order with :meth:`FakeAnthropic.script`; when the script is empty
the server answers with a valid reply derived from the request (the offline tutor's
content for the task named in the first user message), so flow tests can run unscripted.
Every request is recorded (:attr:`FakeAnthropic.requests`).

Registered as a pytest plugin from ``tests/conftest.py``; the ``fake_anthropic`` fixture
gives a reset server per test (the server itself starts once per session).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from commands.providers import (
    Adjustment,
    BeatBrief,
    Drawing,
    LessonBrief,
    PlanRequest,
    media,
    offline,
    prompts,
)
from tests.live import serve

__all__ = [
    "ErrorReply",
    "FakeAnthropic",
    "RecordedRequest",
    "StreamErrorReply",
    "TextReply",
    "fake_anthropic",
    "image_blocks",
    "overloaded",
    "rate_limited",
    "server_error",
]


@dataclass(frozen=True)
class TextReply:
    """A successful reply, streamed in ``chunk_chars`` pieces when the request streams."""

    text: str
    input_tokens: int | None = None  # None: counted from the request
    output_tokens: int | None = None  # None: counted from ``text``
    stop_reason: str = "end_turn"
    chunk_chars: int = 5
    delay_s: float = 0.0  # the server waits this long before answering (timeout tests)


@dataclass(frozen=True)
class ErrorReply:
    """An HTTP error before any body, as the API sends for 429, 529, 500 …"""

    status: int
    error_type: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class StreamErrorReply:
    """A 200 stream that sends ``deltas`` and then an ``event: error`` (no message_stop)."""

    deltas: tuple[str, ...]
    error_type: str = "overloaded_error"
    message: str = "Overloaded"
    input_tokens: int = 10


Reply = TextReply | ErrorReply | StreamErrorReply


def rate_limited(retry_after_s: int = 2) -> ErrorReply:
    return ErrorReply(
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit",
        headers=(("retry-after", str(retry_after_s)),),
    )


def overloaded() -> ErrorReply:
    return ErrorReply(529, "overloaded_error", "Overloaded")


def server_error() -> ErrorReply:
    return ErrorReply(500, "api_error", "Internal server error")


@dataclass(frozen=True)
class RecordedRequest:
    model: str
    stream: bool
    system: str
    messages: list[dict[str, Any]]
    max_tokens: int
    headers: dict[str, str]
    body: dict[str, Any] = field(repr=False)

    @property
    def task(self) -> str | None:
        """The ``task`` of the first user message (plan | beat | moderation | ask), if any."""
        payload = _first_user_json(self.messages)
        task = payload.get("task") if payload else None
        return task if isinstance(task, str) else None


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


def _first_user_json(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    for message in messages:
        if message.get("role") == "user":
            try:
                value = json.loads(_content_text(message.get("content")))
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def _words(text: str) -> int:
    return len(text.split())


def default_reply_text(request: RecordedRequest) -> str:
    """A valid reply for the request's task, from the offline tutor's deterministic content."""
    payload = _first_user_json(request.messages) or {}
    task = payload.get("task")
    if task in {"plan", "beat", "ask", "grade", "revise", "whiteboard"}:
        intent = payload.get("intent")
        plan_request = PlanRequest(
            subject=str(payload.get("subject", "")),
            topic=str(payload.get("topic", "")),
            level=str(payload.get("level", "")),
            intent=intent if isinstance(intent, dict) else {},
        )
        if task == "plan":
            plan = offline.build_plan(plan_request)
            beat1 = offline.build_beat(plan, 1, plan_request)
            return json.dumps(prompts.plan_to_json(plan, beat1))
        if task == "grade":
            problem = payload.get("problem")
            answer = str(payload.get("student_answer", ""))
            grade = offline.build_grade(problem if isinstance(problem, dict) else {}, answer)
            return json.dumps(prompts.grade_to_json(grade))
        plan = prompts.validate_plan(payload["plan"])
        if task == "revise":
            wanted = payload.get("adjustment")
            wanted = wanted if isinstance(wanted, dict) else {}
            adjustment = Adjustment(
                level=str(wanted.get("level", "")),
                direction=wanted.get("direction"),
                axes=tuple(wanted.get("axes") or ()),
                feedback=wanted.get("feedback"),
                current_ord=int(payload.get("current_ord", 0)),
            )
            revised = offline.build_revised_plan(plan, adjustment)
            return json.dumps(prompts.plan_to_wire(revised))
        if task == "whiteboard":
            images = image_blocks(request)
            data = base64.b64decode(images[0]["source"]["data"]) if images else b""
            media_type = images[0]["source"]["media_type"] if images else "image/png"
            drawing = Drawing(data, str(media_type))
            note = str(payload.get("note", ""))
            return offline.build_drawing_comment(drawing, note, plan, int(payload["ord"]))
        ord_ = int(payload["ord"])
        if task == "beat":
            return json.dumps(prompts.beat_to_json(offline.build_beat(plan, ord_, plan_request)))
        return offline.build_answer(str(payload.get("question", "")), plan, ord_, plan_request)
    if task in {"diagram", "simulation", "makeme"}:
        return media_reply_text(task, payload)
    if task == "moderation":
        verdict = offline.classify(str(payload.get("text", "")))
        return json.dumps({"allowed": verdict.allowed, "category": verdict.category})
    return "Hello! This is the fake Messages API."


def image_blocks(request: RecordedRequest) -> list[dict[str, Any]]:
    """The image content blocks of the request's user messages, as sent."""
    return [
        block
        for message in request.messages
        if message.get("role") == "user" and isinstance(message.get("content"), list)
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == "image"
    ]


def _brief(payload: dict[str, Any], beat: dict[str, Any]) -> BeatBrief:
    return BeatBrief(
        subject=str(payload.get("subject", "")),
        topic=str(payload.get("topic", "")),
        level=str(payload.get("level", "")),
        ord=int(beat.get("ord", 1)),
        kind=str(beat.get("kind", "concept")),
        title=str(beat.get("title", "")),
        content_json=dict(beat.get("content") or {}),
        narration_text=str(beat.get("narration", "")),
    )


def media_reply_text(task: str, payload: dict[str, Any]) -> str:
    """The offline tutor's diagram, simulation spec or make-me output for the request."""
    if task == "makeme":
        beats = tuple(_brief(payload, b) for b in payload.get("beats", []))
        lesson = LessonBrief(
            subject=str(payload.get("subject", "")),
            topic=str(payload.get("topic", "")),
            level=str(payload.get("level", "")),
            beats=beats,
        )
        return json.dumps(media.build_makeme(str(payload.get("output")), lesson))
    beat = _brief(payload, payload.get("beat") or {})
    request = str(payload.get("request", ""))
    if task == "diagram":
        return media.build_diagram(beat, request)
    return json.dumps(media.build_simulation(beat, request))


def is_moderation(request: RecordedRequest) -> bool:
    return request.system == prompts.MODERATION_SYSTEM


class FakeAnthropic:
    """The scriptable server state plus its Starlette app; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._script: deque[Reply] = deque()
        self._teaching_script: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self.base_url = ""
        self.app = Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])

    # ---- the test-facing API -----------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies, consumed one per request in order."""
        with self._lock:
            self._script.extend(replies)

    def script_teaching(self, *replies: Reply) -> None:
        """Queue replies for teaching calls only (plan, beats, answers), never moderation.

        The guardrails screen every input with a moderation call first; a test about the
        lesson flow scripts the lesson's calls without having to count those.
        """
        with self._lock:
            self._teaching_script.extend(replies)

    @property
    def teaching_requests(self) -> list[RecordedRequest]:
        """Requests other than moderation verdicts."""
        return [r for r in self.requests if not is_moderation(r)]

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def unused_replies(self) -> int:
        with self._lock:
            return len(self._script)

    def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> list[RecordedRequest]:
        """Block until ``count`` requests have arrived (or fail after ``timeout_s``)."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout_s):
                raise TimeoutError(f"expected {count} requests, got {len(self._requests)}")
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self._teaching_script.clear()
            self._requests.clear()

    # ---- the server side ---------------------------------------------------------------

    async def _messages(self, request: Request) -> Response:
        body = await request.json()
        recorded = RecordedRequest(
            model=str(body.get("model", "")),
            stream=bool(body.get("stream", False)),
            system=_content_text(body.get("system", "")),
            messages=list(body.get("messages", [])),
            max_tokens=int(body.get("max_tokens", 0)),
            headers=dict(request.headers),
            body=body,
        )
        with self._lock:
            if self._teaching_script and not is_moderation(recorded):
                reply: Reply | None = self._teaching_script.popleft()
            else:
                reply = self._script.popleft() if self._script else None
            self._requests.append(recorded)
            self._lock.notify_all()
        if reply is None:
            reply = TextReply(default_reply_text(recorded))
        if isinstance(reply, TextReply) and reply.delay_s:
            await asyncio.sleep(reply.delay_s)  # simulates a slow model, not a test wait
        message_id = f"msg_fake{next(self._ids):06d}"
        headers = {"request-id": f"req_fake{message_id[8:]}"}
        if isinstance(reply, ErrorReply):
            return JSONResponse(
                {
                    "type": "error",
                    "error": {"type": reply.error_type, "message": reply.message},
                    "request_id": headers["request-id"],
                },
                status_code=reply.status,
                headers={**headers, **dict(reply.headers)},
            )
        if not recorded.stream:
            if isinstance(reply, StreamErrorReply):
                # Without streaming the same outage is a plain HTTP error.
                return self._messages_error_for(reply, headers)
            return JSONResponse(self._message_json(reply, recorded, message_id), headers=headers)
        return StreamingResponse(
            self._sse(reply, recorded, message_id),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )

    @staticmethod
    def _messages_error_for(reply: StreamErrorReply, headers: dict[str, str]) -> Response:
        status = 529 if reply.error_type == "overloaded_error" else 500
        return JSONResponse(
            {"type": "error", "error": {"type": reply.error_type, "message": reply.message}},
            status_code=status,
            headers=headers,
        )

    @staticmethod
    def _usage(reply: TextReply, request: RecordedRequest) -> tuple[int, int]:
        input_tokens = reply.input_tokens
        if input_tokens is None:
            prompt = request.system + "".join(
                _content_text(m.get("content")) for m in request.messages
            )
            input_tokens = _words(prompt)
        output_tokens = (
            reply.output_tokens if reply.output_tokens is not None else _words(reply.text)
        )
        return input_tokens, output_tokens

    def _message_json(
        self, reply: TextReply, request: RecordedRequest, message_id: str
    ) -> dict[str, Any]:
        input_tokens, output_tokens = self._usage(reply, request)
        return {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": [{"type": "text", "text": reply.text}],
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }

    async def _sse(
        self, reply: TextReply | StreamErrorReply, request: RecordedRequest, message_id: str
    ) -> AsyncIterator[bytes]:
        if isinstance(reply, TextReply):
            input_tokens, output_tokens = self._usage(reply, request)
            step = max(reply.chunk_chars, 1)
            deltas = [reply.text[i : i + step] for i in range(0, len(reply.text), step)]
        else:
            input_tokens, output_tokens = reply.input_tokens, 0
            deltas = list(reply.deltas)
        yield _event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": request.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                },
            },
        )
        yield _event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        yield _event("ping", {"type": "ping"})
        for delta in deltas:
            yield _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": delta},
                },
            )
        if isinstance(reply, StreamErrorReply):
            yield _event(
                "error",
                {"type": "error", "error": {"type": reply.error_type, "message": reply.message}},
            )
            return
        yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
        yield _event("message_stop", {"type": "message_stop"})


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


@pytest.fixture(scope="session")
def fake_anthropic_server() -> Iterator[FakeAnthropic]:
    """One fake Messages API server on 127.0.0.1 for the whole test session."""
    fake = FakeAnthropic()
    with serve(fake.app) as base_url:
        fake.base_url = base_url
        yield fake


@pytest.fixture
def fake_anthropic(fake_anthropic_server: FakeAnthropic) -> Iterator[FakeAnthropic]:
    """The fake Messages API, with an empty script and no recorded requests."""
    fake = fake_anthropic_server
    fake.reset()
    yield fake
    fake.reset()
