"""HTTP statuses for the error vocabulary, and the contract's error envelope (§11).

This is the only place a code meets an HTTP status. Every non-2xx answer is
`error_response()`: `"ok": false` and the same body as an SSE `error` event
(commands/errors.py `error_body`: code, message, recoverable, retry_after_ms, trace id).
`error_response()` binds the code to the request's log context so the request's summary
line carries it too.

| code                   | status | when                                                     |
|------------------------|--------|----------------------------------------------------------|
| invalid_input          | 400    | malformed request, missing Idempotency-Key               |
| unauthorized           | 401    | no valid session                                         |
| not_found              | 404    | no such lesson (or not yours), no such route             |
| method_not_allowed     | 405    | transport: the route exists, not for this method (Allow) |
| conflict               | 409    | Idempotency-Key reused for another request (not          |
|                        |        | recoverable) or still running (recoverable, retry later) |
| payload_too_large      | 413    | transport: body over OMNITUTOR_MAX_BODY_BYTES            |
| unsupported_media_type | 415    | transport: a JSON endpoint got another Content-Type      |
| refused                | 422    | moderation blocked input or output (reason "safety")     |
| over_quota             | 429    | rate limit or daily spend cap (Retry-After)              |
| internal               | 500    | unexpected; the trace id finds the log lines             |
| rate_limited           | 503    | the model API throttled us (Retry-After)                 |
| model_unavailable      | 503    | the model provider is down                               |
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from starlette.responses import Response

from commands.errors import CommandError, ErrorCode, error_body

STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_INPUT: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.REFUSED: 422,
    ErrorCode.OVER_QUOTA: 429,
    ErrorCode.RATE_LIMITED: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.MODEL_UNAVAILABLE: 503,
}

# Copy the frontend can show as is ("drama modal explains, never spinner").
DEFAULT_MESSAGE: dict[ErrorCode, str] = {
    ErrorCode.RATE_LIMITED: "Tutor is thinking too hard. Try again in a sec.",
    ErrorCode.MODEL_UNAVAILABLE: "The tutor's model is unavailable right now. Try again soon.",
    ErrorCode.INVALID_INPUT: "The request is not valid.",
    ErrorCode.NOT_FOUND: "Nothing here by that name.",
    ErrorCode.UNAUTHORIZED: "Your session has expired. Refresh it and try again.",
    ErrorCode.OVER_QUOTA: "Tutor is full for now. Try again later.",
    ErrorCode.REFUSED: "I can't teach that one. Want to try something else?",
    ErrorCode.CONFLICT: "This request conflicts with an earlier one.",
    ErrorCode.INTERNAL: "I lost my place. Mind starting over?",
    ErrorCode.METHOD_NOT_ALLOWED: "This endpoint does not accept that method.",
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: "Send JSON with Content-Type: application/json.",
    ErrorCode.PAYLOAD_TOO_LARGE: "The request body is too large.",
}


class ApiError(CommandError):
    """A refusal decided in web/ itself (routing, media type, body size, headers)."""

    def __init__(self, code: ErrorCode, message: str | None = None, **kw: Any) -> None:
        self.code = code
        super().__init__(message or DEFAULT_MESSAGE[code], **kw)


def envelope(error: CommandError, trace_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {"ok": False}
    body.update(
        error_body(
            error.code,
            error.message,
            recoverable=error.recoverable,
            trace_id=trace_id,
            retry_after_ms=error.retry_after_ms,
        )
    )
    body.update(error.details)
    return body


def error_response(error: CommandError, trace_id: str) -> Response:
    structlog.contextvars.bind_contextvars(code=str(error.code))
    headers = {}
    if error.retry_after_ms is not None:
        headers["Retry-After"] = str(max(1, -(-error.retry_after_ms // 1000)))
    if error.code is ErrorCode.METHOD_NOT_ALLOWED and "allow" in error.details:
        headers["Allow"] = str(error.details.pop("allow"))
    return Response(
        orjson.dumps(envelope(error, trace_id)),
        status_code=STATUS[error.code],
        media_type="application/json",
        headers=headers,
    )
