"""POST /v1/session: create or refresh the anonymous session (contracts §6)."""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from commands.errors import InvalidInput
from commands.sessions import open_session
from web.api_schemas import SESSION_ANSWER, SESSION_REQUEST
from web.body import read_json_object
from web.openapi import Spec, api
from web.requests import COOKIE, deps


@api(
    Spec(
        "Create an anonymous user and session, or refresh the one in the cookie",
        request=SESSION_REQUEST,
        request_required=False,
        response=SESSION_ANSWER,
        status=201,
        other_statuses=(200,),
        auth=False,
    )
)
async def create_or_refresh(request: Request) -> Response:
    svc = deps(request)
    body = await read_json_object(request, svc.settings.max_body_bytes, optional=True)
    unknown = set(body) - {"client_meta"}
    if unknown:
        raise InvalidInput(sorted(unknown)[0], "unknown field")
    client_meta = body.get("client_meta", {})
    if not isinstance(client_meta, dict):
        raise InvalidInput("client_meta", "must be an object")
    grant = await open_session(
        svc.pool, request.cookies.get(COOKIE), client_meta, svc.settings.session_days
    )
    structlog.contextvars.bind_contextvars(
        user_id=grant.principal.user_id, session_id=grant.principal.session_id
    )
    response = JSONResponse(
        {
            "ok": True,
            "user_id": grant.principal.user_id,
            "session_id": grant.principal.session_id,
            "created": grant.created,
            "expires_at": grant.expires_at.isoformat(),
            "trace_id": request.scope["state"]["trace_id"],
        },
        status_code=201 if grant.created else 200,
    )
    response.set_cookie(
        COOKIE,
        grant.token,
        max_age=svc.settings.session_days * 86400,
        path="/",
        httponly=True,
        samesite="lax",
        secure=not svc.settings.dev_http,
    )
    return response


routes = [Route("/v1/session", create_or_refresh, methods=["POST"])]
