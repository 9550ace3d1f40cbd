"""Liveness and readiness probes."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from commands.errors import ErrorCode, Internal
from eventstore.errors import StoreError
from eventstore.migrations import MIGRATIONS, applied_checksums, problems
from projections.checkpoints import failures
from web.api_schemas import HEALTH, READY
from web.errors import error_response
from web.openapi import Spec, api
from web.requests import deps


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
        errors=(ErrorCode.INTERNAL,),
    )
)
async def readyz(request: Request) -> Response:
    """Ready: the database answers and every migration is applied, unchanged."""
    checks: dict[str, str] = {}
    try:
        async with deps(request).pool.connection(timeout=5) as conn:
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
    except (StoreError, TimeoutError) as e:
        checks["database"] = f"unavailable: {e}"
    if "migrations" in checks and all(v == "ok" for v in checks.values()):
        return JSONResponse({"ok": True, "ts": int(time.time() * 1000), "checks": checks})
    error = Internal("Not ready.", recoverable=True, details={"checks": checks})
    return error_response(error, request.scope["state"]["trace_id"])


routes = [
    Route("/v1/healthz", healthz, methods=["GET"]),
    Route("/v1/readyz", readyz, methods=["GET"]),
]
