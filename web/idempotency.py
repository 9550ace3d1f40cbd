"""The Idempotency-Key header (contracts §3), for every POST, as one ASGI middleware.

Mandatory on `POST /v1/plan` and `/v1/lesson/{id}/adjust|makeme|visualize|animate` (a
missing key is `invalid_input` naming the header); honoured on every other POST that sends
one. Handlers need do nothing: the middleware runs before routing, so the key is claimed
before any guardrail or model call, as the order requires (idempotency key → rate limit →
spend cap → moderation → model → moderation → append).

For a POST with a key it authenticates the session (keys are per user), buffers the body
(within OMNITUTOR_MAX_BODY_BYTES), hashes route + canonical body, and claims the key
(commands/idempotency.py):

* a repeat of a finished request gets the stored status and body byte for byte, with
  `Idempotent-Replayed: true`, and runs nothing;
* a different request under the same key, or a repeat while the first still runs, gets
  409 `conflict` (recoverable only in the second case, with `retry_after_ms`);
* otherwise the request runs with the buffered body, its answer is passed through as it is
  sent, and then stored; unless it was a server error (5xx), a recoverable refusal (the
  envelope says `recoverable: true`: over quota, model throttled) or a stream, in which
  case the claim is released so a retry with the same key runs again.

An optional key on a request without a valid session is ignored (there is no user to scope
it to, and the handler will answer for itself, as `POST /v1/session` does).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from commands import idempotency
from commands.bootstrap import Deps
from commands.errors import CommandError, ErrorCode, Internal, Unauthorized
from commands.sessions import authenticate
from eventstore.errors import DatabaseUnavailable, StoreError
from web.errors import ApiError, error_response
from web.requests import COOKIE

log = structlog.get_logger("omnitutor.idempotency")

MANDATORY = re.compile(r"^/v1/(plan|lesson/[^/]+/(adjust|makeme|visualize|animate))/?$")
REPLAYED_HEADER = "Idempotent-Replayed"


def key_required(path: str) -> bool:
    return MANDATORY.match(path) is not None


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        raw_key = request.headers.get(idempotency.HEADER)
        required = key_required(scope["path"])
        if raw_key is None and not required:
            await self.app(scope, receive, send)
            return
        trace_id = str(scope.get("state", {}).get("trace_id", ""))
        svc: Deps = scope["app"].state.deps
        try:
            key = idempotency.validate_key(raw_key)
            try:
                principal = await authenticate(
                    svc.pool,
                    request.cookies.get(COOKIE),
                    days=svc.settings.session_days,
                    idle_min=svc.settings.session_idle_min,
                )
            except Unauthorized:
                if required:
                    raise
                await self.app(scope, receive, send)
                return
            scope.setdefault("state", {})["principal"] = principal  # routes reuse it
            structlog.contextvars.bind_contextvars(
                user_id=principal.user_id, session_id=principal.session_id
            )
            body = await _read_body(receive, svc.settings.max_body_bytes)
            route = f"POST {scope['path']}"
            outcome = await idempotency.claim(
                svc.pool, principal.user_id, key, idempotency.request_hash(route, body)
            )
        except CommandError as e:
            await error_response(e, trace_id)(scope, receive, send)
            return
        except StoreError as e:
            error = Internal(
                "The tutor's memory is unavailable. Try again in a moment.",
                recoverable=isinstance(e, DatabaseUnavailable),
            )
            await error_response(error, trace_id)(scope, receive, send)
            return

        if isinstance(outcome, idempotency.StoredResponse):
            structlog.contextvars.bind_contextvars(idempotency="replayed")
            await _replay(outcome, send)
            return
        structlog.contextvars.bind_contextvars(idempotency="claimed")
        await self._run(outcome, body, svc, scope, receive, send)

    async def _run(
        self,
        claim: idempotency.Claim,
        body: bytes,
        svc: Deps,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        delivered = False

        async def replay_body() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status: int | None = None
        media_type = "application/json"
        chunks: list[bytes] = []
        streaming = False

        async def capture(message: Message) -> None:
            nonlocal status, media_type, streaming
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-type":
                        media_type = value.decode("latin-1")
                streaming = media_type.startswith("text/event-stream")
            elif message["type"] == "http.response.body" and not streaming:
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_body, capture)
        except Exception:
            await self._release(svc, claim)
            raise
        answer = b"".join(chunks)
        if status is None or streaming or status >= 500 or _recoverable(answer):
            await self._release(svc, claim)
            return
        stored = idempotency.StoredResponse(status, answer, media_type)
        try:
            await idempotency.complete(svc.pool, claim, stored)
        except StoreError as e:
            # The answer is already sent; the key stays in flight until its lease ends.
            log.error("idempotency: could not store the answer", error=str(e))

    async def _release(self, svc: Deps, claim: idempotency.Claim) -> None:
        try:
            await idempotency.release(svc.pool, claim)
        except StoreError as e:
            log.error("idempotency: could not release the key", error=str(e))


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(ErrorCode.INVALID_INPUT, "the client went away mid-body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, f"request body is over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _recoverable(body: bytes) -> bool:
    """True for an error envelope that tells the client to retry (the key must be free)."""
    try:
        value: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and value.get("ok") is False and value.get("recoverable") is True


async def _replay(stored: idempotency.StoredResponse, send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": stored.status_code,
            "headers": [
                (b"content-type", stored.media_type.encode("latin-1")),
                (b"content-length", str(len(stored.body)).encode()),
                (REPLAYED_HEADER.lower().encode(), b"true"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": stored.body, "more_body": False})
