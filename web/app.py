"""The Starlette application: routes, error handlers, and the resources a process holds.

Resources open in the lifespan, never at import: one connection pool, the event store, and
the per-process sequencer, subscription hub and projection runner, and the use cases'
dependencies (commands/bootstrap.py), which routes reach through `deps(request)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

import orjson
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from commands.bootstrap import open_deps
from commands.errors import CommandError, ErrorCode
from commands.model_log import log_model_calls
from eventstore.database import open_pool
from eventstore.errors import DatabaseUnavailable, StoreError
from eventstore.hub import Hub
from eventstore.settings import Settings
from eventstore.store import EventStore, Sequencer
from projections.runner import ProjectionRunner
from web import (
    accounts,
    api_schemas,
    asset_files,
    health,
    metrics,
    openapi,
    page,
    routes,
    sessions,
)
from web.error_events import ErrorEvents
from web.errors import ApiError, error_response, store_failure
from web.idempotency import IdempotencyMiddleware
from web.metrics import HttpMetrics, Metrics
from web.middleware import RequestContext, RequestGuard, StreamLimit
from web.openapi import Spec, api

log = structlog.get_logger("omnitutor.http")


# The collector in a serving process: a young collection every 50,000 allocations instead of
# 700, and everything loaded at start-up frozen out of the collections. A process holding
# thousands of streams has hundreds of thousands of long-lived objects, and the default
# thresholds made a reconnect storm spend half its CPU in the collector (0.7-0.9 ms of the
# 1.6-1.9 ms an open cost; 0.1 ms with these; `omnitutor bench lessons --storm`).
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Set the collector up for serving (`omnitutor serve`, before the server starts)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def create_app(settings: Settings, database_url: str) -> Starlette:
    app_metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_pool(database_url, max_size=settings.pool_max, name="omnitutor") as pool:
            store = EventStore(pool)
            store.on_append(app_metrics.count_appended)
            store.on_append(log_model_calls)
            hub = Hub(store, database_url)
            projections = ProjectionRunner(pool, poll_s=settings.projections_poll_s)

            def log_moved() -> None:
                hub.wake()
                projections.wake()

            sequencer = Sequencer(store, on_sequenced=log_moved)
            async with open_deps(settings, pool, store, hub) as deps:
                app.state.deps = deps
                app_metrics.watch_generations(lambda: len(deps.supervisor.workers))
                # The hub knows where the log ends before the first stream opens (a process
                # started into a reconnect storm has thousands opening at once); if the
                # database hiccups here, the hub's own loop finds it out as before.
                with contextlib.suppress(StoreError):
                    await hub.tail()
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
        assert isinstance(exc, StoreError)
        if isinstance(exc, DatabaseUnavailable):
            log.warning("database unavailable", error=str(exc))
        else:
            # The 500's cause, with the trace id (bound to this request's log context).
            log.error("storage error", exc_info=exc)
        return error_response(store_failure(exc), trace_id(request))

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

    app = Starlette(
        routes=[
            *health.routes,
            *sessions.routes,
            *routes.routes,
            *accounts.routes,
            Route("/v1/openapi.json", openapi_json, methods=["GET"]),
            *metrics.routes,
            *page.routes,
            # The local asset store's files; with a bucket the CDN serves them.
            *([] if settings.assets_bucket else asset_files.routes(settings.home / "assets")),
        ],
        middleware=[
            # Outermost, so that it sees the status of every answer, the 500s included.
            Middleware(HttpMetrics, metrics=app_metrics),
            Middleware(RequestContext),
            Middleware(ErrorEvents, per_second=settings.error_events_per_s),
            Middleware(RequestGuard, allowed_origins=settings.allowed_origins),
            Middleware(
                StreamLimit,
                per_session=settings.sse_max_per_session,
                per_client=settings.sse_max_per_client,
                trusted_proxies=settings.trusted_proxies,
            ),
            Middleware(IdempotencyMiddleware),
        ],
        exception_handlers={
            HTTPException: on_http_exception,
            CommandError: on_command_error,
            StoreError: on_store_error,
        },
        lifespan=lifespan,
    )
    # No redirects: Starlette would answer `/v1/plan/` with a 307 whose Location is built from
    # the Host header; an unknown path is the 404 envelope like any other.
    app.router.redirect_slashes = False
    app.state.metrics = app_metrics
    return app
