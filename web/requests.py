"""What every route does around its handler: who calls, the body, the answer.

async def ask(request):
    cmd = Ask(await caller(request), request.path_params["lesson_id"], await body(request))
    return answer(request, await handlers.ask(cmd, deps(request)))
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse

from commands.bootstrap import Deps
from commands.messages import Caller
from commands.sessions import Principal
from web.body import read_json_object
from web.client_ip import request_client_ip

COOKIE = "ot_session"


class Answer(Protocol):
    def json(self) -> dict[str, Any]: ...


def deps(request: Request) -> Deps:
    built: Deps = request.app.state.deps
    return built


def trace_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("trace_id", ""))


async def principal(request: Request) -> Principal:
    """The caller's session, or Unauthorized. Authenticated once per request: the
    idempotency middleware may have done it already."""
    state = request.scope.setdefault("state", {})
    found: Principal | None = state.get("principal")
    if found is None:
        found = await deps(request).sessions.authenticate(request.cookies.get(COOKIE))
        state["principal"] = found
    structlog.contextvars.bind_contextvars(user_id=found.user_id, session_id=found.session_id)
    return found


async def caller(request: Request) -> Caller:
    return Caller.of(await principal(request), request_client_ip(request), trace_id(request))


async def body(
    request: Request, *, optional: bool = False, limit: int | None = None
) -> dict[str, Any]:
    """The JSON object body; `limit` raises OMNITUTOR_MAX_BODY_BYTES for one route (never
    lowers it)."""
    size = max(deps(request).settings.max_body_bytes, limit or 0)
    return await read_json_object(request, size, optional=optional)


def answer(request: Request, result: Answer, status_code: int = 200) -> JSONResponse:
    """`{"ok": true, …the answer…, "trace_id"}`."""
    return JSONResponse(
        {"ok": True, **result.json(), "trace_id": trace_id(request)}, status_code=status_code
    )
