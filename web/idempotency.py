"""The Idempotency-Key header (contracts §3), for every POST, as one ASGI middleware.

Mandatory on `POST /v1/plan` and `/v1/lesson/{id}/adjust|makeme|visualize|animate` (a
missing key is `invalid_input` naming the header, and so is a key sent twice); honoured on
every other POST that sends one. Handlers need do nothing: the middleware runs before the
handler, so the key is claimed before any guardrail or model call, as the order requires
(idempotency key → rate limit → spend cap → moderation → model → moderation → append). It
claims a key only for a route that exists and accepts POST: a keyed request to an unknown
route gets the router's 404/405 and its key stays unspent.

For a POST with a key it authenticates the session (keys are per user), buffers the body
(within OMNITUTOR_MAX_BODY_BYTES), hashes route + canonical body, and claims the key
(commands/idempotency.py):

* a repeat of a finished request gets the stored status and body byte for byte, with
  `Idempotent-Replayed: true`, and runs nothing;
* a different request under the same key, or a repeat while the first still runs, gets
  409 `conflict` (recoverable only in the second case, with `retry_after_ms`);
* otherwise the request runs with the buffered body, its answer is passed through as it is
  sent, and then stored; unless it was a server error (5xx), a recoverable refusal (the
  envelope says `recoverable: true`: over quota, model throttled), a refusal before any
  work ran (REFUSED_BEFORE_WORK: validation, authentication, an unknown lesson) or a stream,
  in which case the claim is released so a retry with the same key runs again.

While the request runs, its claim's short lease is renewed (commands/idempotency.py), so a
key whose process died is free again within seconds. A handler whose work is an append
stores its answer in the append's own transaction (`answer_recorder`): a crash between the
commit and the reply then leaves the answer stored for the retry, never a second lesson.

An optional key on a request without a valid session is ignored (there is no user to scope
it to, and the handler will answer for itself, as `POST /v1/session` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import structlog
from psycopg import AsyncConnection
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from commands import idempotency
from commands.bootstrap import Deps
from commands.errors import CommandError, ErrorCode, InvalidInput, Unauthorized
from eventstore.errors import StoreError
from eventstore.store import InTransaction
from web.body import limit_for
from web.errors import ApiError, error_response, store_failure
from web.requests import COOKIE

log = structlog.get_logger("omnitutor.idempotency")

MANDATORY = re.compile(r"^/v1/(plan|lesson/[^/]+/(adjust|makeme|visualize|animate))/?$")
REPLAYED_HEADER = "Idempotent-Replayed"
CLAIM_STATE = "idempotency_claim"  # where the claim waits in scope["state"] for the handler
# Answers given before any work ran: the key is not spent, a corrected retry may reuse it.
REFUSED_BEFORE_WORK = frozenset(
    {
        ErrorCode.INVALID_INPUT,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.NOT_FOUND,
        ErrorCode.METHOD_NOT_ALLOWED,
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        ErrorCode.PAYLOAD_TOO_LARGE,
    }
)

Result = TypeVar("Result")


def key_required(path: str) -> bool:
    return MANDATORY.match(path) is not None


def _route_accepts(scope: Scope) -> bool:
    """True when a route of this app handles this method and path (no key for a 404/405)."""
    router = getattr(scope["app"], "router", None)
    if router is None:
        return True
    return any(route.matches(scope)[0] is Match.FULL for route in router.routes)


def answer_recorder(
    request: Request, render: Callable[[Result], bytes], status_code: int = 200
) -> Callable[[Result], InTransaction] | None:
    """For a handler whose work is one append: stores `render(result)` as the key's answer in
    the append's transaction (pass it to the command as its outcome hook). None without a
    key. The handler must then answer with exactly `render(result)`."""
    claim = request.scope.get("state", {}).get(CLAIM_STATE)
    if not isinstance(claim, idempotency.Claim):
        return None

    def for_result(result: Result) -> InTransaction:
        answer = idempotency.StoredResponse(status_code, render(result), "application/json")

        async def store(conn: AsyncConnection[Any]) -> None:
            await idempotency.complete_in(conn, claim, answer)

        return store

    return for_result


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        raw_keys = request.headers.getlist(idempotency.HEADER)
        required = key_required(scope["path"])
        if (not raw_keys and not required) or not _route_accepts(scope):
            await self.app(scope, receive, send)
            return
        trace_id = str(scope.get("state", {}).get("trace_id", ""))
        svc: Deps = scope["app"].state.deps
        try:
            if len(raw_keys) > 1:
                raise InvalidInput(idempotency.HEADER, "must be sent once, not repeated")
            key = idempotency.validate_key(raw_keys[0] if raw_keys else None)
            try:
                principal = await svc.sessions.authenticate(request.cookies.get(COOKIE))
            except Unauthorized:
                if required:
                    raise
                await self.app(scope, receive, send)
                return
            scope.setdefault("state", {})["principal"] = principal  # routes reuse it
            structlog.contextvars.bind_contextvars(
                user_id=principal.user_id, session_id=principal.session_id
            )
            body = await _read_body(receive, limit_for(scope["path"], svc.settings.max_body_bytes))
            route = f"POST {scope['path']}"
            outcome = await idempotency.claim(
                svc.pool, principal.user_id, key, idempotency.request_hash(route, body)
            )
        except CommandError as e:
            await error_response(e, trace_id)(scope, receive, send)
            return
        except StoreError as e:
            log.warning("idempotency: could not claim the key", error=str(e))
            await error_response(store_failure(e), trace_id)(scope, receive, send)
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
        settled = False

        async def capture(message: Message) -> None:
            nonlocal status, media_type, streaming, settled
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-type":
                        media_type = value.decode("latin-1")
                streaming = media_type.startswith("text/event-stream")
            elif message["type"] == "http.response.body" and not streaming:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    # Settle the key before the client has the answer: a retry sent the
                    # moment it arrives then gets the replay, never "still running".
                    settled = True
                    await self._settle(svc, claim, status, media_type, b"".join(chunks))
            await send(message)

        scope.setdefault("state", {})[CLAIM_STATE] = claim
        renewing = asyncio.create_task(_keep_renewed(svc, claim), name="idempotency-lease")
        try:
            await self.app(scope, replay_body, capture)
        except Exception:
            if not settled:
                await self._release(svc, claim)
            raise
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        if not settled:  # a stream, or no answer at all
            await self._release(svc, claim)

    async def _settle(
        self,
        svc: Deps,
        claim: idempotency.Claim,
        status: int | None,
        media_type: str,
        answer: bytes,
    ) -> None:
        """Store the answer under the key, or free the key if the answer must not be kept."""
        if status is None or status >= 500 or _not_to_keep(answer):
            await self._release(svc, claim)
            return
        stored = idempotency.StoredResponse(status, answer, media_type)
        try:
            await idempotency.complete(svc.pool, claim, stored)
        except StoreError as e:
            # The key stays in flight until its lease ends (seconds), then a retry runs.
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


async def _keep_renewed(svc: Deps, claim: idempotency.Claim) -> None:
    """Renew the claim's lease while the request runs (cancelled when it ends)."""
    while True:
        await asyncio.sleep(idempotency.LEASE_RENEW_S)  # a heartbeat, not a wait for a state
        try:
            if not await idempotency.renew(svc.pool, claim):
                return  # completed in the work's own transaction, or lost
        except StoreError as e:
            log.warning("idempotency: could not renew the lease", error=str(e))


def _not_to_keep(body: bytes) -> bool:
    """True for an error envelope that tells the client to retry (the key must be free) or
    that refused the request before any work ran (the key was never really used)."""
    try:
        value: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(value, dict) or value.get("ok") is not False:
        return False
    return value.get("recoverable") is True or value.get("code") in REFUSED_BEFORE_WORK


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
