"""The Starlette application: routes, error handlers, and the resources a process holds.

Resources open in the lifespan, never at import: one connection pool, the event store, and
the per-process sequencer, subscription hub and projection runner, and the use cases'
dependencies (commands/bootstrap.py), which routes reach through `deps(request)`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from commands.bootstrap import open_deps
from commands.errors import CommandError, ErrorCode, Internal
from eventstore.database import open_pool
from eventstore.errors import DatabaseUnavailable, StoreError
from eventstore.hub import Hub
from eventstore.settings import Settings
from eventstore.store import EventStore, Sequencer
from projections.runner import ProjectionRunner
from web import accounts, api_schemas, asset_files, health, openapi, routes, sessions
from web.error_events import ErrorEvents
from web.errors import ApiError, error_response
from web.idempotency import IdempotencyMiddleware
from web.middleware import RequestContext
from web.openapi import Spec, api


def create_app(settings: Settings, database_url: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_pool(database_url, max_size=settings.pool_max, name="omnitutor") as pool:
            store = EventStore(pool)
            hub = Hub(store, database_url)
            projections = ProjectionRunner(pool, poll_s=settings.projections_poll_s)

            def log_moved() -> None:
                hub.wake()
                projections.wake()

            sequencer = Sequencer(store, on_sequenced=log_moved)
            async with open_deps(settings, pool, store, hub) as deps:
                app.state.deps = deps
                tasks = [
                    asyncio.create_task(sequencer.run(), name="sequencer"),
                    asyncio.create_task(hub.run(), name="hub"),
                    asyncio.create_task(deps.supervisor.run(), name="generation-supervisor"),
                    asyncio.create_task(projections.run(), name="projections"),
                ]
                try:
                    yield
                finally:
                    for task in tasks:
                        task.cancel()
                    # Bounded: a task cancelled inside psycopg's wait can stay cancelling
                    # forever on Python 3.11 (psycopg answers with a server-side cancel and
                    # waits again).
                    await asyncio.wait(tasks, timeout=5)

    def trace_id(request: Request) -> str:
        return str(request.scope.get("state", {}).get("trace_id", ""))

    async def on_http_exception(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):
            raise exc
        if exc.status_code == 404:
            err = ApiError(ErrorCode.NOT_FOUND, f"no route for {request.method} {request.url.path}")
        elif exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            err = ApiError(
                ErrorCode.METHOD_NOT_ALLOWED,
                f"{request.method} is not allowed on {request.url.path} (allowed: {allow})",
                details={"allow": allow},
            )
        else:
            err = ApiError(ErrorCode.INVALID_INPUT, str(exc.detail))
        return error_response(err, trace_id(request))

    async def on_command_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, CommandError):
            raise exc
        return error_response(exc, trace_id(request))

    async def on_store_error(request: Request, exc: Exception) -> Response:
        recoverable = isinstance(exc, DatabaseUnavailable)
        return error_response(
            Internal(
                "The tutor's memory is unavailable. Try again in a moment.", recoverable=recoverable
            ),
            trace_id(request),
        )

    @api(
        Spec(
            "This document: OpenAPI 3.1 of every /v1/ route",
            response={"type": "object"},
            wrapped=False,
            auth=False,
        )
    )
    async def openapi_json(request: Request) -> Response:
        if not hasattr(request.app.state, "openapi"):
            document = openapi.document(request.app.routes, api_schemas.COMPONENTS)
            request.app.state.openapi = orjson.dumps(document)
        return Response(request.app.state.openapi, media_type="application/json")

    return Starlette(
        routes=[
            *health.routes,
            *sessions.routes,
            *routes.routes,
            *accounts.routes,
            Route("/v1/openapi.json", openapi_json, methods=["GET"]),
            # The local asset store's files; with a bucket the CDN serves them.
            *([] if settings.assets_bucket else asset_files.routes(settings.home / "assets")),
        ],
        middleware=[
            Middleware(RequestContext),
            Middleware(ErrorEvents, per_second=settings.error_events_per_s),
            Middleware(IdempotencyMiddleware),
        ],
        exception_handlers={
            HTTPException: on_http_exception,
            CommandError: on_command_error,
            StoreError: on_store_error,
        },
        lifespan=lifespan,
    )
