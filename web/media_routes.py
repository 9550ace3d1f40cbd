"""POST /v1/lesson/{id}/visualize | animate | makeme: parse, call one handler, render.

The handlers are commands/media.py; the Idempotency-Key (mandatory here) was claimed by the
idempotency middleware before these run.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from commands import media
from web.body import read_json_object
from web.client_ip import request_client_ip
from web.guardrails import rate_limits
from web.services import services
from web.sessions import current_principal


def _deps(request: Request) -> media.MediaServices:
    svc = services(request)
    return media.MediaServices(
        svc.settings,
        svc.pool,
        svc.store,
        svc.provider,
        svc.assets,
        svc.narrator,
        rate_limits(svc.settings),
    )


async def _parts(request: Request) -> tuple[media.Caller, str, dict[str, Any]]:
    principal = await current_principal(request)
    trace_id = str(request.scope["state"]["trace_id"])
    body = await read_json_object(request, services(request).settings.max_body_bytes)
    caller = media.Caller(principal, request_client_ip(request), trace_id)
    return caller, request.path_params["lesson_id"], body


def _answer(request: Request, body: dict[str, Any]) -> Response:
    trace_id = str(request.scope["state"]["trace_id"])
    return JSONResponse({"ok": True, **body, "trace_id": trace_id})


async def visualize(request: Request) -> Response:
    caller, lesson_id, body = await _parts(request)
    answer = await media.visualize(media.Visualize(caller, lesson_id, body), _deps(request))
    return _answer(request, answer.json())


async def animate(request: Request) -> Response:
    caller, lesson_id, body = await _parts(request)
    answer = await media.animate(media.Animate(caller, lesson_id, body), _deps(request))
    return _answer(request, answer.json())


async def makeme(request: Request) -> Response:
    caller, lesson_id, body = await _parts(request)
    answer = await media.makeme(media.MakeMe(caller, lesson_id, body), _deps(request))
    return _answer(request, answer.json())


routes = [
    Route("/v1/lesson/{lesson_id}/visualize", visualize, methods=["POST"]),
    Route("/v1/lesson/{lesson_id}/animate", animate, methods=["POST"]),
    Route("/v1/lesson/{lesson_id}/makeme", makeme, methods=["POST"]),
]
