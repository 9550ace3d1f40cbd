"""The student page: `/` and its static files, shipped inside the package (web/static/).

Plain files, no build step. Every answer carries a strict Content-Security-Policy: scripts,
styles, images, audio and requests only from this origin, no inline script or style, no
frames, no form posts (the page sends JSON with fetch). An SVG diagram can therefore only
ever appear through <img src>, where it cannot run anything.
"""

from __future__ import annotations

from pathlib import Path

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "media-src 'self'",
        "connect-src 'self'",
        "form-action 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # Revalidate on every load (ETag / Last-Modified make it cheap): a deploy shows at once.
    "Cache-Control": "no-cache",
}


class WithPageHeaders:
    """Adds the page's headers to every answer of the wrapped app (the static files)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in PAGE_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def index(request: Request) -> Response:
    return FileResponse(
        STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS
    )


routes = [
    Route("/", index, methods=["GET"]),
    Mount("/static", app=WithPageHeaders(StaticFiles(directory=STATIC_DIR)), name="static"),
]
