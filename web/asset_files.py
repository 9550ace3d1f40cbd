"""GET /assets/{key}: the local asset store's files, as a CDN would serve them.

Only with the local store (no OMNITUTOR_ASSETS_BUCKET); with S3 the URLs point at the
bucket's CDN and this route has nothing to serve. Keys are content-addressed, so every
answer may be cached forever; byte ranges come from Starlette's FileResponse (audio players
seek). An SVG is served as an inert document: a CSP that forbids scripts and every external
load, and nosniff so the declared type is the only one a browser uses.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from commands.assetstore import IMMUTABLE, KEY_PATTERN, MIME_BY_EXT, SVG_CSP
from commands.errors import NotFound


def routes(root: Path) -> list[Route]:
    async def serve_asset(request: Request) -> Response:
        key = request.path_params["key"]
        m = KEY_PATTERN.fullmatch(key)
        path = root / key
        if m is None or m["ext"] not in MIME_BY_EXT or not path.is_file():
            raise NotFound(f"no asset {key[:120]!r}")
        headers = {"Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff"}
        if m["ext"] == "svg":
            headers["Content-Security-Policy"] = SVG_CSP
        return FileResponse(path, media_type=MIME_BY_EXT[m["ext"]], headers=headers)

    return [Route("/assets/{key:path}", serve_asset, methods=["GET", "HEAD"])]
