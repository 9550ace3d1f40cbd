"""Every error answer of the API (4xx, 5xx) becomes the catalog's `error` event (contracts §12).

An ASGI middleware: it watches the response go by, keeps the body of an error answer (the
small JSON envelope), and once the response is sent appends `error {code, message,
recoverable, trace_id}` as a session-level event in a background task, so the answer is
never held back by the write.

Under load the events are sampled: a token bucket per process admits at most `per_second`
error events per second (bursts up to the same number); the rest are counted, not written,
and the count is logged when the bucket admits again (`error events sampled out`). A flood
of 401s or 429s therefore costs the log a bounded write rate, and the log line says how
much of it was left out.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventstore.errors import StoreError
from eventstore.events import ErrorRaised
from eventstore.store import EventMeta, EventStore, NewEvent

log = structlog.get_logger("omnitutor.http")
MAX_ENVELOPE = 16 * 1024


class Sampler:
    """A token bucket: `allow()` is True at most `rate` times a second (bursts of `rate`)."""

    def __init__(self, rate: float, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.tokens = rate
        self.last = clock()
        self.dropped = 0  # since the last admitted event
        self.dropped_total = 0

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.dropped += 1
        self.dropped_total += 1
        return False


class ErrorEvents:
    def __init__(self, app: ASGIApp, per_second: float = 50) -> None:
        self.app = app
        self.sampler = Sampler(per_second)
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        body = bytearray()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif (
                message["type"] == "http.response.body"
                and status >= 400
                and len(body) < MAX_ENVELOPE
            ):
                body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            self._record(scope, 500, b"")
            raise
        if status >= 400:
            self._record(scope, status, bytes(body))

    def _record(self, scope: Scope, status: int, body: bytes) -> None:
        if not self.sampler.allow():
            return
        if self.sampler.dropped:
            log.warning("error events sampled out", dropped=self.sampler.dropped)
            self.sampler.dropped = 0
        state = scope.get("state", {})
        trace_id = str(state.get("trace_id") or "")
        envelope = _envelope(body)
        event = ErrorRaised(
            code=str(envelope.get("code") or ("internal" if status >= 500 else "invalid_input")),
            message=str(envelope.get("message") or "")[:500],
            recoverable=bool(envelope.get("recoverable", False)),
            trace_id=trace_id,
            retry_after_ms=_int_or_none(envelope.get("retry_after_ms")),
        )
        context = structlog.contextvars.get_contextvars()
        meta = EventMeta(
            trace_id=trace_id or None,
            user_id=context.get("user_id"),
            session_id=context.get("session_id"),
        )
        app = scope.get("app")
        deps = getattr(getattr(app, "state", None), "deps", None)
        if deps is None:  # before the lifespan opened the store (or in a bare test app)
            return
        task = asyncio.create_task(_append(deps.store, NewEvent.of(event, meta)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _append(store: EventStore, event: NewEvent) -> None:
    try:
        await store.append_unordered([event])
    except StoreError as e:
        log.warning("error event not recorded", error=str(e))


def _envelope(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
