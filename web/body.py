"""Reading a JSON request body safely.

Bare Starlette buffers any body whole and answers 500 to several malformed ones; here a
JSON endpoint takes only `application/json` (a form or text/plain is 415, which also closes
the cross-site POST hole SameSite=Lax leaves open), stops reading at the size limit (413),
and turns invalid UTF-8, bad JSON, absurd nesting and non-objects into `invalid_input`.

Every JSON body is also checked as a whole before any route sees it (`check_json`):
nesting deeper than MAX_DEPTH (orjson re-encodes at most 254 levels and a stored or hashed
body must re-encode), and, in any key or string value, the characters no field accepts: NUL
(jsonb cannot store it), other C0 controls but tab and newlines, DEL, C1 controls, and the
bidirectional embeddings, overrides and isolates that make text display other than it reads
(U+202A-U+202E, U+2066-U+2069). The refusal names the field by its dotted path.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import Request

from commands.errors import ErrorCode, InvalidInput
from commands.interaction_input import WHITEBOARD_BODY_BYTES
from web.errors import ApiError

MAX_DEPTH = 32
# Control characters (C0 but tab and line breaks, DEL, C1) and bidi overrides.
FORBIDDEN_CHARACTERS = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
_FORBIDDEN = re.compile(f"[{FORBIDDEN_CHARACTERS}]")
_MAY_ESCAPE_FORBIDDEN = re.compile(r"\\[ubf]")
# Every JSON float has a digit before its fraction or exponent.
_FLOAT_TOKEN = re.compile(rb"[0-9][.eE]")
# The one route whose bodies may exceed OMNITUTOR_MAX_BODY_BYTES: a whiteboard drawing is up
# to 2 MB decoded, so its base64 body is larger (commands/interaction_input.py).
_LARGE_BODY_ROUTE = re.compile(r"^/v1/lesson/[^/]+/whiteboard/?$")


def limit_for(path: str, default: int) -> int:
    """The body size limit of the route at `path` (readers before the route use it too)."""
    return max(default, WHITEBOARD_BODY_BYTES) if _LARGE_BODY_ROUTE.match(path) else default


def _path(parent: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{parent}[{part}]"
    return f"{parent}.{part}" if parent else part


def _check_text(text: str, field: str, what: str = "must") -> None:
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        raise InvalidInput(
            field or "body",
            f"{what} not contain the control or bidi character U+{ord(bad.group()):04X}",
        )


def check_json(value: Any, text: str | None = None) -> None:
    """Refuse nesting deeper than MAX_DEPTH and forbidden characters anywhere (iterative:
    a recursive walk would hit Python's own recursion limit on hostile input).

    With the body's `text`, a body whose text holds no forbidden character and none of the
    escapes that can make one (`\\u`, `\\b`, `\\f`) skips the per-string search: a batch
    of analytics events has thousands of strings."""
    strings = text is None or bool(_MAY_ESCAPE_FORBIDDEN.search(text) or _FORBIDDEN.search(text))
    if _breaks_a_rule(value, strings):
        _refuse_where(value, strings)


def _refuse_where(value: Any, strings: bool) -> None:
    """check_json's walk keeping each container's path, to name where a rule breaks."""
    todo: list[tuple[Any, str, int]] = [(value, "", 1)]
    while todo:
        item, where, depth = todo.pop()
        if isinstance(item, str):
            if strings:
                _check_text(item, where)
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise InvalidInput(where or "body", f"is nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            for key, child in item.items():
                if strings:
                    _check_text(key, where, "a key must")
                if isinstance(child, dict | list) or strings:
                    todo.append((child, _path(where, key), depth + 1))
        else:
            todo.extend(
                (child, _path(where, i), depth + 1)
                for i, child in enumerate(item)
                if isinstance(child, dict | list) or strings
            )


def _breaks_a_rule(value: Any, strings: bool) -> bool:
    """check_json's walk without the paths it names in its errors (building a path for
    every container was most of the walk's time on a batch of analytics events)."""
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            if depth > MAX_DEPTH or (strings and any(_FORBIDDEN.search(k) for k in item)):
                return True
            children: Any = item.values()
        elif isinstance(item, list):
            if depth > MAX_DEPTH:
                return True
            children = item
        else:
            if strings and isinstance(item, str) and _FORBIDDEN.search(item):
                return True
            continue
        todo.extend(
            (child, depth + 1) for child in children if strings or isinstance(child, dict | list)
        )
    return False


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            raise ApiError(ErrorCode.INVALID_INPUT, "Content-Length is not a number") from None
        if too_big:
            raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, f"request body is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, f"request body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(
    request: Request, limit: int, *, optional: bool = False
) -> dict[str, Any]:
    """The body as a JSON object. With `optional`, an empty body without a type is `{}`."""
    content_type = request.headers.get("content-type", "")
    if optional and not content_type and request.headers.get("content-length", "0") == "0":
        if await read_body(request, limit):
            raise ApiError(ErrorCode.UNSUPPORTED_MEDIA_TYPE)
        return {}
    if not is_json(content_type):
        raise ApiError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"expected Content-Type application/json, got {content_type or 'none'}",
        )
    raw = await read_body(request, limit)
    if optional and not raw:
        return {}
    return decode_object(raw)


def decode_object(raw: bytes) -> dict[str, Any]:
    """A body's bytes as a checked JSON object, whole floats as ints. Pure."""
    try:
        value = orjson.loads(raw)  # rejects invalid UTF-8 and nesting deeper than 1024
    except orjson.JSONDecodeError as e:
        raise ApiError(ErrorCode.INVALID_INPUT, f"body is not valid JSON: {e.msg}") from None
    if not isinstance(value, dict):
        raise ApiError(
            ErrorCode.INVALID_INPUT, f"body must be a JSON object, got {type(value).__name__}"
        )
    check_json(value, raw.decode())  # valid UTF-8: orjson read it
    if _FLOAT_TOKEN.search(raw) is None:
        return value  # no float in it (nor in any string): nothing to make whole
    whole: dict[str, Any] = whole_numbers(value)
    return whole


def whole_numbers(value: Any) -> Any:
    """JSON has one number type: 30.0 is the integer 30 (as JSON Schema says), so a whole
    float is read as an int and every integer field accepts it, in one place."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)  # (larger ones are not exact integers, and JSON tools round them)
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    return value
