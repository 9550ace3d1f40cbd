"""The request envelope: trace id, log context, security headers, last-resort errors.

Pure ASGI middlewares (BaseHTTPMiddleware would buffer streaming responses).

`RequestContext` gives each request a `req_`+ULID trace id (X-Trace-Id header, every log
line), binds the §9 log fields, adds the security headers, turns anything unhandled into a
500 envelope (no stack trace ever reaches a client; the cause is logged with the trace id),
and writes one summary line per request.

`RequestGuard` refuses, before routing, what no route should have to think about. Any
request sending the session cookie twice is 400 `invalid_input` (naming `Cookie`): which
copy a parser keeps differs between parsers, and a planted second cookie must not choose
the session. In front of every state-changing route (POST, PUT, PATCH, DELETE), so a route
added later is covered without doing anything:

* a foreign `Origin` is 403 `forbidden_origin`: same origin means the Origin's host and
  port are the request's `Host`; other origins only if listed in OMNITUTOR_ALLOWED_ORIGINS.
  A request without Origin (curl, the CLI, same-origin GETs turned POST by old browsers) is
  let through unless `Sec-Fetch-Site: cross-site` says a browser sent it from elsewhere;
* a body must be JSON: a `Content-Type` other than application/json (or `+json`) is 415
  `unsupported_media_type`, and so is a body without one. An empty body without a type
  passes (`POST /v1/lesson/{id}/abandon` from the product's own page).

Together they close the cross-site form POST that SameSite=Lax cookies leave open.

`StreamLimit` caps the lesson streams open at once in this process, per session (the
session cookie) and per client address (web/client_ip.py's rule): OMNITUTOR_SSE_MAX_PER_SESSION
and OMNITUTOR_SSE_MAX_PER_CLIENT, 0 for no cap. One more is 503 `rate_limited` with
Retry-After; a stream's slot is freed the moment its response ends.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Sequence
from urllib.parse import urlsplit

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from commands.errors import ErrorCode, Internal
from eventstore.ids import new_trace_id
from eventstore.settings import IPNetwork
from web.body import is_json
from web.client_ip import client_ip
from web.errors import ApiError, error_response
from web.requests import COOKIE

log = structlog.get_logger("omnitutor.http")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
STREAM_PATH = re.compile(r"^/v1/lesson/[^/]+/stream$")
STREAM_RETRY_AFTER_MS = 5000


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace_id = new_trace_id()
        scope.setdefault("state", {})["trace_id"] = trace_id
        path = f"{scope['method']} {scope['path']}"
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(trace_id=trace_id, path=path)
        started = time.perf_counter()
        status: int | None = None

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Trace-Id"] = trace_id
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault("Cache-Control", "no-store")
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled error")
            if status is None:
                await error_response(Internal("I lost my place. Mind starting over?"), trace_id)(
                    scope, receive, send_with_headers
                )
        finally:
            latency_ms = round((time.perf_counter() - started) * 1000)
            level = "error" if (status or 500) >= 500 else "info"
            log.log(
                {"info": 20, "error": 40}[level], "request", status=status, latency_ms=latency_ms
            )
            structlog.contextvars.clear_contextvars()


class RequestGuard:
    def __init__(self, app: ASGIApp, allowed_origins: Sequence[str] = ()) -> None:
        self.app = app
        self.allowed_origins = frozenset(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            refusal = cookie_refusal(headers)
            if refusal is None and scope["method"] in STATE_CHANGING:
                refusal = write_refusal(headers, self.allowed_origins)
            if refusal is not None:
                trace_id = str(scope.get("state", {}).get("trace_id", ""))
                await error_response(refusal, trace_id)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def cookie_refusal(headers: Headers) -> ApiError | None:
    names = [
        part.split("=", 1)[0].strip()
        for value in headers.getlist("cookie")
        for part in value.split(";")
    ]
    if names.count(COOKIE) > 1:
        return ApiError(
            ErrorCode.INVALID_INPUT,
            f"Cookie: {COOKIE} is sent more than once",
            details={"field": "Cookie"},
        )
    return None


def write_refusal(headers: Headers, allowed_origins: frozenset[str]) -> ApiError | None:
    """Why a state-changing request is refused before routing (see the module docstring)."""
    origins = headers.getlist("origin")
    if len(origins) > 1:
        return ApiError(ErrorCode.FORBIDDEN_ORIGIN, "Origin must be sent once")
    if origins:
        origin = origins[0].strip().lower().rstrip("/")
        if origin not in allowed_origins and not _same_origin(origin, headers.get("host", "")):
            return ApiError(
                ErrorCode.FORBIDDEN_ORIGIN,
                f"Origin {origin[:100]!r} may not change anything here",
            )
    elif headers.get("sec-fetch-site", "").lower() == "cross-site":
        return ApiError(ErrorCode.FORBIDDEN_ORIGIN, "a cross-site request may not change anything")
    content_type = headers.get("content-type")
    if content_type is not None:
        if not is_json(content_type):
            return ApiError(
                ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                f"expected Content-Type application/json, got {content_type[:100]}",
            )
    elif "transfer-encoding" in headers or headers.get("content-length", "0").strip() != "0":
        return ApiError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE, "a request body needs Content-Type: application/json"
        )
    return None


def _same_origin(origin: str, host: str) -> bool:
    """Whether `origin` ("https://tutor.example") names the host the request was sent to."""
    try:
        parts = urlsplit(origin)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        own = urlsplit(f"//{host.strip().lower()}")
        own_port = own.port
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.hostname != own.hostname:
        return False
    return (own_port is None and port == _DEFAULT_PORTS[parts.scheme]) or own_port == port


class StreamLimit:
    def __init__(
        self,
        app: ASGIApp,
        per_session: int,
        per_client: int,
        trusted_proxies: Sequence[IPNetwork] = (),
    ) -> None:
        self.app = app
        self.limits = {"session": per_session, "client": per_client}
        self.trusted_proxies = tuple(trusted_proxies)
        self.open: Counter[tuple[str, str]] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or not STREAM_PATH.match(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        slots = self._slots(scope)
        full = [kind for kind, who in slots if 0 < self.limits[kind] <= self.open[(kind, who)]]
        if full:
            refusal = ApiError(
                ErrorCode.RATE_LIMITED,
                f"Too many lesson streams are open for this {full[0]} "
                f"(at most {self.limits[full[0]]}); close one or retry later.",
                recoverable=True,
                retry_after_ms=STREAM_RETRY_AFTER_MS,
            )
            trace_id = str(scope.get("state", {}).get("trace_id", ""))
            await error_response(refusal, trace_id)(scope, receive, send)
            return
        self.open.update(slots)
        try:
            await self.app(scope, receive, send)
        finally:
            self.open.subtract(slots)
            for slot in slots:
                if self.open[slot] <= 0:
                    del self.open[slot]

    def _slots(self, scope: Scope) -> list[tuple[str, str]]:
        headers = Headers(scope=scope)
        peer = scope.get("client")
        slots = [("client", client_ip(peer[0] if peer else None, headers, self.trusted_proxies))]
        token = cookie_parser(headers.get("cookie", "")).get(COOKIE)
        if token:
            slots.append(("session", hashlib.sha256(token.encode()).hexdigest()))
        return slots
