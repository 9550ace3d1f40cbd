"""Accounts and the student's data: magic link, library, analytics, account deletion.

Each route parses, calls one use case of commands/ (accounts, analytics) or one read of
projections/, and renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from commands import accounts, analytics
from commands.errors import InvalidInput
from commands.generation import Supervisor
from commands.mailer import Mailer
from commands.sessions import end_visit
from eventstore.settings import Settings
from eventstore.store import EventStore
from projections.errors import BadCursor
from projections.reads import MAX_PAGE, list_lessons
from web.body import read_json_object
from web.client_ip import request_client_ip
from web.services import services
from web.sessions import COOKIE, current_principal

DEFAULT_PAGE = 20


@dataclass(frozen=True)
class Caller:
    user_id: str
    session_id: str
    client_ip: str
    trace_id: str


@dataclass(frozen=True)
class Deps:
    settings: Settings
    pool: AsyncConnectionPool[AsyncConnection[Any]]
    store: EventStore
    mailer: Mailer
    supervisor: Supervisor


def _trace_id(request: Request) -> str:
    return str(request.scope["state"]["trace_id"])


def _deps(request: Request) -> Deps:
    svc = services(request)
    mailer: Mailer = request.app.state.mailer
    return Deps(svc.settings, svc.pool, svc.store, mailer, svc.supervisor)


async def _caller(request: Request) -> Caller:
    principal = await current_principal(request)
    return Caller(
        principal.user_id, principal.session_id, request_client_ip(request), _trace_id(request)
    )


def _answer(request: Request, body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse({"ok": True, **body, "trace_id": _trace_id(request)}, status_code=status)


def _set_cookie(response: Response, token: str, settings: Settings) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=settings.session_days * 86400,
        path="/",
        httponly=True,
        samesite="lax",
        secure=not settings.dev_http,
    )


async def magic_link(request: Request) -> Response:
    deps = _deps(request)
    caller = await _caller(request)
    body = await read_json_object(request, deps.settings.max_body_bytes)
    sent = await accounts.request_magic_link(accounts.RequestMagicLink(caller, body), deps)
    return _answer(request, sent.json(), 202)


async def consume(request: Request) -> Response:
    deps = _deps(request)
    cmd = accounts.ConsumeMagicLink(
        token=request.query_params.get("token"),
        session_token=request.cookies.get(COOKIE),
        next=request.query_params.get("next"),
        trace_id=_trace_id(request),
    )
    signed_in = await accounts.consume_magic_link(cmd, deps)
    structlog.contextvars.bind_contextvars(
        user_id=signed_in.principal.user_id, session_id=signed_in.principal.session_id
    )
    response = RedirectResponse(signed_in.redirect_to, status_code=303)
    _set_cookie(response, signed_in.token, deps.settings)
    return response


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidInput("limit", f"must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)


async def library(request: Request) -> Response:
    svc = services(request)
    principal = await current_principal(request)
    limit = _limit(request.query_params.get("limit"))
    cursor = request.query_params.get("cursor") or None
    try:
        page = await list_lessons(svc.pool, principal.user_id, limit, cursor)
    except BadCursor as e:
        raise InvalidInput("cursor", str(e)) from None
    lessons = [
        {
            "lesson_id": row["id"],
            "subject": row["subject"],
            "topic": row["topic"],
            "status": row["status"],
            "created_at": row["created_at"].isoformat(),
            "completed_at": row["completed_at"].isoformat() if row["completed_at"] else None,
            "total_beats": row["total_beats"],
            "beats_completed": row["beats_completed"],
        }
        for row in page.lessons
    ]
    return _answer(request, {"lessons": lessons, "next_cursor": page.next_cursor})


async def record_events(request: Request) -> Response:
    svc = services(request)
    principal = await current_principal(request)
    body = await read_json_object(request, svc.settings.max_body_bytes)
    cmd = analytics.RecordClientEvents(
        principal.user_id, principal.session_id, _trace_id(request), body
    )
    accepted = await analytics.record_client_events(cmd, svc.pool, svc.store)
    if accepted.abandoned:  # the tab is closing: this visit is over (docs/accounts.md)
        await end_visit(svc.pool, principal.session_id)
    return _answer(request, accepted.json(), 202)


async def delete_account(request: Request) -> Response:
    deps = _deps(request)
    caller = await _caller(request)
    deleted = await accounts.delete_account(accounts.DeleteAccount(caller), deps)
    response = _answer(request, deleted.json())
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="lax", secure=not deps.settings.dev_http
    )
    return response


routes = [
    Route("/v1/auth/magic-link", magic_link, methods=["POST"]),
    Route("/v1/auth/consume", consume, methods=["GET"]),
    Route("/v1/lessons", library, methods=["GET"]),
    Route("/v1/event", record_events, methods=["POST"]),
    Route("/v1/account", delete_account, methods=["DELETE"]),
]
