"""The OpenAPI 3.1 document, derived from the routes themselves.

Every `/v1/` endpoint carries its `Spec` (`@api(Spec(...))` on the route function): what it
takes and what it answers. `document(routes)` walks the application's routes and writes the
document from those specs and the route table, so a route cannot exist without being
described (tests/test_openapi.py fails on an undecorated `/v1/` route) and the document
cannot name a route that does not exist. The error envelope, its codes and their statuses
come from web/errors.py, the one place a code meets a status.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.routing import BaseRoute, Route

from commands.errors import ErrorCode
from web.body import FORBIDDEN_CHARACTERS
from web.errors import STATUS

Schema = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])

COOKIE_AUTH = "sessionCookie"


@dataclass(frozen=True)
class Spec:
    """One operation: its request and its successful answer (the envelope is common)."""

    summary: str
    request: Schema | None = None  # the JSON body, if any
    request_required: bool = True
    response: Schema | None = None  # the 2xx JSON body (or the stream's description)
    status: int = 200
    other_statuses: tuple[int, ...] = ()  # further 2xx/3xx answers (201, 204, 303 …)
    media_type: str = "application/json"
    wrapped: bool = True  # the body is `{"ok": true, …, "trace_id"}` around `response`
    auth: bool = True  # needs the ot_session cookie
    idempotency: str | None = None  # "required" | "optional" (POSTs default to optional)
    query: Mapping[str, Schema] = field(default_factory=dict)
    headers: Mapping[str, Schema] = field(default_factory=dict)
    errors: tuple[ErrorCode, ...] = ()  # codes this operation may answer (the rest: default)
    description: str = ""
    links: Mapping[str, Schema] = field(default_factory=dict)  # OpenAPI links of the 2xx


def api(spec: Spec) -> Callable[[F], F]:
    """Attach an operation's spec to its route function."""

    def attach(endpoint: F) -> F:
        endpoint.openapi_spec = spec  # type: ignore[attr-defined]  # read by document()
        return endpoint

    return attach


def spec_of(route: Route) -> Spec | None:
    found: Spec | None = getattr(route.endpoint, "openapi_spec", None)
    return found


def api_routes(routes: Iterable[BaseRoute]) -> list[Route]:
    """The routes the document must describe: every route under /v1/."""
    return [r for r in routes if isinstance(r, Route) and r.path.startswith("/v1/")]


ENVELOPE: Schema = {
    "type": "object",
    "description": "Every non-2xx answer (contracts §11).",
    "required": ["ok", "code", "message", "recoverable", "trace_id"],
    "properties": {
        "ok": {"const": False},
        "code": {"type": "string", "enum": [str(c) for c in ErrorCode]},
        "message": {"type": "string"},
        "recoverable": {"type": "boolean"},
        "retry_after_ms": {"type": "integer", "minimum": 0},
        "trace_id": {"type": "string", "pattern": "^req_[0-9A-Z]{26}$"},
        "field": {"type": "string", "description": "invalid_input: the field at fault"},
    },
}

_PATH_PARAM = re.compile(r"{(\w+)}")
# What web/body.py refuses in every key and string of every JSON body, said in the schema.
ALLOWED_TEXT = f"^[^{FORBIDDEN_CHARACTERS}]*$"


PLAIN_JSON_REF = {"$ref": "#/components/schemas/PlainJSON"}
PLAIN_JSON: Schema = {
    "description": "Any JSON whose keys and strings hold no control or bidi characters.",
    "anyOf": [
        {"type": ["number", "boolean", "null"]},
        {"type": "string", "pattern": ALLOWED_TEXT},
        {"type": "array", "items": PLAIN_JSON_REF},
        {
            "type": "object",
            "propertyNames": {"pattern": ALLOWED_TEXT},
            "additionalProperties": PLAIN_JSON_REF,
        },
    ],
}
_SCHEMA_WORDS = {"type", "$ref", "oneOf", "anyOf", "allOf", "const", "enum", "not"}


