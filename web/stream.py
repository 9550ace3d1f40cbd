"""GET /v1/lesson/{id}/stream: the lesson's log as Server-Sent Events (contracts §4).

The stream is a read of the log, so resuming is "events after seq n":

* `id: {lesson_id}-evt-{seq:05d}` on every event: the lesson_seq of the log event it came
  from. Ids increase but skip numbers, because not every log event is sent (model runs,
  beat.started, cache hits stay internal). Heartbeats carry no id, so they never move the
  client's cursor.
* Resume from `Last-Event-ID` (or `?last_event_id=`): the next event after it. The first
  connection starts with `plan_ready`, which is `plan.locked` (the plan as finalised when
  the stream first opened); a resumed connection whose cursor is past it does not repeat
  it, so no event is ever delivered twice.
* Catch-up understands beats: events that were already in the log when the reader
  connected are filtered so that the partials of beats already complete (their
  `beat_complete` carries the whole content) and the partials before a beat's last restart
  are skipped. Events appended after the reader connected are all sent.
* `lesson_complete` ends the stream; so does `lesson.abandoned` (sent as a final `error`,
  not recoverable) and a generation `error` (recoverable: reconnecting resumes generation).
  A reconnect already at the end of a finished lesson gets 204, which stops EventSource.

Each connection holds no database connection while it streams: it waits on the process's
hub, which reads the log once per lesson per wake-up however many readers there are. A
reader that stops reading is dropped after `sse_send_timeout_s`; a disconnect
(`http.disconnect`) ends the generator at once.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from commands.errors import InvalidInput
from commands.lessons import LessonState
from eventstore.hub import Hub
from eventstore.store import StoredEvent

log = structlog.get_logger(__name__)

_CURSOR = re.compile(r"(?P<lesson>[0-9A-Za-z]{1,64})-evt-(?P<seq>\d{1,9})")


def event_id(lesson_id: str, seq: int) -> str:
    return f"{lesson_id}-evt-{seq:05d}"


def parse_cursor(lesson_id: str, raw: str | None, field_name: str) -> int:
    """The seq a Last-Event-ID names (0 when absent); InvalidInput when malformed."""
    if raw is None or raw.strip() == "":
        return 0
    m = _CURSOR.fullmatch(raw.strip())
    if m is None:
        raise InvalidInput(field_name, f"must look like {lesson_id}-evt-00007; got {raw[:80]!r}")
    if m["lesson"] != lesson_id:
        raise InvalidInput(field_name, "names an event of another lesson")
    return int(m["seq"])


def cursor_of(request: Request, lesson_id: str) -> int:
    header = request.headers.get("last-event-id")
    if header is not None:
        return parse_cursor(lesson_id, header, "Last-Event-ID")
    return parse_cursor(lesson_id, request.query_params.get("last_event_id"), "last_event_id")


def frame(name: str, data: dict[str, Any], id: str | None = None) -> bytes:
    head = f"id: {id}\nevent: {name}\n" if id else f"event: {name}\n"
    return head.encode() + b"data: " + orjson.dumps(data) + b"\n\n"


@dataclass
class StreamView:
    """Turns log events into SSE frames for one connection (pure, no I/O).

    Built from the log as it was when the reader connected (`known`): that tells it which
    partials a catch-up can skip and which plan revision each plan_ready carries.
    """

    lesson_id: str
    connect_head: int  # the lesson's seq when the reader connected
    locked_seq: int = 0  # plan.locked: revisions before it are carried by plan_ready
    skip_partials_before: dict[int, int] = field(default_factory=dict)  # ord → seq
    plans: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (seq, plan)
    stop_on_error_after: int = 0  # an `error` at or after this seq ends the stream

    @classmethod
    def of(cls, lesson_id: str, known: Sequence[StoredEvent], state: LessonState) -> StreamView:
        skip: dict[int, int] = {}
        plans: list[tuple[int, dict[str, Any]]] = []
        last_start = 0
        for e in known:
            seq = e.lesson_seq or 0
            p = e.payload
            if e.type == "beat.completed":
                skip[p["ord"]] = seq  # every partial of a complete beat
            elif e.type == "beat.partial" and p.get("reset"):
                skip[p["ord"]] = seq  # partials before the last restart
                last_start = seq
            elif e.type == "beat.started":
                last_start = seq
            elif e.type == "plan.revised":
                plans.append((seq, p["plan"]))
        return cls(
            lesson_id=lesson_id,
            connect_head=state.version,
            locked_seq=state.locked_seq,
            skip_partials_before=skip,
            plans=plans,
            stop_on_error_after=last_start + 1,
        )

    def plan_at(self, seq: int) -> dict[str, Any]:
        current: dict[str, Any] = {}
        for at, plan in self.plans:
            if at <= seq:
                current = plan
        return current

    def render(self, e: StoredEvent) -> tuple[bytes | None, bool]:
        """(the frame to send or None, whether the stream ends after it)."""
        seq = e.lesson_seq or 0
        p = e.payload
        eid = event_id(self.lesson_id, seq)
        match e.type:
            case "plan.locked":
                plan = self.plan_at(seq)
                data = {"plan": plan, "total_beats": p["total_beats"]}
                return frame("plan_ready", data, eid), False
            case "plan.revised":
                self.plans.append((seq, p["plan"]))
                if seq < self.locked_seq:
                    return None, False
                data = {"plan": p["plan"], "total_beats": len(p["plan"].get("beats", []))}
                return frame("plan_ready", data, eid), False
            case "beat.partial":
                if seq <= self.connect_head and seq < self.skip_partials_before.get(p["ord"], 0):
                    return None, False
                data = {"ord": p["ord"], "content_delta": p["content_delta"], "status": "streaming"}
                if p.get("reset"):
                    data["reset"] = True
                return frame("beat_partial", data, eid), False
            case "beat.completed":
                data = {
                    "ord": p["ord"],
                    "content_json": p["content_json"],
                    "narration_text": p["narration_text"],
                    "audio_url": p.get("audio_url"),
                }
                return frame("beat_complete", data, eid), False
            case "audio.ready":
                data = {"beat_ord": p["beat_ord"], "audio_url": p["audio_url"]}
                return frame("audio_ready", data, eid), False
            case "lesson.completed":
                data = {"duration_ms": p["duration_ms"], "model_costs": p["model_costs"]}
                return frame("lesson_complete", data, eid), True
            case "lesson.abandoned":
                data = {
                    "code": "conflict",
                    "message": "This lesson was abandoned.",
                    "recoverable": False,
                    "trace_id": e.metadata.get("trace_id", ""),
                }
                return frame("error", data, eid), True
            case "error":
                # The contract's error vocabulary, with the trace id of the failure.
                data = {"code": p["code"], "message": p["message"], "recoverable": p["recoverable"]}
                if p.get("retry_after_ms") is not None:
                    data["retry_after_ms"] = p["retry_after_ms"]
                data["trace_id"] = p["trace_id"]
                # An old error that generation has since moved past is history, not the end;
                # a missing narration clip never ends the lesson.
                ends = seq >= self.stop_on_error_after and p.get("source") != "narration"
                return frame("error", data, eid), ends
            case _:
                return None, False


class LessonStream(Response):
    """The SSE response: catch-up, then live events, heartbeats, and a clean stop."""

    media_type = "text/event-stream"

    def __init__(
        self,
        hub: Hub,
        view: StreamView,
        after_seq: int,
        *,
        heartbeat_s: float,
        send_timeout_s: float,
        retry_ms: int,
    ) -> None:
        # Not Response.__init__: with no body it would declare Content-Length: 0.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.hub = hub
        self.view = view
        self.after_seq = after_seq
        self.heartbeat_s = heartbeat_s
        self.send_timeout_s = send_timeout_s
        self.retry_ms = retry_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(self._watch_disconnect(receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watch):
                task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
        if pump.done() and not pump.cancelled():
            error = pump.exception()
            if error is not None:
                raise error

    @staticmethod
    async def _watch_disconnect(receive: Receive) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                return

    async def _send(self, send: Send, body: bytes, more: bool = True) -> None:
        async with asyncio.timeout(self.send_timeout_s):
            await send({"type": "http.response.body", "body": body, "more_body": more})

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            await self._send(send, f"retry: {self.retry_ms}\n\n".encode())
            async with self.hub.lesson(self.view.lesson_id, self.after_seq) as sub:
                while True:
                    batch = await sub.next_batch(timeout=self.heartbeat_s)
                    if not batch:
                        beat = {"ts": int(time.time() * 1000)}
                        await self._send(send, frame("heartbeat", beat))
                        continue
                    frames: list[bytes] = []
                    end = False
                    for e in batch:
                        data, end = self.view.render(e)
                        if data is not None:
                            frames.append(data)
                        if end:
                            break
                    if frames:
                        await self._send(send, b"".join(frames))
                    if end:
                        await self._send(send, b"", more=False)
                        return
        except TimeoutError:
            # The reader stopped reading; drop it rather than hold its buffers.
            log.info("sse reader too slow; dropped", lesson_id=self.view.lesson_id)
