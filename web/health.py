"""Liveness and readiness probes.

Readiness answers within about a second whatever the database does: a database that does
not hand over a connection in READY_WAIT_S is "unavailable" (503 `service_unavailable`,
Retry-After). The checks say what is wrong in words fit for a public endpoint; the driver's
own message (host names, socket paths) goes to the log only.
"""

from __future__ import annotations

import time

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from commands.errors import CommandError, ErrorCode, Internal, ServiceUnavailable
from eventstore.errors import StoreError, translate_errors
from eventstore.migrations import MIGRATIONS, applied_checksums, problems
from projections.checkpoints import failures
from web.api_schemas import HEALTH, READY
from web.errors import DATABASE_RETRY_AFTER_MS, error_response
from web.openapi import Spec, api
from web.requests import deps

log = structlog.get_logger(__name__)
READY_WAIT_S = 1.0


@api(
    Spec(
        "Liveness: answers without touching the database",
        response=HEALTH,
        wrapped=False,
        auth=False,
    )
)
async def healthz(request: Request) -> Response:
    """Alive: answers without touching the database."""
    return JSONResponse({"ok": True, "ts": int(time.time() * 1000)})


@api(
    Spec(
        "Readiness: the database, the migrations and the projections",
        response=READY,
        wrapped=False,
        auth=False,
        errors=(ErrorCode.INTERNAL, ErrorCode.SERVICE_UNAVAILABLE),
    )
)
async def readyz(request: Request) -> Response:
    """Ready: the database answers and every migration is applied, unchanged."""
    checks: dict[str, str] = {}
    try:
        with translate_errors():
            async with deps(request).pool.connection(timeout=READY_WAIT_S) as conn:
                applied = await applied_checksums(conn)
        checks["database"] = "ok"
        issues = problems(applied, MIGRATIONS)
        checks["migrations"] = "; ".join(issues) if issues else "ok"
        if not issues:
            failed = await failures(deps(request).pool)
            checks["projections"] = (
                "; ".join(
                    f"{f.name} failed at position {f.failed_position}: {f.error}" for f in failed
                )
                or "ok"
            )
    except StoreError as e:
        log.warning("readyz: database unavailable", error=str(e))
        checks["database"] = "unavailable"
    if "migrations" in checks and all(v == "ok" for v in checks.values()):
        return JSONResponse({"ok": True, "ts": int(time.time() * 1000), "checks": checks})
    error: CommandError
    if checks["database"] != "ok":
        error = ServiceUnavailable(
            "Not ready.", retry_after_ms=DATABASE_RETRY_AFTER_MS, details={"checks": checks}
        )
    else:  # a migration or projection problem: an operator must act (ops/ tells how)
        error = Internal("Not ready.", recoverable=True, details={"checks": checks})
    return error_response(error, request.scope["state"]["trace_id"])


routes = [
    Route("/v1/healthz", healthz, methods=["GET"]),
    Route("/v1/readyz", readyz, methods=["GET"]),
]
