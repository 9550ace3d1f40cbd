"""The error vocabulary (contracts §11, plus `conflict`), as domain exceptions.

Every failure a client can see is one of these codes. Commands raise CommandError
subclasses; only web/ turns a code into an HTTP status (web/errors.py), and every envelope,
SSE `error` event and failure log line uses the same code.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    RATE_LIMITED = "rate_limited"  # model API throttle
    MODEL_UNAVAILABLE = "model_unavailable"  # model provider outage
    INVALID_INPUT = "invalid_input"  # malformed request
    NOT_FOUND = "not_found"  # no such resource (or not yours)
    UNAUTHORIZED = "unauthorized"  # no valid session
    OVER_QUOTA = "over_quota"  # rate limit or daily spend cap
    REFUSED = "refused"  # moderation blocked input or output
    CONFLICT = "conflict"  # idempotency key reused or still running; stale write
    INTERNAL = "internal"  # unexpected
    # Transport-level refusals, answered before any command runs (web/).
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"


def error_body(
    code: str,
    message: str,
    *,
    recoverable: bool,
    trace_id: str,
    retry_after_ms: int | None = None,
) -> dict[str, object]:
    """The contract's error shape (§11) without `ok`: an SSE `error` event's data, and the
    envelope of every non-2xx answer once web/ adds `"ok": false`."""
    body: dict[str, object] = {"code": str(code), "message": message, "recoverable": recoverable}
    if retry_after_ms is not None:
        body["retry_after_ms"] = retry_after_ms
    body["trace_id"] = trace_id
    return body


class CommandError(Exception):
    """A failure with a stable code and a message fit to show the student."""

    code: ErrorCode = ErrorCode.INTERNAL
    recoverable: bool = False

    def __init__(
        self,
        message: str,
        *,
        retry_after_ms: int | None = None,
        recoverable: bool | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_ms = retry_after_ms
        if recoverable is not None:
            self.recoverable = recoverable
        self.details = details or {}


class InvalidInput(CommandError):
    code = ErrorCode.INVALID_INPUT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", details={"field": field})
        self.field = field


class NotFound(CommandError):
    code = ErrorCode.NOT_FOUND


class Unauthorized(CommandError):
    code = ErrorCode.UNAUTHORIZED
    recoverable = True


class OverQuota(CommandError):
    code = ErrorCode.OVER_QUOTA
    recoverable = True


class Refused(CommandError):
    code = ErrorCode.REFUSED


class Conflict(CommandError):
    code = ErrorCode.CONFLICT


class RateLimited(CommandError):
    code = ErrorCode.RATE_LIMITED
    recoverable = True


class ModelUnavailable(CommandError):
    code = ErrorCode.MODEL_UNAVAILABLE
    recoverable = True


class Internal(CommandError):
    code = ErrorCode.INTERNAL
