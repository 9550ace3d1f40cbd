"""GET /v1/lesson/{id}/stream: the lesson's log as Server-Sent Events (contracts §4).

The handler (commands/handlers/lessons.py `open_stream`) checks the caller, locks the plan,
and hands over a subscription already primed with the catch-up and a StreamView that says
what each log event becomes (commands/stream_view.py). This response writes it out:

* `retry:` first, then each frame; `id:` lines carry `{lesson_id}-evt-{seq:05d}`, heartbeats
  none, so they never move the client's cursor.
* `lesson_complete` ends the stream, as does a final `error`.
* A connection holds no database connection while it streams: it waits on the process's
  hub. A reader that stops reading is dropped after `sse_send_timeout_s`; a disconnect
  (`http.disconnect`) ends it at once.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import structlog
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from commands.stream_view import HEARTBEAT, Frame, StreamView
from eventstore.hub import Subscription
from eventstore.settings import Settings
from eventstore.store import StoredEvent

log = structlog.get_logger(__name__)


def encode(frame: Frame) -> bytes:
    head = f"id: {frame.id}\nevent: {frame.name}\n" if frame.id else f"event: {frame.name}\n"
    return head.encode() + b"data: " + orjson.dumps(frame.data) + b"\n\n"


class LessonStream(Response):
    """The SSE response: catch-up, then live events, heartbeats, and a clean stop."""

    media_type = "text/event-stream"

    def __init__(self, subscription: Subscription, view: StreamView, settings: Settings) -> None:
        # Not Response.__init__: with no body it would declare Content-Length: 0.
        self.status_code = 200
        self.background = None
        # no-store: the stream carries the student's own lesson; no cache may keep a copy.
        self.init_headers({"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self.subscription = subscription
        self.view = view
        self.heartbeat_s = settings.sse_heartbeat_s
        self.send_timeout_s = settings.sse_send_timeout_s
        self.retry_ms = settings.sse_retry_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(self._watch_disconnect(receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watch):
                task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
            await self.subscription.close()  # also when the pump was cancelled unstarted
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
            # `retry:` goes out with the catch-up when there is one: one write, not two (in a
            # reconnect storm every message's trip through the middlewares and h11 counts).
            pending = f"retry: {self.retry_ms}\n\n".encode()
            batch = await self.subscription.next_batch(timeout=0)
            while True:
                if not batch and not pending:
                    beat = {"ts": int(time.time() * 1000)}
                    await self._send(send, encode(Frame(HEARTBEAT, beat)))
                frames, end = self._render(batch)
                if pending + frames:
                    await self._send(send, pending + frames)
                    pending = b""
                if end:
                    await self._send(send, b"", more=False)
                    return
                batch = await self.subscription.next_batch(timeout=self.heartbeat_s)
        except TimeoutError:
            # The reader stopped reading; drop it rather than hold its buffers.
            log.info("sse reader too slow; dropped", lesson_id=self.view.lesson_id)

    def _render(self, batch: list[StoredEvent]) -> tuple[bytes, bool]:
        """The frames of `batch`, and whether the stream ends with them."""
        frames: list[bytes] = []
        for e in batch:
            frame, end = self.view.render(e)
            if frame is not None:
                frames.append(encode(frame))
            if end:
                return b"".join(frames), True
        return b"".join(frames), False