def body_rules(schema: Schema) -> Schema:
    """A request schema with web/body.py's rule for every body added: each string without
    a pattern or fixed values gets ALLOWED_TEXT, each object's keys too, and a value of any
    shape is PlainJSON."""
    if not _SCHEMA_WORDS & set(schema):
        return {**schema, **PLAIN_JSON_REF}
    out = dict(schema)
    for key in ("properties", "patternProperties"):
        if key in out:
            out[key] = {name: body_rules(s) for name, s in out[key].items()}
    for key in ("items", "additionalProperties", "propertyNames", "contentSchema", "not"):
        if isinstance(out.get(key), dict):
            out[key] = body_rules(out[key])
    for key in ("oneOf", "anyOf", "allOf", "prefixItems"):
        if key in out:
            out[key] = [body_rules(s) for s in out[key]]
    types = out.get("type")
    kinds = set(types) if isinstance(types, list) else {types}
    fixed = {"pattern", "enum", "const", "format"} & set(out)
    if "string" in kinds and not fixed:
        out["pattern"] = ALLOWED_TEXT
    if "object" in kinds and "propertyNames" not in out:
        out["propertyNames"] = {"pattern": ALLOWED_TEXT}
    if "object" in kinds and out.get("additionalProperties", True) is True:
        out["additionalProperties"] = PLAIN_JSON_REF
    return out


def ok_body(schema: Schema | None) -> Schema:
    """A success body: `{"ok": true, …, "trace_id"}` around the answer's own fields."""
    answer = schema or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "required": ["ok", "trace_id", *answer.get("required", [])],
        "properties": {
            "ok": {"const": True},
            "trace_id": {"type": "string"},
            **answer.get("properties", {}),
        },
    }


def _error_responses(codes: Iterable[ErrorCode]) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(STATUS[code], []).append(str(code))
    out: dict[str, Any] = {}
    for status, names in sorted(by_status.items()):
        out[str(status)] = {
            "description": ", ".join(names),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    out["default"] = {
        "description": "any other code of the error vocabulary",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    return out


def _operation(route: Route, method: str, spec: Spec) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(route.path)
    ]
    params += [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in spec.query.items()
    ]
    params += [
        {"name": name, "in": "header", "required": False, "schema": schema}
        for name, schema in spec.headers.items()
    ]
    idempotency = spec.idempotency or ("optional" if method == "post" else None)
    if idempotency is not None:
        params.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": idempotency == "required",
                "description": "A client-chosen key (1-255 visible ASCII characters): a retry "
                "with the same key and body replays the first answer (contracts §3).",
                "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
            }
        )
    success: dict[str, Any] = {"description": spec.summary}
    if spec.media_type == "application/json" and spec.wrapped:
        success["content"] = {"application/json": {"schema": ok_body(spec.response)}}
    else:
        success["content"] = {spec.media_type: {"schema": spec.response or {"type": "string"}}}
    if spec.links:
        success["links"] = dict(spec.links)
    responses: dict[str, Any] = {str(spec.status): success}
    for status in spec.other_statuses:
        responses[str(status)] = {"description": f"{spec.summary} ({status})"}
    codes = set(spec.errors) | {ErrorCode.INTERNAL, ErrorCode.INVALID_INPUT}
    if spec.auth:
        codes.add(ErrorCode.UNAUTHORIZED)
    if spec.request is not None:
        codes |= {ErrorCode.PAYLOAD_TOO_LARGE, ErrorCode.UNSUPPORTED_MEDIA_TYPE}
    responses.update(_error_responses(sorted(codes, key=str)))
    op: dict[str, Any] = {
        "operationId": f"{method}_{route.name}",
        "summary": spec.summary,
        "parameters": params,
        "responses": responses,
    }
    if spec.description:
        op["description"] = spec.description
    if spec.request is not None:
        op["requestBody"] = {
            "required": spec.request_required,
            "content": {"application/json": {"schema": body_rules(spec.request)}},
        }
    op["security"] = [{COOKIE_AUTH: []}] if spec.auth else []
    return op


def document(routes: Iterable[BaseRoute], components: Mapping[str, Schema]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every described /v1/ route."""
    paths: dict[str, Any] = {}
    for route in api_routes(routes):
        spec = spec_of(route)
        if spec is None:
            continue  # tests/test_openapi.py fails on it
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue
            paths.setdefault(route.path, {})[method.lower()] = _operation(
                route, method.lower(), spec
            )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OmniTutor API",
            "version": "2",
            "description": "An event-sourced AI tutor. Every non-2xx answer is the error "
            "envelope; every response carries X-Trace-Id.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ENVELOPE, "PlainJSON": PLAIN_JSON, **components},
            "securitySchemes": {
                COOKIE_AUTH: {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "ot_session",
                    "description": "Set by POST /v1/session (HttpOnly, SameSite=Lax, Secure).",
                }
            },
        },
    }
