"""Accounts and the student's data: magic link, library, analytics, account deletion.

Each route parses the request, calls one handler (commands/handlers/accounts.py) or one
read of projections/, and renders.
"""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from commands.errors import ErrorCode, InvalidInput
from commands.handlers import accounts
from commands.messages import ConsumeMagicLink, DeleteAccount, RecordClientEvents, RequestMagicLink
from eventstore.settings import Settings
from projections.errors import BadCursor
from projections.reads import MAX_PAGE, list_lessons
from web import accounts_schemas as schemas
from web.openapi import Spec, api
from web.requests import COOKIE, answer, body, caller, deps, principal, trace_id

DEFAULT_PAGE = 20


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


@api(
    Spec(
        "Mail a sign-in link (the same answer for every address)",
        request=schemas.MAGIC_LINK_REQUEST,
        response=schemas.MAGIC_LINK_ANSWER,
        status=202,
        errors=(ErrorCode.OVER_QUOTA,),
    )
)
async def magic_link(request: Request) -> Response:
    cmd = RequestMagicLink(await caller(request), await body(request))
    return answer(request, await accounts.request_magic_link(cmd, deps(request)), 202)


@api(
    Spec(
        "Sign in with a mailed link: link or merge, rotate the session, redirect",
        response={"type": "string"},
        status=303,
        media_type="text/plain",
        wrapped=False,
        auth=False,
        query={
            "token": {"type": "string"},
            "next": {"type": "string", "description": "a same-site path (default /)"},
        },
        errors=(ErrorCode.UNAUTHORIZED,),
        description="303 to `next` (a same-site path) or `/`, with a new ot_session cookie.",
    )
)
async def consume(request: Request) -> Response:
    cmd = ConsumeMagicLink(
        token=request.query_params.get("token"),
        session_token=request.cookies.get(COOKIE),
        next=request.query_params.get("next"),
        trace_id=trace_id(request),
    )
    signed_in = await accounts.consume_magic_link(cmd, deps(request))
    structlog.contextvars.bind_contextvars(
        user_id=signed_in.principal.user_id, session_id=signed_in.principal.session_id
    )
    response = RedirectResponse(signed_in.redirect_to, status_code=303)
    _set_cookie(response, signed_in.token, deps(request).settings)
    return response


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidInput("limit", f"must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)


class LibraryPage:
    def __init__(self, lessons: list[dict[str, object]], next_cursor: str | None) -> None:
        self.lessons, self.next_cursor = lessons, next_cursor

    def json(self) -> dict[str, object]:
        return {"lessons": self.lessons, "next_cursor": self.next_cursor}


@api(
    Spec(
        "The caller's lessons, newest first (keyset pages)",
        response=schemas.LIBRARY_ANSWER,
        query={
            "limit": {"type": "integer", "minimum": 1, "maximum": 100},
            "cursor": {"type": "string", "description": "next_cursor of the previous page"},
        },
    )
)
async def library(request: Request) -> Response:
    """A read of the lessons projection (web may read projections; commands may not)."""
    who = await principal(request)
    limit = _limit(request.query_params.get("limit"))
    cursor = request.query_params.get("cursor") or None
    try:
        page = await list_lessons(deps(request).pool, who.user_id, limit, cursor)
    except BadCursor as e:
        raise InvalidInput("cursor", str(e)) from None
    lessons: list[dict[str, object]] = [
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
    return answer(request, LibraryPage(lessons, page.next_cursor))


@api(
    Spec(
        "Record a batch of the browser's analytics events (contracts §12)",
        request=schemas.EVENTS_REQUEST,
        response=schemas.EVENTS_ANSWER,
        status=202,
        errors=(ErrorCode.NOT_FOUND, ErrorCode.CONFLICT),
    )
)
async def record_events(request: Request) -> Response:
    cmd = RecordClientEvents(await caller(request), await body(request))
    return answer(request, await accounts.record_client_events(cmd, deps(request)), 202)


@api(
    Spec(
        "Delete the caller's account (erased 30 days later); clears the cookie",
        response=schemas.ACCOUNT_DELETED,
    )
)
async def delete_account(request: Request) -> Response:
    cmd = DeleteAccount(await caller(request))
    response = answer(request, await accounts.delete_account(cmd, deps(request)))
    settings = deps(request).settings
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="lax", secure=not settings.dev_http
    )
    return response


routes = [
    Route("/v1/auth/magic-link", magic_link, methods=["POST"]),
    Route("/v1/auth/consume", consume, methods=["GET"]),
    Route("/v1/lessons", library, methods=["GET"]),
    Route("/v1/event", record_events, methods=["POST"]),
    Route("/v1/account", delete_account, methods=["DELETE"]),
]
