"""The request envelope: trace id, log context, security headers, last-resort errors.

A pure ASGI middleware (BaseHTTPMiddleware would buffer streaming responses): it gives each
request a `req_`+ULID trace id (X-Trace-Id header, every log line), binds the §9 log fields,
adds the security headers, turns anything unhandled into a 500 envelope (no stack trace ever
reaches a client), and writes one summary line per request.
"""

from __future__ import annotations

import time

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from commands.errors import Internal
from eventstore.ids import new_trace_id
from web.errors import error_response

log = structlog.get_logger("omnitutor.http")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}


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
